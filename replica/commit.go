package replica

import (
	"fmt"
	"time"

	"github.com/replmesh/replmesh/transport"
	"github.com/vmihailenco/msgpack/v5"
)

// commitLoop is the group committer: it takes every write queued while the
// previous group was committing and commits them in one badger transaction,
// assigning seqs in queue order, so seq order is commit order.
func (c *Component) commitLoop() {
	defer c.wg.Done()
	group := make([]*pendingWrite, 0, 256)
	for {
		var first *pendingWrite
		select {
		case first = <-c.writes:
		case <-c.done():
			c.failQueued()
			return
		}
		group = append(group[:0], first)
		n, size := len(first.changes), first.size
	drain:
		for n < c.cfg.MaxGroupChanges && size < c.cfg.MaxGroupBytes {
			select {
			case pw := <-c.writes:
				group = append(group, pw)
				n += len(pw.changes)
				size += pw.size
			default:
				break drain
			}
		}
		c.commitGroup(group)
		clear(group)
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

func (c *Component) commitGroup(group []*pendingWrite) {
	now := time.Now().UnixNano()
	txn := c.db.NewTransaction(true)
	defer txn.Discard()
	var touched []*OwnedTable
	var logBytes map[*OwnedTable]int64
	err := func() error {
		for _, pw := range group {
			t := pw.table
			if len(touched) == 0 || touched[len(touched)-1] != t {
				seen := false
				for _, x := range touched {
					seen = seen || x == t
				}
				if !seen {
					touched = append(touched, t)
				}
			}
			for i := range pw.changes {
				ch := &pw.changes[i]
				ch.Seq = t.next
				t.next++
				ch.Time = now
				ch.TxnEnd = i == len(pw.changes)-1
				rowKey := concat(t.rowPrefix, ch.Key)
				var err error
				if ch.Op == transport.OpDelete {
					err = txn.Delete(rowKey)
				} else {
					err = txn.Set(rowKey, encodeOwnRow(ch.Seq, ch.Value))
				}
				if err != nil {
					return err
				}
				entry := encodeLogEntry(ch)
				if logBytes == nil {
					logBytes = map[*OwnedTable]int64{}
				}
				logBytes[t] += int64(len(entry))
				if err := txn.Set(ownLogKey(t.logPrefix, ch.Seq), entry); err != nil {
					return err
				}
			}
			pw.seq = t.next - 1
		}
		for _, t := range touched {
			t.mu.Lock()
			m := t.meta
			t.mu.Unlock()
			m.Head = t.next - 1
			b, err := msgpack.Marshal(&m)
			if err != nil {
				return err
			}
			if err := txn.Set(t.metaKey, b); err != nil {
				return err
			}
		}
		return txn.Commit()
	}()
	if err != nil {
		err = fmt.Errorf("commit: %w", err)
		c.log.Error("group commit failed", "err", err, "writes", len(group))
		for _, t := range touched {
			t.mu.Lock()
			t.next = t.meta.Head + 1
			t.mu.Unlock()
		}
		for _, pw := range group {
			pw.seq, pw.err = 0, err
			close(pw.done)
		}
		return
	}
	for _, t := range touched {
		t.mu.Lock()
		t.meta.Head = t.next - 1
		t.logSize += logBytes[t]
		for _, pw := range group {
			if pw.table == t {
				t.tail.append(pw.changes)
			}
		}
		close(t.headCh)
		t.headCh = make(chan struct{})
		t.mu.Unlock()
	}
	for _, pw := range group {
		close(pw.done)
	}
}
