package replica

import (
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/replmesh/replmesh/internal/diskguard"
)

// commitLoop is the group committer: it takes every write queued while the
// previous group was committing and commits them in one badger transaction,
// assigning seqs in queue order, so seq order is commit order.
//
// It is pipelined one group deep: group N+1's transaction is built (seqs
// assigned, log entries and ref rows encoded) while badger writes group N, but
// N+1 is handed to badger only after N succeeded. If N fails, N+1 is
// discarded and failed too, so the log never has a hole.
func (c *Component) commitLoop() {
	defer c.wg.Done()
	// Runs after the in-flight group is finished and the queue is failed:
	// from then on a write that is not done was never committed.
	defer close(c.commitDone)
	var inflight *group
	// The tables whose overlays may hold rows (ownrows.go).
	dirty := map[*OwnedTable]struct{}{}
	finishGroup := func(g *group, err error) {
		c.finishGroup(g, err)
		if err == nil {
			for _, t := range g.touched {
				dirty[t] = struct{}{}
			}
		}
	}
	finish := func() {
		err := <-inflight.result
		finishGroup(inflight, err)
		inflight = nil
	}
	defer func() {
		if inflight != nil {
			finish()
		}
		// A clean close leaves the rows whole: the next Own replays nothing.
		c.flushOverlays(dirty, false)
		c.failQueued()
	}()
	pending := make([]*pendingWrite, 0, 256)
	var held *pendingWrite // a barrier that ended the last drain
	for {
		var first *pendingWrite
		var resultCh chan error
		if inflight != nil {
			resultCh = inflight.result
		}
		if held != nil {
			first, held = held, nil
		} else {
			select {
			case first = <-c.writes:
			case err := <-resultCh:
				finishGroup(inflight, err)
				inflight = nil
				continue
			case <-c.done():
				return
			}
		}
		if first.barrier != nil {
			if inflight != nil {
				finish()
			}
			first.barrier()
			close(first.done)
			continue
		}
		pending = append(pending[:0], first)
		n, size := len(first.changes), first.size
	drain:
		for n < c.cfg.MaxGroupChanges && size < c.cfg.MaxGroupBytes {
			select {
			case pw := <-c.writes:
				// A write that would take the group past its bounds waits
				// for the next one: the memtable is sized for them.
				if pw.barrier != nil || n+len(pw.changes) > c.cfg.MaxGroupChanges || size+pw.size > c.cfg.MaxGroupBytes {
					held = pw
					break drain
				}
				pending = append(pending, pw)
				n += len(pw.changes)
				size += pw.size
			default:
				break drain
			}
		}
		if err := c.disk.Admit(groupCost(pending)); err != nil {
			// Refused before any seq is assigned: nothing is written.
			for _, pw := range pending {
				pw.seq, pw.err = 0, err
				close(pw.done)
			}
			clear(pending)
			continue
		}
		if overlayFull(dirty) {
			if inflight != nil {
				finish()
			}
			c.flushOverlays(dirty, true)
		}
		g := c.buildGroup(pending)
		if inflight != nil {
			prevErr := <-inflight.result
			finishGroup(inflight, prevErr)
			inflight = nil
			if prevErr != nil && g.err == nil {
				g.txn.Discard()
				g.err = fmt.Errorf("commit: an earlier group failed: %w", prevErr)
			}
		}
		if g.err != nil {
			finishGroup(g, g.err)
			continue
		}
		g.result = make(chan error, 1)
		g.txn.CommitWith(func(err error) { g.result <- err })
		inflight = g
		clear(pending)
	}
}

// flushOverlays writes the overlays of tables to their rows (committer,
// no group in flight); a table whose flush fails keeps its overlay, for
// the next one (or Own's replay). full: the overlays are flushed because
// they are full; one that held more than half as many keys as changes
// (the changes went to new keys: the rows they saved were fewer than the
// flush costs, which holds the commits up) is left for a run of direct
// commits, which write their rows themselves (ownrows.go).
func (c *Component) flushOverlays(tables map[*OwnedTable]struct{}, full bool) {
	for t := range tables {
		if full && t.direct > 0 {
			continue // its direct commits drain it
		}
		if full && 2*len(t.ov) > t.ovChanges {
			t.direct = directRun * ovMax()
			continue
		}
		if err := t.flushRows(); err != nil {
			c.log.Error("flush of the owner's rows failed", "table", t.name, "err", err)
			continue
		}
		delete(tables, t)
	}
}

// groupCost is what a group adds to badger's files: a ref row per change,
// the log entries (with the values) packed into log groups (counted here
// as one per write), and each touched table's meta.
func groupCost(pending []*pendingWrite) diskguard.Cost {
	var w diskguard.Cost
	for _, pw := range pending {
		entries := 0
		for i := range pw.changes {
			w.Add(len(pw.changes[i].Key), refRowSize, 1)
			entries += logEntrySize(&pw.changes[i]) + 12
		}
		w.Add(16, entries, 1) // the log group
		w.Add(0, 0, 1)        // the meta: a small entry
	}
	return w
}

// group is one group commit in flight.
type group struct {
	writes  []*pendingWrite
	txn     *badger.Txn
	touched []*OwnedTable
	logs    []*logWriter // per touched table
	// Per touched table: the overlay rows a direct commit took (ownrows.go),
	// given back if it fails, and the Rows its meta carries.
	taken  [][]ovTake
	rowsAt []uint64
	result chan error
	err    error // build failed
}

