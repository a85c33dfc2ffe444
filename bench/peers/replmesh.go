package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/replmesh/replmesh/internal/benchkit"
	"github.com/replmesh/replmesh/replica"
)

// replmesh's side: the owner is a component on a data dir in this process
// (a process of its own where the owner restarts), every reader a
// component of its own (its own storage), in this process for W1, W4 and
// paced, a reader process for W2 and W3. Only the public replica API is
// used.
const (
	rmOwnerService  = "peerowner"
	rmReaderService = "peerreader"
	rmTable         = "peers"
)

// setupTimeout bounds the waits that are not measured (a load, a reader
// becoming ready).
const setupTimeout = 10 * time.Minute

// rmOpenOwner opens the owner component and owns the table; flowWindow is
// its Config.Flow.Window (0: the default).
func rmOpenOwner(ctx context.Context, logger *slog.Logger, dir, listen string, flowWindow int) (*replica.Component, *replica.OwnedTable, error) {
	cfg := benchkit.Config(logger, rmOwnerService, "owner", dir, listen)
	cfg.Flow.Window = flowWindow
	c, err := replica.Open(ctx, cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("open owner: %w", err)
	}
	t, err := c.Own(rmTable)
	if err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("own: %w", err)
	}
	return c, t, nil
}

func rmOpenReader(ctx context.Context, logger *slog.Logger, instance, dir string) (*replica.Component, error) {
	c, err := replica.Open(ctx, benchkit.Config(logger, rmReaderService, instance, dir, ""))
	if err != nil {
		return nil, fmt.Errorf("open reader %s: %w", instance, err)
	}
	return c, nil
}

func rmSubscribe(ctx context.Context, c *replica.Component, addr string) (*replica.Replica, error) {
	return c.Subscribe(ctx, replica.SubscribeOptions{Service: rmOwnerService, Table: rmTable, Addr: addr})
}

// rmReader opens a reader component (dir "": in memory), subscribes it to
// the owner at addr and waits until it holds a full copy.
func rmReader(ctx context.Context, logger *slog.Logger, instance, dir, addr string) (*replica.Component, *replica.Replica, error) {
	c, err := rmOpenReader(ctx, logger, instance, dir)
	if err != nil {
		return nil, nil, err
	}
	r, err := rmSubscribe(ctx, c, addr)
	if err == nil {
		err = benchkit.WaitReady(ctx, r, setupTimeout)
	}
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return c, r, nil
}

// rmWrite submits n changes (ordinals first.., keys ordinal mod keys) with
// window writes in flight and returns the last seq.
func rmWrite(ctx context.Context, t *replica.OwnedTable, first, n, keys, valueSize, window int) (uint64, error) {
	inflight := make([]*replica.Pending, window)
	var last uint64
	wait := func(p *replica.Pending) error {
		seq, err := p.Wait(ctx)
		last = max(last, seq)
		return err
	}
	var k []byte
	for i := first; i < first+n; i++ {
		slot := i % window
		if inflight[slot] != nil {
			if err := wait(inflight[slot]); err != nil {
				return 0, fmt.Errorf("write: %w", err)
			}
		}
		k = benchkit.AppendKey(k[:0], i%keys)
		p, err := t.Submit(ctx, replica.Write{Key: k, Value: newValue(valueSize, i)})
		if err != nil {
			return 0, fmt.Errorf("submit: %w", err)
		}
		inflight[slot] = p
	}
	for _, p := range inflight {
		if p != nil {
			if err := wait(p); err != nil {
				return 0, fmt.Errorf("write: %w", err)
			}
		}
	}
	return last, nil
}

// rmLoad writes rows 0..n-1 in Apply batches, several in flight, and
// returns the head.
func rmLoad(ctx context.Context, t *replica.OwnedTable, n, valueSize int) (uint64, error) {
	perRow := 10 + valueSize + 32 // key, value, per-change overhead
	batch := max(1, min(1000, replica.DefaultConfig().MaxApplyBytes*3/4/perRow))
	var inflight []*replica.Pending
	var last uint64
	drain := func(keep int) error {
		for len(inflight) > keep {
			seq, err := inflight[0].Wait(ctx)
			if err != nil {
				return fmt.Errorf("load: %w", err)
			}
			last = max(last, seq)
			inflight = inflight[1:]
		}
		return nil
	}
	for i := 0; i < n; i += batch {
		ws := make([]replica.Write, 0, batch)
		for j := i; j < min(n, i+batch); j++ {
			ws = append(ws, replica.Write{Key: benchkit.AppendKey(nil, j), Value: newValue(valueSize, j)})
		}
		p, err := t.Submit(ctx, ws...)
		if err != nil {
			return 0, fmt.Errorf("load: %w", err)
		}
		inflight = append(inflight, p)
		if err := drain(8); err != nil {
			return 0, err
		}
	}
	return last, drain(0)
}

