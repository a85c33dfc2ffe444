package replica

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/replmesh/replmesh/modes"
	"github.com/replmesh/replmesh/transport"
)

// The broker session: the component registers with one broker of the
// cluster, learns from it where the owners of its subscriptions are and
// (for an owner instance) whether it is primary, and reports its tables'
// heads and its replicas' positions. The broker is never on the data path:
// while no broker answers, established streams go on, reads are served and
// a primary keeps writing; only new information (a moved owner, a
// promotion) waits. (The exception is a primary with MinSyncStandbys: it
// acknowledges writes only under a lease a broker confirmed; see lease.go.)

// kickBroker asks the session to report the component's state now.
func (c *Component) kickBroker() {
	select {
	case c.brokerKick <- struct{}{}:
	default:
	}
}

// brokerAddrs is the configured brokers followed by the ones the cluster
// reported, without duplicates.
func (c *Component) brokerAddrs() []string {
	addrs := slices.Clone(c.cfg.Brokers)
	c.mu.Lock()
	if c.topo != nil {
		for _, b := range c.topo.Brokers {
			if !slices.Contains(addrs, b) {
				addrs = append(addrs, b)
			}
		}
	}
	c.mu.Unlock()
	return addrs
}

// brokerLogEvery is how often a broker that stays unreachable is logged
// again (see sessionLog).
const brokerLogEvery = 30 * time.Second

// brokerLoop keeps one session open, moving to the next broker when one
// fails. A session that ended after it opened is logged at INFO; attempts
// that fail before a session opens are logged as sessionLog says.
func (c *Component) brokerLoop() {
	defer c.wg.Done()
	backoff := transport.Backoff{Min: c.cfg.ReconnectMin, Max: c.cfg.ReconnectMax, Jitter: true}
	fails := sessionLog{every: brokerLogEvery}
	for i := 0; ; i++ {
		addrs := c.brokerAddrs()
		addr := addrs[i%len(addrs)]
		progressed, err := c.brokerSession(addr, func() {
			if n, since, ok := fails.opened(); ok {
				c.log.Info("broker reachable again", "broker", addr, "failed_attempts", n, "unreachable_for", time.Since(since).Round(time.Millisecond))
			}
		})
		if c.ctx.Err() != nil {
			return
		}
		if progressed {
			backoff.Reset()
			c.log.Info("broker session ended", "broker", addr, "err", err)
		} else {
			now := time.Now()
			c.log.Debug("broker session failed", "broker", addr, "err", err)
			if line, suppressed := fails.failed(now); line && fails.failures == 1 {
				c.log.Warn("broker unreachable; retrying", "broker", addr, "err", err)
			} else if line {
				c.log.Warn("broker still unreachable; retrying", "broker", addr, "err", err,
					"failed_attempts", fails.failures, "suppressed", suppressed, "unreachable_for", now.Sub(fails.since).Round(time.Millisecond))
			}
		}
		t := time.NewTimer(backoff.Next())
		select {
		case <-t.C:
		case <-c.done():
			t.Stop()
			return
		}
	}
}

// sessionLog decides which failed broker session attempts are logged: the
// first failure at once, then at most one line every `every`, counting
// the failures it did not log; and whether an open session is a recovery.
// It reads no clock: the caller passes the time.
type sessionLog struct {
	every      time.Duration
	failures   int       // consecutive failed attempts
	suppressed int       // failures since the last line
	since      time.Time // first failure of the run
	last       time.Time // last line
}

// failed records a failed attempt at now. It reports whether to log it
// and how many failures went unlogged before it (0 for the first).
func (l *sessionLog) failed(now time.Time) (line bool, suppressed int) {
	l.failures++
	if l.failures == 1 {
		l.since, l.last, l.suppressed = now, now, 0
		return true, 0
	}
	if now.Sub(l.last) < l.every {
		l.suppressed++
		return false, 0
	}
	suppressed, l.suppressed, l.last = l.suppressed, 0, now
	return true, suppressed
}

// opened records that a session opened. ok reports a recovery: failures
// came before it, the first at since.
func (l *sessionLog) opened() (failures int, since time.Time, ok bool) {
	failures, since = l.failures, l.since
	*l = sessionLog{every: l.every}
	return failures, since, failures > 0
}

// register is the session's first frame. It carries the component's
// MinSyncStandbys k, so that the brokers promote a standby once they know
// the heads of S-k+1 of the service's S standbys rather than all S
// (Config.Validate keeps k within what a broker accepts,
// transport.MaxMinSyncStandbys).
func (c *Component) register() *transport.Register {
	return &transport.Register{
		Version: transport.ProtocolVersion, Token: c.cfg.BrokerToken,
		Service: c.cfg.Service, Instance: c.cfg.Instance, Addr: c.Addr(),
		Owner: c.cfg.Owner, Tables: c.tableInfos(), Subscriptions: c.subInfos(),
		Epoch:           c.storedEpoch,
		MinSyncStandbys: c.cfg.MinSyncStandbys,
	}
}

