package replica

import (
	"context"
	"testing"

	"github.com/replmesh/replmesh/transport"
)

// BenchmarkSendRows is a full transfer's sending side past the owner's
// read: 10,000 rows of 256-byte values made into rows frames (sendRows)
// and each frame marshaled as gRPC's SendMsg does (transport.Codec), per
// row.
func BenchmarkSendRows(b *testing.B) {
	const rows = 10_000
	keys := make([][]byte, rows)
	for i := range keys {
		keys[i] = benchKey(i)
	}
	val := benchValue()
	walk := func(fn func(k, v []byte) (bool, error)) error {
		for _, k := range keys {
			if more, err := fn(k, val); !more || err != nil {
				return err
			}
		}
		return nil
	}
	send := func(f *transport.OwnerFrame) error {
		bs, err := transport.Codec{}.Marshal(f)
		bs.Free()
		return err
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, _, err := sendRows(context.Background(), walk, maxFrameBytes, func(v []byte) ([]byte, error) { return v, nil }, send); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*rows), "ns/row")
}
