package replica

import (
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/dgraph-io/badger/v4"
	"github.com/replmesh/replmesh/transport"
)

// The owner's rows are a materialization of its log, written lazily
// (owner format 4). A commit writes the log (its groups, their bytes in a
// segment on disk) and the meta's Head, and no row: the committer records
// each change in the table's overlay (OwnedTable.ov: key -> the seq of its
// newest change, or its deletion), and writes the overlay's rows later,
// all at once, with the meta's Rows set to Head (flushRows). A key
// written twenty times between two flushes costs badger one row write.
//
// The rows in badger are the table's through meta.Rows; the changes above
// it are in the log. So a read of rows needs a transaction whose meta has
// Rows == Head (rowTxn): when the one it opens has not, it has the
// committer flush the overlay and opens its transaction there, between
// groups, where no change is above the rows. A read transaction is a
// badger snapshot: the flushes and commits after it do not touch what it
// sees.
//
// The overlay is flushed when it holds ovMaxKeys keys (or ovMaxBytes of
// keys), when a reader of rows needs it, before trimming (which reads
// rows, and must never drop an entry above Rows), before a standby's
// apply writes rows of its own, and when the component closes, so that
// the next Own replays nothing. After a crash Own replays the log from
// Rows+1 to Head into the overlay and flushes it (replayRows). A flush
// larger than a transaction is written in several: the rows first, Rows
// in the last one. Rows written ahead of Rows by a flush a crash cut
// short are rows of changes the replay writes again, the newest of each
// key last.
//
// An overlay found full with more than half as many keys as changes
// (writes to new keys, which it saves nothing on) is not flushed, which
// would hold the commits up: a run of direct commits follows (directRun
// times ovMaxKeys changes), which write their rows as format 3 did, each
// taking its keys' rows out of the overlay and writing up to drainChunk
// more of them (drainOverlay); the commit that empties the overlay sets
// Rows to its Head. A direct commit that fails gives the rows it took
// back (the commits after it fail too). Then the overlay takes the rows
// again. A commit's meta never carries a lower Rows than the one built
// before it (OwnedTable.rowsBuilt), so a trim, which goes by the Rows of
// the last meta committed, never drops an entry a replay would need.

// ovRow is an overlay row: the seq of the key's newest change, the value
// being in its log entry, or the key's deletion.
type ovRow struct {
	seq uint64
	del bool
}

// write puts r in txn as the row under key: its ref row, or its deletion.
func (r ovRow) write(txn *badger.Txn, key []byte) error {
	if r.del {
		return txn.Delete(key)
	}
	return txn.Set(key, encodeRefRow(r.seq))
}

// ovMaxKeys and ovMaxBytes (of keys) are how much the overlays hold
// before the committer flushes them.
const (
	ovMaxKeys  = 1 << 16
	ovMaxBytes = 4 << 20
)

// drainChunk is the most overlay rows a direct commit writes besides its
// own (drainOverlay).
const drainChunk = 4096

// drainChunkForTest, when above 0, is drainChunk (tests that drain an
// overlay over several commits).
var drainChunkForTest atomic.Int64

// directRun is how many times ovMax changes a run of direct commits
// lasts (flushOverlays): then the overlay is tried again.
const directRun = 8

// ovMaxKeysForTest, when above 0, is ovMaxKeys (tests that flush often).
var ovMaxKeysForTest atomic.Int64

func ovMax() int {
	if n := ovMaxKeysForTest.Load(); n > 0 {
		return int(n)
	}
	return ovMaxKeys
}

// overlayFull reports whether the overlays of tables hold what the
// committer flushes at (committer).
func overlayFull(tables map[*OwnedTable]struct{}) bool {
	n, size := 0, 0
	for t := range tables {
		if t.direct > 0 {
			continue // its direct commits drain it
		}
		n += len(t.ov)
		size += t.ovBytes
	}
	return n >= ovMax() || size >= ovMaxBytes
}

// addOverlay records committed changes in t's overlay (committer).
func (t *OwnedTable) addOverlay(chs []transport.Change) {
	t.ovChanges += len(chs)
	for i := range chs {
		ch := &chs[i]
		n := len(t.ov)
		t.ov[string(ch.Key)] = ovRow{seq: ch.Seq, del: ch.Op == transport.OpDelete}
		if len(t.ov) > n {
			t.ovBytes += len(ch.Key)
		}
	}
}

// flushRows writes t's overlay to badger's rows with the meta's Rows set
// to Head, and empties it. It runs in the committer with no group in
// flight (or in Own, before the table is registered): the overlay is
// then the changes from Rows+1 to Head.
func (t *OwnedTable) flushRows() error {
	if len(t.ov) == 0 {
		// Rows is Head (a change above Rows is in the overlay), or
		// clearTo is writing a new meta.
		return nil
	}
	t.mu.Lock()
	m := t.meta
	t.mu.Unlock()
	m.Rows = m.Head
	txn := t.c.db.NewTransaction(true)
	defer func() { txn.Discard() }()
	// write runs op in txn; a transaction that is full is committed and
	// op runs again in a new one.
	write := func(op func(txn *badger.Txn) error) error {
		err := op(txn)
		if !errors.Is(err, badger.ErrTxnTooBig) {
			return err
		}
		if err := txn.Commit(); err != nil {
			return err
		}
		txn = t.c.db.NewTransaction(true)
		return op(txn)
	}
	for k, r := range t.ov {
		key := concat(t.rowPrefix, []byte(k))
		err := write(func(txn *badger.Txn) error { return r.write(txn, key) })
		if err != nil {
			return fmt.Errorf("flush rows of %s: %w", t.name, err)
		}
	}
	if err := write(func(txn *badger.Txn) error { return t.setMeta(txn, m) }); err != nil {
		return fmt.Errorf("flush rows of %s: %w", t.name, err)
	}
	if err := txn.Commit(); err != nil {
		return fmt.Errorf("flush rows of %s: %w", t.name, err)
	}
	t.mu.Lock()
	t.meta.Rows, t.rowsBuilt = m.Rows, m.Rows
	t.mu.Unlock()
	clear(t.ov)
	t.ovBytes, t.ovChanges = 0, 0
	return nil
}

