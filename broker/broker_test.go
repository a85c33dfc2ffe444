package broker

import (
	"context"
	"errors"
	"math"
	"slices"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/replmesh/replmesh/modes"
	"github.com/replmesh/replmesh/transport"
)

func ownerReg(service, instance, addr string, heads ...uint64) transport.Register {
	r := transport.Register{Service: service, Instance: instance, Addr: addr, Owner: true}
	for i, h := range heads {
		r.Tables = append(r.Tables, transport.TableInfo{Table: service + "_t" + string(rune('0'+i)), Mode: modes.Push.String(), LogID: "log-" + service, Head: h})
	}
	return r
}

func consumerReg(service, instance string, subs ...string) transport.Register {
	r := transport.Register{Service: service, Instance: instance}
	for _, s := range subs {
		r.Subscriptions = append(r.Subscriptions, transport.SubInfo{Service: s, Table: s + "_t0"})
	}
	return r
}

func TestBroker_RegistrationsConverge(t *testing.T) {
	bs := startCluster(t, 3, nil)
	// One instance registered on each broker, plus an update of positions.
	mustConnect(t, bs[0].GRPCAddr(), ownerReg("stores", "s1", "127.0.0.1:9001", 10))
	p := mustConnect(t, bs[1].GRPCAddr(), consumerReg("products", "p1", "stores"))
	mustConnect(t, bs[2].GRPCAddr(), consumerReg("orders", "o1", "stores", "products"))
	p.update(nil, []transport.SubInfo{{Service: "stores", Table: "stores_t0", Seq: 7, Lag: 3}})

	waitEverywhere(t, bs, "three instances, stores primary, products position", func(st *transport.StatusResponse) bool {
		s1, p1, o1 := findInstance(st, "stores", "s1"), findInstance(st, "products", "p1"), findInstance(st, "orders", "o1")
		if s1 == nil || p1 == nil || o1 == nil {
			return false
		}
		so := findOwner(st.Owners, "stores")
		return s1.Broker == "b1" && p1.Broker == "b2" && o1.Broker == "b3" &&
			s1.Role == transport.RolePrimary && so != nil && so.Epoch == 1 && so.Primary.Addr == "127.0.0.1:9001" &&
			len(so.Tables) == 1 && so.Tables[0].Head == 10 &&
			len(p1.Subscriptions) == 1 && p1.Subscriptions[0].Seq == 7 && p1.Subscriptions[0].Lag == 3 &&
			len(st.Brokers) == 3
	})
	// Every broker holds the same registry.
	want := bs[0].stateForTest()
	for _, b := range bs[1:] {
		waitUntil(t, waitLong, "identical registries", func() bool { return slices.Equal(b.stateForTest(), want) })
	}
}

