package transport

import (
	"bytes"
	"errors"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/vmihailenco/msgpack/v5"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
)

func TestCodec_Registered(t *testing.T) {
	c := encoding.GetCodecV2(CodecName)
	if c == nil {
		t.Fatalf("codec %q is not registered", CodecName)
	}
	if got, want := c.Name(), CodecName; got != want {
		t.Errorf("Name() = %q, want %q", got, want)
	}
}

// Codec.Unmarshal must accept a message split over several buffers, the way
// gRPC hands over large messages.
func TestCodec_UnmarshalSplitBuffers(t *testing.T) {
	want := &OwnerFrame{Kind: KindChanges, HeadSeq: 4, Epoch: 3, Changes: sampleChanges()}
	b, err := Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cut  int
	}{
		{"after the first byte", 1},
		{"in the middle", len(b) / 2},
		{"before the last byte", len(b) - 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cut := tc.cut
			data := mem.BufferSlice{mem.SliceBuffer(b[:cut]), mem.SliceBuffer(b[cut:])}
			got := new(OwnerFrame)
			if err := (Codec{}).Unmarshal(data, got); err != nil {
				t.Fatalf("cut at %d: %v", cut, err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("cut at %d:\n got %+v\nwant %+v", cut, got, want)
			}
		})
	}
}

// Decoded byte slices are copies: the receive buffer may be reused.
func TestUnmarshal_DoesNotAlias(t *testing.T) {
	b := mustMarshal(t, &OwnerFrame{Kind: KindChanges, Changes: []Change{
		{Seq: 1, Op: OpPut, Key: []byte("key"), Value: []byte("value")}}})
	got := new(OwnerFrame)
	if err := Unmarshal(b, got); err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] = 0
	}
	if k, v := string(got.Changes[0].Key), string(got.Changes[0].Value); k != "key" || v != "value" {
		t.Errorf("after clearing the input: key %q value %q, want \"key\" \"value\"", k, v)
	}
}

func TestMarshal_NeedsPointerForChangeAndRow(t *testing.T) {
	// Change and Row encode themselves through pointer methods; a value
	// cannot be encoded (rather than being encoded as a map by reflection).
	if _, err := Marshal(Change{Seq: 1}); err == nil {
		t.Error("Marshal(Change value) succeeded, want an error")
	}
	if _, err := Marshal(Row{}); err == nil {
		t.Error("Marshal(Row value) succeeded, want an error")
	}
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := Marshal(v)
	if err != nil {
		t.Fatalf("Marshal(%+v): %v", v, err)
	}
	return b
}

// decodeTargets returns a fresh value of every message type.
func decodeTargets() map[string]func() any {
	return map[string]func() any{
		"ConsumerFrame":  func() any { return new(ConsumerFrame) },
		"OwnerFrame":     func() any { return new(OwnerFrame) },
		"GetRequest":     func() any { return new(GetRequest) },
		"GetResponse":    func() any { return new(GetResponse) },
		"DigestRequest":  func() any { return new(DigestRequest) },
		"DigestResponse": func() any { return new(DigestResponse) },
		"Change":         func() any { return new(Change) },
		"Row":            func() any { return new(Row) },
	}
}

func TestUnmarshal_GarbageIsBadRequest(t *testing.T) {
	frame := mustMarshal(t, &OwnerFrame{Kind: KindChanges, Changes: sampleChanges()})
	garbage := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"never-used code", []byte{0xc1}},
		{"text", []byte("hello, world")},
		{"truncated frame", frame[:len(frame)-1]},
		{"truncated header", frame[:1]},
		{"bin32 claims 4 GiB", []byte{0xc6, 0xff, 0xff, 0xff, 0xff, 0x00}},
		{"array32 claims 4G elements", []byte{0xdd, 0xff, 0xff, 0xff, 0xff, 0x00}},
		{"map32 claims 4G entries", []byte{0xdf, 0xff, 0xff, 0xff, 0xff, 0x00}},
	}
	for _, g := range garbage {
		for name, newV := range decodeTargets() {
			t.Run(g.name+"/"+name, func(t *testing.T) {
				err := Unmarshal(g.b, newV())
				if !errors.Is(err, ErrBadRequest) {
					t.Fatalf("Unmarshal(%x) = %v, want it to wrap ErrBadRequest", g.b, err)
				}
			})
		}
	}
}

