package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// wiretap is a TCP forwarder put between a consumer and its owner. It
// counts what crosses it from the owner to the consumer: bytes (everything
// on the TCP stream: gRPC messages, HTTP/2 framing, flow control, pings),
// HTTP/2 frames, and gRPC messages (the length-prefixed messages inside
// DATA frames: one per OwnerFrame the owner sends — change batches, pull
// deltas, heartbeats, snapshot frames). It reads the plaintext HTTP/2 the
// transport speaks without TLS; with TLS only the byte count would mean
// anything.
//
// (internal/faultproxy counts bytes too, but gives no access to them, and
// the messages can only be counted from the bytes.)
type wiretap struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool

	down wireCount // owner -> consumer, over all connections
}

// wireCount is what the tap has seen in the owner -> consumer direction.
type wireCount struct {
	bytes, frames, messages atomic.Int64
}

// wireSnapshot is a wireCount read at one moment.
type wireSnapshot struct {
	Bytes, Frames, Messages int64
}

func (s wireSnapshot) sub(o wireSnapshot) wireSnapshot {
	return wireSnapshot{Bytes: s.Bytes - o.Bytes, Frames: s.Frames - o.Frames, Messages: s.Messages - o.Messages}
}

// newWiretap listens on 127.0.0.1 (a free port) and forwards every
// connection to target.
func newWiretap(target string) (*wiretap, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("wiretap: %w", err)
	}
	w := &wiretap{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	w.wg.Add(1)
	go w.acceptLoop()
	return w, nil
}

// Addr is where the consumer connects instead of the owner.
func (w *wiretap) Addr() string { return w.ln.Addr().String() }

// Down returns the owner -> consumer counts so far.
func (w *wiretap) Down() wireSnapshot {
	return wireSnapshot{Bytes: w.down.bytes.Load(), Frames: w.down.frames.Load(), Messages: w.down.messages.Load()}
}

// Close stops accepting, closes every connection and waits for the tap's
// goroutines.
func (w *wiretap) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.closed = true
	for c := range w.conns {
		_ = c.Close()
	}
	w.mu.Unlock()
	err := w.ln.Close()
	w.wg.Wait()
	return err
}

// track registers c for Close; false when the tap is closed already.
func (w *wiretap) track(c net.Conn) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		_ = c.Close()
		return false
	}
	w.conns[c] = struct{}{}
	return true
}

func (w *wiretap) untrack(c net.Conn) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.conns, c)
}

func (w *wiretap) acceptLoop() {
	defer w.wg.Done()
	for {
		c, err := w.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if !w.track(c) {
			return
		}
		w.wg.Add(1)
		go w.serve(c)
	}
}

func (w *wiretap) serve(client net.Conn) {
	defer w.wg.Done()
	defer w.untrack(client)
	defer client.Close()
	server, err := net.Dial("tcp", w.target)
	if err != nil {
		return
	}
	if !w.track(server) {
		return
	}
	defer w.untrack(server)
	defer server.Close()
	var inner sync.WaitGroup
	inner.Go(func() {
		_, _ = io.Copy(server, client)
		_ = server.Close()
	})
	p := newH2Parser()
	buf := make([]byte, 64<<10)
	for {
		n, err := server.Read(buf)
		if n > 0 {
			frames, msgs := p.feed(buf[:n])
			w.down.frames.Add(int64(frames))
			w.down.messages.Add(int64(msgs))
			if _, werr := client.Write(buf[:n]); werr != nil {
				break
			}
			w.down.bytes.Add(int64(n))
		}
		if err != nil {
			break
		}
	}
	_ = client.Close()
	inner.Wait()
}

// HTTP/2 framing (RFC 9113, section 4.1): a 9-byte header (24-bit payload
// length, type, flags, 31-bit stream id), then the payload. gRPC sends each
// message as a 5-byte prefix (compressed flag, 32-bit length) and the
// message, cut into DATA frames of its stream at any point.
const (
	h2HeaderLen     = 9
	h2TypeData      = 0x0
	h2TypeRSTStream = 0x3
	h2FlagEndStream = 0x1
	h2FlagPadded    = 0x8
	grpcPrefixLen   = 5
)

// h2Parser counts HTTP/2 frames and gRPC messages in one direction of one
// connection, fed the bytes in whatever pieces they arrive.
type h2Parser struct {
	hdr     [h2HeaderLen]byte
	hdrN    int
	need    int // payload bytes of the current frame still to come
	ftype   byte
	flags   byte
	stream  uint32
	payload []byte // the current DATA frame's payload
	streams map[uint32]*grpcStream
}

// grpcStream is the message framing state of one HTTP/2 stream.
type grpcStream struct {
	prefix  [grpcPrefixLen]byte
	prefixN int
	body    int // bytes of the current message still to come
}

func newH2Parser() *h2Parser { return &h2Parser{streams: map[uint32]*grpcStream{}} }

// feed consumes b and returns the frames completed and the gRPC messages
// begun in it.
func (p *h2Parser) feed(b []byte) (frames, msgs int) {
	for len(b) > 0 {
		if p.hdrN < h2HeaderLen {
			n := copy(p.hdr[p.hdrN:], b)
			p.hdrN += n
			b = b[n:]
			if p.hdrN < h2HeaderLen {
				return frames, msgs
			}
			h := p.hdr
			p.need = int(h[0])<<16 | int(h[1])<<8 | int(h[2])
			p.ftype, p.flags = h[3], h[4]
			p.stream = binary.BigEndian.Uint32(h[5:9]) & 0x7fffffff
			p.payload = p.payload[:0]
		}
		n := min(p.need, len(b))
		if p.ftype == h2TypeData {
			p.payload = append(p.payload, b[:n]...)
		}
		p.need -= n
		b = b[n:]
		if p.need == 0 {
			frames++
			msgs += p.endFrame()
			p.hdrN = 0
		}
	}
	return frames, msgs
}

// endFrame handles a complete frame and returns the messages begun in it.
func (p *h2Parser) endFrame() int {
	switch p.ftype {
	case h2TypeData:
		data := p.payload
		if p.flags&h2FlagPadded != 0 && len(data) > 0 {
			pad := int(data[0])
			data = data[1:]
			data = data[:max(0, len(data)-pad)]
		}
		s := p.streams[p.stream]
		if s == nil {
			s = &grpcStream{}
			p.streams[p.stream] = s
		}
		msgs := s.feed(data)
		if p.flags&h2FlagEndStream != 0 {
			delete(p.streams, p.stream)
		}
		return msgs
	case h2TypeRSTStream:
		delete(p.streams, p.stream)
	}
	return 0
}

// feed consumes a DATA frame's data and returns the messages begun in it.
func (s *grpcStream) feed(b []byte) (msgs int) {
	for len(b) > 0 {
		if s.body > 0 {
			n := min(s.body, len(b))
			s.body -= n
			b = b[n:]
			continue
		}
		n := copy(s.prefix[s.prefixN:], b)
		s.prefixN += n
		b = b[n:]
		if s.prefixN == grpcPrefixLen {
			msgs++
			s.body = int(binary.BigEndian.Uint32(s.prefix[1:]))
			s.prefixN = 0
		}
	}
	return msgs
}
