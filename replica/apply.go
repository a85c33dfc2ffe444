package replica

import (
	"fmt"
	"time"

	"github.com/replmesh/replmesh/transport"
)

// applyDelta applies a pull's coalesced delta atomically: the replica goes
// from its seq straight to the delta's, with the latest value of every key
// changed in between.
func (r *Replica) applyDelta(f *transport.OwnerFrame) error {
	r.mu.RLock()
	cur := r.cur
	r.mu.RUnlock()
	if len(r.pending) > 0 {
		return fmt.Errorf("%w: delta while a commit group is incomplete", transport.ErrBadRequest)
	}
	if f.Epoch < cur.Epoch {
		return fmt.Errorf("%w: delta of epoch %d, replica is at epoch %d", ErrStaleEpoch, f.Epoch, cur.Epoch)
	}
	if f.Seq < cur.Seq {
		return fmt.Errorf("%w: delta up to seq %d, replica holds %d", transport.ErrBadRequest, f.Seq, cur.Seq)
	}
	var prev uint64
	for i := range f.Changes {
		ch := &f.Changes[i]
		if err := ch.Validate(); err != nil {
			return err
		}
		if ch.Seq <= cur.Seq || ch.Seq > f.Seq || ch.Seq <= prev {
			return fmt.Errorf("%w: delta change at seq %d outside (%d, %d] or out of order", transport.ErrBadRequest, ch.Seq, cur.Seq, f.Seq)
		}
		if ch.Epoch < cur.Epoch || ch.Epoch > f.Epoch {
			return fmt.Errorf("%w: delta change %d of epoch %d (replica %d, owner %d)", ErrStaleEpoch, ch.Seq, ch.Epoch, cur.Epoch, f.Epoch)
		}
		prev = ch.Seq
	}
	if len(f.Changes) == 0 {
		if f.Seq != cur.Seq {
			return fmt.Errorf("%w: empty delta up to seq %d, replica holds %d", transport.ErrBadRequest, f.Seq, cur.Seq)
		}
		r.mu.Lock()
		if cur.Seq >= r.ownerHead {
			r.caughtUpLocked()
		}
		r.mu.Unlock()
		return nil
	}
	if last := f.Changes[len(f.Changes)-1].Seq; last != f.Seq {
		return fmt.Errorf("%w: delta up to seq %d ends with change %d", transport.ErrBadRequest, f.Seq, last)
	}
	return r.apply(f.Changes)
}

// applyFrame checks a batch of changes against the replica's position and
// applies every complete commit group in it; a group split across frames
// waits in r.pending for its end. It reports whether anything was applied.
func (r *Replica) applyFrame(f *transport.OwnerFrame) (bool, error) {
	r.mu.RLock()
	cur := r.cur
	r.mu.RUnlock()
	if f.Epoch < cur.Epoch {
		return false, fmt.Errorf("%w: changes of epoch %d, replica is at epoch %d", ErrStaleEpoch, f.Epoch, cur.Epoch)
	}
	last, lastEpoch := cur.Seq, cur.Epoch
	if n := len(r.pending); n > 0 {
		last, lastEpoch = r.pending[n-1].Seq, r.pending[n-1].Epoch
	}
	// Changes at or below last were received before (a resent prefix):
	// skip them. The rest must continue last with no gap.
	fresh := f.Changes
	for len(fresh) > 0 && fresh[0].Seq <= last {
		fresh = fresh[1:]
		r.stats.duplicates.Add(1)
	}
	for i := range fresh {
		ch := &fresh[i]
		if err := ch.Validate(); err != nil {
			return false, err
		}
		if ch.Seq != last+1 {
			return false, fmt.Errorf("%w: got seq %d after %d", ErrGap, ch.Seq, last)
		}
		if ch.Epoch < lastEpoch {
			return false, fmt.Errorf("%w: change %d of epoch %d follows epoch %d", ErrStaleEpoch, ch.Seq, ch.Epoch, lastEpoch)
		}
		if ch.Epoch > f.Epoch {
			return false, fmt.Errorf("%w: change %d of epoch %d in a frame of epoch %d", transport.ErrBadRequest, ch.Seq, ch.Epoch, f.Epoch)
		}
		last, lastEpoch = ch.Seq, ch.Epoch
	}
	// The batch to apply is the pending tail of an earlier frame plus this
	// frame's changes. Its backing array is handed to OnChange callbacks,
	// so it is never reused afterwards.
	batch := fresh
	if len(r.pending) > 0 {
		batch = append(r.pending, fresh...)
		r.pending = nil
	}
	end := -1
	for i := len(batch) - 1; i >= 0; i-- {
		if batch[i].TxnEnd {
			end = i
			break
		}
	}
	if end < len(batch)-1 {
		r.pending = append([]transport.Change(nil), batch[end+1:]...)
	}
	if end < 0 {
		return false, nil
	}
	// Commit in pieces of about 1 MiB, each ending on a commit-group
	// boundary, to stay far under badger's transaction size limit.
	for from := 0; from <= end; {
		to, size := from, 0
		for ; to <= end; to++ {
			size += batch[to].Size()
			if batch[to].TxnEnd && size >= 1<<20 {
				break
			}
		}
		if to > end {
			to = end
		}
		if err := r.apply(batch[from : to+1 : to+1]); err != nil {
			// Nothing of this piece is durable; the stream restarts from
			// the cursor, so the received remainder is dropped too.
			r.pending = nil
			return false, err
		}
		from = to + 1
	}
	return true, nil
}

