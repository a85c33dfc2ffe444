package integration

import (
	"bytes"
	"context"
	"errors"
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
	return startBrokersWith(t, n, nil)
}

// startBrokersWith is startBrokers with mutate (if not nil) applied to
// each broker's configuration.
func startBrokersWith(t testing.TB, n int, mutate func(*broker.Config)) []*broker.Broker {
	t.Helper()
	var bs []*broker.Broker
	for i := 1; i <= n; i++ {
		cfg := broker.LocalConfig(fmt.Sprintf("b%d", i))
		cfg.Logger = testLogger(t)
		if i > 1 {
			cfg.Join = []string{bs[0].GossipAddr()}
		}
		if mutate != nil {
			mutate(&cfg)
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

// startRaftBrokers starts n brokers as startBrokers does, each with its
// own data dir (the raft log and snapshots on disk, as in production).
func startRaftBrokers(t testing.TB, n int) []*broker.Broker {
	t.Helper()
	return startBrokersWith(t, n, func(c *broker.Config) { c.DataDir = t.TempDir() })
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

// put writes n keys (prefix0000, ...) with the value prefix and returns the
// last seq.
func put(t testing.TB, tbl *replica.OwnedTable, n int, prefix string) uint64 {
	t.Helper()
	var seq uint64
	for i := range n {
		seq = putOne(t, tbl, fmt.Appendf(nil, "%s%04d", prefix, i), []byte(prefix))
	}
	return seq
}

// putOne writes key and returns its seq once the write is acknowledged. On
// a primary with MinSyncStandbys a write may be refused or left unconfirmed
// for a while (no standby connected yet, or the lease not renewed in time
// on a loaded machine: ErrNotReplicated, ErrNoLease); it is written again,
// same key and value, until it is acknowledged.
func putOne(t testing.TB, tbl *replica.OwnedTable, key, value []byte) uint64 {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		seq, err := tbl.Put(ctxT(t, 30*time.Second), key, value)
		if err == nil {
			return seq
		}
		if !errors.Is(err, replica.ErrNotReplicated) && !errors.Is(err, replica.ErrNoLease) || time.Now().After(deadline) {
			t.Fatalf("put %s: %v", key, err)
		}
		time.Sleep(5 * time.Millisecond) // the interval between attempts, not synchronization
	}
}

// waitFollowing waits until the primary table can acknowledge a write
// (with MinSyncStandbys: a standby is connected and the lease holds) and
// every standby copy holds the primary's head, so each has connected to
// the primary. A write made before that fails with ErrNotReplicated
// ("0 standby(s) connected").
func waitFollowing(t testing.TB, primary *replica.OwnedTable, standbys ...*replica.OwnedTable) {
	t.Helper()
	waitUntil(t, 30*time.Second, "a write acknowledged by "+primary.Name()+"'s primary", func() bool {
		_, err := primary.Put(ctxT(t, 30*time.Second), []byte("probe/following"), []byte("1"))
		return err == nil
	})
	waitUntil(t, 30*time.Second, "every standby holding the primary's head", func() bool {
		h := primary.Head()
		for _, s := range standbys {
			if s.Head() != h {
				return false
			}
		}
		return true
	})
}
