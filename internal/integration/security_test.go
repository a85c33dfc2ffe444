package integration

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc"

	"github.com/replmesh/replmesh/broker"
	"github.com/replmesh/replmesh/internal/testutil"
	"github.com/replmesh/replmesh/replica"
	"github.com/replmesh/replmesh/transport"
)

// The adversarial suite of issue 12: every attack that took over, crashed
// or starved the mesh when each caller was trusted on its word, run again
// against a secureMesh (real brokers and components, the whole security
// on) by an attacker who holds valid certificates of other identities, or
// a node without the gossip key. Each test shows the attack refused and
// that nothing changed: the registry on every broker, the primary and its
// epoch, the digests of the primary, the standby and the consumer; and a
// write made after the attack is acknowledged and replicated.

// keylessBroker starts a broker that gossips without a key on loopback
// (the development mode), with no TLS: the control that shows a payload
// the secured brokers refuse is one a broker would otherwise act on.
func keylessBroker(t *testing.T) (*broker.Broker, *testutil.LogBuffer) {
	t.Helper()
	logs := &testutil.LogBuffer{}
	cfg := broker.LocalConfig("ctl")
	cfg.Logger = brokerLogger(t, logs)
	relaxedGossip(&cfg)
	b, err := broker.New(ctxT(t, meshWait), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, logs
}

// waitLogged waits until more than n records of logs match, and returns
// how many do.
func waitLogged(t *testing.T, logs *testutil.LogBuffer, what string, n int, match func(string) bool) int {
	t.Helper()
	var got int
	waitUntil(t, meshWait, what, func() bool {
		got = len(logs.Records(t, match))
		return got > n
	})
	return got
}

// Forged gossip: registry records naming a fake primary of stores at epoch
// 2^64-1 and rewriting stores-1's address, sent to the gossip ports by a
// node that is no member: unencrypted, or encrypted with another key. Old
// code (no key): the packet took over stores for good.
func TestSecurity_ForgedGossipPacket(t *testing.T) {
	m := newSecureMesh(t, meshOptions{})
	before := m.state()
	payload := forgedRegistry(t)
	other := []byte("fedcba9876543210fedcba9876543210")
	attacks := []struct {
		name string
		send func(t *testing.T)
	}{
		{"unencrypted UDP packet", func(t *testing.T) {
			for _, b := range m.brokers {
				sendUDP(t, b.GossipAddr(), append([]byte{gossipUserMsg}, payload...))
			}
		}},
		{"unencrypted UDP packet with the cluster label", func(t *testing.T) {
			rogue := rogueNode(t, "rogue-plain", nil, meshLabel, nil)
			for _, b := range m.brokers {
				if err := rogue.SendBestEffort(gossipNode(t, b), payload); err != nil {
					t.Fatal(err)
				}
			}
		}},
		{"UDP packet with another key", func(t *testing.T) {
			rogue := rogueNode(t, "rogue-udp", other, meshLabel, nil)
			for _, b := range m.brokers {
				if err := rogue.SendBestEffort(gossipNode(t, b), payload); err != nil {
					t.Fatal(err)
				}
			}
		}},
		{"TCP message with another key", func(t *testing.T) {
			// The broker drops the stream; the sender may or may not see it.
			_ = rogueNode(t, "rogue-tcp", other, meshLabel, nil).SendReliable(gossipNode(t, m.brokers[1]), payload)
		}},
		{"push/pull state with another key", func(t *testing.T) {
			_, _ = rogueNode(t, "rogue-pushpull", other, meshLabel, payload).Join([]string{m.brokers[2].GossipAddr()})
		}},
	}
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			n := len(m.logs.Records(t, gossipRejected))
			a.send(t)
			waitLogged(t, m.logs, "the forged gossip refused", n, gossipRejected)
			for _, b := range m.brokers {
				if o := ownerOf(statusOf(t, b), "stores"); o == nil || o.Primary.Instance != "stores-1" || o.Epoch == math.MaxUint64 {
					t.Fatalf("stores' owner on %s: %+v", b.Name(), o)
				}
			}
		})
	}
	m.unchanged(before)
	m.writeReplicates("after-forged-gossip")

	// The control: the same packet, to a broker gossiping without a key,
	// is taken (which is why the key is required off loopback): its
	// instance records, soft state, are merged. The owner record is not:
	// primaries and epochs are decided through Raft, never by gossip.
	t.Run("control: a broker without a key takes it", func(t *testing.T) {
		ctl, _ := keylessBroker(t)
		sendUDP(t, ctl.GossipAddr(), append([]byte{gossipUserMsg}, payload...))
		waitUntil(t, meshWait, "the forged instance on the keyless broker", func() bool {
			st := statusOf(t, ctl)
			return slices.ContainsFunc(st.Instances, func(i transport.InstanceInfo) bool {
				return i.Service == "stores" && i.Instance == "evil"
			})
		})
		if o := ownerOf(statusOf(t, ctl), "stores"); o != nil && (o.Epoch == math.MaxUint64 || o.Primary.Instance == "evil") {
			t.Fatalf("the forged owner record decided on the keyless broker: %+v", o)
		}
	})
}

