package replica

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/replmesh/replmesh/transport"
	"github.com/vmihailenco/msgpack/v5"
)

func TestLogGroup_EncodeParse(t *testing.T) {
	tests := []struct {
		name string
		seqs []uint64
	}{
		{"one", []uint64{7}},
		{"dense", []uint64{10, 11, 12, 13}},
		{"sparse", []uint64{3, 9, 10, 400}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b groupBuilder
			var want []transport.Change
			for i, s := range tt.seqs {
				ch := transport.Change{Seq: s, Op: transport.OpPut, Key: fmt.Appendf(nil, "k%d", s), Value: bytes.Repeat([]byte{byte(i)}, i*10), TxnEnd: i%2 == 0, Time: int64(s), Epoch: 2}
				if i == 1 {
					ch.Op, ch.Value = transport.OpDelete, nil
				}
				b.addChange(&ch)
				want = append(want, ch)
			}
			g, err := parseGroup(b.encode())
			if err != nil {
				t.Fatal(err)
			}
			if g.n != len(tt.seqs) {
				t.Fatalf("n = %d, want %d", g.n, len(tt.seqs))
			}
			for i, w := range want {
				j, ok := g.find(w.Seq)
				if !ok || j != i {
					t.Fatalf("find(%d) = %d %v, want %d", w.Seq, j, ok, i)
				}
				e, err := g.entry(i)
				if err != nil {
					t.Fatal(err)
				}
				got, err := decodeLogEntry(g.seq(i), e)
				if err != nil {
					t.Fatal(err)
				}
				if got.Seq != w.Seq || got.Op != w.Op || !bytes.Equal(got.Key, w.Key) || !bytes.Equal(got.Value, w.Value) || got.TxnEnd != w.TxnEnd || got.Time != w.Time || got.Epoch != w.Epoch {
					t.Fatalf("entry %d = %+v, want %+v", i, got, w)
				}
				if j, ok := g.find(w.Seq + 1); ok != slices.Contains(tt.seqs, w.Seq+1) || j != i+1 {
					t.Fatalf("find(%d) = %d %v", w.Seq+1, j, ok)
				}
			}
			if _, ok := g.find(tt.seqs[0] - 1); ok {
				t.Fatalf("found seq %d, not in the group", tt.seqs[0]-1)
			}
		})
	}
	for _, bad := range [][]byte{nil, {groupDense, 0, 0, 0, 1}, {9, 0, 0, 0, 1, 0, 0, 0, 0}, {groupSparse, 0, 0, 0, 9, 1}} {
		if _, err := parseGroup(bad); err == nil {
			t.Fatalf("parseGroup(%v) did not fail", bad)
		}
	}
}

// recordApply records an Apply of ws acknowledged at seq last in model
// (the table's rows) and written (the changes by seq).
func recordApply(model map[string]string, written map[uint64]transport.Change, last uint64, ws []Write) {
	for i, w := range ws {
		seq := last - uint64(len(ws)-1-i)
		ch := transport.Change{Seq: seq, Op: transport.OpPut, Key: w.Key, Value: w.Value, TxnEnd: i == len(ws)-1}
		if w.Delete {
			ch.Op, ch.Value = transport.OpDelete, nil
			delete(model, string(w.Key))
		} else {
			model[string(w.Key)] = string(w.Value)
		}
		written[seq] = ch
	}
}

// rewriteMeta changes the meta of table in txn with fn.
func rewriteMeta(txn *badger.Txn, table string, fn func(*ownerMeta)) error {
	item, err := txn.Get(ownMetaKey(table))
	if err != nil {
		return err
	}
	var m ownerMeta
	if err := item.Value(func(v []byte) error { return msgpack.Unmarshal(v, &m) }); err != nil {
		return err
	}
	fn(&m)
	b, err := msgpack.Marshal(&m)
	if err != nil {
		return err
	}
	return txn.Set(ownMetaKey(table), b)
}