// flushRowsThrough makes the rows in badger t's through seq at least (the
// committer flushes the overlay when they are behind it).
func (t *OwnedTable) flushRowsThrough(seq uint64) error {
	t.mu.Lock()
	rows := t.meta.Rows
	t.mu.Unlock()
	if rows >= seq {
		return nil
	}
	var err error
	if cerr := t.c.inCommitter(func() { err = t.flushRows() }); cerr != nil {
		return cerr
	}
	return err
}

// rowTxn opens a read transaction in which t's rows are the table at the
// meta's Head (returned), with t's segments pinned; done discards it.
// When the rows of the first one it opens are behind Head, the committer
// flushes the overlay and the transaction is opened there.
func (t *OwnedTable) rowTxn() (txn *badger.Txn, m ownerMeta, done func(), err error) {
	pin := t.seg.pin()
	txn = t.c.db.NewTransaction(false)
	m, err = t.readMeta(txn)
	if err == nil && m.Rows < m.Head {
		txn.Discard()
		txn = nil
		var ferr error
		cerr := t.c.inCommitter(func() {
			if ferr = t.flushRows(); ferr == nil {
				txn = t.c.db.NewTransaction(false)
			}
		})
		if err = errors.Join(cerr, ferr); err == nil {
			m, err = t.readMeta(txn)
			if err == nil && m.Rows != m.Head {
				err = fmt.Errorf("rows through %d, head %d after a flush", m.Rows, m.Head)
			}
		}
	}
	done = func() {
		if txn != nil {
			txn.Discard()
		}
		t.seg.unpin(pin)
	}
	if err != nil {
		done()
		return nil, m, nil, err
	}
	return txn, m, done, nil
}

// rowView runs fn in a transaction of rowTxn.
func (t *OwnedTable) rowView(fn func(txn *badger.Txn, m ownerMeta) error) error {
	txn, m, done, err := t.rowTxn()
	if err != nil {
		return err
	}
	defer done()
	return fn(txn, m)
}

// replayRows fills t's overlay with the log's changes above the meta's
// Rows, to Head, and flushes it: Own's recovery of the rows a crash left
// behind. Every seq of them must be in the log (trimming never drops an
// entry above Rows: it keeps them, below the window when First has passed
// Rows, which is why this is not scanLog, which refuses a seq below First).
func (t *OwnedTable) replayRows() error {
	from, head := t.meta.Rows+1, t.meta.Head
	next := from
	err := t.c.db.View(func(txn *badger.Txn) error {
		return t.eachGroup(txn, from, func(_ uint64, g *logGroup) (bool, error) {
			i, _ := g.find(next)
			for ; i < g.n && g.seq(i) <= head; i++ {
				seq := g.seq(i)
				if seq != next {
					return false, fmt.Errorf("log entry %d: %w", next, badger.ErrKeyNotFound)
				}
				v, err := g.entry(i)
				if err != nil {
					return false, err
				}
				ch, err := decodeLogEntry(seq, v)
				if err != nil {
					return false, err
				}
				t.addOverlay([]transport.Change{ch})
				next++
			}
			return next <= head, nil
		})
	})
	if err == nil && next <= head {
		err = fmt.Errorf("log entry %d: %w", next, badger.ErrKeyNotFound)
	}
	if err != nil {
		return fmt.Errorf("replay the rows from %d to %d: %w", from, head, err)
	}
	return t.flushRows()
}

// ovTake is an overlay row a direct commit took out of the overlay.
type ovTake struct {
	key string
	row ovRow
}

// takeOverlay drops key's row from t's overlay, when it has one, for a
// direct commit that writes the key's row (the overlay's is older), and
// appends it to taken (committer).
func (t *OwnedTable) takeOverlay(key []byte, taken []ovTake) []ovTake {
	r, ok := t.ov[string(key)]
	if !ok {
		return taken
	}
	delete(t.ov, string(key))
	t.ovBytes -= len(key)
	return append(taken, ovTake{string(key), r})
}

// drainOverlay writes up to drainChunk rows of t's overlay, within the
// budget of *rows rows and about *size bytes (taken off them), into txn,
// a direct commit's, drops them from the overlay and appends them to
// taken (committer).
func (t *OwnedTable) drainOverlay(txn *badger.Txn, rows, size *int, taken []ovTake) ([]ovTake, error) {
	n := drainChunk
	if c := drainChunkForTest.Load(); c > 0 {
		n = int(c)
	}
	for k, r := range t.ov {
		if n <= 0 || *rows <= 0 || *size <= 0 {
			break
		}
		key := concat(t.rowPrefix, []byte(k))
		if err := r.write(txn, key); err != nil {
			return taken, err
		}
		delete(t.ov, k)
		t.ovBytes -= len(k)
		taken = append(taken, ovTake{k, r})
		n--
		*rows--
		*size -= len(key) + refRowSize + 16
	}
	return taken, nil
}

// giveBackOverlay puts the rows a direct commit that failed took back
// into t's overlay (committer). Nothing newer of their keys is there: a
// direct run adds nothing to the overlay, and the commits after a failed
// one fail too.
func (t *OwnedTable) giveBackOverlay(taken []ovTake) {
	for _, x := range taken {
		if _, ok := t.ov[x.key]; !ok {
			t.ovBytes += len(x.key)
		}
		t.ov[x.key] = x.row
	}
}
