package replica

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/replmesh/replmesh/transport"

	"github.com/replmesh/replmesh/internal/testutil"
)

func TestSessionLog(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	type step struct {
		fail           bool          // false: a session opens
		at             time.Duration // fail: when
		line           bool          // fail: a line is logged
		suppressed     int           // fail: failures not logged before it
		recovered      bool          // open: it ends a run of failures
		failuresBefore int           // open: how many
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"first failure at once", []step{{fail: true, at: 0, line: true}}},
		{"then one line per interval with the count", []step{
			{fail: true, at: 0, line: true},
			{fail: true, at: time.Second},
			{fail: true, at: 10 * time.Second},
			{fail: true, at: 29 * time.Second},
			{fail: true, at: 30 * time.Second, line: true, suppressed: 3},
			{fail: true, at: 31 * time.Second},
			{fail: true, at: 61 * time.Second, line: true, suppressed: 1},
		}},
		{"failures further apart than the interval all log", []step{
			{fail: true, at: 0, line: true},
			{fail: true, at: 40 * time.Second, line: true},
			{fail: true, at: 80 * time.Second, line: true},
		}},
		{"recovery reported once, then a new run starts at once", []step{
			{fail: true, at: 0, line: true},
			{fail: true, at: time.Second},
			{recovered: true, failuresBefore: 2},
			{},
			{fail: true, at: 2 * time.Second, line: true},
			{fail: true, at: 3 * time.Second},
		}},
		{"an open without failures is no recovery", []step{{}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := sessionLog{every: 30 * time.Second}
			for i, s := range tc.steps {
				if s.fail {
					line, suppressed := l.failed(at(s.at))
					if line != s.line || suppressed != s.suppressed {
						t.Fatalf("step %d: failed() = %v, %d; want %v, %d", i, line, suppressed, s.line, s.suppressed)
					}
					continue
				}
				n, _, ok := l.opened()
				if ok != s.recovered || n != s.failuresBefore {
					t.Fatalf("step %d: opened() = %d, %v; want %d, %v", i, n, ok, s.failuresBefore, s.recovered)
				}
			}
		})
	}
}

// openLogging opens a component whose only broker is addr; it logs (from
// DEBUG up) into the returned buffer. The caller closes it.
func openLogging(t *testing.T, addr string) (*Component, *testutil.LogBuffer) {
	t.Helper()
	logs := &testutil.LogBuffer{}
	cfg := LocalConfig("products", "p1")
	cfg.Brokers = []string{addr}
	cfg.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c, logs
}

// A component whose only broker is an address nobody listens on logs the
// failure at once at WARN, then (every 30s) a line counting what it did
// not log; every attempt shows at DEBUG only. It used to log each attempt
// at INFO (about 7 a second with LocalConfig's backoff).
func TestComponent_UnreachableBrokerLogsBounded(t *testing.T) {
	dead := freeAddr(t)
	c, logs := openLogging(t, dead)
	defer mustClose(t, c)

	const attempts = 30
	waitUntil(t, 60*time.Second, "30 failed attempts", func() bool {
		return len(logs.Records(t, testutil.Msg("broker session failed"))) >= attempts
	})
	failed := len(logs.Records(t, testutil.Msg("broker session failed")))
	first := logs.Records(t, testutil.Msg("broker unreachable; retrying"))
	again := logs.Records(t, testutil.Msg("broker still unreachable; retrying"))
	if len(first) != 1 || first[0]["level"] != "WARN" || first[0]["broker"] != dead {
		t.Fatalf("first failure: %v, want one WARN line naming %s", first, dead)
	}
	// At most one line per 30s after the first: with 30 attempts at most
	// 200ms apart (plus whatever the load adds) that is a few lines at the
	// very most; each says how many it stands for.
	if lines := len(first) + len(again); lines > 1+failed/10 {
		t.Fatalf("%d lines for %d failed attempts", lines, failed)
	}
	counted := 1
	for _, r := range again {
		counted += 1 + int(r["suppressed"].(float64))
	}
	if counted > failed {
		t.Fatalf("the lines account for %d failures, only %d happened", counted, failed)
	}
	for _, msg := range []string{"broker session ended", "broker reachable again"} {
		if r := logs.Records(t, testutil.Msg(msg)); len(r) > 0 {
			t.Fatalf("logged %q with no broker ever reached: %v", msg, r)
		}
	}
}

// sessionBroker answers Session only (the one call a component makes): a
// topology, then it listens until the stream ends.
type sessionBroker struct{ transport.BrokerServer }

func (sessionBroker) Session(s transport.SessionServer) error {
	if _, err := s.Recv(); err != nil {
		return err
	}
	if err := s.Send(&transport.SessionResponse{Kind: transport.SessionTopology, Broker: "fake",
		Topology: &transport.Topology{Revision: 1, Role: transport.RoleConsumer}}); err != nil {
		return err
	}
	for {
		if _, err := s.Recv(); err != nil {
			return nil
		}
	}
}

// When the broker comes back, the component says so once at INFO, with
// the number of attempts that failed.
func TestComponent_BrokerRecoveryLoggedOnce(t *testing.T) {
	addr := freeAddr(t)
	c, logs := openLogging(t, addr)
	waitUntil(t, 60*time.Second, "3 failed attempts", func() bool {
		return len(logs.Records(t, testutil.Msg("broker session failed"))) >= 3
	})

	lis, err := transport.Listen(addr)
	if err != nil {
		t.Skipf("the port was taken meanwhile: %v", err)
	}
	srv := transport.NewServer(transport.Options{})
	transport.RegisterBrokerServer(srv, sessionBroker{})
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	defer func() { srv.GracefulStop(time.Second); <-done }()
	defer mustClose(t, c)

	waitUntil(t, 60*time.Second, "the recovery line", func() bool {
		return len(logs.Records(t, testutil.Msg("broker reachable again"))) > 0
	})
	failed := len(logs.Records(t, testutil.Msg("broker session failed")))
	rec := logs.Records(t, testutil.Msg("broker reachable again"))
	if len(rec) != 1 || rec[0]["level"] != "INFO" || rec[0]["broker"] != addr {
		t.Fatalf("recovery: %v, want one INFO line naming %s", rec, addr)
	}
	if n := int(rec[0]["failed_attempts"].(float64)); n < 3 || n > failed {
		t.Fatalf("recovery counts %d failed attempts; %d were logged at DEBUG", n, failed)
	}
}
