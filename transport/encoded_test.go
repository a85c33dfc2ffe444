package transport

import (
	"bytes"
	"fmt"
	"reflect"
	"testing"
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

// TestChangeListDecodeShared: a frame's keys and values decode as slices
// of the codec's copy of the message (not two allocations per change),
// each capped at its own length so appending to one never writes over the
// next, and none aliasing the bytes given to Unmarshal.
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
	if k := got.Changes[0].Key; cap(k) != len(k) {
		t.Fatalf("a decoded key has capacity %d beyond its %d bytes", cap(k), len(k))
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
