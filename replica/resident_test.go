package replica

import (
	"bytes"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/replmesh/replmesh/transport"
)

// TestResident_Property drives the resident structure with random batches
// of puts and deletes and random full transfers (drops: every row replaced;
// some abandoned half-way), against a map model. Every published view must
// equal the model at its seq, then and later: views taken at random points
// are checked again after more batches (snapshot isolation), while
// concurrent readers check whatever view is current (run with -race).
func TestResident_Property(t *testing.T) { forSeeds(t, runResidentProperty) }

// forSeeds runs fn as a subtest per seed: REPLMESH_SEED's, or three from
// testSeed's.
func forSeeds(t *testing.T, fn func(t *testing.T, seed uint64)) {
	seed, fixed := testSeed(t)
	seeds := []uint64{seed}
	if !fixed {
		seeds = append(seeds, seed+1, seed+2)
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			t.Logf("REPLMESH_SEED=%d reproduces", seed)
			fn(t, seed)
		})
	}
}

type model = map[string]string

func runResidentProperty(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 0x5e51d))
	// The hash index is built, and the table's overlay merged (in the
	// background, as a replica does) after a few rows and changes, so
	// reads go through every state of them.
	var builds sync.WaitGroup
	var built atomic.Int64
	spawn := func(f func()) bool {
		builds.Add(1)
		go func() {
			defer builds.Done()
			f()
			built.Add(1)
		}()
		return true
	}
	// Reads come in bursts, so the index is built, dropped while unread,
	// and asked for again.
	var readCount atomic.Uint64
	s := newResident(cursor{LogID: "L"}, newResRows(), 0, spawn, nil, readCount.Load)
	// Merges of the table's overlay into a new base run (in the
	// background too) every few changes.
	s.minRows, s.minDelta, s.minMerge, s.minCompact = 8, 4, 4, 0
	defer builds.Wait()
	bases := map[*resBase]bool{}
	transfers := 0
	cur := model{}
	var models sync.Map // seq -> model, stored before the view is published
	models.Store(uint64(0), maps.Clone(cur))

	// Concurrent readers check the current view against the model at its
	// seq until the writer is done.
	var stop atomic.Bool
	var wg sync.WaitGroup
	var readErr atomic.Pointer[error]
	var readChecks atomic.Int64
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rr := rand.New(rand.NewPCG(seed, uint64(i)))
			for !stop.Load() {
				v := s.view.Load()
				want, ok := models.Load(v.cur.Seq)
				if !ok {
					err := fmt.Errorf("a view at seq %d published before its model", v.cur.Seq)
					readErr.Store(&err)
					return
				}
				if err := checkView(v, want.(model), rr); err != nil {
					err = fmt.Errorf("reader, view at seq %d: %w", v.cur.Seq, err)
					readErr.Store(&err)
					return
				}
				readChecks.Add(1)
			}
		}()
	}
	defer func() {
		stop.Store(true)
		wg.Wait()
		if e := readErr.Load(); e != nil {
			t.Fatal(*e)
		}
		t.Logf("%d reads checked concurrently", readChecks.Load())
	}()

	type snap struct {
		v    *resView
		want model
	}
	var snaps []snap
	seq := uint64(0)
	key := func() string { return fmt.Sprintf("k%03d", rng.IntN(150)) }
	value := func() string { return strings.Repeat(string(rune('a'+rng.IntN(26))), rng.IntN(40)) }
	const steps = 600
	for step := range steps {
		switch op := rng.IntN(25); {
		case op == 0: // a full transfer replaces every row (a drop)
			next := model{}
			for range rng.IntN(120) {
				next[key()] = value()
			}
			x := s.stage(memStaged{})
			ks := slices.Sorted(maps.Keys(next))
			if rng.IntN(4) == 0 {
				// Out of order and repeated rows (Load's slow path):
				// the last value of a key wins.
				rng.Shuffle(len(ks), func(i, j int) { ks[i], ks[j] = ks[j], ks[i] })
				if len(ks) > 0 {
					if err := x.put([]byte(ks[0]), []byte("stale")); err != nil {
						t.Fatal(err)
					}
				}
			}
			abandon := rng.IntN(3) == 0
			// Half the transfers' rows come in slabs, as the transport
			// decodes them (kept, not copied: their dead bytes are
			// tracked and compacted).
			slab := rng.IntN(2) == 0
			put := func(k, v string) error { return x.put([]byte(k), []byte(v)) }
			if slab {
				put = slabPut(x, rng)
			}
			for i, k := range ks {
				if abandon && i == len(ks)/2 {
					break
				}
				if err := put(k, next[k]); err != nil {
					t.Fatal(err)
				}
			}
			if abandon {
				x.abort() // the live view is unchanged
				break
			}
			seq += uint64(1 + rng.IntN(5))
			nc, err := x.finish(cursor{LogID: "L", Epoch: 1, Seq: seq})
			if err != nil {
				t.Fatal(err)
			}
			cur = next
			models.Store(seq, maps.Clone(cur))
			if err := x.switchIn(s.view.Load().cur, nc); err != nil {
				t.Fatal(err)
			}
			transfers++
		default: // a batch of puts and deletes
			n := 1 + rng.IntN(20)
			chs := make([]transport.Change, n)
			for i := range chs {
				seq++
				k := key()
				chs[i] = transport.Change{Seq: seq, Epoch: 1, Key: []byte(k), TxnEnd: i == n-1}
				if rng.IntN(3) == 0 {
					chs[i].Op = transport.OpDelete
					delete(cur, k)
				} else {
					v := value()
					chs[i].Op, chs[i].Value = transport.OpPut, []byte(v)
					cur[k] = v
				}
			}
			models.Store(seq, maps.Clone(cur))
			s.apply(cursor{LogID: "L", Epoch: 1, Seq: seq}, chs)
		}
		if rng.IntN(4) == 0 {
			readCount.Add(uint64(rng.IntN(3 * idxMinReads)))
		}
		if rng.IntN(10) == 0 {
			s.wantIndex()
		}
		if rng.IntN(6) == 0 {
			// Let the background builds and merges finish here (elsewhere
			// they race with the batches and the readers).
			builds.Wait()
		}
		if err := checkSlabs(s); err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		v := s.view.Load()
		bases[v.rows.base] = true
		if v.cur.Seq != seq {
			t.Fatalf("step %d: view at seq %d, want %d", step, v.cur.Seq, seq)
		}
		if err := checkView(v, cur, rng); err != nil {
			t.Fatalf("step %d, seq %d: %v", step, seq, err)
		}
		if rng.IntN(8) == 0 {
			snaps = append(snaps, snap{v, maps.Clone(cur)})
		}
		// Views taken earlier still hold their seq's rows.
		if len(snaps) > 0 {
			sn := snaps[rng.IntN(len(snaps))]
			if err := checkView(sn.v, sn.want, rng); err != nil {
				t.Fatalf("step %d: the view taken at seq %d changed: %v", step, sn.v.cur.Seq, err)
			}
		}
	}
	for _, sn := range snaps {
		if err := checkView(sn.v, sn.want, rng); err != nil {
			t.Fatalf("at the end: the view taken at seq %d changed: %v", sn.v.cur.Seq, err)
		}
	}
	// The builds run in the background: count them once they are done
	// (on a loaded machine none may have finished by the last step).
	builds.Wait()
	merges := len(bases) - transfers - 1
	s.mu.Lock()
	compactions := s.compactions
	s.mu.Unlock()
	t.Logf("%d steps, %d views checked again later, %d background builds and merges, %d merges seen, %d slab compactions", steps, len(snaps), built.Load(), merges, compactions)
	if built.Load() == 0 {
		t.Fatal("no hash index was built: the reads never used one")
	}
	if merges <= 0 {
		t.Fatal("no merge of the overlay into a new base was seen")
	}
	if compactions == 0 {
		t.Fatal("no slab was compacted")
	}
}

