package transport

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc"
)

// BrokerServiceName is the full gRPC name of the broker service.
const BrokerServiceName = "replmesh.v1.Broker"

// SessionKind says what a frame on the broker Session stream carries.
//
// ONLY APPEND TO THIS LIST: the numbers are on the wire.
type SessionKind uint8

// Session frame kinds.
const (
	SessionInvalid   SessionKind = iota
	SessionRegister              // component -> broker: first frame, carries Register
	SessionUpdate                // component -> broker: new table heads / replica positions
	SessionTopology              // broker -> component: the topology this component needs
	SessionHeartbeat             // both ways: the session (the liveness lease) is alive
)

// Roles of an instance of an owner service.
const (
	RolePrimary  = "primary"
	RoleStandby  = "standby"
	RoleConsumer = "consumer" // an instance that owns nothing
)

// TableInfo describes one table held by an owner instance: on the primary
// its own table, on a standby its copy of the primary's.
type TableInfo struct {
	Table string `msgpack:"t" json:"table"`
	Mode  string `msgpack:"mode,omitempty" json:"mode"` // the owner's default mode for the table
	LogID string `msgpack:"log,omitempty" json:"log_id"`
	Epoch uint64 `msgpack:"ep,omitempty" json:"epoch"`
	Head  uint64 `msgpack:"head,omitempty" json:"head"` // seq of the newest change held
}

// SubInfo describes one subscription of a component.
type SubInfo struct {
	Service string `msgpack:"svc" json:"service"` // owner service
	Table   string `msgpack:"t" json:"table"`
	Mode    string `msgpack:"mode,omitempty" json:"mode"`      // requested mode ("" = owner's default)
	Seq     uint64 `msgpack:"seq,omitempty" json:"seq"`        // applied seq (updates)
	LogID   string `msgpack:"log,omitempty" json:"log_id"`     // the history the replica holds (its cursor's log id)
	Epoch   uint64 `msgpack:"ep,omitempty" json:"epoch"`       // the epoch of the replica's newest change
	Lag     uint64 `msgpack:"lag,omitempty" json:"lag"`        // owner head minus applied seq, as last heard
	StaleMs int64  `msgpack:"stale,omitempty" json:"stale_ms"` // staleness in milliseconds
	State   string `msgpack:"st,omitempty" json:"state"`       // replica state (streaming, diverged, ...)
	Running string `msgpack:"run,omitempty" json:"running"`    // the mode the stream runs now (push or pull; auto picks one)
	Reason  string `msgpack:"why,omitempty" json:"reason"`     // why the last mode switch happened
	// Full-transfer progress, while State is "transferring" (all zero
	// otherwise). Percent and ETA follow from these.
	XferRows     uint64  `msgpack:"xr,omitempty" json:"transfer_rows"`          // rows received so far
	XferExpected uint64  `msgpack:"xe,omitempty" json:"transfer_rows_expected"` // rows the owner announced at SnapshotBegin (0: unknown)
	XferBytes    uint64  `msgpack:"xb,omitempty" json:"transfer_bytes"`         // key+value bytes received so far
	XferRate     float64 `msgpack:"xrr,omitempty" json:"transfer_rows_per_sec"` // rows per second since the transfer began
	XferEtaMs    int64   `msgpack:"xeta,omitempty" json:"transfer_eta_ms"`      // estimated milliseconds to completion (0: unknown)
}

// Register is a component's first Session frame.
type Register struct {
	Version  uint32 `msgpack:"v"`
	Token    string `msgpack:"tok,omitempty"` // shared secret, when the broker requires one
	Service  string `msgpack:"svc"`
	Instance string `msgpack:"inst"`
	Addr     string `msgpack:"addr"` // replication address ("" for a pure consumer)
	// Owner: this instance is an instance of an owner service (a primary
	// candidate); Tables lists the tables it owns or holds copies of.
	Owner         bool        `msgpack:"own,omitempty"`
	Tables        []TableInfo `msgpack:"tables,omitempty"`
	Subscriptions []SubInfo   `msgpack:"subs,omitempty"`
	// Epoch is the highest epoch the owner instance's data holds, in any
	// table of its data dir, opened yet or not (0: none, or not an owner).
	// An owner registers as soon as it opens, usually before it has opened
	// its tables, so Tables alone may not show the epochs its data carries;
	// a broker grants the service's primary lease above this epoch too (a
	// broker cluster restarted with an empty registry must not reuse an
	// epoch the histories hold).
	Epoch uint64 `msgpack:"ep,omitempty"`
	// MinSyncStandbys is the owner instance's MinSyncStandbys k: it
	// acknowledges a write only once k standbys hold it. The brokers
	// promote a standby once they know the heads of S-k+1 of the service's
	// S standbys (one of them holds every acknowledged write), taking the
	// smallest k the service's owner instances report. 0: none, or
	// unknown (a build that does not send it): the brokers wait for every
	// standby's head. At most MaxMinSyncStandbys.
	MinSyncStandbys int `msgpack:"msync,omitempty"`
}

