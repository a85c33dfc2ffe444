package diskguard

import (
	"fmt"
	"testing"
)

func TestPolicy(t *testing.T) {
	for _, m := range []int64{1 << 20, 8 << 20, 32 << 20, 256 << 20} {
		t.Run(fmt.Sprintf("M=%d", m), func(t *testing.T) {
			p := newPolicy(m)
			// The reserve and the ballast together cover a new memtable
			// log and the flush of a full memtable twice over (one at the
			// rotation, one by Close or a flush in progress).
			if got, want := p.reserve+p.ballast, p.walAlloc+2*m; got < want {
				t.Errorf("reserve+ballast %d < %d", got, want)
			}
			// badger writes at most M plus one batch (15%% of M, plus
			// entry headers) into a memtable log of 2M.
			if p.walAlloc < m+m*15/100+m/20 || p.walAlloc > 2*m {
				t.Errorf("walAlloc %d", p.walAlloc)
			}
			if p.vlogAhead < 2*p.refreshBytes {
				t.Errorf("value log window %d smaller than two measurements apart (%d)", p.vlogAhead, 2*p.refreshBytes)
			}
			if got, want := p.reserveFor(false), p.reserve+p.walAlloc+p.vlogAhead+p.ballast; got != want {
				t.Errorf("reserve without fallocate %d, want %d", got, want)
			}
		})
	}
}

// TestCost_SmallEntry: a small entry of the caller's (a cursor, a meta)
// costs exactly the overhead bound, outside the value log.
func TestCost_SmallEntry(t *testing.T) {
	var w Cost
	w.Add(0, 0, 1)
	if got, want := w, (Cost{n: entryOverhead}); got != want {
		t.Errorf("Add(0, 0, 1) = %+v, want %+v", got, want)
	}
}

func TestCost(t *testing.T) {
	small := make([]byte, 100)
	large := make([]byte, ValueThreshold)
	tests := []struct {
		name     string
		klen     int
		value    []byte
		copies   int
		wantVlog bool
	}{
		{"small value stays in the LSM", 10, small, 1, false},
		{"value at the threshold goes to the value log", 10, large, 1, true},
		{"an owner writes twice", 10, large, 2, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var w Cost
			w.Add(tc.klen, len(tc.value), tc.copies)
			if min := int64(tc.copies * (tc.klen + len(tc.value))); w.n < min {
				t.Errorf("n %d < %d", w.n, min)
			}
			if got := w.vlog > 0; got != tc.wantVlog {
				t.Errorf("vlog %d, want value log %v", w.vlog, tc.wantVlog)
			}
			if tc.wantVlog && w.vlog != w.n {
				t.Errorf("vlog %d != n %d for a value log write", w.vlog, w.n)
			}
		})
	}
}
