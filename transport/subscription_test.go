package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"

	"google.golang.org/grpc/status"
)

// scriptedOwner answers an Open with first (nil: the handler returns end
// without sending anything), then sends rest and returns end.
func scriptedOwner(first *OwnerFrame, end error, rest ...*OwnerFrame) func(SubscribeServer) error {
	return func(s SubscribeServer) error {
		f, err := s.Recv()
		if err != nil {
			return err
		}
		if f.Kind != KindOpen || f.Open == nil {
			return fmt.Errorf("%w: first frame is %s", ErrBadRequest, f.Kind)
		}
		if err := f.Open.Validate(); err != nil {
			return err
		}
		if first == nil {
			return end
		}
		for _, f := range append([]*OwnerFrame{first}, rest...) {
			if err := s.Send(f); err != nil {
				return err
			}
		}
		return end
	}
}

func startFrame(version uint32) *OwnerFrame {
	return &OwnerFrame{Kind: KindStart, HeadSeq: 9, Start: &Start{Version: version, LogID: "log-1", Epoch: 2, HeadSeq: 9,
		FirstSeq: 1, Resume: true, Epochs: EpochHistory{{Epoch: 1, Seq: 1}, {Epoch: 2, Seq: 5}}, Mode: ModePull}}
}

// notStatus fails the test when err is (or wraps) a gRPC status error:
// the wrapper's errors are this package's.
func notStatus(t *testing.T, err error) {
	t.Helper()
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		t.Fatalf("error %v is a gRPC status; want this package's error", err)
	}
}

func TestOpenSubscribe_Handshake(t *testing.T) {
	tests := []struct {
		name    string
		owner   func(SubscribeServer) error
		open    *Open
		wantErr error  // nil: the handshake succeeds
		msg     string // a substring of the error
	}{
		{name: "start", owner: scriptedOwner(startFrame(ProtocolVersion), nil), open: &Open{Table: "t"}},
		{name: "start, explicit version", owner: scriptedOwner(startFrame(ProtocolVersion), nil),
			open: &Open{Version: ProtocolVersion, Table: "t"}},
		{name: "first frame not a start", owner: scriptedOwner(&OwnerFrame{Kind: KindHeartbeat}, nil),
			open: &Open{Table: "t"}, wantErr: ErrBadRequest, msg: "first frame is heartbeat, want start"},
		{name: "start kind without a start", owner: scriptedOwner(&OwnerFrame{Kind: KindStart}, nil),
			open: &Open{Table: "t"}, wantErr: ErrBadRequest, msg: "first frame is start, want start"},
		{name: "owner too new", owner: scriptedOwner(startFrame(ProtocolVersion+1), nil),
			open: &Open{Table: "t"}, wantErr: ErrProtocolVersion, msg: fmt.Sprintf("peer speaks %d", ProtocolVersion+1)},
		{name: "owner too old", owner: scriptedOwner(startFrame(MinProtocolVersion-1), nil),
			open: &Open{Table: "t"}, wantErr: ErrProtocolVersion},
		{name: "owner refuses the table", owner: scriptedOwner(nil, fmt.Errorf("table t: %w", ErrUnknownTable)),
			open: &Open{Table: "t"}, wantErr: ErrUnknownTable, msg: "table t"},
		{name: "owner refuses access", owner: scriptedOwner(nil, ErrPermission),
			open: &Open{Table: "t"}, wantErr: ErrPermission},
		{name: "owner refuses our version", owner: scriptedOwner(nil, nil),
			open: &Open{Version: ProtocolVersion + 1, Table: "t"}, wantErr: ErrProtocolVersion},
		{name: "owner refuses a bad open", owner: scriptedOwner(nil, nil),
			open: &Open{Table: "t", Mode: "sideways"}, wantErr: ErrBadRequest, msg: "sideways"},
		{name: "owner ends the stream without a start", owner: scriptedOwner(nil, nil),
			open: &Open{Table: "t"}, wantErr: io.EOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := startServer(t, Options{}, &fakeReplication{SubscribeFunc: tt.owner})
			client, _ := dial(t, addr, Options{})
			sub, st, err := client.OpenSubscribe(testContext(t), tt.open)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("OpenSubscribe: %v", err)
				}
				defer sub.Close()
				if want := startFrame(ProtocolVersion).Start; !reflect.DeepEqual(st, want) {
					t.Fatalf("start:\n got %+v\nwant %+v", st, want)
				}
				return
			}
			if err == nil {
				sub.Close()
				t.Fatalf("OpenSubscribe succeeded, want %v", tt.wantErr)
			}
			if sub != nil || st != nil {
				t.Errorf("OpenSubscribe returned %v, %v with error %v", sub, st, err)
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want it to wrap %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("err = %q, want it to contain %q", err, tt.msg)
			}
			notStatus(t, err)
		})
	}
}