// probe collects one reader's commit-to-delivered samples from its
// OnChange callback and says when it has seen want changes.
type probe struct {
	mu   sync.Mutex
	lat  latencies
	want int
	err  error
	done chan struct{}
	once sync.Once
}

func newProbe(want int) *probe {
	return &probe{lat: make(latencies, 0, want), want: want, done: make(chan struct{})}
}

// see records the delivery at now of a value (its stamp is the write's
// time).
//
// A reader of a key-value peer may never see some changes: a NATS KV
// bucket keeps one revision per key, so a watcher that falls behind gets
// the newest value of a key, not every value it had. The changes are
// delivered in order, so the last write (index want-1) seen means every
// change has reached the reader (as a value or superseded by a newer one):
// the probe completes then, with fewer samples.
func (p *probe) see(now time.Time, v []byte) {
	ts, i, err := stamp(v)
	if err != nil {
		p.fail(err)
	}
	p.add(now.Sub(ts))
	if err == nil && i == p.want-1 {
		p.once.Do(func() { close(p.done) })
	}
}

// add records one delivery's latency.
func (p *probe) add(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.lat) >= p.want {
		return
	}
	p.lat = append(p.lat, int64(d))
	if len(p.lat) == p.want {
		p.once.Do(func() { close(p.done) })
	}
}

// fail records that a delivery was wrong; wait returns the first such
// error.
func (p *probe) fail(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err == nil {
		p.err = err
	}
}

func (p *probe) onChange(e replica.Event) {
	now := time.Now()
	for _, c := range e.Changes {
		p.see(now, c.Value)
	}
}