// A rogue gossip member, without the key or with another one, under a
// name that sorts first (the deciding broker is the first by name), tries
// to join the cluster. Old code (no key): it joined and the real deciding
// broker stopped deciding.
func TestSecurity_RogueGossipMember(t *testing.T) {
	m := newSecureMesh(t, meshOptions{})
	before := m.state()
	for _, tt := range []struct {
		name string
		key  []byte
	}{
		{"no key", nil},
		{"another key", []byte("fedcba9876543210fedcba9876543210")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			n := len(m.logs.Records(t, gossipRejected))
			rogue := rogueNode(t, "0-rogue-"+strings.ReplaceAll(tt.name, " ", "-"), tt.key, meshLabel, forgedRegistry(t))
			var addrs []string
			for _, b := range m.brokers {
				addrs = append(addrs, b.GossipAddr())
			}
			if got, err := rogue.Join(addrs); err == nil || got != 0 {
				t.Fatalf("the rogue joined: %d brokers contacted, err %v", got, err)
			}
			waitLogged(t, m.logs, "the rogue refused", n, gossipRejected)
			if k := rogue.NumMembers(); k != 1 {
				t.Errorf("the rogue sees %d members, want itself only", k)
			}
			for _, b := range m.brokers {
				if got := brokerNames(statusOf(t, b)); fmt.Sprint(got) != "[b1:alive b2:alive b3:alive]" {
					t.Errorf("members of %s: %v", b.Name(), got)
				}
			}
		})
	}
	m.unchanged(before)
	m.writeReplicates("after-rogue-member")
	// The deciding broker still decides: a new owner service is granted
	// its primary lease.
	s, err := openSession(t, m.brokers[1].GRPCAddr(), m.pki.dialAs(svcID("orders", "orders-1"), transport.ExpectRole(transport.RoleBroker)),
		transport.Register{Service: "orders", Instance: "orders-1", Addr: "127.0.0.1:7009", Owner: true, Tables: []transport.TableInfo{{Table: "orders"}}})
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, meshWait, "orders-1 granted the primary lease", func() bool {
		tp := s.last.Load()
		return tp != nil && tp.Role == transport.RolePrimary
	})
}

