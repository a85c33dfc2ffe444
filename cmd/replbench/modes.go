package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/replmesh/replmesh/internal/benchkit"
	"github.com/replmesh/replmesh/internal/cputime"
	"github.com/replmesh/replmesh/modes"
	"github.com/replmesh/replmesh/replica"
)

// The modes workload (issue 4, "Speed"): a hot table (the owner rewrites
// it far more often than the consumer reads it) and a cold table (the
// reverse), each run in push, pull and auto mode. Per run:
//
//   - the owner (this process, on disk, async) preloads the table's keys,
//     then a paced writer rewrites them, cycling over the keys, and records
//     when each write was acknowledged;
//   - the consumer runs as a child process (a durable replica on disk),
//     subscribed through a wiretap (wiretap.go) that counts the bytes and
//     the gRPC messages the owner sends it; it reads random keys at its
//     read rate (Replica.Read with Cached) and records, per read, the time
//     and the replica's seq just before the read;
//   - after a warm-up (and, in auto mode, once the subscription has settled
//     on the mode the table calls for), the child measures a window: its
//     own CPU time (getrusage, user + system) and the reads; the parent
//     counts the wire over the same window.
//
// Read staleness: a read at time t that found the replica at seq s is
// stale by t - ack(s+1) when the write s+1 had been acknowledged to the
// owner's writer before t (the read missed an acknowledged write for that
// long), and 0 otherwise. It is the age of the oldest acknowledged write
// the read could not see; both processes read the same wall clock.

// Child of the modes workload.
const (
	childModes = "modes"
	envModes   = "REPLBENCH_MODES" // JSON modesParams
	envOut     = "REPLBENCH_OUT"   // the file the child writes its result to
	lineBegin  = "replbench-begin" // printed by the child when its window begins
	lineEnd    = "replbench-end"   // and when it ends
)

// Figures and units of the modes workload. report.go prints an unknown
// unit as %g, so values in them are rounded first.
const (
	modesBytes = "wire bytes/s"
	modesMsgs  = "wire messages/s"
	modesCPU   = "consumer CPU"
	modesP50   = "read staleness p50"
	modesP99   = "read staleness p99"
	modesRatio = "push bytes ÷ these"
	modesHot   = "hot"
	modesCold  = "cold"
	modesIssue = "target: the modes goal"

	kbPerSec  = "kB/s"
	msgPerSec = "msg/s"
	pctCore   = "% of a core"
	ratioX    = "x"
)

// modesSizes are the workload's rates, durations and mode settings.
type modesSizes struct {
	HotRate   float64 // owner writes/s on the hot table
	HotKeys   int     // keys they cycle over
	HotReads  float64 // consumer reads/s of the hot table
	ColdRate  float64
	ColdKeys  int
	ColdReads float64
	// Warmup runs before the window (after the switch, in auto mode);
	// SettleMax bounds the wait for auto mode to settle.
	Warmup, Measure, SettleMax time.Duration
	// Pull mode, and auto mode's pull phases.
	PullInterval, MaxStaleness time.Duration
	// Auto mode.
	AutoRatio  float64
	AutoWindow time.Duration
}

// modesTestSizes replaces the sizes when set (tests).
var modesTestSizes *modesSizes

func (b *bench) modesSizes() modesSizes {
	if modesTestSizes != nil {
		return *modesTestSizes
	}
	s := modesSizes{
		HotRate: 20_000, HotKeys: 1000, HotReads: 10,
		ColdRate: 10, ColdKeys: 1000, ColdReads: 10_000,
		Warmup: time.Second, Measure: 5 * time.Second, SettleMax: 30 * time.Second,
		// Pull saves bytes only where a key changes several times between
		// two pulls: 20,000 writes/s over 1,000 keys is 20 changes per key
		// per second, so pulling once a second (the library's default
		// interval) sends each key once instead of 20 times; 10 pulls a
		// second would save only 2x. A read that finds the replica more
		// than a second behind pulls at once.
		PullInterval: time.Second, MaxStaleness: time.Second,
		AutoRatio: 10, AutoWindow: 2 * time.Second,
	}
	if b.opts.quick {
		s.HotRate, s.HotKeys = 5000, 250 // still 20 changes per key per second
		s.ColdKeys, s.ColdReads = 250, 2000
		s.Warmup, s.Measure, s.SettleMax = 300*time.Millisecond, time.Second, 15*time.Second
		s.AutoWindow = time.Second
	}
	return s
}

