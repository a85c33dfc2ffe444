package replica

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/replmesh/replmesh/internal/testutil"
	"github.com/replmesh/replmesh/transport"
)

// The crash test runs its owner and consumer as child processes: the test
// binary re-executes itself with -test.run=^TestCrashChild$ and these
// variables set.
const (
	crashRoleEnv = "REPLMESH_CRASH_ROLE" // "owner" or "consumer"
	crashDirEnv  = "REPLMESH_CRASH_DIR"  // the child's data dir
	crashAddrEnv = "REPLMESH_CRASH_ADDR" // the owner's listen address
	crashBulkEnv = "REPLMESH_CRASH_BULK" // number of bulk rows the workload starts with
	crashLongEnv = "REPLMESH_CRASH_LONG" // "1": the long variant

	crashTable     = "items"
	crashBulkGroup = 500 // rows per bulk Apply (about 0.5 MiB)
	crashKeys      = 500 // keys of the streaming phase
	crashDepth     = 16  // writes the owner keeps in flight
	crashPerTick   = 20  // streaming groups per 10 ms at most
	crashOutPrefix = "@crash "
)

// crashKey and crashValue define the workload: the change with seq s
// writes crashKey(s) = crashValue(s) (or deletes it), so the parent can
// replay the owner's table from its head alone. Seqs up to bulk load one
// 1 KiB row each; after that, small values over crashKeys keys, every
// fifth change a delete.
func crashKey(s, bulk uint64) []byte {
	if s <= bulk {
		return fmt.Appendf(nil, "b%07d", s)
	}
	return fmt.Appendf(nil, "k%03d", s%crashKeys)
}

func crashValue(s, bulk uint64) []byte {
	n := 16 + s%64
	if s <= bulk {
		n = 1024
	}
	v := make([]byte, n)
	for i := range v {
		v[i] = byte(s>>(8*(i%8))) ^ byte(i)
	}
	return v
}

func crashDelete(s, bulk uint64) bool { return s > bulk && s%5 == 0 }

// crashGroup returns the writes of the commit group that starts at seq
// start: bulk Applies of crashBulkGroup rows, then groups of 1 to 3
// changes. Commit groups are atomic, so a head is always a group's end and
// a restarted owner continues the same sequence from it.
func crashGroup(start, bulk uint64) []Write {
	n := 1 + start%3
	if start <= bulk {
		n = min(crashBulkGroup, bulk-start+1)
	}
	ws := make([]Write, n)
	for i := range ws {
		s := start + uint64(i)
		ws[i] = Write{Key: crashKey(s, bulk)}
		if crashDelete(s, bulk) {
			ws[i].Delete = true
		} else {
			ws[i].Value = crashValue(s, bulk)
		}
	}
	return ws
}

// crashExpected replays the workload up to head and returns the table's
// digest.
func crashExpected(head, bulk uint64, logID string) transport.DigestResponse {
	rows := map[string]uint64{} // key -> seq of its value
	for start := uint64(1); start <= head; {
		ws := crashGroup(start, bulk)
		for i, w := range ws {
			if w.Delete {
				delete(rows, string(w.Key))
			} else {
				rows[string(w.Key)] = start + uint64(i)
			}
		}
		start += uint64(len(ws))
	}
	dg := newDigester()
	for _, k := range slices.Sorted(maps.Keys(rows)) {
		dg.add([]byte(k), crashValue(rows[k], bulk))
	}
	return dg.result(logID, head)
}

func sameDigest(a, b transport.DigestResponse) bool {
	return a.LogID == b.LogID && a.Seq == b.Seq && a.Rows == b.Rows && bytes.Equal(a.Hash, b.Hash)
}

func digestString(d transport.DigestResponse) string {
	return fmt.Sprintf("log %s seq %d rows %d hash %x", d.LogID, d.Seq, d.Rows, d.Hash)
}

// crashOut writes one line for the parent. One Write call per line keeps
// lines whole on the pipe.
func crashOut(format string, args ...any) {
	_, _ = os.Stdout.Write([]byte(crashOutPrefix + fmt.Sprintf(format, args...) + "\n"))
}