// TestResident_TableModel drives a resTable alone (no resident around it:
// merges run synchronously, at random points) against a map model with
// puts, replacements and deletes of base rows, overlay rows and absent
// keys, checking Get, Len, Scan and Ascend after each step; copies taken
// at random points must keep their rows through later changes and merges.
func TestResident_TableModel(t *testing.T) {
	forSeeds(t, func(t *testing.T, seed uint64) {
		rng := rand.New(rand.NewPCG(seed, 0x7ab1e))
		tbl := newResRows()
		want := model{}
		// A loaded base: rows in key order, with gaps.
		for i := 0; i < 200; i += 1 + rng.IntN(3) {
			k := fmt.Sprintf("k%03d", i)
			want[k] = "base"
			loadRow(tbl, []byte(k), []byte("base"))
		}
		if tbl.over.Len() != 0 || tbl.base.n != len(want) {
			t.Fatalf("a load in key order left %d rows in the overlay, %d in base", tbl.over.Len(), tbl.base.n)
		}
		var copies []tableCopy
		merges := 0
		for step := range 3000 {
			k := fmt.Sprintf("k%03d", rng.IntN(220))
			if rng.IntN(3) == 0 {
				setRow(tbl, []byte(k), nil, true)
				delete(want, k)
			} else {
				v := fmt.Sprint(step)
				setRow(tbl, []byte(k), []byte(v), false)
				want[k] = v
			}
			if rng.IntN(50) == 0 {
				nb, _, ok := tbl.merged(nil, nil)
				if !ok {
					t.Fatal("a merge without stop gave up")
				}
				tbl = &resTable{base: nb, over: newDeltaRows(), n: tbl.n}
				merges++
			}
			if rng.IntN(20) == 0 {
				copies = append(copies, tableCopy{tbl.Copy(), maps.Clone(want)})
			}
			if err := checkTable(tbl, want, rng); err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
			if len(copies) > 0 {
				c := copies[rng.IntN(len(copies))]
				if err := checkTable(c.tbl, c.want, rng); err != nil {
					t.Fatalf("step %d: a copy changed: %v", step, err)
				}
			}
		}
		t.Logf("%d merges, %d copies", merges, len(copies))
	})
}

// TestResident_TableAppendsPastEnd: rows past every row of the table
// (keys in ascending order) go to the end of base, not into the overlay,
// also after copies were taken and across base's chunks; copies taken
// before keep their rows, and the table stays the model's amid updates,
// deletes (of the last row too) and merges.
func TestResident_TableAppendsPastEnd(t *testing.T) {
	forSeeds(t, func(t *testing.T, seed uint64) {
		rng := rand.New(rand.NewPCG(seed, 0xa99e))
		tbl := newResRows()
		want := model{}
		key := func(i int) string { return fmt.Sprintf("k%05d", i) }
		next := 0
		for ; next < resChunk-300; next++ { // base's first chunk, nearly full
			want[key(next)] = "base"
			loadRow(tbl, []byte(key(next)), []byte("base"))
		}
		var copies []tableCopy
		appended := 0
		for step := range 1500 {
			switch r := rng.IntN(10); {
			case r < 6: // a new key past every row
				k := key(next)
				next++
				over := tbl.over.Len()
				setRow(tbl, []byte(k), []byte(fmt.Sprint(step)), false)
				want[k] = fmt.Sprint(step)
				if tbl.over.Len() != over {
					t.Fatalf("step %d: %s, past every row, went into the overlay", step, k)
				}
				appended++
			case r < 7: // the last row deleted: the next key is past it
				k := key(next - 1)
				setRow(tbl, []byte(k), nil, true)
				delete(want, k)
			default:
				k := key(rng.IntN(next))
				if rng.IntN(3) == 0 {
					setRow(tbl, []byte(k), nil, true)
					delete(want, k)
				} else {
					setRow(tbl, []byte(k), []byte(fmt.Sprint(step)), false)
					want[k] = fmt.Sprint(step)
				}
			}
			if rng.IntN(100) == 0 {
				nb, _, ok := tbl.merged(nil, nil)
				if !ok {
					t.Fatal("a merge without stop gave up")
				}
				tbl = &resTable{base: nb, over: newDeltaRows(), n: tbl.n}
			}
			if rng.IntN(10) == 0 {
				copies = append(copies, tableCopy{tbl.Copy(), maps.Clone(want)})
			}
			if step%50 == 0 {
				if err := checkTable(tbl, want, rng); err != nil {
					t.Fatalf("step %d: %v", step, err)
				}
			}
		}
		if err := checkTable(tbl, want, rng); err != nil {
			t.Fatal(err)
		}
		for i, c := range copies {
			if err := checkTable(c.tbl, c.want, rng); err != nil {
				t.Fatalf("copy %d changed: %v", i, err)
			}
		}
		if tbl.base.n <= resChunk {
			t.Fatalf("base holds %d rows: the test never crossed a chunk", tbl.base.n)
		}
		t.Logf("%d rows appended past the end, %d copies", appended, len(copies))
	})
}

