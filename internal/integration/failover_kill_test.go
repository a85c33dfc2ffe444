package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/replmesh/replmesh/broker"
	"github.com/replmesh/replmesh/internal/testutil"
	"github.com/replmesh/replmesh/replica"
	"github.com/replmesh/replmesh/transport"
)

// The kill test runs the owner instances as child processes: the test
// binary re-executes itself with -test.run=^TestFailoverKillChild$ and these
// variables set. The brokers and the consumer stay in the parent.
const (
	foRoleEnv     = "REPLMESH_FAILOVER_ROLE"     // "owner": be an owner instance
	foInstanceEnv = "REPLMESH_FAILOVER_INSTANCE" // the instance name
	foRunEnv      = "REPLMESH_FAILOVER_RUN"      // the run number of this instance (part of its keys)
	foDirEnv      = "REPLMESH_FAILOVER_DIR"      // the data dir
	foBrokersEnv  = "REPLMESH_FAILOVER_BROKERS"  // the brokers' gRPC addresses, comma-separated

	foService   = "stores"
	foTable     = "items"
	foWriters   = 4 // concurrent writers of the load: writes are in flight when the kill lands
	foOutPrefix = "@fo "
)

// The workload writes every key once: key "w-<instance><run>-<writer>-<n>"
// gets foValue(key). A replica holding the key therefore holds exactly the
// acknowledged write.
func foValue(key string) []byte { return []byte("v:" + key) }

// foOut writes one line for the parent, in one Write call so that lines
// stay whole on the pipe.
func foOut(format string, args ...any) {
	_, _ = os.Stdout.Write([]byte(foOutPrefix + fmt.Sprintf(format, args...) + "\n"))
}

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", " ") }

