package broker

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/replmesh/replmesh/transport"
)

func TestBroker_LateJoinerReceivesTheRegistry(t *testing.T) {
	bs := startCluster(t, 2, nil)
	mustConnect(t, bs[0].GRPCAddr(), ownerReg("stores", "s1", "127.0.0.1:9001", 3))
	mustConnect(t, bs[1].GRPCAddr(), consumerReg("products", "p1", "stores"))
	if _, err := bs[1].SetMode(ctxT(t, waitLong), &transport.SetModeRequest{Version: transport.ProtocolVersion, Service: "stores", Table: "stores_t0", Mode: "pull"}); err != nil {
		t.Fatal(err)
	}
	waitEverywhere(t, bs, "registrations", func(st *transport.StatusResponse) bool {
		return len(st.Instances) == 2 && st.Overrides["stores/stores_t0"] == "pull"
	})
	// b3 joins after the broadcasts are long gone: the join's state exchange
	// gives it everything, so a component registering there at once gets the
	// full topology.
	b3 := startBroker(t, "b3", []string{bs[1].GossipAddr()}, nil)
	c := mustConnect(t, b3.GRPCAddr(), consumerReg("orders", "o1", "stores"))
	if o := owner(c.last, "stores"); o.Primary.Instance != "s1" || o.Epoch != 1 || c.last.Overrides["stores/stores_t0"] != "pull" {
		t.Fatalf("first topology on the late joiner: %+v", c.last)
	}
	waitUntil(t, waitLong, "identical registries", func() bool {
		return string(b3.stateForTest()) == string(bs[0].stateForTest()) && string(bs[1].stateForTest()) == string(bs[0].stateForTest())
	})
}

func TestBroker_LargeRecordsTravelOverTCP(t *testing.T) {
	bs := startCluster(t, 3, nil)
	r := consumerReg("reports", "r1")
	for i := range 200 {
		r.Subscriptions = append(r.Subscriptions, transport.SubInfo{Service: fmt.Sprintf("service-%03d", i), Table: "some_table_name"})
	}
	if n := len(mustEncode(&gossipMsg{Instances: []*instanceRec{{Service: r.Service, Instance: r.Instance, Subs: r.Subscriptions}}})); n <= maxBroadcast {
		t.Fatalf("record is %d bytes; the test needs one over %d", n, maxBroadcast)
	}
	mustConnect(t, bs[0].GRPCAddr(), r)
	waitEverywhere(t, bs, "the large record", func(st *transport.StatusResponse) bool {
		i := findInstance(st, "reports", "r1")
		return i != nil && len(i.Subscriptions) == 200
	})
}

func TestBroker_InstanceInUseIsRefused(t *testing.T) {
	bs := startCluster(t, 2, nil)
	old := mustConnect(t, bs[0].GRPCAddr(), ownerReg("stores", "s1", "127.0.0.1:9001", 1))
	waitEverywhere(t, bs, "s1 on b1", func(st *transport.StatusResponse) bool {
		i := findInstance(st, "stores", "s1")
		return i != nil && i.Broker == "b1"
	})
	for _, tt := range []struct {
		name string
		b    *Broker
	}{
		{"on another broker", bs[1]},
		{"on the same broker", bs[0]},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// A second process with the same instance name: refused,
			// naming the holder's address; the holder keeps its session.
			c := &fakeComp{t: t, reg: ownerReg("stores", "s1", "127.0.0.1:9002", 1)}
			c.reg.Version = transport.ProtocolVersion
			err := c.openWith(tt.b.GRPCAddr(), &transport.SessionRequest{Kind: transport.SessionRegister, Register: &c.reg})
			if !errors.Is(err, transport.ErrInstanceInUse) || !strings.Contains(err.Error(), "127.0.0.1:9001") {
				t.Fatalf("second Register: %v, want ErrInstanceInUse naming 127.0.0.1:9001", err)
			}
			st := status(t, tt.b)
			if len(st.Refused) != 1 || st.Refused[0].Addr != "127.0.0.1:9002" || st.Refused[0].Holder != "127.0.0.1:9001" {
				t.Fatalf("Status.Refused = %+v, want the refused 127.0.0.1:9002 held by 127.0.0.1:9001", st.Refused)
			}
			select {
			case err := <-old.errc:
				t.Fatalf("the holder's session ended: %v", err)
			default:
			}
		})
	}
	// Once the holder's session ends, the name is free (within its lease,
	// on any broker).
	old.shut()
	n := mustConnect(t, bs[1].GRPCAddr(), ownerReg("stores", "s1", "127.0.0.1:9003", 1))
	if n.last.Role != transport.RolePrimary {
		t.Fatalf("new session's role %q, want primary", n.last.Role)
	}
}

