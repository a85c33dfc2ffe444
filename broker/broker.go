package broker

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/vmihailenco/msgpack/v5"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/replmesh/replmesh/modes"
	"github.com/replmesh/replmesh/transport"
)

// Broker is one member of the broker cluster: it serves the Broker gRPC
// service, holds a copy of the registry, and spreads and repairs it with
// memberlist. Create it with New and stop it with Close.
//
// Concurrency. The fields fall in four groups, by what protects them:
//
//   - set by New and never written after it returns (read without a lock);
//   - atomics and channels, safe on their own;
//   - directQ, guarded by directMu;
//   - the broker's state (registry, sessions, membership as last read, and
//     the clocks of the periodic steps), guarded by mu.
//
// Lock order: mu and directMu are never held together (send runs after mu
// is released). No broker lock is held while calling memberlist, which
// calls the delegate (and through it merge and localState, which take mu)
// under its own locks; so memberlist's locks come before mu, never after
// (as do Prometheus's: the gauges take mu when gathered). The delegate's
// own mu (membership events) and joins' lock are leaves: nothing else is
// taken while either is held. Under mu the broker waits for no other
// goroutine: it wakes and ends sessions (non-blocking), logs and counts.
type Broker struct {
	// Set by New, then read-only.
	raft    *raftNode
	cfg     Config
	log     *slog.Logger
	srv     *transport.Server
	lis     net.Listener
	grpc    string // advertised gRPC address
	gossip  string // gossip address
	ml      *memberlist.Memberlist
	del     *delegate
	queue   *memberlist.TransmitLimitedQueue
	metrics *metrics
	started time.Time       // when New ran: joining gives up a lease after it
	ctx     context.Context // canceled by Close
	cancel  context.CancelFunc

	// Safe on their own.
	wg        sync.WaitGroup // the loop, the sender, joins, session handlers and their receivers
	kick      chan struct{}  // cap 1: wakes the loop
	direct    chan struct{}  // cap 1: wakes the sender
	closeOnce sync.Once
	closing   chan struct{} // closed when Close starts
	readyCh   chan struct{} // closed (under mu) when ready turns true
	nlive     atomic.Int32  // len(live), read by memberlist's queue, which must not take mu
	joins     joinLog       // logs join attempts; its own lock

	policy atomic.Pointer[modes.AccessPolicy] // the policy in force (see SetPolicy); safe on its own
	shared sessionShared                      // handshake turns (safe on their own) and shared topologies (under mu); see session.go

	directMu sync.Mutex
	directQ  map[string]*broadcast // records for the sender, latest per record

	// mu guards every field below, and each session's interest.
	mu       sync.Mutex
	shutting bool // Close has started: sessions are refused and ended, step does nothing

	// The registry and what sessions are told of it. rev counts changes of
	// a topology; it stays under mu (not an atomic) because every topology
	// pairs it with the registry state it describes.
	reg      *registry
	rev      uint64
	sessions map[instKey]*session
	watchers map[string]map[*session]struct{} // service -> sessions that need it

	// The decided state (applied by raft's goroutine, under mu) and the
	// grants applied, newest last (at most raftGrantHistory).
	fsm    *fsm
	grants []grantEvent

	// Membership as refreshMembers last installed it.
	live     []member // live brokers, sorted by name
	departed []member // brokers that died or left, sorted by name
	brokers  []string // gRPC addresses of live brokers, sorted
	ready    bool     // gossipReady and raftReady: sessions are served
	// gossipReady: the registry has been exchanged with the cluster (or
	// none was configured); raftReady: the raft node holds the decided
	// state (see setRaftReadyLocked).
	gossipReady, raftReady bool
	liveSince              map[string]time.Time // broker name -> when it became a live member
	// raftActive, on the raft leader, is the Raft node ids it heard from
	// within an election timeout (nil elsewhere), as step last read it.
	raftActive map[uint64]bool
	// aliveSince, on the raft leader, is when each broker it deems alive
	// (aliveLocked) last became so; nil elsewhere (see headsCurrentLocked).
	aliveSince map[string]time.Time

	// The clocks of the periodic steps (see step).
	downSince map[instKey]time.Time // instances seen without a live session, since
	goneAt    map[instKey]time.Time // tombstones, since
	dirty     map[instKey]struct{}  // records whose latest heads are not yet gossiped
	lastFlush time.Time             // when dirty was last gossiped
	joining   bool                  // a join is running
	lastJoin  time.Time             // when the last join started
	inflight  map[string]time.Time  // service -> when a grant was last proposed for it

	// Registers refused because another live session holds the name.
	refused map[instKey]*transport.RefusedRegister
}

