package integration

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/replmesh/replmesh/broker"
	"github.com/replmesh/replmesh/internal/testutil"
	"github.com/replmesh/replmesh/replica"
	"github.com/replmesh/replmesh/transport"
)

// registered reports whether broker b lists every instance in want
// ("service/instance") as connected.
func registered(t testing.TB, b *broker.Broker, want ...string) bool {
	t.Helper()
	st, err := b.Status(ctxT(t, 30*time.Second), &transport.StatusRequest{Version: transport.ProtocolVersion})
	if err != nil {
		return false
	}
	have := map[string]bool{}
	for _, in := range st.Instances {
		have[in.Service+"/"+in.Instance] = true
	}
	for _, w := range want {
		if !have[w] {
			return false
		}
	}
	return true
}

// Registrations made on different brokers converge on every broker; when a
// broker dies, its components move their session to another one and no
// registration is lost; an owner that restarts on a new port is followed by
// its consumers.
func TestDiscovery_ConvergeRehomeFollow(t *testing.T) {
	bs := startBrokers(t, 3)
	all := grpcAddrs(bs...)
	ownerDir := t.TempDir()
	owner := component(t, "stores", "s1", ownerDir, "", all[:1], true, nil)
	ownerClosed := false
	defer func() {
		if !ownerClosed {
			owner.Close()
		}
	}()
	tbl, err := owner.Own("managers")
	if err != nil {
		t.Fatal(err)
	}
	c1 := component(t, "products", "p1", "", "", all[1:2], false, nil)
	defer c1.Close()
	c2 := component(t, "billing", "x1", "", "", all[2:3], false, nil)
	defer c2.Close()
	r1, err := c1.Subscribe(ctxT(t, 30*time.Second), replica.SubscribeOptions{Service: "stores", Table: "managers"})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := c2.Subscribe(ctxT(t, 30*time.Second), replica.SubscribeOptions{Service: "stores", Table: "managers"})
	if err != nil {
		t.Fatal(err)
	}
	insts := []string{"stores/s1", "products/p1", "billing/x1"}
	for i, b := range bs {
		waitUntil(t, 20*time.Second, fmt.Sprintf("all registrations on b%d", i+1), func() bool { return registered(t, b, insts...) })
	}
	waitUntil(t, 20*time.Second, "owner is primary", func() bool { r, _ := owner.Role(); return r == "primary" })
	put(t, tbl, 50, "a")
	converge(t, tbl, r1)
	converge(t, tbl, r2)

	// b1 holds the owner's session: kill it. The owner re-homes to a broker
	// it learned from the topology; its registration survives.
	bs[0].Close()
	waitUntil(t, 20*time.Second, "registrations kept on b2 and b3", func() bool {
		return registered(t, bs[1], insts...) && registered(t, bs[2], insts...)
	})
	put(t, tbl, 50, "b")
	converge(t, tbl, r1)

	// The owner restarts on a new port (same data dir): consumers follow.
	oldAddr := owner.Addr()
	ownerClosed = true
	owner.Close()
	owner = component(t, "stores", "s1", ownerDir, "", all[1:2], true, nil)
	ownerClosed = false
	if owner.Addr() == oldAddr {
		t.Fatalf("owner came back on the same address %s; the test needs a new one", oldAddr)
	}
	tbl, err = owner.Own("managers")
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, "restarted owner is primary", func() bool { r, _ := owner.Role(); return r == "primary" })
	put(t, tbl, 50, "c")
	converge(t, tbl, r1)
	converge(t, tbl, r2)
	if st := r1.Status(); st.Stats.FullTransfers != 1 {
		t.Fatalf("consumer took %d full transfers; following a moved owner must resume", st.Stats.FullTransfers)
	}
}

// freeAddr is an address a process can be restarted on (testutil.FreeAddr).
func freeAddr(t testing.TB) string { return testutil.FreeAddr(t) }

// The broker is never on the data path: with every broker down, replicas
// read, established streams deliver and the primary commits; a subscription
// made meanwhile starts once a broker is back.
func TestDiscovery_AllBrokersDown(t *testing.T) {
	addr := freeAddr(t)
	start := func() *broker.Broker {
		cfg := broker.LocalConfig("b1")
		cfg.GRPCAddr = addr
		cfg.Logger = testLogger(t)
		b, err := broker.New(ctxT(t, 20*time.Second), cfg)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	b := start()
	owner := component(t, "stores", "s1", t.TempDir(), "", []string{addr}, true, nil)
	defer owner.Close()
	tbl, _ := owner.Own("managers")
	// A second owner service the consumer has not subscribed to yet: its
	// cached topology does not know where it is.
	billing := component(t, "billing", "b1", t.TempDir(), "", []string{addr}, true, nil)
	defer billing.Close()
	other, _ := billing.Own("invoices")
	cons := component(t, "products", "p1", t.TempDir(), "", []string{addr}, false, nil)
	defer cons.Close()
	r, err := cons.Subscribe(ctxT(t, 30*time.Second), replica.SubscribeOptions{Service: "stores", Table: "managers"})
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, "owners are primary", func() bool {
		r1, _ := owner.Role()
		r2, _ := billing.Role()
		return r1 == "primary" && r2 == "primary"
	})
	put(t, tbl, 20, "a")
	converge(t, tbl, r)

	b.Close()
	// No broker: writes commit, the stream delivers, reads are served.
	put(t, tbl, 30, "b")
	converge(t, tbl, r)
	if _, ok, err := r.Get([]byte("a0001")); err != nil || !ok {
		t.Fatalf("read with no broker: %v, %v", ok, err)
	}
	// A new subscription to a service the consumer has not seen waits for a
	// broker (one to a service in its last topology would start at once).
	late, err := cons.Subscribe(ctxT(t, 30*time.Second), replica.SubscribeOptions{Service: "billing", Table: "invoices"})
	if err != nil {
		t.Fatal(err)
	}
	put(t, other, 10, "s")
	waitUntil(t, 20*time.Second, "the late subscription tried and waited", func() bool {
		st := late.Status()
		return st.Stats.Reconnects >= 2 && errors.Is(st.LastErr, transport.ErrUnavailable)
	})
	select {
	case <-late.Ready():
		t.Fatal("a subscription to an unknown service made with no broker up was served: where did it learn the owner's address?")
	default:
	}
	b = start()
	defer b.Close()
	converge(t, other, late)
	put(t, tbl, 10, "c")
	converge(t, tbl, r)
}
