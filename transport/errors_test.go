package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestStatusError_FromStatus_RoundTrip(t *testing.T) {
	tests := []struct {
		sentinel error
		code     codes.Code
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
	if got, want := len(tests), len(errCodes); got != want {
		t.Fatalf("test covers %d sentinels, errCodes has %d", got, want)
	}
	for _, tt := range tests {
		t.Run(tt.sentinel.Error(), func(t *testing.T) {
			orig := fmt.Errorf("get %q: %w", "products", tt.sentinel)

			st := StatusError(orig)
			if got, want := status.Code(st), tt.code; got != want {
				t.Fatalf("StatusError code = %v, want %v", got, want)
			}
			if got, want := status.Convert(st).Message(), orig.Error(); got != want {
				t.Errorf("StatusError message = %q, want %q", got, want)
			}

			back := FromStatus(st)
			if !errors.Is(back, tt.sentinel) {
				t.Fatalf("FromStatus(%v) = %v, want it to wrap %v", st, back, tt.sentinel)
			}
			for _, other := range errCodes {
				if other.err != tt.sentinel && errors.Is(back, other.err) {
					t.Errorf("FromStatus(%v) also wraps %v", st, other.err)
				}
			}
			if tt.code == codes.Unavailable {
				// Raised mostly by the local gRPC stack: not labelled remote.
				if got, want := back.Error(), "unavailable: "+orig.Error(); got != want {
					t.Errorf("Error() = %q, want %q", got, want)
				}
				return
			}
			var re *RemoteError
			if !errors.As(back, &re) {
				t.Fatalf("FromStatus(%v) = %T, want *RemoteError", st, back)
			}
			if got, want := re.Msg, orig.Error(); got != want {
				t.Errorf("RemoteError.Msg = %q, want %q", got, want)
			}
			if got, want := re.Code, tt.code.String(); got != want {
				t.Errorf("RemoteError.Code = %q, want %q", got, want)
			}
			if got, want := back.Error(), "remote: "+orig.Error(); got != want {
				t.Errorf("Error() = %q, want %q", got, want)
			}
		})
	}
}

func TestStatusError_Context(t *testing.T) {
	tests := []struct {
		name string
		err  error
		code codes.Code
		want error
	}{
		{"canceled", context.Canceled, codes.Canceled, context.Canceled},
		{"wrapped canceled", fmt.Errorf("subscribe: %w", context.Canceled), codes.Canceled, context.Canceled},
		{"deadline", context.DeadlineExceeded, codes.DeadlineExceeded, context.DeadlineExceeded},
		{"wrapped deadline", fmt.Errorf("get: %w", context.DeadlineExceeded), codes.DeadlineExceeded, context.DeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := StatusError(tt.err)
			if got := status.Code(st); got != tt.code {
				t.Fatalf("StatusError code = %v, want %v", got, tt.code)
			}
			back := FromStatus(st)
			if !errors.Is(back, tt.want) {
				t.Errorf("FromStatus(%v) = %v, want it to wrap %v", st, back, tt.want)
			}
		})
	}
}

// A sentinel wins over a context error when an error wraps both.
func TestStatusError_SentinelBeforeContext(t *testing.T) {
	err := fmt.Errorf("%w: %w", ErrUnavailable, context.Canceled)
	if got, want := status.Code(StatusError(err)), codes.Unavailable; got != want {
		t.Errorf("code = %v, want %v", got, want)
	}
}

func TestStatusError_PlainErrorIsInternal(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"plain", errors.New("disk on fire")},
		{"io.EOF", io.EOF},
		{"wrapped io.ErrUnexpectedEOF", fmt.Errorf("read: %w", io.ErrUnexpectedEOF)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.err
			st := StatusError(err)
			if got, want := status.Code(st), codes.Internal; got != want {
				t.Errorf("StatusError(%v) code = %v, want %v", err, got, want)
			}
			if got, want := status.Convert(st).Message(), err.Error(); got != want {
				t.Errorf("StatusError(%v) message = %q, want %q", err, got, want)
			}
			// Internal has no sentinel: FromStatus leaves the status error as it is.
			back := FromStatus(st)
			if back != st {
				t.Errorf("FromStatus(%v) = %v, want the status error unchanged", st, back)
			}
			for _, ec := range errCodes {
				if errors.Is(back, ec.err) {
					t.Errorf("FromStatus(%v) wraps %v", st, ec.err)
				}
			}
		})
	}
}

func TestStatusError_KeepsStatusErrors(t *testing.T) {
	st := status.Error(codes.Unauthenticated, "no token")
	if got := StatusError(st); got != st {
		t.Errorf("StatusError(%v) = %v, want it unchanged", st, got)
	}
}

func TestFromStatus_NonStatusErrorUnchanged(t *testing.T) {
	err := errors.New("plain")
	if got := FromStatus(err); got != err {
		t.Errorf("FromStatus(%v) = %v, want it unchanged", err, got)
	}
}

func TestNilStaysNil(t *testing.T) {
	if err := StatusError(nil); err != nil {
		t.Errorf("StatusError(nil) = %v, want nil", err)
	}
	if err := FromStatus(nil); err != nil {
		t.Errorf("FromStatus(nil) = %v, want nil", err)
	}
}
