// Package faultproxy is a TCP proxy for tests that breaks the links going
// through it on demand: it resets every open connection (CutAll), holds
// every byte and every new connection (Pause, a blackhole until Resume),
// and can be pointed at a new target (SetTarget). It also makes a link slow
// (SetDelay: one-way latency; SetBandwidth: a byte rate per direction) and
// counts the bytes it forwards (Bytes).
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
	"time"
)

// A proxied connection reads at most bufSize bytes at a time and queues at
// most queueLen such chunks per direction for delivery (they wait there for
// a pause to end, for their delay, or for bandwidth); beyond that the
// proxy stops reading, the sender's kernel buffers fill and it blocks.
const (
	bufSize  = 32 << 10
	queueLen = 64
	// maxBurst bounds one write under a bandwidth limit, so that a limited
	// link trickles instead of sending a whole chunk at once.
	maxBurst = 4 << 10
)

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

	delay atomic.Int64 // one-way latency in nanoseconds (SetDelay)
	up    direction    // client -> target
	down  direction    // target -> client
}

// direction is the bandwidth limit and byte count of one direction of
// every link of a proxy.
type direction struct {
	bytes atomic.Int64

	mu   sync.Mutex
	rate int64     // bytes per second; 0: unlimited
	next time.Time // when the next byte may be sent under rate
}

// reserve books n bytes and returns when they may be sent.
func (d *direction) reserve(n int) time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	if d.rate <= 0 {
		return now
	}
	start := d.next
	if start.Before(now) {
		start = now
	}
	d.next = start.Add(time.Duration(float64(n) / float64(d.rate) * float64(time.Second)))
	return start
}

func (d *direction) limited() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.rate > 0
}

func (d *direction) setRate(r int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.rate = max(r, 0)
	d.next = time.Time{}
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

// SetDelay delays every byte by d in each direction (one-way latency; a
// round trip takes 2d more). Bytes already queued keep the delay they were
// read with. 0 removes the delay.
func (p *Proxy) SetDelay(d time.Duration) { p.delay.Store(int64(max(d, 0))) }

// Delay returns the one-way latency set by SetDelay.
func (p *Proxy) Delay() time.Duration { return time.Duration(p.delay.Load()) }

// SetBandwidth limits each direction (all links of the proxy together) to
// bytesPerSec; 0 removes the limit.
func (p *Proxy) SetBandwidth(bytesPerSec int64) {
	p.up.setRate(bytesPerSec)
	p.down.setRate(bytesPerSec)
}

// Bandwidth returns the limit set by SetBandwidth (0: none).
func (p *Proxy) Bandwidth() int64 {
	p.up.mu.Lock()
	defer p.up.mu.Unlock()
	return p.up.rate
}

// Bytes returns how many bytes the proxy has delivered from clients to the
// target (up) and back (down), over all links since it started.
func (p *Proxy) Bytes() (up, down int64) { return p.up.bytes.Load(), p.down.bytes.Load() }

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
		p.pump(l, s, l.client, &p.up)
	}()
	p.pump(l, l.client, s, &p.down)
	wg.Wait()
}

// chunk is one read of a link, queued for delivery.
type chunk struct {
	b   []byte
	at  time.Time // when it was read
	eof bool      // src ended in order: half-close dst
}

// pump copies src to dst: it reads chunks and queues them for deliver. An
// orderly end of src half-closes dst (after the queued bytes); any failure
// resets the whole link.
func (p *Proxy) pump(l *link, dst, src net.Conn, dir *direction) {
	q := make(chan chunk, queueLen)
	delivered := make(chan struct{})
	go func() {
		defer close(delivered)
		p.deliver(l, dst, q, dir)
	}()
	defer func() {
		close(q)
		<-delivered
	}()
	for {
		buf := make([]byte, bufSize)
		n, err := src.Read(buf)
		if n > 0 {
			select {
			case q <- chunk{b: buf[:n], at: time.Now()}:
			case <-l.ctx.Done():
				return
			}
		}
		if errors.Is(err, io.EOF) {
			select {
			case q <- chunk{eof: true}:
			case <-l.ctx.Done():
			}
			return
		}
		if err != nil {
			l.close(true)
			return
		}
	}
}

// deliver writes the queued chunks to dst, each after its delay, while the
// proxy is not paused, within the bandwidth of dir.
func (p *Proxy) deliver(l *link, dst net.Conn, q <-chan chunk, dir *direction) {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	wait := func(until time.Time) bool {
		d := time.Until(until)
		if d <= 0 {
			return true
		}
		if timer == nil {
			timer = time.NewTimer(d)
		} else {
			timer.Reset(d)
		}
		select {
		case <-timer.C:
			return true
		case <-l.ctx.Done():
			return false
		case <-p.done:
			return false
		}
	}
	for c := range q {
		if c.eof {
			if tc, ok := dst.(*net.TCPConn); ok && tc.CloseWrite() == nil {
				return
			}
			l.close(true)
			return
		}
		if !wait(c.at.Add(p.Delay())) || !p.gate(l) {
			l.close(true)
			return
		}
		for b := c.b; len(b) > 0; {
			n := len(b)
			if dir.limited() {
				n = min(n, maxBurst)
				if !wait(dir.reserve(n)) {
					l.close(true)
					return
				}
			}
			if _, err := dst.Write(b[:n]); err != nil {
				l.close(true)
				return
			}
			dir.bytes.Add(int64(n))
			b = b[n:]
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
