package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/replmesh/replmesh/internal/benchkit"
	"github.com/replmesh/replmesh/replica"
)

// Names used by every workload.
const (
	ownerService    = "benchowner"
	ownerInstance   = "owner"
	consumerService = "benchconsumer"
	tableName       = "bench"
)

// setupTimeout bounds every wait that is not itself measured (a consumer
// becoming ready, a bulk load); measured phases are bounded by the run's
// context only.
const setupTimeout = 10 * time.Minute

// apply returns cfg changed by each non-nil mutate.
func apply(cfg replica.Config, mutate []func(*replica.Config)) replica.Config {
	for _, m := range mutate {
		if m != nil {
			m(&cfg)
		}
	}
	return cfg
}

// subdir returns a fresh directory for one workload's databases.
func (b *bench) subdir(name string) (string, error) {
	d := filepath.Join(b.dir, name)
	if err := os.RemoveAll(d); err != nil {
		return "", err
	}
	return d, os.MkdirAll(d, 0o755)
}

// openOwner opens an owner on disk under dir, listening on addr, and
// declares the table; mutate (nil ones skipped) change its configuration
// first.
func (b *bench) openOwner(ctx context.Context, dir, addr string, mutate ...func(*replica.Config)) (*replica.Component, *replica.OwnedTable, error) {
	c, err := replica.Open(ctx, apply(benchkit.Config(b.logger, ownerService, ownerInstance, dir, addr), mutate))
	if err != nil {
		return nil, nil, fmt.Errorf("open owner: %w", err)
	}
	t, err := c.Own(tableName)
	if err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("own table: %w", err)
	}
	return c, t, nil
}

// ownerRig is a workload's fresh directory and an owner on disk in it
// (dir/owner), listening on loopback, whose table holds the rows loaded
// at head.
type ownerRig struct {
	dir   string
	owner *replica.Component
	tbl   *replica.OwnedTable
	head  uint64
}

// newOwnerRig makes name's directory and its owner, and loads rows rows
// (with progress); on error it leaves nothing behind.
func (b *bench) newOwnerRig(ctx context.Context, name string, rows int) (rig *ownerRig, err error) {
	rig = &ownerRig{}
	if rig.dir, err = b.subdir(name); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, rig.close())
		}
	}()
	if rig.owner, rig.tbl, err = b.openOwner(ctx, filepath.Join(rig.dir, "owner"), "127.0.0.1:0"); err != nil {
		return nil, err
	}
	b.progress("%s: loading %d rows into the owner", name, rows)
	if rig.head, err = b.loadRows(ctx, rig.tbl, rows); err != nil {
		return nil, err
	}
	return rig, nil
}

// close closes the owner and removes the directory.
func (r *ownerRig) close() error { return errors.Join(closeAll(r.owner), os.RemoveAll(r.dir)) }

// openConsumer opens a consumer that serves nothing; dir "" is in memory;
// mutate as for openOwner.
func (b *bench) openConsumer(ctx context.Context, instance, dir string, mutate ...func(*replica.Config)) (*replica.Component, error) {
	c, err := replica.Open(ctx, apply(benchkit.Config(b.logger, consumerService, instance, dir, ""), mutate))
	if err != nil {
		return nil, fmt.Errorf("open consumer %s: %w", instance, err)
	}
	return c, nil
}

func subscribe(ctx context.Context, c *replica.Component, addr string) (*replica.Replica, error) {
	return c.Subscribe(ctx, replica.SubscribeOptions{Service: ownerService, Table: tableName, Addr: addr})
}