// TestFailoverKillChild is the body of the kill test's owner processes; it
// returns at once unless REPLMESH_FAILOVER_ROLE is set.
//
// The child opens a component (sync durability, min_sync_standbys 1) that
// registers with the brokers, owns the table, and prints:
//
//	open <instance> <addr> <head> <log id>
//	role <primary|standby|-> <epoch> <head>    on every change of its role
//	ack <seq> <key>                            for every acknowledged write
//	bad <text>                                 on anything unexpected
//	closed                                     after a clean Close
//
// Its writers try to write all the time; only the primary's writes are
// accepted. It obeys commands on stdin, one a line: "write" (one probe
// write; answers "write ok <seq>" or "write refused <error>"), "pause"
// (stop the load; answers "paused <head>" once no write is in flight),
// "digest" (answers "digest <log id> <seq> <rows> <hash>") and "quit".
func TestFailoverKillChild(t *testing.T) {
	if os.Getenv(foRoleEnv) != "owner" {
		return
	}
	inst, run, dir := os.Getenv(foInstanceEnv), os.Getenv(foRunEnv), os.Getenv(foDirEnv)
	cfg := replica.LocalConfig(foService, inst)
	cfg.DataDir, cfg.Durability = dir, replica.Sync
	cfg.Brokers, cfg.Owner = strings.Split(os.Getenv(foBrokersEnv), ","), true
	cfg.MinSyncStandbys, cfg.SyncTimeout = 1, 3*time.Second
	// Three of these run at once next to the race detector: keep badger small.
	cfg.MemTableSize, cfg.BlockCacheSize = 8<<20, 1<<20
	cfg.MaxGroupBytes, cfg.MaxApplyBytes = 256<<10, 256<<10
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	c, err := replica.Open(context.Background(), cfg)
	if err != nil {
		foOut("bad open: %v", oneLine(err))
		t.Fatal(err)
	}
	tbl, err := c.Own(foTable)
	if err != nil {
		foOut("bad own: %v", oneLine(err))
		t.Fatal(err)
	}
	logID := tbl.LogID()
	if logID == "" {
		logID = "-"
	}
	foOut("open %s %s %d %s", inst, c.Addr(), tbl.Head(), logID)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	// The role reporter.
	wg.Add(1)
	go func() {
		defer wg.Done()
		tk := time.NewTicker(time.Millisecond)
		defer tk.Stop()
		prev := ""
		for {
			role, epoch := c.Role()
			if role == "" {
				role = "-"
			}
			if line := fmt.Sprintf("role %s %d", role, epoch); line != prev {
				foOut("%s %d", line, tbl.Head())
				prev = line
			}
			select {
			case <-tk.C:
			case <-ctx.Done():
				return
			}
		}
	}()
	// The load.
	pause := make(chan struct{})
	var wwg sync.WaitGroup
	for g := range foWriters {
		wwg.Add(1)
		go func() {
			defer wwg.Done()
			for n := 0; ; n++ {
				select {
				case <-pause:
					return
				default:
				}
				key := fmt.Sprintf("w-%s%s-%d-%06d", inst, run, g, n)
				wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
				seq, err := tbl.Put(wctx, []byte(key), foValue(key))
				wcancel()
				switch {
				case err == nil:
					foOut("ack %d %s", seq, key)
				case errors.Is(err, transport.ErrNotPrimary), errors.Is(err, replica.ErrNotReplicated), errors.Is(err, replica.ErrNoLease):
					// Not the primary, no standby to confirm, or no broker
					// confirmed the lease in time (a loaded machine delays
					// the pongs): try again shortly, with a new key (a
					// write that timed out waiting for the standby is
					// committed all the same).
					select {
					case <-time.After(5 * time.Millisecond):
					case <-pause:
						return
					}
				default:
					foOut("bad write %s: %s", key, oneLine(err))
					return
				}
			}
		}()
	}
	paused := false
	stopLoad := func() {
		if !paused {
			close(pause)
			paused = true
		}
		wwg.Wait()
	}

	sc := bufio.NewScanner(os.Stdin)
	probes := 0
commands:
	for sc.Scan() {
		switch cmd := sc.Text(); cmd {
		case "write":
			probes++
			key := fmt.Sprintf("probe-%s%s-%d", inst, run, probes)
			wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
			seq, err := tbl.Put(wctx, []byte(key), foValue(key))
			wcancel()
			if err != nil {
				foOut("write refused %s", oneLine(err))
			} else {
				foOut("write ok %d", seq)
			}
		case "pause":
			stopLoad()
			foOut("paused %d", tbl.Head())
		case "digest":
			d, err := tbl.Digest(nil, nil)
			if err != nil {
				foOut("bad digest: %s", oneLine(err))
				continue
			}
			if d.LogID == "" {
				d.LogID = "-"
			}
			foOut("digest %s %d %d %x", d.LogID, d.Seq, d.Rows, d.Hash)
		case "quit":
			break commands
		default:
			foOut("bad command %q", cmd)
		}
	}
	stopLoad()
	cancel()
	wg.Wait()
	if err := c.Close(); err != nil {
		foOut("bad close: %s", oneLine(err))
		t.Fatal(err)
	}
	foOut("closed")
}

// foChild is one owner process as the parent sees it: the process (a
// testutil.Child, whose lock guards the fields below) and what its reports
// said.
type foChild struct {
	*testutil.Child
	name    string // instance
	run     int
	replies chan string // answers to commands

	opened bool
	logID  string
	role   string
	epoch  uint64
	roles  []foRole
	acks   []foAck
	closed bool
}

type foRole struct {
	role  string
	epoch uint64
	head  uint64
	at    time.Time // the parent's clock when the line was read
}

type foAck struct {
	seq uint64
	key string
	at  time.Time // the parent's clock when the line was read
}

// parse handles one report line (without its prefix; "bad" lines are the
// Child's), under the child's lock.
func (c *foChild) parse(rest string, at time.Time) {
	line := foOutPrefix + rest
	f := strings.Fields(rest)
	num := func(i int) uint64 { return c.Uint(f, i, line) }
	switch f[0] {
	case "open":
		c.opened = true
		if len(f) > 4 {
			c.logID = f[4]
		}
	case "role":
		c.role, c.epoch = f[1], num(2)
		c.roles = append(c.roles, foRole{role: c.role, epoch: c.epoch, head: num(3), at: at})
	case "ack":
		if len(f) < 3 {
			c.Problem("short line: " + line)
			return
		}
		c.acks = append(c.acks, foAck{seq: num(1), key: f[2], at: at})
	case "write", "paused", "digest":
		select {
		case c.replies <- rest:
		default:
			c.Problem("unexpected answer: " + line)
		}
	case "closed":
		c.closed = true
	default:
		c.Problem("unknown line: " + line)
	}
}