// A broker that sees the holder's broker gone (here: stopped, so its
// record still says connected) lets the instance itself re-home (same
// address) but refuses another process until the lease lapses: "gone" is
// its own view, which a one-way partition also gives (chaos dup-instance).
func TestBroker_InstanceInUseWhileHolderBrokerLooksGone(t *testing.T) {
	long := func(c *Config) { c.Lease = time.Minute }
	bs := startCluster(t, 2, long)
	s := mustConnect(t, bs[1].GRPCAddr(), ownerReg("stores", "s1", "127.0.0.1:9001", 1))
	waitEverywhere(t, bs, "s1 on b2", func(st *transport.StatusResponse) bool {
		i := findInstance(st, "stores", "s1")
		return i != nil && i.Broker == "b2"
	})
	bs[1].Close()
	s.shut()
	bs[0].mu.Lock()
	rec := bs[0].reg.inst(instKey{"stores", "s1"})
	stale := rec != nil && rec.Connected && !bs[0].aliveLocked("b2")
	bs[0].mu.Unlock()
	if !stale {
		t.Fatal("b1 does not hold s1 as connected on a gone b2; the test needs that")
	}
	c := &fakeComp{t: t, reg: ownerReg("stores", "s1", "127.0.0.1:9002", 1)}
	c.reg.Version = transport.ProtocolVersion
	err := c.openWith(bs[0].GRPCAddr(), &transport.SessionRequest{Kind: transport.SessionRegister, Register: &c.reg})
	if !errors.Is(err, transport.ErrInstanceInUse) || !strings.Contains(err.Error(), "127.0.0.1:9001") {
		t.Fatalf("Register of another process: %v, want ErrInstanceInUse naming 127.0.0.1:9001", err)
	}
	back := mustConnect(t, bs[0].GRPCAddr(), ownerReg("stores", "s1", "127.0.0.1:9001", 1))
	if back.last.Role != transport.RolePrimary {
		t.Fatalf("the instance re-homed with role %q, want primary", back.last.Role)
	}
}

func TestBroker_RestartedBrokerDisownsSessionsItLost(t *testing.T) {
	long := func(c *Config) { c.Lease = time.Minute }
	bs := startCluster(t, 2, long)
	s := mustConnect(t, bs[1].GRPCAddr(), ownerReg("stores", "s1", "127.0.0.1:9001", 1))
	waitEverywhere(t, bs, "s1 on b2", func(st *transport.StatusResponse) bool {
		i := findInstance(st, "stores", "s1")
		return i != nil && i.Broker == "b2"
	})
	connected := func(b *Broker) bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		rec := b.reg.inst(instKey{"stores", "s1"})
		return rec != nil && rec.Connected
	}
	// b2 stops (a broker that is shutting down writes nothing, so b1 still
	// holds "s1 is connected on b2"), and a new b2 (same name, new ports)
	// joins: it is the authority on sessions named b2, holds none for s1,
	// and says so.
	bs[1].Close()
	s.shut()
	if !connected(bs[0]) {
		t.Fatal("b1 already holds s1 as disconnected; the test needs the stale record")
	}
	b2 := startBroker(t, "b2", []string{bs[0].GossipAddr()}, long)
	waitMembers(t, []*Broker{bs[0], b2}, 2)
	waitUntil(t, waitLong, "s1 disconnected on b1 and the new b2", func() bool { return !connected(bs[0]) && !connected(b2) })
	if st := status(t, bs[0]); findInstance(st, "stores", "s1") == nil {
		t.Fatal("s1 removed before its lease lapsed")
	}
}

func TestBroker_GossipKeyAndLabel(t *testing.T) {
	key := []byte("0123456789abcdef")
	secure := func(c *Config) { c.GossipKey = key; c.ClusterLabel = "prod" }
	bs := startCluster(t, 2, secure)
	mustConnect(t, bs[0].GRPCAddr(), consumerReg("products", "p1", "stores"))
	waitEverywhere(t, bs, "p1", func(st *transport.StatusResponse) bool { return findInstance(st, "products", "p1") != nil })

	tests := []struct {
		name   string
		mutate func(*Config)
	}{
		{"no key", func(c *Config) { c.ClusterLabel = "prod" }},
		{"other key", func(c *Config) { c.GossipKey = []byte("fedcba9876543210"); c.ClusterLabel = "prod" }},
		{"other label", func(c *Config) { c.GossipKey = key; c.ClusterLabel = "test" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x := startBroker(t, "x-"+strings.ReplaceAll(tt.name, " ", "-"), nil, tt.mutate)
			if n, err := x.ml.Join([]string{bs[0].GossipAddr()}); err == nil || n != 0 {
				t.Fatalf("joined a cluster with another key or label: n=%d err=%v", n, err)
			}
		})
	}
}

