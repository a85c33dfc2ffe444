package broker

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/replmesh/replmesh/transport"
)

// raftCluster starts n brokers with data dirs (b2.. join b1) and waits
// until every one is a raft voter with a leader.
func raftCluster(t testing.TB, n int) []*Broker {
	t.Helper()
	dirs := map[string]string{}
	bs := startCluster(t, n, func(c *Config) {
		if dirs[c.Name] == "" {
			dirs[c.Name] = t.TempDir()
		}
		c.DataDir = dirs[c.Name]
	})
	waitVoters(t, bs, n)
	return bs
}

// waitVoters waits until every broker in bs has applied n voters and
// knows a leader.
func waitVoters(t testing.TB, bs []*Broker, n int) {
	t.Helper()
	waitUntil(t, waitLong, fmt.Sprintf("%d raft voters and a leader everywhere", n), func() bool {
		for _, b := range bs {
			b.mu.Lock()
			k := len(b.fsm.members)
			b.mu.Unlock()
			if k != n || b.raft.leader.Load() == 0 {
				return false
			}
		}
		return true
	})
}

// leaderOf returns the broker of bs that leads, once all agree on one.
func leaderOf(t testing.TB, bs []*Broker) *Broker {
	t.Helper()
	var l *Broker
	waitUntil(t, waitLong, "one raft leader", func() bool {
		l = nil
		for _, b := range bs {
			if b.raft.isLeader() {
				if l != nil {
					return false
				}
				l = b
			}
		}
		if l == nil {
			return false
		}
		for _, b := range bs {
			if b.raft.leader.Load() != l.raft.id {
				return false
			}
		}
		return true
	})
	return l
}

func others(bs []*Broker, not *Broker) []*Broker {
	var out []*Broker
	for _, b := range bs {
		if b != not {
			out = append(out, b)
		}
	}
	return out
}

// grantsOf returns the grants b applied for service.
func grantsOf(b *Broker, service string) []grantEvent {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []grantEvent
	for _, g := range b.grants {
		if g.Service == service {
			out = append(out, g)
		}
	}
	return out
}

// checkEpochs fails unless the grants are at strictly increasing epochs.
func checkEpochs(t *testing.T, gs []grantEvent) {
	t.Helper()
	for i := 1; i < len(gs); i++ {
		if gs[i].Epoch <= gs[i-1].Epoch {
			t.Fatalf("grants %+v: epoch %d after %d", gs, gs[i].Epoch, gs[i-1].Epoch)
		}
	}
}

func TestRaft_ThreeBrokersGrantOnce(t *testing.T) {
	bs := raftCluster(t, 3)
	p := mustConnect(t, bs[1].GRPCAddr(), ownerReg("stores", "a", "127.0.0.1:9001", 1))
	p.waitTopo("a primary", func(tp *transport.Topology) bool { return tp.Role == transport.RolePrimary && tp.Epoch == 1 })
	mustConnect(t, bs[2].GRPCAddr(), ownerReg("stores", "b", "127.0.0.1:9002", 1))
	waitEverywhere(t, bs, "a primary at 1, b standby", func(st *transport.StatusResponse) bool {
		o := findOwner(st.Owners, "stores")
		return o != nil && o.Primary.Instance == "a" && o.Epoch == 1 && len(o.Standbys) == 1
	})
	for _, b := range bs {
		if gs := grantsOf(b, "stores"); len(gs) != 1 || gs[0].Instance != "a" || gs[0].Epoch != 1 {
			t.Fatalf("%s applied grants %+v, want one: a at 1", b.Name(), gs)
		}
	}
}

