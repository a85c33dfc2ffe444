package main

import (
	"context"
	"fmt"

	"github.com/replmesh/replmesh/internal/benchkit"
)

// runLoopback measures raw TCP throughput over 127.0.0.1 for -loopback
// (benchkit.Loopback, 64 KiB writes): the ceiling of anything that
// crosses a socket on this machine.
func (b *bench) runLoopback(ctx context.Context) error {
	buf := make([]byte, 64<<10)
	for i := range buf {
		buf[i] = byte(i)
	}
	r, err := benchkit.Loopback(ctx, b.opts.loopback, buf)
	if err != nil {
		return err
	}
	bps := r.BytesPerSec()
	b.add(result{
		Workload: "loopback", Figure: "TCP throughput", Value: bps, Unit: unitBytesPerSec, payloadBps: bps,
		Notes: fmt.Sprintf("one writer, 64 KiB writes, %.1f GB in %.2f s: the ceiling", float64(r.Bytes)/1e9, r.Elapsed.Seconds()),
	})
	return nil
}
