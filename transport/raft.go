package transport

import (
	"context"

	"google.golang.org/grpc"
)

// RaftServiceName is the full gRPC name of the brokers' Raft service: the
// messages of the brokers' Raft group (go.etcd.io/raft) and its membership
// changes. Brokers serve it on their one gRPC server, beside the Broker
// service, with the same TLS; with identities required only broker
// identities may send Raft messages or join, and only admins remove a
// broker.
const RaftServiceName = "replmesh.v1.Raft"

// RaftMessages carries a batch of Raft messages from one broker to
// another. Each message is a go.etcd.io/raft/v3/raftpb.Message in its own
// protobuf encoding: transport does not depend on raft, the broker
// encodes and decodes them.
type RaftMessages struct {
	Version uint32   `msgpack:"v"`
	From    uint64   `msgpack:"from"` // the sender's Raft node id
	To      uint64   `msgpack:"to"`   // the receiver's Raft node id
	Msgs    [][]byte `msgpack:"m"`
}

// RaftMessagesResponse answers RaftMessages: the batch was handed to the
// receiver's Raft node (which may still drop messages, as Raft allows).
type RaftMessagesResponse struct{}

// RaftJoinRequest asks the broker cluster to add a broker as a voter (a
// Raft configuration change proposed through the leader). A broker that
// is already a voter under that id is answered at once; a voter of the
// same name under another id (the broker lost its data dir) is removed
// first, unless that voter is live (a second process started with a live
// broker's name): then the join is refused with ErrInstanceInUse.
type RaftJoinRequest struct {
	Version uint32 `msgpack:"v"`
	ID      uint64 `msgpack:"id"`
	Name    string `msgpack:"name"`
	Addr    string `msgpack:"addr"` // its gRPC address
}

// RaftJoinResponse answers RaftJoinRequest once the change is committed.
type RaftJoinResponse struct {
	Members []RaftMember `msgpack:"members"`
}

// RaftRemoveRequest removes a broker from the Raft group for good.
type RaftRemoveRequest struct {
	Version uint32 `msgpack:"v"`
	Name    string `msgpack:"name"`
}

// RaftRemoveResponse answers RaftRemoveRequest once the change is
// committed.
type RaftRemoveResponse struct {
	ID      uint64       `msgpack:"id" json:"id"` // the removed broker's Raft node id
	Members []RaftMember `msgpack:"members" json:"members"`
}

// RaftMember is one voter of the brokers' Raft group.
type RaftMember struct {
	ID   uint64 `msgpack:"id" json:"id"`
	Name string `msgpack:"name" json:"name"`
	Addr string `msgpack:"addr" json:"addr"` // gRPC address when it joined
}

// RaftStatus is one broker's view of the Raft group (in StatusResponse).
type RaftStatus struct {
	ID         uint64       `msgpack:"id" json:"id"`
	State      string       `msgpack:"state" json:"state"` // StateLeader, StateFollower, ...
	Term       uint64       `msgpack:"term" json:"term"`
	Leader     uint64       `msgpack:"leader" json:"leader"`
	LeaderName string       `msgpack:"leader_name,omitempty" json:"leader_name"`
	Commit     uint64       `msgpack:"commit" json:"commit"`
	Applied    uint64       `msgpack:"applied" json:"applied"`
	Members    []RaftMember `msgpack:"members" json:"members"`
	// ConfirmedMs is the age, in milliseconds, of this broker's newest
	// quorum confirmation (ReadIndex round); -1 if it has none. A primary's
	// lease is confirmed only while it is under a quarter of the lease.
	ConfirmedMs int64 `msgpack:"confirmed_ms" json:"confirmed_ms"`
	// JoinRefused, on a broker waiting to be added as a new member, is
	// why the cluster last refused it because a live voter has its name
	// ("" otherwise). Brokers of older builds leave it out.
	JoinRefused string `msgpack:"join_refused,omitempty" json:"join_refused,omitempty"`
}

// RefusedRegister is a Register refused because another session holds the
// instance name (ErrInstanceInUse), as the refusing broker last saw it.
type RefusedRegister struct {
	Service  string `msgpack:"svc" json:"service"`
	Instance string `msgpack:"inst" json:"instance"`
	Addr     string `msgpack:"addr" json:"addr"`     // the refused newcomer's address
	Holder   string `msgpack:"holder" json:"holder"` // the live holder's address
	AtMs     int64  `msgpack:"at" json:"at_ms"`      // unix ms of the last refusal
	Count    uint64 `msgpack:"n" json:"count"`       // refusals so far
}

// RaftServer is implemented by a broker.
type RaftServer interface {
	RaftSend(context.Context, *RaftMessages) (*RaftMessagesResponse, error)
	RaftJoin(context.Context, *RaftJoinRequest) (*RaftJoinResponse, error)
	RaftRemove(context.Context, *RaftRemoveRequest) (*RaftRemoveResponse, error)
}

// RegisterRaftServer registers srv on s.
func RegisterRaftServer(s grpc.ServiceRegistrar, srv RaftServer) {
	s.RegisterService(&RaftServiceDesc, srv)
}

// RaftServiceDesc is the hand-written descriptor of the Raft service.
var RaftServiceDesc = grpc.ServiceDesc{
	ServiceName: RaftServiceName,
	HandlerType: (*RaftServer)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "Send", Handler: raftUnary(func(s RaftServer, ctx context.Context, in *RaftMessages) (any, error) { return s.RaftSend(ctx, in) })},
		{MethodName: "Join", Handler: raftUnary(func(s RaftServer, ctx context.Context, in *RaftJoinRequest) (any, error) { return s.RaftJoin(ctx, in) })},
		{MethodName: "Remove", Handler: raftUnary(func(s RaftServer, ctx context.Context, in *RaftRemoveRequest) (any, error) {
			return s.RaftRemove(ctx, in)
		})},
	},
	Metadata: "replmesh/transport",
}

// raftUnary adapts a typed Raft handler to a grpc.MethodDesc handler.
func raftUnary[Req any](call func(RaftServer, context.Context, *Req) (any, error)) grpc.MethodHandler {
	return func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
		in := new(Req)
		if err := decodeRequest(dec, in); err != nil {
			return nil, StatusError(err)
		}
		out, err := call(srv.(RaftServer), ctx, in)
		return out, StatusError(err)
	}
}

// RaftClient calls one broker's Raft service.
type RaftClient struct {
	cc grpc.ClientConnInterface
}

// NewRaftClient returns a client over cc (see Dial).
func NewRaftClient(cc grpc.ClientConnInterface) *RaftClient { return &RaftClient{cc: cc} }

// Send delivers a batch of Raft messages.
func (c *RaftClient) Send(ctx context.Context, in *RaftMessages, opts ...grpc.CallOption) (*RaftMessagesResponse, error) {
	return invoke[RaftMessagesResponse](ctx, c.cc, "/"+RaftServiceName+"/Send", in, opts)
}

// Join asks the cluster to add a broker as a voter.
func (c *RaftClient) Join(ctx context.Context, in *RaftJoinRequest, opts ...grpc.CallOption) (*RaftJoinResponse, error) {
	return invoke[RaftJoinResponse](ctx, c.cc, "/"+RaftServiceName+"/Join", in, opts)
}

// Remove removes a broker from the Raft group for good.
func (c *RaftClient) Remove(ctx context.Context, in *RaftRemoveRequest, opts ...grpc.CallOption) (*RaftRemoveResponse, error) {
	return invoke[RaftRemoveResponse](ctx, c.cc, "/"+RaftServiceName+"/Remove", in, opts)
}
