package replica

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/replmesh/replmesh/modes"
	"github.com/replmesh/replmesh/transport"
	"google.golang.org/grpc"
)

func TestDecideFeed(t *testing.T) {
	hist := transport.EpochHistory{{Epoch: 1, Seq: 1}, {Epoch: 2, Seq: 8}}
	start := func(log string, head, first uint64, resume bool) *transport.Start {
		return &transport.Start{Version: transport.ProtocolVersion, LogID: log, Epoch: 2, HeadSeq: head, FirstSeq: first, Resume: resume, Epochs: hist}
	}
	pos := func(log string, seq, epoch uint64) FeedPosition {
		return FeedPosition{LogID: log, Seq: seq, Epoch: epoch}
	}
	var trimmed *FeedTrimmedError
	var diverged *FeedDivergedError
	for _, tc := range []struct {
		name          string
		in            feedInput
		action        feedAction
		pos           FeedPosition
		known         bool
		errIs, errAs  any // a sentinel, or a pointer to an error type
		fork, trimmed uint64
	}{
		{name: "head resolved", in: feedInput{Start: FeedAtHead, St: start("L", 20, 1, false)},
			action: feedReopen, pos: pos("L", 20, 2), known: true},
		{name: "oldest resolved", in: feedInput{Start: FeedFromOldest, St: start("L", 20, 5, false)},
			action: feedReopen, pos: pos("L", 4, 1), known: true},
		{name: "oldest of a log from seq 1: epoch unknown", in: feedInput{Start: FeedFromOldest, St: start("L", 20, 1, false)},
			action: feedReopen, pos: pos("L", 0, 2)},
		{name: "seq resolved with its epoch", in: feedInput{Start: FeedAfter, Pos: pos("", 9, 0), St: start("L", 20, 1, false)},
			action: feedReopen, pos: pos("L", 9, 2), known: true},
		{name: "seq ahead of the head", in: feedInput{Start: FeedAfter, Pos: pos("", 21, 0), St: start("L", 20, 1, false)},
			action: feedRefuse, errIs: ErrInvalid},
		{name: "seq trimmed", in: feedInput{Start: FeedAfter, Pos: pos("", 3, 0), St: start("L", 20, 10, false)},
			action: feedRefuse, errAs: &trimmed, trimmed: 3},
		{name: "seq just before the oldest", in: feedInput{Start: FeedAfter, Pos: pos("", 9, 0), St: start("L", 20, 10, false)},
			action: feedReopen, pos: pos("L", 9, 2), known: true},
		{name: "resume", in: feedInput{Pos: pos("L", 12, 2), Placed: true, Known: true, St: start("L", 20, 1, true)},
			action: feedResume, pos: pos("L", 12, 2), known: true},
		{name: "resume of another log", in: feedInput{Pos: pos("L", 12, 2), Placed: true, Known: true, St: start("M", 20, 1, true)},
			action: feedRefuse, errIs: transport.ErrBadRequest},
		{name: "deposed primary", in: feedInput{Pos: pos("L", 12, 2), Placed: true, Known: true, St: start("L", 20, 1, true), MinEpoch: 3},
			action: feedRefuse, errIs: ErrStaleEpoch},
		{name: "owner older than the changes delivered", in: feedInput{Pos: pos("L", 12, 3), Placed: true, Known: true, St: start("L", 20, 1, false)},
			action: feedRefuse, errIs: ErrStaleEpoch},
		{name: "new history", in: feedInput{Pos: pos("OLD", 5, 1), Placed: true, Known: true, St: start("L", 20, 1, false)},
			action: feedRefuse, errAs: &diverged, fork: 0},
		{name: "trimmed past the position", in: feedInput{Pos: pos("L", 3, 1), Placed: true, Known: true, St: start("L", 20, 10, false)},
			action: feedRefuse, errAs: &trimmed, trimmed: 3},
		{name: "changes lost in a failover", in: feedInput{Pos: pos("L", 10, 1), Placed: true, Known: true, St: start("L", 20, 1, false)},
			action: feedRefuse, errAs: &diverged, fork: 7},
		{name: "owner behind the changes delivered", in: feedInput{Pos: pos("L", 25, 2), Placed: true, Known: true, St: start("L", 20, 1, false)},
			action: feedRefuse, errAs: &diverged, fork: 20},
		{name: "epoch guess corrected", in: feedInput{Pos: pos("L", 5, 2), Placed: true, St: start("L", 20, 1, false)},
			action: feedReopen, pos: pos("L", 5, 1), known: true},
		{name: "not resumed, nothing known to be wrong", in: feedInput{Pos: pos("L", 12, 2), Placed: true, Known: true, St: start("L", 20, 1, false)},
			action: feedRefuse, errIs: transport.ErrUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.in.Table = "s/t"
			d := decideFeed(tc.in)
			if d.Action != tc.action {
				t.Fatalf("action %d (err %v), want %d", d.Action, d.Err, tc.action)
			}
			switch {
			case tc.errIs != nil:
				if !errors.Is(d.Err, tc.errIs.(error)) {
					t.Fatalf("err %v, want %v", d.Err, tc.errIs)
				}
			case tc.errAs != nil:
				if !errors.As(d.Err, tc.errAs) {
					t.Fatalf("err %v (%T), want %T", d.Err, d.Err, tc.errAs)
				}
				if tc.trimmed > 0 && (trimmed.After != tc.trimmed || !errors.Is(d.Err, transport.ErrResync)) {
					t.Errorf("trimmed error %+v, want after %d wrapping ErrResync", *trimmed, tc.trimmed)
				}
				if errors.As(d.Err, &diverged) && (diverged.ForkSeq != tc.fork || diverged.Position != tc.in.Pos || !errors.Is(d.Err, ErrDiverged)) {
					t.Errorf("diverged error %+v, want fork %d at %+v, wrapping ErrDiverged", *diverged, tc.fork, tc.in.Pos)
				}
			default:
				if d.Err != nil {
					t.Fatalf("err %v", d.Err)
				}
				if d.Pos != tc.pos || d.Known != tc.known {
					t.Errorf("position %+v known %v, want %+v known %v", d.Pos, d.Known, tc.pos, tc.known)
				}
			}
		})
	}
}

