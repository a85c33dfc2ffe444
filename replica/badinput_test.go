package replica

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/replmesh/replmesh/transport"
	"google.golang.org/grpc"
	"google.golang.org/grpc/mem"
)

// rawCodec sends and receives message bytes as they are, under the msgpack
// content-subtype, so a test can put any payload on the wire.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	b, ok := v.([]byte)
	if !ok {
		return nil, fmt.Errorf("rawCodec: marshal %T", v)
	}
	return mem.BufferSlice{mem.SliceBuffer(bytes.Clone(b))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	p, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawCodec: unmarshal into %T", v)
	}
	*p = data.Materialize()
	return nil
}

func (rawCodec) Name() string { return transport.CodecName }

// badInputOwner is an owner with two tables (one restricted to the products
// service) and a consumer that follows both, so every bad request can be
// followed by proof that the owner still serves others.
type badInputOwner struct {
	owner, cons    *Component
	items, secrets *OwnedTable
	rItems, rSecr  *Replica
	client         *transport.ReplicationClient
	cc             *grpc.ClientConn
	probes         int
}

func newBadInputOwner(t *testing.T) *badInputOwner {
	t.Helper()
	ctx := ctxT(t, 30*time.Second)
	b := &badInputOwner{}
	b.owner = openComponent(t, "stores", "s1", "", "")
	t.Cleanup(func() { mustClose(t, b.owner) })
	var err error
	if b.items, err = b.owner.Own("items"); err != nil {
		t.Fatal(err)
	}
	if b.secrets, err = b.owner.Own("secrets", TableOptions{AllowServices: []string{"products"}}); err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		if _, err := b.items.Put(ctx, fmt.Appendf(nil, "item/%03d", i), fmt.Appendf(nil, "value %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 20 {
		if _, err := b.secrets.Apply(ctx, Write{Key: fmt.Appendf(nil, "secret/%02d", i), Value: []byte("s3cr3t")}); err != nil {
			t.Fatal(err)
		}
	}
	b.cons = openComponent(t, "products", "p1", "", "")
	t.Cleanup(func() { mustClose(t, b.cons) })
	if b.rItems, err = b.cons.Subscribe(ctx, SubscribeOptions{Service: "stores", Table: "items", Addr: b.owner.Addr()}); err != nil {
		t.Fatal(err)
	}
	if b.rSecr, err = b.cons.Subscribe(ctx, SubscribeOptions{Service: "stores", Table: "secrets", Addr: b.owner.Addr()}); err != nil {
		t.Fatal(err)
	}
	mustConverge(t, b.items, b.rItems)
	mustConverge(t, b.secrets, b.rSecr)
	b.cc, err = transport.Dial(b.owner.Addr(), transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.cc.Close() })
	b.client = transport.NewReplicationClient(b.cc)
	return b
}

// ownerState is what a bad request must not change.
type ownerState struct {
	itemsHead, secretsHead uint64
	items, secrets         transport.DigestResponse
}

func (b *badInputOwner) state(t *testing.T) ownerState {
	t.Helper()
	var s ownerState
	var err error
	s.itemsHead, s.secretsHead = b.items.Head(), b.secrets.Head()
	if s.items, err = b.items.Digest(nil, nil); err != nil {
		t.Fatal(err)
	}
	if s.secrets, err = b.secrets.Digest(nil, nil); err != nil {
		t.Fatal(err)
	}
	return s
}

// survived checks that the bad request wrote nothing and that the owner
// still serves: a new write reaches the healthy consumer, which converges.
func (b *badInputOwner) survived(t *testing.T, before ownerState) {
	t.Helper()
	after := b.state(t)
	if after.itemsHead != before.itemsHead || after.secretsHead != before.secretsHead {
		t.Fatalf("owner heads moved: items %d -> %d, secrets %d -> %d", before.itemsHead, after.itemsHead, before.secretsHead, after.secretsHead)
	}
	if !bytes.Equal(after.items.Hash, before.items.Hash) || !bytes.Equal(after.secrets.Hash, before.secrets.Hash) {
		t.Fatal("owner digests changed under a bad request")
	}
	b.probes++
	ctx := ctxT(t, 20*time.Second)
	if _, err := b.items.Put(ctx, fmt.Appendf(nil, "probe/%03d", b.probes), []byte("still serving")); err != nil {
		t.Fatalf("owner write after bad input: %v", err)
	}
	if _, err := b.secrets.Put(ctx, fmt.Appendf(nil, "probe/%03d", b.probes), []byte("still serving")); err != nil {
		t.Fatalf("owner write after bad input: %v", err)
	}
	mustConverge(t, b.items, b.rItems)
	mustConverge(t, b.secrets, b.rSecr)
	if st := b.rItems.Status(); st.Stats.FullTransfers != 1 {
		t.Fatalf("healthy consumer took %d full transfers, want 1", st.Stats.FullTransfers)
	}
}

