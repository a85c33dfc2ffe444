package transport

import (
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
