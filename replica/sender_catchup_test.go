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
			w := written[want]
			if ch.Seq != want || ch.Op != w.Op || !bytes.Equal(ch.Key, w.Key) || !bytes.Equal(ch.Value, w.Value) || (ch.Value == nil) != (w.Value == nil) || ch.TxnEnd != w.TxnEnd {
				t.Fatalf("change %+v, want seq %d: %+v", ch, want, w)
			}
			want++
		}
		if last := f.Changes[len(f.Changes)-1]; !last.TxnEnd {
			t.Fatalf("a frame from %d ends at %d inside an Apply", f.Changes[0].Seq, last.Seq)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(encoded) < 2 || slices.Contains(encoded, false) {
		t.Fatalf("change frames pre-encoded: %v; want several, all", encoded)
	}
}