func TestBroker_TopologyPushedWhenOwnerRegistersAndMoves(t *testing.T) {
	bs := startCluster(t, 3, nil)
	c := mustConnect(t, bs[0].GRPCAddr(), consumerReg("products", "p1", "stores"))
	if o := owner(c.last, "stores"); o.Primary.Instance != "" || o.Service != "stores" {
		t.Fatalf("first topology: stores owner %+v, want none yet", o)
	}
	if got := c.last.Role; got != transport.RoleConsumer {
		t.Fatalf("role %q, want consumer", got)
	}
	if len(c.last.Brokers) != 3 {
		t.Fatalf("brokers %v, want 3", c.last.Brokers)
	}

	s := mustConnect(t, bs[1].GRPCAddr(), ownerReg("stores", "s1", "127.0.0.1:9001", 5))
	got := c.waitTopo("stores primary at 127.0.0.1:9001", func(tp *transport.Topology) bool {
		return owner(tp, "stores").Primary.Addr == "127.0.0.1:9001"
	})
	if o := owner(got, "stores"); o.Epoch != 1 || o.Primary.Instance != "s1" || len(o.Tables) != 1 || o.Tables[0].Head != 0 {
		t.Fatalf("stores owner %+v: want s1 epoch 1 with one table and no head", o)
	}
	s.waitTopo("s1 primary", func(tp *transport.Topology) bool { return tp.Role == transport.RolePrimary && tp.Epoch == 1 })

	// Heads moving are not topology changes: no push. The SetMode after it
	// is, so the next topology the consumer gets must carry the override.
	s.update([]transport.TableInfo{{Table: "stores_t0", Mode: modes.Push.String(), LogID: "log-stores", Head: 99}}, nil)
	waitEverywhere(t, bs[:1], "head 99", func(st *transport.StatusResponse) bool {
		o := findOwner(st.Owners, "stores")
		return o != nil && len(o.Tables) == 1 && o.Tables[0].Head == 99
	})
	if _, err := bs[2].SetMode(context.Background(), &transport.SetModeRequest{Version: transport.ProtocolVersion, Service: "stores", Table: "stores_t0", Mode: modes.Pull.String()}); err != nil {
		t.Fatal(err)
	}
	if tp := c.next(waitLong); tp.Overrides["stores/stores_t0"] != modes.Pull.String() {
		t.Fatalf("next push %+v: want the override (a head update must not be pushed)", tp)
	}

	// The owner restarts on a new port and registers with another broker
	// (within the lease): consumers follow, the epoch stays.
	s.shut()
	s.reg.Addr = "127.0.0.1:9002"
	if err := s.open(bs[2].GRPCAddr()); err != nil {
		t.Fatal(err)
	}
	got = c.waitTopo("stores primary at 127.0.0.1:9002", func(tp *transport.Topology) bool {
		return owner(tp, "stores").Primary.Addr == "127.0.0.1:9002"
	})
	if o := owner(got, "stores"); o.Epoch != 1 || o.Primary.Instance != "s1" {
		t.Fatalf("after the move: %+v, want s1 epoch 1", o)
	}
	if s.last.Role != transport.RolePrimary {
		t.Fatalf("moved owner's role %q, want primary", s.last.Role)
	}
}

func TestBroker_RehomeWhenBrokerCloses(t *testing.T) {
	bs := startCluster(t, 3, func(c *Config) { c.Lease = 5 * time.Second })
	c := mustConnect(t, bs[0].GRPCAddr(), consumerReg("products", "p1", "stores"))
	s := mustConnect(t, bs[1].GRPCAddr(), ownerReg("stores", "s1", "127.0.0.1:9001", 5))
	c.waitTopo("stores primary", func(tp *transport.Topology) bool { return owner(tp, "stores").Primary.Instance == "s1" })
	s.waitTopo("s1 primary", func(tp *transport.Topology) bool { return tp.Role == transport.RolePrimary })
	waitEverywhere(t, bs, "s1 primary", func(st *transport.StatusResponse) bool {
		i := findInstance(st, "stores", "s1")
		return i != nil && i.Role == transport.RolePrimary
	})
	c.seen = nil

	// b2 goes away: its session ends, the owner re-homes with the broker
	// list it was given.
	if err := bs[1].Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.waitEnd(); !errors.Is(err, transport.ErrUnavailable) {
		t.Fatalf("session end on broker close: %v, want ErrUnavailable", err)
	}
	s.rehome()
	if s.last.Role != transport.RolePrimary || s.last.Epoch != 1 {
		t.Fatalf("after re-homing: role %q epoch %d, want primary epoch 1", s.last.Role, s.last.Epoch)
	}
	alive := []*Broker{bs[0], bs[2]}
	waitMembers(t, alive, 2)
	waitEverywhere(t, alive, "s1 held by its new broker", func(st *transport.StatusResponse) bool {
		i := findInstance(st, "stores", "s1")
		return i != nil && i.Broker != "" && i.Broker != "b2" && len(st.Instances) == 2
	})
	// The registration was never lost: the consumer never saw stores
	// without its primary, and the epoch never moved.
	c.waitTopo("two brokers", func(tp *transport.Topology) bool { return len(tp.Brokers) == 2 })
	for _, tp := range append(c.seen, c.drain()...) {
		if o := owner(tp, "stores"); o.Primary.Instance != "s1" || o.Epoch != 1 {
			t.Fatalf("consumer saw %+v during the re-home", o)
		}
	}
	for _, b := range alive {
		if st := status(t, b); findOwner(st.Owners, "stores").Epoch != 1 {
			t.Fatalf("%s: epoch moved: %+v", b.Name(), findOwner(st.Owners, "stores"))
		}
	}
}

