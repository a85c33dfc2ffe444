package broker

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmihailenco/msgpack/v5"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/replmesh/replmesh/transport"
)

// The brokers' agreement: one Raft node (go.etcd.io/raft/v3) per broker.
// The raft leader decides (decide.go) and proposes; every broker applies
// the committed commands to its fsm (fsm.go) in log order. Storage is
// raftstore.go, messages travel over the brokers' gRPC (rafttransport.go).
//
// Timing. The node ticks every Config.Lease/20, at most 250ms (raftTick); an election
// times out after 10 ticks (half a lease, randomized up to a whole one),
// the leader heartbeats every tick. CheckQuorum is on: a leader that has
// not heard from a quorum for an election timeout steps down; PreVote is
// on: a partitioned broker that comes back does not depose a working
// leader.
//
// Lease confirmations. A broker confirms a primary's lease (PrimaryEpoch
// in a pong) only while its newest ReadIndex round is recent: every
// confirmEvery (a tenth of a lease) it asks the leader for a read index
// (raft's ReadOnlySafe: the leader confirms with a heartbeat round that a
// quorum still follows it, then answers with its commit index); once the
// broker has applied up to that index, the time it asked counts as
// confirmed. A pong carries PrimaryEpoch only if the last confirmation is
// younger than a quarter of a lease and the applied state names the
// instance primary at that epoch. ReadIndex, not the leader lease
// (ReadOnlyLeaseBased): a lease read trusts that clocks advance at the
// same rate on every broker and that a paused leader notices its pause;
// a ReadIndex round needs a quorum's answer after the question, so a
// deposed, paused or cut-off broker gets no confirmation however its
// clock runs.

const (
	raftElectionTicks  = 10
	raftHeartbeatTicks = 1
	// raftSnapshotEvery is how many applied entries trigger a snapshot
	// of the decided state and the compaction of the log it covers.
	raftSnapshotEvery = 1000
	// raftGrantHistory is how many applied grants Broker.Grants keeps.
	raftGrantHistory = 4096
)

// raftMember is what a configuration change carries (ConfChange.Context)
// about the broker it adds.
type raftMember struct {
	Name string `msgpack:"n"`
	Addr string `msgpack:"a"`
}

// raftNode is a broker's Raft node and the goroutines that drive it: run
// (ticks, Ready: persist, send, apply, advance), the proposer, and one
// sender per peer (rafttransport.go).
type raftNode struct {
	b     *Broker
	id    uint64
	log   *slog.Logger
	store *raftStore
	node  raft.Node
	tick  time.Duration

	leader  atomic.Uint64
	state   atomic.Int32  // raft.StateType
	paused  atomic.Bool   // tests: no ticks, no messages in or out (a paused process)
	applied atomic.Uint64 // for Status

	// joinErr is why the cluster last refused to add this (new) member
	// because a live broker has its name; nil otherwise.
	joinErr atomic.Pointer[string]

	// confirmed is when (time since Broker.started, ns) this broker asked
	// the read index it last had confirmed and applied; 0: never.
	confirmed atomic.Int64

	// Owned by run.
	// wantCampaign: at start, campaign at once (not an election timeout
	// later) once the configuration applied says this node is the only
	// voter.
	wantCampaign bool
	confState    raftpb.ConfState
	snapIndex    uint64
	lastAsk      time.Time
	readSeq      uint64
	reads        map[uint64]time.Duration // read request -> when asked
	pendingIdx   []pendingRead            // answered, waiting for apply

	proposals chan *command // grants decided by step, proposed by the proposer

	waitMu sync.Mutex
	waits  map[uint64]chan error
	idBase uint64
	nextID atomic.Uint64

	peersMu sync.Mutex
	peers   map[uint64]*raftPeer
}

type pendingRead struct {
	index uint64
	at    time.Duration
}

func randomID() uint64 {
	var b [8]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			panic(err)
		}
		if id := binary.BigEndian.Uint64(b[:]); id != 0 {
			return id
		}
	}
}

// raftTick is the Raft tick of a lease: a twentieth of it, at most
// 250ms (DefaultConfig's 5s lease), so that long leases do not make
// elections slow.
func raftTick(lease time.Duration) time.Duration {
	return min(max(lease/20, time.Millisecond), 250*time.Millisecond)
}