// modesParams tell the child what to do.
type modesParams struct {
	Mode         string // push, pull, auto
	PullInterval time.Duration
	MaxStaleness time.Duration
	AutoRatio    float64
	AutoWindow   time.Duration
	Keys         int
	ReadRate     float64
	Warmup       time.Duration
	Measure      time.Duration
	SettleMax    time.Duration
	Expect       string // the mode the stream must run before the window: push or pull
}

// tableConfig is the subscription's mode option.
func (p modesParams) tableConfig() (*modes.TableConfig, error) {
	m, err := modes.ParseMode(p.Mode)
	if err != nil {
		return nil, err
	}
	tc := &modes.TableConfig{Mode: m}
	if m != modes.Push {
		iv, ms := p.PullInterval, p.MaxStaleness
		tc.Pull = modes.PullConfig{Interval: &iv, MaxStaleness: &ms}
	}
	if m == modes.Auto {
		ratio, win := p.AutoRatio, p.AutoWindow
		tc.Auto = modes.AutoConfig{Ratio: &ratio, Window: &win}
	}
	return tc, tc.Validate()
}

// modesChildResult is what the child reports (in the file named by envOut).
type modesChildResult struct {
	ReadAt    []int64  // unix ns of each read in the window
	ReadSeq   []uint64 // the replica's seq just before that read
	CPUNs     int64    // user + system CPU time over the window (-1: unknown)
	WallNs    int64    // the window's length by the child's clock
	Applied   uint64   // changes applied in the window
	Pulls     uint64   // pull answers applied in the window
	Transfers uint64   // full transfers in the window
	Reconns   uint64   // reconnects in the window
	Switches  uint64   // mode switches in the window
	ModeBegin string   // the mode the stream ran when the window began
	ModeEnd   string   // and when it ended
	SettledNs int64    // Ready to the expected mode (-1: it never ran it)
	Reason    string   // the reason of the last mode switch
	// Configured is the resolved mode settings, as the replica reports
	// them.
	Configured string
}

// modesTable is one of the two tables.
type modesTable struct {
	name   string
	rate   float64
	keys   int
	reads  float64
	expect string // the mode auto must settle on
}

// modesMeasure is one run's figures.
type modesMeasure struct {
	wire    wireSnapshot
	wall    time.Duration
	written int // writes acknowledged in the window
	child   modesChildResult
	stale   samples
}

func (b *bench) runModes(ctx context.Context) error {
	sz := b.modesSizes()
	tables := []modesTable{
		{name: modesHot, rate: sz.HotRate, keys: sz.HotKeys, reads: sz.HotReads, expect: "pull"},
		{name: modesCold, rate: sz.ColdRate, keys: sz.ColdKeys, reads: sz.ColdReads, expect: "push"},
	}
	for _, t := range tables {
		var push *modesMeasure
		for _, mode := range []string{"push", "pull", "auto"} {
			benchkit.Settle()
			m, err := b.modesRun(ctx, sz, t, mode)
			if err != nil {
				return fmt.Errorf("%s table, %s: %w", t.name, mode, err)
			}
			b.reportModes(sz, t, mode, m, push)
			if mode == "push" {
				push = &m
			}
		}
	}
	return nil
}

