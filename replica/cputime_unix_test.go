//go:build unix

package replica

import (
	"syscall"
	"time"
)

// processCPU is the CPU time (user and system) the process has used; ok
// is false where it cannot be read. Benchmarks report CPU per operation
// beside wall time: on a shared machine the wall time counts the waits
// for a core too.
func processCPU() (time.Duration, bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}
