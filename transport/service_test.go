package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/replmesh/replmesh/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeReplication is a ReplicationServer whose methods call its fields; a
// nil field answers ErrUnknownTable.
type fakeReplication struct {
	SubscribeFunc func(SubscribeServer) error
	GetFunc       func(context.Context, *GetRequest) (*GetResponse, error)
	DigestFunc    func(context.Context, *DigestRequest) (*DigestResponse, error)
}

func (f *fakeReplication) Subscribe(s SubscribeServer) error {
	if f.SubscribeFunc == nil {
		return ErrUnknownTable
	}
	return f.SubscribeFunc(s)
}

func (f *fakeReplication) Get(ctx context.Context, in *GetRequest) (*GetResponse, error) {
	if f.GetFunc == nil {
		return nil, ErrUnknownTable
	}
	return f.GetFunc(ctx, in)
}

func (f *fakeReplication) Digest(ctx context.Context, in *DigestRequest) (*DigestResponse, error) {
	if f.DigestFunc == nil {
		return nil, ErrUnknownTable
	}
	return f.DigestFunc(ctx, in)
}

// bufnet is the in-memory network of the tests: they need streams, not a
// network (dial it with bufnet.DialOption()).
var bufnet testutil.BufNet

// startServer serves srv on a fresh bufnet address until the test ends.
func startServer(t *testing.T, o Options, srv ReplicationServer) string {
	t.Helper()
	lis, addr := bufnet.Listen()
	s := NewServer(o)
	RegisterReplicationServer(s, srv)
	served := make(chan error, 1)
	go func() { served <- s.Serve(lis) }()
	t.Cleanup(func() {
		s.GracefulStop(time.Second)
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return addr
}

// dial returns a replication client of addr, closed when the test ends
// (before the server stops: cleanups run last-in first-out).
func dial(t *testing.T, addr string, o Options) (*ReplicationClient, *grpc.ClientConn) {
	t.Helper()
	cc, err := Dial(addr, o, bufnet.DialOption())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() {
		if err := cc.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return NewReplicationClient(cc), cc
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// table is the fake owner's data.
var table = map[string][]byte{"k1": []byte("v1"), "k2": {}}

func fakeGet(_ context.Context, in *GetRequest) (*GetResponse, error) {
	if err := CheckVersion(in.Version); err != nil {
		return nil, err
	}
	if in.Table != "products" {
		return nil, fmt.Errorf("get %q: %w", in.Table, ErrUnknownTable)
	}
	out := &GetResponse{Seq: 7, LogID: "log-1", Values: make([]Value, len(in.Keys))}
	for i, k := range in.Keys {
		v, ok := table[string(k)]
		out.Values[i] = Value{Found: ok, Value: v}
	}
	return out, nil
}

func TestReplication_Get(t *testing.T) {
	addr := startServer(t, Options{}, &fakeReplication{GetFunc: fakeGet})
	client, _ := dial(t, addr, Options{})
	ctx := testContext(t)

	t.Run("round trip", func(t *testing.T) {
		got, err := client.Get(ctx, &GetRequest{Version: ProtocolVersion, Table: "products",
			Keys: [][]byte{[]byte("k1"), []byte("missing"), []byte("k2")}})
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
		want := &GetResponse{Seq: 7, LogID: "log-1", Values: []Value{
			{Found: true, Value: []byte("v1")},
			{Found: false},
			{Found: true, Value: []byte{}},
		}}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("Get:\n got %+v\nwant %+v", got, want)
		}
	})
	t.Run("unknown table", func(t *testing.T) {
		_, err := client.Get(ctx, &GetRequest{Version: ProtocolVersion, Table: "nope"})
		if !errors.Is(err, ErrUnknownTable) {
			t.Fatalf("Get = %v, want it to wrap ErrUnknownTable", err)
		}
		var re *RemoteError
		if !errors.As(err, &re) || re.Msg != `get "nope": unknown table` {
			t.Errorf("Get = %#v, want a RemoteError carrying the handler's message", err)
		}
	})
	t.Run("protocol version", func(t *testing.T) {
		_, err := client.Get(ctx, &GetRequest{Version: ProtocolVersion + 1, Table: "products"})
		if !errors.Is(err, ErrProtocolVersion) {
			t.Fatalf("Get = %v, want it to wrap ErrProtocolVersion", err)
		}
	})
}

func TestReplication_Digest(t *testing.T) {
	want := &DigestResponse{LogID: "log-1", Seq: 7, Rows: 2, Hash: bytes.Repeat([]byte{0xab}, 32)}
	var gotReq atomic.Pointer[DigestRequest]
	addr := startServer(t, Options{}, &fakeReplication{
		DigestFunc: func(_ context.Context, in *DigestRequest) (*DigestResponse, error) {
			gotReq.Store(in)
			if in.Table != "products" {
				return nil, ErrUnknownTable
			}
			return want, nil
		},
	})
	client, _ := dial(t, addr, Options{})
	ctx := testContext(t)

	req := &DigestRequest{Version: ProtocolVersion, Table: "products", Start: []byte("a"), End: []byte("z")}
	got, err := client.Digest(ctx, req)
	if err != nil {
		t.Fatalf("Digest: %v", err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Digest:\n got %+v\nwant %+v", got, want)
	}
	if got := gotReq.Load(); !reflect.DeepEqual(got, req) {
		t.Errorf("server received %+v, want %+v", got, req)
	}

	_, err = client.Digest(ctx, &DigestRequest{Version: ProtocolVersion, Table: "nope"})
	if !errors.Is(err, ErrUnknownTable) {
		t.Fatalf("Digest = %v, want it to wrap ErrUnknownTable", err)
	}
}

// fakeSubscribe is a tiny owner: it answers Open with Start, a Pull with
// the table's changes, a Heartbeat with its head seq, and records Acks.
func fakeSubscribe(acked *atomic.Uint64) func(SubscribeServer) error {
	return func(s SubscribeServer) error {
		first, err := s.Recv()
		if err != nil {
			return err
		}
		if first.Kind != KindOpen {
			return fmt.Errorf("%w: first frame is %v", ErrBadRequest, first.Kind)
		}
		if err := first.Open.Validate(); err != nil {
			return err
		}
		if first.Open.Table != "products" {
			return fmt.Errorf("subscribe %q: %w", first.Open.Table, ErrUnknownTable)
		}
		head := uint64(len(sampleChanges()))
		if err := s.Send(&OwnerFrame{Kind: KindStart, HeadSeq: head, Start: &Start{
			Version: ProtocolVersion, LogID: "log-1", Epoch: 1, HeadSeq: head, FirstSeq: 1,
			Resume: first.Open.LogID == "log-1"}}); err != nil {
			return err
		}
		for {
			f, err := s.Recv()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			switch f.Kind {
			case KindPull:
				err = s.Send(&OwnerFrame{Kind: KindChanges, HeadSeq: head, Epoch: 1, Changes: sampleChanges()})
			case KindHeartbeat:
				err = s.Send(&OwnerFrame{Kind: KindHeartbeat, HeadSeq: head, Time: 42, Rate: f.Rate * 2})
			case KindAck:
				acked.Store(f.Seq)
			default:
				err = fmt.Errorf("%w: unexpected %v frame", ErrBadRequest, f.Kind)
			}
			if err != nil {
				return err
			}
		}
	}
}

func TestReplication_Subscribe(t *testing.T) {
	var acked atomic.Uint64
	addr := startServer(t, Options{}, &fakeReplication{SubscribeFunc: fakeSubscribe(&acked)})
	client, _ := dial(t, addr, Options{})

	t.Run("exchange", func(t *testing.T) {
		ctx := testContext(t)
		stream, err := client.Subscribe(ctx)
		if err != nil {
			t.Fatalf("Subscribe: %v", err)
		}
		send := func(f *ConsumerFrame) {
			t.Helper()
			if err := stream.Send(f); err != nil {
				t.Fatalf("send %v: %v", f.Kind, err)
			}
		}
		recv := func() *OwnerFrame {
			t.Helper()
			f, err := stream.Recv()
			if err != nil {
				t.Fatalf("recv: %v", FromStatus(err))
			}
			return f
		}

		open := sampleOpen()
		open.LogID = "log-1"
		send(&ConsumerFrame{Kind: KindOpen, Open: open})
		got := recv()
		want := &OwnerFrame{Kind: KindStart, HeadSeq: 4, Start: &Start{
			Version: ProtocolVersion, LogID: "log-1", Epoch: 1, HeadSeq: 4, FirstSeq: 1, Resume: true}}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("start:\n got %+v\nwant %+v", got, want)
		}

		send(&ConsumerFrame{Kind: KindPull})
		got = recv()
		want = &OwnerFrame{Kind: KindChanges, HeadSeq: 4, Epoch: 1, Changes: sampleChanges()}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("changes:\n got %+v\nwant %+v", got, want)
		}

		send(&ConsumerFrame{Kind: KindHeartbeat, Seq: 4, Rate: 1.5})
		got = recv()
		want = &OwnerFrame{Kind: KindHeartbeat, HeadSeq: 4, Time: 42, Rate: 3}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("heartbeat:\n got %+v\nwant %+v", got, want)
		}

		send(&ConsumerFrame{Kind: KindAck, Seq: 4})
		if err := stream.CloseSend(); err != nil {
			t.Fatalf("CloseSend: %v", err)
		}
		if f, err := stream.Recv(); err != io.EOF {
			t.Fatalf("recv after CloseSend = %+v, %v; want io.EOF", f, err)
		}
		// The handler has returned, so its last Ack is recorded.
		if got, want := acked.Load(), uint64(4); got != want {
			t.Errorf("acked %d, want %d", got, want)
		}
	})

	// Stream errors arrive as gRPC status errors from Recv; FromStatus maps
	// them back to the sentinels.
	errTests := []struct {
		name  string
		first *ConsumerFrame
		want  error
	}{
		{"unknown table", &ConsumerFrame{Kind: KindOpen, Open: &Open{Version: ProtocolVersion, Table: "nope"}}, ErrUnknownTable},
		{"protocol version", &ConsumerFrame{Kind: KindOpen, Open: &Open{Version: ProtocolVersion + 1, Table: "products"}}, ErrProtocolVersion},
		{"missing open", &ConsumerFrame{Kind: KindOpen}, ErrBadRequest},
		{"first frame not open", &ConsumerFrame{Kind: KindPull}, ErrBadRequest},
	}
	for _, tt := range errTests {
		t.Run(tt.name, func(t *testing.T) {
			stream, err := client.Subscribe(testContext(t))
			if err != nil {
				t.Fatalf("Subscribe: %v", err)
			}
			if err := stream.Send(tt.first); err != nil && err != io.EOF {
				t.Fatalf("send: %v", err)
			}
			_, err = stream.Recv()
			if err == nil || err == io.EOF {
				t.Fatalf("recv = %v, want an error", err)
			}
			if got := FromStatus(err); !errors.Is(got, tt.want) {
				t.Fatalf("FromStatus(%v) = %v, want it to wrap %v", err, got, tt.want)
			}
		})
	}
}

func TestReplication_MaxMessageSize(t *testing.T) {
	const limit = 64 << 10
	var calls atomic.Int64
	owner := &fakeReplication{
		GetFunc: func(ctx context.Context, in *GetRequest) (*GetResponse, error) {
			calls.Add(1)
			if in.Table == "big-answer" {
				return &GetResponse{Values: []Value{{Found: true, Value: make([]byte, 2*limit)}}}, nil
			}
			return fakeGet(ctx, in)
		},
	}
	strict, lax := Options{MaxMessageSize: limit}, Options{MaxMessageSize: 4 * limit}
	strictAddr := startServer(t, strict, owner)
	laxAddr := startServer(t, lax, owner)
	strictToStrict, _ := dial(t, strictAddr, strict)
	laxToStrict, _ := dial(t, strictAddr, lax)
	strictToLax, _ := dial(t, laxAddr, strict)
	ctx := testContext(t)

	bigReq := &GetRequest{Version: ProtocolVersion, Table: "products", Keys: [][]byte{make([]byte, 2*limit)}}
	bigAnswer := &GetRequest{Version: ProtocolVersion, Table: "big-answer"}
	smallReq := &GetRequest{Version: ProtocolVersion, Table: "products", Keys: [][]byte{[]byte("k1")}}
	checkServing := func(t *testing.T) {
		t.Helper()
		for _, c := range []*ReplicationClient{strictToStrict, laxToStrict, strictToLax} {
			got, err := c.Get(ctx, smallReq)
			if err != nil {
				t.Fatalf("next Get: %v", err)
			}
			if len(got.Values) != 1 || string(got.Values[0].Value) != "v1" {
				t.Fatalf("next Get = %+v, want v1", got)
			}
		}
	}

	tests := []struct {
		name      string
		client    *ReplicationClient
		req       *GetRequest
		wantCalls int64 // handler calls made by the refused request
	}{
		{"client refuses to send", strictToStrict, bigReq, 0},
		{"server refuses to receive", laxToStrict, bigReq, 0},
		{"server refuses to send", laxToStrict, bigAnswer, 1},
		{"client refuses to receive", strictToLax, bigAnswer, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := calls.Load()
			_, err := tt.client.Get(ctx, tt.req)
			if !errors.Is(err, ErrTooLarge) {
				t.Fatalf("Get = %v, want it to wrap ErrTooLarge", err)
			}
			var re *RemoteError
			if !errors.As(err, &re) || re.Code != "ResourceExhausted" {
				t.Errorf("Get = %#v, want a ResourceExhausted RemoteError", err)
			}
			if got := calls.Load() - before; got != tt.wantCalls {
				t.Errorf("handler called %d times, want %d", got, tt.wantCalls)
			}
			checkServing(t)
		})
	}

	t.Run("stream frame too large", func(t *testing.T) {
		var acked atomic.Uint64
		addr := startServer(t, strict, &fakeReplication{SubscribeFunc: fakeSubscribe(&acked)})
		client, _ := dial(t, addr, lax)
		stream, err := client.Subscribe(testContext(t))
		if err != nil {
			t.Fatalf("Subscribe: %v", err)
		}
		open := sampleOpen()
		open.Table = string(make([]byte, 2*limit))
		if err := stream.Send(&ConsumerFrame{Kind: KindOpen, Open: open}); err != nil && err != io.EOF {
			t.Fatalf("send: %v", err)
		}
		_, err = stream.Recv()
		if got := FromStatus(err); !errors.Is(got, ErrTooLarge) {
			t.Fatalf("recv: FromStatus(%v) = %v, want it to wrap ErrTooLarge", err, got)
		}
		// The next stream is served.
		stream, err = client.Subscribe(testContext(t))
		if err != nil {
			t.Fatalf("Subscribe: %v", err)
		}
		if err := stream.Send(&ConsumerFrame{Kind: KindOpen, Open: sampleOpen()}); err != nil {
			t.Fatalf("send: %v", err)
		}
		f, err := stream.Recv()
		if err != nil || f.Kind != KindStart {
			t.Fatalf("recv = %+v, %v; want a start frame", f, FromStatus(err))
		}
		if err := stream.CloseSend(); err != nil {
			t.Fatalf("CloseSend: %v", err)
		}
		if _, err := stream.Recv(); err != io.EOF {
			t.Fatalf("recv after CloseSend = %v, want io.EOF", err)
		}
	})
}