// tableCopy is a copy of a table taken in a model test and the model then.
type tableCopy struct {
	tbl  *resTable
	want model
}

// checkTable compares tbl with want: a full scan, Len, gets of present and
// absent keys, and an Ascend from a random key.
func checkTable(tbl *resTable, want model, rng *rand.Rand) error {
	var got []string
	tbl.Scan(func(r resRow) bool { got = append(got, string(r.key())+"="+string(r.value())); return true })
	var wl []string
	for _, k := range slices.Sorted(maps.Keys(want)) {
		wl = append(wl, k+"="+want[k])
	}
	if !slices.Equal(got, wl) || tbl.Len() != len(want) {
		return fmt.Errorf("scan %v (Len %d), want %v", got, tbl.Len(), wl)
	}
	for range 4 {
		k := fmt.Sprintf("k%03d", rng.IntN(230))
		r, ok := tbl.Get(searchRow([]byte(k)))
		if wv, wok := want[k]; ok != wok || string(r.value()) != wv {
			return fmt.Errorf("get %s = %q, %v; want %q, %v", k, r.value(), ok, wv, wok)
		}
	}
	from := fmt.Sprintf("k%03d", rng.IntN(230))
	limit := rng.IntN(20)
	var asc []string
	tbl.Ascend(searchRow([]byte(from)), func(r resRow) bool {
		asc = append(asc, string(r.key()))
		return len(asc) < limit
	})
	var wasc []string
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if k >= from && len(wasc) < max(limit, 1) {
			wasc = append(wasc, k)
		}
	}
	if !slices.Equal(asc, wasc) {
		return fmt.Errorf("ascend from %s (%d rows) = %v, want %v", from, limit, asc, wasc)
	}
	return nil
}

// slabPut returns a put into x that hands over each row as part of a
// slab, as the transport decodes a rows frame (transport.RowBytes): a
// few rows after one another in one allocation.
func slabPut(x *resTransfer, rng *rand.Rand) func(k, v string) error {
	var slab []byte
	return func(k, v string) error {
		n := len(k) + len(v)
		if cap(slab)-len(slab) < n {
			slab = make([]byte, 0, n*(1+rng.IntN(8)))
		}
		l := len(slab)
		slab = append(append(slab, k...), v...)
		kv := slab[l : l+n : l+n]
		return x.put(kv[:len(k):n], kv[len(k):])
	}
}

// checkSlabs checks the resident's slab accounting against its working
// table: each run's live bytes are those of the table's rows in it (none
// at zero), the totals their sums, and the dead bytes at most half of all
// unless a compaction is under way or the dead bytes are under the
// minimum.
func checkSlabs(s *resident) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	ss := s.w.slabs
	if ss == nil {
		return nil
	}
	live := make([]int64, len(ss.runs))
	s.w.Scan(func(r resRow) bool {
		if i := findRun(ss.runs, rowAddr(r)); i >= 0 {
			live[i] += rowBytes(r)
		}
		return true
	})
	var size, sum int64
	for i, r := range ss.runs {
		if i > 0 && ss.runs[i-1].start+uintptr(ss.runs[i-1].size) > r.start {
			return fmt.Errorf("slab runs %d and %d overlap or are out of order", i-1, i)
		}
		if r.live != live[i] || live[i] == 0 {
			return fmt.Errorf("slab run %d of %d bytes counts %d live, holds %d", i, r.size, r.live, live[i])
		}
		size += r.size
		sum += r.live
	}
	if size != ss.size || sum != ss.live {
		return fmt.Errorf("slab totals %d/%d live, runs sum to %d/%d", ss.live, ss.size, sum, size)
	}
	if !s.merging && ss.compactDue(s.minCompact) {
		return fmt.Errorf("slabs %d bytes dead of %d, and no compaction under way", ss.dead(), ss.size)
	}
	return nil
}

