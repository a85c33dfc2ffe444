package replica

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkDiskOnlyRead: reads of a durable DiskOnly replica of 100k rows
// of 256 B received by a full transfer, 1% of them changed after it
// (Get of random keys, a full Scan).
func BenchmarkDiskOnlyRead(b *testing.B) {
	const rows = 100_000
	owner, tbl := benchOwner(b)
	ctx := ctxT(b, 5*time.Minute)
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
	cons := openComponent(b, "consumer", "c1", b.TempDir(), "")
	b.Cleanup(func() { mustClose(b, cons) })
	r, err := cons.Subscribe(ctx, SubscribeOptions{Service: "bench", Table: "bench", Addr: owner.Addr(), DiskOnly: true})
	if err != nil {
		b.Fatal(err)
	}
	if err := r.WaitFor(ctx, tbl.Head()); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < rows; i += 100 {
		if _, err := tbl.Put(ctx, benchKey(i), fmt.Appendf(nil, "changed-%d", i)); err != nil {
			b.Fatal(err)
		}
	}
	if err := r.WaitFor(ctx, tbl.Head()); err != nil {
		b.Fatal(err)
	}
	b.Run("Get", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			k := (i * 7919) % rows
			_, ok, err := r.Get(benchKey(k))
			if err != nil || !ok {
				b.Fatalf("Get(%d) = %v, %v", k, ok, err)
			}
		}
	})
	b.Run("Scan", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			n := 0
			if _, err := r.Scan(nil, func(_, _ []byte) bool { n++; return true }); err != nil || n != rows {
				b.Fatalf("Scan: %d rows, %v", n, err)
			}
		}
	})
}
