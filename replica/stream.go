package replica

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/replmesh/replmesh/internal/diskguard"
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
	backoff := transport.Backoff{Min: r.c.cfg.ReconnectMin, Max: r.c.cfg.ReconnectMax, Jitter: true}
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			r.stats.reconnects.Add(1)
		}
		progressed, err := r.runStream()
		if r.ctx.Err() != nil {
			return
		}
		diskFull := errors.Is(err, ErrDiskFull)
		if progressed && !diskFull {
			backoff.Reset()
		}
		r.mu.Lock()
		r.lastErr = err
		if r.state != StateDiverged {
			r.state = StateConnecting
		}
		r.mu.Unlock()
		var spaceBack <-chan struct{}
		if diskFull {
			spaceBack = r.c.disk.Wait()
			r.log.Debug("cannot apply: data dir short of space; retrying", "err", err, "backoff", backoff.Current())
		} else {
			r.log.Info("stream ended; reconnecting", "err", err, "backoff", backoff.Current())
		}
		t := time.NewTimer(backoff.Next())
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
	}
}

// runStream runs one stream to the owner: open, resume or full transfer,
// then changes until the stream fails. progressed reports whether it got
// past the start.
func (r *Replica) runStream() (progressed bool, err error) {
	// No stream while nothing received could be written.
	if err := r.c.disk.Admit(diskguard.Cost{}); err != nil {
		return false, fmt.Errorf("apply %s: %w", r.opts.Table, err)
	}
	ctx, cancel := context.WithCancel(r.ctx)
	defer cancel()
	addr, minEpoch, err := r.resolve()
	if err != nil {
		return false, err
	}
	r.setStreamTarget(addr, cancel)
	defer r.setStreamTarget("", nil)
	s, st, err := r.openStream(ctx, cancel, addr)
	if err != nil {
		return false, err
	}
	defer s.close()
	if err := s.begin(st, addr, minEpoch); err != nil {
		return false, err
	}
	return true, s.follow(st)
}

// setStreamTarget records the address of the current stream and how to end
// it (for redirect); "" and nil when none runs.
func (r *Replica) setStreamTarget(addr string, cancel context.CancelFunc) {
	r.mu.Lock()
	r.streamAddr, r.streamCancel = addr, cancel
	r.mu.Unlock()
}

// ownerStream is one stream to the owner, seen from the replica: the
// frames it receives (through the watchdog) and the position the replica
// opened it at.
type ownerStream struct {
	r      *Replica
	ctx    context.Context // ends with cancel, the watchdog or the replica
	cancel context.CancelFunc
	sub    *transport.ClientSubscription
	// watchdog ends a stream on which the owner says nothing for
	// PeerTimeout (see openStream).
	watchdog *time.Timer
	// opened and accept are the replica's cursor and AcceptNewHistory as
	// sent in Open: what the start decision compares with the owner's Start.
	opened cursor
	accept bool
	// frames, once follow starts receive, brings the owner's frames,
	// received and decoded one ahead of the frame being applied; nil:
	// recv receives them itself.
	frames chan received
	// recvDone closes when receive, once started (startReceive), returns.
	recvDone chan struct{}
}

// received is a frame of the owner's, or the error that ended the stream.
type received struct {
	f   *transport.OwnerFrame
	err error
}

// openStream dials the owner at addr and opens a Subscribe stream: it
// sends Open (the replica's position and mode) and receives the owner's
// Start (transport.OpenSubscribe), taking the owner's head and table
// default mode from it.
func (r *Replica) openStream(ctx context.Context, cancel context.CancelFunc, addr string) (*ownerStream, *transport.Start, error) {
	conn, err := r.c.conn(ownerPeer(addr, r.opts.Service))
	if err != nil {
		return nil, nil, err
	}
	r.mu.RLock()
	cur, accept, mode := r.cur, r.accept, r.modes.effective
	r.mu.RUnlock()
	// Watchdog: an owner that says nothing for PeerTimeout (it heartbeats
	// far more often) is gone; drop the stream. Only the time spent waiting
	// for the owner counts: the time this replica takes to write what it
	// received (a slow disk, a large transfer chunk) must not look like a
	// silent owner, or a slow replica could restart a full transfer forever.
	s := &ownerStream{r: r, ctx: ctx, cancel: cancel, opened: cur, accept: accept,
		watchdog: time.AfterFunc(r.c.cfg.PeerTimeout, cancel)}
	sub, st, err := transport.NewReplicationClient(conn).OpenSubscribe(ctx, &transport.Open{
		Version: transport.ProtocolVersion, Service: r.c.cfg.Service, Instance: r.c.cfg.Instance,
		Table: r.opts.Table, LogID: cur.LogID, Seq: cur.Seq, Epoch: cur.Epoch, Mode: mode.Wire(),
		Standby: r.sink.standby(),
	})
	s.watchdog.Stop()
	if err != nil {
		return nil, nil, s.silent(err)
	}
	s.sub = sub
	ownerMode, err := modes.ParseWire(st.Mode)
	if err != nil {
		sub.Close()
		return nil, nil, fmt.Errorf("%w: start: owner's table default: %v", transport.ErrBadRequest, err)
	}
	r.mu.Lock()
	r.ownerHead = st.HeadSeq
	r.modes.ownerDefault = ownerMode
	modeChanged := r.resolveModesLocked(time.Now(), "owner's table default "+orNone(st.Mode))
	r.mu.Unlock()
	if modeChanged {
		r.kickMode() // sent by control once the stream runs
	}
	return s, st, nil
}