// The 10-byte packet claiming 2^32 records. Old code: the broker
// allocated 32 GiB and the process died (out of memory).
func TestSecurity_OversizedClaimPacket(t *testing.T) {
	m := newSecureMesh(t, meshOptions{})
	before := m.state()
	pkt := oversizedClaim()
	if len(pkt) != 10 {
		t.Fatalf("the packet is %d bytes, want 10", len(pkt))
	}
	t.Run("to the secured brokers", func(t *testing.T) {
		n := len(m.logs.Records(t, gossipRejected))
		start := testutil.HeapAllocated()
		for _, b := range m.brokers {
			sendUDP(t, b.GossipAddr(), pkt)
		}
		waitLogged(t, m.logs, "the packet refused", n, gossipRejected)
		allocated := testutil.HeapAllocated() - start
		t.Logf("allocated while 3 brokers refused the packet: %d KiB", allocated>>10)
		if allocated > 64<<20 {
			t.Errorf("allocated %d MiB", allocated>>20)
		}
	})
	// Without a key the packet reaches the gossip decoder, which bounds
	// what it allocates by the bytes it holds.
	t.Run("to a broker without a key", func(t *testing.T) {
		ctl, logs := keylessBroker(t)
		dropped := testutil.Msg("dropped gossip message")
		start := testutil.HeapAllocated()
		sendUDP(t, ctl.GossipAddr(), pkt)
		waitLogged(t, logs, "the packet dropped by the decoder", 0, dropped)
		allocated := testutil.HeapAllocated() - start
		t.Logf("allocated while the keyless broker decoded the packet: %d KiB", allocated>>10)
		if allocated > 64<<20 {
			t.Errorf("allocated %d MiB", allocated>>20)
		}
		if st := statusOf(t, ctl); len(st.Instances) != 0 || len(st.Owners) != 0 {
			t.Errorf("the keyless broker's registry: %+v", st)
		}
	})
	m.unchanged(before)
	m.writeReplicates("after-oversized-claim")
}

// Register hijack: identities other than stores/stores-1 re-register
// stores/stores-1 with the address of a fake owner serving a forged row.
// Old code: the broker took it and sent the consumer to the fake owner,
// which fed it "s0 = mallory".
func TestSecurity_RegisterHijack(t *testing.T) {
	m := newSecureMesh(t, meshOptions{})
	// The fake owner: a real component with a valid stores certificate of
	// another instance, serving managers with a forged row.
	fake := component(t, "stores", "stores-9", t.TempDir(), "", nil, true, func(c *replica.Config) {
		c.TLS = m.pki.source(svcID("stores", "stores-9"))
	})
	t.Cleanup(func() { fake.Close() })
	ft, err := fake.Own(storesTable)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ft.Put(ctxT(t, meshWait), []byte("s0"), []byte("mallory")); err != nil {
		t.Fatal(err)
	}
	before := m.state()
	attackers := []struct {
		name string
		id   transport.Identity
	}{
		{"another service", svcID("products", "products-1")},
		{"another instance of stores", svcID("stores", "stores-9")},
		{"an admin", roleID(transport.RoleAdmin, "root")},
		{"a broker", roleID(transport.RoleBroker, "b9")},
	}
	attempts := 0
	for _, a := range attackers {
		t.Run(a.name, func(t *testing.T) {
			o := m.pki.dialAs(a.id, transport.ExpectRole(transport.RoleBroker))
			for _, b := range m.brokers {
				_, err := openSession(t, b.GRPCAddr(), o, transport.Register{Service: "stores", Instance: "stores-1", Addr: fake.Addr(), Owner: true,
					Tables: []transport.TableInfo{{Table: storesTable, Head: ft.Head(), LogID: ft.LogID()}}})
				attempts++
				wantDenied(t, err, "stores/stores-1", a.id.String())
			}
		})
	}
	m.unchanged(before)
	if v, ok, err := m.r.Get([]byte("s0")); err != nil || !ok || string(v) != "manager-0" {
		t.Fatalf("the consumer reads s0 = %q, %v, %v; want manager-0", v, ok, err)
	}
	if n := m.brokerCounter("replmesh_broker_authz_denials_total", "call", "register"); n != float64(attempts) {
		t.Errorf("register denials counted %v, want %d", n, attempts)
	}
	m.writeReplicates("after-hijack")
}

