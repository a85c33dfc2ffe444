package transport

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The restore service: an owner instance that lost its data (and every
// standby) gets a table back from a consumer's replica. It is a service of
// its own beside Replication, served by every component with a listener, so
// that a peer of an older build answers ErrUnimplemented instead of
// misreading a frame. Three methods:
//
//   - Position (owner → consumer, also replctl): where the component's
//     replica of SERVICE/TABLE stands (log id, epoch, seq, state);
//   - Source (owner → consumer): the replica's rows as a full state
//     transfer, the Subscribe machinery in the other direction: the same
//     OwnerFrame kinds (start, snapshot-begin, rows, snapshot-end) from
//     one read transaction of the replica's current generation, then the
//     end of the stream;
//   - Restore (admin → owner): plan a restore or run one, streaming its
//     progress (RestoreStatus frames) until it completes or fails.

// RestoreServiceName is the full gRPC name of the restore service.
const RestoreServiceName = "replmesh.v1.Restore"

// MaxRestoreCandidates bounds RestoreRequest.Candidates.
const MaxRestoreCandidates = 256

// ErrRestoreRefused: a restore was refused by a safety rule (the owner
// holds a newer history of its own, or the source's log id is not the
// expected one and no override names it). It travels as codes.DataLoss:
// going ahead would lose data.
var ErrRestoreRefused = errors.New("restore refused")

// RestoreSource names a component that may serve a restore: the address of
// its replication listener, and its service and instance (the service is
// checked against the dialed peer's certificate with TLS, and against the
// table's access rules).
type RestoreSource struct {
	Service  string `msgpack:"svc,omitempty" json:"service"`
	Instance string `msgpack:"inst,omitempty" json:"instance"`
	Addr     string `msgpack:"addr" json:"addr"`
}

// String is "service/instance@addr" (the parts that are known).
func (s RestoreSource) String() string {
	who := s.Service
	if s.Instance != "" {
		who += "/" + s.Instance
	}
	if who == "" {
		return s.Addr
	}
	return who + "@" + s.Addr
}

func (s RestoreSource) validate(what string) error {
	if s.Addr == "" {
		return fmt.Errorf("%w: %s: empty address", ErrBadRequest, what)
	}
	if s.Service != "" && !ValidName(s.Service) {
		return fmt.Errorf("%w: %s: bad service name %q", ErrBadRequest, what, s.Service)
	}
	if s.Instance != "" && !ValidName(s.Instance) {
		return fmt.Errorf("%w: %s: bad instance name %q", ErrBadRequest, what, s.Instance)
	}
	return nil
}

// PositionRequest asks a component where its replica of Service/Table
// stands.
type PositionRequest struct {
	Version uint32 `msgpack:"v"`
	Service string `msgpack:"svc"` // the table's owner service
	Table   string `msgpack:"t"`
}

// Validate checks a PositionRequest received from a peer.
func (r *PositionRequest) Validate() error {
	return checkRequest("position", r.Version, [2]string{"service", r.Service}, [2]string{"table", r.Table})
}

// checkRequest checks the version of a restore service request (method
// what) and each of its names ({kind, name}, CheckName's arguments), in
// order; a bad name is ErrBadRequest naming the method.
func checkRequest(what string, version uint32, names ...[2]string) error {
	if err := CheckVersion(version); err != nil {
		return err
	}
	for _, n := range names {
		if err := CheckName(n[0], n[1]); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrBadRequest, what, err)
		}
	}
	return nil
}

// PositionResponse is where a replica stands: its cursor (the history's
// log id, the epoch of its newest change, its seq) and its state. Service
// and Instance name the answering component.
type PositionResponse struct {
	Service  string `msgpack:"svc" json:"service"`
	Instance string `msgpack:"inst" json:"instance"`
	LogID    string `msgpack:"log" json:"log_id"`
	Epoch    uint64 `msgpack:"ep" json:"epoch"`
	Seq      uint64 `msgpack:"seq" json:"seq"`
	State    string `msgpack:"st" json:"state"`
}

// SourceRequest asks a component for its replica of Service/Table as a
// full state transfer. Only an instance of Service (the table's owner)
// may ask. LogID, when set, is the history the caller expects: a replica
// of another history refuses (ErrRestoreRefused) instead of sending it.
type SourceRequest struct {
	Version  uint32 `msgpack:"v"`
	Service  string `msgpack:"svc"`
	Instance string `msgpack:"inst"`
	Table    string `msgpack:"t"`
	LogID    string `msgpack:"log,omitempty"`
}

// Validate checks a SourceRequest received from a peer.
func (r *SourceRequest) Validate() error {
	return checkRequest("source", r.Version, [2]string{"service", r.Service}, [2]string{"instance", r.Instance}, [2]string{"table", r.Table})
}