func TestRaft_LeaderLossThenDecisionsResume(t *testing.T) {
	bs := raftCluster(t, 3)
	l := leaderOf(t, bs)
	rest := others(bs, l)
	p := mustConnect(t, rest[0].GRPCAddr(), ownerReg("stores", "a", "127.0.0.1:9001", 1))
	p.waitTopo("a primary", func(tp *transport.Topology) bool { return tp.Role == transport.RolePrimary && tp.Epoch == 1 })
	s := mustConnect(t, rest[1].GRPCAddr(), ownerReg("stores", "b", "127.0.0.1:9002", 1))
	waitEverywhere(t, rest, "b standby", func(st *transport.StatusResponse) bool {
		o := findOwner(st.Owners, "stores")
		return o != nil && len(o.Standbys) == 1
	})

	// The leader dies; the two left elect one of them and decide: the
	// primary leaves, b is promoted at a new epoch.
	l.Close()
	nl := leaderOf(t, rest)
	if nl == l {
		t.Fatal("the closed broker still leads")
	}
	p.shut()
	s.waitTopo("b promoted", func(tp *transport.Topology) bool { return tp.Role == transport.RolePrimary && tp.Epoch == 2 })
	waitUntil(t, waitLong, "the promotion applied on both", func() bool {
		return len(grantsOf(rest[0], "stores")) == 2 && len(grantsOf(rest[1], "stores")) == 2
	})
	for _, b := range rest {
		gs := grantsOf(b, "stores")
		checkEpochs(t, gs)
		if last := gs[len(gs)-1]; last.Instance != "b" || last.Epoch != 2 {
			t.Fatalf("%s: grants %+v, want b at 2 last", b.Name(), gs)
		}
	}
}

func TestRaft_PausedLeaderStopsConfirming(t *testing.T) {
	bs := raftCluster(t, 3)
	l := leaderOf(t, bs)
	p := mustConnect(t, l.GRPCAddr(), ownerReg("stores", "a", "127.0.0.1:9001", 1))
	p.waitTopo("a primary", func(tp *transport.Topology) bool { return tp.Role == transport.RolePrimary })
	confirmed := func() bool {
		f := p.lastBeat.Load()
		return f != nil && f.PrimaryEpoch == 1 && f.Pong > 0
	}
	waitUntil(t, waitLong, "the leader confirms a's lease", confirmed)

	// The leader stops taking part in raft (a paused process as its
	// peers see it), its gRPC still up: its confirmations stop, and the
	// others elect a new leader.
	l.raft.paused.Store(true)
	defer l.raft.paused.Store(false)
	waitUntil(t, waitLong, "pongs without PrimaryEpoch", func() bool {
		f := p.lastBeat.Load()
		return f != nil && f.PrimaryEpoch == 0 && f.Pong > 0
	})
	nl := leaderOf(t, others(bs, l))
	if nl == l {
		t.Fatal("the paused broker still leads")
	}
	if l.raft.confirmedWithin(l.cfg.Lease / 4) {
		t.Fatal("the paused leader still has a recent confirmation")
	}
}

func TestRaft_RestartWithDataDirKeepsDecidedState(t *testing.T) {
	dir := t.TempDir()
	withDir := func(c *Config) { c.DataDir = dir }
	b := startBroker(t, "b1", nil, withDir)
	id := b.raft.id
	p := mustConnect(t, b.GRPCAddr(), ownerReg("stores", "a", "127.0.0.1:9001", 1))
	p.waitTopo("a primary", func(tp *transport.Topology) bool { return tp.Role == transport.RolePrimary && tp.Epoch == 1 })
	if _, err := b.SetMode(ctxT(t, waitLong), &transport.SetModeRequest{Version: transport.ProtocolVersion, Service: "stores", Table: "t", Mode: "pull"}); err != nil {
		t.Fatal(err)
	}
	p.shut()
	b.Close()

	b = startBroker(t, "b1", nil, withDir)
	if b.raft.id != id {
		t.Fatalf("restarted with raft id %x, want %x", b.raft.id, id)
	}
	b.mu.Lock()
	o, mode := b.fsm.owners["stores"], b.fsm.modes["stores/t"]
	b.mu.Unlock()
	if o == nil || o.Primary != "a" || o.Epoch != 1 || mode == nil || mode.Mode != "pull" {
		t.Fatalf("after restart: owner %+v, mode %+v; want a at 1, pull", o, mode)
	}
	// A new owner is granted above the epoch recorded.
	s := mustConnect(t, b.GRPCAddr(), ownerReg("stores", "b", "127.0.0.1:9002", 1))
	waitUntil(t, waitLong, "b granted at 2 once a's lease lapsed", func() bool {
		tp := s.last
		for {
			select {
			case f := <-s.frames:
				if f.Topology != nil {
					tp = f.Topology
					s.last = tp
				}
				continue
			default:
			}
			break
		}
		return tp.Role == transport.RolePrimary && tp.Epoch == 2
	})
}

