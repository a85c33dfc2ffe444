package replica

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
	"testing"
	"time"

	"github.com/replmesh/replmesh/transport"
)

// newTestReplica builds a Replica as Component.Subscribe does
// (loading its durable cursor and queueing an unfinished transfer for
// deletion) but does not start its stream loop: tests drive the apply path
// directly, or register OnChange before startTestReplica so that no event
// is missed.
func newTestReplica(t testing.TB, c *Component, opts SubscribeOptions) *Replica {
	t.Helper()
	key := opts.Service + "/" + opts.Table
	r := c.newReplica(opts, c.log.With("replica", key), nil)
	if err := r.load(); err != nil {
		t.Fatalf("load replica %s: %v", key, err)
	}
	r.ctx, r.cancel = context.WithCancel(c.ctx)
	return r
}

// startTestReplica registers r with its component and starts its stream
// loop, the second half of Component.Subscribe.
func startTestReplica(t testing.TB, r *Replica) {
	t.Helper()
	c := r.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		t.Fatal("start replica: component closed")
	}
	c.replicas[r.opts.Service+"/"+r.opts.Table] = r
	c.wg.Add(1)
	go r.loop()
}

// testSeed returns REPLMESH_SEED when set, else a fresh seed.
func testSeed(t testing.TB) (seed uint64, fixed bool) {
	t.Helper()
	if s := os.Getenv("REPLMESH_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("REPLMESH_SEED=%q: %v", s, err)
		}
		return v, true
	}
	return uint64(time.Now().UnixNano()), false
}

// TestReplica_ApplyProperty feeds a replica random, adversarially framed
// change streams through its real apply path (applyFrame and
// receiveSnapshot, the code Replica.runStream calls) and checks it against a
// map model after every frame: the replica always equals the owner's table
// at the seq of the last complete commit group it was given, its durable
// cursor agrees, bad frames (gaps, stale epochs, invalid changes, broken or
// inconsistent transfers) change nothing, and OnChange sees every change
// exactly once, in order.
//
// A failing run logs its seed; REPLMESH_SEED=<seed> replays exactly that run.
func TestReplica_ApplyProperty(t *testing.T) {
	seed, fixed := testSeed(t)
	rounds := 4
	if testing.Short() {
		rounds = 2
	}
	if fixed {
		rounds = 1
	}
	for i := range rounds {
		s := seed + uint64(i)
		t.Run(fmt.Sprintf("seed=%d", s), func(t *testing.T) {
			t.Logf("seed %d (replay: REPLMESH_SEED=%d go test -run 'TestReplica_ApplyProperty' ./replica)", s, s)
			// resident: rows in memory, a bulk generation and its WAL on
			// disk; diskonly: a bulk generation read through its sparse
			// index (blocks of a few rows, so that reads cross them) and
			// its overlay in badger (diskbulk.go).
			for _, diskOnly := range []bool{false, true} {
				t.Run(map[bool]string{false: "resident", true: "diskonly"}[diskOnly], func(t *testing.T) {
					runApplyProperty(t, s, diskOnly)
				})
			}
		})
	}
}

// propHistory is the owner's side of the model: every change of a table
// from seq 1 on, grouped into commit groups, and the table's contents at
// the end of every group.
type propHistory struct {
	changes []transport.Change           // changes[i].Seq == i+1
	ends    []uint64                     // group end seqs, ascending, starting with 0
	states  map[uint64]map[string]string // contents after each group end
}

func (h *propHistory) head() uint64 { return uint64(len(h.changes)) }

// boundary returns the largest group end <= seq.
func (h *propHistory) boundary(seq uint64) uint64 {
	i, found := slices.BinarySearch(h.ends, seq)
	if found {
		return seq
	}
	return h.ends[i-1]
}

// slice returns copies of the changes with seqs from..to (inclusive).
func (h *propHistory) slice(from, to uint64) []transport.Change {
	if from < 1 || to < from {
		return nil
	}
	return slices.Clone(h.changes[from-1 : to])
}

