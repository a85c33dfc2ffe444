package replica

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"

	"github.com/dgraph-io/badger/v4"
	"github.com/replmesh/replmesh/transport"
)

// The owner's change log is stored in log groups: the log entries of one
// commit group (or of one piece of it, see groupPieceMax) packed into one
// badger entry, o/<table>/g/<bound:8 BE>. bound is the seq of the group's
// last entry when it was written, and stays its key when trimming rewrites
// the group with fewer entries, so it is an upper bound of the seqs the
// group holds. Groups never overlap (each holds seqs above the previous
// group's bound), so the group that holds seq s is the first one at or
// after o/<table>/g/<s>: one Seek. Ref rows hold a plain seq.
//
// A group's value: kind (1), entry count n (4, BE); then the seqs: the
// first (8, BE) when they are consecutive (groupDense), else all n (8
// each, ascending; groupSparse); then n end offsets (4 each, BE) into the
// entries that follow, each an appendLogEntry encoding. One entry is read by its
// offsets, without decoding the others.

// Group kinds: the first byte of a group's value.
const (
	groupDense  byte = 1
	groupSparse byte = 2
)

// groupPieceTarget bounds a group's value (a larger commit group is split
// into several groups, each under its own key; see groupPieceMax).
const groupPieceTarget = 1 << 20

// logGroup is a parsed group value; its slices alias the value.
type logGroup struct {
	n     int
	first uint64 // dense: the first seq
	seqs  []byte // sparse: n seqs
	ends  []byte // n end offsets into data
	data  []byte
}

func parseGroup(v []byte) (logGroup, error) {
	var g logGroup
	if len(v) < 5 {
		return g, fmt.Errorf("log group: short (%d bytes)", len(v))
	}
	kind, n := v[0], int(binary.BigEndian.Uint32(v[1:5]))
	rest := v[5:]
	switch kind {
	case groupDense:
		if len(rest) < 8 {
			return g, fmt.Errorf("log group: short (%d bytes)", len(v))
		}
		g.first, rest = binary.BigEndian.Uint64(rest), rest[8:]
	case groupSparse:
		if n > len(rest)/8 {
			return g, fmt.Errorf("log group: %d seqs in %d bytes", n, len(v))
		}
		g.seqs, rest = rest[:8*n], rest[8*n:]
	default:
		return g, fmt.Errorf("log group: bad kind %d", kind)
	}
	if n == 0 || n > len(rest)/4 {
		return g, fmt.Errorf("log group: %d entries in %d bytes", n, len(v))
	}
	g.n, g.ends, g.data = n, rest[:4*n], rest[4*n:]
	if end := int(binary.BigEndian.Uint32(g.ends[4*(n-1):])); end != len(g.data) {
		return g, fmt.Errorf("log group: entries end at %d of %d bytes", end, len(g.data))
	}
	return g, nil
}

// seq is the seq of entry i.
func (g *logGroup) seq(i int) uint64 {
	if g.seqs == nil {
		return g.first + uint64(i)
	}
	return binary.BigEndian.Uint64(g.seqs[8*i:])
}

// span is the byte range of entry i in data.
func (g *logGroup) span(i int) (start, end int) {
	if i > 0 {
		start = int(binary.BigEndian.Uint32(g.ends[4*(i-1):]))
	}
	end = int(binary.BigEndian.Uint32(g.ends[4*i:]))
	return start, end
}

// entry is the bytes of entry i (an appendLogEntry encoding).
func (g *logGroup) entry(i int) ([]byte, error) {
	s, e := g.span(i)
	if s > e || e > len(g.data) {
		return nil, fmt.Errorf("log group: entry %d at bad offsets %d..%d", i, s, e)
	}
	return g.data[s:e:e], nil
}

