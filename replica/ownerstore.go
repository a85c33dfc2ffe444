package replica

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/dgraph-io/badger/v4"
	"github.com/replmesh/replmesh/transport"
	"github.com/vmihailenco/msgpack/v5"
)

// The owner stores each value once. The change log is the truth: a put's
// value lives in its log entry, and the table's row only points at it (a
// ref row: the seq of the key's latest change). Rows written by a full
// transfer or a restore have no log entry (the log starts after the
// snapshot's seq) and hold their value (an inline row). The log entries
// of a commit group are packed into one badger entry, a log group
// (ownlog.go), so a change costs the owner one badger key (its row) and a
// share of its group's.
//
// Trimming keeps the entries that are still a row's current value and
// drops the superseded ones and the deletes (trimKept). A kept entry lies
// below First, outside the window consumers are served from, and is
// recorded in the keep index (o/<table>/k/<key> = its seq), so that when
// the change that supersedes it is trimmed in turn, the kept entry goes
// too: the write path reads nothing, and a superseded kept entry (at most
// one a key) waits below the window only while its successor is in it.
// Dropping entries rewrites their group, under the same key, with the
// entries left; a group left with none is deleted.

// ownFormat is the owner storage format this code writes, recorded in the
// table's meta (ownerMeta.Format). Own migrates the formats before it:
// 0 (the row holding its seq and a second copy of the value;
// migrateLegacy) to formatRefRows, and formatRefRows (a badger entry per
// log entry; migrateLog) to log groups; formatGroups (log groups held
// whole in badger) is ownFormat's subset, and needs only its Format
// changed. formatSegments writes a group's bytes to a segment on disk.
// ownFormat writes the rows lazily (ownrows.go): they are the table's
// through the meta's Rows, the log above it; a table of formatSegments
// has all its rows, and needs only Rows set to its Head.
const ownFormat = 4

// formatSegments is the owner format of log groups whose bytes are in
// segments on disk, with every commit writing its rows.
const formatSegments = 3

// formatGroups is the owner format of log groups held whole in badger.
// Its groups stay readable in ownFormat, where groups written on disk
// hold a reference to a segment (ownseg.go) instead: the migration is
// the meta's Format alone.
const formatGroups = 2

// formatRefRows is the owner format of ref rows with one badger entry per
// log entry (o/<table>/l/<seq>).
const formatRefRows = 1

// migrate brings a table stored in an older owner format to ownFormat; m
// is its meta as loaded, the migrated meta is returned.
func (t *OwnedTable) migrate(m ownerMeta) (ownerMeta, error) {
	var err error
	if m.Format == 0 {
		if m, err = t.migrateLegacy(m); err != nil {
			return m, err
		}
	}
	if m.Format == formatRefRows {
		if m, err = t.migrateLog(m); err != nil {
			return m, err
		}
	}
	if m.Format == formatGroups || m.Format == formatSegments {
		m.Format, m.Rows = ownFormat, m.Head
		err = t.c.db.Update(func(txn *badger.Txn) error { return t.setMeta(txn, m) })
		if err != nil {
			return m, fmt.Errorf("migrate %s to owner format %d: %w", t.name, ownFormat, err)
		}
	}
	return m, nil
}

// setMeta writes m as t's meta in txn.
func (t *OwnedTable) setMeta(txn *badger.Txn, m ownerMeta) error {
	b, err := msgpack.Marshal(&m)
	if err != nil {
		return err
	}
	return txn.Set(t.metaKey, b)
}

// Row kinds: the first byte of an owned row.
const (
	rowInLog  byte = 1 // seq (8, BE): the value is in the log entry of seq
	rowInline byte = 2 // seq (8, BE), then the value
)

// refRowSize is the size of a ref row.
const refRowSize = 9

func encodeRefRow(seq uint64) []byte {
	b := make([]byte, refRowSize)
	b[0] = rowInLog
	binary.BigEndian.PutUint64(b[1:], seq)
	return b
}

