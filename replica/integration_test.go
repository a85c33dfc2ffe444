package replica

// Integration tests: one owner and several consumers in one process over
// 127.0.0.1, a random workload from several goroutines, and faults in the
// middle (consumer restarts, owner restarts, broken streams, a trimmed log,
// an owner that lost its disk, a full transfer replacing a replica under
// readers). Every test ends by checking each replica three ways: its Digest
// equals the owner's at the same seq, its rows equal a model rebuilt from
// the acknowledged writes, and the OnChange events it delivered form one
// gapless, duplicate-free sequence that rebuilds the same rows.
//
// Consumers reach the owner through a faultproxy, one per consumer: the
// tests cut streams with it, and it is paused while a replica's OnChange
// checker is attached, so no event can come before the checker.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/replmesh/replmesh/internal/faultproxy"
	"google.golang.org/grpc"
)

const (
	itOwner = "stores"
	itTable = "t"
)

// itSeed returns the seed of a test's randomness: $REPLMESH_SEED when set,
// else a random one. It is logged first, so a failing run shows it.
func itSeed(t *testing.T) uint64 {
	t.Helper()
	seed := rand.Uint64()
	if s := os.Getenv("REPLMESH_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("REPLMESH_SEED=%q: %v", s, err)
		}
	}
	t.Logf("seed %d (rerun with REPLMESH_SEED=%d)", seed, seed)
	return seed
}

// openWith opens a component like openComponent, after tweak adjusts its
// config.
func openWith(t testing.TB, service, instance, dir, addr string, tweak func(*Config)) *Component {
	t.Helper()
	cfg := LocalConfig(service, instance)
	cfg.DataDir = dir
	if addr != "" {
		cfg.ListenAddr = addr
	}
	cfg.Logger = testLogger(t)
	if tweak != nil {
		tweak(&cfg)
	}
	c, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("open %s/%s: %v", service, instance, err)
	}
	return c
}

func newProxy(t testing.TB, target string) *faultproxy.Proxy {
	t.Helper()
	p, err := faultproxy.New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func mustOwn(t testing.TB, c *Component) *OwnedTable {
	t.Helper()
	tbl, err := c.Own(itTable)
	if err != nil {
		t.Fatal(err)
	}
	return tbl
}

// logFirst is the oldest seq still in an owned table's log.
func logFirst(tbl *OwnedTable) uint64 {
	tbl.mu.Lock()
	defer tbl.mu.Unlock()
	return tbl.meta.First
}

// ---- acknowledged writes and the model they rebuild ----

// history records every acknowledged write by seq.
type history struct {
	mu   sync.Mutex
	chs  map[uint64]Change
	errs []string
}

func newHistory() *history { return &history{chs: map[uint64]Change{}} }

// record notes ws, acknowledged with last as the seq of its last write.
func (h *history) record(last uint64, ws []Write) {
	h.mu.Lock()
	defer h.mu.Unlock()
	first := last + 1 - uint64(len(ws))
	for i, w := range ws {
		seq := first + uint64(i)
		if _, dup := h.chs[seq]; dup && len(h.errs) < 10 {
			h.errs = append(h.errs, fmt.Sprintf("seq %d was acknowledged twice", seq))
		}
		ch := Change{Seq: seq, Op: OpPut, Key: w.Key, Value: w.Value, TxnEnd: i == len(ws)-1}
		if w.Delete {
			ch.Op, ch.Value = OpDelete, nil
		}
		h.chs[seq] = ch
	}
}

// model rebuilds the table at seq upto from the acknowledged writes. Every
// seq up to upto must have been acknowledged, and none after it.
func (h *history) model(t testing.TB, upto uint64) map[string]string {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.errs) > 0 {
		t.Fatalf("history: %s", strings.Join(h.errs, "; "))
	}
	m := map[string]string{}
	for seq := uint64(1); seq <= upto; seq++ {
		ch, ok := h.chs[seq]
		if !ok {
			t.Fatalf("the owner's head is %d but no write was acknowledged with seq %d (%d acknowledged): "+
				"a write that failed was committed", upto, seq, len(h.chs))
		}
		applyToModel(m, ch)
	}
	if n := uint64(len(h.chs)); n != upto {
		t.Fatalf("%d writes acknowledged, but the owner's head is %d", n, upto)
	}
	return m
}

func applyToModel(m map[string]string, ch Change) {
	if ch.Op == OpDelete {
		delete(m, string(ch.Key))
	} else {
		m[string(ch.Key)] = string(ch.Value)
	}
}

// diffRows describes how got differs from want (at most a few keys).
func diffRows(got, want map[string]string) string {
	var d []string
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if g, ok := got[k]; !ok {
			d = append(d, fmt.Sprintf("missing %q", k))
		} else if g != want[k] {
			d = append(d, fmt.Sprintf("%q=%.16x, want %.16x", k, g, want[k]))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(got)) {
		if _, ok := want[k]; !ok {
			d = append(d, fmt.Sprintf("extra %q", k))
		}
	}
	if len(d) == 0 {
		return ""
	}
	return fmt.Sprintf("%d rows, want %d: %s", len(got), len(want), strings.Join(d[:min(len(d), 8)], ", "))
}

// scanAll reads every row of a replica or an owned table.
func scanAll(t testing.TB, scan func([]byte, func(k, v []byte) bool) (uint64, error)) (map[string]string, uint64) {
	t.Helper()
	m := map[string]string{}
	seq, err := scan(nil, func(k, v []byte) bool { m[string(k)] = string(v); return true })
	if err != nil {
		t.Fatal(err)
	}
	return m, seq
}

// ---- a random workload ----

