package main

import (
	"context"
	"math"
	"math/rand/v2"
	"sync/atomic"

	"github.com/replmesh/replmesh/chaos"
	"github.com/replmesh/replmesh/transport"
	"google.golang.org/grpc"
)

// A consumer's Subscribe streams go through a gRPC client interceptor
// (given to the replica as a dial option, see startConsumer) that can
// duplicate and reorder the frames the owner sends, at the message level:
// the replica receives a frame twice, or two consecutive frames in reverse
// order, exactly as if the owner had sent them that way. TCP and HTTP/2
// never deliver bytes twice or out of order, so this is the only place in
// the process where such frames can be made; the harness switches it on
// and off (OpFrames) and reads its counters in the node's status.
//
// Every frame but the opening one (Start) may be touched: changes,
// heartbeats, deltas, and a full transfer's begin, rows and end frames. A
// transfer's end frame counts the rows sent, so a rows frame swapped
// behind it (or repeated) makes the replica refuse the copy and start the
// transfer again instead of serving it incomplete.

// subscribeMethod is the full gRPC name of the replication Subscribe stream.
const subscribeMethod = "/" + transport.ReplicationServiceName + "/Subscribe"

// frameFaults is the state of the frame fault, shared by every Subscribe
// stream of the process.
type frameFaults struct {
	dup, swap atomic.Uint64 // probabilities per frame, as math.Float64bits

	frames         atomic.Uint64 // frames received from owners
	duplicated     atomic.Uint64 // frames delivered twice
	swapped        atomic.Uint64 // pairs of frames delivered in reverse order
	swappedChanges atomic.Uint64 // of which both carried changes
}

// set changes the probabilities; zero switches the fault off.
func (ff *frameFaults) set(f chaos.FrameFault) {
	ff.dup.Store(math.Float64bits(f.Dup))
	ff.swap.Store(math.Float64bits(f.Swap))
}

func (ff *frameFaults) rates() (dup, swap float64) {
	return math.Float64frombits(ff.dup.Load()), math.Float64frombits(ff.swap.Load())
}

func (ff *frameFaults) status() *chaos.FrameStatus {
	dup, swap := ff.rates()
	return &chaos.FrameStatus{
		FrameFault: chaos.FrameFault{Dup: dup, Swap: swap},
		Frames:     ff.frames.Load(), Duplicated: ff.duplicated.Load(),
		Swapped: ff.swapped.Load(), SwappedChanges: ff.swappedChanges.Load(),
	}
}

// intercept is the grpc.StreamClientInterceptor: it wraps Subscribe
// streams and leaves every other stream alone.
func (ff *frameFaults) intercept(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	cs, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil || method != subscribeMethod {
		return cs, err
	}
	return &faultyStream{ClientStream: cs, ff: ff}, nil
}

// faultyStream is a Subscribe stream whose received frames may be
// duplicated or swapped. gRPC allows one receiver at a time, so held needs
// no lock.
type faultyStream struct {
	grpc.ClientStream
	ff   *frameFaults
	held []heldFrame // delivered, in order, before anything more is received
}

// heldFrame is a frame, or the error that ended the stream, waiting to be
// delivered.
type heldFrame struct {
	f   *transport.OwnerFrame
	err error
}

// tampered reports whether the fault may duplicate or reorder a frame of
// this kind: every kind but the opening Start (which only makes the replica
// reconnect at once).
func tampered(k transport.FrameKind) bool {
	return k != transport.KindStart
}

func carriesChanges(f *transport.OwnerFrame) bool {
	return f.Kind == transport.KindChanges && len(f.Changes) > 0
}

// RecvMsg delivers a held frame if there is one; otherwise it receives a
// frame and, with the fault's probabilities, holds a copy of it to deliver
// next (a duplicate), or receives the following frame too and delivers the
// two in reverse order (a swap).
func (s *faultyStream) RecvMsg(m any) error {
	out, ok := m.(*transport.OwnerFrame)
	if !ok {
		return s.ClientStream.RecvMsg(m)
	}
	if len(s.held) > 0 {
		h := s.held[0]
		s.held = s.held[1:]
		if h.err != nil {
			return h.err
		}
		*out = *h.f
		return nil
	}
	if err := s.ClientStream.RecvMsg(out); err != nil {
		return err
	}
	s.ff.frames.Add(1)
	if !tampered(out.Kind) {
		return nil
	}
	dup, swap := s.ff.rates()
	if dup <= 0 && swap <= 0 {
		return nil
	}
	switch x := rand.Float64(); {
	case x < dup:
		c, err := deepCopy(out)
		if err != nil {
			return err
		}
		s.held = append(s.held, heldFrame{f: c})
		s.ff.duplicated.Add(1)
	case x < dup+swap:
		next := new(transport.OwnerFrame)
		if err := s.ClientStream.RecvMsg(next); err != nil {
			s.held = append(s.held, heldFrame{err: err}) // this frame first, then the error
			return nil
		}
		s.ff.frames.Add(1)
		if !tampered(next.Kind) {
			s.held = append(s.held, heldFrame{f: next}) // in order
			return nil
		}
		first := *out
		*out = *next
		s.held = append(s.held, heldFrame{f: &first})
		s.ff.swapped.Add(1)
		if carriesChanges(&first) && carriesChanges(next) {
			s.ff.swappedChanges.Add(1)
		}
	}
	return nil
}

// deepCopy copies f through its wire encoding: the copy shares no memory
// with f (the replica may keep the changes it applied).
func deepCopy(f *transport.OwnerFrame) (*transport.OwnerFrame, error) {
	b, err := transport.Marshal(f)
	if err != nil {
		return nil, err
	}
	c := new(transport.OwnerFrame)
	if err := transport.Unmarshal(b, c); err != nil {
		return nil, err
	}
	return c, nil
}