// wait waits for all samples and returns them.
func (p *probe) wait(ctx context.Context) (latencies, error) {
	ctx, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	select {
	case <-p.done:
	case <-ctx.Done():
		p.mu.Lock()
		defer p.mu.Unlock()
		return nil, fmt.Errorf("reader saw %d of %d changes: %w", len(p.lat), p.want, ctx.Err())
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lat, p.err
}

// waitProbes waits for every reader's samples.
func waitProbes(ctx context.Context, probes []*probe) ([]latencies, error) {
	var parts []latencies
	for _, p := range probes {
		lat, err := p.wait(ctx)
		if err != nil {
			return nil, err
		}
		parts = append(parts, lat)
	}
	return parts, nil
}

func closeAll(cs ...*replica.Component) error {
	errs := make([]error, len(cs))
	var wg sync.WaitGroup
	for i, c := range cs {
		if c != nil {
			wg.Go(func() { errs[i] = c.Close() })
		}
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (b *bench) subdir(name string) (string, error) {
	d := filepath.Join(b.dir, name)
	if err := os.RemoveAll(d); err != nil {
		return "", err
	}
	return d, os.MkdirAll(d, 0o755)
}

// rmRig is a durable owner in this process and the reader components
// opened beside it, under one scratch dir.
type rmRig struct {
	b     *bench
	dir   string
	owner *replica.Component
	table *replica.OwnedTable
	comps []*replica.Component
}

func (b *bench) newRig(ctx context.Context, name string) (*rmRig, error) {
	dir, err := b.subdir(name)
	if err != nil {
		return nil, err
	}
	owner, table, err := rmOpenOwner(ctx, b.logger, filepath.Join(dir, "owner"), "127.0.0.1:0", b.sz.Flow)
	if err != nil {
		return nil, errors.Join(err, os.RemoveAll(dir))
	}
	return &rmRig{b: b, dir: dir, owner: owner, table: table, comps: []*replica.Component{owner}}, nil
}

// reader opens a ready reader of the owner: on a data dir of its own when
// disk, else in memory.
func (g *rmRig) reader(ctx context.Context, instance string, disk bool) (*replica.Component, *replica.Replica, error) {
	dir := ""
	if disk {
		dir = filepath.Join(g.dir, instance)
	}
	c, r, err := rmReader(ctx, g.b.logger, instance, dir, g.owner.Addr())
	if err != nil {
		return nil, nil, err
	}
	g.comps = append(g.comps, c)
	return c, r, nil
}

func (g *rmRig) close() error {
	return errors.Join(closeAll(g.comps...), os.RemoveAll(g.dir))
}

// readerKinds are replmesh's two reader columns: a reader with a data dir
// and one in memory.
var readerKinds = []struct{ sys, name string }{{sysRMDisk, "disk"}, {sysRMMem, "mem"}}

func (b *bench) rmFanout(ctx context.Context) error {
	return b.perReaders(func(n int) error {
		for _, k := range readerKinds {
			if err := b.rmFanoutOne(ctx, k.sys, k.name, n); err != nil {
				return fmt.Errorf("%s: %w", k.name, err)
			}
			benchkit.Settle()
		}
		return nil
	})
}

// perReaders runs a W1 fan-out for each reader count.
func (b *bench) perReaders(fanout func(n int) error) error {
	for _, n := range b.sz.Readers {
		if err := fanout(n); err != nil {
			return fmt.Errorf("x%d: %w", n, err)
		}
		benchkit.Settle()
	}
	return nil
}

// rmFanoutOne: a durable owner, n readers of kind; the writer pipelines
// the changes; the rate is changes over first write to the last reader
// holding the last change.
func (b *bench) rmFanoutOne(ctx context.Context, sys, kind string, n int) (err error) {
	b.progress("W1 %s: %d changes to %d reader(s)", sys, b.sz.Changes, n)
	g, err := b.newRig(ctx, fmt.Sprintf("rm-w1-%s-%d", kind, n))
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, g.close()) }()
	table := g.table
	var reps []*replica.Replica
	for i := range n {
		_, r, err := g.reader(ctx, fmt.Sprintf("r%02d", i), kind == "disk")
		if err != nil {
			return err
		}
		reps = append(reps, r)
	}
	target := table.Head() + uint64(b.sz.Changes)
	probes := make([]*probe, n)
	for i, r := range reps {
		probes[i] = newProbe(b.sz.Changes)
		defer r.OnChange(probes[i].onChange)()
	}
	start := time.Now()
	last, err := rmWrite(ctx, table, 0, b.sz.Changes, b.sz.Keys, b.sz.Value, b.sz.Window)
	if err != nil {
		return err
	}
	if last != target {
		return fmt.Errorf("writer's last seq is %d, want %d", last, target)
	}
	for _, r := range reps {
		wctx, cancel := context.WithTimeout(ctx, setupTimeout)
		err := r.WaitFor(wctx, target)
		cancel()
		if err != nil {
			return err
		}
	}
	// The last delivery is the last callback: WaitFor may return a moment
	// before it runs.
	parts, err := waitProbes(ctx, probes)
	if err != nil {
		return err
	}
	return b.addFanout(sys, n, start, time.Now(), parts)
}

// addFanout records a W1 run: the rate over start..end and the merged
// latency percentiles.
func (b *bench) addFanout(sys string, n int, start, end time.Time, parts []latencies) error {
	lat := merge(parts...)
	// replmesh delivers every change or the run fails. A peer's reader may
	// see fewer (see probe.see: a NATS KV watcher that falls behind, as on
	// a loaded machine, gets the newest value of a key, not every value it
	// had): it is measured on what arrived, and the table says so.
	var note string
	if want := b.sz.Changes * n; len(lat) != want {
		if !isPeer(sys) || len(lat) == 0 {
			return fmt.Errorf("readers saw %d deliveries, want %d", len(lat), want)
		}
		note = fmt.Sprintf("readers saw %d of %d deliveries", len(lat), want)
		b.progress("W1 %s: %s", sys, note)
	}
	cs := fmt.Sprintf("%d reader(s)", n)
	if n == 1 {
		cs = "1 reader"
	}
	const wl = "W1 fan-out"
	b.add(figure{Workload: wl, Case: cs, Metric: "changes/s to all", System: sys, Value: float64(b.sz.Changes) / end.Sub(start).Seconds(), Unit: unitRate, Higher: true, Note: note})
	b.add(figure{Workload: wl, Case: cs, Metric: "p50 commit→delivered", System: sys, Value: float64(lat.percentile(0.5)), Unit: unitNanos})
	b.add(figure{Workload: wl, Case: cs, Metric: "p99 commit→delivered", System: sys, Value: float64(lat.percentile(0.99)), Unit: unitNanos})
	return nil
}

// rmBigTable loads the W2/W4 table into an owner, transfers it to a new
// reader process of each kind (W2), then reads it (W4).
func (b *bench) rmBigTable(ctx context.Context) (err error) {
	g, err := b.newRig(ctx, "rm-big")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, g.close()) }()
	owner, table, dir := g.owner, g.table, g.dir
	b.progress("W2 replmesh: loading %d rows", b.sz.Rows)
	lctx, cancel := context.WithTimeout(ctx, setupTimeout)
	head, err := rmLoad(lctx, table, b.sz.Rows, b.sz.Value)
	cancel()
	if err != nil {
		return err
	}
	if b.does("w2") {
		for _, k := range readerKinds {
			b.settleQuiet(ctx, "W2 "+k.sys)
			rdir := ""
			if k.name == "disk" {
				rdir = filepath.Join(dir, "transfer-reader")
			}
			b.progress("W2 %s: full transfer of %d rows to a new reader process", k.sys, b.sz.Rows)
			res, err := b.runReader(ctx, "rm-w2-"+k.name, roleRMReader, envAddr+"="+owner.Addr(), envDir+"="+rdir, envIndexed+"=1",
				envTarget+"="+strconv.FormatUint(head, 10), envRows+"="+strconv.Itoa(b.sz.Rows))
			if err != nil {
				return err
			}
			if res.Rows != uint64(b.sz.Rows) || res.Transfers != 1 {
				return fmt.Errorf("reader process took %d transfer(s) of %d rows, want 1 of %d", res.Transfers, res.Rows, b.sz.Rows)
			}
			b.addTransfer(k.sys, float64(res.Rows)/res.Seconds, res.PeakRSS, "")
			if rdir != "" {
				if err := os.RemoveAll(rdir); err != nil {
					return err
				}
			}
		}
	}
	if !b.does("w4") {
		return nil
	}
	// The keys are converted before the clock starts, as the map
	// baseline's are.
	keys, skeys := b.readKeys(), b.sharedReadKeys()
	bkeys, bskeys, bwkeys := byteKeys(keys), byteKeys(skeys), byteKeys(b.readKeysFrom(0x5851f42d4c957f2d))
	for _, k := range readerKinds {
		benchkit.Settle()
		c, r, err := g.reader(ctx, "w4-"+k.name, k.name == "disk")
		if err != nil {
			return err
		}
		waited, err := waitIndexed(ctx, r)
		if err != nil {
			return err
		}
		b.progress("W4 %s: hash index ready %s after the replica; %d local Gets, %d GetShareds", k.sys, waited.Round(time.Millisecond), len(keys), len(skeys))
		b.settleQuiet(ctx, "W4 "+k.sys)
		if err := warmGets(r, bwkeys); err != nil {
			return err
		}
		lat, err := timeReads(keys, func(i int) ([]byte, bool, error) { return r.Get(bkeys[i]) })
		if err != nil {
			return fmt.Errorf("local get: %w", err)
		}
		b.addReads(caseRead, k.sys, lat)
		runtime.GC()
		lat, err = timeReads(skeys, func(i int) ([]byte, bool, error) { return r.GetShared(bskeys[i]) })
		if err != nil {
			return fmt.Errorf("local get (shared): %w", err)
		}
		b.addReads(caseReadShared, k.sys, lat)
		if k.name == "disk" {
			b.progress("W4 %s: %d live reads (the owner's Get RPC)", k.sys, len(keys))
			lat, err := timeReads(keys, func(i int) ([]byte, bool, error) { return r.Read(ctx, bkeys[i], replica.Live) })
			if err != nil {
				return fmt.Errorf("live read: %w", err)
			}
			b.addReads("live read (replica.Live, owner RPC)", k.sys, lat)
		}
		if err := c.Close(); err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) addTransfer(sys string, rowsPerSec float64, peakRSS int64, note string) {
	const wl = "W2 full state transfer to a new reader process"
	cs := fmt.Sprintf("%d rows", b.sz.Rows)
	b.add(figure{Workload: wl, Case: cs, Metric: "rows/s", System: sys, Value: rowsPerSec, Unit: unitRate, Higher: true, Note: note})
	rssNote := ""
	if strings.HasPrefix(sys, "replmesh") {
		rssNote = b.readerNote
	}
	b.add(figure{Workload: wl, Case: cs, Metric: "reader peak RSS", System: sys, Value: float64(peakRSS), Unit: unitBytes, Note: rssNote})
}