// workload writes random Puts, Deletes and multi-key Applies from several
// goroutines and records what was acknowledged. A write that fails with
// ErrClosed (the owner is restarting) is not recorded, since ErrClosed
// promises it was not committed; the writer waits for setTable and retries.
type workload struct {
	t     testing.TB
	hist  *history
	keys  int
	quit  chan struct{}
	wg    sync.WaitGroup
	acked atomic.Int64

	mu      sync.Mutex
	tbl     *OwnedTable
	swapped chan struct{} // closed when tbl is replaced
	stopped bool
}

// startWorkload starts writers goroutines, each writing ops writes (0:
// until stop), over a space of keys keys.
func startWorkload(t testing.TB, tbl *OwnedTable, hist *history, seed uint64, writers, ops, keys int) *workload {
	w := &workload{t: t, hist: hist, keys: keys, quit: make(chan struct{}), tbl: tbl, swapped: make(chan struct{})}
	for id := range writers {
		w.wg.Add(1)
		go w.writer(id, rand.New(rand.NewPCG(seed, uint64(id))), ops)
	}
	t.Cleanup(w.stop)
	return w
}

func (w *workload) table() (*OwnedTable, chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.tbl, w.swapped
}

// setTable points the writers at a reopened owner's table.
func (w *workload) setTable(tbl *OwnedTable) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.tbl = tbl
	close(w.swapped)
	w.swapped = make(chan struct{})
}

// stop makes the writers finish their current write and waits for them.
func (w *workload) stop() {
	w.mu.Lock()
	if !w.stopped {
		w.stopped = true
		close(w.quit)
	}
	w.mu.Unlock()
	w.wg.Wait()
}

// wait waits for writers with a finite number of writes to finish.
func (w *workload) wait() { w.wg.Wait() }

// progress waits until n more writes than now are acknowledged.
func (w *workload) progress(t testing.TB, n int64) {
	t.Helper()
	target := w.acked.Load() + n
	waitUntil(t, 60*time.Second, fmt.Sprintf("%d acknowledged writes", target), func() bool { return w.acked.Load() >= target })
}

func (w *workload) writer(id int, rng *rand.Rand, ops int) {
	defer w.wg.Done()
	// No deadline that could cut a write short: a write cut short has an
	// unknown fate and could not be recorded.
	ctx := context.Background()
	for i := 0; ops == 0 || i < ops; i++ {
		select {
		case <-w.quit:
			return
		default:
		}
		ws := randomWrites(rng, w.keys)
		for {
			tbl, swapped := w.table()
			seq, err := tbl.Apply(ctx, ws...)
			if err == nil {
				w.hist.record(seq, ws)
				w.acked.Add(1)
				break
			}
			if !errors.Is(err, ErrClosed) {
				w.t.Errorf("writer %d: apply: %v", id, err)
				return
			}
			select {
			case <-swapped:
			case <-w.quit:
				return
			}
		}
	}
}

// randomWrites returns a Put, a Delete, or an Apply of 2-6 writes (which
// may touch one key twice), over keys keys with values of 0-160 bytes.
func randomWrites(rng *rand.Rand, keys int) []Write {
	one := func() Write {
		key := fmt.Appendf(nil, "k%04d", rng.IntN(keys))
		if rng.IntN(4) == 0 {
			return Write{Key: key, Delete: true}
		}
		v := make([]byte, rng.IntN(161))
		for i := range v {
			v[i] = byte(rng.Uint32())
		}
		return Write{Key: key, Value: v}
	}
	switch n := rng.IntN(10); {
	case n < 7:
		return []Write{one()}
	default:
		ws := make([]Write, 2+rng.IntN(5))
		for i := range ws {
			ws[i] = one()
		}
		return ws
	}
}

// ---- OnChange checking ----

// eventChecker follows a replica's OnChange events: seqs must continue the
// replica's seq with no gap and no duplicate, an event never ends inside a
// commit group, and the rows it rebuilds (a Scan on each full transfer,
// then the changes) must equal the replica's. It carries over a consumer
// restart: the reopened replica must continue where the events stopped.
type eventChecker struct {
	name string

	mu      sync.Mutex
	r       *Replica
	known   bool   // last and rows describe the replica
	last    uint64 // seq of the last event
	rows    map[string]string
	resets  []uint64 // seqs of the full transfers seen
	changes int
	rewind  bool // the next full transfer may go back (AcceptNewHistory)
	rescan  bool // rows must be re-read from the reopened replica
	errs    []string
}

func newEventChecker(name string) *eventChecker { return &eventChecker{name: name} }

func (c *eventChecker) failf(format string, args ...any) {
	if len(c.errs) < 10 {
		c.errs = append(c.errs, fmt.Sprintf(format, args...))
	}
}

// attach starts following r, before r can receive anything. A reopened
// replica must start where the events of the previous one stopped.
func (c *eventChecker) attach(r *Replica) {
	c.mu.Lock()
	c.r = r
	if c.known && r.Seq() != c.last {
		c.failf("reopened at seq %d, but the last event before the restart was at %d", r.Seq(), c.last)
	}
	if c.rescan {
		// The last transfer completed while its component was closing, too
		// late for a Scan; the reopened replica holds exactly its rows.
		c.rescan = false
		c.rows = map[string]string{}
		seq, err := r.Scan(nil, func(k, v []byte) bool { c.rows[string(k)] = string(v); return true })
		if err != nil || seq != c.last {
			c.failf("rescan of the reopened replica: seq %d, %v; want seq %d", seq, err, c.last)
		}
	}
	c.mu.Unlock()
	r.OnChange(c.on)
}

// allowRewind lets the next full transfer move the replica back (a new,
// shorter history was accepted).
func (c *eventChecker) allowRewind() {
	c.mu.Lock()
	c.rewind = true
	c.mu.Unlock()
}