// get returns f's result under the child's lock.
func get[T any](c *foChild, f func() T) T { return testutil.Locked(c.Child, f) }

// foHarness starts, commands, kills and stops the owner processes.
type foHarness struct {
	t       testing.TB
	brokers []string
	root    string // holds the instances' data directories, one per name
	runs    map[string]int
}

// startFailover begins a failover test with real processes: it skips in
// -short mode, starts three brokers, then instance a, and waits until a is
// primary. It returns the harness, the brokers, a and a's epoch.
func startFailover(t testing.TB) (*foHarness, []*broker.Broker, *foChild, uint64) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs child processes; skipped in -short mode")
	}
	return startFailoverOn(t, startBrokers(t, 3))
}

// startFailoverOn is startFailover on the brokers bs.
func startFailoverOn(t testing.TB, bs []*broker.Broker) (*foHarness, []*broker.Broker, *foChild, uint64) {
	t.Helper()
	h := &foHarness{t: t, brokers: grpcAddrs(bs...), root: t.TempDir(), runs: map[string]int{}}
	a := h.start("a", h.dir("a"))
	h.waitFor(a, 60*time.Second, "a to become primary", func() bool { return a.role == transport.RolePrimary })
	return h, bs, a, get(a, func() uint64 { return a.epoch })
}

// dir is the data directory of instance name, the same on every run of it.
func (h *foHarness) dir(name string) string { return filepath.Join(h.root, name) }

func (h *foHarness) start(name, dir string) *foChild {
	h.t.Helper()
	h.runs[name]++
	c := &foChild{name: name, run: h.runs[name], replies: make(chan string, 1)}
	c.Child = testutil.NewChild(h.t, testutil.ChildSpec{
		Name: fmt.Sprintf("%s (run %d)", name, c.run),
		Args: testutil.SelfArgs("TestFailoverKillChild", 5*time.Minute),
		Env: append(os.Environ(),
			foRoleEnv+"=owner", foInstanceEnv+"="+name, foRunEnv+"="+strconv.Itoa(c.run),
			foDirEnv+"="+dir, foBrokersEnv+"="+strings.Join(h.brokers, ",")),
		Stdin:  true,
		Prefix: foOutPrefix,
		Report: c.parse,
		State: func() string {
			return fmt.Sprintf("role %s epoch %d, %d acks", c.role, c.epoch, len(c.acks))
		},
	})
	c.Start()
	h.waitFor(c, 60*time.Second, "it to open its component", func() bool { return c.opened })
	return c
}

// fail reports a failure with the child's output.
func (h *foHarness) fail(c *foChild, format string, args ...any) {
	h.t.Helper()
	c.Fatalf(format, args...)
}

// check fails if the child reported a problem or exited.
func (h *foHarness) check(c *foChild) {
	h.t.Helper()
	c.Check()
}

// waitFor waits until cond (called under the child's lock) holds,
// failing early if the child reports a problem or exits.
func (h *foHarness) waitFor(c *foChild, d time.Duration, what string, cond func() bool) {
	h.t.Helper()
	c.WaitFor(d, what, cond)
}

// command sends cmd and returns the child's answer.
func (h *foHarness) command(c *foChild, cmd string) string {
	h.t.Helper()
	c.Send(cmd)
	select {
	case ans := <-c.replies:
		return ans
	case <-c.Exited():
		h.fail(c, "exited (%v) before answering %q", c.Err(), cmd)
	case <-time.After(30 * time.Second):
		h.fail(c, "no answer to %q within 30s", cmd)
	}
	return ""
}

// digest asks the child for its table's digest.
func (h *foHarness) digest(c *foChild) transport.DigestResponse {
	h.t.Helper()
	ans := h.command(c, "digest")
	f := strings.Fields(ans)
	if len(f) != 5 || f[0] != "digest" {
		h.fail(c, "bad digest answer %q", ans)
	}
	var d transport.DigestResponse
	var err1, err2, err3 error
	d.LogID = f[1]
	d.Seq, err1 = strconv.ParseUint(f[2], 10, 64)
	d.Rows, err2 = strconv.ParseUint(f[3], 10, 64)
	d.Hash, err3 = hex.DecodeString(f[4])
	if err := errors.Join(err1, err2, err3); err != nil {
		h.fail(c, "bad digest answer %q: %v", ans, err)
	}
	return d
}

