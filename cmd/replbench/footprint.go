package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/replmesh/replmesh/internal/benchkit"
	"github.com/replmesh/replmesh/replica"
)

// The footprint workload (issue 14: "a component with one small subscribed
// table under 20 MB RSS"): a consumer process opens one component, holds a
// replica of one small table (-footprint-rows rows, about 1 MB by default),
// takes -footprint-churn rewrites of every row while subscribed, and
// reports its memory once caught up. The figures are the process's own
// (/proc/self/status of the child), not the parent's.
const (
	childFootprint = "footprint"
	// envFootprintTarget: the seq the child waits for after Ready; unset:
	// the floor run (no component at all).
	envFootprintTarget = "REPLBENCH_FOOTPRINT_TARGET"
	// envFootprintReady: the file the child creates once its replica is
	// Ready; the parent then writes the churn.
	envFootprintReady = "REPLBENCH_FOOTPRINT_READY"
)

// footprintTarget is the bound on a component's RSS, compared with
// what the component adds to the floor: the floor is this binary's own
// (replbench links the broker, raft and the benchmarks; a service embedding
// only replica starts lower).
const footprintTarget = 20e6

// footprintIdle is how long the child idles, caught up, before it reads
// its memory: heartbeats flow and background work (badger's flushes,
// the scavenger) settles. Not a synchronization: the figures are read
// whenever it ends.
const footprintIdle = time.Second

// runFootprint measures the floor (this binary with no component) and a
// component holding one small table, in memory and durable (-replicas).
func (b *bench) runFootprint(ctx context.Context) error {
	floor, err := b.runFootprintChild(ctx, b.footprintEnv(nil))
	if err != nil {
		return fmt.Errorf("floor: %w", err)
	}
	b.add(result{
		Workload: "footprint", Figure: "process floor (no component), RSS", Value: float64(floor.PeakRSS), Unit: unitBytes,
		Notes: fmt.Sprintf("this binary's child holding no component: anon %.1f MB, file-backed %.1f MB (its code); the process figures include it%s",
			float64(floor.RssAnon)/1e6, float64(floor.RssFile)/1e6, b.memLimitNote()),
	})
	for _, kind := range b.opts.replicas {
		name, what := "footprint disk", "a durable replica"
		if kind == "mem" {
			name, what = "footprint mem", "an in-memory replica"
		}
		if err := b.measureFootprint(ctx, name, what, kind == "mem", floor); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return nil
}

func (b *bench) measureFootprint(ctx context.Context, name, what string, mem bool, floor childResult) (err error) {
	rows := b.opts.footprintRows
	rig, err := b.newOwnerRig(ctx, strings.ReplaceAll(name, " ", "-"), rows)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, rig.close()) }()
	dir, owner, tbl, head := rig.dir, rig.owner, rig.tbl, rig.head
	churn := b.opts.footprintChurn
	ready := filepath.Join(dir, "ready")
	env := b.footprintEnv(map[string]string{
		envAddr:            owner.Addr(),
		envDir:             filepath.Join(dir, "consumer"),
		envFootprintReady:  ready,
		envFootprintTarget: strconv.FormatUint(head+uint64(churn*rows), 10),
	})
	if mem {
		env[envDir] = ""
	}
	b.progress("%s: starting the consumer process", name)
	type outcome struct {
		res childResult
		err error
	}
	done := make(chan outcome, 1)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		res, err := b.runFootprintChild(cctx, env)
		done <- outcome{res, err}
	}()
	// Write the churn once the child holds the table, so that it arrives
	// on the stream rather than in the transfer.
	if err := waitFile(ctx, ready, done); err != nil {
		cancel()
		o := <-done
		return errors.Join(err, o.err)
	}
	for range churn {
		if _, err := b.loadRows(ctx, tbl, rows); err != nil {
			cancel()
			<-done
			return err
		}
	}
	o := <-done
	if o.err != nil {
		return o.err
	}
	res := o.res
	if res.Rows != uint64(rows) {
		return fmt.Errorf("consumer holds %d rows, want %d", res.Rows, rows)
	}
	payload := float64(rows * (len(benchkit.AppendKey(nil, rows)) + b.opts.valueSize))
	top := ""
	if len(res.Top) > 0 {
		top = "; largest mappings: " + strings.Join(res.Top, ", ")
	}
	b.add(result{
		Workload: name, Figure: "process peak RSS (VmHWM)", Value: float64(res.PeakRSS), Unit: unitBytes,
		Notes: fmt.Sprintf("one component, %s of %d rows (%.1f MB of keys+values), %d rewrites of each while subscribed; the binary's floor (no component) is %.1f MB",
			what, rows, payload/1e6, churn, float64(floor.PeakRSS)/1e6),
	})
	b.add(result{
		Workload: name, Figure: "component peak RSS, above the floor", Value: float64(res.PeakRSS - floor.PeakRSS), Unit: unitBytes,
		Target: under(footprintTarget),
		Notes:  "VmHWM less the floor's: what holding the component adds to a process (the floor is this binary's code and runtime)",
	})
	b.add(result{
		Workload: name, Figure: "component RSS caught up, above the floor", Value: float64(res.RSS - floor.PeakRSS), Unit: unitBytes,
		Target: under(footprintTarget),
		Notes: fmt.Sprintf("VmRSS after %s idle: anon %.1f MB, file-backed %.1f MB (the floor's: %.1f, %.1f); Go heap in use %.1f MB, next GC at %.1f MB, live after a GC %.1f MB (the rest of the heap is garbage the collector's goal allows); above the floor by mapping: %s%s%s",
			footprintIdle, float64(res.RssAnon)/1e6, float64(res.RssFile)/1e6, float64(floor.RssAnon)/1e6, float64(floor.RssFile)/1e6,
			float64(res.HeapInuse)/1e6, float64(res.NextGC)/1e6, float64(res.HeapLive)/1e6, kindsAbove(res.Kinds, floor.Kinds), b.memLimitNote(), top),
	})
	return nil
}