// subscribeFrames opens a Subscribe stream, sends frames (each after the
// frame before it was answered, when answered), and collects what the owner
// sends back until the stream fails. The stream's error is returned with
// its sentinel restored.
func (b *badInputOwner) subscribeFrames(t *testing.T, frames ...*transport.ConsumerFrame) ([]*transport.OwnerFrame, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stream, err := b.client.Subscribe(ctx)
	if err != nil {
		return nil, err
	}
	var got []*transport.OwnerFrame
	for i, f := range frames {
		if err := stream.Send(f); err != nil && !errors.Is(err, io.EOF) {
			return got, transport.FromStatus(err)
		}
		if i == 0 && len(frames) > 1 {
			// Let the owner answer the open before the next frame.
			f, err := stream.Recv()
			if err != nil {
				return got, transport.FromStatus(err)
			}
			got = append(got, f)
		}
	}
	for {
		f, err := stream.Recv()
		if err != nil {
			return got, transport.FromStatus(err)
		}
		got = append(got, f)
	}
}

func validOpen(table string) *transport.Open {
	return &transport.Open{Version: transport.ProtocolVersion, Service: "products", Instance: "bad-input", Table: table, Mode: transport.ModePush}
}

func openFrame(o *transport.Open) *transport.ConsumerFrame {
	return &transport.ConsumerFrame{Kind: transport.KindOpen, Open: o}
}