func encodeInlineRow(seq uint64, value []byte) []byte {
	b := make([]byte, refRowSize+len(value))
	b[0] = rowInline
	binary.BigEndian.PutUint64(b[1:], seq)
	copy(b[refRowSize:], value)
	return b
}

// decodeOwnRow returns a row's kind, the seq of its change, and its value
// when inline.
func decodeOwnRow(b []byte) (kind byte, seq uint64, value []byte, err error) {
	if len(b) < refRowSize {
		return 0, 0, nil, fmt.Errorf("owned row: short (%d bytes)", len(b))
	}
	kind, seq = b[0], binary.BigEndian.Uint64(b[1:refRowSize])
	switch {
	case kind == rowInLog && len(b) == refRowSize:
		return kind, seq, nil, nil
	case kind == rowInline:
		return kind, seq, b[refRowSize:], nil
	}
	return 0, 0, nil, fmt.Errorf("owned row: bad kind %d (%d bytes)", kind, len(b))
}

// rowValue calls fn with the value of the row of key whose stored bytes
// are row, read in txn (the same snapshot as the row). fn must not retain
// the value.
func (t *OwnedTable) rowValue(txn *badger.Txn, key, row []byte, fn func(val []byte) error) error {
	kind, seq, val, err := decodeOwnRow(row)
	if err != nil {
		return err
	}
	if kind == rowInline {
		return fn(val)
	}
	err = t.logEntry(txn, seq, func(v []byte) error {
		ch, err := decodeLogEntry(seq, v)
		if err != nil {
			return err
		}
		if ch.Op != transport.OpPut || !bytes.Equal(ch.Key, key) {
			return fmt.Errorf("row %q: log entry %d is a change of %q (op %d)", key, seq, ch.Key, ch.Op)
		}
		return fn(ch.Value)
	})
	if err != nil {
		return fmt.Errorf("row %q: %w", key, err)
	}
	return nil
}

// getRow reads key's current value in txn; ok is false when the table has
// no such row. The value is a copy.
func (t *OwnedTable) getRow(txn *badger.Txn, key []byte) (value []byte, ok bool, err error) {
	item, err := txn.Get(concat(t.rowPrefix, key))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	err = item.Value(func(row []byte) error {
		return t.rowValue(txn, key, row, func(val []byte) error {
			value = bytes.Clone(val)
			return nil
		})
	})
	return value, err == nil, err
}

// scanValues is scanRows over t's rows with each row's value. A point
// read of the log per row would cost a full badger lookup each, so the
// rows are taken in batches (scanBatch rows or about 1 MiB of values) and
// each batch's log entries are read by one iterator in seq order: rows
// written together (a bulk load, a busy range) have neighbouring seqs, so
// most are a step of the iterator, not a seek.
func (t *OwnedTable) scanValues(txn *badger.Txn, prefix, start, end []byte, fn func(k, v []byte) (bool, error)) error {
	b := &valueBatch{t: t, txn: txn}
	stopped := false
	err := scanRows(txn, t.rowPrefix, prefix, start, end, func(k, row []byte) (bool, error) {
		if err := b.add(k, row); err != nil {
			return false, err
		}
		if !b.full() {
			return true, nil
		}
		cont, err := b.flush(fn)
		stopped = !cont
		return cont && err == nil, err
	})
	if err != nil || stopped {
		return err
	}
	_, err = b.flush(fn)
	return err
}

// scanBatch is how many rows scanValues resolves at once.
const scanBatch = 4096

// valueBatch is a batch of rows of scanValues: keys and values in one
// arena, ref rows resolved from the log in seq order.
type valueBatch struct {
	t     *OwnedTable
	txn   *badger.Txn
	arena []byte
	rows  []batchRow
	refs  []int // indexes of the ref rows, sorted by seq at flush
}

type batchRow struct {
	key, val [2]int // arena offsets
	seq      uint64 // a ref row's seq
}