func genHistory(rng *rand.Rand, groups int) *propHistory {
	h := &propHistory{ends: []uint64{0}, states: map[uint64]map[string]string{0: {}}}
	state := map[string]string{}
	keys := 10 + rng.IntN(30)
	now := time.Now().UnixNano()
	for range groups {
		n := 1
		switch p := rng.IntN(100); {
		case p < 30:
			n = 2 + rng.IntN(6) // a multi-change Apply
		case p < 32:
			n = 20 + rng.IntN(40) // a large Apply, likely split across frames
		}
		big := rng.IntN(100) < 3 // values big enough to make apply commit in pieces
		for i := range n {
			ch := transport.Change{Seq: h.head() + 1, Op: transport.OpPut, Time: now + int64(h.head()), TxnEnd: i == n-1}
			ch.Key = fmt.Appendf(nil, "k%02d", rng.IntN(keys))
			if rng.IntN(100) < 25 {
				ch.Op = transport.OpDelete
				delete(state, string(ch.Key))
			} else {
				ch.Value = make([]byte, rng.IntN(48))
				for j := range ch.Value {
					ch.Value[j] = byte('a' + rng.IntN(26))
				}
				if big {
					ch.Value = append(bytes.Repeat(ch.Value, 300<<10/max(1, len(ch.Value))), 'z')
				}
				state[string(ch.Key)] = string(ch.Value)
			}
			h.changes = append(h.changes, ch)
		}
		h.ends = append(h.ends, h.head())
		h.states[h.head()] = maps.Clone(state)
	}
	return h
}

// propRun drives one replica through one random stream.
type propRun struct {
	t   *testing.T
	rng *rand.Rand
	h   *propHistory
	c   *Component
	r   *Replica

	// What the model expects of the replica.
	seq   uint64 // durable seq: a group end
	epoch uint64 // durable epoch
	gen   uint64 // generation holding the rows (changes only on a transfer)
	logID string
	// What the sender has delivered on the current "stream": the replica
	// holds seq and keeps the changes seq+1..pos pending.
	pos        uint64
	ownerEpoch uint64
	// bounds is the owner's epoch history: the seq where each epoch began.
	// A change's epoch is fixed by it (changes carry the epoch they were
	// written in); a bump starts the new epoch after what was delivered.
	bounds transport.EpochHistory

	// OnChange bookkeeping: the seq the events have reached.
	evSeq   uint64
	evErr   error
	events  int
	applies int // apply calls (one event each)
	counts  map[string]int
	checks  int
}

func runApplyProperty(t *testing.T, seed uint64, diskOnly bool) {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	dir := t.TempDir()
	c := openComponent(t, "products", "p1", dir, "")
	closed := false
	defer func() {
		if !closed {
			mustClose(t, c)
		}
	}()
	opts := SubscribeOptions{Service: "stores", Table: "items", Addr: "127.0.0.1:1", DiskOnly: diskOnly}
	p := &propRun{t: t, rng: rng, h: genHistory(rng, 300+rng.IntN(300)), c: c, counts: map[string]int{}}
	p.r = p.newReplica(opts)
	defer func() { p.r.cancel() }()
	p.r.OnChange(p.onEvent)

	// Start as Subscribe does on a first start: a full transfer, here at a
	// random group end of the owner's history.
	p.ownerEpoch = 1 + rng.Uint64N(3)
	p.bounds = transport.EpochHistory{{Epoch: p.ownerEpoch, Seq: 1}}
	p.logID = fmt.Sprintf("log%x", rng.Uint64())
	p.transfer(p.h.ends[rng.IntN(min(len(p.h.ends), 50))], "ok")
	p.check("initial transfer")

	for step := 0; p.pos < p.h.head() || len(p.r.pending) > 0; step++ {
		if step > 20*len(p.h.changes) {
			t.Fatalf("no progress after %d steps (seq %d, pos %d, head %d)", step, p.seq, p.pos, p.h.head())
		}
		p.step(step)
		if t.Failed() {
			return
		}
	}
	if p.seq != p.h.head() {
		t.Fatalf("replica ended at seq %d, owner head %d", p.seq, p.h.head())
	}
	t.Logf("%d changes in %d groups; steps: %v; %d events, %d apply commits", len(p.h.changes), len(p.h.ends)-1, p.counts, p.events, p.applies)

	// The cursor and rows are durable together: a restart reads them back.
	p.r.cancel()
	mustClose(t, c)
	closed = true
	c2 := openComponent(t, "products", "p1", dir, "")
	defer mustClose(t, c2)
	p.c = c2
	p.r = p.newReplica(opts)
	p.pos = p.seq
	p.check("after reopening the data dir")
	if !diskOnly {
		p.r.cancel()
		return
	}
	// A disk-only replica's bulk generation (its file and overlay) loads
	// into a resident subscription, and back.
	p.closeReplica()
	opts.DiskOnly = false
	p.r = p.newReplica(opts)
	p.check("subscribed resident after disk only")
	p.closeReplica()
	opts.DiskOnly = true
	p.r = p.newReplica(opts)
	p.check("subscribed disk only again")
	p.r.cancel()
}