func TestOpenSubscribe_Unreachable(t *testing.T) {
	addr := startServer(t, Options{}, &fakeReplication{SubscribeFunc: scriptedOwner(startFrame(ProtocolVersion), nil)})
	cc, err := Dial(addr, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := cc.Close(); err != nil {
		t.Fatal(err)
	}
	_, _, err = NewReplicationClient(cc).OpenSubscribe(testContext(t), &Open{Table: "t"})
	if err == nil {
		t.Fatal("OpenSubscribe on a closed connection succeeded")
	}
	notStatus(t, err)
}

// After the handshake, the stream's frames and errors come through the
// wrapper: status errors as sentinels, a clean end as io.EOF.
func TestClientSubscription_Stream(t *testing.T) {
	changes := &OwnerFrame{Kind: KindChanges, HeadSeq: 9, Epoch: 2, Changes: sampleChanges()}
	tests := []struct {
		name string
		end  error // what the owner's handler returns after its frames
		want error // what Recv returns after the frames
	}{
		{"owner ends cleanly", nil, io.EOF},
		{"owner asks for a resync", fmt.Errorf("behind the log: %w", ErrResync), ErrResync},
		{"owner is no longer primary", ErrNotPrimary, ErrNotPrimary},
		// A code with no sentinel stays as FromStatus leaves it.
		{"owner fails", errors.New("disk on fire"), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := startServer(t, Options{}, &fakeReplication{SubscribeFunc: scriptedOwner(startFrame(ProtocolVersion), tt.end, changes)})
			client, _ := dial(t, addr, Options{})
			sub, _, err := client.OpenSubscribe(testContext(t), &Open{Table: "t"})
			if err != nil {
				t.Fatalf("OpenSubscribe: %v", err)
			}
			defer sub.Close()
			f, err := sub.Recv()
			if err != nil {
				t.Fatalf("Recv: %v", err)
			}
			if !reflect.DeepEqual(f, changes) {
				t.Fatalf("frame:\n got %+v\nwant %+v", f, changes)
			}
			_, err = sub.Recv()
			if err == nil {
				t.Fatal("Recv after the owner ended: no error")
			}
			if tt.want != nil {
				notStatus(t, err)
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("Recv = %v, want it to wrap %v", err, tt.want)
			}
			if tt.want == nil && !strings.Contains(err.Error(), "disk on fire") {
				t.Fatalf("Recv = %v, want the owner's message", err)
			}
		})
	}
}

func TestClientSubscription_SendAndClose(t *testing.T) {
	acked := make(chan uint64, 1)
	owner := func(s SubscribeServer) error {
		if _, err := s.Recv(); err != nil {
			return err
		}
		if err := s.Send(startFrame(ProtocolVersion)); err != nil {
			return err
		}
		for {
			f, err := s.Recv()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			if f.Kind == KindAck {
				acked <- f.Seq
			}
		}
	}
	addr := startServer(t, Options{}, &fakeReplication{SubscribeFunc: owner})
	client, _ := dial(t, addr, Options{})

	t.Run("send, close send, end", func(t *testing.T) {
		sub, _, err := client.OpenSubscribe(testContext(t), &Open{Table: "t"})
		if err != nil {
			t.Fatalf("OpenSubscribe: %v", err)
		}
		defer sub.Close()
		if err := sub.Send(&ConsumerFrame{Kind: KindAck, Seq: 7}); err != nil {
			t.Fatalf("Send: %v", err)
		}
		if got := <-acked; got != 7 {
			t.Fatalf("owner got ack %d, want 7", got)
		}
		if err := sub.CloseSend(); err != nil {
			t.Fatalf("CloseSend: %v", err)
		}
		if _, err := sub.Recv(); err != io.EOF {
			t.Fatalf("Recv after CloseSend = %v, want io.EOF", err)
		}
	})
	t.Run("close ends the stream", func(t *testing.T) {
		sub, _, err := client.OpenSubscribe(testContext(t), &Open{Table: "t"})
		if err != nil {
			t.Fatalf("OpenSubscribe: %v", err)
		}
		sub.Close()
		sub.Close() // twice is fine
		_, err = sub.Recv()
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Recv after Close = %v, want context.Canceled", err)
		}
		notStatus(t, err)
		if sub.Context().Err() == nil {
			t.Fatal("the stream's context is still live after Close")
		}
	})
	t.Run("caller's context ends the stream", func(t *testing.T) {
		ctx, cancel := context.WithCancel(testContext(t))
		sub, _, err := client.OpenSubscribe(ctx, &Open{Table: "t"})
		if err != nil {
			t.Fatalf("OpenSubscribe: %v", err)
		}
		defer sub.Close()
		cancel()
		if _, err := sub.Recv(); !errors.Is(err, context.Canceled) {
			t.Fatalf("Recv after cancel = %v, want context.Canceled", err)
		}
	})
}