// TestCrashChild is the body of the crash test's child processes; it
// returns at once unless REPLMESH_CRASH_ROLE is set.
func TestCrashChild(t *testing.T) {
	role := os.Getenv(crashRoleEnv)
	if role == "" {
		return
	}
	dir, addr := os.Getenv(crashDirEnv), os.Getenv(crashAddrEnv)
	bulk, err := strconv.ParseUint(os.Getenv(crashBulkEnv), 10, 64)
	if err != nil {
		crashOut("bad %s: %v", crashBulkEnv, err)
		t.Fatal(err)
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGUSR1)
	defer signal.Stop(sigs)
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	switch role {
	case "owner":
		crashOwnerChild(t, logger, dir, addr, bulk, sigs)
	case "consumer":
		crashConsumerChild(t, logger, dir, addr, sigs)
	default:
		t.Fatalf("unknown %s %q", crashRoleEnv, role)
	}
}

func crashOwnerChild(t *testing.T, logger *slog.Logger, dir, addr string, bulk uint64, sigs <-chan os.Signal) {
	cfg := LocalConfig("stores", "owner")
	cfg.DataDir, cfg.ListenAddr, cfg.Durability, cfg.Logger = dir, addr, Sync, logger
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := Open(ctx, cfg)
	if err != nil {
		crashOut("bad open: %v", err)
		t.Fatal(err)
	}
	tbl, err := c.Own(crashTable)
	if err != nil {
		crashOut("bad own: %v", err)
		t.Fatal(err)
	}
	crashOut("start %d %s", tbl.Head(), tbl.LogID())
	stop := make(chan struct{})
	werr := make(chan error, 1)
	go func() { werr <- crashWrite(ctx, tbl, bulk, stop) }()
	stopWriting := func() {
		select {
		case <-stop:
			return
		default:
		}
		close(stop)
		if err := <-werr; err != nil {
			crashOut("bad write: %v", err)
			t.Error(err)
		}
	}
	for s := range sigs {
		if s == syscall.SIGUSR1 {
			stopWriting()
			crashOut("done %d", tbl.Head())
			continue
		}
		break
	}
	stopWriting()
	if err := c.Close(); err != nil {
		crashOut("bad close: %v", err)
		t.Fatal(err)
	}
	crashOut("closed")
}

