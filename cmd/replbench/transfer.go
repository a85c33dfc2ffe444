package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/replmesh/replmesh/internal/benchkit"
)

// transferFigures are what one full transfer measured.
type transferFigures struct {
	res                childResult // the consumer's report
	maxrss             int64       // the consumer's rusage maxrss (0: unknown)
	loadTook           time.Duration
	heapBase, heapPeak uint64 // the owner's Go heap in use before and during the transfer
}

// runTransfer: an owner on disk holds -rows rows; a new consumer, running
// as a child process so that its peak memory is its own, subscribes; the
// figure is Subscribe to Ready. The consumer is durable (workload
// "transfer"), with mem in -replicas in-memory ("transfer mem"), with
// diskonly durable and subscribed DiskOnly ("transfer diskonly"). The
// first two are resident replicas, so their peak RSS target is the
// issue's payload + 100 MB; a disk-only one's is 200 MB.
func (b *bench) runTransfer(ctx context.Context) error {
	kinds := b.opts.replicas
	if b.opts.diskOnly {
		kinds = append(slices.Clone(kinds), "diskonly")
	}
	for _, kind := range kinds {
		name, into := "transfer", "a durable replica"
		switch kind {
		case "mem":
			name, into = "transfer mem", "an in-memory replica"
		case "diskonly":
			name, into = "transfer diskonly", "a disk-only replica"
		}
		f, err := b.measureTransfer(ctx, name, b.opts.rows, nil, kind)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		b.reportTransfer(name, into, kind, f)
	}
	return nil
}

// diskOnlyPeak is the bound on a disk-only replica's peak RSS
// during a full transfer.
const diskOnlyPeak = 200e6

func (b *bench) reportTransfer(name, into, kind string, f transferFigures) {
	res := f.res
	secs := res.ReadyNs / 1e9
	rowsPerSec := float64(res.Rows) / secs
	bps := float64(res.Bytes) / secs
	b.add(result{
		Workload: name, Figure: "rows/s into " + into, Value: rowsPerSec, Unit: unitRowsPerSec, Target: atLeast(500e3),
		Reference: "nats 361k/s, redis 248k/s",
		Notes: fmt.Sprintf("%d rows in %.2f s, Subscribe to Ready; owner loaded them at %s rows/s",
			res.Rows, secs, benchkit.SI(float64(b.opts.rows)/f.loadTook.Seconds())),
	})
	b.add(result{
		Workload: name, Figure: "MB/s (keys+values)", Value: bps, Unit: unitBytesPerSec, payloadBps: bps,
		Notes: fmt.Sprintf("%.1f MB received", float64(res.Bytes)/1e6),
	})
	// VmHWM is the child's own. rusage's maxrss is only a fallback: on
	// Linux it also counts the parent's memory, which the child shared
	// between fork and exec.
	peak := float64(res.PeakRSS)
	peakNote := fmt.Sprintf("VmHWM of the consumer process at Ready; then: anon %.0f MB, file-backed %.0f MB, Go heap in use %.0f MB",
		float64(res.RssAnon)/1e6, float64(res.RssFile)/1e6, float64(res.HeapInuse)/1e6)
	if peak == 0 {
		peak, peakNote = float64(f.maxrss), "rusage maxrss of the consumer process (may include the parent's RSS at fork)"
	}
	target, targetNote := under(float64(res.Bytes)+100e6), "target: payload + 100 MB (a resident replica); "
	if kind == "diskonly" {
		target, targetNote = under(diskOnlyPeak), "target: 200 MB (a disk-only replica); "
	}
	b.add(result{
		Workload: name, Figure: "consumer peak RSS", Value: peak, Unit: unitBytes, Target: target,
		Reference: "nats holds 538 MB", Notes: targetNote + peakNote,
	})
	b.add(result{
		Workload: name, Figure: "owner Go heap in use, peak", Value: float64(f.heapPeak), Unit: unitBytes,
		Notes: fmt.Sprintf("sampled every 50 ms during the transfer; %.1f MB before it", float64(f.heapBase)/1e6),
	})
}