// readKeys returns the W4 keys: -reads random rows of the table, the same
// sequence for every system.
func (b *bench) readKeys() []string { return b.readKeysFrom(0x9e3779b97f4a7c15) }

// sharedReadKeys are the keys of the GetShared row: another sequence, so
// its reads do not find the rows the Get row just read in the CPU's cache
// (20,000 reads' rows fit in it).
func (b *bench) sharedReadKeys() []string { return b.readKeysFrom(0x2545f4914f6cdd1d) }

// readKeysFrom is -reads random rows of the table from the xorshift seed
// x (nonzero).
func (b *bench) readKeysFrom(x uint64) []string {
	out := make([]string, b.sz.Reads)
	for i := range out {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		out[i] = key(int(x % uint64(b.sz.Rows)))
	}
	return out
}

// timeReads times get(i) for every key i (get reads keys[i], in whatever
// form its system takes, converted before the clock starts) and checks each
// value is the row's.
func timeReads(keys []string, get func(i int) ([]byte, bool, error)) (latencies, error) {
	lat := make(latencies, 0, len(keys))
	for i, k := range keys {
		start := time.Now()
		v, ok, err := get(i)
		d := time.Since(start)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, fmt.Errorf("key %s not found", k)
		}
		_, row, err := stamp(v)
		if err != nil {
			return nil, err
		}
		if key(row) != k {
			return nil, fmt.Errorf("key %s holds row %d's value", k, row)
		}
		lat = append(lat, int64(d))
	}
	slices.Sort(lat)
	return lat, nil
}

