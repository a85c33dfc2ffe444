// Command replbench measures replmesh on this machine, over loopback, with
// 256-byte values, and prints one table of figures next to the targets of
// the project's foundation issue (issue 2, "Speed"), so that a miss is
// obvious.
//
// Workloads (select with -workloads, default all):
//
//	loopback  raw TCP throughput over 127.0.0.1: the ceiling other figures are compared to
//	fanout    one writer pipelining -changes Puts to 1, 4 and 16 consumers, in-memory and
//	          durable replicas: changes/s delivered to all, commit-to-applied p50/p99
//	paced     one consumer, the writer paced at -rate changes/s: commit-to-applied p50/p99
//	transfer  full state transfer of -rows rows into a new consumer running as a child
//	          process, durable and in-memory (-replicas): rows/s, MB/s, the consumer's peak RSS
//	restore   issue 15: the full transfer of -rows rows both ways in one run: owner to a new
//	          durable replica, then the replica back to the owner after it lost its disk
//	          (Component.Restore): rows/s each way and their ratio (see restore.go)
//	resume    -missed changes missed, then the consumer restarts, or the owner does:
//	          time to caught up
//	get       local Replica.Get on a replica of -getrows rows: ns/op p50, mean, allocs/op
//	modes     issue 4: a hot and a cold table in push, pull and auto mode: bytes and
//	          messages on the wire, consumer CPU, read staleness (see modes.go)
//	security  issue 12: fan-out to 1 and 4 in-memory consumers and the full transfer of
//	          -security-rows rows, plaintext and mTLS alternately (-tls), each mTLS figure
//	          with its ratio to plaintext; the memory -hostile attacking streams and
//	          registrations cost an owner and a broker with the limits on (see security.go,
//	          hostile.go)
//	footprint issue 14: the RSS of a consumer process holding one component with one small
//	          table (-footprint-rows rows, -footprint-churn rewrites of each while subscribed),
//	          in-memory and durable (-replicas), beside the binary's floor (see footprint.go)
//
// The owner always keeps its table and log on disk with async durability,
// as in the comparison runs. Each workload runs -count times (3:
// the Redis/NATS figures are medians of 3) and the table shows each
// figure's median with its spread. The machine's load average at start and
// end is printed too: other processes skew every figure. Databases live under -datadir (default
// a temporary directory); everything replbench creates there is removed.
//
//	go run ./cmd/replbench                      # the full run (a few minutes)
//	go run ./cmd/replbench -quick               # small sizes, a smoke test
//	go run ./cmd/replbench -o json              # for machines
//	go run ./cmd/replbench -workloads fanout -consumers 1 -replicas mem -count 1 -cpuprofile cpu.out
//	go run ./cmd/replbench -workloads transfer -count 1 -transfer-heapprofile heap.out
//	go run ./cmd/replbench -workloads security -count 3
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/replmesh/replmesh/broker"
	"github.com/replmesh/replmesh/internal/benchkit"
)

func main() {
	if os.Getenv(childEnv) != "" {
		os.Exit(childMain())
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "replbench:", err)
		os.Exit(1)
	}
}

// workloadOrder is the order workloads run in: loopback first, since the
// other figures are reported as fractions of it.
var workloadOrder = []string{"loopback", "fanout", "paced", "transfer", "restore", "resume", "get", "modes", "security", "footprint"}

