package replica

import (
	"bytes"
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/replmesh/replmesh/internal/testutil"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// badger's ristretto cache and glog-style flushers outlive DB.Close briefly.
		goleak.IgnoreTopFunction("github.com/golang/glog.(*fileSink).flushDaemon"),
		goleak.IgnoreAnyFunction("github.com/dgraph-io/ristretto/v2/z.(*AllocatorPool).freeupAllocators"),
	)
}

// testLogger routes logs to t.Log.
func testLogger(t testing.TB) *slog.Logger { return testutil.Logger(t) }

// openComponent opens a component with fast timers; dir "" is in memory.
func openComponent(t testing.TB, service, instance, dir, addr string) *Component {
	t.Helper()
	cfg := LocalConfig(service, instance)
	cfg.DataDir = dir
	if addr != "" {
		cfg.ListenAddr = addr
	}
	cfg.Logger = testLogger(t)
	c, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("open %s/%s: %v", service, instance, err)
	}
	return c
}

// mustClose closes c and fails the test on error.
func mustClose(t testing.TB, c *Component) {
	t.Helper()
	if err := c.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
}

// waitUntil polls cond until it is true or the deadline passes.
func waitUntil(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	testutil.WaitUntil(t, d, what, cond)
}

func ctxT(t testing.TB, d time.Duration) context.Context { return testutil.Context(t, d) }

// mustConverge waits until r holds the owner's head and its digest equals
// the owner's.
func mustConverge(t testing.TB, owner *OwnedTable, r *Replica) {
	t.Helper()
	head := owner.Head()
	if err := r.WaitFor(ctxT(t, 20*time.Second), head); err != nil {
		t.Fatalf("replica %s: %v (status %+v)", r.Table(), err, r.Status())
	}
	want, err := owner.Digest(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := r.Digest(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got.Seq != want.Seq || !bytes.Equal(got.Hash, want.Hash) || got.Rows != want.Rows || got.LogID != want.LogID {
		t.Fatalf("replica digest %x (seq %d, %d rows, log %s), owner %x (seq %d, %d rows, log %s)",
			got.Hash, got.Seq, got.Rows, got.LogID, want.Hash, want.Seq, want.Rows, want.LogID)
	}
}