// find returns the index of the first entry whose seq is at least seq (n
// when none is) and whether it is seq.
func (g *logGroup) find(seq uint64) (int, bool) {
	if g.seqs == nil {
		if seq < g.first {
			return 0, false
		}
		i := int(min(seq-g.first, uint64(g.n)))
		return i, i < g.n
	}
	lo, hi := 0, g.n
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if g.seq(m) < seq {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo, lo < g.n && g.seq(lo) == seq
}

// groupBuilder packs log entries, in ascending seq order, into a group
// value.
type groupBuilder struct {
	seqs []uint64
	ends []uint32
	data []byte
}

func (b *groupBuilder) reset() { b.seqs, b.ends, b.data = b.seqs[:0], b.ends[:0], b.data[:0] }

func (b *groupBuilder) len() int { return len(b.seqs) }

// size is the group value's size so far.
func (b *groupBuilder) size() int { return 13 + 12*len(b.seqs) + len(b.data) }

// addChange appends ch's log entry.
func (b *groupBuilder) addChange(ch *transport.Change) {
	b.data = appendLogEntry(b.data, ch)
	b.seqs = append(b.seqs, ch.Seq)
	b.ends = append(b.ends, uint32(len(b.data)))
}

// add appends a log entry already encoded.
func (b *groupBuilder) add(seq uint64, entry []byte) {
	b.data = append(b.data, entry...)
	b.seqs = append(b.seqs, seq)
	b.ends = append(b.ends, uint32(len(b.data)))
}

// encode returns the group value (a new slice) of the entries added.
func (b *groupBuilder) encode() []byte {
	return b.appendTo(make([]byte, 0, b.encodedSize()))
}

// dense reports whether the seqs added are consecutive (groupDense).
func (b *groupBuilder) dense() bool {
	n := len(b.seqs)
	return b.seqs[n-1]-b.seqs[0] == uint64(n-1)
}

// encodedSize is the size of the group value of the entries added.
func (b *groupBuilder) encodedSize() int {
	n := len(b.seqs)
	size := 5 + 4*n + len(b.data)
	if b.dense() {
		return size + 8
	}
	return size + 8*n
}

// appendTo appends the group value of the entries added to v.
func (b *groupBuilder) appendTo(v []byte) []byte {
	n := len(b.seqs)
	dense := b.dense()
	kind := groupSparse
	if dense {
		kind = groupDense
	}
	v = append(v, kind)
	v = binary.BigEndian.AppendUint32(v, uint32(n))
	if dense {
		v = binary.BigEndian.AppendUint64(v, b.seqs[0])
	} else {
		for _, s := range b.seqs {
			v = binary.BigEndian.AppendUint64(v, s)
		}
	}
	for _, e := range b.ends {
		v = binary.BigEndian.AppendUint32(v, e)
	}
	return append(v, b.data...)
}

// groupPieceMax is the largest group value of c's log: under badger's
// value threshold, so a group stays in the LSM tree with its key, and a
// fraction of badger's transaction limit, so a group always fits a
// transaction with the rest of its commit; at most groupPieceTarget. A
// single entry larger than it is a group of its own.
//
// Under the threshold, not in the value log: badger reclaims the value
// log only when asked (DB.RunValueLogGC), and its GC writes live values
// back at their old versions, which can bring back an older version of a
// key that was rewritten or deleted since (a group trimming rewrote: its
// dropped entries, or a deleted group of another history). Trimming
// rewrites and deletes groups all the time, so groups must not lie there.
func (c *Component) groupPieceMax() int {
	if n := groupPieceMaxForTest.Load(); n > 0 {
		return int(n)
	}
	return int(min(groupPieceTarget, c.db.Opts().ValueThreshold-1, c.db.MaxBatchSize()/4))
}

// groupPieceMaxForTest, when above 0, is groupPieceMax (tests that split
// commit groups into many log groups).
var groupPieceMaxForTest atomic.Int64

// txnBudget is how much one transaction of a trim or a migration may
// write: a third of badger's limits, in bytes (values counted whole) and
// in entries.
func (c *Component) txnBudget() (bytes int, entries int) {
	return int(c.db.MaxBatchSize() / 3), int(c.db.MaxBatchCount() / 3)
}

// logWriter writes one table's changes of one transaction as the owner
// stores them: the rows (a ref row, or the row's deletion) and the log
// entries, packed into groups of up to groupPieceMax bytes. The primary's
// group commit and a standby's replicated apply both write through it.
// It reads nothing: an older entry of the key that trimming kept is
// dropped by trimming (ownerstore.go). On disk the groups of the
// transaction are written to the table's segment together, in one
// write, by flush.
type logWriter struct {
	t     *OwnedTable
	b     groupBuilder
	max   int
	bytes int64 // the log entry bytes written (the log's size counts entries, not group headers)
	// noRows: the rows are not written (the primary's commit; ownrows.go).
	noRows  bool
	changes int // the changes added
	// The groups cut for the segment: their values back to back, each
	// one's piece, and their keys' seqs.
	out    []byte
	pieces []segPiece
	bounds []uint64
}

func newLogWriter(t *OwnedTable) *logWriter { return &logWriter{t: t, max: t.c.groupPieceMax()} }

// logBuffers are the buffers a logWriter grows, kept by the committer
// between commits (Component.logSpare).
type logBuffers struct {
	b      groupBuilder
	out    []byte
	pieces []segPiece
	bounds []uint64
}

// logSpareMax is the most bytes of buffers the committer keeps: a commit
// larger than that grows its own (and they are dropped).
const logSpareMax = 4 << 20

// useBuffers has w (new, nothing added) take the buffers in s.
func (w *logWriter) useBuffers(s *logBuffers) {
	w.b.seqs, w.b.ends, w.b.data = s.b.seqs[:0], s.b.ends[:0], s.b.data[:0]
	w.out, w.pieces, w.bounds = s.out[:0], s.pieces[:0], s.bounds[:0]
	*s = logBuffers{}
}

// giveBuffers hands w's buffers to s, when they are small enough to keep;
// w must not be written to again (what it wrote, it wrote elsewhere:
// badger's transaction and the segment keep no reference to them).
func (w *logWriter) giveBuffers(s *logBuffers) {
	if cap(w.out)+cap(w.b.data)+8*cap(w.b.seqs)+4*cap(w.b.ends) > logSpareMax {
		return
	}
	*s = logBuffers{b: w.b, out: w.out, pieces: w.pieces, bounds: w.bounds}
	w.b, w.out, w.pieces, w.bounds = groupBuilder{}, nil, nil, nil
}

// add writes ch's row into txn (unless noRows: the primary's commit,
// whose rows the committer writes later; ownrows.go) and adds its log
// entry to the group.
func (w *logWriter) add(txn *badger.Txn, ch *transport.Change) error {
	w.changes++
	if !w.noRows {
		rowKey := concat(w.t.rowPrefix, ch.Key)
		var err error
		if ch.Op == transport.OpDelete {
			err = txn.Delete(rowKey)
		} else {
			err = txn.Set(rowKey, encodeRefRow(ch.Seq))
		}
		if err != nil {
			return err
		}
	}
	if w.b.len() > 0 && w.b.size()+logEntrySize(ch)+12 > w.max {
		if err := w.cut(txn); err != nil {
			return err
		}
	}
	w.b.addChange(ch)
	return nil
}

// cut ends the group built so far: into txn, or (on disk) onto the
// groups flush writes to the segment.
func (w *logWriter) cut(txn *badger.Txn) error {
	if w.b.len() == 0 {
		return nil
	}
	bound := w.b.seqs[len(w.b.seqs)-1]
	if w.t.seg != nil {
		w.out = w.b.appendTo(w.out)
		w.pieces = append(w.pieces, segPiece{end: len(w.out), entries: w.b.len(), sparse: !w.b.dense(), data: len(w.b.data)})
		w.bounds = append(w.bounds, bound)
	} else if err := txn.Set(ownLogKey(w.t.logPrefix, bound), w.b.encode()); err != nil {
		return err
	}
	w.bytes += int64(len(w.b.data))
	w.b.reset()
	return nil
}

// flush writes the groups built so far: into txn, or (on disk) to the
// segment, in one write, with their references into txn.
func (w *logWriter) flush(txn *badger.Txn) error {
	if err := w.cut(txn); err != nil {
		return err
	}
	if len(w.bounds) == 0 {
		return nil
	}
	refs, err := w.t.seg.append(w.out, w.pieces, w.bounds[len(w.bounds)-1])
	if err != nil {
		return err
	}
	for i, bound := range w.bounds {
		if err := txn.Set(ownLogKey(w.t.logPrefix, bound), refs[i]); err != nil {
			return err
		}
	}
	w.out, w.pieces, w.bounds = w.out[:0], w.pieces[:0], w.bounds[:0]
	return nil
}

// logIterOptions are the options of an iterator over t's log groups: the
// values are read where they lie (a group is read in part).
func (t *OwnedTable) logIterOptions() badger.IteratorOptions {
	return badger.IteratorOptions{Prefix: t.logPrefix, PrefetchSize: 8}
}

// groupBytes is the group value v stands for: v itself, or, when v
// references a segment (groupExt), its bytes, read into *buf (grown as
// needed, and kept there for the next read).
func (t *OwnedTable) groupBytes(v []byte, buf *[]byte) ([]byte, error) {
	if len(v) == 0 || v[0] != groupExt {
		return v, nil
	}
	r, err := parseSegRef(v)
	if err != nil {
		return nil, err
	}
	if t.seg == nil {
		return nil, fmt.Errorf("log group in segment %d: the component has no data dir", r.id)
	}
	b, err := t.seg.read(r, *buf)
	if err != nil {
		return nil, err
	}
	*buf = b
	return b, nil
}

// logEntry calls fn with the log entry of seq, read in txn; fn must not
// retain it. The error wraps badger.ErrKeyNotFound when the log has no
// entry at seq.
func (t *OwnedTable) logEntry(txn *badger.Txn, seq uint64, fn func(entry []byte) error) error {
	found := false
	err := t.eachGroup(txn, seq, func(_ uint64, g *logGroup) (bool, error) {
		i, ok := g.find(seq)
		if !ok {
			return false, nil
		}
		e, err := g.entry(i)
		if err != nil {
			return false, err
		}
		found = true
		return false, fn(e)
	})
	if err == nil && !found {
		err = fmt.Errorf("log entry %d: %w", seq, badger.ErrKeyNotFound)
	}
	return err
}

// groupCursor walks t's log groups in seq order with an iterator,
// keeping the current group's value (a copy) for lookups of several
// seqs in ascending order (scanValues).
type groupCursor struct {
	t     *OwnedTable
	it    *badger.Iterator
	buf   []byte
	ext   []byte // a segment's group bytes
	g     logGroup
	bound uint64 // the current group's key; 0: none loaded
}

// entry returns the log entry of seq (aliasing the cursor's buffer, valid
// until the next call); seqs must come in ascending order.
func (c *groupCursor) entry(seq uint64) ([]byte, error) {
	lp := c.t.logPrefix
	if c.bound == 0 || seq > c.bound {
		// The next group is usually it: a step costs less than a seek.
		if c.bound != 0 && c.it.Valid() {
			c.it.Next()
		}
		if !c.it.Valid() || binary.BigEndian.Uint64(c.it.Item().Key()[len(lp):]) < seq {
			c.it.Seek(ownLogKey(lp, seq))
		}
		if !c.it.Valid() {
			return nil, fmt.Errorf("log entry %d: %w", seq, badger.ErrKeyNotFound)
		}
		var err error
		if c.buf, err = c.it.Item().ValueCopy(c.buf[:0]); err != nil {
			return nil, err
		}
		v, err := c.t.groupBytes(c.buf, &c.ext)
		if err != nil {
			return nil, err
		}
		if c.g, err = parseGroup(v); err != nil {
			return nil, err
		}
		c.bound = binary.BigEndian.Uint64(c.it.Item().Key()[len(lp):])
	}
	i, ok := c.g.find(seq)
	if !ok {
		return nil, fmt.Errorf("log entry %d: %w", seq, badger.ErrKeyNotFound)
	}
	return c.g.entry(i)
}

// eachGroup calls fn for each log group of t from the one that may hold
// seq from on, in seq order, with the group's key and value (valid during
// the call), until fn returns false or an error.
func (t *OwnedTable) eachGroup(txn *badger.Txn, from uint64, fn func(bound uint64, g *logGroup) (bool, error)) error {
	it := txn.NewIterator(t.logIterOptions())
	defer it.Close()
	lp := t.logPrefix
	var buf []byte
	for it.Seek(ownLogKey(lp, from)); it.Valid(); it.Next() {
		bound := binary.BigEndian.Uint64(it.Item().Key()[len(lp):])
		cont := true
		err := it.Item().Value(func(v []byte) error {
			v, err := t.groupBytes(v, &buf)
			if err != nil {
				return fmt.Errorf("log group %d: %w", bound, err)
			}
			g, err := parseGroup(v)
			if err != nil {
				return fmt.Errorf("log group %d: %w", bound, err)
			}
			cont, err = fn(bound, &g)
			return err
		})
		if err != nil || !cont {
			return err
		}
	}
	return nil
}

// measureLog finds the window of the log, the seqs from First to head
// with no gap, walking back from head, and sums its entries' sizes.
// Below the window lie the entries trimming kept as rows' values
// (ownerstore.go), and seqs a trim cut short by a crash left: past the
// last gap, the entries are all there, and serving them is serving the
// table's history.
func (t *OwnedTable) measureLog(head uint64) (first uint64, size int64) {
	first = head + 1
	_ = t.c.db.View(func(txn *badger.Txn) error {
		o := t.logIterOptions()
		o.Reverse = true
		it := txn.NewIterator(o)
		defer it.Close()
		lp := t.logPrefix
		var buf []byte
		for it.Seek(ownLogKey(lp, ^uint64(0))); it.Valid(); it.Next() {
			gap := false
			bound := binary.BigEndian.Uint64(it.Item().Key()[len(lp):])
			err := it.Item().Value(func(v []byte) error {
				if r, err := parseSegRef(v); err == nil && !r.sparse && bound <= head && r.entries > 0 && uint64(r.entries) <= bound {
					// Sized from the reference: a dense group holds
					// bound-entries+1 .. bound.
					if bound != first-1 {
						gap = true
						return nil
					}
					first = bound + 1 - uint64(r.entries)
					size += int64(r.data)
					return nil
				}
				v, err := t.groupBytes(v, &buf)
				if err != nil {
					return err
				}
				g, err := parseGroup(v)
				if err != nil {
					return err
				}
				for i := g.n - 1; i >= 0; i-- {
					seq := g.seq(i)
					if seq > head {
						continue
					}
					if seq != first-1 {
						gap = true
						return nil
					}
					first = seq
					s, e := g.span(i)
					size += int64(e - s)
				}
				return nil
			})
			if err != nil || gap {
				return err
			}
		}
		return nil
	})
	return first, size
}

// migrateLogHook, when set (tests), is called before each transaction of
// migrateLog with the number of transactions done; an error stops the
// migration there, as a crash would.
var migrateLogHook func(done int) error

// migrateLog converts a table's log from format 1 (a badger entry per
// change, o/<table>/l/<seq>) to log groups. The entries are packed in seq
// order, as many as a transaction takes, into groups of up to
// groupPieceMax bytes, and deleted from the old layout in the same
// transaction: an interrupted migration resumes with the entries left
// there (the groups written hold lower seqs than any of them). The last
// transaction sets Format. m is the table's meta; the migrated meta is
// returned.
func (t *OwnedTable) migrateLog(m ownerMeta) (ownerMeta, error) {
	old := ownLegacyLogPrefix(t.name)
	maxBytes, maxEntries := t.c.txnBudget()
	pieceMax := t.c.groupPieceMax()
	for done := 0; m.Format == formatRefRows; done++ {
		if migrateLogHook != nil {
			if err := migrateLogHook(done); err != nil {
				return m, err
			}
		}
		err := t.c.db.Update(func(txn *badger.Txn) error {
			var groups [][]byte
			var bounds []uint64
			var olds [][]byte
			var b groupBuilder
			total, finished := 0, true
			flush := func() {
				if b.len() > 0 {
					groups = append(groups, b.encode())
					bounds = append(bounds, b.seqs[b.len()-1])
					b.reset()
				}
			}
			err := func() error {
				o := badger.DefaultIteratorOptions
				o.Prefix = old
				o.PrefetchSize = 64
				it := txn.NewIterator(o)
				defer it.Close()
				for it.Rewind(); it.Valid(); it.Next() {
					item := it.Item()
					if total >= maxBytes || 2*len(olds)+len(groups) >= maxEntries {
						finished = false
						return nil
					}
					seq := binary.BigEndian.Uint64(item.Key()[len(old):])
					v, err := item.ValueCopy(nil)
					if err != nil {
						return err
					}
					if _, err := decodeLogEntry(seq, v); err != nil {
						return err
					}
					if b.len() > 0 && b.size()+len(v)+12 > pieceMax {
						flush()
					}
					b.add(seq, v)
					olds = append(olds, item.KeyCopy(nil))
					total += 2 * (len(v) + 16)
				}
				return nil
			}()
			if err != nil {
				return err
			}
			flush()
			for _, k := range olds {
				if err := txn.Delete(k); err != nil {
					return err
				}
			}
			for i, g := range groups {
				if err := txn.Set(ownLogKey(t.logPrefix, bounds[i]), g); err != nil {
					return err
				}
			}
			if finished {
				m.Format = formatSegments
				return t.setMeta(txn, m)
			}
			return nil
		})
		if err != nil {
			return m, fmt.Errorf("migrate %s to owner format %d: %w", t.name, formatSegments, err)
		}
	}
	return m, nil
}