// footprintEnv returns env (a new map when nil) with the children's
// GOMEMLIMIT when -footprint-memlimit is set.
func (b *bench) footprintEnv(env map[string]string) map[string]string {
	if env == nil {
		env = map[string]string{}
	}
	if b.opts.footprintMemLimit != "" {
		env["GOMEMLIMIT"] = b.opts.footprintMemLimit
	}
	return env
}

func (b *bench) memLimitNote() string {
	if b.opts.footprintMemLimit == "" {
		return ""
	}
	return "; the children ran with GOMEMLIMIT=" + b.opts.footprintMemLimit
}

// The kinds of mapping rssKinds sorts a process's RSS into: badger's
// memtable write-ahead logs, tables and value log files (all written and
// read through memory maps, so their touched pages count in the RSS),
// other files (the code) and anonymous memory (the Go heap, stacks).
var mappingKinds = []struct{ kind, suffix string }{
	{"badger WAL (.mem)", ".mem"},
	{"badger tables (.sst)", ".sst"},
	{"badger value log (.vlog)", ".vlog"},
}

const (
	kindAnon  = "anonymous"
	kindFiles = "code and other files"
)

// rssKinds sums the RSS of byName (mappings' RSS by name, "[anon]" and
// other bracketed names being anonymous) by kind of mapping.
func rssKinds(byName map[string]int64) map[string]int64 {
	kinds := map[string]int64{}
	for name, rss := range byName {
		kind := kindFiles
		if strings.HasPrefix(name, "[") {
			kind = kindAnon
		}
		for _, k := range mappingKinds {
			if strings.HasSuffix(name, k.suffix) {
				kind = k.kind
			}
		}
		kinds[kind] += rss
	}
	return kinds
}

// kindsAbove formats each kind's RSS less the floor's, in a fixed order.
func kindsAbove(kinds, floor map[string]int64) string {
	order := []string{kindAnon}
	for _, k := range mappingKinds {
		order = append(order, k.kind)
	}
	parts := make([]string, 0, len(order)+1)
	for _, k := range append(order, kindFiles) {
		parts = append(parts, fmt.Sprintf("%s %+.1f MB", k, float64(kinds[k]-floor[k])/1e6))
	}
	return strings.Join(parts, ", ")
}