// options are the parsed flags.
type options struct {
	workloads []string
	consumers []int
	replicas  []string // "mem", "disk"
	// diskOnly: -replicas lists diskonly, a durable replica subscribed
	// DiskOnly (the transfer workload only).
	diskOnly   bool
	changes    int
	keys       int
	window     int
	flowWindow int // the owner's Config.Flow.Window (0: its default)
	valueSize  int
	rows       int
	missed     int
	getRows    int
	getOps     int
	rate       int
	paced      time.Duration
	loopback   time.Duration
	dataDir    string
	output     string
	quick      bool
	count      int
	cpuProfile string
	// childHeapProfile: the transfer consumer's heap profile at Ready.
	childHeapProfile string
	// childCPUProfile: the transfer consumer's CPU profile, Subscribe to
	// Ready.
	childCPUProfile string
	verbose         bool
	// security: the runs' TLS (false: plaintext, true: mTLS), in order;
	// the transfer's rows; the attacking streams and registrations, and
	// the tables each registration lists.
	tls           []bool
	securityRows  int
	hostile       int
	hostileTables int
	// footprint: the table's rows, and the rewrites of each row the
	// consumer takes while subscribed.
	footprintRows  int
	footprintChurn int
	// footprintMemLimit: GOMEMLIMIT of the footprint children ("": none).
	footprintMemLimit string
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("replbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	workloads := fs.String("workloads", strings.Join(workloadOrder, ","), "comma-separated workloads to run: "+strings.Join(workloadOrder, ","))
	consumers := fs.String("consumers", "1,4,16", "fanout: consumer counts")
	replicas := fs.String("replicas", "mem,disk", "fanout, paced, get, transfer: replica kinds (mem: no data dir; disk: badger on disk, async; diskonly: transfer only, a disk replica subscribed DiskOnly, no resident rows)")
	fs.IntVar(&o.changes, "changes", 200_000, "fanout: changes written by the one writer")
	fs.IntVar(&o.keys, "keys", 100_000, "fanout, resume: distinct keys the changes are spread over")
	fs.IntVar(&o.window, "window", 1024, "fanout, resume: writes the writer keeps in flight (pipeline depth)")
	fs.IntVar(&o.flowWindow, "flowwindow", 0, "fanout, paced: the owner's flow control window in changes (replica.FlowControl; 0: its default, negative: off)")
	fs.IntVar(&o.valueSize, "valuesize", 256, "bytes per value")
	fs.IntVar(&o.rows, "rows", 1_000_000, "transfer: rows in the table")
	fs.IntVar(&o.missed, "missed", 100_000, "resume: changes the restarted side missed")
	fs.IntVar(&o.getRows, "getrows", 100_000, "get: rows in the replica")
	fs.IntVar(&o.getOps, "getops", 1_000_000, "get: Gets in the untimed loop (mean, allocs); a fifth as many are timed one by one (p50)")
	fs.IntVar(&o.rate, "rate", 1000, "paced: changes per second")
	fs.DurationVar(&o.paced, "paced", 5*time.Second, "paced: how long the writer runs")
	fs.DurationVar(&o.loopback, "loopback", 1500*time.Millisecond, "loopback: how long the TCP writer runs")
	fs.StringVar(&o.dataDir, "datadir", "", "where on-disk databases are created (default: a temporary directory); removed at exit")
	fs.StringVar(&o.output, "o", "text", "output format: text or json")
	fs.IntVar(&o.count, "count", 3, "runs of each workload; the table shows each figure's median (the issue's Redis/NATS figures are medians of 3)")
	fs.BoolVar(&o.quick, "quick", false, "small sizes for a smoke test (explicit size flags still win)")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the whole run to this file")
	fs.StringVar(&o.childHeapProfile, "transfer-heapprofile", "", "write the transfer consumer's heap profile, taken at Ready, to this file")
	fs.StringVar(&o.childCPUProfile, "transfer-cpuprofile", "", "write the transfer consumer's CPU profile, Subscribe to Ready, to this file")
	tlsModes := fs.String("tls", "off,on", "security: plaintext (off) and mTLS (on) runs, alternating in this order")
	fs.IntVar(&o.securityRows, "security-rows", 200_000, "security: rows of the transfer (an explicit -rows is used when this is not given)")
	fs.IntVar(&o.hostile, "hostile", 1000, "security: streams and registrations of each hostile peer (0: no hostile peers)")
	fs.IntVar(&o.hostileTables, "hostile-tables", 1024, "security: tables each hostile registration lists")
	fs.IntVar(&o.footprintRows, "footprint-rows", 4000, "footprint: rows in the consumer's one table (4000 x 256 B: about 1 MB)")
	fs.IntVar(&o.footprintChurn, "footprint-churn", 5, "footprint: rewrites of every row while the consumer is subscribed")
	fs.StringVar(&o.footprintMemLimit, "footprint-memlimit", "", "footprint: GOMEMLIMIT of the child processes (e.g. 56MiB; empty: none), to tell what the component holds from the garbage the collector lets grow beside it")
	fs.BoolVar(&o.verbose, "v", false, "log the components' warnings and errors to stderr")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if o.quick {
		quick := []struct {
			name string
			p    *int
			v    int
		}{
			{"changes", &o.changes, 5_000},
			{"keys", &o.keys, 1_000},
			{"rows", &o.rows, 20_000},
			{"missed", &o.missed, 5_000},
			{"getrows", &o.getRows, 5_000},
			{"getops", &o.getOps, 100_000},
			{"count", &o.count, 1},
			{"security-rows", &o.securityRows, 20_000},
			{"hostile", &o.hostile, 300},
		}
		for _, q := range quick {
			if !set[q.name] {
				*q.p = q.v
			}
		}
		if !set["paced"] {
			o.paced = 3 * time.Second
		}
		if !set["loopback"] {
			o.loopback = 200 * time.Millisecond
		}
	}

	for _, w := range splitList(*workloads) {
		if !slices.Contains(workloadOrder, w) {
			return o, fmt.Errorf("-workloads: unknown workload %q (want some of %s)", w, strings.Join(workloadOrder, ","))
		}
		if !slices.Contains(o.workloads, w) {
			o.workloads = append(o.workloads, w)
		}
	}
	if set["rows"] && !set["security-rows"] {
		o.securityRows = o.rows
	}
	for _, s := range splitList(*tlsModes) {
		switch s {
		case "off", "on":
			if !slices.Contains(o.tls, s == "on") {
				o.tls = append(o.tls, s == "on")
			}
		default:
			return o, fmt.Errorf("-tls: unknown setting %q (want off, on)", s)
		}
	}
	if len(o.tls) == 0 {
		return o, fmt.Errorf("-tls: none selected")
	}
	switch {
	case o.hostile < 0:
		return o, fmt.Errorf("-hostile must not be negative")
	case o.footprintChurn < 0:
		return o, fmt.Errorf("-footprint-churn must not be negative")
	case o.hostileTables < 0 || o.hostileTables > broker.DefaultMaxTables:
		return o, fmt.Errorf("-hostile-tables must be 0..%d (the broker's default limit)", broker.DefaultMaxTables)
	}
	for _, s := range splitList(*consumers) {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			return o, fmt.Errorf("-consumers: %q is not a positive count", s)
		}
		o.consumers = append(o.consumers, n)
	}
	for _, s := range splitList(*replicas) {
		switch s {
		case "mem", "disk":
			o.replicas = append(o.replicas, s)
		case "diskonly":
			o.diskOnly = true
		default:
			return o, fmt.Errorf("-replicas: unknown kind %q (want mem, disk, diskonly)", s)
		}
	}
	positive := []struct {
		name string
		v    int
	}{
		{"changes", o.changes}, {"keys", o.keys}, {"window", o.window}, {"valuesize", o.valueSize},
		{"rows", o.rows}, {"missed", o.missed}, {"getrows", o.getRows}, {"getops", o.getOps}, {"rate", o.rate}, {"count", o.count},
		{"security-rows", o.securityRows}, {"footprint-rows", o.footprintRows},
	}
	for _, p := range positive {
		if p.v < 1 {
			return o, fmt.Errorf("-%s must be at least 1", p.name)
		}
	}
	switch {
	case o.valueSize > 64<<10:
		return o, fmt.Errorf("-valuesize must be at most 65536")
	case o.paced <= 0 || o.loopback <= 0:
		return o, fmt.Errorf("-paced and -loopback must be positive")
	case o.output != "text" && o.output != "json":
		return o, fmt.Errorf("-o: unknown format %q (want text, json)", o.output)
	case len(o.workloads) == 0:
		return o, fmt.Errorf("-workloads: none selected")
	}
	return o, nil
}

