// Command peers is replmesh's own peer comparison: it runs replmesh, NATS
// JetStream KV (nats-server embedded) and Redis replicas (redis-server
// child processes, when redis-server is on PATH) through the same
// workloads in the same run, on loopback, with the same values, and
// prints each figure beside the others with replmesh's ratio to the best
// peer.
//
// The workloads (sizes are flags; -quick makes them small):
//
//   - W1 fan-out: one writer, -changes changes over -keys keys, to 1, 4
//     and 16 readers: changes/s delivered to every reader, and the
//     commit-to-delivered latency (writer's clock at the write to the
//     reader's at delivery) p50/p99.
//   - W2 full state transfer of -rows rows to a new reader process:
//     rows/s and the reader process's peak RSS (VmHWM). replmesh's reader
//     processes (W2, W3) run a binary of replmesh alone, this package
//     built with -tags rmreader (smallReader), when run from its
//     directory; the figures' note says which binary they ran.
//   - W3 catch-up after -missed changes the reader missed: the reader
//     process stopped and restarted (replmesh also: the owner process
//     restarted), time from the restart until it holds the writer's head.
//   - W4 point reads on the -rows table: p50/p99 of one read, beside a Go
//     map lookup in the same process.
//   - Paced: -rate changes/s to one replmesh reader, commit-to-applied.
//   - Limits: loopback TCP throughput, msgpack encode+decode of one
//     change, badger WriteBatch keys/s, measured in the same run.
//
// Every system's owner is durable with asynchronous durability: replmesh
// replica.Async on a data dir, NATS file storage, Redis appendonly with
// appendfsync everysec. Each figure is the median of -count runs.
//
// It is a module of its own (bench/peers/go.mod), so that the library's
// module does not depend on NATS or Redis. Run it from its directory:
//
//	go run . -quick
//	go run . -count 3 -json peers.json
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/replmesh/replmesh/internal/benchkit"
)

// sizes are the workloads' dimensions.
type sizes struct {
	Changes  int           `json:"changes"`     // W1 changes per run
	Readers  []int         `json:"readers"`     // W1 reader counts
	Keys     int           `json:"keys"`        // key space of W1, W3 and paced writes
	Rows     int           `json:"rows"`        // W2 and W4 table size
	Missed   int           `json:"missed"`      // W3 changes missed
	Reads    int           `json:"reads"`       // W4 samples per system
	Value    int           `json:"value"`       // value size in bytes
	Window   int           `json:"window"`      // writes in flight per writer
	Flow     int           `json:"flow_window"` // replmesh W1 owner's Config.Flow.Window (0: its default)
	Paced    time.Duration `json:"paced"`       // paced run length
	Rate     int           `json:"rate"`        // paced changes/s
	Loopback time.Duration `json:"loopback"`    // loopback TCP measurement length
	Batch    int           `json:"badger_wb"`   // badger WriteBatch keys
}

func fullSizes() sizes {
	return sizes{
		Changes: 200_000, Readers: []int{1, 4, 16}, Keys: 10_000, Rows: 1_000_000, Missed: 100_000,
		Reads: 20_000, Value: 256, Window: 1024, Paced: 5 * time.Second, Rate: 1000,
		Loopback: time.Second, Batch: 200_000,
	}
}

func quickSizes() sizes {
	return sizes{
		Changes: 5_000, Readers: []int{1, 2}, Keys: 1_000, Rows: 20_000, Missed: 2_000,
		Reads: 2_000, Value: 256, Window: 256, Paced: time.Second, Rate: 1000,
		Loopback: 200 * time.Millisecond, Batch: 20_000,
	}
}

// The systems and workloads that -systems and -workloads name.
var (
	allSystems   = []string{"replmesh", "nats", "redis"}
	allWorkloads = []string{"limits", "w1", "w2", "w4", "w3", "paced"}
)

// bench is one invocation: its options and the figures of the current run.
type bench struct {
	sz        sizes
	systems   []string
	workloads []string
	dir       string // scratch directory of the invocation
	exe       string // this binary, re-executed for reader processes
	// readerExe is what replmesh reader processes run: a binary of this
	// package built with the rmreader tag (replmesh alone linked, not the
	// NATS server and the Redis client) when it could be built, else exe;
	// readerNote says which (smallReader).
	readerExe  string
	readerNote string
	redis      string // redis-server's path ("" when not installed)
	stderr     io.Writer
	logger     *slog.Logger // components' logs (nil: discarded)
	// readerProfile: the prefix of replmesh reader processes' CPU
	// profiles ("" none).
	readerProfile string
	figs          []figure
	skipped       []string
}

func (b *bench) has(system string) bool    { return slices.Contains(b.systems, system) }
func (b *bench) does(workload string) bool { return slices.Contains(b.workloads, workload) }

func (b *bench) add(f figure) { b.figs = append(b.figs, f) }

