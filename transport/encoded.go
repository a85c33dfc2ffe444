package transport

import (
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
	"google.golang.org/grpc/mem"
)

// EncodeChanges appends to dst the msgpack encoding of each change, one
// after the other with no array header, exactly as a ChangeList element
// travels; ends receives the end offset in dst of each change's encoding
// (dst[ends[i-1]:ends[i]] is change i). An owner encodes each change of a
// table once this way and shares the bytes among every stream it sends
// them on (EncodedChanges).
func EncodeChanges(dst []byte, chs []Change, ends []int) ([]byte, []int, error) {
	w := appendWriter{b: dst}
	enc := msgpack.NewEncoder(&w)
	enc.UseCompactInts(true)
	for i := range chs {
		if err := chs[i].EncodeMsgpack(enc); err != nil {
			return dst, ends, fmt.Errorf("encode change %d: %w", chs[i].Seq, err)
		}
		ends = append(ends, len(w.b))
	}
	return w.b, ends, nil
}

// appendWriter appends what the encoder writes to b. It is an
// io.ByteWriter too: without WriteByte msgpack wraps it in a writer that
// allocates a slice for every single byte it writes (headers, ops, small
// ints).
type appendWriter struct{ b []byte }

func (w *appendWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}

func (w *appendWriter) WriteByte(c byte) error {
	w.b = append(w.b, c)
	return nil
}

// EncodedChanges returns a KindChanges frame whose n changes are already
// encoded (EncodeChanges): parts, concatenated, are their encodings in
// seq order. Codec sends the frame's head fields and the parts as they
// are, without copying or encoding them again, so one encoding serves any
// number of streams. The parts must not change afterwards. The receiver
// decodes the frame like any other KindChanges frame; the returned frame's
// Changes field is nil on the sending side.
func EncodedChanges(head, epoch uint64, rate float64, n int, parts [][]byte) *OwnerFrame {
	return &OwnerFrame{Kind: KindChanges, HeadSeq: head, Epoch: epoch, Rate: rate, encoded: &encodedChanges{n: n, parts: parts}}
}

// encodedChanges are the pre-encoded changes of a frame (EncodedChanges).
type encodedChanges struct {
	n     int
	parts [][]byte
}

// Encoded reports whether f carries pre-encoded changes (EncodedChanges)
// and how many.
func (f *OwnerFrame) Encoded() (n int, ok bool) {
	if f.encoded == nil {
		return 0, false
	}
	return f.encoded.n, true
}

// marshalEncoded writes f (KindChanges with pre-encoded changes) as the
// map msgpack writes for an OwnerFrame: the head fields, then the
// changes' array header followed by the shared parts, each its own buffer.
func marshalEncoded(f *OwnerFrame) (mem.BufferSlice, error) {
	pe := encPool.Get().(*pooledEncoder)
	defer encPool.Put(pe)
	pe.buf.Reset()
	e := pe.enc
	err := e.EncodeMapLen(5)
	for _, step := range []func() error{
		func() error { return e.EncodeString("k") },
		func() error { return e.EncodeUint(uint64(f.Kind)) },
		func() error { return e.EncodeString("h") },
		func() error { return e.EncodeUint(f.HeadSeq) },
		func() error { return e.EncodeString("ep") },
		func() error { return e.EncodeUint(f.Epoch) },
		func() error { return e.EncodeString("wr") },
		func() error { return e.EncodeFloat64(f.Rate) },
		func() error { return e.EncodeString("c") },
		func() error { return e.EncodeArrayLen(f.encoded.n) },
	} {
		if err != nil {
			break
		}
		err = step()
	}
	if err != nil {
		return nil, fmt.Errorf("msgpack marshal encoded changes: %w", err)
	}
	out := make(mem.BufferSlice, 0, 1+len(f.encoded.parts))
	out = append(out, mem.SliceBuffer(append([]byte(nil), pe.buf.Bytes()...)))
	for _, p := range f.encoded.parts {
		out = append(out, mem.SliceBuffer(p))
	}
	return out, nil
}
