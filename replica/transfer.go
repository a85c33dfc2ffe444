package replica

import (
	"fmt"
	"time"

	"github.com/replmesh/replmesh/transport"
)

// receiveSnapshot writes a full transfer into a fresh copy staged in the
// sink and switches the replica to it atomically: readers see the old
// replica until the new one is complete. The replica is StateTransferring
// from the transfer's first frame until it returns; the caller makes it
// streaming.
func (r *Replica) receiveSnapshot(recv func() (*transport.OwnerFrame, error), st *transport.Start) error {
	start := time.Now()
	f, err := recv()
	if err != nil {
		return err
	}
	if f.Kind != transport.KindSnapshotBegin {
		return fmt.Errorf("%w: expected snapshot-begin, got %s", transport.ErrBadRequest, f.Kind)
	}
	r.transferBegins(f)
	defer r.transferEnds()
	r.mu.RLock()
	cur := r.cur
	r.mu.RUnlock()
	x, err := r.sink.beginTransfer(st, f, cur)
	if err != nil {
		return err
	}
	if r.res != nil {
		x = r.res.stage(x) // the resident rows are built beside the sink's
	}
	defer x.abort()
	rows, nbytes, err := r.receiveRows(recv, f.Seq, x.put)
	if err != nil {
		return err
	}
	next, err := x.finish(cursor{LogID: st.LogID, Epoch: f.Epoch, Seq: f.Seq})
	if err != nil {
		return err
	}
	next.Time = time.Now().UnixNano()
	return r.switchTo(x, next, rows, nbytes, start)
}

// receiveRows stages the rows frames of the transfer of the snapshot at seq
// with put, counting them into the transfer's progress, until its
// snapshot-end frame; it returns the rows and key+value bytes received.
func (r *Replica) receiveRows(recv func() (*transport.OwnerFrame, error), seq uint64, put func(key, value []byte) error) (rows, nbytes uint64, err error) {
	for {
		f, err := recv()
		if err != nil {
			return 0, 0, err
		}
		switch f.Kind {
		case transport.KindRows:
			if err := r.c.disk.Admit(rowsCost(f.Rows)); err != nil {
				return 0, 0, fmt.Errorf("stage rows: %w", err)
			}
			var n uint64
			for i := range f.Rows {
				row := &f.Rows[i]
				if len(row.Key) == 0 || len(row.Key) > transport.MaxKeySize {
					return 0, 0, fmt.Errorf("%w: snapshot row with a key of %d bytes", transport.ErrBadRequest, len(row.Key))
				}
				if err := put(row.Key, row.Value); err != nil {
					return 0, 0, fmt.Errorf("stage rows: %w", err)
				}
				n += uint64(len(row.Key) + len(row.Value))
			}
			rows += uint64(len(f.Rows))
			nbytes += n
			r.transferred(uint64(len(f.Rows)), n)
		case transport.KindSnapshotEnd:
			if err := checkSnapshotEnd(f, seq, rows); err != nil {
				return 0, 0, err
			}
			return rows, nbytes, nil
		default:
			return 0, 0, fmt.Errorf("%w: unexpected %s frame during a transfer", transport.ErrBadRequest, f.Kind)
		}
	}
}

// checkSnapshotEnd refuses a transfer's end frame for another snapshot, or
// one that counts other rows than were received (a rows frame lost,
// repeated or reordered on the way): the staged copy is then dropped
// instead of going live incomplete, and the transfer starts again.
func checkSnapshotEnd(f *transport.OwnerFrame, seq, rows uint64) error {
	if f.Seq != seq {
		return fmt.Errorf("%w: snapshot-end at %d for a snapshot at %d", transport.ErrBadRequest, f.Seq, seq)
	}
	if f.Count != rows {
		return fmt.Errorf("%w: snapshot-end at %d counts %d rows, %d were received", transport.ErrBadRequest, seq, f.Count, rows)
	}
	return nil
}

// switchTo makes a finished transfer the replica's contents.
func (r *Replica) switchTo(x stagedTransfer, next cursor, rows, nbytes uint64, start time.Time) error {
	// The lock is held from before the commit until r.cur names the new
	// generation: once the commit schedules the old generation for
	// deletion, no reader may pick it (readTxn) any more.
	r.mu.Lock()
	old := r.cur
	if err := x.switchIn(old, next); err != nil {
		r.mu.Unlock()
		return fmt.Errorf("switch to transferred replica: %w", err)
	}
	took := time.Since(start)
	r.cur = next
	// The transfer is over: the replica follows the stream from here. The
	// state changes with the count under one lock, so a Status never shows
	// a completed transfer still transferring.
	r.streamingLocked()
	r.stats.fullTransfers.Add(1)
	r.stats.snapshotBytes.Add(nbytes)
	r.stats.lastTransferNs.Store(int64(took))
	close(r.seqCh)
	r.seqCh = make(chan struct{})
	select {
	case <-r.ready:
	default:
		close(r.ready)
	}
	r.mu.Unlock()
	r.c.kickDropper()
	r.log.Info("full transfer complete", "seq", next.Seq, "rows", rows, "bytes", nbytes, "took", took)
	r.notify(Event{Reset: true, Seq: next.Seq})
	return nil
}
