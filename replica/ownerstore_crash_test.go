package replica

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/replmesh/replmesh/internal/testutil"
	"github.com/replmesh/replmesh/transport"
)

// The owner-store crash test kills an owner that writes and trims its log
// all the time (a retention of a few hundred changes, a trim every
// millisecond), then opens its data dir and checks the storage
// (checkOwnerStore) against the workload replayed to the durable head.
const (
	oscDirEnv    = "REPLMESH_OSCRASH_DIR"
	oscTable     = "t"
	oscKeys      = 97
	oscBulk      = 600
	oscRetention = 300
	oscPrefix    = "@osc "
	// oscOverlayEnv, set, makes the child keep its log (no trimming) and
	// flush its rows' overlay at that many keys (ownrows.go).
	oscOverlayEnv = "REPLMESH_OSCRASH_OVERLAY"
)

// oscChange is the workload's change at seq s: first oscBulk puts of
// their own keys (they outlive the window: trimming keeps them), then
// puts of one of oscKeys hot keys, every fifth one of the bulk keys
// instead (superseding a kept entry), every ninth a delete.
func oscChange(s uint64) transport.Change {
	k := fmt.Appendf(nil, "k%03d", (s*31)%oscKeys)
	switch {
	case s <= oscBulk:
		k = fmt.Appendf(nil, "b%04d", s)
	case s%5 == 0:
		k = fmt.Appendf(nil, "b%04d", 1+(s*7)%oscBulk)
	}
	if s > oscBulk && s%9 == 0 {
		return transport.Change{Seq: s, Op: transport.OpDelete, Key: k}
	}
	return transport.Change{Seq: s, Op: transport.OpPut, Key: k, Value: fmt.Appendf(nil, "v%d-%s", s, strings.Repeat("x", int(s%200)))}
}

// oscGroup is the commit group that starts at seq s: 1 to 4 changes.
func oscGroup(s uint64) []Write {
	ws := make([]Write, 1+s%4)
	for i := range ws {
		ch := oscChange(s + uint64(i))
		ws[i] = Write{Key: ch.Key, Value: ch.Value, Delete: ch.Op == transport.OpDelete}
	}
	return ws
}

// oscKeyList is every key the workload writes.
func oscKeyList() []string {
	var keys []string
	for i := range oscKeys {
		keys = append(keys, fmt.Sprintf("k%03d", i))
	}
	for i := range oscBulk + 1 {
		keys = append(keys, fmt.Sprintf("b%04d", i))
	}
	return keys
}

// oscHistory is the workload through head: the table's rows, and each
// change by seq.
func oscHistory(head uint64) (model map[string]string, written map[uint64]transport.Change) {
	model, written = map[string]string{}, map[uint64]transport.Change{}
	for s := uint64(1); s <= head; s++ {
		ch := oscChange(s)
		if ch.Op == transport.OpDelete {
			delete(model, string(ch.Key))
		} else {
			model[string(ch.Key)] = string(ch.Value)
		}
		written[s] = ch
	}
	return model, written
}

// TestOwnerStoreCrashChild is the body of the crash test's child; it
// returns at once unless REPLMESH_OSCRASH_DIR is set. It writes the
// workload from its table's head until killed, reporting "ack <seq>" for
// each acknowledged group and "first <seq>" whenever trimming moves First.
func TestOwnerStoreCrashChild(t *testing.T) {
	dir := os.Getenv(oscDirEnv)
	if dir == "" {
		return
	}
	out := func(format string, args ...any) { fmt.Printf(oscPrefix+format+"\n", args...) }
	cfg := LocalConfig("svc", "owner")
	cfg.DataDir, cfg.Durability = dir, Sync
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg.Retention = Retention{MaxChanges: oscRetention}
	cfg.TrimInterval = time.Millisecond
	// Segments of 16 KiB: they roll, and trimming retires and deletes
	// them, all the time, so kills land in between too.
	segMaxForTest.Store(16 << 10)
	if v := os.Getenv(oscOverlayEnv); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			out("bad %s: %v", oscOverlayEnv, err)
			t.Fatal(err)
		}
		ovMaxKeysForTest.Store(n)
		cfg.Retention, cfg.TrimInterval = Retention{}, time.Hour
	}
	ctx := context.Background()
	c, err := Open(ctx, cfg)
	if err != nil {
		out("bad open: %v", err)
		t.Fatal(err)
	}
	tbl, err := c.Own(oscTable)
	if err != nil {
		out("bad own: %v", err)
		t.Fatal(err)
	}
	out("start %d", tbl.Head())
	go func() {
		var last uint64
		for {
			tbl.mu.Lock()
			f := tbl.meta.First
			tbl.mu.Unlock()
			if f != last {
				out("first %d", f)
				last = f
			}
			time.Sleep(2 * time.Millisecond) // a report's pace, not a synchronization
		}
	}()
	type inflight struct {
		p    *Pending
		last uint64
	}
	var q []inflight
	next := tbl.Head() + 1
	for {
		ws := oscGroup(next)
		p, err := tbl.Submit(ctx, ws...)
		if err != nil {
			out("bad submit: %v", err)
			t.Fatal(err)
		}
		next += uint64(len(ws))
		q = append(q, inflight{p, next - 1})
		if len(q) < 8 {
			continue
		}
		f := q[0]
		q = q[1:]
		seq, err := f.p.Wait(ctx)
		if err != nil || seq != f.last {
			out("bad ack: seq %d (want %d), %v", seq, f.last, err)
			t.Fatal(err)
		}
		out("ack %d", seq)
	}
}