func TestRaft_RemovedBrokerNoLongerCounts(t *testing.T) {
	bs := raftCluster(t, 3)
	l := leaderOf(t, bs)
	victim := others(bs, l)[0]
	rest := others(bs, victim)
	resp, err := rest[1].RaftRemove(ctxT(t, waitLong), &transport.RaftRemoveRequest{Version: transport.ProtocolVersion, Name: victim.Name()})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Members) != 2 {
		t.Fatalf("members after remove: %+v", resp.Members)
	}
	victim.Close()
	waitVoters(t, rest, 2)
	// Two of two decide.
	p := mustConnect(t, rest[0].GRPCAddr(), ownerReg("stores", "a", "127.0.0.1:9001", 1))
	p.waitTopo("a primary", func(tp *transport.Topology) bool { return tp.Role == transport.RolePrimary && tp.Epoch == 1 })
	if _, err := rest[1].SetMode(ctxT(t, waitLong), &transport.SetModeRequest{Version: transport.ProtocolVersion, Service: "stores", Table: "t", Mode: "push"}); err != nil {
		t.Fatalf("set mode with 2 of 2: %v", err)
	}
}

func TestRaft_SnapshotCompactsTheLogAndRestores(t *testing.T) {
	dir := t.TempDir()
	withDir := func(c *Config) { c.DataDir = dir }
	b := startBroker(t, "b1", nil, withDir)
	const n = raftSnapshotEvery + 50
	for i := range n {
		if err := b.raft.propose(ctxT(t, waitLong), &command{Kind: cmdMode, Service: "s", Table: fmt.Sprintf("t%04d", i), Mode: "pull"}); err != nil {
			t.Fatal(err)
		}
	}
	first, _ := b.raft.store.mem.FirstIndex()
	if first <= raftSnapshotEvery/2 {
		t.Fatalf("first log index %d after %d entries: the log was not compacted", first, n)
	}
	b.Close()

	b = startBroker(t, "b1", nil, withDir)
	b.mu.Lock()
	got := len(b.fsm.modes)
	b.mu.Unlock()
	if got != n {
		t.Fatalf("%d overrides after a restart from snapshot and log, want %d", got, n)
	}
}

// An in-memory broker forgets its raft log and votes when it stops, so it
// must never come back under the node id it had: the leader would send it
// heartbeats committing past its empty log (raft panics on that) and it
// could vote twice in one term. Each restart takes a new id and joins as
// a new member in place of the old voter of its name; the decided state
// reaches it and decisions go on.
func TestRaft_InMemoryBrokerRestartsAsNewMember(t *testing.T) {
	bs := startCluster(t, 3, nil)
	waitVoters(t, bs, 3)
	seen := map[uint64]bool{}
	for _, b := range bs {
		seen[b.raft.id] = true
	}
	setMode := func(b *Broker, table string) {
		t.Helper()
		if _, err := b.SetMode(ctxT(t, waitLong), &transport.SetModeRequest{Version: transport.ProtocolVersion, Service: "stores", Table: table, Mode: "pull"}); err != nil {
			t.Fatalf("set mode on %s: %v", b.Name(), err)
		}
	}
	setMode(bs[0], "t0")
	const restarts = 6
	for i := range restarts {
		k := i % len(bs)
		name := bs[k].Name()
		outer := t
		t.Run(fmt.Sprintf("restart %d of %s", i, name), func(t *testing.T) {
			bs[k].Close()
			rest := others(bs, bs[k])
			var join []string
			for _, b := range rest {
				join = append(join, b.GossipAddr())
			}
			nb := startBroker(outer, name, join, nil) // lives on after the subtest
			if seen[nb.raft.id] {
				t.Fatalf("%s came back under raft id %x, which a broker had before", name, nb.raft.id)
			}
			seen[nb.raft.id] = true
			bs[k] = nb
			// (The restarted broker applies the log from its start: it
			// holds the old id for a while.)
			waitUntil(t, waitLong, fmt.Sprintf("%s a voter under its new id everywhere", name), func() bool {
				for _, b := range bs {
					b.mu.Lock()
					m, ok := b.fsm.memberByName(name)
					k := len(b.fsm.members)
					b.mu.Unlock()
					if !ok || m.ID != nb.raft.id || k != 3 || b.raft.leader.Load() == 0 {
						return false
					}
				}
				return true
			})
			waitUntil(t, waitLong, "the decided state on the restarted broker", func() bool {
				nb.mu.Lock()
				defer nb.mu.Unlock()
				return nb.fsm.modes["stores/t0"] != nil
			})
			setMode(nb, fmt.Sprintf("t%d", i+1))
		})
	}
}