func TestBroker_LeaseLapseRemovesEverywhere(t *testing.T) {
	const lease = 600 * time.Millisecond
	bs := startCluster(t, 3, func(c *Config) { c.Lease = lease })
	c := mustConnect(t, bs[0].GRPCAddr(), consumerReg("products", "p1", "stores"))
	s := mustConnect(t, bs[1].GRPCAddr(), ownerReg("stores", "s1", "127.0.0.1:9001", 5))
	c.waitTopo("stores primary", func(tp *transport.Topology) bool { return owner(tp, "stores").Primary.Instance == "s1" })
	waitEverywhere(t, bs, "s1 registered", func(st *transport.StatusResponse) bool { return findInstance(st, "stores", "s1") != nil })

	// The broker starts the lease when it sees the session end, after
	// closed, and it removes s1 a lease later by its own clock: a removal
	// seen less than a lease after closed came early. (Load only delays
	// the removal; no upper bound is asserted.)
	s.mustBeOpen()
	closed := time.Now()
	s.shut()
	tp := c.waitTopo("stores without a primary", func(tp *transport.Topology) bool { return owner(tp, "stores").Primary.Instance == "" })
	if d := time.Since(closed); d < lease {
		t.Fatalf("removed %s after the session ended, before the lease (%s)", d, lease)
	}
	if o := owner(tp, "stores"); o.Epoch != 1 || len(o.Standbys) != 0 {
		t.Fatalf("stores after removal: %+v", o)
	}
	waitEverywhere(t, bs, "s1 removed", func(st *transport.StatusResponse) bool { return findInstance(st, "stores", "s1") == nil })

	// It comes back: primary again with the same epoch (nobody replaced it).
	s = mustConnect(t, bs[2].GRPCAddr(), ownerReg("stores", "s1", "127.0.0.1:9003", 5))
	s.waitTopo("s1 primary again", func(tp *transport.Topology) bool { return tp.Role == transport.RolePrimary && tp.Epoch == 1 })
	c.waitTopo("stores back at 9003", func(tp *transport.Topology) bool { return owner(tp, "stores").Primary.Addr == "127.0.0.1:9003" })
}

