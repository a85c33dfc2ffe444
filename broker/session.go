package broker

import (
	"cmp"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/replmesh/replmesh/transport"
)

// session is one open Session stream on this broker.
type session struct {
	key instKey
	id  sessionID

	wake    chan struct{} // cap 1: the topology may have changed
	done    chan struct{} // closed by end
	endOnce sync.Once
	endErr  error

	lastFrame *atomic.Int64 // unix ms of the last frame received (stored by the stream's receiver)
	lastPing  atomic.Int64  // the newest SessionRequest.Ping received (echoed as Pong)

	// guarded by Broker.mu
	interest []string

	// owned by the handler goroutine
	last *transport.Topology
}

func (s *session) wakeUp() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// end asks the handler to finish the stream with err.
func (s *session) end(err error) {
	s.endOnce.Do(func() {
		s.endErr = err
		close(s.done)
	})
}

// Session serves one component's Session stream (see transport.Register
// and docs/design.md, "Wire protocol"). The first frame must be a Register; the
// broker answers with the component's topology, then pushes a new one each
// time it changes (and only then), and sends heartbeats every
// Config.Heartbeat. While the stream is open the instance is alive; after
// it ends the instance stays registered for Config.Lease, during which the
// component may open a session on any broker to keep it. A stream that
// delivers no frame for half the lease (a blackholed link, which TCP and
// gRPC keepalives notice only much later) is ended by the broker, so the
// lease starts running then. Every frame carrying a Ping is answered at
// once with a heartbeat echoing it (see transport.SessionResponse.Pong).
func (b *Broker) Session(stream transport.SessionServer) error {
	if !b.enter() {
		return ErrClosed
	}
	defer b.wg.Done()
	ctx := stream.Context()

	// The handshake's turn comes before the Register is read: gRPC holds
	// a waiting stream's first frame in its flow-control window (64 KiB),
	// and decodes it only once Recv is called.
	done, err := b.shared.turn(ctx, b)
	if err != nil {
		return err
	}
	defer done()

	frames := make(chan *transport.SessionRequest)
	recvErr := make(chan error, 1)
	stop := make(chan struct{})
	defer close(stop)
	// The arrival of the last frame, stored by the receiver: a handler busy
	// sending or waiting for the lock must not take the time it was busy
	// for silence of the component.
	arrived := new(atomic.Int64)
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			f, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			arrived.Store(time.Now().UnixMilli())
			select {
			case frames <- f:
			case <-stop:
				return
			}
		}
	}()

	timer := time.NewTimer(b.cfg.RegisterTimeout)
	var first *transport.SessionRequest
	select {
	case first = <-frames:
		timer.Stop()
	case err := <-recvErr:
		timer.Stop()
		if errors.Is(err, io.EOF) {
			return badRequest("session closed before its Register frame")
		}
		return err
	case <-timer.C:
		return badRequest("no Register frame within %s", b.cfg.RegisterTimeout)
	case <-ctx.Done():
		timer.Stop()
		return ctx.Err()
	case <-b.closing:
		timer.Stop()
		return ErrClosed
	}
	reg, err := b.checkRegister(first)
	if err != nil {
		b.log.Info("session refused", "err", err)
		return err
	}
	if err := b.authorizeRegister(ctx, reg); err != nil {
		return err
	}
	// A broker that has not yet exchanged the registry with the cluster
	// would hand out a partial topology (an owner told it is a standby):
	// wait until it has.
	select {
	case <-b.readyCh:
	case <-ctx.Done():
		return ctx.Err()
	case <-b.closing:
		return ErrClosed
	}
	s, topo, err := b.open(reg, arrived)
	if err != nil {
		return err
	}
	// Registered: what the handshake decoded is in the registry or gone.
	// The first topology is sent after the turn, so that a component slow
	// to read it holds no other's handshake back.
	done()
	defer b.closeSession(s)
	s.notePing(first.Ping)
	log := b.log.With("service", reg.Service, "instance", reg.Instance)
	log.Debug("session opened", "addr", reg.Addr, "owner", reg.Owner, "role", topo.Role)
	if err := b.push(stream, s, topo); err != nil {
		return err
	}

	onFrame := func(f *transport.SessionRequest) error {
		s.lastFrame.Store(time.Now().UnixMilli())
		if err := b.handleFrame(s, f); err != nil {
			log.Info("session ended by a bad frame", "err", err)
			return err
		}
		if f.Ping > 0 {
			s.notePing(f.Ping)
			if err := stream.Send(b.response(s, transport.SessionHeartbeat, nil)); err != nil {
				return err
			}
		}
		return nil
	}
	hb := time.NewTicker(b.cfg.Heartbeat)
	defer hb.Stop()
	for {
		select {
		case f := <-frames:
			if err := onFrame(f); err != nil {
				return err
			}
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				log.Debug("session closed by the component")
				return nil
			}
			return err
		case <-s.wake:
			topo, err := b.view(s)
			if err != nil {
				return err
			}
			if !topoEqual(s.last, topo) {
				if err := b.push(stream, s, topo); err != nil {
					return err
				}
			}
		case <-hb.C:
			// A frame handed over while this handler was busy is no
			// silence either.
			select {
			case f := <-frames:
				if err := onFrame(f); err != nil {
					return err
				}
			default:
			}
			if silent := time.Since(time.UnixMilli(s.lastFrame.Load())); silent > b.cfg.silenceCutoff() {
				log.Info("session ended: no frame from the component", "silent", silent.Round(time.Millisecond))
				return fmt.Errorf("%w: no frame from %s/%s for %s", transport.ErrUnavailable, s.key.Service, s.key.Instance, silent.Round(time.Millisecond))
			}
			if err := stream.Send(b.response(s, transport.SessionHeartbeat, nil)); err != nil {
				return err
			}
		case <-s.done:
			log.Debug("session ended by the broker", "err", s.endErr)
			return s.endErr
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// notePing records the newest Ping received on s.
func (s *session) notePing(ping int64) {
	for {
		old := s.lastPing.Load()
		if ping <= old || s.lastPing.CompareAndSwap(old, ping) {
			return
		}
	}
}

// response builds a frame for s: the pong, the lease and whether this
// broker holds s's instance primary ride on every frame, so that a primary
// renews its lease from whatever it receives. PrimaryEpoch is set only
// while this broker's newest quorum confirmation (a ReadIndex round, see
// raft.go) is under a quarter of a lease old and the decided state it
// applied names the instance primary.
func (b *Broker) response(s *session, kind transport.SessionKind, topo *transport.Topology) *transport.SessionResponse {
	f := &transport.SessionResponse{Kind: kind, Broker: b.cfg.Name, Topology: topo,
		Pong: s.lastPing.Load(), LeaseMs: b.cfg.Lease.Milliseconds()}
	b.mu.Lock()
	if rec := b.reg.inst(s.key); rec != nil && rec.Session == s.id && !rec.Gone &&
		b.reg.role(rec) == transport.RolePrimary && b.raft.confirmedWithin(b.cfg.Lease/4) {
		f.PrimaryEpoch = b.reg.epoch(s.key.Service)
	}
	b.mu.Unlock()
	return f
}

func (b *Broker) push(stream transport.SessionServer, s *session, topo *transport.Topology) error {
	if err := stream.Send(b.response(s, transport.SessionTopology, topo)); err != nil {
		return err
	}
	s.last = topo
	b.metrics.pushes.Inc()
	return nil
}

// topoEqual compares two topologies, ignoring the revision.
func topoEqual(a, b *transport.Topology) bool {
	if a == nil || b == nil {
		return a == b
	}
	x, y := *a, *b
	x.Revision, y.Revision = 0, 0
	return reflect.DeepEqual(x, y)
}

// checkRegister validates a session's first frame and returns its Register
// with tables and subscriptions sorted.
func (b *Broker) checkRegister(f *transport.SessionRequest) (*transport.Register, error) {
	if f.Kind != transport.SessionRegister || f.Register == nil {
		return nil, badRequest("the first Session frame must be a Register (kind %d with a Register), got kind %d", transport.SessionRegister, f.Kind)
	}
	r := *f.Register
	if err := transport.CheckVersion(r.Version); err != nil {
		return nil, err
	}
	if b.cfg.Token != "" && subtle.ConstantTimeCompare([]byte(r.Token), []byte(b.cfg.Token)) != 1 {
		return nil, fmt.Errorf("%w: bad or missing session token for %s/%s", transport.ErrPermission, r.Service, r.Instance)
	}
	r.Token = ""
	if err := checkName("Register.Service", r.Service); err != nil {
		return nil, err
	}
	if err := checkName("Register.Instance", r.Instance); err != nil {
		return nil, err
	}
	if r.Addr != "" {
		if err := checkAddr("Register.Addr", r.Addr); err != nil {
			return nil, err
		}
	} else if r.Owner {
		return nil, badRequest("owner instance %s/%s registers no address", r.Service, r.Instance)
	}
	if r.Epoch > MaxEpoch {
		return nil, badRequest("Register.Epoch %d is above the largest epoch a broker grants (%d)", r.Epoch, uint64(MaxEpoch))
	}
	if r.MinSyncStandbys < 0 || r.MinSyncStandbys > transport.MaxMinSyncStandbys {
		return nil, badRequest("Register.MinSyncStandbys %d is outside 0..%d", r.MinSyncStandbys, transport.MaxMinSyncStandbys)
	}
	if r.MinSyncStandbys > 0 && !r.Owner {
		return nil, badRequest("Register.MinSyncStandbys %d from %s/%s, which is no owner instance", r.MinSyncStandbys, r.Service, r.Instance)
	}
	var err error
	if r.Tables, err = b.checkTables(r.Service, r.Tables); err != nil {
		return nil, err
	}
	if r.Subscriptions, err = b.checkSubs(r.Service, r.Subscriptions); err != nil {
		return nil, err
	}
	return &r, nil
}

// checkTables validates the tables an instance of service reports and
// returns them sorted; more than its limit (Config.MaxTables, or the
// policy's) is ErrTooLarge.
func (b *Broker) checkTables(service string, in []transport.TableInfo) ([]transport.TableInfo, error) {
	if limit := b.limitsFor(service).tables; len(in) > limit {
		return nil, b.limited("tables", "%s reports %d tables, at most %d", service, len(in), limit)
	}
	if len(in) == 0 {
		return nil, nil
	}
	out := slices.Clone(in)
	slices.SortFunc(out, func(a, b transport.TableInfo) int { return strings.Compare(a.Table, b.Table) })
	for i, t := range out {
		if err := checkName("table", t.Table); err != nil {
			return nil, err
		}
		if err := checkMode("mode of table "+t.Table, t.Mode); err != nil {
			return nil, err
		}
		if len(t.LogID) > 128 {
			return nil, badRequest("log id of table %s is too long", t.Table)
		}
		if t.Epoch > MaxEpoch {
			return nil, badRequest("epoch %d of table %s is above the largest epoch a broker grants (%d)", t.Epoch, t.Table, uint64(MaxEpoch))
		}
		if t.Head > MaxHead {
			return nil, badRequest("head %d of table %s is above the largest head a broker takes (%d)", t.Head, t.Table, uint64(MaxHead))
		}
		if i > 0 && out[i-1].Table == t.Table {
			return nil, badRequest("table %s listed twice", t.Table)
		}
	}
	return out, nil
}

// checkSubs validates the subscriptions an instance of service reports
// and returns them sorted; more than its limit (Config.MaxSubscriptions,
// or the policy's) is ErrTooLarge.
func (b *Broker) checkSubs(service string, in []transport.SubInfo) ([]transport.SubInfo, error) {
	if limit := b.limitsFor(service).subscriptions; len(in) > limit {
		return nil, b.limited("subscriptions", "%s reports %d subscriptions, at most %d", service, len(in), limit)
	}
	if len(in) == 0 {
		return nil, nil
	}
	out := slices.Clone(in)
	slices.SortFunc(out, func(a, b transport.SubInfo) int {
		return cmp.Or(strings.Compare(a.Service, b.Service), strings.Compare(a.Table, b.Table))
	})
	for i, s := range out {
		if err := checkName("subscription service", s.Service); err != nil {
			return nil, err
		}
		if err := checkName("subscription table", s.Table); err != nil {
			return nil, err
		}
		if err := checkMode("mode of subscription "+s.Service+"/"+s.Table, s.Mode); err != nil {
			return nil, err
		}
		if len(s.State) > 64 {
			return nil, badRequest("state of subscription %s/%s is too long", s.Service, s.Table)
		}
		if len(s.Running) > maxSubText || len(s.Reason) > maxSubText {
			return nil, badRequest("running mode or reason of subscription %s/%s is longer than %d bytes", s.Service, s.Table, maxSubText)
		}
		// The rate is rendered as JSON (/api/status), which has no NaN
		// or infinity: one bad report would break the status of the
		// whole cluster.
		if math.IsNaN(s.XferRate) || math.IsInf(s.XferRate, 0) || s.XferRate < 0 {
			return nil, badRequest("transfer rate of subscription %s/%s is %v, not a finite rate", s.Service, s.Table, s.XferRate)
		}
		if i > 0 && out[i-1].Service == s.Service && out[i-1].Table == s.Table {
			return nil, badRequest("subscription %s/%s listed twice", s.Service, s.Table)
		}
	}
	return out, nil
}

// open registers a new session, whose receiver stores the arrival of
// each frame in arrived, and returns its first topology.
func (b *Broker) open(r *transport.Register, arrived *atomic.Int64) (*session, *transport.Topology, error) {
	now := time.Now()
	b.mu.Lock()
	if b.shutting {
		b.mu.Unlock()
		return nil, nil, ErrClosed
	}
	k := instKey{r.Service, r.Instance}
	if err := b.checkRegistrationLocked(k); err != nil {
		b.mu.Unlock()
		b.log.Info("session refused", "err", err)
		return nil, nil, err
	}
	if err := b.checkInUseLocked(r, now); err != nil {
		b.mu.Unlock()
		b.log.Warn("session refused: the instance name is in use", "service", r.Service, "instance", r.Instance,
			"addr", r.Addr, "err", err)
		return nil, nil, err
	}
	start := now.UnixNano()
	if prev := b.reg.inst(k); prev != nil && prev.Session.Start >= start {
		start = prev.Session.Start + 1
	}
	s := &session{
		key:       k,
		id:        sessionID{Start: start, Broker: b.cfg.Name},
		wake:      make(chan struct{}, 1),
		done:      make(chan struct{}),
		lastFrame: arrived,
	}
	s.lastFrame.Store(now.UnixMilli())
	if old := b.sessions[k]; old != nil {
		b.dropSessionLocked(old)
		old.end(ErrSuperseded)
	}
	b.sessions[k] = s
	rec := &instanceRec{
		Service:   r.Service,
		Instance:  r.Instance,
		Addr:      r.Addr,
		Owner:     r.Owner,
		Tables:    r.Tables,
		Subs:      r.Subscriptions,
		Epoch:     r.Epoch,
		MinSync:   r.MinSyncStandbys,
		Session:   s.id,
		Connected: true,
		SeenMs:    now.UnixMilli(),
		Ver:       b.reg.next(b.cfg.Name, now.UnixMicro()),
	}
	b.capHeadsLocked(rec)
	shareTableNames(rec.Tables, b.tablesOfServiceLocked(rec.Service, k))
	b.reg.store(rec)
	b.watchLocked(s, rec.interest())
	delete(b.downSince, k)
	delete(b.goneAt, k)
	delete(b.dirty, k)
	b.rev++
	b.notifyLocked(rec.Service)
	out := []*broadcast{b.instanceBroadcast(rec)}
	var grants []*command
	if b.ready && b.raft.isLeader() {
		// Decide at once when this broker is the raft leader, so a lone
		// owner learns it is primary from its first topology.
		grants = b.decideLocked(rec.Service, now)
	}
	topo := b.topologyLocked(rec)
	b.mu.Unlock()
	b.send(out)
	if len(grants) > 0 {
		ctx, cancel := context.WithTimeout(b.ctx, b.cfg.Lease/2)
		for _, c := range grants {
			_ = b.raft.propose(ctx, c)
		}
		cancel()
		if t, err := b.view(s); err == nil {
			topo = t
		}
	}
	b.kickLoop()
	return s, topo, nil
}

// checkInUseLocked refuses (ErrInstanceInUse) a Register for an instance
// that holds a live session: open on this broker, or connected on another
// broker (unless that broker looks gone and the Register comes from the
// instance's own address). Two processes with one instance name would otherwise take
// turns, each new session superseding the other. The name is free again
// once that session ends (its lease then runs as usual: the instance may
// come back on any broker within it). The refusal is logged, counted and
// shown in Status.
func (b *Broker) checkInUseLocked(r *transport.Register, now time.Time) error {
	k := instKey{r.Service, r.Instance}
	rec := b.reg.inst(k)
	if rec == nil || rec.Gone || !rec.Connected {
		return nil
	}
	if rec.Session.Broker == b.cfg.Name {
		if s := b.sessions[k]; s == nil || s.id != rec.Session {
			return nil
		}
	} else if !b.aliveLocked(rec.Session.Broker) && rec.Addr == r.Addr {
		// The holding broker looks gone from here: the instance itself
		// (same address) re-homing within its lease. Another process
		// waits until the lease lapses (the record is then Gone): "looks
		// gone" is this broker's own view, and a broker that merely
		// cannot hear the holder's (a one-way partition, a raft leader
		// that has not heard from it for an election timeout) must not
		// hand a live holder's name to a newcomer.
		return nil
	}
	holder := rec.Addr
	if holder == "" {
		holder = "(no address)"
	}
	ref := b.refused[k]
	if ref == nil {
		if len(b.refused) >= maxRefused {
			for rk := range b.refused {
				delete(b.refused, rk)
				break
			}
		}
		ref = &transport.RefusedRegister{Service: r.Service, Instance: r.Instance}
		b.refused[k] = ref
	}
	ref.Addr, ref.Holder, ref.AtMs = r.Addr, holder, now.UnixMilli()
	ref.Count++
	b.metrics.limited.WithLabelValues("instance_in_use").Inc()
	return fmt.Errorf("%w: %s/%s has a live session from %s on broker %s; a second process with this instance name? It may register once that session ends",
		transport.ErrInstanceInUse, r.Service, r.Instance, holder, rec.Session.Broker)
}

// maxRefused bounds the refused Registers Status remembers.
const maxRefused = 256

// view returns the current topology of s's instance.
func (b *Broker) view(s *session) (*transport.Topology, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	rec := b.reg.inst(s.key)
	if rec == nil || rec.Session != s.id {
		return nil, ErrSuperseded
	}
	return b.topologyLocked(rec), nil
}

// handleFrame handles a frame after the Register.
func (b *Broker) handleFrame(s *session, f *transport.SessionRequest) error {
	switch f.Kind {
	case transport.SessionHeartbeat:
		return nil
	case transport.SessionUpdate:
		return b.update(s, f)
	case transport.SessionRegister:
		return badRequest("Register sent twice on one session")
	default:
		return badRequest("unexpected Session frame kind %d from a component", f.Kind)
	}
}

// update applies a SessionUpdate: new table heads and/or subscription
// positions. A list that is absent is left as it was. Changes of heads and
// positions only are gossiped at most every UpdateInterval; anything that
// changes a topology is gossiped and pushed at once.
func (b *Broker) update(s *session, f *transport.SessionRequest) error {
	tables, err := b.checkTables(s.key.Service, f.Tables)
	if err != nil {
		return err
	}
	subs, err := b.checkSubs(s.key.Service, f.Subscriptions)
	if err != nil {
		return err
	}
	if b.cfg.RequireIdentity {
		// The session was opened by this identity (authorizeRegister).
		if err := b.authorizeSubs(s.key.Service, s.key.Instance, subs); err != nil {
			return err
		}
	}
	if tables == nil && subs == nil {
		return nil
	}
	now := time.Now()
	b.mu.Lock()
	rec := b.reg.inst(s.key)
	if rec == nil || rec.Session != s.id {
		b.mu.Unlock()
		return ErrSuperseded
	}
	n := rec.clone()
	if tables != nil {
		shareTableNames(tables, rec.Tables)
		n.Tables = tables
	}
	if subs != nil {
		n.Subs = subs
	}
	n.SeenMs = now.UnixMilli()
	n.Ver = b.reg.next(b.cfg.Name, now.UnixMicro())
	b.capHeadsLocked(n)
	b.reg.store(n)
	b.rev++
	var out []*broadcast
	topo := topoChanged(rec, n)
	if topo {
		b.watchLocked(s, n.interest())
		b.notifyLocked(n.Service)
		s.wakeUp()
		delete(b.dirty, s.key)
		out = append(out, b.instanceBroadcast(n))
	} else {
		b.dirty[s.key] = struct{}{}
	}
	b.mu.Unlock()
	b.send(out)
	if topo {
		b.kickLoop()
	}
	return nil
}

// closeSession forgets s; if its instance's record is still s's, it is
// marked disconnected and its lease starts running.
func (b *Broker) closeSession(s *session) {
	now := time.Now()
	b.mu.Lock()
	var out []*broadcast
	if b.dropSessionLocked(s) && !b.shutting {
		if rec := b.reg.inst(s.key); rec != nil && rec.Session == s.id && rec.Connected && !rec.Gone {
			d := rec.clone()
			d.Connected = false
			d.SeenMs = now.UnixMilli()
			d.Ver = b.reg.next(b.cfg.Name, now.UnixMicro())
			b.reg.store(d)
			b.downSince[s.key] = now
			delete(b.dirty, s.key)
			b.rev++
			out = append(out, b.instanceBroadcast(d))
		}
	}
	b.mu.Unlock()
	b.send(out)
	b.kickLoop()
}

// dropSessionLocked removes s from the session tables; false if it was not
// there any more.
func (b *Broker) dropSessionLocked(s *session) bool {
	if b.sessions[s.key] != s {
		return false
	}
	delete(b.sessions, s.key)
	b.watchLocked(s, nil)
	return true
}

// watchLocked makes s the watcher of exactly svcs.
func (b *Broker) watchLocked(s *session, svcs []string) {
	for _, svc := range s.interest {
		if w := b.watchers[svc]; w != nil {
			delete(w, s)
			if len(w) == 0 {
				delete(b.watchers, svc)
			}
		}
	}
	s.interest = svcs
	for _, svc := range svcs {
		w := b.watchers[svc]
		if w == nil {
			w = make(map[*session]struct{})
			b.watchers[svc] = w
		}
		w[s] = struct{}{}
	}
}

// sessionShared is what the sessions of a broker share beyond the
// registry: the turns of their handshakes, and the owner part of their
// topologies. The zero value is ready.
type sessionShared struct {
	// Handshake turns: slots bounds the handshakes broker-wide (made on
	// first use, Config.MaxPendingSessions); byID gives each identity one
	// turn at a time.
	slotsOnce sync.Once
	slots     chan struct{}
	mu        sync.Mutex // guards byID and joining; a leaf
	byID      map[string]*identityTurn
	// joining counts, per service and instance, the handshakes of
	// identities that are not registered yet (see precheckRegistration).
	joining map[string]map[string]int

	// owners, guarded by Broker.mu: per service, the owner part of the
	// topologies (see ownerViewLocked).
	owners map[string]*ownerView
}

// identityTurn is one identity's handshake turn, and how many of its
// sessions hold or wait for it.
type identityTurn struct {
	turn  chan struct{} // cap 1: held by the identity's handshake
	users int
}

func (h *sessionShared) slotsOf(b *Broker) chan struct{} {
	h.slotsOnce.Do(func() { h.slots = make(chan struct{}, orDefault(b.cfg.MaxPendingSessions, DefaultMaxPendingSessions)) })
	return h.slots
}

// pending returns the handshakes in progress.
func (h *sessionShared) pending(b *Broker) int { return len(h.slotsOf(b)) }

// turn waits for the handshake turn of the session of ctx, which lasts
// until its Register is registered or refused: its identity's one turn
// (with RequireIdentity), then one of the broker's MaxPendingSessions
// slots. A registration that the caller's identity could not make (its
// service is at its limit) is refused first, without waiting: its Register
// is never read. Waiting longer than PendingSessionWait is
// ResourceExhausted. The returned func gives the turn back; it may be
// called more than once.
func (h *sessionShared) turn(ctx context.Context, b *Broker) (_ func(), err error) {
	c, err := b.caller(ctx)
	if err != nil {
		return nil, b.deny("register", "register: %v", err)
	}
	leave, err := b.precheckRegistration(c)
	if err != nil {
		return nil, err
	}
	wait := time.NewTimer(orDefault(b.cfg.PendingSessionWait, DefaultPendingSessionWait))
	defer wait.Stop()
	var held []func()
	done := func() {
		for _, f := range slices.Backward(held) {
			f()
		}
		held = nil
	}
	held = append(held, leave)
	defer func() {
		if err != nil {
			done()
		}
	}()
	key := ""
	if c.checked {
		key = c.id.String()
	}
	if key != "" {
		h.mu.Lock()
		if h.byID == nil {
			h.byID = make(map[string]*identityTurn)
		}
		t := h.byID[key]
		if t == nil {
			t = &identityTurn{turn: make(chan struct{}, 1)}
			h.byID[key] = t
		}
		if limit, n := orDefault(b.cfg.MaxPendingPerIdentity, DefaultMaxPendingPerIdentity), t.users; n >= limit {
			h.mu.Unlock() // n, not t.users, below: others change it under h.mu
			return nil, b.limited("identity_sessions", "session of %s: %d sessions of this identity are in or waiting for their handshake, at most %d",
				c.id, n, limit)
		}
		t.users++
		h.mu.Unlock()
		drop := func() {
			h.mu.Lock()
			if t.users--; t.users == 0 {
				delete(h.byID, key)
			}
			h.mu.Unlock()
		}
		select {
		case t.turn <- struct{}{}:
			held = append(held, func() { <-t.turn; drop() })
		case <-wait.C:
			drop()
			return nil, b.limited("identity_sessions", "session of %s: another session of this identity was in its handshake for longer than %s",
				c.id, orDefault(b.cfg.PendingSessionWait, DefaultPendingSessionWait))
		case <-ctx.Done():
			drop()
			return nil, ctx.Err()
		case <-b.closing:
			drop()
			return nil, ErrClosed
		}
	}
	slots := h.slotsOf(b)
	select {
	case slots <- struct{}{}:
		held = append(held, func() { <-slots })
	case <-wait.C:
		return nil, b.limited("pending_sessions", "session: no handshake turn within %s (at most %d sessions in their handshake at once)",
			orDefault(b.cfg.PendingSessionWait, DefaultPendingSessionWait), cap(slots))
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-b.closing:
		return nil, ErrClosed
	}
	return done, nil
}

// precheckRegistration refuses, before its Register is read, a session
// whose identity is an instance its service cannot register now: the
// limits of checkRegistrationLocked (which open applies again), counting
// the handshakes of other new instances of the service as registered.
// A flood of new instances is so refused at once, holding nothing,
// rather than waiting for its turn with its Register in gRPC's buffers.
// An instance that is registered already (a component reconnecting)
// passes. leave ends the handshake's count.
func (b *Broker) precheckRegistration(c caller) (leave func(), err error) {
	if !c.checked || c.id.Role != transport.RoleService {
		return func() {}, nil
	}
	k := instKey{c.id.Service, c.id.Instance}
	h := &b.shared
	b.mu.Lock()
	defer b.mu.Unlock()
	if prev := b.reg.inst(k); prev != nil && !prev.Gone {
		return func() {}, nil
	}
	h.mu.Lock()
	others := len(h.joining[k.Service])
	if h.joining[k.Service][k.Instance] > 0 {
		others-- // this identity counts once, however many sessions it opens
	}
	h.mu.Unlock()
	if err := b.checkRegistrationLockedPlus(k, others); err != nil {
		b.log.Info("session refused", "err", err)
		return nil, err
	}
	h.mu.Lock()
	if h.joining == nil {
		h.joining = make(map[string]map[string]int)
	}
	if h.joining[k.Service] == nil {
		h.joining[k.Service] = make(map[string]int)
	}
	h.joining[k.Service][k.Instance]++
	h.mu.Unlock()
	return func() {
		h.mu.Lock()
		m := h.joining[k.Service]
		if m[k.Instance]--; m[k.Instance] <= 0 {
			delete(m, k.Instance)
			if len(m) == 0 {
				delete(h.joining, k.Service)
			}
		}
		h.mu.Unlock()
	}, nil
}

// ownerView is the owner part of the topologies of one service's
// instances and of its consumers, and the records it was made from.
type ownerView struct {
	owner *ownerRec
	recs  map[string]*instanceRec
	so    transport.ServiceOwner
}

// ownerViewLocked returns registry.serviceOwner(service, false), shared
// by every topology made while the service's records stay the same (the
// records are never modified once stored, so the same pointers mean the
// same view). Without it each topology pushed to each of N instances
// carried its own copy of the primary's tables: N copies for every
// change, and one more kept per session to compare the next one with.
func (b *Broker) ownerViewLocked(service string) transport.ServiceOwner {
	o, recs := b.reg.owners[service], b.reg.bySvc[service]
	sh := &b.shared
	if v := sh.owners[service]; v != nil && v.owner == o && len(v.recs) == len(recs) {
		same := true
		for inst, rec := range recs {
			if v.recs[inst] != rec {
				same = false
				break
			}
		}
		if same {
			return v.so
		}
	}
	so := b.reg.ownerView(service)
	if o == nil && len(recs) == 0 {
		delete(sh.owners, service)
		return so
	}
	if sh.owners == nil {
		sh.owners = make(map[string]*ownerView)
	}
	sh.owners[service] = &ownerView{owner: o, recs: maps.Clone(recs), so: so}
	if len(sh.owners) > 2*(len(b.reg.bySvc)+len(b.reg.owners))+16 {
		for svc := range sh.owners {
			if !b.reg.known(svc) {
				delete(sh.owners, svc)
			}
		}
	}
	return so
}

// topologyLocked is the topology of rec with the owner parts shared
// between sessions (ownerViewLocked). Topologies are read, never
// modified: sent and compared.
func (b *Broker) topologyLocked(rec *instanceRec) *transport.Topology {
	return b.reg.topology(rec, b.brokers, b.rev, b.ownerViewLocked)
}

// tablesOfServiceLocked returns the tables of another present instance of
// service than self, the primary's if it has one: the names a new
// registration of the service most likely repeats.
func (b *Broker) tablesOfServiceLocked(service string, self instKey) []transport.TableInfo {
	if o := b.reg.owners[service]; o != nil && o.Primary != self.Instance {
		if p := b.reg.inst(instKey{service, o.Primary}); p != nil && !p.Gone && len(p.Tables) > 0 {
			return p.Tables
		}
	}
	for inst, rec := range b.reg.bySvc[service] {
		if inst != self.Instance && !rec.Gone && len(rec.Tables) > 0 {
			return rec.Tables
		}
	}
	return nil
}

// shareTableNames makes the names (and log ids) of dst that ref also
// lists the strings ref holds, so that the instances of a service keep one
// copy of their table names, not one each. Both are sorted by table.
func shareTableNames(dst, ref []transport.TableInfo) {
	j := 0
	for i := range dst {
		for j < len(ref) && ref[j].Table < dst[i].Table {
			j++
		}
		if j == len(ref) {
			return
		}
		if ref[j].Table == dst[i].Table {
			dst[i].Table = ref[j].Table
			if ref[j].LogID == dst[i].LogID {
				dst[i].LogID = ref[j].LogID
			}
			if ref[j].Mode == dst[i].Mode {
				dst[i].Mode = ref[j].Mode
			}
		}
	}
}
