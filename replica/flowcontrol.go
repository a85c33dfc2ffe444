package replica

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// FlowControl bounds how far a table's writers run ahead of the push
// consumers that keep up with them (Config.Flow).
//
// Without it the owner's group commit runs as fast as its disk allows
// while consumers, which on a shared machine compete with it for the same
// cores, fall behind a burst: every change then waits behind the whole
// backlog, and commit-to-applied latency grows for as long as the burst
// lasts. With it, a write waits (in Submit, before it is queued) while
// some held consumer has acknowledged fewer than Window of the table's
// committed changes, so a consumer that can keep up never falls more than
// about Window changes (plus the writes already queued) behind, and the
// writer runs at the pace of the slowest held consumer.
//
// A consumer is held only while it keeps up: one that connects (or
// resumes, or finishes a full transfer) more than Window changes behind is
// not held, and neither is one that holds a waiting writer for Hold
// without acknowledging anything (stuck or far too slow): it is cut loose
// and reads at its own pace (from the in-memory tail, then the log) until
// it is back within Window/2 of the head, when it is held again. So one
// slow consumer delays writes by at most Hold, never stalls them. Pull
// consumers are never held. (A consumer whose OnChange callback writes,
// and waits for, the table it consumes acknowledges nothing until the
// write returns: it holds that write for Hold and is then cut loose.)
type FlowControl struct {
	// Window is the most committed changes a held consumer may leave
	// unacknowledged before writes wait (0: DefaultFlowWindow; negative:
	// no flow control). A consumer's lag, and so its commit-to-applied
	// latency, stays near Window divided by the write rate; a writer held
	// by a consumer runs at most Window changes per round trip to it, so
	// a consumer far away (a round trip of tens of milliseconds) needs a
	// larger window, or none, to let writers run faster than that.
	Window int
	// Hold is how long a waiting writer waits for a consumer that
	// acknowledges nothing before cutting it loose (0: DefaultFlowHold).
	Hold time.Duration
}

// Flow control defaults. The window is what the fan-out benchmark
// (replbench -workloads fanout -flowwindow) showed to cost no CPU per
// change and no throughput at 1, 4 and 16 consumers against windows of
// 256 to 8192, with the lowest latency at 16 (docs/design.md, "Flow
// control").
const (
	DefaultFlowWindow = 1024
	DefaultFlowHold   = time.Second
)

// window is the effective window (<= 0: off).
func (f FlowControl) window() int {
	if f.Window == 0 {
		return DefaultFlowWindow
	}
	return f.Window
}

func (f FlowControl) hold() time.Duration {
	if f.Hold == 0 {
		return DefaultFlowHold
	}
	return f.Hold
}

func (f FlowControl) validate() error {
	if f.Hold < 0 {
		return fmt.Errorf("%w: Config.Flow.Hold is out of range", ErrInvalid)
	}
	return nil
}

// flowGate is one table's flow control state: the push streams and what
// each acknowledged. Its zero value is ready.
type flowGate struct {
	mu      sync.Mutex
	members map[*sender]*flowMember
	// changed is closed (and replaced) when a waiting writer may proceed:
	// an ack, a stream leaving or cut loose. Nil while nobody waits.
	changed chan struct{}
	// Counters, for tests and metrics.
	waits, cutLoose uint64
	waiting         int
}

type flowMember struct {
	acked   uint64
	ackedAt time.Time
	// held: the writer waits for this stream (it keeps up); false for a
	// stream that joined beyond the window or was cut loose.
	held bool
}

// join starts holding writes for s (a push stream from seq acked on),
// unless it is already more than window changes behind head.
func (g *flowGate) join(s *sender, acked, head uint64, window int) {
	if window <= 0 {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.members == nil {
		g.members = map[*sender]*flowMember{}
	}
	g.members[s] = &flowMember{acked: acked, ackedAt: time.Now(), held: head-min(acked, head) <= uint64(window)}
}

// leave stops holding writes for s (the stream ended or pulls).
func (g *flowGate) leave(s *sender) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.members[s]; ok {
		delete(g.members, s)
		g.wakeLocked()
	}
}

