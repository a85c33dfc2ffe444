package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"
)

// The workload writes to whichever owner instance the monitor last saw as
// primary and records every write in a history: invoked, then ok (with its
// seq), failed (definitely not written) or unknown. Its keys make every
// outcome checkable:
//
//   - "u/<w>/<n>": written once (unique), value known;
//   - "o/<w>/<j>": overwritten by writer w only, one version at a time
//     (a version's outcome is final before the next is invoked), some
//     versions deletes: the final state must be a version no older than
//     the last acknowledged one;
//   - "g/<w>/<n>/<i>": GroupSize rows written by one Apply (atomic);
//   - "b/<n>": bulk rows (1 KiB) written before the faults, 100 an Apply,
//     so that a full transfer takes a while;
//   - FirstKey and LastKey: the sentinels, the table's first commit group.

type opKind uint8

const (
	opSentinel opKind = iota
	opUnique
	opOverwrite
	opGroup
	opBulk
)

var opKindNames = [...]string{"sentinel", "unique", "overwrite", "group", "bulk"}

func (k opKind) String() string { return opKindNames[k] }

// op is one invoked write.
type op struct {
	id      int
	writer  int
	kind    opKind
	writes  []WriteOp
	key     string // opOverwrite: the key
	version int    // opOverwrite: 1, 2, ... per key
	node    string // the owner it was sent to
	invoked time.Time
	done    time.Time
	class   string
	seq     uint64
	epoch   uint64 // acknowledged: the epoch it committed at (Response.CommitEpoch; 0: unknown)
	err     string
	tainted bool // the call failed while the node may still run it: its order among versions is unknown
}

// history is every write of a scenario.
type history struct {
	mu  sync.Mutex
	ops []*op
	oks []time.Time // completion times of ok writes, in order
}

func (h *history) invoke(o *op) {
	h.mu.Lock()
	defer h.mu.Unlock()
	o.id = len(h.ops) + 1
	o.invoked = time.Now()
	h.ops = append(h.ops, o)
}

func (h *history) finish(o *op, class string, seq uint64, err string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	o.done, o.class, o.seq, o.err = time.Now(), class, seq, err
	if class == ClassOK {
		h.oks = append(h.oks, o.done)
	}
}

// firstOKAfter returns the completion time of the first ok write that
// completed after t (zero if none).
func (h *history) firstOKAfter(t time.Time) time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	i, _ := slices.BinarySearchFunc(h.oks, t, func(a, b time.Time) int { return a.Compare(b) })
	if i < len(h.oks) {
		return h.oks[i]
	}
	return time.Time{}
}

func (h *history) snapshot() []*op {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.ops)
}

// counts returns how many writes are invoked, ok, failed and unknown.
func (h *history) counts() (invoked, ok, failed, unknown int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, o := range h.ops {
		invoked++
		switch o.class {
		case ClassOK:
			ok++
		case ClassFailed:
			failed++
		default:
			unknown++
		}
	}
	return
}

// workload drives the writers.
type workload struct {
	cl      *cluster
	h       *history
	seed    uint64
	writers int
	pace    time.Duration // per writer, between writes

	stopCh chan struct{}
	wg     sync.WaitGroup
}

func newWorkload(cl *cluster, seed uint64, writers int, pace time.Duration) *workload {
	return &workload{cl: cl, h: &history{}, seed: seed, writers: writers, pace: pace, stopCh: make(chan struct{})}
}

// do invokes one write on the current primary and records its outcome. It
// returns false when there is no primary to send it to (nothing invoked).
func (w *workload) do(o *op) bool {
	target := w.cl.currentPrimary()
	if target == nil {
		return false
	}
	o.node = target.name
	w.h.invoke(o)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := target.call(ctx, Request{Op: OpWrite, Writes: o.writes})
	switch {
	case err != nil:
		// The process died with the write in flight, or did not answer:
		// the write may be in the history or not.
		o.tainted = !errors.Is(err, errDown)
		w.h.finish(o, ClassUnknown, 0, err.Error())
	case resp.Class == "":
		w.h.finish(o, ClassUnknown, 0, "no outcome: "+resp.Err)
	default:
		o.epoch = resp.CommitEpoch
		w.h.finish(o, resp.Class, resp.Seq, resp.Err)
	}
	return true
}