// TestBadInput_Owner sends malformed, oversized, out-of-protocol and
// unauthorized requests to a real owner over gRPC. Each gets a clear error
// (its transport sentinel), writes nothing, and leaves the owner serving its
// healthy consumer.
func TestBadInput_Owner(t *testing.T) {
	b := newBadInputOwner(t)
	noRows := func(t *testing.T, got []*transport.OwnerFrame) {
		t.Helper()
		for _, f := range got {
			if len(f.Rows) > 0 || len(f.Changes) > 0 || f.Kind == transport.KindStart {
				t.Fatalf("refused subscriber received a %s frame (%d rows, %d changes)", f.Kind, len(f.Rows), len(f.Changes))
			}
		}
	}

	streamCases := []struct {
		name   string
		frames []*transport.ConsumerFrame
		want   error
	}{
		{"first frame is an ack", []*transport.ConsumerFrame{{Kind: transport.KindAck, Seq: 5}}, transport.ErrBadRequest},
		{"first frame is a heartbeat", []*transport.ConsumerFrame{{Kind: transport.KindHeartbeat}}, transport.ErrBadRequest},
		{"first frame of an unknown kind", []*transport.ConsumerFrame{{Kind: 200, Open: validOpen("items")}}, transport.ErrBadRequest},
		{"open without its body", []*transport.ConsumerFrame{{Kind: transport.KindOpen}}, transport.ErrBadRequest},
		{"protocol version 0", []*transport.ConsumerFrame{openFrame(func() *transport.Open { o := validOpen("items"); o.Version = 0; return o }())}, transport.ErrProtocolVersion},
		{"protocol version too new", []*transport.ConsumerFrame{openFrame(func() *transport.Open { o := validOpen("items"); o.Version = transport.ProtocolVersion + 1; return o }())}, transport.ErrProtocolVersion},
		{"unknown table", []*transport.ConsumerFrame{openFrame(validOpen("no_such_table"))}, transport.ErrUnknownTable},
		{"empty table name", []*transport.ConsumerFrame{openFrame(validOpen(""))}, transport.ErrBadRequest},
		{"unknown mode", []*transport.ConsumerFrame{openFrame(func() *transport.Open { o := validOpen("items"); o.Mode = "turbo"; return o }())}, transport.ErrBadRequest},
		{"service not allowed", []*transport.ConsumerFrame{openFrame(func() *transport.Open { o := validOpen("secrets"); o.Service = "billing"; return o }())}, transport.ErrPermission},
		{"no service name on a restricted table", []*transport.ConsumerFrame{openFrame(func() *transport.Open { o := validOpen("secrets"); o.Service = ""; return o }())}, transport.ErrPermission},
		{"restricted table with a log id and seq", []*transport.ConsumerFrame{openFrame(func() *transport.Open {
			o := validOpen("secrets")
			o.Service, o.LogID, o.Seq, o.Epoch = "billing", b.secrets.LogID(), 0, 1
			return o
		}())}, transport.ErrPermission},
	}
	for _, tc := range streamCases {
		t.Run("subscribe/"+tc.name, func(t *testing.T) {
			before := b.state(t)
			got, err := b.subscribeFrames(t, tc.frames...)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), "remote:") {
				t.Fatalf("err = %v: not the owner's answer", err)
			}
			noRows(t, got)
			b.survived(t, before)
		})
	}

	t.Run("subscribe/frame of the wrong kind after a valid open", func(t *testing.T) {
		before := b.state(t)
		o := validOpen("items")
		o.LogID, o.Seq, o.Epoch = b.items.LogID(), b.items.Head(), 1
		got, err := b.subscribeFrames(t, openFrame(o), openFrame(validOpen("items")))
		if !errors.Is(err, transport.ErrBadRequest) {
			t.Fatalf("err = %v, want %v", err, transport.ErrBadRequest)
		}
		if len(got) == 0 || got[0].Kind != transport.KindStart || got[0].Start == nil || !got[0].Start.Resume {
			t.Fatalf("first answer %+v, want a resuming start", got)
		}
		b.survived(t, before)
	})

	// A Mode frame switches between push and pull only: anything else,
	// "" and auto included, ends the stream.
	for _, mode := range []string{"turbo", "auto", ""} {
		t.Run(fmt.Sprintf("subscribe/mode frame %q", mode), func(t *testing.T) {
			before := b.state(t)
			o := validOpen("items")
			o.LogID, o.Seq, o.Epoch = b.items.LogID(), b.items.Head(), 1
			_, err := b.subscribeFrames(t, openFrame(o), &transport.ConsumerFrame{Kind: transport.KindMode, Mode: mode})
			if !errors.Is(err, transport.ErrBadRequest) || !strings.Contains(err.Error(), fmt.Sprintf("unknown mode %q", mode)) {
				t.Fatalf("err = %v, want %v naming mode %q", err, transport.ErrBadRequest, mode)
			}
			b.survived(t, before)
		})
	}

	t.Run("subscribe/oversized open", func(t *testing.T) {
		before := b.state(t)
		o := validOpen("items")
		o.Instance = strings.Repeat("x", transport.DefaultMaxMessageSize+1)
		ctx := ctxT(t, 20*time.Second)
		// Let the client send it: the owner must refuse it by itself.
		stream, err := b.client.Subscribe(ctx, grpc.MaxCallSendMsgSize(4*transport.DefaultMaxMessageSize))
		if err != nil {
			t.Fatal(err)
		}
		_ = stream.Send(openFrame(o))
		f, err := stream.Recv()
		if err = transport.FromStatus(err); !errors.Is(err, transport.ErrTooLarge) {
			t.Fatalf("got %v, %v; want %v", f, err, transport.ErrTooLarge)
		}
		b.survived(t, before)
	})

	// Payloads that are not msgpack, or not the message the method takes.
	malformed := []struct {
		name    string
		payload []byte
	}{
		{"never-used code", []byte{0xc1}},
		{"truncated map", []byte{0x83, 0xa1, 'v'}},
		{"claims 4 GiB", []byte{0xc6, 0xff, 0xff, 0xff, 0xff, 0x00}},
		{"string, not a message", []byte{0xa3, 'a', 'b', 'c'}},
		{"fields of the wrong type", mustMarshal(t, map[string]any{"v": "one", "t": 5, "keys": "zzz", "k": "x", "o": 7})},
		{"deeply nested unknown field", append(append([]byte{0x81, 0xa2, 'z', 'z'}, bytes.Repeat([]byte{0x91}, 100000)...), 0xc0)},
	}
	for _, m := range malformed {
		for _, method := range []string{"Get", "Digest"} {
			t.Run("malformed/"+method+"/"+m.name, func(t *testing.T) {
				before := b.state(t)
				var out []byte
				err := b.cc.Invoke(ctxT(t, 30*time.Second), "/"+transport.ReplicationServiceName+"/"+method, m.payload, &out, grpc.ForceCodecV2(rawCodec{}))
				if err = transport.FromStatus(err); !errors.Is(err, transport.ErrBadRequest) {
					t.Fatalf("err = %v, want %v", err, transport.ErrBadRequest)
				}
				b.survived(t, before)
			})
		}
		t.Run("malformed/Subscribe/"+m.name, func(t *testing.T) {
			before := b.state(t)
			ctx := ctxT(t, 30*time.Second)
			s, err := b.cc.NewStream(ctx, &transport.ReplicationServiceDesc.Streams[0], "/"+transport.ReplicationServiceName+"/Subscribe", grpc.ForceCodecV2(rawCodec{}))
			if err != nil {
				t.Fatal(err)
			}
			if err := s.SendMsg(m.payload); err != nil && !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
			var out []byte
			for err == nil {
				err = s.RecvMsg(&out)
				if err == nil {
					t.Fatalf("owner answered a malformed open with %d bytes", len(out))
				}
			}
			if err = transport.FromStatus(err); !errors.Is(err, transport.ErrBadRequest) {
				t.Fatalf("err = %v, want %v", err, transport.ErrBadRequest)
			}
			b.survived(t, before)
		})
	}

	unary := []struct {
		name string
		get  *transport.GetRequest
		dig  *transport.DigestRequest
		want error
	}{
		{"version 0", &transport.GetRequest{Table: "items", Keys: [][]byte{[]byte("item/001")}},
			&transport.DigestRequest{Table: "items"}, transport.ErrProtocolVersion},
		{"version too new", &transport.GetRequest{Version: transport.ProtocolVersion + 1, Table: "items", Keys: [][]byte{[]byte("item/001")}},
			&transport.DigestRequest{Version: transport.ProtocolVersion + 1, Table: "items"}, transport.ErrProtocolVersion},
		{"unknown table", &transport.GetRequest{Version: transport.ProtocolVersion, Service: "products", Table: "nope", Keys: [][]byte{[]byte("k")}},
			&transport.DigestRequest{Version: transport.ProtocolVersion, Service: "products", Table: "nope"}, transport.ErrUnknownTable},
		{"service not allowed", &transport.GetRequest{Version: transport.ProtocolVersion, Service: "billing", Table: "secrets", Keys: [][]byte{[]byte("secret/01")}},
			&transport.DigestRequest{Version: transport.ProtocolVersion, Service: "billing", Table: "secrets"}, transport.ErrPermission},
		{"no service name on a restricted table", &transport.GetRequest{Version: transport.ProtocolVersion, Table: "secrets", Keys: [][]byte{[]byte("secret/01")}},
			&transport.DigestRequest{Version: transport.ProtocolVersion, Table: "secrets"}, transport.ErrPermission},
		{"too many keys", &transport.GetRequest{Version: transport.ProtocolVersion, Service: "products", Table: "items", Keys: make([][]byte, 10001)},
			nil, transport.ErrTooLarge},
		{"oversized message", &transport.GetRequest{Version: transport.ProtocolVersion, Service: "products", Table: "items", Keys: [][]byte{bytes.Repeat([]byte("k"), transport.DefaultMaxMessageSize+1)}},
			&transport.DigestRequest{Version: transport.ProtocolVersion, Service: "products", Table: "items", Start: bytes.Repeat([]byte("k"), transport.DefaultMaxMessageSize+1)}, transport.ErrTooLarge},
	}
	big := grpc.MaxCallSendMsgSize(4 * transport.DefaultMaxMessageSize)
	for _, u := range unary {
		t.Run("Get/"+u.name, func(t *testing.T) {
			before := b.state(t)
			resp, err := b.client.Get(ctxT(t, 30*time.Second), u.get, big)
			if !errors.Is(err, u.want) {
				t.Fatalf("Get = %+v, %v; want %v", resp, err, u.want)
			}
			b.survived(t, before)
		})
		if u.dig == nil {
			continue
		}
		t.Run("Digest/"+u.name, func(t *testing.T) {
			before := b.state(t)
			resp, err := b.client.Digest(ctxT(t, 30*time.Second), u.dig, big)
			if !errors.Is(err, u.want) {
				t.Fatalf("Digest = %+v, %v; want %v", resp, err, u.want)
			}
			b.survived(t, before)
		})
	}

	// The same connection still works for good requests: the bad ones
	// above did not poison it.
	t.Run("good requests still answered", func(t *testing.T) {
		resp, err := b.client.Get(ctxT(t, 30*time.Second), &transport.GetRequest{Version: transport.ProtocolVersion, Service: "products", Table: "secrets", Keys: [][]byte{[]byte("secret/01"), []byte("missing")}})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Values) != 2 || !resp.Values[0].Found || string(resp.Values[0].Value) != "s3cr3t" || resp.Values[1].Found {
			t.Fatalf("Get = %+v", resp)
		}
		d, err := b.client.Digest(ctxT(t, 30*time.Second), &transport.DigestRequest{Version: transport.ProtocolVersion, Service: "products", Table: "items"})
		if err != nil {
			t.Fatal(err)
		}
		if want, _ := b.items.Digest(nil, nil); !bytes.Equal(d.Hash, want.Hash) || d.Seq != want.Seq {
			t.Fatalf("Digest = %+v, want %+v", d, want)
		}
	})
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := transport.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fakeOwner is a transport.ReplicationServer whose Subscribe runs script,
// once per stream, with the stream's number (1 for the first).
type fakeOwner struct {
	script func(n int, open *transport.Open, s transport.SubscribeServer) error

	mu      sync.Mutex
	streams int
}