// kill SIGKILLs the child and waits until its output is read to the end.
func (h *foHarness) kill(c *foChild) {
	h.t.Helper()
	c.Kill()
}

// waitStopped waits until the SIGSTOPped child has stopped.
func (h *foHarness) waitStopped(c *foChild) {
	h.t.Helper()
	c.WaitStopped(10 * time.Second)
}

// quit asks the child to stop and expects a clean exit (which includes the
// child's goroutine-leak and race checks).
func (h *foHarness) quit(c *foChild) {
	h.t.Helper()
	h.check(c)
	c.Send("quit")
	c.ExpectCleanExit(60*time.Second, "quit", func() bool { return c.closed })
}

func sameDigest(a, b transport.DigestResponse) bool {
	return a.LogID == b.LogID && a.Seq == b.Seq && a.Rows == b.Rows && bytes.Equal(a.Hash, b.Hash)
}

func digestString(d transport.DigestResponse) string {
	return fmt.Sprintf("log %s seq %d rows %d hash %x", d.LogID, d.Seq, d.Rows, d.Hash)
}

// foConsumer is the consumer of the kill tests, in this process: a
// component of service "products" that subscribes through the brokers (no
// address) and records the epochs of the changes it applies.
type foConsumer struct {
	r *replica.Replica

	mu         sync.Mutex
	lastEpoch  uint64
	epochFirst map[uint64]uint64 // epoch -> the first seq of it applied
	bad        []string
}

func (h *foHarness) consumer() *foConsumer {
	h.t.Helper()
	c := component(h.t, "products", "p1", h.t.TempDir(), "", h.brokers, false, nil)
	h.t.Cleanup(func() { c.Close() })
	r, err := c.Subscribe(ctxT(h.t, 30*time.Second), replica.SubscribeOptions{Service: foService, Table: foTable})
	if err != nil {
		h.t.Fatal(err)
	}
	fc := &foConsumer{r: r, epochFirst: map[uint64]uint64{}}
	r.OnChange(func(e replica.Event) {
		fc.mu.Lock()
		defer fc.mu.Unlock()
		if e.Reset {
			fc.lastEpoch = 0 // a full transfer starts over (only the first one is expected)
			return
		}
		for _, ch := range e.Changes {
			if ch.Epoch < fc.lastEpoch {
				fc.bad = append(fc.bad, fmt.Sprintf("change %d of epoch %d applied after a change of epoch %d", ch.Seq, ch.Epoch, fc.lastEpoch))
			}
			fc.lastEpoch = max(fc.lastEpoch, ch.Epoch)
			if _, ok := fc.epochFirst[ch.Epoch]; !ok {
				fc.epochFirst[ch.Epoch] = ch.Seq
			}
		}
	})
	return fc
}

// steady waits until p has acknowledged n writes and the consumer holds
// them, with one full transfer (its first) at epoch.
func (h *foHarness) steady(p *foChild, fc *foConsumer, n int, epoch uint64) {
	h.t.Helper()
	h.waitFor(p, 60*time.Second, fmt.Sprintf("%d acknowledged writes", n), func() bool { return len(p.acks) >= n })
	seq := get(p, func() uint64 { return p.acks[len(p.acks)-1].seq })
	if err := fc.r.WaitFor(ctxT(h.t, 30*time.Second), seq); err != nil {
		h.t.Fatalf("consumer: %v (status %+v)", err, fc.r.Status())
	}
	if st := fc.r.Status(); st.Stats.FullTransfers != 1 || st.Epoch != epoch {
		h.t.Fatalf("consumer: %d full transfers at epoch %d, want 1 at epoch %d", st.Stats.FullTransfers, st.Epoch, epoch)
	}
}