// TestResident_SlabGarbageBound: the rows of a transfer decoded by the
// transport (one slab a rows frame) are kept as they are; as later changes
// replace them, the dead bytes their slabs hold stay at most half of the
// slabs' bytes (compactions copy the survivors out), and the rows stay the
// model's. Merges run synchronously here (no spawn), so the bound holds
// after every batch.
func TestResident_SlabGarbageBound(t *testing.T) {
	const rows, frame = 5000, 300
	rng := rand.New(rand.NewPCG(11, 12))
	s := newResident(cursor{}, newResRows(), 0, nil, nil, nil)
	s.minCompact = 64 << 10
	x := s.stage(memStaged{})
	want := model{}
	for i := 0; i < rows; i += frame {
		var list transport.RowList
		for j := i; j < min(rows, i+frame); j++ {
			v := strings.Repeat("v", 100+rng.IntN(100))
			list = append(list, transport.Row{Key: benchKey(j), Value: []byte(v)})
			want[string(benchKey(j))] = v
		}
		b, err := transport.Marshal(&transport.OwnerFrame{Kind: transport.KindRows, Rows: list})
		if err != nil {
			t.Fatal(err)
		}
		var f transport.OwnerFrame
		if err := transport.Unmarshal(b, &f); err != nil {
			t.Fatal(err)
		}
		for _, r := range f.Rows {
			if err := x.put(r.Key, r.Value); err != nil {
				t.Fatal(err)
			}
		}
	}
	next, err := x.finish(cursor{Seq: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := x.switchIn(cursor{}, next); err != nil {
		t.Fatal(err)
	}
	if x.adopted != rows || len(s.w.slabs.runs) > (rows+frame-1)/frame {
		t.Fatalf("%d rows adopted in %d runs, want %d in at most one a frame", x.adopted, len(s.w.slabs.runs), rows)
	}
	seq := uint64(1)
	maxDead := 0.0
	for range 200 {
		chs := make([]transport.Change, 50)
		for i := range chs {
			seq++
			k := benchKey(rng.IntN(rows + 500))
			chs[i] = transport.Change{Seq: seq, Key: k}
			if rng.IntN(4) == 0 {
				chs[i].Op = transport.OpDelete
				delete(want, string(k))
			} else {
				v := fmt.Sprint(seq)
				chs[i].Op, chs[i].Value = transport.OpPut, []byte(v)
				want[string(k)] = v
			}
		}
		s.apply(cursor{Seq: seq}, chs)
		if err := checkSlabs(s); err != nil {
			t.Fatalf("seq %d: %v", seq, err)
		}
		if ss := s.w.slabs; ss.size > 0 {
			maxDead = max(maxDead, float64(ss.dead())/float64(ss.size))
		}
	}
	if err := checkView(s.view.Load(), want, rng); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d compactions; dead slab bytes at most %.0f%% of the slabs' after a batch", s.compactions, 100*maxDead)
	if s.compactions == 0 {
		t.Fatal("the changes replaced most rows but no slab was compacted")
	}
}

// TestResident_AppliedChangesKeepDecodedBytes: changes applied from
// frames the transport decoded (keys and values in one slab a frame) are
// kept as they are, not copied; as later changes replace them, the dead
// bytes their slabs hold stay at most half of the slabs' bytes
// (compactions copy the survivors out), and the rows stay the model's.
// Merges run synchronously here (no spawn), so the bound holds after
// every batch.
func TestResident_AppliedChangesKeepDecodedBytes(t *testing.T) {
	const keys, batch = 3000, 200
	rng := rand.New(rand.NewPCG(13, 14))
	s := newResident(cursor{}, newResRows(), 0, nil, nil, nil)
	s.minCompact = 64 << 10
	want := model{}
	seq, puts := uint64(0), 0
	maxDead := 0.0
	for range 150 {
		chs := make(transport.ChangeList, batch)
		for i := range chs {
			seq++
			k := benchKey(rng.IntN(keys))
			chs[i] = transport.Change{Seq: seq, Key: k, TxnEnd: i == batch-1}
			if rng.IntN(5) == 0 {
				chs[i].Op = transport.OpDelete
				delete(want, string(k))
			} else {
				v := fmt.Sprint(seq, strings.Repeat("v", 100+rng.IntN(200)))
				chs[i].Op, chs[i].Value = transport.OpPut, []byte(v)
				want[string(k)] = v
				puts++
			}
		}
		f := wireChanges(t, seq, chs)
		compactions := s.compactions
		s.apply(cursor{Seq: seq}, f.Changes)
		if err := checkSlabs(s); err != nil {
			t.Fatalf("seq %d: %v", seq, err)
		}
		if ss := s.w.slabs; ss.size > 0 {
			maxDead = max(maxDead, float64(ss.dead())/float64(ss.size))
		}
		if s.compactions != compactions {
			continue // it may have copied some of the frame's rows
		}
		// The rows of the last change of each key in the frame are the
		// decoded bytes themselves.
		last := map[string]int{}
		for i, c := range f.Changes {
			last[string(c.Key)] = i
		}
		for _, i := range last {
			c := f.Changes[i]
			r, ok := s.w.Get(searchRow(c.Key))
			if c.Op == transport.OpDelete {
				continue
			}
			if !ok || r.p != unsafe.SliceData(c.Key) {
				t.Fatalf("seq %d: the row of change %d was copied (found %v)", seq, c.Seq, ok)
			}
		}
	}
	if s.adopted != puts {
		t.Fatalf("%d rows kept as decoded, want %d (the puts)", s.adopted, puts)
	}
	// A small batch (a steady stream's) is copied: its runs would be many
	// and small.
	seq++
	f := wireChanges(t, seq, transport.ChangeList{{Seq: seq, Op: transport.OpPut, Key: benchKey(keys), Value: []byte("small"), TxnEnd: true}})
	if _, ok := transport.RowBytes(&transport.Row{Key: f.Changes[0].Key, Value: f.Changes[0].Value}); !ok {
		t.Fatal("a decoded change is not one allocation")
	}
	s.apply(cursor{Seq: seq}, f.Changes)
	want[string(benchKey(keys))] = "small"
	if r, ok := s.w.Get(searchRow(f.Changes[0].Key)); !ok || r.p == unsafe.SliceData(f.Changes[0].Key) || s.adopted != puts {
		t.Fatalf("the row of a small batch: found %v, kept as decoded %v", ok, ok && r.p == unsafe.SliceData(f.Changes[0].Key))
	}
	if err := checkView(s.view.Load(), want, rng); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d compactions; dead slab bytes at most %.0f%% of the slabs' after a batch", s.compactions, 100*maxDead)
	if s.compactions == 0 {
		t.Fatal("the changes replaced most rows but no slab was compacted")
	}
}

// wireChanges is a changes frame of chs (head seq head) as a reader
// decodes it from the wire.
func wireChanges(t *testing.T, head uint64, chs transport.ChangeList) *transport.OwnerFrame {
	t.Helper()
	b, err := transport.Marshal(&transport.OwnerFrame{Kind: transport.KindChanges, HeadSeq: head, Changes: chs})
	if err != nil {
		t.Fatal(err)
	}
	f := new(transport.OwnerFrame)
	if err := transport.Unmarshal(b, f); err != nil {
		t.Fatal(err)
	}
	return f
}

// checkView compares v with want: a full scan (order, contents, byte
// count), point reads of present and absent keys, a prefix scan and a
// bounded range.
func checkView(v *resView, want model, rng *rand.Rand) error {
	got := model{}
	var prev []byte
	var n int64
	var err error
	v.scan(nil, nil, nil, func(k, val []byte) bool {
		if prev != nil && bytes.Compare(prev, k) >= 0 {
			err = fmt.Errorf("scan out of order: %q after %q", k, prev)
			return false
		}
		prev = k
		got[string(k)] = string(val)
		n += int64(len(k) + len(val))
		return true
	})
	if err != nil {
		return err
	}
	if !maps.Equal(got, want) {
		return fmt.Errorf("rows differ from the model:\n%s", mapDiff(got, want))
	}
	if n != v.bytes || v.rows.Len() != len(want) {
		return fmt.Errorf("view counts %d rows, %d bytes; holds %d, %d", v.rows.Len(), v.bytes, len(want), n)
	}
	for range 4 {
		k := fmt.Sprintf("k%03d", rng.IntN(160))
		val, ok := v.get([]byte(k))
		wv, wok := want[k]
		if ok != wok || string(val) != wv {
			return fmt.Errorf("get %s = %q, %v; want %q, %v", k, val, ok, wv, wok)
		}
	}
	// A prefix and a [start, end) range select what the model says.
	prefix := fmt.Sprintf("k%02d", rng.IntN(15))
	start, end := fmt.Sprintf("k%03d", rng.IntN(150)), fmt.Sprintf("k%03d", rng.IntN(150))
	for _, q := range []struct{ prefix, start, end string }{{prefix, "", ""}, {"", start, end}, {prefix, start, ""}} {
		var sel []string
		var endB []byte
		if q.end != "" {
			endB = []byte(q.end)
		}
		v.scan([]byte(q.prefix), []byte(q.start), endB, func(k, _ []byte) bool { sel = append(sel, string(k)); return true })
		var wsel []string
		for k := range want {
			if strings.HasPrefix(k, q.prefix) && k >= q.start && (q.end == "" || k < q.end) {
				wsel = append(wsel, k)
			}
		}
		sort.Strings(wsel)
		if !slices.Equal(sel, wsel) {
			return fmt.Errorf("scan prefix %q from %q to %q = %v, want %v", q.prefix, q.start, q.end, sel, wsel)
		}
	}
	return nil
}

// The hash index follows the reads: a first one is built for a table large
// enough, a change-heavy table nobody reads drops it, and reads bring it
// back (wantIndex, as GetShared asks).
func TestResident_IndexFollowsReads(t *testing.T) {
	var builds sync.WaitGroup
	spawn := func(f func()) bool {
		builds.Add(1)
		go func() { defer builds.Done(); f() }()
		return true
	}
	var reads atomic.Uint64
	s := newResident(cursor{}, newResRows(), 0, spawn, nil, reads.Load)
	s.minRows, s.minDelta = 8, 4
	seq := uint64(0)
	put := func(n int) {
		for range n {
			seq++
			s.apply(cursor{Seq: seq}, []transport.Change{{Seq: seq, Op: transport.OpPut, Key: benchKey(int(seq % 16)), Value: []byte("v"), TxnEnd: true}})
			builds.Wait()
		}
	}
	hasIndex := func() bool { return s.view.Load().base != nil }
	put(7)
	if hasIndex() {
		t.Fatal("an index for 7 rows (minRows 8)")
	}
	put(1)
	if !hasIndex() {
		t.Fatal("no first index at 8 rows")
	}
	put(20) // no reads: the delta outgrows the index, which is dropped
	if hasIndex() {
		t.Fatal("the index of an unread table was rebuilt, want it dropped")
	}
	s.wantIndex()
	builds.Wait()
	if hasIndex() {
		t.Fatal("an index built with no reads since the last")
	}
	reads.Add(idxMinReads)
	s.wantIndex()
	builds.Wait()
	if !hasIndex() {
		t.Fatalf("no index after %d reads", idxMinReads)
	}
	// Read, the index is rebuilt as the delta grows, not dropped.
	b0 := s.readsAt
	for range 30 {
		reads.Add(idxMinReads)
		put(1)
		if !hasIndex() {
			t.Fatal("the index of a read table was dropped")
		}
	}
	if s.readsAt == b0 {
		t.Fatal("the index of a read table was not rebuilt")
	}
	for k := range 16 {
		v, ok := s.view.Load().get(benchKey(k))
		if !ok || string(v) != "v" {
			t.Fatalf("get %s = %q, %v", benchKey(k), v, ok)
		}
	}
}

// residentPair is an in-memory owner with a table of rows and a consumer
// holding a caught-up replica of it.
func residentPair(t testing.TB, consDir string, opts SubscribeOptions, rows int) (*Component, *OwnedTable, *Component, *Replica) {
	t.Helper()
	owner := openComponent(t, "own", "o1", "", "")
	t.Cleanup(func() { mustClose(t, owner) })
	tbl, err := owner.Own("t")
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, time.Minute)
	for i := 0; i < rows; i += 100 {
		ws := make([]Write, 0, 100)
		for j := i; j < min(rows, i+100); j++ {
			ws = append(ws, Write{Key: benchKey(j), Value: fmt.Appendf(nil, "v%d", j)})
		}
		if _, err := tbl.Apply(ctx, ws...); err != nil {
			t.Fatal(err)
		}
	}
	cons := openComponent(t, "cons", "c1", consDir, "")
	t.Cleanup(func() { mustClose(t, cons) })
	opts.Service, opts.Table, opts.Addr = "own", "t", owner.Addr()
	r, err := cons.Subscribe(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.WaitFor(ctx, tbl.Head()); err != nil {
		t.Fatal(err)
	}
	return owner, tbl, cons, r
}

// A resident Get allocates only the copy it returns, GetShared nothing:
// from the B-tree (a small table) and from the hash index with its delta
// (a table of idxMinRows rows or more, a change since the index was built).
func TestResident_ReadAllocs(t *testing.T) {
	for _, rows := range []int{300, idxMinRows + 100} {
		t.Run(fmt.Sprintf("rows=%d", rows), func(t *testing.T) {
			_, tbl, _, r := residentPair(t, "", SubscribeOptions{}, rows)
			if rows < idxMinRows {
				if r.Status().ResidentIndexed {
					t.Fatalf("Status.ResidentIndexed of a %d-row table: want no hash index below %d rows", rows, idxMinRows)
				}
			} else {
				// Status reports the index (bench/peers waits on it).
				waitUntil(t, 30*time.Second, "the hash index", func() bool { return r.Status().ResidentIndexed })
				ctx := ctxT(t, time.Minute)
				if _, err := tbl.Put(ctx, benchKey(17), []byte("v17")); err != nil {
					t.Fatal(err)
				}
				if err := r.WaitFor(ctx, tbl.Head()); err != nil {
					t.Fatal(err)
				}
				if v := r.res.view.Load(); v.base == nil || v.delta.Len() == 0 {
					t.Fatalf("index %v, delta of %d rows: want both", v.base != nil, v.delta.Len())
				}
			}
			for _, key := range [][]byte{benchKey(17), benchKey(18)} { // in the delta, in the map
				tests := []struct {
					name string
					read func() ([]byte, bool, error)
					max  float64
				}{
					{"Get", func() ([]byte, bool, error) { return r.Get(key) }, 1},
					{"GetShared", func() ([]byte, bool, error) { return r.GetShared(key) }, 0},
				}
				for _, tt := range tests {
					want := "v" + strings.TrimLeft(string(key[1:]), "0")
					allocs := testing.AllocsPerRun(1000, func() {
						if v, ok, err := tt.read(); err != nil || !ok || string(v) != want {
							t.Fatalf("%s(%s) = %q, %v, %v; want %q", tt.name, key, v, ok, err, want)
						}
					})
					if allocs > tt.max {
						t.Fatalf("%s(%s) allocates %.1f times a read, want at most %.0f", tt.name, key, allocs, tt.max)
					}
				}
			}
		})
	}
}

// Where a replica keeps its rows: an in-memory component's resident
// replica writes nothing to badger; a durable one writes its rows there
// too and reads them back into memory when reopened; a DiskOnly one
// holds nothing in memory. All read the same rows.
func TestResident_Storage(t *testing.T) {
	const rows = 250
	tests := []struct {
		name         string
		dir          bool
		diskOnly     bool
		wantResident bool
		wantBadger   bool
	}{
		{"in memory", false, false, true, false},
		{"in memory, disk only", false, true, false, true},
		{"durable", true, false, true, true},
		{"durable, disk only", true, true, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := ""
			if tt.dir {
				dir = t.TempDir()
			}
			_, tbl, cons, r := residentPair(t, dir, SubscribeOptions{DiskOnly: tt.diskOnly}, rows)
			ctx := ctxT(t, time.Minute)
			if _, err := tbl.Delete(ctx, benchKey(3)); err != nil {
				t.Fatal(err)
			}
			if err := r.WaitFor(ctx, tbl.Head()); err != nil {
				t.Fatal(err)
			}
			st := r.Status()
			if st.Resident != tt.wantResident {
				t.Fatalf("Status.Resident = %v, want %v", st.Resident, tt.wantResident)
			}
			if tt.wantResident && (st.ResidentRows != rows-1 || st.ResidentBytes == 0) {
				t.Fatalf("resident %d rows, %d bytes; want %d rows", st.ResidentRows, st.ResidentBytes, rows-1)
			}
			if n := countKeys(t, cons, []byte(r.base)); (n > 0) != tt.wantBadger {
				t.Fatalf("%d badger keys under the replica's prefix; want some: %v", n, tt.wantBadger)
			}
			mustConverge(t, tbl, r)
			checkRows := func(r *Replica) {
				t.Helper()
				for _, i := range []int{0, 3, 99, rows - 1} {
					v, ok, err := r.Get(benchKey(i))
					if err != nil || ok != (i != 3) || ok && string(v) != fmt.Sprintf("v%d", i) {
						t.Fatalf("Get(%s) = %q, %v, %v", benchKey(i), v, ok, err)
					}
				}
			}
			checkRows(r)
			// Closed and subscribed again in the same component (a
			// durable one reopened too): the copy resumes, with no
			// transfer.
			if err := r.Close(); err != nil {
				t.Fatal(err)
			}
			if tt.dir {
				mustClose(t, cons)
				cons = openComponent(t, "cons", "c1", dir, "")
				t.Cleanup(func() { mustClose(t, cons) })
			}
			r2, err := cons.Subscribe(ctx, SubscribeOptions{Service: "own", Table: "t", Addr: r.opts.Addr, DiskOnly: tt.diskOnly})
			if err != nil {
				t.Fatal(err)
			}
			if got := r2.Seq(); got != tbl.Head() {
				t.Fatalf("subscribed again at seq %d, want the copy's %d", got, tbl.Head())
			}
			checkRows(r2)
			mustConverge(t, tbl, r2)
			if st := r2.Status().Stats; st.FullTransfers != 0 {
				t.Fatalf("subscribed again: %d full transfers, want a resume", st.FullTransfers)
			}
		})
	}
}

// TestResident_RowCost measures what a resident row costs in memory beyond
// its key and value (resRowOverhead, docs/design.md): rows of a 10-byte
// key and a 256-byte value, as stored by apply (key and value allocated
// apart, as the decoder hands them over).
func TestResident_RowCost(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates 100k rows")
	}
	const n = 100_000
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var builds sync.WaitGroup
	spawn := func(f func()) bool {
		builds.Add(1)
		go func() { defer builds.Done(); f() }()
		return true
	}
	s := newResident(cursor{}, newResRows(), 0, spawn, nil, nil)
	chs := make([]transport.Change, 0, 1000)
	for i := 0; i < n; i += cap(chs) {
		chs = chs[:0]
		for j := i; j < i+cap(chs); j++ {
			chs = append(chs, transport.Change{Seq: uint64(j + 1), Op: transport.OpPut, Key: benchKey(rand.IntN(1 << 30)), Value: make([]byte, 256)})
		}
		s.apply(cursor{Seq: uint64(i + cap(chs))}, chs)
	}
	builds.Wait()
	// The last build's index is installed; its delta and the views
	// that held the previous index are garbage now.
	runtime.GC()
	runtime.ReadMemStats(&after)
	v := s.view.Load()
	if v.base == nil {
		t.Fatal("no hash index after the load")
	}
	per := float64(after.HeapAlloc-before.HeapAlloc)/float64(v.rows.Len()) - float64(v.bytes)/float64(v.rows.Len())
	t.Logf("%d rows, %.0f bytes a row beyond key and value", v.rows.Len(), per)
	if per > resRowOverhead {
		t.Fatalf("a resident row costs %.0f bytes beyond its key and value; resRowOverhead (the documented figure) is %d", per, resRowOverhead)
	}
	runtime.KeepAlive(s)
}

