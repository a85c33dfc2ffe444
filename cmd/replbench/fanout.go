package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/replmesh/replmesh/internal/benchkit"
	"github.com/replmesh/replmesh/internal/cputime"
	"github.com/replmesh/replmesh/replica"
)

// fanoutGoal holds the targets and the Redis / NATS figures it
// quotes for one fan-out configuration.
type fanoutGoal struct {
	rate, p99       *target
	rateRef, p99Ref string
}

func goalFor(kind string, n int) fanoutGoal {
	var g fanoutGoal
	switch n {
	case 1:
		g.rateRef, g.p99Ref = "redis 269k/s, nats 116k/s", "redis 7 ms, nats 12 ms"
	case 4:
		g.rateRef, g.p99Ref = "redis 119k/s, nats 69k/s", "redis 18 ms, nats 24 ms"
	case 16:
		g.rateRef, g.p99Ref = "redis 31k/s, nats 30k/s", "nats 59 ms"
	}
	switch {
	case kind == "mem" && n == 1:
		g.rate, g.p99 = atLeast(300e3), under(10e6)
	case kind == "mem" && n == 4:
		g.rate, g.p99 = atLeast(150e3), under(10e6)
	case kind == "mem" && n == 16:
		g.rate = atLeast(50e3)
	case kind == "disk" && n == 1:
		g.rate = atLeast(120e3)
	case kind == "disk" && n == 4:
		g.rate = atLeast(75e3)
	}
	return g
}

// rig is an owner on disk and n subscribed, ready consumers.
type rig struct {
	dir   string
	owner *replica.Component
	table *replica.OwnedTable
	comps []*replica.Component
	reps  []*replica.Replica
}

// newRig opens an owner and n consumers of kind "mem" (no data dir) or
// "disk", and waits until every consumer holds the (empty) table.
func (b *bench) newRig(ctx context.Context, name, kind string, n int) (*rig, error) {
	return b.newRigWith(ctx, name, kind, n, nil)
}

// newRigWith is newRig with the security of sec (nil: plaintext, no
// identities).
func (b *bench) newRigWith(ctx context.Context, name, kind string, n int, sec *pki) (_ *rig, err error) {
	dir, err := b.subdir(name)
	if err != nil {
		return nil, err
	}
	g := &rig{dir: dir}
	defer func() {
		if err != nil {
			g.close()
		}
	}()
	g.owner, g.table, err = b.openOwner(ctx, filepath.Join(dir, "owner"), "127.0.0.1:0", sec.owner(),
		func(c *replica.Config) { c.Flow.Window = b.opts.flowWindow })
	if err != nil {
		return g, err
	}
	g.comps = append(g.comps, g.owner)
	for i := range n {
		cdir := ""
		if kind == "disk" {
			cdir = filepath.Join(dir, fmt.Sprintf("c%02d", i))
		}
		instance := fmt.Sprintf("c%02d", i)
		c, err := b.openConsumer(ctx, instance, cdir, sec.consumer(instance))
		if err != nil {
			return g, err
		}
		g.comps = append(g.comps, c)
		r, err := subscribe(ctx, c, g.owner.Addr())
		if err != nil {
			return g, err
		}
		g.reps = append(g.reps, r)
	}
	for _, r := range g.reps {
		if err := benchkit.WaitReady(ctx, r, setupTimeout); err != nil {
			return g, err
		}
	}
	return g, nil
}

func (g *rig) close() error {
	err := closeAll(g.comps...)
	return errors.Join(err, os.RemoveAll(g.dir))
}

func (b *bench) runFanout(ctx context.Context) error {
	for _, kind := range b.opts.replicas {
		for _, n := range b.opts.consumers {
			if err := b.fanout(ctx, kind, n); err != nil {
				return fmt.Errorf("%s x%d: %w", kind, n, err)
			}
		}
	}
	return nil
}

// fanoutFigures are what one fan-out run measured.
type fanoutFigures struct {
	elapsed, committed time.Duration
	rate               float64 // changes/s delivered to all
	p50, p99, max      time.Duration
	samples            int
	// cpu is the process's CPU time (writer, owner and consumers) from
	// the first write until every consumer caught up; 0: unknown.
	cpu time.Duration
}

// fanout: one writer pipelines -changes Puts; every consumer must hold the
// last seq. The rate is changes / (first write .. last consumer caught up).
func (b *bench) fanout(ctx context.Context, kind string, n int) error {
	name := fmt.Sprintf("fanout %s x%d", kind, n)
	f, err := b.measureFanout(ctx, name, kind, n, nil)
	if err != nil {
		return err
	}
	changes := b.opts.changes
	goal := goalFor(kind, n)
	b.add(result{
		Workload: name, Figure: "changes/s to all", Value: f.rate, Unit: unitChangesPerSec, Target: goal.rate,
		Reference: goal.rateRef, payloadBps: f.rate * float64(n*b.opts.valueSize),
		Notes: fmt.Sprintf("%d changes in %.2f s; owner committed them in %.2f s (%s/s)",
			changes, f.elapsed.Seconds(), f.committed.Seconds(), benchkit.SI(float64(changes)/f.committed.Seconds())),
	})
	b.add(result{Workload: name, Figure: "p50 commit-to-applied", Value: float64(f.p50), Unit: unitNanos})
	b.add(result{
		Workload: name, Figure: "p99 commit-to-applied", Value: float64(f.p99), Unit: unitNanos, Target: goal.p99,
		Reference: goal.p99Ref, Notes: fmt.Sprintf("max %s over %d samples", formatDuration(f.max), f.samples),
	})
	if f.cpu > 0 {
		// CPU per change is what a busy machine distorts least: the
		// wall-clock figures above count the waits for a core too.
		b.add(result{Workload: name, Figure: "CPU per change", Value: float64(f.cpu) / float64(changes), Unit: unitNanos,
			Notes: fmt.Sprintf("the process's CPU (writer, owner, %d consumers) until all caught up: %.2f s", n, f.cpu.Seconds())})
	}
	return nil
}