// Fake standby head: identities that are not instances of stores (or not
// the instance they name) register as a stores standby reporting head
// 2^40. Old code: the fake standby was promoted when the primary stopped.
func TestSecurity_FakeStandbyHead(t *testing.T) {
	m := newSecureMesh(t, meshOptions{})
	before := m.state()
	huge := []transport.TableInfo{{Table: storesTable, Head: 1 << 40, LogID: m.tp.LogID()}}
	for _, a := range []struct {
		name string
		id   transport.Identity
	}{
		{"another service", svcID("products", "products-1")},
		{"another instance of stores", svcID("stores", "stores-9")},
	} {
		t.Run(a.name, func(t *testing.T) {
			for _, b := range m.brokers {
				_, err := openSession(t, b.GRPCAddr(), m.pki.dialAs(a.id, transport.ExpectRole(transport.RoleBroker)),
					transport.Register{Service: "stores", Instance: "evil", Addr: evilAddr, Owner: true, Tables: huge})
				wantDenied(t, err, "stores/evil", a.id.String())
			}
		})
	}
	m.unchanged(before)

	// The primary stops: the real standby is promoted, never "evil".
	_, epoch := m.primary.Role()
	m.close(m.primary)
	waitUntil(t, meshWait, "stores-2 promoted", func() bool { r, _ := m.standby.Role(); return r == "primary" })
	for _, b := range m.brokers {
		waitUntil(t, meshWait, "stores-2 primary on "+b.Name(), func() bool {
			o := ownerOf(statusOf(t, b), "stores")
			return o != nil && o.Primary.Instance == "stores-2"
		})
	}
	if _, e := m.standby.Role(); e <= epoch {
		t.Fatalf("epoch after the promotion %d, before %d", e, epoch)
	}
	// stores-1 comes back as the standby; writes are acknowledged again.
	m.primary, m.tp = m.standby, m.ts
	m.standby, m.ts = m.openStores("stores-1")
	waitFollowing(t, m.tp, m.ts)
	m.writeReplicates("after-fake-standby")
}

// Calls on the owner's replication port.
const (
	callSubscribe = "subscribe"
	callGet       = "get"
	callDigest    = "digest"
	callKeys      = "keys"
)

// ownerCall makes one call on stores/managers claiming service and
// instance, and returns its error and what it read (a Get's value).
func ownerCall(ctx context.Context, cl *transport.ReplicationClient, call, service, instance string) (string, error) {
	v := transport.ProtocolVersion
	switch call {
	case callSubscribe:
		sub, _, err := cl.OpenSubscribe(ctx, &transport.Open{Version: v, Service: service, Instance: instance, Table: storesTable})
		if err == nil {
			sub.Close()
		}
		return "", err
	case callGet:
		r, err := cl.Get(ctx, &transport.GetRequest{Version: v, Table: storesTable, Keys: [][]byte{[]byte("s0")}, Service: service})
		if err != nil {
			return "", err
		}
		return string(r.Values[0].Value), nil
	case callDigest:
		_, err := cl.Digest(ctx, &transport.DigestRequest{Version: v, Table: storesTable, Service: service})
		return "", err
	case callKeys:
		_, err := cl.Keys(ctx, &transport.KeysRequest{Version: v, Table: storesTable, Service: service})
		return "", err
	}
	panic(call)
}

// Spoofed service on Subscribe, Get, Digest and Keys: a products
// certificate claiming to be stores (the owner's own service, which reads
// everything), and an orders certificate (a service the policy does not
// let read) claiming itself or products. Old code: the claimed name was
// believed; every call read the table.
func TestSecurity_SpoofedService(t *testing.T) {
	m := newSecureMesh(t, meshOptions{})
	before := m.state()
	ctx := ctxT(t, meshWait)
	claims := []struct {
		id                transport.Identity
		service, instance string
	}{
		{svcID("products", "products-1"), "stores", "stores-2"},
		{svcID("orders", "orders-1"), "orders", "orders-1"},
		{svcID("orders", "orders-1"), "products", "products-1"},
	}
	calls := []string{callSubscribe, callGet, callDigest, callKeys}
	for _, c := range claims {
		cl := replicationClient(t, m.pki, m.primary.Addr(), c.id)
		for _, call := range calls {
			t.Run(fmt.Sprintf("%s as %s: %s", c.id.Instance, c.service, call), func(t *testing.T) {
				v, err := ownerCall(ctx, cl, call, c.service, c.instance)
				wantDenied(t, err, c.id.Service)
				if v != "" {
					t.Errorf("the attacker read %q", v)
				}
			})
		}
	}
	for _, call := range calls {
		if n := componentCounter(t, m.primary, "replmesh_owner_denials_total", "call", call); n != float64(len(claims)) {
			t.Errorf("%s denials counted %v, want %d", call, n, len(claims))
		}
	}
	// The real consumer's identity, as itself, reads.
	cl := replicationClient(t, m.pki, m.primary.Addr(), svcID("products", "products-1"))
	if v, err := ownerCall(ctx, cl, callGet, "products", ""); err != nil || v != "manager-0" {
		t.Fatalf("products as itself: %q, %v", v, err)
	}
	m.unchanged(before)
	m.writeReplicates("after-spoofed-service")
}