func (c *eventChecker) on(e Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e.Reset {
		if len(e.Changes) != 0 {
			c.failf("reset event at %d carries %d changes", e.Seq, len(e.Changes))
		}
		if c.known && e.Seq < c.last && !c.rewind {
			c.failf("full transfer went back from seq %d to %d", c.last, e.Seq)
		}
		c.rewind = false
		// The replica applies nothing until this callback returns, so a
		// Scan here sees exactly the transferred state.
		rows := map[string]string{}
		seq, err := c.r.Scan(nil, func(k, v []byte) bool { rows[string(k)] = string(v); return true })
		switch {
		case errors.Is(err, ErrClosed):
			// The component is closing (reads fail from then on); the rows
			// are read back when the replica is reopened.
			c.rescan = true
		case err != nil:
			c.failf("scan in the reset callback: %v", err)
		case seq != e.Seq:
			c.failf("scan in the reset callback of seq %d returned seq %d", e.Seq, seq)
		}
		c.rows, c.last, c.known = rows, e.Seq, true
		c.resets = append(c.resets, e.Seq)
		return
	}
	if !c.known {
		c.failf("changes from seq %d before any full copy", firstSeq(e.Changes))
		return
	}
	if len(e.Changes) == 0 {
		c.failf("empty change event at seq %d", e.Seq)
		return
	}
	if c.rescan {
		c.failf("changes from seq %d after a transfer during Close", firstSeq(e.Changes))
	}
	for _, ch := range e.Changes {
		if ch.Seq != c.last+1 {
			c.failf("change seq %d after %d (a gap or a duplicate)", ch.Seq, c.last)
		}
		c.last = ch.Seq
		applyToModel(c.rows, ch)
		c.changes++
	}
	if !e.Changes[len(e.Changes)-1].TxnEnd {
		c.failf("event at seq %d ends inside a commit group", e.Seq)
	}
	if e.Seq != c.last {
		c.failf("event says seq %d, its last change is %d", e.Seq, c.last)
	}
}

func firstSeq(chs []Change) uint64 {
	if len(chs) == 0 {
		return 0
	}
	return chs[0].Seq
}

// check verifies that the events reached head and rebuilt want.
//
// A replica publishes its seq before it calls OnChange (the callback runs
// after the apply, outside the replica's lock), so a replica at head may
// not have delivered the events up to it yet: they are waited for, up to a
// deadline, before the checks.
func (c *eventChecker) check(t testing.TB, head uint64, want map[string]string) {
	t.Helper()
	delivered := func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return len(c.errs) > 0 || (c.known && !c.rescan && c.last == head)
	}
	for deadline := time.Now().Add(30 * time.Second); !delivered() && time.Now().Before(deadline); {
		time.Sleep(2 * time.Millisecond)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.errs) > 0 {
		t.Fatalf("%s: OnChange events: %s", c.name, strings.Join(c.errs, "; "))
	}
	if !c.known || c.rescan || c.last != head {
		t.Fatalf("%s: OnChange events reached seq %d (known %v), owner head %d", c.name, c.last, c.known, head)
	}
	if d := diffRows(c.rows, want); d != "" {
		t.Fatalf("%s: rows rebuilt from OnChange events differ from the model: %s", c.name, d)
	}
}

// ---- consumers ----

// consumer is one consumer component with one replica of the test table,
// reached through its own proxy, or on a memNet (newMemConsumer).
type consumer struct {
	name string
	dir  string // "" in memory
	px   *faultproxy.Proxy
	// mem and owner, without px: the consumer is on mem and subscribes to
	// owner directly.
	mem   *memNet
	owner string
	c     *Component
	r     *Replica
	chk   *eventChecker
	// tweak, when set, adjusts the consumer's config.
	tweak func(*Config)
}

func newConsumer(t testing.TB, name, dir, ownerAddr string) *consumer {
	cs := &consumer{name: name, dir: dir, px: newProxy(t, ownerAddr), chk: newEventChecker(name)}
	t.Cleanup(func() {
		if cs.c != nil {
			_ = cs.c.Close()
		}
	})
	return cs
}

// newMemConsumer is a consumer on mem, with no proxy, for the tests that
// need no faults on its stream.
func newMemConsumer(t testing.TB, mem *memNet, name, dir, ownerAddr string) *consumer {
	cs := &consumer{name: name, dir: dir, mem: mem, owner: ownerAddr, chk: newEventChecker(name)}
	t.Cleanup(func() {
		if cs.c != nil {
			_ = cs.c.Close()
		}
	})
	return cs
}

// open opens the consumer's component and subscribes to the test table. The
// proxy is paused meanwhile (on a memNet, the stream waits), so the checker
// is attached before any frame can reach the replica.
func (cs *consumer) open(t testing.TB) {
	t.Helper()
	if cs.px == nil {
		cs.openMem(t)
		return
	}
	cs.c = openWith(t, "products", cs.name, cs.dir, "", cs.tweak)
	if !cs.px.Paused() { // else the caller holds the proxy and resumes it
		cs.px.Pause()
		defer cs.px.Resume()
	}
	r, err := cs.c.Subscribe(context.Background(), SubscribeOptions{Service: itOwner, Table: itTable, Addr: cs.px.Addr()})
	if err != nil {
		t.Fatalf("%s: subscribe: %v", cs.name, err)
	}
	cs.r = r
	cs.chk.attach(r)
}

