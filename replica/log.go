package replica

import (
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/replmesh/replmesh/transport"
)

// writeChange writes one change of t into txn as the owner stores it: the
// change's log entry, which holds the value, and the row pointing at it
// (a ref row: the seq alone) or the row's deletion. It returns the log
// entry's size. The primary's group commit and a standby's replicated
// apply both write through it, so a standby's copy is byte for byte the
// primary's. It reads nothing: an older entry of the key that trimming
// kept is dropped by trimming (ownerstore.go).
func (t *OwnedTable) writeChange(txn *badger.Txn, ch *transport.Change) (logBytes int64, err error) {
	rowKey := concat(t.rowPrefix, ch.Key)
	if ch.Op == transport.OpDelete {
		err = txn.Delete(rowKey)
	} else {
		err = txn.Set(rowKey, encodeRefRow(ch.Seq))
	}
	if err != nil {
		return 0, err
	}
	entry := encodeLogEntry(ch)
	if err := txn.Set(ownLogKey(t.logPrefix, ch.Seq), entry); err != nil {
		return 0, err
	}
	return int64(len(entry)), nil
}

// readChanges returns the committed changes from seq from on (at most about
// maxN changes and maxBytes bytes, never splitting a commit group), from the
// in-memory tail when it still holds them, else from the durable log. It
// returns transport.ErrResync when the log no longer holds from.
func (t *OwnedTable) readChanges(from uint64, maxN, maxBytes int, dst []transport.Change) ([]transport.Change, error) {
	if out, ok := t.tail.read(from, maxN, maxBytes, dst); ok {
		return out, nil
	}
	t.mu.Lock()
	first, head := t.meta.First, t.meta.Head
	t.mu.Unlock()
	if from < first {
		return dst, fmt.Errorf("%w: seq %d of %s was trimmed (log starts at %d)", transport.ErrResync, from, t.name, first)
	}
	if from > head {
		return dst, nil
	}
	defer t.c.reads.leave()
	if t.c.reads.enter() != nil {
		return dst, fmt.Errorf("%w: owner is shutting down", transport.ErrUnavailable)
	}
	err := t.c.db.View(func(txn *badger.Txn) error {
		o := badger.DefaultIteratorOptions
		o.Prefix = t.logPrefix
		o.PrefetchSize = min(maxN, 256)
		it := txn.NewIterator(o)
		defer it.Close()
		want, size := from, 0
		for it.Seek(ownLogKey(t.logPrefix, from)); it.Valid(); it.Next() {
			item := it.Item()
			seq := binary.BigEndian.Uint64(item.Key()[len(t.logPrefix):])
			if seq != want {
				return fmt.Errorf("%w: log of %s has seq %d where %d was expected (trimmed meanwhile)", transport.ErrResync, t.name, seq, want)
			}
			v, err := item.ValueCopy(nil)
			if err != nil {
				return err
			}
			ch, err := decodeLogEntry(seq, v)
			if err != nil {
				return err
			}
			dst = append(dst, ch)
			size += ch.Size()
			want++
			if (len(dst) >= maxN || size >= maxBytes) && ch.TxnEnd {
				break
			}
		}
		if want == from {
			return fmt.Errorf("%w: seq %d of %s is not in the log", transport.ErrResync, from, t.name)
		}
		return nil
	})
	return dst, err
}

// trimLoop trims every owned table's log on the configured interval.
func (c *Component) trimLoop() {
	defer c.wg.Done()
	tk := time.NewTicker(c.cfg.TrimInterval)
	defer tk.Stop()
	for {
		select {
		case <-c.done():
			return
		case now := <-tk.C:
			for _, t := range c.ownedTables() {
				if err := t.trim(now); err != nil {
					c.log.Error("trim log", "table", t.name, "err", err)
				}
			}
		}
	}
}

// ownedTables returns the owned tables (in no particular order).
func (c *Component) ownedTables() []*OwnedTable {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Collect(maps.Values(c.owned))
}

// trim drops the oldest log entries beyond the retention limits: they
// leave the window consumers are served from, and those that are still a
// row's value stay below it (trimKept). The new first seq is published
// before the entries are touched, so a reader that races with the
// deletion sees ErrResync, never a gap. trimMu keeps a restore or a
// standby's transfer from emptying the table meanwhile (a new history
// could reuse the seqs being trimmed).
func (t *OwnedTable) trim(now time.Time) error {
	t.trimMu.Lock()
	defer t.trimMu.Unlock()
	t.mu.Lock()
	r := t.retention
	first, head, size := t.meta.First, t.meta.Head, t.logSize
	t.mu.Unlock()
	newFirst := first
	if r.MaxChanges > 0 && head+1-first > r.MaxChanges {
		newFirst = head + 1 - r.MaxChanges
	}
	var dropped int64
	if (r.MaxBytes > 0 && size > r.MaxBytes) || r.MaxAge > 0 {
		cutoff := now.Add(-r.MaxAge).UnixNano()
		err := t.c.db.View(func(txn *badger.Txn) error {
			o := badger.DefaultIteratorOptions
			o.Prefix = t.logPrefix
			it := txn.NewIterator(o)
			defer it.Close()
			for it.Seek(ownLogKey(t.logPrefix, first)); it.Valid(); it.Next() {
				item := it.Item()
				seq := binary.BigEndian.Uint64(item.Key()[len(t.logPrefix):])
				overBytes := r.MaxBytes > 0 && size-dropped > r.MaxBytes
				tooOld := false
				if r.MaxAge > 0 && !overBytes {
					if err := item.Value(func(v []byte) error {
						if len(v) >= 18 {
							tooOld = int64(binary.BigEndian.Uint64(v[2:10])) < cutoff
						}
						return nil
					}); err != nil {
						return err
					}
				}
				if !overBytes && !tooOld && seq >= newFirst {
					return nil
				}
				dropped += item.ValueSize()
				newFirst = max(newFirst, seq+1)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	if newFirst <= first {
		return nil
	}
	t.mu.Lock()
	if t.meta.First != first || t.restoring.Load() {
		// A restore replaced the table while the log was measured: its
		// log is another one (trimmed next round).
		t.mu.Unlock()
		return nil
	}
	t.meta.First = newFirst
	t.logSize -= dropped
	t.mu.Unlock()
	t.tail.dropBefore(newFirst)
	return t.trimKept(first, newFirst)
}
