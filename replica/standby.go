package replica

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/dgraph-io/badger/v4"
	"github.com/replmesh/replmesh/transport"
)

// A standby instance of an owner service keeps each of its tables as a
// copy of the primary's, in the owner's own format (rows with their seq,
// the change log, the meta with the same log id and epoch history), so that
// it can take over as primary at once, and its consumers resume from their
// cursors. The copy is filled by a follower: a Replica whose sink is the
// owned table (ownedCopy) instead of a replica generation (genStore).

// ownedCopy is the sink of a standby's follower: the standby's own owned
// table, written in the owner's format.
type ownedCopy struct {
	t   *OwnedTable
	log *slog.Logger
}

func (o *ownedCopy) standby() bool { return true }

func (o *ownedCopy) copies() int { return 2 } // a standby's rows and log entries (a bound: the value is in one of them)

func (o *ownedCopy) load() (cursor, error) { return o.t.replicatedCursor(), nil }

func (o *ownedCopy) beginTransfer(st *transport.Start, begin *transport.OwnerFrame, _ cursor) (stagedTransfer, error) {
	x, err := o.t.beginTransfer(begin.Seq)
	if err != nil {
		return nil, err
	}
	x.st = st
	o.log.Info("standby full transfer begins", "seq", begin.Seq, "log_id", st.LogID, "rows_expected", begin.Count)
	return x, nil
}

func (o *ownedCopy) apply(_ cursor, chs []transport.Change) error {
	if err := o.t.applyReplicated(chs); err != nil {
		return fmt.Errorf("apply %s on the standby: %w", o.t.name, err)
	}
	return nil
}

// replicatedCursor is where a standby's copy of t stands, as a replica
// cursor: the position it resumes from.
func (t *OwnedTable) replicatedCursor() cursor {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.meta.LogID == "" {
		return cursor{}
	}
	return cursor{LogID: t.meta.LogID, Seq: t.meta.Head, Epoch: t.meta.Epochs.EpochOf(t.meta.Head)}
}

// ownTransfer is a full transfer into a standby's owned table.
type ownTransfer struct {
	t   *OwnedTable
	st  *transport.Start // the primary's Start: its history
	seq uint64
	wb  *badger.WriteBatch
}

// beginTransfer empties the table and marks it incomplete (empty log id)
// durably, so that a standby that crashes mid-transfer restarts it and never
// takes over with half a table.
func (t *OwnedTable) beginTransfer(seq uint64) (*ownTransfer, error) {
	t.mu.Lock()
	m := t.meta
	t.mu.Unlock()
	m.LogID, m.Head, m.First, m.Epochs, m.NeedEpoch = "", 0, 1, nil, false
	if err := t.clearTo(m); err != nil {
		return nil, fmt.Errorf("stage transfer of %s: %w", t.name, err)
	}
	return &ownTransfer{t: t, seq: seq, wb: t.c.db.NewWriteBatch()}, nil
}

// clearTo empties t's rows, log and keep index under the meta m (an
// empty table's, with a mark: no log id, or Restoring), which is written
// first: a reader or a restart that finds a row missing finds the mark
// too. The rows go before the log: a row left is never without the log
// entry it points at. It waits for a running trim (trimMu).
func (t *OwnedTable) clearTo(m ownerMeta) error {
	t.trimMu.Lock()
	defer t.trimMu.Unlock()
	// The overlay's rows are rows of the history being emptied: dropped,
	// never written after the deletions (ownrows.go).
	if err := t.c.inCommitter(func() { clear(t.ov); t.ovBytes, t.ovChanges = 0, 0 }); err != nil {
		return err
	}
	m.Rows = m.Head
	if err := t.writeMeta(m); err != nil {
		return err
	}
	t.publish(m)
	for _, p := range [][]byte{t.rowPrefix, t.logPrefix, ownLegacyLogPrefix(t.name), t.keepPrefix} {
		if err := t.c.deletePrefix(p); err != nil {
			return fmt.Errorf("clear: %w", err)
		}
	}
	if t.seg != nil {
		// No key references a segment now; once that is durable they go.
		if err := t.c.db.Sync(); err != nil {
			return fmt.Errorf("clear: %w", err)
		}
		t.seg.retireAll()
	}
	return nil
}

// publish makes m, just written, t's meta in memory: seqs go on after its
// head (the log is empty: a new table or a copy just written), and
// whoever waits for the table wakes.
func (t *OwnedTable) publish(m ownerMeta) {
	t.mu.Lock()
	t.meta = m
	t.next = m.Head + 1
	t.rowsBuilt = m.Rows
	t.logSize = 0
	t.signalLocked()
	t.mu.Unlock()
	t.tail.reset(m.Head + 1)
}

func (x *ownTransfer) put(key, value []byte) error {
	return x.wb.Set(concat(x.t.rowPrefix, key), encodeInlineRow(x.seq, value))
}

func (x *ownTransfer) abort() { x.wb.Cancel() }

// finish makes the copy complete: the meta names the primary's history at
// the snapshot's seq. The copy is live from then on (the owned table has
// no second copy to switch from): switchIn has nothing left to do.
func (x *ownTransfer) finish(next cursor) (cursor, error) {
	t, st := x.t, x.st
	if err := x.wb.Flush(); err != nil {
		return cursor{}, fmt.Errorf("stage rows: %w", err)
	}
	var hist transport.EpochHistory
	for _, e := range st.Epochs {
		if e.Seq <= x.seq {
			hist = append(hist, e)
		}
	}
	t.mu.Lock()
	m := t.meta
	t.mu.Unlock()
	m.LogID, m.Head, m.First, m.Epochs = st.LogID, x.seq, x.seq+1, hist
	m.Rows = m.Head
	m.Epoch = max(m.Epoch, hist.EpochOf(x.seq))
	if err := t.writeMeta(m); err != nil {
		return cursor{}, fmt.Errorf("finish transfer of %s: %w", t.name, err)
	}
	t.publish(m)
	return next, nil
}

