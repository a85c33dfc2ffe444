package replica

import (
	"context"
	"fmt"
	"slices"
	"sync"
)

// Synchronous standbys (Config.MinSyncStandbys): the primary tracks, per
// table, the seq each connected standby has acknowledged as durable; the
// sync watermark is the MinSyncStandbys-th highest. A write returns once
// the watermark reaches its seq, so an acknowledged write is on that many
// standbys and survives the loss of the primary.

// syncState is one table's view of its standbys.
type syncState struct {
	mu    sync.Mutex
	acks  map[*sender]uint64 // connected standby streams and their acked seq
	mark  uint64             // the watermark; never goes down
	moved chan struct{}      // closed and replaced when mark moves
}

func newSyncState() *syncState {
	return &syncState{acks: map[*sender]uint64{}, moved: make(chan struct{})}
}

// track registers a standby stream (ack 0 until it acknowledges).
func (s *syncState) track(snd *sender) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.acks[snd] = 0
}

// untrack forgets a standby stream that ended.
func (s *syncState) untrack(snd *sender) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.acks, snd)
}

// ack records that a standby holds seq durably and, when leased (the
// primary's lease holds, see lease.go), moves the watermark. Without the
// lease the acknowledgement is kept but the watermark stays: a change
// confirmed then is neither acknowledged to its writer nor sent to
// consumers, since another standby may be promoted without it.
func (s *syncState) ack(snd *sender, seq uint64, need int, leased bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.acks[snd]; !ok || seq <= s.acks[snd] {
		return
	}
	s.acks[snd] = seq
	if leased {
		s.advanceLocked(need)
	}
}

// advance moves the watermark to what the standbys have acknowledged, once
// the lease holds again.
func (s *syncState) advance(need int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.advanceLocked(need)
}

func (s *syncState) advanceLocked(need int) {
	if need <= 0 || len(s.acks) < need {
		return
	}
	seqs := make([]uint64, 0, len(s.acks))
	for _, a := range s.acks {
		seqs = append(seqs, a)
	}
	slices.Sort(seqs)
	if m := seqs[len(seqs)-need]; m > s.mark {
		s.mark = m
		close(s.moved)
		s.moved = make(chan struct{})
	}
}

// visible caps head at the watermark: what consumers may be sent (see
// sender.capHead). The channel is closed when the watermark moves.
func (s *syncState) visible(head uint64) (uint64, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return min(head, s.mark), s.moved
}

// reset starts the watermark afresh at mark: a table that becomes primary
// (again) must not trust acknowledgements of another history. Standby
// streams still connected are forgotten too; they reconnect to the primary.
func (s *syncState) reset(mark uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.acks)
	s.mark = mark
	close(s.moved)
	s.moved = make(chan struct{})
}

// standbys is the number of connected standby streams.
func (s *syncState) standbys() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.acks)
}

// wait blocks until the watermark reaches seq.
func (s *syncState) wait(ctx context.Context, done <-chan struct{}, seq uint64) error {
	for {
		s.mu.Lock()
		mark, moved := s.mark, s.moved
		s.mu.Unlock()
		if mark >= seq {
			return nil
		}
		select {
		case <-moved:
		case <-ctx.Done():
			return ctx.Err()
		case <-done:
			return ErrClosed
		}
	}
}

// waitConfirmed blocks until the sync watermark reaches seq, for at most
// SyncTimeout.
func (t *OwnedTable) waitConfirmed(ctx context.Context, seq uint64) error {
	ctx, cancel := context.WithTimeout(ctx, t.c.cfg.SyncTimeout)
	defer cancel()
	return t.sync.wait(ctx, t.c.done(), seq)
}

// syncWait waits, for a committed write, until MinSyncStandbys standbys
// hold it, bounded by SyncTimeout.
func (t *OwnedTable) syncWait(ctx context.Context, seq uint64) error {
	need := t.c.cfg.MinSyncStandbys
	if need <= 0 {
		return nil
	}
	if err := t.waitConfirmed(ctx, seq); err != nil {
		return fmt.Errorf("%w: seq %d of %s is committed on the primary but not confirmed by %d standby(s): %v",
			ErrNotReplicated, seq, t.name, need, err)
	}
	// Confirmed, but by now another standby may have been promoted: only
	// a lease still held makes the acknowledgement true.
	if err := t.c.checkLease(t.name); err != nil {
		return fmt.Errorf("%w: seq %d of %s is committed and confirmed by %d standby(s), but %w",
			ErrNotReplicated, seq, t.name, need, err)
	}
	return nil
}

// checkStandbys refuses a write up front when fewer standbys than
// MinSyncStandbys are connected: nothing is written.
func (t *OwnedTable) checkStandbys() error {
	need := t.c.cfg.MinSyncStandbys
	if need <= 0 {
		return nil
	}
	if n := t.sync.standbys(); n < need {
		return fmt.Errorf("%w: %d standby(s) connected to %s, %d required (min_sync_standbys); nothing was written",
			ErrNotReplicated, n, t.name, need)
	}
	if err := t.c.checkLease(t.name); err != nil {
		return fmt.Errorf("%w; nothing was written", err)
	}
	return nil
}