func (f *fakeOwner) Subscribe(s transport.SubscribeServer) error {
	first, err := s.Recv()
	if err != nil {
		return err
	}
	if first.Kind != transport.KindOpen || first.Open == nil {
		return fmt.Errorf("%w: fake owner wants open", transport.ErrBadRequest)
	}
	f.mu.Lock()
	f.streams++
	n := f.streams
	f.mu.Unlock()
	if err := f.script(n, first.Open, s); err != nil {
		return err
	}
	// Hold the stream until the consumer drops it.
	for {
		if _, err := s.Recv(); err != nil {
			return nil
		}
	}
}

func (f *fakeOwner) Get(context.Context, *transport.GetRequest) (*transport.GetResponse, error) {
	return nil, transport.ErrUnknownTable
}

func (f *fakeOwner) Digest(context.Context, *transport.DigestRequest) (*transport.DigestResponse, error) {
	return nil, transport.ErrUnknownTable
}

func (f *fakeOwner) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.streams
}

// serveFake serves f on a fresh 127.0.0.1 port until the test ends.
func serveFake(t *testing.T, f *fakeOwner) string {
	t.Helper()
	return serveTest(t, func(srv *transport.Server) { transport.RegisterReplicationServer(srv, f) })
}

// serveTest serves the services register adds on a fresh 127.0.0.1 port
// until the test ends, and returns the address.
func serveTest(t *testing.T, register func(*transport.Server)) string {
	t.Helper()
	ln, err := transport.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveOn(t, ln, register)
	return ln.Addr().String()
}

