package benchkit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// LoopbackResult is one loopback TCP measurement.
type LoopbackResult struct {
	Bytes   int64         // bytes written and read
	Elapsed time.Duration // from the first write to the reader's end of stream
}

// BytesPerSec is the throughput: Bytes over Elapsed.
func (r LoopbackResult) BytesPerSec() float64 {
	return float64(r.Bytes) / r.Elapsed.Seconds()
}

// Loopback measures raw TCP throughput over 127.0.0.1: one goroutine
// writes buf again and again for d (or until ctx ends), another reads
// everything into io.Discard through a 64 KiB buffer. This is the ceiling
// of anything that crosses a socket on this machine. It fails when the
// reader did not receive every byte written.
func Loopback(ctx context.Context, d time.Duration, buf []byte) (LoopbackResult, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return LoopbackResult{}, err
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
		return LoopbackResult{}, err
	}
	start := time.Now()
	deadline := start.Add(d)
	var written int64
	for time.Now().Before(deadline) && ctx.Err() == nil {
		n, err := c.Write(buf)
		written += int64(n)
		if err != nil {
			c.Close()
			return LoopbackResult{}, fmt.Errorf("write: %w", err)
		}
	}
	if err := c.Close(); err != nil {
		return LoopbackResult{}, err
	}
	r := <-got
	if r.err != nil && !errors.Is(r.err, io.EOF) {
		return LoopbackResult{}, fmt.Errorf("read: %w", r.err)
	}
	if r.n != written {
		return LoopbackResult{}, fmt.Errorf("read %d bytes, wrote %d", r.n, written)
	}
	return LoopbackResult{Bytes: r.n, Elapsed: r.end.Sub(start)}, nil
}
