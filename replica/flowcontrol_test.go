package replica

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/replmesh/replmesh/transport"
)

// TestSharedEncodings: with several consumers, every change frame an
// owner sends carries the encodings its tail made, and each change is
// encoded once for all of them (not once per stream).
func TestSharedEncodings(t *testing.T) {
	const consumers, groups, perGroup = 4, 50, 10
	var n memNet
	owner := n.open(t, "stores", "s1", "")
	defer mustClose(t, owner)
	tbl, err := owner.Own("prices")
	if err != nil {
		t.Fatal(err)
	}
	var frames, unshared atomic.Int64
	owner.hooks.send = func(s *sender, f *transport.OwnerFrame, returned bool) {
		if returned || f.Kind != transport.KindChanges {
			return
		}
		frames.Add(1)
		if _, ok := f.Encoded(); !ok {
			unshared.Add(1)
		}
	}
	var reps []*Replica
	for i := range consumers {
		c := n.open(t, "checkout", fmt.Sprintf("c%d", i), "")
		defer mustClose(t, c)
		r, err := c.Subscribe(context.Background(), SubscribeOptions{Service: "stores", Table: "prices", Addr: owner.Addr()})
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-r.Ready():
		case <-ctxT(t, 20*time.Second).Done():
			t.Fatalf("replica %d not ready: %+v", i, r.Status())
		}
		reps = append(reps, r)
	}
	ctx := ctxT(t, 30*time.Second)
	for g := range groups {
		ws := make([]Write, perGroup)
		for i := range ws {
			ws[i] = Write{Key: fmt.Appendf(nil, "k%03d", (g*perGroup+i)%97), Value: fmt.Appendf(nil, "v%d", g*perGroup+i)}
		}
		if _, err := tbl.Apply(ctx, ws...); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range reps {
		mustConverge(t, tbl, r)
	}
	if got, want := tbl.tail.encodes.Load(), uint64(groups*perGroup); got != want {
		t.Errorf("changes encoded: %d, want %d (once each for %d streams)", got, want, consumers)
	}
	if frames.Load() < consumers || unshared.Load() != 0 {
		t.Errorf("%d change frames sent, %d of them encoded for their stream alone", frames.Load(), unshared.Load())
	}
}

// rawConsumer is a Subscribe stream that receives everything the owner
// sends but acknowledges only when told: a consumer as slow as a test
// wants.
type rawConsumer struct {
	sub   *transport.ClientSubscription
	start *transport.Start
	last  atomic.Uint64 // the highest seq received
	err   chan error
}

func openRawConsumer(t *testing.T, owner *Component, open transport.Open) *rawConsumer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	open.Version, open.Service, open.Instance, open.Table = transport.ProtocolVersion, "checkout", "raw", "prices"
	cl := rawClient(t, owner.Addr(), transport.Options{})
	sub, st, err := cl.OpenSubscribe(ctx, &open)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sub.Close)
	rc := &rawConsumer{sub: sub, start: st, err: make(chan error, 1)}
	rc.last.Store(open.Seq)
	go func() {
		for {
			f, err := sub.Recv()
			if err != nil {
				rc.err <- err
				return
			}
			switch f.Kind {
			case transport.KindSnapshotEnd:
				rc.last.Store(f.Seq)
			case transport.KindChanges:
				rc.last.Store(f.Changes[len(f.Changes)-1].Seq)
			}
		}
	}()
	return rc
}

// ackAt waits until the consumer received seq and acknowledges it.
func (rc *rawConsumer) ackAt(t *testing.T, seq uint64) {
	t.Helper()
	waitUntil(t, 20*time.Second, fmt.Sprintf("raw consumer receives seq %d", seq), func() bool { return rc.last.Load() >= seq })
	if err := rc.sub.Send(&transport.ConsumerFrame{Kind: transport.KindAck, Seq: seq}); err != nil {
		t.Fatal(err)
	}
}

func flowOwner(t *testing.T, fc FlowControl) (*Component, *OwnedTable) {
	t.Helper()
	owner := openWith(t, "stores", "s1", "", "", func(c *Config) { c.Flow = fc })
	t.Cleanup(func() { mustClose(t, owner) })
	tbl, err := owner.Own("prices")
	if err != nil {
		t.Fatal(err)
	}
	return owner, tbl
}

