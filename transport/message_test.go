package transport

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// Sample messages shared by the round-trip tests and the fuzz seeds. Each
// one round-trips exactly: empty slices that travel in omitempty fields are
// written as nil here (see the round-trip tests for the normalisation).

type sample[T any] struct {
	name string
	msg  T
}

func sampleOpen() *Open {
	return &Open{
		Version:  ProtocolVersion,
		Service:  "orders",
		Instance: "orders-7f9c",
		Table:    "products",
		LogID:    "log-0001",
		Seq:      41,
		Epoch:    3,
		Mode:     ModePull,
	}
}

func sampleChanges() []Change {
	return []Change{
		{Seq: 1, Op: OpPut, Key: []byte("k1"), Value: []byte(`{"price":10}`), Time: 1_700_000_000_000_000_000},
		{Seq: 2, Op: OpPut, Key: []byte("k2"), Value: []byte{}, Time: 1_700_000_000_000_000_001},
		{Seq: 3, Op: OpDelete, Key: []byte("k1"), Value: nil, Time: 1_700_000_000_000_000_002, TxnEnd: true},
		{Seq: math.MaxUint64, Op: OpPut, Key: []byte{0, 0xff}, Value: []byte{0}, Time: -1, TxnEnd: true},
	}
}

func sampleConsumerFrames() []sample[ConsumerFrame] {
	return []sample[ConsumerFrame]{
		{"open", ConsumerFrame{Kind: KindOpen, Open: sampleOpen()}},
		{"open-zero", ConsumerFrame{Kind: KindOpen, Open: &Open{}}},
		{"open-fresh-push", ConsumerFrame{Kind: KindOpen, Open: &Open{Version: ProtocolVersion, Table: "t", Mode: ModePush}}},
		{"heartbeat", ConsumerFrame{Kind: KindHeartbeat, Seq: 99, Rate: 12.5}},
		{"ack", ConsumerFrame{Kind: KindAck, Seq: 100}},
		{"ack-max", ConsumerFrame{Kind: KindAck, Seq: math.MaxUint64}},
		{"pull", ConsumerFrame{Kind: KindPull}},
		{"mode", ConsumerFrame{Kind: KindMode, Mode: ModePush}},
		{"invalid", ConsumerFrame{}},
	}
}

func sampleOwnerFrames() []sample[OwnerFrame] {
	return []sample[OwnerFrame]{
		{"start-resume", OwnerFrame{Kind: KindStart, HeadSeq: 50, Start: &Start{
			Version: ProtocolVersion, LogID: "log-0001", Epoch: 3, HeadSeq: 50, FirstSeq: 10, Resume: true}}},
		{"start-full", OwnerFrame{Kind: KindStart, HeadSeq: 50, Start: &Start{
			Version: ProtocolVersion, LogID: "log-0002", Epoch: 4, HeadSeq: 50, FirstSeq: 45}}},
		{"snapshot-begin", OwnerFrame{Kind: KindSnapshotBegin, Seq: 50, HeadSeq: 50}},
		{"rows", OwnerFrame{Kind: KindRows, HeadSeq: 51, Rows: []Row{
			{Key: []byte("a"), Value: []byte("1")},
			{Key: []byte("b"), Value: []byte{}},
			{Key: []byte{}, Value: nil},
			{Key: nil, Value: []byte{0xc1, 0x00}},
		}}},
		{"snapshot-end", OwnerFrame{Kind: KindSnapshotEnd, Seq: 50, HeadSeq: 52, Count: 1234}},
		{"changes", OwnerFrame{Kind: KindChanges, HeadSeq: math.MaxUint64, Epoch: 3, Changes: sampleChanges()}},
		{"changes-nil-empty", OwnerFrame{Kind: KindChanges, HeadSeq: 7, Epoch: 1, Changes: []Change{
			{Seq: 5, Op: OpDelete},
			{Seq: 6, Op: OpPut, Key: []byte{}, Value: []byte{}},
			{Seq: 7},
		}}},
		{"heartbeat", OwnerFrame{Kind: KindHeartbeat, HeadSeq: 52, Time: 1_700_000_000_123_456_789, Rate: 1500.25}},
		{"heartbeat-negative-time", OwnerFrame{Kind: KindHeartbeat, Time: math.MinInt64, Rate: math.Inf(1)}},
	}
}

