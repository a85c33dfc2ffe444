package replica

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"github.com/dgraph-io/badger/v4"
	"github.com/replmesh/replmesh/transport"
	"github.com/vmihailenco/msgpack/v5"
)

// walRig is a durable resident replica's store driven directly: the
// genStore, the resident state beside it (as the Replica keeps them), the
// model of its rows; reopen closes the component, as a crash would leave
// it, and loads everything again.
type walRig struct {
	t     *testing.T
	dir   string
	c     *Component
	g     *genStore
	res   *resident
	cur   cursor
	model map[string]string
	// walMin is the checkpoint bound of the genStores it opens
	// (math.MaxInt64: checkpoints only when the test runs one), seg
	// their segments' size (0: a quarter of the bound).
	walMin int64
	seg    int64
}

var errKill = errors.New("killed here")

func newWALRig(t *testing.T, walMin int64) *walRig {
	w := &walRig{t: t, dir: t.TempDir(), walMin: walMin, model: map[string]string{}}
	w.open(true)
	t.Cleanup(func() {
		if w.c != nil {
			mustClose(t, w.c)
		}
	})
	return w
}

// open opens the component and the store (bulk: resident; else disk
// only, which converts a bulk generation) and loads the rows.
func (w *walRig) open(bulk bool) {
	t := w.t
	t.Helper()
	w.c = openComponent(t, "svc", "i1", w.dir, "")
	w.g = &genStore{c: w.c, base: replicaBase("svc", "t"), table: "t", log: testLogger(t), bulk: bulk}
	w.g.wal.min, w.g.wal.seg = w.walMin, w.seg
	cur, err := w.g.load()
	must(t, err)
	w.cur = cur
	if !bulk {
		w.res = nil
		return
	}
	rows, n, err := w.c.loadResident(w.g.base, cur)
	must(t, err)
	// Checkpoints run at once, on the caller's goroutine; no hash index.
	w.res = newResident(cur, rows, n, func(f func()) bool { f(); return true }, nil, nil)
	w.res.minRows = math.MaxInt
	w.g.wal.res = w.res
}

func (w *walRig) reopen(bulk bool) {
	w.t.Helper()
	w.g.closeWAL()
	w.g.closeFile()
	mustClose(w.t, w.c)
	w.open(bulk)
}

// transfer runs a full transfer of rows into a fresh generation.
func (w *walRig) transfer(rows map[string]string) {
	t := w.t
	t.Helper()
	next := bulkTransferRows(t, w.g, w.cur, rows, true, true)
	tree := newResRows()
	var n int64
	for _, k := range sortedKeys(rows) {
		n += loadRow(tree, []byte(k), []byte(rows[k]))
	}
	w.res.switchTo(next, tree, n)
	w.cur, w.model = next, maps.Clone(rows)
}

// apply applies chs (their seqs set here) as one batch.
func (w *walRig) apply(chs []transport.Change) error {
	next := w.cur
	for i := range chs {
		next.Seq++
		chs[i].Seq = next.Seq
	}
	if err := w.g.apply(next, chs); err != nil {
		return err
	}
	w.res.apply(next, chs)
	w.cur = next
	for _, ch := range chs {
		if ch.Op == transport.OpDelete {
			delete(w.model, string(ch.Key))
		} else {
			w.model[string(ch.Key)] = string(ch.Value)
		}
	}
	return nil
}

// randomBatch is up to 20 changes over keys keys.
func randomBatch(rng *rand.Rand, keys int) []transport.Change {
	chs := make([]transport.Change, 1+rng.IntN(20))
	for i := range chs {
		chs[i].Key = fmt.Appendf(nil, "k%04d", rng.IntN(keys))
		if rng.IntN(10) < 3 {
			chs[i].Op = transport.OpDelete
		} else {
			chs[i].Op = transport.OpPut
			chs[i].Value = bytes.Repeat([]byte{byte('a' + rng.IntN(26))}, rng.IntN(100))
		}
	}
	return chs
}

