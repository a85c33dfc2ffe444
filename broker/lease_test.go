package broker

import (
	"errors"
	"testing"
	"time"

	"github.com/replmesh/replmesh/transport"
)

// A session that delivers nothing (a blackholed link: TCP stays up, and
// gRPC keepalive would notice only after many seconds) is ended by the
// broker after half its lease, so the lease starts running then; a session
// that heartbeats is kept. The lease is long enough that half of it is far
// more than a loaded machine holds back the heartbeating component's
// frames; the silent session's end is only bounded from below.
func TestSession_SilentSessionEndedAfterHalfTheLease(t *testing.T) {
	const lease = 3 * time.Second
	b := startBroker(t, "b1", nil, func(c *Config) { c.Lease = lease; c.silence = 0 })
	h := mustConnect(t, b.GRPCAddr(), ownerReg("stores", "s2", "127.0.0.1:9002", 5))
	c := &fakeComp{t: t, reg: ownerReg("stores", "s1", "127.0.0.1:9001", 5), silent: true}
	c.reg.Version = transport.ProtocolVersion
	opened := time.Now()
	if err := c.open(b.GRPCAddr()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.close)
	err := c.waitEnd()
	took := time.Since(opened)
	if !errors.Is(err, transport.ErrUnavailable) {
		t.Fatalf("silent session ended with %v, want ErrUnavailable (no frame)", err)
	}
	if took < lease/2 {
		t.Fatalf("silent session ended after %v, before half the lease", took)
	}
	t.Logf("silent session ended after %v: %v", took.Round(time.Millisecond), err)

	// The component that heartbeats, open since before the silent one,
	// keeps its session well past the lease.
	deadline := opened.Add(lease + lease/2)
	select {
	case err := <-h.errc:
		t.Fatalf("heartbeating session ended: %v", err)
	case <-time.After(time.Until(deadline)):
	}
}

// Every heartbeat echoes the newest Ping with the lease, and names the
// service epoch only to the instance the broker holds primary.
func TestSession_PongLeaseAndPrimaryEpoch(t *testing.T) {
	const lease = 1200 * time.Millisecond
	b := startBroker(t, "b1", nil, func(c *Config) { c.Lease = lease })
	p := mustConnect(t, b.GRPCAddr(), ownerReg("stores", "s1", "127.0.0.1:9001", 5))
	p.waitTopo("s1 primary", func(tp *transport.Topology) bool { return tp.Role == transport.RolePrimary })
	s := mustConnect(t, b.GRPCAddr(), ownerReg("stores", "s2", "127.0.0.1:9002", 3))
	s.waitTopo("s2 standby", func(tp *transport.Topology) bool { return tp.Role == transport.RoleStandby })
	cons := mustConnect(t, b.GRPCAddr(), consumerReg("products", "p1", "stores"))

	tests := []struct {
		name  string
		c     *fakeComp
		epoch uint64
	}{
		{"primary", p, p.last.Epoch},
		{"standby", s, 0},
		{"consumer", cons, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sent := tt.c.pings.Load()
			var f *transport.SessionResponse
			waitUntil(t, waitLong, "a heartbeat echoing a ping sent now", func() bool {
				f = tt.c.lastBeat.Load()
				return f != nil && f.Pong > sent
			})
			if f.LeaseMs != lease.Milliseconds() {
				t.Errorf("LeaseMs = %d, want %d", f.LeaseMs, lease.Milliseconds())
			}
			if f.Pong > tt.c.pings.Load() {
				t.Errorf("Pong %d is newer than any Ping sent (%d)", f.Pong, tt.c.pings.Load())
			}
			if f.PrimaryEpoch != tt.epoch {
				t.Errorf("PrimaryEpoch = %d, want %d", f.PrimaryEpoch, tt.epoch)
			}
		})
	}
	if p.last.Epoch == 0 {
		t.Fatal("primary's topology has epoch 0")
	}
}

// A broker that sees only a minority of the cluster neither confirms a
// primary's lease nor promotes a standby: the majority side may be doing
// so. Once a majority is back it does both again.
func TestSession_NoQuorumNoLeaseNoPromotion(t *testing.T) {
	const lease = time.Second
	// Data dirs: b2 comes back below as the member it was (an in-memory
	// broker would come back as a new member, which needs a majority).
	dirs := map[string]string{}
	withLease := func(c *Config) {
		c.Lease = lease
		if dirs[c.Name] == "" {
			dirs[c.Name] = t.TempDir()
		}
		c.DataDir = dirs[c.Name]
	}
	bs := startCluster(t, 3, withLease)
	p := mustConnect(t, bs[0].GRPCAddr(), ownerReg("stores", "s1", "127.0.0.1:9001", 5))
	p.waitTopo("s1 primary", func(tp *transport.Topology) bool { return tp.Role == transport.RolePrimary })
	s := mustConnect(t, bs[0].GRPCAddr(), ownerReg("stores", "s2", "127.0.0.1:9002", 5))
	s.waitTopo("s2 standby", func(tp *transport.Topology) bool { return tp.Role == transport.RoleStandby })
	beat := func(c *fakeComp, what string, cond func(*transport.SessionResponse) bool) {
		t.Helper()
		sent := c.pings.Load()
		waitUntil(t, waitLong, what, func() bool {
			f := c.lastBeat.Load()
			return f != nil && f.Pong > sent && cond(f)
		})
	}
	beat(p, "the lease confirmed with a majority", func(f *transport.SessionResponse) bool { return f.PrimaryEpoch > 0 })

	// b1 is left with a minority (b2 and b3 gone).
	bs[1].Close()
	bs[2].Close()
	waitUntil(t, waitLong, "b1 sees b2 and b3 gone", func() bool {
		bs[0].mu.Lock()
		defer bs[0].mu.Unlock()
		return len(bs[0].live) == 1 && len(bs[0].departed) == 2
	})
	beat(p, "no lease confirmed without a majority", func(f *transport.SessionResponse) bool { return f.PrimaryEpoch == 0 })

	// The primary goes away: no promotion while b1 has no majority.
	p.shut()
	deadline := time.Now().Add(3 * lease)
	for time.Now().Before(deadline) {
		for _, tp := range s.drain() {
			if tp.Role == transport.RolePrimary {
				t.Fatal("a standby was promoted by a broker without a majority")
			}
		}
		beat(s, "a heartbeat to the standby", func(*transport.SessionResponse) bool { return true })
	}

	// A majority again (b2 back): s2 is promoted.
	b2 := startBroker(t, "b2", []string{bs[0].GossipAddr()}, withLease)
	waitMembers(t, []*Broker{bs[0], b2}, 2)
	s.waitTopo("s2 promoted once a majority is back", func(tp *transport.Topology) bool { return tp.Role == transport.RolePrimary })
	beat(s, "the new primary's lease confirmed", func(f *transport.SessionResponse) bool { return f.PrimaryEpoch > 0 })
}