// MaxMinSyncStandbys is the largest Register.MinSyncStandbys a broker
// accepts: far above any service's standby count (a k above it makes a
// primary acknowledge nothing). Reporting a smaller k than the one in
// force is always safe: the brokers then wait for more standbys' heads.
const MaxMinSyncStandbys = 1 << 10

// SessionRequest is every frame a component sends on a Session stream.
type SessionRequest struct {
	Kind          SessionKind `msgpack:"k"`
	Register      *Register   `msgpack:"reg,omitempty"`    // SessionRegister
	Tables        []TableInfo `msgpack:"tables,omitempty"` // SessionUpdate
	Subscriptions []SubInfo   `msgpack:"subs,omitempty"`   // SessionUpdate
	// Ping is the component's clock when it sent the frame (nanoseconds
	// on a monotonic clock of its own, > 0; 0 = none). The broker echoes
	// the newest Ping it received as SessionResponse.Pong: the component
	// learns that the broker heard from it no earlier than that time,
	// which is what a primary's lease is measured from.
	Ping int64 `msgpack:"ping,omitempty"`
}

// Endpoint is one instance of a service as the broker knows it.
type Endpoint struct {
	Instance string `msgpack:"inst" json:"instance"`
	Addr     string `msgpack:"addr" json:"addr"`
	Role     string `msgpack:"role" json:"role"`
}

// ServiceOwner says where a service's tables are served.
type ServiceOwner struct {
	Service  string      `msgpack:"svc" json:"service"`
	Primary  Endpoint    `msgpack:"primary" json:"primary"` // Instance "" when no primary is alive
	Epoch    uint64      `msgpack:"ep" json:"epoch"`        // bumped on every promotion
	Standbys []Endpoint  `msgpack:"standbys,omitempty" json:"standbys"`
	Tables   []TableInfo `msgpack:"tables,omitempty" json:"tables"` // the primary's tables, as last reported
}

// Topology is what a component needs to know: where the services it
// consumes are, the mode overrides, and its own role.
type Topology struct {
	Revision  uint64            `msgpack:"rev" json:"revision"`            // grows with every registry change this broker has seen
	Owners    []ServiceOwner    `msgpack:"owners" json:"owners"`           // the services this component consumes (and its own)
	Overrides map[string]string `msgpack:"ovr,omitempty" json:"overrides"` // "service/table" -> mode, set with replctl mode set
	Role      string            `msgpack:"role" json:"role"`               // this instance's role
	Epoch     uint64            `msgpack:"ep,omitempty" json:"epoch"`      // this instance's service epoch
	Brokers   []string          `msgpack:"brokers" json:"brokers"`         // gRPC addresses of the live brokers, for re-homing
}

// SessionResponse is every frame a broker sends on a Session stream.
type SessionResponse struct {
	Kind     SessionKind `msgpack:"k"`
	Broker   string      `msgpack:"b"` // the answering broker's name
	Topology *Topology   `msgpack:"topo,omitempty"`
	// Pong echoes the newest SessionRequest.Ping the broker received on
	// this session (0 = none yet).
	Pong int64 `msgpack:"pong,omitempty"`
	// LeaseMs is the broker's lease (Config.Lease) in milliseconds: an
	// instance's registration, and a primary's lease, lapse that long
	// after the broker last heard from it.
	LeaseMs int64 `msgpack:"lease,omitempty"`
	// PrimaryEpoch is the service epoch of which this broker holds the
	// instance to be the primary, 0 when it does not hold it primary.
	PrimaryEpoch uint64 `msgpack:"pep,omitempty"`
}

// LookupRequest asks where a service's tables are served.
type LookupRequest struct {
	Version uint32 `msgpack:"v"`
	Service string `msgpack:"svc"`
}

// LookupResponse answers LookupRequest.
type LookupResponse struct {
	Owner ServiceOwner `msgpack:"owner" json:"owner"`
}

// StatusRequest asks a broker for the registry (tools), one page at a
// time: a large registry does not fit in one message.
type StatusRequest struct {
	Version uint32 `msgpack:"v"`
	// PageToken continues a paged Status: the NextPageToken of the
	// previous answer ("" = the first page).
	PageToken string `msgpack:"pt,omitempty"`
	// PageSize asks for at most this many instances in the answer (0: the
	// broker's page size; it may send fewer, and never more than its own).
	PageSize int `msgpack:"ps,omitempty"`
}

