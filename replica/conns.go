package replica

import (
	"fmt"
	"time"

	"github.com/replmesh/replmesh/transport"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// peerKind is who the component expects at an address it dials: an
// instance of a service (an owner), or a broker ("").
type peerKind struct {
	addr    string
	service string // the owner's service; "" for a broker
}

// ownerPeer is an instance of service at addr.
func ownerPeer(addr, service string) peerKind { return peerKind{addr: addr, service: service} }

// brokerPeer is a broker at addr.
func brokerPeer(addr string) peerKind { return peerKind{addr: addr} }

// check is what the dial's TLS handshake requires of the peer's identity
// (Config.TLS): an instance of the owner's service, or a broker identity
// (a service identity could otherwise pose as a broker and hand out
// topologies).
func (p peerKind) check() transport.IdentityCheck {
	if p.service != "" {
		return transport.ExpectService(p.service)
	}
	return transport.ExpectRole(transport.RoleBroker)
}

// conn returns the shared client connection to the peer p: one per
// address and expected identity.
func (c *Component) conn(p peerKind) (*grpc.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.connLocked(p)
}

// connLocked is conn with c.mu held.
func (c *Component) connLocked(p peerKind) (*grpc.ClientConn, error) {
	if c.closed {
		return nil, ErrClosed
	}
	if cc, ok := c.conns[p]; ok {
		return cc, nil
	}
	if err := c.checkDial(p.addr); err != nil {
		return nil, fmt.Errorf("dial %s: %w", p.addr, err)
	}
	// gRPC's own connection backoff (1s growing to 120s by default) would
	// otherwise decide when a restarted owner is noticed, whatever
	// ReconnectMin/Max say: bind it to them.
	opts := []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
		Backoff: backoff.Config{
			BaseDelay:  c.cfg.ReconnectMin,
			Multiplier: 1.6,
			Jitter:     0.2,
			MaxDelay:   c.cfg.ReconnectMax,
		},
		MinConnectTimeout: 20 * time.Second,
	})}
	if p.service != "" {
		opts = append(opts, ownerWindows...)
	}
	cc, err := transport.Dial(p.addr, c.dialOptions(p.check()), opts...)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", p.addr, err)
	}
	c.conns[p] = cc
	return cc, nil
}

// The flow control windows of a connection to an owner: what the owner
// may send on a stream (and on the connection, all streams together)
// before this replica has read it. gRPC's default starts at 64 KiB and
// grows with its bandwidth estimate, which a fresh connection has not
// made yet; a restarted replica catching up on its missed changes then
// had the owner wait for window updates, frame after frame, 256 KiB
// catch-up frames passing 64 KiB at a time. With a window of several
// frames the owner sends on while the replica applies the frame before
// (W3's restarted reader waited 32 ms for frames in place of 45 ms, of a
// catch-up of some 95 ms). The cost is memory only when the replica falls
// behind: at most streamWindow bytes received and not yet read per
// stream, connWindow per connection. The windows are static (gRPC's
// bandwidth estimate is off): a link of more than streamWindow per round
// trip (4 MiB in 50 ms: 80 MB/s) is not filled by one stream.
const (
	streamWindow = 4 << 20
	connWindow   = 16 << 20
)

var ownerWindows = []grpc.DialOption{grpc.WithInitialWindowSize(streamWindow), grpc.WithInitialConnWindowSize(connWindow)}
