package main

import (
	"fmt"
	"io"
	"testing"
	"time"
)

// TestAddFanout_ShortDeliveries: replmesh must deliver every change (a
// shortfall fails the run); a peer's reader that saw fewer (a NATS KV
// watcher behind the writer gets only a key's newest value) is measured on
// what arrived, with a note.
func TestAddFanout_ShortDeliveries(t *testing.T) {
	for _, tc := range []struct {
		sys     string
		seen    int
		wantErr bool
		note    string
	}{
		{sysRMMem, 10, false, ""},
		{sysRMMem, 9, true, ""},
		{sysRMDisk, 9, true, ""},
		{sysNATS, 10, false, ""},
		{sysNATS, 7, false, "readers saw 7 of 10 deliveries"},
		{sysNATS, 0, true, ""},
		{sysRedis, 9, false, "readers saw 9 of 10 deliveries"},
	} {
		t.Run(fmt.Sprintf("%s/%d-of-10", tc.sys, tc.seen), func(t *testing.T) {
			b := &bench{sz: sizes{Changes: 10}, stderr: io.Discard}
			lat := make(latencies, tc.seen)
			for i := range lat {
				lat[i] = int64(i + 1)
			}
			start := time.Now()
			err := b.addFanout(tc.sys, 1, start, start.Add(time.Second), []latencies{lat})
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v, want error %v", err, tc.wantErr)
			}
			if tc.wantErr {
				if len(b.figs) != 0 {
					t.Fatalf("%d figures recorded from a failed run", len(b.figs))
				}
				return
			}
			if len(b.figs) == 0 || b.figs[0].Note != tc.note {
				t.Fatalf("figures %+v, want the rate noted %q", b.figs, tc.note)
			}
		})
	}
}