// A stores identity subscribes as a standby and acknowledges seq 2^64-1,
// far above the primary's head. Old code: the ack counted as the
// standby's, and with MinSyncStandbys 1 writes were acknowledged with no
// standby holding them.
func TestSecurity_StandbyAckAboveHead(t *testing.T) {
	m := newSecureMesh(t, meshOptions{})
	before := m.state()
	attacker := replicationClient(t, m.pki, m.primary.Addr(), svcID("stores", "stores-9"))
	ctx := ctxT(t, meshWait)
	// forgeAck opens a standby stream, sends the ack, and returns how the
	// owner ended the stream.
	forgeAck := func(t *testing.T, during func()) error {
		t.Helper()
		sub, _, err := attacker.OpenSubscribe(ctx, &transport.Open{Version: transport.ProtocolVersion, Service: "stores", Instance: "stores-9",
			Table: storesTable, Standby: true})
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()
		if during != nil {
			during()
		}
		if err := sub.Send(&transport.ConsumerFrame{Kind: transport.KindAck, Seq: math.MaxUint64}); err != nil {
			t.Fatal(err)
		}
		for {
			if _, err = sub.Recv(); err != nil {
				return err
			}
		}
	}
	wantEnded := func(t *testing.T, err error) {
		t.Helper()
		if !errors.Is(err, transport.ErrBadRequest) || !strings.Contains(err.Error(), fmt.Sprint(uint64(math.MaxUint64))) {
			t.Fatalf("the stream ended with %v, want a bad request naming the ack", err)
		}
	}

	t.Run("with the real standby connected", func(t *testing.T) {
		wantEnded(t, forgeAck(t, nil))
		m.unchanged(before)
	})
	t.Run("without the real standby", func(t *testing.T) {
		m.close(m.standby)
		waitUntil(t, meshWait, "the primary refusing writes without its standby", func() bool {
			_, err := m.tp.Put(ctx, []byte("probe/no-standby"), []byte("1"))
			return errors.Is(err, replica.ErrNotReplicated)
		})
		// A write waits for a standby's ack while the forged ack is sent.
		written := make(chan error, 1)
		wantEnded(t, forgeAck(t, func() {
			go func() {
				_, err := m.tp.Put(ctx, []byte("write/during-the-attack"), []byte("1"))
				written <- err
			}()
		}))
		if err := <-written; !errors.Is(err, replica.ErrNotReplicated) {
			t.Fatalf("a write during the forged ack: %v, want ErrNotReplicated (not acknowledged)", err)
		}
		if _, err := m.tp.Put(ctx, []byte("write/after-the-attack"), []byte("1")); !errors.Is(err, replica.ErrNotReplicated) {
			t.Fatalf("a write after the forged ack: %v, want ErrNotReplicated (not acknowledged)", err)
		}
	})
	if n := componentCounter(t, m.primary, "replmesh_owner_protocol_errors_total", "error", "ack_above_head"); n != 2 {
		t.Errorf("protocol errors counted %v, want 2", n)
	}
	if r, e := m.primary.Role(); r != before.role || e != before.epoch {
		t.Fatalf("the primary is %s at %d, was %s at %d", r, e, before.role, before.epoch)
	}
	// The real standby comes back: writes are acknowledged and replicated.
	m.standby, m.ts = m.openStores("stores-2")
	waitFollowing(t, m.tp, m.ts)
	m.writeReplicates("after-forged-ack")
}

