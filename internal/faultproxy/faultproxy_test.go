package faultproxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// echoServer answers each line it receives with name + ":" + line and
// counts the connections it accepted.
type echoServer struct {
	ln       net.Listener
	name     string
	accepted chan struct{}
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    []net.Conn
}

func newEchoServer(t *testing.T, name string) *echoServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &echoServer{ln: ln, name: name, accepted: make(chan struct{}, 100)}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			s.accepted <- struct{}{}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := io.WriteString(c, s.name+":"+line); err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		s.mu.Lock()
		for _, c := range s.conns {
			_ = c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *echoServer) addr() string { return s.ln.Addr().String() }

type client struct {
	c net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, addr string) *client {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return &client{c: c, r: bufio.NewReader(c)}
}

func (c *client) send(t *testing.T, line string) {
	t.Helper()
	if _, err := io.WriteString(c.c, line+"\n"); err != nil {
		t.Fatalf("write: %v", err)
	}
}

func (c *client) recv() (string, error) {
	s, err := c.r.ReadString('\n')
	return strings.TrimSuffix(s, "\n"), err
}

func (c *client) roundTrip(t *testing.T, line, want string) {
	t.Helper()
	c.send(t, line)
	got, err := c.recv()
	if err != nil || got != want {
		t.Fatalf("round trip %q: got %q, %v; want %q", line, got, err, want)
	}
}

func newProxy(t *testing.T, target string) *Proxy {
	t.Helper()
	p, err := New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// waitFor polls cond until it holds or 10 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestProxy_Forwards(t *testing.T) {
	srv := newEchoServer(t, "a")
	p := newProxy(t, srv.addr())
	if !strings.HasPrefix(p.Addr(), "127.0.0.1:") {
		t.Fatalf("Addr() = %q, want 127.0.0.1:port", p.Addr())
	}
	c := dial(t, p.Addr())
	for _, s := range []string{"x", "hello", strings.Repeat("z", 100<<10)} {
		c.roundTrip(t, s, "a:"+s)
	}
	// An orderly close by the client reaches the server as EOF, and the
	// server's close comes back as EOF, not a reset.
	if err := c.c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after close-write: err = %v, want EOF", err)
	}
	waitFor(t, "link to go away", func() bool { return p.Conns() == 0 })
}

func TestProxy_CutAll(t *testing.T) {
	srv := newEchoServer(t, "a")
	p := newProxy(t, srv.addr())
	c1, c2 := dial(t, p.Addr()), dial(t, p.Addr())
	c1.roundTrip(t, "1", "a:1")
	c2.roundTrip(t, "2", "a:2")
	if n := p.Conns(); n != 2 {
		t.Fatalf("Conns() = %d, want 2", n)
	}
	p.CutAll()
	for i, c := range []*client{c1, c2} {
		if _, err := c.recv(); err == nil || errors.Is(err, io.EOF) {
			t.Fatalf("client %d after CutAll: err = %v, want a reset", i, err)
		}
	}
	waitFor(t, "cut links to go away", func() bool { return p.Conns() == 0 })
	// The proxy keeps accepting.
	c3 := dial(t, p.Addr())
	c3.roundTrip(t, "3", "a:3")
}

func TestProxy_PauseResume(t *testing.T) {
	srv := newEchoServer(t, "a")
	p := newProxy(t, srv.addr())
	c := dial(t, p.Addr())
	c.roundTrip(t, "before", "a:before")
	<-srv.accepted

	p.Pause()
	if !p.Paused() {
		t.Fatal("Paused() = false after Pause")
	}
	// A byte sent while paused is held by the proxy...
	c.send(t, "held")
	// ...and a new connection is accepted but not dialed through.
	c2 := dial(t, p.Addr())
	c2.send(t, "late")
	waitFor(t, "the held chunk and the held connection", func() bool { return p.held.Load() == 2 })
	select {
	case <-srv.accepted:
		t.Fatal("a connection reached the target while paused")
	default:
	}

	p.Resume()
	if p.Paused() {
		t.Fatal("Paused() = true after Resume")
	}
	for _, x := range []struct {
		c    *client
		want string
	}{{c, "a:held"}, {c2, "a:late"}} {
		if got, err := x.c.recv(); err != nil || got != x.want {
			t.Fatalf("after Resume: got %q, %v; want %q", got, err, x.want)
		}
	}
	// Pause and Resume are idempotent.
	p.Resume()
	p.Pause()
	p.Pause()
	p.Resume()
	c.roundTrip(t, "after", "a:after")
}

func TestProxy_CutWhilePaused(t *testing.T) {
	srv := newEchoServer(t, "a")
	p := newProxy(t, srv.addr())
	c := dial(t, p.Addr())
	c.roundTrip(t, "1", "a:1")
	p.Pause()
	c.send(t, "held")
	waitFor(t, "the held chunk", func() bool { return p.held.Load() == 1 })
	p.CutAll()
	if _, err := c.recv(); err == nil || errors.Is(err, io.EOF) {
		t.Fatalf("after CutAll: err = %v, want a reset", err)
	}
	waitFor(t, "the held goroutine to leave", func() bool { return p.held.Load() == 0 })
	p.Resume()
	dial(t, p.Addr()).roundTrip(t, "2", "a:2")
}

