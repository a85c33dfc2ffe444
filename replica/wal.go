package replica

import (
	"bufio"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"unsafe"

	"github.com/dgraph-io/badger/v4"
	"github.com/replmesh/replmesh/internal/diskguard"
	"github.com/replmesh/replmesh/transport"
	"github.com/tidwall/btree"
)

// The write-ahead log of a bulk generation. A durable resident replica
// reads only memory, so its copy on disk serves only to load it: each
// applied batch is written as WAL entries (its changes, encoded by
// encodeWALBatch, under walKey(walPrefix(base, gen), seq of the entry's
// last change)) with the cursor in one transaction, instead of a badger
// row per change. An entry holds as many changes as fit below badger's
// ValueThreshold (one, when a change alone is larger), so that it stays in
// the LSM tree, whose compactions reclaim it once a checkpoint deleted it.
// One entry per batch would put the batch in the value log (the LSM tree
// carrying only a pointer: measured, about 40% less CPU per change than
// the rows), but nothing reclaims the value log's garbage: badger's value
// log GC picks files by the discard statistics of compactions, and an LSM
// tree that holds only pointers and cursors rarely flushes, let alone
// compacts; the WAL there would grow the disk by every byte applied. The
// rows are the generation's rows file, then the WAL entries replayed in
// seq order up to the cursor.
//
// Checkpoint: when the WAL outgrows max(walMinBytes, the rows file's size)
// (so that its replay never costs much more than reading the file) and
// the disk has room for the new file (twice its size above the disk
// guard's reserve: it stays until the old one goes), a background
// goroutine writes a new rows file (named by the generation and
// the seq S) from a published resident view at S, fsyncs it, and records
// it in one transaction (ckptKey: the generation and S); then it deletes
// the old file and the WAL entries up to S. A crash before the record
// leaves the old file and the whole WAL (the new file is a stray that the
// next load deletes); after it, the new file and the WAL above S (the
// leftovers are deleted at the next load). A full transfer's switch
// (switchIn) deletes the record and schedules the old generation's WAL for
// deletion with its rows; a checkpoint of a generation that is no longer
// live commits nothing and deletes its file.
//
// Data dirs written before the WAL hold a bulk generation's changes as
// badger rows under the generation's prefix (the overlay: a row, or a
// tombstone). They are read as before, after the rows file and before the
// WAL, as long as the generation has no checkpoint: the first checkpoint
// holds their effect, and deletes them.

// walMinBytes is the WAL size below which no checkpoint is written.
const walMinBytes = 16 << 20

// walCheckpointAt is the WAL size (bytes of its entries) at which a
// checkpoint is due, given the size of the rows file: the larger of the
// two (a variable: the crash test's children lower it).
var walCheckpointAt = func(fileBytes int64) int64 { return max(walMinBytes, fileBytes) }

// walFormat is the first byte of a WAL entry.
const walFormat = 1

// encodeWALBatch encodes changes as a WAL entry: walFormat, uvarint
// count, then per change its op (1 byte), uvarint key length, key, uvarint
// value length, value. The seqs, times and epochs are the cursor's.
func encodeWALBatch(chs []transport.Change) []byte {
	n := 1 + binary.MaxVarintLen32
	for i := range chs {
		n += 1 + 2*binary.MaxVarintLen32 + len(chs[i].Key) + len(chs[i].Value)
	}
	b := make([]byte, 0, n)
	b = append(b, walFormat)
	b = binary.AppendUvarint(b, uint64(len(chs)))
	for i := range chs {
		ch := &chs[i]
		b = append(b, byte(ch.Op))
		b = binary.AppendUvarint(b, uint64(len(ch.Key)))
		b = append(b, ch.Key...)
		b = binary.AppendUvarint(b, uint64(len(ch.Value)))
		b = append(b, ch.Value...)
	}
	return b
}

