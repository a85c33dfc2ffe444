package replica

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/replmesh/replmesh/internal/testutil"
	"github.com/replmesh/replmesh/transport"
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

// memNet is an in-memory network (testutil.BufNet) for the tests that need
// a stream between components but not the network: a component joined to
// it serves on a listener of its own (Config.Listener) and dials the
// others through it (Config.Transport.DialOptions). The tests about the
// network (restarts on an address, the fault proxy, real sockets) stay on
// TCP.
type memNet struct{ bn testutil.BufNet }

// join puts the component cfg configures on the network.
func (n *memNet) join(cfg *Config) {
	ln, addr := n.bn.Listen()
	cfg.Listener = memListener{ln, memAddr(addr)}
	cfg.Transport = n.options(cfg.Transport)
}

// options returns o dialing through the network, for a client of its own.
func (n *memNet) options(o transport.Options) transport.Options {
	o.DialOptions = append(o.DialOptions[:len(o.DialOptions):len(o.DialOptions)], n.bn.DialOption())
	return o
}

// open opens a component on the network like openComponent; dir "" is in
// memory.
func (n *memNet) open(t testing.TB, service, instance, dir string) *Component {
	t.Helper()
	return openWith(t, service, instance, dir, "", n.join)
}

// serve serves the services register adds on the network until the test
// ends, and returns the address.
func (n *memNet) serve(t *testing.T, register func(*transport.Server)) string {
	t.Helper()
	ln, addr := n.bn.Listen()
	serveOn(t, ln, register)
	return addr
}

// memListener is a listener of a memNet that reports its address on the
// network (a bufconn listener's own Addr is "bufconn" for all of them).
type memListener struct {
	net.Listener
	addr memAddr
}

func (l memListener) Addr() net.Addr { return l.addr }

// memAddr is an address on a memNet.
type memAddr string

func (memAddr) Network() string  { return "bufnet" }
func (a memAddr) String() string { return string(a) }

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
