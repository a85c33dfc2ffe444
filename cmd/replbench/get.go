package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"time"

	"github.com/replmesh/replmesh/internal/benchkit"
)

func (b *bench) runGet(ctx context.Context) error {
	for _, kind := range b.opts.replicas {
		if err := b.getRun(ctx, kind); err != nil {
			return fmt.Errorf("%s: %w", kind, err)
		}
	}
	return nil
}

// getRun: Replica.Get of random keys on a replica of -getrows rows. The
// p50 comes from individually timed Gets (it includes one clock read); the
// mean and allocs/op from an untimed loop. Replica.GetShared (no copy) and
// a plain Go map of the same rows are timed the same way, interleaved with
// Get in rounds, so the three see the same machine.
func (b *bench) getRun(ctx context.Context, kind string) (err error) {
	name := "get " + kind
	n := b.opts.getRows
	benchkit.Settle()
	b.progress("%s: replica of %d rows", name, n)
	g, err := b.newRig(ctx, "get-"+kind, kind, 1)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, g.close()) }()
	head, err := b.loadRows(ctx, g.table, n)
	if err != nil {
		return err
	}
	r := g.reps[0]
	if err := waitCaughtUp(ctx, r, head); err != nil {
		return err
	}
	keys := make([][]byte, n)
	for i := range keys {
		keys[i] = benchkit.AppendKey(nil, i)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	// Warm up, and check every row is there.
	for _, i := range rng.Perm(n) {
		v, ok, err := r.Get(keys[i])
		if err != nil {
			return err
		}
		if !ok || len(v) != b.opts.valueSize {
			return fmt.Errorf("get %s: found=%v, %d bytes", keys[i], ok, len(v))
		}
	}
	loops := b.opts.getOps
	timed := max(1, loops/5)
	m := make(map[string][]byte, n)
	val := make([]byte, b.opts.valueSize)
	for _, k := range keys {
		m[string(k)] = val
	}
	reads := []func(k []byte) ([]byte, bool, error){
		r.Get,
		r.GetShared,
		func(k []byte) ([]byte, bool, error) { v, ok := m[string(k)]; return v, ok, nil },
	}
	lats := make([]samples, len(reads))
	const rounds = 10
	for round := range rounds {
		for j, read := range reads {
			for range timed / rounds {
				k := keys[rng.IntN(n)]
				t := time.Now()
				_, ok, err := read(k)
				lats[j] = append(lats[j], int64(time.Since(t)))
				if err != nil {
					return err
				}
				if !ok {
					return fmt.Errorf("read %d, round %d: %s not found", j, round, k)
				}
			}
		}
	}
	lat := lats[0]
	idx := make([]int32, loops)
	for i := range idx {
		idx[i] = int32(rng.IntN(n))
	}
	runtime.GC()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	start := time.Now()
	for _, i := range idx {
		if _, _, err := r.Get(keys[i]); err != nil {
			return err
		}
	}
	took := time.Since(start)
	runtime.ReadMemStats(&m1)
	ps := lat.percentiles(0.50, 0.99)
	b.add(result{Workload: name, Figure: "Replica.Get p50", Value: float64(ps[0]), Unit: unitNanos, Target: under(2e3),
		Reference: "nats remote read 29 µs p50",
		Notes:     fmt.Sprintf("random keys of %d rows; p99 %s; %d timed Gets", n, formatDuration(ps[1]), timed)})
	shared, mp := lats[1].percentiles(0.50, 0.99), lats[2].percentiles(0.50, 0.99)
	b.add(result{Workload: name, Figure: "Replica.GetShared p50", Value: float64(shared[0]), Unit: unitNanos, Target: under(2 * float64(mp[0])),
		Reference: "issue 14: ≤ 2× the map's p50",
		Notes:     fmt.Sprintf("p99 %s (issue 14: < 2 µs); %.2f× the map's p50", formatDuration(shared[1]), float64(shared[0])/float64(mp[0]))})
	b.add(result{Workload: name, Figure: "Go map lookup p50", Value: float64(mp[0]), Unit: unitNanos,
		Notes: fmt.Sprintf("map[string][]byte of the same %d keys; p99 %s", n, formatDuration(mp[1]))})
	b.add(result{Workload: name, Figure: "Replica.Get mean", Value: float64(took) / float64(loops), Unit: unitNanos,
		Notes: fmt.Sprintf("%d Gets in %.2f s", loops, took.Seconds())})
	b.add(result{Workload: name, Figure: "allocs/op", Value: float64(m1.Mallocs-m0.Mallocs) / float64(loops), Unit: unitCount,
		Notes: fmt.Sprintf("%.0f B/op", float64(m1.TotalAlloc-m0.TotalAlloc)/float64(loops))})
	return nil
}
