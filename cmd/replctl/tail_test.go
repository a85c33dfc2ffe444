package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/replmesh/replmesh/internal/faultproxy"
	"github.com/replmesh/replmesh/internal/testutil"
	"github.com/replmesh/replmesh/replica"
	"github.com/replmesh/replmesh/transport"
)

// What a feed's end means for a tail: a history the owner rewrote or
// trimmed is followed on, where it can, with a warning once something was
// printed or a start point asked for; a -from whose changes were trimmed,
// or any other end, is an error.
func TestTailPolicy(t *testing.T) {
	lost := &replica.FeedDivergedError{Table: "s/t", Position: replica.FeedPosition{LogID: "L", Seq: 10, Epoch: 1},
		OwnerLogID: "L", OwnerEpoch: 2, OwnerHead: 20, ForkSeq: 7, Reason: "changes 8..10 of epoch 1 are not in the owner's history"}
	newHistory := &replica.FeedDivergedError{Table: "s/t", Position: replica.FeedPosition{LogID: "OLD", Seq: 5, Epoch: 1},
		OwnerLogID: "L", OwnerEpoch: 2, OwnerHead: 20}
	trimmed := &replica.FeedTrimmedError{Table: "s/t", After: 3, FirstSeq: 10, HeadSeq: 20}
	atHead := replica.FeedOptions{Start: replica.FeedAtHead}
	for _, tc := range []struct {
		name              string
		err               error
		printed, fromFlag bool
		next              replica.FeedOptions
		warn              string // substring; "" = no warning
		fatal             bool
	}{
		{name: "new history, nothing printed", err: newHistory, next: atHead},
		{name: "new history after printing", err: newHistory, printed: true, next: atHead, warn: "new history (log L, was OLD)"},
		{name: "changes lost in a failover", err: lost, printed: true,
			next: replica.FeedOptions{Start: replica.FeedAfter, Seq: 7}, warn: "changes 8..10 of epoch 1 are not in the owner's history; continuing after seq 7"},
		{name: "-from trimmed before printing", err: trimmed, fromFlag: true, fatal: true},
		{name: "trimmed after printing", err: trimmed, printed: true, next: atHead, warn: "no longer in the owner's log (the oldest kept is 10)"},
		{name: "refused", err: fmt.Errorf("x: %w", transport.ErrPermission), printed: true, fatal: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			next, warn, ok := tailPolicy(tc.err, tc.printed, tc.fromFlag)
			if ok == tc.fatal {
				t.Fatalf("ok %v, want %v", ok, !tc.fatal)
			}
			if !ok {
				return
			}
			if next.Start != tc.next.Start || next.Seq != tc.next.Seq {
				t.Errorf("next %+v, want %+v", next, tc.next)
			}
			if (tc.warn == "") != (warn == "") || !strings.Contains(warn, tc.warn) {
				t.Errorf("warning %q, want %q", warn, tc.warn)
			}
		})
	}
}

// A tail follows the table across a failover: when the primary goes away
// it reconnects to the promoted standby and goes on from the last change
// it printed, with no gap and no repeat.
func TestTail_FollowsFailover(t *testing.T) {
	brokerAddr := startBroker(t, "bf")
	a := component(t, brokerAddr, "stores", "a", true)
	b := component(t, brokerAddr, "stores", "b", true)
	ta, err := a.Own("managers")
	if err != nil {
		t.Fatal(err)
	}
	tb, err := b.Own("managers")
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, "a primary", func() bool {
		ra, _ := a.Role()
		rb, _ := b.Role()
		return ra == transport.RolePrimary || rb == transport.RolePrimary
	})
	primary, standby, tp, ts := a, b, ta, tb
	if r, _ := b.Role(); r == transport.RolePrimary {
		primary, standby, tp, ts = b, a, tb, ta
	}
	put(t, tp, "first", "1")

	tail := startTail(t, "-broker", brokerAddr, "-o", "json", "stores/managers")
	written := writeUntil(t, tp, "pre", func() bool { return strings.Contains(tail.stdout.String(), "\n") })
	// The standby holds everything the tail may have printed: no change
	// is lost in the failover.
	waitUntil(t, 20*time.Second, "standby caught up", func() bool { return ts.Head() == tp.Head() })
	primary.Close()
	waitUntil(t, 30*time.Second, "standby promoted", func() bool { r, _ := standby.Role(); return r == transport.RolePrimary })
	after := writeUntil(t, ts, "post", func() bool { return strings.Contains(tail.stdout.String(), `"key":"post-`) })
	maps.Copy(written, after)
	r := stopTail(t, tail)
	if !strings.Contains(r.stderr, "reconnecting") || !strings.Contains(r.stderr, "resumed on "+standbyName(a, standby)) {
		t.Errorf("tail did not say it reconnects and where it resumed: %q", r.stderr)
	}
	checkTailed(t, r.stdout, written)
}

