package transport

import (
	"context"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc"
)

// ClientSubscription is the consumer's end of a Subscribe stream after the
// handshake (see OpenSubscribe). Its errors are already this package's:
// Send, Recv and CloseSend apply FromStatus, so callers test them with
// errors.Is against the sentinels and never see a gRPC status. io.EOF
// stays io.EOF: from Recv, the owner ended the stream cleanly; from Send,
// the stream is over and the next Recv says why.
//
// As with any gRPC stream, one goroutine may Send while another Receives,
// but two goroutines must not Send (or Recv) at once.
type ClientSubscription struct {
	stream SubscribeClient
	cancel context.CancelFunc
}

// OpenSubscribe opens a Subscribe stream and performs the consumer's
// handshake: it sends open (a Version of 0 is sent as ProtocolVersion),
// receives the owner's first frame, checks that it is a Start (else
// ErrBadRequest naming the kind received) and that the owner's protocol
// version is one this build speaks (CheckVersion), and returns the stream
// and the Start.
//
// Every error is one of this package's (see ClientSubscription), or
// io.EOF when the owner ended the stream without answering. A failed
// handshake leaves nothing open. The stream lives until ctx ends, Close is
// called, or Recv returns an error: call Close when done with it.
func (c *ReplicationClient) OpenSubscribe(ctx context.Context, open *Open, opts ...grpc.CallOption) (*ClientSubscription, *Start, error) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := c.Subscribe(ctx, opts...)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	s := &ClientSubscription{stream: stream, cancel: cancel}
	st, err := s.handshake(open)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	return s, st, nil
}

func (s *ClientSubscription) handshake(open *Open) (*Start, error) {
	if open.Version == 0 {
		o := *open
		o.Version = ProtocolVersion
		open = &o
	}
	// A Send that fails with io.EOF means the stream already ended: the
	// Recv below returns the status that ended it.
	if err := s.Send(&ConsumerFrame{Kind: KindOpen, Open: open}); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	f, err := s.Recv()
	if err != nil {
		return nil, err
	}
	if f.Kind != KindStart || f.Start == nil {
		return nil, fmt.Errorf("%w: owner's first frame is %s, want start", ErrBadRequest, f.Kind)
	}
	if err := CheckVersion(f.Start.Version); err != nil {
		return nil, err
	}
	return f.Start, nil
}

// Send sends one frame to the owner.
func (s *ClientSubscription) Send(f *ConsumerFrame) error {
	return FromStatus(s.stream.Send(f))
}

// Recv receives the owner's next frame.
func (s *ClientSubscription) Recv() (*OwnerFrame, error) {
	f, err := s.stream.Recv()
	if err != nil {
		return nil, FromStatus(err)
	}
	return f, nil
}

// CloseSend tells the owner that this side sends nothing more; frames
// can still be received.
func (s *ClientSubscription) CloseSend() error {
	return FromStatus(s.stream.CloseSend())
}

// Context returns the stream's context: it ends with the stream.
func (s *ClientSubscription) Context() context.Context {
	return s.stream.Context()
}

// Close ends the stream (if it has not ended) and releases it. It is safe
// to call more than once, and concurrently with Send and Recv (which
// then fail).
func (s *ClientSubscription) Close() {
	s.cancel()
}