// feedLog is what a test wrote: the key and commit-group end of each seq.
type feedLog struct {
	keys map[uint64]string
	ends map[uint64]bool
}

func newFeedLog() *feedLog { return &feedLog{keys: map[uint64]string{}, ends: map[uint64]bool{}} }

// writeGroups writes groups commit groups of size changes each (keys
// prefix-N) and records them; it returns the last seq.
func writeGroups(t testing.TB, tbl *OwnedTable, l *feedLog, prefix string, groups, size int) uint64 {
	t.Helper()
	var last uint64
	for g := range groups {
		ws := make([]Write, size)
		for i := range ws {
			ws[i] = Write{Key: fmt.Appendf(nil, "%s-%d-%d", prefix, g, i), Value: []byte("v")}
		}
		seq, err := tbl.Apply(ctxT(t, 30*time.Second), ws...)
		if err != nil {
			t.Fatalf("apply: %v", err)
		}
		for i, w := range ws {
			s := seq - uint64(size-1-i)
			l.keys[s] = string(w.Key)
			l.ends[s] = i == size-1
		}
		last = seq
	}
	return last
}

// readFeed reads f until it delivered the change at seq to (or a batch
// past it), checking that the changes follow after in order, each once, as
// written (l). It returns the last seq read.
func readFeed(t testing.TB, f *Feed, l *feedLog, after, to uint64) uint64 {
	t.Helper()
	ctx := ctxT(t, 60*time.Second)
	prev := after
	for prev < to {
		b, err := f.Next(ctx)
		if err != nil {
			t.Fatalf("next after seq %d (want up to %d): %v", prev, to, err)
		}
		if len(b.Changes) == 0 {
			t.Fatalf("an empty batch after seq %d", prev)
		}
		for _, ch := range b.Changes {
			if ch.Seq != prev+1 {
				t.Fatalf("change %d after %d", ch.Seq, prev)
			}
			if k, ok := l.keys[ch.Seq]; !ok || k != string(ch.Key) || l.ends[ch.Seq] != ch.TxnEnd || ch.Epoch == 0 {
				t.Fatalf("change %d: key %q txn-end %v epoch %d; written: %q txn-end %v", ch.Seq, ch.Key, ch.TxnEnd, ch.Epoch, k, l.ends[ch.Seq])
			}
			prev = ch.Seq
		}
	}
	return prev
}

