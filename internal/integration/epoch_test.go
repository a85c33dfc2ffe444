package integration

import (
	"testing"
	"time"

	"github.com/replmesh/replmesh/broker"
	"github.com/replmesh/replmesh/replica"
)

// Brokers keep no durable state: after every broker and every instance
// restarted over the instances' kept data, the new brokers know no epoch,
// and an owner instance registers with them as soon as it opens, before
// it opens its tables. The grant must still be above every epoch its data
// holds: at or below it, the primary would reuse an epoch of its history
// (a fencing hazard), and one below it could never take over ("table ... is
// at epoch 3, newer than the granted epoch 1"; examples/marketplace/cluster.sh
// up over kept data hung so about one start in six).
func TestEpoch_RestartOverKeptDataGrantsAboveTheData(t *testing.T) {
	dirA, dirB, dirP := t.TempDir(), t.TempDir(), t.TempDir()

	// First run: a primary, b its standby, a consumer; a failover takes the
	// epoch above 1.
	bs := startBrokers(t, 3)
	addrs := grpcAddrs(bs...)
	a := component(t, "stores", "a", dirA, "", addrs, true, nil)
	ta := own(t, a, "managers")
	waitRole(t, a, "primary")
	b := component(t, "stores", "b", dirB, "", addrs, true, nil)
	tb := own(t, b, "managers")
	waitRole(t, b, "standby")
	p := component(t, "products", "p", dirP, "", addrs, false, nil)
	r := subscribe(t, p)
	put(t, ta, 50, "one")
	converge(t, ta, r)
	waitUntil(t, 20*time.Second, "b holding a's head", func() bool { return tb.Head() == ta.Head() })
	a.Close()
	waitRole(t, b, "primary")
	put(t, tb, 50, "two")
	converge(t, tb, r)
	_, dataEpoch := b.Role()
	if dataEpoch < 2 {
		t.Fatalf("epoch after the failover %d, want at least 2", dataEpoch)
	}
	p.Close()
	b.Close()
	closeBrokers(t, bs)

	// Everything again, over the kept data, with new brokers. b (the last
	// primary) registers and hears its role before it opens its table: the
	// order in which the brokers used to see no epoch at all.
	bs = startBrokers(t, 3)
	addrs = grpcAddrs(bs...)
	b = component(t, "stores", "b", dirB, "", addrs, true, nil)
	defer b.Close()
	waitUntil(t, 20*time.Second, "b given a role before it owns a table", func() bool {
		role, _ := b.Role()
		return role != ""
	})
	if role, epoch := b.Role(); role != "primary" || epoch <= dataEpoch {
		t.Errorf("b, the only owner instance, registered before opening its table: %s at epoch %d; want primary above the data's epoch %d",
			role, epoch, dataEpoch)
	}
	tb = own(t, b, "managers")
	waitUntil(t, 30*time.Second, "b taking writes", func() bool {
		_, err := tb.Put(ctxT(t, 10*time.Second), []byte("three"), []byte("three"))
		return err == nil
	})
	if role, epoch := b.Role(); role != "primary" || epoch <= dataEpoch {
		t.Fatalf("b is %s at epoch %d, want primary above the data's epoch %d", role, epoch, dataEpoch)
	}

	// a (behind, at the older epoch) follows b; the consumer resumes.
	a = component(t, "stores", "a", dirA, "", addrs, true, nil)
	defer a.Close()
	ta = own(t, a, "managers")
	waitRole(t, a, "standby")
	p = component(t, "products", "p", dirP, "", addrs, false, nil)
	defer p.Close()
	r = subscribe(t, p)
	put(t, tb, 20, "four")
	converge(t, tb, r)
	waitUntil(t, 20*time.Second, "a holding b's head", func() bool { return ta.Head() == tb.Head() })
	if n := r.Status().Stats.FullTransfers; n != 0 {
		t.Fatalf("the consumer took %d full transfers after the restart, want 0 (a resume)", n)
	}
}

func own(t testing.TB, c *replica.Component, table string) *replica.OwnedTable {
	t.Helper()
	tbl, err := c.Own(table)
	if err != nil {
		t.Fatalf("own %s: %v", table, err)
	}
	return tbl
}

func waitRole(t testing.TB, c *replica.Component, role string) {
	t.Helper()
	waitUntil(t, 30*time.Second, c.Config().Instance+" "+role, func() bool {
		got, _ := c.Role()
		return got == role
	})
}

func subscribe(t testing.TB, c *replica.Component) *replica.Replica {
	t.Helper()
	r, err := c.Subscribe(ctxT(t, 30*time.Second), replica.SubscribeOptions{Service: "stores", Table: "managers"})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func closeBrokers(t testing.TB, bs []*broker.Broker) {
	t.Helper()
	for _, b := range bs {
		if err := b.Close(); err != nil {
			t.Fatalf("close broker %s: %v", b.Name(), err)
		}
	}
}