// New starts a broker: it opens the gRPC listener and the gossip
// listeners, joins cfg.Join (in the background if no broker answers at
// once) and serves until Close. ctx bounds the start only.
func New(ctx context.Context, cfg Config) (_ *Broker, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	lis, err := transport.Listen(cfg.GRPCAddr)
	if err != nil {
		return nil, fmt.Errorf("broker: listen %s: %w", cfg.GRPCAddr, err)
	}
	b := &Broker{
		cfg:       cfg,
		lis:       lis,
		grpc:      lis.Addr().String(),
		kick:      make(chan struct{}, 1),
		direct:    make(chan struct{}, 1),
		directQ:   make(map[string]*broadcast),
		closing:   make(chan struct{}),
		reg:       newRegistry(),
		sessions:  make(map[instKey]*session),
		watchers:  make(map[string]map[*session]struct{}),
		started:   time.Now(),
		downSince: make(map[instKey]time.Time),
		goneAt:    make(map[instKey]time.Time),
		liveSince: make(map[string]time.Time),
		inflight:  make(map[string]time.Time),
		refused:   make(map[instKey]*transport.RefusedRegister),
		fsm:       newFSM(),
		dirty:     make(map[instKey]struct{}),
		readyCh:   make(chan struct{}),
		joins:     joinLog{every: joinLogEvery},
	}
	b.reg.owners, b.reg.modes = b.fsm.owners, b.fsm.modes
	b.policy.Store(cfg.Policy)
	if len(cfg.Join) == 0 {
		b.setReadyLocked()
	}
	if cfg.AdvertiseGRPC != "" {
		b.grpc = cfg.AdvertiseGRPC
	}
	b.ctx, b.cancel = context.WithCancel(context.Background())
	// The one cleanup path. Every failure returns before memberlist runs,
	// so the context and the listener are all there is to release.
	defer func() {
		if err != nil {
			b.cancel()
			lis.Close()
		}
	}()
	if b.cfg.Name == "" {
		if b.cfg.Name, err = defaultName(cfg.BindAddr); err != nil {
			return nil, err
		}
	}
	b.log = log.With("broker", b.cfg.Name)
	b.metrics = newMetrics(b)
	fresh := false
	if b.raft, fresh, err = b.openRaft(); err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	defer func() {
		if err != nil {
			b.raft.store.close()
		}
	}()
	meta, err := encodeMeta(nodeMeta{GRPC: b.grpc, Raft: b.raft.id})
	if err != nil {
		return nil, err
	}
	b.del = &delegate{b: b, meta: meta, nodes: make(map[string]member)}

	if host, _, _ := net.SplitHostPort(b.grpc); net.ParseIP(host) != nil && net.ParseIP(host).IsUnspecified() {
		b.log.Warn("the gRPC address handed to components is a wildcard address; set Config.AdvertiseGRPC", "addr", b.grpc)
	}
	mc, err := b.memberlistConfig(b.del)
	if err != nil {
		return nil, err
	}
	b.queue = &memberlist.TransmitLimitedQueue{
		NumNodes:       func() int { return b.numMembers() },
		RetransmitMult: mc.RetransmitMult,
	}
	if b.ml, err = memberlist.Create(mc); err != nil {
		return nil, fmt.Errorf("broker: start gossip on %s: %w", cfg.BindAddr, err)
	}
	if err = b.raft.start(fresh, len(cfg.Join) == 0); err != nil {
		b.ml.Shutdown()
		return nil, fmt.Errorf("broker: start raft: %w", err)
	}
	// Read once, now: memberlist keeps writing its nodes later.
	self := b.ml.LocalNode()
	b.gossip = net.JoinHostPort(self.Addr.String(), strconv.Itoa(int(self.Port)))

	b.srv = transport.NewServer(cfg.Transport, grpc.WaitForHandlers(true))
	transport.RegisterBrokerServer(b.srv, b)
	transport.RegisterRaftServer(b.srv, b)
	b.srv.Health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	b.srv.Health.SetServingStatus(transport.BrokerServiceName, healthpb.HealthCheckResponse_SERVING)

	b.refreshMembers(time.Now())
	b.wg.Add(5)
	go b.raft.run(b.ctx)
	go b.raft.proposer(b.ctx)
	if fresh && len(cfg.Join) > 0 {
		b.wg.Add(1)
		go b.joinRaft()
	} else {
		b.mu.Lock()
		b.setRaftReadyLocked()
		b.mu.Unlock()
	}
	go func() {
		defer b.wg.Done()
		if err := b.srv.Serve(lis); err != nil {
			b.log.Error("grpc serve", "err", err)
		}
	}()
	go b.loop()
	go b.sender()
	if len(cfg.Join) > 0 {
		b.mu.Lock()
		b.joining, b.lastJoin = true, time.Now()
		b.mu.Unlock()
		b.wg.Add(1)
		go b.joinThenIdle()
	}
	if !fresh || len(cfg.Join) == 0 {
		if err = b.raft.waitStarted(ctx, b.raft.store.commit); err != nil {
			b.Close()
			return nil, fmt.Errorf("broker: start raft: %w", err)
		}
	}
	if cfg.Transport.TLS == nil {
		if open := transport.NonLoopback([]string{cfg.GRPCAddr, cfg.AdvertiseGRPC}); len(open) > 0 {
			// Validate let it through: Insecure is set. Say so on every start.
			b.log.Warn("insecure mode: the gRPC service is plaintext and other hosts can reach it (Config.Insecure); "+
				"callers are trusted on their word", "reachable", open)
		}
	}
	if cfg.peerTLSMissing() {
		b.log.Warn("the broker serves TLS but Config.PeerTransport has no TLS: it can serve alone but cannot send raft messages to other brokers, and refuses their joins")
	}
	b.log.Info("broker started", "grpc", b.grpc, "gossip", b.GossipAddr(), "join", cfg.Join, "raft_id", fmt.Sprintf("%x", b.raft.id))
	return b, nil
}

