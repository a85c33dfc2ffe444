package testutil

import "runtime/metrics"

// HeapAllocated returns the bytes allocated on the heap so far, for fuzz
// targets that bound what a decoder or parser allocates per input byte.
// Large allocations are counted at once, small ones up to a few pages
// late, which is precise enough to catch code that trusts a length claim.
func HeapAllocated() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}