// serveOn serves the services register adds on ln until the test ends.
func serveOn(t *testing.T, ln net.Listener, register func(*transport.Server)) {
	t.Helper()
	srv := transport.NewServer(transport.Options{})
	register(srv)
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.GracefulStop(time.Second); <-done })
}

// The fake owner's table: rows k00..k09 at seq 10, then change 11 (put
// k10) and the two-change group 12..13 (put k11, delete k00), all at epoch 2.
const (
	fakeLog   = "fakelog"
	fakeEpoch = 2
	fakeSeq   = 13
)

func fakeRows() []transport.Row {
	var rows []transport.Row
	for i := range 10 {
		rows = append(rows, transport.Row{Key: fmt.Appendf(nil, "k%02d", i), Value: fmt.Appendf(nil, "v%d", i)})
	}
	return rows
}

func fakeChanges() []transport.Change {
	now := time.Now().UnixNano()
	return []transport.Change{
		{Seq: 11, Op: transport.OpPut, Key: []byte("k10"), Value: []byte("v10"), Time: now, TxnEnd: true, Epoch: fakeEpoch},
		{Seq: 12, Op: transport.OpPut, Key: []byte("k11"), Value: []byte("v11"), Time: now, Epoch: fakeEpoch},
		{Seq: 13, Op: transport.OpDelete, Key: []byte("k00"), Time: now, TxnEnd: true, Epoch: fakeEpoch},
	}
}

// fakeGood is the replica's contents at fakeSeq.
func fakeGood() map[string]string {
	m := map[string]string{}
	for _, r := range fakeRows() {
		m[string(r.Key)] = string(r.Value)
	}
	m["k10"], m["k11"] = "v10", "v11"
	delete(m, "k00")
	return m
}

