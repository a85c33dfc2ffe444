package replica

import (
	"bytes"
	"fmt"
	"sync/atomic"

	"github.com/dgraph-io/badger/v4"
	"github.com/replmesh/replmesh/transport"
	"github.com/tidwall/btree"
)

// Resident replicas. A replica's rows are held in memory in a copy-on-write
// B-tree (github.com/tidwall/btree); after each applied batch the stream
// goroutine publishes an immutable view of it (the rows and the cursor they
// are at) through an atomic pointer. Get, Scan and Digest load the pointer
// and read that view: one consistent seq, no lock, no allocation. The
// B-tree's Copy is O(1): the working tree and the published views share
// nodes, and the next batch clones only the nodes it changes.
//
// A replica in a component without a data dir holds nothing anywhere else
// (memStore). A durable replica keeps its rows in badger as before
// (genStore: the rows and the cursor in one transaction, so the cursor is
// never ahead of the data) and, after each commit, in memory; it reads
// only memory, and loads the rows from badger when it opens. A replica
// subscribed with SubscribeOptions.DiskOnly holds nothing in memory and
// reads badger.

// resRow is one resident row. Its key and value are never modified once
// stored: later changes replace the row, so a value handed out stays valid.
type resRow struct {
	key, value []byte
}

func resLess(a, b resRow) bool { return bytes.Compare(a.key, b.key) < 0 }

// resDegree is the B-tree's degree (nodes hold up to 2*resDegree-1 rows):
// measured against 16 and 64, it keeps a point read shallow while a
// batch's copy-on-write clones stay small (see docs/design.md).
const resDegree = 32

// resRowOverhead is the approximate memory a resident row costs beyond its
// key and value bytes: the 48-byte item in a B-tree node (nodes are about
// two thirds full) and the allocation rounding of the key and value
// slices. Measured by TestResident_RowCost; docs/design.md says where the
// line between resident and disk-only lies.
const resRowOverhead = 100

func newResRows() *btree.BTreeG[resRow] {
	return btree.NewBTreeGOptions(resLess, btree.Options{NoLocks: true, Degree: resDegree})
}

func rowBytes(r resRow) int64 { return int64(len(r.key) + len(r.value)) }

// resView is one published state of a resident replica: its rows at cur.
// Nothing modifies a view once it is published.
type resView struct {
	cur   cursor
	rows  *btree.BTreeG[resRow]
	bytes int64 // key+value bytes of the rows
}

// get returns the stored value of key (shared: never modify it).
func (v *resView) get(key []byte) ([]byte, bool) {
	r, ok := v.rows.Get(resRow{key: key})
	return r.value, ok
}

// scan calls fn for the rows with start <= key < end (nil end: no bound)
// whose key starts with prefix, in key order, until fn returns false.
func (v *resView) scan(prefix, start, end []byte, fn func(k, v []byte) bool) {
	pivot := prefix
	if bytes.Compare(start, pivot) > 0 {
		pivot = start
	}
	v.rows.Ascend(resRow{key: pivot}, func(r resRow) bool {
		if !bytes.HasPrefix(r.key, prefix) || end != nil && bytes.Compare(r.key, end) >= 0 {
			return false
		}
		return fn(r.key, r.value)
	})
}

// resident is the mutable side of a resident replica: the working tree,
// which only the stream goroutine touches, and the published view.
type resident struct {
	w     *btree.BTreeG[resRow]
	bytes int64
	view  atomic.Pointer[resView]
}

// newResident makes rows (owned by the result from now on) the resident
// state at cur and publishes it.
func newResident(cur cursor, rows *btree.BTreeG[resRow], n int64) *resident {
	s := &resident{w: rows, bytes: n}
	s.publish(cur)
	return s
}

// publish makes the working tree's current state the view at cur. Copy
// gives the working tree a new identity, so its next change clones the
// nodes it touches instead of modifying the published ones.
func (s *resident) publish(cur cursor) {
	s.view.Store(&resView{cur: cur, rows: s.w.Copy(), bytes: s.bytes})
}

