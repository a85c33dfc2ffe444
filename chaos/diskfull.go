package chaos

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// diskFull is one consumer whose data dir is a small tmpfs of its own
// (mounted by the harness, which needs root), so that its disk can be
// filled and freed.
type diskFull struct {
	n     *node
	mount string
}

// setupDiskFull mounts a tmpfs of fDiskFullSize as n's data dir. It fails
// when not running as root or when mount is unavailable; the caller skips
// the fault then.
func setupDiskFull(n *node) (*diskFull, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("not running as root: cannot mount a tmpfs")
	}
	if err := os.MkdirAll(n.dir, 0o755); err != nil {
		return nil, err
	}
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+fDiskFullSize, "rmchaos-diskfull", n.dir).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("mount -t tmpfs: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return &diskFull{n: n, mount: n.dir}, nil
}

// cleanup unmounts the tmpfs (lazily: a node killed a moment ago may still
// hold it open).
func (d *diskFull) cleanup() error {
	if out, err := exec.Command("umount", "-l", d.mount).CombinedOutput(); err != nil {
		return fmt.Errorf("umount %s: %v: %s", d.mount, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (d *diskFull) filler() string { return filepath.Join(d.mount, "filler") }

// fill writes a file until the file system is full.
func (d *diskFull) fill() (int64, error) {
	f, err := os.OpenFile(d.filler(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 256<<10)
	var n int64
	for {
		w, err := f.Write(buf)
		n += int64(w)
		if errors.Is(err, syscall.ENOSPC) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// run fills the consumer's disk while the workload goes on, checks that
// it keeps serving reads and reports the failure to apply (the replica's
// status must name the lack of space; the process must not die: badger's
// memory-mapped files used to make a full disk a SIGBUS, which the
// component's disk guard now prevents), frees the space and waits for it
// to catch up.
func (d *diskFull) run(ctx context.Context, in *injector) error {
	n := d.n
	if !n.up() {
		return nil
	}
	filled, err := d.fill()
	if err != nil {
		return fmt.Errorf("fill %s: %w", d.mount, err)
	}
	in.logf("disk of %s full (filler %d MiB)", n, filled>>20)
	hold := in.between(3*time.Second, 6*time.Second)
	end := time.Now().Add(hold)
	reads, failed := 0, 0
	var reported, lastErr string
	crashed := false
	for time.Now().Before(end) {
		if !n.up() {
			crashed = true
			break
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		r, err := n.call(rctx, Request{Op: OpRead, Key: FirstKey})
		st, serr := n.status(rctx)
		cancel()
		switch {
		case errors.Is(err, errDown):
			crashed = true
		case err != nil || r.Err != "" || !r.Found:
			failed++
			lastErr = fmt.Sprint(err, r.Err)
		default:
			reads++
		}
		if serr == nil && st.Replica != nil && st.Replica.LastErr != "" && reported == "" &&
			strings.Contains(st.Replica.LastErr, "space") {
			reported = st.Replica.LastErr
		}
		if crashed {
			break
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
	if err := os.Remove(d.filler()); err != nil {
		return err
	}
	note := fmt.Sprintf("%s: disk full for %s: %d reads served, %d failed", n, hold.Round(time.Millisecond), reads, failed)
	if lastErr != "" {
		note += " (last: " + lastErr + ")"
	}
	if reported != "" {
		note += "; status reported: " + firstLine(reported, 160)
	} else {
		note += "; status reported no out-of-space error"
	}
	if crashed {
		note += "; the process DIED while its disk was full"
		if t := lastRun(n.logPath()); strings.Contains(t, "SIGBUS") {
			note += " (SIGBUS: badger touched an unallocated page of a memory-mapped file)"
		}
		note += "; see " + n.logPath()
	}
	in.logf("%s", note)
	in.mu.Lock()
	if failed > 0 || crashed || reported == "" {
		in.findings = append(in.findings, note)
	} else {
		in.notes = append(in.notes, note)
	}
	in.mu.Unlock()
	if crashed {
		sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		if err := n.start(sctx); err != nil {
			return err
		}
	}
	// Recovery: the replica catches up with the primary's head as of now.
	p := in.cl.currentPrimary()
	if p == nil {
		return nil
	}
	rctx, cancel := context.WithTimeout(ctx, fRecoverWait)
	defer cancel()
	pst, err := p.status(rctx)
	if err != nil {
		return nil // the primary moved: convergence is checked at the end
	}
	for {
		st, err := n.status(rctx)
		if err == nil && st.Replica != nil && st.Replica.Seq >= pst.Head && st.Replica.State == "streaming" {
			return nil
		}
		if err := sleepCtx(rctx, 50*time.Millisecond); err != nil {
			return fmt.Errorf("%s did not recover after its disk was freed (last %+v)", n, st)
		}
	}
}

// lastRun returns the log of the node's latest process (after the last
// "=== run" line the harness writes at each start).
func lastRun(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if i := strings.LastIndex(string(b), "=== run "); i >= 0 {
		b = b[i:]
	}
	return string(b)
}

func firstLine(s string, n int) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > n {
		s = s[:n] + "..."
	}
	return s
}
