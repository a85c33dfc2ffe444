package cputime

import "testing"

// TestProcess: the CPU time grows with work done.
func TestProcess(t *testing.T) {
	before, ok := Process()
	if !ok {
		t.Skip("no process CPU time on this platform")
	}
	after := before
	x := uint64(1)
	for i := 0; after == before; i++ {
		for range 1 << 20 {
			x = x*6364136223846793005 + 1442695040888963407
		}
		after, _ = Process()
	}
	if after < before {
		t.Fatalf("CPU time went back from %v to %v (%d)", before, after, x)
	}
}