// close releases the stream and its watchdog, and waits for receive.
func (s *ownerStream) close() {
	s.watchdog.Stop()
	s.cancel()
	s.sub.Close()
	if s.recvDone != nil {
		<-s.recvDone
	}
}

// startReceive starts receive (once): from then on recv takes the frames
// it read ahead. A full transfer starts it before its first rows, so that
// the next rows frame is received and decoded while the replica stages
// the one before, and the owner's sending does not wait for the staging
// (gRPC's stream window is read as the frames are received).
func (s *ownerStream) startReceive() {
	if s.frames != nil {
		return
	}
	s.frames, s.recvDone = make(chan received), make(chan struct{})
	go func() { defer close(s.recvDone); s.receive() }()
}

// silent turns the error of a stream the watchdog (or a redirect) ended
// while the replica runs into ErrUnavailable: the owner said nothing in
// time. Other errors pass unchanged.
func (s *ownerStream) silent(err error) error {
	if s.ctx.Err() != nil && s.r.ctx.Err() == nil {
		return fmt.Errorf("%w: no frame from owner for %s", transport.ErrUnavailable, s.r.c.cfg.PeerTimeout)
	}
	return err
}

// recv returns the owner's next frame, with the watchdog running while it
// waits for it, and notes the owner's head.
func (s *ownerStream) recv() (*transport.OwnerFrame, error) {
	r := s.r
	s.watchdog.Reset(r.c.cfg.PeerTimeout)
	var f *transport.OwnerFrame
	var err error
	if s.frames == nil {
		f, err = s.sub.Recv()
	} else {
		select {
		case m := <-s.frames:
			f, err = m.f, m.err
		case <-s.ctx.Done():
			err = s.ctx.Err()
		}
	}
	s.watchdog.Stop()
	if err != nil {
		return nil, s.silent(err)
	}
	r.mu.Lock()
	if f.HeadSeq > r.ownerHead {
		r.ownerHead = f.HeadSeq
	}
	if r.state == StateStreaming && r.cur.Seq >= f.HeadSeq {
		r.caughtUpLocked()
	}
	r.mu.Unlock()
	return f, nil
}

// begin acts on the start decision (decideStart): it resumes, or runs the
// full transfer, or ends the stream (a refused owner, a diverged history).
func (s *ownerStream) begin(st *transport.Start, addr string, minEpoch uint64) error {
	r, cur := s.r, s.opened
	d := decideStart(startInput{Cursor: cur, Accept: s.accept, Start: st, MinEpoch: minEpoch, Owner: addr})
	switch d.Action {
	case startRefused:
		return d.Err
	case startDiverged:
		derr := &DivergedError{Table: r.opts.Table, ReplicaLogID: cur.LogID, ReplicaSeq: cur.Seq, OwnerLogID: st.LogID, OwnerHead: st.HeadSeq}
		r.mu.Lock()
		r.state = StateDiverged
		r.mu.Unlock()
		r.log.Error("owner history diverged; keeping the replica", "err", derr)
		return derr
	case startResume:
		r.streaming(&r.stats.resumes)
		r.log.Info("resumed", "seq", cur.Seq, "owner_head", st.HeadSeq)
	case startTruncate:
		r.stats.truncations.Add(1)
		r.log.Warn("replica holds changes the owner's history does not; replacing it with a full transfer",
			"replica_seq", cur.Seq, "replica_epoch", cur.Epoch, "epoch_ended_at", d.EpochEnd-1, "owner_epoch", st.Epoch)
		fallthrough
	case startTransfer:
		r.setState(StateTransferring, nil)
		s.startReceive()
		if err := r.receiveSnapshot(s.recv, st); err != nil {
			return err
		}
		r.mu.Lock()
		r.accept = r.sink.standby() // a standby always takes its primary's history
		r.mu.Unlock()
		r.streaming(nil)
	}
	r.pending = nil
	// The stream catches up until it first holds the owner's head.
	r.mu.Lock()
	r.catchingUp = r.cur.Seq < r.ownerHead
	r.mu.Unlock()
	return nil
}

// follow runs the stream once it has started: the control goroutine beside
// it (pulls, mode switches), an ack of the start, then the owner's frames
// until the stream fails.
func (s *ownerStream) follow(st *transport.Start) error {
	r := s.r
	r.mu.Lock()
	r.modes.stream = s.sub
	r.mu.Unlock()
	ctlDone := make(chan struct{})
	go func() { defer close(ctlDone); r.control(s.ctx, s.cancel) }()
	s.startReceive()
	defer func() {
		s.cancel()
		<-ctlDone
		<-s.recvDone
		r.mu.Lock()
		r.modes.stream = nil
		r.mu.Unlock()
	}()
	if err := r.ack(s.sub); err != nil {
		return err
	}
	for {
		f, err := s.recv()
		if err != nil {
			return err
		}
		if err := s.handle(f, st); err != nil {
			return err
		}
	}
}