func sampleGetRequests() []sample[GetRequest] {
	return []sample[GetRequest]{
		{"keys", GetRequest{Version: ProtocolVersion, Table: "products", Keys: [][]byte{[]byte("k1"), []byte("k2")}}},
		{"nil-keys", GetRequest{Version: ProtocolVersion, Table: "products"}},
		{"empty-keys", GetRequest{Version: ProtocolVersion, Table: "products", Keys: [][]byte{}}},
		{"nil-and-empty-key", GetRequest{Version: ProtocolVersion, Table: "t", Keys: [][]byte{nil, {}, {0}}}},
	}
}

func sampleGetResponses() []sample[GetResponse] {
	return []sample[GetResponse]{
		{"values", GetResponse{Seq: 50, LogID: "log-0001", Values: []Value{
			{Found: true, Value: []byte("v1")},
			{Found: false},
			{Found: true, Value: []byte{}},
		}}},
		{"nil-values", GetResponse{Seq: 1, LogID: "log-0001"}},
		{"empty-values", GetResponse{Values: []Value{}}},
	}
}

func sampleDigestRequests() []sample[DigestRequest] {
	return []sample[DigestRequest]{
		{"whole-table", DigestRequest{Version: ProtocolVersion, Table: "products"}},
		{"range", DigestRequest{Version: ProtocolVersion, Table: "products", Start: []byte("a"), End: []byte("m")}},
		{"open-end", DigestRequest{Version: ProtocolVersion, Table: "products", Start: []byte{0}}},
	}
}

func sampleDigestResponses() []sample[DigestResponse] {
	return []sample[DigestResponse]{
		{"hash", DigestResponse{LogID: "log-0001", Seq: 50, Rows: 3, Hash: []byte{
			0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27}}},
		{"nil-hash", DigestResponse{LogID: "log-0001"}},
		{"empty-hash", DigestResponse{LogID: "log-0001", Seq: 1, Hash: []byte{}}},
	}
}

// roundTrip encodes in with Marshal and decodes the result into a new T.
func roundTrip[T any](t *testing.T, in *T) *T {
	t.Helper()
	b, err := Marshal(in)
	if err != nil {
		t.Fatalf("Marshal(%+v): %v", in, err)
	}
	out := new(T)
	if err := Unmarshal(b, out); err != nil {
		t.Fatalf("Unmarshal(%x): %v", b, err)
	}
	return out
}