// waitFile waits until path exists, the child ends (done receives; it is
// put back) or ctx is done.
func waitFile[T any](ctx context.Context, path string, done chan T) error {
	ctx, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		select {
		case o := <-done:
			done <- o
			return errors.New("the consumer process ended before it was ready")
		case <-ctx.Done():
			return fmt.Errorf("consumer not ready: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// runFootprintChild runs one footprint child and decodes its report.
func (b *bench) runFootprintChild(ctx context.Context, env map[string]string) (res childResult, err error) {
	res, _, err = b.runChild(ctx, childFootprint, env)
	return res, err
}

// childFootprintRun is the footprint consumer: without a target it only
// measures itself (the floor); with one it opens a component, subscribes,
// signals Ready, waits for the target seq, idles and measures.
func childFootprintRun() (err error) {
	target := os.Getenv(envFootprintTarget)
	if target == "" {
		return reportFootprint(childResult{})
	}
	want, err := strconv.ParseUint(target, 10, 64)
	if err != nil {
		return fmt.Errorf("%s: %w", envFootprintTarget, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	b := childBench()
	c, err := b.openConsumer(ctx, childFootprint, os.Getenv(envDir))
	if err != nil {
		return err
	}
	defer c.Close()
	r, err := subscribe(ctx, c, os.Getenv(envAddr))
	if err != nil {
		return err
	}
	if err := benchkit.WaitReady(ctx, r, setupTimeout); err != nil {
		return err
	}
	if err := os.WriteFile(os.Getenv(envFootprintReady), nil, 0o644); err != nil {
		return err
	}
	if err := waitSeq(ctx, r, want); err != nil {
		return err
	}
	time.Sleep(footprintIdle)
	var rows uint64
	if _, err := r.Scan(nil, func(_, _ []byte) bool { rows++; return true }); err != nil {
		return fmt.Errorf("count rows: %w", err)
	}
	res := childResult{Rows: rows, Seq: r.Status().Seq}
	if path := os.Getenv(envHeap); path != "" {
		defer func() { err = errors.Join(err, writeHeapProfile(path)) }()
	}
	// Measure before Close, with the component still holding its table.
	return reportFootprint(res)
}

// waitSeq waits until r has applied seq.
func waitSeq(ctx context.Context, r *replica.Replica, seq uint64) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for r.Status().Seq < seq {
		select {
		case <-ctx.Done():
			return fmt.Errorf("replica at seq %d, want %d: %w", r.Status().Seq, seq, ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// reportFootprint fills res with this process's memory and prints it.
// The live heap is read last: the collection it forces frees garbage
// (which the RSS read before it still holds).
func reportFootprint(res childResult) error {
	proc := benchkit.ProcStatus(0, "VmHWM", "VmRSS", "RssAnon", "RssFile")
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	res.PeakRSS, res.RSS, res.RssAnon, res.RssFile = proc["VmHWM"], proc["VmRSS"], proc["RssAnon"], proc["RssFile"]
	res.HeapInuse, res.NextGC = ms.HeapInuse, ms.NextGC
	byName := mappings()
	res.Kinds = rssKinds(byName)
	if os.Getenv(envVerbose) != "" {
		res.Top = topMappings(byName, 4)
	}
	runtime.GC()
	runtime.ReadMemStats(&ms)
	res.HeapLive = ms.HeapAlloc
	return json.NewEncoder(os.Stdout).Encode(res)
}

// mappings returns this process's RSS by mapping name, from
// /proc/self/smaps ("[anon]" for anonymous ones, a file's base name;
// nil where smaps cannot be read).
func mappings() map[string]int64 {
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return nil
	}
	defer f.Close()
	byName := map[string]int64{}
	name := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		switch {
		case len(fields) >= 5 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":"):
			name = "[anon]"
			if len(fields) >= 6 {
				name = filepath.Base(fields[5])
			}
		case len(fields) == 3 && fields[0] == "Rss:":
			kb, _ := strconv.ParseInt(fields[1], 10, 64)
			byName[name] += kb << 10
		}
	}
	return byName
}

// topMappings returns the n largest of byName as "name=N.N MB".
func topMappings(byName map[string]int64, n int) []string {
	type m struct {
		name string
		rss  int64
	}
	var all []m
	for k, v := range byName {
		all = append(all, m{k, v})
	}
	slices.SortFunc(all, func(a, b m) int { return int(b.rss - a.rss) })
	var out []string
	for _, x := range all[:min(n, len(all))] {
		out = append(out, fmt.Sprintf("%s=%.1f MB", x.name, float64(x.rss)/1e6))
	}
	return out
}
