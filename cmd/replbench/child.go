package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/pprof"
	"time"

	"github.com/replmesh/replmesh/internal/benchkit"
	"github.com/replmesh/replmesh/replica"
)

// The parent re-executes its own binary with childEnv set to run one side
// of a workload in a process of its own; the other variables carry the
// parameters. The child prints one JSON line (childResult) on stdout.
const (
	childEnv   = "REPLBENCH_CHILD"
	envAddr    = "REPLBENCH_ADDR"
	envDir     = "REPLBENCH_DIR"
	envVerbose = "REPLBENCH_VERBOSE"
	envHeap    = "REPLBENCH_HEAPPROFILE"
	// envCPU: where the transfer child writes its CPU profile of
	// Subscribe to Ready; envDiskOnly: it subscribes DiskOnly.
	envCPU      = "REPLBENCH_CPUPROFILE"
	envDiskOnly = "REPLBENCH_DISKONLY"
	// envTLS: the child's transport.TLSFiles in JSON (unset: plaintext).
	envTLS = "REPLBENCH_TLS"
	// envAttack: a hostile child's attack in JSON (see attack).
	envAttack = "REPLBENCH_ATTACK"

	childTransfer = "transfer"
)

// childResult is what a child reports.
type childResult struct {
	Rows    uint64  `json:"rows"`
	Bytes   uint64  `json:"bytes"`
	Seq     uint64  `json:"seq"`
	ReadyNs float64 `json:"ready_ns"` // Subscribe to Ready
	PeakRSS int64   `json:"peak_rss"` // VmHWM in bytes at Ready (0: unknown)
	// At Ready: resident anonymous and file-backed memory (badger's
	// mmapped tables are file-backed), and the Go heap in use (badger
	// allocates its memtables and table buffers there).
	RssAnon   int64  `json:"rss_anon"`
	RssFile   int64  `json:"rss_file"`
	HeapInuse uint64 `json:"heap_inuse"`
	// The footprint child's (footprint.go): VmRSS and the Go heap's next
	// GC target when measured, the live heap (after a collection, taken
	// once the RSS is read), its RSS by kind of mapping (rssKinds) and
	// (-v) its largest mappings by RSS.
	RSS      int64            `json:"rss,omitempty"`
	NextGC   uint64           `json:"next_gc,omitempty"`
	HeapLive uint64           `json:"heap_live,omitempty"`
	Kinds    map[string]int64 `json:"kinds,omitempty"`
	Top      []string         `json:"top,omitempty"`
}

// childMain runs the child named by childEnv and returns the exit code.
func childMain() int {
	var err error
	switch kind := os.Getenv(childEnv); kind {
	case childTransfer:
		err = childTransferRun()
	case childModes:
		err = childModesRun()
	case childHostile:
		err = childHostileRun()
	case childFootprint:
		err = childFootprintRun()
	default:
		err = fmt.Errorf("unknown child workload %q", kind)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "replbench child: %v\n", err)
		return 1
	}
	return 0
}

// childBench is a child's bench: its progress and (with envVerbose) its
// components' warnings go to stderr, stdout being its report.
func childBench() *bench {
	b := &bench{stderr: os.Stderr}
	if os.Getenv(envVerbose) != "" {
		b.logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	return b
}

// childTransferRun is the new consumer of the transfer workload: it opens
// a component on an empty data dir, subscribes and times Subscribe to
// Ready.
func childTransferRun() error {
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	b := childBench()
	var mutate func(*replica.Config)
	if files := os.Getenv(envTLS); files != "" {
		src, err := tlsSourceFromJSON(files, b.logger)
		if err != nil {
			return err
		}
		mutate = func(c *replica.Config) { c.TLS = src }
	}
	c, err := b.openConsumer(ctx, childTransfer, os.Getenv(envDir), mutate)
	if err != nil {
		return err
	}
	defer c.Close()
	stopCPU := func() error { return nil }
	if path := os.Getenv(envCPU); path != "" {
		if stopCPU, err = benchkit.StartCPUProfile(path); err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
	}
	start := time.Now()
	r, err := c.Subscribe(ctx, replica.SubscribeOptions{
		Service: ownerService, Table: tableName, Addr: os.Getenv(envAddr), DiskOnly: os.Getenv(envDiskOnly) != "",
	})
	if err != nil {
		return err
	}
	select {
	case <-r.Ready():
	case <-ctx.Done():
		return fmt.Errorf("not ready: %w (status %+v)", ctx.Err(), r.Status())
	}
	took := time.Since(start)
	if err := stopCPU(); err != nil {
		return err
	}
	st := r.Status()
	proc := benchkit.ProcStatus(0, "VmHWM", "RssAnon", "RssFile")
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	res := childResult{
		Rows: st.Stats.SnapshotRows, Bytes: st.Stats.SnapshotBytes, Seq: st.Seq,
		ReadyNs: float64(took), PeakRSS: proc["VmHWM"], RssAnon: proc["RssAnon"], RssFile: proc["RssFile"],
		HeapInuse: ms.HeapInuse,
	}
	if path := os.Getenv(envHeap); path != "" {
		if err := writeHeapProfile(path); err != nil {
			return err
		}
	}
	if err := c.Close(); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("heap profile: %w", err)
	}
	runtime.GC()
	if err := pprof.WriteHeapProfile(f); err != nil {
		f.Close()
		return fmt.Errorf("heap profile: %w", err)
	}
	return f.Close()
}