func (b *bench) progress(format string, args ...any) {
	fmt.Fprintf(b.stderr, "%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// settleQuiet prepares a measured case (label names it in the progress
// output): the garbage of earlier runs is collected, then it waits (at
// most quietWait) until the machine is quiet (benchkit.WaitQuiet: the
// background work the case before left running is done, such as a
// badger's compactions after the table's load, a closed reader's
// cleanup, a peer server's log rewrite), so that a case measures its own
// work. How long it waited is in the progress output.
func (b *bench) settleQuiet(ctx context.Context, label string) {
	benchkit.Settle()
	waited, quiet := benchkit.WaitQuiet(ctx, quietWait)
	if !quiet {
		b.progress("%s: machine still busy after %s; measuring anyway", label, waited.Round(time.Millisecond))
		return
	}
	b.progress("%s: machine quiet after %s", label, waited.Round(time.Millisecond))
}

// quietWait bounds settleQuiet's wait.
//
// W4's reads over the network (Redis's, NATS's) are
// measured without settleQuiet. On this project's virtual 2-core machine a
// quiet machine made them slower, not faster: Redis's GET p50 20 µs when
// timed right after its load (its AOF rewrite still running) against 52 µs
// after the machine went quiet, alternating the two builds twice; a round
// trip between processes waits for an idle virtual CPU to wake. A local
// read (replmesh's Get, the map baseline) involves no wake-up, and what
// competes with it for the cores only slows it.
const quietWait = 20 * time.Second

// skip records that a system sat out a run, once.
func (b *bench) skip(note string) {
	if !slices.Contains(b.skipped, note) {
		b.skipped = append(b.skipped, note)
		b.progress("skipped: %s", note)
	}
}

func main() {
	if os.Getenv(envRole) != "" {
		os.Exit(childMain())
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "peers: %v\n", err)
		os.Exit(1)
	}
}

// run parses args, runs the workloads -count times and writes the tables
// (and -json).
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("peers", flag.ContinueOnError)
	fs.SetOutput(stderr)
	quick := fs.Bool("quick", false, "small sizes for a smoke run (under a minute)")
	count := fs.Int("count", 3, "runs; each figure is the median")
	systems := fs.String("systems", strings.Join(allSystems, ","), "systems to run")
	workloads := fs.String("workloads", strings.Join(allWorkloads, ","), "workloads to run")
	jsonOut := fs.String("json", "", "also write the figures as JSON to this file (- for stdout, after the tables)")
	verbose := fs.Bool("v", false, "log replmesh warnings to stderr")
	dir := fs.String("dir", "", "scratch directory (default: a new temporary one, removed at the end)")
	full := fullSizes()
	changes := fs.Int("changes", 0, fmt.Sprintf("W1 changes (default %d)", full.Changes))
	readers := fs.String("readers", "", "W1 reader counts, comma-separated (default 1,4,16)")
	keys := fs.Int("keys", 0, fmt.Sprintf("key space of W1, W3 and paced writes (default %d)", full.Keys))
	rows := fs.Int("rows", 0, fmt.Sprintf("W2/W4 table rows (default %d)", full.Rows))
	missed := fs.Int("missed", 0, fmt.Sprintf("W3 missed changes (default %d)", full.Missed))
	reads := fs.Int("reads", 0, fmt.Sprintf("W4 reads per system (default %d)", full.Reads))
	valueSize := fs.Int("value", 0, fmt.Sprintf("value size in bytes, at least %d (default %d)", stampSize, full.Value))
	paced := fs.Duration("paced", 0, "paced run length (default 5s)")
	rate := fs.Int("rate", 0, "paced changes/s (default 1000)")
	flowWindow := fs.Int("flowwindow", 0, "replmesh W1: the owner's flow control window in changes (replica.FlowControl; 0: its default, negative: off)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the runs (this process: owner, writer and in-process readers) to this file")
	readerProfile := fs.String("readerprofile", "", "replmesh reader processes write a CPU profile each, from process start to caught up, to files named by this prefix (PREFIX-NAME-PID.pprof; merge them with go tool pprof -proto)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	b := &bench{sz: full, stderr: stderr}
	if *quick {
		b.sz = quickSizes()
	}
	for _, o := range []struct {
		dst *int
		v   int
	}{{&b.sz.Changes, *changes}, {&b.sz.Keys, *keys}, {&b.sz.Rows, *rows}, {&b.sz.Missed, *missed}, {&b.sz.Reads, *reads}, {&b.sz.Value, *valueSize}, {&b.sz.Rate, *rate}} {
		if o.v != 0 {
			*o.dst = o.v
		}
	}
	b.sz.Flow = *flowWindow
	if *paced != 0 {
		b.sz.Paced = *paced
	}
	if *readers != "" {
		b.sz.Readers = nil
		for _, s := range strings.Split(*readers, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || n <= 0 {
				return fmt.Errorf("-readers: %q is not a positive count", s)
			}
			b.sz.Readers = append(b.sz.Readers, n)
		}
	}
	if err := b.sz.validate(); err != nil {
		return err
	}
	if *count <= 0 {
		return fmt.Errorf("-count must be positive, got %d", *count)
	}
	var err error
	if b.systems, err = pick("-systems", *systems, allSystems); err != nil {
		return err
	}
	if b.workloads, err = pick("-workloads", *workloads, allWorkloads); err != nil {
		return err
	}
	if *verbose {
		b.logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	if b.exe, err = os.Executable(); err != nil {
		return fmt.Errorf("own binary (reader processes re-execute it): %w", err)
	}
	if b.has("redis") {
		if p, err := exec.LookPath("redis-server"); err == nil {
			b.redis = p
		} else {
			b.skip("redis: redis-server is not on PATH (apt-get install redis-server)")
		}
	}
	if *dir != "" {
		b.dir = *dir
		if err := os.MkdirAll(b.dir, 0o755); err != nil {
			return err
		}
	} else {
		if b.dir, err = os.MkdirTemp("", "peers-"); err != nil {
			return err
		}
		defer os.RemoveAll(b.dir)
	}

	b.readerProfile = *readerProfile
	b.readerExe, b.readerNote = b.smallReader(ctx)
	if *cpuProfile != "" {
		stop, err := benchkit.StartCPUProfile(*cpuProfile)
		if err != nil {
			return fmt.Errorf("-cpuprofile: %w", err)
		}
		defer func() { _ = stop() }()
	}

	rep := report{Command: "peers " + strings.Join(args, " "), Count: *count, Sizes: b.sz}
	var runs [][]figure
	for i := range *count {
		rep.Load = append(rep.Load, loadAvg())
		b.progress("run %d of %d (load %s)", i+1, *count, loadAvg())
		b.figs = nil
		if err := b.runOnce(ctx); err != nil {
			return fmt.Errorf("run %d: %w", i+1, err)
		}
		runs = append(runs, b.figs)
	}
	rep.Load = append(rep.Load, loadAvg())
	rep.Skipped = b.skipped
	rep.Figures = medians(runs)

	fmt.Fprintf(stdout, "# replmesh vs peers: %s\n\nmedians of %d run(s); %d-byte values; load averages (1/5/15 min) at each run's start and the end: %s\n",
		rep.Command, *count, b.sz.Value, strings.Join(rep.Load, " | "))
	for _, s := range b.skipped {
		fmt.Fprintf(stdout, "skipped: %s\n", s)
	}
	if err := writeTables(stdout, rep.Figures); err != nil {
		return err
	}
	switch *jsonOut {
	case "":
	case "-":
		return writeJSON(stdout, rep)
	default:
		f, err := os.Create(*jsonOut)
		if err != nil {
			return err
		}
		return errors.Join(writeJSON(f, rep), f.Close())
	}
	return nil
}

func (s sizes) validate() error {
	checks := []struct {
		name string
		bad  bool
	}{
		{"-changes", s.Changes <= 0},
		{"-keys", s.Keys <= 0 || s.Keys > 999_999_999},
		{"-rows", s.Rows <= 0 || s.Rows > 999_999_999},
		{"-missed", s.Missed <= 0},
		{"-reads", s.Reads <= 0},
		{"-value", s.Value < stampSize || s.Value > 1<<15},
		{"-rate", s.Rate <= 0},
		{"-paced", s.Paced <= 0},
	}
	for _, c := range checks {
		if c.bad {
			return fmt.Errorf("%s is out of range", c.name)
		}
	}
	return nil
}

// pick parses a comma-separated subset of all, keeping all's order.
func pick(flagName, list string, all []string) ([]string, error) {
	var out []string
	for _, s := range strings.Split(list, ",") {
		s = strings.TrimSpace(strings.ToLower(s))
		if s == "" {
			continue
		}
		if !slices.Contains(all, s) {
			return nil, fmt.Errorf("%s: unknown %q (known: %s)", flagName, s, strings.Join(all, ","))
		}
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b string) int { return slices.Index(all, a) - slices.Index(all, b) })
	return slices.Compact(out), nil
}

// loadAvg is the machine's load averages (the machine is shared: figures
// are read beside it).
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// runOnce runs every chosen workload for every chosen system once.
func (b *bench) runOnce(ctx context.Context) error {
	steps := []struct {
		workload, system string
		fn               func(context.Context) error
	}{
		{"limits", "", b.limits},
		{"w1", "replmesh", b.rmFanout},
		{"w1", "nats", b.natsFanout},
		{"w1", "redis", b.redisFanout},
		{"w2", "replmesh", b.rmBigTable},
		{"w2", "nats", b.natsBigTable},
		{"w2", "redis", b.redisBigTable},
		{"w4", "", b.mapBaseline},
		{"w3", "replmesh", b.rmCatchUp},
		{"w3", "nats", b.natsCatchUp},
		{"w3", "redis", b.redisCatchUp},
		{"paced", "replmesh", b.rmPaced},
	}
	// W4 reads the table W2 loaded: each system's big-table step runs both
	// when either is chosen.
	for _, s := range steps {
		if s.workload == "w2" && !b.does("w2") && !b.does("w4") || s.workload != "w2" && !b.does(s.workload) {
			continue
		}
		if s.system != "" && !b.has(s.system) || s.system == "redis" && b.redis == "" {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		benchkit.Settle()
		if err := s.fn(ctx); err != nil {
			name := s.workload
			if s.system != "" {
				name += " " + s.system
			}
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return nil
}