// openRaft opens the storage and decides the node id: the one the data
// dir records, else a new random one. fresh reports that the storage held
// nothing, which is always so in memory.
//
// An in-memory broker therefore takes a new id on every start and joins
// as a new member (RaftJoin removes the voter of its name first), like a
// broker whose data dir was wiped. It never comes back under an id whose
// votes and log it lost: a member that did would be sent heartbeats
// committing past its empty log (raft panics on that) and could vote
// twice in one term, so it needs a live majority to come back.
func (b *Broker) openRaft() (*raftNode, bool, error) {
	store, id, err := openRaftStore(b.cfg.DataDir, badgerLogger{b.log.With("subsystem", "badger")})
	if err != nil {
		return nil, false, err
	}
	fresh := id == 0
	if fresh {
		id = randomID()
		if err := store.setID(id); err != nil {
			store.close()
			return nil, false, err
		}
	}
	r := &raftNode{
		b:         b,
		id:        id,
		log:       b.log.With("raft_id", fmt.Sprintf("%x", id)),
		store:     store,
		tick:      raftTick(b.cfg.Lease),
		reads:     make(map[uint64]time.Duration),
		readSeq:   randomID() >> 1, // a fresh range per process (see readCtx)
		proposals: make(chan *command, 256),
		waits:     make(map[uint64]chan error),
		idBase:    randomID() &^ 0xffffffff,
		peers:     make(map[uint64]*raftPeer),
	}
	return r, fresh, nil
}

// start restores the decided state from the storage's snapshot and
// starts the Raft node: a new one-node cluster (bootstrap), a new member
// waiting to be added (join), or the member the storage holds.
func (r *raftNode) start(fresh, bootstrap bool) error {
	snap, err := r.store.mem.Snapshot()
	if err != nil {
		return err
	}
	if !raft.IsEmptySnap(snap) {
		r.b.mu.Lock()
		err := r.b.fsm.restore(snap.Data)
		r.b.mu.Unlock()
		if err != nil {
			return err
		}
		r.confState = snap.Metadata.ConfState
		r.snapIndex = snap.Metadata.Index
		r.applied.Store(snap.Metadata.Index)
	}
	c := &raft.Config{
		ID:              r.id,
		ElectionTick:    raftElectionTicks,
		HeartbeatTick:   raftHeartbeatTicks,
		Storage:         r.store.mem,
		Applied:         snap.Metadata.Index,
		MaxSizePerMsg:   1 << 20,
		MaxInflightMsgs: 256,
		CheckQuorum:     true,
		PreVote:         true,
		ReadOnlyOption:  raft.ReadOnlySafe,
		Logger:          raftLogger{r.log.With("component", "raft")},
	}
	switch {
	case fresh && bootstrap:
		ctx, err := msgpack.Marshal(raftMember{Name: r.b.cfg.Name, Addr: r.b.grpc})
		if err != nil {
			return err
		}
		r.node = raft.StartNode(c, []raft.Peer{{ID: r.id, Context: ctx}})
		r.log.Info("raft: started a new one-broker cluster")
		r.wantCampaign = true
	default:
		r.node = raft.RestartNode(c)
		if fresh {
			r.log.Info("raft: new member, waiting to be added to the cluster")
		} else {
			r.log.Info("raft: restarted from the data dir", "applied", snap.Metadata.Index)
			r.wantCampaign = true
		}
	}
	return nil
}

// run drives the node until ctx ends.
func (r *raftNode) run(ctx context.Context) {
	defer r.b.wg.Done()
	t := time.NewTicker(r.tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if r.paused.Load() {
				continue
			}
			r.node.Tick()
			r.campaignAlone(ctx)
			r.askReadIndex(ctx)
		case rd := <-r.node.Ready():
			if err := r.ready(rd); err != nil {
				// The storage failed: this broker cannot go on deciding.
				r.log.Error("raft: storage failed; this broker stops taking part in decisions", "err", err)
				r.node.Stop()
				return
			}
			r.node.Advance()
			r.campaignAlone(ctx)
		}
	}
}