// SetMode and Status on the brokers by role. Old code: nothing was
// checked; a component switched the live consumer to pull and read the
// whole registry.
func TestSecurity_AdminCalls(t *testing.T) {
	m := newSecureMesh(t, meshOptions{})
	before := m.state()
	mode := m.r.Status().Mode
	v := transport.ProtocolVersion
	ctx := ctxT(t, meshWait)
	for _, c := range []struct {
		name    string
		id      transport.Identity
		status  bool // Status allowed
		setMode bool // SetMode allowed
	}{
		{"a consumer", svcID("products", "products-1"), false, false},
		{"the owner's service", svcID("stores", "stores-1"), false, false},
		{"a service outside the policy", svcID("orders", "orders-1"), false, false},
		{"a broker", roleID(transport.RoleBroker, "b9"), false, false},
		{"an operator", roleID(transport.RoleOperator, "oncall"), true, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			cl := brokerClient(t, m.pki, m.brokers[1].GRPCAddr(), c.id)
			_, err := cl.SetMode(ctx, &transport.SetModeRequest{Version: v, Service: "stores", Table: storesTable, Mode: "pull"})
			if c.setMode {
				t.Fatal("no case allows SetMode")
			}
			wantDenied(t, err, "setmode", c.id.String())
			st, err := cl.Status(ctx, &transport.StatusRequest{Version: v})
			if c.status != (err == nil) {
				t.Fatalf("Status: %v, want allowed %v", err, c.status)
			}
			if err != nil {
				wantDenied(t, err, "status", c.id.String())
				if st != nil {
					t.Fatalf("a refused Status answered %+v", st)
				}
			}
		})
	}
	m.unchanged(before)
	if got := m.r.Status().Mode; got != mode {
		t.Fatalf("the consumer's mode is %s, was %s", got, mode)
	}
	if n := m.brokerCounter("replmesh_broker_authz_denials_total", "call", "setmode"); n != 5 {
		t.Errorf("setmode denials counted %v, want 5", n)
	}
	if n := m.brokerCounter("replmesh_broker_authz_denials_total", "call", "status"); n != 4 {
		t.Errorf("status denials counted %v, want 4", n)
	}

	t.Run("an admin", func(t *testing.T) {
		cl := brokerClient(t, m.pki, m.brokers[1].GRPCAddr(), roleID(transport.RoleAdmin, "root"))
		st, err := cl.Status(ctx, &transport.StatusRequest{Version: v})
		if err != nil {
			t.Fatal(err)
		}
		if o := ownerOf(st, "stores"); o == nil || o.Primary.Instance != "stores-1" {
			t.Fatalf("the admin's Status: stores %+v", o)
		}
		if _, err := cl.SetMode(ctx, &transport.SetModeRequest{Version: v, Service: "stores", Table: storesTable, Mode: "pull"}); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, meshWait, "the consumer switched to pull by the admin", func() bool { return m.r.Status().Mode == "pull" })
		if _, err := cl.SetMode(ctx, &transport.SetModeRequest{Version: v, Service: "stores", Table: storesTable, Mode: ""}); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, meshWait, "the consumer back to "+mode, func() bool { return m.r.Status().Mode == mode })
	})
	m.writeReplicates("after-admin-calls")
}

