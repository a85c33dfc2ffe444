//go:build !linux

package cputime

import "time"

// Machine is the CPU time all of the machine's processes have used:
// unknown here.
func Machine() (d time.Duration, ok bool) { return 0, false }
