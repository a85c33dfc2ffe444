package replica

import (
	"fmt"
	"time"

	"github.com/replmesh/replmesh/transport"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// conn returns the shared client connection to addr.
func (c *Component) conn(addr string) (*grpc.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	if cc, ok := c.conns[addr]; ok {
		return cc, nil
	}
	// gRPC's own connection backoff (1s growing to 120s by default) would
	// otherwise decide when a restarted owner is noticed, whatever
	// ReconnectMin/Max say: bind it to them.
	cc, err := transport.Dial(addr, c.cfg.Transport, grpc.WithConnectParams(grpc.ConnectParams{
		Backoff: backoff.Config{
			BaseDelay:  c.cfg.ReconnectMin,
			Multiplier: 1.6,
			Jitter:     0.2,
			MaxDelay:   c.cfg.ReconnectMax,
		},
		MinConnectTimeout: 20 * time.Second,
	}))
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	c.conns[addr] = cc
	return cc, nil
}
