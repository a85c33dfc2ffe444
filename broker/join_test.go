package broker

import (
	"errors"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/replmesh/replmesh/internal/testutil"
)

// deadAddrs returns n 127.0.0.1 addresses nobody listens on (for now).
func deadAddrs(t *testing.T, n int) []string {
	t.Helper()
	var out []string
	for range n {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, lis.Addr().String())
		defer lis.Close()
	}
	return out
}

// A broker whose -join addresses are all unreachable logs each address on
// a line of its own, at WARN, once and then rarely (with the count of
// attempts not logged), keeps retrying, and says once that it decides
// alone. It used to log "could not join any broker" with memberlist's
// multi-line error every RejoinInterval.
func TestBroker_UnreachableJoinLogged(t *testing.T) {
	dead := deadAddrs(t, 2)
	logs := &testutil.LogBuffer{}
	b := startBroker(t, "b1", dead, func(c *Config) {
		c.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		c.Gossip.TCPTimeout = 200 * time.Millisecond
	})
	const attempts = 8 // per address
	waitUntil(t, waitLong, "8 join attempts per address", func() bool {
		return len(logs.Records(t, testutil.MsgPrefix("join attempt failed"))) >= attempts*len(dead)
	})
	waitUntil(t, waitLong, "the broker deciding alone", func() bool { return b.isReady() })

	failed := logs.Records(t, testutil.MsgPrefix("join attempt failed"))
	first := logs.Records(t, testutil.MsgPrefix("cannot reach a broker to join"))
	again := logs.Records(t, testutil.MsgPrefix("still cannot reach a broker to join"))
	for _, addr := range dead {
		n := 0
		for _, r := range first {
			if r["addr"] == addr {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%s: %d first-failure lines, want 1", addr, n)
		}
	}
	for _, r := range append(first, again...) {
		if r["level"] != "WARN" {
			t.Errorf("logged at %v: %v", r["level"], r)
		}
		if err, _ := r["err"].(string); err == "" || strings.Contains(err, "\n") || strings.Contains(err, "error occurred") {
			t.Errorf("err is not one line of its own: %q", err)
		}
	}
	// At most one line a minute per address after the first.
	if lines := len(first) + len(again); lines > len(dead)+len(failed)/4 {
		t.Errorf("%d lines for %d failed attempts", lines, len(failed))
	}
	alone := logs.Records(t, testutil.MsgPrefix("no broker of the cluster is reachable: this broker serves sessions from its own registry"))
	if len(alone) != 1 || alone[0]["level"] != "WARN" {
		t.Errorf("deciding alone said %d times: %v", len(alone), alone)
	}
	if old := logs.Records(t, testutil.MsgPrefix("could not join any broker")); len(old) > 0 {
		t.Errorf("the multi-address line is still logged: %v", old)
	}
}

func (b *Broker) isReady() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ready
}

// When a -join address comes to life, the broker joins it and says so once.
func TestBroker_JoinRecoveryLogged(t *testing.T) {
	dead := deadAddrs(t, 1)
	logs := &testutil.LogBuffer{}
	b1 := startBroker(t, "b1", dead, func(c *Config) {
		c.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	waitUntil(t, waitLong, "2 join attempts", func() bool { return len(logs.Records(t, testutil.MsgPrefix("join attempt failed"))) >= 2 })
	cfg := LocalConfig("b2")
	cfg.BindAddr = dead[0]
	cfg.Logger = testLogger(t)
	b2, err := New(ctxT(t, waitLong), cfg)
	if err != nil {
		t.Skipf("the address was taken meanwhile: %v", err)
	}
	t.Cleanup(func() { b2.Close() })
	waitMembers(t, []*Broker{b1, b2}, 2)
	waitUntil(t, waitLong, "the recovery line", func() bool { return len(logs.Records(t, testutil.MsgPrefix("reached a broker to join"))) > 0 })
	rec := logs.Records(t, testutil.MsgPrefix("reached a broker to join"))
	if len(rec) != 1 || rec[0]["level"] != "INFO" || rec[0]["addr"] != dead[0] || rec[0]["failed_attempts"].(float64) < 2 {
		t.Fatalf("recovery: %v", rec)
	}
}

func TestOneLine(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"one line", "plain", "plain"},
		{"memberlist's one error", "1 error occurred:\n\t* Failed to join 127.0.0.1:1: dial tcp 127.0.0.1:1: connect: connection refused\n\n",
			"Failed to join 127.0.0.1:1: dial tcp 127.0.0.1:1: connect: connection refused"},
		{"memberlist's two errors", "2 errors occurred:\n\t* a\n\t* b\n\n", "a; b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := oneLine(errors.New(tt.in)); got != tt.want {
				t.Errorf("oneLine(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}