// measureFanout runs one fan-out to n consumers of kind with the security
// of sec (nil: none) and returns its figures.
func (b *bench) measureFanout(ctx context.Context, name, kind string, n int, sec *pki) (_ fanoutFigures, err error) {
	var f fanoutFigures
	benchkit.Settle()
	b.progress("%s: %d changes over %d keys, window %d", name, b.opts.changes, b.opts.keys, b.opts.window)
	g, err := b.newRigWith(ctx, strings.ReplaceAll(name, " ", "-"), kind, n, sec)
	if err != nil {
		return f, err
	}
	defer func() { err = errors.Join(err, g.close()) }()

	changes := b.opts.changes
	target := g.table.Head() + uint64(changes)
	probes := make([]*probe, n)
	for i, r := range g.reps {
		probes[i] = newProbe(changes, target)
		defer r.OnChange(probes[i].onChange)()
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	finish := make([]time.Time, n)
	werrs := make([]error, n)
	var wg sync.WaitGroup

	start := time.Now()
	cpu0, cpuOK0 := cputime.Process()
	for i, r := range g.reps {
		wg.Go(func() {
			werrs[i] = r.WaitFor(wctx, target)
			finish[i] = time.Now()
		})
	}
	last, err := b.writePipelined(ctx, g.table, changes, b.opts.keys, 0)
	f.committed = time.Since(start)
	if err != nil {
		cancel()
		wg.Wait()
		return f, err
	}
	wg.Wait()
	if cpu1, cpuOK1 := cputime.Process(); cpuOK0 && cpuOK1 {
		f.cpu = cpu1 - cpu0
	}
	if err := errors.Join(werrs...); err != nil {
		return f, err
	}
	if last != target {
		return f, fmt.Errorf("writer's last seq is %d, want %d", last, target)
	}
	f.elapsed = slices.MaxFunc(finish, time.Time.Compare).Sub(start)
	var lat samples
	for _, p := range probes {
		if err := p.wait(ctx); err != nil {
			return f, err
		}
		lat = append(lat, p.samples()...)
	}
	if want := changes * n; len(lat) != want {
		return f, fmt.Errorf("callbacks saw %d changes, want %d", len(lat), want)
	}
	ps := lat.percentiles(0.50, 0.99, 1)
	f.p50, f.p99, f.max, f.samples = ps[0], ps[1], ps[2], len(lat)
	f.rate = float64(changes) / f.elapsed.Seconds()
	return f, nil
}

func (b *bench) runPaced(ctx context.Context) error {
	for _, kind := range b.opts.replicas {
		if err := b.pacedRun(ctx, kind); err != nil {
			return fmt.Errorf("%s: %w", kind, err)
		}
	}
	return nil
}

// pacedRun: one consumer, the writer submits -rate changes per second for
// -paced; latency is commit to applied in the consumer's callback.
func (b *bench) pacedRun(ctx context.Context, kind string) (err error) {
	name := "paced " + kind
	n := max(1, int(b.opts.paced.Seconds()*float64(b.opts.rate)))
	benchkit.Settle()
	b.progress("%s: %d changes at %d/s", name, n, b.opts.rate)
	g, err := b.newRig(ctx, "paced-"+kind, kind, 1)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, g.close()) }()

	target := g.table.Head() + uint64(n)
	p := newProbe(n, target)
	defer g.reps[0].OnChange(p.onChange)()
	vals := newPayload(b.opts.valueSize)
	interval := time.Second / time.Duration(b.opts.rate)
	pending := make([]*replica.Pending, 0, n)
	var key []byte
	start := time.Now()
	for i := range n {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d)
		}
		key = benchkit.AppendKey(key[:0], i%b.opts.keys)
		pd, err := g.table.Submit(ctx, replica.Write{Key: key, Value: vals.value(i)})
		if err != nil {
			return fmt.Errorf("submit: %w", err)
		}
		pending = append(pending, pd)
	}
	elapsed := time.Since(start)
	for _, pd := range pending {
		if _, err := pd.Wait(ctx); err != nil {
			return fmt.Errorf("write: %w", err)
		}
	}
	if err := p.wait(ctx); err != nil {
		return err
	}
	lat := p.samples()
	ps := lat.percentiles(0.50, 0.99, 1)
	b.add(result{Workload: name, Figure: "p50 commit-to-applied", Value: float64(ps[0]), Unit: unitNanos, Target: under(300e3),
		Notes: fmt.Sprintf("%d changes at %.0f/s, 1 consumer", n, float64(n)/elapsed.Seconds())})
	b.add(result{Workload: name, Figure: "p99 commit-to-applied", Value: float64(ps[1]), Unit: unitNanos, Target: under(1e6),
		Notes: fmt.Sprintf("max %s", formatDuration(ps[2]))})
	return nil
}