// ack records that s acknowledged seq, with head the table's head: a
// stream cut loose is held again once within window/2 of it.
func (g *flowGate) ack(s *sender, seq, head uint64, window int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	m := g.members[s]
	if m == nil || seq <= m.acked {
		return
	}
	m.acked, m.ackedAt = seq, time.Now()
	if !m.held && head-min(seq, head) <= uint64(window/2) {
		m.held = true
	}
	g.wakeLocked()
}

func (g *flowGate) wakeLocked() {
	if g.changed != nil {
		close(g.changed)
		g.changed = nil
	}
}

// blockedLocked reports whether a held stream has acknowledged fewer than
// window of the changes up to head, and the oldest ack among those.
func (g *flowGate) blockedLocked(head uint64, window int) (blocked bool, since time.Time) {
	for _, m := range g.members {
		if m.held && head-min(m.acked, head) >= uint64(window) {
			if !blocked || m.ackedAt.Before(since) {
				since = m.ackedAt
			}
			blocked = true
		}
	}
	return blocked, since
}

// awaitFlow waits until t's flow window admits a write (see FlowControl).
func (t *OwnedTable) awaitFlow(ctx context.Context) error {
	fc := t.c.cfg.Flow
	window := fc.window()
	if window <= 0 {
		return nil
	}
	g := &t.flow
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	var waitStart time.Time // when this writer first waited
	for {
		head := t.Head()
		g.mu.Lock()
		blocked, since := g.blockedLocked(head, window)
		if !blocked {
			g.mu.Unlock()
			return nil
		}
		now := time.Now()
		if waitStart.IsZero() {
			waitStart = now
			g.waits++
		}
		// A stream's hold runs from its last ack or from when this
		// writer began to wait, whichever is later: a consumer that had
		// nothing to acknowledge (an idle table) is not cut loose at
		// the first burst.
		if wait := maxTime(since, waitStart).Add(fc.hold()).Sub(now); wait <= 0 {
			g.cutLooseLocked(t, head, window, now.Add(-fc.hold()))
			g.mu.Unlock()
			continue
		} else if timer == nil {
			timer = time.NewTimer(wait)
		} else {
			timer.Reset(wait)
		}
		if g.changed == nil {
			g.changed = make(chan struct{})
		}
		changed := g.changed
		g.waiting++
		g.mu.Unlock()
		var err error
		select {
		case <-changed:
		case <-timer.C:
		case <-ctx.Done():
			err = ctx.Err()
		case <-t.c.done():
			err = ErrClosed
		}
		g.mu.Lock()
		g.waiting--
		g.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// cutLooseLocked stops holding writes for the streams that block them and
// have acknowledged nothing since before.
func (g *flowGate) cutLooseLocked(t *OwnedTable, head uint64, window int, before time.Time) {
	for s, m := range g.members {
		if m.held && head-min(m.acked, head) >= uint64(window) && !m.ackedAt.After(before) {
			m.held = false
			g.cutLoose++
			s.log.Info("consumer cut loose from flow control: it held writes without acknowledging",
				"acked", m.acked, "head", head, "window", window, "hold", t.c.cfg.Flow.hold())
		}
	}
	g.wakeLocked()
}

// flowStats is what a table's flow control did: writes that waited,
// streams cut loose, writers waiting now, streams held now.
type flowStats struct {
	waits, cutLoose uint64
	waiting, held   int
}

// streams is the number of push streams the gate knows, held or not.
func (g *flowGate) streams() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.members)
}

func (g *flowGate) stats() flowStats {
	g.mu.Lock()
	defer g.mu.Unlock()
	st := flowStats{waits: g.waits, cutLoose: g.cutLoose, waiting: g.waiting}
	for _, m := range g.members {
		if m.held {
			st.held++
		}
	}
	return st
}
