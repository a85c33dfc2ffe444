package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/replmesh/replmesh/internal/benchkit"
	"github.com/replmesh/replmesh/transport"
	"github.com/vmihailenco/msgpack/v5"
)

// The machine's limits, measured in the same run as the workloads and
// printed beside them: what crosses a socket, what encoding one change
// costs, what badger's bulk write path does.
const wlLimits = "Physical limits (same run)"

func (b *bench) limits(ctx context.Context) error {
	b.progress("limits: loopback TCP, msgpack, badger WriteBatch")
	for _, fn := range []func(context.Context) error{b.loopback, b.msgpackLimit, b.badgerLimit} {
		if err := fn(ctx); err != nil {
			return err
		}
	}
	return nil
}

// loopback: one goroutine writes 64 KiB buffers for -loopback, another
// reads them (benchkit.Loopback, as cmd/replbench's loopback workload).
func (b *bench) loopback(ctx context.Context) error {
	buf := make([]byte, 64<<10)
	copy(buf, filler)
	r, err := benchkit.Loopback(ctx, b.sz.Loopback, buf)
	if err != nil {
		// "loopback write: ...", "loopback read: ...", as before.
		return fmt.Errorf("loopback %w", err)
	}
	b.add(figure{Workload: wlLimits, Case: "loopback TCP, one stream, 64 KiB writes", Metric: "throughput", System: "limit",
		Value: r.BytesPerSec(), Unit: unitBps, Higher: true})
	return nil
}

// msgpackLimit: encode and decode one change of -value bytes (the wire
// form replmesh sends), repeated for a fixed count, on one core.
func (b *bench) msgpackLimit(context.Context) error {
	c := transport.Change{Seq: 1, Op: transport.OpPut, Key: benchkit.AppendKey(nil, 1), Value: newValue(b.sz.Value, 1), Time: time.Now().UnixNano(), TxnEnd: true, Epoch: 1}
	n := 200_000
	if b.sz.Changes < 100_000 {
		n = 20_000
	}
	start := time.Now()
	for i := range n {
		c.Seq = uint64(i)
		buf, err := msgpack.Marshal(&c)
		if err != nil {
			return fmt.Errorf("msgpack encode: %w", err)
		}
		var out transport.Change
		if err := msgpack.Unmarshal(buf, &out); err != nil {
			return fmt.Errorf("msgpack decode: %w", err)
		}
		if out.Seq != c.Seq || len(out.Value) != len(c.Value) {
			return fmt.Errorf("msgpack round trip changed the change")
		}
	}
	b.add(figure{Workload: wlLimits, Case: fmt.Sprintf("msgpack encode+decode of one %d-byte change, one core", b.sz.Value), Metric: "changes/s", System: "limit",
		Value: float64(n) / time.Since(start).Seconds(), Unit: unitRate, Higher: true})
	return nil
}

// badgerLimit: -badger_wb keys of -value bytes through one WriteBatch into
// a fresh badger on disk (default options, no sync), flushed.
func (b *bench) badgerLimit(context.Context) (err error) {
	dir, err := b.subdir("badger-limit")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, os.RemoveAll(dir)) }()
	db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil))
	if err != nil {
		return fmt.Errorf("badger: %w", err)
	}
	defer func() { err = errors.Join(err, db.Close()) }()
	wb := db.NewWriteBatch()
	start := time.Now()
	for i := range b.sz.Batch {
		if err := wb.Set(benchkit.AppendKey(nil, i), newValue(b.sz.Value, i)); err != nil {
			wb.Cancel()
			return fmt.Errorf("badger write batch: %w", err)
		}
	}
	if err := wb.Flush(); err != nil {
		return fmt.Errorf("badger write batch: %w", err)
	}
	b.add(figure{Workload: wlLimits, Case: fmt.Sprintf("badger WriteBatch, %d keys of %d bytes", b.sz.Batch, b.sz.Value), Metric: "keys/s", System: "limit",
		Value: float64(b.sz.Batch) / time.Since(start).Seconds(), Unit: unitRate, Higher: true})
	return nil
}

// mapBaseline: W4's reference, a Go map of the table's keys looked up in
// this process (the values are the 16-byte stamps: the lookup, not the
// memory, is measured).
func (b *bench) mapBaseline(ctx context.Context) error {
	m := make(map[string][]byte, b.sz.Rows)
	for i := range b.sz.Rows {
		v := make([]byte, stampSize)
		copy(v, newValue(stampSize, i))
		m[key(i)] = v
	}
	b.settleQuiet(ctx, "W4 "+sysBaseline)
	keys := b.readKeys()
	lat, err := timeReads(keys, func(i int) ([]byte, bool, error) { v, ok := m[keys[i]]; return v, ok, nil })
	if err != nil {
		return err
	}
	b.addReads(caseRead, sysBaseline, lat)
	skeys := b.sharedReadKeys()
	lat, err = timeReads(skeys, func(i int) ([]byte, bool, error) { v, ok := m[skeys[i]]; return v, ok, nil })
	if err != nil {
		return err
	}
	b.addReads(caseReadShared, sysBaseline, lat)
	return nil
}