func (b *valueBatch) full() bool { return len(b.rows) >= scanBatch || len(b.arena) >= 1<<20 }

func (b *valueBatch) add(k, row []byte) error {
	kind, seq, val, err := decodeOwnRow(row)
	if err != nil {
		return fmt.Errorf("row %q: %w", k, err)
	}
	r := batchRow{seq: seq}
	r.key[0] = len(b.arena)
	b.arena = append(b.arena, k...)
	r.key[1] = len(b.arena)
	if kind == rowInLog {
		b.refs = append(b.refs, len(b.rows))
	} else {
		r.val[0] = len(b.arena)
		b.arena = append(b.arena, val...)
		r.val[1] = len(b.arena)
	}
	b.rows = append(b.rows, r)
	return nil
}

// flush resolves the batch's ref rows, calls fn for each row in key
// order and empties the batch; cont is false when fn stopped.
func (b *valueBatch) flush(fn func(k, v []byte) (bool, error)) (cont bool, err error) {
	if len(b.refs) > 0 {
		slices.SortFunc(b.refs, func(x, y int) int { return cmp.Compare(b.rows[x].seq, b.rows[y].seq) })
		if err := b.resolve(); err != nil {
			return false, err
		}
	}
	for i := range b.rows {
		r := &b.rows[i]
		if cont, err = fn(b.arena[r.key[0]:r.key[1]], b.arena[r.val[0]:r.val[1]]); !cont || err != nil {
			return cont, err
		}
	}
	b.arena, b.rows, b.refs = b.arena[:0], b.rows[:0], b.refs[:0]
	return true, nil
}

// resolve reads the values of the ref rows (b.refs, in seq order) from
// the log with one iterator: rows written together share a group.
func (b *valueBatch) resolve() error {
	it := b.txn.NewIterator(b.t.logIterOptions())
	defer it.Close()
	cur := groupCursor{t: b.t, it: it}
	for _, i := range b.refs {
		r := &b.rows[i]
		key := b.arena[r.key[0]:r.key[1]]
		v, err := cur.entry(r.seq)
		if err != nil {
			return fmt.Errorf("row %q: %w", key, err)
		}
		ch, err := decodeLogEntry(r.seq, v)
		if err != nil {
			return err
		}
		if ch.Op != transport.OpPut || !bytes.Equal(ch.Key, key) {
			return fmt.Errorf("row %q: log entry %d is a change of %q (op %d)", key, r.seq, ch.Key, ch.Op)
		}
		r.val[0] = len(b.arena)
		b.arena = append(b.arena, ch.Value...)
		r.val[1] = len(b.arena)
	}
	return nil
}

// trimChunk is the most log entries one transaction of trimKept
// handles (besides its byte and entry budget, Component.txnBudget).
const trimChunk = 4096

// trimKept removes the log entries [from, to) that left the window (First
// is already past them): a delete, or a put its row no longer points at,
// is dropped; a put that is still its row's value stays, recorded in the
// keep index, where it replaces (and drops) the key's older kept entry.
// An entry whose key has a later one in the same chunk is superseded
// without a look at the row (retire runs for the key's last entry only).
// The groups that lose entries are rewritten under their keys with the
// entries left (a group with kept entries holds only them from then on),
// or deleted when none is left. Each chunk is one transaction, in seq
// order, so a crash leaves every entry below the chunks done handled and
// the rest untouched (Own measures First from the log: untouched entries
// are in the window again and the next trim handles them; a handled
// entry found there again is recognised by its keep index entry).
func (t *OwnedTable) trimKept(from, to uint64) error {
	// Trimming reads rows, and must never drop an entry above the rows
	// written (a crash would leave the change in neither).
	if err := t.flushRowsThrough(to - 1); err != nil {
		return err
	}
	for from < to {
		var next uint64
		err := t.c.db.Update(func(txn *badger.Txn) error {
			e := newTrimEdit(t, txn)
			var err error
			next, err = e.run(from, to)
			if err != nil {
				return err
			}
			return e.write()
		})
		if err != nil {
			return err
		}
		from = next
	}
	return nil
}

