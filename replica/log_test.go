package replica

import (
	"bytes"
	"fmt"
	"testing"
	"time"
)

// ownLogTable opens an owner in memory whose table "prices" holds n
// changes of 256-byte values, written in Applies of perApply changes
// (each a commit group of its own in the log), and returns the table.
func ownLogTable(t testing.TB, n, perApply int) *OwnedTable {
	owner := openWith(t, "stores", "s1", "", "", nil)
	t.Cleanup(func() { mustClose(t, owner) })
	tbl, err := owner.Own("prices")
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, 60*time.Second)
	val := bytes.Repeat([]byte("v"), 256)
	ws := make([]Write, 0, perApply)
	for i := 0; i < n; i += perApply {
		ws = ws[:0]
		for j := i; j < min(n, i+perApply); j++ {
			ws = append(ws, Write{Key: fmt.Appendf(nil, "k%07d", j), Value: val})
		}
		if _, err := tbl.Apply(ctx, ws...); err != nil {
			t.Fatal(err)
		}
	}
	return tbl
}

// TestReadLogEncoded_OneBuffer: a catch-up frame read from the log over
// many commit groups is encoded into the room made for it at once
// (encodedFrameCap), not into a buffer grown group by group.
func TestReadLogEncoded_OneBuffer(t *testing.T) {
	tbl := ownLogTable(t, 4000, 16)
	for _, budget := range []int{maxFrameBytes, catchUpFrameBytes} {
		t.Run(fmt.Sprint(budget), func(t *testing.T) {
			enc, n, err := tbl.readLogEncoded(1, 1<<20, budget, nil)
			if err != nil {
				t.Fatal(err)
			}
			if n < 2*16 || len(enc) < budget*3/4 {
				t.Fatalf("read %d changes, %d bytes: want a full frame over several commit groups", n, len(enc))
			}
			if got, want := cap(enc), encodedFrameCap(budget); got != want {
				t.Fatalf("frame of %d bytes (%d changes) in a buffer of %d: want the %d made at once", len(enc), n, got, want)
			}
		})
	}
}

// BenchmarkReadLogEncoded: an owner catching a consumer up from its log,
// frame after frame of catchUpFrameBytes (the changes of 256-byte values,
// in commit groups of 64).
func BenchmarkReadLogEncoded(b *testing.B) {
	const n = 20000
	tbl := ownLogTable(b, n, 64)
	b.ResetTimer()
	for b.Loop() {
		for next := uint64(1); next <= n; {
			_, got, err := tbl.readLogEncoded(next, 1<<20, catchUpFrameBytes, nil)
			if err != nil || got == 0 {
				b.Fatalf("read from %d: %d changes, %v", next, got, err)
			}
			next += uint64(got)
		}
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "changes/s")
}
