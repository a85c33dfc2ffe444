package main

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"time"
	"unicode/utf8"
)

// Values of typed tables are msgpack (replica.Typed); get and tail show
// them as JSON. The decoder below is replctl's own: it reads the bytes of
// one value with every length checked against what is left (a value
// cannot make it allocate more than a few times its size) and nesting
// bounded by maxValueDepth.

// maxValueDepth bounds how deeply arrays and maps may nest in a value
// shown as JSON; a deeper value is shown as bytes.
const maxValueDepth = 64

var errNotMsgpack = errors.New("not msgpack")

// msgpackJSON returns value b as compact JSON when b is exactly one
// msgpack object (nothing left over) and is not printable text: a
// printable UTF-8 value is text, even when it also reads as msgpack (only
// a one-character value can: an ASCII character is a positive fixint, and
// a few two-byte characters read as a uint8 or int8). Strings that are not
// UTF-8 and binaries become "0x..." hex strings; map keys that are not
// strings become the JSON text of the key, as a string (1 -> "1",
// [1,2] -> "[1,2]"); a timestamp extension becomes an RFC 3339 string,
// another extension {"ext": type, "hex": "..."}; NaN and infinities become
// strings.
func msgpackJSON(b []byte) (json.RawMessage, bool) {
	if len(b) == 0 || (utf8.Valid(b) && printable(string(b))) {
		return nil, false
	}
	d := &mpDecoder{b: b}
	var out bytes.Buffer
	if err := d.value(&out, 0); err != nil || d.pos != len(b) {
		return nil, false
	}
	return out.Bytes(), true
}

// showValue renders a value for a human: printable text as showBytes
// does, a msgpack value as compact JSON, anything else as showBytes does
// (quoted text, or 0x-hex); always 0x-hex with asHex.
func showValue(b []byte, asHex bool) string {
	if !asHex {
		if j, ok := msgpackJSON(b); ok {
			return string(j)
		}
	}
	return showBytes(b, asHex)
}

type mpDecoder struct {
	b   []byte
	pos int
}

// take returns the next n bytes.
func (d *mpDecoder) take(n uint64) ([]byte, error) {
	if n > uint64(len(d.b)-d.pos) {
		return nil, errNotMsgpack
	}
	p := d.b[d.pos : d.pos+int(n)]
	d.pos += int(n)
	return p, nil
}

// uint reads an n-byte big-endian unsigned integer.
func (d *mpDecoder) uint(n int) (uint64, error) {
	p, err := d.take(uint64(n))
	if err != nil {
		return 0, err
	}
	var v uint64
	for _, c := range p {
		v = v<<8 | uint64(c)
	}
	return v, nil
}

// value appends the JSON of the next object to out.
func (d *mpDecoder) value(out *bytes.Buffer, depth int) error {
	if depth > maxValueDepth {
		return errNotMsgpack
	}
	p, err := d.take(1)
	if err != nil {
		return err
	}
	c := p[0]
	switch {
	case c <= 0x7f:
		out.WriteString(strconv.Itoa(int(c)))
		return nil
	case c >= 0xe0:
		out.WriteString(strconv.Itoa(int(int8(c))))
		return nil
	case c <= 0x8f:
		return d.mapBody(out, uint64(c&0x0f), depth)
	case c <= 0x9f:
		return d.arrayBody(out, uint64(c&0x0f), depth)
	case c <= 0xbf:
		return d.str(out, uint64(c&0x1f))
	}
	// sized: the code is followed by a length of 1, 2 or 4 bytes.
	sized := func(n int, body func(uint64) error) error {
		l, err := d.uint(n)
		if err != nil {
			return err
		}
		return body(l)
	}
	switch c {
	case 0xc0:
		out.WriteString("null")
	case 0xc2:
		out.WriteString("false")
	case 0xc3:
		out.WriteString("true")
	case 0xc4, 0xc5, 0xc6: // bin 8/16/32
		return sized(1<<(c-0xc4), func(n uint64) error { return d.bin(out, n) })
	case 0xc7, 0xc8, 0xc9: // ext 8/16/32
		return sized(1<<(c-0xc7), func(n uint64) error { return d.ext(out, n) })
	case 0xca, 0xcb: // float 32/64
		bits, err := d.uint(4 << (c - 0xca))
		if err != nil {
			return err
		}
		f, size := math.Float64frombits(bits), 64
		if c == 0xca {
			f, size = float64(math.Float32frombits(uint32(bits))), 32
		}
		writeFloat(out, f, size)
	case 0xcc, 0xcd, 0xce, 0xcf: // uint 8/16/32/64
		v, err := d.uint(1 << (c - 0xcc))
		if err != nil {
			return err
		}
		out.WriteString(strconv.FormatUint(v, 10))
	case 0xd0, 0xd1, 0xd2, 0xd3: // int 8/16/32/64
		n := 1 << (c - 0xd0)
		v, err := d.uint(n)
		if err != nil {
			return err
		}
		shift := 64 - 8*n // sign-extend
		out.WriteString(strconv.FormatInt(int64(v<<shift)>>shift, 10))
	case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8: // fixext 1/2/4/8/16
		return d.ext(out, 1<<(c-0xd4))
	case 0xd9, 0xda, 0xdb: // str 8/16/32
		return sized(1<<(c-0xd9), func(n uint64) error { return d.str(out, n) })
	case 0xdc, 0xdd: // array 16/32
		return sized(2<<(c-0xdc), func(n uint64) error { return d.arrayBody(out, n, depth) })
	case 0xde, 0xdf: // map 16/32
		return sized(2<<(c-0xde), func(n uint64) error { return d.mapBody(out, n, depth) })
	default: // 0xc1 is never used
		return errNotMsgpack
	}
	return nil
}

