package benchkit

import (
	"context"
	"runtime"

	"github.com/replmesh/replmesh/internal/cputime"
	"time"
)

// Quiet windows: the process is quiet when, over one window, it used at
// most quietShare of one core.
const (
	quietWindow = 100 * time.Millisecond
	quietShare  = 10 // percent of one core
)

// WaitQuiet waits, for at most maxWait, until this process is quiet: the
// CPU it used over a 100 ms window (all its threads: background work
// such as a database's compactions or a closed component's cleanup) is
// at most a tenth of one core. A latency measurement taken while the
// process's own background work competes for the cores measures that
// work, not the read path. It returns how long it waited and whether the
// process went quiet; where the process's CPU time cannot be read it
// returns at once, reporting quiet.
func WaitQuiet(ctx context.Context, maxWait time.Duration) (time.Duration, bool) {
	start := time.Now()
	runtime.GC()
	prev, ok := cputime.Process()
	if !ok {
		return 0, true
	}
	t := time.NewTicker(quietWindow)
	defer t.Stop()
	last := time.Now()
	for time.Since(start) < maxWait {
		select {
		case <-ctx.Done():
			return time.Since(start), false
		case <-t.C:
		}
		cpu, _ := cputime.Process()
		now := time.Now()
		if (cpu-prev)*100 <= now.Sub(last)*quietShare {
			return time.Since(start), true
		}
		prev, last = cpu, now
	}
	return time.Since(start), false
}