func (b *bench) addReads(cs, sys string, lat latencies) {
	wl := fmt.Sprintf("W4 point reads on a %d-row table", b.sz.Rows)
	b.add(figure{Workload: wl, Case: cs, Metric: "p50", System: sys, Value: float64(lat.percentile(0.5)), Unit: unitNanos})
	b.add(figure{Workload: wl, Case: cs, Metric: "p99", System: sys, Value: float64(lat.percentile(0.99)), Unit: unitNanos})
}

// rmReaderMain is a reader process: it opens a component (on envDir, or in
// memory), subscribes to the owner at envAddr and reports once it is ready
// and holds envTarget.
func rmReaderMain(ctx context.Context) error {
	stopProf := func() error { return nil }
	if prefix := os.Getenv(envProf); prefix != "" {
		stop, err := benchkit.StartCPUProfile(fmt.Sprintf("%s-%d.pprof", prefix, os.Getpid()))
		if err != nil {
			return err
		}
		// Stopped once caught up (below), or on a failure.
		var once sync.Once
		stopProf = func() (err error) {
			once.Do(func() { err = stop() })
			return err
		}
		defer func() { _ = stopProf() }()
	}
	var logger *slog.Logger
	if os.Getenv(envLog) != "" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	target, err := envInt(envTarget)
	if err != nil {
		return err
	}
	c, err := rmOpenReader(ctx, logger, "reader", os.Getenv(envDir))
	if err != nil {
		return err
	}
	defer c.Close()
	start := time.Now()
	r, err := rmSubscribe(ctx, c, os.Getenv(envAddr))
	if err != nil {
		return err
	}
	if err := benchkit.WaitReady(ctx, r, setupTimeout); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	if err := r.WaitFor(wctx, target); err != nil {
		return err
	}
	took := time.Since(start)
	st := r.Status()
	rows := st.Stats.SnapshotRows
	if want, err := envInt(envRows); err != nil {
		return err
	} else if want != 0 && rows != want {
		return fmt.Errorf("transferred %d rows, want %d", rows, want)
	}
	res := childResult{Rows: rows, Seq: st.Seq, Seconds: took.Seconds(), Transfers: st.Stats.FullTransfers, Resumes: st.Stats.Resumes}
	// W2 (envIndexed): the peak RSS (writeResult) is taken once the
	// replica is what it holds from now on: a resident one builds its
	// hash index after a full transfer, in the background, and that
	// memory is the reader's too. The time above does not wait for it
	// (reads are served meanwhile). After a catch-up (W3) a table that is
	// not read gets no new index: nothing to wait for there.
	if os.Getenv(envIndexed) != "" {
		if _, err := waitIndexed(ctx, r); err != nil {
			return err
		}
	}
	// The result says caught up; closing comes after it (a failed close
	// still fails the run: the parent waits for a clean exit).
	if err := writeResult(os.Stdout, res); err != nil {
		return err
	}
	if err := stopProf(); err != nil {
		return fmt.Errorf("cpu profile: %w", err)
	}
	if err := c.Close(); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	return nil
}

