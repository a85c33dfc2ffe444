package replica

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/replmesh/replmesh/modes"
	"github.com/replmesh/replmesh/transport"
)

// The adversarial tests of the owner (issue 12): real components serving
// mTLS on 127.0.0.1:0 with Config.TLS, callers with certificates of a
// DevCA, each trying what an attacker on the network tried against owners
// that trusted the service name a request claims.

const testTrustDomain = "replmesh.test"

// testPKI issues the certificates of one trust domain into files.
type testPKI struct {
	t   *testing.T
	ca  *transport.DevCA
	dir string
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	ca, err := transport.NewDevCA(testTrustDomain, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &testPKI{t: t, ca: ca, dir: t.TempDir()}
}

// issue writes a new certificate and key for id (a rotation when it has
// files already) and returns their files.
func (p *testPKI) issue(id transport.Identity) transport.TLSFiles {
	p.t.Helper()
	f, err := p.ca.IssueFiles(p.dir, transport.LeafRequest{Identity: id, Validity: time.Hour})
	if err != nil {
		p.t.Fatal(err)
	}
	f.CheckInterval = -1 // reloaded by Reload only
	return f
}

// source issues a certificate for id and returns a TLSSource of it.
func (p *testPKI) source(id transport.Identity) *transport.TLSSource {
	p.t.Helper()
	src, err := transport.NewTLSSource(p.issue(id), testLogger(p.t))
	if err != nil {
		p.t.Fatal(err)
	}
	return src
}

func svcID(service, instance string) transport.Identity {
	return transport.Identity{TrustDomain: testTrustDomain, Role: transport.RoleService, Service: service, Instance: instance}
}

func roleID(role transport.Role, name string) transport.Identity {
	return transport.Identity{TrustDomain: testTrustDomain, Role: role, Name: name}
}

// client is a raw replication client with identity id, dialing an owner
// of service owner.
func (p *testPKI) client(addr string, id transport.Identity, owner string) *transport.ReplicationClient {
	p.t.Helper()
	return rawClient(p.t, addr, transport.Options{TLS: p.source(id).ClientConfig(transport.ExpectService(owner))})
}

func rawClient(t *testing.T, addr string, o transport.Options, extra ...grpc.DialOption) *transport.ReplicationClient {
	t.Helper()
	cc, err := transport.Dial(addr, o, extra...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return transport.NewReplicationClient(cc)
}

// secureOwner opens stores/stores-1 on mTLS with identities, owning the
// table managers (one row), with policy and mutate applied.
func secureOwner(t *testing.T, p *testPKI, policy *modes.AccessPolicy, mutate func(*Config)) (*Component, *OwnedTable) {
	t.Helper()
	cfg := LocalConfig("stores", "stores-1")
	cfg.Logger = testLogger(t)
	cfg.TLS = p.source(svcID("stores", "stores-1"))
	cfg.AccessPolicy = policy
	if mutate != nil {
		mutate(&cfg)
	}
	c, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	tbl, err := c.Own("managers")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tbl.Put(context.Background(), []byte("s1"), []byte("alice")); err != nil {
		t.Fatal(err)
	}
	return c, tbl
}

// secureConsumer opens products/products-1 on mTLS with identities,
// serving nothing.
func secureConsumer(t *testing.T, p *testPKI) *Component {
	t.Helper()
	c := openWith(t, "products", "products-1", "", "", func(c *Config) {
		c.ListenAddr = ""
		c.TLS = p.source(svcID("products", "products-1"))
	})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// productsMayRead is the policy of the tests: products reads managers.
func productsMayRead(t *testing.T) *modes.AccessPolicy {
	t.Helper()
	p := modes.NewAccessPolicy()
	if err := p.Allow("stores", "managers", "products"); err != nil {
		t.Fatal(err)
	}
	return p
}

// call makes one of the owner's calls, naming service and instance.
func call(ctx context.Context, cl *transport.ReplicationClient, which, service, instance string, standby bool) error {
	switch which {
	case callSubscribe:
		sub, _, err := cl.OpenSubscribe(ctx, &transport.Open{Version: transport.ProtocolVersion, Service: service, Instance: instance,
			Table: "managers", Standby: standby})
		if err == nil {
			sub.Close()
		}
		return err
	case callGet:
		_, err := cl.Get(ctx, &transport.GetRequest{Version: transport.ProtocolVersion, Table: "managers", Keys: [][]byte{[]byte("s1")}, Service: service})
		return err
	case callDigest:
		_, err := cl.Digest(ctx, &transport.DigestRequest{Version: transport.ProtocolVersion, Table: "managers", Service: service})
		return err
	case callKeys:
		_, err := cl.Keys(ctx, &transport.KeysRequest{Version: transport.ProtocolVersion, Table: "managers", Service: service})
		return err
	}
	panic(which)
}

func wantDenied(t *testing.T, err error, contains ...string) {
	t.Helper()
	if !errors.Is(err, transport.ErrPermission) {
		t.Fatalf("got %v, want permission denied", err)
	}
	for _, s := range contains {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not name %q", err, s)
		}
	}
}

var allCalls = []string{callSubscribe, callGet, callDigest, callKeys}

// Before identities, every call below succeeded: the owner compared the
// service name the request claims (and there was no Config.TLS).
func TestSecurity_SpoofedService(t *testing.T) {
	p := newTestPKI(t)
	owner, _ := secureOwner(t, p, productsMayRead(t), nil)
	ctx := ctxT(t, 20*time.Second)
	evil := p.client(owner.Addr(), svcID("evil", "evil-1"), "stores")
	for _, which := range allCalls {
		for _, claim := range []struct{ service, instance string }{{"stores", "stores-2"}, {"products", "products-1"}, {"orders", "orders-1"}} {
			t.Run(which+"/"+claim.service, func(t *testing.T) {
				err := call(ctx, evil, which, claim.service, claim.instance, false)
				wantDenied(t, err, claim.service, "evil")
			})
		}
	}
	t.Run("instance", func(t *testing.T) {
		// products-2 subscribing as products-1.
		cl := p.client(owner.Addr(), svcID("products", "products-2"), "stores")
		wantDenied(t, call(ctx, cl, callSubscribe, "products", "products-1", false), "products/products-1", "products-2")
	})
	if n := owner.guard.denials.get(callSubscribe); n < 4 {
		t.Errorf("subscribe denials counted %d, want at least 4", n)
	}
}

// Before identities, a service the policy does not list read every table
// whose AllowServices was empty, and an admin was no caller at all.
func TestSecurity_PolicyAndRoles(t *testing.T) {
	p := newTestPKI(t)
	owner, _ := secureOwner(t, p, productsMayRead(t), nil)
	ctx := ctxT(t, 20*time.Second)
	type tc struct {
		id      transport.Identity
		service string
		allowed []string // calls allowed; the others are denied
	}
	for _, c := range []tc{
		{svcID("orders", "orders-1"), "orders", nil},
		{svcID("products", "products-1"), "products", allCalls},
		{svcID("stores", "stores-2"), "stores", allCalls},
		{roleID(transport.RoleAdmin, "ops"), "replctl", allCalls},
		{roleID(transport.RoleOperator, "oncall"), "replctl", []string{callDigest}},
		{roleID(transport.RoleBroker, "broker-1"), "replctl", nil},
	} {
		cl := p.client(owner.Addr(), c.id, "stores")
		for _, which := range allCalls {
			t.Run(c.id.String()+"/"+which, func(t *testing.T) {
				instance := c.id.Instance
				if instance == "" {
					instance = "replctl-1"
				}
				err := call(ctx, cl, which, c.service, instance, false)
				if slices.Contains(c.allowed, which) {
					if err != nil {
						t.Fatalf("%s by %s: %v", which, c.id, err)
					}
					return
				}
				wantDenied(t, err, c.id.String())
			})
		}
	}
	t.Run("reload", func(t *testing.T) {
		owner.ReloadAccessPolicy(nil)
		cl := p.client(owner.Addr(), svcID("products", "products-1"), "stores")
		wantDenied(t, call(ctx, cl, callGet, "products", "", false), "products")
		// AllowServices is a per-table policy: it lets products read.
		if _, err := owner.Own("catalog", TableOptions{AllowServices: []string{"products"}}); err != nil {
			t.Fatal(err)
		}
		if _, err := cl.Get(ctx, &transport.GetRequest{Version: transport.ProtocolVersion, Table: "catalog", Service: "products"}); err != nil {
			t.Fatalf("get catalog, allowed by AllowServices: %v", err)
		}
	})
}

// Before identities, any caller claiming the owner's service was a standby
// whose acks counted toward MinSyncStandbys.
func TestSecurity_StandbyOnlyOwnService(t *testing.T) {
	p := newTestPKI(t)
	owner, _ := secureOwner(t, p, productsMayRead(t), nil)
	ctx := ctxT(t, 20*time.Second)
	for _, id := range []transport.Identity{svcID("products", "products-1"), roleID(transport.RoleAdmin, "ops")} {
		t.Run(id.String(), func(t *testing.T) {
			cl := p.client(owner.Addr(), id, "stores")
			svc, inst := id.Service, id.Instance
			if svc == "" {
				svc, inst = "replctl", "replctl-1"
			}
			wantDenied(t, call(ctx, cl, callSubscribe, svc, inst, true), "standby", id.String())
		})
	}
	t.Run("own service", func(t *testing.T) {
		cl := p.client(owner.Addr(), svcID("stores", "stores-2"), "stores")
		if err := call(ctx, cl, callSubscribe, "stores", "stores-2", true); err != nil {
			t.Fatal(err)
		}
	})
}

// Before: the ack was recorded as the standby's, and with MinSyncStandbys
// 1 the watermark jumped to 2^64-1: every write was "confirmed" with no
// standby holding it.
func TestSecurity_StandbyAckAboveHead(t *testing.T) {
	for _, secure := range []bool{false, true} {
		t.Run(fmt.Sprintf("identities=%v", secure), func(t *testing.T) {
			var owner *Component
			var tbl *OwnedTable
			var cl *transport.ReplicationClient
			if secure {
				p := newTestPKI(t)
				owner, tbl = secureOwner(t, p, nil, nil)
				cl = p.client(owner.Addr(), svcID("stores", "stores-2"), "stores")
			} else {
				owner = openComponent(t, "stores", "stores-1", "", "127.0.0.1:0")
				t.Cleanup(func() { _ = owner.Close() })
				var err error
				if tbl, err = owner.Own("managers"); err != nil {
					t.Fatal(err)
				}
				if _, err := tbl.Put(context.Background(), []byte("s1"), []byte("alice")); err != nil {
					t.Fatal(err)
				}
				cl = rawClient(t, owner.Addr(), transport.Options{})
			}
			ctx := ctxT(t, 20*time.Second)
			sub, _, err := cl.OpenSubscribe(ctx, &transport.Open{Version: transport.ProtocolVersion, Service: "stores", Instance: "stores-2",
				Table: "managers", Standby: true})
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Close()
			if err := sub.Send(&transport.ConsumerFrame{Kind: transport.KindAck, Seq: math.MaxUint64}); err != nil {
				t.Fatal(err)
			}
			for {
				_, err = sub.Recv()
				if err != nil {
					break
				}
			}
			head := tbl.Head()
			if !errors.Is(err, transport.ErrBadRequest) || !strings.Contains(err.Error(), fmt.Sprint(uint64(math.MaxUint64))) ||
				!strings.Contains(err.Error(), fmt.Sprintf("head %d", head)) {
				t.Fatalf("stream ended with %v, want bad request naming the ack and the head %d", err, head)
			}
			if got := owner.guard.protocol.get(errAckAboveHead); got != 1 {
				t.Errorf("protocol errors counted %d, want 1", got)
			}
			// With MinSyncStandbys 1 the watermark would move to what the
			// standbys acked: nothing.
			tbl.sync.advance(1)
			if mark, _ := tbl.sync.visible(math.MaxUint64); mark != 0 {
				t.Errorf("sync watermark %d after the forged ack, want 0", mark)
			}
		})
	}
}

// Before: no limit; every stream was served.
func TestSecurity_SubscriptionFlood(t *testing.T) {
	const limit = 3
	for _, secure := range []bool{false, true} {
		t.Run(fmt.Sprintf("identities=%v", secure), func(t *testing.T) {
			var owner *Component
			var clients []*transport.ReplicationClient
			mutate := func(c *Config) { c.MaxCallerSubscriptions = limit }
			if secure {
				p := newTestPKI(t)
				owner, _ = secureOwner(t, p, productsMayRead(t), mutate)
				// One identity on several connections: the limit is per
				// identity, not per connection.
				for range 2 {
					clients = append(clients, p.client(owner.Addr(), svcID("products", "products-1"), "stores"))
				}
			} else {
				owner = openWith(t, "stores", "stores-1", "", "127.0.0.1:0", mutate)
				t.Cleanup(func() { _ = owner.Close() })
				if _, err := owner.Own("managers"); err != nil {
					t.Fatal(err)
				}
				for range 2 {
					clients = append(clients, rawClient(t, owner.Addr(), transport.Options{}))
				}
			}
			ctx := ctxT(t, 20*time.Second)
			var subs []*transport.ClientSubscription
			for i := range limit {
				sub, _, err := clients[i%2].OpenSubscribe(ctx, &transport.Open{Version: transport.ProtocolVersion, Service: "products",
					Instance: "products-1", Table: "managers"})
				if err != nil {
					t.Fatalf("subscription %d: %v", i, err)
				}
				subs = append(subs, sub)
			}
			_, _, err := clients[1].OpenSubscribe(ctx, &transport.Open{Version: transport.ProtocolVersion, Service: "products",
				Instance: "products-1", Table: "managers"})
			if !errors.Is(err, transport.ErrTooLarge) || !strings.Contains(err.Error(), "MaxCallerSubscriptions") {
				t.Fatalf("subscription past the limit: %v, want refused naming MaxCallerSubscriptions", err)
			}
			if got := owner.guard.refusals.get(limitCallerSubscriptions); got != 1 {
				t.Errorf("refusals counted %d, want 1", got)
			}
			// A stream that ends makes room.
			subs[0].Close()
			waitFor(t, func() bool {
				owner.guard.mu.Lock()
				defer owner.guard.mu.Unlock()
				return len(owner.guard.subs) == 1 && sumValues(owner.guard.subs) == limit-1
			})
			sub, _, err := clients[0].OpenSubscribe(ctx, &transport.Open{Version: transport.ProtocolVersion, Service: "products",
				Instance: "products-1", Table: "managers"})
			if err != nil {
				t.Fatalf("subscription after one ended: %v", err)
			}
			sub.Close()
			for _, s := range subs[1:] {
				s.Close()
			}
		})
	}
}

func sumValues(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// waitFor polls cond until it holds (the test's context bounds the wait).
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 20s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Before: no MaxConcurrentStreams; one connection opened streams without
// bound.
func TestSecurity_StreamFlood(t *testing.T) {
	const maxStreams = 4
	p := newTestPKI(t)
	owner, _ := secureOwner(t, p, productsMayRead(t), func(c *Config) { c.MaxConcurrentStreams = maxStreams })
	ctx := ctxT(t, 20*time.Second)
	cl := p.client(owner.Addr(), svcID("products", "products-1"), "stores")
	var subs []*transport.ClientSubscription
	for i := range maxStreams {
		sub, _, err := cl.OpenSubscribe(ctx, &transport.Open{Version: transport.ProtocolVersion, Service: "products",
			Instance: "products-1", Table: "managers"})
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		subs = append(subs, sub)
	}
	if got := owner.guard.refusals.get(limitConnStreams); got == 0 {
		t.Errorf("the connection reached MaxConcurrentStreams; counted %d times", got)
	}
	// The next stream waits for one to end: the server never holds more.
	served := make(chan error, 1)
	go func() {
		sub, _, err := cl.OpenSubscribe(ctx, &transport.Open{Version: transport.ProtocolVersion, Service: "products",
			Instance: "products-1", Table: "managers"})
		if err == nil {
			owner.guard.mu.Lock()
			if n := sumValues(owner.guard.subs); n > maxStreams {
				err = fmt.Errorf("%d streams served at once, max %d", n, maxStreams)
			}
			owner.guard.mu.Unlock()
			sub.Close()
		}
		served <- err
	}()
	subs[0].Close()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	for _, s := range subs[1:] {
		s.Close()
	}
}

// Never-reading subscribers cost the owner a bounded amount each: gRPC's
// flow control stops the sender once the stream's window and the server's
// write quota are full, whatever the table holds, and the per-caller limit
// bounds how many there are. Before: no limit, so an attacker multiplied
// the per-stream cost at will (1000 streams: 360 to 1055 MiB).
func TestSecurity_NeverReadingSubscribers(t *testing.T) {
	const (
		limit    = 8
		rows     = 128
		rowBytes = 32 << 10 // 4 MiB in the table
		// What one stream may have been handed while its reader reads
		// nothing: the client's stream window (64 KiB) and the server's
		// write quota (64 KiB), plus a frame on each side of them.
		perStream = 64<<10 + 64<<10 + 2*(maxFrameBytes+4<<10)
	)
	p := newTestPKI(t)
	var mu sync.Mutex
	handed := map[*sender]int{}
	blocked := map[*sender]bool{}
	owner, tbl := secureOwner(t, p, productsMayRead(t), func(c *Config) { c.MaxCallerSubscriptions = limit })
	owner.hooks.send = func(s *sender, f *transport.OwnerFrame, returned bool) {
		mu.Lock()
		defer mu.Unlock()
		if returned {
			blocked[s] = false
			return
		}
		blocked[s] = true
		handed[s] += f.EncodedSize() // rows frames are encoded as they are built (sendRows)
		for _, r := range f.Rows {
			handed[s] += len(r.Key) + len(r.Value)
		}
	}
	val := bytes.Repeat([]byte("x"), rowBytes)
	for i := range rows {
		if _, err := tbl.Put(context.Background(), fmt.Appendf(nil, "k%04d", i), val); err != nil {
			t.Fatal(err)
		}
	}
	ctx := ctxT(t, 30*time.Second)
	// A client that reads nothing: a fixed window (no BDP growth), and
	// streams it never receives from after the Start.
	cl := rawClient(t, owner.Addr(), transport.Options{TLS: p.source(svcID("products", "products-1")).ClientConfig(nil)},
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	refused := 0
	for range limit + 4 {
		sub, _, err := cl.OpenSubscribe(ctx, &transport.Open{Version: transport.ProtocolVersion, Service: "products",
			Instance: "products-1", Table: "managers"})
		if errors.Is(err, transport.ErrTooLarge) {
			refused++
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()
	}
	if refused != 4 {
		t.Fatalf("%d streams refused, want 4 (past MaxCallerSubscriptions %d)", refused, limit)
	}
	// Every stream's sender ends up blocked in Send, each having been
	// handed a bounded share of the 4 MiB it has to send.
	waitFor(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for s, b := range blocked {
			if b && handed[s] > 0 {
				n++
			}
		}
		return n == limit
	})
	mu.Lock()
	defer mu.Unlock()
	for _, n := range handed {
		t.Logf("a never-reading stream was handed %d bytes of %d", n, rows*rowBytes)
		if n > perStream {
			t.Errorf("a never-reading stream was handed %d bytes, want at most %d", n, perStream)
		}
	}
}

// An allowed consumer replicates over mTLS and converges; the owner's
// certificate rotates under it (a new leaf written, the next connection
// uses it) and replication goes on.
func TestSecurity_AllowedConsumerAndRotation(t *testing.T) {
	p := newTestPKI(t)
	owner, tbl := secureOwner(t, p, productsMayRead(t), nil)
	ctx := ctxT(t, 30*time.Second)
	consumer := secureConsumer(t, p)
	r, err := consumer.Subscribe(ctx, SubscribeOptions{Service: "stores", Table: "managers", Addr: owner.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	converge := func() {
		t.Helper()
		if err := r.WaitFor(ctx, tbl.Head()); err != nil {
			t.Fatal(err)
		}
		want, err := tbl.Digest(nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		got, err := r.Digest(nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Hash, want.Hash) || got.Rows != want.Rows || got.Seq != want.Seq {
			t.Fatalf("replica digest %+v, owner %+v", got, want)
		}
	}
	converge()

	// Rotation: a new leaf for the same identity, loaded by the owner.
	newPEM, err := os.ReadFile(p.issue(svcID("stores", "stores-1")).Cert)
	if err != nil {
		t.Fatal(err)
	}
	if err := owner.cfg.TLS.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, err := tbl.Put(ctx, []byte("s2"), []byte("bob")); err != nil {
		t.Fatal(err)
	}
	converge()
	// The next connection presents the new certificate.
	var presented []byte
	tc := consumer.cfg.TLS.ClientConfig(transport.ExpectService("stores"))
	verify := tc.VerifyConnection
	tc.VerifyConnection = func(cs tls.ConnectionState) error {
		presented = cs.PeerCertificates[0].Raw
		return verify(cs)
	}
	if _, err := rawClient(t, owner.Addr(), transport.Options{TLS: tc}).Get(ctx, &transport.GetRequest{Version: transport.ProtocolVersion,
		Table: "managers", Service: "products"}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(pemBytes(t, newPEM), presented) {
		t.Fatal("the owner's next connection did not present the rotated certificate")
	}
}

// pemBytes returns the DER of the first certificate of certPEM.
func pemBytes(t *testing.T, certPEM []byte) []byte {
	t.Helper()
	b, _ := pem.Decode(certPEM)
	if b == nil {
		t.Fatal("no PEM block")
	}
	return b.Bytes
}

// A component opens only with a certificate of its own identity, and
// without TLS only on loopback addresses unless Config.Insecure.
func TestSecurity_OpenChecks(t *testing.T) {
	p := newTestPKI(t)
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		want   error
		names  []string
	}{
		{"other instance's certificate", func(c *Config) { c.TLS = p.source(svcID("stores", "stores-2")) }, ErrInvalid,
			[]string{"stores/stores-2", "stores/stores-1"}},
		{"admin certificate", func(c *Config) { c.TLS = p.source(roleID(transport.RoleAdmin, "ops")) }, ErrInvalid,
			[]string{"replmesh-admin/ops", "stores/stores-1"}},
		{"both TLS configurations", func(c *Config) {
			c.TLS = p.source(svcID("stores", "stores-1"))
			c.Transport.TLS = &tls.Config{}
		}, ErrInvalid, []string{"Config.Transport.TLS"}},
		{"plaintext on every interface", func(c *Config) { c.ListenAddr = "0.0.0.0:0" }, transport.ErrInsecureTransport, []string{"0.0.0.0:0"}},
		{"plaintext to a remote broker", func(c *Config) { c.ListenAddr, c.Brokers, c.Owner = "", []string{"192.0.2.1:7400"}, true },
			transport.ErrInsecureTransport, []string{"192.0.2.1:7400"}},
		{"insecure", func(c *Config) { c.ListenAddr, c.Insecure = "0.0.0.0:0", true }, nil, nil},
		{"mTLS on every interface", func(c *Config) {
			c.ListenAddr = "0.0.0.0:0"
			c.TLS = p.source(svcID("stores", "stores-1"))
		}, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := LocalConfig("stores", "stores-1")
			var logs bytes.Buffer
			cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			tc.mutate(&cfg)
			c, err := Open(context.Background(), cfg)
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				_ = c.Close()
				if cfg.Insecure != strings.Contains(logs.String(), "level=WARN msg=\"insecure mode") {
					t.Errorf("insecure %v, logs:\n%s", cfg.Insecure, logs.String())
				}
				return
			}
			if err == nil {
				_ = c.Close()
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			for _, n := range tc.names {
				if !strings.Contains(err.Error(), n) {
					t.Errorf("error %q does not name %q", err, n)
				}
			}
		})
	}
}

// A consumer refuses an owner whose certificate is of another service (a
// hijacked registration pointing at an attacker's address): it never gets
// a row from it. Before: with TLS the owner's certificate was checked
// against the CA only.
func TestSecurity_FakeOwner(t *testing.T) {
	p := newTestPKI(t)
	// The attacker serves "stores/managers" with its own identity.
	fake := openWith(t, "evil", "evil-1", "", "127.0.0.1:0", func(c *Config) {
		c.Service, c.Instance = "evil", "evil-1"
		c.TLS = p.source(svcID("evil", "evil-1"))
	})
	defer fake.Close()
	consumer := secureConsumer(t, p)
	conn, err := consumer.conn(ownerPeer(fake.Addr(), "stores"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = transport.NewReplicationClient(conn).Get(ctxT(t, 10*time.Second), &transport.GetRequest{Version: transport.ProtocolVersion,
		Table: "managers", Service: "products"}, grpc.WaitForReady(false))
	if err == nil || !strings.Contains(err.Error(), "evil-1 is not an instance of service") {
		t.Fatalf("got %v, want the handshake refused: not an instance of stores", err)
	}
}

// A dial after Open (an owner the broker names) meets the same guard.
func TestSecurity_DialGuard(t *testing.T) {
	c := openWith(t, "products", "products-1", "", "", func(c *Config) { c.ListenAddr = "" })
	defer c.Close()
	for _, tc := range []struct {
		addr string
		ok   bool
	}{
		{"127.0.0.1:7401", true},
		{"localhost:7401", true},
		{"bufnet-1", true}, // an in-memory network's address
		{"192.0.2.1:7401", false},
		{"owner.example:7401", false},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			_, err := c.conn(ownerPeer(tc.addr, "stores"))
			if tc.ok != (err == nil) || err != nil && !errors.Is(err, transport.ErrInsecureTransport) {
				t.Fatalf("dial %s: %v", tc.addr, err)
			}
		})
	}
}