// ready handles one Ready: persist, send, apply.
func (r *raftNode) ready(rd raft.Ready) error {
	if rd.SoftState != nil {
		r.softState(rd.SoftState)
	}
	if err := r.store.save(rd.HardState, rd.Entries, rd.Snapshot); err != nil {
		return err
	}
	if !raft.IsEmptySnap(rd.Snapshot) {
		if err := r.applySnapshot(rd.Snapshot); err != nil {
			return err
		}
	}
	r.send(rd.Messages)
	for _, rs := range rd.ReadStates {
		seq, ok := parseReadCtx(r.id, rs.RequestCtx)
		if !ok {
			continue
		}
		if at, ok := r.reads[seq]; ok {
			delete(r.reads, seq)
			r.pendingIdx = append(r.pendingIdx, pendingRead{index: rs.Index, at: at})
		}
	}
	for i := range rd.CommittedEntries {
		r.applyEntry(&rd.CommittedEntries[i])
	}
	r.confirmReads()
	return r.maybeSnapshot()
}

// campaignAlone campaigns once, at start, if this node is the only voter.
func (r *raftNode) campaignAlone(ctx context.Context) {
	if !r.wantCampaign {
		return
	}
	if raft.StateType(r.state.Load()) == raft.StateLeader {
		r.wantCampaign = false
		return
	}
	if v := r.confState.Voters; len(v) == 1 && v[0] == r.id {
		r.wantCampaign = false
		_ = r.node.Campaign(ctx)
	}
}

func (r *raftNode) softState(ss *raft.SoftState) {
	old := r.leader.Swap(ss.Lead)
	was := raft.StateType(r.state.Swap(int32(ss.RaftState)))
	if ss.RaftState == raft.StateLeader && was != raft.StateLeader {
		r.log.Info("raft: this broker is the leader: it decides leases and primaries")
		r.b.metrics.leaderChanges.Inc()
	}
	if old != ss.Lead {
		r.b.kickLoop()
	}
}

func (r *raftNode) applySnapshot(snap raftpb.Snapshot) error {
	r.b.mu.Lock()
	err := r.b.fsm.restore(snap.Data)
	r.b.rev++
	r.b.notifyAllLocked()
	r.b.mu.Unlock()
	if err != nil {
		return err
	}
	r.confState = snap.Metadata.ConfState
	r.snapIndex = snap.Metadata.Index
	r.applied.Store(snap.Metadata.Index)
	r.log.Info("raft: decided state installed from a snapshot", "index", snap.Metadata.Index)
	return nil
}

// applyEntry applies one committed entry to the decided state.
func (r *raftNode) applyEntry(e *raftpb.Entry) {
	b := r.b
	if e.Index <= r.applied.Load() {
		return
	}
	defer r.applied.Store(e.Index)
	switch e.Type {
	case raftpb.EntryNormal:
		if len(e.Data) == 0 {
			b.mu.Lock()
			b.fsm.skip(e.Index)
			b.mu.Unlock()
			return
		}
		c, err := decodeCommand(e.Data)
		if err != nil {
			r.log.Error("raft: undecodable command skipped", "index", e.Index, "err", err)
			b.mu.Lock()
			b.fsm.skip(e.Index)
			b.mu.Unlock()
			return
		}
		b.mu.Lock()
		ev, err := b.fsm.apply(e.Index, c)
		if err == nil {
			b.appliedLocked(c, ev)
		}
		b.mu.Unlock()
		if err != nil && c.By == b.cfg.Name {
			r.log.Info("raft: proposal refused", "index", e.Index, "err", err)
		}
		if c.By == b.cfg.Name {
			r.done(c.ID, err)
		}
	case raftpb.EntryConfChange, raftpb.EntryConfChangeV2:
		var cc raftpb.ConfChangeI
		if e.Type == raftpb.EntryConfChange {
			var c1 raftpb.ConfChange
			if err := c1.Unmarshal(e.Data); err != nil {
				r.log.Error("raft: undecodable configuration change", "index", e.Index, "err", err)
				return
			}
			cc = c1
		} else {
			var c2 raftpb.ConfChangeV2
			if err := c2.Unmarshal(e.Data); err != nil {
				r.log.Error("raft: undecodable configuration change", "index", e.Index, "err", err)
				return
			}
			cc = c2
		}
		r.confState = *r.node.ApplyConfChange(cc)
		v2 := cc.AsV2()
		b.mu.Lock()
		for _, ch := range v2.Changes {
			switch ch.Type {
			case raftpb.ConfChangeAddNode, raftpb.ConfChangeAddLearnerNode:
				var m raftMember
				_ = msgpack.Unmarshal(v2.Context, &m)
				b.fsm.addMember(e.Index, transport.RaftMember{ID: ch.NodeID, Name: m.Name, Addr: m.Addr})
				r.log.Info("raft: broker added to the cluster", "name", m.Name, "id", fmt.Sprintf("%x", ch.NodeID), "voters", len(r.confState.Voters))
			case raftpb.ConfChangeRemoveNode:
				old := b.fsm.members[ch.NodeID]
				b.fsm.removeMember(e.Index, ch.NodeID)
				r.log.Info("raft: broker removed from the cluster", "name", old.Name, "id", fmt.Sprintf("%x", ch.NodeID), "voters", len(r.confState.Voters))
				if ch.NodeID == r.id {
					r.log.Warn("raft: this broker was removed from the cluster; it no longer takes part in decisions")
				}
			}
		}
		b.fsm.skip(e.Index)
		b.rev++
		b.notifyAllLocked()
		b.mu.Unlock()
	}
}

