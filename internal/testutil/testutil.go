// Package testutil holds the helpers the test suites of several packages
// share: a logger that writes to t.Log, condition polling with a deadline
// (tests wait for conditions, never sleep), a context bounded by the
// test, loopback addresses a process can come back on, a locked buffer for
// logs and output, Child: a child process (the test binary re-executed
// in a role, or any command) read line by line, waited on, signalled and
// killed, and BinDir: the binaries a package's tests build once and run.
package testutil

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/replmesh/replmesh/internal/freeport"
)

// Logger returns a slog logger that writes to t.Log at Warn level and
// above (at Info or Debug when REPLMESH_TEST_LOG says "info" or "debug"). Lines logged after the test and its cleanups have finished (a
// background goroutine winding down) are dropped instead of reaching t.Log,
// which would panic.
func Logger(t testing.TB) *slog.Logger {
	w := &writer{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.over = true; w.mu.Unlock() })
	level := slog.LevelWarn
	switch os.Getenv("REPLMESH_TEST_LOG") {
	case "info":
		level = slog.LevelInfo
	case "debug":
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

type writer struct {
	t    testing.TB
	mu   sync.Mutex
	over bool
}

func (w *writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.over {
		w.t.Log(string(bytes.TrimRight(p, "\n")))
	}
	return len(p), nil
}

// WaitUntil polls cond every few milliseconds until it is true, and fails
// the test naming what when d passes first.
func WaitUntil(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// Context returns a context that ends after d or with the test.
func Context(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// FreeAddr returns a 127.0.0.1 address free now, below the kernel's
// ephemeral range (see internal/freeport): for a process the test stops
// and starts again on the same address, which a port from 127.0.0.1:0
// cannot promise (an outgoing connection may take it meanwhile).
func FreeAddr(t testing.TB) string {
	t.Helper()
	addr, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// LogBuffer collects what a logger or a process writes, safely while it
// runs: a slog.NewJSONHandler target whose records a test can read back,
// or a child process's stdout or stderr.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *LogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Records parses the JSON records written so far (one per line, as
// slog.NewJSONHandler writes them) and returns those whose message
// satisfies match.
func (b *LogBuffer) Records(t testing.TB, match func(msg string) bool) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(b.String(), "\n") {
		if line == "" {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if msg, _ := rec["msg"].(string); match(msg) {
			out = append(out, rec)
		}
	}
	return out
}

// Msg matches a message equal to one of msgs.
func Msg(msgs ...string) func(string) bool {
	return func(m string) bool { return slices.Contains(msgs, m) }
}

// MsgPrefix matches a message that starts with prefix.
func MsgPrefix(prefix string) func(string) bool {
	return func(m string) bool { return strings.HasPrefix(m, prefix) }
}
