package replica

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/replmesh/replmesh/transport"
)

// TestOwnerRows_Property drives an owned table whose overlay is flushed
// every few keys (a random bound) with random commit groups, point reads,
// scans, restarts, and snapshots (rowTxn) held open across later writes
// and flushes, against a map model: each read sees the model at the
// table's head, each snapshot the model as of when it was taken, however
// much was written and flushed since, and the store replays to the model
// (checkOwnerStore, which reads the rows above the meta's Rows from the
// log) with the overlay holding rows not yet written.
func TestOwnerRows_Property(t *testing.T) {
	seed, fixed := testSeed(t)
	t.Logf("seed %d (replay: REPLMESH_SEED=%d go test -run TestOwnerRows_Property ./replica)", seed, seed)
	steps := 600
	if testing.Short() && !fixed {
		steps = 200
	}
	rng := rand.New(rand.NewPCG(seed, 0x0f1a))
	ovMaxKeysForTest.Store(int64(1 + rng.IntN(20)))
	defer ovMaxKeysForTest.Store(0)
	drainChunkForTest.Store(int64(1 + rng.IntN(4)))
	defer drainChunkForTest.Store(0)
	dir := filepath.Join(t.TempDir(), "owner")
	ctx := ctxT(t, 2*time.Minute)
	c := openOwnerTrimmedByTest(t, dir)
	defer func() { mustClose(t, c) }()
	tbl, err := c.Own("t")
	if err != nil {
		t.Fatal(err)
	}
	var keyList []string
	for i := range 2 + rng.IntN(40) {
		keyList = append(keyList, fmt.Sprintf("k%02d", i))
	}
	model := map[string]string{}
	type snapshot struct {
		txn  *badger.Txn
		m    ownerMeta
		done func()
		want map[string]string
	}
	var snaps []snapshot
	checkSnap := func(step int, s snapshot) {
		t.Helper()
		got := map[string]string{}
		err := tbl.scanValues(s.txn, nil, nil, nil, func(k, v []byte) (bool, error) {
			got[string(k)] = string(v)
			return true, nil
		})
		if err != nil {
			t.Fatalf("step %d: scan of the snapshot at %d: %v", step, s.m.Head, err)
		}
		if !maps.Equal(got, s.want) {
			t.Fatalf("step %d: the snapshot at %d holds %d rows, want %d: %v, want %v", step, s.m.Head, len(got), len(s.want), got, s.want)
		}
		for _, k := range keyList {
			v, ok, err := tbl.getRow(s.txn, []byte(k))
			if err != nil {
				t.Fatalf("step %d: get %s in the snapshot at %d: %v", step, k, s.m.Head, err)
			}
			if w, wok := s.want[k]; ok != wok || string(v) != w {
				t.Fatalf("step %d: get %s in the snapshot at %d = %q %v, want %q %v", step, k, s.m.Head, v, ok, w, wok)
			}
		}
	}
	behind := 0 // steps that found rows in the overlay
	var lastRows uint64
	for step := range steps {
		switch r := rng.IntN(20); {
		case r < 10:
			var ps []*Pending
			for range 1 + rng.IntN(4) {
				ws := make([]Write, 1+rng.IntN(3))
				for i := range ws {
					k := keyList[rng.IntN(len(keyList))]
					if rng.IntN(4) == 0 {
						ws[i] = Write{Key: []byte(k), Delete: true}
						delete(model, k)
						continue
					}
					v := fmt.Sprintf("v%d-%d", step, i)
					ws[i] = Write{Key: []byte(k), Value: []byte(v)}
					model[k] = v
				}
				p, err := tbl.Submit(ctx, ws...)
				if err != nil {
					t.Fatalf("step %d: submit: %v", step, err)
				}
				ps = append(ps, p)
			}
			for _, p := range ps {
				if _, err := p.Wait(ctx); err != nil {
					t.Fatalf("step %d: write: %v", step, err)
				}
			}
			tbl.mu.Lock()
			if tbl.meta.Rows < tbl.meta.Head {
				behind++
			}
			tbl.mu.Unlock()
			// The meta's Rows never goes back (a trim goes by it).
			var m ownerMeta
			err := c.db.View(func(txn *badger.Txn) error {
				var err error
				m, err = tbl.readMeta(txn)
				return err
			})
			if err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
			if m.Rows < lastRows {
				t.Fatalf("step %d: the meta's rows through %d, before through %d", step, m.Rows, lastRows)
			}
			lastRows = m.Rows
		case r < 13:
			k := keyList[rng.IntN(len(keyList))]
			v, ok, err := tbl.Get([]byte(k))
			if err != nil {
				t.Fatalf("step %d: get %s: %v", step, k, err)
			}
			if w, wok := model[k]; ok != wok || string(v) != w {
				t.Fatalf("step %d: get %s = %q %v, want %q %v", step, k, v, ok, w, wok)
			}
		case r < 15:
			if len(snaps) < 4 {
				txn, m, done, err := tbl.rowTxn()
				if err != nil {
					t.Fatalf("step %d: snapshot: %v", step, err)
				}
				if m.Head != tbl.Head() {
					t.Fatalf("step %d: snapshot at %d, head %d", step, m.Head, tbl.Head())
				}
				snaps = append(snaps, snapshot{txn, m, done, maps.Clone(model)})
			}
		case r < 18:
			if len(snaps) > 0 {
				i := rng.IntN(len(snaps))
				checkSnap(step, snaps[i])
				if rng.IntN(2) == 0 {
					snaps[i].done()
					snaps = append(snaps[:i], snaps[i+1:]...)
				}
			}
		case r < 19:
			checkOwnerStore(t, c.db, "t", 1, model, nil)
			checkOwnerReads(t, tbl, model, keyList)
		default:
			for _, s := range snaps {
				checkSnap(step, s)
				s.done()
			}
			snaps = nil
			mustClose(t, c)
			// A clean close writes the overlay's rows.
			c = openOwnerTrimmedByTest(t, dir)
			d := dumpOwner(t, c.db, "t")
			mustClose(t, c)
			if d.meta.Rows != d.meta.Head {
				t.Fatalf("step %d: after a clean close the rows are through %d, head %d", step, d.meta.Rows, d.meta.Head)
			}
			c = openOwnerTrimmedByTest(t, dir)
			if tbl, err = c.Own("t"); err != nil {
				t.Fatalf("step %d: own: %v", step, err)
			}
		}
	}
	for _, s := range snaps {
		checkSnap(steps, s)
		s.done()
	}
	checkOwnerStore(t, c.db, "t", 1, model, nil)
	checkOwnerReads(t, tbl, model, keyList)
	if behind == 0 {
		t.Fatalf("no write left rows in the overlay (bound %d)", ovMaxKeysForTest.Load())
	}
}