// decodeWALBatch calls fn for each change of the WAL entry b, in order;
// the slices point into b.
func decodeWALBatch(b []byte, fn func(op transport.Op, key, value []byte) error) error {
	if len(b) < 1 || b[0] != walFormat {
		return errors.New("not a WAL entry")
	}
	b = b[1:]
	uv := func() (int, error) {
		v, n := binary.Uvarint(b)
		if n <= 0 || v > uint64(len(b)-n) {
			return 0, errors.New("bad length")
		}
		b = b[n:]
		return int(v), nil
	}
	count, n := binary.Uvarint(b)
	if n <= 0 {
		return errors.New("bad count")
	}
	b = b[n:]
	for i := uint64(0); i < count; i++ {
		if len(b) < 1 {
			return errors.New("cut short")
		}
		op := transport.Op(b[0])
		b = b[1:]
		kl, err := uv()
		if err != nil {
			return err
		}
		key := b[:kl:kl]
		b = b[kl:]
		vl, err := uv()
		if err != nil {
			return err
		}
		value := b[:vl:vl]
		b = b[vl:]
		if err := fn(op, key, value); err != nil {
			return err
		}
	}
	if len(b) != 0 {
		return fmt.Errorf("%d bytes after the changes", len(b))
	}
	return nil
}

// ckpt is the checkpoint record: the live bulk generation's rows are the
// file of (gen, seq) and the WAL above seq.
type ckpt struct {
	ok       bool // a record is stored
	gen, seq uint64
}

// readCkpt reads the checkpoint record of the replica at base.
func readCkpt(txn *badger.Txn, base string) (ckpt, error) {
	item, err := txn.Get(ckptKey(base))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return ckpt{}, nil
	}
	if err != nil {
		return ckpt{}, err
	}
	var ck ckpt
	err = item.Value(func(v []byte) error {
		if len(v) != 16 {
			return fmt.Errorf("checkpoint record of %d bytes", len(v))
		}
		ck = ckpt{ok: true, gen: beUint64(v), seq: beUint64(v[8:])}
		return nil
	})
	return ck, err
}

func encodeCkpt(gen, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, gen), seq)
}

// ckptPath is the rows file of the checkpoint at seq of the bulk
// generation with row prefix prefix. bulkPath and it share the name's
// start, so removeBulk deletes both.
func (c *Component) ckptPath(prefix []byte, seq uint64) string {
	p := c.bulkPath(prefix)
	return fmt.Sprintf("%s-%016x.rows", strings.TrimSuffix(p, ".rows"), seq)
}

// bulkSource is where the rows of the bulk generation cur names start:
// the rows file to read, and the seq from which the WAL is replayed
// (cover: the file holds the overlay's effect, a checkpoint's).
func (c *Component) bulkSource(txn *badger.Txn, base string, cur cursor) (path string, from uint64, cover bool, err error) {
	ck, err := readCkpt(txn, base)
	if err != nil {
		return "", 0, false, err
	}
	prefix := genPrefix(base, cur.Gen)
	if ck.ok && ck.gen == cur.Gen {
		if ck.seq > cur.Seq {
			return "", 0, false, fmt.Errorf("checkpoint at seq %d, beyond the cursor's %d", ck.seq, cur.Seq)
		}
		return c.ckptPath(prefix, ck.seq), ck.seq, true, nil
	}
	return c.bulkPath(prefix), 0, false, nil
}

// walItems calls fn with the WAL entries at prefix (a walPrefix) in txn
// with seq > from, in seq order, until fn returns false or an error.
func walItems(txn *badger.Txn, prefix []byte, from uint64, fn func(seq uint64, item *badger.Item) (bool, error)) error {
	o := badger.DefaultIteratorOptions
	o.Prefix = prefix
	o.PrefetchValues = false
	it := txn.NewIterator(o)
	defer it.Close()
	for it.Seek(walKey(prefix, from+1)); it.Valid(); it.Next() {
		item := it.Item()
		k := item.Key()
		if len(k) != len(prefix)+8 {
			return fmt.Errorf("WAL key of %d bytes", len(k))
		}
		if more, err := fn(beUint64(k[len(prefix):]), item); !more || err != nil {
			return err
		}
	}
	return nil
}

// replayWAL calls fn for every change of the WAL of generation gen in the
// entries with from < seq <= to, in seq order. Entries beyond to cannot
// exist (an entry commits with its cursor); genStore.load deletes any.
func replayWAL(txn *badger.Txn, base string, gen, from, to uint64, fn func(op transport.Op, key, value []byte) error) error {
	return walItems(txn, walPrefix(base, gen), from, func(seq uint64, item *badger.Item) (bool, error) {
		if seq > to {
			return false, nil
		}
		if err := item.Value(func(v []byte) error { return decodeWALBatch(v, fn) }); err != nil {
			return false, fmt.Errorf("WAL entry %d: %w", seq, err)
		}
		return true, nil
	})
}