// rmOwnerMain is an owner process on envDir listening on envAddr: it
// prints "ready ADDR HEAD", then serves commands from in: "write N"
// (N more changes over envKeys keys; answers "head H") until in closes.
func rmOwnerMain(ctx context.Context, in io.Reader, out io.Writer) error {
	var logger *slog.Logger
	if os.Getenv(envLog) != "" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	keys, err := envInt(envKeys)
	if err != nil {
		return err
	}
	size, err := envInt(envValue)
	if err != nil {
		return err
	}
	if keys == 0 || size < stampSize {
		return fmt.Errorf("%s and %s must be set", envKeys, envValue)
	}
	c, t, err := rmOpenOwner(ctx, logger, os.Getenv(envDir), os.Getenv(envAddr), 0)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := fmt.Fprintf(out, "ready %s %d\n", c.Addr(), t.Head()); err != nil {
		return err
	}
	sc := bufio.NewScanner(in)
	written := int(t.Head())
	for sc.Scan() {
		verb, arg, _ := strings.Cut(sc.Text(), " ")
		n, err := strconv.Atoi(arg)
		if verb != "write" || err != nil || n <= 0 {
			return fmt.Errorf("unknown command %q", sc.Text())
		}
		head, err := rmWrite(ctx, t, written, n, int(keys), int(size), 1024)
		if err != nil {
			return err
		}
		written += n
		if _, err := fmt.Fprintf(out, "head %d\n", head); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return c.Close()
}

// rmCatchUp is W3 for replmesh: a durable reader process restarted, an
// in-memory replica resubscribed in its component, and the owner process
// restarted.
func (b *bench) rmCatchUp(ctx context.Context) (err error) {
	dir, err := b.subdir("rm-w3")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, os.RemoveAll(dir)) }()
	if err := b.rmReaderRestart(ctx); err != nil {
		return fmt.Errorf("reader restart: %w", err)
	}
	benchkit.Settle()
	if err := b.rmOwnerRestart(ctx, dir); err != nil {
		return fmt.Errorf("owner restart: %w", err)
	}
	return nil
}

// w3Keys is W3's key space: the table starts with -keys rows (ordinals
// 0..keys-1) and each missed change (ordinals keys..) writes a key of its
// own, so that every system has -missed changes to bring, none collapsed
// into an earlier one (a NATS bucket of history 1, a Redis full sync and
// a replmesh resume would otherwise carry different amounts).
func (b *bench) w3Keys() int { return b.sz.Keys + b.sz.Missed }

func (b *bench) addCatchUp(cs, sys string, d time.Duration, note string) {
	wl := fmt.Sprintf("W3 catch-up after %d missed changes (each to a new key)", b.sz.Missed)
	b.add(figure{Workload: wl, Case: cs, Metric: "time to caught up", System: sys, Value: float64(d), Unit: unitNanos, Note: note})
}

// Cases of W3 shared by the systems.
const (
	caseReaderRestart = "reader restarted"
	caseOwnerRestart  = "owner restarted (owner and reader processes)"
)