// openFeed starts a feed of stores/t on c from the owner at addr.
func openFeed(t testing.TB, c *Component, addr string, opts FeedOptions) *Feed {
	t.Helper()
	opts.Addr = addr
	f, err := c.Feed(ctxT(t, 10*time.Second), itOwner, itTable, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// feedErr waits for the error that ends f.
func feedErr(t testing.TB, f *Feed) error {
	t.Helper()
	ctx := ctxT(t, 60*time.Second)
	for {
		if _, err := f.Next(ctx); err != nil {
			if ctx.Err() != nil {
				t.Fatalf("the feed did not end: %v", err)
			}
			return err
		}
	}
}

// A feed starts at the oldest change, after any seq in the log, or at the
// head, and delivers every change from there in order, once, with its
// commit-group boundaries.
func TestFeed_StartPoints(t *testing.T) {
	owner := openComponent(t, itOwner, "s1", "", "")
	defer mustClose(t, owner)
	tbl := mustOwn(t, owner)
	cons := openComponent(t, "cdc", "c1", "", "")
	defer mustClose(t, cons)
	l := newFeedLog()
	head := writeGroups(t, tbl, l, "a", 10, 3)
	for _, tc := range []struct {
		name  string
		opts  FeedOptions
		after uint64 // 0 with atHead
		// atHead: the feed starts at the head (FeedAtHead, or -from it).
		atHead bool
	}{
		{"oldest", FeedOptions{Start: FeedFromOldest}, 0, false},
		{"seq 0", FeedOptions{Start: FeedAfter, Seq: 0}, 0, false},
		{"middle of a group", FeedOptions{Start: FeedAfter, Seq: 14}, 14, false},
		{"head as a seq", FeedOptions{Start: FeedAfter, Seq: head}, 0, true},
		{"head", FeedOptions{Start: FeedAtHead}, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			head := tbl.Head()
			connected := make(chan FeedEvent, 16)
			tc.opts.OnEvent = func(e FeedEvent) {
				if e.Kind == FeedConnected {
					select {
					case connected <- e:
					default:
					}
				}
			}
			f := openFeed(t, cons, owner.Addr(), tc.opts)
			to := head
			if tc.atHead {
				tc.after = head
				// Nothing to read yet: the feed delivers what is written
				// once it runs.
				select {
				case e := <-connected:
					if e.Seq != head || e.HeadSeq != head {
						t.Fatalf("connected after seq %d (head %d), want %d", e.Seq, e.HeadSeq, head)
					}
				case <-ctxT(t, 30*time.Second).Done():
					t.Fatal("the feed did not connect")
				}
				to = writeGroups(t, tbl, l, "b-"+tc.name, 2, 2)
			}
			readFeed(t, f, l, tc.after, to)
			if p := f.Position(); p.Seq != to || p.LogID != tbl.LogID() || p.Epoch != tbl.meta.Epoch {
				t.Errorf("position %+v, want seq %d of log %s, epoch %d", p, to, tbl.LogID(), tbl.meta.Epoch)
			}
		})
	}
	t.Run("ahead of the head", func(t *testing.T) {
		f := openFeed(t, cons, owner.Addr(), FeedOptions{Start: FeedAfter, Seq: tbl.Head() + 10})
		if err := feedErr(t, f); !errors.Is(err, ErrInvalid) {
			t.Fatalf("err %v, want ErrInvalid", err)
		}
	})
	t.Run("resume a saved position", func(t *testing.T) {
		f := openFeed(t, cons, owner.Addr(), FeedOptions{Start: FeedAfter, Seq: 3})
		readFeed(t, f, l, 3, 9)
		saved := f.Position()
		if saved.Seq < 9 {
			t.Fatalf("saved position %+v", saved)
		}
		f.Close()
		if _, err := f.Next(ctxT(t, time.Second)); !errors.Is(err, ErrFeedClosed) {
			t.Fatalf("next after close: %v, want ErrFeedClosed", err)
		}
		g := openFeed(t, cons, owner.Addr(), FeedOptions{Start: FeedResume, Position: saved})
		readFeed(t, g, l, saved.Seq, tbl.Head())
	})
}

// A feed asked for changes the owner's log no longer holds ends with a
// *FeedTrimmedError (transport.ErrResync) naming the oldest seq kept; it
// does not skip to what is left.
func TestFeed_Trimmed(t *testing.T) {
	owner := openWith(t, itOwner, "s1", "", "", func(c *Config) {
		c.Retention = Retention{MaxChanges: 20}
		c.TrimInterval = 20 * time.Millisecond
	})
	defer mustClose(t, owner)
	tbl := mustOwn(t, owner)
	cons := openComponent(t, "cdc", "c1", "", "")
	defer mustClose(t, cons)
	writeGroups(t, tbl, newFeedLog(), "a", 60, 1)
	waitUntil(t, 30*time.Second, "the log to be trimmed", func() bool { return logFirst(tbl) > 10 })
	for _, tc := range []struct {
		name string
		opts FeedOptions
	}{
		{"after a seq", FeedOptions{Start: FeedAfter, Seq: 5}},
		{"a saved position", FeedOptions{Start: FeedResume, Position: FeedPosition{LogID: tbl.LogID(), Seq: 5, Epoch: tbl.meta.Epoch}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := feedErr(t, openFeed(t, cons, owner.Addr(), tc.opts))
			var te *FeedTrimmedError
			if !errors.As(err, &te) || !errors.Is(err, transport.ErrResync) {
				t.Fatalf("err %v, want a *FeedTrimmedError wrapping ErrResync", err)
			}
			if te.After != 5 || te.FirstSeq <= 6 || te.HeadSeq != tbl.Head() {
				t.Errorf("trimmed error %+v: want after 5, first > 6, head %d", *te, tbl.Head())
			}
		})
	}
	t.Run("oldest still works", func(t *testing.T) {
		f := openFeed(t, cons, owner.Addr(), FeedOptions{Start: FeedFromOldest})
		b, err := f.Next(ctxT(t, 30*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if first := b.Changes[0].Seq; first < 7 {
			t.Errorf("oldest change delivered %d, want one still in the log", first)
		}
	})
}

// A feed of a table the owner does not have, or one its access policy
// refuses to the feed's service, ends with that error.
func TestFeed_RefusedTable(t *testing.T) {
	policy := modes.NewAccessPolicy()
	if err := policy.Allow(itOwner, itTable, "products"); err != nil {
		t.Fatal(err)
	}
	owner := openWith(t, itOwner, "s1", "", "", func(c *Config) { c.AccessPolicy = policy })
	defer mustClose(t, owner)
	tbl := mustOwn(t, owner)
	writeGroups(t, tbl, newFeedLog(), "a", 3, 1)
	products := openComponent(t, "products", "p1", "", "")
	defer mustClose(t, products)
	orders := openComponent(t, "orders", "o1", "", "")
	defer mustClose(t, orders)

	if err := feedErr(t, openFeed(t, orders, owner.Addr(), FeedOptions{Start: FeedFromOldest})); !errors.Is(err, transport.ErrPermission) {
		t.Errorf("feed by orders: %v, want ErrPermission", err)
	}
	f, err := products.Feed(ctxT(t, 10*time.Second), itOwner, "nosuch", FeedOptions{Addr: owner.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := feedErr(t, f); !errors.Is(err, transport.ErrUnknownTable) {
		t.Errorf("feed of an unknown table: %v, want ErrUnknownTable", err)
	}
	// products may read: the same call delivers.
	readFeed(t, openFeed(t, products, owner.Addr(), FeedOptions{Start: FeedAfter, Seq: 1}), &feedLog{
		keys: map[uint64]string{2: "a-1-0", 3: "a-2-0"}, ends: map[uint64]bool{2: true, 3: true}}, 1, 3)
}

// A feed follows an owner that restarts (on its address, with its data):
// after the restart it resumes after the last change it received, and
// every change is delivered once, in order.
func TestFeed_OwnerRestart(t *testing.T) {
	dir := t.TempDir()
	owner := openComponent(t, itOwner, "s1", dir, freeAddr(t))
	addr := owner.Addr()
	t.Cleanup(func() { _ = owner.Close() })
	tbl := mustOwn(t, owner)
	cons := openComponent(t, "cdc", "c1", "", "")
	defer mustClose(t, cons)
	l := newFeedLog()
	events := make(chan FeedEvent, 64)
	f := openFeed(t, cons, addr, FeedOptions{Start: FeedFromOldest, OnEvent: func(e FeedEvent) {
		select {
		case events <- e:
		default:
		}
	}})
	read := uint64(0)
	for round := range 2 {
		head := writeGroups(t, tbl, l, fmt.Sprint("r", round), 20, 3)
		// Read part of it, so the restart comes with changes the feed has
		// not received yet.
		read = readFeed(t, f, l, read, head-10)
		logID := tbl.LogID()
		mustClose(t, owner)
		owner = openComponent(t, itOwner, "s1", dir, addr)
		tbl = mustOwn(t, owner)
		if tbl.LogID() != logID || tbl.Head() != head {
			t.Fatalf("owner reopened with log %s head %d, was %s head %d", tbl.LogID(), tbl.Head(), logID, head)
		}
		head = writeGroups(t, tbl, l, fmt.Sprint("s", round), 5, 2)
		readFeed(t, f, l, read, head)
		read = head
	}
	var connects, retries int
	for len(events) > 0 {
		switch e := <-events; e.Kind {
		case FeedConnected:
			connects++
		case FeedRetrying:
			retries++
			if !e.Connected || e.Err == nil {
				t.Errorf("retry event %+v: want an error after a stream got going", e)
			}
		}
	}
	if connects < 3 || retries < 2 {
		t.Errorf("%d connects, %d retries reported; want at least 3 and 2", connects, retries)
	}
}

// An owner that lost its disk comes back with a new, shorter history: the
// feed ends with a *FeedDivergedError naming both positions, and delivers
// nothing of the new history.
func TestFeed_OwnerLostDisk(t *testing.T) {
	owner := openComponent(t, itOwner, "s1", t.TempDir(), "")
	addr := owner.Addr()
	t.Cleanup(func() { _ = owner.Close() })
	tbl := mustOwn(t, owner)
	cons := openComponent(t, "cdc", "c1", "", "")
	defer mustClose(t, cons)
	l := newFeedLog()
	headA := writeGroups(t, tbl, l, "a", 30, 2)
	logA := tbl.LogID()
	f := openFeed(t, cons, addr, FeedOptions{Start: FeedFromOldest})
	readFeed(t, f, l, 0, headA)
	epochA := f.Position().Epoch

	mustClose(t, owner)
	owner = openComponent(t, itOwner, "s1", t.TempDir(), addr)
	tbl = mustOwn(t, owner)
	// A longer history than the one delivered, so that only the log id
	// tells them apart.
	headB := writeGroups(t, tbl, newFeedLog(), "b", 40, 2)
	logB := tbl.LogID()
	if logB == logA || headB <= headA {
		t.Fatalf("new history: log %s head %d; old: log %s head %d", logB, headB, logA, headA)
	}
	err := feedErr(t, f)
	var de *FeedDivergedError
	if !errors.As(err, &de) || !errors.Is(err, ErrDiverged) {
		t.Fatalf("err %v, want a *FeedDivergedError wrapping ErrDiverged", err)
	}
	want := FeedPosition{LogID: logA, Seq: headA, Epoch: epochA}
	if de.Position != want || de.OwnerLogID != logB || de.OwnerHead > headB || de.ForkSeq != 0 {
		t.Errorf("diverged error %+v, want feed at %+v, owner log %s head up to %d, no fork seq", *de, want, logB, headB)
	}
	if p := f.Position(); p != want {
		t.Errorf("position after the error %+v, want %+v", p, want)
	}
}

// A reader slower than the owner holds the feed back: the feed never holds
// more than Buffer frames ahead of Next, whatever the owner has written,
// and everything is still delivered in order once the reader catches up.
func TestFeed_BoundedBuffer(t *testing.T) {
	owner := openWith(t, itOwner, "s1", "", "", func(c *Config) { c.BatchMaxChanges = 8 })
	defer mustClose(t, owner)
	tbl := mustOwn(t, owner)
	cons := openComponent(t, "cdc", "c1", "", "")
	defer mustClose(t, cons)
	l := newFeedLog()
	const buffer = 3
	f := openFeed(t, cons, owner.Addr(), FeedOptions{Start: FeedFromOldest, Buffer: buffer})
	// 2,000 changes in frames of at most 8: at least 250 frames, nothing
	// read yet.
	head := writeGroups(t, tbl, l, "a", 500, 4)
	waitUntil(t, 30*time.Second, "the feed's buffer to fill", func() bool { return f.held.Load() >= buffer })
	readFeed(t, f, l, 0, head)
	if peak := f.heldPeak(); peak != buffer {
		t.Errorf("the feed held up to %d frames ahead of Next, want the bound %d", peak, buffer)
	}
}

// A standalone feed (NewFeed) against a scripted owner: a resent prefix is
// dropped, a gap ends the stream and it is re-opened after the last change
// delivered (never skipped), and an owner whose history ended the feed's
// epoch before the changes it delivered (lost in a failover) ends the feed
// with a *FeedDivergedError at the last seq both histories share.
func TestFeed_ScriptedOwner(t *testing.T) {
	const logID = "L"
	chs := func(epoch uint64, seqs ...uint64) []Change {
		var out []Change
		for _, s := range seqs {
			out = append(out, Change{Seq: s, Op: transport.OpPut, Key: fmt.Appendf(nil, "k%d", s), Value: []byte("v"), TxnEnd: true, Epoch: epoch})
		}
		return out
	}
	start := func(s transport.SubscribeServer, resume bool, epoch, head uint64, eps transport.EpochHistory) error {
		return s.Send(&transport.OwnerFrame{Kind: transport.KindStart, HeadSeq: head, Start: &transport.Start{
			Version: transport.ProtocolVersion, LogID: logID, Epoch: epoch, HeadSeq: head, FirstSeq: 1, Resume: resume, Epochs: eps}})
	}
	send := func(s transport.SubscribeServer, epoch uint64, c []Change) error {
		return s.Send(&transport.OwnerFrame{Kind: transport.KindChanges, HeadSeq: c[len(c)-1].Seq, Epoch: epoch, Changes: c})
	}
	var mu sync.Mutex
	var opens []transport.Open
	fake := &fakeOwner{script: func(n int, o *transport.Open, s transport.SubscribeServer) error {
		mu.Lock()
		opens = append(opens, *o)
		mu.Unlock()
		switch n {
		case 1:
			if err := start(s, true, 1, 9, nil); err != nil {
				return err
			}
			// 4 and 5 again (the feed has them), 6 and 7 with no epoch
			// of their own (the frame's), then 9: a gap.
			if err := send(s, 1, append(chs(1, 4, 5), chs(0, 6, 7)...)); err != nil {
				return err
			}
			return send(s, 1, chs(1, 9))
		case 2:
			if err := start(s, true, 1, 10, nil); err != nil {
				return err
			}
			if err := send(s, 1, chs(1, 8, 9, 10)); err != nil {
				return err
			}
			return fmt.Errorf("%w: owner is shutting down", transport.ErrUnavailable)
		default:
			// A promoted standby: epoch 2 began at 9, so 9 and 10 of
			// epoch 1 are not in its history.
			return start(s, false, 2, 12, transport.EpochHistory{{Epoch: 1, Seq: 1}, {Epoch: 2, Seq: 9}})
		}
	}}
	addr := serveFake(t, fake)
	f, err := NewFeed(FeedConfig{
		Service: "stores", Table: "t", ConsumerService: "cdc", ConsumerInstance: "c1",
		Locate: func(context.Context) (transport.ServiceOwner, error) {
			return transport.ServiceOwner{Service: "stores", Epoch: 1, Primary: transport.Endpoint{Instance: "s1", Addr: addr}}, nil
		},
		Dial: func(addr string) (grpc.ClientConnInterface, func(), error) {
			cc, err := transport.Dial(addr, transport.Options{})
			if err != nil {
				return nil, nil, err
			}
			return cc, func() { cc.Close() }, nil
		},
		PeerTimeout: 5 * time.Second, Recheck: time.Second, ReconnectMin: 10 * time.Millisecond, ReconnectMax: 50 * time.Millisecond,
		Logger:  testLogger(t),
		Options: FeedOptions{Start: FeedResume, Position: FeedPosition{LogID: logID, Seq: 5, Epoch: 1}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var got []uint64
	err = func() error {
		ctx := ctxT(t, 30*time.Second)
		for {
			b, err := f.Next(ctx)
			if err != nil {
				return err
			}
			for _, ch := range b.Changes {
				if ch.Epoch != 1 || string(ch.Key) != fmt.Sprintf("k%d", ch.Seq) {
					t.Errorf("change %+v", ch)
				}
				got = append(got, ch.Seq)
			}
		}
	}()
	if want := []uint64{6, 7, 8, 9, 10}; !slices.Equal(got, want) {
		t.Errorf("delivered %v, want %v", got, want)
	}
	var de *FeedDivergedError
	if !errors.As(err, &de) || de.ForkSeq != 8 || de.Position != (FeedPosition{LogID: logID, Seq: 10, Epoch: 1}) {
		t.Fatalf("err %v, want a *FeedDivergedError at seq 10 epoch 1, fork 8", err)
	}
	mu.Lock()
	defer mu.Unlock()
	var seqs []uint64
	for _, o := range opens {
		seqs = append(seqs, o.Seq)
		if o.LogID != logID || o.Service != "cdc" || o.Instance != "c1" || o.Table != "t" {
			t.Errorf("open %+v", o)
		}
	}
	if want := []uint64{5, 7, 10}; !slices.Equal(seqs, want) {
		t.Errorf("streams opened after seqs %v, want %v", seqs, want)
	}
}

// TestFeed_FreshKeysAppendCopies: the changes a feed hands out have keys
// whose capacity ends with them, so an append copies instead of writing
// over the value that follows the key in the decoded frame.
func TestFeed_FreshKeysAppendCopies(t *testing.T) {
	kv := []byte("keyvalue")
	fr := &transport.OwnerFrame{Epoch: 1, Changes: []transport.Change{{Seq: 1, Op: transport.OpPut, Key: kv[:3], Value: kv[3:]}}}
	f := &Feed{}
	chs, err := f.fresh(fr)
	if err != nil || len(chs) != 1 {
		t.Fatalf("fresh = %d changes, %v", len(chs), err)
	}
	_ = append(chs[0].Key, "XXX"...)
	if string(chs[0].Value) != "value" {
		t.Fatalf("an append to the key changed the value to %q", chs[0].Value)
	}
}