// replayInto applies the WAL's changes (see replayWAL) to rows, keeping n,
// their key+value bytes.
func replayInto(txn *badger.Txn, base string, gen, from, to uint64, rows *btree.BTreeG[resRow], n *int64) error {
	return replayWAL(txn, base, gen, from, to, func(op transport.Op, k, v []byte) error {
		if op == transport.OpDelete {
			if old, had := rows.Delete(searchRow(k)); had {
				*n -= rowBytes(old)
			}
			return nil
		}
		row := ownRow(k, v)
		if old, had := rows.Set(row); had {
			*n -= rowBytes(old)
		}
		*n += rowBytes(row)
		return nil
	})
}

// walChangeSize is the bytes encodeWALBatch spends on ch.
func walChangeSize(ch *transport.Change) int {
	return 1 + uvarintLen(len(ch.Key)) + len(ch.Key) + uvarintLen(len(ch.Value)) + len(ch.Value)
}

func uvarintLen(n int) int {
	l := 1
	for ; n >= 0x80; n >>= 7 {
		l++
	}
	return l
}

// walEntries splits changes (a batch ending at seq last) into WAL
// entries of at most limit bytes of changes (a larger change alone) and
// calls fn with each and the seq of its last change, in seq order. Seqs
// that do not increase to last (never from a stream) make one entry.
func walEntries(chs []transport.Change, last uint64, limit int, fn func(seq uint64, entry []byte) error) error {
	ordered := chs[len(chs)-1].Seq == last
	for i := 1; i < len(chs) && ordered; i++ {
		ordered = chs[i].Seq > chs[i-1].Seq
	}
	if !ordered {
		return fn(last, encodeWALBatch(chs))
	}
	start, size := 0, 0
	for i := range chs {
		n := walChangeSize(&chs[i])
		if i > start && size+n > limit {
			if err := fn(chs[i-1].Seq, encodeWALBatch(chs[start:i])); err != nil {
				return err
			}
			start, size = i, 0
		}
		size += n
	}
	return fn(last, encodeWALBatch(chs[start:]))
}

// walEntryHeader bounds the bytes of an entry beyond its changes'.
const walEntryHeader = 1 + binary.MaxVarintLen32

// applyWAL writes changes as WAL entries of the bulk generation next
// names, with the cursor, in one transaction; then starts a checkpoint if
// one is due.
func (g *genStore) applyWAL(next cursor, chs []transport.Change) error {
	b, err := marshalCursor(next)
	if err != nil {
		return err
	}
	if g.wal.chunk == 0 {
		g.wal.chunk = max(int(g.c.db.Opts().ValueThreshold)-walEntryHeader-1, 64)
	}
	prefix := walPrefix(g.base, next.Gen)
	txn := g.c.db.NewTransaction(true)
	defer txn.Discard()
	var n int64
	first := len(g.wal.pend)
	err = walEntries(chs, next.Seq, g.wal.chunk, func(seq uint64, entry []byte) error {
		n += int64(len(entry))
		g.wal.pend = append(g.wal.pend, walRef{seq, int64(len(entry))})
		return txn.Set(walKey(prefix, seq), entry)
	})
	refs := g.wal.pend[first:]
	g.wal.pend = g.wal.pend[:first]
	if err != nil {
		return fmt.Errorf("apply %s: %w", g.table, err)
	}
	if err := txn.Set(cursorKey(g.base), b); err != nil {
		return fmt.Errorf("apply %s: %w", g.table, err)
	}
	if err := txn.Commit(); err != nil {
		return fmt.Errorf("apply %s: %w", g.table, err)
	}
	g.mu.Lock()
	g.wal.bytes += n
	g.wal.entries = append(g.wal.entries, refs...)
	due := !g.wal.running && g.wal.bytes > g.checkpointAt() && g.wal.bytes >= g.wal.retryAt
	if due {
		g.wal.running = true
	}
	g.mu.Unlock()
	if due && !g.startCheckpoint(next.Gen) {
		g.mu.Lock()
		g.wal.running = false
		// Not now (no room, or no view yet): again after a quarter of
		// the bound more.
		g.wal.retryAt = g.wal.bytes + g.checkpointAt()/4
		g.mu.Unlock()
	}
	return nil
}