func TestBroker_PromotesMostAdvancedStandby(t *testing.T) {
	const lease = 500 * time.Millisecond
	bs := startCluster(t, 3, func(c *Config) { c.Lease = lease })
	p := mustConnect(t, bs[0].GRPCAddr(), ownerReg("stores", "a", "127.0.0.1:9001", 10, 10))
	p.waitTopo("a primary", func(tp *transport.Topology) bool { return tp.Role == transport.RolePrimary && tp.Epoch == 1 })
	s1 := mustConnect(t, bs[1].GRPCAddr(), ownerReg("stores", "b", "127.0.0.1:9002", 1, 2))
	s2 := mustConnect(t, bs[2].GRPCAddr(), ownerReg("stores", "c", "127.0.0.1:9003", 4, 3))
	cons := mustConnect(t, bs[1].GRPCAddr(), consumerReg("products", "p1", "stores"))
	for _, s := range []*fakeComp{s1, s2} {
		if s.last.Role != transport.RoleStandby {
			t.Fatalf("%s registered as %q, want standby", s.reg.Instance, s.last.Role)
		}
	}
	// Standby b catches up past c before the primary goes.
	s1.update([]transport.TableInfo{{Table: "stores_t0", Head: 9}, {Table: "stores_t1", Head: 8}}, nil)
	cons.waitTopo("two standbys", func(tp *transport.Topology) bool { return len(owner(tp, "stores").Standbys) == 2 })
	waitEverywhere(t, bs, "b's heads", func(st *transport.StatusResponse) bool {
		i := findInstance(st, "stores", "b")
		return i != nil && i.Tables[0].Head == 9
	})

	// As for removal: the lease runs from the broker seeing the session
	// end, after gone, so a promotion seen less than a lease after gone
	// came early; load only delays it.
	p.mustBeOpen()
	gone := time.Now()
	p.shut()
	// The grant travels by raft, a's tombstone by gossip: either may
	// arrive first.
	tp := cons.waitTopo("b promoted, a gone", func(tp *transport.Topology) bool {
		o := owner(tp, "stores")
		return o.Primary.Instance == "b" && len(o.Standbys) == 1
	})
	if d := time.Since(gone); d < lease {
		t.Fatalf("promoted %s after the primary left, before the lease (%s)", d, lease)
	}
	if o := owner(tp, "stores"); o.Epoch != 2 || o.Primary.Addr != "127.0.0.1:9002" || len(o.Standbys) != 1 || o.Standbys[0].Instance != "c" {
		t.Fatalf("after promotion: %+v, want b primary epoch 2, c standby", o)
	}
	s1.waitTopo("b told it is primary", func(tp *transport.Topology) bool { return tp.Role == transport.RolePrimary && tp.Epoch == 2 })
	s2.waitTopo("c told the new epoch", func(tp *transport.Topology) bool { return tp.Role == transport.RoleStandby && tp.Epoch == 2 })
	waitEverywhere(t, bs, "epoch 2 primary b", func(st *transport.StatusResponse) bool {
		o := findOwner(st.Owners, "stores")
		return o != nil && o.Epoch == 2 && o.Primary.Instance == "b" && findInstance(st, "stores", "a") == nil
	})
	if n := bs[0].metricValue(t, "replmesh_broker_promotions_total"); n != 1 {
		t.Fatalf("promotions on the deciding broker: %v, want 1", n)
	}

	// The old primary comes back: a standby, not a second primary.
	p = mustConnect(t, bs[2].GRPCAddr(), ownerReg("stores", "a", "127.0.0.1:9001", 10, 10))
	if p.last.Role != transport.RoleStandby || p.last.Epoch != 2 {
		t.Fatalf("old primary came back as %q epoch %d, want standby epoch 2", p.last.Role, p.last.Epoch)
	}
	tp = cons.waitTopo("a listed as standby", func(tp *transport.Topology) bool { return len(owner(tp, "stores").Standbys) == 2 })
	if o := owner(tp, "stores"); o.Primary.Instance != "b" || o.Epoch != 2 {
		t.Fatalf("after a's return: %+v", o)
	}
}

func TestBroker_NoStandbyKeepsPrimaryUntilAnotherOwnerComes(t *testing.T) {
	bs := startCluster(t, 1, func(c *Config) { c.Lease = 300 * time.Millisecond })
	p := mustConnect(t, bs[0].GRPCAddr(), ownerReg("stores", "a", "127.0.0.1:9001", 3))
	if p.last.Role != transport.RolePrimary || p.last.Epoch != 1 {
		t.Fatalf("lone owner: role %q epoch %d, want primary in the first answer", p.last.Role, p.last.Epoch)
	}
	c := mustConnect(t, bs[0].GRPCAddr(), consumerReg("products", "p1", "stores"))
	p.shut()
	c.waitTopo("no primary", func(tp *transport.Topology) bool { return owner(tp, "stores").Primary.Instance == "" })
	n := mustConnect(t, bs[0].GRPCAddr(), ownerReg("stores", "b", "127.0.0.1:9002", 0))
	if n.last.Role != transport.RolePrimary || n.last.Epoch != 2 {
		t.Fatalf("new owner after the lapse: %q epoch %d, want primary epoch 2", n.last.Role, n.last.Epoch)
	}
	c.waitTopo("b primary", func(tp *transport.Topology) bool {
		o := owner(tp, "stores")
		return o.Primary.Instance == "b" && o.Epoch == 2
	})
}