// confirmReads turns the answered read indexes that are applied into
// confirmations.
func (r *raftNode) confirmReads() {
	applied := r.applied.Load()
	keep := r.pendingIdx[:0]
	for _, p := range r.pendingIdx {
		if p.index <= applied {
			if int64(p.at) > r.confirmed.Load() {
				r.confirmed.Store(int64(p.at))
			}
			continue
		}
		keep = append(keep, p)
	}
	r.pendingIdx = keep
}

// askReadIndex starts a ReadIndex round every confirmEvery; requests not
// answered within a lease are forgotten.
func (r *raftNode) askReadIndex(ctx context.Context) {
	now := time.Now()
	if now.Sub(r.lastAsk) < r.confirmEvery() || r.leader.Load() == 0 {
		return
	}
	r.lastAsk = now
	at := time.Since(r.b.started)
	for seq, t := range r.reads {
		if at-t > r.b.cfg.Lease {
			delete(r.reads, seq)
		}
	}
	r.readSeq++
	r.reads[r.readSeq] = at
	rctx := readCtx(r.id, r.readSeq)
	cctx, cancel := context.WithTimeout(ctx, r.tick)
	defer cancel()
	_ = r.node.ReadIndex(cctx, rctx)
}

// waitStarted waits until the node has applied what its storage held
// committed and, if it is then the only voter (a new one-broker cluster,
// or one restarted from its data dir), until it leads and has a
// confirmation: a lone broker serves with its decided state, and a lone
// owner is primary from its first answer.
func (r *raftNode) waitStarted(ctx context.Context, commit uint64) error {
	t := time.NewTicker(r.tick / 4)
	defer t.Stop()
	alone := func() bool {
		v := r.node.Status().Config.Voters.IDs()
		_, self := v[r.id]
		return len(v) == 1 && self
	}
	for r.applied.Load() < commit || (alone() && (!r.isLeader() || !r.confirmedWithin(r.b.cfg.Lease/4))) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("a one-broker cluster did not elect itself: %w", ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// readCtx is the context of a ReadIndex request: the broker's raft id and
// a sequence number that starts at a random point in every process. The
// leader keys pending reads by context alone (raft's readOnly) and counts
// every heartbeat response that echoes a context as an ack of the pending
// read with that context. With plain per-broker counters from 0, brokers
// started together and asking at the same pace use the same contexts: a
// heartbeat response for another broker's read, delivered late (a leader
// woken from a pause gets the responses of the round it sent before),
// can complete a new read of this broker that no quorum answered, which
// then confirms a stale state (chaos leader-sigstop saw a woken leader
// with a 10 ms-old confirmation and its registry an epoch behind); and
// the leader drops one of two pending reads with equal contexts.
func readCtx(id, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(make([]byte, 0, 16), id), seq)
}

// parseReadCtx returns the sequence number of a read context of broker id
// (ok false: not one of id's).
func parseReadCtx(id uint64, ctx []byte) (seq uint64, ok bool) {
	if len(ctx) != 16 || binary.BigEndian.Uint64(ctx[:8]) != id {
		return 0, false
	}
	return binary.BigEndian.Uint64(ctx[8:]), true
}

func (r *raftNode) confirmEvery() time.Duration { return max(r.b.cfg.Lease/10, r.tick) }

// confirmedWithin reports whether this broker's newest confirmation was
// asked at most d ago.
func (r *raftNode) confirmedWithin(d time.Duration) bool {
	c := r.confirmed.Load()
	return c > 0 && time.Since(r.b.started)-time.Duration(c) <= d
}

// confirmedAge is the age of the newest confirmation (-1: none).
func (r *raftNode) confirmedAge() time.Duration {
	c := r.confirmed.Load()
	if c == 0 {
		return -1
	}
	return time.Since(r.b.started) - time.Duration(c)
}

func (r *raftNode) maybeSnapshot() error {
	applied := r.applied.Load()
	if applied-r.snapIndex < raftSnapshotEvery {
		return nil
	}
	r.b.mu.Lock()
	data := r.b.fsm.encode()
	r.b.mu.Unlock()
	if err := r.store.compact(applied, r.confState, data); err != nil {
		return err
	}
	r.snapIndex = applied
	return nil
}

func (r *raftNode) isLeader() bool {
	return raft.StateType(r.state.Load()) == raft.StateLeader && !r.paused.Load()
}

// propose proposes c and waits until it is applied (nil), refused
// (errRefused) or ctx ends.
func (r *raftNode) propose(ctx context.Context, c *command) error {
	c.ID = r.idBase | (r.nextID.Add(1) & 0xffffffff)
	c.By = r.b.cfg.Name
	ch := make(chan error, 1)
	r.waitMu.Lock()
	r.waits[c.ID] = ch
	r.waitMu.Unlock()
	defer func() {
		r.waitMu.Lock()
		delete(r.waits, c.ID)
		r.waitMu.Unlock()
	}()
	if err := r.node.Propose(ctx, encodeCommand(c)); err != nil {
		return r.noLeader(err)
	}
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return r.noLeader(ctx.Err())
	}
}

