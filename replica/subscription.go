package replica

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/replmesh/replmesh/modes"
	"github.com/replmesh/replmesh/transport"
	"github.com/vmihailenco/msgpack/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// loop keeps one stream to the owner open, reconnecting with jittered
// exponential backoff; the backoff restarts after a stream that made
// progress, unless it ended because the data dir is short of space: then
// the replica backs off (serving reads, reporting ErrDiskFull) until the
// disk guard admits writes again, and resumes from its seq.
func (r *Replica) loop() {
	defer r.c.wg.Done()
	defer close(r.done)
	defer r.setState(StateClosed, nil)
	backoff := r.c.cfg.ReconnectMin
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			r.mu.Lock()
			r.stats.Reconnects++
			r.mu.Unlock()
		}
		progressed, err := r.session()
		if r.ctx.Err() != nil {
			return
		}
		diskFull := errors.Is(err, ErrDiskFull)
		if progressed && !diskFull {
			backoff = r.c.cfg.ReconnectMin
		}
		r.mu.Lock()
		r.lastErr = err
		if r.state != StateDiverged {
			r.state = StateConnecting
		}
		r.mu.Unlock()
		var spaceBack <-chan struct{}
		if diskFull {
			spaceBack = r.c.disk.waitCh()
			r.log.Debug("cannot apply: data dir short of space; retrying", "err", err, "backoff", backoff)
		} else {
			r.log.Info("stream ended; reconnecting", "err", err, "backoff", backoff)
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-r.kick:
			t.Stop()
		case <-spaceBack:
			t.Stop()
		case <-r.ctx.Done():
			t.Stop()
			return
		}
		backoff = min(2*backoff, r.c.cfg.ReconnectMax)
	}
}