// TestOwnerStore_CrashWhileTrimming kills the writing, trimming owner at
// random points, then checks its data dir after each kill: the rows equal
// the workload replayed to the durable head (at least every acknowledged
// write), each value stored once, the log window whole and the workload's,
// only kept entries below it (checkOwnerStore), and the reads agree.
func TestOwnerStore_CrashWhileTrimming(t *testing.T) {
	rng, dir := ownerCrashSetup(t, 0x05c)
	keys := oscKeyList()
	const cycles = 8
	var acked uint64
	for cycle := range cycles {
		var started, first, ack, trims uint64
		var child *testutil.Child
		child = testutil.NewChild(t, testutil.ChildSpec{
			Name:   fmt.Sprintf("owner run %d", cycle+1),
			Args:   testutil.SelfArgs("TestOwnerStoreCrashChild", 2*time.Minute),
			Env:    append(os.Environ(), oscDirEnv+"="+dir),
			Prefix: oscPrefix,
			Report: func(line string, _ time.Time) {
				f := strings.Fields(line)
				switch f[0] {
				case "start":
					started = child.Uint(f, 1, line) + 1
				case "first":
					if v := child.Uint(f, 1, line); v != first {
						first = v
						trims++
					}
				case "ack":
					ack = child.Uint(f, 1, line)
				}
			},
			State: func() string {
				return fmt.Sprintf("started %d, first %d, ack %d, %d trims", started, first, ack, trims)
			},
		})
		child.Start()
		// Let it write past the retention and trim a few times, then kill
		// it at a random point of its writing and trimming.
		child.WaitFor(60*time.Second, "writes and trims", func() bool { return started > 0 && trims >= 3 && ack >= max(started, oscBulk)+oscRetention })
		time.Sleep(time.Duration(rng.IntN(30)) * time.Millisecond) // a random kill point, not a synchronization
		child.Kill()
		acked = max(acked, testutil.Locked(child, func() uint64 { return ack }))

		c := openComponent(t, "svc", "verify", dir, "")
		tbl, err := c.Own(oscTable)
		if err != nil {
			t.Fatal(err)
		}
		tbl.mu.Lock()
		head, winFirst := tbl.meta.Head, tbl.meta.First
		tbl.mu.Unlock()
		if head < acked {
			t.Fatalf("cycle %d: head %d below the acknowledged seq %d", cycle+1, head, acked)
		}
		model, written := oscHistory(head)
		// Which changes ended a group depends on where each run began:
		// compare the entries without TxnEnd.
		d := dumpOwner(t, c.db, oscTable)
		for s := winFirst; s <= head; s++ {
			ch := written[s]
			ch.TxnEnd = d.log[s].TxnEnd
			written[s] = ch
		}
		checkOwnerStore(t, c.db, oscTable, winFirst, model, written)
		checkOwnerReads(t, tbl, model, keys)
		below := 0
		for s := range d.log {
			if s < winFirst {
				below++
			}
		}
		// Below the window trimming left no group in a segment (it deletes
		// them or rewrites them into badger), and no segment file is left
		// that no group references (retired ones are deleted, and Own
		// deletes those a kill left), across the kills.
		refd := map[uint64]bool{}
		err = c.db.View(func(txn *badger.Txn) error {
			return tbl.eachSegRef(txn, math.MaxUint64, func(bound uint64, r segRef) error {
				if bound < winFirst {
					return fmt.Errorf("the log group at %d, below the window from %d, is in segment %d", bound, winFirst, r.id)
				}
				refd[r.id] = true
				return nil
			})
		})
		if err != nil {
			t.Fatalf("cycle %d: %v", cycle+1, err)
		}
		segs := len(segFiles(t, dir, oscTable))
		if segs != len(refd) {
			t.Fatalf("cycle %d: %d log segment files, %d of them referenced", cycle+1, segs, len(refd))
		}
		t.Logf("cycle %d: head %d (acknowledged %d), window %d..%d, %d kept entries below it, %d rows, %d log segments", cycle+1, head, acked, winFirst, head, below, len(model), segs)
		mustClose(t, c)
	}
}

