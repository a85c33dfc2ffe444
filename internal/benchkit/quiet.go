package benchkit

import (
	"context"
	"time"

	"github.com/replmesh/replmesh/internal/cputime"
)

// Quiet windows: the machine is quiet when, over one window, all its
// processes together used at most quietShare percent of one core. The
// window is long enough for /proc/stat's 10 ms tick to resolve that.
const (
	quietWindow = 250 * time.Millisecond
	quietShare  = 10
)

// WaitQuiet waits, for at most maxWait, until the machine is quiet: the
// CPU all its processes used over a 250 ms window is at most a tenth of
// one core. A measurement taken while background work competes for the
// cores (a database's compactions after a bulk load, a closed
// component's cleanup, a peer server's log rewrite in a child process)
// measures that work, not the case. Where the machine's CPU time cannot
// be read it watches this process's alone; where neither can be, it
// returns at once, reporting quiet. It returns how long it waited and
// whether the machine went quiet.
func WaitQuiet(ctx context.Context, maxWait time.Duration) (time.Duration, bool) {
	src := cputime.Machine
	if _, ok := src(); !ok {
		src = cputime.Process
	}
	return waitQuiet(ctx, maxWait, quietWindow, src)
}

// waitQuiet is WaitQuiet over the CPU time cpu reads, in windows of
// window.
func waitQuiet(ctx context.Context, maxWait, window time.Duration, cpu func() (time.Duration, bool)) (time.Duration, bool) {
	start := time.Now()
	prev, ok := cpu()
	if !ok {
		return 0, true
	}
	t := time.NewTicker(window)
	defer t.Stop()
	last := start
	for time.Since(start) < maxWait {
		select {
		case <-ctx.Done():
			return time.Since(start), false
		case <-t.C:
		}
		used, _ := cpu()
		now := time.Now()
		if (used-prev)*100 <= now.Sub(last)*quietShare {
			return time.Since(start), true
		}
		prev, last = used, now
	}
	return time.Since(start), false
}