// apply writes changes (whole commit groups, in seq order, continuing the
// cursor) and the new cursor into the sink atomically, then wakes waiters
// and calls the OnChange callbacks.
func (r *Replica) apply(chs []transport.Change) error {
	r.mu.RLock()
	next := r.cur
	r.mu.RUnlock()
	lastCh := chs[len(chs)-1]
	next.Seq, next.Time, next.Epoch = lastCh.Seq, lastCh.Time, lastCh.Epoch
	cost := changesCost(chs, r.sink.copies())
	cost.Add(0, 0, 1) // the cursor or meta: a small entry
	if err := r.c.disk.Admit(cost); err != nil {
		return fmt.Errorf("apply %s: %w", r.opts.Table, err)
	}
	if err := r.sink.apply(next, chs); err != nil {
		return err
	}
	if r.res != nil {
		// Write-ahead: the sink holds the batch (durably, for a durable
		// replica) before readers can see it.
		r.res.apply(next, chs)
	}
	return r.applied(next, chs)
}

// applied publishes a durable apply: the cursor, waiters, callbacks.
func (r *Replica) applied(next cursor, chs []transport.Change) error {
	r.mu.Lock()
	r.cur = next
	r.stats.applied.Add(uint64(len(chs)))
	if next.Seq >= r.ownerHead {
		r.caughtUpLocked()
	}
	close(r.seqCh)
	r.seqCh = make(chan struct{})
	r.mu.Unlock()
	r.cbMu.RLock()
	callbacks := len(r.cbs) > 0
	r.cbMu.RUnlock()
	if callbacks {
		// A decoded key's capacity covers its value (transport.RowBytes),
		// which a resident replica keeps as its row: a callback appending
		// to the key must get a copy, not write over the row's value.
		for i := range chs {
			k := chs[i].Key
			chs[i].Key = k[:len(k):len(k)]
		}
		r.notify(Event{Seq: next.Seq, Changes: chs})
	}
	return nil
}

// caughtUpLocked notes that the replica holds the owner's head now; r.mu
// is held. Its stream's catch-up is over (behind).
func (r *Replica) caughtUpLocked() {
	r.caughtUpAt = time.Now()
	r.catchingUp = false
}

// behind reports whether the replica, applying up to seq, is catching up:
// its stream has not held the owner's head since it began, and seq is
// below the head. A durable replica's WAL puts its checkpoints off while
// it is (ckptDue).
func (r *Replica) behind(seq uint64) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.catchingUp && seq < r.ownerHead
}