// openMem is open on a memNet: the consumer's streams wait for the
// checker as they wait for a paused proxy.
func (cs *consumer) openMem(t testing.TB) {
	t.Helper()
	attached := make(chan struct{})
	hold := holdStreams(attached)
	cs.c = openWith(t, "products", cs.name, cs.dir, "", func(c *Config) {
		cs.mem.join(c)
		c.Transport.DialOptions = append(c.Transport.DialOptions, hold)
		if cs.tweak != nil {
			cs.tweak(c)
		}
	})
	defer close(attached)
	r, err := cs.c.Subscribe(context.Background(), SubscribeOptions{Service: itOwner, Table: itTable, Addr: cs.owner})
	if err != nil {
		t.Fatalf("%s: subscribe: %v", cs.name, err)
	}
	cs.r = r
	cs.chk.attach(r)
}

// holdStreams is a dial option whose streams wait until release is
// closed.
func holdStreams(release <-chan struct{}) grpc.DialOption {
	return grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn,
		method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		select {
		case <-release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return streamer(ctx, desc, cc, method, opts...)
	})
}

func (cs *consumer) close(t testing.TB) {
	t.Helper()
	mustClose(t, cs.c)
}

func (cs *consumer) stats() Stats { return cs.r.Status().Stats }

// verifyAll expects the owner to be quiet (writers stopped). It checks the
// owner's rows against the model rebuilt from hist, waits for every
// consumer to reach the owner's head, then checks each replica's Digest
// against the owner's, and its rows and OnChange events against the model.
func verifyAll(t testing.TB, tbl *OwnedTable, hist *history, cons ...*consumer) {
	t.Helper()
	head := tbl.Head()
	model := hist.model(t, head)
	ownerRows, seq := scanAll(t, tbl.Scan)
	if seq != head {
		t.Fatalf("owner scan at seq %d, head %d (the owner is still written)", seq, head)
	}
	if d := diffRows(ownerRows, model); d != "" {
		t.Fatalf("owner rows differ from the acknowledged writes: %s", d)
	}
	for _, cs := range cons {
		mustConverge(t, tbl, cs.r)
		rows, seq := scanAll(t, cs.r.Scan)
		if seq != head {
			t.Fatalf("%s: scan at seq %d after converging at %d", cs.name, seq, head)
		}
		if d := diffRows(rows, model); d != "" {
			t.Fatalf("%s: replica rows differ from the acknowledged writes: %s", cs.name, d)
		}
		cs.chk.check(t, head, model)
	}
}

// waitStreaming waits until every consumer follows the change stream.
func waitStreaming(t testing.TB, cons ...*consumer) {
	t.Helper()
	for _, cs := range cons {
		waitUntil(t, 30*time.Second, cs.name+" streaming", func() bool { return cs.r.Status().State == StateStreaming })
	}
}

// ---- the tests ----

func TestIntegration_RandomWorkload(t *testing.T) {
	seed := itSeed(t)
	var mem memNet
	owner := mem.open(t, itOwner, "s1", t.TempDir())
	defer mustClose(t, owner)
	tbl := mustOwn(t, owner)
	hist := newHistory()
	cons := []*consumer{
		newMemConsumer(t, &mem, "c1", t.TempDir(), owner.Addr()),
		newMemConsumer(t, &mem, "c2", "", owner.Addr()),
		newMemConsumer(t, &mem, "c3", t.TempDir(), owner.Addr()),
	}
	const writers, ops = 4, 400
	cons[0].open(t) // before any write
	w := startWorkload(t, tbl, hist, seed, writers, ops, 300)
	w.progress(t, writers*ops/2)
	cons[1].open(t) // mid-way
	w.wait()
	cons[2].open(t) // at the end
	verifyAll(t, tbl, hist, cons...)
	for _, cs := range cons {
		st := cs.stats()
		if st.FullTransfers != 1 || st.Resumes != 0 {
			t.Errorf("%s: %d full transfers and %d resumes, want 1 and 0", cs.name, st.FullTransfers, st.Resumes)
		}
		t.Logf("%s: transfers at seqs %v, %d changes applied", cs.name, cs.chk.resets, cs.chk.changes)
	}
	if got := cons[2].chk.resets; len(got) != 1 || got[0] != tbl.Head() {
		t.Errorf("c3 subscribed after the writes: transfers at %v, want one at %d", got, tbl.Head())
	}
}

func TestIntegration_ConsumerRestart(t *testing.T) {
	seed := itSeed(t)
	owner := openComponent(t, itOwner, "s1", t.TempDir(), "")
	defer mustClose(t, owner)
	tbl := mustOwn(t, owner)
	hist := newHistory()
	cons := []*consumer{
		newConsumer(t, "c1", t.TempDir(), owner.Addr()),
		newConsumer(t, "c2", t.TempDir(), owner.Addr()),
		newConsumer(t, "c3", "", owner.Addr()), // never restarted
	}
	for _, cs := range cons {
		cs.open(t)
	}
	waitStreaming(t, cons...)
	w := startWorkload(t, tbl, hist, seed, 3, 0, 200)
	for range 3 {
		for _, cs := range cons[:2] {
			w.progress(t, 30)
			cs.close(t)
			closedAt := cs.r.Seq()
			w.progress(t, 50) // written while the consumer is down
			cs.open(t)
			if got := cs.r.Seq(); got != closedAt {
				t.Fatalf("%s reopened at seq %d, closed at %d", cs.name, got, closedAt)
			}
			waitUntil(t, 30*time.Second, cs.name+" resuming", func() bool { return cs.stats().Resumes >= 1 })
			if st := cs.stats(); st.FullTransfers != 0 {
				t.Fatalf("%s took a full transfer after a restart: %+v", cs.name, st)
			}
		}
	}
	w.stop()
	verifyAll(t, tbl, hist, cons...)
	for _, cs := range cons[:2] {
		if st := cs.stats(); st.FullTransfers != 0 || st.Resumes < 1 {
			t.Errorf("%s after a restart: %d full transfers, %d resumes; want 0 and at least 1", cs.name, st.FullTransfers, st.Resumes)
		}
	}
}