func (d *mpDecoder) arrayBody(out *bytes.Buffer, n uint64, depth int) error {
	out.WriteByte('[')
	for i := uint64(0); i < n; i++ {
		if i > 0 {
			out.WriteByte(',')
		}
		if err := d.value(out, depth+1); err != nil {
			return err
		}
	}
	out.WriteByte(']')
	return nil
}

func (d *mpDecoder) mapBody(out *bytes.Buffer, n uint64, depth int) error {
	out.WriteByte('{')
	var key bytes.Buffer
	for i := uint64(0); i < n; i++ {
		if i > 0 {
			out.WriteByte(',')
		}
		key.Reset()
		if err := d.value(&key, depth+1); err != nil {
			return err
		}
		if k := key.Bytes(); len(k) > 0 && k[0] == '"' {
			out.Write(k) // a string key (or a binary one, as hex)
		} else {
			writeString(out, key.String()) // 1 -> "1", [1,2] -> "[1,2]"
		}
		out.WriteByte(':')
		if err := d.value(out, depth+1); err != nil {
			return err
		}
	}
	out.WriteByte('}')
	return nil
}

func (d *mpDecoder) str(out *bytes.Buffer, n uint64) error {
	p, err := d.take(n)
	if err != nil {
		return err
	}
	if !utf8.Valid(p) {
		writeString(out, "0x"+hex.EncodeToString(p))
		return nil
	}
	writeString(out, string(p))
	return nil
}

func (d *mpDecoder) bin(out *bytes.Buffer, n uint64) error {
	p, err := d.take(n)
	if err != nil {
		return err
	}
	writeString(out, "0x"+hex.EncodeToString(p))
	return nil
}

// ext renders an extension of n data bytes (the type byte comes first).
func (d *mpDecoder) ext(out *bytes.Buffer, n uint64) error {
	p, err := d.take(1 + n)
	if err != nil {
		return err
	}
	typ, data := int8(p[0]), p[1:]
	if typ == -1 { // the timestamp extension
		var sec int64
		var nsec uint32
		switch len(data) {
		case 4:
			sec = int64(binary.BigEndian.Uint32(data))
		case 8:
			v := binary.BigEndian.Uint64(data)
			sec, nsec = int64(v&(1<<34-1)), uint32(v>>34)
		case 12:
			nsec, sec = binary.BigEndian.Uint32(data), int64(binary.BigEndian.Uint64(data[4:]))
		}
		if (len(data) == 4 || len(data) == 8 || len(data) == 12) && nsec < 1e9 {
			writeString(out, time.Unix(sec, int64(nsec)).UTC().Format(time.RFC3339Nano))
			return nil
		}
	}
	out.WriteString(`{"ext":` + strconv.Itoa(int(typ)) + `,"hex":`)
	writeString(out, hex.EncodeToString(data))
	out.WriteByte('}')
	return nil
}

func writeFloat(out *bytes.Buffer, f float64, size int) {
	switch {
	case math.IsNaN(f):
		out.WriteString(`"NaN"`)
	case math.IsInf(f, 1):
		out.WriteString(`"+Inf"`)
	case math.IsInf(f, -1):
		out.WriteString(`"-Inf"`)
	default:
		out.WriteString(strconv.FormatFloat(f, 'g', -1, size))
	}
}

// writeString appends s as a JSON string (HTML characters unescaped).
func writeString(out *bytes.Buffer, s string) {
	enc := json.NewEncoder(out)
	enc.SetEscapeHTML(false)
	enc.Encode(s)               // a string always encodes
	out.Truncate(out.Len() - 1) // Encode's newline
}