// walState is a genStore's view of its live bulk generation's WAL,
// guarded by genStore.mu.
type walState struct {
	gen       uint64 // the live generation (the cursor's)
	path      string // its rows file (the transfer's or a checkpoint's)
	fileBytes int64  // that file's size
	bytes     int64  // the WAL's bytes (values) above the file's seq
	running   bool   // a checkpoint is being written
	retryAt   int64  // bytes: no checkpoint is tried before
	chunk     int    // changes' bytes per WAL entry at most (walEntries)
	// entries are the WAL's entries above the file's seq, in seq order
	// (a checkpoint deletes them by key, reading nothing); pend is the
	// stream goroutine's scratch for an apply's.
	entries []walRef
	pend    []walRef
	// min overrides walMinBytes (tests); hook, when set, is called at the
	// steps of a checkpoint and stops it there on an error (tests: a
	// crash between the steps).
	min  int64
	hook func(step string) error
	res  *resident // the replica's resident state, once found
}

// walRef is one WAL entry: the seq of its key and its bytes.
type walRef struct {
	seq   uint64
	bytes int64
}

func (g *genStore) checkpointAt() int64 {
	if g.wal.min > 0 {
		return max(g.wal.min, g.wal.fileBytes)
	}
	return walCheckpointAt(g.wal.fileBytes)
}

// resident returns the resident state of the replica g is the sink of, or
// nil while it cannot be found: the replica's own fields are not the
// sink's, so it is looked up among the component's replicas (the one whose
// sink is g), without waiting for the component's lock.
func (g *genStore) resident() *resident {
	if g.wal.res != nil {
		return g.wal.res
	}
	c := g.c
	if !c.mu.TryLock() {
		return nil
	}
	defer c.mu.Unlock()
	key := strings.TrimSuffix(strings.TrimPrefix(g.base, "c/"), "/")
	if r := c.replicas[key]; r != nil && r.sink == g {
		g.wal.res = r.res
	}
	return g.wal.res
}

// startCheckpoint starts writing a checkpoint of generation gen in the
// background from the published resident view, if it is of gen; false:
// none started.
func (g *genStore) startCheckpoint(gen uint64) bool {
	res := g.resident()
	if res == nil || res.spawn == nil {
		return false
	}
	v := res.view.Load()
	if v.cur.Gen != gen || !v.cur.Bulk {
		return false
	}
	// The new file needs its size on disk until the old one goes: leave
	// as much again above the disk guard's reserve for the writes.
	size := v.bytes + int64(v.rows.Len())*4
	if st := g.c.disk.Status(); st.On && st.Free < st.Reserve+2*size {
		g.log.Warn("checkpoint of the replica's rows put off: not enough disk space", "free", st.Free, "rows_bytes", size)
		return false
	}
	return res.spawn(func() {
		defer func() {
			g.mu.Lock()
			g.wal.running = false
			g.mu.Unlock()
		}()
		if err := g.checkpoint(v, res.stop); err != nil && !errors.Is(err, errCkptAbandoned) {
			g.log.Warn("checkpoint of the replica's rows", "err", err)
		}
	})
}

// errCkptAbandoned: the checkpoint's generation was replaced, or the
// replica stopped, while it was written.
var errCkptAbandoned = errors.New("checkpoint abandoned")