func TestIntegration_OwnerRestart(t *testing.T) {
	seed := itSeed(t)
	dir := t.TempDir()
	owner := openComponent(t, itOwner, "s1", dir, freeAddr(t)) // restarted on it
	addr := owner.Addr()
	t.Cleanup(func() { _ = owner.Close() })
	tbl := mustOwn(t, owner)
	hist := newHistory()
	cons := []*consumer{
		newConsumer(t, "c1", t.TempDir(), addr),
		newConsumer(t, "c2", "", addr),
		newConsumer(t, "c3", t.TempDir(), addr),
	}
	for _, cs := range cons {
		cs.open(t)
	}
	// The writers keep writing while the owner goes down and comes back.
	w := startWorkload(t, tbl, hist, seed, 3, 0, 200)
	for round := range 2 {
		w.progress(t, 100)
		waitStreaming(t, cons...)
		logID := tbl.LogID()
		mustClose(t, owner)
		head := tbl.Head()
		for _, cs := range cons {
			waitUntil(t, 30*time.Second, cs.name+" to lose the owner", func() bool { return cs.r.Status().State != StateStreaming })
			// The replica keeps serving reads while its owner is down.
			if _, err := cs.r.Digest(nil, nil); err != nil {
				t.Fatalf("%s: digest while the owner is down: %v", cs.name, err)
			}
		}
		owner = openComponent(t, itOwner, "s1", dir, addr)
		if owner.Addr() != addr {
			t.Fatalf("owner reopened at %s, want %s", owner.Addr(), addr)
		}
		tbl = mustOwn(t, owner)
		if tbl.LogID() != logID || tbl.Head() != head {
			t.Fatalf("owner reopened with log %s head %d, was log %s head %d", tbl.LogID(), tbl.Head(), logID, head)
		}
		w.setTable(tbl)
		for _, cs := range cons {
			waitUntil(t, 30*time.Second, cs.name+" resuming", func() bool { return cs.stats().Resumes >= uint64(round+1) })
		}
	}
	w.progress(t, 100)
	w.stop()
	verifyAll(t, tbl, hist, cons...)
	for _, cs := range cons {
		if st := cs.stats(); st.FullTransfers != 1 || st.Resumes < 2 {
			t.Errorf("%s: %d full transfers, %d resumes; want 1 (the first) and at least 2", cs.name, st.FullTransfers, st.Resumes)
		}
	}
}

func TestIntegration_BrokenStreams(t *testing.T) {
	seed := itSeed(t)
	owner := openComponent(t, itOwner, "s1", t.TempDir(), "")
	defer mustClose(t, owner)
	tbl := mustOwn(t, owner)
	hist := newHistory()
	cons := []*consumer{
		newConsumer(t, "c1", t.TempDir(), owner.Addr()),
		newConsumer(t, "c2", "", owner.Addr()),
		newConsumer(t, "c3", t.TempDir(), owner.Addr()),
	}
	for _, cs := range cons {
		// A short silence limit, for the blackhole below (the owner
		// heartbeats every 100 ms).
		cs.tweak = func(c *Config) { c.PeerTimeout = 500 * time.Millisecond }
		cs.open(t)
	}
	w := startWorkload(t, tbl, hist, seed, 3, 0, 200)
	const cuts = 5
	for range cuts {
		w.progress(t, 50)
		waitStreaming(t, cons...)
		resumes := make([]uint64, len(cons))
		for i, cs := range cons {
			resumes[i] = cs.stats().Resumes
			cs.px.CutAll()
		}
		for i, cs := range cons {
			waitUntil(t, 30*time.Second, cs.name+" resuming after the cut", func() bool { return cs.stats().Resumes > resumes[i] })
		}
	}
	// A blackhole: the links stay open but carry nothing, so only the
	// consumers' silence watchdog can notice. After it fires, the links
	// come back and the consumers resume.
	w.progress(t, 50)
	waitStreaming(t, cons...)
	resumes := make([]uint64, len(cons))
	for i, cs := range cons {
		resumes[i] = cs.stats().Resumes
		cs.px.Pause()
	}
	for _, cs := range cons {
		waitUntil(t, 30*time.Second, cs.name+" to give up the silent stream", func() bool { return cs.r.Status().State != StateStreaming })
		if _, _, err := cs.r.Get([]byte("k0000")); err != nil {
			t.Fatalf("%s: read while cut off: %v", cs.name, err)
		}
	}
	for _, cs := range cons {
		cs.px.Resume()
	}
	for i, cs := range cons {
		waitUntil(t, 30*time.Second, cs.name+" resuming after the blackhole", func() bool { return cs.stats().Resumes > resumes[i] })
	}
	w.progress(t, 50)
	w.stop()
	verifyAll(t, tbl, hist, cons...)
	for _, cs := range cons {
		st := cs.stats()
		if st.FullTransfers != 1 || st.Resumes < cuts+1 || st.Reconnects < cuts+1 {
			t.Errorf("%s: %d full transfers, %d resumes, %d reconnects; want 1, and at least %d resumes and reconnects",
				cs.name, st.FullTransfers, st.Resumes, st.Reconnects, cuts+1)
		}
	}
}

