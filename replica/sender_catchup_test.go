package replica

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/replmesh/replmesh/transport"
)

// TestCatchUp_FromLogEncoded: a consumer behind the in-memory tail is
// caught up from the log in frames encoded straight from the stored
// entries (readLogEncoded), then from the tail: every change frame goes
// out pre-encoded (none through the codec's per-change encoding), and
// the consumer, decoding them like any frame, receives every change
// written (puts, deletes, empty values, Applies of several changes) in
// seq order, each frame ending an Apply.
func TestCatchUp_FromLogEncoded(t *testing.T) {
	seed, _ := testSeed(t)
	t.Logf("seed %d (replay: REPLMESH_SEED=%d go test -run TestCatchUp_FromLogEncoded ./replica)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 0xca7c))
	owner := openWith(t, "stores", "s1", "", "", func(c *Config) { c.TailChanges = 16 })
	t.Cleanup(func() { mustClose(t, owner) })
	tbl, err := owner.Own("prices")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var encoded []bool // per change frame sent: whether it went pre-encoded
	owner.hooks.send = func(s *sender, f *transport.OwnerFrame, returned bool) {
		if f.Kind == transport.KindChanges && !returned {
			_, ok := f.Encoded()
			mu.Lock()
			encoded = append(encoded, ok)
			mu.Unlock()
		}
	}
	ctx := ctxT(t, 30*time.Second)
	model, written := map[string]string{}, map[uint64]transport.Change{}
	for range 300 {
		ws := make([]Write, 1+rng.IntN(4))
		for i := range ws {
			ws[i].Key = fmt.Appendf(nil, "k%03d", rng.IntN(50))
			switch r := rng.IntN(10); {
			case r == 0:
				ws[i].Delete = true
			case r == 1:
				ws[i].Value = []byte{}
			default:
				ws[i].Value = bytes.Repeat([]byte{byte('a' + rng.IntN(26))}, rng.IntN(2000))
			}
		}
		last, err := tbl.Apply(ctx, ws...)
		if err != nil {
			t.Fatal(err)
		}
		recordApply(model, written, last, ws)
	}
	head := tbl.Head()
	tbl.tail.mu.RLock()
	first := tbl.tail.first
	tbl.tail.mu.RUnlock()
	if first <= 1 {
		t.Fatalf("the tail holds seq %d on: want the log to serve the start", first)
	}

	// Resume from the start of the log.
	cl := rawClient(t, owner.Addr(), transport.Options{})
	open := func(o transport.Open) (*transport.ClientSubscription, *transport.Start) {
		o.Version, o.Service, o.Instance, o.Table = transport.ProtocolVersion, "checkout", "raw", "prices"
		sctx, cancel := context.WithCancel(ctx)
		t.Cleanup(cancel)
		sub, st, err := cl.OpenSubscribe(sctx, &o)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(sub.Close)
		return sub, st
	}
	sub, st := open(transport.Open{})
	sub.Close()
	sub, st = open(transport.Open{LogID: st.LogID, Epoch: st.Epoch})
	if !st.Resume {
		t.Fatalf("start %+v: want a resume", st)
	}
	recvChanges(t, sub, head, func(want uint64, ch transport.Change) error {
		w := written[want]
		if ch.Op != w.Op || !bytes.Equal(ch.Key, w.Key) || !bytes.Equal(ch.Value, w.Value) || (ch.Value == nil) != (w.Value == nil) || ch.TxnEnd != w.TxnEnd {
			return fmt.Errorf("got %+v, want %+v", ch, w)
		}
		return nil
	}, func(f *transport.OwnerFrame) error {
		if last := f.Changes[len(f.Changes)-1]; !last.TxnEnd {
			return fmt.Errorf("a frame from %d ends at %d inside an Apply", f.Changes[0].Seq, last.Seq)
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	if len(encoded) < 2 || slices.Contains(encoded, false) {
		t.Fatalf("change frames pre-encoded: %v; want several, all", encoded)
	}
}

// TestCatchUp_ReadAhead: while an owner sends a consumer that is behind
// one batch, it reads the next (startReadAhead), from the log and then
// from the tail, and sends that one next: every change frame but the
// last goes out with the batch after it being read, and the consumer
// receives every change in seq order.
func TestCatchUp_ReadAhead(t *testing.T) {
	owner := openWith(t, "stores", "s1", "", "", func(c *Config) { c.TailChanges = 512; c.Flow = FlowControl{Window: -1} })
	t.Cleanup(func() { mustClose(t, owner) })
	tbl, err := owner.Own("prices")
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, 30*time.Second)
	const n = 2000
	for i := range n {
		if _, err := tbl.Put(ctx, fmt.Appendf(nil, "k%04d", i), bytes.Repeat([]byte{byte(i)}, 1<<10)); err != nil {
			t.Fatal(err)
		}
	}
	head := tbl.Head()
	type sent struct {
		last     uint64 // the frame's last seq
		ahead    bool   // a batch was being read while it was sent
		from     uint64 // that batch's first seq
		aheadErr error
	}
	var mu sync.Mutex
	var frames []sent
	owner.hooks.send = func(s *sender, f *transport.OwnerFrame, returned bool) {
		if returned || f.Kind != transport.KindChanges {
			return
		}
		fs := sent{last: s.sent.Load()}
		if p := s.ahead; p != nil {
			// The read runs beside this send: it ends without it.
			select {
			case <-p.done:
				fs.ahead, fs.from, fs.aheadErr = true, p.b.from, p.b.err
			case <-ctx.Done():
				t.Error("the batch read ahead never came")
			}
		}
		mu.Lock()
		frames = append(frames, fs)
		mu.Unlock()
	}
	first := openRawConsumer(t, owner, transport.Open{})
	first.sub.Close()
	sub, st, err := rawClient(t, owner.Addr(), transport.Options{}).OpenSubscribe(ctx, &transport.Open{Version: transport.ProtocolVersion,
		Service: "checkout", Instance: "raw", Table: "prices", LogID: first.start.LogID, Epoch: first.start.Epoch})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sub.Close)
	if !st.Resume {
		t.Fatalf("start %+v: want a resume", st)
	}
	recvChanges(t, sub, head, func(want uint64, ch transport.Change) error {
		if !bytes.Equal(ch.Key, fmt.Appendf(nil, "k%04d", want-1)) || len(ch.Value) != 1<<10 || ch.Value[0] != byte(want-1) {
			return fmt.Errorf("key %q, %d bytes", ch.Key, len(ch.Value))
		}
		return nil
	}, nil)
	mu.Lock()
	defer mu.Unlock()
	if len(frames) < 4 {
		t.Fatalf("%d change frames: want several", len(frames))
	}
	for i, f := range frames {
		if f.last == head {
			if i != len(frames)-1 {
				t.Fatalf("frame %d of %d ends at the head", i, len(frames))
			}
			break
		}
		if !f.ahead || f.from != f.last+1 || f.aheadErr != nil {
			t.Fatalf("frame %d, up to seq %d, sent with read ahead %v from %d (err %v): want the batch from %d read meanwhile", i, f.last, f.ahead, f.from, f.aheadErr, f.last+1)
		}
	}
}

// TestCatchUp_ReadAheadSlowLink: a batch read ahead at the catch-up
// budget is not sent after a send that took longer than fastSend (a slow
// link): the next frame is read again at the budget of a slow link.
func TestCatchUp_ReadAheadSlowLink(t *testing.T) {
	const peerTimeout = 6400 * time.Millisecond
	owner := openWith(t, "stores", "s1", "", "", func(c *Config) { c.PeerTimeout = peerTimeout; c.Flow = FlowControl{Window: -1} })
	t.Cleanup(func() { mustClose(t, owner) })
	tbl, err := owner.Own("prices")
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, 30*time.Second)
	val := make([]byte, 1<<10)
	for i := range 2000 {
		if _, err := tbl.Put(ctx, fmt.Appendf(nil, "k%04d", i), val); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	var sizes []int
	slowed, aheadWhileSlow := -1, false
	owner.hooks.send = func(s *sender, f *transport.OwnerFrame, returned bool) {
		if returned || f.Kind != transport.KindChanges {
			return
		}
		size := frameSize(t, f)
		mu.Lock()
		defer mu.Unlock()
		sizes = append(sizes, size)
		if slowed < 0 && size > maxFrameBytes+4<<10 {
			// The first catch-up frame crosses a slow link: its send
			// takes longer than fastSend, while the next batch is read
			// at the catch-up budget.
			slowed, aheadWhileSlow = len(sizes)-1, s.ahead != nil
			time.Sleep(2 * fastSend(peerTimeout))
		}
	}
	first := openRawConsumer(t, owner, transport.Open{})
	first.sub.Close()
	rc := openRawConsumer(t, owner, transport.Open{LogID: first.start.LogID, Epoch: first.start.Epoch})
	if !rc.start.Resume {
		t.Fatalf("start %+v: want a resume", rc.start)
	}
	waitUntil(t, 20*time.Second, "the consumer receives the backlog", func() bool { return rc.last.Load() == tbl.Head() })
	mu.Lock()
	defer mu.Unlock()
	if slowed < 0 || slowed+1 >= len(sizes) || !aheadWhileSlow {
		t.Fatalf("frame sizes %v, slowed frame %d (read ahead meanwhile: %v): want a catch-up frame sent slowly while the next was read, and a frame after it", sizes, slowed, aheadWhileSlow)
	}
	if next := sizes[slowed+1]; next > maxFrameBytes+4<<10 {
		t.Fatalf("frame sizes %v: the frame after the slow one (%d) has %d bytes, want at most about %d (a slow link's)", sizes, slowed, next, maxFrameBytes)
	}
}

// recvChanges receives sub's change frames until seq head, checking that
// the changes come in seq order from 1 with no gap, each passing check,
// and each frame passing frame (nil: any).
func recvChanges(t *testing.T, sub *transport.ClientSubscription, head uint64, check func(want uint64, ch transport.Change) error, frame func(f *transport.OwnerFrame) error) {
	t.Helper()
	want := uint64(1)
	for want <= head {
		f, err := sub.Recv()
		if err != nil {
			t.Fatalf("receive at seq %d of %d: %v", want, head, err)
		}
		if f.Kind != transport.KindChanges {
			continue
		}
		for _, ch := range f.Changes {
			if ch.Seq != want {
				t.Fatalf("change %d, want seq %d", ch.Seq, want)
			}
			if err := check(want, ch); err != nil {
				t.Fatalf("change %d: %v", want, err)
			}
			want++
		}
		if frame != nil {
			if err := frame(f); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// frameSize is the size of f on the wire (0 after reporting an error).
func frameSize(t *testing.T, f *transport.OwnerFrame) int {
	t.Helper()
	b, err := transport.Marshal(f)
	if err != nil {
		t.Error(err)
		return 0
	}
	return len(b)
}
