package transport

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
)

// CodecName is the gRPC content-subtype of the msgpack codec.
const CodecName = "msgpack"

// Codec is the msgpack gRPC codec. It is registered with gRPC at init and is
// forced on every connection made by Dial, so the content-subtype on the wire
// is always "msgpack".
type Codec struct{}

var _ encoding.CodecV2 = Codec{}

func init() { encoding.RegisterCodecV2(Codec{}) }

var encPool = sync.Pool{New: func() any {
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	enc.UseCompactInts(true)
	return &pooledEncoder{buf: &buf, enc: enc}
}}

type pooledEncoder struct {
	buf *bytes.Buffer
	enc *msgpack.Encoder
}

// Marshal encodes v with msgpack into a buffer owned by the returned slice.
// A frame of pre-encoded changes (EncodedChanges) goes out as its head
// fields and the shared encodings, not copied.
func (Codec) Marshal(v any) (mem.BufferSlice, error) {
	if f, ok := v.(*OwnerFrame); ok && f.encoded != nil {
		return marshalEncoded(f)
	}
	pe := encPool.Get().(*pooledEncoder)
	pe.buf.Reset()
	if err := pe.enc.Encode(v); err != nil {
		encPool.Put(pe)
		return nil, fmt.Errorf("msgpack marshal %T: %w", v, err)
	}
	out := make([]byte, pe.buf.Len())
	copy(out, pe.buf.Bytes())
	if pe.buf.Cap() <= 1<<20 {
		encPool.Put(pe)
	}
	return mem.BufferSlice{mem.SliceBuffer(out)}, nil
}

// Unmarshal decodes msgpack data into v. Byte slices in v never alias data
// (they may alias the codec's copy of it: see frameReader).
func (Codec) Unmarshal(data mem.BufferSlice, v any) error {
	if raw, ok := v.(*rawMessage); ok {
		*raw = data.Materialize()
		return nil
	}
	fr := &frameReader{}
	if isSlabFrame(data, v) {
		// A rows or changes frame's keys and values are copied out of the
		// message (into its slab: parseRow, parseChange), so the message
		// is read from a pooled buffer, not a copy of its own: a reader
		// would otherwise allocate its whole payload twice, once as
		// garbage.
		buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
		defer buf.Free()
		fr.b, fr.pooled = buf.ReadOnlyData(), true
	} else {
		fr.b = data.Materialize()
	}
	if err := checkBounds(fr.b); err != nil {
		return fmt.Errorf("%w: msgpack unmarshal %T: %v", ErrBadRequest, v, err)
	}
	dec := msgpack.GetDecoder()
	dec.Reset(fr)
	err := dec.Decode(v)
	dec.Reset(nil)
	msgpack.PutDecoder(dec)
	if err != nil {
		return fmt.Errorf("%w: msgpack unmarshal %T: %v", ErrBadRequest, v, err)
	}
	return nil
}

// isSlabFrame reports whether data is an OwnerFrame of KindRows or
// KindChanges decoded into v: the map msgpack's encoder writes for it
// starts with its Kind (fixmap, fixstr "k", the kind as a positive
// fixint). Anything else is decoded as before.
func isSlabFrame(data mem.BufferSlice, v any) bool {
	if _, ok := v.(*OwnerFrame); !ok || len(data) == 0 {
		return false
	}
	b := data[0].ReadOnlyData()
	return len(b) >= 4 && b[0]&0xf0 == msgpcode.FixedMapLow && b[1] == msgpcode.FixedStrLow|1 && b[2] == 'k' &&
		(b[3] == byte(KindRows) || b[3] == byte(KindChanges))
}

// frameReader is what Codec decodes a message from: b is the codec's own
// copy of it (Materialize copies), so the keys and values of change and
// row lists are cut from b (take) instead of allocated one by one: one
// allocation per message, not two per change. A decoded key or value
// keeps its whole message alive while it is referenced.
type frameReader struct {
	b   []byte
	pos int
	// pooled: b is a pooled buffer, freed once the message is decoded;
	// take then copies.
	pooled bool
	// slab is the one allocation parseRow copies a rows frame's keys and
	// values into, sized at its first row for the rows that follow
	// (slabbed); a row it has no room for gets its own.
	slab    []byte
	slabbed bool
}

func (r *frameReader) Read(p []byte) (int, error) {
	if r.pos >= len(r.b) {
		return 0, io.EOF
	}
	n := copy(p, r.b[r.pos:])
	r.pos += n
	return n, nil
}

func (r *frameReader) ReadByte() (byte, error) {
	if r.pos >= len(r.b) {
		return 0, io.EOF
	}
	r.pos++
	return r.b[r.pos-1], nil
}

func (r *frameReader) UnreadByte() error {
	if r.pos == 0 {
		return errors.New("frameReader: unread at the start")
	}
	r.pos--
	return nil
}