func TestUnmarshal_WrongTypeIsBadRequest(t *testing.T) {
	tests := []struct {
		name string
		in   any
		v    any
	}{
		{"frame is a string", "open", new(ConsumerFrame)},
		{"kind is a string", map[string]any{"k": "open"}, new(ConsumerFrame)},
		{"open is a number", map[string]any{"k": 1, "o": 7}, new(ConsumerFrame)},
		{"rows is a map", map[string]any{"k": 4, "r": map[string]any{}}, new(OwnerFrame)},
		{"keys is a string", map[string]any{"keys": "k"}, new(GetRequest)},
		{"values hold numbers", map[string]any{"vals": []any{1}}, new(GetResponse)},
		{"hash is a bool", map[string]any{"h": true}, new(DigestResponse)},
		{"seq is negative text", map[string]any{"s": "-1"}, new(DigestResponse)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := mustMsgpack(t, tt.in)
			if err := Unmarshal(b, tt.v); !errors.Is(err, ErrBadRequest) {
				t.Fatalf("Unmarshal(%x) into %T = %v, want it to wrap ErrBadRequest", b, tt.v, err)
			}
		})
	}
}

// A message may not make the decoder allocate much more than its own size,
// whatever lengths it claims. msgpack/v5 trusts length claims (it allocates
// a claimed byte length up front, and grows a slice to a claimed element
// count before decoding any element), so checkBounds refuses claims the data
// cannot hold before msgpack sees them.
func TestUnmarshal_LengthClaimsAreBounded(t *testing.T) {
	const big, huge = 0xff, 0x7f
	tests := []struct {
		name string
		b    []byte
		v    any
	}{
		{"change key bin32", []byte{0x96, 0x01, 0x01, 0xc6, huge, big, big, big}, new(Change)},
		{"change value bin32", []byte{0x96, 0x01, 0x01, 0xc0, 0xc6, huge, big, big, big}, new(Change)},
		{"row key bin32", []byte{0x92, 0xc6, huge, big, big, big}, new(Row)},
		{"owner changes array32", []byte{0x81, 0xa1, 'c', 0xdd, huge, big, big, big}, new(OwnerFrame)},
		{"owner rows array32", []byte{0x81, 0xa1, 'r', 0xdd, huge, big, big, big}, new(OwnerFrame)},
		{"owner frame map32", []byte{0xdf, huge, big, big, big}, new(OwnerFrame)},
		{"get keys array32", []byte{0x81, 0xa4, 'k', 'e', 'y', 's', 0xdd, huge, big, big, big}, new(GetRequest)},
		{"get key bin32", []byte{0x81, 0xa4, 'k', 'e', 'y', 's', 0x91, 0xc6, huge, big, big, big}, new(GetRequest)},
		{"get values array32", []byte{0x81, 0xa4, 'v', 'a', 'l', 's', 0xdd, huge, big, big, big}, new(GetResponse)},
		{"digest hash bin32", []byte{0x81, 0xa1, 'h', 0xc6, huge, big, big, big}, new(DigestResponse)},
		{"table str32", []byte{0x81, 0xa1, 't', 0xdb, huge, big, big, big}, new(DigestRequest)},
		{"field name str32", []byte{0x83, 0xdb, huge, big, big, big}, new(OwnerFrame)},
		{"unknown field ext32", []byte{0x81, 0xa1, 'x', 0xc9, huge, big, big, big, 0x01}, new(DigestRequest)},
		{"array16 of nils claims more than sent", append([]byte{0x81, 0xa1, 'c', 0xdc, big, big}, bytes.Repeat([]byte{0xc0}, 100)...), new(OwnerFrame)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			err := Unmarshal(tt.b, tt.v)
			runtime.ReadMemStats(&after)
			if !errors.Is(err, ErrBadRequest) {
				t.Errorf("Unmarshal(%x) = %v, want it to wrap ErrBadRequest", tt.b, err)
			}
			if got, limit := after.TotalAlloc-before.TotalAlloc, uint64(1<<20); got > limit {
				t.Errorf("decoding %d bytes allocated %d bytes, want at most %d", len(tt.b), got, limit)
			}
		})
	}
}

