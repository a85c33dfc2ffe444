package transport

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Errors that cross the wire. Each maps to one gRPC status code; the peer
// gets them back from FromStatus and can test them with errors.Is.
var (
	// ErrBadRequest: a malformed message, or one that breaks the protocol.
	ErrBadRequest = errors.New("bad request")
	// ErrProtocolVersion: the peer speaks a protocol version this build does not.
	ErrProtocolVersion = errors.New("incompatible protocol version")
	// ErrUnknownTable: the peer does not own (or serve) the named table.
	ErrUnknownTable = errors.New("unknown table")
	// ErrTooLarge: a message, key, value or batch is over its size limit.
	ErrTooLarge = errors.New("too large")
	// ErrResync: the consumer's position is no longer in the owner's log;
	// it must reconnect and take a full transfer.
	ErrResync = errors.New("resync required")
	// ErrPermission: the peer may not access the table.
	ErrPermission = errors.New("permission denied")
	// ErrUnavailable: the peer is shutting down or cannot be reached.
	ErrUnavailable = errors.New("unavailable")
	// ErrNotPrimary: the instance is not the primary for the table.
	ErrNotPrimary = errors.New("not primary")
	// ErrInstanceInUse: a Register names an instance that holds a live
	// session on a broker (another process with the same instance name);
	// the message names the holder's address. It is refused until that
	// session ends.
	ErrInstanceInUse = errors.New("instance in use")
)

var errCodes = []struct {
	err  error
	code codes.Code
}{
	{ErrBadRequest, codes.InvalidArgument},
	{ErrProtocolVersion, codes.FailedPrecondition},
	{ErrUnknownTable, codes.NotFound},
	{ErrTooLarge, codes.ResourceExhausted},
	{ErrResync, codes.OutOfRange},
	{ErrPermission, codes.PermissionDenied},
	{ErrUnavailable, codes.Unavailable},
	{ErrNotPrimary, codes.Aborted},
	{ErrInstanceInUse, codes.AlreadyExists},
	{ErrRestoreRefused, codes.DataLoss},
}

// StatusError converts an error returned by a handler into a gRPC status
// error whose code matches the sentinel it wraps; the message is kept.
func StatusError(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	for _, ec := range errCodes {
		if errors.Is(err, ec.err) {
			return status.Error(ec.code, err.Error())
		}
	}
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

// FromStatus converts an error returned by a gRPC call into one that wraps
// the matching sentinel (so errors.Is works on both sides of the wire).
// Errors without a known code are returned as they are.
func FromStatus(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	switch st.Code() {
	case codes.Canceled:
		return fmt.Errorf("%w: %s", context.Canceled, st.Message())
	case codes.DeadlineExceeded:
		return fmt.Errorf("%w: %s", context.DeadlineExceeded, st.Message())
	case codes.Unavailable:
		// Mostly raised by the local gRPC stack (dial refused, connection
		// lost), so it is not labelled as the peer's answer.
		return fmt.Errorf("%w: %s", ErrUnavailable, st.Message())
	}
	for _, ec := range errCodes {
		if st.Code() == ec.code {
			return &RemoteError{Sentinel: ec.err, Code: st.Code().String(), Msg: st.Message()}
		}
	}
	return err
}

// RemoteError is an error reported by the peer. It wraps the sentinel that
// matches its status code.
type RemoteError struct {
	Sentinel error  // the matching sentinel of this package
	Code     string // the gRPC status code's name
	Msg      string // the peer's message
}

func (e *RemoteError) Error() string { return "remote: " + e.Msg }

// Unwrap returns the sentinel.
func (e *RemoteError) Unwrap() error { return e.Sentinel }