// RestoreRequest asks an owner instance to restore Table (admin only when
// the owner has identities). Source names the replica to restore from;
// when it is empty the most advanced of Candidates is chosen (and with no
// Candidates, the subscribers the owner's broker lists). LogID overrides
// the log id check: the restore takes that history even if it is not the
// one expected. DryRun plans only: the answer is one "plan" frame and
// nothing changes.
type RestoreRequest struct {
	Version    uint32          `msgpack:"v"`
	Table      string          `msgpack:"t"`
	Source     RestoreSource   `msgpack:"src,omitempty"`
	Candidates []RestoreSource `msgpack:"cands,omitempty"`
	LogID      string          `msgpack:"log,omitempty"`
	DryRun     bool            `msgpack:"dry,omitempty"`
	// Watch starts nothing: the answer follows the table's running (or
	// last) restore, however it was started, until it is done or failed.
	Watch bool `msgpack:"watch,omitempty"`
}

// Validate checks a RestoreRequest received from a peer.
func (r *RestoreRequest) Validate() error {
	if err := checkRequest("restore", r.Version, [2]string{"table", r.Table}); err != nil {
		return err
	}
	if r.Source != (RestoreSource{}) {
		if err := r.Source.validate("restore source"); err != nil {
			return err
		}
	}
	if len(r.Candidates) > MaxRestoreCandidates {
		return fmt.Errorf("%w: restore: %d candidates (max %d)", ErrTooLarge, len(r.Candidates), MaxRestoreCandidates)
	}
	for i, c := range r.Candidates {
		if err := c.validate(fmt.Sprintf("restore candidate %d", i)); err != nil {
			return err
		}
	}
	return nil
}

// ReplicaPosition is one candidate of a restore: where it was asked, and
// its answer (Err when it gave none).
type ReplicaPosition struct {
	Source RestoreSource `msgpack:"src" json:"source"`
	LogID  string        `msgpack:"log,omitempty" json:"log_id"`
	Epoch  uint64        `msgpack:"ep,omitempty" json:"epoch"`
	Seq    uint64        `msgpack:"seq,omitempty" json:"seq"`
	State  string        `msgpack:"st,omitempty" json:"state"`
	Err    string        `msgpack:"err,omitempty" json:"error,omitempty"`
}

// Restore phases, in RestoreStatus.Phase.
const (
	RestorePhasePlan     = "plan"     // the candidates were asked; the source is chosen
	RestorePhaseTransfer = "transfer" // rows arrive
	RestorePhaseEpoch    = "epoch"    // the copy is complete; waiting for a new epoch (broker grant)
	RestorePhaseDone     = "done"     // the table takes writes again
	RestorePhaseFailed   = "failed"   // the restore failed (RestoreStatus.Err); the table is as before it, or empty
	RestorePhaseNone     = ""         // (Watch) no restore of the table since the owner opened
)

// RestoreStatus is one frame of a Restore stream: the plan first, then
// progress, then the result (Phase done). A failed restore ends the stream
// with its error.
type RestoreStatus struct {
	Phase string `msgpack:"ph" json:"phase"`
	Table string `msgpack:"t" json:"table"`
	// The plan: every candidate asked, the one chosen, the history expected
	// (the log id check) and the owner's own history before the restore.
	Positions     []ReplicaPosition `msgpack:"pos,omitempty" json:"positions,omitempty"`
	Source        RestoreSource     `msgpack:"src,omitempty" json:"source"`
	ExpectedLogID string            `msgpack:"xlog,omitempty" json:"expected_log_id"`
	OwnerLogID    string            `msgpack:"olog,omitempty" json:"owner_log_id"`
	OwnerEpoch    uint64            `msgpack:"oep,omitempty" json:"owner_epoch"`
	OwnerHead     uint64            `msgpack:"ohead,omitempty" json:"owner_head"`
	// The history restored: its log id, the epoch of its last change and
	// its seq.
	LogID string `msgpack:"log,omitempty" json:"log_id"`
	Epoch uint64 `msgpack:"ep,omitempty" json:"epoch"`
	Seq   uint64 `msgpack:"seq,omitempty" json:"seq"`
	// Progress of the transfer.
	Rows      uint64  `msgpack:"r,omitempty" json:"rows"`
	Expected  uint64  `msgpack:"x,omitempty" json:"rows_expected"`
	Bytes     uint64  `msgpack:"b,omitempty" json:"bytes"`
	Rate      float64 `msgpack:"rate,omitempty" json:"rows_per_sec"`
	EtaMs     int64   `msgpack:"eta,omitempty" json:"eta_ms"`
	ElapsedMs int64   `msgpack:"el,omitempty" json:"elapsed_ms"`
	// NewEpoch is, once done, the epoch the table writes at from Seq+1.
	NewEpoch uint64 `msgpack:"nep,omitempty" json:"new_epoch"`
	// Err is, in a failed phase, why.
	Err string `msgpack:"err,omitempty" json:"error,omitempty"`
}