// sendGood brings a fresh consumer to seq fakeSeq (a full transfer, then
// two groups, the second split across frames), or resumes one that is
// already there.
func sendGood(open *transport.Open, s transport.SubscribeServer) error {
	if open.LogID == fakeLog && open.Seq == fakeSeq {
		return s.Send(&transport.OwnerFrame{Kind: transport.KindStart, HeadSeq: fakeSeq, Start: &transport.Start{
			Version: transport.ProtocolVersion, LogID: fakeLog, Epoch: fakeEpoch, HeadSeq: fakeSeq, FirstSeq: 1, Resume: true}})
	}
	frames := []*transport.OwnerFrame{
		{Kind: transport.KindStart, HeadSeq: fakeSeq, Start: &transport.Start{Version: transport.ProtocolVersion, LogID: fakeLog, Epoch: fakeEpoch, HeadSeq: fakeSeq, FirstSeq: 1}},
		{Kind: transport.KindSnapshotBegin, Seq: 10, HeadSeq: fakeSeq, Epoch: fakeEpoch},
		{Kind: transport.KindRows, Rows: fakeRows()[:4]},
		{Kind: transport.KindRows, Rows: fakeRows()[4:]},
		{Kind: transport.KindSnapshotEnd, Seq: 10, HeadSeq: fakeSeq, Epoch: fakeEpoch, Count: uint64(len(fakeRows()))},
		{Kind: transport.KindChanges, HeadSeq: fakeSeq, Epoch: fakeEpoch, Changes: fakeChanges()[:2]},
		{Kind: transport.KindChanges, HeadSeq: fakeSeq, Epoch: fakeEpoch, Changes: fakeChanges()[2:]},
	}
	for _, f := range frames {
		if err := s.Send(f); err != nil {
			return err
		}
	}
	return nil
}

func change(seq uint64, op transport.Op, key, value string) transport.Change {
	c := transport.Change{Seq: seq, Op: op, Key: []byte(key), Time: time.Now().UnixNano(), TxnEnd: true, Epoch: fakeEpoch}
	if value != "" {
		c.Value = []byte(value)
	}
	return c
}