// take returns the next n bytes of the message, not copied (copied from a
// pooled buffer), capped so an append to them never writes over what
// follows.
func (r *frameReader) take(n int) ([]byte, error) {
	if n > len(r.b)-r.pos {
		return nil, io.ErrUnexpectedEOF
	}
	out := r.b[r.pos : r.pos+n : r.pos+n]
	r.pos += n
	if r.pooled {
		return bytes.Clone(out), nil
	}
	return out, nil
}

// parseChange decodes the change at the reader's position when it is in
// the forms msgpack's encoder writes (AppendChange's): a 7-element
// fixarray; seq, op and epoch as unsigned ints; key and value as bins or
// nil (a nil key or value stays nil); the time as an int; TxnEnd as a
// bool. It gives what Change.decode gives for those bytes, without the
// decoder's per-field calls. A bin is cut from the message like
// decodeBin's; read from a pooled buffer, the key and the value are
// copied into the frame's slab instead, one after the other, the key's
// capacity covering the value (RowBytes, as a decoded row's: a resident
// replica keeps them as they are), like parseRow's. Any other form
// (msgpack accepts several for one value), or too few bytes, leaves the
// reader and c as they were and returns false: Change.decode then reads
// the change, or fails on it.
func (r *frameReader) parseChange(c *Change) bool {
	ch, p, ok := parseChangeAt(r.b, r.pos)
	if !ok {
		return false
	}
	if r.pooled {
		if !r.slabbed {
			r.slab, r.slabbed = slabFor(changeBytesAhead(r.b, r.pos)), true
		}
		k, v := ch.Key, ch.Value
		var kv []byte
		kv, r.slab = slabCut(r.slab, len(k)+len(v))
		copy(kv, k)
		copy(kv[len(k):], v)
		ch.Key, ch.Value = nil, nil
		if k != nil {
			ch.Key = kv[:len(k)]
		}
		if v != nil {
			ch.Value = kv[len(k):]
		}
	}
	*c, r.pos = ch, p
	return true
}

// slabFor is a slab for n bytes of keys and values. Its capacity is one
// byte more, never used: a key or value cut from it never ends where
// another allocation starts, so rows that follow each other in memory are
// in the same slab (what a resident replica's runs of adopted rows rely
// on: resident.apply).
func slabFor(n int) []byte { return make([]byte, 0, n+1) }

// slabCut cuts n bytes from slab (its capacity capped at them), or
// allocates them (with slabFor's spare byte) when the slab has no room,
// and returns them and the slab.
func slabCut(slab []byte, n int) (kv, rest []byte) {
	l := len(slab)
	if n > cap(slab)-l-1 {
		return slabFor(n)[:n:n], slab
	}
	slab = slab[:l+n]
	return slab[l : l+n : l+n], slab
}

// changeBytesAhead is the key and value bytes of the changes in
// parseChange's form from b[p:] on, up to the first that is not: what a
// changes frame's slab holds (rowBytesAhead).
func changeBytesAhead(b []byte, p int) int {
	n := 0
	for {
		ch, q, ok := parseChangeAt(b, p)
		if !ok {
			return n
		}
		n += len(ch.Key) + len(ch.Value)
		p = q
	}
}

// parseChangeAt parses the change at b[p:] in parseChange's forms, its key
// and value cut from b, and returns it and the position after it.
func parseChangeAt(b []byte, p int) (Change, int, bool) {
	if p >= len(b) || b[p] != msgpcode.FixedArrayLow|7 {
		return Change{}, p, false
	}
	p++
	var ch Change
	var op, tm uint64
	var ok bool
	if ch.Seq, p, ok = parseUint(b, p); !ok {
		return ch, p, false
	}
	if op, p, ok = parseUint(b, p); !ok || op > 255 {
		return ch, p, false
	}
	ch.Op = Op(op)
	if ch.Key, p, ok = parseBin(b, p); !ok {
		return ch, p, false
	}
	if ch.Value, p, ok = parseBin(b, p); !ok {
		return ch, p, false
	}
	if tm, p, ok = parseInt(b, p); !ok {
		return ch, p, false
	}
	ch.Time = int64(tm)
	if p >= len(b) || (b[p] != msgpcode.True && b[p] != msgpcode.False) {
		return ch, p, false
	}
	ch.TxnEnd = b[p] == msgpcode.True
	if ch.Epoch, p, ok = parseUint(b, p+1); !ok {
		return ch, p, false
	}
	return ch, p, true
}

