package main

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/replmesh/replmesh/internal/benchkit"
)

// Every value written by every workload is valueSize bytes: the first 8
// hold the writer's clock (unix nanoseconds) when it issued the write, the
// next 8 the write's ordinal, the rest filler. A reader that sees the
// value measures commit-to-delivered as its clock minus the first 8 bytes
// (the writer and every in-process reader share the clock).
const stampSize = 16

// filler is the pseudo-random tail of every value (not compressible to
// nothing, the same for every system).
var filler = func() []byte {
	b := make([]byte, 1<<16)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}()

// newValue returns a fresh value of size bytes stamped with ordinal i and
// the current time. Every write gets its own buffer: some clients keep it
// until the write is sent.
func newValue(size, i int) []byte {
	v := make([]byte, size)
	off := (i * 7919) % (len(filler) - size)
	copy(v[stampSize:], filler[off:])
	binary.LittleEndian.PutUint64(v[8:], uint64(i))
	binary.LittleEndian.PutUint64(v, uint64(time.Now().UnixNano()))
	return v
}

// stamp reads the write time and ordinal of a value made by newValue.
func stamp(v []byte) (time.Time, int, error) {
	if len(v) < stampSize {
		return time.Time{}, 0, fmt.Errorf("value of %d bytes carries no stamp", len(v))
	}
	return time.Unix(0, int64(binary.LittleEndian.Uint64(v))), int(binary.LittleEndian.Uint64(v[8:])), nil
}

// key returns the key of row i: "k" and nine digits, valid as a NATS
// subject token and a Redis key, sorting by i.
func key(i int) string { return string(benchkit.AppendKey(nil, i)) }

// latencies are commit-to-delivered samples in nanoseconds.
type latencies []int64

// percentile returns the q-quantile (0..1) of sorted samples.
func (l latencies) percentile(q float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	return time.Duration(l[int(q*float64(len(l)-1))])
}

// merge joins per-reader samples into one sorted set.
func merge(parts ...latencies) latencies {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	out := make(latencies, 0, n)
	for _, p := range parts {
		out = append(out, p...)
	}
	slices.Sort(out)
	return out
}