// Registration flood on a broker limited to 4 instances per service and 64
// tables per registration. Old code: no limit; 500 sessions of 1024 tables
// took a broker from 17 to 904 MiB and its Status past the message limit.
func TestSecurity_RegistrationFlood(t *testing.T) {
	const maxRegs, maxTables = 4, 64
	m := newSecureMesh(t, meshOptions{broker: func(c *broker.Config) { c.MaxRegistrations, c.MaxTables = maxRegs, maxTables }})
	before := m.state("stores", "products")
	b := m.brokers[0]
	tables := make([]transport.TableInfo, maxTables)
	for i := range tables {
		tables[i] = transport.TableInfo{Table: fmt.Sprintf("table-%04d-%s", i, strings.Repeat("x", 100)), Head: uint64(i)}
	}
	heapBefore := heapInUse()
	t.Run("one identity, many instances", func(t *testing.T) {
		o := m.pki.dialAs(svcID("flood", "f-0"), transport.ExpectRole(transport.RoleBroker))
		for i := range 100 {
			_, err := openSession(t, b.GRPCAddr(), o, transport.Register{Service: "flood", Instance: fmt.Sprintf("x-%d", i),
				Addr: "127.0.0.1:7000", Owner: true, Tables: tables})
			wantDenied(t, err, "flood/f-0")
		}
	})
	t.Run("many identities of one service", func(t *testing.T) {
		refused := 0
		for i := range 10 {
			inst := fmt.Sprintf("f-%d", i)
			_, err := openSession(t, b.GRPCAddr(), m.pki.dialAs(svcID("flood", inst), transport.ExpectRole(transport.RoleBroker)),
				transport.Register{Service: "flood", Instance: inst, Addr: "127.0.0.1:7000", Owner: true, Tables: tables})
			if err != nil {
				wantExhausted(t, err, fmt.Sprintf("at most %d", maxRegs))
				refused++
			}
		}
		if refused != 10-maxRegs {
			t.Fatalf("%d registrations refused, want %d", refused, 10-maxRegs)
		}
	})
	t.Run("too many tables", func(t *testing.T) {
		_, err := openSession(t, b.GRPCAddr(), m.pki.dialAs(svcID("wide", "w-1"), transport.ExpectRole(transport.RoleBroker)),
			transport.Register{Service: "wide", Instance: "w-1", Addr: "127.0.0.1:7000", Owner: true,
				Tables: append(tables, transport.TableInfo{Table: "one-more"})})
		wantExhausted(t, err)
	})
	heapAfter := heapInUse()
	t.Logf("heap in use of the process (3 brokers, 3 components, the test): %d KiB before the flood, %d KiB after (%+d KiB)",
		heapBefore>>10, heapAfter>>10, (int64(heapAfter)-int64(heapBefore))>>10)
	flood := 0
	for _, in := range statusOf(t, b).Instances {
		if in.Service == "flood" || in.Service == "wide" {
			flood++
		}
	}
	if flood != maxRegs {
		t.Errorf("%d flood instances registered, want %d", flood, maxRegs)
	}
	if n := m.brokerCounter("replmesh_broker_limit_refusals_total", "limit", "registrations"); n != 10-maxRegs {
		t.Errorf("registrations refusals counted %v, want %d", n, 10-maxRegs)
	}
	if n := m.brokerCounter("replmesh_broker_limit_refusals_total", "limit", "tables"); n != 1 {
		t.Errorf("tables refusals counted %v, want 1", n)
	}
	if n := m.brokerCounter("replmesh_broker_authz_denials_total", "call", "register"); n != 100 {
		t.Errorf("register denials counted %v, want 100", n)
	}
	// An operator still reads the whole registry over gRPC.
	if _, err := brokerClient(t, m.pki, b.GRPCAddr(), roleID(transport.RoleOperator, "oncall")).Status(ctxT(t, meshWait),
		&transport.StatusRequest{Version: transport.ProtocolVersion}); err != nil {
		t.Fatalf("Status after the flood: %v", err)
	}
	m.unchanged(before, "stores", "products")
	m.writeReplicates("after-registration-flood")
}

// subscribeAs opens a Subscribe stream on stores/managers as the
// products identity of cl.
func subscribeAs(ctx context.Context, cl *transport.ReplicationClient, instance string) (*transport.ClientSubscription, error) {
	sub, _, err := cl.OpenSubscribe(ctx, &transport.Open{Version: transport.ProtocolVersion, Service: "products", Instance: instance, Table: storesTable})
	return sub, err
}