// TestResident_TransferSwitch: a full transfer's rows reach the readers
// only at the switch, complete, in both sinks. Into a durable replica the
// rows are only staged in badger while they arrive (no tree is built
// beside them, so the reader never holds both at once) and read back into
// the new tree by finish; until switchIn the readers keep the old view,
// after it they see exactly the transferred rows.
func TestResident_TransferSwitch(t *testing.T) {
	const rows = 3000
	tests := []struct {
		name    string
		durable bool
	}{
		{"in memory", false},
		{"durable: a rows file beside the tree", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			oldRows := newResRows()
			var oldBytes int64
			for i := range 10 {
				oldBytes += loadRow(oldRows, benchKey(i), []byte("old"))
			}
			old := cursor{LogID: "L", Epoch: 1, Seq: 5}
			s := newResident(old, oldRows, oldBytes, nil, nil, nil)
			oldView := s.view.Load()
			var inner stagedTransfer = memStaged{}
			if tt.durable {
				c := openComponent(t, "svc", "i1", t.TempDir(), "")
				defer mustClose(t, c)
				g := &genStore{c: c, base: replicaBase("svc", "t"), table: "t", log: testLogger(t), bulk: true}
				st := &transport.Start{LogID: "L", Epoch: 1, HeadSeq: 9}
				begin := &transport.OwnerFrame{Kind: transport.KindSnapshotBegin, Seq: 9, Epoch: 1}
				var err error
				if inner, err = g.beginTransfer(st, begin, old); err != nil {
					t.Fatal(err)
				}
			}
			x := s.stage(inner)
			defer x.abort()
			if _, bulk := inner.(*bulkTransfer); bulk != tt.durable {
				t.Fatalf("staged in a rows file: %v, want %v", bulk, tt.durable)
			}
			want := map[string]string{}
			var wantBytes int64
			for i := range rows {
				k, v := benchKey(i*2), fmt.Sprintf("v%d", i)
				want[string(k)] = v
				wantBytes += int64(len(k) + len(v))
				if err := x.put(k, []byte(v)); err != nil {
					t.Fatal(err)
				}
			}
			if err := x.switchIn(old, cursor{LogID: "L", Epoch: 1, Seq: 9}); err == nil {
				t.Fatal("switchIn before finish succeeded")
			}
			next, err := x.finish(cursor{LogID: "L", Epoch: 1, Seq: 9})
			if err != nil {
				t.Fatal(err)
			}
			if v := s.view.Load(); v != oldView || v.rows.Len() != 10 {
				t.Fatalf("the view changed before the switch: %d rows at %+v", v.rows.Len(), v.cur)
			}
			if err := x.switchIn(old, next); err != nil {
				t.Fatal(err)
			}
			v := s.view.Load()
			if v.cur != next || v.bytes != wantBytes || v.rows.Len() != rows {
				t.Fatalf("after the switch: %d rows, %d bytes at %+v; want %d rows, %d bytes at %+v", v.rows.Len(), v.bytes, v.cur, rows, wantBytes, next)
			}
			got := map[string]string{}
			if err := v.walk(func(k, val []byte) (bool, error) { got[string(k)] = string(val); return true, nil }); err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(got, want) {
				t.Fatalf("after the switch the view holds %d rows, not the %d transferred", len(got), len(want))
			}
			// The old view, still held by a reader, is unchanged.
			if oldView.rows.Len() != 10 {
				t.Fatalf("the old view now has %d rows", oldView.rows.Len())
			}
		})
	}
}

