package replica

import (
	"context"
	"sync/atomic"

	"google.golang.org/grpc/stats"
)

// connStreams counts the calls in flight on each connection to the
// replication server, to count when one reaches MaxConcurrentStreams (gRPC
// enforces the limit itself: a client past it waits, and the server sees
// nothing of it).
type connStreams struct {
	max uint32
	hit func() // called when a connection's calls reach max
}

type connStreamsKey struct{}

var _ stats.Handler = (*connStreams)(nil)

func (h *connStreams) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return context.WithValue(ctx, connStreamsKey{}, new(atomic.Int64))
}

func (h *connStreams) HandleConn(context.Context, stats.ConnStats) {}

func (h *connStreams) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }

func (h *connStreams) HandleRPC(ctx context.Context, s stats.RPCStats) {
	n, ok := ctx.Value(connStreamsKey{}).(*atomic.Int64)
	if !ok {
		return
	}
	switch s.(type) {
	case *stats.Begin:
		if n.Add(1) >= int64(h.max) {
			h.hit()
		}
	case *stats.End:
		n.Add(-1)
	}
}
