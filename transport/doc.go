// Package transport is the wire layer of replmesh: the msgpack gRPC codec, the
// message types exchanged between components (and, later, brokers), the
// hand-written gRPC service descriptors, the dial and serve helpers with
// matched keepalive and size limits, and the mapping between replmesh errors
// and gRPC status codes.
//
// Nothing else in replmesh creates or inspects gRPC status codes: the replica
// and broker packages return and test the sentinel errors defined here
// (ErrUnknownTable, ErrProtocolVersion, ...), and StatusError / FromStatus
// convert at the RPC edge.
//
// Every message struct carries explicit msgpack tags and every stream opens
// with a protocol version, so that old and new peers either understand each
// other or fail with ErrProtocolVersion. The FrameKind enum is append-only.
package transport
