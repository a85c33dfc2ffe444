package replica

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"maps"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/replmesh/replmesh/transport"
	"github.com/vmihailenco/msgpack/v5"
)

// ownerDump is everything badger holds for one owned table.
type ownerDump struct {
	meta ownerMeta
	rows map[string][]byte           // key -> row: stored, or (above meta.Rows) the log's
	log  map[uint64]transport.Change // seq -> entry
	keep map[string]uint64           // keep index
	// groups is the number of log groups holding the log.
	groups int
}

// deleteLogEntries drops the log entries of seqs from table's log in txn
// (rewriting their groups into badger), as a test that simulates lost
// writes needs; dir is the data dir.
func deleteLogEntries(txn *badger.Txn, dir, table string, seqs ...uint64) error {
	lp := ownLogPrefix(table)
	for _, seq := range seqs {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: lp})
		it.Seek(ownLogKey(lp, seq))
		if !it.Valid() {
			it.Close()
			continue
		}
		key := it.Item().KeyCopy(nil)
		v, err := it.Item().ValueCopy(nil)
		it.Close()
		if err != nil {
			return err
		}
		if v, err = readGroupBytes(dir, table, v); err != nil {
			return err
		}
		g, err := parseGroup(v)
		if err != nil {
			return err
		}
		var b groupBuilder
		for i := range g.n {
			if g.seq(i) == seq {
				continue
			}
			e, err := g.entry(i)
			if err != nil {
				return err
			}
			b.add(g.seq(i), e)
		}
		if b.len() == 0 {
			err = txn.Delete(key)
		} else {
			err = txn.Set(key, b.encode())
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// readGroupBytes is the group value v, read from table's log in the data
// dir dir, stands for: v, or the bytes its segment reference points at.
func readGroupBytes(dir, table string, v []byte) ([]byte, error) {
	if len(v) == 0 || v[0] != groupExt {
		return v, nil
	}
	s, err := openSegLog(segDir(dir, table), false)
	if err != nil {
		return nil, err
	}
	defer s.close()
	r, err := parseSegRef(v)
	if err != nil {
		return nil, err
	}
	return s.read(r, nil)
}

func dumpOwner(t testing.TB, db *badger.DB, table string) ownerDump {
	t.Helper()
	d := ownerDump{rows: map[string][]byte{}, log: map[uint64]transport.Change{}, keep: map[string]uint64{}}
	err := db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(ownMetaKey(table))
		if err != nil {
			return err
		}
		if err := item.Value(func(v []byte) error { return msgpack.Unmarshal(v, &d.meta) }); err != nil {
			return err
		}
		walk := func(p []byte, fn func(k, v []byte) error) error {
			o := badger.DefaultIteratorOptions
			o.Prefix = p
			it := txn.NewIterator(o)
			defer it.Close()
			for it.Rewind(); it.Valid(); it.Next() {
				v, err := it.Item().ValueCopy(nil)
				if err != nil {
					return err
				}
				if err := fn(it.Item().KeyCopy(nil)[len(p):], v); err != nil {
					return err
				}
			}
			return nil
		}
		if err := walk(ownRowPrefix(table), func(k, v []byte) error { d.rows[string(k)] = v; return nil }); err != nil {
			return err
		}
		prev := uint64(0) // the previous group's key
		if err := walk(ownLogPrefix(table), func(k, v []byte) error {
			bound := binary.BigEndian.Uint64(k)
			v, err := readGroupBytes(db.Opts().Dir, table, v)
			if err != nil {
				return fmt.Errorf("log group %d: %w", bound, err)
			}
			g, err := parseGroup(v)
			if err != nil {
				return fmt.Errorf("log group %d: %w", bound, err)
			}
			for i := range g.n {
				seq := g.seq(i)
				if seq <= prev || seq > bound || (i > 0 && seq <= g.seq(i-1)) {
					return fmt.Errorf("log group %d: entry %d at seq %d, out of its range (%d, %d] or order", bound, i, seq, prev, bound)
				}
				e, err := g.entry(i)
				if err != nil {
					return err
				}
				ch, err := decodeLogEntry(seq, e)
				if err != nil {
					return err
				}
				d.log[seq] = ch
			}
			prev = bound
			d.groups++
			return nil
		}); err != nil {
			return err
		}
		if err := walk(ownLegacyLogPrefix(table), func(k, _ []byte) error {
			return fmt.Errorf("a log entry of owner format %d is left: seq %d", formatRefRows, binary.BigEndian.Uint64(k))
		}); err != nil {
			return err
		}
		return walk(ownKeepPrefix(table), func(k, v []byte) error {
			if len(v) != 8 {
				return fmt.Errorf("keep index %q: %d bytes", k, len(v))
			}
			d.keep[string(k)] = binary.BigEndian.Uint64(v)
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	// The rows are the table's through meta.Rows; above it the log's
	// changes are (what Own's replayRows writes).
	for s := d.meta.Rows + 1; s <= d.meta.Head; s++ {
		ch, ok := d.log[s]
		if !ok {
			t.Fatalf("log entry %d, above the rows (through %d), missing", s, d.meta.Rows)
		}
		if ch.Op == transport.OpDelete {
			delete(d.rows, string(ch.Key))
		} else {
			d.rows[string(ch.Key)] = encodeRefRow(s)
		}
	}
	return d
}

// checkOwnerStore checks the owner's storage of table against want (the
// table's rows) and written (every change of the history by seq, as far
// back as the log may reach):
//   - the rows are want, each value stored once: a ref row holds its seq
//     only and its log entry is that put; an inline row's change has no
//     log entry holding it;
//   - the log holds First..Head with no gap, each entry the change written
//     at its seq, and it replays onto the table as of First-1 to want;
//   - below First lie only the entries kept as rows' values, each in the
//     keep index, and superseded ones whose successor is still in the
//     window, at most one a key (what trimming drops next).
//
// first is the table's First in memory.
func checkOwnerStore(t testing.TB, db *badger.DB, table string, first uint64, want map[string]string, written map[uint64]transport.Change) {
	t.Helper()
	d := dumpOwner(t, db, table)
	if d.meta.Format != ownFormat {
		t.Fatalf("meta format %d, want %d", d.meta.Format, ownFormat)
	}
	head := d.meta.Head
	if len(d.rows) != len(want) {
		t.Fatalf("%d rows stored, want %d", len(d.rows), len(want))
	}
	refs := map[uint64]string{}
	for k, row := range d.rows {
		kind, seq, val, err := decodeOwnRow(row)
		if err != nil {
			t.Fatalf("row %q: %v", k, err)
		}
		w, ok := want[k]
		if !ok {
			t.Fatalf("row %q stored, not in the table", k)
		}
		switch kind {
		case rowInLog:
			ch, ok := d.log[seq]
			if !ok || ch.Op != transport.OpPut || string(ch.Key) != k {
				t.Fatalf("ref row %q -> seq %d: log entry %+v (present %v)", k, seq, ch, ok)
			}
			if string(ch.Value) != w {
				t.Fatalf("row %q = %q in the log, want %q", k, ch.Value, w)
			}
			refs[seq] = k
		case rowInline:
			if string(val) != w {
				t.Fatalf("inline row %q = %q, want %q", k, val, w)
			}
			if ch, ok := d.log[seq]; ok && string(ch.Key) == k && ch.Op == transport.OpPut {
				t.Fatalf("inline row %q at seq %d: its value is stored twice (the log entry holds it)", k, seq)
			}
		}
	}
	// The window.
	if first > head+1 {
		t.Fatalf("First %d beyond head %d", first, head)
	}
	for s := first; s <= head; s++ {
		ch, ok := d.log[s]
		if !ok {
			t.Fatalf("log window %d..%d: seq %d missing", first, head, s)
		}
		if w, ok := written[s]; ok && (w.Op != ch.Op || !bytes.Equal(w.Key, ch.Key) || !bytes.Equal(w.Value, ch.Value) || w.TxnEnd != ch.TxnEnd) {
			t.Fatalf("log entry %d = %+v, written %+v", s, ch, w)
		}
	}
	// Replay: the table as of First-1 (every change written up to it,
	// from the history), then the window from the log.
	if len(written) > 0 {
		state := map[string]string{}
		for _, s := range slices.Sorted(maps.Keys(written)) {
			ch := written[s]
			if s >= first {
				ch = d.log[s]
			}
			if s > head {
				break
			}
			if ch.Op == transport.OpDelete {
				delete(state, string(ch.Key))
			} else {
				state[string(ch.Key)] = string(ch.Value)
			}
		}
		if !maps.Equal(state, want) {
			t.Fatalf("the history replayed through the log window %d..%d: %d rows, want %d", first, head, len(state), len(want))
		}
	}
	// Below the window.
	inWindow := map[string]uint64{} // key -> newest seq in the window
	for s := first; s <= head; s++ {
		inWindow[string(d.log[s].Key)] = s
	}
	below := map[string]int{}
	for s, ch := range d.log {
		if s >= first {
			continue
		}
		k := string(ch.Key)
		below[k]++
		if ch.Op != transport.OpPut {
			t.Fatalf("entry %d below First %d is a delete", s, first)
		}
		if d.keep[k] != s {
			t.Fatalf("entry %d of %q below First %d is not in the keep index (%d)", s, k, first, d.keep[k])
		}
		if refs[s] != k && inWindow[k] <= s {
			t.Fatalf("entry %d of %q below First %d is neither a row's value nor superseded in the window", s, k, first)
		}
	}
	for k, n := range below {
		if n > 1 {
			t.Fatalf("%d entries of %q below First", n, k)
		}
	}
	for k, s := range d.keep {
		// (A kept entry may be in the window again: Own measures the
		// window back from the head, and kept entries next to it are
		// part of it.)
		if ch, ok := d.log[s]; !ok || string(ch.Key) != k {
			t.Fatalf("keep index %q -> %d: entry %+v (present %v), First %d", k, s, ch, ok, first)
		}
	}
}

// TestOwnerStore_Property drives an owned table with random commit groups
// (several Applies of puts and deletes over a few keys submitted at once,
// the log packed into small log groups so a commit group spans several),
// trims with random retention and restarts, and checks the storage after
// each step against a map model and the history written
// (checkOwnerStore), the table's reads (Get, Scan, Digest), and every
// seq range of the window read back from the durable log in batches of
// random bounds (checkLogRanges).
func TestOwnerStore_Property(t *testing.T) {
	seed, fixed := testSeed(t)
	t.Logf("seed %d (replay: REPLMESH_SEED=%d go test -run TestOwnerStore_Property ./replica)", seed, seed)
	steps := 400
	if testing.Short() && !fixed {
		steps = 150
	}
	rng := rand.New(rand.NewPCG(seed, 0x0b57))
	groupPieceMaxForTest.Store(int64(100 + rng.IntN(2000)))
	defer groupPieceMaxForTest.Store(0)
	dir := filepath.Join(t.TempDir(), "owner")
	ctx := ctxT(t, 2*time.Minute)
	c := openOwnerTrimmedByTest(t, dir)
	defer func() { mustClose(t, c) }()
	tbl, err := c.Own("t")
	if err != nil {
		t.Fatal(err)
	}
	model := map[string]string{}
	written := map[uint64]transport.Change{}
	keys := 2 + rng.IntN(30)
	var keyList []string
	for i := range keys + 1 {
		keyList = append(keyList, fmt.Sprintf("k%02d", i))
	}
	for step := range steps {
		what := "write"
		switch r := rng.IntN(20); {
		case r < 13:
			// Applies submitted at once: the committer packs them into
			// one commit group.
			type sub struct {
				p  *Pending
				ws []Write
			}
			var subs []sub
			for range 1 + rng.IntN(6) {
				ws := make([]Write, 1+rng.IntN(6))
				for i := range ws {
					k := fmt.Appendf(nil, "k%02d", rng.IntN(keys))
					if rng.IntN(4) == 0 {
						ws[i] = Write{Key: k, Delete: true}
					} else {
						ws[i] = Write{Key: k, Value: bytes.Repeat(fmt.Appendf(nil, "v%d-%d.", step, i), 1+rng.IntN(20))}
					}
				}
				p, err := tbl.Submit(ctx, ws...)
				if err != nil {
					t.Fatalf("step %d: %v", step, err)
				}
				subs = append(subs, sub{p, ws})
			}
			for _, s := range subs {
				last, err := s.p.Wait(ctx)
				if err != nil {
					t.Fatalf("step %d: %v", step, err)
				}
				recordApply(model, written, last, s.ws)
			}
		case r < 18:
			what = "trim"
			tbl.mu.Lock()
			tbl.retention = Retention{MaxChanges: uint64(1 + rng.IntN(40))}
			if rng.IntN(3) == 0 {
				tbl.retention.MaxBytes = int64(1 + rng.IntN(2000))
			}
			tbl.mu.Unlock()
			if err := tbl.trim(time.Now()); err != nil {
				t.Fatalf("step %d: trim: %v", step, err)
			}
		default:
			what = "restart"
			mustClose(t, c)
			c = openOwnerTrimmedByTest(t, dir)
			if tbl, err = c.Own("t"); err != nil {
				t.Fatalf("step %d: own: %v", step, err)
			}
		}
		tbl.mu.Lock()
		first, head := tbl.meta.First, tbl.meta.Head
		tbl.mu.Unlock()
		checkOwnerStore(t, c.db, "t", first, model, written)
		checkOwnerReads(t, tbl, model, keyList)
		// Catch-up from First returns the window in order.
		chs, err := tbl.readChanges(first, 1<<20, 1<<30, nil)
		if err != nil {
			t.Fatalf("step %d (%s): read from First %d: %v", step, what, first, err)
		}
		if want := int(head + 1 - first); len(chs) != want {
			t.Fatalf("step %d (%s): %d changes from First %d to head %d, want %d", step, what, len(chs), first, head, want)
		}
		checkLogRanges(t, tbl, rng, first, head, written, fmt.Sprintf("step %d (%s)", step, what))
	}
}

// openOwnerTrimmedByTest opens a component whose trim loop stays out of
// the way (the test trims when it chooses).
func openOwnerTrimmedByTest(t testing.TB, dir string) *Component {
	t.Helper()
	return openWith(t, "svc", "o1", dir, "", func(c *Config) { c.TrimInterval = time.Hour })
}

// checkOwnerReads checks Get, Scan and Digest of tbl against model.
// trimAndCheck trims tbl (of component c) to its last 100 changes and
// checks its store and reads against model and written.
func trimAndCheck(t testing.TB, c *Component, tbl *OwnedTable, model map[string]string, written map[uint64]transport.Change, keys []string) {
	t.Helper()
	tbl.mu.Lock()
	tbl.retention = Retention{MaxChanges: 100}
	tbl.mu.Unlock()
	if err := tbl.trim(time.Now()); err != nil {
		t.Fatal(err)
	}
	checkOwnerStore(t, c.db, "t", tbl.meta.First, model, written)
	checkOwnerReads(t, tbl, model, keys)
}

func checkOwnerReads(t testing.TB, tbl *OwnedTable, model map[string]string, keys []string) {
	t.Helper()
	for _, k := range keys {
		v, ok, err := tbl.Get([]byte(k))
		if err != nil {
			t.Fatalf("get %s: %v", k, err)
		}
		if w, wok := model[k]; ok != wok || string(v) != w {
			t.Fatalf("get %s = %q %v, want %q %v", k, v, ok, w, wok)
		}
	}
	got := map[string]string{}
	if _, err := tbl.Scan(nil, func(k, v []byte) bool { got[string(k)] = string(v); return true }); err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(got, model) {
		t.Fatalf("scan: %v, want %v", got, model)
	}
	d, err := tbl.Digest(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	dg := newDigester()
	for _, k := range slices.Sorted(maps.Keys(model)) {
		dg.add([]byte(k), []byte(model[k]))
	}
	if want := dg.result(d.LogID, d.Seq); !bytes.Equal(d.Hash, want.Hash) || d.Rows != want.Rows {
		t.Fatalf("digest %x (%d rows), model %x (%d rows)", d.Hash, d.Rows, want.Hash, want.Rows)
	}
}

// TestOwnerStore_MigratesLegacyFormat opens a data dir written in the
// owner format before ownFormat (each row its seq and a copy of the
// value; no Format in the meta), built here by writing that encoding
// directly, as a whole and with a migration cut short: Own converts it,
// the table reads as before, every value is then stored once, and writes,
// trims and catch-up go on.
func TestOwnerStore_MigratesLegacyFormat(t *testing.T) {
	const (
		bulk  = 1500 // seqs 1..bulk put k<i> (more rows than a migration chunk)
		head  = 1700
		first = 1201 // the legacy log's window: first..head
	)
	legacyKey := func(s uint64) string {
		if s <= bulk {
			return fmt.Sprintf("k%04d", s-1)
		}
		return fmt.Sprintf("k%04d", (s*7)%bulk)
	}
	history := map[uint64]transport.Change{}
	model := map[string]string{}
	rowSeq := map[string]uint64{}
	for s := uint64(1); s <= head; s++ {
		ch := transport.Change{Seq: s, Op: transport.OpPut, Key: []byte(legacyKey(s)), Value: fmt.Appendf(nil, "v%d", s), TxnEnd: true, Epoch: 1, Time: time.Now().UnixNano()}
		if s > bulk && s%10 == 0 {
			ch.Op, ch.Value = transport.OpDelete, nil
			delete(model, string(ch.Key))
			delete(rowSeq, string(ch.Key))
		} else {
			model[string(ch.Key)] = string(ch.Value)
			rowSeq[string(ch.Key)] = s
		}
		history[s] = ch
	}
	for _, tc := range []struct {
		name     string
		migrated string // the last key an interrupted migration converted
	}{
		{"whole", ""},
		{"interrupted", "k0700"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			model := maps.Clone(model)
			dir := t.TempDir()
			db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil))
			if err != nil {
				t.Fatal(err)
			}
			err = db.Update(func(txn *badger.Txn) error {
				m := ownerMeta{LogID: "legacy", Epoch: 1, Head: head, First: first,
					Epochs: transport.EpochHistory{{Epoch: 1, Seq: 1}}}
				if tc.migrated != "" {
					m.Migrated = []byte(tc.migrated)
				}
				b, err := msgpack.Marshal(&m)
				if err != nil {
					return err
				}
				if err := txn.Set(ownMetaKey("t"), b); err != nil {
					return err
				}
				for s := uint64(first); s <= head; s++ {
					ch := history[s]
					if err := txn.Set(ownLogKey(ownLegacyLogPrefix("t"), s), appendLogEntry(nil, &ch)); err != nil {
						return err
					}
				}
				for k, v := range model {
					seq := rowSeq[k]
					// The legacy row: 8-byte seq, then the value.
					row := binary.BigEndian.AppendUint64(nil, seq)
					row = append(row, v...)
					if tc.migrated != "" && k <= tc.migrated {
						// Converted already, as migrateLegacy does.
						row = encodeInlineRow(seq, []byte(v))
						if seq >= first {
							row = encodeRefRow(seq)
						}
					}
					if err := txn.Set(concat(ownRowPrefix("t"), []byte(k)), row); err != nil {
						return err
					}
				}
				return nil
			})
			if cerr := db.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				t.Fatal(err)
			}

			c := openOwnerTrimmedByTest(t, dir)
			defer mustClose(t, c)
			tbl, err := c.Own("t")
			if err != nil {
				t.Fatal(err)
			}
			if got := tbl.Head(); got != head {
				t.Fatalf("head %d, want %d", got, head)
			}
			keys := slices.Sorted(maps.Keys(model))
			keys = append(keys, "k9999")
			// The legacy log kept no entry below its window.
			written := maps.Clone(history)
			checkOwnerStore(t, c.db, "t", first, model, written)
			checkOwnerReads(t, tbl, model, keys)
			d := dumpOwner(t, c.db, "t")
			inline := 0
			for _, row := range d.rows {
				if row[0] == rowInline {
					inline++
				}
			}
			if inline == 0 || inline == len(d.rows) {
				t.Fatalf("%d of %d rows inline: want the rows whose change was trimmed inline, the others in the log", inline, len(d.rows))
			}
			if d.meta.Migrated != nil {
				t.Fatalf("meta still records a migration at %q", d.meta.Migrated)
			}
			chs, err := tbl.readChanges(first, 1<<20, 1<<30, nil)
			if err != nil || len(chs) != head+1-first {
				t.Fatalf("read from %d: %d changes, %v; want %d", first, len(chs), err, head+1-first)
			}

			// The table goes on: writes, a trim, a restart.
			ctx := ctxT(t, 30*time.Second)
			for i := range 50 {
				k := fmt.Sprintf("k%04d", i*13)
				seq, err := tbl.Put(ctx, []byte(k), []byte("new"))
				if err != nil {
					t.Fatal(err)
				}
				model[k] = "new"
				if v, _, _ := tbl.Get([]byte(k)); string(v) != "new" {
					t.Fatalf("after put %s at %d: %q", k, seq, v)
				}
				written[seq] = transport.Change{Seq: seq, Op: transport.OpPut, Key: []byte(k), Value: []byte("new"), TxnEnd: true}
			}
			trimAndCheck(t, c, tbl, model, written, keys)
		})
	}
}

