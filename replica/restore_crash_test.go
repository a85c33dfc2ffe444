package replica

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/replmesh/replmesh/internal/testutil"
	"github.com/replmesh/replmesh/transport"
)

// The restore crash test runs the owner that lost its disk and the
// consumer whose replica it is restored from as child processes: the test
// binary re-executes itself with -test.run=^TestRestoreCrashChild$ and
// these variables set.
const (
	rcRoleEnv  = "REPLMESH_RCRASH_ROLE"  // "owner" or "source"
	rcDirEnv   = "REPLMESH_RCRASH_DIR"   // the child's data dir
	rcAddrEnv  = "REPLMESH_RCRASH_ADDR"  // the child's listen address
	rcOwnerEnv = "REPLMESH_RCRASH_OWNER" // the owner's listen address (source)

	rcTable     = "items"
	rcOutPrefix = "@rcrash "
	rcValueSize = 256
)

func rcOut(format string, args ...any) {
	_, _ = os.Stdout.Write([]byte(rcOutPrefix + fmt.Sprintf(format, args...) + "\n"))
}

// rcKey and rcValue are the rows the owner loads: row i of load round r.
func rcKey(i int) []byte { return fmt.Appendf(nil, "item%08d", i) }

func rcValue(i int) []byte {
	v := make([]byte, rcValueSize)
	for j := range v {
		v[j] = byte('a' + (i+j)%26)
	}
	return v
}

// rcDigest is a table's (or replica's) digest as the children report it:
// "<rows> <seq> <log> <hash>" (log "-" when empty).
func rcDigest(d transport.DigestResponse) string {
	log := d.LogID
	if log == "" {
		log = "-"
	}
	return fmt.Sprintf("%d %d %s %s", d.Rows, d.Seq, log, hex.EncodeToString(d.Hash))
}

// TestRestoreCrashChild is the body of the restore crash test's children;
// it returns at once unless REPLMESH_RCRASH_ROLE is set.
func TestRestoreCrashChild(t *testing.T) {
	role := os.Getenv(rcRoleEnv)
	if role == "" {
		return
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM)
	defer signal.Stop(sigs)
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cmds := make(chan string)
	go func() {
		defer close(cmds)
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			cmds <- sc.Text()
			if sc.Text() == "quit" {
				return // the child exits: nothing reads stdin any more
			}
		}
	}()
	switch role {
	case "owner":
		rcOwnerChild(t, logger, sigs, cmds)
	case "source":
		rcSourceChild(t, logger, sigs, cmds)
	default:
		t.Fatalf("unknown %s %q", rcRoleEnv, role)
	}
}

// rcOwnerChild is the owner: it reports its table's digest at start (a
// restore cut short by a kill must leave it empty or complete), loads rows
// ("load N"), and restores the table ("restore ADDR") reporting every
// phase and transfer frame, while a reader probes the table's digest and
// reports each distinct answer: "read ok <digest>" or "read refused".
func rcOwnerChild(t *testing.T, logger *slog.Logger, sigs <-chan os.Signal, cmds <-chan string) {
	cfg := LocalConfig("stores", "owner")
	cfg.DataDir, cfg.ListenAddr, cfg.Durability, cfg.Logger = os.Getenv(rcDirEnv), os.Getenv(rcAddrEnv), Sync, logger
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := Open(ctx, cfg)
	if err != nil {
		rcOut("bad open: %v", err)
		t.Fatal(err)
	}
	tbl, err := c.Own(rcTable)
	if err != nil {
		rcOut("bad own: %v", err)
		t.Fatal(err)
	}
	state := func(what string) {
		d, err := tbl.Digest(nil, nil)
		if err != nil {
			rcOut("bad %s digest: %v", what, err)
			return
		}
		rcOut("%s %s", what, rcDigest(d))
	}
	state("start")
	var wg sync.WaitGroup
	defer wg.Wait()
	// stop ends the restores and probes, then closes the component.
	stop := func() {
		cancel()
		wg.Wait()
		rcClose(t, c)
	}
	for {
		select {
		case <-sigs:
			stop()
			return
		case cmd, ok := <-cmds:
			if !ok {
				cmds = nil
				continue
			}
			f := strings.Fields(cmd)
			switch {
			case cmd == "quit":
				stop()
				return
			case len(f) == 2 && f[0] == "load":
				n, _ := strconv.Atoi(f[1])
				for i := 0; i < n; i += 500 {
					ws := make([]Write, 0, 500)
					for j := i; j < min(n, i+500); j++ {
						ws = append(ws, Write{Key: rcKey(j), Value: rcValue(j)})
					}
					if _, err := tbl.Apply(ctx, ws...); err != nil {
						rcOut("bad load: %v", err)
						t.Fatal(err)
					}
				}
				state("loaded")
			case len(f) == 2 && f[0] == "restore":
				wg.Add(1)
				go func() {
					defer wg.Done()
					rcRestore(ctx, c, tbl, f[1])
					state("state")
				}()
			default:
				rcOut("bad command %q", cmd)
			}
		}
	}
}