// Unknown fields are skipped recursively by msgpack; deeply nested ones
// would overflow the stack (a fatal error, not a panic) before the size
// limit stops them.
func TestUnmarshal_NestingIsBounded(t *testing.T) {
	nested := func(depth int) []byte {
		b := []byte{0x82, 0xa1, 'k', byte(KindHeartbeat), 0xa1, 'x'} // {"k": heartbeat, "x": [[[...]]]}
		b = append(b, bytes.Repeat([]byte{0x91}, depth)...)
		return append(b, 0xc0)
	}
	t.Run("within the limit", func(t *testing.T) {
		// The frame map itself is one level.
		got := new(OwnerFrame)
		if err := Unmarshal(nested(maxNesting-1), got); err != nil {
			t.Fatalf("Unmarshal: %v", err)
		}
		if got.Kind != KindHeartbeat {
			t.Errorf("got kind %v, want %v", got.Kind, KindHeartbeat)
		}
	})
	t.Run("one over the limit", func(t *testing.T) {
		if err := Unmarshal(nested(maxNesting), new(OwnerFrame)); !errors.Is(err, ErrBadRequest) {
			t.Fatalf("Unmarshal = %v, want it to wrap ErrBadRequest", err)
		}
	})
	t.Run("millions deep", func(t *testing.T) {
		if err := Unmarshal(nested(DefaultMaxMessageSize), new(OwnerFrame)); !errors.Is(err, ErrBadRequest) {
			t.Fatalf("Unmarshal = %v, want it to wrap ErrBadRequest", err)
		}
	})
}