func TestConfig_Validate(t *testing.T) {
	tests := []struct {
		field  string
		mutate func(*Config)
	}{
		{"Config.Name", func(c *Config) { c.Name = "a b" }},
		{"Config.GRPCAddr", func(c *Config) { c.GRPCAddr = "nowhere" }},
		{"Config.BindAddr", func(c *Config) { c.BindAddr = "127.0.0.1:99999" }},
		{"Config.AdvertiseAddr", func(c *Config) { c.AdvertiseAddr = "10.0.0.1:0" }},
		{"Config.AdvertiseGRPC", func(c *Config) { c.AdvertiseGRPC = "10.0.0.1" }},
		{"Config.Join", func(c *Config) { c.Join = []string{""} }},
		{"Config.GossipKey", func(c *Config) { c.GossipKey = []byte("short") }},
		{"Config.ClusterLabel", func(c *Config) { c.ClusterLabel = strings.Repeat("x", 256) }},
		{"Config.Lease", func(c *Config) { c.Lease = 0 }},
		{"Config.RehomeWait", func(c *Config) { c.RehomeWait = -time.Second }},
		{"Config.CheckInterval", func(c *Config) { c.CheckInterval = 2 * c.Lease }},
		{"Config.TombstoneTTL", func(c *Config) { c.TombstoneTTL = c.Lease / 2 }},
	}
	for _, tt := range tests {
		t.Run(tt.field, func(t *testing.T) {
			cfg := LocalConfig("b1")
			tt.mutate(&cfg)
			err := cfg.Validate()
			if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tt.field) {
				t.Fatalf("got %v, want ErrInvalidConfig naming %s", err, tt.field)
			}
			if _, err := New(ctxT(t, waitLong), cfg); !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("New: %v", err)
			}
		})
	}
	for _, tt := range []struct {
		name string
		cfg  Config
	}{{"default", DefaultConfig()}, {"local", LocalConfig("")}} {
		t.Run(tt.name+" is valid", func(t *testing.T) {
			if err := tt.cfg.Validate(); err != nil {
				t.Errorf("%s config: %v", tt.name, err)
			}
		})
	}
}

func TestBroker_StateExchangeRepairsLostBroadcasts(t *testing.T) {
	bs := startCluster(t, 3, func(c *Config) { c.Gossip.PushPullInterval = 200 * time.Millisecond })
	// A record that b1 holds but never broadcast (as if every packet of
	// the broadcast had been lost): only the periodic push/pull exchange
	// can bring it to b2 and b3.
	now := time.Now()
	bs[0].mu.Lock()
	rec := &instanceRec{Service: "products", Instance: "p9", Session: sessionID{Start: now.UnixNano(), Broker: "b1"},
		Ver: bs[0].reg.next("b1", now.UnixMicro())}
	bs[0].reg.store(rec)
	bs[0].mu.Unlock()
	waitEverywhere(t, bs, "the unbroadcast record", func(st *transport.StatusResponse) bool {
		return findInstance(st, "products", "p9") != nil
	})
}

// A broker that stops without leaving the gossip cluster (a crash, or a
// Close whose leave did not get out on a loaded host) and comes back under
// its name on a new port is taken at its new address once the others have
// found the old one dead. memberlist's default would refuse it as a
// conflicting address until the dead node is reaped (GossipToTheDeadTime:
// an hour here, so the wait below would run out without the reclaim).
func TestBroker_CrashedBrokerComesBackOnANewPort(t *testing.T) {
	mutate := func(noLeave bool) func(*Config) {
		return func(c *Config) {
			c.Gossip.GossipToTheDeadTime = time.Hour
			c.noLeave = noLeave
		}
	}
	b1 := startBroker(t, "b1", nil, mutate(false))
	b2 := startBroker(t, "b2", []string{b1.GossipAddr()}, mutate(false))
	b3 := startBroker(t, "b3", []string{b1.GossipAddr()}, mutate(true))
	waitMembers(t, []*Broker{b1, b2, b3}, 3)
	old := b3.GossipAddr()
	b3.Close()
	nb := startBroker(t, "b3", []string{b1.GossipAddr(), b2.GossipAddr()}, mutate(false))
	if nb.GossipAddr() == old {
		t.Fatalf("the new b3 bound the old address %s: the test needs a new one", old)
	}
	waitUntil(t, 3*waitLong, "b3 alive at its new address on b1 and b2", func() bool {
		for _, b := range []*Broker{b1, b2} {
			found := false
			for _, m := range b.ml.Members() {
				found = found || (m.Name == "b3" && m.Address() == nb.GossipAddr() && m.State == memberlist.StateAlive)
			}
			if !found {
				return false
			}
		}
		return true
	})
	waitMembers(t, []*Broker{b1, b2, nb}, 3)
}

// memberlistConfig replaces memberlist's "never before it is reaped" (0)
// with a probe interval as the time a dead broker's name stays bound to
// its old address, and keeps an operator's own setting.
func TestMemberlistConfig_DeadNodeReclaimTime(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  time.Duration
		want time.Duration
	}{
		{"default", 0, 200 * time.Millisecond},
		{"operator's", 7 * time.Second, 7 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := LocalConfig("b1")
			cfg.Gossip.DeadNodeReclaimTime = tc.set
			b := &Broker{cfg: cfg, log: slog.New(slog.DiscardHandler)}
			mc, err := b.memberlistConfig(&delegate{})
			if err != nil {
				t.Fatal(err)
			}
			if mc.DeadNodeReclaimTime != tc.want {
				t.Fatalf("DeadNodeReclaimTime %v, want %v", mc.DeadNodeReclaimTime, tc.want)
			}
		})
	}
}