// TestBadInput_Consumer has a fake owner send a replica frames that break
// the protocol: gaps, duplicates, unknown ops, inconsistent transfers, stale
// epochs, a bad first frame. The replica refuses each (Status.LastErr wraps
// the matching sentinel) on every reconnect, and its stored data stays what
// it was.
func TestBadInput_Consumer(t *testing.T) {
	changesFrame := func(chs ...transport.Change) *transport.OwnerFrame {
		return &transport.OwnerFrame{Kind: transport.KindChanges, HeadSeq: 20, Epoch: fakeEpoch, Changes: chs}
	}
	cases := []struct {
		name string
		// bad runs after sendGood on every stream; a nil error from the
		// replica's point of view is checked by want == nil.
		bad  func(open *transport.Open, s transport.SubscribeServer) error
		want error
		// fresh: the bad input comes instead of sendGood on streams after
		// the first, which ends once the replica is at fakeSeq.
		fresh bool
	}{
		{name: "gap", want: ErrGap, bad: func(_ *transport.Open, s transport.SubscribeServer) error {
			return s.Send(changesFrame(change(15, transport.OpPut, "k20", "v20")))
		}},
		{name: "gap inside a frame", want: ErrGap, bad: func(_ *transport.Open, s transport.SubscribeServer) error {
			return s.Send(changesFrame(change(14, transport.OpPut, "k20", "v20"), change(16, transport.OpPut, "k21", "v21")))
		}},
		{name: "unknown op", want: transport.ErrBadRequest, bad: func(_ *transport.Open, s transport.SubscribeServer) error {
			return s.Send(changesFrame(change(14, transport.Op(9), "k01", "x")))
		}},
		{name: "delete with a value", want: transport.ErrBadRequest, bad: func(_ *transport.Open, s transport.SubscribeServer) error {
			return s.Send(changesFrame(change(14, transport.OpDelete, "k01", "x")))
		}},
		{name: "empty key", want: transport.ErrBadRequest, bad: func(_ *transport.Open, s transport.SubscribeServer) error {
			return s.Send(changesFrame(change(14, transport.OpPut, "", "x")))
		}},
		{name: "stale epoch in changes", want: ErrStaleEpoch, bad: func(_ *transport.Open, s transport.SubscribeServer) error {
			f := changesFrame(change(14, transport.OpPut, "k01", "stale"))
			f.Epoch = fakeEpoch - 1
			return s.Send(f)
		}},
		{name: "unexpected frame kind", want: transport.ErrBadRequest, bad: func(_ *transport.Open, s transport.SubscribeServer) error {
			return s.Send(&transport.OwnerFrame{Kind: transport.KindRows, Rows: []transport.Row{{Key: []byte("k01"), Value: []byte("x")}}})
		}},
		{name: "snapshot-end with a wrong seq", want: transport.ErrBadRequest, fresh: true, bad: func(_ *transport.Open, s transport.SubscribeServer) error {
			for _, f := range []*transport.OwnerFrame{
				{Kind: transport.KindStart, HeadSeq: 30, Start: &transport.Start{Version: transport.ProtocolVersion, LogID: "otherlog", Epoch: fakeEpoch, HeadSeq: 30, FirstSeq: 1}},
				{Kind: transport.KindSnapshotBegin, Seq: 30, HeadSeq: 30, Epoch: fakeEpoch},
				{Kind: transport.KindRows, Rows: []transport.Row{{Key: []byte("k01"), Value: []byte("replaced")}, {Key: []byte("zz"), Value: []byte("new")}}},
				{Kind: transport.KindSnapshotEnd, Seq: 31, HeadSeq: 30, Epoch: fakeEpoch},
			} {
				if err := s.Send(f); err != nil {
					return err
				}
			}
			return nil
		}},
		{name: "snapshot-end counting other rows (a rows frame lost)", want: transport.ErrBadRequest, fresh: true, bad: func(_ *transport.Open, s transport.SubscribeServer) error {
			for _, f := range []*transport.OwnerFrame{
				{Kind: transport.KindStart, HeadSeq: 30, Start: &transport.Start{Version: transport.ProtocolVersion, LogID: "otherlog", Epoch: fakeEpoch, HeadSeq: 30, FirstSeq: 1}},
				{Kind: transport.KindSnapshotBegin, Seq: 30, HeadSeq: 30, Epoch: fakeEpoch},
				{Kind: transport.KindRows, Rows: []transport.Row{{Key: []byte("k01"), Value: []byte("replaced")}}},
				{Kind: transport.KindSnapshotEnd, Seq: 30, HeadSeq: 30, Epoch: fakeEpoch, Count: 2},
			} {
				if err := s.Send(f); err != nil {
					return err
				}
			}
			return nil
		}},
		{name: "snapshot row with an empty key", want: transport.ErrBadRequest, fresh: true, bad: func(_ *transport.Open, s transport.SubscribeServer) error {
			for _, f := range []*transport.OwnerFrame{
				{Kind: transport.KindStart, HeadSeq: 30, Start: &transport.Start{Version: transport.ProtocolVersion, LogID: "otherlog", Epoch: fakeEpoch, HeadSeq: 30, FirstSeq: 1}},
				{Kind: transport.KindSnapshotBegin, Seq: 30, HeadSeq: 30, Epoch: fakeEpoch},
				{Kind: transport.KindRows, Rows: []transport.Row{{Key: nil, Value: []byte("x")}}},
				{Kind: transport.KindSnapshotEnd, Seq: 30, HeadSeq: 30, Epoch: fakeEpoch},
			} {
				if err := s.Send(f); err != nil {
					return err
				}
			}
			return nil
		}},
		{name: "owner at a stale epoch", want: ErrStaleEpoch, fresh: true, bad: func(o *transport.Open, s transport.SubscribeServer) error {
			return s.Send(&transport.OwnerFrame{Kind: transport.KindStart, HeadSeq: 40, Start: &transport.Start{
				Version: transport.ProtocolVersion, LogID: fakeLog, Epoch: fakeEpoch - 1, HeadSeq: 40, FirstSeq: 1, Resume: true}})
		}},
		{name: "first frame is not start", want: transport.ErrBadRequest, fresh: true, bad: func(_ *transport.Open, s transport.SubscribeServer) error {
			return s.Send(changesFrame(change(14, transport.OpPut, "k01", "x")))
		}},
		{name: "start with a protocol version too new", want: transport.ErrProtocolVersion, fresh: true, bad: func(_ *transport.Open, s transport.SubscribeServer) error {
			return s.Send(&transport.OwnerFrame{Kind: transport.KindStart, HeadSeq: fakeSeq, Start: &transport.Start{
				Version: transport.ProtocolVersion + 1, LogID: fakeLog, Epoch: fakeEpoch, HeadSeq: fakeSeq, FirstSeq: 1, Resume: true}})
		}},
		// A malformed owner's table default is a protocol error, not "none".
		{name: "start with an unknown table default mode", want: transport.ErrBadRequest, fresh: true, bad: func(_ *transport.Open, s transport.SubscribeServer) error {
			return s.Send(&transport.OwnerFrame{Kind: transport.KindStart, HeadSeq: fakeSeq, Start: &transport.Start{
				Version: transport.ProtocolVersion, LogID: fakeLog, Epoch: fakeEpoch, HeadSeq: fakeSeq, FirstSeq: 1, Resume: true, Mode: "turbo"}})
		}},
		{name: "resume of another log", want: transport.ErrBadRequest, fresh: true, bad: func(_ *transport.Open, s transport.SubscribeServer) error {
			return s.Send(&transport.OwnerFrame{Kind: transport.KindStart, HeadSeq: fakeSeq, Start: &transport.Start{
				Version: transport.ProtocolVersion, LogID: "otherlog", Epoch: fakeEpoch, HeadSeq: fakeSeq, FirstSeq: 1, Resume: true}})
		}},
	}
	good := fakeGood()
	wantDigest := mapDigest(good, fakeLog, fakeSeq)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fake := &fakeOwner{script: func(n int, open *transport.Open, s transport.SubscribeServer) error {
				if tc.fresh && n > 1 {
					return tc.bad(open, s)
				}
				if err := sendGood(open, s); err != nil {
					return err
				}
				if tc.fresh {
					// End the first stream once the replica holds fakeSeq,
					// so the bad input meets a replica with data.
					for {
						f, err := s.Recv()
						if err != nil {
							return err
						}
						if f.Kind == transport.KindAck && f.Seq == fakeSeq {
							return fmt.Errorf("%w: fake owner restarts", transport.ErrUnavailable)
						}
					}
				}
				return tc.bad(open, s)
			}}
			addr := serveFake(t, fake)
			c := openComponent(t, "products", "p1", "", "")
			defer mustClose(t, c)
			r, err := c.Subscribe(ctxT(t, 30*time.Second), SubscribeOptions{Service: "stores", Table: "items", Addr: addr})
			if err != nil {
				t.Fatal(err)
			}
			// The replica refuses the bad input again on every reconnect.
			// (The status is taken once: a stream that resumes before its
			// bad frame clears LastErr for a moment.)
			var st Status
			waitUntil(t, 20*time.Second, "the replica to refuse the bad input on three streams", func() bool {
				st = r.Status()
				return fake.count() >= 4 && errors.Is(st.LastErr, tc.want)
			})
			if !errors.Is(st.LastErr, tc.want) {
				t.Fatalf("LastErr = %v, want %v", st.LastErr, tc.want)
			}
			if st.Seq != fakeSeq || st.LogID != fakeLog || st.Epoch != fakeEpoch {
				t.Fatalf("replica at log %s seq %d epoch %d, want log %s seq %d epoch %d", st.LogID, st.Seq, st.Epoch, fakeLog, fakeSeq, fakeEpoch)
			}
			if st.Stats.FullTransfers != 1 {
				t.Fatalf("%d full transfers, want 1", st.Stats.FullTransfers)
			}
			d, err := r.Digest(nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(d.Hash, wantDigest.Hash) || d.Rows != wantDigest.Rows || d.Seq != fakeSeq {
				got := map[string]string{}
				_, _ = r.Scan(nil, func(k, v []byte) bool { got[string(k)] = string(v); return true })
				t.Fatalf("replica data changed by bad input:\n%s", mapDiff(got, good))
			}
		})
	}

	// A duplicate is not an error: the replica skips what it already has,
	// even when the resent change differs, and applies what is new once.
	t.Run("duplicates are skipped", func(t *testing.T) {
		fake := &fakeOwner{script: func(n int, open *transport.Open, s transport.SubscribeServer) error {
			if err := sendGood(open, s); err != nil {
				return err
			}
			if n > 1 {
				return nil
			}
			for _, f := range []*transport.OwnerFrame{
				changesFrame(fakeChanges()...),
				changesFrame(change(11, transport.OpPut, "k10", "rewritten"), change(12, transport.OpPut, "k05", "rewritten")),
				changesFrame(fakeChanges()[2], change(14, transport.OpPut, "k20", "v20")),
			} {
				if err := s.Send(f); err != nil {
					return err
				}
			}
			return nil
		}}
		addr := serveFake(t, fake)
		c := openComponent(t, "products", "p1", "", "")
		defer mustClose(t, c)
		r, err := c.Subscribe(ctxT(t, 30*time.Second), SubscribeOptions{Service: "stores", Table: "items", Addr: addr})
		if err != nil {
			t.Fatal(err)
		}
		if err := r.WaitFor(ctxT(t, 20*time.Second), 14); err != nil {
			t.Fatal(err)
		}
		st := r.Status()
		if st.LastErr != nil || st.Stats.Duplicates != 6 || st.Stats.Applied != 4 || st.Seq != 14 {
			t.Fatalf("status %+v: want no error, 6 duplicates, 4 applied, seq 14", st)
		}
		want := fakeGood()
		want["k20"] = "v20"
		got := map[string]string{}
		if _, err := r.Scan(nil, func(k, v []byte) bool { got[string(k)] = string(v); return true }); err != nil {
			t.Fatal(err)
		}
		if len(mapDiff(got, want)) > 0 {
			t.Fatalf("replica after duplicates:\n%s", mapDiff(got, want))
		}
	})
}
