// Package cputime reads the CPU time this process has used, for the
// benchmarks that report CPU per operation beside wall time (on a shared
// machine the wall time counts the waits for a core too) and for
// benchkit.WaitQuiet.
package cputime