// A second process started with a live broker's name and an empty data
// dir (an operator's slip) must not evict the live voter: every broker
// refuses its join while the old member is live, leader or follower,
// and the newcomer says why (Status.Raft.JoinRefused). Once the old
// broker is really gone, the newcomer rejoins as a new member in its
// place.
func TestRaft_JoinUnderALiveBrokersNameIsRefused(t *testing.T) {
	bs := startCluster(t, 3, nil)
	waitVoters(t, bs, 3)
	victim := bs[1]
	oldID := victim.raft.id
	voterIs := func(on []*Broker, id uint64) func() bool {
		return func() bool {
			for _, b := range on {
				b.mu.Lock()
				m, ok := b.fsm.memberByName(victim.Name())
				n := len(b.fsm.members)
				b.mu.Unlock()
				if !ok || m.ID != id || n != 3 {
					return false
				}
			}
			return true
		}
	}
	for _, b := range bs {
		role := "follower"
		if b.raft.isLeader() {
			role = "leader"
		}
		t.Run("asked of "+b.Name()+" ("+role+")", func(t *testing.T) {
			_, err := transport.NewRaftClient(dial(t, b.GRPCAddr())).Join(ctxT(t, waitLong), &transport.RaftJoinRequest{
				Version: transport.ProtocolVersion, ID: randomID(), Name: victim.Name(), Addr: "127.0.0.1:1"})
			if !errors.Is(err, transport.ErrInstanceInUse) || !strings.Contains(err.Error(), fmt.Sprintf("%x", oldID)) {
				t.Fatalf("join under %s's name: %v, want ErrInstanceInUse naming raft id %x", victim.Name(), err, oldID)
			}
			if !voterIs(bs, oldID)() {
				t.Fatal("the live voter was touched")
			}
		})
	}

	// The real slip: a second broker process of that name, in memory.
	nb := startBroker(t, victim.Name(), []string{bs[0].GossipAddr()}, nil)
	waitUntil(t, waitLong, "the newcomer told why it is not added", func() bool {
		st, err := nb.Status(ctxT(t, waitLong), &transport.StatusRequest{Version: transport.ProtocolVersion})
		return err == nil && st.Raft != nil && strings.Contains(st.Raft.JoinRefused, "live voter")
	})
	if !voterIs(bs, oldID)() {
		t.Fatal("the live voter was evicted by a second process of its name")
	}

	// The old incarnation is really gone: the newcomer takes its place.
	victim.Close()
	rest := []*Broker{bs[0], bs[2], nb}
	waitUntil(t, waitLong, "the newcomer a voter in place of the old one", voterIs(rest, nb.raft.id))
	waitUntil(t, waitLong, "the refusal cleared", func() bool { return nb.raft.joinErr.Load() == nil })
	if _, err := nb.SetMode(ctxT(t, waitLong), &transport.SetModeRequest{Version: transport.ProtocolVersion,
		Service: "stores", Table: "t", Mode: "pull"}); err != nil {
		t.Fatalf("a decision through the newcomer: %v", err)
	}
}

// Read contexts name their broker: a leader keys pending reads by context
// alone, so a context another broker could send (or this one sent before
// a restart) would let a heartbeat response meant for that read confirm
// this one.
func TestRaft_ReadContextsAreThisBrokers(t *testing.T) {
	const a, b = 0xa1, 0xb2
	for _, tt := range []struct {
		name string
		ctx  []byte
		id   uint64
		seq  uint64
		ok   bool
	}{
		{"own", readCtx(a, 7), a, 7, true},
		{"another broker's, same seq", readCtx(b, 7), a, 0, false},
		{"a bare counter (the old format)", []byte{0, 0, 0, 0, 0, 0, 0, 7}, a, 0, false},
		{"empty", nil, a, 0, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			seq, ok := parseReadCtx(tt.id, tt.ctx)
			if seq != tt.seq || ok != tt.ok {
				t.Fatalf("parseReadCtx = %d, %v; want %d, %v", seq, ok, tt.seq, tt.ok)
			}
		})
	}
}
