package integration

import (
	"testing"
	"time"

	"github.com/replmesh/replmesh/replica"
	"github.com/replmesh/replmesh/transport"
)

// A mode override set on the broker (what `replctl mode set` does) reaches
// the live subscription, which switches in-stream; clearing it switches
// back. No reconnect, no resync.
func TestModes_BrokerOverride(t *testing.T) {
	bs := startBrokers(t, 2)
	owner := component(t, "stores", "s1", "", "", grpcAddrs(bs[0]), true, nil)
	defer owner.Close()
	tbl, err := owner.Own("managers")
	if err != nil {
		t.Fatal(err)
	}
	cons := component(t, "products", "p1", "", "", grpcAddrs(bs[1]), false, nil)
	defer cons.Close()
	r, err := cons.Subscribe(ctxT(t, 30*time.Second), replica.SubscribeOptions{Service: "stores", Table: "managers"})
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, "owner is primary", func() bool { role, _ := owner.Role(); return role == "primary" })
	put(t, tbl, 10, "a")
	converge(t, tbl, r)
	reconnects := r.Status().Stats.Reconnects // the ones before the owner was known

	conn, err := transport.Dial(bs[0].GRPCAddr(), transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	bc := transport.NewBrokerClient(conn)
	set := func(mode string) {
		t.Helper()
		if _, err := bc.SetMode(ctxT(t, 30*time.Second), &transport.SetModeRequest{Version: transport.ProtocolVersion, Service: "stores", Table: "managers", Mode: mode}); err != nil {
			t.Fatalf("SetMode(%q): %v", mode, err)
		}
	}
	set("pull")
	waitUntil(t, 20*time.Second, "override reaches the subscription", func() bool {
		eff, _, _ := r.Mode()
		return eff == "pull"
	})
	put(t, tbl, 10, "b")
	if err := r.Refresh(ctxT(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	converge(t, tbl, r)
	set("")
	waitUntil(t, 20*time.Second, "override cleared", func() bool {
		eff, _, _ := r.Mode()
		return eff == "push"
	})
	put(t, tbl, 10, "c")
	converge(t, tbl, r)
	// No resync. (A reconnect under heavy machine load, the watchdog's
	// doing, would still resume: it is logged, not failed.)
	if st := r.Status(); st.Stats.FullTransfers != 1 {
		t.Fatalf("full transfers %d, want 1", st.Stats.FullTransfers)
	} else if st.Stats.Reconnects != reconnects {
		t.Logf("note: %d reconnects during the test (%v)", st.Stats.Reconnects-reconnects, st.LastErr)
	}
	_, _, reason := r.Mode()
	t.Logf("last switch: %s", reason)
}