// modesRun runs one table in one mode.
func (b *bench) modesRun(ctx context.Context, sz modesSizes, t modesTable, mode string) (m modesMeasure, err error) {
	name := fmt.Sprintf("modes %s %s", t.name, mode)
	b.progress("%s: owner writes %s/s over %d keys, consumer reads %g/s", name, benchkit.SI(t.rate), t.keys, t.reads)
	dir, err := b.subdir(fmt.Sprintf("modes-%s-%s", t.name, mode))
	if err != nil {
		return m, err
	}
	defer func() { err = errors.Join(err, os.RemoveAll(dir)) }()
	owner, tbl, err := b.openOwner(ctx, filepath.Join(dir, "owner"), "127.0.0.1:0")
	if err != nil {
		return m, err
	}
	defer func() { err = errors.Join(err, closeAll(owner)) }()
	if _, err := b.loadRows(ctx, tbl, t.keys); err != nil {
		return m, err
	}
	tap, err := newWiretap(owner.Addr())
	if err != nil {
		return m, err
	}
	defer func() { err = errors.Join(err, tap.Close()) }()

	w := startPacedWriter(ctx, tbl, t.rate, t.keys, b.opts.valueSize)
	stopped := false
	stopWriter := func() error {
		if stopped {
			return nil
		}
		stopped = true
		return w.stop()
	}
	defer func() { err = errors.Join(err, stopWriter()) }()

	expect := mode
	if mode == "auto" {
		expect = t.expect
	}
	params := modesParams{
		Mode: mode, PullInterval: sz.PullInterval, MaxStaleness: sz.MaxStaleness,
		AutoRatio: sz.AutoRatio, AutoWindow: sz.AutoWindow, Keys: t.keys, ReadRate: t.reads,
		Warmup: sz.Warmup, Measure: sz.Measure, SettleMax: sz.SettleMax, Expect: expect,
	}
	pj, err := json.Marshal(params)
	if err != nil {
		return m, err
	}
	out := filepath.Join(dir, "result.json")
	exe, err := os.Executable()
	if err != nil {
		return m, fmt.Errorf("find own executable: %w", err)
	}
	cctx, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	cmd := exec.CommandContext(cctx, exe)
	cmd.Env = append(os.Environ(), childEnv+"="+childModes, envAddr+"="+tap.Addr(),
		envDir+"="+filepath.Join(dir, "consumer"), envModes+"="+string(pj), envOut+"="+out)
	if b.opts.verbose {
		cmd.Env = append(cmd.Env, envVerbose+"=1")
	}
	cmd.Stderr = b.stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return m, err
	}
	if err := cmd.Start(); err != nil {
		return m, fmt.Errorf("start consumer: %w", err)
	}
	var begin, end wireSnapshot
	var beginAt, endAt time.Time
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		switch strings.TrimSpace(sc.Text()) {
		case lineBegin:
			begin, beginAt = tap.Down(), time.Now()
		case lineEnd:
			end, endAt = tap.Down(), time.Now()
		}
	}
	waitErr := cmd.Wait()
	if err := stopWriter(); err != nil {
		return m, err
	}
	if waitErr != nil {
		return m, fmt.Errorf("consumer process: %w", waitErr)
	}
	if beginAt.IsZero() || endAt.IsZero() {
		return m, errors.New("consumer process did not report its window")
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		return m, fmt.Errorf("consumer result: %w", err)
	}
	if err := json.Unmarshal(raw, &m.child); err != nil {
		return m, fmt.Errorf("consumer result: %w", err)
	}
	c := m.child
	if len(c.ReadAt) != len(c.ReadSeq) {
		return m, fmt.Errorf("consumer reported %d read times and %d seqs", len(c.ReadAt), len(c.ReadSeq))
	}
	if mode != "auto" && (c.ModeBegin != mode || c.ModeEnd != mode) {
		return m, fmt.Errorf("the %s subscription ran %s..%s in the window", mode, c.ModeBegin, c.ModeEnd)
	}
	if c.Transfers > 0 || c.Reconns > 0 {
		return m, fmt.Errorf("the stream was not steady in the window: %d full transfers, %d reconnects", c.Transfers, c.Reconns)
	}
	m.wire, m.wall = end.sub(begin), endAt.Sub(beginAt)
	m.written = w.ackedBetween(beginAt.UnixNano(), endAt.UnixNano())
	m.stale, err = readStaleness(c.ReadAt, c.ReadSeq, w.base, w.acks)
	return m, err
}

// readStaleness returns the staleness of each read (see the top of this
// file): reads[i] at time at[i] found the replica at seq seqs[i]; acks[k]
// is when seq base+k was acknowledged.
func readStaleness(at []int64, seqs []uint64, base uint64, acks []int64) (samples, error) {
	out := make(samples, len(at))
	for i, t := range at {
		next := seqs[i] + 1
		if next < base {
			return nil, fmt.Errorf("a read found the replica at seq %d, before the preloaded rows (%d)", seqs[i], base-1)
		}
		if k := next - base; k < uint64(len(acks)) && acks[k] <= t {
			out[i] = t - acks[k]
		}
	}
	return out, nil
}