// checkpoint writes the rows of v (a published view of the live bulk
// generation) as the generation's rows file at v's seq, records it, and
// deletes what it replaces: the old file, the WAL up to the seq, the
// overlay of an old data dir.
func (g *genStore) checkpoint(v *resView, stop func() bool) error {
	c := g.c
	gen, seq := v.cur.Gen, v.cur.Seq
	prefix := genPrefix(g.base, gen)
	path := c.ckptPath(prefix, seq)
	g.mu.Lock()
	live := g.wal.gen == gen && g.wal.path != path
	g.mu.Unlock()
	if !live {
		return errCkptAbandoned // never write over the live file
	}
	size, err := writeRowsFile(path, v.rows, stop)
	if err != nil {
		_ = os.Remove(path)
		return err
	}
	if err := g.ckptStep("written"); err != nil {
		return err
	}
	g.mu.Lock()
	if g.wal.gen != gen {
		g.mu.Unlock()
		_ = os.Remove(path)
		return errCkptAbandoned
	}
	err = c.db.Update(func(txn *badger.Txn) error { return txn.Set(ckptKey(g.base), encodeCkpt(gen, seq)) })
	old := g.wal.path
	if err == nil {
		g.wal.path, g.wal.fileBytes, g.wal.retryAt = path, size, 0
	}
	g.mu.Unlock()
	if err != nil {
		_ = os.Remove(path)
		return fmt.Errorf("record checkpoint: %w", err)
	}
	// The record is durable before the file it replaces goes.
	if err := c.db.Sync(); err != nil {
		return err
	}
	if err := g.ckptStep("recorded"); err != nil {
		return err
	}
	if err := os.Remove(old); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := g.ckptStep("old file deleted"); err != nil {
		return err
	}
	if err := g.deleteCovered(gen, seq); err != nil {
		return err
	}
	if err := g.ckptStep("WAL deleted"); err != nil {
		return err
	}
	// An old data dir's overlay: the file holds its effect now.
	if err := c.deletePrefix(prefix); err != nil {
		return err
	}
	g.log.Info("replica checkpoint", "gen", gen, "seq", seq, "bytes", size)
	return nil
}

// deleteCovered deletes the WAL entries of generation gen up to seq (a
// recorded checkpoint's), by the keys the store keeps of them.
func (g *genStore) deleteCovered(gen, seq uint64) error {
	g.mu.Lock()
	if g.wal.gen != gen {
		g.mu.Unlock()
		return errCkptAbandoned // the dropper deletes them with the generation
	}
	k, _ := slices.BinarySearchFunc(g.wal.entries, seq+1, func(r walRef, s uint64) int { return cmp.Compare(r.seq, s) })
	done := slices.Clone(g.wal.entries[:k])
	g.mu.Unlock()
	prefix := walPrefix(g.base, gen)
	var cost diskguard.Cost
	for range done {
		cost.Add(len(prefix)+8, 0, 1)
	}
	if err := g.c.disk.Admit(cost); err != nil {
		return err // the entries stay: the next checkpoint deletes them
	}
	wb := g.c.db.NewWriteBatch()
	defer wb.Cancel()
	var n int64
	for _, r := range done {
		if err := wb.Delete(walKey(prefix, r.seq)); err != nil {
			return err
		}
		n += r.bytes
	}
	if err := wb.Flush(); err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.wal.gen == gen {
		// Applies only append: the first k are those deleted.
		g.wal.entries = slices.Clone(g.wal.entries[k:])
		g.wal.bytes -= n
	}
	return nil
}

func (g *genStore) ckptStep(step string) error {
	if g.wal.hook == nil {
		return nil
	}
	return g.wal.hook(step)
}

// deleteWAL deletes the WAL entries of generation gen with from < seq <=
// to and returns their bytes.
func (g *genStore) deleteWAL(gen, from, to uint64) (int64, error) {
	c := g.c
	prefix := walPrefix(g.base, gen)
	var n int64
	for {
		var keys [][]byte
		err := c.db.View(func(txn *badger.Txn) error {
			return walItems(txn, prefix, from, func(seq uint64, item *badger.Item) (bool, error) {
				if seq > to || len(keys) == 10000 {
					return false, nil
				}
				keys = append(keys, item.KeyCopy(nil))
				n += item.ValueSize()
				return true, nil
			})
		})
		if err != nil || len(keys) == 0 {
			return n, err
		}
		wb := c.db.NewWriteBatch()
		for _, k := range keys {
			if err := wb.Delete(k); err != nil {
				wb.Cancel()
				return n, err
			}
		}
		if err := wb.Flush(); err != nil {
			return n, err
		}
	}
}

