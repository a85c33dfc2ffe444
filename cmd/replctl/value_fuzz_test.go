package main

import (
	"bytes"
	"encoding/json"
	"testing"
	"unicode/utf8"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/replmesh/replmesh/internal/testutil"
)

// FuzzMsgpackJSON: replctl decodes whatever value an owner holds. It never
// panics, accepts only input that msgpack itself decodes, returns valid
// JSON, and allocates a bounded amount per input byte (a length field
// claiming 2^32 elements must not allocate them).
func FuzzMsgpackJSON(f *testing.F) {
	for _, v := range []any{
		map[string]any{"store": "s1", "user": "alice", "n": 3},
		[]any{1, "two", 3.5, nil, true, []byte{0, 1}},
		map[any]any{1: "a", "b": []int{1, 2}},
		"text", int64(-1 << 40), uint64(1 << 63), float32(1.5),
	} {
		b, err := msgpack.Marshal(v)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0xdd, 0xff, 0xff, 0xff, 0xff}) // array32 claiming 2^32-1 elements
	f.Add([]byte{0xdf, 0x7f, 0xff, 0xff, 0xff}) // map32
	f.Fuzz(func(t *testing.T, b []byte) {
		before := testutil.HeapAllocated()
		out, ok := msgpackJSON(b)
		if got, limit := testutil.HeapAllocated()-before, uint64(512*len(b)+1<<20); got > limit {
			t.Fatalf("msgpackJSON(%x) allocated %d bytes, want at most %d", b, got, limit)
		}
		if !ok {
			return
		}
		if !json.Valid(out) || !utf8.Valid(out) {
			t.Fatalf("msgpackJSON(%x) = %q: not valid JSON", b, out)
		}
		r := bytes.NewReader(b)
		if err := msgpack.NewDecoder(r).Skip(); err != nil || r.Len() != 0 {
			t.Fatalf("msgpackJSON(%x) accepted what msgpack does not read as one value: %v, %d bytes left", b, err, r.Len())
		}
	})
}