// rcClose closes a child's component and reports "closed" (or fails the
// child on an error).
func rcClose(t *testing.T, c *Component) {
	if err := c.Close(); err != nil {
		rcOut("bad close: %v", err)
		t.Fatal(err)
	}
	rcOut("closed")
}

// rcRestore runs one restore of the owner's table from addr and probes
// the table while it runs.
func rcRestore(ctx context.Context, c *Component, tbl *OwnedTable, addr string) {
	pctx, stop := context.WithCancel(ctx)
	probed := make(chan struct{})
	go func() {
		defer close(probed)
		prev := ""
		for pctx.Err() == nil {
			line := "read refused"
			if d, err := tbl.Digest(nil, nil); err == nil {
				line = "read ok " + rcDigest(d)
			} else if !errors.Is(err, ErrRestoring) {
				line = "bad read: " + err.Error()
			}
			if line != prev {
				rcOut("%s", line)
				prev = line
			}
			time.Sleep(200 * time.Microsecond) // the probe's pace, not synchronization
		}
	}()
	res, err := c.Restore(ctx, rcTable, RestoreOptions{
		Source:        transport.RestoreSource{Addr: addr},
		ProgressEvery: time.Nanosecond,
		Progress: func(p RestoreProgress) {
			if p.Phase == transport.RestorePhaseTransfer {
				rcOut("rows %d %d", p.Transfer.Rows, p.Transfer.ExpectedRows)
				return
			}
			rcOut("phase %s", p.Phase)
		},
	})
	stop()
	<-probed
	if err != nil {
		rcOut("failed %s", strings.ReplaceAll(err.Error(), "\n", " "))
		return
	}
	rcOut("restored %d %d %d", res.Seq, res.NewEpoch, res.Rows)
}

// rcSourceChild is the consumer whose replica serves the restore: it
// subscribes to the owner's table, reports its replica's state, and its
// digest on "digest".
func rcSourceChild(t *testing.T, logger *slog.Logger, sigs <-chan os.Signal, cmds <-chan string) {
	cfg := LocalConfig("products", "source")
	cfg.DataDir, cfg.ListenAddr, cfg.Logger = os.Getenv(rcDirEnv), os.Getenv(rcAddrEnv), logger
	c, err := Open(context.Background(), cfg)
	if err != nil {
		rcOut("bad open: %v", err)
		t.Fatal(err)
	}
	r, err := c.Subscribe(context.Background(), SubscribeOptions{Service: "stores", Table: rcTable, Addr: os.Getenv(rcOwnerEnv)})
	if err != nil {
		rcOut("bad subscribe: %v", err)
		t.Fatal(err)
	}
	rcOut("start")
	tk := time.NewTicker(5 * time.Millisecond)
	defer tk.Stop()
	prev := ""
	for {
		select {
		case <-sigs:
			rcClose(t, c)
			return
		case cmd, ok := <-cmds:
			if !ok {
				cmds = nil
				continue
			}
			if cmd == "quit" {
				rcClose(t, c)
				return
			}
			if cmd != "digest" {
				rcOut("bad command %q", cmd)
				continue
			}
			d, err := r.Digest(nil, nil)
			if err != nil {
				rcOut("bad digest: %v", err)
				continue
			}
			rcOut("digest %s", rcDigest(d))
		case <-tk.C:
			st := r.Status()
			line := fmt.Sprintf("status %s %d %d %d", st.State, st.Seq, st.Stats.FullTransfers, st.Stats.Truncations)
			if line != prev {
				rcOut("%s", line)
				prev = line
			}
		}
	}
}

