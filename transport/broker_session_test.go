package transport

import (
	"context"
	"errors"
	"fmt"
	"reflect"
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

// registerBefore is a Register as builds before MinSyncStandbys wrote it.
type registerBefore struct {
	Version  uint32 `msgpack:"v"`
	Token    string `msgpack:"tok,omitempty"`
	Service  string `msgpack:"svc"`
	Instance string `msgpack:"inst"`
	Addr     string `msgpack:"addr"`
	Owner    bool   `msgpack:"own,omitempty"`
	Epoch    uint64 `msgpack:"ep,omitempty"`
}

// Register.MinSyncStandbys is optional on the wire both ways: an older
// component's Register reads as 0 (unknown), and an older broker reads a
// newer Register, skipping the field.
func TestRegister_MinSyncStandbysIsOptional(t *testing.T) {
	t.Run("from an older build", func(t *testing.T) {
		old := &registerBefore{Version: ProtocolVersion, Service: "s", Instance: "i", Addr: "127.0.0.1:1", Owner: true, Epoch: 3}
		var got Register
		if err := Unmarshal(mustMarshal(t, old), &got); err != nil {
			t.Fatal(err)
		}
		want := Register{Version: ProtocolVersion, Service: "s", Instance: "i", Addr: "127.0.0.1:1", Owner: true, Epoch: 3}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("decoded %+v, want %+v", got, want)
		}
	})
	t.Run("round trip", func(t *testing.T) {
		r := &Register{Version: ProtocolVersion, Service: "s", Instance: "i", Addr: "127.0.0.1:1", Owner: true, MinSyncStandbys: 2}
		b := mustMarshal(t, r)
		var got Register
		if err := Unmarshal(b, &got); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(&got, r) {
			t.Fatalf("decoded %+v, want %+v", got, *r)
		}
		var old registerBefore
		if err := Unmarshal(b, &old); err != nil {
			t.Fatalf("an older build reading it: %v", err)
		}
		if old.Service != "s" || old.Instance != "i" || !old.Owner {
			t.Fatalf("an older build read %+v", old)
		}
	})
}