func TestBroker_SetModeReachesSubscribers(t *testing.T) {
	bs := startCluster(t, 3, nil)
	c := mustConnect(t, bs[0].GRPCAddr(), consumerReg("products", "p1", "stores"))
	other := mustConnect(t, bs[0].GRPCAddr(), consumerReg("billing", "x1", "users"))
	cl := transport.NewBrokerClient(dial(t, bs[2].GRPCAddr()))
	ctx := ctxT(t, waitLong)
	rev, err := cl.SetMode(ctx, &transport.SetModeRequest{Version: transport.ProtocolVersion, Service: "stores", Table: "stores_t0", Mode: modes.Auto.String()})
	if err != nil {
		t.Fatal(err)
	}
	if rev.Revision == 0 {
		t.Fatal("SetMode returned revision 0")
	}
	c.waitTopo("override auto", func(tp *transport.Topology) bool { return tp.Overrides["stores/stores_t0"] == modes.Auto.String() })
	waitEverywhere(t, bs, "override in status", func(st *transport.StatusResponse) bool {
		return st.Overrides["stores/stores_t0"] == modes.Auto.String()
	})
	if _, err := cl.SetMode(ctx, &transport.SetModeRequest{Version: transport.ProtocolVersion, Service: "stores", Table: "stores_t0"}); err != nil {
		t.Fatal(err)
	}
	c.waitTopo("override cleared", func(tp *transport.Topology) bool { return len(tp.Overrides) == 0 })
	// A component that does not consume stores was never told.
	if other.last.Overrides != nil {
		t.Fatalf("unrelated component got overrides %v", other.last.Overrides)
	}
	if tps := other.drain(); len(tps) > 0 {
		t.Fatalf("unrelated component got pushes: %+v", tps)
	}

	_, err = cl.SetMode(ctx, &transport.SetModeRequest{Version: transport.ProtocolVersion, Service: "stores", Table: "stores_t0", Mode: "fast"})
	if !errors.Is(err, transport.ErrBadRequest) {
		t.Fatalf("SetMode fast: %v, want ErrBadRequest", err)
	}
}

