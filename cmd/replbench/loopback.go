package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// runLoopback measures raw TCP throughput over 127.0.0.1: one goroutine
// writes 64 KiB buffers for -loopback, another reads them. This is the
// ceiling of anything that crosses a socket on this machine.
func (b *bench) runLoopback(ctx context.Context) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	type readResult struct {
		n   int64
		end time.Time
		err error
	}
	got := make(chan readResult, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- readResult{err: err}
			return
		}
		defer c.Close()
		n, err := io.CopyBuffer(io.Discard, c, make([]byte, 64<<10))
		got <- readResult{n: n, end: time.Now(), err: err}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return err
	}
	buf := make([]byte, 64<<10)
	for i := range buf {
		buf[i] = byte(i)
	}
	start := time.Now()
	deadline := start.Add(b.opts.loopback)
	var written int64
	for time.Now().Before(deadline) && ctx.Err() == nil {
		n, err := c.Write(buf)
		written += int64(n)
		if err != nil {
			c.Close()
			return fmt.Errorf("write: %w", err)
		}
	}
	if err := c.Close(); err != nil {
		return err
	}
	r := <-got
	if r.err != nil && !errors.Is(r.err, io.EOF) {
		return fmt.Errorf("read: %w", r.err)
	}
	if r.n != written {
		return fmt.Errorf("read %d bytes, wrote %d", r.n, written)
	}
	bps := float64(r.n) / r.end.Sub(start).Seconds()
	b.add(result{
		Workload: "loopback", Figure: "TCP throughput", Value: bps, Unit: unitBytesPerSec, payloadBps: bps,
		Notes: fmt.Sprintf("one writer, 64 KiB writes, %.1f GB in %.2f s: the ceiling", float64(r.n)/1e9, r.end.Sub(start).Seconds()),
	})
	return nil
}