// reportModes adds one run's rows; push is the same table's push run (nil
// for the push run itself).
func (b *bench) reportModes(sz modesSizes, t modesTable, mode string, m modesMeasure, push *modesMeasure) {
	name := fmt.Sprintf("modes %s %s", t.name, mode)
	secs := m.wall.Seconds()
	c := m.child
	round := func(v float64) float64 { return math.Round(v*10) / 10 }

	setting := fmt.Sprintf("owner writes %s/s (measured %s/s) cycling over %d keys of %d B, consumer reads %g/s",
		benchkit.SI(t.rate), benchkit.SI(float64(m.written)/secs), t.keys, b.opts.valueSize, t.reads)
	switch mode {
	case "pull":
		setting += fmt.Sprintf("; pull interval %s, max_staleness %s", sz.PullInterval, sz.MaxStaleness)
	case "auto":
		setting += fmt.Sprintf("; auto ratio %g (back at %g), window %s, pulls as in pull mode", sz.AutoRatio, sz.AutoRatio/2, sz.AutoWindow)
		if c.SettledNs >= 0 {
			setting += fmt.Sprintf("; ran %s from %.1f s after Ready", t.expect, float64(c.SettledNs)/1e9)
			if c.Reason != "" && c.Reason != "subscribed" {
				setting += fmt.Sprintf(" (%s)", c.Reason)
			}
		} else {
			setting += fmt.Sprintf("; had NOT settled on %s after %s", t.expect, sz.SettleMax)
		}
		setting += fmt.Sprintf("; in the window %s..%s, %d switches", c.ModeBegin, c.ModeEnd, c.Switches)
	}
	bytesPerSec := float64(m.wire.Bytes) / secs
	b.add(result{Workload: name, Figure: modesBytes, Value: round(bytesPerSec / 1e3), Unit: kbPerSec,
		Notes: fmt.Sprintf("owner→consumer TCP bytes through the tap over %.1f s; %s", secs, setting)})
	b.add(result{Workload: name, Figure: modesMsgs, Value: round(float64(m.wire.Messages) / secs), Unit: msgPerSec,
		Notes: fmt.Sprintf("gRPC messages owner→consumer (change batches, pull deltas, heartbeats); %s HTTP/2 frames/s; the replica applied %s changes/s and %.1f pulls/s",
			benchkit.SI(float64(m.wire.Frames)/secs), benchkit.SI(float64(c.Applied)/secs), float64(c.Pulls)/secs)})
	cpu := b.cpuRow(name, c, len(c.ReadAt))
	b.add(cpu)
	ps := m.stale.percentiles(0.50, 0.99, 1)
	staleReads := 0
	for _, s := range m.stale {
		if s > 0 {
			staleReads++
		}
	}
	var p99Target *target
	if t.name == modesCold && mode != "pull" {
		p99Target = under(50e6)
	}
	b.add(result{Workload: name, Figure: modesP50, Value: float64(ps[0]), Unit: unitNanos,
		Notes: fmt.Sprintf("%d reads; %.1f%% missed an acknowledged write", len(m.stale), 100*float64(staleReads)/float64(max(1, len(m.stale))))})
	p99 := result{Workload: name, Figure: modesP99, Value: float64(ps[1]), Unit: unitNanos, Target: p99Target,
		Notes: fmt.Sprintf("max %s", formatDuration(ps[2]))}
	if p99Target != nil {
		p99.Notes += "; " + modesIssue
	}
	b.add(p99)
	if push != nil && t.name == modesHot {
		ratio := (float64(push.wire.Bytes) / push.wall.Seconds()) / max(bytesPerSec, 1)
		b.add(result{Workload: name, Figure: modesRatio, Value: round(ratio), Unit: ratioX, Target: atLeast(10),
			Notes: fmt.Sprintf("push moved %.0f kB/s; %s", float64(push.wire.Bytes)/push.wall.Seconds()/1e3, modesIssue)})
	}
}