func TestProxy_SetTarget(t *testing.T) {
	a, b := newEchoServer(t, "a"), newEchoServer(t, "b")
	p := newProxy(t, a.addr())
	c1 := dial(t, p.Addr())
	c1.roundTrip(t, "1", "a:1")
	p.SetTarget(b.addr())
	if p.Target() != b.addr() {
		t.Fatalf("Target() = %q, want %q", p.Target(), b.addr())
	}
	dial(t, p.Addr()).roundTrip(t, "2", "b:2")
	// An open connection keeps its target.
	c1.roundTrip(t, "3", "a:3")
}

func TestProxy_DeadTarget(t *testing.T) {
	srv := newEchoServer(t, "a")
	p := newProxy(t, srv.addr())
	// A port nobody listens on (the proxy's own port is taken first, so the
	// kernel cannot hand it out again here).
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.SetTarget(ln.Addr().String())
	_ = ln.Close()
	// The client sees a reset: at connect, when it comes in first on
	// loopback, or at its first read.
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		return
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a connection to a dead target stayed open (read: %v)", err)
	}
}

func TestProxy_Close(t *testing.T) {
	srv := newEchoServer(t, "a")
	p, err := New(srv.addr())
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, p.Addr())
	c.roundTrip(t, "1", "a:1")
	p.Pause()
	c2 := dial(t, p.Addr())
	c2.send(t, "held")
	waitFor(t, "the held connection", func() bool { return p.held.Load() == 1 })
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	for _, c := range []*client{c, c2} {
		if _, err := c.recv(); err == nil {
			t.Fatal("a connection survived Close")
		}
	}
	if _, err := net.Dial("tcp", p.Addr()); err == nil {
		t.Fatal("the proxy still accepts after Close")
	}
	// goleak (TestMain) checks that no goroutine of the proxy is left.
}

func TestProxy_Delay(t *testing.T) {
	srv := newEchoServer(t, "a")
	p := newProxy(t, srv.addr())
	c := dial(t, p.Addr())
	c.roundTrip(t, "warm", "a:warm")
	const d = 100 * time.Millisecond
	p.SetDelay(d)
	if p.Delay() != d {
		t.Fatalf("Delay() = %v, want %v", p.Delay(), d)
	}
	// A round trip crosses the proxy twice: at least 2d.
	start := time.Now()
	c.roundTrip(t, "slow", "a:slow")
	if took := time.Since(start); took < 2*d {
		t.Fatalf("round trip with a %v delay took %v, want >= %v", d, took, 2*d)
	}
	// Back to no delay: a round trip no longer waits 2d (loopback is far
	// faster; allow a loaded machine a wide margin).
	p.SetDelay(0)
	start = time.Now()
	c.roundTrip(t, "fast", "a:fast")
	if took := time.Since(start); took >= 2*d {
		t.Logf("round trip without delay took %v (a slow machine?)", took)
	}
}

func TestProxy_Bandwidth(t *testing.T) {
	srv := newEchoServer(t, "a")
	p := newProxy(t, srv.addr())
	c := dial(t, p.Addr())
	c.roundTrip(t, "warm", "a:warm")
	const rate = 200 << 10 // bytes per second
	p.SetBandwidth(rate)
	if p.Bandwidth() != rate {
		t.Fatalf("Bandwidth() = %d, want %d", p.Bandwidth(), rate)
	}
	// 100 KiB each way at 200 KiB/s: about half a second per direction,
	// the two overlapping at most partly.
	line := strings.Repeat("x", 100<<10)
	start := time.Now()
	c.roundTrip(t, line, "a:"+line)
	if took := time.Since(start); took < 400*time.Millisecond {
		t.Fatalf("100 KiB round trip at %d B/s took %v, want >= 400ms", rate, took)
	}
	p.SetBandwidth(0)
	c.roundTrip(t, "after", "a:after")
}

func TestProxy_Bytes(t *testing.T) {
	srv := newEchoServer(t, "a")
	p := newProxy(t, srv.addr())
	if up, down := p.Bytes(); up != 0 || down != 0 {
		t.Fatalf("Bytes() = %d, %d before any traffic", up, down)
	}
	c := dial(t, p.Addr())
	c.roundTrip(t, "hello", "a:hello") // 6 bytes up, 8 down
	waitFor(t, "the byte counts", func() bool {
		up, down := p.Bytes()
		return up == 6 && down == 8
	})
}

func TestProxy_DelayedBytesSurvivePause(t *testing.T) {
	srv := newEchoServer(t, "a")
	p := newProxy(t, srv.addr())
	c := dial(t, p.Addr())
	c.roundTrip(t, "1", "a:1")
	p.SetDelay(20 * time.Millisecond)
	p.Pause()
	c.send(t, "held")
	waitFor(t, "the held chunk", func() bool { return p.held.Load() == 1 })
	p.Resume()
	if got, err := c.recv(); err != nil || got != "a:held" {
		t.Fatalf("after Resume: got %q, %v; want a:held", got, err)
	}
	// An orderly close still travels behind the delayed bytes.
	c.send(t, "last")
	if err := c.c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if got, err := c.recv(); err != nil || got != "a:last" {
		t.Fatalf("got %q, %v; want a:last", got, err)
	}
	if _, err := c.recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after close-write: err = %v, want EOF", err)
	}
}