// rcChild is one child process as the parent sees it (the fields are
// guarded by the Child's lock).
type rcChild struct {
	*testutil.Child
	role string
	run  int

	start    string // owner: the digest at start
	loaded   string
	state    string // owner: the digest after the last restore
	phase    string
	rows     uint64
	expected uint64
	restored bool
	failed   string
	reads    []string // owner: every distinct "read ok" digest
	refusals int
	digest   string // source: the replica's digest
	status   []string
	closed   bool
}

func (c *rcChild) parse(line string, _ time.Time) {
	f := strings.Fields(line)
	rest := func(i int) string { return strings.Join(f[i:], " ") }
	num := func(i int) uint64 { return c.Uint(f, i, line) }
	switch f[0] {
	case "start":
		c.start = rest(1)
	case "loaded":
		c.loaded = rest(1)
	case "state":
		c.state = rest(1)
	case "phase":
		c.phase = rest(1)
	case "rows":
		c.rows, c.expected = num(1), num(2)
	case "restored":
		c.restored = true
	case "failed":
		c.failed = rest(1)
	case "read":
		if len(f) > 1 && f[1] == "ok" {
			c.reads = append(c.reads, rest(2))
		} else {
			c.refusals++
		}
	case "digest":
		c.digest = rest(1)
	case "status":
		c.status = append(c.status, rest(1))
	case "closed":
		c.closed = true
	default:
		c.Problem("unknown line: " + line)
	}
}

func (c *rcChild) report() string {
	return fmt.Sprintf("phase %q rows %d/%d restored %v failed %q state %q", c.phase, c.rows, c.expected, c.restored, c.failed, c.state)
}

// rcHarness starts, kills and checks the children.
type rcHarness struct {
	t                       *testing.T
	rng                     *rand.Rand
	root                    string
	ownerAddr, sourceAddr   string
	owners, sources         []*rcChild
	complete                string // the source replica's digest: what a complete restore holds
	completeReads, refusals int
}

func (h *rcHarness) startChild(role string) *rcChild {
	h.t.Helper()
	c := &rcChild{role: role}
	addr := h.ownerAddr
	if role == "owner" {
		h.owners = append(h.owners, c)
		c.run = len(h.owners)
	} else {
		h.sources = append(h.sources, c)
		c.run = len(h.sources)
		addr = h.sourceAddr
	}
	c.Child = testutil.NewChild(h.t, testutil.ChildSpec{
		Name: fmt.Sprintf("%s run %d", role, c.run),
		Args: testutil.SelfArgs("TestRestoreCrashChild", 5*time.Minute),
		Env: append(os.Environ(), rcRoleEnv+"="+role, rcDirEnv+"="+filepath.Join(h.root, role), rcAddrEnv+"="+addr,
			rcOwnerEnv+"="+h.ownerAddr),
		Stdin:  true,
		Prefix: rcOutPrefix,
		Report: c.parse,
		State:  c.report,
	})
	c.Start()
	return c
}

func (h *rcHarness) startOwner() *rcChild {
	h.t.Helper()
	c := h.startChild("owner")
	c.WaitFor(60*time.Second, "the owner to start", func() bool { return c.start != "" })
	return c
}

func (h *rcHarness) startSource() *rcChild {
	h.t.Helper()
	c := h.startChild("source")
	c.WaitFor(60*time.Second, "the source to start", func() bool { return len(c.status) > 0 })
	return c
}