// standbyName returns the instance name of c, "a" or "b" (a is the
// component given).
func standbyName(a, c *replica.Component) string {
	if c == a {
		return "a"
	}
	return "b"
}

// A primary cut off from the brokers is deposed (its lease lapses, the
// standby is promoted) but stays up and keeps the tail's stream open; when
// it reaches the brokers again it is a standby, and with
// min_sync_standbys 1 it sends its subscribers nothing more. The tail must
// learn from the brokers that the primary moved, leave the deposed one and
// resume on the new primary after the last change it printed.
func TestTail_LeavesDeposedPrimary(t *testing.T) {
	// a reaches the broker only through px, which the broker also hands
	// out as its address (so that a cannot re-home around the cut); b
	// and the tail reach it directly.
	brokerAddr := freeAddr(t)
	px, err := faultproxy.New(brokerAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { px.Close() })
	startBroker(t, "bd", "-grpc", brokerAddr, "-advertise-grpc", px.Addr())

	a := syncOwner(t, px.Addr(), "a")
	ta, err := a.Own("managers")
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, "a primary", func() bool { r, _ := a.Role(); return r == transport.RolePrimary })
	b := syncOwner(t, brokerAddr, "b")
	tb, err := b.Own("managers")
	if err != nil {
		t.Fatal(err)
	}
	put(t, ta, "first", "1") // goes through once b follows a
	_, epoch0 := a.Role()

	tail := startTail(t, "-broker", brokerAddr, "-o", "json", "stores/managers")
	written := writeUntil(t, ta, "pre", func() bool { return strings.Contains(tail.stdout.String(), "\n") })
	waitUntil(t, 20*time.Second, "b caught up", func() bool { return tb.Head() == ta.Head() })

	px.Pause()
	waitUntil(t, 30*time.Second, "b promoted", func() bool { r, e := b.Role(); return r == transport.RolePrimary && e > epoch0 })
	px.Resume()
	waitUntil(t, 30*time.Second, "a standby of b", func() bool { r, _ := a.Role(); return r == transport.RoleStandby })
	// Writes on b wait for a to confirm them: the first one goes through
	// once a follows b.
	written[put(t, tb, "post-first", "x")] = "post-first"
	after := writeUntil(t, tb, "post", func() bool { return strings.Contains(tail.stdout.String(), `"key":"post-`) })
	maps.Copy(written, after)
	r := stopTail(t, tail)
	if !strings.Contains(r.stderr, "resumed on b") {
		t.Errorf("tail did not say it moved to b: %q", r.stderr)
	}
	checkTailed(t, r.stdout, written)
}

// freeAddr is an address a process can be restarted on (testutil.FreeAddr).
func freeAddr(t testing.TB) string { return testutil.FreeAddr(t) }