// parseRow decodes the row at the reader's position when it is in the
// form msgpack's encoder writes (AppendRow's): a 2-element fixarray of
// two bins or nils. It gives what Row.decode gives for those bytes (the
// key and the value copied into one allocation, RowBytes), without the
// decoder's per-field calls; the allocation is the frame's slab, shared
// by its rows (one allocation a frame, not one a row), each row's slice
// of it capped so an append to it copies. Any other form, or too few bytes, leaves the
// reader and r as they were and returns false: Row.decode then reads the
// row, or fails on it.
func (r *frameReader) parseRow(row *Row) bool {
	b, p := r.b, r.pos
	if p >= len(b) || b[p] != msgpcode.FixedArrayLow|2 {
		return false
	}
	k, p, ok := parseBin(b, p+1)
	if !ok {
		return false
	}
	v, p, ok := parseBin(b, p)
	if !ok {
		return false
	}
	if !r.slabbed {
		r.slab, r.slabbed = make([]byte, 0, rowBytesAhead(b, r.pos)), true
	}
	n := len(k) + len(v)
	var kv []byte
	if l := len(r.slab); n <= cap(r.slab)-l {
		r.slab = r.slab[:l+n]
		kv = r.slab[l : l+n : l+n]
	} else {
		kv = make([]byte, n)
	}
	copy(kv, k)
	copy(kv[len(k):], v)
	row.cut(kv, len(k), k != nil, v != nil)
	r.pos = p
	return true
}

// rowBytesAhead is the key and value bytes of the rows in parseRow's form
// from b[p:] on, up to the first that is not: what a rows frame's slab
// holds. A slab sized exactly costs no more than its bytes (a frame's,
// some 80 KB, rounded up to whole pages), where one allocation per row
// was rounded up to its size class (288 bytes for a 266-byte row).
func rowBytesAhead(b []byte, p int) int {
	n := 0
	for p < len(b) && b[p] == msgpcode.FixedArrayLow|2 {
		k, q, ok := parseBin(b, p+1)
		if !ok {
			break
		}
		v, q, ok := parseBin(b, q)
		if !ok {
			break
		}
		n += len(k) + len(v)
		p = q
	}
	return n
}

// parseUint reads an unsigned int (positive fixint, uint8..uint64) at
// b[p:], returning it and the position after it.
func parseUint(b []byte, p int) (uint64, int, bool) { return parseNum(b, p, false) }

// parseInt reads an int as msgpack's DecodeInt64 does (returned as its
// two's complement bits): a fixint of either sign, uint8..uint64,
// int8..int64.
func parseInt(b []byte, p int) (uint64, int, bool) { return parseNum(b, p, true) }

// parseNum reads an int at b[p:]: unsigned forms only unless signed.
func parseNum(b []byte, p int, signed bool) (uint64, int, bool) {
	if p >= len(b) {
		return 0, p, false
	}
	c := b[p]
	switch {
	case c <= msgpcode.PosFixedNumHigh:
		return uint64(c), p + 1, true
	case c >= msgpcode.NegFixedNumLow:
		return uint64(int64(int8(c))), p + 1, signed
	}
	var n int
	neg := false
	switch c {
	case msgpcode.Uint8, msgpcode.Uint16, msgpcode.Uint32, msgpcode.Uint64:
		n = 1 << (c - msgpcode.Uint8)
	case msgpcode.Int8, msgpcode.Int16, msgpcode.Int32, msgpcode.Int64:
		n, neg = 1<<(c-msgpcode.Int8), true
	default:
		return 0, p, false
	}
	if neg && !signed {
		return 0, p, false
	}
	v, q, ok := readBE(b, p+1, n)
	if ok && neg {
		shift := 64 - 8*uint(n) // sign-extend from n bytes
		v = uint64(int64(v<<shift) >> shift)
	}
	return v, q, ok
}

// readBE reads an n-byte big-endian number at b[p:].
func readBE(b []byte, p, n int) (uint64, int, bool) {
	if len(b)-p < n {
		return 0, p, false
	}
	var v uint64
	for _, x := range b[p : p+n] {
		v = v<<8 | uint64(x)
	}
	return v, p + n, true
}

// parseBin reads a bin8/16/32 (cut from b, capped like frameReader.take)
// or nil at b[p:].
func parseBin(b []byte, p int) ([]byte, int, bool) {
	if p >= len(b) {
		return nil, p, false
	}
	var n int
	switch c := b[p]; c {
	case msgpcode.Nil:
		return nil, p + 1, true
	case msgpcode.Bin8, msgpcode.Bin16, msgpcode.Bin32:
		n = 1 << (c - msgpcode.Bin8)
	default:
		return nil, p, false
	}
	l, s, ok := readBE(b, p+1, n)
	if !ok || l > uint64(len(b)-s) {
		return nil, p, false
	}
	e := s + int(l)
	return b[s:e:e], e, true
}

// rawMessage receives a message's bytes undecoded. Server handlers decode
// requests themselves (decodeRequest): gRPC reports a codec failure as
// Internal, while a malformed request must be answered with ErrBadRequest.
type rawMessage []byte

// Name returns CodecName.
func (Codec) Name() string { return CodecName }

// Marshal encodes v the way it travels on the wire. Tools and tests use it to
// build frames; the gRPC path uses Codec.
func Marshal(v any) ([]byte, error) {
	bs, err := Codec{}.Marshal(v)
	if err != nil {
		return nil, err
	}
	return bs.Materialize(), nil
}

// Unmarshal decodes wire bytes into v; it is the decoder every message type
// goes through, and the one the fuzz targets exercise.
func Unmarshal(b []byte, v any) error {
	return Codec{}.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, v)
}