// brokersAgree waits until every broker names primary at epoch.
func (h *foHarness) brokersAgree(bs []*broker.Broker, primary string, epoch uint64) {
	h.t.Helper()
	for i, br := range bs {
		waitUntil(h.t, 20*time.Second, fmt.Sprintf("broker b%d to name %s primary at epoch %d", i+1, primary, epoch), func() bool {
			st, err := br.Status(ctxT(h.t, 30*time.Second), &transport.StatusRequest{Version: transport.ProtocolVersion})
			if err != nil {
				return false
			}
			for _, o := range st.Owners {
				if o.Service == foService {
					return o.Primary.Instance == primary && o.Epoch == epoch
				}
			}
			return false
		})
	}
}

// restartAsStandby restarts a killed instance on its data dir and checks
// that it comes back as a standby of primary at epoch, refusing writes.
func (h *foHarness) restartAsStandby(name, dir string, primary *foChild, epoch uint64) *foChild {
	h.t.Helper()
	c := h.start(name, dir)
	h.waitFor(c, 60*time.Second, fmt.Sprintf("the restarted %s to become a standby of epoch %d", name, epoch), func() bool {
		return c.role == transport.RoleStandby && c.epoch == epoch
	})
	ans := h.command(c, "write")
	if !strings.HasPrefix(ans, "write refused ") || !strings.Contains(ans, "not primary") || !strings.Contains(ans, "the primary is "+primary.name+" ") {
		h.fail(c, "a write on the restarted instance: %q, want it refused naming %s as the primary", ans, primary.name)
	}
	h.t.Logf("restarted %s: %s", c, ans)
	return c
}

