package transport

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// sessionBroker is a broker whose Session runs the test's function.
type sessionBroker struct {
	session func(SessionServer) error
}

func (f *sessionBroker) Session(s SessionServer) error { return f.session(s) }
func (f *sessionBroker) Lookup(context.Context, *LookupRequest) (*LookupResponse, error) {
	return nil, ErrUnavailable
}
func (f *sessionBroker) Status(context.Context, *StatusRequest) (*StatusResponse, error) {
	return nil, ErrUnavailable
}
func (f *sessionBroker) SetMode(context.Context, *SetModeRequest) (*SetModeResponse, error) {
	return nil, ErrUnavailable
}

// OpenSession sends the Register; a broker that ends the stream before
// reading it (a handshake limit) makes Send see io.EOF or not, depending
// on timing: either way OpenSession succeeds and the first Recv returns
// the broker's reason, never a bare EOF.
func TestOpenSession(t *testing.T) {
	tests := []struct {
		name    string
		session func(SessionServer) error
		check   func(t *testing.T, f *SessionResponse, err error)
	}{
		{
			name: "the broker answers the Register",
			session: func(s SessionServer) error {
				in, err := s.Recv()
				if err != nil {
					return err
				}
				if err := s.Send(&SessionResponse{Kind: SessionTopology, Broker: "b-" + in.Register.Instance, Topology: &Topology{Revision: 7}}); err != nil {
					return err
				}
				<-s.Context().Done()
				return nil
			},
			check: func(t *testing.T, f *SessionResponse, err error) {
				if err != nil || f.Kind != SessionTopology || f.Broker != "b-i1" || f.Topology.Revision != 7 {
					t.Fatalf("first frame %+v, %v; want the topology answering i1's Register", f, err)
				}
			},
		},
		{
			name: "the broker refuses before reading the Register",
			session: func(SessionServer) error {
				return fmt.Errorf("%w: too many sessions in their handshake", ErrTooLarge)
			},
			check: func(t *testing.T, f *SessionResponse, err error) {
				if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "too many sessions") {
					t.Fatalf("first Recv: %+v, %v; want the broker's reason", f, err)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lis, addr := bufnet.Listen()
			s := NewServer(Options{})
			RegisterBrokerServer(s, &sessionBroker{session: tt.session})
			served := make(chan error, 1)
			go func() { served <- s.Serve(lis) }()
			t.Cleanup(func() {
				s.GracefulStop(time.Second)
				<-served
			})
			cc, err := Dial(addr, Options{}, bufnet.DialOption())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cc.Close() })
			// Many rounds: the refusal races the Send, so both of Send's
			// outcomes (sent, io.EOF) occur.
			for range 20 {
				ctx, cancel := context.WithCancel(testContext(t))
				stream, err := NewBrokerClient(cc).OpenSession(ctx, &SessionRequest{Kind: SessionRegister,
					Register: &Register{Version: ProtocolVersion, Service: "s", Instance: "i1"}})
				if err != nil {
					cancel()
					t.Fatalf("OpenSession: %v", err)
				}
				f, err := stream.Recv()
				tt.check(t, f, FromStatus(err))
				cancel()
			}
		})
	}
}