// crashWrite runs the workload from the table's head until stop, keeping
// crashDepth writes in flight (they are committed in submission order) and
// printing "ack <seq>" for each acknowledged one, in order.
func crashWrite(ctx context.Context, tbl *OwnedTable, bulk uint64, stop <-chan struct{}) error {
	type inflight struct {
		p    *Pending
		last uint64
	}
	var q []inflight
	wait := func() error {
		f := q[0]
		q = q[1:]
		seq, err := f.p.Wait(ctx)
		if err != nil {
			return err
		}
		if seq != f.last {
			return fmt.Errorf("write acknowledged at seq %d, the workload expected %d", seq, f.last)
		}
		crashOut("ack %d", seq)
		return nil
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	next := tbl.Head() + 1
	for sent := 0; ; sent++ {
		select {
		case <-stop:
			for len(q) > 0 {
				if err := wait(); err != nil {
					return err
				}
			}
			return nil
		default:
		}
		if next > bulk && sent >= crashPerTick {
			// Pace the streaming phase so the consumer keeps up.
			select {
			case <-tick.C:
				sent = 0
			case <-stop:
				continue
			}
		}
		ws := crashGroup(next, bulk)
		p, err := tbl.Submit(ctx, ws...)
		if err != nil {
			return err
		}
		next += uint64(len(ws))
		q = append(q, inflight{p, next - 1})
		if len(q) >= crashDepth {
			if err := wait(); err != nil {
				return err
			}
		}
	}
}

func crashConsumerChild(t *testing.T, logger *slog.Logger, dir, addr string, sigs <-chan os.Signal) {
	// The resident replica's WAL is checkpointed every 64 KiB,
	// so that the kills land in checkpoints too (wal.go).
	walCheckpointAt = func(int64) int64 { return 64 << 10 }
	cfg := LocalConfig("products", "consumer")
	cfg.DataDir, cfg.ListenAddr, cfg.Logger = dir, "", logger
	c, err := Open(context.Background(), cfg)
	if err != nil {
		crashOut("bad open: %v", err)
		t.Fatal(err)
	}
	// Subscribe, with OnChange registered before the stream starts so that
	// the run reports every batch it applies.
	r := newTestReplica(t, c, SubscribeOptions{Service: "stores", Table: crashTable, Addr: addr})
	crashOut("cursor %d %s", r.Seq(), r.Status().LogID)
	r.OnChange(func(e Event) {
		if e.Reset {
			crashOut("reset %d", e.Seq)
			return
		}
		first, last := e.Changes[0].Seq, e.Changes[len(e.Changes)-1].Seq
		for i, ch := range e.Changes {
			if ch.Seq != first+uint64(i) {
				crashOut("bad event: seq %d at position %d of a batch from %d", ch.Seq, i, first)
			}
		}
		crashOut("apply %d %d %d", first, last, len(e.Changes))
	})
	startTestReplica(t, r)

	stopStatus := make(chan struct{})
	statusDone := make(chan struct{})
	go func() {
		defer close(statusDone)
		tk := time.NewTicker(5 * time.Millisecond)
		defer tk.Stop()
		prev := ""
		for {
			st := r.Status()
			line := fmt.Sprintf("status %s %d %d %d %d %d", st.State, st.Stats.SnapshotRows, st.Seq, st.Stats.FullTransfers, st.Stats.Resumes, st.Stats.Reconnects)
			if st.LastErr != nil {
				line += " " + strings.ReplaceAll(st.LastErr.Error(), "\n", " ")
			}
			if line != prev {
				crashOut("%s", line)
				prev = line
			}
			select {
			case <-tk.C:
			case <-stopStatus:
				return
			}
		}
	}()
	for s := range sigs {
		if s == syscall.SIGTERM {
			break
		}
	}
	close(stopStatus)
	<-statusDone
	if err := c.Close(); err != nil {
		crashOut("bad close: %v", err)
		t.Fatal(err)
	}
	crashOut("closed")
}

// crashChild is one child process as the parent sees it: the process (a
// testutil.Child, whose lock guards the fields below) and what its reports
// said.
type crashChild struct {
	*testutil.Child
	role string
	run  int

	// owner
	startHead uint64
	logID     string
	started   bool
	maxAck    uint64
	done      uint64
	isDone    bool
	closed    bool

	// consumer
	cursorSeq uint64
	cursorLog string
	hasCursor bool
	events    []crashEvent
	state     string
	snapRows  uint64
	seq       uint64
	transfers uint64
	// the last status line: state, snapshot rows, seq, transfers, resumes,
	// reconnects, last error
	lastStatus string
}

type crashEvent struct {
	reset       bool
	first, last uint64
	n           uint64
}

// parse handles one report line (without its prefix; "bad" lines are
// the Child's), under the child's lock.
func (c *crashChild) parse(rest string, _ time.Time) {
	f := strings.Fields(rest)
	num := func(i int) uint64 { return c.Uint(f, i, crashOutPrefix+rest) }
	switch f[0] {
	case "start":
		c.startHead, c.started = num(1), true
		if len(f) > 2 {
			c.logID = f[2]
		}
	case "ack":
		c.maxAck = max(c.maxAck, num(1))
	case "done":
		c.done, c.isDone = num(1), true
	case "closed":
		c.closed = true
	case "cursor":
		c.cursorSeq, c.hasCursor = num(1), true
		if len(f) > 2 {
			c.cursorLog = f[2]
		}
	case "reset":
		c.events = append(c.events, crashEvent{reset: true, first: num(1), last: num(1)})
	case "apply":
		c.events = append(c.events, crashEvent{first: num(1), last: num(2), n: num(3)})
	case "status":
		if len(f) < 6 {
			c.Problem("short status: " + crashOutPrefix + rest)
			return
		}
		c.state, c.snapRows, c.seq, c.transfers = f[1], num(2), num(3), num(4)
		c.lastStatus = rest
	default:
		c.Problem("unknown line: " + crashOutPrefix + rest)
	}
}

// report is the child's last report, for failure messages (under the
// child's lock).
func (c *crashChild) report() string {
	if c.role == "consumer" {
		return fmt.Sprintf("%s (%d events)", c.lastStatus, len(c.events))
	}
	return fmt.Sprintf("head %d, last ack %d", c.startHead, c.maxAck)
}

// crashHarness starts, kills and checks the children.
type crashHarness struct {
	t         *testing.T
	rng       *rand.Rand
	ownerDir  string
	consDir   string
	addr      string
	bulk      uint64
	owners    []*crashChild
	consumers []*crashChild
	acked     uint64 // highest seq any owner run acknowledged
}

func (h *crashHarness) start(role, dir string) *crashChild {
	h.t.Helper()
	c := &crashChild{role: role}
	if role == "owner" {
		c.run = len(h.owners) + 1
		h.owners = append(h.owners, c)
	} else {
		c.run = len(h.consumers) + 1
		h.consumers = append(h.consumers, c)
	}
	c.Child = testutil.NewChild(h.t, testutil.ChildSpec{
		Name: fmt.Sprintf("%s run %d", role, c.run),
		Args: testutil.SelfArgs("TestCrashChild", 10*time.Minute),
		Env: append(os.Environ(),
			crashRoleEnv+"="+role, crashDirEnv+"="+dir, crashAddrEnv+"="+h.addr,
			crashBulkEnv+"="+strconv.FormatUint(h.bulk, 10)),
		Prefix: crashOutPrefix,
		Report: c.parse,
		State:  c.report,
	})
	c.Start()
	return c
}

// fail reports a failure with the child's output.
func (h *crashHarness) fail(c *crashChild, format string, args ...any) {
	h.t.Helper()
	c.Fatalf(format, args...)
}

// waitFor polls cond (called under the child's lock) until it holds,
// failing early if the child reports a problem or exits.
func (h *crashHarness) waitFor(c *crashChild, d time.Duration, what string, cond func() bool) {
	h.t.Helper()
	c.WaitFor(d, what, cond)
}

func (h *crashHarness) kill(c *crashChild) {
	h.t.Helper()
	c.Kill()
	h.t.Logf("%s run %d killed", c.role, c.run)
}

// stop sends SIGTERM and expects a clean exit (which includes the child's
// goleak and race checks).
func (h *crashHarness) stop(c *crashChild) {
	h.t.Helper()
	c.Signal(syscall.SIGTERM)
	c.ExpectCleanExit(60*time.Second, "SIGTERM", func() bool { return c.closed })
}

// startOwner starts an owner run and checks that it holds every write an
// earlier run acknowledged.
func (h *crashHarness) startOwner() *crashChild {
	h.t.Helper()
	c := h.start("owner", h.ownerDir)
	h.waitFor(c, 60*time.Second, "the owner to start", func() bool { return c.started })
	if c.startHead < h.acked {
		h.fail(c, "restarted at head %d, but seq %d was acknowledged before the crash", c.startHead, h.acked)
	}
	if len(h.owners) > 1 && c.logID != h.owners[0].logID {
		h.fail(c, "restarted with log %s, first run had %s", c.logID, h.owners[0].logID)
	}
	h.t.Logf("owner run %d starts at head %d (highest acknowledged %d)", c.run, c.startHead, h.acked)
	return c
}

func (h *crashHarness) killOwner(c *crashChild) {
	h.t.Helper()
	h.kill(c)
	h.acked = max(h.acked, c.maxAck)
}

// ownerAcked waits until the owner run has acknowledged seq.
func (h *crashHarness) ownerAcked(c *crashChild, seq uint64) {
	h.t.Helper()
	h.waitFor(c, 60*time.Second, fmt.Sprintf("an acknowledged write at seq %d", seq), func() bool { return c.maxAck >= seq })
}

func (h *crashHarness) startConsumer() *crashChild {
	h.t.Helper()
	c := h.start("consumer", h.consDir)
	h.waitFor(c, 60*time.Second, "the consumer to start", func() bool { return c.hasCursor })
	return c
}

// locked returns f's result under the child's lock.
func locked[T any](c *crashChild, f func() T) T { return testutil.Locked(c.Child, f) }

// lastApplied is the seq the consumer run has reported reaching (its
// starting cursor when it reported nothing). Callers hold c.mu or know the
// child has exited.
func (c *crashChild) lastApplied() uint64 {
	if n := len(c.events); n > 0 {
		return c.events[n-1].last
	}
	return c.cursorSeq
}

// randomDelay is the fault injection's timing: how long after a condition
// the kill lands.
func (h *crashHarness) randomDelay(maxD time.Duration) {
	time.Sleep(time.Duration(h.rng.Int64N(int64(maxD) + 1)))
}

// TestReplica_CrashRestart runs an owner and a consumer as real processes,
// SIGKILLs them at random moments — during the owner's bulk load, in the
// middle of the consumer's full transfer (killing either side), and while
// changes stream — and restarts them on the same data dirs. It checks that
// every write the owner acknowledged (sync durability) survives, that each
// consumer run resumes exactly after its durable cursor and applies every
// change once, in order, with no gap, that only one full transfer ever
// completes (every restart after it resumes), and that in the end the
// replica equals the owner's table, which equals the replayed workload.
//
// REPLMESH_CRASH_LONG=1 runs more cycles over more data; REPLMESH_SEED
// replays the kill timing of a logged seed.
func TestReplica_CrashRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("runs child processes; skipped in -short mode")
	}
	seed, _ := testSeed(t)
	t.Logf("seed %d (replay: REPLMESH_SEED=%d go test -run 'TestReplica_CrashRestart' ./replica)", seed, seed)
	bulk, cycles := uint64(50_000), 6
	if os.Getenv(crashLongEnv) == "1" {
		bulk, cycles = 200_000, 45
	}
	root := t.TempDir()
	h := &crashHarness{
		t:        t,
		rng:      rand.New(rand.NewPCG(seed, seed^0x5bd1e995)),
		ownerDir: filepath.Join(root, "owner"),
		consDir:  filepath.Join(root, "consumer"),
		addr:     freeAddr(t),
		bulk:     bulk,
	}
	began := time.Now()

	// 1. The owner loads the bulk rows and is killed half-way through.
	owner := h.startOwner()
	h.ownerAcked(owner, bulk/5+h.rng.Uint64N(bulk*2/5))
	h.randomDelay(50 * time.Millisecond)
	h.killOwner(owner)
	owner = h.startOwner()
	h.ownerAcked(owner, bulk)
	t.Logf("bulk load of %d rows done after %s", bulk, time.Since(began).Round(time.Millisecond))

	// 2. A new consumer takes a full transfer of them; it is killed in the
	// middle, then the owner is killed in the middle of the next one.
	cons := h.startConsumer()
	if cons.cursorSeq != 0 || cons.cursorLog != "" {
		h.fail(cons, "new consumer has cursor %s/%d", cons.cursorLog, cons.cursorSeq)
	}
	h.waitFor(cons, 60*time.Second, "the full transfer to begin", func() bool { return cons.state == "transferring" && cons.snapRows > 0 })
	h.randomDelay(10 * time.Millisecond)
	h.kill(cons) // it has exited: its fields are quiet from here on
	if cons.transfers != 0 || len(cons.events) != 0 {
		h.fail(cons, "the kill missed the transfer (it completed: %d transfers, %d events)", cons.transfers, len(cons.events))
	}
	t.Logf("consumer killed after %d of %d+ snapshot rows", cons.snapRows, bulk)

	cons = h.startConsumer()
	if cons.cursorSeq != 0 || cons.cursorLog != "" {
		h.fail(cons, "after a transfer cut short, the consumer has cursor %s/%d: a partial transfer was switched in", cons.cursorLog, cons.cursorSeq)
	}
	h.waitFor(cons, 60*time.Second, "the full transfer to begin", func() bool { return cons.state == "transferring" && cons.snapRows > 0 })
	h.randomDelay(10 * time.Millisecond)
	h.killOwner(owner)
	h.waitFor(cons, 30*time.Second, "the consumer to notice the owner is gone", func() bool { return cons.state == "connecting" })
	if n := locked(cons, func() uint64 { return cons.transfers + uint64(len(cons.events)) }); n != 0 {
		h.fail(cons, "the owner's kill missed the transfer (it completed)")
	}
	t.Logf("owner killed after %d snapshot rows had reached the consumer", locked(cons, func() uint64 { return cons.snapRows }))
	owner = h.startOwner()
	h.waitFor(cons, time.Duration(bulk/400)*time.Second, "the full transfer to complete", func() bool { return cons.transfers == 1 && cons.state == "streaming" })
	t.Logf("full transfer done after %s; consumer status: %s", time.Since(began).Round(time.Millisecond), locked(cons, func() string { return cons.lastStatus }))

	// 3. Kill cycles while changes stream: the consumer, the owner, or both
	// at once, each as often, in a random order.
	kinds := make([]string, cycles)
	for i := range kinds {
		kinds[i] = [...]string{"consumer", "owner", "both"}[i%3]
	}
	h.rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
	for i, kind := range kinds {
		// Let the stream make progress first: the owner writes, the
		// consumer applies.
		fromAck := locked(owner, func() uint64 { return max(owner.maxAck, owner.startHead) })
		fromApplied := locked(cons, cons.lastApplied)
		h.ownerAcked(owner, fromAck+300)
		h.waitFor(cons, 60*time.Second, "the consumer to apply more changes", func() bool { return cons.lastApplied() >= fromApplied+200 })
		h.randomDelay(200 * time.Millisecond)
		if kind != "owner" {
			h.kill(cons)
		}
		if kind != "consumer" {
			h.killOwner(owner)
			owner = h.startOwner()
		}
		if kind != "owner" {
			cons = h.startConsumer()
		}
		t.Logf("cycle %d (%s killed) done after %s", i+1, kind, time.Since(began).Round(time.Millisecond))
	}

	// 4. The owner stops writing; the consumer converges; both stop cleanly.
	from := locked(owner, func() uint64 { return max(owner.maxAck, owner.startHead) })
	h.ownerAcked(owner, from+200)
	owner.Signal(syscall.SIGUSR1)
	h.waitFor(owner, 60*time.Second, "the owner to stop writing", func() bool { return owner.isDone })
	head := locked(owner, func() uint64 { return owner.done })
	h.acked = max(h.acked, locked(owner, func() uint64 { return owner.maxAck }))
	if head < h.acked {
		h.fail(owner, "head %d is below the acknowledged seq %d", head, h.acked)
	}
	h.waitFor(cons, 60*time.Second, fmt.Sprintf("the consumer to reach the owner's head %d", head), func() bool { return cons.seq == head && cons.lastApplied() == head })
	h.stop(cons)
	h.stop(owner)
	h.checkConsumerRuns(head)
	h.verifyDirs(head)
	t.Logf("%d owner runs, %d consumer runs, head %d, in %s", len(h.owners), len(h.consumers), head, time.Since(began).Round(time.Millisecond))
}

