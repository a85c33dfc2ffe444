package replica

import (
	"context"
	"io/fs"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// BenchmarkOwnerWriteCost measures the owner's commit path on disk: one op
// is one change (a 256-byte value under a new key), submitted pipelined
// 1,024 deep as replbench's writer does. Besides ns/op it reports
// changes/s and disk-B/change: the bytes badger's files hold for the
// changes once the component is closed (memtables flushed), divided by
// the changes.
func BenchmarkOwnerWriteCost(b *testing.B) {
	b.Run("new-keys", func(b *testing.B) { benchOwnerWriteCost(b, 0, nil) })
	// At the retention limit: the log is trimmed all along (50,000
	// changes kept, a trim every 50 ms) over 20,000 keys, so trimming's
	// cost is in the figure.
	b.Run("trimmed", func(b *testing.B) {
		benchOwnerWriteCost(b, 20_000, func(c *Config) {
			c.Retention = Retention{MaxChanges: 50_000}
			c.TrimInterval = 50 * time.Millisecond
		})
	})
}

// benchOwnerWriteCost is BenchmarkOwnerWriteCost over keys keys (0: a
// new key each change) with tweak applied to the config.
func benchOwnerWriteCost(b *testing.B, keys int, tweak func(*Config)) {
	dir := b.TempDir()
	c := openWith(b, "bench", "owner", dir, "", tweak)
	tbl, err := c.Own("bench")
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	val := benchValue()
	window := make([]*Pending, 1024)
	wait := func(p *Pending) {
		if p == nil {
			return
		}
		if _, err := p.Wait(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.SetBytes(benchValueSize)
	start := time.Now()
	n := 0
	for i := 0; b.Loop(); i++ {
		slot := i % len(window)
		wait(window[slot])
		k := i
		if keys > 0 {
			k = i % keys
		}
		p, err := tbl.Submit(ctx, Write{Key: benchKey(k), Value: val})
		if err != nil {
			b.Fatal(err)
		}
		window[slot] = p
		n++
	}
	for _, p := range window {
		wait(p)
	}
	took := time.Since(start)
	b.StopTimer()
	mustClose(b, c)
	b.ReportMetric(float64(n)/took.Seconds(), "changes/s")
	b.ReportMetric(float64(dirSize(b, dir))/float64(n), "disk-B/change")
}

// dirSize sums the sizes of the files under dir.
func dirSize(t testing.TB, dir string) int64 {
	t.Helper()
	var total int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		total += fi.Size()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return total
}

// benchOwnerRows opens an owner on disk holding rows 256-byte rows.
func benchOwnerRows(b *testing.B, rows int) *OwnedTable {
	b.Helper()
	c := openComponent(b, "bench", "owner", b.TempDir(), "")
	b.Cleanup(func() { mustClose(b, c) })
	tbl, err := c.Own("bench")
	if err != nil {
		b.Fatal(err)
	}
	ctx := ctxT(b, 5*time.Minute)
	val := benchValue()
	ws := make([]Write, 0, 1000)
	for i := 0; i < rows; i += cap(ws) {
		ws = ws[:0]
		for j := i; j < min(rows, i+cap(ws)); j++ {
			ws = append(ws, Write{Key: benchKey(j), Value: val})
		}
		if _, err := tbl.Apply(ctx, ws...); err != nil {
			b.Fatal(err)
		}
	}
	return tbl
}

// BenchmarkOwnerGet: the owner's own Get on a 100k-row table on disk.
func BenchmarkOwnerGet(b *testing.B) {
	const rows = 100_000
	tbl := benchOwnerRows(b, rows)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		v, ok, err := tbl.Get(benchKey((i * 7919) % rows))
		if err != nil || !ok || len(v) != benchValueSize {
			b.Fatalf("Get = %d bytes, %v, %v", len(v), ok, err)
		}
	}
}

// BenchmarkOwnerScan: one op is a Scan of a 100k-row table on disk (what
// a full transfer's snapshot reads); it reports rows/s.
func BenchmarkOwnerScan(b *testing.B) {
	const rows = 100_000
	tbl := benchOwnerRows(b, rows)
	b.ReportAllocs()
	start := time.Now()
	for b.Loop() {
		n := 0
		if _, err := tbl.Scan(nil, func(_, v []byte) bool { n++; return len(v) == benchValueSize }); err != nil || n != rows {
			b.Fatalf("scan: %d rows, %v", n, err)
		}
	}
	b.ReportMetric(float64(rows*b.N)/time.Since(start).Seconds(), "rows/s")
}

// BenchmarkOwnerTrim: one op is one log entry trimmed. The table holds
// b.N changes over 50,000 keys (256-byte values, written in groups of
// 1,000) and trims all but the last 1,000; only the trim is timed.
func BenchmarkOwnerTrim(b *testing.B) {
	benchOwnerTrim(b, func(j int) []byte { return benchKey(j % 50_000) })
}

// benchOwnerTrim writes b.N changes, change j under key(j), in groups of
// 1,000, then times the trim of all but the last 1,000.
func benchOwnerTrim(b *testing.B, key func(j int) []byte) (*Component, *OwnedTable) {
	c := openWith(b, "bench", "owner", b.TempDir(), "", func(c *Config) { c.TrimInterval = time.Hour })
	b.Cleanup(func() { mustClose(b, c) })
	tbl, err := c.Own("bench")
	if err != nil {
		b.Fatal(err)
	}
	ctx := ctxT(b, 5*time.Minute)
	val := benchValue()
	ws := make([]Write, 0, 1000)
	for i := 0; i < b.N; i += cap(ws) {
		ws = ws[:0]
		for j := i; j < min(b.N, i+cap(ws)); j++ {
			ws = append(ws, Write{Key: key(j), Value: val})
		}
		if _, err := tbl.Apply(ctx, ws...); err != nil {
			b.Fatal(err)
		}
	}
	tbl.mu.Lock()
	tbl.retention = Retention{MaxChanges: 1000}
	tbl.mu.Unlock()
	b.ResetTimer()
	if err := tbl.trim(time.Now()); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	return c, tbl
}

// BenchmarkOwnerTrimMixed is BenchmarkOwnerTrim over a mix: in each group
// of 1,000 changes, every tenth puts a key of its own (kept below the
// window: still its row's value), the others put one of 1,000 hot keys
// (dropped). Every trimmed log group is then rewritten holding its kept
// tenth. It reports kept-B/entry, the log bytes left below the window a
// kept entry (a group kept whole would leave ten times the kept bytes).
func BenchmarkOwnerTrimMixed(b *testing.B) {
	c, tbl := benchOwnerTrim(b, func(j int) []byte {
		if j%10 == 0 {
			return benchKey(1000 + j)
		}
		return benchKey(j % 1000)
	})
	first := tbl.meta.First
	var below, entries int64
	err := c.db.View(func(txn *badger.Txn) error {
		return tbl.eachGroup(txn, 0, func(_ uint64, g *logGroup) (bool, error) {
			if g.seq(0) < first {
				below += int64(len(g.data))
				entries += int64(g.n)
			}
			return true, nil
		})
	})
	if err != nil {
		b.Fatal(err)
	}
	if entries > 0 {
		b.ReportMetric(float64(below)/float64(entries), "kept-B/entry")
	}
}

// BenchmarkOwnerGetWhileWriting: the owner's own Get on a 100k-row table
// on disk while a writer keeps 64 writes in flight over 10,000 of its keys
// (a read of rows made while commits run: with the rows written lazily,
// ownrows.go, it waits for the overlay's flush). It reports the writer's
// changes/s beside the Get's time.
func BenchmarkOwnerGetWhileWriting(b *testing.B) {
	const rows = 100_000
	tbl := benchOwnerRows(b, rows)
	ctx, cancel := context.WithCancel(context.Background())
	var wrote atomic.Int64
	done := make(chan error, 1)
	go func() {
		val := benchValue()
		inflight := make([]*Pending, 64)
		for i := 0; ; i++ {
			slot := i % len(inflight)
			if p := inflight[slot]; p != nil {
				if _, err := p.Wait(ctx); err != nil {
					done <- nil // cancelled
					return
				}
				wrote.Add(1)
			}
			p, err := tbl.Submit(ctx, Write{Key: benchKey((i * 31) % 10_000), Value: val})
			if err != nil {
				done <- nil
				return
			}
			inflight[slot] = p
		}
	}()
	b.ReportAllocs()
	start, w0 := time.Now(), wrote.Load()
	for i := 0; b.Loop(); i++ {
		v, ok, err := tbl.Get(benchKey((i * 7919) % rows))
		if err != nil || !ok || len(v) != benchValueSize {
			b.Fatalf("Get = %d bytes, %v, %v", len(v), ok, err)
		}
	}
	b.ReportMetric(float64(wrote.Load()-w0)/time.Since(start).Seconds(), "writes/s")
	cancel()
	<-done
}
