package integration

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/replmesh/replmesh/broker"
	"github.com/replmesh/replmesh/internal/testutil"
	"github.com/replmesh/replmesh/replica"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("github.com/dgraph-io/ristretto/v2/z.(*AllocatorPool).freeupAllocators"),
		goleak.IgnoreTopFunction("github.com/golang/glog.(*fileSink).flushDaemon"),
	)
}

func testLogger(t testing.TB) *slog.Logger { return testutil.Logger(t) }

func ctxT(t testing.TB, d time.Duration) context.Context { return testutil.Context(t, d) }

func waitUntil(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	testutil.WaitUntil(t, d, what, cond)
}

// startBrokers starts n brokers b1..bn with fast timers; b2.. join b1.
func startBrokers(t testing.TB, n int) []*broker.Broker {
	t.Helper()
	var bs []*broker.Broker
	for i := 1; i <= n; i++ {
		cfg := broker.LocalConfig(fmt.Sprintf("b%d", i))
		cfg.Logger = testLogger(t)
		if i > 1 {
			cfg.Join = []string{bs[0].GossipAddr()}
		}
		b, err := broker.New(ctxT(t, 20*time.Second), cfg)
		if err != nil {
			t.Fatalf("broker b%d: %v", i, err)
		}
		t.Cleanup(func() { b.Close() })
		bs = append(bs, b)
	}
	return bs
}

func grpcAddrs(bs ...*broker.Broker) []string {
	var out []string
	for _, b := range bs {
		out = append(out, b.GRPCAddr())
	}
	return out
}

// component opens a replication component that talks to brokers.
func component(t testing.TB, service, instance, dir, addr string, brokers []string, owner bool, mutate func(*replica.Config)) *replica.Component {
	t.Helper()
	cfg := replica.LocalConfig(service, instance)
	cfg.DataDir = dir
	if addr != "" {
		cfg.ListenAddr = addr
	}
	cfg.Brokers = brokers
	cfg.Owner = owner
	cfg.Logger = testLogger(t)
	if mutate != nil {
		mutate(&cfg)
	}
	c, err := replica.Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("open %s/%s: %v", service, instance, err)
	}
	return c
}

// primaryOf waits until exactly one of cs is primary and returns it.
func primaryOf(t testing.TB, cs ...*replica.Component) *replica.Component {
	t.Helper()
	var p *replica.Component
	waitUntil(t, 20*time.Second, "one primary", func() bool {
		p = nil
		n := 0
		for _, c := range cs {
			if r, _ := c.Role(); r == "primary" {
				p, n = c, n+1
			}
		}
		return n == 1
	})
	return p
}

// converge waits until r holds the owner table's head and has its digest.
func converge(t testing.TB, owner *replica.OwnedTable, r *replica.Replica) {
	t.Helper()
	head := owner.Head()
	if err := r.WaitFor(ctxT(t, 20*time.Second), head); err != nil {
		t.Fatalf("replica: %v (status %+v)", err, r.Status())
	}
	want, err := owner.Digest(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := r.Digest(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got.Seq != want.Seq || !bytes.Equal(got.Hash, want.Hash) || got.LogID != want.LogID {
		t.Fatalf("replica digest %x at %d (log %s), owner %x at %d (log %s)", got.Hash, got.Seq, got.LogID, want.Hash, want.Seq, want.LogID)
	}
}

func put(t testing.TB, tbl *replica.OwnedTable, n int, prefix string) uint64 {
	t.Helper()
	var seq uint64
	for i := range n {
		var err error
		if seq, err = tbl.Put(ctxT(t, 10*time.Second), fmt.Appendf(nil, "%s%04d", prefix, i), []byte(prefix)); err != nil {
			t.Fatal(err)
		}
	}
	return seq
}