func (x *ownTransfer) switchIn(old, next cursor) error { return nil }

func (t *OwnedTable) writeMeta(m ownerMeta) error {
	return t.c.db.Update(func(txn *badger.Txn) error { return t.setMeta(txn, m) })
}

// signalLocked wakes everyone waiting for the table to change.
func (t *OwnedTable) signalLocked() {
	close(t.headCh)
	t.headCh = make(chan struct{})
}

// applyReplicated writes changes received from the primary (whole commit
// groups, continuing the copy) as the primary wrote them: log entries with
// the same seqs and epochs (packed into log groups as they arrive: the
// grouping may differ from the primary's, the entries do not), the rows
// pointing at them, and the meta, in one transaction.
func (t *OwnedTable) applyReplicated(chs []transport.Change) error {
	// Its rows go with its changes: an overlay left from when the table
	// was primary is written first (ownrows.go).
	if err := t.flushRowsThrough(t.Head()); err != nil {
		return err
	}
	t.mu.Lock()
	m := t.meta
	t.mu.Unlock()
	txn := t.c.db.NewTransaction(true)
	defer txn.Discard()
	lw := newLogWriter(t)
	for i := range chs {
		ch := &chs[i]
		if err := lw.add(txn, ch); err != nil {
			return err
		}
		if n := len(m.Epochs); n == 0 || ch.Epoch > m.Epochs[n-1].Epoch {
			m.Epochs = m.Epochs.Append(ch.Epoch, ch.Seq)
		}
	}
	if err := lw.flush(txn); err != nil {
		return err
	}
	m.Head = chs[len(chs)-1].Seq
	m.Rows = m.Head
	m.Epoch = max(m.Epoch, chs[len(chs)-1].Epoch)
	if err := t.setMeta(txn, m); err != nil {
		return err
	}
	if err := t.seg.flush(); err != nil {
		return err
	}
	if err := txn.Commit(); err != nil {
		return err
	}
	t.mu.Lock()
	first := t.meta.First
	t.meta = m
	t.meta.First = first
	t.next = m.Head + 1
	t.rowsBuilt = m.Rows
	t.logSize += lw.bytes
	t.tail.append(chs)
	t.signalLocked()
	t.mu.Unlock()
	return nil
}

// errGrantBehind: the broker granted the primary lease at an epoch below
// the one a table already carries (a broker cluster that lost its registry
// granted before it heard of that epoch). Taking writes at it would reuse
// an epoch of the table's history; the table waits for a newer grant, which
// the broker makes once it sees the table's epoch (tableInfos).
var errGrantBehind = errors.New("granted epoch is behind the table's")

// promote makes a standby's copy the primary's table at epoch: the epoch
// begins after the copy's head and is synced before any write of it.
//
// A table that is already the primary's (a broker that lost its registry
// re-grants the lease with a new epoch) is promoted by the committer, between
// groups: a group in flight holds seqs past the durable head, which the new
// epoch must begin after, and whose meta write must not be overtaken by this
// one (a head going back, then seqs used twice: replicas that diverge at
// equal seqs).
func (t *OwnedTable) promote(epoch uint64) error {
	if t.writable.Load() {
		var err error
		if cerr := t.c.inCommitter(func() { err = t.promoteNow(epoch) }); cerr != nil {
			return cerr
		}
		return err
	}
	return t.promoteNow(epoch)
}

// promoteNow is promote with no commit group of t in flight.
func (t *OwnedTable) promoteNow(epoch uint64) error {
	t.mu.Lock()
	m := t.meta
	t.mu.Unlock()
	if m.LogID == "" {
		return fmt.Errorf("table %s holds an incomplete copy (a transfer was interrupted): it cannot take over", t.name)
	}
	if epoch < m.Epoch {
		return fmt.Errorf("%w: table %s is at epoch %d, newer than the granted epoch %d", errGrantBehind, t.name, m.Epoch, epoch)
	}
	if m.NeedEpoch && epoch == m.Epoch {
		return fmt.Errorf("%w: table %s was restored from a history that saw epoch %d: it needs a newer one than the granted epoch %d",
			errGrantBehind, t.name, m.Epoch, epoch)
	}
	if epoch > m.Epoch {
		m.Epoch = epoch
		m.NeedEpoch = false
		m.Epochs = m.Epochs.Append(epoch, m.Head+1)
		if err := t.writeMeta(m); err != nil {
			return err
		}
		if err := t.c.db.Sync(); err != nil {
			return err
		}
	}
	// A table whose watermark is its own (primary since it opened, its
	// role applied again after a lapse, or restored) keeps it: its head may
	// hold changes no standby has confirmed yet, which consumers must not
	// be sent. A copy taking over (a standby's, or a table opened from
	// disk) does not know which of its changes were confirmed: a standby
	// holds what the old primary sent it, confirmed or not, and an old
	// primary restarted holds what it committed. The watermark starts at 0
	// and its new standbys' acknowledgements move it, so no consumer is
	// sent a change that a later promotion of another standby could lack.
	if !t.writable.Load() && !t.markOwn.Load() {
		t.sync.reset(0)
	}
	t.markOwn.Store(true)
	t.mu.Lock()
	t.meta.Epoch, t.meta.Epochs, t.meta.NeedEpoch = m.Epoch, m.Epochs, m.NeedEpoch
	t.next = t.meta.Head + 1
	t.signalLocked()
	t.mu.Unlock()
	t.c.log.Info("table is primary", "table", t.name, "epoch", epoch, "head", m.Head)
	return nil
}
