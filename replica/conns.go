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
	cc, err := transport.Dial(p.addr, c.dialOptions(p.check()), grpc.WithConnectParams(grpc.ConnectParams{
		Backoff: backoff.Config{
			BaseDelay:  c.cfg.ReconnectMin,
			Multiplier: 1.6,
			Jitter:     0.2,
			MaxDelay:   c.cfg.ReconnectMax,
		},
		MinConnectTimeout: 20 * time.Second,
	}))
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", p.addr, err)
	}
	c.conns[p] = cc
	return cc, nil
}
