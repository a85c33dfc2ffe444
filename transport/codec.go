package transport

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/vmihailenco/msgpack/v5"
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
	b := data.Materialize()
	if raw, ok := v.(*rawMessage); ok {
		*raw = b
		return nil
	}
	if err := checkBounds(b); err != nil {
		return fmt.Errorf("%w: msgpack unmarshal %T: %v", ErrBadRequest, v, err)
	}
	dec := msgpack.GetDecoder()
	dec.Reset(&frameReader{b: b})
	err := dec.Decode(v)
	dec.Reset(nil)
	msgpack.PutDecoder(dec)
	if err != nil {
		return fmt.Errorf("%w: msgpack unmarshal %T: %v", ErrBadRequest, v, err)
	}
	return nil
}

// frameReader is what Codec decodes a message from: b is the codec's own
// copy of it (Materialize copies), so the keys and values of change and
// row lists are cut from b (take) instead of allocated one by one: one
// allocation per message, not two per change. A decoded key or value
// keeps its whole message alive while it is referenced.
type frameReader struct {
	b   []byte
	pos int
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

// take returns the next n bytes of the message, not copied, capped so an
// append to them never writes over what follows.
func (r *frameReader) take(n int) ([]byte, error) {
	if n > len(r.b)-r.pos {
		return nil, io.ErrUnexpectedEOF
	}
	out := r.b[r.pos : r.pos+n : r.pos+n]
	r.pos += n
	return out, nil
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