// noLeader wraps a proposal that did not complete as unavailable.
func (r *raftNode) noLeader(err error) error {
	return fmt.Errorf("%w: the broker cluster did not decide (no raft leader reachable?): %v", transport.ErrUnavailable, err)
}

func (r *raftNode) done(id uint64, err error) {
	if id == 0 {
		return
	}
	r.waitMu.Lock()
	ch := r.waits[id]
	r.waitMu.Unlock()
	if ch != nil {
		ch <- err
	}
}

// proposer proposes the commands step decided, each bounded by a tick,
// without waiting for them to commit: raft then commits a burst of
// decisions in a few log appends (one fsync each) instead of one round
// per decision. Nobody waits for the outcome here: a grant's effects
// follow its application (appliedLocked), and one that is lost (the
// leader changed) or refused is decided again once its service's
// inflight mark lapses (decideLocked).
func (r *raftNode) proposer(ctx context.Context) {
	defer r.b.wg.Done()
	for {
		select {
		case <-ctx.Done():
			return
		case c := <-r.proposals:
			c.By = r.b.cfg.Name
			cctx, cancel := context.WithTimeout(ctx, r.tick)
			err := r.node.Propose(cctx, encodeCommand(c))
			cancel()
			if err != nil && ctx.Err() == nil {
				r.log.Debug("raft: proposal not taken", "service", c.Service, "err", err)
			}
		}
	}
}

// enqueue hands decided commands to the proposer (dropping them if it is
// backed up: the next step decides again).
func (r *raftNode) enqueue(cs []*command) {
	for _, c := range cs {
		select {
		case r.proposals <- c:
		default:
		}
	}
}

// changeConf proposes a configuration change and waits until done reports
// it applied, retrying (a leader refuses a change while another is
// pending) until ctx ends.
func (r *raftNode) changeConf(ctx context.Context, cc raftpb.ConfChange, done func() bool) error {
	for {
		if done() {
			return nil
		}
		if err := r.node.ProposeConfChange(ctx, cc); err != nil {
			return r.noLeader(err)
		}
		t := time.NewTimer(raftElectionTicks * r.tick)
		poll := time.NewTicker(r.tick)
	wait:
		for {
			select {
			case <-ctx.Done():
				t.Stop()
				poll.Stop()
				return r.noLeader(ctx.Err())
			case <-t.C:
				break wait
			case <-poll.C:
				if done() {
					t.Stop()
					poll.Stop()
					return nil
				}
			}
		}
		poll.Stop()
	}
}