// Stream flood on an owner limited to 4 streams per connection and 4
// subscriptions per identity, by identities the policy lets read. Old
// code: no limit; every stream was served.
func TestSecurity_StreamFlood(t *testing.T) {
	const limit = 4
	m := newSecureMesh(t, meshOptions{owner: func(c *replica.Config) { c.MaxConcurrentStreams, c.MaxCallerSubscriptions = limit, limit }})
	before := m.state()
	ctx := ctxT(t, meshWait)

	t.Run("past MaxCallerSubscriptions: refused", func(t *testing.T) {
		id := svcID("products", "products-9")
		var subs []*transport.ClientSubscription
		for i := range limit + 3 {
			// A connection per stream: the limit is the identity's.
			sub, err := subscribeAs(ctx, replicationClient(t, m.pki, m.primary.Addr(), id), id.Instance)
			if i >= limit {
				wantExhausted(t, err, "MaxCallerSubscriptions")
				continue
			}
			if err != nil {
				t.Fatalf("stream %d: %v", i, err)
			}
			subs = append(subs, sub)
		}
		m.unchanged(before)
		m.writeReplicates("during-the-subscription-flood")
		before = m.state()
		for _, s := range subs {
			s.Close()
		}
	})
	if n := componentCounter(t, m.primary, "replmesh_owner_limit_refusals_total", "limit", "caller_subscriptions"); n != 3 {
		t.Errorf("caller_subscriptions refusals counted %v, want 3", n)
	}

	t.Run("past MaxConcurrentStreams: queued", func(t *testing.T) {
		id := svcID("products", "products-8")
		cl := replicationClient(t, m.pki, m.primary.Addr(), id)
		var subs []*transport.ClientSubscription
		for i := range limit {
			sub, err := subscribeAs(ctx, cl, id.Instance)
			if err != nil {
				t.Fatalf("stream %d: %v", i, err)
			}
			subs = append(subs, sub)
		}
		type opened struct {
			sub *transport.ClientSubscription
			err error
		}
		queued := make(chan opened, 1)
		go func() {
			sub, err := subscribeAs(ctx, cl, id.Instance)
			queued <- opened{sub, err}
		}()
		// The owner keeps serving the real consumer while the fifth
		// stream waits for a free one.
		m.unchanged(before)
		m.writeReplicates("during-the-stream-flood")
		before = m.state()
		select {
		case o := <-queued:
			t.Fatalf("a fifth stream on the connection was served at once: %v", o.err)
		default:
		}
		subs[0].Close()
		o := <-queued
		if o.err != nil {
			t.Fatalf("the queued stream, once one ended: %v", o.err)
		}
		o.sub.Close()
		for _, s := range subs[1:] {
			s.Close()
		}
	})
	if n := componentCounter(t, m.primary, "replmesh_owner_limit_refusals_total", "limit", "conn_streams"); n < 1 {
		t.Errorf("conn_streams limit counted %v, want at least 1", n)
	}
	m.unchanged(before)
	m.writeReplicates("after-stream-flood")
}

// Subscribers that never read, with a fixed 64 KiB window: past the
// per-identity limit they are refused, and those admitted cost the owner
// a bounded amount each while the real consumer keeps converging. Old
// code: no limit; 1000 such streams took an owner from 360 to 1055 MiB.
func TestSecurity_NeverReadingSubscribers(t *testing.T) {
	const limit, streams = 8, 12
	m := newSecureMesh(t, meshOptions{owner: func(c *replica.Config) { c.MaxCallerSubscriptions = limit }})
	ctx := ctxT(t, meshWait)
	id := svcID("products", "products-9")
	cl := replicationClient(t, m.pki, m.primary.Addr(), id,
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	heapBefore := heapInUse()
	refused := 0
	for range streams {
		sub, err := subscribeAs(ctx, cl, id.Instance)
		if errors.Is(err, transport.ErrTooLarge) {
			refused++
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sub.Close() })
	}
	if refused != streams-limit {
		t.Fatalf("%d streams refused, want %d (past MaxCallerSubscriptions %d)", refused, streams-limit, limit)
	}
	// 2 MiB written while the streams read nothing: the real consumer and
	// the standby keep up.
	val := []byte(strings.Repeat("v", 32<<10))
	for i := range 64 {
		putOne(t, m.tp, fmt.Appendf(nil, "big/%04d", i), val)
	}
	m.settle()
	heapAfter := heapInUse()
	t.Logf("heap in use of the process (3 brokers, 3 components, the test): %d KiB before %d never-reading streams and 2 MiB of writes, %d KiB after (%+d KiB)",
		heapBefore>>10, limit, heapAfter>>10, (int64(heapAfter)-int64(heapBefore))>>10)
	if n := componentCounter(t, m.primary, "replmesh_owner_limit_refusals_total", "limit", "caller_subscriptions"); n != streams-limit {
		t.Errorf("caller_subscriptions refusals counted %v, want %d", n, streams-limit)
	}
	m.writeReplicates("after-never-reading")
}