// checkLogRanges reads a few random seq ranges of the window [first,
// head] from tbl's durable log, each in batches of random bounds, and
// compares them with written.
func checkLogRanges(t *testing.T, tbl *OwnedTable, rng *rand.Rand, first, head uint64, written map[uint64]transport.Change, at string) {
	t.Helper()
	if first > 1 {
		if _, err := tbl.readLog(first-1, 10, 1<<20, nil); !errors.Is(err, transport.ErrResync) {
			t.Fatalf("%s: reading seq %d below First %d: %v, want ErrResync", at, first-1, first, err)
		}
	}
	if head < first {
		return
	}
	for range 3 {
		from := first + uint64(rng.IntN(int(head-first+1)))
		want := from
		for want <= head {
			maxN, maxBytes := 1+rng.IntN(40), 1+rng.IntN(3000)
			chs, err := tbl.readLog(want, maxN, maxBytes, nil)
			if err != nil {
				t.Fatalf("%s: read from %d (window %d..%d): %v", at, want, first, head, err)
			}
			if len(chs) == 0 {
				t.Fatalf("%s: read from %d (window %d..%d): nothing", at, want, first, head)
			}
			for _, ch := range chs {
				w := written[ch.Seq]
				if ch.Seq != want || ch.Op != w.Op || !bytes.Equal(ch.Key, w.Key) || !bytes.Equal(ch.Value, w.Value) || ch.TxnEnd != w.TxnEnd {
					t.Fatalf("%s: read from %d: change %+v, want seq %d: %+v", at, from, ch, want, w)
				}
				want++
			}
			if last := chs[len(chs)-1]; !last.TxnEnd {
				t.Fatalf("%s: a batch from %d ends at %d inside an Apply", at, chs[0].Seq, last.Seq)
			}
			// The same batch as the sender's wire encodings, built from
			// the stored entries: the very bytes the changes encode to.
			enc, n, err := tbl.readLogEncoded(chs[0].Seq, maxN, maxBytes, nil)
			if err != nil {
				t.Fatalf("%s: encoded read from %d: %v", at, chs[0].Seq, err)
			}
			wantEnc, _, err := transport.EncodeChanges(nil, chs, nil)
			if err != nil {
				t.Fatal(err)
			}
			if n != len(chs) || !bytes.Equal(enc, wantEnc) {
				t.Fatalf("%s: encoded read from %d: %d changes, %d bytes; want the %d changes readLog returned, %d bytes", at, chs[0].Seq, n, len(enc), len(chs), len(wantEnc))
			}
		}
	}
}