func testRoundTrip[T any](t *testing.T, samples []sample[T]) {
	t.Helper()
	for _, s := range samples {
		t.Run(s.name, func(t *testing.T) {
			got, want := roundTrip(t, &s.msg), &s.msg
			if !reflect.DeepEqual(got, want) {
				t.Errorf("round trip:\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestConsumerFrame_RoundTrip(t *testing.T) { testRoundTrip(t, sampleConsumerFrames()) }
func TestOwnerFrame_RoundTrip(t *testing.T)    { testRoundTrip(t, sampleOwnerFrames()) }
func TestGetRequest_RoundTrip(t *testing.T)    { testRoundTrip(t, sampleGetRequests()) }
func TestGetResponse_RoundTrip(t *testing.T)   { testRoundTrip(t, sampleGetResponses()) }
func TestDigestRequest_RoundTrip(t *testing.T) { testRoundTrip(t, sampleDigestRequests()) }
func TestDigestResponse_RoundTrip(t *testing.T) {
	testRoundTrip(t, sampleDigestResponses())
}

func TestChange_RoundTrip(t *testing.T) {
	for _, c := range sampleChanges() {
		t.Run(c.Op.String(), func(t *testing.T) {
			got, want := roundTrip(t, &c), &c
			if !reflect.DeepEqual(got, want) {
				t.Errorf("round trip:\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

// Nil and empty byte slices in Change and Row are distinct on the wire and
// stay distinct after a round trip (a put of an empty value is not a delete).
func TestChange_RoundTripKeepsNilAndEmpty(t *testing.T) {
	tests := []struct {
		name       string
		key, value []byte
	}{
		{"nil-nil", nil, nil},
		{"nil-empty", nil, []byte{}},
		{"empty-nil", []byte{}, nil},
		{"empty-empty", []byte{}, []byte{}},
		{"full-full", []byte("k"), []byte("v")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := roundTrip(t, &Change{Seq: 1, Op: OpPut, Key: tt.key, Value: tt.value})
			r := roundTrip(t, &Row{Key: tt.key, Value: tt.value})
			for _, got := range []struct {
				what string
				b    []byte
				want []byte
			}{
				{"change key", c.Key, tt.key},
				{"change value", c.Value, tt.value},
				{"row key", r.Key, tt.key},
				{"row value", r.Value, tt.value},
			} {
				if (got.b == nil) != (got.want == nil) || string(got.b) != string(got.want) {
					t.Errorf("%s: got %#v, want %#v", got.what, got.b, got.want)
				}
			}
		})
	}
}

// Empty slices in omitempty fields are not sent; they come back nil.
func TestRoundTrip_OmitEmptyNormalisesToNil(t *testing.T) {
	t.Run("owner rows", func(t *testing.T) {
		got := roundTrip(t, &OwnerFrame{Kind: KindRows, Rows: []Row{}})
		if got.Rows != nil {
			t.Errorf("got Rows %#v, want nil", got.Rows)
		}
	})
	t.Run("owner changes", func(t *testing.T) {
		got := roundTrip(t, &OwnerFrame{Kind: KindChanges, Changes: []Change{}})
		if got.Changes != nil {
			t.Errorf("got Changes %#v, want nil", got.Changes)
		}
	})
	t.Run("digest range", func(t *testing.T) {
		got := roundTrip(t, &DigestRequest{Table: "t", Start: []byte{}, End: []byte{}})
		if got.Start != nil || got.End != nil {
			t.Errorf("got Start %#v End %#v, want nil, nil", got.Start, got.End)
		}
	})
}

func TestCheckVersion(t *testing.T) {
	tests := []struct {
		name    string
		v       uint32
		wantErr bool
	}{
		{"zero", 0, true},
		{"oldest supported", MinProtocolVersion, false},
		{"current", ProtocolVersion, false},
		{"newer", ProtocolVersion + 1, true},
		{"largest", math.MaxUint32, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckVersion(tt.v)
			if got := err != nil; got != tt.wantErr {
				t.Errorf("CheckVersion(%d) = %v, want error: %v", tt.v, err, tt.wantErr)
			}
			if tt.wantErr && !errors.Is(err, ErrProtocolVersion) {
				t.Errorf("CheckVersion(%d) = %v, want it to wrap ErrProtocolVersion", tt.v, err)
			}
		})
	}
}

func TestOpen_Validate(t *testing.T) {
	valid := func(edit func(*Open)) *Open {
		o := sampleOpen()
		edit(o)
		return o
	}
	tests := []struct {
		name    string
		open    *Open
		wantErr error
	}{
		{"valid pull", sampleOpen(), nil},
		{"valid push", valid(func(o *Open) { o.Mode = ModePush }), nil},
		{"valid empty mode means push", valid(func(o *Open) { o.Mode = "" }), nil},
		{"valid no replica yet", valid(func(o *Open) { o.LogID, o.Seq, o.Epoch = "", 0, 0 }), nil},
		{"nil", nil, ErrBadRequest},
		{"version zero", valid(func(o *Open) { o.Version = 0 }), ErrProtocolVersion},
		{"version too new", valid(func(o *Open) { o.Version = ProtocolVersion + 1 }), ErrProtocolVersion},
		{"empty table", valid(func(o *Open) { o.Table = "" }), ErrBadRequest},
		{"unknown mode", valid(func(o *Open) { o.Mode = "auto" }), ErrBadRequest},
		{"mode wrong case", valid(func(o *Open) { o.Mode = "PUSH" }), ErrBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.open.Validate()
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Validate() = %v, want it to wrap %v", err, tt.wantErr)
			}
		})
	}
}

func TestChange_Validate(t *testing.T) {
	tests := []struct {
		name    string
		change  Change
		wantErr bool
	}{
		{"put", Change{Seq: 1, Op: OpPut, Key: []byte("k"), Value: []byte("v")}, false},
		{"put empty value", Change{Seq: 1, Op: OpPut, Key: []byte("k"), Value: []byte{}}, false},
		{"put nil value", Change{Seq: 1, Op: OpPut, Key: []byte("k")}, false},
		{"delete", Change{Seq: 1, Op: OpDelete, Key: []byte("k")}, false},
		{"delete empty value", Change{Seq: 1, Op: OpDelete, Key: []byte("k"), Value: []byte{}}, false},
		{"delete with value", Change{Seq: 1, Op: OpDelete, Key: []byte("k"), Value: []byte("v")}, true},
		{"invalid op", Change{Seq: 1, Op: OpInvalid, Key: []byte("k")}, true},
		{"unknown op", Change{Seq: 1, Op: OpDelete + 1, Key: []byte("k")}, true},
		{"put nil key", Change{Seq: 1, Op: OpPut, Value: []byte("v")}, true},
		{"put empty key", Change{Seq: 1, Op: OpPut, Key: []byte{}, Value: []byte("v")}, true},
		{"delete nil key", Change{Seq: 1, Op: OpDelete}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.change.Validate()
			if got := err != nil; got != tt.wantErr {
				t.Fatalf("Validate() = %v, want error: %v", err, tt.wantErr)
			}
			if tt.wantErr && !errors.Is(err, ErrBadRequest) {
				t.Fatalf("Validate() = %v, want it to wrap ErrBadRequest", err)
			}
		})
	}
}

// mustMsgpack encodes v with plain msgpack, to build frames our encoder
// would never write.
func mustMsgpack(t *testing.T, v any) []byte {
	t.Helper()
	b, err := msgpack.Marshal(v)
	if err != nil {
		t.Fatalf("msgpack.Marshal(%v): %v", v, err)
	}
	return b
}

func TestChange_DecodeRejectsMalformed(t *testing.T) {
	k, v := []byte("k"), []byte("v")
	tests := []struct {
		name string
		in   any
	}{
		{"empty array", []any{}},
		{"five fields", []any{1, 1, k, v, 0}},
		{"six fields", []any{1, 1, k, v, 0, false}},
		{"eight fields", []any{1, 1, k, v, 0, false, 1, 0}},
		{"epoch is a string", []any{1, 1, k, v, 0, false, "1"}},
		{"map instead of array", map[string]any{"Seq": 1, "Op": 1, "Key": k}},
		{"scalar", 7},
		{"seq is a string", []any{"1", 1, k, v, 0, false, 1}},
		{"op is a string", []any{1, "put", k, v, 0, false, 1}},
		{"key is a number", []any{1, 1, 7, v, 0, false, 1}},
		{"value is a bool", []any{1, 1, k, true, 0, false, 1}},
		{"time is a string", []any{1, 1, k, v, "now", false, 1}},
		{"txn end is a number", []any{1, 1, k, v, 0, 1, 1}},
		{"key is an array", []any{1, 1, []any{1}, v, 0, false, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := mustMsgpack(t, tt.in)
			var c Change
			err := Unmarshal(b, &c)
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("Unmarshal(%x) = %v, want it to wrap ErrBadRequest", b, err)
			}
			// Inside a frame, too.
			frame := map[string]any{"k": uint8(KindChanges), "c": []msgpack.RawMessage{b}}
			fb := mustMsgpack(t, frame)
			var f OwnerFrame
			if err := Unmarshal(fb, &f); !errors.Is(err, ErrBadRequest) {
				t.Fatalf("Unmarshal(frame %x) = %v, want it to wrap ErrBadRequest", fb, err)
			}
		})
	}
}

func TestRow_DecodeRejectsMalformed(t *testing.T) {
	tests := []struct {
		name string
		in   any
	}{
		{"one field", []any{[]byte("k")}},
		{"three fields", []any{[]byte("k"), []byte("v"), 1}},
		{"map instead of array", map[string]any{"Key": []byte("k")}},
		{"key is a number", []any{1, []byte("v")}},
		{"value is a bool", []any{[]byte("k"), false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := mustMsgpack(t, tt.in)
			var r Row
			if err := Unmarshal(b, &r); !errors.Is(err, ErrBadRequest) {
				t.Fatalf("Unmarshal(%x) = %v, want it to wrap ErrBadRequest", b, err)
			}
		})
	}
}

// The encoders write the compact array forms the decoders expect.
func TestChangeAndRow_EncodeAsArrays(t *testing.T) {
	c := &Change{Seq: 1, Op: OpPut, Key: []byte("k"), Value: []byte("v"), Time: 2, TxnEnd: true, Epoch: 3}
	b, err := Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	// fixarray(7), seq, op, bin8 "k", bin8 "v", time, true, epoch
	want := []byte{0x97, 0x01, 0x01, 0xc4, 0x01, 'k', 0xc4, 0x01, 'v', 0x02, 0xc3, 0x03}
	if !bytes.Equal(b, want) {
		t.Errorf("Marshal(%+v) = %x, want %x", c, b, want)
	}
	r := &Row{Key: []byte("k"), Value: nil}
	b, err = Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	// fixarray(2), bin8 "k", nil
	want = []byte{0x92, 0xc4, 0x01, 'k', 0xc0}
	if !bytes.Equal(b, want) {
		t.Errorf("Marshal(%+v) = %x, want %x", r, b, want)
	}
}

func TestFrameKind_String(t *testing.T) {
	tests := []struct {
		k    FrameKind
		want string
	}{
		{KindInvalid, "invalid"},
		{KindOpen, "open"},
		{KindStart, "start"},
		{KindSnapshotBegin, "snapshot-begin"},
		{KindRows, "rows"},
		{KindSnapshotEnd, "snapshot-end"},
		{KindChanges, "changes"},
		{KindHeartbeat, "heartbeat"},
		{KindAck, "ack"},
		{KindPull, "pull"},
		{KindMode, "mode"},
		{KindDelta, "delta"},
		{KindDelta + 1, "kind(12)"},
		{255, "kind(255)"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := tt.k.String(); got != tt.want {
				t.Errorf("FrameKind(%d).String() = %q, want %q", uint8(tt.k), got, tt.want)
			}
		})
	}
}

// The frame kinds and ops are on the wire: their numbers must never change.
func TestWireNumbers(t *testing.T) {
	kinds := []FrameKind{KindInvalid, KindOpen, KindStart, KindSnapshotBegin, KindRows,
		KindSnapshotEnd, KindChanges, KindHeartbeat, KindAck, KindPull, KindMode, KindDelta}
	for i, k := range kinds {
		t.Run("kind "+k.String(), func(t *testing.T) {
			if got, want := uint8(k), uint8(i); got != want {
				t.Errorf("%v = %d, want %d", k, got, want)
			}
		})
	}
	ops := []Op{OpInvalid, OpPut, OpDelete}
	for i, o := range ops {
		t.Run("op "+o.String(), func(t *testing.T) {
			if got, want := uint8(o), uint8(i); got != want {
				t.Errorf("%v = %d, want %d", o, got, want)
			}
		})
	}
}

func TestOp_String(t *testing.T) {
	tests := []struct {
		op   Op
		want string
	}{
		{OpPut, "put"},
		{OpDelete, "delete"},
		{OpInvalid, "op(0)"},
		{9, "op(9)"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := tt.op.String(); got != tt.want {
				t.Errorf("Op(%d).String() = %q, want %q", uint8(tt.op), got, tt.want)
			}
		})
	}
}

func TestSize(t *testing.T) {
	c := Change{Key: []byte("key"), Value: []byte(strings.Repeat("v", 100))}
	if got, want := c.Size(), 3+100+32; got != want {
		t.Errorf("Change.Size() = %d, want %d", got, want)
	}
	r := Row{Key: []byte("key"), Value: []byte(strings.Repeat("v", 100))}
	if got, want := r.Size(), 3+100+8; got != want {
		t.Errorf("Row.Size() = %d, want %d", got, want)
	}
	// Size is an upper bound of the encoded size for small headers.
	for _, c := range sampleChanges() {
		t.Run(fmt.Sprintf("change %d", c.Seq), func(t *testing.T) {
			b, err := Marshal(&c)
			if err != nil {
				t.Fatal(err)
			}
			if len(b) > c.Size() {
				t.Errorf("change %d encodes to %d bytes, Size() = %d", c.Seq, len(b), c.Size())
			}
		})
	}
}

// A decoded row's key and value are one allocation, owned by the row (the
// key's scratch buffer is reused across a list's rows, never shared with
// a row), and nil and empty keep their difference.
func TestRowList_DecodeOneAllocationPerRow(t *testing.T) {
	long := bytes.Repeat([]byte("k"), 300)
	cases := []struct {
		name string
		rows RowList
	}{
		{"one row", RowList{{Key: []byte("a"), Value: []byte("v1")}}},
		{"keys grow then shrink", RowList{
			{Key: []byte("a"), Value: []byte("1")},
			{Key: long, Value: bytes.Repeat([]byte("v"), 1000)},
			{Key: []byte("bb"), Value: []byte("22")},
			{Key: []byte("c"), Value: bytes.Repeat([]byte("w"), 70_000)},
		}},
		{"nil and empty", RowList{
			{Key: []byte("k"), Value: nil},
			{Key: []byte("k2"), Value: []byte{}},
			{Key: nil, Value: []byte("v")},
			{Key: []byte{}, Value: []byte("v")},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b, err := Marshal(tc.rows)
			if err != nil {
				t.Fatal(err)
			}
			var got RowList
			if err := Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.rows) {
				t.Fatalf("%d rows, want %d", len(got), len(tc.rows))
			}
			for i := range got {
				g, w := &got[i], &tc.rows[i]
				if !bytes.Equal(g.Key, w.Key) || !bytes.Equal(g.Value, w.Value) ||
					(g.Key == nil) != (w.Key == nil) || (g.Value == nil) != (w.Value == nil) {
					t.Errorf("row %d = %q/%q (nil %v/%v), want %q/%q (nil %v/%v)", i, g.Key, g.Value,
						g.Key == nil, g.Value == nil, w.Key, w.Value, w.Key == nil, w.Value == nil)
				}
				kv, ok := RowBytes(g)
				if want := len(w.Key) > 0 && len(w.Value) > 0; ok != want {
					t.Errorf("row %d: RowBytes ok = %v, want %v", i, ok, want)
				}
				if ok && !bytes.Equal(kv, append(slices.Clone(w.Key), w.Value...)) {
					t.Errorf("row %d: RowBytes = %q", i, kv)
				}
			}
			// Overwriting one row's bytes changes no other row.
			for i := range got {
				for j := range got[i].Key {
					got[i].Key[j] = 'X'
				}
				for j := range got[i].Value {
					got[i].Value[j] = 'Y'
				}
				for k := i + 1; k < len(got); k++ {
					if !bytes.Equal(got[k].Key, tc.rows[k].Key) || !bytes.Equal(got[k].Value, tc.rows[k].Value) {
						t.Fatalf("writing row %d changed row %d", i, k)
					}
				}
			}
		})
	}
	t.Run("RowBytes refuses rows that are not one array", func(t *testing.T) {
		kv := []byte("keyvalue")
		for _, r := range []Row{
			{Key: []byte("key"), Value: []byte("value")}, // two allocations, maybe adjacent
			{Key: kv[:3:3], Value: kv[3:]},               // one array, but the key's slice does not cover the value
			{Key: kv[:3], Value: kv[4:]},                 // a gap
			{Key: kv[:3:6], Value: kv[3:]},               // the key's capacity ends inside the value
		} {
			if _, ok := RowBytes(&r); ok {
				t.Errorf("RowBytes(%q/%q) ok", r.Key, r.Value)
			}
		}
		if got, ok := RowBytes(&Row{Key: kv[:3], Value: kv[3:]}); !ok || string(got) != "keyvalue" {
			t.Errorf("RowBytes of one array = %q, %v", got, ok)
		}
	})
}

func BenchmarkRowList_Decode(b *testing.B) {
	rows := make(RowList, 240)
	for i := range rows {
		rows[i] = Row{Key: fmt.Appendf(nil, "key%07d", i), Value: bytes.Repeat([]byte{byte(i)}, 256)}
	}
	buf, err := Marshal(rows)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		var got RowList
		if err := Unmarshal(buf, &got); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEncodeChanges: an owner's one encoding of a tail batch (16
// changes of 110 bytes), shared by every stream. Its allocations are the
// destination's growth, not one per byte msgpack writes.
func BenchmarkEncodeChanges(b *testing.B) {
	chs := make([]Change, 16)
	for i := range chs {
		chs[i] = Change{Seq: uint64(i + 1), Epoch: 3, Op: OpPut, Key: []byte(fmt.Sprintf("key-%04d", i)), Value: bytes.Repeat([]byte{'v'}, 100), TxnEnd: true}
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := EncodeChanges(nil, chs, nil); err != nil {
			b.Fatal(err)
		}
	}
}
