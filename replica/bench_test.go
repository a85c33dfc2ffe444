package replica

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/replmesh/replmesh/internal/cputime"
	"github.com/replmesh/replmesh/transport"
)

// Micro-benchmarks of the hot paths, in memory and small to set up. The
// end-to-end figures (fan-out, full transfer, resume) come from
// cmd/replbench.

const benchValueSize = 256

func benchValue() []byte {
	v := make([]byte, benchValueSize)
	for i := range v {
		v[i] = byte(i * 7)
	}
	return v
}

func benchKey(i int) []byte { return fmt.Appendf(nil, "k%09d", i) }

// benchOwner opens an in-memory owner with one table.
func benchOwner(b *testing.B) (*Component, *OwnedTable) {
	b.Helper()
	c := openComponent(b, "bench", "owner", "", "")
	b.Cleanup(func() { mustClose(b, c) })
	t, err := c.Own("bench")
	if err != nil {
		b.Fatal(err)
	}
	return c, t
}

func BenchmarkReplicaGet(b *testing.B) {
	const rows = 10_000
	owner, tbl := benchOwner(b)
	ctx := ctxT(b, time.Minute)
	val := benchValue()
	ws := make([]Write, 0, 1000)
	for i := 0; i < rows; i += cap(ws) {
		ws = ws[:0]
		for j := i; j < i+cap(ws); j++ {
			ws = append(ws, Write{Key: benchKey(j), Value: val})
		}
		if _, err := tbl.Apply(ctx, ws...); err != nil {
			b.Fatal(err)
		}
	}
	r := benchReplica(ctx, b, owner, tbl)
	keys := make([][]byte, rows)
	for i := range keys {
		keys[i] = benchKey((i * 7919) % rows)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		v, ok, err := r.Get(keys[i%rows])
		if err != nil || !ok || len(v) != benchValueSize {
			b.Fatalf("Get = %d bytes, %v, %v", len(v), ok, err)
		}
	}
}

// benchReplica subscribes an in-memory consumer to tbl of owner and waits
// until its replica holds the table's head.
func benchReplica(ctx context.Context, b *testing.B, owner *Component, tbl *OwnedTable) *Replica {
	b.Helper()
	cons := openComponent(b, "consumer", "c1", "", "")
	b.Cleanup(func() { mustClose(b, cons) })
	r, err := cons.Subscribe(ctx, SubscribeOptions{Service: "bench", Table: "bench", Addr: owner.Addr()})
	if err != nil {
		b.Fatal(err)
	}
	if err := r.WaitFor(ctx, tbl.Head()); err != nil {
		b.Fatal(err)
	}
	return r
}