func TestBroker_BadRegisterFrames(t *testing.T) {
	b := startBroker(t, "b1", nil, func(c *Config) { c.Token = "s3cret"; c.RegisterTimeout = 300 * time.Millisecond })
	good := func() *transport.Register {
		r := ownerReg("stores", "s1", "127.0.0.1:9001", 1)
		r.Version = transport.ProtocolVersion
		r.Token = "s3cret"
		return &r
	}
	reg := func(f func(*transport.Register)) *transport.SessionRequest {
		r := good()
		f(r)
		return &transport.SessionRequest{Kind: transport.SessionRegister, Register: r}
	}
	tests := []struct {
		name  string
		first *transport.SessionRequest
		want  error
	}{
		{"heartbeat first", &transport.SessionRequest{Kind: transport.SessionHeartbeat}, transport.ErrBadRequest},
		{"register kind without body", &transport.SessionRequest{Kind: transport.SessionRegister}, transport.ErrBadRequest},
		{"update first", &transport.SessionRequest{Kind: transport.SessionUpdate, Register: good()}, transport.ErrBadRequest},
		{"future version", reg(func(r *transport.Register) { r.Version = transport.ProtocolVersion + 1 }), transport.ErrProtocolVersion},
		{"version zero", reg(func(r *transport.Register) { r.Version = 0 }), transport.ErrProtocolVersion},
		{"no token", reg(func(r *transport.Register) { r.Token = "" }), transport.ErrPermission},
		{"wrong token", reg(func(r *transport.Register) { r.Token = "guess" }), transport.ErrPermission},
		{"bad service", reg(func(r *transport.Register) { r.Service = "st ores" }), transport.ErrBadRequest},
		{"empty instance", reg(func(r *transport.Register) { r.Instance = "" }), transport.ErrBadRequest},
		{"owner without address", reg(func(r *transport.Register) { r.Addr = "" }), transport.ErrBadRequest},
		{"bad address", reg(func(r *transport.Register) { r.Addr = "nowhere" }), transport.ErrBadRequest},
		{"bad table mode", reg(func(r *transport.Register) { r.Tables[0].Mode = "sometimes" }), transport.ErrBadRequest},
		{"duplicate table", reg(func(r *transport.Register) { r.Tables = append(r.Tables, r.Tables[0]) }), transport.ErrBadRequest},
		{"bad subscription", reg(func(r *transport.Register) {
			r.Subscriptions = []transport.SubInfo{{Service: "users", Table: "a/b"}}
		}), transport.ErrBadRequest},
		// An epoch near 2^64 would wrap the next grant to 0 (and the broker
		// would grant again on every step).
		{"epoch above the limit", reg(func(r *transport.Register) { r.Epoch = MaxEpoch + 1 }), transport.ErrBadRequest},
		{"table epoch above the limit", reg(func(r *transport.Register) { r.Tables[0].Epoch = math.MaxUint64 }), transport.ErrBadRequest},
		{"negative MinSyncStandbys", reg(func(r *transport.Register) { r.MinSyncStandbys = -1 }), transport.ErrBadRequest},
		{"MinSyncStandbys above the limit", reg(func(r *transport.Register) { r.MinSyncStandbys = transport.MaxMinSyncStandbys + 1 }), transport.ErrBadRequest},
		{"MinSyncStandbys from a consumer", reg(func(r *transport.Register) {
			r.Owner, r.Addr, r.Tables, r.MinSyncStandbys = false, "", nil, 1
		}), transport.ErrBadRequest},
		// JSON (/api/status) has no NaN or infinity.
		{"NaN transfer rate", reg(func(r *transport.Register) {
			r.Subscriptions = []transport.SubInfo{{Service: "users", Table: "t", XferRate: math.NaN()}}
		}), transport.ErrBadRequest},
		{"infinite transfer rate", reg(func(r *transport.Register) {
			r.Subscriptions = []transport.SubInfo{{Service: "users", Table: "t", XferRate: math.Inf(1)}}
		}), transport.ErrBadRequest},
		{"negative transfer rate", reg(func(r *transport.Register) {
			r.Subscriptions = []transport.SubInfo{{Service: "users", Table: "t", XferRate: -1}}
		}), transport.ErrBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &fakeComp{t: t}
			err := c.openWith(b.GRPCAddr(), tt.first)
			defer c.shut()
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
	t.Run("no frame at all", func(t *testing.T) {
		stream, err := transport.NewBrokerClient(dial(t, b.GRPCAddr())).Session(ctxT(t, waitLong))
		if err != nil {
			t.Fatal(err)
		}
		_, err = stream.Recv()
		if err = transport.FromStatus(err); !errors.Is(err, transport.ErrBadRequest) {
			t.Fatalf("got %v, want ErrBadRequest after RegisterTimeout", err)
		}
	})
	t.Run("register twice", func(t *testing.T) {
		c := mustConnect(t, b.GRPCAddr(), *good())
		if err := c.stream.Send(&transport.SessionRequest{Kind: transport.SessionRegister, Register: good()}); err != nil {
			t.Fatal(err)
		}
		if err := c.waitEnd(); !errors.Is(err, transport.ErrBadRequest) {
			t.Fatalf("got %v, want ErrBadRequest", err)
		}
	})
	t.Run("bad update", func(t *testing.T) {
		c := mustConnect(t, b.GRPCAddr(), *good())
		c.update([]transport.TableInfo{{Table: ""}}, nil)
		if err := c.waitEnd(); !errors.Is(err, transport.ErrBadRequest) {
			t.Fatalf("got %v, want ErrBadRequest", err)
		}
	})
	t.Run("good", func(t *testing.T) {
		c := mustConnect(t, b.GRPCAddr(), *good())
		if c.last.Role != transport.RolePrimary || c.last.Epoch != 1 {
			t.Fatalf("role %q epoch %d, want primary epoch 1", c.last.Role, c.last.Epoch)
		}
	})
}

func TestBroker_LookupAndStatusRequests(t *testing.T) {
	b := startBroker(t, "b1", nil, nil)
	mustConnect(t, b.GRPCAddr(), ownerReg("stores", "s1", "127.0.0.1:9001", 42))
	cl := transport.NewBrokerClient(dial(t, b.GRPCAddr()))
	ctx := ctxT(t, waitLong)
	lr, err := cl.Lookup(ctx, &transport.LookupRequest{Version: transport.ProtocolVersion, Service: "stores"})
	if err != nil {
		t.Fatal(err)
	}
	if o := lr.Owner; o.Primary.Instance != "s1" || o.Epoch != 1 || len(o.Tables) != 1 || o.Tables[0].Head != 42 {
		t.Fatalf("lookup: %+v", o)
	}
	if _, err := cl.Lookup(ctx, &transport.LookupRequest{Version: transport.ProtocolVersion, Service: "nobody"}); !errors.Is(err, transport.ErrUnknownTable) {
		t.Fatalf("lookup of an unknown service: %v, want ErrUnknownTable", err)
	}
	if _, err := cl.Lookup(ctx, &transport.LookupRequest{Version: 99, Service: "stores"}); !errors.Is(err, transport.ErrProtocolVersion) {
		t.Fatalf("lookup with version 99: %v", err)
	}
	if _, err := cl.Lookup(ctx, &transport.LookupRequest{Version: transport.ProtocolVersion, Service: ""}); !errors.Is(err, transport.ErrBadRequest) {
		t.Fatalf("lookup of service \"\": %v", err)
	}
	st, err := cl.Status(ctx, &transport.StatusRequest{Version: transport.ProtocolVersion})
	if err != nil {
		t.Fatal(err)
	}
	if st.Broker != "b1" || len(st.Brokers) != 1 || st.Brokers[0].Addr != b.GRPCAddr() || st.Brokers[0].State != "alive" {
		t.Fatalf("status brokers: %s %+v", st.Broker, st.Brokers)
	}
	i := findInstance(st, "stores", "s1")
	if i == nil || i.Role != transport.RolePrimary || i.Broker != "b1" || i.LastSeenMs == 0 {
		t.Fatalf("status instance: %+v", i)
	}
}

func TestBroker_CloseIsGracefulAndIdempotent(t *testing.T) {
	b := startBroker(t, "b1", nil, nil)
	cc := dial(t, b.GRPCAddr())
	h := healthpb.NewHealthClient(cc)
	resp, err := h.Check(ctxT(t, waitLong), &healthpb.HealthCheckRequest{Service: transport.BrokerServiceName})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health before close: %v %v", resp, err)
	}
	c := mustConnect(t, b.GRPCAddr(), consumerReg("products", "p1", "stores"))
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.waitEnd(); !errors.Is(err, transport.ErrUnavailable) {
		t.Fatalf("session at close: %v, want ErrUnavailable", err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if _, err := b.Status(context.Background(), &transport.StatusRequest{Version: transport.ProtocolVersion}); !errors.Is(err, ErrClosed) {
		t.Fatalf("status after close: %v, want ErrClosed", err)
	}
}