// trimEdit is one transaction of trimKept: the groups it read, the
// entries it drops from them.
type trimEdit struct {
	t              *OwnedTable
	txn            *badger.Txn
	groups         map[uint64]*editGroup // by key
	bounds         []uint64              // the keys of groups, ascending
	bytes, entries int                   // what the transaction will write, about
	maxBytes       int
	maxEntries     int
	// it reads the log groups while run runs: one iterator for all its
	// loads (badger sorts the transaction's pending writes for each new
	// one). run writes nothing under the log's prefix, so it sees them
	// all; write, after it, rewrites the groups.
	it *badger.Iterator
}

// editGroup is a log group a trim reads and may rewrite.
type editGroup struct {
	g       logGroup
	drop    []bool
	dropped int
	ext     bool // its bytes are in a segment: rewritten into badger even when it loses none
}

// trimEntry is an entry of the chunk being trimmed.
type trimEntry struct {
	seq uint64
	op  transport.Op
	key []byte
}

func newTrimEdit(t *OwnedTable, txn *badger.Txn) *trimEdit {
	e := &trimEdit{t: t, txn: txn, groups: map[uint64]*editGroup{}}
	e.maxBytes, e.maxEntries = t.c.txnBudget()
	return e
}

// full reports whether the transaction has taken what it may, over div
// (the chunk's entries are read with half of it: the other half is for
// the groups of the kept entries they supersede).
func (e *trimEdit) full(div int) bool {
	return e.bytes >= e.maxBytes/div || e.entries >= e.maxEntries/div
}

// load reads the group whose key is the first at or after seq, unless it
// was read already; nil when there is none. Only run calls it (e.it).
func (e *trimEdit) load(seq uint64) (uint64, *editGroup, error) {
	it := e.it
	lp := e.t.logPrefix
	it.Seek(ownLogKey(lp, seq))
	if !it.Valid() {
		return 0, nil, nil
	}
	bound := binary.BigEndian.Uint64(it.Item().Key()[len(lp):])
	if eg := e.groups[bound]; eg != nil {
		return bound, eg, nil
	}
	v, err := it.Item().ValueCopy(nil)
	if err != nil {
		return 0, nil, err
	}
	ext := len(v) > 0 && v[0] == groupExt
	var buf []byte
	if v, err = e.t.groupBytes(v, &buf); err != nil {
		return 0, nil, fmt.Errorf("log group %d: %w", bound, err)
	}
	g, err := parseGroup(v)
	if err != nil {
		return 0, nil, fmt.Errorf("log group %d: %w", bound, err)
	}
	eg := &editGroup{g: g, drop: make([]bool, g.n), ext: ext}
	e.groups[bound] = eg
	i, _ := slices.BinarySearch(e.bounds, bound)
	e.bounds = slices.Insert(e.bounds, i, bound)
	// A rewrite of the group, and its key.
	e.bytes += len(v) + len(lp) + 8
	e.entries++
	return bound, eg, nil
}

// run handles the entries from seq from on, below to, as many as the
// transaction takes, and returns the seq to go on from.
func (e *trimEdit) run(from, to uint64) (next uint64, err error) {
	e.it = e.txn.NewIterator(e.t.logIterOptions())
	defer func() {
		e.it.Close()
		e.it = nil
	}()
	var chunk []trimEntry
	next = to
	for seq := from; seq < to && len(chunk) < trimChunk && !(len(chunk) > 0 && e.full(2)); {
		bound, eg, err := e.load(seq)
		if err != nil {
			return 0, err
		}
		if eg == nil {
			next = to
			break
		}
		i, _ := eg.g.find(seq)
		for ; i < eg.g.n && eg.g.seq(i) < to; i++ {
			v, err := eg.g.entry(i)
			if err != nil {
				return 0, err
			}
			ch, err := decodeLogEntry(eg.g.seq(i), v)
			if err != nil {
				return 0, err
			}
			chunk = append(chunk, trimEntry{seq: ch.Seq, op: ch.Op, key: ch.Key})
			e.entries += 2 // the keep index: a set, a delete
		}
		seq = bound + 1
		next = min(to, seq)
	}
	last := make(map[string]int, len(chunk))
	for i := range chunk {
		last[string(chunk[i].key)] = i
	}
	for i := range chunk {
		if i > 0 && e.full(1) {
			// What is left of the chunk goes to the next transaction.
			return chunk[i].seq, nil
		}
		if last[string(chunk[i].key)] != i {
			if err := e.dropEntry(chunk[i].seq); err != nil {
				return 0, err
			}
			continue
		}
		if err := e.retire(chunk[i]); err != nil {
			return 0, err
		}
	}
	return next, nil
}