// TestOwnerStore_CrashWithOverlay kills an owner that writes and keeps
// rows in its overlay (ownrows.go), not yet written to badger: in every
// other run the overlay is never flushed (so the kill always finds rows
// in it), in the others it is flushed every 50 keys (so kills land in and
// between flushes). After each kill the store must replay to the workload
// at the durable head (checkOwnerStore reads the rows above the meta's
// Rows from the log), and once Own has replayed the log into the rows,
// the rows in badger must be the table's at its head, and the reads too.
func TestOwnerStore_CrashWithOverlay(t *testing.T) {
	rng, dir := ownerCrashSetup(t, 0x0f1b)
	keys := oscKeyList()
	const cycles = 6
	var acked uint64
	for cycle := range cycles {
		flushAt := 1 << 30
		if cycle%2 == 1 {
			flushAt = 50
		}
		var started, ack uint64
		var child *testutil.Child
		child = testutil.NewChild(t, testutil.ChildSpec{
			Name:   fmt.Sprintf("owner run %d", cycle+1),
			Args:   testutil.SelfArgs("TestOwnerStoreCrashChild", 2*time.Minute),
			Env:    append(os.Environ(), oscDirEnv+"="+dir, fmt.Sprintf("%s=%d", oscOverlayEnv, flushAt)),
			Prefix: oscPrefix,
			Report: func(line string, _ time.Time) {
				f := strings.Fields(line)
				switch f[0] {
				case "start":
					started = child.Uint(f, 1, line) + 1
				case "ack":
					ack = child.Uint(f, 1, line)
				}
			},
			State: func() string { return fmt.Sprintf("started %d, ack %d", started, ack) },
		})
		child.Start()
		child.WaitFor(60*time.Second, "writes", func() bool { return started > 0 && ack >= started+300 })
		time.Sleep(time.Duration(rng.IntN(30)) * time.Millisecond) // a random kill point, not a synchronization
		child.Kill()
		acked = max(acked, testutil.Locked(child, func() uint64 { return ack }))

		c := openComponent(t, "svc", "verify", dir, "")
		before := dumpOwner(t, c.db, oscTable)
		if flushAt > oscKeys+oscBulk && before.meta.Rows >= before.meta.Head {
			t.Fatalf("cycle %d: rows through %d at head %d: the overlay, never flushed, held nothing", cycle+1, before.meta.Rows, before.meta.Head)
		}
		head := before.meta.Head
		if head < acked {
			t.Fatalf("cycle %d: head %d below the acknowledged seq %d", cycle+1, head, acked)
		}
		model, written := oscHistory(head)
		for s, ch := range written {
			ch.TxnEnd = before.log[s].TxnEnd // where groups ended depends on where each run began
			written[s] = ch
		}
		// The store as the kill left it: rows through Rows, the log above.
		checkOwnerStore(t, c.db, oscTable, 1, model, written)
		tbl, err := c.Own(oscTable)
		if err != nil {
			t.Fatal(err)
		}
		// Own replayed the log into the rows: badger's rows alone are the
		// table at its head.
		after := dumpOwner(t, c.db, oscTable)
		if after.meta.Rows != head || after.meta.Head != head {
			t.Fatalf("cycle %d: after Own the rows are through %d, head %d (was %d)", cycle+1, after.meta.Rows, after.meta.Head, head)
		}
		checkOwnerStore(t, c.db, oscTable, 1, model, written)
		checkOwnerReads(t, tbl, model, keys)
		t.Logf("cycle %d: head %d (acknowledged %d), rows through %d at the kill, %d rows", cycle+1, head, acked, before.meta.Rows, len(model))
		mustClose(t, c)
	}
}

// ownerCrashSetup starts an owner crash test (skipped in -short mode: it
// runs child processes): its seeded random source (stream) and the owner's
// data dir.
func ownerCrashSetup(t *testing.T, stream uint64) (*rand.Rand, string) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs child processes; skipped in -short mode")
	}
	seed, _ := testSeed(t)
	t.Logf("seed %d (replay: REPLMESH_SEED=%d go test -run %s ./replica)", seed, seed, t.Name())
	return rand.New(rand.NewPCG(seed, stream)), filepath.Join(t.TempDir(), "owner")
}
