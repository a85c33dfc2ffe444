package broker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vmihailenco/msgpack/v5"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"

	"github.com/replmesh/replmesh/transport"
)

// Raft messages between brokers travel over the brokers' gRPC (the Raft
// service of transport, on the broker's one gRPC server, with the same
// TLS): each peer has a sender goroutine that batches its queue into
// unary Send calls. A peer's address is its gRPC address as memberlist
// announces it (so a broker that comes back on another port is found),
// else the one it joined with. Raft tolerates lost messages: a full queue
// or a failed call drops messages and reports the peer unreachable.

const raftPeerQueue = 4096

// raftPeer sends to one peer.
type raftPeer struct {
	r    *raftNode
	id   uint64
	q    chan raftpb.Message
	done chan struct{}
	fin  chan struct{}

	// Owned by the sender goroutine.
	addr string
	cc   *grpc.ClientConn
}

// send hands messages to their peers' senders.
func (r *raftNode) send(msgs []raftpb.Message) {
	if r.paused.Load() {
		return
	}
	for _, m := range msgs {
		if m.To == r.id {
			continue
		}
		p := r.peer(m.To)
		select {
		case p.q <- m:
		default:
			r.node.ReportUnreachable(m.To)
			if m.Type == raftpb.MsgSnap {
				r.node.ReportSnapshot(m.To, raft.SnapshotFailure)
			}
		}
	}
}

func (r *raftNode) peer(id uint64) *raftPeer {
	r.peersMu.Lock()
	defer r.peersMu.Unlock()
	p := r.peers[id]
	if p == nil {
		p = &raftPeer{r: r, id: id, q: make(chan raftpb.Message, raftPeerQueue), done: make(chan struct{}), fin: make(chan struct{})}
		r.peers[id] = p
		go p.run()
	}
	return p
}

func (p *raftPeer) close() {
	close(p.done)
	<-p.fin
}

func (p *raftPeer) run() {
	defer close(p.fin)
	defer func() {
		if p.cc != nil {
			p.cc.Close()
		}
	}()
	for {
		var m raftpb.Message
		select {
		case <-p.done:
			return
		case m = <-p.q:
		}
		batch := []raftpb.Message{m}
		size := m.Size()
	drain:
		for size < 1<<20 {
			select {
			case m := <-p.q:
				batch = append(batch, m)
				size += m.Size()
			default:
				break drain
			}
		}
		p.deliver(batch)
	}
}

// deliver sends one batch and reports its outcome to the node.
func (p *raftPeer) deliver(batch []raftpb.Message) {
	r := p.r
	req := &transport.RaftMessages{Version: transport.ProtocolVersion, From: r.id, To: p.id}
	snap := false
	for i := range batch {
		buf, err := batch[i].Marshal()
		if err != nil {
			continue
		}
		req.Msgs = append(req.Msgs, buf)
		snap = snap || batch[i].Type == raftpb.MsgSnap
	}
	err := p.call(req)
	if r.paused.Load() {
		return
	}
	if err != nil {
		r.node.ReportUnreachable(p.id)
		if snap {
			r.node.ReportSnapshot(p.id, raft.SnapshotFailure)
		}
		return
	}
	if snap {
		r.node.ReportSnapshot(p.id, raft.SnapshotFinish)
	}
}