// writeAsync writes n changes one after the other; the returned channel
// yields the first error (nil once all are committed).
func writeAsync(ctx context.Context, tbl *OwnedTable, n int) <-chan error {
	done := make(chan error, 1)
	go func() {
		for i := range n {
			if _, err := tbl.Put(ctx, fmt.Appendf(nil, "k%d", i%7), []byte("v")); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	return done
}

// TestFlowControl_HeldConsumerPacesWriter: a consumer within the window
// that acknowledges nothing holds writes at exactly the window; each ack
// lets the writer run one window further.
func TestFlowControl_HeldConsumerPacesWriter(t *testing.T) {
	const window = 8
	owner, tbl := flowOwner(t, FlowControl{Window: window, Hold: time.Hour})
	rc := openRawConsumer(t, owner, transport.Open{})
	waitUntil(t, 20*time.Second, "the stream is held", func() bool { return tbl.flow.stats().held == 1 })
	ctx := ctxT(t, 30*time.Second)
	done := writeAsync(ctx, tbl, 2*window+4)
	for _, at := range []uint64{window, 2 * window} {
		waitUntil(t, 20*time.Second, fmt.Sprintf("the writer waits at head %d", at), func() bool {
			return tbl.flow.stats().waiting == 1 && tbl.Head() == at
		})
		rc.ackAt(t, at)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if st := tbl.flow.stats(); st.waits != 2 || st.cutLoose != 0 {
		t.Fatalf("flow stats %+v, want 2 waits and nobody cut loose", st)
	}
}

// TestFlowControl_LooseConsumers: consumers the writer does not wait for
// however little they acknowledge: one that resumes beyond the window,
// one cut loose after holding a writer for Hold (held again once it
// catches up), and any consumer with flow control off.
func TestFlowControl_LooseConsumers(t *testing.T) {
	const window = 8
	t.Run("resumes beyond the window", func(t *testing.T) {
		owner, tbl := flowOwner(t, FlowControl{Window: window, Hold: time.Hour})
		ctx := ctxT(t, 30*time.Second)
		if err := <-writeAsync(ctx, tbl, 3*window); err != nil {
			t.Fatal(err)
		}
		first := openRawConsumer(t, owner, transport.Open{})
		first.sub.Close()
		rc := openRawConsumer(t, owner, transport.Open{LogID: first.start.LogID, Seq: 1, Epoch: first.start.Epoch})
		if !rc.start.Resume {
			t.Fatalf("start %+v: want a resume", rc.start)
		}
		waitUntil(t, 20*time.Second, "the stream joins", func() bool { return tbl.flow.streams() == 1 })
		if err := <-writeAsync(ctx, tbl, 3*window); err != nil {
			t.Fatal(err)
		}
		if st := tbl.flow.stats(); st.waits != 0 || st.held != 0 {
			t.Fatalf("flow stats %+v: a consumer beyond the window held writes", st)
		}
		// Back within half the window of the head: held again.
		rc.ackAt(t, tbl.Head()-window/2)
		waitUntil(t, 20*time.Second, "the caught-up stream is held", func() bool { return tbl.flow.stats().held == 1 })
	})
	t.Run("cut loose after hold", func(t *testing.T) {
		owner, tbl := flowOwner(t, FlowControl{Window: window, Hold: 50 * time.Millisecond})
		rc := openRawConsumer(t, owner, transport.Open{})
		waitUntil(t, 20*time.Second, "the stream is held", func() bool { return tbl.flow.stats().held == 1 })
		if err := <-writeAsync(ctxT(t, 30*time.Second), tbl, 3*window); err != nil {
			t.Fatal(err)
		}
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(owner.Metrics())
		want := `
# HELP replmesh_table_flow_cut_loose_total Push consumers of an owned table cut loose from flow control after holding a writer for the hold time.
# TYPE replmesh_table_flow_cut_loose_total counter
replmesh_table_flow_cut_loose_total{component="stores/s1",table="prices"} 1
# HELP replmesh_table_flow_held_streams Push streams of an owned table that writes wait for (keeping up).
# TYPE replmesh_table_flow_held_streams gauge
replmesh_table_flow_held_streams{component="stores/s1",table="prices"} 0
# HELP replmesh_table_flow_waits_total Writes to an owned table that waited for a push consumer a flow window behind.
# TYPE replmesh_table_flow_waits_total counter
replmesh_table_flow_waits_total{component="stores/s1",table="prices"} 1
`
		if err := promtest.GatherAndCompare(reg, strings.NewReader(want), "replmesh_table_flow_waits_total",
			"replmesh_table_flow_cut_loose_total", "replmesh_table_flow_held_streams"); err != nil {
			t.Fatalf("one wait ended by cutting the stream loose: %v", err)
		}
		rc.ackAt(t, tbl.Head())
		waitUntil(t, 20*time.Second, "the caught-up stream is held again", func() bool { return tbl.flow.stats().held == 1 })
	})
	t.Run("off", func(t *testing.T) {
		owner, tbl := flowOwner(t, FlowControl{Window: -1})
		openRawConsumer(t, owner, transport.Open{})
		if err := <-writeAsync(ctxT(t, 30*time.Second), tbl, 3*window); err != nil {
			t.Fatal(err)
		}
		if st, n := tbl.flow.stats(), tbl.flow.streams(); st.waits != 0 || n != 0 {
			t.Fatalf("flow stats %+v, %d streams: flow control is off", st, n)
		}
	})
}

// TestFlowControl_WriterEndsWithItsContext: a writer held by the window
// returns its context's error, and nothing of its write is queued.
func TestFlowControl_WriterEndsWithItsContext(t *testing.T) {
	const window = 4
	owner, tbl := flowOwner(t, FlowControl{Window: window, Hold: time.Hour})
	openRawConsumer(t, owner, transport.Open{})
	waitUntil(t, 20*time.Second, "the stream is held", func() bool { return tbl.flow.stats().held == 1 })
	if err := <-writeAsync(ctxT(t, 30*time.Second), tbl, window); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var err error
	wg.Go(func() { _, err = tbl.Put(ctx, []byte("k"), []byte("late")) })
	waitUntil(t, 20*time.Second, "the writer waits", func() bool { return tbl.flow.stats().waiting == 1 })
	cancel()
	wg.Wait()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("held Put returned %v, want context.Canceled", err)
	}
	if h := tbl.Head(); h != window {
		t.Fatalf("head %d after a cancelled held write, want %d", h, window)
	}
}

func TestFlowControl_Validate(t *testing.T) {
	cfg := LocalConfig("stores", "s1")
	cfg.Flow.Hold = -time.Second
	if err := cfg.Validate(); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Validate with a negative Flow.Hold: %v, want ErrInvalid", err)
	}
}

// TestFlowControl_IdleConsumerNotCutLoose: a held consumer whose last ack
// is older than Hold because it had nothing to acknowledge (an idle
// table) still holds the first burst's writer: its hold runs from when
// the writer began to wait.
func TestFlowControl_IdleConsumerNotCutLoose(t *testing.T) {
	const window = 4
	owner, tbl := flowOwner(t, FlowControl{Window: window, Hold: time.Hour})
	rc := openRawConsumer(t, owner, transport.Open{})
	waitUntil(t, 20*time.Second, "the stream is held", func() bool { return tbl.flow.stats().held == 1 })
	tbl.flow.mu.Lock()
	for _, m := range tbl.flow.members {
		m.ackedAt = m.ackedAt.Add(-2 * time.Hour) // idle for longer than Hold
	}
	tbl.flow.mu.Unlock()
	done := writeAsync(ctxT(t, 30*time.Second), tbl, window+1)
	waitUntil(t, 20*time.Second, "the writer waits at the window", func() bool {
		return tbl.flow.stats().waiting == 1 && tbl.Head() == window
	})
	if st := tbl.flow.stats(); st.cutLoose != 0 || st.held != 1 {
		t.Fatalf("flow stats %+v: the idle consumer was cut loose", st)
	}
	rc.ackAt(t, window)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestCatchUpFrames: a consumer behind on a fast link gets batches larger
// than the 64 KiB a caught-up one gets, up to catchUpFrameBytes.
func TestCatchUpFrames(t *testing.T) {
	owner, tbl := flowOwner(t, FlowControl{Window: -1})
	var mu sync.Mutex
	var sizes []int
	owner.hooks.send = func(s *sender, f *transport.OwnerFrame, returned bool) {
		if returned || f.Kind != transport.KindChanges {
			return
		}
		size := frameSize(t, f)
		mu.Lock()
		sizes = append(sizes, size)
		mu.Unlock()
	}
	ctx := ctxT(t, 30*time.Second)
	val := make([]byte, 1<<10)
	for i := range 2000 {
		if _, err := tbl.Put(ctx, fmt.Appendf(nil, "k%04d", i), val); err != nil {
			t.Fatal(err)
		}
	}
	// Resume from the start of the log: 2 MB behind.
	first := openRawConsumer(t, owner, transport.Open{})
	first.sub.Close()
	rc := openRawConsumer(t, owner, transport.Open{LogID: first.start.LogID, Seq: 0, Epoch: first.start.Epoch})
	if !rc.start.Resume {
		t.Fatalf("start %+v: want a resume", rc.start)
	}
	waitUntil(t, 20*time.Second, "the consumer receives the backlog", func() bool { return rc.last.Load() == tbl.Head() })
	mu.Lock()
	defer mu.Unlock()
	largest := slices.Max(sizes)
	if largest <= maxFrameBytes+4<<10 || largest > catchUpFrameBytes+4<<10 {
		t.Fatalf("largest batch %d bytes over %d frames: want over %d (a catch-up frame), at most about %d", largest, len(sizes), maxFrameBytes, catchUpFrameBytes)
	}
}