// session runs one stream: open, resume or full transfer, then changes
// until the stream fails. progressed reports whether it got past the start.
func (r *Replica) session() (progressed bool, err error) {
	// No stream while nothing received could be written.
	if err := r.c.disk.admit(writeCost{}); err != nil {
		return false, fmt.Errorf("apply %s: %w", r.opts.Table, err)
	}
	ctx, cancel := context.WithCancel(r.ctx)
	defer cancel()
	addr, minEpoch, err := r.resolve()
	if err != nil {
		return false, err
	}
	r.mu.Lock()
	r.sessAddr, r.sessCancel = addr, cancel
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.sessAddr, r.sessCancel = "", nil
		r.mu.Unlock()
	}()
	conn, err := r.c.conn(addr)
	if err != nil {
		return false, err
	}
	stream, err := transport.NewReplicationClient(conn).Subscribe(ctx)
	if err != nil {
		return false, err
	}
	// Watchdog: an owner that says nothing for PeerTimeout (it heartbeats
	// far more often) is gone; drop the stream. Only the time spent waiting
	// for the owner counts: the time this replica takes to write what it
	// received (a slow disk, a large transfer chunk) must not look like a
	// silent owner, or a slow replica could restart a full transfer forever.
	watchdog := time.AfterFunc(r.c.cfg.PeerTimeout, cancel)
	defer watchdog.Stop()
	recv := func() (*transport.OwnerFrame, error) {
		watchdog.Reset(r.c.cfg.PeerTimeout)
		f, err := stream.Recv()
		watchdog.Stop()
		if err != nil {
			if ctx.Err() != nil && r.ctx.Err() == nil {
				return nil, fmt.Errorf("%w: no frame from owner for %s", transport.ErrUnavailable, r.c.cfg.PeerTimeout)
			}
			return nil, transport.FromStatus(err)
		}
		r.mu.Lock()
		if f.HeadSeq > r.ownerHead {
			r.ownerHead = f.HeadSeq
		}
		if r.state == StateStreaming && r.cur.Seq >= f.HeadSeq {
			r.caughtUpAt = time.Now()
		}
		r.mu.Unlock()
		return f, nil
	}

	r.mu.RLock()
	cur, accept, mode := r.cur, r.accept, r.modes.effective
	r.mu.RUnlock()
	err = stream.Send(&transport.ConsumerFrame{Kind: transport.KindOpen, Open: &transport.Open{
		Version: transport.ProtocolVersion, Service: r.c.cfg.Service, Instance: r.c.cfg.Instance,
		Table: r.opts.Table, LogID: cur.LogID, Seq: cur.Seq, Epoch: cur.Epoch, Mode: mode,
		Standby: r.standby != nil,
	}})
	if err != nil {
		return false, transport.FromStatus(err)
	}
	f, err := recv()
	if err != nil {
		return false, err
	}
	if f.Kind != transport.KindStart || f.Start == nil {
		return false, fmt.Errorf("%w: owner's first frame is %s, want start", transport.ErrBadRequest, f.Kind)
	}
	st := f.Start
	if err := transport.CheckVersion(st.Version); err != nil {
		return false, err
	}
	ownerMode, _ := modes.ParseMode(st.Mode)
	r.mu.Lock()
	r.ownerHead = st.HeadSeq
	r.modes.ownerDefault = ownerMode
	modeChanged := r.resolveModesLocked(time.Now(), "owner's table default "+orNone(st.Mode))
	r.mu.Unlock()
	if modeChanged {
		r.kickMode() // sent by control once the stream runs
	}
	if st.Epoch < minEpoch {
		// The broker knows a newer primary: this one was deposed.
		return false, fmt.Errorf("%w: owner at %s is at epoch %d, the broker's primary is at epoch %d", ErrStaleEpoch, addr, st.Epoch, minEpoch)
	}
	if cur.LogID != "" && !accept {
		if st.Epoch < cur.Epoch {
			return false, fmt.Errorf("%w: owner is at epoch %d, replica at %d", ErrStaleEpoch, st.Epoch, cur.Epoch)
		}
		if !st.Resume {
			diverged := false
			switch {
			case st.LogID != cur.LogID:
				// A new history: taken with a full transfer, unless it is
				// shorter than what the replica holds (the owner lost its
				// data): then keep serving and wait.
				diverged = st.HeadSeq < cur.Seq
			case cur.Seq >= epochEnd(st.Epochs, cur.Epoch):
				// The replica holds changes of its epoch past the point
				// where that epoch ended in the owner's history: they were
				// written by a deposed primary (or lost by an owner that
				// restarted) and are not part of the history any more.
				r.mu.Lock()
				r.stats.Truncations++
				r.mu.Unlock()
				r.log.Warn("replica holds changes the owner's history does not; replacing it with a full transfer",
					"replica_seq", cur.Seq, "replica_epoch", cur.Epoch, "epoch_ended_at", epochEnd(st.Epochs, cur.Epoch)-1, "owner_epoch", st.Epoch)
			default:
				diverged = st.HeadSeq < cur.Seq
			}
			if diverged {
				derr := &DivergedError{Table: r.opts.Table, ReplicaLogID: cur.LogID, ReplicaSeq: cur.Seq, OwnerLogID: st.LogID, OwnerHead: st.HeadSeq}
				r.mu.Lock()
				r.state = StateDiverged
				r.mu.Unlock()
				r.log.Error("owner history diverged; keeping the replica", "err", derr)
				return false, derr
			}
		}
	}
	if st.Resume {
		if st.LogID != cur.LogID {
			return false, fmt.Errorf("%w: owner resumes log %s, replica has %s", transport.ErrBadRequest, st.LogID, cur.LogID)
		}
		r.mu.Lock()
		r.stats.Resumes++
		r.mu.Unlock()
		r.streaming()
		r.log.Info("resumed", "seq", cur.Seq, "owner_head", st.HeadSeq)
	} else {
		r.setState(StateTransferring, nil)
		if err := r.receiveSnapshot(recv, st); err != nil {
			return false, err
		}
		r.mu.Lock()
		r.accept = r.standby != nil // a standby always takes its primary's history
		r.mu.Unlock()
		r.streaming()
	}
	r.pending = nil
	r.mu.Lock()
	r.modes.stream = stream
	r.mu.Unlock()
	ctlDone := make(chan struct{})
	go func() { defer close(ctlDone); r.control(ctx, cancel) }()
	defer func() {
		cancel()
		<-ctlDone
		r.mu.Lock()
		r.modes.stream = nil
		r.mu.Unlock()
	}()
	if err := r.ack(stream); err != nil {
		return true, err
	}
	for {
		f, err := recv()
		if err != nil {
			return true, err
		}
		if f.Rate > 0 || f.Kind == transport.KindHeartbeat {
			r.mu.Lock()
			r.modes.ownerRate = f.Rate
			r.mu.Unlock()
		}
		switch f.Kind {
		case transport.KindDelta:
			if err := r.applyDelta(f); err != nil {
				return true, err
			}
			r.pulled()
			if err := r.ack(stream); err != nil {
				return true, err
			}
		case transport.KindSnapshotBegin:
			// A pull answered with a full transfer (the consumer was behind
			// the log, or the delta was too large).
			first := f
			if err := r.receiveSnapshot(func() (*transport.OwnerFrame, error) {
				if first != nil {
					f, first = first, nil
					return f, nil
				}
				return recv()
			}, st); err != nil {
				return true, err
			}
			r.streaming()
			r.pulled()
			if err := r.ack(stream); err != nil {
				return true, err
			}
		case transport.KindChanges:
			applied, err := r.applyFrame(f)
			if err != nil {
				return true, err
			}
			if applied {
				if err := r.ack(stream); err != nil {
					return true, err
				}
			}
		case transport.KindHeartbeat:
			if err := r.ack(stream); err != nil {
				return true, err
			}
		default:
			return true, fmt.Errorf("%w: unexpected %s frame from owner", transport.ErrBadRequest, f.Kind)
		}
	}
}