func TestIntegration_TrimmedLog(t *testing.T) {
	seed := itSeed(t)
	owner := openWith(t, itOwner, "s1", t.TempDir(), "", func(c *Config) {
		c.Retention = Retention{MaxChanges: 50}
		c.TrimInterval = 20 * time.Millisecond
	})
	defer mustClose(t, owner)
	tbl := mustOwn(t, owner)
	hist := newHistory()
	cs := newConsumer(t, "c1", t.TempDir(), owner.Addr())
	cs.open(t)
	// (A consumer that falls more than 50 changes behind while online
	// also takes a full transfer: that is allowed here.)
	w := startWorkload(t, tbl, hist, seed, 2, 100, 100)
	w.wait()
	verifyAll(t, tbl, hist, cs)
	oldGen := replicaGen(cs.r)
	cs.close(t)
	closedAt := cs.r.Seq()

	w = startWorkload(t, tbl, hist, seed+1, 2, 100, 100)
	w.wait()
	waitUntil(t, 30*time.Second, "the log to be trimmed past the consumer", func() bool { return logFirst(tbl) > closedAt+1 })

	transfers := len(cs.chk.resets)
	cs.open(t)
	verifyAll(t, tbl, hist, cs)
	if st := cs.stats(); st.FullTransfers != 1 || st.Resumes != 0 {
		t.Errorf("behind the trim point: %d full transfers, %d resumes; want 1 and 0", st.FullTransfers, st.Resumes)
	}
	if got := cs.chk.resets; len(got) != transfers+1 || got[transfers] <= closedAt {
		t.Errorf("full transfers at seqs %v, want one more past %d after the reopen", got, closedAt)
	}
	// The replaced generation is deleted in the background.
	if newGen := replicaGen(cs.r); newGen == oldGen {
		t.Fatalf("the transfer reused generation %d", oldGen)
	}
	waitUntil(t, 30*time.Second, "the old generation to be deleted", func() bool {
		return countKeys(t, cs.c, genPrefix(cs.r.base, oldGen)) == 0
	})
}

func replicaGen(r *Replica) uint64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.cur.Gen
}