// TestOwnerStore_ScanBatches scans a table larger than a scan batch whose
// rows were written in random key order (their log entries far apart in
// seq): every row comes once, in key order, with its value; a scan that
// stops, stops; a digest of a key range covers that range.
func TestOwnerStore_ScanBatches(t *testing.T) {
	seed, _ := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 0x5ca7))
	t.Logf("seed %d", seed)
	c := openComponent(t, "svc", "o1", t.TempDir(), "")
	defer mustClose(t, c)
	tbl, err := c.Own("t")
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, time.Minute)
	const rows = 3*scanBatch + 100
	model := map[string]string{}
	order := rng.Perm(rows)
	for i := 0; i < rows; i += 500 {
		var ws []Write
		for _, j := range order[i:min(rows, i+500)] {
			k, v := fmt.Sprintf("r%06d", j), fmt.Sprintf("v%d-%d", j, rng.IntN(1000))
			ws = append(ws, Write{Key: []byte(k), Value: []byte(v)})
			model[k] = v
		}
		if _, err := tbl.Apply(ctx, ws...); err != nil {
			t.Fatal(err)
		}
	}
	var keys []string
	if _, err := tbl.Scan(nil, func(k, v []byte) bool {
		if model[string(k)] != string(v) {
			t.Fatalf("scan: %s = %q, want %q", k, v, model[string(k)])
		}
		keys = append(keys, string(k))
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if want := slices.Sorted(maps.Keys(model)); !slices.Equal(keys, want) {
		t.Fatalf("scan: %d keys, want %d in key order", len(keys), len(want))
	}
	for _, stop := range []int{1, scanBatch, scanBatch + 1, rows - 1} {
		n := 0
		if _, err := tbl.Scan(nil, func(_, _ []byte) bool { n++; return n < stop }); err != nil {
			t.Fatal(err)
		}
		if n != stop {
			t.Fatalf("a scan stopped at row %d went on to %d", stop, n)
		}
	}
	start, end := "r001000", "r009000"
	d, err := tbl.Digest([]byte(start), []byte(end))
	if err != nil {
		t.Fatal(err)
	}
	dg := newDigester()
	for _, k := range keys {
		if k >= start && k < end {
			dg.add([]byte(k), []byte(model[k]))
		}
	}
	if want := dg.result(d.LogID, d.Seq); !bytes.Equal(d.Hash, want.Hash) || d.Rows != want.Rows {
		t.Fatalf("digest of [%s, %s): %x (%d rows), want %x (%d rows)", start, end, d.Hash, d.Rows, want.Hash, want.Rows)
	}
}
