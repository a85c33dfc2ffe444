package integration

import (
	"errors"
	"testing"
	"time"

	"github.com/replmesh/replmesh/replica"
	"github.com/replmesh/replmesh/transport"
)

// A consumer finds its owner through the broker cluster (no address given),
// a standby refuses writes naming the primary, and when the primary goes
// away the standby is promoted with a new epoch; the consumer follows it and
// resumes from its cursor without a full transfer.
func TestFailover_InProcess(t *testing.T) {
	bs := startBrokers(t, 3)
	a := component(t, "stores", "a", t.TempDir(), "", grpcAddrs(bs[0]), true, nil)
	aClosed := false
	defer func() {
		if !aClosed {
			a.Close()
		}
	}()
	b := component(t, "stores", "b", t.TempDir(), "", grpcAddrs(bs[1]), true, nil)
	defer b.Close()
	ta, err := a.Own("managers")
	if err != nil {
		t.Fatal(err)
	}
	tb, err := b.Own("managers")
	if err != nil {
		t.Fatal(err)
	}
	p := primaryOf(t, a, b)
	primary, standby, tp, ts := a, b, ta, tb
	if p == b {
		primary, standby, tp, ts = b, a, tb, ta
	}
	if _, err := ts.Put(ctxT(t, 30*time.Second), []byte("x"), []byte("y")); !errors.Is(err, transport.ErrNotPrimary) {
		t.Fatalf("write on the standby = %v, want ErrNotPrimary", err)
	}

	c := component(t, "products", "p1", t.TempDir(), "", grpcAddrs(bs[2]), false, nil)
	defer c.Close()
	r, err := c.Subscribe(ctxT(t, 30*time.Second), replica.SubscribeOptions{Service: "stores", Table: "managers"})
	if err != nil {
		t.Fatal(err)
	}
	put(t, tp, 200, "before")
	converge(t, tp, r)
	// The standby holds the same history: same log id, same head.
	waitUntil(t, 20*time.Second, "standby caught up", func() bool { return ts.Head() == tp.Head() })
	if ts.LogID() != tp.LogID() {
		t.Fatalf("standby log %s, primary log %s", ts.LogID(), tp.LogID())
	}
	_, epochBefore := primary.Role()

	// The primary goes away; the broker promotes the standby.
	if primary == a {
		aClosed = true
	}
	primary.Close()
	killed := time.Now()
	waitUntil(t, 30*time.Second, "standby promoted", func() bool {
		role, _ := standby.Role()
		return role == "primary"
	})
	var first time.Time
	waitUntil(t, 30*time.Second, "a write accepted by the new primary", func() bool {
		_, err := ts.Put(ctxT(t, 30*time.Second), []byte("after-failover"), []byte("1"))
		if err == nil {
			first = time.Now()
		}
		return err == nil
	})
	t.Logf("kill to first write accepted by the new primary: %v", first.Sub(killed))
	if _, epoch := standby.Role(); epoch <= epochBefore {
		t.Fatalf("epoch after promotion %d, before %d", epoch, epochBefore)
	}
	put(t, ts, 100, "after")
	converge(t, ts, r)
	st := r.Status()
	if st.Stats.FullTransfers != 1 {
		t.Fatalf("consumer took %d full transfers, want 1 (the first): it must resume on the new primary", st.Stats.FullTransfers)
	}
	if st.Stats.Resumes < 1 {
		t.Fatalf("consumer resumes = %d", st.Stats.Resumes)
	}
}

// With MinSyncStandbys: 1 a write returns only once the standby holds it:
// every acknowledged write survives the primary's loss. Without a
// connected standby, a write is refused before anything is written.
func TestFailover_MinSyncStandbys(t *testing.T) {
	bs := startBrokers(t, 1)
	sync1 := func(c *replica.Config) { c.MinSyncStandbys = 1; c.SyncTimeout = 10 * time.Second }
	a := component(t, "stores", "a", t.TempDir(), "", grpcAddrs(bs[0]), true, sync1)
	aClosed := false
	defer func() {
		if !aClosed {
			a.Close()
		}
	}()
	ta, err := a.Own("managers")
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, "a is primary", func() bool { r, _ := a.Role(); return r == "primary" })
	if _, err := ta.Put(ctxT(t, 30*time.Second), []byte("k"), []byte("v")); !errors.Is(err, replica.ErrNotReplicated) {
		t.Fatalf("write with no standby = %v, want ErrNotReplicated", err)
	}
	if h := ta.Head(); h != 0 {
		t.Fatalf("a refused write was committed (head %d)", h)
	}
	b := component(t, "stores", "b", t.TempDir(), "", grpcAddrs(bs[0]), true, sync1)
	defer b.Close()
	tb, err := b.Own("managers")
	if err != nil {
		t.Fatal(err)
	}
	// Acknowledged writes, each checked on the standby at the moment the
	// write returns.
	var acked []uint64
	waitUntil(t, 20*time.Second, "standby connected", func() bool {
		_, err := ta.Put(ctxT(t, 30*time.Second), []byte("probe"), []byte("1"))
		return err == nil
	})
	for i := range 50 {
		seq := putOne(t, ta, []byte{byte('a' + i%26), byte(i)}, []byte("v"))
		if h := tb.Head(); h < seq {
			t.Fatalf("write at seq %d acknowledged while the standby holds only %d", seq, h)
		}
		acked = append(acked, seq)
	}
	aClosed = true
	a.Close()
	waitUntil(t, 30*time.Second, "b promoted", func() bool { r, _ := b.Role(); return r == "primary" })
	if h := tb.Head(); h < acked[len(acked)-1] {
		t.Fatalf("new primary's head %d is behind the last acknowledged write %d", h, acked[len(acked)-1])
	}
}