// mustWrite writes o until it is acknowledged (setup writes: sentinels and
// bulk rows). Every attempt is in the history.
func (w *workload) mustWrite(ctx context.Context, mk func() *op) error {
	for {
		o := mk()
		if w.do(o) && o.class == ClassOK {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("setup write %s: %w (last: %s)", o.writes[0].Key, ctx.Err(), o.err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// setup writes the sentinels and n bulk rows.
func (w *workload) setup(ctx context.Context, bulk int) error {
	err := w.mustWrite(ctx, func() *op {
		return &op{kind: opSentinel, writes: []WriteOp{{Key: FirstKey, Value: []byte("first")}, {Key: LastKey, Value: []byte("last")}}}
	})
	if err != nil {
		return err
	}
	for i := 0; i < bulk; i += 100 {
		err := w.mustWrite(ctx, func() *op {
			o := &op{kind: opBulk}
			for j := i; j < min(i+100, bulk); j++ {
				k := fmt.Sprintf("b/%06d", j)
				o.writes = append(o.writes, WriteOp{Key: k, Value: bulkValue(k)})
			}
			return o
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func bulkValue(k string) []byte {
	v := make([]byte, 1024)
	for i := range v {
		v[i] = k[len(k)-1-i%6] + byte(i)
	}
	return v
}

// start starts the writers.
func (w *workload) start() {
	for i := range w.writers {
		w.wg.Add(1)
		go w.writer(i)
	}
}

// stop stops the writers and waits for their writes in flight.
func (w *workload) stop() {
	select {
	case <-w.stopCh:
	default:
		close(w.stopCh)
	}
	w.wg.Wait()
}

func (w *workload) writer(id int) {
	defer w.wg.Done()
	rng := rand.New(rand.NewPCG(w.seed, uint64(id)+1))
	versions := map[string]int{}
	var unique, groups int
	tk := time.NewTicker(w.pace)
	defer tk.Stop()
	for {
		select {
		case <-tk.C:
		case <-w.stopCh:
			return
		}
		var o *op
		switch x := rng.IntN(100); {
		case x < 60:
			unique++
			k := fmt.Sprintf("u/%d/%06d", id, unique)
			o = &op{kind: opUnique, writes: []WriteOp{{Key: k, Value: fmt.Appendf(nil, "%s=%x", k, rng.Uint64())}}}
		case x < 85:
			k := fmt.Sprintf("o/%d/%02d", id, rng.IntN(8))
			versions[k]++
			v := versions[k]
			o = &op{kind: opOverwrite, key: k, version: v}
			if rng.IntN(10) == 0 {
				o.writes = []WriteOp{{Key: k, Delete: true}}
			} else {
				o.writes = []WriteOp{{Key: k, Value: fmt.Appendf(nil, "%s@%d", k, v)}}
			}
		default:
			groups++
			o = &op{kind: opGroup}
			for i := range GroupSize {
				k := fmt.Sprintf("%s%d/%06d/%d", GroupPrefix, id, groups, i)
				o.writes = append(o.writes, WriteOp{Key: k, Value: fmt.Appendf(nil, "g%d/%d", id, groups)})
			}
		}
		o.writer = id
		for !w.do(o) {
			select {
			case <-tk.C:
			case <-w.stopCh:
				if o.kind == opOverwrite {
					versions[o.key]-- // never invoked
				}
				return
			}
		}
		if o.class != ClassOK {
			// Back off a little: the primary is moving or the standbys are
			// away.
			select {
			case <-time.After(time.Duration(20+rng.IntN(60)) * time.Millisecond):
			case <-w.stopCh:
				return
			}
		}
	}
}