// receive runs beside follow's loop: it receives the owner's frames and
// hands them to recv, so that the next frame is read and decoded while the
// replica applies the one before (a catch-up keeps both cores busy). It
// ends with the stream (follow cancels it). The watchdog counts only
// recv's wait: receive may wait for the owner while the replica is busy.
func (s *ownerStream) receive() {
	for {
		f, err := s.sub.Recv()
		select {
		case s.frames <- received{f, err}:
		case <-s.ctx.Done():
			return
		}
		if err != nil {
			return
		}
	}
}

// handle acts on one frame of a running stream: a pull's delta or full
// transfer, changes, a heartbeat; each is acknowledged once applied.
func (s *ownerStream) handle(f *transport.OwnerFrame, st *transport.Start) error {
	r := s.r
	if f.Rate > 0 || f.Kind == transport.KindHeartbeat {
		r.mu.Lock()
		r.modes.ownerRate = f.Rate
		r.mu.Unlock()
	}
	switch f.Kind {
	case transport.KindDelta:
		if err := r.applyDelta(f); err != nil {
			return err
		}
		r.pulled()
	case transport.KindSnapshotBegin:
		if err := s.pulledTransfer(f, st); err != nil {
			return err
		}
		r.pulled()
	case transport.KindChanges:
		applied, err := r.applyFrame(f)
		if err != nil || !applied {
			return err
		}
	case transport.KindHeartbeat:
	default:
		return fmt.Errorf("%w: unexpected %s frame from owner", transport.ErrBadRequest, f.Kind)
	}
	return r.ack(s.sub)
}

// pulledTransfer receives a pull answered with a full transfer (the
// consumer was behind the log, or the delta was too large), whose first
// frame is begin.
func (s *ownerStream) pulledTransfer(begin *transport.OwnerFrame, st *transport.Start) error {
	first := begin
	err := s.r.receiveSnapshot(func() (*transport.OwnerFrame, error) {
		if first != nil {
			f := first
			first = nil
			return f, nil
		}
		return s.recv()
	}, st)
	if err != nil {
		return err
	}
	s.r.streaming(nil)
	return nil
}

func (r *Replica) ack(stream *transport.ClientSubscription) error {
	r.mu.RLock()
	seq := r.cur.Seq
	r.mu.RUnlock()
	r.sendMu.Lock()
	defer r.sendMu.Unlock()
	return stream.Send(&transport.ConsumerFrame{Kind: transport.KindAck, Seq: seq})
}

// sendFrame sends on the current stream (several goroutines send: the
// stream's acks, pulls, mode switches).
func (r *Replica) sendFrame(f *transport.ConsumerFrame) error {
	r.sendMu.Lock()
	defer r.sendMu.Unlock()
	r.mu.RLock()
	s := r.modes.stream
	r.mu.RUnlock()
	if s == nil {
		return fmt.Errorf("%w: no stream to the owner of %s", transport.ErrUnavailable, r.opts.Table)
	}
	return s.Send(f)
}

// control runs beside a stream's receive loop: it sends pulls (on the
// interval, on Refresh and on stale reads) and mode switches (auto
// decisions, overrides, option changes).
func (r *Replica) control(ctx context.Context, cancel context.CancelFunc) {
	tick := time.NewTicker(r.c.cfg.Heartbeat)
	defer tick.Stop()
	var pullT *time.Timer
	var pullC <-chan time.Time
	armPull := func() {
		r.mu.RLock()
		pull, every := r.modes.effective == modes.Pull, r.modes.settings.Pull.Interval
		r.mu.RUnlock()
		if pullT != nil {
			pullT.Stop()
			pullC = nil
		}
		if pull && every > 0 {
			pullT = time.NewTimer(every)
			pullC = pullT.C
		}
	}
	defer func() {
		if pullT != nil {
			pullT.Stop()
		}
	}()
	armPull()
	fail := func(err error) {
		if err != nil {
			r.log.Info("control send failed", "err", err)
			cancel()
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.pullKick:
			fail(r.sendFrame(&transport.ConsumerFrame{Kind: transport.KindPull}))
			armPull()
		case <-pullC:
			fail(r.sendFrame(&transport.ConsumerFrame{Kind: transport.KindPull}))
			armPull()
		case <-r.modeKick:
			r.mu.RLock()
			m := r.modes.effective
			r.mu.RUnlock()
			fail(r.sendFrame(&transport.ConsumerFrame{Kind: transport.KindMode, Mode: m.Wire()}))
			r.log.Info("mode switched", "mode", m.String())
			armPull()
		case now := <-tick.C:
			r.mu.Lock()
			changed := r.observeLocked(now)
			r.mu.Unlock()
			if changed {
				r.kickMode()
			}
		}
	}
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
