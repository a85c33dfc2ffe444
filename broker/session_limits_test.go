package broker

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"google.golang.org/grpc"

	"github.com/replmesh/replmesh/transport"
)

// rawSession opens a Session stream with opts and sends nothing on it:
// a session in its handshake, for as long as the test keeps it. It
// returns the stream's first answer (or the error ending it) on the
// returned channel.
func rawSession(t *testing.T, addr string, opts transport.Options) <-chan error {
	t.Helper()
	cc, err := transport.Dial(addr, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := transport.NewBrokerClient(cc).Session(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan error, 1)
	var wg sync.WaitGroup
	wg.Go(func() {
		_, err := stream.Recv()
		out <- transport.FromStatus(err)
	})
	t.Cleanup(func() { cancel(); wg.Wait(); cc.Close() })
	return out
}

// waitRefused waits for the end of a raw session and checks that it was
// refused by a limit, naming want.
func waitRefused(t *testing.T, end <-chan error, want string) {
	t.Helper()
	select {
	case err := <-end:
		if !errors.Is(err, transport.ErrTooLarge) || !strings.Contains(err.Error(), want) {
			t.Fatalf("session ended with %v, want ResourceExhausted naming %q", err, want)
		}
	case <-time.After(waitLong):
		t.Fatalf("session not refused within %s", waitLong)
	}
}

// identityUsers returns the sessions of id in or waiting for their
// handshake.
func (b *Broker) identityUsers(id transport.Identity) int {
	b.shared.mu.Lock()
	defer b.shared.mu.Unlock()
	if t := b.shared.byID[id.String()]; t != nil {
		return t.users
	}
	return 0
}

// Sessions in their handshake are bounded: broker-wide, per identity, and
// by the registrations their identity's service may still make, all
// before their Register is read (the raw sessions here send none).
func TestSession_HandshakeLimits(t *testing.T) {
	t.Run("broker-wide slots", func(t *testing.T) {
		b := startBroker(t, "b1", nil, func(c *Config) {
			c.MaxPendingSessions, c.PendingSessionWait, c.RegisterTimeout = 1, 100*time.Millisecond, time.Hour
		})
		first := rawSession(t, b.GRPCAddr(), transport.Options{})
		waitUntil(t, waitLong, "a session in its handshake", func() bool {
			return b.metricValue(t, "replmesh_broker_sessions_pending") == 1
		})
		waitRefused(t, rawSession(t, b.GRPCAddr(), transport.Options{}), "at most 1 sessions in their handshake")
		if got := b.metricValue(t, "replmesh_broker_limit_refusals_total", "limit", "pending_sessions"); got != 1 {
			t.Fatalf("pending_sessions refusals counted %v, want 1", got)
		}
		select {
		case err := <-first:
			t.Fatalf("the session holding the slot ended: %v", err)
		default:
		}
	})
	t.Run("one handshake per identity", func(t *testing.T) {
		p := newTestPKI(t)
		b := startSecureBroker(t, p, func(c *Config) { c.PendingSessionWait, c.RegisterTimeout = time.Hour, time.Hour })
		id := svcID("stores", "stores-1")
		opts := p.opts(id)
		rawSession(t, b.GRPCAddr(), opts)
		rawSession(t, b.GRPCAddr(), opts)
		waitUntil(t, waitLong, "two sessions of the identity in or waiting for their handshake", func() bool { return b.identityUsers(id) == 2 })
		waitRefused(t, rawSession(t, b.GRPCAddr(), opts), "at most 2")
		if got := b.metricValue(t, "replmesh_broker_limit_refusals_total", "limit", "identity_sessions"); got != 1 {
			t.Fatalf("identity_sessions refusals counted %v, want 1", got)
		}
		// Another identity is not held back by this one.
		if _, err := connectAs(t, p, b.GRPCAddr(), svcID("stores", "stores-2"),
			transport.Register{Service: "stores", Instance: "stores-2", Addr: "127.0.0.1:7001", Owner: true, Tables: storesTables}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("service at its registration limit", func(t *testing.T) {
		p := newTestPKI(t)
		b := startSecureBroker(t, p, func(c *Config) { c.MaxRegistrations = 1 })
		first, err := connectAs(t, p, b.GRPCAddr(), svcID("stores", "stores-1"),
			transport.Register{Service: "stores", Instance: "stores-1", Addr: "127.0.0.1:7001", Owner: true, Tables: storesTables})
		if err != nil {
			t.Fatal(err)
		}
		waitRefused(t, rawSession(t, b.GRPCAddr(), p.opts(svcID("stores", "stores-2"))), "1 instances registered, at most 1")
		// The registered instance itself may open a session again (once
		// its first one ended: a live holder is never superseded).
		first.close()
		if _, err := connectAs(t, p, b.GRPCAddr(), svcID("stores", "stores-1"),
			transport.Register{Service: "stores", Instance: "stores-1", Addr: "127.0.0.1:7001", Owner: true, Tables: storesTables}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("new instances in their handshake count", func(t *testing.T) {
		p := newTestPKI(t)
		b := startSecureBroker(t, p, func(c *Config) { c.MaxRegistrations = 1; c.RegisterTimeout = time.Hour })
		id := svcID("stores", "stores-1")
		rawSession(t, b.GRPCAddr(), p.opts(id))
		waitUntil(t, waitLong, "stores-1 in its handshake", func() bool { return b.identityUsers(id) == 1 })
		waitRefused(t, rawSession(t, b.GRPCAddr(), p.opts(svcID("stores", "stores-2"))), "0 instances registered and 1 registering, at most 1")
		if got := b.metricValue(t, "replmesh_broker_limit_refusals_total", "limit", "registrations"); got != 1 {
			t.Fatalf("registrations refusals counted %v, want 1", got)
		}
	})
}

// The topologies pushed to sessions share the owner part of each service
// (one copy of the primary's tables, not one per session), and are equal
// to those the registry makes, through registrations, table changes and
// overrides.
func TestSession_TopologiesShared(t *testing.T) {
	b := startBroker(t, "b1", nil, nil)
	tables := func(n int) []transport.TableInfo {
		out := make([]transport.TableInfo, n)
		for i := range out {
			out[i] = transport.TableInfo{Table: fmt.Sprintf("t%03d", i), Head: uint64(i)}
		}
		return out
	}
	check := func(t *testing.T) {
		t.Helper()
		b.mu.Lock()
		defer b.mu.Unlock()
		var shared []transport.TableInfo
		for k := range b.sessions {
			rec := b.reg.inst(k)
			got, want := b.topologyLocked(rec), b.reg.topology(rec, b.brokers, b.rev, b.reg.ownerView)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("%s: topology %+v, the registry's %+v", k, got, want)
			}
			if k.Service != "stores" {
				continue
			}
			o := got.Owners[0].Tables
			if shared == nil {
				shared = o
			} else if len(o) > 0 && &o[0] != &shared[0] {
				t.Fatalf("%s: the primary's tables are a copy of their own", k)
			}
		}
	}
	p := mustConnect(t, b.GRPCAddr(), transport.Register{Service: "stores", Instance: "s1", Addr: "127.0.0.1:7001", Owner: true, Tables: tables(8)})
	p.waitTopo("s1 primary", func(tp *transport.Topology) bool { return tp.Role == transport.RolePrimary })
	steps := []struct {
		name string
		do   func()
	}{
		{"standbys", func() {
			for i := 2; i <= 4; i++ {
				mustConnect(t, b.GRPCAddr(), transport.Register{Service: "stores", Instance: fmt.Sprintf("s%d", i), Addr: fmt.Sprintf("127.0.0.1:700%d", i), Owner: true, Tables: tables(8)})
			}
		}},
		{"a consumer", func() {
			mustConnect(t, b.GRPCAddr(), transport.Register{Service: "web", Instance: "w1",
				Subscriptions: []transport.SubInfo{{Service: "stores", Table: "t001", Mode: "push"}}})
		}},
		{"the primary's tables change", func() {
			p.update(tables(9), nil)
			p.waitTopo("9 tables", func(tp *transport.Topology) bool { return len(owner(tp, "stores").Tables) == 9 })
		}},
		{"an override", func() {
			if _, err := b.SetMode(ctxT(t, waitLong), &transport.SetModeRequest{Version: transport.ProtocolVersion, Service: "stores", Table: "t001", Mode: "pull"}); err != nil {
				t.Fatal(err)
			}
			p.waitTopo("the override", func(tp *transport.Topology) bool { return tp.Overrides["stores/t001"] == "pull" })
		}},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			st.do()
			check(t)
		})
	}
}

// A standby registering the tables its primary lists keeps the primary's
// name strings, not copies of its own.
func TestShareTableNames(t *testing.T) {
	ref := []transport.TableInfo{{Table: "a", LogID: "la"}, {Table: "c", LogID: "lc"}, {Table: "e"}}
	dup := func(s string) string { return string([]byte(s)) }
	same := func(a, b string) bool { return unsafe.StringData(a) == unsafe.StringData(b) }
	tests := []struct {
		name   string
		dst    []transport.TableInfo
		shared []bool // per dst entry: its name is ref's string
	}{
		{"all", []transport.TableInfo{{Table: dup("a"), LogID: dup("la")}, {Table: dup("c"), LogID: dup("lc")}, {Table: dup("e")}}, []bool{true, true, true}},
		{"some", []transport.TableInfo{{Table: dup("b")}, {Table: dup("c"), LogID: dup("other")}, {Table: dup("d")}}, []bool{false, true, false}},
		{"none", []transport.TableInfo{{Table: dup("f")}}, []bool{false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := make([]transport.TableInfo, len(tt.dst))
			copy(want, tt.dst)
			shareTableNames(tt.dst, ref)
			if !reflect.DeepEqual(tt.dst, want) {
				t.Fatalf("values changed: %+v, want %+v", tt.dst, want)
			}
			for i, d := range tt.dst {
				got := false
				for _, r := range ref {
					got = got || same(d.Table, r.Table)
				}
				if got != tt.shared[i] {
					t.Fatalf("%s: shared %v, want %v", d.Table, got, tt.shared[i])
				}
				if d.LogID == "lc" && !same(d.LogID, ref[1].LogID) {
					t.Fatalf("%s: log id not shared", d.Table)
				}
			}
		})
	}
}

// fakeSessionStream is a Session stream in process, whose Send can be held.
type fakeSessionStream struct {
	grpc.ServerStream // nil: only the methods below are called
	ctx               context.Context
	in                chan *transport.SessionRequest
	out               chan *transport.SessionResponse
	hold              atomic.Pointer[chan struct{}] // Send waits until it is closed
	held              atomic.Int32                  // Sends waiting
}

func (f *fakeSessionStream) Context() context.Context { return f.ctx }

func (f *fakeSessionStream) Recv() (*transport.SessionRequest, error) {
	select {
	case r := <-f.in:
		return r, nil
	case <-f.ctx.Done():
		return nil, f.ctx.Err()
	}
}

func (f *fakeSessionStream) Send(m *transport.SessionResponse) error {
	if h := f.hold.Load(); h != nil {
		f.held.Add(1)
		<-*h
		f.held.Add(-1)
	}
	select {
	case f.out <- m:
	default: // the test reads what it needs
	}
	return nil
}

// The 284 registrations accepted against a limit of 256: under
// the flood, session handlers stuck sending (flow control) or waiting for
// the broker's lock did not take their components' heartbeats, ended the
// sessions as silent, and the instances' leases lapsed, freeing slots.
// A component whose frames keep arriving while its handler is busy is
// not silent.
func TestSession_BusyHandlerIsNotSilence(t *testing.T) {
	b := startBroker(t, "b1", nil, func(c *Config) { c.silence = 200 * time.Millisecond })
	ctx, cancel := context.WithCancel(context.Background())
	st := &fakeSessionStream{ctx: ctx, in: make(chan *transport.SessionRequest, 1024), out: make(chan *transport.SessionResponse, 1024)}
	end := make(chan error, 1)
	go func() { end <- b.Session(st) }()
	defer func() {
		cancel()
		if err := <-end; !errors.Is(err, context.Canceled) {
			t.Errorf("session ended with %v, want the test's cancel", err)
		}
	}()
	st.in <- &transport.SessionRequest{Kind: transport.SessionRegister, Register: &transport.Register{Version: transport.ProtocolVersion,
		Service: "stores", Instance: "s1", Addr: "127.0.0.1:7001", Owner: true}}
	if f := <-st.out; f.Kind != transport.SessionTopology {
		t.Fatalf("first frame kind %d", f.Kind)
	}
	hold := make(chan struct{})
	st.hold.Store(&hold)
	ping := int64(0)
	beat := func() {
		ping++
		st.in <- &transport.SessionRequest{Kind: transport.SessionHeartbeat, Ping: ping}
	}
	beat() // answered with a heartbeat: the handler is held in Send
	waitUntil(t, waitLong, "the handler held in Send", func() bool { return st.held.Load() == 1 })
	// The component keeps beating for several silence cutoffs while the
	// handler is held (a pace, not a synchronization).
	for range 20 {
		beat()
		time.Sleep(50 * time.Millisecond)
	}
	st.hold.Store(nil)
	close(hold)
	beat()
	want := ping
	deadline := time.After(waitLong)
	for {
		select {
		case f := <-st.out:
			if f.Pong == want {
				return
			}
		case err := <-end:
			end <- err
			t.Fatalf("session ended: %v", err)
		case <-deadline:
			t.Fatalf("no pong %d within %s", want, waitLong)
		}
	}
}
