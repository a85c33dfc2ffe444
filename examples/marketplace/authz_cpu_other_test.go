//go:build !unix

package main

import "time"

// processCPU is unknown here: BenchmarkAuthz/Decisions divides by
// GOMAXPROCS instead.
func processCPU() (time.Duration, bool) { return 0, false }