// verify lets primary write n more acknowledged writes, pauses it and
// checks the end state: the consumer and every standby hold exactly the
// primary's table (same digest at the same seq), every acknowledged write
// of acks and of primary is on the consumer with its value, the consumer
// applied the changes with epochs never going down, ends at epoch with one
// full transfer (the first) and no truncation, and the epoch began after
// the last write the killed primary acknowledged (oldMax). It returns the
// head.
func (h *foHarness) verify(primary *foChild, standbys []*foChild, fc *foConsumer, n int, epoch, oldMax uint64, acks []foAck) uint64 {
	t := h.t
	t.Helper()
	from := get(primary, func() int { return len(primary.acks) })
	h.waitFor(primary, 60*time.Second, fmt.Sprintf("%d more acknowledged writes", n), func() bool { return len(primary.acks) >= from+n })
	ans := h.command(primary, "pause")
	head, err := strconv.ParseUint(strings.TrimPrefix(ans, "paused "), 10, 64)
	if err != nil {
		h.fail(primary, "bad pause answer %q", ans)
	}
	if err := fc.r.WaitFor(ctxT(t, 30*time.Second), head); err != nil {
		t.Fatalf("consumer: %v (status %+v)", err, fc.r.Status())
	}
	want := h.digest(primary)
	if want.Seq != head {
		h.fail(primary, "digest at seq %d after pausing at %d", want.Seq, head)
	}
	got, err := fc.r.Digest(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !sameDigest(got, want) {
		t.Fatalf("consumer: %s; primary %s: %s", digestString(got), primary, digestString(want))
	}
	for _, s := range standbys {
		var d transport.DigestResponse
		deadline := time.Now().Add(30 * time.Second)
		for d = h.digest(s); d.Seq != head; d = h.digest(s) {
			if time.Now().After(deadline) {
				h.fail(s, "copy at seq %d 30s after the primary paused at %d", d.Seq, head)
			}
			time.Sleep(5 * time.Millisecond)
		}
		if !sameDigest(d, want) {
			h.fail(s, "standby copy: %s; primary: %s", digestString(d), digestString(want))
		}
		if n := get(s, func() int { return len(s.acks) }); n != 0 {
			h.fail(s, "a standby acknowledged %d writes", n)
		}
		for _, ro := range get(s, func() []foRole { return slices.Clone(s.roles) }) {
			if ro.role == transport.RolePrimary {
				h.fail(s, "was primary (epoch %d) while %s held the lease", ro.epoch, primary.name)
			}
		}
	}

	pAcks := get(primary, func() []foAck { return slices.Clone(primary.acks) })
	fc.mu.Lock()
	bad, start := slices.Clone(fc.bad), fc.epochFirst[epoch]
	fc.mu.Unlock()
	if len(bad) > 0 {
		t.Fatalf("consumer: %s", strings.Join(bad, "; "))
	}
	if start == 0 || start <= oldMax {
		t.Fatalf("epoch %d starts at seq %d on the consumer, but the killed primary acknowledged seq %d", epoch, start, oldMax)
	}
	if pAcks[0].seq < start {
		h.fail(primary, "acknowledged seq %d before its epoch began at %d", pAcks[0].seq, start)
	}
	for _, k := range slices.Concat(acks, pAcks) {
		v, ok, err := fc.r.Get([]byte(k.key))
		if err != nil || !ok || !bytes.Equal(v, foValue(k.key)) {
			t.Fatalf("acknowledged write %s (seq %d): consumer holds %q, found %v, err %v", k.key, k.seq, v, ok, err)
		}
	}
	st := fc.r.Status()
	if st.Epoch != epoch || st.Stats.FullTransfers != 1 || st.Stats.Resumes < 1 || st.Stats.Truncations != 0 {
		t.Fatalf("consumer: epoch %d, %d full transfers, %d resumes, %d truncations; want epoch %d, 1 full transfer (it resumes on the new primary), >= 1 resume, 0 truncations",
			st.Epoch, st.Stats.FullTransfers, st.Stats.Resumes, st.Stats.Truncations, epoch)
	}
	t.Logf("head %d: %d writes acknowledged before the kill, %d by %s after it; consumer: %d resumes, %d reconnects, 1 full transfer",
		head, len(acks), len(pAcks), primary.name, st.Stats.Resumes, st.Stats.Reconnects)
	return head
}

func maxSeq(acks []foAck) uint64 {
	var m uint64
	for _, k := range acks {
		m = max(m, k.seq)
	}
	return m
}

// TestFailover_KillPrimaryProcess: three instances of an owner service run
// as real processes with min_sync_standbys 1 under a steady write load
// (four writers, sync durability); a consumer in this process follows the
// table through three brokers. The primary is SIGKILLed. Then:
//
//   - the brokers promote a standby with a new epoch, and it accepts writes
//     once the other standby follows it (the time from the kill to that
//     first acknowledged write is logged);
//   - the consumer resumes on the new primary without a full transfer;
//   - every write the killed primary acknowledged is in the new primary's
//     history and on the consumer, with its value;
//   - the consumer never applies a change of an epoch older than one it has
//     applied, and ends at the new epoch;
//   - the killed instance, restarted on its data dir, comes back as a
//     standby: its writes are refused naming the new primary, and its copy
//     converges to the new primary's (same digest), as do the other
//     standby's and the consumer's.
//
// Three instances rather than two: with min_sync_standbys 1 the new primary
// takes writes only while a standby confirms them, so with two the first
// write after the failover would wait for the killed one's restart
// (TestFailover_KillPrimaryWithStandbyBehind runs two).
func TestFailover_KillPrimaryProcess(t *testing.T) {
	began := time.Now()
	// 1. a starts first and gets the primary lease; b and c become standbys.
	h, bs, a, epoch1 := startFailover(t)
	b := h.start("b", h.dir("b"))
	c := h.start("c", h.dir("c"))
	for _, s := range []*foChild{b, c} {
		h.waitFor(s, 60*time.Second, "it to become a standby", func() bool { return s.role == transport.RoleStandby && s.epoch == epoch1 })
	}
	fc := h.consumer()

	// 2. Steady load on a; the consumer follows.
	h.steady(a, fc, 300, epoch1)
	h.check(b)
	h.check(c)

	// 3. SIGKILL the primary in the middle of the load.
	killedAt := time.Now()
	h.kill(a)
	consAtKill := fc.r.Seq()
	aAcks := get(a, func() []foAck { return slices.Clone(a.acks) })
	var nw, other *foChild
	deadline := time.Now().Add(30 * time.Second)
	for nw == nil {
		for _, s := range []*foChild{b, c} {
			h.check(s)
			if get(s, func() bool { return s.role == transport.RolePrimary }) {
				nw = s
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no standby was promoted within 30s of the kill (b: %s, c: %s)",
				get(b, func() string { return b.role }), get(c, func() string { return c.role }))
		}
		time.Sleep(2 * time.Millisecond)
	}
	other = b
	if nw == b {
		other = c
	}
	promo := get(nw, func() foRole { return nw.roles[len(nw.roles)-1] })
	epoch2 := promo.epoch
	if epoch2 <= epoch1 {
		t.Fatalf("%s promoted at epoch %d, the killed primary's was %d", nw, epoch2, epoch1)
	}
	t.Logf("a killed after %d acknowledged writes (highest seq %d); the consumer was at seq %d; %s took over at seq %d",
		len(aAcks), maxSeq(aAcks), consAtKill, nw.name, promo.head)
	h.waitFor(nw, 30*time.Second, "the new primary's first acknowledged write", func() bool { return len(nw.acks) > 0 })
	firstAck := get(nw, func() foAck { return nw.acks[0] })
	t.Logf("kill -> %s promoted (epoch %d -> %d): %v; kill -> first write acknowledged by the new primary: %v",
		nw.name, epoch1, epoch2, promo.at.Sub(killedAt).Round(time.Millisecond), firstAck.at.Sub(killedAt).Round(time.Millisecond))
	h.brokersAgree(bs, nw.name, epoch2)
	h.waitFor(other, 30*time.Second, "the other standby to follow the new epoch", func() bool {
		return other.role == transport.RoleStandby && other.epoch == epoch2
	})

	// 4. The killed instance restarts on its data dir: a standby, not a
	// second primary.
	a2 := h.restartAsStandby("a", h.dir("a"), nw, epoch2)

	// 5. More load on the new primary, then everything is compared.
	h.verify(nw, []*foChild{other, a2}, fc, 200, epoch2, maxSeq(aAcks), aAcks)

	// 6. Everybody stops cleanly.
	h.quit(a2)
	h.quit(other)
	h.quit(nw)
	t.Logf("done in %s", time.Since(began).Round(time.Millisecond))
}

// TestFailover_KillPrimaryWithStandbyBehind: a primary and one standby
// (min_sync_standbys 1) as real processes under load. The standby is
// frozen (SIGSTOP): the primary's writes commit locally but are not
// confirmed (they time out as not replicated). Then the standby and the
// primary are SIGKILLed and the standby is restarted first: it is promoted
// holding less than the primary committed. The consumer must still resume
// on it without a full transfer, which holds only if it was never sent a
// change the standby did not confirm. The old primary, restarted, comes
// back as a standby whose unconfirmed changes are replaced by the new
// primary's history; every acknowledged write survives.
func TestFailover_KillPrimaryWithStandbyBehind(t *testing.T) {
	began := time.Now()
	h, bs, a, epoch1 := startFailover(t)
	b := h.start("b", h.dir("b"))
	h.waitFor(b, 60*time.Second, "b to become a standby", func() bool { return b.role == transport.RoleStandby && b.epoch == epoch1 })
	fc := h.consumer()
	h.steady(a, fc, 100, epoch1)

	// Freeze the standby; wait until the primary has committed a change
	// after that (it cannot be on the standby).
	b.Signal(syscall.SIGSTOP)
	h.waitStopped(b)
	frozen := h.digest(a).Seq
	deadline := time.Now().Add(30 * time.Second)
	var head uint64
	for head = h.digest(a).Seq; head <= frozen; head = h.digest(a).Seq {
		if time.Now().After(deadline) {
			h.fail(a, "no commit in 30s after the standby froze at most at seq %d", frozen)
		}
		time.Sleep(5 * time.Millisecond)
	}
	h.kill(b)
	h.kill(a)
	consAtKill := fc.r.Seq()
	aAcks := get(a, func() []foAck { return slices.Clone(a.acks) })
	t.Logf("standby frozen when the primary's head was %d; primary killed at head >= %d after %d acknowledged writes (highest seq %d); consumer at seq %d",
		frozen, head, len(aAcks), maxSeq(aAcks), consAtKill)

	// The standby restarts first and is promoted with what it holds.
	b2 := h.start("b", h.dir("b"))
	h.waitFor(b2, 30*time.Second, "b to be promoted", func() bool { return b2.role == transport.RolePrimary })
	promo := get(b2, func() foRole { return b2.roles[len(b2.roles)-1] })
	epoch2 := promo.epoch
	if epoch2 <= epoch1 {
		t.Fatalf("%s promoted at epoch %d, the killed primary's was %d", b2, epoch2, epoch1)
	}
	if promo.head < maxSeq(aAcks) {
		h.fail(b2, "promoted at seq %d, but the primary acknowledged seq %d", promo.head, maxSeq(aAcks))
	}
	if promo.head >= head {
		h.fail(b2, "promoted at seq %d: it holds the change %d committed after it froze", promo.head, head)
	}
	if consAtKill > promo.head {
		t.Fatalf("the consumer holds seq %d, the promoted standby only %d: it was sent changes no standby had confirmed", consAtKill, promo.head)
	}
	h.brokersAgree(bs, b2.name, epoch2)

	// The old primary restarts as a standby; its unconfirmed changes give
	// way to the new primary's history, and the new primary takes writes.
	a2 := h.restartAsStandby("a", h.dir("a"), b2, epoch2)
	h.verify(b2, []*foChild{a2}, fc, 100, epoch2, maxSeq(aAcks), aAcks)
	h.quit(a2)
	h.quit(b2)
	t.Logf("done in %s", time.Since(began).Round(time.Millisecond))
}

// BenchmarkFailover_KillToFirstWrite measures a failover on the brokers'
// raft path: three brokers with data dirs (1s lease), an owner service of
// three instances as real processes (sync durability, min_sync_standbys
// 1) under a steady write load; the primary is SIGKILLed. Metrics, the
// mean over b.N kills: "kill-to-promoted-ms" (a standby reports itself
// primary at a new epoch) and "kill-to-first-write-ms" (the new primary
// acknowledges its first write: the figure the issue bounds at 1.5s).
// Every iteration starts from fresh brokers and processes; run it with
// -benchtime 1x -count N.
func BenchmarkFailover_KillToFirstWrite(b *testing.B) {
	if testing.Short() {
		b.Skip("runs child processes; skipped in -short mode")
	}
	var promoted, written time.Duration
	for range b.N {
		b.StopTimer()
		bs := startRaftBrokers(b, 3)
		h, _, a, epoch1 := startFailoverOn(b, bs)
		sb, sc := h.start("b", h.dir("b")), h.start("c", h.dir("c"))
		for _, s := range []*foChild{sb, sc} {
			h.waitFor(s, 60*time.Second, "it to become a standby", func() bool { return s.role == transport.RoleStandby && s.epoch == epoch1 })
		}
		h.waitFor(a, 60*time.Second, "100 acknowledged writes", func() bool { return len(a.acks) >= 100 })
		b.StartTimer()
		killedAt := time.Now()
		h.kill(a)
		var nw *foChild
		waitUntil(b, 30*time.Second, "a standby's promotion", func() bool {
			for _, s := range []*foChild{sb, sc} {
				h.check(s)
				if get(s, func() bool { return s.role == transport.RolePrimary }) {
					nw = s
				}
			}
			return nw != nil
		})
		h.waitFor(nw, 30*time.Second, "the new primary's first acknowledged write", func() bool { return len(nw.acks) > 0 })
		b.StopTimer()
		promo := get(nw, func() foRole { return nw.roles[len(nw.roles)-1] })
		first := get(nw, func() foAck { return nw.acks[0] })
		if promo.epoch <= epoch1 {
			b.Fatalf("%s promoted at epoch %d, the killed primary's was %d", nw.name, promo.epoch, epoch1)
		}
		promoted += promo.at.Sub(killedAt)
		written += first.at.Sub(killedAt)
		b.Logf("kill -> %s promoted %v, first write %v", nw.name, promo.at.Sub(killedAt).Round(time.Millisecond),
			first.at.Sub(killedAt).Round(time.Millisecond))
		h.quit(sb)
		h.quit(sc)
		for _, x := range bs {
			x.Close()
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(promoted.Milliseconds())/float64(b.N), "kill-to-promoted-ms")
	b.ReportMetric(float64(written.Milliseconds())/float64(b.N), "kill-to-first-write-ms")
}
