package replica

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/replmesh/replmesh/transport"
	"github.com/vmihailenco/msgpack/v5"
)

// receiveSnapshot writes a full transfer into a fresh generation and
// switches the cursor to it in one transaction: readers see the old replica
// until the new one is complete. The replica is StateTransferring from the
// transfer's first frame until it returns; the caller makes it streaming.
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
	seq, epoch := f.Seq, f.Epoch
	if r.standby != nil {
		return r.receiveStandbySnapshot(recv, st, f, start)
	}
	var gen uint64
	err = r.c.db.Update(func(txn *badger.Txn) error {
		stage, err := readStage(txn, r.base)
		if err != nil {
			return err
		}
		r.mu.RLock()
		gen = max(stage, r.cur.Gen) + 1
		r.mu.RUnlock()
		if stage > 0 && stage != r.cur.Gen {
			if err := txn.Set(dropMarker(genPrefix(r.base, stage)), nil); err != nil {
				return err
			}
		}
		return txn.Set(stageKey(r.base), binary.BigEndian.AppendUint64(nil, gen))
	})
	if err != nil {
		return fmt.Errorf("stage transfer: %w", err)
	}
	r.c.kickDropper()
	r.log.Info("full transfer begins", "seq", seq, "log_id", st.LogID, "gen", gen, "rows_expected", f.Count)
	prefix := genPrefix(r.base, gen)
	wb := r.c.db.NewWriteBatch()
	defer wb.Cancel()
	rows, nbytes, err := r.receiveRows(recv, seq, func(k, v []byte) error { return wb.Set(concat(prefix, k), v) })
	if err != nil {
		return err
	}
	if err := wb.Flush(); err != nil {
		return fmt.Errorf("stage rows: %w", err)
	}
	return r.switchTo(cursor{LogID: st.LogID, Epoch: epoch, Seq: seq, Gen: gen, Time: time.Now().UnixNano()}, rows, nbytes, start)
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
			if err := r.c.disk.admit(rowsCost(f.Rows)); err != nil {
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

// switchTo makes a completely staged generation the replica's contents.
func (r *Replica) switchTo(next cursor, rows, nbytes uint64, start time.Time) error {
	// The lock is held from before the commit until r.cur names the new
	// generation: once the commit schedules the old generation for
	// deletion, no reader may pick it (readTxn) any more.
	r.mu.Lock()
	old := r.cur
	var err error
	if r.standby == nil {
		err = r.commitSwitch(old, next)
	}
	if err != nil {
		r.mu.Unlock()
		return fmt.Errorf("switch to transferred replica: %w", err)
	}
	took := time.Since(start)
	r.cur = next
	r.stats.FullTransfers++
	r.stats.SnapshotBytes += nbytes
	r.stats.LastTransferNs = int64(took)
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

// commitSwitch writes the new cursor, ends the staging and schedules the old
// generation for deletion, in one transaction.
func (r *Replica) commitSwitch(old, next cursor) error {
	return r.c.db.Update(func(txn *badger.Txn) error {
		b, err := msgpack.Marshal(&next)
		if err != nil {
			return err
		}
		if err := txn.Set(cursorKey(r.base), b); err != nil {
			return err
		}
		if err := txn.Delete(stageKey(r.base)); err != nil {
			return err
		}
		if old.Gen != next.Gen {
			return txn.Set(dropMarker(genPrefix(r.base, old.Gen)), nil)
		}
		return nil
	})
}

// receiveStandbySnapshot is receiveSnapshot for a standby's follower: the
// rows go into the owned table (see standby.go).
func (r *Replica) receiveStandbySnapshot(recv func() (*transport.OwnerFrame, error), st *transport.Start, begin *transport.OwnerFrame, start time.Time) error {
	seq := begin.Seq
	x, err := r.standby.beginTransfer(seq)
	if err != nil {
		return err
	}
	defer x.abort()
	r.log.Info("standby full transfer begins", "seq", seq, "log_id", st.LogID, "rows_expected", begin.Count)
	rows, nbytes, err := r.receiveRows(recv, seq, x.put)
	if err != nil {
		return err
	}
	if err := x.finish(st); err != nil {
		return err
	}
	return r.switchTo(cursor{LogID: st.LogID, Epoch: begin.Epoch, Seq: seq, Time: time.Now().UnixNano()}, rows, nbytes, start)
}