// check compares the resident rows (and, bulk false, badger's rows of
// the cursor's generation) with the model, and the rows files on disk
// with the one the store names.
func (w *walRig) check(what string) {
	t := w.t
	t.Helper()
	got := map[string]string{}
	if w.res != nil {
		must(t, w.res.view.Load().walk(func(k, v []byte) (bool, error) { got[string(k)] = string(v); return true, nil }))
	} else {
		// A disk-only replica's read: badger, or a bulk generation's
		// rows file and overlay (diskbulk.go).
		v, _, err := w.g.snapshotView()
		must(t, err)
		err = v.scan(nil, nil, nil, func(k, val []byte) (bool, error) {
			got[string(k)] = string(val)
			return true, nil
		})
		v.release()
		must(t, err)
	}
	if !maps.Equal(got, w.model) {
		t.Fatalf("%s: %d rows, want %d:\n%s", what, len(got), len(w.model), mapDiff(got, w.model))
	}
}

// checkFiles checks, after a load, that the rows dir holds the live file
// of the replica alone (bulk) or none.
func (w *walRig) checkFiles(what string) {
	t := w.t
	t.Helper()
	must(t, w.c.dropMarked())
	ents, err := os.ReadDir(filepath.Join(w.dir, bulkDir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	var want []string
	if w.cur.Bulk {
		want = []string{filepath.Base(w.g.wal.path)}
		for _, s := range w.g.wal.segs {
			want = append(want, filepath.Base(s.path))
		}
		slices.Sort(want)
	}
	if !slices.Equal(names, want) {
		t.Fatalf("%s: rows files %v, want %v", what, names, want)
	}
}

func TestWAL_EncodeDecode(t *testing.T) {
	chs := []transport.Change{
		{Op: transport.OpPut, Key: []byte("a"), Value: []byte("1")},
		{Op: transport.OpDelete, Key: []byte("b")},
		{Op: transport.OpPut, Key: []byte("c"), Value: nil},
		{Op: transport.OpPut, Key: bytes.Repeat([]byte("k"), 300), Value: bytes.Repeat([]byte("v"), 70000)},
	}
	b := appendWALBatch(nil, chs)
	got, err := decodeAllWAL(b)
	must(t, err)
	if !sameChanges(got, chs) {
		t.Fatalf("decoded %+v, want %+v", got, chs)
	}
	for _, n := range []int{0, 1, 2, 5, len(b) - 1} {
		if _, err := decodeAllWAL(b[:n]); err == nil {
			t.Errorf("decoded an entry cut to %d of %d bytes", n, len(b))
		}
	}
	if _, err := decodeAllWAL(append(bytes.Clone(b), 0)); err == nil {
		t.Error("decoded an entry with a byte added")
	}
}

func decodeAllWAL(b []byte) ([]transport.Change, error) {
	var chs []transport.Change
	err := decodeWALBatch(b, func(op transport.Op, k, v []byte) error {
		chs = append(chs, transport.Change{Op: op, Key: k, Value: v})
		return nil
	})
	return chs, err
}

func sameChanges(a, b []transport.Change) bool {
	return slices.EqualFunc(a, b, func(x, y transport.Change) bool {
		return x.Op == y.Op && bytes.Equal(x.Key, y.Key) && bytes.Equal(x.Value, y.Value)
	})
}

// A WAL entry that decodes re-encodes to one that decodes the same.
func FuzzDecodeWALBatch(f *testing.F) {
	f.Add(appendWALBatch(nil, []transport.Change{{Op: transport.OpPut, Key: []byte("a"), Value: []byte("1")}, {Op: transport.OpDelete, Key: []byte("b")}}))
	f.Add([]byte{walFormat, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		chs, err := decodeAllWAL(b)
		if err != nil {
			return
		}
		again, err := decodeAllWAL(appendWALBatch(nil, chs))
		if err != nil || !sameChanges(again, chs) {
			t.Fatalf("re-encoded %d changes: %d, %v", len(chs), len(again), err)
		}
	})
}

// walRecords reads the live generation's WAL: the seqs of its records
// above base.
func (w *walRig) walRecords(base uint64) []uint64 {
	w.t.Helper()
	var seqs []uint64
	_, err := w.c.walScan(w.g.log, genPrefix(w.g.base, w.cur.Gen), w.cur.Gen, base, false, func(rec *walRecord) error {
		seqs = append(seqs, rec.cur.Seq)
		return nil
	})
	must(w.t, err)
	return seqs
}

// storedCursor is badger's cursor of the rig's replica.
func (w *walRig) storedCursor() cursor {
	w.t.Helper()
	var cur cursor
	must(w.t, w.c.db.View(func(txn *badger.Txn) (err error) {
		cur, err = readCursor(txn, w.g.base)
		return err
	}))
	return cur
}

// An applied batch of a bulk generation is one record in the WAL's
// segment files, not a badger write: neither rows under the generation's
// prefix nor the cursor; the segments rotate at their size; a load takes
// the cursor from the last record.
func TestWAL_ApplyWritesARecordPerBatch(t *testing.T) {
	w := newWALRig(t, math.MaxInt64)
	w.seg, w.g.wal.seg = 2<<10, 2<<10
	w.transfer(map[string]string{"a": "1", "b": "2"})
	switched := w.storedCursor()
	batch := func(n, vlen int) []transport.Change {
		chs := make([]transport.Change, n)
		for i := range chs {
			chs[i] = transport.Change{Op: transport.OpPut, Key: fmt.Appendf(nil, "k%04d", i), Value: bytes.Repeat([]byte{'v'}, vlen)}
		}
		return chs
	}
	var want []uint64
	for range 30 {
		must(t, w.apply(batch(5, 100)))
		want = append(want, w.cur.Seq)
	}
	must(t, w.apply(batch(3, 70000))) // larger than a segment: one record
	want = append(want, w.cur.Seq)
	if got := w.walRecords(switched.Seq); !slices.Equal(got, want) {
		t.Fatalf("WAL records at seqs %v, want %v", got, want)
	}
	if len(w.g.wal.segs) < 5 {
		t.Fatalf("%d segments of 2 KiB for %d records of about 600 bytes", len(w.g.wal.segs), len(want))
	}
	if n := countKeys(t, w.c, genPrefix(w.g.base, w.cur.Gen)); n != 0 {
		t.Fatalf("%d rows under the generation's prefix, want none", n)
	}
	if got := w.storedCursor(); got != switched {
		t.Fatalf("badger's cursor %+v after the applies, want the switch's %+v", got, switched)
	}
	applied := w.cur
	w.reopen(true)
	if w.cur != applied {
		t.Fatalf("reopened at cursor %+v, want the last record's %+v", w.cur, applied)
	}
	w.check("reopened")
	w.checkFiles("reopened")
	// The epoch and the log id travel in the records.
	next := w.cur
	next.Epoch, next.LogID, next.Seq = next.Epoch+1, "another log", next.Seq+1
	chs := []transport.Change{{Op: transport.OpPut, Key: []byte("e"), Value: []byte("1"), Seq: next.Seq}}
	must(t, w.g.apply(next, chs))
	w.res.apply(next, chs)
	w.cur, w.model["e"] = next, "1"
	w.reopen(true)
	if w.cur != next {
		t.Fatalf("reopened at cursor %+v, want %+v", w.cur, next)
	}
	w.check("reopened after a new epoch")
}

// The loaded replica equals the model after random batches, checkpoints
// (some cut short by a crash at one of their steps), records torn by a
// crash in their write, full transfers and reopens; and so does the
// disk-only conversion at the end.
func TestWAL_RandomLoadEqualsModel(t *testing.T) {
	forSeeds(t, func(t *testing.T, seed uint64) {
		rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
		w := newWALRig(t, 2<<10)
		w.transfer(map[string]string{"k0001": "x", "k0002": "y"})
		ckpts := 0
		for step := range 400 {
			switch r := rng.IntN(100); {
			case r < 2:
				rows := map[string]string{}
				for range rng.IntN(200) {
					rows[fmt.Sprintf("k%04d", rng.IntN(300))] = fmt.Sprintf("t%d", step)
				}
				w.transfer(rows)
			case r < 7:
				w.reopen(true)
				w.check(fmt.Sprintf("step %d: reopened", step))
				w.checkFiles(fmt.Sprintf("step %d: reopened", step))
			case r < 10:
				// The process dies while a batch's record is being
				// written: a part of it is on disk; the batch was
				// not applied.
				w.tornApply(rng, randomBatch(rng, 300))
				w.check(fmt.Sprintf("step %d: reopened after a torn record", step))
				w.checkFiles(fmt.Sprintf("step %d: reopened after a torn record", step))
			case r < 13:
				// The next checkpoint dies at a random step; the
				// process with it.
				steps := []string{"written", "recorded", "old file deleted", "WAL deleted"}
				kill := steps[rng.IntN(len(steps))]
				killed := false
				w.g.wal.hook = func(s string) error {
					if s == kill {
						killed = true
						return errKill
					}
					return nil
				}
				for !killed {
					must(t, w.apply(randomBatch(rng, 300)))
				}
				w.reopen(true)
				w.check(fmt.Sprintf("step %d: reopened after a checkpoint killed at %q", step, kill))
				w.checkFiles(fmt.Sprintf("step %d: reopened after a kill", step))
			default:
				must(t, w.apply(randomBatch(rng, 300)))
				w.check(fmt.Sprintf("step %d", step))
			}
			if w.g.wal.path != w.c.bulkPath(genPrefix(w.g.base, w.cur.Gen)) {
				ckpts++
			}
		}
		if ckpts == 0 {
			t.Fatal("no checkpoint was recorded")
		}
		w.reopen(true)
		w.check("reopened at the end")
		w.reopen(false)
		w.check("converted to disk only")
		w.checkFiles("converted to disk only")
	})
}

// tornApply writes the record of chs, cuts it at a random length short of
// whole (a crash in its write: the batch was never published), reopens
// and checks that the cursor is the one before the batch.
func (w *walRig) tornApply(rng *rand.Rand, chs []transport.Change) {
	t := w.t
	t.Helper()
	before, model := w.cur, maps.Clone(w.model)
	must(t, w.apply(chs))
	seg := w.g.wal.segs[len(w.g.wal.segs)-1].path
	st, err := os.Stat(seg)
	must(t, err)
	rec := w.g.wal.entries[len(w.g.wal.entries)-1].bytes
	must(t, os.Truncate(seg, st.Size()-1-rng.Int64N(rec)))
	w.model = model
	w.reopen(true)
	if w.cur != before {
		t.Fatalf("reopened after a torn record at %+v, want %+v", w.cur, before)
	}
}

// A crash at any step of a checkpoint leaves a state that loads as the
// model: before the record, the old file and the whole WAL; after it, the
// new file and the WAL above its seq. The leftovers are deleted at the
// load, and the next checkpoint completes.
func TestWAL_CheckpointCrash(t *testing.T) {
	for _, kill := range []string{"written", "recorded", "old file deleted", "WAL deleted", ""} {
		name := kill
		if name == "" {
			name = "complete"
		}
		t.Run(name, func(t *testing.T) {
			w := newWALRig(t, math.MaxInt64)
			w.seg, w.g.wal.seg = 4<<10, 4<<10
			rows := map[string]string{}
			for i := range 500 {
				rows[fmt.Sprintf("k%04d", i)] = "v0"
			}
			w.transfer(rows)
			rng := rand.New(rand.NewPCG(3, uint64(len(kill))))
			for range 50 {
				must(t, w.apply(randomBatch(rng, 600)))
			}
			atS := w.res.view.Load()
			for range 10 {
				must(t, w.apply(randomBatch(rng, 600)))
			}
			w.g.wal.hook = func(s string) error {
				if s == kill {
					return errKill
				}
				return nil
			}
			err := w.g.checkpoint(atS, nil)
			if kill != "" && !errors.Is(err, errKill) || kill == "" && err != nil {
				t.Fatalf("checkpoint: %v", err)
			}
			w.reopen(true)
			w.check("reopened")
			w.checkFiles("reopened")
			recorded := kill != "written"
			if got := w.g.wal.path == w.c.ckptPath(genPrefix(w.g.base, w.cur.Gen), atS.cur.Seq); got != recorded {
				t.Fatalf("the checkpoint is live: %v, want %v", got, recorded)
			}
			want := 60
			if recorded {
				want = 10 // the leftovers of the killed one are gone
			}
			if n := len(w.g.wal.entries); n != want {
				t.Fatalf("%d WAL records above the file after the load, want %d", n, want)
			}
			for range 10 {
				must(t, w.apply(randomBatch(rng, 600)))
			}
			must(t, w.g.checkpoint(w.res.view.Load(), nil))
			if n := len(w.g.wal.entries); n != 0 || len(w.g.wal.segs) != 1 {
				t.Fatalf("%d WAL records above the file, %d segments after a checkpoint at the cursor, want none and the open one", n, len(w.g.wal.segs))
			}
			w.reopen(true)
			w.check("reopened after the next checkpoint")
			w.checkFiles("reopened after the next checkpoint")
		})
	}
}

// A checkpoint under way when a full transfer switches generations
// records nothing and deletes its file.
func TestWAL_CheckpointAbandonedByTransfer(t *testing.T) {
	w := newWALRig(t, math.MaxInt64)
	w.transfer(map[string]string{"a": "1", "b": "2"})
	rng := rand.New(rand.NewPCG(5, 6))
	for range 20 {
		must(t, w.apply(randomBatch(rng, 50)))
	}
	v := w.res.view.Load()
	path := w.c.ckptPath(genPrefix(w.g.base, w.cur.Gen), v.cur.Seq)
	w.g.wal.hook = func(s string) error {
		if s == "written" {
			w.transfer(map[string]string{"new": "rows"})
		}
		return nil
	}
	if err := w.g.checkpoint(v, nil); !errors.Is(err, errCkptAbandoned) {
		t.Fatalf("checkpoint across a transfer: %v, want abandoned", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the abandoned checkpoint's file: %v", err)
	}
	must(t, w.c.db.View(func(txn *badger.Txn) error {
		ck, err := readCkpt(txn, w.g.base)
		if ck.ok {
			t.Errorf("checkpoint record %+v after the transfer", ck)
		}
		return err
	}))
	w.g.wal.hook = nil
	for range 5 {
		must(t, w.apply(randomBatch(rng, 50)))
	}
	w.reopen(true)
	w.check("reopened")
	w.checkFiles("reopened")
}

// applyOverlay writes a batch as versions before the WAL did: a row per
// put, a tombstone per delete, under the generation's prefix, with the
// cursor.
func (w *walRig) applyOverlay(chs []transport.Change) {
	t := w.t
	t.Helper()
	next := w.cur
	prefix := genPrefix(w.g.base, next.Gen)
	must(t, w.c.db.Update(func(txn *badger.Txn) error {
		for i := range chs {
			next.Seq++
			chs[i].Seq = next.Seq
			k := concat(prefix, chs[i].Key)
			if chs[i].Op == transport.OpDelete {
				if err := txn.SetEntry(badger.NewEntry(k, nil).WithMeta(metaTombstone)); err != nil {
					return err
				}
				delete(w.model, string(chs[i].Key))
			} else {
				if err := txn.Set(k, chs[i].Value); err != nil {
					return err
				}
				w.model[string(chs[i].Key)] = string(chs[i].Value)
			}
		}
		b, err := marshalCursor(next)
		if err != nil {
			return err
		}
		return txn.Set(cursorKey(w.g.base), b)
	}))
	w.cur = next
}

// A data dir of an older version (a bulk generation with overlay rows and
// tombstones) loads; the WAL continues it; the first checkpoint holds the
// overlay's effect and deletes it; and a disk-only conversion of such a
// dir equals the model too.
func TestWAL_LoadsTheOverlayFormat(t *testing.T) {
	for _, tc := range []struct {
		name       string
		checkpoint bool
	}{{"checkpoint", true}, {"disk only", false}} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWALRig(t, math.MaxInt64)
			rows := map[string]string{}
			for i := range 300 {
				rows[fmt.Sprintf("k%04d", i)] = "v0"
			}
			w.transfer(rows)
			rng := rand.New(rand.NewPCG(7, 8))
			for range 30 {
				w.applyOverlay(randomBatch(rng, 400))
			}
			w.reopen(true)
			w.check("the overlay format reopened")
			for range 30 {
				must(t, w.apply(randomBatch(rng, 400)))
			}
			w.reopen(true)
			w.check("overlay and WAL reopened")
			if !tc.checkpoint {
				w.reopen(false)
				w.check("overlay and WAL converted to disk only")
				w.checkFiles("converted")
				return
			}
			must(t, w.g.checkpoint(w.res.view.Load(), nil))
			if n := countKeys(t, w.c, genPrefix(w.g.base, w.cur.Gen)); n != 0 {
				t.Fatalf("%d overlay rows after the checkpoint, want none", n)
			}
			w.reopen(true)
			w.check("checkpointed overlay reopened")
			w.checkFiles("checkpointed overlay reopened")
		})
	}
}