// cpuRow is the consumer CPU figure.
func (b *bench) cpuRow(name string, c modesChildResult, reads int) result {
	r := result{Workload: name, Figure: modesCPU, Unit: pctCore}
	if c.CPUNs < 0 || c.WallNs <= 0 {
		r.Notes = "unknown: the consumer process could not read its CPU time here"
		return r
	}
	r.Value = math.Round(1000*float64(c.CPUNs)/float64(c.WallNs)) / 10
	r.Notes = fmt.Sprintf("user+system CPU of the consumer process (getrusage) over the window, its read loop (%d reads) included", reads)
	return r
}

// pacedWriter writes rate single-change Puts per second (key i%keys), from
// one goroutine, until stopped, and records when each was acknowledged.
type pacedWriter struct {
	base uint64 // seq of the first write
	halt chan struct{}
	done chan struct{} // closed once both goroutines have ended
	err  error
	// acks[k] is when seq base+k was acknowledged (unix ns); read after done.
	acks []int64
}

func startPacedWriter(ctx context.Context, t *replica.OwnedTable, rate float64, keys, valueSize int) *pacedWriter {
	w := &pacedWriter{base: t.Head() + 1, halt: make(chan struct{}), done: make(chan struct{})}
	pend := make(chan *replica.Pending, max(1024, int(rate)))
	var werr, rerr error
	go func() { // acknowledgements, in seq order
		defer close(w.done)
		for pd := range pend {
			if rerr != nil {
				continue
			}
			seq, err := pd.Wait(ctx)
			if err != nil {
				rerr = fmt.Errorf("write: %w", err)
				continue
			}
			if want := w.base + uint64(len(w.acks)); seq != want {
				rerr = fmt.Errorf("write acknowledged as seq %d, want %d (another writer?)", seq, want)
				continue
			}
			w.acks = append(w.acks, time.Now().UnixNano())
		}
		w.err = errors.Join(werr, rerr)
	}()
	go func() {
		defer close(pend)
		vals := newPayload(valueSize)
		timer := time.NewTimer(time.Hour)
		defer timer.Stop()
		var key []byte
		start := time.Now()
		for i := 0; ; {
			due := int(time.Since(start).Seconds() * rate)
			for ; i < due; i++ {
				key = benchkit.AppendKey(key[:0], i%keys)
				pd, err := t.Submit(ctx, replica.Write{Key: key, Value: vals.value(i)})
				if err != nil {
					werr = fmt.Errorf("submit: %w", err)
					return
				}
				pend <- pd
			}
			next := start.Add(time.Duration(float64(i+1) / rate * float64(time.Second)))
			timer.Reset(max(time.Until(next), 0))
			select {
			case <-timer.C:
			case <-w.halt:
				return
			case <-ctx.Done():
				werr = ctx.Err()
				return
			}
		}
	}()
	return w
}

// stop ends the writer, waits for every acknowledgement and returns the
// first failure.
func (w *pacedWriter) stop() error {
	close(w.halt)
	<-w.done
	return w.err
}

// ackedBetween counts the writes acknowledged in [from, to] (unix ns).
func (w *pacedWriter) ackedBetween(from, to int64) int {
	n := 0
	for _, a := range w.acks {
		if a >= from && a <= to {
			n++
		}
	}
	return n
}