func countKeys(t testing.TB, c *Component, prefix []byte) int {
	t.Helper()
	n := 0
	err := c.db.View(func(txn *badger.Txn) error {
		o := badger.DefaultIteratorOptions
		o.Prefix = prefix
		o.PrefetchValues = false
		it := txn.NewIterator(o)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestIntegration_OwnerLostDisk(t *testing.T) {
	seed := itSeed(t)
	owner := openComponent(t, itOwner, "s1", t.TempDir(), "")
	addr := owner.Addr()
	t.Cleanup(func() { _ = owner.Close() })
	tbl := mustOwn(t, owner)
	histA := newHistory()
	cs := newConsumer(t, "c1", t.TempDir(), addr)
	cs.open(t)
	startWorkload(t, tbl, histA, seed, 2, 100, 100).wait()
	verifyAll(t, tbl, histA, cs)
	logA, headA := tbl.LogID(), tbl.Head()
	modelA := histA.model(t, headA)

	// The owner comes back on the same address with an empty disk: a new
	// history, shorter than the replica's.
	mustClose(t, owner)
	owner = openComponent(t, itOwner, "s1", t.TempDir(), addr)
	tbl = mustOwn(t, owner)
	histB := newHistory()
	startWorkload(t, tbl, histB, seed+1, 1, 20, 100).wait()
	logB, headB := tbl.LogID(), tbl.Head()
	if logB == logA || headB >= headA {
		t.Fatalf("new history: log %s head %d; old: log %s head %d", logB, headB, logA, headA)
	}

	// The replica may have met the new owner before its writes (head 0)
	// and keeps trying: wait for the report of the owner as it is now.
	var de *DivergedError
	waitUntil(t, 30*time.Second, "the replica to report the divergence", func() bool {
		st := cs.r.Status()
		return st.State == StateDiverged && errors.As(st.LastErr, &de) && de.OwnerHead == headB
	})
	if !errors.Is(cs.r.Status().LastErr, ErrDiverged) {
		t.Errorf("LastErr %v does not wrap ErrDiverged", cs.r.Status().LastErr)
	}
	if de.ReplicaLogID != logA || de.ReplicaSeq != headA || de.OwnerLogID != logB || de.OwnerHead != headB {
		t.Errorf("DivergedError %+v, want replica %s@%d, owner %s@%d", *de, logA, headA, logB, headB)
	}
	// The replica keeps serving the old history, and keeps waiting: it is
	// still diverged after several more attempts.
	reconnects := cs.stats().Reconnects
	waitUntil(t, 30*time.Second, "more reconnect attempts", func() bool { return cs.stats().Reconnects >= reconnects+3 })
	if st := cs.r.Status(); st.State != StateDiverged || st.Seq != headA || st.LogID != logA || st.Stats.FullTransfers != 1 {
		t.Fatalf("status while diverged: %+v", st)
	}
	if rows, seq := scanAll(t, cs.r.Scan); seq != headA || diffRows(rows, modelA) != "" {
		t.Fatalf("replica while diverged at seq %d: %s", seq, diffRows(rows, modelA))
	}
	for k, v := range modelA {
		got, ok, err := cs.r.Get([]byte(k))
		if err != nil || !ok || string(got) != v {
			t.Fatalf("Get(%q) while diverged = %x, %v, %v; want %x", k, got, ok, err, v)
		}
	}

	// The operator accepts the new history: a full transfer replaces the
	// replica.
	cs.chk.allowRewind()
	cs.r.AcceptNewHistory()
	waitUntil(t, 30*time.Second, "the transfer of the new history", func() bool { return cs.stats().FullTransfers == 2 })
	verifyAll(t, tbl, histB, cs)
	if st := cs.r.Status(); st.State != StateStreaming || st.LogID != logB {
		t.Errorf("after accepting: state %s, log %s; want streaming on %s", st.State, st.LogID, logB)
	}
	// Further writes of the new history flow as usual.
	startWorkload(t, tbl, histB, seed+2, 1, 20, 100).wait()
	verifyAll(t, tbl, histB, cs)
}

// tableState is a replica's contents as a reader saw them.
type tableState struct {
	seq  uint64
	rows uint64
	hash []byte
}

func (s tableState) String() string {
	return fmt.Sprintf("seq %d, %d rows, %.8x", s.seq, s.rows, s.hash)
}

func (s tableState) equal(o tableState) bool {
	return s.seq == o.seq && s.rows == o.rows && bytes.Equal(s.hash, o.hash)
}

// readStates reads r by Digest and by Scan (hashing the rows the same way).
func readStates(r *Replica) (byDigest, byScan tableState, err error) {
	d, err := r.Digest(nil, nil)
	if err != nil {
		return byDigest, byScan, err
	}
	byDigest = tableState{d.Seq, d.Rows, d.Hash}
	h := newDigester()
	seq, err := r.Scan(nil, func(k, v []byte) bool { h.add(k, v); return true })
	if err != nil {
		return byDigest, byScan, err
	}
	sd := h.result("", seq)
	return byDigest, tableState{sd.Seq, sd.Rows, sd.Hash}, nil
}

func TestIntegration_TransferAtomicForReaders(t *testing.T) {
	const valueSize = 300
	rows := 20_000
	if testing.Short() {
		rows = 5_000
	}
	// Small messages make the transfer many chunks; a small log makes the
	// second transfer necessary; a small memtable makes the staged rows
	// reach badger while the transfer is still going on.
	owner := openWith(t, itOwner, "s1", t.TempDir(), "", func(c *Config) {
		c.Transport.MaxMessageSize = 256 << 10
		c.MaxApplyBytes = 64 << 10
		c.Retention = Retention{MaxChanges: 1000}
		c.TrimInterval = 20 * time.Millisecond
	})
	defer mustClose(t, owner)
	tbl := mustOwn(t, owner)
	ctx := ctxT(t, 2*time.Minute)
	value := func(i, version int) []byte {
		v := bytes.Repeat([]byte{byte(version)}, valueSize)
		copy(v, fmt.Appendf(nil, "%d/%d", i, version))
		return v
	}
	write := func(ws []Write) {
		for len(ws) > 0 {
			n := min(len(ws), 150)
			if _, err := tbl.Apply(ctx, ws[:n]...); err != nil {
				t.Fatal(err)
			}
			ws = ws[n:]
		}
	}
	var ws []Write
	for i := range rows {
		ws = append(ws, Write{Key: fmt.Appendf(nil, "row%06d", i), Value: value(i, 1)})
	}
	write(ws)

	cs := newConsumer(t, "c1", t.TempDir(), owner.Addr())
	cs.tweak = func(c *Config) {
		c.MemTableSize = 2 << 20 // badger commits a staged batch every ~300 KB
		c.MaxGroupBytes = 64 << 10
		c.MaxApplyBytes = 64 << 10
	}
	cs.open(t)
	mustConverge(t, tbl, cs.r)
	oldState, _, err := readStates(cs.r)
	if err != nil {
		t.Fatal(err)
	}
	oldGen := replicaGen(cs.r)
	cs.close(t)

	// While the consumer is down the owner rewrites half the rows, deletes
	// a fifth, adds a tenth, and trims its log past the consumer.
	ws = ws[:0]
	for i := range rows {
		switch {
		case i%5 == 1:
			ws = append(ws, Write{Key: fmt.Appendf(nil, "row%06d", i), Delete: true})
		case i%2 == 0:
			ws = append(ws, Write{Key: fmt.Appendf(nil, "row%06d", i), Value: value(i, 2)})
		}
	}
	for i := rows; i < rows+rows/10; i++ {
		ws = append(ws, Write{Key: fmt.Appendf(nil, "row%06d", i), Value: value(i, 2)})
	}
	write(ws)
	waitUntil(t, 30*time.Second, "the log to be trimmed past the consumer", func() bool { return logFirst(tbl) > oldState.seq+1 })
	d, err := tbl.Digest(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	newState := tableState{d.Seq, d.Rows, d.Hash}
	t.Logf("old state: %v; new state: %v", oldState, newState)

	// A reader runs from the moment the replica is reopened until after the
	// transfer: each read must see the whole old state or the whole new one.
	cs.px.Pause() // held until the reader runs
	cs.open(t)
	var (
		stop           = make(chan struct{})
		readerDone     = make(chan struct{})
		sawOld, sawNew atomic.Int64
		readErr        error // set by the reader before readerDone
	)
	check := func(who string, s tableState, newSeen *bool) error {
		switch {
		case s.equal(oldState):
			if *newSeen {
				return fmt.Errorf("%s saw the old state after the new one", who)
			}
			sawOld.Add(1)
		case s.equal(newState):
			*newSeen = true
			sawNew.Add(1)
		default:
			return fmt.Errorf("%s saw %v, neither the old state (%v) nor the new one (%v)", who, s, oldState, newState)
		}
		return nil
	}
	go func() {
		defer close(readerDone)
		newSeen := false
		for {
			select {
			case <-stop:
				return
			default:
			}
			byDigest, byScan, err := readStates(cs.r)
			if err == nil {
				err = check("Digest", byDigest, &newSeen)
			}
			if err == nil {
				err = check("Scan", byScan, &newSeen)
			}
			if err != nil {
				readErr = err
				return
			}
		}
	}()
	stopReaders := func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		<-readerDone
	}
	t.Cleanup(stopReaders)
	cs.px.Resume()

	// Hold the transfer half-way, with staged rows in badger, and read.
	waitUntil(t, 60*time.Second, "half of the transfer", func() bool { return cs.stats().SnapshotRows >= newState.rows/2 })
	cs.px.Pause()
	if st := cs.r.Status(); st.State != StateTransferring || st.Stats.FullTransfers != 0 {
		t.Fatalf("the transfer was not held half-way: %+v", st)
	}
	// Rows of the new state are staged on the consumer's disk (in badger,
	// or for a resident replica in the staged generation's rows file,
	// bulkgen.go), so a read that mixed would show them.
	waitUntil(t, 30*time.Second, "transferred rows staged on disk", func() bool {
		n := 0
		err := cs.c.db.View(func(txn *badger.Txn) error {
			err := scanRows(txn, []byte(cs.r.base), nil, nil, nil, func(_, v []byte) (bool, error) {
				if len(v) == valueSize && v[valueSize-1] == 2 {
					n++
				}
				return n == 0, nil
			})
			if err != nil || n > 0 {
				return err
			}
			stage, err := readStage(txn, cs.r.base)
			if err != nil || stage == 0 {
				return err
			}
			b, err := os.ReadFile(cs.c.bulkPath(genPrefix(cs.r.base, stage)))
			if err == nil && bytes.Contains(b, bytes.Repeat([]byte{2}, valueSize/2)) {
				n++
			}
			return nil
		})
		return err == nil && n > 0
	})
	var stageGen uint64
	if err := cs.c.db.View(func(txn *badger.Txn) (err error) { stageGen, err = readStage(txn, cs.r.base); return err }); err != nil {
		t.Fatal(err)
	}
	newSeen := false
	for range 2 {
		byDigest, byScan, err := readStates(cs.r)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range []tableState{byDigest, byScan} {
			if err := check("a read during the transfer", s, &newSeen); err != nil || newSeen {
				t.Fatalf("%v (new seen: %v)", err, newSeen)
			}
		}
	}

	// Break the held transfer: the replica starts a new one, and the
	// abandoned staged rows are deleted.
	reconnects := cs.stats().Reconnects
	cs.px.CutAll()
	cs.px.Resume()
	waitUntil(t, 30*time.Second, "the reconnect after the cut", func() bool { return cs.stats().Reconnects > reconnects })
	waitUntil(t, 60*time.Second, "the transfer to complete", func() bool { return cs.stats().FullTransfers == 1 })
	// Let the reader see the new state a few times before stopping it.
	seen := sawNew.Load()
	waitUntil(t, 30*time.Second, "reads of the new state", func() bool {
		select {
		case <-readerDone: // it failed; readErr says why
			return true
		default:
			return sawNew.Load() >= seen+4
		}
	})
	stopReaders()
	if readErr != nil {
		t.Fatal(readErr)
	}
	if sawOld.Load() == 0 || sawNew.Load() == 0 {
		t.Fatalf("the reader saw the old state %d times and the new one %d times; want both", sawOld.Load(), sawNew.Load())
	}
	t.Logf("the reader saw the old state %d times, the new one %d times", sawOld.Load(), sawNew.Load())
	mustConverge(t, tbl, cs.r)
	for _, gen := range []uint64{oldGen, stageGen} {
		waitUntil(t, 30*time.Second, fmt.Sprintf("generation %d to be deleted", gen), func() bool {
			return countKeys(t, cs.c, genPrefix(cs.r.base, gen)) == 0
		})
	}
}

// TestIntegration_ReadsAtOneSeq checks that a replica's Scan and Digest
// return the seq of the rows they read, while changes stream in: the owner
// writes key "n" = seq (one change per commit), so the row a reader sees
// must name the seq the read reports.
func TestIntegration_ReadsAtOneSeq(t *testing.T) {
	var mem memNet
	owner := mem.open(t, itOwner, "s1", "")
	defer mustClose(t, owner)
	tbl := mustOwn(t, owner)
	cs := newMemConsumer(t, &mem, "c1", "", owner.Addr())
	cs.open(t)
	ctx := ctxT(t, time.Minute)
	const writes = 2000
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 1; i <= writes; i++ {
			seq, err := tbl.Put(ctx, []byte("n"), strconv.AppendUint(nil, uint64(i), 10))
			if err != nil || seq != uint64(i) {
				t.Errorf("put %d: seq %d, %v", i, seq, err)
				return
			}
		}
	}()
	var reads, mismatches int
	check := func(how string, seq uint64, v []byte) {
		reads++
		if seq == 0 && v == nil {
			return
		}
		if got, _ := strconv.ParseUint(string(v), 10, 64); got != seq {
			mismatches++
			if mismatches <= 5 {
				t.Errorf("%s reported seq %d, but its row was written at seq %d", how, seq, got)
			}
		}
	}
	for cs.r.Seq() < writes {
		var v []byte
		seq, err := cs.r.Scan(nil, func(_, val []byte) bool { v = bytes.Clone(val); return true })
		if err != nil {
			t.Fatal(err)
		}
		check("Scan", seq, v)
		d, err := cs.r.Digest(nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		want := newDigester()
		if d.Seq > 0 {
			want.add([]byte("n"), strconv.AppendUint(nil, d.Seq, 10))
		}
		if w := want.result(d.LogID, d.Seq); !bytes.Equal(w.Hash, d.Hash) {
			mismatches++
			if mismatches <= 5 {
				t.Errorf("Digest reported seq %d, but its hash is not that of the row written at seq %d", d.Seq, d.Seq)
			}
		}
		reads++
		if t.Failed() {
			break
		}
	}
	<-done
	mustConverge(t, tbl, cs.r)
	t.Logf("%d reads, %d of them inconsistent", reads, mismatches)
}