// checkBounds accepts every complete msgpack object and refuses every
// strict prefix of one (msgpack objects are self-delimiting).
func TestCheckBounds(t *testing.T) {
	values := []struct {
		name string
		v    any
	}{
		{"nil", nil},
		{"bools", []bool{true, false}},
		{"fixints", []int{0, 1, 127, -1, -32}},
		{"ints", []int64{128, -33, 1 << 8, -(1 << 8), 1 << 16, -(1 << 16), 1 << 32, -(1 << 32)}},
		{"uints", []uint64{1 << 8, 1 << 16, 1 << 32, 1<<64 - 1}},
		{"floats", []any{float32(1.5), 2.5}},
		{"fixstr", "hello"},
		{"str8", strings.Repeat("s", 32)},
		{"str16", strings.Repeat("s", 256)},
		{"str32", strings.Repeat("s", 1<<16)},
		{"bin8", []byte("bytes")},
		{"bin16", bytes.Repeat([]byte{1}, 256)},
		{"bin32", bytes.Repeat([]byte{1}, 1<<16)},
		{"fixarray", []int{1, 2, 3}},
		{"array16", make([]int, 16)},
		{"array32", make([]int, 1<<16)},
		{"fixmap", map[string]int{"a": 1}},
		{"map16", func() map[int]int {
			m := map[int]int{}
			for i := range 16 {
				m[i] = i
			}
			return m
		}()},
		{"empty containers", []any{[]int{}, map[string]int{}, "", []byte{}}},
		{"ext fixext4 time", time.Unix(1, 0)},
		{"ext fixext8 time", time.Unix(1, 1)},
		{"ext ext8 time", time.Unix(1<<40, 1)},
		{"nested", []any{map[string]any{"a": []any{[]any{1, "x", []byte{2}}}}}},
	}
	for _, tt := range values {
		t.Run(tt.name, func(t *testing.T) {
			b, err := msgpack.Marshal(tt.v)
			if err != nil {
				t.Fatal(err)
			}
			if err := checkBounds(b); err != nil {
				t.Fatalf("checkBounds(%x) = %v, want nil", b, err)
			}
			step := 1 + len(b)/64
			for n := 0; n < len(b); n += step {
				if err := checkBounds(b[:n]); err == nil {
					t.Fatalf("checkBounds(first %d of %d bytes) = nil, want an error", n, len(b))
				}
			}
			if err := checkBounds(b[:len(b)-1]); err == nil {
				t.Fatalf("checkBounds(all but the last byte) = nil, want an error")
			}
		})
	}
	for _, s := range sampleOwnerFrames() {
		t.Run("frame "+s.name, func(t *testing.T) {
			if err := checkBounds(mustMarshal(t, &s.msg)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Allocation stays proportional to the message's real content: a frame
// whose array claims n changes but holds nil elements is refused at the
// first nil element (ChangeList decodes element by element), having
// allocated next to nothing.
func TestUnmarshal_AllocationProportionalToSize(t *testing.T) {
	const n = 1 << 16
	for _, tc := range []struct {
		name  string
		head  []byte
		limit float64
	}{
		{"changes", []byte{0x81, 0xa1, 'c', 0xdd, 0, 1, 0, 0}, 2}, // {"c": array32(65536)}
		// A rows frame's list is sized from its header (rowListCap).
		{"rows", []byte{0x82, 0xa1, 'k', byte(KindRows), 0xa1, 'r', 0xdd, 0, 1, 0, 0}, 2.5}, // {"k": rows, "r": array32(65536)}
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := append(slices.Clone(tc.head), bytes.Repeat([]byte{0xc0}, n)...)
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			f := new(OwnerFrame)
			err := Unmarshal(b, f)
			runtime.ReadMemStats(&after)
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("Unmarshal of nil elements = %v, want ErrBadRequest", err)
			}
			perByte := float64(after.TotalAlloc-before.TotalAlloc) / float64(len(b))
			if perByte > tc.limit {
				t.Errorf("allocated %.1f bytes per input byte, want at most %.1f", perByte, tc.limit)
			}
		})
	}
}

// A rows frame is decoded from the received buffers (or a pooled copy of
// them) instead of a copy of its own, since its rows are copied out of
// it: the rows and anything else decoded from it must not alias the
// buffers, and decoding it allocates about its rows, not the message again.
func TestUnmarshal_RowsFrame(t *testing.T) {
	rows := make([]Row, 300) // about a snapshot frame's (sendRows)
	for i := range rows {
		rows[i] = Row{Key: []byte(strings.Repeat("k", 10)), Value: bytes.Repeat([]byte{byte(i)}, 256)}
	}
	wantRows := func(t *testing.T, got []Row) {
		t.Helper()
		if len(got) != len(rows) {
			t.Fatalf("got %d rows, want %d", len(got), len(rows))
		}
		for i := range rows {
			if !bytes.Equal(got[i].Key, rows[i].Key) || !bytes.Equal(got[i].Value, rows[i].Value) {
				t.Fatalf("row %d = %q/%x..., want %q/%x...", i, got[i].Key, got[i].Value[:4], rows[i].Key, rows[i].Value[:4])
			}
		}
	}
	t.Run("rows are copies", func(t *testing.T) {
		b := mustMarshal(t, &OwnerFrame{Kind: KindRows, Rows: rows})
		if !isSlabFrame(mem.BufferSlice{mem.SliceBuffer(b)}, new(OwnerFrame)) {
			t.Fatalf("isSlabFrame = false for a rows frame (%x...)", b[:4])
		}
		got := new(OwnerFrame)
		if err := Unmarshal(b, got); err != nil {
			t.Fatal(err)
		}
		clear(b)
		wantRows(t, got.Rows)
	})
	t.Run("changes of a rows frame are copies", func(t *testing.T) {
		chs := []Change{{Seq: 1, Op: OpPut, Key: []byte("key"), Value: []byte("value")}}
		b := mustMarshal(t, &OwnerFrame{Kind: KindRows, Rows: rows, Changes: chs})
		got := new(OwnerFrame)
		if err := Unmarshal(b, got); err != nil {
			t.Fatal(err)
		}
		clear(b)
		wantRows(t, got.Rows)
		if k, v := string(got.Changes[0].Key), string(got.Changes[0].Value); k != "key" || v != "value" {
			t.Errorf("after clearing the input: key %q value %q, want \"key\" \"value\"", k, v)
		}
	})
	t.Run("changes frames are slab frames, others are not", func(t *testing.T) {
		if !isSlabFrame(mem.BufferSlice{mem.SliceBuffer(mustMarshal(t, &OwnerFrame{Kind: KindChanges, Changes: sampleChanges()}))}, new(OwnerFrame)) {
			t.Error("isSlabFrame = false for a changes frame")
		}
		for _, f := range []*OwnerFrame{{Kind: KindHeartbeat, HeadSeq: 3}, {Kind: KindSnapshotEnd, Count: 3}} {
			if isSlabFrame(mem.BufferSlice{mem.SliceBuffer(mustMarshal(t, f))}, new(OwnerFrame)) {
				t.Errorf("isSlabFrame = true for a %s frame", f.Kind)
			}
		}
		if isSlabFrame(mem.BufferSlice{mem.SliceBuffer(mustMarshal(t, &OwnerFrame{Kind: KindRows, Rows: rows}))}, new(ConsumerFrame)) {
			t.Error("isSlabFrame = true for a ConsumerFrame target")
		}
	})
	t.Run("allocates the rows once", func(t *testing.T) {
		b := mustMarshal(t, &OwnerFrame{Kind: KindRows, Rows: rows})
		payload := 0
		for _, r := range rows {
			payload += len(r.Key) + len(r.Value)
		}
		const n = 20
		frames := make([]OwnerFrame, n)
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for i := range frames {
			if err := Unmarshal(b, &frames[i]); err != nil {
				t.Fatal(err)
			}
		}
		runtime.ReadMemStats(&after)
		// The rows (one slab a frame, sized exactly) and their list:
		// about 1.2 times the payload. One allocation a row, rounded up
		// to a size class, made it about 1.3, a copy of the message
		// besides them about 2.5, a list grown from 256 rows 1.5.
		perPayload := float64(after.TotalAlloc-before.TotalAlloc) / float64(n*payload)
		if limit := 1.25; perPayload > limit {
			t.Errorf("allocated %.2f bytes per payload byte, want at most %.2f", perPayload, limit)
		}
		// A handful of allocations a frame (its slab, its list, the
		// decoder's), not one a row.
		if perFrame := (after.Mallocs - before.Mallocs) / n; perFrame > 10 {
			t.Errorf("%d allocations a frame of %d rows", perFrame, len(rows))
		}
	})
	t.Run("one slab a frame", func(t *testing.T) {
		got := new(OwnerFrame)
		if err := Unmarshal(mustMarshal(t, &OwnerFrame{Kind: KindRows, Rows: rows}), got); err != nil {
			t.Fatal(err)
		}
		wantRows(t, got.Rows)
		for i := range got.Rows {
			kv, ok := RowBytes(&got.Rows[i])
			if !ok || len(kv) != len(rows[i].Key)+len(rows[i].Value) {
				t.Fatalf("row %d: RowBytes %v, %d bytes", i, ok, len(kv))
			}
			// Each row's bytes follow the previous row's in the slab, and
			// an append to a row's value copies instead of writing over
			// the next row.
			if i > 0 {
				prev, _ := RowBytes(&got.Rows[i-1])
				if unsafe.Pointer(unsafe.SliceData(kv)) != unsafe.Add(unsafe.Pointer(unsafe.SliceData(prev)), len(prev)) {
					t.Fatalf("row %d does not follow row %d in one slab", i, i-1)
				}
			}
			if cap(got.Rows[i].Value) != len(got.Rows[i].Value) {
				t.Fatalf("row %d: its value's capacity %d runs past it (%d)", i, cap(got.Rows[i].Value), len(got.Rows[i].Value))
			}
		}
		last := &got.Rows[len(got.Rows)-1]
		_ = append(last.Value, 'x')
		wantRows(t, got.Rows)
	})
}