// openSmallOverlay opens an owner on disk whose overlay is flushed at
// bound keys and drained chunk rows a direct commit, and owns table t.
func openSmallOverlay(t *testing.T, bound, chunk int64) (*Component, *OwnedTable) {
	t.Helper()
	ovMaxKeysForTest.Store(bound)
	t.Cleanup(func() { ovMaxKeysForTest.Store(0) })
	drainChunkForTest.Store(chunk)
	t.Cleanup(func() { drainChunkForTest.Store(0) })
	c := openOwnerTrimmedByTest(t, filepath.Join(t.TempDir(), "owner"))
	t.Cleanup(func() { mustClose(t, c) })
	tbl, err := c.Own("t")
	if err != nil {
		t.Fatal(err)
	}
	return c, tbl
}

// TestOwnerRows_DirectRun: an overlay found full with more than half as
// many keys as changes (new keys) is left to the commits, which write
// their rows themselves for directRun times the bound, each with a few
// of the overlay's, until it is empty; then the overlay takes them again.
// A repeated key keeps the overlay, flushed when full.
func TestOwnerRows_DirectRun(t *testing.T) {
	const bound = 8
	c, tbl := openSmallOverlay(t, bound, 3)
	ctx := ctxT(t, time.Minute)
	model := map[string]string{}
	n := 0
	put := func(k string) {
		t.Helper()
		v := fmt.Sprintf("v%d", n)
		n++
		if _, err := tbl.Put(ctx, []byte(k), []byte(v)); err != nil {
			t.Fatal(err)
		}
		model[k] = v
	}
	rows := func(want uint64, what string) {
		t.Helper()
		d := dumpOwner(t, c.db, "t")
		if d.meta.Rows != want {
			t.Fatalf("%s: rows through %d (head %d), want %d", what, d.meta.Rows, d.meta.Head, want)
		}
	}
	// A hot key: the overlay fills never, however many changes.
	for range 5 * bound {
		put("hot")
	}
	rows(0, "a hot key")
	for i := range bound - 1 {
		put(fmt.Sprintf("new%03d", i))
	}
	rows(0, "the overlay filling")
	// The overlay is full (8 keys of 47 changes): flushed, and it stays.
	put("next")
	rows(uint64(5*bound+bound-1), "after a flush of an overlay that paid")
	// New keys only ("next" and these): the next full overlay did not
	// pay.
	for i := range bound - 1 {
		put(fmt.Sprintf("fresh%03d", i))
	}
	flushed := uint64(5*bound + bound - 1)
	head := tbl.Head()
	put("direct")
	rows(flushed, "a direct commit draining the overlay")
	put("direct1")
	rows(flushed, "a direct commit draining the overlay")
	put("direct2")
	rows(head+3, "the direct commit that drained the overlay")
	for i := range directRun*bound - 3 {
		put(fmt.Sprintf("direct%03d", i))
	}
	head = tbl.Head()
	rows(head, "the direct run")
	put("again")
	rows(head, "after the direct run")
	checkOwnerStore(t, c.db, "t", 1, model, nil)
	checkOwnerReads(t, tbl, model, slices.Collect(maps.Keys(model)))
}