// closeAll closes components concurrently (badger's Close flushes, which
// takes a while on disk) and joins their errors.
func closeAll(cs ...*replica.Component) error {
	errs := make([]error, len(cs))
	var wg sync.WaitGroup
	for i, c := range cs {
		if c == nil {
			continue
		}
		wg.Go(func() { errs[i] = c.Close() })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// payload hands out pseudo-random values of one size from a fixed pool
// (Submit copies them, so they may be shared).
type payload struct {
	pool []byte
	size int
}

const payloadPool = 1 << 16

func newPayload(size int) *payload {
	p := &payload{pool: make([]byte, payloadPool+size), size: size}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range p.pool {
		p.pool[i] = byte(rng.Uint32())
	}
	return p
}

func (p *payload) value(i int) []byte {
	off := (i * 7919) % payloadPool
	return p.pool[off : off+p.size]
}

// writePipelined is the one writer: it submits n single-change writes
// (keys i%keys, i counting from first) from one goroutine, keeping up to
// window of them in flight, and returns the seq of the last.
func (b *bench) writePipelined(ctx context.Context, t *replica.OwnedTable, n, keys, first int) (uint64, error) {
	p := newPayload(b.opts.valueSize)
	window := make([]*replica.Pending, b.opts.window)
	var last uint64
	wait := func(pd *replica.Pending) error {
		seq, err := pd.Wait(ctx)
		if err != nil {
			return fmt.Errorf("write: %w", err)
		}
		last = max(last, seq)
		return nil
	}
	var key []byte
	for i := range n {
		slot := i % len(window)
		if window[slot] != nil {
			if err := wait(window[slot]); err != nil {
				return 0, err
			}
		}
		key = benchkit.AppendKey(key[:0], (first+i)%keys)
		pd, err := t.Submit(ctx, replica.Write{Key: key, Value: p.value(first + i)})
		if err != nil {
			return 0, fmt.Errorf("submit: %w", err)
		}
		window[slot] = pd
	}
	for _, pd := range window {
		if pd != nil {
			if err := wait(pd); err != nil {
				return 0, err
			}
		}
	}
	return last, nil
}

// loadRows fills the table with rows 0..n-1 in Apply batches (several in
// flight) and returns the head seq.
func (b *bench) loadRows(ctx context.Context, t *replica.OwnedTable, n int) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	p := newPayload(b.opts.valueSize)
	perRow := 10 + b.opts.valueSize + 32 // key, value, per-change overhead (transport.Change.Size)
	batch := max(1, min(1000, replica.DefaultConfig().MaxApplyBytes*3/4/perRow))
	var inflight []*replica.Pending
	var last uint64
	for i := 0; i < n; i += batch {
		ws := make([]replica.Write, 0, batch)
		arena := make([]byte, 0, 10*batch)
		for j := i; j < min(n, i+batch); j++ {
			s := len(arena)
			arena = benchkit.AppendKey(arena, j)
			ws = append(ws, replica.Write{Key: arena[s:len(arena):len(arena)], Value: p.value(j)})
		}
		pd, err := t.Submit(ctx, ws...)
		if err != nil {
			return 0, fmt.Errorf("load: %w", err)
		}
		inflight = append(inflight, pd)
		if len(inflight) >= 8 {
			seq, err := inflight[0].Wait(ctx)
			if err != nil {
				return 0, fmt.Errorf("load: %w", err)
			}
			last = max(last, seq)
			inflight = inflight[1:]
		}
	}
	for _, pd := range inflight {
		seq, err := pd.Wait(ctx)
		if err != nil {
			return 0, fmt.Errorf("load: %w", err)
		}
		last = max(last, seq)
	}
	return last, nil
}

// probe records, in a consumer's OnChange callback, the commit-to-applied
// latency of every change (now minus Change.Time), and closes done once
// the consumer has seen seq target.
type probe struct {
	mu     sync.Mutex
	lat    samples
	seen   uint64
	target uint64
	done   chan struct{}
}

func newProbe(capacity int, target uint64) *probe {
	return &probe{lat: make(samples, 0, capacity), target: target, done: make(chan struct{})}
}

func (p *probe) onChange(e replica.Event) {
	now := time.Now().UnixNano()
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := range e.Changes {
		p.lat = append(p.lat, now-e.Changes[i].Time)
	}
	if e.Seq > p.seen {
		if p.seen < p.target && e.Seq >= p.target {
			close(p.done)
		}
		p.seen = e.Seq
	}
}

// wait waits until the callback has seen the target seq.
func (p *probe) wait(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		p.mu.Lock()
		defer p.mu.Unlock()
		return fmt.Errorf("callbacks saw seq %d, want %d: %w", p.seen, p.target, ctx.Err())
	}
}

func (p *probe) samples() samples {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append(samples(nil), p.lat...)
}