// closeReplica stops p.r as Replica.stop does (no stream loop runs).
func (p *propRun) closeReplica() {
	p.r.cancel()
	if g, ok := p.r.sink.(*genStore); ok {
		g.closeWAL()
		g.closeFile()
	}
}

// newReplica is newTestReplica with, for a DiskOnly replica, the full
// database (Subscribe's) and sparse index blocks of a few rows.
func (p *propRun) newReplica(opts SubscribeOptions) *Replica {
	p.t.Helper()
	if opts.DiskOnly {
		p.c.mu.Lock()
		err := p.c.fullDBLocked()
		p.c.mu.Unlock()
		if err != nil {
			p.t.Fatalf("full database: %v", err)
		}
	}
	r := p.c.newReplica(opts, p.c.log, nil)
	if g, ok := r.sink.(*genStore); ok {
		g.blockBytes = 64
	}
	if err := r.load(); err != nil {
		p.t.Fatalf("load replica: %v", err)
	}
	r.ctx, r.cancel = context.WithCancel(p.c.ctx)
	return r
}

func (p *propRun) onEvent(e Event) {
	p.events++
	if p.evErr != nil {
		return
	}
	if e.Reset {
		if len(e.Changes) != 0 {
			p.evErr = fmt.Errorf("reset event with %d changes", len(e.Changes))
		}
		p.evSeq = e.Seq
		return
	}
	p.applies++
	if len(e.Changes) == 0 {
		p.evErr = fmt.Errorf("event at seq %d without changes", e.Seq)
		return
	}
	for i, ch := range e.Changes {
		if ch.Seq != p.evSeq+1 {
			p.evErr = fmt.Errorf("event delivers seq %d after %d (duplicate or gap)", ch.Seq, p.evSeq)
			return
		}
		if want := p.h.changes[ch.Seq-1]; ch.Op != want.Op || !bytes.Equal(ch.Key, want.Key) || !bytes.Equal(ch.Value, want.Value) {
			p.evErr = fmt.Errorf("event change %d differs from the owner's", ch.Seq)
			return
		}
		p.evSeq = ch.Seq
		if i == len(e.Changes)-1 && !ch.TxnEnd {
			p.evErr = fmt.Errorf("event ends at seq %d inside a commit group", ch.Seq)
			return
		}
	}
	if e.Seq != p.evSeq {
		p.evErr = fmt.Errorf("event seq %d, last change %d", e.Seq, p.evSeq)
	}
}

