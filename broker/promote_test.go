package broker

import (
	"testing"
	"time"

	"github.com/replmesh/replmesh/transport"
)

// promotionCluster starts three brokers with lease and rehome, waits for
// the three raft voters and returns the leader and the two others.
func promotionCluster(t *testing.T, lease, rehome time.Duration) (leader, lost, live *Broker, all []*Broker) {
	t.Helper()
	bs := startCluster(t, 3, func(c *Config) {
		c.Lease = lease
		c.RehomeWait = rehome
	})
	waitVoters(t, bs, 3)
	l := leaderOf(t, bs)
	rest := others(bs, l)
	return l, rest[0], rest[1], bs
}

// instOn returns a copy of b's record of stores/name (nil if none).
func instOn(b *Broker, name string) *instanceRec {
	b.mu.Lock()
	defer b.mu.Unlock()
	if rec := b.reg.inst(instKey{"stores", name}); rec != nil {
		return rec.clone()
	}
	return nil
}

// twoStandbys connects primary a on live, standby b (the most advanced)
// on lost and standby c (behind) on the leader, and waits until every
// broker holds both standbys' heads.
func twoStandbys(t *testing.T, l, lost, live *Broker, bs []*Broker) (a, b, c *fakeComp) {
	t.Helper()
	a = mustConnect(t, live.GRPCAddr(), ownerReg("stores", "a", "127.0.0.1:9001", 10, 10))
	a.waitTopo("a primary", func(tp *transport.Topology) bool { return tp.Role == transport.RolePrimary && tp.Epoch == 1 })
	b = mustConnect(t, lost.GRPCAddr(), ownerReg("stores", "b", "127.0.0.1:9002", 10, 10))
	c = mustConnect(t, l.GRPCAddr(), ownerReg("stores", "c", "127.0.0.1:9003", 10, 4))
	waitEverywhere(t, bs, "both standbys' heads", func(st *transport.StatusResponse) bool {
		ib, ic := findInstance(st, "stores", "b"), findInstance(st, "stores", "c")
		return ib != nil && ic != nil && len(ib.Tables) == 2 && ib.Tables[1].Head == 10 && len(ic.Tables) == 2 && ic.Tables[1].Head == 4
	})
	return a, b, c
}

// loseBroker makes lost stop taking part in raft (a paused process, as the
// leader l sees it) until the test ends, and waits until l no longer hears
// it. Its sessions stay open, as a paused broker's TCP connections do.
func loseBroker(t *testing.T, l, lost *Broker) {
	t.Helper()
	lost.raft.paused.Store(true)
	t.Cleanup(func() { lost.raft.paused.Store(false) })
	waitUntil(t, waitLong, "the leader no longer hears "+lost.Name(), func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return !l.aliveLocked(lost.Name())
	})
}

// checkNoPromotion waits until the leader l removed stores/primary (its
// lease lapsed) and fails the test if a promotion was proposed or applied
// by then (why: what should hold it back). The step that removes the
// primary also decides (both under mu): once it is seen removed, a
// promotion would already be proposed or applied.
func checkNoPromotion(t *testing.T, l *Broker, primary, why string) {
	t.Helper()
	waitUntil(t, waitLong, primary+" removed on the leader", func() bool {
		rec := instOn(l, primary)
		return rec == nil || rec.Gone
	})
	l.mu.Lock()
	_, proposed := l.inflight["stores"]
	l.mu.Unlock()
	if gs := grantsOf(l, "stores"); proposed || len(gs) != 1 {
		t.Fatalf("a promotion while %s: proposed %v, grants %+v", why, proposed, gs)
	}
}

// The hole of a candidate rule that looks only at connected standbys on
// live brokers: the standby with the newest acknowledged writes (b) has
// its session on a broker the raft leader no longer hears when the
// primary goes; promoting the other (c) would lose those writes. The
// promotion waits for b's head: b re-homes and is promoted.
func TestBroker_PromotionWaitsForTheStandbyOnALostBroker(t *testing.T) {
	const lease = 500 * time.Millisecond
	// RehomeWait: b is kept until it re-homes (when the test says).
	l, lost, live, bs := promotionCluster(t, lease, time.Hour)
	a, b, c := twoStandbys(t, l, lost, live, bs)

	loseBroker(t, l, lost)
	a.shut()
	checkNoPromotion(t, l, "a", "b's head is unknown")
	if rec := instOn(l, "b"); rec == nil || rec.Gone {
		t.Fatalf("b removed while its broker is lost and its re-home wait runs: %+v", rec)
	}

	// b re-homes to a live broker: its head is known, it has the most.
	b.rehome()
	b.waitTopo("b promoted", func(tp *transport.Topology) bool { return tp.Role == transport.RolePrimary && tp.Epoch == 2 })
	c.waitTopo("c told the new epoch", func(tp *transport.Topology) bool {
		return tp.Role == transport.RoleStandby && tp.Epoch == 2
	})
	gs := grantsOf(l, "stores")
	checkEpochs(t, gs)
	if len(gs) != 2 || gs[1].Instance != "b" || gs[1].Epoch != 2 || gs[1].Previous != "a" {
		t.Fatalf("grants %+v, want a at 1 then b at 2", gs)
	}
}