// buildGroup assigns seqs and writes the group's rows, log groups (one
// per touched table, split when large: logWriter) and table heads into a
// new transaction (not yet committed).
func (c *Component) buildGroup(pending []*pendingWrite) *group {
	g := &group{writes: append([]*pendingWrite(nil), pending...), txn: c.db.NewTransaction(true)}
	now := time.Now().UnixNano()
	idx := func(t *OwnedTable) int {
		for i, x := range g.touched {
			if x == t {
				return i
			}
		}
		g.touched = append(g.touched, t)
		lw := newLogWriter(t)
		if len(g.touched) == 1 {
			lw.useBuffers(&c.logSpare)
		}
		lw.noRows = t.direct <= 0 // the overlay holds them (ownrows.go)
		g.logs = append(g.logs, lw)
		g.taken = append(g.taken, nil)
		g.rowsAt = append(g.rowsAt, 0)
		return len(g.touched) - 1
	}
	g.err = func() error {
		for _, pw := range g.writes {
			t := pw.table
			ti := idx(t)
			t.mu.Lock()
			epoch := t.meta.Epoch
			t.mu.Unlock()
			for i := range pw.changes {
				ch := &pw.changes[i]
				ch.Seq = t.next
				t.next++
				ch.Time = now
				ch.Epoch = epoch
				ch.TxnEnd = i == len(pw.changes)-1
				if err := g.logs[ti].add(g.txn, ch); err != nil {
					return err
				}
				if !g.logs[ti].noRows {
					g.taken[ti] = t.takeOverlay(ch.Key, g.taken[ti])
				}
			}
			pw.seq = t.next - 1
		}
		// What direct commits may add of their overlays' rows: the
		// transaction is sized for MaxGroupChanges rows and 3 ×
		// MaxGroupBytes.
		drainRows, drainBytes := c.cfg.MaxGroupChanges, c.cfg.MaxGroupBytes/2
		for _, pw := range g.writes {
			drainRows -= len(pw.changes)
		}
		for i, t := range g.touched {
			if err := g.logs[i].flush(g.txn); err != nil {
				return err
			}
			emptied := false
			if !g.logs[i].noRows {
				var err error
				if g.taken[i], err = t.drainOverlay(g.txn, &drainRows, &drainBytes, g.taken[i]); err != nil {
					return err
				}
				// Its rows are in the transaction, the rest in badger
				// or in the groups before it, committed first.
				emptied = len(t.ov) == 0
				t.direct -= g.logs[i].changes
			}
			t.mu.Lock()
			m := t.meta
			m.Head = t.next - 1
			m.Rows = t.rowsBuilt
			if emptied {
				m.Rows = m.Head
			}
			t.rowsBuilt = m.Rows
			t.mu.Unlock()
			g.rowsAt[i] = m.Rows
			if err := t.setMeta(g.txn, m); err != nil {
				return err
			}
			if err := t.seg.flush(); err != nil {
				return err
			}
		}
		return nil
	}()
	if g.err != nil {
		g.txn.Discard()
		g.err = fmt.Errorf("commit: %w", g.err)
	}
	// Nothing holds the log writer's buffers once its groups are in the
	// transaction or the segment: the next commit reuses them.
	if len(g.logs) > 0 {
		g.logs[0].giveBuffers(&c.logSpare)
	}
	return g
}

// finishGroup publishes a committed group (heads, in-memory tail, wake-ups,
// acknowledgements) or fails every write of a group that did not commit,
// rewinding the seq counters to the durable heads.
func (c *Component) finishGroup(g *group, err error) {
	if err != nil {
		if g.err == nil {
			err = fmt.Errorf("commit: %w", err)
		}
		c.log.Error("group commit failed", "err", err, "writes", len(g.writes))
		for i, t := range g.touched {
			t.giveBackOverlay(g.taken[i])
			t.mu.Lock()
			t.next = t.meta.Head + 1
			t.rowsBuilt = t.meta.Rows
			t.mu.Unlock()
		}
		for _, pw := range g.writes {
			pw.seq, pw.err = 0, err
			close(pw.done)
		}
		return
	}
	for i, t := range g.touched {
		t.mu.Lock()
		for _, pw := range g.writes {
			if pw.table == t {
				t.tail.append(pw.changes)
				t.meta.Head = pw.seq
			}
		}
		t.meta.Rows = g.rowsAt[i] // as badger holds it now
		t.logSize += g.logs[i].bytes
		close(t.headCh)
		t.headCh = make(chan struct{})
		t.mu.Unlock()
		// The overlay is the committer's own (no lock): filled after the
		// head is published, it holds neither the writers (Head, in
		// flow control) nor the streams the commit wakes. Whoever needs
		// the rows asks the committer, which is done here first.
		if g.logs[i].noRows {
			for _, pw := range g.writes {
				if pw.table == t {
					t.addOverlay(pw.changes)
				}
			}
		}
	}
	for _, pw := range g.writes {
		close(pw.done)
	}
}

// inCommitter runs fn in the committer goroutine once every group queued
// before it is committed and finished, and before any group queued after it
// is built; it returns once fn has run, or ErrClosed.
func (c *Component) inCommitter(fn func()) error {
	pw := &pendingWrite{Pending: Pending{closed: c.commitDone, done: make(chan struct{})}, barrier: fn}
	select {
	case c.writes <- pw:
	case <-c.done():
		return ErrClosed
	}
	select {
	case <-pw.done:
		return pw.err
	case <-c.commitDone:
		select {
		case <-pw.done:
			return pw.err
		default:
			return ErrClosed
		}
	}
}

// failQueued fails the writes still queued when the component closes.
func (c *Component) failQueued() {
	for {
		select {
		case pw := <-c.writes:
			pw.err = ErrClosed
			close(pw.done)
		default:
			return
		}
	}
}