// expect is the model of applyFrame: the error class it must return, or
// the new delivered position.
func (p *propRun) expect(f *transport.OwnerFrame) (newPos uint64, wantErr error) {
	if f.Epoch < p.epoch {
		return p.pos, ErrStaleEpoch
	}
	last := p.pos
	for _, ch := range f.Changes {
		valid := len(ch.Key) > 0 && (ch.Op == transport.OpPut || ch.Op == transport.OpDelete && len(ch.Value) == 0)
		if !valid {
			return p.pos, transport.ErrBadRequest
		}
		if ch.Seq <= last {
			continue
		}
		if ch.Seq != last+1 {
			return p.pos, ErrGap
		}
		last = ch.Seq
	}
	return last, nil
}

func (p *propRun) step(step int) {
	rng, h := p.rng, p.h
	frame := func(from, to uint64) *transport.OwnerFrame {
		chs := h.slice(from, min(to, h.head()))
		for i := range chs {
			chs[i].Epoch = p.bounds.EpochOf(chs[i].Seq)
		}
		return &transport.OwnerFrame{Kind: transport.KindChanges, Epoch: p.ownerEpoch, HeadSeq: h.head(), Changes: chs}
	}
	var f *transport.OwnerFrame
	var kind string
	switch k := rng.IntN(100); {
	case k < 50 || p.pos == 0:
		kind = "next"
		f = frame(p.pos+1, p.pos+1+rng.Uint64N(12))
	case k < 58:
		kind = "resend-prefix" // a resent prefix, then new changes
		from := p.pos - min(p.pos-1, rng.Uint64N(10))
		f = frame(from, p.pos+rng.Uint64N(8))
	case k < 62:
		kind = "duplicate" // nothing new at all
		from := p.pos - min(p.pos-1, rng.Uint64N(10))
		f = frame(from, from+rng.Uint64N(p.pos-from+1))
	case k < 68:
		kind = "gap"
		if rng.IntN(2) == 0 || p.pos+3 > h.head() {
			f = frame(p.pos+2+rng.Uint64N(3), p.pos+6+rng.Uint64N(6))
		} else { // the gap is inside the frame
			f = frame(p.pos+1, p.pos+1+rng.Uint64N(4))
			skip := uint64(len(f.Changes)) + 1 + rng.Uint64N(2)
			f.Changes = append(f.Changes, h.slice(p.pos+skip+1, p.pos+skip+3)...)
		}
	case k < 73:
		kind = "stale-epoch"
		if p.epoch == 0 {
			return
		}
		f = frame(p.pos+1, p.pos+1+rng.Uint64N(12))
		f.Epoch = rng.Uint64N(p.epoch)
	case k < 78:
		kind = "invalid-change"
		f = frame(p.pos+1, p.pos+1+rng.Uint64N(6))
		if len(f.Changes) == 0 {
			return
		}
		bad := &f.Changes[rng.IntN(len(f.Changes))]
		switch rng.IntN(3) {
		case 0:
			bad.Op = transport.Op(3 + rng.IntN(250))
		case 1:
			bad.Op, bad.Value = transport.OpDelete, []byte("x")
		case 2:
			bad.Key = nil
		}
	case k < 82:
		kind = "epoch-bump" // an owner failover: later frames carry the new epoch
		p.ownerEpoch++
		for len(p.bounds) > 0 && p.bounds[len(p.bounds)-1].Seq >= p.pos+1 {
			p.bounds = p.bounds[:len(p.bounds)-1]
		}
		p.bounds = append(p.bounds, transport.EpochStart{Epoch: p.ownerEpoch, Seq: p.pos + 1})
		p.counts[kind]++
		return
	case k < 88:
		kind = "reconnect" // the stream breaks; the next one resends from the cursor
		p.reconnect()
		p.counts[kind]++
		p.check(fmt.Sprintf("step %d: reconnect", step))
		return
	case k < 92:
		kind = "transfer"
		to := h.boundary(min(p.pos+rng.Uint64N(30), h.head()))
		to = max(to, p.seq)
		mode := "ok"
		switch rng.IntN(5) {
		case 0:
			mode = "bad-end"
		case 1:
			mode = "broken"
		case 2:
			mode = "lost-rows"
		}
		p.counts[kind+"-"+mode]++
		p.transfer(to, mode)
		p.check(fmt.Sprintf("step %d: transfer to %d (%s)", step, to, mode))
		return
	default:
		kind = "next"
		f = frame(p.pos+1, p.pos+1+rng.Uint64N(3))
	}
	p.counts[kind]++

	newPos, wantErr := p.expect(f)
	oldSeq := p.seq
	commits := p.applies
	applied, err := p.r.applyFrame(f)
	if p.applies-commits > 1 {
		p.counts["frame-committed-in-pieces"]++
	}
	what := fmt.Sprintf("step %d: %s frame %s (epoch %d, replica epoch %d, pos %d)", step, kind, seqList(f.Changes), f.Epoch, p.epoch, p.pos)
	switch {
	case wantErr != nil:
		if !errors.Is(err, wantErr) {
			p.t.Fatalf("%s: err = %v, want %v", what, err, wantErr)
		}
		if applied {
			p.t.Fatalf("%s: refused frame reports applied", what)
		}
		// A refused frame ends the stream (Replica.runStream returns) and
		// the next stream resends from the cursor; what is durable and
		// readable must not have moved.
		p.reconnect()
	case err != nil:
		p.t.Fatalf("%s: unexpected error %v", what, err)
	default:
		p.pos = newPos
		p.seq = h.boundary(newPos)
		if p.seq != oldSeq {
			p.epoch = p.bounds.EpochOf(p.seq)
		}
		if applied != (p.seq != oldSeq) {
			p.t.Fatalf("%s: applied = %v, but the replica's seq went from %d to %d", what, applied, oldSeq, p.seq)
		}
	}
	p.check(what)
}