// dropEntry drops the log entry of seq (none: nothing to do).
func (e *trimEdit) dropEntry(seq uint64) error {
	eg := e.loaded(seq)
	if eg == nil {
		var err error
		if _, eg, err = e.load(seq); err != nil || eg == nil {
			return err
		}
	}
	if i, ok := eg.g.find(seq); ok && !eg.drop[i] {
		eg.drop[i] = true
		eg.dropped++
	}
	return nil
}

// loaded returns the group read already that holds seq, or would: the
// loaded group of the least key at or above seq, when its first entry is
// at or below seq (no other group can hold seq then); nil when seq is to
// be looked up.
func (e *trimEdit) loaded(seq uint64) *editGroup {
	i, _ := slices.BinarySearch(e.bounds, seq)
	if i == len(e.bounds) {
		return nil
	}
	eg := e.groups[e.bounds[i]]
	if eg.g.seq(0) > seq {
		return nil
	}
	return eg
}

// write writes the groups that lost entries: rewritten with the others,
// or deleted. A group in a segment is rewritten into badger even when it
// lost none: trimming leaves no key below the window referencing a
// segment, so the segment can go (retireSegments).
func (e *trimEdit) write() error {
	var b groupBuilder
	for bound, eg := range e.groups {
		if eg.dropped == 0 && !eg.ext {
			continue
		}
		key := ownLogKey(e.t.logPrefix, bound)
		if eg.dropped == eg.g.n {
			if err := e.txn.Delete(key); err != nil {
				return err
			}
			continue
		}
		b.reset()
		for i := range eg.g.n {
			if eg.drop[i] {
				continue
			}
			v, err := eg.g.entry(i)
			if err != nil {
				return err
			}
			b.add(eg.g.seq(i), v)
		}
		if err := e.txn.Set(key, b.encode()); err != nil {
			return err
		}
	}
	return nil
}

// retire handles one entry leaving the window (see trimKept).
func (e *trimEdit) retire(ch trimEntry) error {
	t, txn := e.t, e.txn
	keep := false
	if ch.op == transport.OpPut {
		item, err := txn.Get(concat(t.rowPrefix, ch.key))
		switch {
		case err == nil:
			err = item.Value(func(row []byte) error {
				kind, seq, _, err := decodeOwnRow(row)
				keep = kind == rowInLog && seq == ch.seq
				return err
			})
			if err != nil {
				return err
			}
		case !errors.Is(err, badger.ErrKeyNotFound):
			return err
		}
	}
	keepKey := concat(t.keepPrefix, ch.key)
	prev, hasPrev := uint64(0), false
	item, err := txn.Get(keepKey)
	switch {
	case err == nil:
		err = item.Value(func(v []byte) error {
			if len(v) != 8 {
				return fmt.Errorf("keep index of %q: %d bytes", ch.key, len(v))
			}
			prev, hasPrev = binary.BigEndian.Uint64(v), true
			return nil
		})
		if err != nil {
			return err
		}
	case !errors.Is(err, badger.ErrKeyNotFound):
		return err
	}
	if hasPrev && prev > ch.seq {
		// A newer entry of the key was kept already (a trim cut short by a
		// crash is being redone): this one is superseded.
		return e.dropEntry(ch.seq)
	}
	if hasPrev && prev < ch.seq {
		if err := e.dropEntry(prev); err != nil {
			return err
		}
	}
	if keep {
		if hasPrev && prev == ch.seq {
			return nil
		}
		return txn.Set(keepKey, binary.BigEndian.AppendUint64(nil, ch.seq))
	}
	if hasPrev {
		if err := txn.Delete(keepKey); err != nil {
			return err
		}
	}
	return e.dropEntry(ch.seq)
}