func (b *bench) rmReaderRestart(ctx context.Context) (err error) {
	g, err := b.newRig(ctx, "rm-w3-reader")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, g.close()) }()
	owner, table, dir := g.owner, g.table, g.dir
	head, err := rmWrite(ctx, table, 0, b.sz.Keys, b.sz.Keys, b.sz.Value, b.sz.Window)
	if err != nil {
		return err
	}
	readerEnv := func(target uint64) []string {
		return []string{envAddr + "=" + owner.Addr(), envDir + "=" + filepath.Join(dir, "reader"), envTarget + "=" + strconv.FormatUint(target, 10)}
	}
	runReader := func(target uint64) (childResult, error) {
		return b.runReader(ctx, "rm-w3-reader", roleRMReader, readerEnv(target)...)
	}
	if _, err := runReader(head); err != nil {
		return err
	}
	// The in-memory reader lives in this process: its component stays, its
	// replica is closed and subscribed again.
	mem, r, err := g.reader(ctx, "w3-mem", false)
	if err != nil {
		return err
	}
	if err := r.Close(); err != nil {
		return err
	}

	b.progress("W3 replmesh: %d missed changes, readers restarted", b.sz.Missed)
	head, err = rmWrite(ctx, table, b.sz.Keys, b.sz.Missed, b.w3Keys(), b.sz.Value, b.sz.Window)
	if err != nil {
		return err
	}
	benchkit.Settle()
	start := time.Now()
	res, err := runReader(head)
	if err != nil {
		return err
	}
	took := res.at.Sub(start)
	if res.Transfers != 0 || res.Seq < head {
		return fmt.Errorf("restarted reader took %d transfer(s) and reached seq %d of %d: not a resume", res.Transfers, res.Seq, head)
	}
	b.addCatchUp(caseReaderRestart, sysRMDisk, took, "process start to caught up")

	benchkit.Settle()
	start = time.Now()
	r, err = rmSubscribe(ctx, mem, owner.Addr())
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	if err := r.WaitFor(wctx, head); err != nil {
		return err
	}
	took = time.Since(start)
	if st := r.Status(); st.Stats.FullTransfers != 0 {
		return fmt.Errorf("resubscribed in-memory replica took a full transfer, not a resume")
	}
	b.addCatchUp(caseReaderRestart, sysRMMem, took, "replica closed and subscribed again in its live component (an in-memory replica does not outlive its process)")
	return nil
}

// rmOwnerRestart: owner and reader processes; the reader stops, the owner
// writes the missed changes and stops; the owner restarts on its data dir
// and port, then the reader; the time runs from the owner's restart to the
// reader caught up.
func (b *bench) rmOwnerRestart(ctx context.Context, dir string) error {
	odir, rdir := filepath.Join(dir, "owner2"), filepath.Join(dir, "reader2")
	ownerEnv := func(addr string) []string {
		return []string{envDir + "=" + odir, envAddr + "=" + addr, envKeys + "=" + strconv.Itoa(b.w3Keys()), envValue + "=" + strconv.Itoa(b.sz.Value)}
	}
	startOwner := func(addr string) (*child, string, error) {
		o, err := b.spawn(ctx, "rm-w3-owner", roleRMOwner, ownerEnv(addr)...)
		if err != nil {
			return nil, "", err
		}
		l, err := o.line()
		f := strings.Fields(l)
		if err == nil && (len(f) != 3 || f[0] != "ready") {
			err = fmt.Errorf("owner process said %q", l)
		}
		if err != nil {
			o.kill()
			return nil, "", err
		}
		return o, f[1], nil
	}
	write := func(o *child, n int) (uint64, error) {
		if err := o.send(fmt.Sprintf("write %d", n)); err != nil {
			return 0, err
		}
		l, err := o.line()
		if err != nil {
			return 0, err
		}
		h, ok := strings.CutPrefix(l, "head ")
		if !ok {
			return 0, fmt.Errorf("owner process said %q", l)
		}
		return strconv.ParseUint(h, 10, 64)
	}
	runReader := func(addr string, target uint64) (childResult, error) {
		return b.runReader(ctx, "rm-w3-reader2", roleRMReader, envAddr+"="+addr, envDir+"="+rdir, envTarget+"="+strconv.FormatUint(target, 10))
	}

	o, addr, err := startOwner("127.0.0.1:0")
	if err != nil {
		return err
	}
	defer o.kill()
	head, err := write(o, b.sz.Keys)
	if err != nil {
		return err
	}
	if _, err := runReader(addr, head); err != nil {
		return err
	}
	b.progress("W3 replmesh: %d missed changes, owner and reader restarted", b.sz.Missed)
	if head, err = write(o, b.sz.Missed); err != nil {
		return err
	}
	if err := o.wait(); err != nil {
		return err
	}
	benchkit.Settle()
	start := time.Now()
	o2, addr2, err := startOwner(addr)
	if err != nil {
		return err
	}
	defer o2.kill()
	res, err := runReader(addr2, head)
	if err != nil {
		return err
	}
	took := res.at.Sub(start)
	if res.Transfers != 0 || res.Seq < head {
		return fmt.Errorf("reader took %d transfer(s) and reached seq %d of %d after the owner's restart: not a resume", res.Transfers, res.Seq, head)
	}
	b.addCatchUp(caseOwnerRestart, sysRMDisk, took, "owner process start (its data dir) to the restarted reader caught up")
	return o2.wait()
}