// checkConsumerRuns checks what the consumer runs reported: each run
// starts at its durable cursor, which is at least where the previous run
// reported being (exactly there after a clean stop); within a run, changes
// arrive in order with no gap and no repeat; one full transfer completes in
// all.
func (h *crashHarness) checkConsumerRuns(head uint64) {
	h.t.Helper()
	resets := 0
	var prev *crashChild
	for _, c := range h.consumers {
		c.Lock()
		evs, cur, log := slices.Clone(c.events), c.cursorSeq, c.cursorLog
		c.Unlock()
		if (cur != 0 || log != "") && log != h.owners[0].logID {
			h.fail(c, "starts with a cursor of log %s, the owner's is %s", log, h.owners[0].logID)
		}
		if prev != nil {
			prevLast := prev.lastApplied()
			if cur < prevLast {
				h.fail(c, "starts at durable cursor %d, but run %d had reported applying up to %d", cur, prev.run, prevLast)
			}
			if prev.closed && cur != prevLast {
				h.fail(c, "starts at cursor %d after a clean stop at %d", cur, prevLast)
			}
		}
		at := cur
		for _, e := range evs {
			if e.reset {
				resets++
				if e.first < at {
					h.fail(c, "a full transfer moved the replica back from %d to %d", at, e.first)
				}
				at = e.first
				continue
			}
			if e.first <= at {
				h.fail(c, "applied %d..%d again after reaching %d", e.first, e.last, at)
			}
			if e.first != at+1 {
				h.fail(c, "applied %d..%d after %d: a gap", e.first, e.last, at)
			}
			if e.last < e.first || e.n != e.last-e.first+1 {
				h.fail(c, "batch %d..%d holds %d changes", e.first, e.last, e.n)
			}
			at = e.last
		}
		prev = c
	}
	if resets != 1 {
		h.t.Fatalf("%d full transfers completed over all consumer runs, want 1 (every restart after the first transfer resumes)", resets)
	}
	if last := h.consumers[len(h.consumers)-1].lastApplied(); last != head {
		h.t.Fatalf("the last consumer run ended at %d, owner head %d", last, head)
	}
}