// newWALRigApplied is a rig after a transfer and batches random batches
// (the random source seeded with seed, returned).
func newWALRigApplied(t *testing.T, batches int, seed uint64) (*walRig, *rand.Rand) {
	w := newWALRig(t, math.MaxInt64)
	w.transfer(map[string]string{"a": "1"})
	rng := rand.New(rand.NewPCG(seed, seed+1))
	for range batches {
		must(t, w.apply(randomBatch(rng, 50)))
	}
	return w, rng
}

// A record cut at any byte, or with any byte of it changed, ends the WAL
// before it: the load takes the record before it as the cursor and
// truncates the segment there.
func TestWAL_TornTail(t *testing.T) {
	w, rng := newWALRigApplied(t, 10, 11)
	before := w.cur
	must(t, w.apply(randomBatch(rng, 50)))
	seg := w.g.wal.segs[len(w.g.wal.segs)-1].path
	full, err := os.ReadFile(seg)
	must(t, err)
	whole := int64(len(full)) - w.g.wal.entries[len(w.g.wal.entries)-1].bytes
	base := w.storedCursor().Seq
	load := func(what string, b []byte) {
		t.Helper()
		must(t, os.WriteFile(seg, b, 0o644))
		ld, err := w.c.walScan(w.g.log, genPrefix(w.g.base, w.cur.Gen), w.cur.Gen, base, true, nil)
		must(t, err)
		if !ld.ok || ld.cur != before {
			t.Fatalf("%s: loaded cursor %+v (%v), want %+v", what, ld.cur, ld.ok, before)
		}
		st, err := os.Stat(seg)
		must(t, err)
		if st.Size() != whole {
			t.Fatalf("%s: segment of %d bytes after the load, want %d", what, st.Size(), whole)
		}
	}
	for cut := whole; cut < int64(len(full)); cut++ {
		load(fmt.Sprintf("cut at %d", cut), full[:cut])
	}
	for at := whole; at < int64(len(full)); at++ {
		b := bytes.Clone(full)
		b[at] ^= 0x5a
		load(fmt.Sprintf("byte %d changed", at), b)
	}
	load("a record's length of zeros after it", append(bytes.Clone(full[:whole]), make([]byte, 100)...))
	// The whole load: the batch is gone, the rest is there.
	must(t, os.WriteFile(seg, full[:whole+7], 0o644))
	w.reopen(true)
	if w.cur != before {
		t.Fatalf("reopened at %+v, want %+v", w.cur, before)
	}
	must(t, w.apply(randomBatch(rng, 50))) // continues the chain
	w.model = map[string]string{}
	must(t, w.res.view.Load().walk(func(k, v []byte) (bool, error) { w.model[string(k)] = string(v); return true, nil }))
	w.reopen(true)
	w.check("reopened after a batch past the torn one")
}