func defaultName(bind string) (string, error) {
	host, err := os.Hostname()
	if err != nil || !validName(host) {
		host = "broker"
	}
	_, port, err := splitHostPort(bind)
	if err != nil {
		return "", err
	}
	if port == 0 {
		// No port to tell brokers on one host apart: add the pid.
		return host + "-" + strconv.Itoa(os.Getpid()), nil
	}
	return host + "-" + strconv.Itoa(port), nil
}

func encodeMeta(m nodeMeta) ([]byte, error) {
	buf, err := msgpack.Marshal(m)
	if err != nil {
		return nil, err
	}
	if len(buf) > memberlist.MetaMaxSize {
		return nil, invalid("Config.AdvertiseGRPC", "makes the node meta %d bytes, over memberlist's %d", len(buf), memberlist.MetaMaxSize)
	}
	return buf, nil
}

// Name returns the broker's name in the cluster.
func (b *Broker) Name() string { return b.cfg.Name }

// GRPCAddr returns the address of the Broker gRPC service (as advertised to
// components).
func (b *Broker) GRPCAddr() string { return b.grpc }

// GossipAddr returns the memberlist address other brokers join.
func (b *Broker) GossipAddr() string { return b.gossip }

// Server returns the broker's gRPC server, on which an embedding
// coordinator may register more services before traffic arrives.
func (b *Broker) Server() *grpc.Server { return b.srv.Server }

// Close stops the broker gracefully: health turns NOT_SERVING, the broker
// leaves the cluster (so the others stop counting on it at once), ends its
// sessions (components re-home to other brokers) and stops gRPC, waiting at
// most ShutdownTimeout for streams to finish. Safe to call more than once.
func (b *Broker) Close() error {
	var err error
	b.closeOnce.Do(func() {
		b.log.Info("broker stopping")
		b.srv.Health.Shutdown()
		close(b.closing)
		b.mu.Lock()
		b.shutting = true
		for _, s := range b.sessions {
			s.end(ErrClosed)
		}
		b.mu.Unlock()
		if !b.cfg.noLeave { // (tests: the others learn of it from their failure detector)
			if lerr := b.ml.Leave(b.leaveTimeout()); lerr != nil {
				b.log.Warn("leave cluster", "err", lerr)
			}
		}
		b.srv.GracefulStop(b.cfg.ShutdownTimeout)
		b.cancel()
		if serr := b.ml.Shutdown(); serr != nil {
			err = fmt.Errorf("broker: stop gossip: %w", serr)
		}
		b.wg.Wait()
		b.raft.stop()
		b.log.Info("broker stopped")
	})
	return err
}

