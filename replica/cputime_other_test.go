//go:build !unix

package replica

import "time"

// processCPU is the CPU time the process has used: unknown here.
func processCPU() (time.Duration, bool) { return 0, false }