// reconnect models a new stream: Replica.runStream drops the changes waiting
// for their group's end, and the owner resends from the cursor.
func (p *propRun) reconnect() {
	p.r.pending = p.r.pending[:0]
	p.pos = p.seq
}

// transfer runs a full transfer of the owner's table at seq to through
// Replica.receiveSnapshot. mode "bad-end" ends it with a wrong seq,
// "lost-rows" drops a rows frame (its count gives it away), and "broken"
// breaks the stream half-way; each must leave the replica as it was.
func (p *propRun) transfer(to uint64, mode string) {
	rows := p.h.states[to]
	keys := slices.Sorted(maps.Keys(rows))
	snapEpoch := p.bounds.EpochOf(to) // the epoch of the snapshot's last change, as the owner sends it
	frames := []*transport.OwnerFrame{{Kind: transport.KindSnapshotBegin, Seq: to, HeadSeq: to, Epoch: snapEpoch}}
	for len(keys) > 0 || p.rng.IntN(4) == 0 {
		n := min(len(keys), p.rng.IntN(6))
		f := &transport.OwnerFrame{Kind: transport.KindRows}
		for _, k := range keys[:n] {
			f.Rows = append(f.Rows, transport.Row{Key: []byte(k), Value: []byte(rows[k])})
		}
		keys = keys[n:]
		frames = append(frames, f)
	}
	end := &transport.OwnerFrame{Kind: transport.KindSnapshotEnd, Seq: to, HeadSeq: to, Epoch: snapEpoch, Count: uint64(len(rows))}
	errBroken := errors.New("stream broken")
	var wantErr error
	switch mode {
	case "bad-end":
		end.Seq = to + 1 + p.rng.Uint64N(5)
		wantErr = transport.ErrBadRequest
	case "lost-rows":
		// A rows frame lost (or reordered behind the end) on the way: the
		// end frame's count gives it away.
		var withRows []int
		for i, f := range frames {
			if len(f.Rows) > 0 {
				withRows = append(withRows, i)
			}
		}
		if len(withRows) == 0 {
			end.Count++ // nothing to lose: the owner claims a row it never sent
		} else {
			i := withRows[p.rng.IntN(len(withRows))]
			frames = slices.Delete(frames, i, i+1)
		}
		wantErr = transport.ErrBadRequest
	case "broken":
		frames = frames[:1+p.rng.IntN(len(frames))]
		end = nil
		wantErr = errBroken
	}
	if end != nil {
		frames = append(frames, end)
	}
	recv := func() (*transport.OwnerFrame, error) {
		if len(frames) == 0 {
			return nil, errBroken
		}
		f := frames[0]
		frames = frames[1:]
		return f, nil
	}
	// A transfer starts a new stream (Replica.runStream).
	p.reconnect()
	st := &transport.Start{Version: transport.ProtocolVersion, LogID: p.logID, Epoch: p.ownerEpoch, HeadSeq: to}
	err := p.r.receiveSnapshot(recv, st)
	what := fmt.Sprintf("transfer to seq %d (%s)", to, mode)
	if wantErr != nil {
		if !errors.Is(err, wantErr) {
			p.t.Fatalf("%s: err = %v, want %v", what, err, wantErr)
		}
		return
	}
	if err != nil {
		p.t.Fatalf("%s: %v", what, err)
	}
	p.seq, p.pos, p.epoch = to, to, snapEpoch
	if p.r.cur.Gen <= p.gen {
		p.t.Fatalf("%s: the transfer went into generation %d, not a fresh one after %d", what, p.r.cur.Gen, p.gen)
	}
	p.gen = p.r.cur.Gen
	if p.r.opts.DiskOnly && !p.r.cur.Bulk {
		p.t.Fatalf("%s: a disk-only replica's transfer went into badger, not a rows file", what)
	}
}