// loadWAL prepares the WAL of the live bulk generation cur names when the
// replica opens: it deletes what a crash left (entries beyond the cursor,
// which cannot exist, entries and overlay rows a recorded checkpoint
// holds, a record of another generation) and measures the WAL and the
// file for the checkpoint's bound.
func (g *genStore) loadWAL(cur cursor) error {
	c := g.c
	var path string
	var from uint64
	var cover, staleRecord bool
	var beyond, covered bool
	var walBytes int64
	var entries []walRef
	err := c.db.View(func(txn *badger.Txn) error {
		ck, err := readCkpt(txn, g.base)
		if err != nil {
			return err
		}
		staleRecord = ck.ok && ck.gen != cur.Gen
		if path, from, cover, err = c.bulkSource(txn, g.base, cur); err != nil {
			return err
		}
		return walItems(txn, walPrefix(g.base, cur.Gen), 0, func(seq uint64, item *badger.Item) (bool, error) {
			switch {
			case seq <= from:
				covered = true
			case seq > cur.Seq:
				beyond = true
			default:
				walBytes += item.ValueSize()
				entries = append(entries, walRef{seq, item.ValueSize()})
			}
			return true, nil
		})
	})
	if err != nil {
		return fmt.Errorf("load WAL: %w", err)
	}
	if staleRecord {
		if err := c.db.Update(func(txn *badger.Txn) error { return txn.Delete(ckptKey(g.base)) }); err != nil {
			return err
		}
	}
	if beyond {
		g.log.Warn("WAL entries beyond the cursor deleted", "seq", cur.Seq)
		if _, err := g.deleteWAL(cur.Gen, cur.Seq, ^uint64(0)); err != nil {
			return err
		}
	}
	if covered {
		if _, err := g.deleteWAL(cur.Gen, 0, from); err != nil {
			return err
		}
	}
	if cover {
		if err := c.deletePrefix(genPrefix(g.base, cur.Gen)); err != nil {
			return err
		}
	}
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("load WAL: %w", err)
	}
	g.mu.Lock()
	g.wal.gen, g.wal.path, g.wal.fileBytes, g.wal.bytes, g.wal.entries = cur.Gen, path, st.Size(), walBytes, entries
	g.mu.Unlock()
	return nil
}

// sweepFiles deletes the rows files of this replica other than keep
// (none: ""): a checkpoint's file that was never recorded, or one that a
// checkpoint replaced, left by a crash. It runs when the replica opens,
// when no transfer or checkpoint of it is under way.
func (g *genStore) sweepFiles(keep string) error {
	if g.c.cfg.DataDir == "" {
		return nil
	}
	dir := filepath.Join(g.c.cfg.DataDir, bulkDir)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	mine := filepath.Base(g.c.bulkPath([]byte(g.base)))
	mine = strings.TrimSuffix(mine, ".rows")
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if !strings.HasPrefix(e.Name(), mine) || p == keep {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// writeRowsFile writes rows as a rows file at path (bulkgen.go's format),
// durably (the file, then its directory entry), and returns its size. It
// gives up when stop reports true.
func writeRowsFile(path string, rows *btree.BTreeG[resRow], stop func() bool) (int64, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return 0, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	w := &crcWriter{w: bufio.NewWriterSize(f, bulkBuffer)}
	if _, err := w.Write([]byte(bulkMagic)); err != nil {
		return 0, err
	}
	var hdr [2 * binary.MaxVarintLen64]byte
	var n uint64
	rows.Scan(func(r resRow) bool {
		if n++; n%4096 == 0 && stop != nil && stop() {
			err = errCkptAbandoned
			return false
		}
		h := binary.PutUvarint(hdr[:], uint64(r.klen))
		h += binary.PutUvarint(hdr[h:], uint64(r.vlen))
		if _, err = w.Write(hdr[:h]); err == nil {
			_, err = w.Write(unsafeRowBytes(r))
		}
		return err == nil
	})
	if err != nil {
		return 0, err
	}
	end := append([]byte{0}, binary.BigEndian.AppendUint64(nil, uint64(rows.Len()))...)
	if _, err := w.Write(end); err != nil {
		return 0, err
	}
	if _, err := w.w.Write(binary.BigEndian.AppendUint32(nil, w.crc)); err != nil {
		return 0, err
	}
	if err := w.w.Flush(); err != nil {
		return 0, err
	}
	if err := f.Sync(); err != nil {
		return 0, err
	}
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if err := f.Close(); err != nil {
		return 0, err
	}
	return st.Size(), syncDir(filepath.Dir(path))
}

// unsafeRowBytes is r's key then value: the row's memory (never modify
// it).
func unsafeRowBytes(r resRow) []byte { return unsafe.Slice(r.p, int(r.klen)+int(r.vlen)) }

// crcWriter computes the CRC-32C of the bytes written through it.
type crcWriter struct {
	w   *bufio.Writer
	crc uint32
}

func (c *crcWriter) Write(p []byte) (int, error) {
	c.crc = crc32.Update(c.crc, crcTable, p)
	return c.w.Write(p)
}