// status is the node's view for Status.
func (r *raftNode) status() *transport.RaftStatus {
	st := r.node.Status()
	out := &transport.RaftStatus{ID: r.id, State: st.RaftState.String(), Term: st.Term, Leader: st.Lead,
		Commit: st.Commit, Applied: r.applied.Load(), ConfirmedMs: -1}
	if age := r.confirmedAge(); age >= 0 {
		out.ConfirmedMs = age.Milliseconds()
	}
	if e := r.joinErr.Load(); e != nil {
		out.JoinRefused = *e
	}
	return out
}

// activePeers returns, on the leader, the voters it has heard from within
// the last election timeout (itself included); nil elsewhere.
func (r *raftNode) activePeers() map[uint64]bool {
	if !r.isLeader() {
		return nil
	}
	st := r.node.Status()
	if st.RaftState != raft.StateLeader {
		return nil
	}
	out := make(map[uint64]bool, len(st.Progress))
	for id, pr := range st.Progress {
		out[id] = pr.RecentActive || id == r.id
	}
	return out
}

// stop stops the node and its senders and closes the storage. run and
// the proposer have returned.
func (r *raftNode) stop() {
	r.node.Stop()
	r.peersMu.Lock()
	peers := slices.Collect(func(yield func(*raftPeer) bool) {
		for _, p := range r.peers {
			if !yield(p) {
				return
			}
		}
	})
	r.peers = map[uint64]*raftPeer{}
	r.peersMu.Unlock()
	for _, p := range peers {
		p.close()
	}
	if err := r.store.close(); err != nil {
		r.log.Warn("raft: close storage", "err", err)
	}
}

// raftLogger routes raft's logs to slog (debug and info at debug: raft
// is chatty about every election).
type raftLogger struct{ log *slog.Logger }

func (l raftLogger) Debug(v ...any)                 { l.log.Debug(fmt.Sprint(v...)) }
func (l raftLogger) Debugf(format string, v ...any) { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l raftLogger) Info(v ...any)                  { l.log.Debug(fmt.Sprint(v...)) }
func (l raftLogger) Infof(format string, v ...any)  { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l raftLogger) Warning(v ...any)               { l.log.Warn(fmt.Sprint(v...)) }
func (l raftLogger) Warningf(format string, v ...any) {
	l.log.Warn(fmt.Sprintf(format, v...))
}
func (l raftLogger) Error(v ...any)                 { l.log.Error(fmt.Sprint(v...)) }
func (l raftLogger) Errorf(format string, v ...any) { l.log.Error(fmt.Sprintf(format, v...)) }

// Fatal, Fatalf, Panic and Panicf: raft calls them when its own state or
// its log contradicts what the cluster says (a commit index past the end
// of the log, a log that does not match what it had acknowledged), in
// its node goroutine, where the broker cannot recover. They are logged
// as the broker's error, then panic: the process stops. They are not
// recoverable here: a broker that went on would decide and vote from a
// log that lost entries it had acknowledged, which can undo a committed
// grant. With a node id per log (openRaft) only a corrupted or truncated
// durable log, or a raft bug, gets here; a restart with a wiped data dir
// rejoins as a new member.
func (l raftLogger) Fatal(v ...any)                 { l.fatal(fmt.Sprint(v...)) }
func (l raftLogger) Fatalf(format string, v ...any) { l.fatal(fmt.Sprintf(format, v...)) }
func (l raftLogger) Panic(v ...any)                 { l.fatal(fmt.Sprint(v...)) }
func (l raftLogger) Panicf(format string, v ...any) { l.fatal(fmt.Sprintf(format, v...)) }

func (l raftLogger) fatal(msg string) {
	l.log.Error("raft: fatal: the broker stops (its raft log contradicts the cluster)", "err", msg)
	panic(msg)
}

// badgerLogger routes badger's logs to slog, quietly.
type badgerLogger struct{ log *slog.Logger }

func (l badgerLogger) Errorf(f string, v ...any)   { l.log.Error(fmt.Sprintf(f, v...)) }
func (l badgerLogger) Warningf(f string, v ...any) { l.log.Warn(fmt.Sprintf(f, v...)) }
func (l badgerLogger) Infof(f string, v ...any)    { l.log.Debug(fmt.Sprintf(f, v...)) }
func (l badgerLogger) Debugf(f string, v ...any)   { l.log.Debug(fmt.Sprintf(f, v...)) }