// An in-memory replica's transfer keeps the rows as the transport decoded
// them (one allocation each: transport.RowBytes) instead of copying them;
// rows that are not one allocation are copied.
func TestResident_TransferKeepsDecodedRows(t *testing.T) {
	const n = 500
	sent := make(transport.RowList, n)
	for i := range sent {
		sent[i] = transport.Row{Key: benchKey(i), Value: fmt.Appendf(nil, "value %d", i)}
	}
	b, err := transport.Marshal(sent)
	if err != nil {
		t.Fatal(err)
	}
	var decoded transport.RowList
	if err := transport.Unmarshal(b, &decoded); err != nil {
		t.Fatal(err)
	}
	s := newResident(cursor{}, newResRows(), 0, nil, nil, nil)
	x := s.stage(memStaged{})
	defer x.abort()
	for i := range decoded {
		if err := x.put(decoded[i].Key, decoded[i].Value); err != nil {
			t.Fatal(err)
		}
	}
	// A row built of two allocations is copied.
	apart := transport.Row{Key: benchKey(n), Value: []byte("apart")}
	if err := x.put(apart.Key, apart.Value); err != nil {
		t.Fatal(err)
	}
	if x.adopted != n {
		t.Fatalf("%d rows kept as decoded, want %d", x.adopted, n)
	}
	next := cursor{LogID: "L", Epoch: 1, Seq: 3}
	next, err = x.finish(next)
	if err != nil {
		t.Fatal(err)
	}
	if err := x.switchIn(cursor{}, next); err != nil {
		t.Fatal(err)
	}
	v := s.view.Load()
	if v.rows.Len() != n+1 {
		t.Fatalf("%d rows, want %d", v.rows.Len(), n+1)
	}
	for i := range decoded {
		r, ok := v.rows.Get(searchRow(decoded[i].Key))
		if !ok || !bytes.Equal(r.value(), sent[i].Value) {
			t.Fatalf("row %d = %q, %v; want %q", i, r.value(), ok, sent[i].Value)
		}
		if r.p != unsafe.SliceData(decoded[i].Key) {
			t.Fatalf("row %d was copied", i)
		}
	}
	r, ok := v.rows.Get(searchRow(apart.Key))
	if !ok || string(r.value()) != "apart" || r.p == unsafe.SliceData(apart.Key) {
		t.Fatalf("the row of two allocations: %q, %v, shared %v", r.value(), ok, r.p == unsafe.SliceData(apart.Key))
	}
}

