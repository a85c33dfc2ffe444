package transport

import (
	"bytes"
	"errors"
	"math"
	"reflect"
	"testing"

	"github.com/replmesh/replmesh/internal/testutil"
	"github.com/vmihailenco/msgpack/v5"
)

// maxAllocPerByte bounds what decoding may allocate per input byte: the
// largest element is a Change (80 bytes), which msgpack allocates twice when
// it grows a slice, and a message can hold one nil element per byte.
const maxAllocPerByte = 256

// fuzzDecode is the body of every decoder fuzz target. Seeds are real frames
// built with Marshal (the testdata/fuzz corpus holds more).
//
// Properties: decoding arbitrary bytes never panics and fails only with
// ErrBadRequest, allocating at most maxAllocPerByte per input byte (plus
// slack); a decoded value re-encodes, the re-encoding decodes, and
// encoding is idempotent from there on: Marshal(v) == Marshal(Unmarshal(
// Marshal(v))). (The first decode may not reproduce the input bytes: msgpack
// accepts several encodings of one value, unknown fields, and so on.)
func fuzzDecode[T any](f *testing.F, seeds []*T) {
	for _, s := range seeds {
		b, err := Marshal(s)
		if err != nil {
			f.Fatalf("Marshal(%+v): %v", s, err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		v := new(T)
		before := testutil.HeapAllocated()
		err := Unmarshal(b, v)
		if got, limit := testutil.HeapAllocated()-before, uint64(maxAllocPerByte*len(b)+1<<20); got > limit {
			t.Fatalf("Unmarshal(%x) allocated %d bytes, want at most %d", b, got, limit)
		}
		if err != nil {
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("Unmarshal(%x) = %v, want it to wrap ErrBadRequest", b, err)
			}
			return
		}
		e1, err := Marshal(v)
		if err != nil {
			t.Fatalf("Marshal(decoded %+v): %v", v, err)
		}
		v2 := new(T)
		if err := Unmarshal(e1, v2); err != nil {
			t.Fatalf("Unmarshal(re-encoding %x) of %x: %v", e1, b, err)
		}
		e2, err := Marshal(v2)
		if err != nil {
			t.Fatalf("Marshal(%+v): %v", v2, err)
		}
		if !bytes.Equal(e1, e2) {
			t.Fatalf("encoding is not idempotent for input %x:\nfirst  %x\nsecond %x", b, e1, e2)
		}
	})
}

func samplePtrs[T any](samples []sample[T]) []*T {
	out := make([]*T, len(samples))
	for i := range samples {
		out[i] = &samples[i].msg
	}
	return out
}

func FuzzDecodeConsumerFrame(f *testing.F) { fuzzDecode(f, samplePtrs(sampleConsumerFrames())) }
func FuzzDecodeOwnerFrame(f *testing.F)    { fuzzDecode(f, samplePtrs(sampleOwnerFrames())) }
func FuzzDecodeGetRequest(f *testing.F)    { fuzzDecode(f, samplePtrs(sampleGetRequests())) }
func FuzzDecodeGetResponse(f *testing.F)   { fuzzDecode(f, samplePtrs(sampleGetResponses())) }
func FuzzDecodeDigestRequest(f *testing.F) { fuzzDecode(f, samplePtrs(sampleDigestRequests())) }
func FuzzDecodeDigestResponse(f *testing.F) {
	fuzzDecode(f, samplePtrs(sampleDigestResponses()))
}

func FuzzDecodeChange(f *testing.F) {
	changes := sampleChanges()
	seeds := make([]*Change, len(changes))
	for i := range changes {
		seeds[i] = &changes[i]
	}
	fuzzDecode(f, seeds)
}

func FuzzDecodeRow(f *testing.F) {
	var seeds []*Row
	for _, s := range sampleOwnerFrames() {
		for i := range s.msg.Rows {
			seeds = append(seeds, &s.msg.Rows[i])
		}
	}
	fuzzDecode(f, seeds)
}

// decodeChangesBoth decodes b, an array of changes, as Codec does (the
// fast path, frameReader.parseChange) and with Change.decode alone (the
// decoder of the previous version).
func decodeChangesBoth(b []byte) (fast, slow []Change, fastErr, slowErr error) {
	decode := func(fn func(d *msgpack.Decoder) ([]Change, error)) ([]Change, error) {
		d := msgpack.NewDecoder(&frameReader{b: b})
		return fn(d)
	}
	fast, fastErr = decode(func(d *msgpack.Decoder) ([]Change, error) {
		var l ChangeList
		err := l.DecodeMsgpack(d)
		return l, err
	})
	slow, slowErr = decode(func(d *msgpack.Decoder) ([]Change, error) {
		return decodeList(d, func(c *Change, d *msgpack.Decoder) error { return c.decode(d, true) })
	})
	return fast, slow, fastErr, slowErr
}