// childModesRun is the consumer of the modes workload: it subscribes
// through the tap in the mode it is told, reads at its rate, and measures
// one window (see the top of this file). It prints lineBegin and lineEnd
// on stdout when the window begins and ends.
func childModesRun() error {
	var p modesParams
	if err := json.Unmarshal([]byte(os.Getenv(envModes)), &p); err != nil {
		return fmt.Errorf("%s: %w", envModes, err)
	}
	tc, err := p.tableConfig()
	if err != nil {
		return err
	}
	if p.Keys < 1 || p.ReadRate <= 0 || p.Measure <= 0 {
		return fmt.Errorf("%s: bad parameters %+v", envModes, p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	b := childBench()
	c, err := b.openConsumer(ctx, "modes", os.Getenv(envDir))
	if err != nil {
		return err
	}
	defer c.Close()
	r, err := c.Subscribe(ctx, replica.SubscribeOptions{Service: ownerService, Table: tableName, Addr: os.Getenv(envAddr), Modes: tc})
	if err != nil {
		return err
	}
	if err := benchkit.WaitReady(ctx, r, setupTimeout); err != nil {
		return err
	}
	readyAt := time.Now()
	rd := startPacedReader(ctx, r, p.Keys, p.ReadRate)
	stopReader := sync.OnceValue(rd.stop)
	defer stopReader()

	// Warm up; wait for the expected mode, then warm up in it.
	settled := time.Duration(-1)
	for {
		now := time.Now()
		if settled < 0 && r.Status().Mode == p.Expect {
			settled = now.Sub(readyAt)
		}
		if settled >= 0 && now.Sub(readyAt) >= max(p.Warmup, settled+p.Warmup) {
			break
		}
		if settled < 0 && now.Sub(readyAt) >= max(p.Warmup, p.SettleMax) {
			break // report what it ran
		}
		time.Sleep(10 * time.Millisecond)
	}

	st0 := r.Status()
	cpu0, cpuOK := cputime.Process()
	t0 := time.Now()
	fmt.Println(lineBegin)
	rd.recording.Store(true)
	time.Sleep(p.Measure)
	rd.recording.Store(false)
	fmt.Println(lineEnd)
	wall := time.Since(t0)
	cpu1, cpuOK1 := cputime.Process()
	st1 := r.Status()
	if err := stopReader(); err != nil {
		return err
	}
	res := modesChildResult{
		ReadAt: rd.at, ReadSeq: rd.seqs, CPUNs: int64(cpu1 - cpu0), WallNs: int64(wall),
		Applied: st1.Stats.Applied - st0.Stats.Applied, Pulls: st1.Stats.Pulls - st0.Stats.Pulls,
		Transfers: st1.Stats.FullTransfers - st0.Stats.FullTransfers, Reconns: st1.Stats.Reconnects - st0.Stats.Reconnects,
		Switches: st1.ModeSwitches - st0.ModeSwitches, ModeBegin: st0.Mode, ModeEnd: st1.Mode,
		SettledNs: int64(settled), Reason: st1.ModeReason, Configured: st1.ModeConfigured,
	}
	if !cpuOK || !cpuOK1 {
		res.CPUNs = -1
	}
	raw, err := json.Marshal(res)
	if err != nil {
		return err
	}
	if err := os.WriteFile(os.Getenv(envOut), raw, 0o644); err != nil {
		return err
	}
	return c.Close()
}

// pacedReader reads random keys of a replica at a rate and, while
// recording, notes each read's time and the replica's seq before it.
type pacedReader struct {
	recording atomic.Bool
	halt      chan struct{}
	done      chan struct{}
	err       error
	at        []int64
	seqs      []uint64
}

func startPacedReader(ctx context.Context, r *replica.Replica, keys int, rate float64) *pacedReader {
	rd := &pacedReader{halt: make(chan struct{}), done: make(chan struct{})}
	ks := make([][]byte, keys)
	for i := range ks {
		ks[i] = benchkit.AppendKey(nil, i)
	}
	go func() {
		defer close(rd.done)
		rng := rand.New(rand.NewPCG(5, 6))
		timer := time.NewTimer(time.Hour)
		defer timer.Stop()
		start := time.Now()
		for i := 0; ; {
			due := int(time.Since(start).Seconds() * rate)
			for ; i < due; i++ {
				rec := rd.recording.Load()
				var t int64
				var seq uint64
				if rec {
					t, seq = time.Now().UnixNano(), r.Seq()
				}
				if _, _, err := r.Read(ctx, ks[rng.IntN(keys)], replica.Cached); err != nil {
					rd.err = fmt.Errorf("read: %w", err)
					return
				}
				if rec {
					rd.at = append(rd.at, t)
					rd.seqs = append(rd.seqs, seq)
				}
			}
			next := start.Add(time.Duration(float64(i+1) / rate * float64(time.Second)))
			timer.Reset(max(time.Until(next), 0))
			select {
			case <-timer.C:
			case <-rd.halt:
				return
			}
		}
	}()
	return rd
}

func (rd *pacedReader) stop() error {
	close(rd.halt)
	<-rd.done
	return rd.err
}
