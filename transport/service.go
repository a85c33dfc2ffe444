package transport

import (
	"context"

	"google.golang.org/grpc"
)

// ReplicationServiceName is the full gRPC name of the replication service.
const ReplicationServiceName = "replmesh.v1.Replication"

// SubscribeServer is the owner's end of a Subscribe stream.
type SubscribeServer = grpc.BidiStreamingServer[ConsumerFrame, OwnerFrame]

// SubscribeClient is the consumer's end of a Subscribe stream.
type SubscribeClient = grpc.BidiStreamingClient[ConsumerFrame, OwnerFrame]

// ReplicationServer is implemented by a component that owns tables.
// Handlers return plain errors wrapping the sentinels of this package; the
// service descriptor turns them into gRPC status errors.
type ReplicationServer interface {
	// Subscribe serves one consumer of one table until the stream ends.
	Subscribe(SubscribeServer) error
	// Get reads keys at the owner's current seq.
	Get(context.Context, *GetRequest) (*GetResponse, error)
	// Digest hashes the table's rows at the owner's current seq.
	Digest(context.Context, *DigestRequest) (*DigestResponse, error)
}

// RegisterReplicationServer registers srv on s.
func RegisterReplicationServer(s grpc.ServiceRegistrar, srv ReplicationServer) {
	s.RegisterService(&ReplicationServiceDesc, srv)
}

// ReplicationServiceDesc is the hand-written descriptor of the replication
// service (no protobuf: messages are msgpack, see Codec).
var ReplicationServiceDesc = grpc.ServiceDesc{
	ServiceName: ReplicationServiceName,
	HandlerType: (*ReplicationServer)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "Get", Handler: getHandler},
		{MethodName: "Digest", Handler: digestHandler},
		{MethodName: "Keys", Handler: keysHandler}, // served by a KeysServer (keys.go)
	},
	Streams: []grpc.StreamDesc{
		{StreamName: "Subscribe", Handler: subscribeHandler, ServerStreams: true, ClientStreams: true},
	},
	Metadata: "replmesh/transport",
}

func subscribeHandler(srv any, stream grpc.ServerStream) error {
	return StatusError(srv.(ReplicationServer).Subscribe(&serverStream[ConsumerFrame, OwnerFrame]{ServerStream: stream}))
}

// decodeRequest receives one request through dec (a handler's decoder or a
// stream's RecvMsg) and decodes it into in, so that a malformed request
// fails with ErrBadRequest (InvalidArgument) rather than gRPC's Internal.
func decodeRequest(dec func(any) error, in any) error {
	var raw rawMessage
	if err := dec(&raw); err != nil {
		return err
	}
	return Unmarshal(raw, in)
}

// serverStream is the server end of a bidi stream; Recv decodes each
// request with decodeRequest.
type serverStream[Req, Res any] struct{ grpc.ServerStream }

func (s *serverStream[Req, Res]) Recv() (*Req, error) {
	in := new(Req)
	if err := decodeRequest(s.ServerStream.RecvMsg, in); err != nil {
		return nil, err
	}
	return in, nil
}

func (s *serverStream[Req, Res]) Send(m *Res) error { return s.ServerStream.SendMsg(m) }

func getHandler(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
	in := new(GetRequest)
	if err := decodeRequest(dec, in); err != nil {
		return nil, StatusError(err)
	}
	out, err := srv.(ReplicationServer).Get(ctx, in)
	return out, StatusError(err)
}

func digestHandler(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
	in := new(DigestRequest)
	if err := decodeRequest(dec, in); err != nil {
		return nil, StatusError(err)
	}
	out, err := srv.(ReplicationServer).Digest(ctx, in)
	return out, StatusError(err)
}

// ReplicationClient calls the replication service of one owner.
type ReplicationClient struct {
	cc grpc.ClientConnInterface
}

// NewReplicationClient returns a client over cc (see Dial).
func NewReplicationClient(cc grpc.ClientConnInterface) *ReplicationClient {
	return &ReplicationClient{cc: cc}
}

// Subscribe opens a raw Subscribe stream: the caller sends Open first,
// checks the Start and maps the stream's status errors itself (FromStatus).
// OpenSubscribe does all three; prefer it.
func (c *ReplicationClient) Subscribe(ctx context.Context, opts ...grpc.CallOption) (SubscribeClient, error) {
	s, err := c.cc.NewStream(ctx, &ReplicationServiceDesc.Streams[0], "/"+ReplicationServiceName+"/Subscribe", opts...)
	if err != nil {
		return nil, FromStatus(err)
	}
	return &grpc.GenericClientStream[ConsumerFrame, OwnerFrame]{ClientStream: s}, nil
}

// Get performs a live read on the owner.
func (c *ReplicationClient) Get(ctx context.Context, in *GetRequest, opts ...grpc.CallOption) (*GetResponse, error) {
	out := new(GetResponse)
	if err := c.cc.Invoke(ctx, "/"+ReplicationServiceName+"/Get", in, out, opts...); err != nil {
		return nil, FromStatus(err)
	}
	return out, nil
}

// Digest asks the owner for the digest of a table.
func (c *ReplicationClient) Digest(ctx context.Context, in *DigestRequest, opts ...grpc.CallOption) (*DigestResponse, error) {
	out := new(DigestResponse)
	if err := c.cc.Invoke(ctx, "/"+ReplicationServiceName+"/Digest", in, out, opts...); err != nil {
		return nil, FromStatus(err)
	}
	return out, nil
}
