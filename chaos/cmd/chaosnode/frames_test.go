package main

import (
	"io"
	"slices"
	"strconv"
	"testing"

	"github.com/replmesh/replmesh/chaos"
	"github.com/replmesh/replmesh/transport"
	"google.golang.org/grpc"
)

// fakeStream delivers frames, then io.EOF.
type fakeStream struct {
	grpc.ClientStream
	frames []*transport.OwnerFrame
}

func (s *fakeStream) RecvMsg(m any) error {
	if len(s.frames) == 0 {
		return io.EOF
	}
	*m.(*transport.OwnerFrame) = *s.frames[0]
	s.frames = s.frames[1:]
	return nil
}

func changes(seq uint64) *transport.OwnerFrame {
	return &transport.OwnerFrame{Kind: transport.KindChanges, Epoch: 1, Changes: transport.ChangeList{
		{Seq: seq, Op: transport.OpPut, Key: []byte("k"), Value: []byte("v"), TxnEnd: true, Epoch: 1}}}
}

// recvAll receives until the end of the stream and returns the frames and,
// for each, its first change's seq or its kind.
func recvAll(t *testing.T, s grpc.ClientStream) ([]string, []*transport.OwnerFrame) {
	t.Helper()
	var got []string
	var frames []*transport.OwnerFrame
	for range 100 {
		f := new(transport.OwnerFrame)
		if err := s.RecvMsg(f); err != nil {
			if err != io.EOF {
				t.Fatalf("RecvMsg: %v", err)
			}
			return got, frames
		}
		frames = append(frames, f)
		switch f.Kind {
		case transport.KindChanges:
			got = append(got, strconv.FormatUint(f.Changes[0].Seq, 10))
		default:
			got = append(got, f.Kind.String())
		}
	}
	t.Fatal("no end of stream")
	return nil, nil
}

func TestFaultyStream(t *testing.T) {
	input := func() []*transport.OwnerFrame {
		return []*transport.OwnerFrame{
			{Kind: transport.KindStart, Start: &transport.Start{LogID: "l"}},
			changes(1), changes(2), {Kind: transport.KindHeartbeat}, changes(3), changes(4),
		}
	}
	tests := []struct {
		name        string
		f           chaos.FrameFault
		want        []string
		dups, swaps uint64
		swapsCh     uint64
	}{
		{"off", chaos.FrameFault{}, []string{"start", "1", "2", "heartbeat", "3", "4"}, 0, 0, 0},
		{"duplicate", chaos.FrameFault{Dup: 1}, []string{"start", "1", "1", "2", "2", "heartbeat", "heartbeat", "3", "3", "4", "4"}, 5, 0, 0},
		// The opening is never touched; the last frame is delivered before
		// the end of the stream it met while waiting for a frame to swap with.
		{"swap", chaos.FrameFault{Swap: 1}, []string{"start", "2", "1", "3", "heartbeat", "4"}, 0, 2, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ff := &frameFaults{}
			ff.set(tt.f)
			s := &faultyStream{ClientStream: &fakeStream{frames: input()}, ff: ff}
			got, frames := recvAll(t, s)
			if !slices.Equal(got, tt.want) {
				t.Fatalf("received %q, want %q", got, tt.want)
			}
			st := ff.status()
			if st.Frames != 6 || st.Duplicated != tt.dups || st.Swapped != tt.swaps || st.SwappedChanges != tt.swapsCh {
				t.Errorf("status %+v, want 6 frames, %d duplicated, %d swapped (%d of changes)", *st, tt.dups, tt.swaps, tt.swapsCh)
			}
			if tt.f.Dup > 0 {
				// A duplicate shares no memory with the original.
				frames[1].Changes[0].Key[0] = 'x'
				if k := string(frames[2].Changes[0].Key); k != "k" {
					t.Errorf("the duplicate's key changed with the original's: %q", k)
				}
			}
		})
	}
}