func splitList(s string) []string {
	var out []string
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// run parses args, runs the selected workloads and writes the table to
// stdout; progress goes to stderr. It returns the first workload error,
// after printing whatever was measured.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp(o.dataDir, "replbench-")
	if err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	defer os.RemoveAll(dir)

	if o.cpuProfile != "" {
		stop, err := benchkit.StartCPUProfile(o.cpuProfile)
		if err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer func() { _ = stop() }()
	}

	b := &bench{opts: o, dir: dir, stderr: stderr, loadStart: loadAvg()}
	if o.verbose {
		b.logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	workloads := map[string]func(context.Context) error{
		"loopback":  b.runLoopback,
		"fanout":    b.runFanout,
		"paced":     b.runPaced,
		"transfer":  b.runTransfer,
		"restore":   b.runRestore,
		"resume":    b.runResume,
		"get":       b.runGet,
		"modes":     b.runModes,
		"security":  b.runSecurity,
		"footprint": b.runFootprint,
	}
	var firstErr error
	for _, w := range workloadOrder {
		if !slices.Contains(o.workloads, w) {
			continue
		}
		if ctx.Err() != nil {
			break
		}
		for i := range o.count {
			if ctx.Err() != nil {
				break
			}
			benchkit.Settle()
			start := time.Now()
			b.progress("%s: start (run %d of %d)", w, i+1, o.count)
			if err := workloads[w](ctx); err != nil {
				err = fmt.Errorf("%s: %w", w, err)
				b.progress("%v", err)
				b.add(result{Workload: w, Figure: "error", Notes: err.Error()})
				if firstErr == nil {
					firstErr = err
				}
				break
			}
			b.progress("%s: done in %.1f s", w, time.Since(start).Seconds())
		}
	}
	if firstErr == nil && ctx.Err() != nil {
		firstErr = ctx.Err()
	}
	b.loadEnd = loadAvg()
	b.finish()
	if o.output == "json" {
		err = b.writeJSON(stdout)
	} else {
		err = b.writeText(stdout)
	}
	return errors.Join(firstErr, err)
}