// isEmpty: no rows, no seq.
func isEmpty(d string) bool { return strings.HasPrefix(d, "0 0 ") }

// checkWhole fails unless digest d (of the owner's table) is empty or the
// complete copy.
func (h *rcHarness) checkWhole(c *rcChild, what, d string) {
	h.t.Helper()
	if !isEmpty(d) && d != h.complete {
		c.Fatalf("%s: the table is partial: %s; empty or the source's copy (%s) expected", what, d, h.complete)
	}
}

// checkReads checks every digest the owner's probe read while a restore
// ran: empty or complete, never a subset.
func (h *rcHarness) checkReads(c *rcChild) {
	h.t.Helper()
	reads, refusals := testutil.Locked(c.Child, func() []string { return c.reads }), testutil.Locked(c.Child, func() int { return c.refusals })
	for _, d := range reads {
		h.checkWhole(c, "a read during the restore", d)
		if !isEmpty(d) {
			h.completeReads++
		}
	}
	h.refusals += refusals
}

// killOwner kills the owner run, checks what its probe read, restarts it
// and checks its table at start.
func (h *rcHarness) killOwner(c *rcChild) *rcChild {
	h.t.Helper()
	c.Kill()
	h.checkReads(c)
	n := h.startOwner()
	h.checkWhole(n, "after the restart", testutil.Locked(n.Child, func() string { return n.start }))
	return n
}

// restoreAll restores the owner's table to completion and checks it.
func (h *rcHarness) restoreAll(c *rcChild) {
	h.t.Helper()
	c.Lock()
	c.restored, c.failed, c.state = false, "", ""
	c.Unlock()
	c.Send("restore " + h.sourceAddr)
	c.WaitFor(120*time.Second, "the restore to complete", func() bool { return c.state != "" })
	if !testutil.Locked(c.Child, func() bool { return c.restored }) {
		c.Fatalf("the restore failed")
	}
	if got := testutil.Locked(c.Child, func() string { return c.state }); got != h.complete {
		c.Fatalf("after the restore the table's digest is %s, the source's %s", got, h.complete)
	}
	h.checkReads(c)
}