// verifyDirs opens both data dirs in this process: the owner's table must
// equal the replayed workload up to its head, and the replica must equal
// the owner's table, with no leftover of an abandoned transfer.
func (h *crashHarness) verifyDirs(head uint64) {
	t := h.t
	t.Helper()
	oc := openComponent(t, "stores", "verify", h.ownerDir, "")
	defer mustClose(t, oc)
	tbl, err := oc.Own(crashTable)
	if err != nil {
		t.Fatal(err)
	}
	owner, err := tbl.Digest(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := crashExpected(head, h.bulk, tbl.LogID()); !sameDigest(owner, want) {
		t.Fatalf("owner's table: %s; the workload replayed to head %d: %s", digestString(owner), head, digestString(want))
	}

	cc := openComponent(t, "products", "verify", h.consDir, "")
	defer mustClose(t, cc)
	r := newTestReplica(t, cc, SubscribeOptions{Service: "stores", Table: crashTable, Addr: "127.0.0.1:1"})
	defer r.cancel()
	got, err := r.Digest(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !sameDigest(got, owner) {
		t.Fatalf("replica: %s; owner: %s", digestString(got), digestString(owner))
	}
	// Abandoned and replaced generations are deleted: only the cursor's
	// generation holds rows.
	if err := cc.dropMarked(); err != nil {
		t.Fatal(err)
	}
	gp := []byte(replicaBase("stores", crashTable) + "g/")
	gens := map[uint64]int{}
	err = cc.db.View(func(txn *badger.Txn) error {
		o := badger.DefaultIteratorOptions
		o.Prefix, o.PrefetchValues = gp, false
		it := txn.NewIterator(o)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			k := it.Item().Key()
			if len(k) < len(gp)+8 {
				return errors.New("short generation key")
			}
			gens[binary.BigEndian.Uint64(k[len(gp):])]++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// A resident replica's generation is a rows file (the transfer's or a
	// checkpoint's) and the WAL of the changes since (bulkgen.go, wal.go):
	// it has no badger rows, and the only rows file is its live one.
	files, err := filepath.Glob(filepath.Join(h.consDir, bulkDir, "*"))
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case r.cur.Bulk:
		// The live rows file, and the live generation's WAL segments.
		segs, err := cc.walSegPaths(genPrefix(r.base, r.cur.Gen))
		if err != nil {
			t.Fatal(err)
		}
		if want := slices.Sorted(slices.Values(append(segs, r.sink.(*genStore).wal.path))); !slices.Equal(files, want) {
			t.Fatalf("rows files %q, want only %q", files, want)
		}
		if len(gens) != 0 {
			t.Fatalf("replica rows by generation %v, want none", gens)
		}
	case len(gens) != 1 || gens[r.cur.Gen] != int(owner.Rows) || len(files) != 0:
		t.Fatalf("replica rows by generation %v, rows files %q; want only generation %d with %d rows", gens, files, r.cur.Gen, owner.Rows)
	}
	t.Logf("owner and replica equal the replayed workload: %s", digestString(owner))
}

// freeAddr is an address a process can be restarted on (testutil.FreeAddr).
func freeAddr(t testing.TB) string { return testutil.FreeAddr(t) }