func (r *Replica) ack(stream transport.SubscribeClient) error {
	r.mu.RLock()
	seq := r.cur.Seq
	r.mu.RUnlock()
	r.sendMu.Lock()
	defer r.sendMu.Unlock()
	return transport.FromStatus(stream.Send(&transport.ConsumerFrame{Kind: transport.KindAck, Seq: seq}))
}

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
			r.caughtUpAt = time.Now()
		}
		r.mu.Unlock()
		return nil
	}
	if last := f.Changes[len(f.Changes)-1].Seq; last != f.Seq {
		return fmt.Errorf("%w: delta up to seq %d ends with change %d", transport.ErrBadRequest, f.Seq, last)
	}
	return r.apply(f.Changes)
}

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
		r.mu.Lock()
		r.stats.Duplicates++
		r.mu.Unlock()
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
// cursor) and the new cursor in one transaction, then wakes waiters and
// calls the OnChange callbacks.
func (r *Replica) apply(chs []transport.Change) error {
	r.mu.RLock()
	next := r.cur
	r.mu.RUnlock()
	lastCh := chs[len(chs)-1]
	next.Seq, next.Time, next.Epoch = lastCh.Seq, lastCh.Time, lastCh.Epoch
	copies := 1 // a replica's rows
	if r.standby != nil {
		copies = 2 // a standby's rows and log entries
	}
	cost := changesCost(chs, copies)
	cost.n += entryOverhead // the cursor or meta
	if err := r.c.disk.admit(cost); err != nil {
		return fmt.Errorf("apply %s: %w", r.opts.Table, err)
	}
	if r.standby != nil {
		if err := r.standby.applyReplicated(chs); err != nil {
			return fmt.Errorf("apply %s on the standby: %w", r.opts.Table, err)
		}
		return r.applied(next, chs)
	}
	prefix := genPrefix(r.base, next.Gen)
	txn := r.c.db.NewTransaction(true)
	defer txn.Discard()
	for i := range chs {
		ch := &chs[i]
		var err error
		if ch.Op == transport.OpDelete {
			err = txn.Delete(concat(prefix, ch.Key))
		} else {
			err = txn.Set(concat(prefix, ch.Key), ch.Value)
		}
		if err != nil {
			return fmt.Errorf("apply %s: %w", r.opts.Table, err)
		}
	}
	b, err := msgpack.Marshal(&next)
	if err != nil {
		return err
	}
	if err := txn.Set(cursorKey(r.base), b); err != nil {
		return fmt.Errorf("apply %s: %w", r.opts.Table, err)
	}
	if err := txn.Commit(); err != nil {
		return fmt.Errorf("apply %s: %w", r.opts.Table, err)
	}
	return r.applied(next, chs)
}

// applied publishes a durable apply: the cursor, waiters, callbacks.
func (r *Replica) applied(next cursor, chs []transport.Change) error {
	r.mu.Lock()
	r.cur = next
	r.stats.Applied += uint64(len(chs))
	if next.Seq >= r.ownerHead {
		r.caughtUpAt = time.Now()
	}
	close(r.seqCh)
	r.seqCh = make(chan struct{})
	r.mu.Unlock()
	r.notify(Event{Seq: next.Seq, Changes: chs})
	return nil
}

func beUint64(b []byte) uint64 { return binary.BigEndian.Uint64(b) }

// dropMarker is the key that schedules the deletion of every key under
// prefix (an abandoned or replaced replica generation).
func dropMarker(prefix []byte) []byte { return concat([]byte("x/drop/"), prefix) }

