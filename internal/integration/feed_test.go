package integration

import (
	"fmt"
	"testing"
	"time"

	"github.com/replmesh/replmesh/replica"
)

// A change feed finds the primary through the brokers and follows a
// failover to the promoted standby: it resumes there after the last change
// it delivered, so every change of both epochs is delivered once, in
// order, with the epoch it was written in.
func TestFeed_FollowsFailover(t *testing.T) {
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
	primary, standby, tp, ts := a, b, ta, tb
	if primaryOf(t, a, b) == b {
		primary, standby, tp, ts = b, a, tb, ta
	}
	cdc := component(t, "cdc", "c1", "", "", grpcAddrs(bs[2]), false, nil)
	defer cdc.Close()
	f, err := cdc.Feed(ctxT(t, 10*time.Second), "stores", "managers", replica.FeedOptions{Start: replica.FeedFromOldest, Buffer: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	written := map[uint64]string{}
	write := func(tbl *replica.OwnedTable, prefix string, n int) uint64 {
		var seq uint64
		for i := range n {
			key := fmt.Sprintf("%s-%d", prefix, i)
			seq = putOne(t, tbl, []byte(key), []byte("v"))
			written[seq] = key
		}
		return seq
	}
	var prev uint64
	var epochs []uint64
	read := func(to uint64) {
		t.Helper()
		ctx := ctxT(t, 60*time.Second)
		for prev < to {
			bt, err := f.Next(ctx)
			if err != nil {
				t.Fatalf("next after seq %d: %v", prev, err)
			}
			for _, ch := range bt.Changes {
				if ch.Seq != prev+1 {
					t.Fatalf("change %d after %d", ch.Seq, prev)
				}
				if k, ok := written[ch.Seq]; ok && k != string(ch.Key) {
					t.Fatalf("change %d is %q, %q was written there", ch.Seq, ch.Key, k)
				}
				if len(epochs) == 0 || epochs[len(epochs)-1] != ch.Epoch {
					epochs = append(epochs, ch.Epoch)
				}
				prev = ch.Seq
			}
		}
	}
	head := write(tp, "before", 100)
	read(head / 2) // the rest waits in the owner's log
	waitUntil(t, 20*time.Second, "the standby caught up", func() bool { return ts.Head() == tp.Head() })
	if primary == a {
		aClosed = true
	}
	primary.Close()
	waitUntil(t, 30*time.Second, "the standby promoted", func() bool { r, _ := standby.Role(); return r == "primary" })
	head = write(ts, "after", 50)
	read(head)
	if len(epochs) != 2 || epochs[1] <= epochs[0] {
		t.Errorf("epochs of the changes delivered %v, want the old primary's then a newer one", epochs)
	}
	if p := f.Position(); p.Seq != head || p.LogID != ts.LogID() || p.Epoch != epochs[len(epochs)-1] {
		t.Errorf("position %+v, want seq %d of log %s at epoch %d", p, head, ts.LogID(), epochs[len(epochs)-1])
	}
}
