// Package faultproxy is a TCP proxy for tests that breaks the links going
// through it on demand: it resets every open connection (CutAll), holds
// every byte and every new connection (Pause, a blackhole until Resume),
// and can be pointed at a new target (SetTarget).
//
// A test puts a Proxy between a client and a server and gives the client
// Addr instead of the server's address:
//
//	p, err := faultproxy.New(serverAddr)
//	if err != nil {
//		t.Fatal(err)
//	}
//	defer p.Close()
//	dial(p.Addr())
//	...
//	p.CutAll() // every open connection is reset; new ones are accepted
//
// It listens on 127.0.0.1 only. Every method is safe for concurrent use.
package faultproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// bufSize is the most a proxied connection holds in one direction while
// paused; beyond it the sender's kernel buffers fill and it blocks.
const bufSize = 32 << 10

// Proxy forwards the TCP connections it accepts to a target address.
type Proxy struct {
	ln   net.Listener
	done chan struct{} // closed by Close
	wg   sync.WaitGroup

	mu      sync.Mutex
	target  string
	running chan struct{} // closed while not paused; replaced by Pause
	links   map[*link]struct{}
	closed  bool

	held atomic.Int64 // goroutines held by a pause (for tests)
}

// link is one proxied connection: the accepted client side and, once
// dialed, the connection to the target.
type link struct {
	client net.Conn
	ctx    context.Context // ends when the link is torn down
	cancel context.CancelFunc

	mu     sync.Mutex
	server net.Conn
	once   sync.Once
}

// New starts a proxy on 127.0.0.1 (a free port) that forwards to target.
func New(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	running := make(chan struct{})
	close(running)
	p := &Proxy{
		ln:      ln,
		done:    make(chan struct{}),
		target:  target,
		running: running,
		links:   map[*link]struct{}{},
	}
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// Addr is the proxy's listening address; clients dial it instead of the
// target.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Target returns the address new connections are forwarded to.
func (p *Proxy) Target() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.target
}

// SetTarget makes new connections go to addr; open ones keep their target
// (CutAll moves them).
func (p *Proxy) SetTarget(addr string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.target = addr
}

// CutAll resets every open connection (both sides see a TCP reset) and
// keeps accepting new ones.
func (p *Proxy) CutAll() {
	p.mu.Lock()
	links := make([]*link, 0, len(p.links))
	for l := range p.links {
		links = append(links, l)
	}
	p.mu.Unlock()
	for _, l := range links {
		l.cut()
	}
}

// Conns returns the number of open connections.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.links)
}

// Pause turns the proxy into a blackhole: connections stay open but no byte
// is forwarded in either direction, and new connections are accepted by
// the kernel but neither dialed through nor answered, until Resume.
func (p *Proxy) Pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.running:
		p.running = make(chan struct{})
	default: // already paused
	}
}

// Resume ends a Pause: held bytes and connections go through.
func (p *Proxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.running:
	default:
		close(p.running)
	}
}

// Paused reports whether the proxy is paused.
func (p *Proxy) Paused() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.running:
		return false
	default:
		return true
	}
}

// Close stops accepting, resets every connection and waits for every
// goroutine of the proxy to end. It is safe to call more than once.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.done)
	p.mu.Unlock()
	err := p.ln.Close()
	p.CutAll()
	p.wg.Wait()
	return err
}

// gate blocks while the proxy is paused; false means l (or the proxy) is
// gone and the caller must stop.
func (p *Proxy) gate(l *link) bool {
	p.mu.Lock()
	running := p.running
	p.mu.Unlock()
	select {
	case <-running:
		return true
	default:
	}
	p.held.Add(1)
	defer p.held.Add(-1)
	select {
	case <-running:
		return true
	case <-l.ctx.Done():
		return false
	case <-p.done:
		return false
	}
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			select {
			case <-p.done:
				return
			default:
			}
			continue // a transient accept error (e.g. the client gave up)
		}
		l := &link{client: c}
		l.ctx, l.cancel = context.WithCancel(context.Background())
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			l.cut()
			return
		}
		p.links[l] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go p.serve(l)
	}
}

// serve dials the target for l (after any pause) and pumps bytes both
// ways. A side that closes in order is half-closed on the other side; a
// side that fails, or a cut, resets both.
func (p *Proxy) serve(l *link) {
	defer p.wg.Done()
	defer func() {
		l.close(false)
		p.mu.Lock()
		delete(p.links, l)
		p.mu.Unlock()
	}()
	if !p.gate(l) {
		return
	}
	var d net.Dialer
	s, err := d.DialContext(l.ctx, "tcp", p.Target())
	if err != nil {
		l.close(true) // the client sees a reset, as from a dead target
		return
	}
	l.mu.Lock()
	if l.ctx.Err() != nil { // cut while dialing
		l.mu.Unlock()
		reset(s)
		return
	}
	l.server = s
	l.mu.Unlock()

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		p.pump(l, s, l.client)
	}()
	p.pump(l, l.client, s)
	wg.Wait()
}

// pump copies src to dst, holding each chunk while the proxy is paused. An
// orderly end of src half-closes dst; any failure resets the whole link.
func (p *Proxy) pump(l *link, dst, src net.Conn) {
	buf := make([]byte, bufSize)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.gate(l) {
				l.close(true)
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				l.close(true)
				return
			}
		}
		if errors.Is(err, io.EOF) {
			if tc, ok := dst.(*net.TCPConn); ok && tc.CloseWrite() == nil {
				return
			}
			l.close(true)
			return
		}
		if err != nil {
			l.close(true)
			return
		}
	}
}

// cut resets both sides of l.
func (l *link) cut() { l.close(true) }

// close closes both sides of l, with a reset when hard; only the first call
// has an effect.
func (l *link) close(hard bool) {
	l.once.Do(func() {
		l.mu.Lock()
		l.cancel()
		s := l.server
		l.mu.Unlock()
		shut := func(c net.Conn) { _ = c.Close() }
		if hard {
			shut = reset
		}
		shut(l.client)
		if s != nil {
			shut(s)
		}
	})
}

// reset closes c with a TCP RST instead of an orderly FIN, as a crashed
// peer or a middlebox dropping the connection would.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}
