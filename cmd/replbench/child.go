package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"
)

// The parent re-executes its own binary with childEnv set to run one side
// of a workload in a process of its own; the other variables carry the
// parameters. The child prints one JSON line (childResult) on stdout.
const (
	childEnv   = "REPLBENCH_CHILD"
	envAddr    = "REPLBENCH_ADDR"
	envDir     = "REPLBENCH_DIR"
	envSeq     = "REPLBENCH_SEQ"
	envVerbose = "REPLBENCH_VERBOSE"

	childTransfer = "transfer"
)

// childResult is what a child reports.
type childResult struct {
	Rows    uint64  `json:"rows"`
	Bytes   uint64  `json:"bytes"`
	Seq     uint64  `json:"seq"`
	ReadyNs float64 `json:"ready_ns"` // Subscribe to Ready
	PeakRSS int64   `json:"peak_rss"` // VmHWM in bytes at Ready (0: unknown)
}

// childMain runs the child named by childEnv and returns the exit code.
func childMain() int {
	var err error
	switch kind := os.Getenv(childEnv); kind {
	case childTransfer:
		err = childTransferRun()
	default:
		err = fmt.Errorf("unknown child workload %q", kind)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "replbench child: %v\n", err)
		return 1
	}
	return 0
}

// childTransferRun is the new consumer of the transfer workload: it opens
// a component on an empty data dir, subscribes and times Subscribe to
// Ready.
func childTransferRun() error {
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	b := &bench{stderr: os.Stderr}
	if os.Getenv(envVerbose) != "" {
		b.logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	c, err := b.openConsumer(ctx, "transfer", os.Getenv(envDir))
	if err != nil {
		return err
	}
	defer c.Close()
	start := time.Now()
	r, err := subscribe(ctx, c, os.Getenv(envAddr))
	if err != nil {
		return err
	}
	select {
	case <-r.Ready():
	case <-ctx.Done():
		return fmt.Errorf("not ready: %w (status %+v)", ctx.Err(), r.Status())
	}
	took := time.Since(start)
	st := r.Status()
	res := childResult{
		Rows: st.Stats.SnapshotRows, Bytes: st.Stats.SnapshotBytes, Seq: st.Seq,
		ReadyNs: float64(took), PeakRSS: vmHWM(),
	}
	if err := c.Close(); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

// vmHWM returns this process's peak resident set size in bytes from
// /proc/self/status (0 where there is no /proc).
func vmHWM() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:")
		if !ok {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
		if err != nil {
			return 0
		}
		return kb << 10
	}
	return 0
}
