package broker

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/replmesh/replmesh/modes"
	"github.com/replmesh/replmesh/transport"
)

// The adversarial tests: a real broker serving mTLS on 127.0.0.1:0 with
// Config.RequireIdentity, callers with certificates of a DevCA, each one
// trying what an attacker on the network tried against brokers that
// trusted every caller on its word (issue 12).

// testPKI issues the certificates of one trust domain into files.
type testPKI struct {
	t   *testing.T
	ca  *transport.DevCA
	dir string
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	ca, err := transport.NewDevCA("replmesh.test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &testPKI{t: t, ca: ca, dir: t.TempDir()}
}

// files issues a certificate for id into files (DevCA.IssueFiles), read
// again only on Reload.
func (p *testPKI) files(id transport.Identity) transport.TLSFiles {
	p.t.Helper()
	f, err := p.ca.IssueFiles(p.dir, transport.LeafRequest{Identity: id, Validity: time.Hour})
	if err != nil {
		p.t.Fatal(err)
	}
	f.CheckInterval = -1
	return f
}

// source issues a certificate for id and returns a TLSSource of it.
func (p *testPKI) source(id transport.Identity) *transport.TLSSource {
	p.t.Helper()
	src, err := transport.NewTLSSource(p.files(id), testLogger(p.t))
	if err != nil {
		p.t.Fatal(err)
	}
	return src
}

// opts returns the dial options of a caller with identity id.
func (p *testPKI) opts(id transport.Identity) transport.Options {
	p.t.Helper()
	return transport.Options{TLS: p.source(id).ClientConfig(transport.ExpectRole(transport.RoleBroker))}
}

func svcID(service, instance string) transport.Identity {
	return transport.Identity{TrustDomain: "replmesh.test", Role: transport.RoleService, Service: service, Instance: instance}
}

func roleID(role transport.Role, name string) transport.Identity {
	return transport.Identity{TrustDomain: "replmesh.test", Role: role, Name: name}
}

// startSecureBroker starts a broker with mTLS and RequireIdentity.
func startSecureBroker(t *testing.T, p *testPKI, mutate func(*Config)) *Broker {
	t.Helper()
	src := p.source(roleID(transport.RoleBroker, "b1"))
	return startBroker(t, "b1", nil, func(c *Config) {
		c.Transport.TLS = src.ServerConfig()
		c.RequireIdentity = true
		if mutate != nil {
			mutate(c)
		}
	})
}

// connectAs opens a session with the identity id.
func connectAs(t *testing.T, p *testPKI, addr string, id transport.Identity, reg transport.Register) (*fakeComp, error) {
	t.Helper()
	if reg.Version == 0 {
		reg.Version = transport.ProtocolVersion
	}
	c := &fakeComp{t: t, reg: reg, topts: p.opts(id)}
	if err := c.open(addr); err != nil {
		return nil, err
	}
	t.Cleanup(c.close)
	return c, nil
}

// clientAs returns a broker client with the identity id.
func clientAs(t *testing.T, p *testPKI, addr string, id transport.Identity) *transport.BrokerClient {
	t.Helper()
	cc, err := transport.Dial(addr, p.opts(id))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return transport.NewBrokerClient(cc)
}

func wantDenied(t *testing.T, err error, contains ...string) {
	t.Helper()
	if !errors.Is(err, transport.ErrPermission) {
		t.Fatalf("got %v, want PermissionDenied", err)
	}
	for _, c := range contains {
		if !strings.Contains(err.Error(), c) {
			t.Fatalf("%q does not name %q", err, c)
		}
	}
}

var storesTables = []transport.TableInfo{{Table: "stores", Head: 10}, {Table: "store_managers", Head: 10}}

// Register hijack: another identity re-registers stores/stores-1 with its
// own address. Before: the broker took it, and sent the consumers to the
// attacker's address.
func TestSecurity_RegisterHijack(t *testing.T) {
	p := newTestPKI(t)
	b := startSecureBroker(t, p, nil)
	real := transport.Register{Service: "stores", Instance: "stores-1", Addr: "127.0.0.1:7001", Owner: true, Tables: storesTables}
	owner, err := connectAs(t, p, b.GRPCAddr(), svcID("stores", "stores-1"), real)
	if err != nil {
		t.Fatalf("the real owner: %v", err)
	}
	before := b.stateForTest()
	attackers := []struct {
		name string
		id   transport.Identity
	}{
		{"another service", svcID("products", "p1")},
		{"another instance of stores", svcID("stores", "stores-2")},
		{"an admin", roleID(transport.RoleAdmin, "root")},
		{"a broker", roleID(transport.RoleBroker, "b9")},
	}
	for _, a := range attackers {
		t.Run(a.name, func(t *testing.T) {
			evil := real
			evil.Addr = "127.0.0.1:6666"
			_, err := connectAs(t, p, b.GRPCAddr(), a.id, evil)
			wantDenied(t, err, "stores/stores-1", a.id.String())
		})
	}
	owner.mustBeOpen()
	st := status(t, b)
	if got := findInstance(st, "stores", "stores-1"); got == nil || got.Addr != real.Addr {
		t.Fatalf("stores-1 after the attempts: %+v", got)
	}
	if after := b.stateForTest(); string(after) != string(before) {
		t.Fatal("the registry changed")
	}
	if n := b.metricValue(t, "replmesh_broker_authz_denials_total", "call", "register"); n != float64(len(attackers)) {
		t.Fatalf("register denials counted %v, want %d", n, len(attackers))
	}
}

// Fake standby head: an identity that is not an instance of stores claims
// to be a stores standby with head 2^40. Before: it was promoted when the
// primary stopped.
func TestSecurity_FakeStandbyHead(t *testing.T) {
	p := newTestPKI(t)
	b := startSecureBroker(t, p, nil)
	primary, err := connectAs(t, p, b.GRPCAddr(), svcID("stores", "stores-1"),
		transport.Register{Service: "stores", Instance: "stores-1", Addr: "127.0.0.1:7001", Owner: true, Tables: storesTables})
	if err != nil {
		t.Fatal(err)
	}
	primary.waitTopo("stores-1 primary", func(tp *transport.Topology) bool { return tp.Role == transport.RolePrimary })
	standby, err := connectAs(t, p, b.GRPCAddr(), svcID("stores", "stores-2"),
		transport.Register{Service: "stores", Instance: "stores-2", Addr: "127.0.0.1:7002", Owner: true, Tables: storesTables})
	if err != nil {
		t.Fatal(err)
	}
	huge := []transport.TableInfo{{Table: "stores", Head: 1 << 40}, {Table: "store_managers", Head: 1 << 40}}
	_, err = connectAs(t, p, b.GRPCAddr(), svcID("products", "p1"),
		transport.Register{Service: "stores", Instance: "evil", Addr: "127.0.0.1:6666", Owner: true, Tables: huge})
	wantDenied(t, err, "stores/evil", "products/p1")

	// A real standby reporting a head far above the primary's is capped.
	capped := headLead(t, b)
	standby.update([]transport.TableInfo{{Table: "stores", Head: 1 << 40}, {Table: "store_managers", Head: 10}}, nil)
	waitUntil(t, waitLong, "the standby's head capped", func() bool {
		in := findInstance(status(t, b), "stores", "stores-2")
		return in != nil && len(in.Tables) == 2 && in.Tables[1].Head == 10+capped
	})
	if n := b.metricValue(t, "replmesh_broker_standby_heads_capped_total"); n < 1 {
		t.Fatalf("heads capped counted %v", n)
	}
	// Heads above MaxHead end the session as a bad request.
	standby.update([]transport.TableInfo{{Table: "stores", Head: 1 << 60}}, nil)
	if err := standby.waitEnd(); !errors.Is(err, transport.ErrBadRequest) {
		t.Fatalf("head 2^60: %v, want a bad request", err)
	}

	// The primary stops: the only real standby left is stores-3 (the
	// attacker never registered).
	if _, err := connectAs(t, p, b.GRPCAddr(), svcID("stores", "stores-3"),
		transport.Register{Service: "stores", Instance: "stores-3", Addr: "127.0.0.1:7003", Owner: true, Tables: storesTables}); err != nil {
		t.Fatal(err)
	}
	primary.close()
	waitUntil(t, waitLong, "a standby promoted", func() bool {
		o := findOwner(status(t, b).Owners, "stores")
		return o != nil && o.Primary.Instance != "" && o.Primary.Instance != "stores-1"
	})
	if o := findOwner(status(t, b).Owners, "stores"); o.Primary.Instance != "stores-3" {
		t.Fatalf("promoted %q, want stores-3", o.Primary.Instance)
	}
}

// headLead returns how far ahead of the primary b takes a standby head.
func headLead(t *testing.T, b *Broker) uint64 {
	t.Helper()
	return orDefault(b.cfg.MaxHeadLead, DefaultMaxHeadLead)
}

// SetMode, Status and Lookup by role. Before: nothing was checked; a
// component switched a live consumer to pull and read the whole registry.
func TestSecurity_AdminCalls(t *testing.T) {
	p := newTestPKI(t)
	policy := modes.NewAccessPolicy()
	if err := policy.Allow("stores", "stores", "products"); err != nil {
		t.Fatal(err)
	}
	b := startSecureBroker(t, p, func(c *Config) { c.Policy = policy })
	if _, err := connectAs(t, p, b.GRPCAddr(), svcID("stores", "stores-1"),
		transport.Register{Service: "stores", Instance: "stores-1", Addr: "127.0.0.1:7001", Owner: true,
			Tables: []transport.TableInfo{{Table: "stores"}, {Table: "secrets"}}}); err != nil {
		t.Fatal(err)
	}
	v := transport.ProtocolVersion
	type result struct{ setMode, status, gossipKeys bool }
	callers := []struct {
		name string
		id   transport.Identity
		want result
	}{
		{"service", svcID("products", "p1"), result{}},
		{"owner service", svcID("stores", "stores-1"), result{}},
		{"broker", roleID(transport.RoleBroker, "b2"), result{}},
		{"operator", roleID(transport.RoleOperator, "ops"), result{status: true}},
		{"admin", roleID(transport.RoleAdmin, "root"), result{setMode: true, status: true, gossipKeys: true}},
	}
	for _, c := range callers {
		t.Run(c.name, func(t *testing.T) {
			cl := clientAs(t, p, b.GRPCAddr(), c.id)
			_, err := cl.SetMode(ctxT(t, waitLong), &transport.SetModeRequest{Version: v, Service: "stores", Table: "stores", Mode: "pull"})
			if c.want.setMode != (err == nil) {
				t.Fatalf("SetMode: %v, want allowed=%v", err, c.want.setMode)
			}
			if err != nil {
				wantDenied(t, err, "setmode", c.id.String())
			}
			_, err = cl.Status(ctxT(t, waitLong), &transport.StatusRequest{Version: v})
			if c.want.status != (err == nil) {
				t.Fatalf("Status: %v, want allowed=%v", err, c.want.status)
			}
			if err != nil {
				wantDenied(t, err, "status", c.id.String())
			}
			// The gossip keys: an admin's (no token needed, and none set);
			// this broker gossips on loopback without a key, so an
			// admin's list is refused as a bad request, not denied.
			_, err = cl.GossipKeys(ctxT(t, waitLong), &transport.GossipKeysRequest{Version: v, Op: transport.GossipKeysList})
			if c.want.gossipKeys {
				if errors.Is(err, transport.ErrPermission) {
					t.Fatalf("GossipKeys: %v, want allowed", err)
				}
			} else {
				wantDenied(t, err, "gossipkeys", c.id.String())
			}
		})
	}

	lookups := []struct {
		name    string
		id      transport.Identity
		service string
		tables  []string // nil: refused
	}{
		{"reader", svcID("products", "p1"), "stores", []string{"stores"}},
		{"not a reader", svcID("billing", "b1"), "stores", nil},
		{"unknown service, not a reader", svcID("billing", "b1"), "nosuch", nil},
		{"the owner", svcID("stores", "stores-2"), "stores", []string{"secrets", "stores"}},
		{"operator", roleID(transport.RoleOperator, "ops"), "stores", []string{"secrets", "stores"}},
	}
	for _, l := range lookups {
		t.Run("lookup "+l.name, func(t *testing.T) {
			r, err := clientAs(t, p, b.GRPCAddr(), l.id).Lookup(ctxT(t, waitLong), &transport.LookupRequest{Version: v, Service: l.service})
			if l.tables == nil {
				wantDenied(t, err, "lookup "+l.service, l.id.String())
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, tb := range r.Owner.Tables {
				got = append(got, tb.Table)
			}
			if fmt.Sprint(got) != fmt.Sprint(l.tables) {
				t.Fatalf("tables %v, want %v", got, l.tables)
			}
		})
	}
}

// Subscriptions follow the policy, in the Register, in updates and when
// the policy changes. Before: any component subscribed to any table.
func TestSecurity_Subscriptions(t *testing.T) {
	p := newTestPKI(t)
	policy := modes.NewAccessPolicy()
	if err := policy.Allow("stores", "stores", "products"); err != nil {
		t.Fatal(err)
	}
	b := startSecureBroker(t, p, func(c *Config) { c.Policy = policy })
	sub := func(table string) []transport.SubInfo { return []transport.SubInfo{{Service: "stores", Table: table}} }

	_, err := connectAs(t, p, b.GRPCAddr(), svcID("billing", "b1"), transport.Register{Service: "billing", Instance: "b1", Subscriptions: sub("stores")})
	wantDenied(t, err, "stores/stores", "billing")
	_, err = connectAs(t, p, b.GRPCAddr(), svcID("products", "p1"), transport.Register{Service: "products", Instance: "p1", Subscriptions: sub("secrets")})
	wantDenied(t, err, "stores/secrets")

	c, err := connectAs(t, p, b.GRPCAddr(), svcID("products", "p1"), transport.Register{Service: "products", Instance: "p1", Subscriptions: sub("stores")})
	if err != nil {
		t.Fatal(err)
	}
	c.update(nil, append(sub("stores"), sub("secrets")...))
	wantDenied(t, c.waitEnd(), "stores/secrets")

	c, err = connectAs(t, p, b.GRPCAddr(), svcID("products", "p1"), transport.Register{Service: "products", Instance: "p1", Subscriptions: sub("stores")})
	if err != nil {
		t.Fatal(err)
	}
	b.SetPolicy(modes.NewAccessPolicy())
	wantDenied(t, c.waitEnd(), "no longer")
}

// Registration flood. Before: one caller registered as many instances as
// it liked, with 1024 tables each, until the broker ran out of memory.
func TestSecurity_RegistrationFlood(t *testing.T) {
	p := newTestPKI(t)
	b := startSecureBroker(t, p, func(c *Config) { c.MaxRegistrations = 4; c.MaxTables = 64 })
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapInuse
	}
	tables := make([]transport.TableInfo, 64)
	for i := range tables {
		tables[i] = transport.TableInfo{Table: fmt.Sprintf("table-%04d-%s", i, strings.Repeat("x", 100)), Head: uint64(i)}
	}
	before := heap()
	t.Run("one identity, many instances", func(t *testing.T) {
		id := svcID("flood", "f-0")
		opts := p.opts(id)
		for i := range 100 {
			c := &fakeComp{t: t, topts: opts, reg: transport.Register{Version: transport.ProtocolVersion, Service: "flood",
				Instance: fmt.Sprintf("x-%d", i), Addr: "127.0.0.1:7000", Owner: true, Tables: tables}}
			err := c.open(b.GRPCAddr())
			wantDenied(t, err, "flood/f-0")
		}
	})
	t.Run("many identities of one service", func(t *testing.T) {
		var refused int
		for i := range 6 {
			inst := fmt.Sprintf("f-%d", i)
			_, err := connectAs(t, p, b.GRPCAddr(), svcID("flood", inst),
				transport.Register{Service: "flood", Instance: inst, Addr: "127.0.0.1:7000", Owner: true, Tables: tables})
			switch {
			case err == nil:
			case errors.Is(err, transport.ErrTooLarge) && strings.Contains(err.Error(), "at most 4"):
				refused++
			default:
				t.Fatalf("%s: %v", inst, err)
			}
		}
		if refused != 2 {
			t.Fatalf("%d registrations refused, want 2", refused)
		}
	})
	t.Run("too many tables", func(t *testing.T) {
		_, err := connectAs(t, p, b.GRPCAddr(), svcID("wide", "w1"),
			transport.Register{Service: "wide", Instance: "w1", Addr: "127.0.0.1:7000", Owner: true, Tables: append(tables, transport.TableInfo{Table: "one-more"})})
		if !errors.Is(err, transport.ErrTooLarge) {
			t.Fatalf("65 tables: %v, want ResourceExhausted", err)
		}
	})
	after := heap()
	t.Logf("heap in use: %d KiB before the flood, %d KiB after (%+d KiB)", before>>10, after>>10, (int64(after)-int64(before))>>10)
	st := status(t, b)
	if n := len(st.Instances); n != 4 {
		t.Fatalf("%d instances registered, want 4", n)
	}
	if n := b.metricValue(t, "replmesh_broker_limit_refusals_total", "limit", "registrations"); n != 2 {
		t.Fatalf("registrations refusals counted %v, want 2", n)
	}
	if n := b.metricValue(t, "replmesh_broker_limit_refusals_total", "limit", "tables"); n != 1 {
		t.Fatalf("tables refusals counted %v, want 1", n)
	}
	if n := b.metricValue(t, "replmesh_broker_authz_denials_total", "call", "register"); n != 100 {
		t.Fatalf("register denials counted %v, want 100", n)
	}
}

// Tombstones beyond MaxTombstones are forgotten oldest first.
func TestLimits_Tombstones(t *testing.T) {
	b := startBroker(t, "b1", nil, func(c *Config) { c.MaxTombstones = 3 })
	now := time.Now()
	b.mu.Lock()
	for i := range 5 {
		k := instKey{"svc", fmt.Sprintf("i%d", i)}
		b.reg.store(&instanceRec{Service: k.Service, Instance: k.Instance, Gone: true, Ver: version{Clock: uint64(i + 1), Broker: "b1"}})
		b.goneAt[k] = now.Add(time.Duration(i) * time.Second)
	}
	b.capTombstonesLocked()
	var left []string
	for k := range b.goneAt {
		left = append(left, k.Instance)
	}
	gone0, gone1 := b.reg.inst(instKey{"svc", "i0"}), b.reg.inst(instKey{"svc", "i1"})
	b.mu.Unlock()
	if len(left) != 3 || gone0 != nil || gone1 != nil {
		t.Fatalf("tombstones left %v; i0 %v, i1 %v", left, gone0, gone1)
	}
	if n := b.metricValue(t, "replmesh_broker_tombstones_dropped_total"); n != 2 {
		t.Fatalf("dropped counted %v, want 2", n)
	}
}

func TestConfig_Limits(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
		field  string
	}{
		{"negative registrations", func(c *Config) { c.MaxRegistrations = -1 }, "Config.MaxRegistrations"},
		{"negative page", func(c *Config) { c.StatusPageSize = -1 }, "Config.StatusPageSize"},
		{"identity without TLS", func(c *Config) { c.RequireIdentity = true }, "Config.RequireIdentity"},
		{"negative pending sessions", func(c *Config) { c.MaxPendingSessions = -1 }, "Config.MaxPendingSessions"},
		{"negative pending per identity", func(c *Config) { c.MaxPendingPerIdentity = -1 }, "Config.MaxPendingPerIdentity"},
		{"negative pending wait", func(c *Config) { c.PendingSessionWait = -time.Second }, "Config.PendingSessionWait"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := LocalConfig("b1")
			tc.mutate(&c)
			var ce *ConfigError
			if err := c.Validate(); !errors.As(err, &ce) || ce.Field != tc.field {
				t.Fatalf("Validate: %v, want an error about %s", err, tc.field)
			}
		})
	}
}