// The k the components report (Register.MinSyncStandbys) reaches the
// raft leader, by gossip for the sessions on the other brokers, and sets
// how many standbys' heads a promotion waits for. Primary a (on live),
// standbys b (the most data, on lost), c (on the leader) and d (behind,
// on live): S = 3. With k = 2 every acknowledged write is on two of them,
// so any S-k+1 = 2 heads hold it: once lost is unheard and a's lease
// lapses, c is promoted without waiting for b. If one instance reports no
// k (an older build), the leader waits for b's head as before.
func TestBroker_PromotionWithTheReportedMinSync(t *testing.T) {
	tests := []struct {
		name     string
		ks       map[string]int // a, b, c, d; absent: none reported
		promoted string         // "": no promotion while b is unknown
	}{
		{"k 2 of 3 standbys: promoted while one is unheard", map[string]int{"a": 2, "b": 2, "c": 2, "d": 2}, "c"},
		{"one instance reports no k: waits for every head", map[string]int{"a": 2, "b": 2, "c": 2}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const lease = 500 * time.Millisecond
			// RehomeWait: b is kept (unknown) for the whole test.
			l, lost, live, _ := promotionCluster(t, lease, time.Hour)
			reg := func(name, addr string, head uint64) transport.Register {
				r := ownerReg("stores", name, addr, head)
				r.MinSyncStandbys = tt.ks[name]
				return r
			}
			a := mustConnect(t, live.GRPCAddr(), reg("a", "127.0.0.1:9001", 10))
			a.waitTopo("a primary", func(tp *transport.Topology) bool { return tp.Role == transport.RolePrimary && tp.Epoch == 1 })
			mustConnect(t, lost.GRPCAddr(), reg("b", "127.0.0.1:9002", 10))
			c := mustConnect(t, l.GRPCAddr(), reg("c", "127.0.0.1:9003", 8))
			mustConnect(t, live.GRPCAddr(), reg("d", "127.0.0.1:9004", 4))
			waitUntil(t, waitLong, "the leader holds every instance's head and k", func() bool {
				for name, head := range map[string]uint64{"a": 10, "b": 10, "c": 8, "d": 4} {
					rec := instOn(l, name)
					if rec == nil || !rec.Connected || len(rec.Tables) != 1 || rec.Tables[0].Head != head || rec.MinSync != tt.ks[name] {
						return false
					}
				}
				return true
			})

			loseBroker(t, l, lost)
			a.shut()
			if tt.promoted != "" {
				c.waitTopo("c promoted", func(tp *transport.Topology) bool { return tp.Role == transport.RolePrimary && tp.Epoch == 2 })
				if rec := instOn(l, "b"); rec == nil || rec.Gone {
					t.Fatalf("b removed before the promotion: %+v (the promotion did not need it)", rec)
				}
				gs := grantsOf(l, "stores")
				checkEpochs(t, gs)
				if len(gs) != 2 || gs[1].Instance != "c" || gs[1].Previous != "a" {
					t.Fatalf("grants %+v, want a at 1 then c at 2", gs)
				}
				return
			}
			checkNoPromotion(t, l, "a", "b's head is unknown and k is not known")
		})
	}
}