// tableInfos reports the owned tables with their heads (a standby's copies
// included: the broker promotes the most advanced standby).
func (c *Component) tableInfos() []transport.TableInfo {
	tables := c.ownedTables()
	slices.SortFunc(tables, func(a, b *OwnedTable) int { return cmpString(a.name, b.name) })
	out := make([]transport.TableInfo, 0, len(tables))
	for _, t := range tables {
		m, _ := t.state()
		out = append(out, transport.TableInfo{Table: t.name, Mode: t.ownerMode().Wire(), LogID: m.LogID, Epoch: m.reportedEpoch(), Head: m.Head})
	}
	return out
}

// subInfos reports the replicas with their positions.
func (c *Component) subInfos() []transport.SubInfo {
	c.mu.Lock()
	reps := slices.Collect(maps.Values(c.replicas))
	c.mu.Unlock()
	slices.SortFunc(reps, func(a, b *Replica) int {
		return cmpString(a.opts.Service+"/"+a.opts.Table, b.opts.Service+"/"+b.opts.Table)
	})
	out := make([]transport.SubInfo, 0, len(reps))
	for _, r := range reps {
		st := r.Status()
		si := transport.SubInfo{Service: st.Service, Table: st.Table, Mode: r.requestedMode().Wire(), Seq: st.Seq, LogID: st.LogID, Epoch: st.Epoch, Lag: st.Lag.Seqs,
			State: st.State.String(), Running: st.Mode, Reason: st.ModeReason}
		si.StaleMs = st.Lag.Staleness.Milliseconds()
		if x := st.Lag.Transfer; x != nil {
			si.XferRows, si.XferExpected, si.XferBytes, si.XferRate = x.Rows, x.ExpectedRows, x.Bytes, x.Rate
			si.XferEtaMs = x.ETA.Milliseconds()
		}
		out = append(out, si)
	}
	return out
}

// requestedMode is the mode the subscription's own option asks for
// (Unset when it leaves the mode to the owner's default), as SubInfo
// reports it.
func (r *Replica) requestedMode() modes.Mode {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.modes.sub == nil {
		return modes.Unset
	}
	return r.modes.sub.Mode
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// brokerSession runs one session with the broker at addr until it fails;
// opened is called when the broker has answered the registration.
func (c *Component) brokerSession(addr string, opened func()) (progressed bool, err error) {
	ctx, cancel := context.WithCancel(c.ctx)
	defer cancel()
	conn, err := c.conn(brokerPeer(addr))
	if err != nil {
		return false, err
	}
	stream, err := transport.NewBrokerClient(conn).OpenSession(ctx,
		&transport.SessionRequest{Kind: transport.SessionRegister, Register: c.register(), Ping: c.lease.ping()})
	if err != nil {
		return false, err
	}
	watchdog := time.AfterFunc(c.cfg.PeerTimeout, cancel)
	defer watchdog.Stop()
	recv := func() (*transport.SessionResponse, error) {
		f, err := stream.Recv()
		if err != nil {
			if ctx.Err() != nil && c.ctx.Err() == nil {
				return nil, fmt.Errorf("%w: no frame from broker %s for %s", transport.ErrUnavailable, addr, c.cfg.PeerTimeout)
			}
			return nil, transport.FromStatus(err)
		}
		watchdog.Reset(c.cfg.PeerTimeout)
		return f, nil
	}
	// A broker that refused the session before reading the Register (a
	// handshake limit) has ended the stream: recv returns its reason.
	f, err := recv()
	if err != nil {
		return false, err
	}
	if f.Kind != transport.SessionTopology || f.Topology == nil {
		return false, fmt.Errorf("%w: broker's first frame is kind %d, want a topology", transport.ErrBadRequest, f.Kind)
	}
	c.log.Info("broker session open", "broker", addr, "name", f.Broker, "role", f.Topology.Role, "epoch", f.Topology.Epoch)
	opened()
	// The lease first: a write that sees the new role must see the lease
	// the same frame confirms.
	c.renewLease(f)
	c.applyTopology(f.Topology)

	// One goroutine sends (updates on a timer and when kicked); this one
	// receives. The broker ends a session silent for half its lease, and a
	// primary's lease runs from its last echoed ping: send at least five
	// times a lease, whatever Heartbeat says.
	interval := c.cfg.Heartbeat
	if f.LeaseMs > 0 {
		interval = min(interval, time.Duration(f.LeaseMs)*time.Millisecond/5)
	}
	sendDone := make(chan struct{})
	defer func() { cancel(); <-sendDone }()
	go func() {
		defer close(sendDone)
		tk := time.NewTicker(interval)
		defer tk.Stop()
		for {
			select {
			case <-tk.C:
			case <-c.brokerKick:
			case <-ctx.Done():
				return
			}
			err := stream.Send(&transport.SessionRequest{Kind: transport.SessionUpdate, Tables: c.tableInfos(), Subscriptions: c.subInfos(), Ping: c.lease.ping()})
			if err != nil {
				cancel()
				return
			}
		}
	}()
	for {
		f, err := recv()
		if err != nil {
			return true, err
		}
		switch f.Kind {
		case transport.SessionTopology:
			c.renewLease(f)
			if f.Topology != nil {
				c.applyTopology(f.Topology)
			}
		case transport.SessionHeartbeat:
			c.renewLease(f)
		default:
			return true, fmt.Errorf("%w: unexpected session frame kind %d", transport.ErrBadRequest, f.Kind)
		}
	}
}