// The hash index's table against a map model: puts, replacements and
// deletes (the backward shift of a delete keeps every probe sequence
// whole), growth, and clones that leave their source unchanged. Keys are
// drawn from a small space so probe sequences collide and wrap around.
// In the "long" cases some keys and values are around the lengths a slot
// holds (idxMaxKey, idxMaxValue): those rows live in the index's long map,
// and a row moves between it and its slot when a put changes its length.
func TestHashIndex_Model(t *testing.T) {
	for _, tc := range []struct {
		name       string
		keys, ops  int
		startRows  int
		cloneEvery int
		long       bool
	}{
		{"small, growing from empty", 40, 4000, 0, 500, false},
		{"sized, many deletes", 300, 20000, 300, 3000, false},
		{"large", 5000, 50000, 1000, 10000, false},
		{"long keys and values, growing from empty", 40, 3000, 0, 500, true},
		{"long keys and values, sized", 300, 6000, 300, 1000, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(tc.keys), uint64(tc.ops)))
			// keyOf is key k: in the long cases every fourth one is
			// idxMaxKey-1, idxMaxKey or idxMaxKey+1 bytes long.
			keyOf := func(k int) []byte {
				key := fmt.Appendf(nil, "k%d", k)
				if tc.long && k%4 == 0 {
					key = append(key, bytes.Repeat([]byte{'.'}, idxMaxKey-1+k/4%3-len(key))...)
				}
				return key
			}
			// A long value is shared by the model's string and the
			// rows' copies of it: one in 60 puts.
			long := [2]string{strings.Repeat("v", idxMaxValue), strings.Repeat("w", idxMaxValue+1)}
			x := newHashIndex(tc.startRows)
			m := model{}
			check := func(x *hashIndex, m model) {
				t.Helper()
				if x.n != len(m) {
					t.Fatalf("%d rows in the index, %d in the model", x.n, len(m))
				}
				longRows := 0
				for k := range tc.keys {
					key := keyOf(k)
					v, ok := x.get(key)
					want, wok := m[string(key)]
					if ok != wok || string(v) != want {
						t.Fatalf("get(%d-byte key %.12s) = %d bytes, %v; model %d bytes, %v", len(key), key, len(v), ok, len(want), wok)
					}
					if wok && (len(key) >= idxMaxKey || len(want) > idxMaxValue) {
						longRows++
					}
				}
				if len(x.long) != longRows {
					t.Fatalf("%d rows in the long map, want %d", len(x.long), longRows)
				}
				if v, ok := x.get([]byte("absent")); ok {
					t.Fatalf("get(absent) = %q, true", v)
				}
			}
			put := func(x *hashIndex, m model, key []byte, val string) {
				x.put(ownRow(key, []byte(val)))
				m[string(key)] = val
			}
			for op := range tc.ops {
				key := keyOf(rng.IntN(tc.keys))
				switch {
				case rng.IntN(3) == 0:
					x.del(key)
					delete(m, string(key))
				case tc.long && rng.IntN(60) == 0:
					put(x, m, key, long[rng.IntN(2)])
				default:
					put(x, m, key, fmt.Sprintf("v%d", op))
				}
				if op%tc.cloneEvery == 0 {
					check(x, m)
					y, ym := x.clone(rng.IntN(2*tc.keys)), maps.Clone(m)
					for range 50 { // change the clone: x must not see it
						key := keyOf(rng.IntN(tc.keys))
						y.del(key)
						delete(ym, string(key))
						put(y, ym, keyOf(rng.IntN(tc.keys)), "clone")
					}
					check(x, m)
					x, m = y, ym
				}
			}
			check(x, m)
		})
	}
}