// RestoreServer is implemented by a component: Position and Source as a
// possible source, Restore as an owner.
type RestoreServer interface {
	Position(context.Context, *PositionRequest) (*PositionResponse, error)
	Source(*SourceRequest, grpc.ServerStreamingServer[OwnerFrame]) error
	Restore(*RestoreRequest, grpc.ServerStreamingServer[RestoreStatus]) error
}

// RegisterRestoreServer registers srv on s.
func RegisterRestoreServer(s grpc.ServiceRegistrar, srv RestoreServer) {
	s.RegisterService(&RestoreServiceDesc, srv)
}

// RestoreServiceDesc is the hand-written descriptor of the restore service.
var RestoreServiceDesc = grpc.ServiceDesc{
	ServiceName: RestoreServiceName,
	HandlerType: (*RestoreServer)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "Position", Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			in := new(PositionRequest)
			if err := decodeRequest(dec, in); err != nil {
				return nil, StatusError(err)
			}
			out, err := srv.(RestoreServer).Position(ctx, in)
			return out, StatusError(err)
		}},
	},
	Streams: []grpc.StreamDesc{
		{StreamName: "Source", ServerStreams: true, Handler: func(srv any, stream grpc.ServerStream) error {
			in := new(SourceRequest)
			if err := decodeRequest(stream.RecvMsg, in); err != nil {
				return StatusError(err)
			}
			return StatusError(srv.(RestoreServer).Source(in, &grpc.GenericServerStream[SourceRequest, OwnerFrame]{ServerStream: stream}))
		}},
		{StreamName: "Restore", ServerStreams: true, Handler: func(srv any, stream grpc.ServerStream) error {
			in := new(RestoreRequest)
			if err := decodeRequest(stream.RecvMsg, in); err != nil {
				return StatusError(err)
			}
			return StatusError(srv.(RestoreServer).Restore(in, &grpc.GenericServerStream[RestoreRequest, RestoreStatus]{ServerStream: stream}))
		}},
	},
	Metadata: "replmesh/transport",
}

// RestoreClient calls the restore service of one component.
type RestoreClient struct{ cc grpc.ClientConnInterface }

// NewRestoreClient returns a client over cc (see Dial).
func NewRestoreClient(cc grpc.ClientConnInterface) *RestoreClient { return &RestoreClient{cc: cc} }

// restoreErr converts a call's error: Unimplemented (a peer of an older
// build) becomes ErrUnimplemented, the rest as FromStatus does.
func restoreErr(err error) error {
	if status.Code(err) == codes.Unimplemented {
		return fmt.Errorf("%w: %s (the peer does not serve restores)", ErrUnimplemented, status.Convert(err).Message())
	}
	return FromStatus(err)
}

// Position asks where the peer's replica of in.Service/in.Table stands.
func (c *RestoreClient) Position(ctx context.Context, in *PositionRequest, opts ...grpc.CallOption) (*PositionResponse, error) {
	out := new(PositionResponse)
	if err := c.cc.Invoke(ctx, "/"+RestoreServiceName+"/Position", in, out, opts...); err != nil {
		return nil, restoreErr(err)
	}
	return out, nil
}

// ServerStream is the client's end of a server-streaming call; Recv
// returns io.EOF at the end and errors that wrap this package's sentinels.
type ServerStream[T any] struct{ s grpc.ClientStream }

// Recv receives the next message.
func (s *ServerStream[T]) Recv() (*T, error) {
	m := new(T)
	if err := s.s.RecvMsg(m); err != nil {
		if status.Code(err) != codes.OK {
			return nil, restoreErr(err)
		}
		return nil, err // io.EOF
	}
	return m, nil
}

func openServerStream[T any](ctx context.Context, cc grpc.ClientConnInterface, desc *grpc.StreamDesc, method string, in any, opts []grpc.CallOption) (*ServerStream[T], error) {
	s, err := cc.NewStream(ctx, desc, "/"+RestoreServiceName+"/"+method, opts...)
	if err != nil {
		return nil, restoreErr(err)
	}
	if err := s.SendMsg(in); err != nil {
		return nil, restoreErr(err)
	}
	if err := s.CloseSend(); err != nil {
		return nil, restoreErr(err)
	}
	return &ServerStream[T]{s: s}, nil
}

// Source opens the transfer of the peer's replica of in.Service/in.Table.
func (c *RestoreClient) Source(ctx context.Context, in *SourceRequest, opts ...grpc.CallOption) (*ServerStream[OwnerFrame], error) {
	return openServerStream[OwnerFrame](ctx, c.cc, &RestoreServiceDesc.Streams[0], "Source", in, opts)
}

// Restore starts a restore (or, with DryRun, plans one; with Watch,
// follows the running one) on the owner and returns the stream of its
// status frames. Cancelling ctx cancels the
// restore (the table is left empty and may be restored again).
func (c *RestoreClient) Restore(ctx context.Context, in *RestoreRequest, opts ...grpc.CallOption) (*ServerStream[RestoreStatus], error) {
	return openServerStream[RestoreStatus](ctx, c.cc, &RestoreServiceDesc.Streams[1], "Restore", in, opts)
}