// setReadyLocked records that the registry has been exchanged with the
// cluster; the broker serves sessions (and, if raft leader, decides) once
// its raft node is also caught up (setRaftReadyLocked).
func (b *Broker) setReadyLocked() {
	b.gossipReady = true
	b.openLocked()
}

// setRaftReadyLocked records that this broker's raft node holds the
// decided state: at once for a member (restarted or bootstrapped), once
// it applied its own addition for a new member.
func (b *Broker) setRaftReadyLocked() {
	b.raftReady = true
	b.openLocked()
}

func (b *Broker) openLocked() {
	if !b.ready && b.gossipReady && b.raftReady {
		b.ready = true
		close(b.readyCh)
	}
}

// leaveTimeout bounds the wait for the leave message to go out: ten gossip
// rounds (at least 250ms, at most ShutdownTimeout). It goes out in one or
// two rounds when any other broker is reachable; when none is (the others
// stopped first), waiting longer is futile.
func (b *Broker) leaveTimeout() time.Duration {
	g := memberlist.DefaultLANConfig().GossipInterval
	if b.cfg.Gossip != nil {
		g = b.cfg.Gossip.GossipInterval
	}
	return min(max(10*g, 250*time.Millisecond), b.cfg.ShutdownTimeout)
}

// enter registers a goroutine that Close must wait for; false once Close
// has started.
func (b *Broker) enter() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.shutting {
		return false
	}
	b.wg.Add(1)
	return true
}

func (b *Broker) kickLoop() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

func (b *Broker) numMembers() int { return max(int(b.nlive.Load()), 1) }

// merge applies records received from another broker.
func (b *Broker) merge(g *gossipMsg) {
	now := time.Now()
	b.mu.Lock()
	var out []*broadcast
	changed := false
	decide := false
	for _, rec := range g.Instances {
		old, kept := b.reg.mergeInstance(rec)
		if !kept {
			continue
		}
		changed = true
		if topoChanged(old, rec) {
			b.notifyLocked(rec.Service)
			decide = true
		}
		if bc := b.authorityLocked(rec, now); bc != nil {
			out = append(out, bc)
		}
	}
	if changed {
		b.rev++
	}
	b.mu.Unlock()
	b.send(out)
	if decide {
		b.kickLoop()
	}
}

// authorityLocked enforces that the broker holding a session is the
// authority on its instance's record. rec has just been merged.
func (b *Broker) authorityLocked(rec *instanceRec, now time.Time) *broadcast {
	if b.shutting {
		return nil
	}
	k := rec.key()
	s := b.sessions[k]
	switch {
	case s != nil && rec.Session == s.id:
		if rec.Gone || !rec.Connected {
			// Removed or marked disconnected behind our back (a partition):
			// the session is open here, so re-assert it.
			return b.writeLocked(s, rec, now, true)
		}
	case s != nil && rec.Session.compare(s.id) > 0:
		// The component opened a newer session elsewhere.
		b.log.Info("session superseded by a newer one (two processes with one instance id fight this way)",
			"service", k.Service, "instance", k.Instance, "newer_on", rec.Session.Broker)
		b.dropSessionLocked(s)
		s.end(ErrSuperseded)
	case s == nil && rec.Session.Broker == b.cfg.Name && rec.Connected && !rec.Gone:
		// A record says this broker holds a session it does not hold (this
		// broker restarted under the same name): it is disconnected.
		d := rec.clone()
		d.Connected = false
		d.SeenMs = now.UnixMilli()
		d.Ver = b.reg.next(b.cfg.Name, now.UnixMicro())
		b.reg.store(d)
		return b.instanceBroadcast(d)
	}
	return nil
}