// FuzzDecodeChangeList: for any bytes, the fast decoding of a change
// list gives what Change.decode alone gives: the same changes, or an
// error where it fails.
func FuzzDecodeChangeList(f *testing.F) {
	changes := sampleChanges()
	for i := range changes {
		b, err := Marshal(ChangeList(changes[:i+1]))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	long := []Change{{Seq: math.MaxUint64, Op: OpPut, Key: bytes.Repeat([]byte{'k'}, 300), Value: bytes.Repeat([]byte{'v'}, 70000), Time: math.MinInt64, Epoch: 1 << 40}}
	b, err := Marshal(ChangeList(long))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		fast, slow, fastErr, slowErr := decodeChangesBoth(b)
		if (fastErr == nil) != (slowErr == nil) {
			t.Fatalf("decode %x: fast error %v, Change.decode error %v", b, fastErr, slowErr)
		}
		if fastErr == nil && !reflect.DeepEqual(fast, slow) {
			t.Fatalf("decode %x:\nfast          %+v\nChange.decode %+v", b, fast, slow)
		}
		// Read from a pooled buffer (a changes frame's), the fast path
		// copies keys and values into the frame's slab: the same changes.
		var pooled ChangeList
		pooledErr := pooled.DecodeMsgpack(msgpack.NewDecoder(&frameReader{b: b, pooled: true}))
		if (pooledErr == nil) != (slowErr == nil) {
			t.Fatalf("decode %x pooled: error %v, Change.decode error %v", b, pooledErr, slowErr)
		}
		if pooledErr == nil && !reflect.DeepEqual([]Change(pooled), slow) {
			t.Fatalf("decode %x:\npooled        %+v\nChange.decode %+v", b, pooled, slow)
		}
	})
}

// decodeRowsBoth decodes b as a row list twice: as Codec does (parseRow
// where it can) and by Row.decode alone.
func decodeRowsBoth(b []byte) (fast, slow []Row, fastErr, slowErr error) {
	var l RowList
	fastErr = l.DecodeMsgpack(msgpack.NewDecoder(&frameReader{b: b}))
	fast = l
	var scratch []byte
	slow, slowErr = decodeList(msgpack.NewDecoder(&frameReader{b: b}), func(r *Row, d *msgpack.Decoder) error { return r.decode(d, &scratch) })
	return fast, slow, fastErr, slowErr
}

// FuzzDecodeRowList: for any bytes, the fast decoding of a row list
// gives what Row.decode alone gives: the same rows (each one allocation,
// RowBytes), or an error where it fails.
func FuzzDecodeRowList(f *testing.F) {
	rows := []Row{
		{Key: []byte("k1"), Value: []byte("v1")},
		{Key: []byte("k2"), Value: []byte{}},
		{Key: nil, Value: nil},
		{Key: bytes.Repeat([]byte{'k'}, 300), Value: bytes.Repeat([]byte{'v'}, 70000)},
	}
	for i := range rows {
		b, err := Marshal(RowList(rows[:i+1]))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0x91, 0x92, 0xa1, 'k', 0xa1, 'v'}) // str forms: Row.decode's
	f.Fuzz(func(t *testing.T, b []byte) {
		if checkBounds(b) != nil {
			return // Codec refuses it before decoding (Row.decode trusts the lengths checkBounds checked)
		}
		fast, slow, fastErr, slowErr := decodeRowsBoth(b)
		if (fastErr == nil) != (slowErr == nil) {
			t.Fatalf("decode %x: fast error %v, Row.decode error %v", b, fastErr, slowErr)
		}
		if fastErr != nil {
			return
		}
		if len(fast) != len(slow) {
			t.Fatalf("decode %x: fast %d rows, Row.decode %d", b, len(fast), len(slow))
		}
		for i := range fast {
			if !reflect.DeepEqual(fast[i], slow[i]) {
				t.Fatalf("decode %x: row %d fast %+v, Row.decode %+v", b, i, fast[i], slow[i])
			}
			if _, ok := RowBytes(&fast[i]); ok != (len(fast[i].Key) > 0 && len(fast[i].Value) > 0) {
				t.Fatalf("decode %x: row %d is not one allocation", b, i)
			}
		}
	})
}