// check compares the replica with the model.
func (p *propRun) check(what string) {
	t, r := p.t, p.r
	t.Helper()
	if p.evErr != nil {
		t.Fatalf("%s: OnChange: %v", what, p.evErr)
	}
	st := r.Status()
	if st.Seq != p.seq || r.Seq() != p.seq {
		t.Fatalf("%s: replica seq %d, want %d (the last complete group delivered)", what, st.Seq, p.seq)
	}
	if st.Epoch != p.epoch {
		t.Fatalf("%s: replica epoch %d, want %d", what, st.Epoch, p.epoch)
	}
	if st.LogID != p.logID {
		t.Fatalf("%s: replica log %q, want %q", what, st.LogID, p.logID)
	}
	if r.cur.Gen != p.gen {
		t.Fatalf("%s: replica reads generation %d, want %d", what, r.cur.Gen, p.gen)
	}
	if p.events > 0 && p.evSeq != p.seq {
		t.Fatalf("%s: OnChange reached seq %d, replica %d", what, p.evSeq, p.seq)
	}
	// The changes past the cursor wait, in order, for their group's end.
	if n := uint64(len(r.pending)); n != p.pos-p.seq {
		t.Fatalf("%s: %d changes pending, want %d (seq %d, delivered %d)", what, n, p.pos-p.seq, p.seq, p.pos)
	}
	for i, ch := range r.pending {
		if ch.Seq != p.seq+1+uint64(i) {
			t.Fatalf("%s: pending[%d] has seq %d, want %d", what, i, ch.Seq, p.seq+1+uint64(i))
		}
	}
	// The durable cursor matches the in-memory one.
	dc, err := durableCursor(p.c, r.base)
	if err != nil {
		t.Fatalf("%s: read durable cursor: %v", what, err)
	}
	if dc != r.cur {
		t.Fatalf("%s: durable cursor %+v, in memory %+v", what, dc, r.cur)
	}
	// Contents equal the owner's table at the replica's seq.
	want := p.h.states[p.seq]
	got := map[string]string{}
	seq, err := r.Scan(nil, func(k, v []byte) bool { got[string(k)] = string(v); return true })
	if err != nil {
		t.Fatalf("%s: scan: %v", what, err)
	}
	if seq != p.seq {
		t.Fatalf("%s: scan at seq %d, want %d", what, seq, p.seq)
	}
	if !maps.Equal(got, want) {
		t.Fatalf("%s: replica at seq %d differs from the owner's table at that seq:\n%s", what, p.seq, mapDiff(got, want))
	}
	// Point reads agree with the scan, including misses.
	for range 3 {
		k := fmt.Sprintf("k%02d", p.rng.IntN(45))
		v, ok, err := r.Get([]byte(k))
		wv, wok := want[k]
		if err != nil || ok != wok || string(v) != wv {
			t.Fatalf("%s: Get(%s) = %d bytes, %v, %v; want %d bytes, %v", what, k, len(v), ok, err, len(wv), wok)
		}
	}
	// A prefix scan and a range digest agree (the merge of a disk-only
	// replica's file and overlay starts and stops inside them).
	pfx := fmt.Sprintf("k%d", p.rng.IntN(5))
	gotP := map[string]string{}
	if _, err := r.Scan([]byte(pfx), func(k, v []byte) bool { gotP[string(k)] = string(v); return true }); err != nil {
		t.Fatalf("%s: scan %s: %v", what, pfx, err)
	}
	wantP := maps.Clone(want)
	maps.DeleteFunc(wantP, func(k, _ string) bool { return !strings.HasPrefix(k, pfx) })
	if !maps.Equal(gotP, wantP) {
		t.Fatalf("%s: scan of prefix %s differs from the owner's table:\n%s", what, pfx, mapDiff(gotP, wantP))
	}
	lo, hi := fmt.Sprintf("k%02d", p.rng.IntN(45)), fmt.Sprintf("k%02d", p.rng.IntN(45))
	lo, hi = min(lo, hi), max(lo, hi)
	wantR := maps.Clone(want)
	maps.DeleteFunc(wantR, func(k, _ string) bool { return k < lo || k >= hi })
	if d, err := r.Digest([]byte(lo), []byte(hi)); err != nil {
		t.Fatalf("%s: digest [%s, %s): %v", what, lo, hi, err)
	} else if wd := mapDigest(wantR, p.logID, p.seq); !bytes.Equal(d.Hash, wd.Hash) || d.Rows != wd.Rows {
		t.Fatalf("%s: digest [%s, %s) %x (%d rows), model %x (%d rows)", what, lo, hi, d.Hash, d.Rows, wd.Hash, wd.Rows)
	}
	// The digest agrees too (now and then: it hashes every value).
	if p.checks++; p.checks%16 != 1 {
		return
	}
	d, err := r.Digest(nil, nil)
	if err != nil {
		t.Fatalf("%s: digest: %v", what, err)
	}
	if wd := mapDigest(want, p.logID, p.seq); !bytes.Equal(d.Hash, wd.Hash) || d.Rows != wd.Rows || d.Seq != wd.Seq {
		t.Fatalf("%s: digest %x (%d rows, seq %d), model %x (%d rows, seq %d)", what, d.Hash, d.Rows, d.Seq, wd.Hash, wd.Rows, wd.Seq)
	}
}

// mapDigest is the digest of a table with contents m.
func mapDigest(m map[string]string, logID string, seq uint64) transport.DigestResponse {
	d := newDigester()
	for _, k := range slices.Sorted(maps.Keys(m)) {
		d.add([]byte(k), []byte(m[k]))
	}
	return d.result(logID, seq)
}

func mapDiff(got, want map[string]string) string {
	var b bytes.Buffer
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if g, ok := got[k]; !ok {
			fmt.Fprintf(&b, "  %s: missing\n", k)
		} else if g != want[k] {
			fmt.Fprintf(&b, "  %s: %d bytes, want %d\n", k, len(g), len(want[k]))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(got)) {
		if _, ok := want[k]; !ok {
			fmt.Fprintf(&b, "  %s: unexpected\n", k)
		}
	}
	return b.String()
}

func seqList(chs []transport.Change) string {
	var b bytes.Buffer
	b.WriteByte('[')
	for i, ch := range chs {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%d", ch.Seq)
		if ch.TxnEnd {
			b.WriteByte('.')
		}
	}
	b.WriteByte(']')
	return b.String()
}