// writeLocked writes a new version of the record of s's instance, based
// on rec, connected, and returns its broadcast.
func (b *Broker) writeLocked(s *session, rec *instanceRec, now time.Time, topo bool) *broadcast {
	n := rec.clone()
	n.Session = s.id
	n.Connected, n.Gone = true, false
	n.SeenMs = now.UnixMilli()
	n.Ver = b.reg.next(b.cfg.Name, now.UnixMicro())
	b.reg.store(n)
	b.rev++
	if topo {
		b.notifyLocked(n.Service)
	}
	delete(b.dirty, n.key())
	return b.instanceBroadcast(n)
}

func (b *Broker) localState() ([]byte, error) {
	b.mu.Lock()
	g := b.reg.snapshot()
	b.mu.Unlock()
	// Records are never modified once stored, so encoding outside the lock
	// is safe.
	return encodeGossip(g)
}

func (b *Broker) instanceBroadcast(rec *instanceRec) *broadcast {
	return newBroadcast("i/"+rec.Service+"/"+rec.Instance, &gossipMsg{Instances: []*instanceRec{rec}})
}

func newBroadcast(name string, g *gossipMsg) *broadcast {
	return &broadcast{name: name, rec: g, msg: mustEncode(g)}
}

func mustEncode(g *gossipMsg) []byte {
	buf, err := encodeGossip(g)
	if err != nil {
		// Records are plain structs of strings and numbers: encoding cannot fail.
		panic(fmt.Sprintf("broker: encode gossip: %v", err))
	}
	return buf
}

// send spreads records. Each goes to memberlist's broadcast queue (UDP
// gossip piggybacked on memberlist's own packets, a few records per packet).
// That alone is probabilistic: a record is sent in at most
// RetransmitMult*log10(n+1) packets, some of them probes, and a member can
// be missed, which the push/pull exchange repairs only every
// PushPullInterval (30s on a LAN). So every record that changes a topology
// or a decision (all but the coalesced head and position refreshes) is also
// handed to the sender, which delivers it to every live member over TCP; so
// is a record too large for a packet, and every record while the queue is
// backed up (a burst of registrations, say after a broker restart).
func (b *Broker) send(out []*broadcast) {
	if len(out) == 0 {
		return
	}
	b.metrics.gossipOut.Add(float64(len(out)))
	backedUp := b.queue.NumQueued() >= maxQueued
	var direct []*broadcast
	for _, bc := range out {
		udp := !backedUp && len(bc.msg) <= maxBroadcast
		if udp {
			b.queue.QueueBroadcast(bc)
		}
		if !udp || !bc.refresh {
			direct = append(direct, bc)
		}
	}
	if len(direct) == 0 {
		return
	}
	b.directMu.Lock()
	for _, bc := range direct {
		b.directQ[bc.name] = bc
	}
	b.directMu.Unlock()
	select {
	case b.direct <- struct{}{}:
	default:
	}
}

// sender delivers the records handed over by send to every other member
// over TCP, in batches of at most maxDirectBatch bytes.
func (b *Broker) sender() {
	defer b.wg.Done()
	for {
		select {
		case <-b.ctx.Done():
			return
		case <-b.direct:
		}
		b.directMu.Lock()
		q := b.directQ
		b.directQ = make(map[string]*broadcast)
		b.directMu.Unlock()
		var batches [][]byte
		g, size := &gossipMsg{}, 0
		flush := func() {
			if size > 0 {
				batches = append(batches, mustEncode(g))
				g, size = &gossipMsg{}, 0
			}
		}
		for _, bc := range q {
			g.Instances = append(g.Instances, bc.rec.Instances...)
			if size += len(bc.msg); size >= maxDirectBatch {
				flush()
			}
		}
		flush()
		live, _ := b.del.members()
		for _, m := range live {
			if m.Name == b.cfg.Name {
				continue
			}
			for _, msg := range batches {
				if err := b.ml.SendReliable(m.node(), msg); err != nil {
					if b.ctx.Err() == nil {
						b.log.Debug("send records", "to", m.Name, "err", err)
					}
					break
				}
			}
		}
	}
}

// notifyLocked wakes the local sessions that need the service's topology.
func (b *Broker) notifyLocked(service string) {
	for s := range b.watchers[service] {
		s.wakeUp()
	}
}

func (b *Broker) notifyAllLocked() {
	for _, s := range b.sessions {
		s.wakeUp()
	}
}
