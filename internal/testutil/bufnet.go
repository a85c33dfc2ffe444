package testutil

import (
	"context"
	"fmt"
	"net"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/test/bufconn"
)

// bufSize is the buffer of each in-memory connection, each way: a writer
// blocks when it is full, as on a socket.
const bufSize = 1 << 20

// BufNet is an in-memory network for the tests that need a gRPC stream but
// not the network itself (grpc-go's bufconn): Listen gives a listener to
// serve on and its address, and a client made with DialOption reaches it
// by that address (transport.Dial passes the address through as it is).
// Keep real TCP, and the fault proxy, for the tests about the network.
// Safe for concurrent use; the zero value is ready.
type BufNet struct {
	mu        sync.Mutex
	listeners map[string]*bufconn.Listener
	n         int
}

// Listen returns a new listener on the network and its address. Closing
// it (a gRPC server's Stop does) makes its address unreachable.
func (b *BufNet) Listen() (net.Listener, string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.listeners == nil {
		b.listeners = map[string]*bufconn.Listener{}
	}
	b.n++
	addr := fmt.Sprintf("bufnet-%d", b.n)
	lis := bufconn.Listen(bufSize)
	b.listeners[addr] = lis
	return lis, addr
}

// DialOption makes a gRPC client dial the network's listeners by address.
// An address that no listener has is refused.
func (b *BufNet) DialOption() grpc.DialOption {
	return grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		b.mu.Lock()
		lis := b.listeners[addr]
		b.mu.Unlock()
		if lis == nil {
			return nil, fmt.Errorf("bufnet: no listener at %q", addr)
		}
		return lis.DialContext(ctx)
	})
}