// migrateChunk is how many rows one transaction of migrateLegacy converts.
const migrateChunk = 512

// migrateLegacy converts a table written in format 0 (each row: its seq,
// then a copy of the value) to formatRefRows: a row whose change is still in
// the log becomes a ref row, one whose entry was trimmed an inline row.
// The log entries are the same in both formats. Each chunk of rows is one
// transaction that also records, in the meta, the last key converted
// (ownerMeta.Migrated), so an interrupted migration resumes where it
// stopped; the last one sets Format. m is the table's meta as loaded; the
// migrated meta is returned.
func (t *OwnedTable) migrateLegacy(m ownerMeta) (ownerMeta, error) {
	for m.Format == 0 {
		err := t.c.db.Update(func(txn *badger.Txn) error {
			type row struct{ key, enc []byte }
			var rows []row
			done := true
			err := func() error {
				o := badger.DefaultIteratorOptions
				o.Prefix = t.rowPrefix
				o.PrefetchSize = 64
				it := txn.NewIterator(o)
				defer it.Close()
				seek := t.rowPrefix
				if m.Migrated != nil {
					seek = concat(concat(t.rowPrefix, m.Migrated), []byte{0})
				}
				size := 0
				for it.Seek(seek); it.Valid(); it.Next() {
					if len(rows) == migrateChunk || size >= 1<<20 {
						done = false
						return nil
					}
					item := it.Item()
					key := item.KeyCopy(nil)[len(t.rowPrefix):]
					v, err := item.ValueCopy(nil)
					if err != nil {
						return err
					}
					if len(v) < 8 {
						return fmt.Errorf("legacy row %q: short (%d bytes)", key, len(v))
					}
					seq, val := binary.BigEndian.Uint64(v), v[8:]
					enc, err := t.legacyRow(txn, key, seq, val)
					if err != nil {
						return err
					}
					rows = append(rows, row{key, enc})
					size += len(key) + len(enc)
				}
				return nil
			}()
			if err != nil {
				return err
			}
			for _, r := range rows {
				if err := txn.Set(concat(t.rowPrefix, r.key), r.enc); err != nil {
					return err
				}
			}
			if len(rows) > 0 {
				m.Migrated = rows[len(rows)-1].key
			}
			if done {
				m.Format, m.Migrated = formatRefRows, nil
			}
			return t.setMeta(txn, m)
		})
		if err != nil {
			return m, fmt.Errorf("migrate %s to owner format %d: %w", t.name, formatRefRows, err)
		}
	}
	return m, nil
}

// legacyRow is the formatRefRows encoding of a format-0 row of key written at
// seq with val: a ref row when the log still holds that change (its value
// is there), else an inline row.
func (t *OwnedTable) legacyRow(txn *badger.Txn, key []byte, seq uint64, val []byte) ([]byte, error) {
	item, err := txn.Get(ownLogKey(ownLegacyLogPrefix(t.name), seq))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return encodeInlineRow(seq, val), nil
	}
	if err != nil {
		return nil, err
	}
	inLog := false
	err = item.Value(func(v []byte) error {
		ch, err := decodeLogEntry(seq, v)
		inLog = err == nil && ch.Op == transport.OpPut && bytes.Equal(ch.Key, key) && bytes.Equal(ch.Value, val)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if inLog {
		return encodeRefRow(seq), nil
	}
	return encodeInlineRow(seq, val), nil
}