// syncOwner opens an owner instance of stores whose writes wait for one
// standby (min_sync_standbys 1, as in the quickstart cluster).
func syncOwner(t *testing.T, brokerAddr, instance string) *replica.Component {
	t.Helper()
	cfg := replica.LocalConfig("stores", instance)
	cfg.Brokers = []string{brokerAddr}
	cfg.Owner = true
	cfg.MinSyncStandbys = 1
	cfg.SyncTimeout = 2 * time.Second
	cfg.Logger = testLogger(t)
	c, err := replica.Open(ctxT(t, 20*time.Second), cfg)
	if err != nil {
		t.Fatalf("open stores/%s: %v", instance, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// stopTail interrupts a running tail and returns what it printed; it
// must exit 0.
func stopTail(t *testing.T, tail *tailProc) result {
	t.Helper()
	tail.cmd.Process.Signal(os.Interrupt)
	r := tail.wait(t)
	t.Logf("tail stderr:\n%s", r.stderr)
	if r.code != 0 {
		t.Fatalf("tail: %v", r)
	}
	return r
}

// checkTailed checks the JSON lines a tail printed: each change is the
// one written at its seq (written: key by seq), the seqs follow each other
// with no gap and no repeat, and the changes are of two epochs, the old
// primary's and then a newer one.
func checkTailed(t *testing.T, stdout string, written map[uint64]string) {
	t.Helper()
	var prev uint64
	var epochs []uint64
	for i, l := range strings.Split(strings.TrimSuffix(stdout, "\n"), "\n") {
		var cl changeLine
		if err := json.Unmarshal([]byte(l), &cl); err != nil {
			t.Fatalf("line %d %q: %v", i, l, err)
		}
		if cl.Key == nil || written[cl.Seq] != *cl.Key {
			t.Fatalf("line %d: seq %d key %v, written there: %q", i, cl.Seq, cl.Key, written[cl.Seq])
		}
		if i > 0 && cl.Seq != prev+1 {
			t.Fatalf("line %d: seq %d after %d", i, cl.Seq, prev)
		}
		prev = cl.Seq
		if len(epochs) == 0 || epochs[len(epochs)-1] != cl.Epoch {
			epochs = append(epochs, cl.Epoch)
		}
	}
	if len(epochs) != 2 || epochs[1] <= epochs[0] {
		t.Fatalf("epochs of the printed changes %v, want the old primary's then a newer one", epochs)
	}
}

// The tail against a scripted owner, one behaviour per Subscribe after the
// feed found where the table's head is (seq 7, a first Subscribe with no
// log): an owner at an older epoch than the brokers' primary (deposed; its
// change must not be printed), then the primary, which sends seq 8 and
// ends the stream, then an instance that does not know the table yet
// (still starting), then the primary again, which must be asked to resume
// after 8 and sends 9.
func TestTail_RetriesThroughFailover(t *testing.T) {
	const logID = "L1"
	change := func(seq uint64, key string) transport.Change {
		return transport.Change{Seq: seq, Op: transport.OpPut, Key: []byte(key), Value: []byte("v"), Epoch: 2, TxnEnd: true}
	}
	var (
		mu    sync.Mutex
		calls int
		opens []transport.Open
	)
	start := func(s transport.SubscribeServer, epoch, head uint64) error {
		return s.Send(&transport.OwnerFrame{Kind: transport.KindStart, HeadSeq: head, Start: &transport.Start{
			Version: transport.ProtocolVersion, LogID: logID, Epoch: epoch, HeadSeq: head, FirstSeq: 1, Resume: true}})
	}
	send := func(s transport.SubscribeServer, epoch uint64, chs ...transport.Change) error {
		return s.Send(&transport.OwnerFrame{Kind: transport.KindChanges, HeadSeq: chs[len(chs)-1].Seq, Epoch: epoch, Changes: chs})
	}
	hold := func(s transport.SubscribeServer) error {
		for {
			if _, err := s.Recv(); err != nil {
				return nil
			}
		}
	}
	owner := &funcOwner{
		SubscribeFunc: func(s transport.SubscribeServer) error {
			f, err := s.Recv()
			if err != nil {
				return err
			}
			if f.Open.LogID == "" {
				// The feed asks where the table stands: the primary's
				// answer, no resume.
				if err := s.Send(&transport.OwnerFrame{Kind: transport.KindStart, HeadSeq: 7, Start: &transport.Start{
					Version: transport.ProtocolVersion, LogID: logID, Epoch: 2, HeadSeq: 7, FirstSeq: 1}}); err != nil {
					return err
				}
				return hold(s)
			}
			mu.Lock()
			calls++
			call := calls
			opens = append(opens, *f.Open)
			mu.Unlock()
			switch call {
			case 1: // deposed: epoch 1 while the brokers' primary is at 2
				stale := change(8, "stale")
				stale.Epoch = 1
				if err := start(s, 1, 8); err != nil {
					return err
				}
				if err := send(s, 1, stale); err != nil {
					return err
				}
				return hold(s)
			case 2:
				if err := start(s, 2, 8); err != nil {
					return err
				}
				if err := send(s, 2, change(8, "k8")); err != nil {
					return err
				}
				return fmt.Errorf("%w: owner is shutting down", transport.ErrUnavailable)
			case 3:
				return fmt.Errorf("%w: %q is not owned by stores/a", transport.ErrUnknownTable, "managers")
			default:
				if err := start(s, 2, 9); err != nil {
					return err
				}
				if err := send(s, 2, change(9, "k9")); err != nil {
					return err
				}
				return hold(s)
			}
		},
	}
	ownerAddr := serveOwner(t, owner)
	brokerAddr := serveBroker(t, transport.StatusResponse{Owners: []transport.ServiceOwner{{
		Service: "stores", Epoch: 2, Primary: transport.Endpoint{Instance: "a", Addr: ownerAddr, Role: transport.RolePrimary}}}})

	r := runCtl(t, "-broker", brokerAddr, "-o", "json", "tail", "-n", "2", "stores/managers")
	if r.code != 0 {
		t.Fatalf("tail: %v", r)
	}
	var keys []string
	for _, l := range strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n") {
		var cl changeLine
		if err := json.Unmarshal([]byte(l), &cl); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		keys = append(keys, fmt.Sprintf("%d=%s", cl.Seq, *cl.Key))
	}
	if got, want := strings.Join(keys, " "), "8=k8 9=k9"; got != want {
		t.Errorf("printed %s, want %s\n%s", got, want, r)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(opens) != 4 {
		t.Fatalf("%d subscriptions, want 4", len(opens))
	}
	for i, want := range []uint64{7, 7, 8, 8} {
		if got := opens[i].Seq; got != want {
			t.Errorf("subscription %d opened after seq %d, want %d", i+1, got, want)
		}
	}
	for _, want := range []string{"the brokers' primary at epoch 2", "resumed on a"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr does not say %q:\n%s", want, r.stderr)
		}
	}
}

// Failed attempts are reported at once, then at most once per interval
// with a count of those not shown; a stream that goes again says where it
// resumed, and the next failure is reported at once.
func TestRetryNotice(t *testing.T) {
	var w strings.Builder
	n := retryNotice{every: 5 * time.Second}
	t0 := time.Unix(1000, 0)
	ep := transport.Endpoint{Instance: "b", Addr: "addr-b"}
	errDown := errors.New("down")
	n.failed(&w, t0, "s/t", errDown, 100*time.Millisecond)
	n.failed(&w, t0.Add(time.Second), "s/t", errDown, 200*time.Millisecond)
	n.failed(&w, t0.Add(4*time.Second), "s/t", errDown, 400*time.Millisecond)
	n.failed(&w, t0.Add(5*time.Second), "s/t", errDown, 800*time.Millisecond)
	n.failed(&w, t0.Add(6*time.Second), "s/t", errDown, time.Second)
	n.resumed(&w, false, "s/t", ep, 41, 50)
	n.resumed(&w, false, "s/t", ep, 42, 50) // nothing failed since: quiet
	n.failed(&w, t0.Add(7*time.Second), "s/t", errDown, 100*time.Millisecond)
	want := "replctl: tail s/t: down; reconnecting\n" +
		"replctl: tail s/t: down; still reconnecting (4 attempts failed, 2 not shown; next in 800ms)\n" +
		"replctl: tail s/t: resumed on b (addr-b) after seq 41 (head 50)\n" +
		"replctl: tail s/t: down; reconnecting\n"
	if got := w.String(); got != want {
		t.Errorf("notices:\n%s\nwant:\n%s", got, want)
	}
}