// The chain across segments: a segment whose end is torn is truncated and
// the next one read on when its records follow; a record that does not
// follow ends the WAL, and the segments after it are deleted.
func TestWAL_SegmentsChain(t *testing.T) {
	w := newWALRig(t, math.MaxInt64)
	w.seg, w.g.wal.seg = 1<<10, 1<<10
	w.transfer(map[string]string{"a": "1"})
	rng := rand.New(rand.NewPCG(13, 14))
	models := map[uint64]map[string]string{}
	for range 40 {
		must(t, w.apply(randomBatch(rng, 50)))
		models[w.cur.Seq] = maps.Clone(w.model)
	}
	if len(w.g.wal.segs) < 4 {
		t.Fatalf("%d segments", len(w.g.wal.segs))
	}
	// Garbage at the end of the first segment: what a failed write that
	// could not be truncated leaves.
	first := w.g.wal.segs[0].path
	f, err := os.OpenFile(first, os.O_WRONLY|os.O_APPEND, 0)
	must(t, err)
	_, err = f.Write([]byte{0, 0, 0, 9, 1, 2, 3})
	must(t, errors.Join(err, f.Close()))
	end := w.cur
	w.reopen(true)
	if w.cur != end {
		t.Fatalf("reopened at %+v past a torn segment end, want %+v", w.cur, end)
	}
	w.check("reopened past a torn segment end")
	// A changed byte in the third segment's first record: the WAL ends
	// at the second segment's last record.
	segs := slices.Clone(w.g.wal.segs)
	b, err := os.ReadFile(segs[2].path)
	must(t, err)
	b[walRecHeader+3] ^= 1
	must(t, os.WriteFile(segs[2].path, b, 0o644))
	w.reopen(true)
	if w.cur.Seq != segs[1].last {
		t.Fatalf("reopened at seq %d after a corrupt record, want %d", w.cur.Seq, segs[1].last)
	}
	w.model = models[w.cur.Seq]
	w.check("reopened after a corrupt record")
	w.checkFiles("reopened after a corrupt record")
	for _, s := range segs[3:] {
		if _, err := os.Stat(s.path); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("segment %s after the WAL's end: %v", filepath.Base(s.path), err)
		}
	}
}

