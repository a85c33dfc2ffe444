package transport

import (
	"context"
	"sync"
	"testing"

	"google.golang.org/grpc"
)

// Options.DialOptions reach the connection: interceptors given there see
// every call made on it, and compose with the extra options of Dial.
func TestDial_OptionsInterceptors(t *testing.T) {
	addr := startServer(t, Options{}, &fakeReplication{GetFunc: fakeGet})
	var mu sync.Mutex
	var seen []string
	record := func(who, method string) {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, who+" "+method)
	}
	unary := func(who string) grpc.UnaryClientInterceptor {
		return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			record(who, method)
			return invoker(ctx, method, req, reply, cc, opts...)
		}
	}
	stream := func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		record("stream", method)
		return streamer(ctx, desc, cc, method, opts...)
	}
	o := Options{DialOptions: []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(unary("options")),
		grpc.WithChainStreamInterceptor(stream),
	}}
	cc, err := Dial(addr, o, grpc.WithChainUnaryInterceptor(unary("extra")), bufnet.DialOption())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	client := NewReplicationClient(cc)
	ctx := testContext(t)
	if _, err := client.Get(ctx, &GetRequest{Version: ProtocolVersion, Table: "products"}); err != nil {
		t.Fatalf("Get: %v", err)
	}
	s, err := client.Subscribe(ctx)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	_ = s.CloseSend()

	mu.Lock()
	defer mu.Unlock()
	want := []string{
		"options /" + ReplicationServiceName + "/Get",
		"extra /" + ReplicationServiceName + "/Get",
		"stream /" + ReplicationServiceName + "/Subscribe",
	}
	if len(seen) != len(want) {
		t.Fatalf("interceptors saw %q, want %q", seen, want)
	}
	for i := range want {
		if seen[i] != want[i] {
			t.Fatalf("interceptors saw %q, want %q", seen, want)
		}
	}
}
