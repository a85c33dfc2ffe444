package transport

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/vmihailenco/msgpack/v5/msgpcode"
	"google.golang.org/grpc/mem"
)

// EncodeChanges appends to dst the msgpack encoding of each change, one
// after the other with no array header, exactly as a ChangeList element
// travels; ends receives the end offset in dst of each change's encoding
// (dst[ends[i-1]:ends[i]] is change i). An owner encodes each change of a
// table once this way and shares the bytes among every stream it sends
// them on (EncodedChanges).
//
// The bytes are those Change.EncodeMsgpack writes with compact ints,
// appended directly (AppendChange): no encoder, no reflection.
func EncodeChanges(dst []byte, chs []Change, ends []int) ([]byte, []int, error) {
	for i := range chs {
		dst = AppendChange(dst, &chs[i])
		ends = append(ends, len(dst))
	}
	return dst, ends, nil
}

// AppendChange appends c's wire encoding to dst: the 7-element msgpack
// array Change.EncodeMsgpack writes through an encoder with compact ints,
// byte for byte (every decoder of a Change reads it), written without an
// encoder. An owner builds frames from its log entries this way, copying
// each key and value once.
func AppendChange(dst []byte, c *Change) []byte {
	dst = append(dst, msgpcode.FixedArrayLow|7)
	dst = appendUint(dst, c.Seq)
	dst = appendUint(dst, uint64(c.Op))
	dst = appendBin(dst, c.Key)
	dst = appendBin(dst, c.Value)
	dst = appendInt(dst, c.Time)
	if c.TxnEnd {
		dst = append(dst, msgpcode.True)
	} else {
		dst = append(dst, msgpcode.False)
	}
	return appendUint(dst, c.Epoch)
}

// appendUint is msgpack's compact EncodeUint: the smallest encoding.
func appendUint(b []byte, n uint64) []byte {
	switch {
	case n <= math.MaxInt8:
		return append(b, byte(n))
	case n <= math.MaxUint8:
		return append(b, msgpcode.Uint8, byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, msgpcode.Uint16), uint16(n))
	case n <= math.MaxUint32:
		return binary.BigEndian.AppendUint32(append(b, msgpcode.Uint32), uint32(n))
	}
	return binary.BigEndian.AppendUint64(append(b, msgpcode.Uint64), n)
}

// appendInt is msgpack's compact EncodeInt.
func appendInt(b []byte, n int64) []byte {
	switch {
	case n >= 0:
		return appendUint(b, uint64(n))
	case n >= int64(int8(msgpcode.NegFixedNumLow)):
		return append(b, byte(n))
	case n >= math.MinInt8:
		return append(b, msgpcode.Int8, byte(n))
	case n >= math.MinInt16:
		return binary.BigEndian.AppendUint16(append(b, msgpcode.Int16), uint16(n))
	case n >= math.MinInt32:
		return binary.BigEndian.AppendUint32(append(b, msgpcode.Int32), uint32(n))
	}
	return binary.BigEndian.AppendUint64(append(b, msgpcode.Int64), uint64(n))
}

// appendBin is msgpack's EncodeBytes: nil stays nil.
func appendBin(b, v []byte) []byte {
	switch l := len(v); {
	case v == nil:
		return append(b, msgpcode.Nil)
	case l <= math.MaxUint8:
		b = append(b, msgpcode.Bin8, byte(l))
	case l <= math.MaxUint16:
		b = binary.BigEndian.AppendUint16(append(b, msgpcode.Bin16), uint16(l))
	default:
		b = binary.BigEndian.AppendUint32(append(b, msgpcode.Bin32), uint32(l))
	}
	return append(b, v...)
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

// AppendRow appends the wire encoding of the row key, value to dst: the
// 2-element msgpack array Row.EncodeMsgpack writes, byte for byte. A full
// transfer's sender builds its rows frames this way (EncodedRows),
// copying each key and value once.
func AppendRow(dst, key, value []byte) []byte {
	return appendBin(appendBin(append(dst, msgpcode.FixedArrayLow|2), key), value)
}

// EncodedRows returns a KindRows frame whose n rows are already encoded
// (AppendRow), one after the other, in body. Codec sends body as it is,
// after the frame's head, without copying or encoding it again; gRPC may
// still be writing it after the send returns, so body must not change
// afterwards. The receiver decodes the frame like any other KindRows
// frame; the returned frame's Rows field is nil on the sending side.
func EncodedRows(n int, body []byte) *OwnerFrame {
	return &OwnerFrame{Kind: KindRows, encoded: &encodedChanges{n: n, parts: [][]byte{body}}}
}

// encodedChanges are the pre-encoded changes (or rows: EncodedRows) of a
// frame (EncodedChanges).
type encodedChanges struct {
	n     int
	parts [][]byte
}

// EncodedSize is the size of the pre-encoded changes or rows f carries
// (0: none).
func (f *OwnerFrame) EncodedSize() int {
	if f.encoded == nil {
		return 0
	}
	n := 0
	for _, p := range f.encoded.parts {
		n += len(p)
	}
	return n
}

// Encoded reports whether f carries pre-encoded changes (EncodedChanges)
// or rows (EncodedRows) and how many.
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
	if f.Kind == KindRows {
		// The map msgpack writes for a rows frame: its kind and rows (the
		// other fields are empty).
		head := []byte{msgpcode.FixedMapLow | 2, msgpcode.FixedStrLow | 1, 'k', byte(KindRows), msgpcode.FixedStrLow | 1, 'r'}
		return withParts(appendArrayLen(head, f.encoded.n), f.encoded.parts), nil
	}
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
	return withParts(append([]byte(nil), pe.buf.Bytes()...), f.encoded.parts), nil
}

// withParts is the message head followed by the shared parts, each its
// own buffer.
func withParts(head []byte, parts [][]byte) mem.BufferSlice {
	out := make(mem.BufferSlice, 0, 1+len(parts))
	out = append(out, mem.SliceBuffer(head))
	for _, p := range parts {
		out = append(out, mem.SliceBuffer(p))
	}
	return out
}

// appendArrayLen is msgpack's EncodeArrayLen.
func appendArrayLen(b []byte, n int) []byte {
	switch {
	case n < 16:
		return append(b, msgpcode.FixedArrayLow|byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, msgpcode.Array16), uint16(n))
	}
	return binary.BigEndian.AppendUint32(append(b, msgpcode.Array32), uint32(n))
}