// BrokerInfo is one broker of the cluster.
type BrokerInfo struct {
	Name  string `msgpack:"name" json:"name"`
	Addr  string `msgpack:"addr" json:"addr"` // gRPC address
	State string `msgpack:"state" json:"state"`
}

// InstanceInfo is one registered instance.
type InstanceInfo struct {
	Service       string      `msgpack:"svc" json:"service"`
	Instance      string      `msgpack:"inst" json:"instance"`
	Addr          string      `msgpack:"addr" json:"addr"`
	Role          string      `msgpack:"role" json:"role"`
	Broker        string      `msgpack:"b" json:"broker"`          // broker holding its session
	LastSeenMs    int64       `msgpack:"seen" json:"last_seen_ms"` // unix ms of its last session frame
	Tables        []TableInfo `msgpack:"tables,omitempty" json:"tables"`
	Subscriptions []SubInfo   `msgpack:"subs,omitempty" json:"subscriptions"`
}

// StatusResponse answers StatusRequest.
type StatusResponse struct {
	Broker    string            `msgpack:"b" json:"broker"`
	Brokers   []BrokerInfo      `msgpack:"brokers" json:"brokers"`
	Owners    []ServiceOwner    `msgpack:"owners" json:"owners"`
	Instances []InstanceInfo    `msgpack:"instances" json:"instances"`
	Overrides map[string]string `msgpack:"ovr,omitempty" json:"overrides"`
	// NextPageToken, when not empty, says the registry goes on: ask again
	// with it as StatusRequest.PageToken. Brokers and Overrides come with
	// the first page; every page carries the owners and instances that
	// follow the previous page's, in service and instance order, so a
	// registry that does not change between the calls is seen whole, each
	// record once.
	NextPageToken string `msgpack:"npt,omitempty" json:"next_page_token,omitempty"`
	// Raft is the answering broker's view of the brokers' Raft group
	// (first page only).
	Raft *RaftStatus `msgpack:"raft,omitempty" json:"raft,omitempty"`
	// Refused lists the Registers this broker refused recently because
	// another live session held the instance name (first page only).
	Refused []RefusedRegister `msgpack:"refused,omitempty" json:"refused,omitempty"`
}

// SetModeRequest sets (or, with Mode "", clears) the broker override of a
// table's mode.
type SetModeRequest struct {
	Version uint32 `msgpack:"v"`
	Service string `msgpack:"svc"`
	Table   string `msgpack:"t"`
	Mode    string `msgpack:"mode"`
}

// SetModeResponse answers SetModeRequest.
type SetModeResponse struct {
	Revision uint64 `msgpack:"rev" json:"revision"`
}

// SessionServer is the broker's end of a Session stream.
type SessionServer = grpc.BidiStreamingServer[SessionRequest, SessionResponse]

// SessionClient is the component's end of a Session stream.
type SessionClient = grpc.BidiStreamingClient[SessionRequest, SessionResponse]

// BrokerServer is implemented by a broker. Handlers return plain errors
// wrapping the sentinels of this package.
type BrokerServer interface {
	Session(SessionServer) error
	Lookup(context.Context, *LookupRequest) (*LookupResponse, error)
	Status(context.Context, *StatusRequest) (*StatusResponse, error)
	SetMode(context.Context, *SetModeRequest) (*SetModeResponse, error)
}

// RegisterBrokerServer registers srv on s.
func RegisterBrokerServer(s grpc.ServiceRegistrar, srv BrokerServer) {
	s.RegisterService(&BrokerServiceDesc, srv)
}

// BrokerServiceDesc is the hand-written descriptor of the broker service.
var BrokerServiceDesc = grpc.ServiceDesc{
	ServiceName: BrokerServiceName,
	HandlerType: (*BrokerServer)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "Lookup", Handler: unary(func(s BrokerServer, ctx context.Context, in *LookupRequest) (any, error) { return s.Lookup(ctx, in) })},
		{MethodName: "Status", Handler: unary(func(s BrokerServer, ctx context.Context, in *StatusRequest) (any, error) { return s.Status(ctx, in) })},
		{MethodName: "SetMode", Handler: unary(func(s BrokerServer, ctx context.Context, in *SetModeRequest) (any, error) { return s.SetMode(ctx, in) })},
		{MethodName: "GossipKeys", Handler: gossipKeysHandler}, // served by a GossipKeysServer (gossipkeys.go)
	},
	Streams: []grpc.StreamDesc{
		{StreamName: "Session", ServerStreams: true, ClientStreams: true, Handler: func(srv any, stream grpc.ServerStream) error {
			return StatusError(srv.(BrokerServer).Session(&serverStream[SessionRequest, SessionResponse]{ServerStream: stream}))
		}},
	},
	Metadata: "replmesh/transport",
}