// BenchmarkOwnerPut: one writer, each Put waits for its group commit.
func BenchmarkOwnerPut(b *testing.B) {
	_, tbl := benchOwner(b)
	ctx := context.Background()
	val := benchValue()
	b.ReportAllocs()
	b.SetBytes(benchValueSize)
	for i := 0; b.Loop(); i++ {
		if _, err := tbl.Put(ctx, benchKey(i%100_000), val); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkOwnerSubmitPipelined: one writer keeps up to 1024 single-change
// writes in flight, as replbench's fan-out writer does.
func BenchmarkOwnerSubmitPipelined(b *testing.B) {
	_, tbl := benchOwner(b)
	ctx := context.Background()
	val := benchValue()
	window := make([]*Pending, 1024)
	b.ReportAllocs()
	b.SetBytes(benchValueSize)
	for i := 0; b.Loop(); i++ {
		slot := i % len(window)
		if p := window[slot]; p != nil {
			if _, err := p.Wait(ctx); err != nil {
				b.Fatal(err)
			}
		}
		p, err := tbl.Submit(ctx, Write{Key: benchKey(i % 100_000), Value: val})
		if err != nil {
			b.Fatal(err)
		}
		window[slot] = p
	}
	for _, p := range window {
		if p != nil {
			if _, err := p.Wait(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkApplyBatch: sequential Applies of 100 changes each; one op is
// one Apply.
func BenchmarkApplyBatch(b *testing.B) {
	const batch = 100
	_, tbl := benchOwner(b)
	ctx := context.Background()
	val := benchValue()
	ws := make([]Write, batch)
	b.ReportAllocs()
	b.SetBytes(batch * benchValueSize)
	n := 0
	for b.Loop() {
		for j := range ws {
			ws[j] = Write{Key: benchKey(n % 100_000), Value: val}
			n++
		}
		if _, err := tbl.Apply(ctx, ws...); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "changes/s")
}

// BenchmarkReplicaGetLatency: point reads of random keys of a table of
// getLatencyRows rows (256-byte values; REPLMESH_BENCH_ROWS overrides) from
// an in-memory replica, and the same lookups in a plain Go map[string][]byte
// of the same rows, in the same run. Each read is timed alone: p50-ns and
// p99-ns are its percentiles (the clock's own cost, some tens of ns, is in
// both); ns/op is the mean.
func BenchmarkReplicaGetLatency(b *testing.B) {
	rows := getLatencyRows
	if s := os.Getenv("REPLMESH_BENCH_ROWS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("REPLMESH_BENCH_ROWS=%q: want a row count", s)
		}
		rows = n
	}
	owner := openComponent(b, "bench", "owner", b.TempDir(), "")
	b.Cleanup(func() { mustClose(b, owner) })
	tbl, err := owner.Own("bench")
	if err != nil {
		b.Fatal(err)
	}
	ctx := ctxT(b, 10*time.Minute)
	val := benchValue()
	keys := make([][]byte, rows)
	m := make(map[string][]byte, rows)
	ws := make([]Write, 0, 1000)
	for i := range rows {
		keys[i] = benchKey(i)
		m[string(keys[i])] = val
		ws = append(ws, Write{Key: keys[i], Value: val})
		if len(ws) == cap(ws) || i == rows-1 {
			if _, err := tbl.Apply(ctx, ws...); err != nil {
				b.Fatal(err)
			}
			ws = ws[:0]
		}
	}
	r := benchReplica(ctx, b, owner, tbl)
	rng := rand.New(rand.NewPCG(1, 2))
	rng.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	reads := []struct {
		name string
		get  func(k []byte) ([]byte, bool, error)
	}{
		{"map", func(k []byte) ([]byte, bool, error) { v, ok := m[string(k)]; return v, ok, nil }},
		{"Get", r.Get},
		{"GetShared", r.GetShared},
	}
	for _, rd := range reads {
		b.Run(rd.name, func(b *testing.B) {
			lat := make([]time.Duration, b.N)
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				k := keys[i%len(keys)]
				t0 := time.Now()
				v, ok, err := rd.get(k)
				lat[i] = time.Since(t0)
				if err != nil || !ok || len(v) != benchValueSize {
					b.Fatalf("read %s = %d bytes, %v, %v", k, len(v), ok, err)
				}
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
			b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
		})
	}
}

// getLatencyRows is BenchmarkReplicaGetLatency's table size (the issue's
// point-read workload).
const getLatencyRows = 1_000_000

// benchResRows is a resident tree of rows rows of 256-byte values.
func benchResRows(rows int) *resTable {
	val := benchValue()
	tree := newResRows()
	for i := range rows {
		tree.Load(ownRow(benchKey(i), val))
	}
	return tree
}

// BenchmarkResidentApply: a batch of random puts applied to the resident
// rows of a 1M-row table and published (the copy-on-write clones, the
// hash index's delta and its background rebuilds included); one op is one
// batch. read: point reads keep coming, so the index is kept up; unread:
// none, so it is dropped and each change pays for the rows' B-tree alone.
func BenchmarkResidentApply(b *testing.B) {
	const rows = 1_000_000
	val := benchValue()
	tree := benchResRows(rows)
	for _, reads := range []string{"read", "unread"} {
		var builds sync.WaitGroup
		spawn := func(f func()) bool {
			builds.Add(1)
			go func() { defer builds.Done(); f() }()
			return true
		}
		var readCount func() uint64 // nil: always read
		if reads == "unread" {
			readCount = func() uint64 { return 0 }
		}
		s := newResident(cursor{}, tree.Copy(), int64(rows*(10+benchValueSize)), spawn, nil, readCount)
		builds.Wait() // the first index, from all rows, is not part of an apply
		rng := rand.New(rand.NewPCG(5, 6))
		for _, batch := range []int{1, 100, 1000} {
			b.Run(fmt.Sprintf("%s/batch=%d", reads, batch), func(b *testing.B) {
				chs := make([]transport.Change, batch)
				seq := s.view.Load().cur.Seq
				b.ReportAllocs()
				cpu0, ok0 := cputime.Process()
				for b.Loop() {
					for i := range chs {
						seq++
						chs[i] = transport.Change{Seq: seq, Op: transport.OpPut, Key: benchKey(rng.IntN(rows)), Value: val}
					}
					s.apply(cursor{Seq: seq}, chs)
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/change")
				// The index builds run beside the loop: their CPU is in this.
				if cpu1, ok1 := cputime.Process(); ok0 && ok1 {
					b.ReportMetric(float64((cpu1-cpu0).Nanoseconds())/float64(b.N*batch), "cpu-ns/change")
				}
			})
		}
		builds.Wait()
	}
}

// BenchmarkResidentScan: a Scan of 1,000 rows from a random key of a
// 1M-row resident view; one op is one scan.
func BenchmarkResidentScan(b *testing.B) {
	const rows = 1_000_000
	s := newResident(cursor{}, benchResRows(rows), 0, nil, nil, nil)
	v := s.view.Load()
	rng := rand.New(rand.NewPCG(7, 8))
	b.ReportAllocs()
	for b.Loop() {
		n := 0
		v.scan(nil, benchKey(rng.IntN(rows-1000)), nil, func(_, _ []byte) bool { n++; return n < 1000 })
	}
}

// BenchmarkCatchUpFrames: what a reader does with each changes frame of a
// catch-up, in memory: the frame decoded from its wire bytes (as the gRPC
// codec decodes it) and its changes applied to the resident rows, every
// change a new key (W3's); the table grows to 100,000 rows and starts
// over. One op is one frame of 250 changes (256-byte values).
func BenchmarkCatchUpFrames(b *testing.B) {
	const frame, rows = 250, 100_000
	val := benchValue()
	var frames [][]byte
	for i := 0; i < rows; i += frame {
		chs := make(transport.ChangeList, frame)
		for j := range chs {
			chs[j] = transport.Change{Seq: uint64(i + j + 1), Op: transport.OpPut, Key: benchKey(i + j), Value: val, TxnEnd: true}
		}
		wire, err := transport.Marshal(&transport.OwnerFrame{Kind: transport.KindChanges, HeadSeq: rows, Changes: chs})
		if err != nil {
			b.Fatal(err)
		}
		frames = append(frames, wire)
	}
	var s *resident
	b.ReportAllocs()
	n := 0
	cpu0, ok0 := cputime.Process()
	for b.Loop() {
		i := n % len(frames)
		if i == 0 {
			s = newResident(cursor{}, newResRows(), 0, nil, nil, nil)
		}
		var f transport.OwnerFrame
		if err := transport.Unmarshal(frames[i], &f); err != nil {
			b.Fatal(err)
		}
		s.apply(cursor{Seq: f.Changes[len(f.Changes)-1].Seq}, f.Changes)
		n++
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n*frame), "ns/change")
	// The garbage collector's work beside the loop is in this.
	if cpu1, ok1 := cputime.Process(); ok0 && ok1 {
		b.ReportMetric(float64((cpu1-cpu0).Nanoseconds())/float64(n*frame), "cpu-ns/change")
	}
}