// TestOwnerRows_FailedDirectCommit: a direct commit that fails (built,
// then failed as when badger refuses it) gives the overlay rows it took
// back, and the table goes on at its durable head with its rows whole.
func TestOwnerRows_FailedDirectCommit(t *testing.T) {
	const bound = 8
	c, tbl := openSmallOverlay(t, bound, 3)
	ctx := ctxT(t, time.Minute)
	model := map[string]string{}
	put := func(k string) {
		t.Helper()
		if _, err := tbl.Put(ctx, []byte(k), []byte("v-"+k)); err != nil {
			t.Fatal(err)
		}
		model[k] = "v-" + k
	}
	for i := range bound {
		put(fmt.Sprintf("k%02d", i))
	}
	put("k99") // a direct run begins: this commit drains 3 of the 8
	var before, after map[string]ovRow
	var direct bool
	pw := &pendingWrite{Pending: Pending{done: make(chan struct{})}, table: tbl,
		changes: []Change{{Op: OpPut, Key: []byte("k00"), Value: []byte("lost")}, {Op: OpDelete, Key: []byte("k01")}}}
	err := c.inCommitter(func() {
		before = maps.Clone(tbl.ov)
		direct = tbl.direct > 0
		g := c.buildGroup([]*pendingWrite{pw})
		if g.err == nil {
			g.txn.Discard()
		}
		c.finishGroup(g, errors.New("injected"))
		after = maps.Clone(tbl.ov)
	})
	if err != nil {
		t.Fatal(err)
	}
	if !direct || len(before) != bound-3 {
		t.Fatalf("direct run %v, %d overlay rows: want a direct run with %d left", direct, len(before), bound-3)
	}
	if pw.err == nil {
		t.Fatal("the failed commit reported no error")
	}
	if !maps.Equal(before, after) {
		t.Fatalf("overlay after the failed commit %v, before %v", after, before)
	}
	for i := range 2 * bound {
		put(fmt.Sprintf("n%02d", i))
	}
	checkOwnerStore(t, c.db, "t", 1, model, nil)
	checkOwnerReads(t, tbl, model, slices.Collect(maps.Keys(model)))
}

// TestOwnerRows_MigratesFormat3: a table of owner format 3 (rows written
// with every commit, no Rows in its meta) opens as format 4 with Rows at
// its Head (its log, trimmed, could not rebuild them), its rows read as
// they were, and writes after it go to the
// overlay and survive a restart.
func TestOwnerRows_MigratesFormat3(t *testing.T) {
	dir := t.TempDir()
	model, written := map[string]string{}, map[uint64]transport.Change{}
	func() {
		c := openWith(t, "svc", "o1", dir, "", nil)
		defer mustClose(t, c)
		tbl, err := c.Own("t")
		if err != nil {
			t.Fatal(err)
		}
		ctx := ctxT(t, time.Minute)
		for i := range 300 {
			ws := []Write{{Key: fmt.Appendf(nil, "k%03d", i%120), Value: fmt.Appendf(nil, "v%d", i)}}
			if i%9 == 0 {
				ws = []Write{{Key: fmt.Appendf(nil, "k%03d", (i*7)%120), Delete: true}}
			}
			last, err := tbl.Apply(ctx, ws...)
			if err != nil {
				t.Fatal(err)
			}
			recordApply(model, written, last, ws)
		}
		// Trimmed: the log no longer holds the changes of every row.
		tbl.mu.Lock()
		tbl.retention = Retention{MaxChanges: 50}
		tbl.mu.Unlock()
		if err := tbl.trim(time.Now()); err != nil {
			t.Fatal(err)
		}
		if tbl.meta.First <= 1 {
			t.Fatalf("First %d after the trim", tbl.meta.First)
		}
	}()
	// Format 3's meta: no Rows (the field did not exist), Format 3.
	db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(txn *badger.Txn) error {
		return rewriteMeta(txn, "t", func(m *ownerMeta) { m.Format, m.Rows = formatSegments, 0 })
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}

	keys := slices.Sorted(maps.Keys(model))
	keys = append(keys, "zz")
	c := openWith(t, "svc", "o1", dir, "", nil)
	tbl, err := c.Own("t")
	if err != nil {
		t.Fatal(err)
	}
	if m := tbl.meta; m.Format != ownFormat || m.Rows != m.Head {
		t.Fatalf("after Own: format %d, rows %d, head %d; want format %d, rows = head", m.Format, m.Rows, m.Head, ownFormat)
	}
	checkOwnerReads(t, tbl, model, keys)
	ctx := ctxT(t, time.Minute)
	seq, err := tbl.Put(ctx, []byte("k001"), []byte("after"))
	if err != nil {
		t.Fatal(err)
	}
	model["k001"] = "after"
	written[seq] = transport.Change{Seq: seq, Op: transport.OpPut, Key: []byte("k001"), Value: []byte("after"), TxnEnd: true}
	mustClose(t, c)
	c = openWith(t, "svc", "o1", dir, "", nil)
	defer mustClose(t, c)
	tbl, err = c.Own("t")
	if err != nil {
		t.Fatal(err)
	}
	checkOwnerReads(t, tbl, model, keys)
	checkOwnerStore(t, c.db, "t", tbl.meta.First, model, written)
}