func (p *raftPeer) call(req *transport.RaftMessages) error {
	addr := p.r.b.peerAddr(p.id)
	if addr == "" {
		return fmt.Errorf("no address for raft node %x", p.id)
	}
	if p.cc == nil || addr != p.addr {
		if p.cc != nil {
			p.cc.Close()
		}
		cc, err := transport.Dial(addr, p.r.b.cfg.PeerTransport)
		if err != nil {
			p.cc = nil
			return err
		}
		p.cc, p.addr = cc, addr
	}
	ctx, cancel := context.WithTimeout(context.Background(), max(p.r.b.cfg.Lease, time.Second))
	defer cancel()
	go func() {
		select {
		case <-p.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	_, err := transport.NewRaftClient(p.cc).Send(ctx, req)
	return err
}

// peerAddr is the gRPC address of the broker with Raft node id: the one
// memberlist announces, else the one the decided membership recorded.
func (b *Broker) peerAddr(id uint64) string {
	live, _ := b.del.members()
	for _, m := range live {
		if m.Raft == id && m.GRPC != "" {
			return m.GRPC
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.fsm.members[id].Addr
}

// RaftSend hands a batch of Raft messages from another broker to this
// broker's node. With Config.RequireIdentity only broker identities may
// send them.
func (b *Broker) RaftSend(ctx context.Context, req *transport.RaftMessages) (*transport.RaftMessagesResponse, error) {
	if err := transport.CheckVersion(req.Version); err != nil {
		return nil, err
	}
	if err := b.authorize(ctx, "raft", transport.RoleBroker); err != nil {
		return nil, err
	}
	r := b.raft
	if req.To != r.id {
		return nil, badRequest("raft messages for node %x reached node %x", req.To, r.id)
	}
	if r.paused.Load() {
		return nil, fmt.Errorf("%w: paused", transport.ErrUnavailable)
	}
	for _, buf := range req.Msgs {
		var m raftpb.Message
		if err := m.Unmarshal(buf); err != nil {
			return nil, badRequest("raft message: %v", err)
		}
		if m.From != req.From {
			return nil, badRequest("raft message from %x in a batch from %x", m.From, req.From)
		}
		if err := r.node.Step(ctx, m); err != nil {
			return nil, fmt.Errorf("%w: %v", transport.ErrUnavailable, err)
		}
	}
	return &transport.RaftMessagesResponse{}, nil
}

// RaftJoin adds a broker to the Raft group as a voter (see
// transport.RaftJoinRequest). With Config.RequireIdentity only broker
// identities may ask.
func (b *Broker) RaftJoin(ctx context.Context, req *transport.RaftJoinRequest) (*transport.RaftJoinResponse, error) {
	if err := transport.CheckVersion(req.Version); err != nil {
		return nil, err
	}
	if err := b.authorize(ctx, "raft", transport.RoleBroker); err != nil {
		return nil, err
	}
	if req.ID == 0 {
		return nil, badRequest("raft join: node id 0")
	}
	if b.cfg.peerTLSMissing() {
		// A voter it cannot send to would cost the cluster its majority.
		return nil, fmt.Errorf("%w: raft join: broker %s serves TLS but has no Config.PeerTransport.TLS, so it "+
			"cannot send raft messages to other brokers", transport.ErrUnavailable, b.cfg.Name)
	}
	if err := checkName("broker name", req.Name); err != nil {
		return nil, err
	}
	if err := checkAddr("broker address", req.Addr); err != nil {
		return nil, err
	}
	ctx, done, err := b.clusterCall(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	r := b.raft
	// A voter of that name under another id is the same broker that lost
	// its data dir: it is removed first (its old votes and log are gone).
	// Unless that voter is live: then the newcomer is a second process
	// started with a live broker's name (an operator's slip), and
	// removing the live voter would cost the cluster a working member.
	b.mu.Lock()
	old, had := b.fsm.memberByName(req.Name)
	b.mu.Unlock()
	if had && old.ID != req.ID {
		if why := b.memberLive(ctx, old.ID); why != "" {
			b.log.Warn("raft: join refused: a live broker holds that name", "name", req.Name, "addr", req.Addr,
				"live_id", fmt.Sprintf("%x", old.ID), "new_id", fmt.Sprintf("%x", req.ID), "because", why)
			return nil, fmt.Errorf("%w: broker name %q belongs to a live voter (raft id %x; %s): a second broker "+
				"of that name would evict it; stop that broker first (its replacement then joins as a new member), "+
				"or start this one under another name", transport.ErrInstanceInUse, req.Name, old.ID, why)
		}
		b.log.Info("raft: a broker rejoins under a new id; removing its old one", "name", req.Name,
			"old_id", fmt.Sprintf("%x", old.ID), "new_id", fmt.Sprintf("%x", req.ID))
		err := r.changeConf(ctx, raftpb.ConfChange{Type: raftpb.ConfChangeRemoveNode, NodeID: old.ID}, func() bool {
			b.mu.Lock()
			defer b.mu.Unlock()
			_, ok := b.fsm.members[old.ID]
			return !ok
		})
		if err != nil {
			return nil, err
		}
	}
	cctx, err := msgpack.Marshal(raftMember{Name: req.Name, Addr: req.Addr})
	if err != nil {
		return nil, err
	}
	err = r.changeConf(ctx, raftpb.ConfChange{Type: raftpb.ConfChangeAddNode, NodeID: req.ID, Context: cctx}, func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		_, ok := b.fsm.members[req.ID]
		return ok
	})
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return &transport.RaftJoinResponse{Members: b.fsm.memberList()}, nil
}

// memberLive says why the voter with Raft node id is live ("" if nothing
// says so): memberlist counts it alive, the raft leader (this broker)
// heard from it within an election timeout, or it answers an empty batch
// of raft messages addressed to it (any broker can ask, leader or not).
// A broker that is stopped, paused or cut off answers none of these
// (the leader's view lapses within two election timeouts).
func (b *Broker) memberLive(ctx context.Context, id uint64) string {
	if id == b.raft.id {
		return "it is the broker answering"
	}
	live, _ := b.del.members()
	for _, m := range live {
		if m.Raft == id {
			return "memberlist counts it alive at " + m.GRPC
		}
	}
	if b.raft.activePeers()[id] {
		return "the raft leader heard from it within an election timeout"
	}
	addr := b.peerAddr(id)
	if addr == "" {
		return ""
	}
	cc, err := transport.Dial(addr, b.cfg.PeerTransport)
	if err != nil {
		return ""
	}
	defer cc.Close()
	pctx, cancel := context.WithTimeout(ctx, min(b.cfg.Lease, time.Second))
	defer cancel()
	_, err = transport.NewRaftClient(cc).Send(pctx, &transport.RaftMessages{Version: transport.ProtocolVersion, From: b.raft.id, To: id})
	if err != nil {
		return ""
	}
	return "it answers as that voter at " + addr
}

// RaftRemove removes a broker from the Raft group for good: it no longer
// counts toward the majority. With Config.RequireIdentity it needs an
// admin identity.
func (b *Broker) RaftRemove(ctx context.Context, req *transport.RaftRemoveRequest) (*transport.RaftRemoveResponse, error) {
	if err := transport.CheckVersion(req.Version); err != nil {
		return nil, err
	}
	if err := b.authorize(ctx, "broker-remove", transport.RoleAdmin); err != nil {
		return nil, err
	}
	if err := checkName("broker name", req.Name); err != nil {
		return nil, err
	}
	ctx, done, err := b.clusterCall(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	b.mu.Lock()
	m, ok := b.fsm.memberByName(req.Name)
	b.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%w: no broker %q in the cluster", transport.ErrUnknownTable, req.Name)
	}
	err = b.raft.changeConf(ctx, raftpb.ConfChange{Type: raftpb.ConfChangeRemoveNode, NodeID: m.ID}, func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		_, ok := b.fsm.members[m.ID]
		return !ok
	})
	if err != nil {
		return nil, err
	}
	b.log.Info("broker removed from the cluster", "name", req.Name, "id", fmt.Sprintf("%x", m.ID))
	b.mu.Lock()
	defer b.mu.Unlock()
	return &transport.RaftRemoveResponse{ID: m.ID, Members: b.fsm.memberList()}, nil
}

// clusterCall starts a call that waits for the cluster (a proposal, a
// configuration change): Close waits for it, and its context ends with
// the caller's, with Close, or after ten election timeouts and a lease.
// done must be called when the call returns.
func (b *Broker) clusterCall(ctx context.Context) (_ context.Context, done func(), _ error) {
	if !b.enter() {
		return nil, nil, ErrClosed
	}
	ctx, cancel := context.WithTimeout(ctx, 10*raftElectionTicks*b.raft.tick+b.cfg.Lease)
	stop := context.AfterFunc(b.ctx, cancel)
	return ctx, func() { stop(); cancel(); b.wg.Done() }, nil
}

// joinRaft, on a new member, asks the live brokers (memberlist's view) to
// add it, one after the other, every RejoinInterval, until it is a voter.
func (b *Broker) joinRaft() {
	defer b.wg.Done()
	r := b.raft
	t := time.NewTicker(min(b.cfg.RejoinInterval, r.tick))
	defer t.Stop()
	var lastWarn time.Time
	for {
		b.mu.Lock()
		_, member := b.fsm.members[r.id]
		if member {
			// Its own addition applied: it holds everything decided
			// before it.
			b.setRaftReadyLocked()
		}
		b.mu.Unlock()
		if member {
			return
		}
		live, _ := b.del.members()
		for _, m := range live {
			if m.Name == b.cfg.Name || m.GRPC == "" {
				continue
			}
			err := b.askJoin(m.GRPC)
			if err == nil {
				b.log.Info("raft: added to the broker cluster", "via", m.Name)
				r.joinErr.Store(nil)
				break
			}
			if errors.Is(err, transport.ErrInstanceInUse) {
				msg := err.Error()
				if prev := r.joinErr.Swap(&msg); prev == nil || time.Since(lastWarn) >= joinLogEvery {
					lastWarn = time.Now()
					b.log.Warn("raft: the cluster refuses to add this broker: a live broker has its name; "+
						"it takes no part in decisions and keeps asking until that broker is gone", "via", m.Name, "err", msg)
				}
				break
			}
		}
		select {
		case <-b.ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (b *Broker) askJoin(addr string) error {
	cc, err := transport.Dial(addr, b.cfg.PeerTransport)
	if err != nil {
		return err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(b.ctx, 10*raftElectionTicks*b.raft.tick+b.cfg.Lease)
	defer cancel()
	_, err = transport.NewRaftClient(cc).Join(ctx, &transport.RaftJoinRequest{
		Version: transport.ProtocolVersion, ID: b.raft.id, Name: b.cfg.Name, Addr: b.grpc})
	if err != nil && b.ctx.Err() == nil {
		b.log.Debug("raft: join not done yet", "via", addr, "err", err)
	}
	return err
}
