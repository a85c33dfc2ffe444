package replica

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/replmesh/replmesh/modes"
	"github.com/replmesh/replmesh/transport"
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
		progressed, err := r.runStream()
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

// runStream runs one stream to the owner: open, resume or full transfer,
// then changes until the stream fails. progressed reports whether it got past the start.
func (r *Replica) runStream() (progressed bool, err error) {
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
	r.streamAddr, r.streamCancel = addr, cancel
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.streamAddr, r.streamCancel = "", nil
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
	if r.streamCancel != nil && (err != nil || addr != r.streamAddr) {
		r.streamCancel()
	}
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}
