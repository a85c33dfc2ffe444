package replica

import (
	"context"
	"testing"
	"time"
)

// A replica that starts streaming holding the owner's head is caught up
// from that moment: its staleness is 0 at once, not only after the owner's
// first heartbeat (replctl consumers showed idle, caught-up consumers about
// 400ms stale: the time from Subscribe to that heartbeat). The owner here
// heartbeats once an hour, so only the start of the stream can say so.
func TestReplica_CaughtUpWhenStreamingStartsIsNotStale(t *testing.T) {
	open := func(t *testing.T, service, instance, dir, addr string) *Component {
		t.Helper()
		cfg := LocalConfig(service, instance)
		cfg.DataDir, cfg.ListenAddr, cfg.Logger = dir, addr, testLogger(t)
		cfg.Heartbeat, cfg.PeerTimeout = time.Hour, time.Hour
		c, err := Open(context.Background(), cfg)
		if err != nil {
			t.Fatalf("open %s/%s: %v", service, instance, err)
		}
		t.Cleanup(func() { mustClose(t, c) })
		return c
	}
	subscribe := func(t *testing.T, c *Component, addr string) *Replica {
		t.Helper()
		r, err := c.Subscribe(ctxT(t, 20*time.Second), SubscribeOptions{Service: "stores", Table: "managers", Addr: addr})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	notStale := func(t *testing.T, c *Component, r *Replica) {
		t.Helper()
		waitUntil(t, 20*time.Second, "streaming", func() bool { return r.Status().State == StateStreaming })
		if st := r.Status(); st.Seq != st.OwnerHead || st.Lag.Staleness != 0 {
			t.Errorf("streaming at seq %d, owner head %d: staleness %v, want 0", st.Seq, st.OwnerHead, st.Lag.Staleness)
		}
		for _, si := range c.subInfos() {
			if si.StaleMs != 0 {
				t.Errorf("reported to the broker: %s/%s %dms stale, want 0", si.Service, si.Table, si.StaleMs)
			}
		}
	}

	owner := open(t, "stores", "s1", "", "127.0.0.1:0")
	tbl, err := owner.Own("managers")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()

	t.Run("first copy of an empty table", func(t *testing.T) {
		c := open(t, "products", "p1", t.TempDir(), "")
		notStale(t, c, subscribe(t, c, owner.Addr()))
	})
	t.Run("first copy", func(t *testing.T) {
		for i := range 10 {
			if _, err := tbl.Put(ctxT(t, 20*time.Second), []byte{byte('a' + i)}, []byte("v")); err != nil {
				t.Fatal(err)
			}
		}
		c := open(t, "products", "p1", dir, "")
		r := subscribe(t, c, owner.Addr())
		mustConverge(t, tbl, r)
		notStale(t, c, r)
	})
	t.Run("resumed after a restart", func(t *testing.T) {
		c := open(t, "products", "p1", dir, "")
		r := subscribe(t, c, owner.Addr())
		notStale(t, c, r)
		if n := r.Status().Stats.Resumes; n != 1 {
			t.Fatalf("resumes %d, want 1", n)
		}
	})
}