// rmPaced: -rate changes/s for -paced to one reader of each kind;
// commit-to-applied in the reader's callback.
func (b *bench) rmPaced(ctx context.Context) error {
	for _, k := range readerKinds {
		if err := b.rmPacedOne(ctx, k.sys, k.name); err != nil {
			return fmt.Errorf("%s: %w", k.name, err)
		}
	}
	return nil
}

func (b *bench) rmPacedOne(ctx context.Context, sys, kind string) (err error) {
	n := max(1, int(b.sz.Paced.Seconds()*float64(b.sz.Rate)))
	b.progress("paced %s: %d changes at %d/s", sys, n, b.sz.Rate)
	g, err := b.newRig(ctx, "rm-paced-"+kind)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, g.close()) }()
	table := g.table
	_, r, err := g.reader(ctx, "paced", kind == "disk")
	if err != nil {
		return err
	}
	p := newProbe(n)
	defer r.OnChange(p.onChange)()
	interval := time.Second / time.Duration(b.sz.Rate)
	pending := make([]*replica.Pending, 0, n)
	start := time.Now()
	for i := range n {
		// Pacing the writer is the workload itself, not synchronization.
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d)
		}
		pd, err := table.Submit(ctx, replica.Write{Key: benchkit.AppendKey(nil, i%b.sz.Keys), Value: newValue(b.sz.Value, i)})
		if err != nil {
			return fmt.Errorf("submit: %w", err)
		}
		pending = append(pending, pd)
	}
	for _, pd := range pending {
		if _, err := pd.Wait(ctx); err != nil {
			return fmt.Errorf("write: %w", err)
		}
	}
	lat, err := p.wait(ctx)
	if err != nil {
		return err
	}
	slices.Sort(lat)
	wl := fmt.Sprintf("Paced %d changes/s, 1 reader", b.sz.Rate)
	b.add(figure{Workload: wl, Case: fmt.Sprintf("%d changes", n), Metric: "p50 commit→applied", System: sys, Value: float64(lat.percentile(0.5)), Unit: unitNanos})
	b.add(figure{Workload: wl, Case: fmt.Sprintf("%d changes", n), Metric: "p99 commit→applied", System: sys, Value: float64(lat.percentile(0.99)), Unit: unitNanos})
	return nil
}

// caseRead is W4's comparison: replmesh reads its local replica, the
// peers read over the network (a Redis replica's GET, NATS KV Get), the
// baseline is a Go map.
const caseRead = "one read: replmesh local replica Get, peers over loopback"

// caseReadShared is W4's local read without the copy (GetShared: the
// replica's own bytes, as the baseline's map returns its own), on its own
// key sequence (sharedReadKeys), as the baseline in its row.
const caseReadShared = "one read: replmesh local replica GetShared (no copy)"

// waitIndexed waits until r's published view has its hash index, which a
// resident replica builds in the background after a full transfer (some
// 200 ms for 1M rows on this machine; reads search the B-tree meanwhile,
// and 20,000 of them take less): W4 measures point reads of a replica in
// steady state, not ones racing the build for the CPU. A DiskOnly replica
// and a table too small for an index (-rows below indexMinRows) have none:
// it returns at once. It returns how long it waited.
func waitIndexed(ctx context.Context, r *replica.Replica) (time.Duration, error) {
	start := time.Now()
	for {
		st := r.Status()
		if !st.Resident || st.ResidentRows < indexMinRows || st.ResidentIndexed {
			return time.Since(start), nil
		}
		if time.Since(start) > setupTimeout {
			return 0, fmt.Errorf("replica %s: no hash index after %s", st.Table, setupTimeout)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
}

// warmGets reads keys with Get, untimed, and collects the copies: the
// timed Gets then allocate from heap pages the process already touched,
// as a serving process's do. On a heap just returned to the OS (Settle)
// one allocation in 16 (4 KiB pages of 256-byte values) is the first
// touch of its page, a page fault of some microseconds: the p99 of the
// first 20,000 Gets of a fresh heap, not of a read.
func warmGets(r *replica.Replica, keys [][]byte) error {
	for _, k := range keys {
		if _, _, err := r.Get(k); err != nil {
			return fmt.Errorf("local get: %w", err)
		}
	}
	runtime.GC()
	return nil
}

// indexMinRows is the smallest resident table that gets a hash index
// (Status.ResidentIndexed's documented threshold).
const indexMinRows = 4096

func byteKeys(keys []string) [][]byte {
	out := make([][]byte, len(keys))
	for i, k := range keys {
		out[i] = []byte(k)
	}
	return out
}