// apply applies changes (whole commit groups, continuing the view's
// cursor) and publishes the result as the view at next. The changes' keys
// and values are stored as they are: they must not be modified afterwards.
func (s *resident) apply(next cursor, chs []transport.Change) {
	for i := range chs {
		ch := &chs[i]
		var old resRow
		var had bool
		if ch.Op == transport.OpDelete {
			old, had = s.w.Delete(resRow{key: ch.Key})
		} else {
			old, had = s.w.Set(resRow{key: ch.Key, value: ch.Value})
			s.bytes += int64(len(ch.Key) + len(ch.Value))
		}
		if had {
			s.bytes -= rowBytes(old)
		}
	}
	s.publish(next)
}

// resTransfer builds the resident rows of a full transfer next to what
// the sink stages (for a durable replica, its fresh generation in badger),
// and switches both in together; the old view stays readable until then.
type resTransfer struct {
	inner stagedTransfer
	s     *resident
	rows  *btree.BTreeG[resRow]
	bytes int64
}

func (s *resident) stage(inner stagedTransfer) *resTransfer {
	return &resTransfer{inner: inner, s: s, rows: newResRows()}
}

func (x *resTransfer) put(key, value []byte) error {
	if err := x.inner.put(key, value); err != nil {
		return err
	}
	// Rows arrive in key order: Load appends to the rightmost leaf.
	old, had := x.rows.Load(resRow{key: key, value: value})
	x.bytes += int64(len(key) + len(value))
	if had {
		x.bytes -= rowBytes(old)
	}
	return nil
}

func (x *resTransfer) finish(next cursor) (cursor, error) { return x.inner.finish(next) }

// switchIn switches the sink's copy first (for a durable replica, the
// commit that names the new generation), then publishes the built rows.
// Replica.mu is held, as for every switchIn.
func (x *resTransfer) switchIn(old, next cursor) error {
	if err := x.inner.switchIn(old, next); err != nil {
		return err
	}
	x.s.w, x.s.bytes = x.rows, x.bytes
	x.rows = nil
	x.s.publish(next)
	return nil
}

func (x *resTransfer) abort() {
	x.inner.abort()
	x.rows = nil
}

// loadResident reads the rows of the generation cur names from badger (a
// durable replica opening) into a fresh tree. The cursor is read in the
// same transaction and must equal cur: the stream has not started, so
// nothing else writes it.
func (c *Component) loadResident(base string, cur cursor) (*btree.BTreeG[resRow], int64, error) {
	rows := newResRows()
	var n int64
	err := c.db.View(func(txn *badger.Txn) error {
		stored, err := readCursor(txn, base)
		if err != nil {
			return err
		}
		if stored != cur {
			return fmt.Errorf("cursor moved while the replica was loading: %+v, loaded %+v", stored, cur)
		}
		return scanRows(txn, genPrefix(base, cur.Gen), nil, nil, nil, func(k, v []byte) (bool, error) {
			kv := make([]byte, len(k)+len(v)) // one allocation per row
			copy(kv, k)
			copy(kv[len(k):], v)
			rows.Load(resRow{key: kv[:len(k):len(k)], value: kv[len(k):]})
			n += int64(len(kv))
			return true, nil
		})
	})
	if err != nil {
		return nil, 0, fmt.Errorf("load resident rows: %w", err)
	}
	return rows, n, nil
}

// memStore is the sink of a resident replica in a component without a
// data dir: nothing is written anywhere but the resident rows (the
// Replica applies changes to them after the sink's apply). Its state
// outlives the Replica within the component (Close, then Subscribe again,
// resumes from it) as a badger in memory did.
type memStore struct {
	saved *resView // the view the replica's last Close left, nil: none
}

func (m *memStore) standby() bool { return false }

func (m *memStore) copies() int { return 0 }

func (m *memStore) load() (cursor, error) {
	if m.saved == nil {
		return cursor{}, nil
	}
	return m.saved.cur, nil
}

func (m *memStore) beginTransfer(*transport.Start, *transport.OwnerFrame, cursor) (stagedTransfer, error) {
	return memStaged{}, nil
}

func (m *memStore) apply(cursor, []transport.Change) error { return nil }

// memStaged is a memStore's side of a full transfer: nothing to stage
// (the resTransfer around it builds the rows).
type memStaged struct{}

func (memStaged) put(key, value []byte) error        { return nil }
func (memStaged) finish(next cursor) (cursor, error) { return next, nil }
func (memStaged) switchIn(old, next cursor) error    { return nil }
func (memStaged) abort()                             {}