// A record's write that fails (the disk full) leaves nothing of it: the
// apply fails with ErrDiskFull, the segment is as before, and the next
// apply continues from the seq before it.
func TestWAL_WriteFailureTruncates(t *testing.T) {
	w, rng := newWALRigApplied(t, 5, 15)
	seg := w.g.wal.segs[len(w.g.wal.segs)-1].path
	st, err := os.Stat(seg)
	must(t, err)
	before := w.cur
	w.g.wal.write = func(f *os.File, b []byte) (int, error) {
		n, err := f.Write(b[:len(b)/2])
		return n, errors.Join(err, syscall.ENOSPC)
	}
	if err := w.apply(randomBatch(rng, 50)); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("apply on a full disk: %v, want ErrDiskFull", err)
	}
	w.cur = before // the rig's seqs
	if st2, err := os.Stat(seg); err != nil || st2.Size() != st.Size() {
		t.Fatalf("segment after the failed write: %v, %v bytes; want %d", err, st2.Size(), st.Size())
	}
	w.g.wal.write = nil
	w.applyThenReopen(rng, "a failed write")
}

// applyThenReopen applies 5 random batches after a failed one (after
// what), reopens, and checks the cursor and the rows.
func (w *walRig) applyThenReopen(rng *rand.Rand, after string) {
	t := w.t
	t.Helper()
	for range 5 {
		must(t, w.apply(randomBatch(rng, 50)))
	}
	end := w.cur
	w.reopen(true)
	if w.cur != end {
		t.Fatalf("reopened after %s at %+v, want %+v", after, w.cur, end)
	}
	w.check("reopened after " + after)
}