// TestHashIndex_Size: a table built for n rows holds them without
// growing, at three quarters full (not rounded up to a power of two: a
// 1M-row table would take 2M slots), and every row is found; growth from
// empty keeps it at most three quarters full.
func TestHashIndex_Size(t *testing.T) {
	for _, n := range []int{0, 1, 5, 6, 7, 100, 1000, 100_000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			x := newHashIndex(n)
			size := len(x.slots)
			if size > max(8, n*4/3+2) {
				t.Fatalf("a table for %d rows has %d slots, want at most %d", n, size, max(8, n*4/3+2))
			}
			grown := newHashIndex(0)
			for i := range n {
				x.put(ownRow(benchKey(i), []byte{byte(i)}))
				grown.put(ownRow(benchKey(i), []byte{byte(i)}))
			}
			if len(x.slots) != size {
				t.Fatalf("%d puts grew the table from %d to %d slots", n, size, len(x.slots))
			}
			if grown.n*4 > len(grown.slots)*3 {
				t.Fatalf("grown from empty: %d rows in %d slots", grown.n, len(grown.slots))
			}
			for i := range n {
				for _, y := range []*hashIndex{x, grown} {
					if v, ok := y.get(benchKey(i)); !ok || len(v) != 1 || v[0] != byte(i) {
						t.Fatalf("get(row %d) = %v, %v", i, v, ok)
					}
				}
			}
		})
	}
}

// TestHashIndex_Slot: a slot is 16 bytes and holds the lengths of every
// row that fits it exactly; the others are marked idxLong.
func TestHashIndex_Slot(t *testing.T) {
	if got := unsafe.Sizeof(idxSlot{}); got != 16 {
		t.Fatalf("an index slot is %d bytes, want 16", got)
	}
	for _, tc := range []struct {
		klen, vlen uint32
		fits       bool
	}{
		{0, 0, true},
		{10, 256, true},
		{idxMaxKey - 1, idxMaxValue, true},
		{idxMaxKey, 0, false},
		{idxMaxKey + 1, 10, false},
		{10, idxMaxValue + 1, false},
		{math.MaxUint16, math.MaxUint32, false},
	} {
		t.Run(fmt.Sprintf("key %d value %d", tc.klen, tc.vlen), func(t *testing.T) {
			var b byte
			r := resRow{p: &b, klen: tc.klen, vlen: tc.vlen}
			sl, fits := slotOf(r, 7)
			if fits != tc.fits || sl.p != r.p || sl.h != 7 {
				t.Fatalf("slotOf = %+v, fits %v; want fits %v", sl, fits, tc.fits)
			}
			if !fits {
				if sl.lens != idxLong {
					t.Fatalf("lens %#x, want idxLong", sl.lens)
				}
				return
			}
			if got := sl.row(); got.p != r.p || got.klen != r.klen || got.vlen != r.vlen {
				t.Fatalf("row() = %+v, want %+v", got, r)
			}
		})
	}
}

// BenchmarkHashIndexGet is the hash index's point read alone: 1M rows of
// 256-byte values, keys read in a shuffled order (a table far larger than
// the cache: a slot's and a row's cache miss a read).
func BenchmarkHashIndexGet(b *testing.B) {
	const n = 1_000_000
	x := newHashIndex(n)
	val := benchValue()
	keys := make([][]byte, n)
	for i := range keys {
		keys[i] = benchKey(i)
		x.put(ownRow(keys[i], val))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	rng.Shuffle(n, func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	for i := 0; b.Loop(); i++ {
		if v, ok := x.get(keys[i%n]); !ok || len(v) != benchValueSize {
			b.Fatalf("get = %d bytes, %v", len(v), ok)
		}
	}
}