func TestServer_Health(t *testing.T) {
	addr := startServer(t, Options{}, &fakeReplication{})
	ctx := testContext(t)

	// An ordinary probe: a plain gRPC client speaking protobuf.
	t.Run("plain client", func(t *testing.T) {
		cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()), bufnet.DialOption())
		if err != nil {
			t.Fatalf("NewClient: %v", err)
		}
		defer cc.Close()
		resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatalf("Check: %v", err)
		}
		if got, want := resp.GetStatus(), healthpb.HealthCheckResponse_SERVING; got != want {
			t.Errorf("status %v, want %v", got, want)
		}
	})
	// A connection made by Dial forces msgpack on every call; a health check
	// over it asks for the proto codec, the one the health messages are for.
	t.Run("Dial with proto codec", func(t *testing.T) {
		_, cc := dial(t, addr, Options{})
		resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{},
			grpc.ForceCodecV2(protoCodec(t)))
		if err != nil {
			t.Fatalf("Check: %v", err)
		}
		if got, want := resp.GetStatus(), healthpb.HealthCheckResponse_SERVING; got != want {
			t.Errorf("status %v, want %v", got, want)
		}
	})
}

func protoCodec(t *testing.T) encoding.CodecV2 {
	t.Helper()
	c := encoding.GetCodecV2("proto")
	if c == nil {
		t.Fatal("proto codec is not registered")
	}
	return c
}