// unary adapts a typed broker handler to a grpc.MethodDesc handler.
func unary[Req any](call func(BrokerServer, context.Context, *Req) (any, error)) grpc.MethodHandler {
	return func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
		in := new(Req)
		if err := decodeRequest(dec, in); err != nil {
			return nil, StatusError(err)
		}
		out, err := call(srv.(BrokerServer), ctx, in)
		return out, StatusError(err)
	}
}

// BrokerClient calls one broker.
type BrokerClient struct {
	cc grpc.ClientConnInterface
}

// NewBrokerClient returns a client over cc (see Dial).
func NewBrokerClient(cc grpc.ClientConnInterface) *BrokerClient { return &BrokerClient{cc: cc} }

// Session opens a Session stream. The caller sends Register first.
func (c *BrokerClient) Session(ctx context.Context, opts ...grpc.CallOption) (SessionClient, error) {
	s, err := c.cc.NewStream(ctx, &BrokerServiceDesc.Streams[0], "/"+BrokerServiceName+"/Session", opts...)
	if err != nil {
		return nil, FromStatus(err)
	}
	return &grpc.GenericClientStream[SessionRequest, SessionResponse]{ClientStream: s}, nil
}

// OpenSession opens a Session stream and sends first, the frame that
// registers the component. A broker may refuse a session before it reads
// the Register (a handshake limit): it ends the stream at once, and the
// Send reports io.EOF, which says nothing of why. OpenSession returns the
// stream then too: its first Recv returns the broker's reason (read it
// through FromStatus, as every Recv error). Any other failure to send is
// returned, as this package's error. The stream ends with ctx.
func (c *BrokerClient) OpenSession(ctx context.Context, first *SessionRequest, opts ...grpc.CallOption) (SessionClient, error) {
	s, err := c.Session(ctx, opts...)
	if err != nil {
		return nil, err
	}
	if err := s.Send(first); err != nil && !errors.Is(err, io.EOF) {
		return nil, FromStatus(err)
	}
	return s, nil
}

// HoldSession opens a session that registers with reg (OpenSession) and
// waits for the broker's first answer: its refusal is returned, as this
// package's error. An accepted session is then kept alive until ctx ends,
// its frames drained and a heartbeat sent every second, by two goroutines
// started on wg. It is the smallest session a broker keeps: the load and
// attack harnesses (the broker's flood tests, replbench's hostile peers)
// hold many of them.
func (c *BrokerClient) HoldSession(ctx context.Context, wg *sync.WaitGroup, reg *Register) error {
	stream, err := c.OpenSession(ctx, &SessionRequest{Kind: SessionRegister, Register: reg})
	if err != nil {
		return FromStatus(err)
	}
	if _, err := stream.Recv(); err != nil {
		return FromStatus(err)
	}
	wg.Go(func() {
		for {
			if _, err := stream.Recv(); err != nil {
				return
			}
		}
	})
	wg.Go(func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for ping := int64(1); ; ping++ {
			select {
			case <-t.C:
				if stream.Send(&SessionRequest{Kind: SessionHeartbeat, Ping: ping}) != nil {
					return
				}
			case <-ctx.Done():
				return
			}
		}
	})
	return nil
}

func invoke[Resp any](ctx context.Context, cc grpc.ClientConnInterface, method string, in any, opts []grpc.CallOption) (*Resp, error) {
	out := new(Resp)
	if err := cc.Invoke(ctx, method, in, out, opts...); err != nil {
		return nil, FromStatus(err)
	}
	return out, nil
}

// Lookup asks where a service's tables are served.
func (c *BrokerClient) Lookup(ctx context.Context, in *LookupRequest, opts ...grpc.CallOption) (*LookupResponse, error) {
	return invoke[LookupResponse](ctx, c.cc, "/"+BrokerServiceName+"/Lookup", in, opts)
}

// Status returns the broker's view of the whole registry.
func (c *BrokerClient) Status(ctx context.Context, in *StatusRequest, opts ...grpc.CallOption) (*StatusResponse, error) {
	return invoke[StatusResponse](ctx, c.cc, "/"+BrokerServiceName+"/Status", in, opts)
}

// SetMode sets or clears a table's mode override.
func (c *BrokerClient) SetMode(ctx context.Context, in *SetModeRequest, opts ...grpc.CallOption) (*SetModeResponse, error) {
	return invoke[SetModeResponse](ctx, c.cc, "/"+BrokerServiceName+"/SetMode", in, opts)
}