// measureTransfer loads rows rows into a new owner and times their full
// transfer into a new consumer process of kind "disk" (durable), "mem"
// (in-memory) or "diskonly" (durable, subscribed DiskOnly), with the
// security of sec (nil: none).
func (b *bench) measureTransfer(ctx context.Context, name string, rows int, sec *pki, kind string) (f transferFigures, err error) {
	dir, err := b.subdir(strings.ReplaceAll(name, " ", "-"))
	if err != nil {
		return f, err
	}
	defer func() { err = errors.Join(err, os.RemoveAll(dir)) }()
	owner, tbl, err := b.openOwner(ctx, filepath.Join(dir, "owner"), "127.0.0.1:0", sec.owner())
	if err != nil {
		return f, err
	}
	defer func() { err = errors.Join(err, closeAll(owner)) }()

	b.progress("%s: loading %d rows into the owner", name, rows)
	start := time.Now()
	head, err := b.loadRows(ctx, tbl, rows)
	if err != nil {
		return f, err
	}
	f.loadTook = time.Since(start)
	b.progress("%s: loaded in %.1f s; starting the consumer process", name, f.loadTook.Seconds())

	// Sample the owner's Go heap while the child runs.
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	f.heapBase = ms.HeapInuse
	heapPeak := f.heapBase
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				heapPeak = max(heapPeak, ms.HeapInuse)
			case <-stopSampling:
				return
			}
		}
	}()
	env := map[string]string{
		envAddr: owner.Addr(),
		envDir:  filepath.Join(dir, "consumer"),
	}
	switch kind {
	case "mem":
		env[envDir] = "" // no data dir: an in-memory replica
	case "diskonly":
		env[envDiskOnly] = "1"
	}
	if sec != nil {
		files, err := sec.files(consumerService, childTransfer)
		if err != nil {
			return f, err
		}
		env[envTLS] = files
	}
	if b.opts.childHeapProfile != "" {
		abs, err := filepath.Abs(b.opts.childHeapProfile)
		if err != nil {
			return f, err
		}
		env[envHeap] = abs
	}
	if b.opts.childCPUProfile != "" {
		abs, err := filepath.Abs(b.opts.childCPUProfile)
		if err != nil {
			return f, err
		}
		env[envCPU] = abs
	}
	res, maxrss, err := b.runChild(ctx, childTransfer, env)
	close(stopSampling)
	<-sampled
	f.heapPeak = heapPeak
	if err != nil {
		return f, err
	}
	if res.Rows != uint64(rows) || res.Seq != head {
		return f, fmt.Errorf("consumer received %d rows at seq %d, want %d rows at seq %d", res.Rows, res.Seq, rows, head)
	}
	f.res, f.maxrss = res, maxrss
	return f, nil
}

// runChild re-executes this binary as a child workload and decodes the
// last line it prints. maxrss is the child's peak RSS per rusage (0 where
// unknown).
func (b *bench) runChild(ctx context.Context, kind string, env map[string]string) (res childResult, maxrss int64, err error) {
	exe, err := os.Executable()
	if err != nil {
		return res, 0, fmt.Errorf("find own executable: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = append(os.Environ(), childEnv+"="+kind)
	if b.opts.verbose {
		cmd.Env = append(cmd.Env, envVerbose+"=1")
	}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = b.stderr
	runErr := cmd.Run()
	if cmd.ProcessState != nil {
		maxrss = maxRSS(cmd.ProcessState)
	}
	if runErr != nil {
		return res, maxrss, fmt.Errorf("child %s: %w", kind, runErr)
	}
	lines := bytes.Split(bytes.TrimSpace(out.Bytes()), []byte("\n"))
	if err := json.Unmarshal(lines[len(lines)-1], &res); err != nil {
		return res, maxrss, fmt.Errorf("child %s printed %q: %w", kind, out.Bytes(), err)
	}
	return res, maxrss, nil
}