// kickDropper wakes the background deleter of replaced generations.
func (c *Component) kickDropper() {
	select {
	case c.dropKick <- struct{}{}:
	default:
	}
}

// dropLoop deletes the generations named by drop markers, in the background
// so a full transfer's switch never waits for the old copy's deletion.
func (c *Component) dropLoop() {
	defer c.wg.Done()
	for {
		select {
		case <-c.dropKick:
		case <-c.done():
			return
		}
		if err := c.dropMarked(); err != nil && c.ctx.Err() == nil {
			c.log.Error("delete replaced replica generation", "err", err)
		}
	}
}

func (c *Component) dropMarked() error {
	var prefixes [][]byte
	err := c.db.View(func(txn *badger.Txn) error {
		o := badger.DefaultIteratorOptions
		o.Prefix = []byte("x/drop/")
		o.PrefetchValues = false
		it := txn.NewIterator(o)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			prefixes = append(prefixes, it.Item().KeyCopy(nil)[len("x/drop/"):])
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, p := range prefixes {
		if err := c.deletePrefix(p); err != nil {
			return err
		}
		if err := c.db.Update(func(txn *badger.Txn) error { return txn.Delete(dropMarker(p)) }); err != nil {
			return err
		}
	}
	return nil
}

func (c *Component) deletePrefix(p []byte) error {
	for {
		var keys [][]byte
		err := c.db.View(func(txn *badger.Txn) error {
			o := badger.DefaultIteratorOptions
			o.Prefix = p
			o.PrefetchValues = false
			it := txn.NewIterator(o)
			defer it.Close()
			for it.Rewind(); it.Valid() && len(keys) < 10000; it.Next() {
				keys = append(keys, it.Item().KeyCopy(nil))
			}
			return nil
		})
		if err != nil || len(keys) == 0 {
			return err
		}
		var cost writeCost
		for _, k := range keys {
			cost.add(len(k), 0, 1)
		}
		if err := c.disk.admit(cost); err != nil {
			return err // the marker stays: retried when space is back
		}
		wb := c.db.NewWriteBatch()
		for _, k := range keys {
			if err := wb.Delete(k); err != nil {
				wb.Cancel()
				return err
			}
		}
		if err := wb.Flush(); err != nil {
			return err
		}
		if c.ctx.Err() != nil {
			return c.ctx.Err()
		}
	}
}

// conn returns the shared client connection to addr.
func (c *Component) conn(addr string) (*grpc.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	if cc, ok := c.conns[addr]; ok {
		return cc, nil
	}
	// gRPC's own connection backoff (1s growing to 120s by default) would
	// otherwise decide when a restarted owner is noticed, whatever
	// ReconnectMin/Max say: bind it to them.
	cc, err := transport.Dial(addr, c.cfg.Transport, grpc.WithConnectParams(grpc.ConnectParams{
		Backoff: backoff.Config{
			BaseDelay:  c.cfg.ReconnectMin,
			Multiplier: 1.6,
			Jitter:     0.2,
			MaxDelay:   c.cfg.ReconnectMax,
		},
		MinConnectTimeout: 20 * time.Second,
	}))
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	c.conns[addr] = cc
	return cc, nil
}

// resolve returns the address of the owner to stream from, and the lowest
// epoch that owner may have: the configured address, or the primary the
// broker names (with its epoch).
func (r *Replica) resolve() (string, uint64, error) {
	if r.opts.Addr != "" {
		return r.opts.Addr, 0, nil
	}
	so, ok := r.c.serviceOwner(r.opts.Service)
	if !ok || so.Primary.Addr == "" {
		return "", 0, fmt.Errorf("%w: no primary of service %s is known (waiting for a broker)", transport.ErrUnavailable, r.opts.Service)
	}
	if so.Primary.Instance == r.c.cfg.Instance {
		return "", 0, fmt.Errorf("%w: this instance is the primary of %s", transport.ErrUnavailable, r.opts.Service)
	}
	return so.Primary.Addr, so.Epoch, nil
}

// redirect drops the current stream if it goes to another address than the
// one the topology now names, and cuts a backoff short.
func (r *Replica) redirect() {
	addr, _, err := r.resolve()
	r.mu.Lock()
	if r.sessCancel != nil && (err != nil || addr != r.sessAddr) {
		r.sessCancel()
	}
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}