// toFormat1 rewrites the owned table in dir, as this build left it, in
// owner format 1: each log entry under its own key (o/<table>/l/<seq>),
// the meta's Format 1.
func toFormat1(t *testing.T, dir, table string) {
	t.Helper()
	db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	wb := db.NewWriteBatch()
	err = db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: ownLogPrefix(table)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			if err := wb.Delete(it.Item().KeyCopy(nil)); err != nil {
				return err
			}
			err := it.Item().Value(func(v []byte) error {
				v, err := readGroupBytes(dir, table, v)
				if err != nil {
					return err
				}
				g, err := parseGroup(v)
				if err != nil {
					return err
				}
				for i := range g.n {
					e, err := g.entry(i)
					if err != nil {
						return err
					}
					if err := wb.Set(ownLogKey(ownLegacyLogPrefix(table), g.seq(i)), bytes.Clone(e)); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		err = wb.Flush()
	}
	if err == nil {
		err = db.Update(func(txn *badger.Txn) error {
			return rewriteMeta(txn, table, func(m *ownerMeta) { m.Format = formatRefRows })
		})
	}
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
}

// TestOwnerStore_MigratesFormat1 opens a data dir in owner format 1 (a
// badger entry per log entry, kept entries below the window with their
// keep index, ref and inline rows), built by writing a table with this
// build and spreading its log groups back into single entries: Own packs
// the log into groups, in several transactions (a small memtable), and
// the table reads, serves its window and goes on as before. The migration
// is also stopped after each of its transactions (as a crash would stop
// it) and resumed by the next Own.
func TestOwnerStore_MigratesFormat1(t *testing.T) {
	small := func(c *Config) {
		c.TrimInterval = time.Hour
		c.MemTableSize = 1 << 20
		c.MaxGroupBytes, c.MaxApplyBytes = 32<<10, 32<<10
	}
	// The table: a bulk of rows (kept below the window once trimmed), then
	// hot keys updated and deleted, trimmed to a window.
	build := func(t *testing.T, dir string) (model map[string]string, written map[uint64]transport.Change, first uint64) {
		c := openWith(t, "svc", "o1", dir, "", small)
		defer mustClose(t, c)
		tbl, err := c.Own("t")
		if err != nil {
			t.Fatal(err)
		}
		ctx := ctxT(t, time.Minute)
		model, written = map[string]string{}, map[uint64]transport.Change{}
		put := func(ws ...Write) {
			last, err := tbl.Apply(ctx, ws...)
			if err != nil {
				t.Fatal(err)
			}
			recordApply(model, written, last, ws)
		}
		for i := 0; i < 1200; i += 100 {
			var ws []Write
			for j := i; j < i+100; j++ {
				ws = append(ws, Write{Key: fmt.Appendf(nil, "b%04d", j), Value: bytes.Repeat([]byte("b"), 100+j%50)})
			}
			put(ws...)
		}
		for s := range 1500 {
			k := fmt.Appendf(nil, "h%02d", s%37)
			if s%7 == 0 {
				k = fmt.Appendf(nil, "b%04d", (s*13)%1200)
			}
			w := Write{Key: k, Value: fmt.Appendf(nil, "v%d", s)}
			if s%11 == 0 {
				w = Write{Key: k, Delete: true}
			}
			put(w)
		}
		tbl.mu.Lock()
		tbl.retention = Retention{MaxChanges: 400}
		tbl.mu.Unlock()
		if err := tbl.trim(time.Now()); err != nil {
			t.Fatal(err)
		}
		first = tbl.meta.First
		return model, written, first
	}
	src := t.TempDir()
	model, written, first := build(t, src)
	toFormat1(t, src, "t")

	// How many transactions the whole migration takes.
	txns := 0
	migrateLogHook = func(done int) error { txns = done + 1; return nil }
	defer func() { migrateLogHook = nil }()
	check := func(t *testing.T, dir string) {
		c := openWith(t, "svc", "o1", dir, "", small)
		defer mustClose(t, c)
		tbl, err := c.Own("t")
		if err != nil {
			t.Fatal(err)
		}
		keys := slices.Sorted(maps.Keys(model))
		keys = append(keys, "zz")
		checkOwnerStore(t, c.db, "t", tbl.meta.First, model, written)
		if tbl.meta.First > first {
			t.Fatalf("First %d after the migration, was %d", tbl.meta.First, first)
		}
		checkOwnerReads(t, tbl, model, keys)
		d := dumpOwner(t, c.db, "t")
		if d.groups >= len(d.log)/4 {
			t.Fatalf("%d log groups for %d entries: not packed", d.groups, len(d.log))
		}
		rng := rand.New(rand.NewPCG(uint64(len(d.log)), 1))
		checkLogRanges(t, tbl, rng, tbl.meta.First, tbl.meta.Head, written, "migrated")
		// It goes on: writes, a trim.
		ctx := ctxT(t, 30*time.Second)
		seq, err := tbl.Put(ctx, []byte("h01"), []byte("after"))
		if err != nil {
			t.Fatal(err)
		}
		m, w := maps.Clone(model), maps.Clone(written)
		m["h01"] = "after"
		w[seq] = transport.Change{Seq: seq, Op: transport.OpPut, Key: []byte("h01"), Value: []byte("after"), TxnEnd: true}
		trimAndCheck(t, c, tbl, m, w, keys)
	}
	t.Run("whole", func(t *testing.T) {
		dir := t.TempDir()
		copyDir(t, src, dir)
		check(t, dir)
		if txns < 3 {
			t.Fatalf("the migration took %d transactions: want several (a small memtable)", txns)
		}
	})
	for stop := range txns {
		t.Run(fmt.Sprintf("stopped after %d", stop), func(t *testing.T) {
			dir := t.TempDir()
			copyDir(t, src, dir)
			migrateLogHook = func(done int) error {
				if done == stop {
					return errors.New("stopped")
				}
				return nil
			}
			c := openWith(t, "svc", "o1", dir, "", small)
			if _, err := c.Own("t"); err == nil {
				t.Fatal("Own with the migration stopped did not fail")
			}
			mustClose(t, c)
			migrateLogHook = nil
			check(t, dir)
		})
	}
}

// TestOwnerStore_RefusesNewerFormat: a table stored in an owner format
// newer than this build's is refused with an error naming it.
func TestOwnerStore_RefusesNewerFormat(t *testing.T) {
	dir := t.TempDir()
	c := openOwnerTrimmedByTest(t, dir)
	if _, err := c.Own("t"); err != nil {
		t.Fatal(err)
	}
	mustClose(t, c)
	db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(txn *badger.Txn) error {
		return rewriteMeta(txn, "t", func(m *ownerMeta) { m.Format = ownFormat + 1 })
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	c = openOwnerTrimmedByTest(t, dir)
	defer mustClose(t, c)
	_, err = c.Own("t")
	if want := fmt.Sprintf("owner format %d", ownFormat+1); err == nil || !bytes.Contains([]byte(err.Error()), []byte(want)) {
		t.Fatalf("Own of a newer format: %v, want an error naming %q", err, want)
	}
}

// groupOf returns the key of the log group of table that holds seq (0:
// none), for tests that look at the grouping.
func groupOf(t *testing.T, db *badger.DB, table string, seq uint64) uint64 {
	t.Helper()
	var bound uint64
	err := db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: ownLogPrefix(table)})
		defer it.Close()
		it.Seek(ownLogKey(ownLogPrefix(table), seq))
		if it.Valid() {
			bound = binary.BigEndian.Uint64(it.Item().Key()[len(ownLogPrefix(table)):])
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return bound
}

// TestOwnerLog_CommitGroupIsOneEntry: the changes of one commit group are
// one badger entry of the log when they fit a group, and a larger commit
// group is split into several; by default a group's value stays under
// badger's value threshold (in the LSM tree, never in the value log).
func TestOwnerLog_CommitGroupIsOneEntry(t *testing.T) {
	c := openOwnerTrimmedByTest(t, t.TempDir())
	defer mustClose(t, c)
	tbl, err := c.Own("t")
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, 30*time.Second)
	var ws []Write
	for i := range 200 {
		ws = append(ws, Write{Key: fmt.Appendf(nil, "k%03d", i), Value: bytes.Repeat([]byte("x"), 256)})
	}
	// The default: groups under the value threshold.
	if _, err := tbl.Apply(ctx, ws...); err != nil {
		t.Fatal(err)
	}
	threshold := c.db.Opts().ValueThreshold
	err = c.db.View(func(txn *badger.Txn) error {
		return tbl.eachGroup(txn, 0, func(bound uint64, g *logGroup) (bool, error) {
			if size := int64(5 + 8 + 4*g.n + len(g.data)); size >= threshold {
				return false, fmt.Errorf("log group %d: about %d bytes, at or above the value threshold %d", bound, size, threshold)
			}
			return true, nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	before := dumpOwner(t, c.db, "t").groups
	if before < 2 {
		t.Fatalf("200 changes of 256 bytes in %d log groups under a %d-byte threshold", before, threshold)
	}

	groupPieceMaxForTest.Store(1 << 20)
	defer groupPieceMaxForTest.Store(0)
	last, err := tbl.Apply(ctx, ws...)
	if err != nil {
		t.Fatal(err)
	}
	if d := dumpOwner(t, c.db, "t"); d.groups != before+1 || len(d.log) != 400 {
		t.Fatalf("one Apply of 200 changes: %d more log groups holding %d entries in all, want 1 more holding 400", d.groups-before, len(d.log))
	}
	if g := groupOf(t, c.db, "t", last-199); g != last {
		t.Fatalf("the first change's group is %d, want %d", g, last)
	}
	groupPieceMaxForTest.Store(4 << 10)
	if _, err := tbl.Apply(ctx, ws...); err != nil {
		t.Fatal(err)
	}
	// 200 entries of about 290 bytes in groups of up to 4 KiB.
	if n := dumpOwner(t, c.db, "t").groups - before - 1; n < 14 || n > 20 {
		t.Fatalf("an Apply of 56 KiB with 4 KiB groups: %d log groups", n)
	}
}

// copyDir copies the data dir src (closed) into dst.
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
}