// The bound: a standby lost together with its broker is removed a lease
// plus RehomeWait after the leader stopped hearing its broker, and then
// the other standby is promoted.
func TestBroker_PromotionAfterTheLostStandbyIsRemoved(t *testing.T) {
	const lease, rehome = 500 * time.Millisecond, time.Second
	l, lost, live, bs := promotionCluster(t, lease, rehome)
	a, _, c := twoStandbys(t, l, lost, live, bs)

	lost.Close() // b's session stays recorded as connected on lost
	a.shut()
	c.waitTopo("c promoted", func(tp *transport.Topology) bool { return tp.Role == transport.RolePrimary && tp.Epoch == 2 })
	// c's grant was decided once b was removed, and b stays removed.
	if rec := instOn(l, "b"); rec != nil && !rec.Gone {
		t.Fatalf("c promoted while b is still kept: %+v", rec)
	}
	gs := grantsOf(l, "stores")
	if len(gs) != 2 || gs[1].Instance != "c" || gs[1].Epoch != 2 {
		t.Fatalf("grants %+v, want a at 1 then c at 2", gs)
	}
}

func TestBroker_KeptLocked(t *testing.T) {
	b := &Broker{cfg: Config{Lease: time.Second, RehomeWait: 3 * time.Second}, reg: newRegistry()}
	b.live = []member{{Name: "b1"}}
	b.reg.owners["stores"] = &ownerRec{Service: "stores", Primary: "p", Epoch: 1}
	tests := []struct {
		name string
		rec  *instanceRec
		want time.Duration
	}{
		{"no record", nil, time.Second},
		{"standby on a live broker, disconnected", &instanceRec{Service: "stores", Instance: "s", Owner: true, Session: sessionID{Broker: "b1"}}, time.Second},
		{"standby on a broker not alive", &instanceRec{Service: "stores", Instance: "s", Owner: true, Connected: true, Session: sessionID{Broker: "b2"}}, 4 * time.Second},
		{"the primary on a broker not alive", &instanceRec{Service: "stores", Instance: "p", Owner: true, Connected: true, Session: sessionID{Broker: "b2"}}, time.Second},
		{"a consumer on a broker not alive", &instanceRec{Service: "stores", Instance: "x", Connected: true, Session: sessionID{Broker: "b2"}}, time.Second},
		{"an owner of a service with no grant yet", &instanceRec{Service: "other", Instance: "s", Owner: true, Connected: true, Session: sessionID{Broker: "b2"}}, time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := b.keptLocked(tt.rec); got != tt.want {
				t.Fatalf("keptLocked = %v, want %v", got, tt.want)
			}
		})
	}
}

// A broker's heads count as current on the leader two UpdateIntervals
// after it became alive again (its first flush of the heads its sessions
// reported meanwhile), the leader's own at once.
func TestBroker_HeadsCurrentAfterTwoUpdateIntervals(t *testing.T) {
	const ui = 50 * time.Millisecond
	b := &Broker{cfg: Config{Name: "b1", UpdateInterval: ui}}
	b.live = []member{{Name: "b1", Raft: 1}, {Name: "b2", Raft: 2}, {Name: "b3", Raft: 3}}
	t0 := time.Unix(1000, 0)
	steps := []struct {
		name   string
		at     time.Duration
		active map[uint64]bool // nil: not the leader
		want   map[string]bool
	}{
		{"a follower tracks nothing", 0, nil, map[string]bool{"b1": true, "b2": false, "b3": false}},
		{"leader: every broker just became alive", 0, map[uint64]bool{1: true, 2: true, 3: true},
			map[string]bool{"b1": true, "b2": false, "b3": false}},
		{"two update intervals on", 2 * ui, map[uint64]bool{1: true, 2: true, 3: true},
			map[string]bool{"b1": true, "b2": true, "b3": true}},
		{"b2 not heard", 3 * ui, map[uint64]bool{1: true, 3: true},
			map[string]bool{"b1": true, "b2": false, "b3": true}},
		{"b2 heard again", 4 * ui, map[uint64]bool{1: true, 2: true, 3: true},
			map[string]bool{"b1": true, "b2": false, "b3": true}},
		{"b2 one update interval later", 5 * ui, map[uint64]bool{1: true, 2: true, 3: true},
			map[string]bool{"b1": true, "b2": false, "b3": true}},
		{"b2 two update intervals later", 6 * ui, map[uint64]bool{1: true, 2: true, 3: true},
			map[string]bool{"b1": true, "b2": true, "b3": true}},
		{"no longer the leader", 7 * ui, nil, map[string]bool{"b1": true, "b2": false, "b3": false}},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			now := t0.Add(st.at)
			b.raftActive = st.active
			b.trackAliveLocked(now)
			for name, want := range st.want {
				if got := b.headsCurrentLocked(name, now); got != want {
					t.Errorf("headsCurrentLocked(%s) = %v, want %v", name, got, want)
				}
			}
		})
	}
}