// A record that decodes re-encodes to the same bytes; none panics.
func FuzzDecodeWALRecord(f *testing.F) {
	rec, err := appendWALRecord(nil, 7, cursor{LogID: "l", Epoch: 2, Seq: 9, Gen: 3, Bulk: true}, []transport.Change{{Op: transport.OpPut, Key: []byte("a"), Value: []byte("1")}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(rec[walRecHeader:])
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 1, 0})
	f.Fuzz(func(t *testing.T, p []byte) {
		rec, err := decodeWALRecord(p)
		if err != nil {
			return
		}
		chs, err := decodeAllWAL(rec.batch)
		if err != nil {
			t.Fatalf("a decoded record's batch: %v", err)
		}
		again, err := appendWALRecord(nil, rec.prev, rec.cur, chs)
		if err != nil {
			t.Fatal(err)
		}
		back, err := decodeWALRecord(again[walRecHeader:])
		if err != nil || back.prev != rec.prev || back.cur != rec.cur {
			t.Fatalf("re-encoded: %+v, %v; want %+v", back, err, rec)
		}
		chs2, err := decodeAllWAL(back.batch)
		if err != nil || !sameChanges(chs, chs2) {
			t.Fatalf("re-encoded changes: %v", err)
		}
	})
}

// durableCursor is the cursor a load of the replica at base would find:
// badger's, or for a bulk generation the WAL's last record's above it.
func durableCursor(c *Component, base string) (cursor, error) {
	var cur cursor
	err := c.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(cursorKey(base))
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error { return msgpack.Unmarshal(v, &cur) })
	})
	if err != nil || !cur.Bulk {
		return cur, err
	}
	ld, err := c.walScan(c.log, genPrefix(base, cur.Gen), cur.Gen, cur.Seq, false, nil)
	if ld.ok {
		cur = ld.cur
	}
	return cur, err
}

// Durability Sync: every record is fsynced before its batch is published
// (and a new segment's directory); Async fsyncs none of them.
func TestWAL_DurabilitySyncFsyncsEachRecord(t *testing.T) {
	for _, d := range []Durability{Async, Sync} {
		t.Run(d.String(), func(t *testing.T) {
			w := newWALRig(t, math.MaxInt64)
			w.c.cfg.Durability = d
			w.transfer(map[string]string{"a": "1"})
			rng := rand.New(rand.NewPCG(7, 8))
			const batches = 20
			before := w.c.walSyncs.Load()
			for range batches {
				must(t, w.apply(randomBatch(rng, 10)))
			}
			want := uint64(0)
			if d == Sync {
				want = batches
			}
			if got := w.c.walSyncs.Load() - before; got != want {
				t.Fatalf("%d records fsynced one by one, want %d", got, want)
			}
			w.reopen(true)
			w.check("reopened")
		})
	}
}