// TestRestore_CrashAtRandomPoints: an owner that lost its disk is restored
// from a consumer's replica (20,000 rows of 256 B) while the owner or the
// source is SIGKILLed at a seeded random point of the restore — right
// after the plan (before the first row), in the middle of the transfer,
// or around the last frame (just before the switch). After each kill the
// victim restarts on its data dir: the owner's table is then empty or the
// complete copy, never a subset; every read the owner's probe made during
// the restore saw it refused or empty or complete; a restore after the
// kill completes and its digest equals the source replica's. Each cycle
// ends by wiping the owner's data dir again (the next disk loss).
//
// REPLMESH_SEED replays the kill timing of a logged seed.
func TestRestore_CrashAtRandomPoints(t *testing.T) {
	if testing.Short() {
		t.Skip("runs child processes; skipped in -short mode")
	}
	seed, _ := testSeed(t)
	t.Logf("seed %d (replay: REPLMESH_SEED=%d go test -run 'TestRestore_CrashAtRandomPoints' ./replica)", seed, seed)
	const rows = 20_000
	h := &rcHarness{t: t, rng: rand.New(rand.NewPCG(seed, seed^0x7e57)), root: t.TempDir(),
		ownerAddr: freeAddr(t), sourceAddr: freeAddr(t)}
	began := time.Now()

	// The owner loads the rows, the source replicates them, the owner
	// loses its disk and comes back empty; the source keeps its copy.
	owner := h.startOwner()
	source := h.startSource()
	owner.Send(fmt.Sprintf("load %d", rows))
	owner.WaitFor(120*time.Second, "the load", func() bool { return owner.loaded != "" })
	loaded := testutil.Locked(owner.Child, func() string { return owner.loaded })
	source.WaitFor(120*time.Second, "the source to replicate the rows", func() bool {
		return len(source.status) > 0 && strings.HasPrefix(source.status[len(source.status)-1], fmt.Sprintf("streaming %d ", rows))
	})
	wipe := func() *rcChild {
		t.Helper()
		owner.Kill()
		if err := os.RemoveAll(filepath.Join(h.root, "owner")); err != nil {
			t.Fatal(err)
		}
		o := h.startOwner()
		if d := testutil.Locked(o.Child, func() string { return o.start }); !isEmpty(d) {
			o.Fatalf("after the disk loss the table is %s, want empty", d)
		}
		return o
	}
	owner = wipe()
	source.Send("digest")
	source.WaitFor(30*time.Second, "the source's digest", func() bool { return source.digest != "" })
	h.complete = testutil.Locked(source.Child, func() string { return source.digest })
	if h.complete != loaded {
		source.Fatalf("the source holds %s, the owner had loaded %s", h.complete, loaded)
	}

	type cycle struct{ victim, point string }
	var cycles []cycle
	for _, v := range []string{"owner", "source"} {
		for _, p := range []string{"before-first-row", "mid-transfer", "before-switch"} {
			cycles = append(cycles, cycle{v, p})
		}
	}
	h.rng.Shuffle(len(cycles), func(i, j int) { cycles[i], cycles[j] = cycles[j], cycles[i] })
	for i, cy := range cycles {
		owner.Lock()
		owner.phase, owner.rows, owner.expected, owner.restored, owner.failed, owner.state = "", 0, 0, false, "", ""
		owner.Unlock()
		owner.Send("restore " + h.sourceAddr)
		switch cy.point {
		case "before-first-row":
			owner.WaitFor(60*time.Second, "the plan", func() bool { return owner.phase == transport.RestorePhasePlan })
			time.Sleep(time.Duration(h.rng.Int64N(int64(time.Millisecond)))) // the kill's timing
		case "mid-transfer":
			at := rows/10 + h.rng.Uint64N(rows*7/10)
			owner.WaitFor(60*time.Second, fmt.Sprintf("%d rows", at), func() bool { return owner.rows >= at })
		case "before-switch":
			at := rows - 250 - h.rng.Uint64N(250) // the last frames: 64 KiB hold about 240 rows
			owner.WaitFor(60*time.Second, fmt.Sprintf("%d rows", at), func() bool { return owner.rows >= at || owner.restored })
		}
		where := testutil.Locked(owner.Child, owner.report)
		if cy.victim == "owner" {
			owner = h.killOwner(owner)
		} else {
			source.Kill()
			owner.WaitFor(60*time.Second, "the restore to end", func() bool { return owner.state != "" })
			h.checkReads(owner)
			st := testutil.Locked(owner.Child, func() string { return owner.state })
			h.checkWhole(owner, "after the source's kill", st)
			if !testutil.Locked(owner.Child, func() bool { return owner.restored }) && !isEmpty(st) {
				owner.Fatalf("a failed restore left %s, want the table empty", st)
			}
			source = h.startSource()
		}
		d := testutil.Locked(owner.Child, func() string {
			if owner.state != "" {
				return owner.state
			}
			return owner.start
		})
		outcome := "complete"
		if isEmpty(d) {
			outcome = "empty"
			h.restoreAll(owner)
		}
		t.Logf("cycle %d: %s killed %s (%s): the owner was %s; restored after %s", i+1, cy.victim, cy.point, where, outcome, time.Since(began).Round(time.Millisecond))
		owner = wipe()
	}
	t.Logf("%d cycles, %d owner runs, %d source runs; the probe read %d complete copies and was refused %d times, never a partial table; %s",
		len(cycles), len(h.owners), len(h.sources), h.completeReads, h.refusals, time.Since(began).Round(time.Millisecond))
	if h.refusals == 0 {
		t.Fatalf("the owner's probe never saw a restore under way (no read refused)")
	}
	for _, c := range []*rcChild{owner, source} {
		c.Send("quit")
		c.ExpectCleanExit(60*time.Second, "quit", func() bool { return c.closed })
	}
}
