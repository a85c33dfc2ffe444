package transport

import (
	"bytes"
	"fmt"
	"math"
	"reflect"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// TestEncodedChanges: a frame of changes encoded once (EncodeChanges) and
// sent in parts (EncodedChanges) decodes to the frame Codec would have
// encoded from the changes themselves, however the encodings are split.
func TestEncodedChanges(t *testing.T) {
	chs := []Change{
		{Seq: 7, Op: OpPut, Key: []byte("a"), Value: []byte("one"), Time: 1234567890123, Epoch: 3},
		{Seq: 8, Op: OpDelete, Key: []byte("b"), Time: -1, TxnEnd: true, Epoch: 3},
		{Seq: 9, Op: OpPut, Key: []byte("c"), Value: []byte{}, Time: 5, TxnEnd: true, Epoch: 4},
	}
	enc, ends, err := EncodeChanges(nil, chs, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(ends) != len(chs) || ends[len(ends)-1] != len(enc) {
		t.Fatalf("ends %v for %d bytes", ends, len(enc))
	}
	want := &OwnerFrame{Kind: KindChanges, HeadSeq: 12, Epoch: 4, Rate: 1.5, Changes: chs}
	for _, tc := range []struct {
		name  string
		parts [][]byte
	}{
		{"one part", [][]byte{enc}},
		{"one part per change", [][]byte{enc[:ends[0]], enc[ends[0]:ends[1]], enc[ends[1]:]}},
		{"uneven", [][]byte{enc[:ends[1]], enc[ends[1]:]}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := EncodedChanges(12, 4, 1.5, len(chs), tc.parts)
			if n, ok := f.Encoded(); !ok || n != len(chs) {
				t.Fatalf("Encoded() = %d, %v", n, ok)
			}
			b, err := Marshal(f)
			if err != nil {
				t.Fatal(err)
			}
			var got OwnerFrame
			if err := Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(&got, want) {
				t.Fatalf("decoded %+v\nwant %+v", got, *want)
			}
		})
	}
	t.Run("empty", func(t *testing.T) {
		b, err := Marshal(EncodedChanges(1, 0, 0, 0, nil))
		if err != nil {
			t.Fatal(err)
		}
		var got OwnerFrame
		if err := Unmarshal(b, &got); err != nil {
			t.Fatal(err)
		}
		if got.Kind != KindChanges || got.HeadSeq != 1 || len(got.Changes) != 0 {
			t.Fatalf("decoded %+v", got)
		}
	})
}

// TestChangeListDecodeShared: a frame's keys and values decode into one
// slab (not two allocations per change), each change's key followed by
// its value, the key's capacity covering the value (RowBytes: a resident
// replica keeps them) and the value's capped at its own length so
// appending to one never writes over the next change, and none aliasing
// the bytes given to Unmarshal.
func TestChangeListDecodeShared(t *testing.T) {
	const n = 200
	chs := make([]Change, n)
	for i := range chs {
		chs[i] = Change{Seq: uint64(i + 1), Op: OpPut, Key: []byte(fmt.Sprintf("key-%03d", i)), Value: bytes.Repeat([]byte{byte(i)}, 256), TxnEnd: true}
	}
	chs[7].Op, chs[7].Value = OpDelete, nil
	chs[9].Value = []byte{}
	b, err := Marshal(&OwnerFrame{Kind: KindChanges, HeadSeq: n, Changes: chs})
	if err != nil {
		t.Fatal(err)
	}
	var got OwnerFrame
	allocs := testing.AllocsPerRun(20, func() {
		got = OwnerFrame{}
		if err := Unmarshal(b, &got); err != nil {
			t.Fatal(err)
		}
	})
	if !reflect.DeepEqual(got.Changes, ChangeList(chs)) {
		t.Fatal("decoded changes differ from the encoded ones")
	}
	if got.Changes[7].Value != nil || got.Changes[9].Value == nil {
		t.Fatalf("nil and empty values: got %v and %v, want nil and empty", got.Changes[7].Value, got.Changes[9].Value)
	}
	for i, c := range got.Changes {
		kv, ok := RowBytes(&Row{Key: c.Key, Value: c.Value})
		if want := len(c.Value) > 0; ok != want {
			t.Fatalf("change %d: RowBytes ok = %v, want %v", i, ok, want)
		}
		if ok && !bytes.Equal(kv, append(bytes.Clone(c.Key), c.Value...)) {
			t.Fatalf("change %d: RowBytes = %q, want its key and value", i, kv)
		}
		if cap(c.Value) != len(c.Value) {
			t.Fatalf("change %d: a decoded value has capacity %d beyond its %d bytes", i, cap(c.Value), len(c.Value))
		}
	}
	if allocs > n {
		t.Fatalf("%.0f allocations to decode %d changes: keys and values are not shared with the message", allocs, n)
	}
	at := bytes.LastIndex(b, chs[n-1].Value)
	if at < 0 {
		t.Fatal("the last value is not in the message")
	}
	b[at] ^= 0xff
	if got.Changes[n-1].Value[0] != byte(n-1) {
		t.Fatal("a decoded value aliases the bytes given to Unmarshal")
	}
}

// msgpackChange is c's encoding by the msgpack encoder the codec uses
// (compact ints), the bytes a consumer of any version decodes.
func msgpackChange(t testing.TB, c *Change) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	enc.UseCompactInts(true)
	if err := c.EncodeMsgpack(enc); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// checkAppendChange: AppendChange writes, after what dst holds, exactly
// the bytes the msgpack encoder writes for c, and they decode to c.
func checkAppendChange(t testing.TB, c *Change) {
	t.Helper()
	prefix := []byte{0xAA, 0xBB}
	got := AppendChange(bytes.Clone(prefix), c)
	want := msgpackChange(t, c)
	if !bytes.Equal(got[:len(prefix)], prefix) || !bytes.Equal(got[len(prefix):], want) {
		t.Fatalf("AppendChange(%+v) = %x, want %x after %x", c, got, want, prefix)
	}
	var back Change
	if err := msgpack.Unmarshal(want, &back); err != nil {
		t.Fatalf("decode %x: %v", want, err)
	}
	if !reflect.DeepEqual(&back, c) {
		t.Fatalf("AppendChange(%+v) decodes to %+v", c, back)
	}
}

// TestAppendChange: the owner's direct encoding of a change is the
// encoder's, byte for byte, at every boundary of msgpack's int and bin
// forms (so a consumer of the previous version decodes it).
func TestAppendChange(t *testing.T) {
	uints := []uint64{0, 1, math.MaxInt8, math.MaxInt8 + 1, math.MaxUint8, math.MaxUint8 + 1, math.MaxUint16, math.MaxUint16 + 1, math.MaxUint32, math.MaxUint32 + 1, math.MaxUint64}
	ints := []int64{0, 1, -1, -32, -33, math.MinInt8, math.MinInt8 - 1, math.MinInt16, math.MinInt16 - 1, math.MinInt32, math.MinInt32 - 1, math.MinInt64, math.MaxInt64, 1765000000123456789}
	bins := []int{0, 1, math.MaxUint8, math.MaxUint8 + 1, math.MaxUint16, math.MaxUint16 + 1}
	for _, u := range uints {
		t.Run(fmt.Sprintf("seq and epoch %d", u), func(t *testing.T) {
			checkAppendChange(t, &Change{Seq: u, Op: OpPut, Key: []byte("k"), Value: []byte("v"), Epoch: u, TxnEnd: true})
		})
	}
	for _, n := range ints {
		t.Run(fmt.Sprintf("time %d", n), func(t *testing.T) {
			checkAppendChange(t, &Change{Seq: 1, Op: OpDelete, Key: []byte("k"), Time: n})
		})
	}
	for _, l := range bins {
		t.Run(fmt.Sprintf("key and value of %d bytes", l), func(t *testing.T) {
			checkAppendChange(t, &Change{Seq: 2, Op: OpPut, Key: bytes.Repeat([]byte{'k'}, l), Value: bytes.Repeat([]byte{'v'}, l), Time: 3, Epoch: 4})
		})
	}
	t.Run("nil key and value", func(t *testing.T) {
		checkAppendChange(t, &Change{Seq: 5, Op: OpDelete})
	})
	t.Run("op 255", func(t *testing.T) {
		checkAppendChange(t, &Change{Seq: 5, Op: Op(255), Key: []byte{}, Value: []byte{}})
	})
}

// FuzzAppendChange: for any change, AppendChange and the msgpack encoder
// agree byte for byte.
func FuzzAppendChange(f *testing.F) {
	f.Add(uint64(7), uint8(OpPut), []byte("key"), []byte("value"), false, int64(1765000000123456789), true, uint64(3))
	f.Add(uint64(math.MaxUint64), uint8(OpDelete), []byte{}, []byte(nil), true, int64(-40), false, uint64(0))
	f.Fuzz(func(t *testing.T, seq uint64, op uint8, key, value []byte, nilValue bool, tm int64, txnEnd bool, epoch uint64) {
		if nilValue {
			value = nil
		}
		checkAppendChange(t, &Change{Seq: seq, Op: Op(op), Key: key, Value: value, Time: tm, TxnEnd: txnEnd, Epoch: epoch})
	})
}

// TestEncodedRows: a rows frame built from rows encoded one by one
// (AppendRow, EncodedRows) is, on the wire, the frame Codec encodes from
// the rows themselves, byte for byte, and decodes to it.
func TestEncodedRows(t *testing.T) {
	for _, n := range []int{0, 1, 15, 16, 300, 70000} {
		t.Run(fmt.Sprintf("%d rows", n), func(t *testing.T) {
			rows := make([]Row, n)
			var body []byte
			for i := range rows {
				rows[i] = Row{Key: fmt.Appendf(nil, "key%06d", i), Value: bytes.Repeat([]byte{byte(i)}, i%300)}
				body = AppendRow(body, rows[i].Key, rows[i].Value)
			}
			f := EncodedRows(n, body)
			if got, ok := f.Encoded(); !ok || got != n {
				t.Fatalf("Encoded() = %d, %v; want %d, true", got, ok, n)
			}
			if got := f.EncodedSize(); got != len(body) {
				t.Fatalf("EncodedSize() = %d, want %d", got, len(body))
			}
			got, err := Marshal(f)
			if err != nil {
				t.Fatal(err)
			}
			// An empty list is omitted (omitempty), where an encoded
			// frame carries an empty array: both decode to no rows.
			if want := mustMarshal(t, &OwnerFrame{Kind: KindRows, Rows: rows}); n > 0 && !bytes.Equal(got, want) {
				t.Fatalf("encoded frame differs from Codec's encoding:\n got %x\nwant %x", got[:min(len(got), 32)], want[:min(len(want), 32)])
			}
			var dec OwnerFrame
			if err := Unmarshal(got, &dec); err != nil {
				t.Fatal(err)
			}
			if dec.Kind != KindRows || len(dec.Rows) != n {
				t.Fatalf("decoded a %s frame of %d rows, want %d rows", dec.Kind, len(dec.Rows), n)
			}
			for i := range rows {
				if !bytes.Equal(dec.Rows[i].Key, rows[i].Key) || !bytes.Equal(dec.Rows[i].Value, rows[i].Value) {
					t.Fatalf("row %d = %q/%d bytes, want %q/%d bytes", i, dec.Rows[i].Key, len(dec.Rows[i].Value), rows[i].Key, len(rows[i].Value))
				}
			}
		})
	}
}
