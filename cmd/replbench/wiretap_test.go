package main

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"
)

// h2Frame builds one HTTP/2 frame.
func h2Frame(typ, flags byte, stream uint32, payload []byte) []byte {
	b := []byte{byte(len(payload) >> 16), byte(len(payload) >> 8), byte(len(payload)), typ, flags}
	b = binary.BigEndian.AppendUint32(b, stream)
	return append(b, payload...)
}

// grpcMsg builds a gRPC length-prefixed message with a body of n bytes.
func grpcMsg(n int) []byte {
	b := binary.BigEndian.AppendUint32([]byte{0}, uint32(n))
	for i := range n {
		b = append(b, byte(i))
	}
	return b
}

func TestH2Parser_CountsFramesAndMessages(t *testing.T) {
	a, bm, d := grpcMsg(3), grpcMsg(20), grpcMsg(1)
	var stream []byte
	add := func(f []byte) { stream = append(stream, f...) }
	add(h2Frame(0x4, 0, 0, make([]byte, 6)))                            // SETTINGS
	add(h2Frame(0x1, 0x4, 1, make([]byte, 10)))                         // HEADERS
	add(h2Frame(0x0, 0, 1, append(append([]byte{}, a...), bm[:12]...))) // message a, the start of b
	padded := append([]byte{4}, grpcMsg(0)...)                          // pad length 4, an empty message
	add(h2Frame(0x0, 0x8, 3, append(padded, 0xff, 0xff, 0xff, 0xff)))
	add(h2Frame(0x0, 0, 1, bm[12:]))         // the rest of b
	add(h2Frame(0x0, 0, 1, nil))             // an empty DATA frame
	add(h2Frame(0x0, 0, 1, d[:2]))           // d's prefix, split
	add(h2Frame(0x0, 0x1, 1, d[2:]))         // the rest of d; END_STREAM
	add(h2Frame(0x3, 0, 3, make([]byte, 4))) // RST_STREAM
	add(h2Frame(0x8, 0, 0, make([]byte, 4))) // WINDOW_UPDATE
	const wantFrames, wantMsgs = 10, 4

	check := func(t *testing.T, pieces [][]byte) {
		t.Helper()
		p := newH2Parser()
		frames, msgs := 0, 0
		for _, piece := range pieces {
			f, m := p.feed(piece)
			frames += f
			msgs += m
		}
		if frames != wantFrames || msgs != wantMsgs {
			t.Errorf("frames, messages = %d, %d; want %d, %d", frames, msgs, wantFrames, wantMsgs)
		}
		if len(p.streams) != 0 {
			t.Errorf("%d streams left open, want 0 (END_STREAM and RST_STREAM end them)", len(p.streams))
		}
	}
	t.Run("whole", func(t *testing.T) { check(t, [][]byte{stream}) })
	t.Run("byte by byte", func(t *testing.T) {
		var pieces [][]byte
		for i := range stream {
			pieces = append(pieces, stream[i:i+1])
		}
		check(t, pieces)
	})
	t.Run("random pieces", func(t *testing.T) {
		for seed := range uint64(50) {
			rng := rand.New(rand.NewPCG(seed, 1))
			var pieces [][]byte
			for rest := stream; len(rest) > 0; {
				n := min(len(rest), 1+rng.IntN(16))
				pieces = append(pieces, rest[:n])
				rest = rest[n:]
			}
			check(t, pieces)
		}
	})
}
