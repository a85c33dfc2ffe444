package replica

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/dgraph-io/badger/v4"
	"github.com/replmesh/replmesh/internal/diskguard"
	"github.com/replmesh/replmesh/transport"
)

// The write-ahead log of a bulk generation. A durable resident replica
// reads only memory, so its copy on disk serves only to load it: each
// applied batch is appended as one record (its changes, encoded by
// appendWALBatch, and the cursor after it) to the generation's WAL, files
// of the replica's own beside the rows files (walseg.go), with one
// write() and no badger write at all. The rows are the generation's rows
// file, then the WAL's records above badger's cursor, replayed in order.
// Badger holds the cursor only as of the last full transfer's switch or
// checkpoint (which say which generation is live, whether it is bulk, its
// log id); the WAL's last record, when it names that generation and a
// higher seq, is the replica's cursor.
//
// The invariant: a crash never leaves the seq ahead of the data, because
// the seq IS the data's last record. A record is written whole before
// the batch is published (and a failed write is truncated away: the
// batch is not applied), and a load takes the last record that is whole
// and chains to the ones before (walScan), truncating a torn or corrupt
// end with a warning. So the seq after a crash is never behind what was
// published either: a published batch's record was written (to the page
// cache: like badger with SyncWrites off, it survives the process's
// crash, not the machine's; the checkpoints and switches are fsynced;
// with Durability Sync every record is fsynced before it is published).
// A write that fails (a full disk: ENOSPC) is truncated back to the last
// whole record and reported as ErrDiskFull: the replica stops applying,
// keeps serving, and resumes from its seq when space returns.
//
// Checkpoint: when the WAL outgrows max(walMinBytes, the rows file's size)
// (so that its replay never costs much more than reading the file; while
// the replica catches up, walCatchUpFactor times that, ckptDue) and
// the disk has room for the new file (twice its size above the disk
// guard's reserve: it stays until the old one goes), a background
// goroutine writes a new rows file (named by the generation and the seq
// S) from a published resident view at S, fsyncs it, and records it in
// one badger transaction with the cursor at S (ckptKey: the generation
// and S); then it deletes the old file and the WAL's segments whose
// records are all at or below S (segments are rotated at a quarter of the
// checkpoint's bound, so that whole ones are). A crash before the record
// leaves the old file and the whole WAL (the new file is a stray that the
// next load deletes); after it, the new file and the WAL above S (a load
// skips and deletes the leftovers). A full transfer's switch (switchIn)
// deletes the record; the old generation's segments go with its rows
// files (removeBulk); the new generation starts new segments. A
// checkpoint of a generation that is no longer live commits nothing and
// deletes its file.
//
// Data dirs written before the WAL hold a bulk generation's changes as
// badger rows under the generation's prefix (the overlay: a row, or a
// tombstone), with badger's cursor at their seq. They are read as before,
// after the rows file and before the WAL, as long as the generation has
// no checkpoint: the first checkpoint holds their effect, and deletes
// them. (A WAL in badger entries, as an unreleased development version
// wrote, is not read.)

// walMinBytes is the WAL size below which no checkpoint is written.
const walMinBytes = 16 << 20

// walCheckpointAt is the WAL size (bytes of its records) at which a
// checkpoint is due, given the size of the rows file: the larger of the
// two (a variable: the crash test's children lower it).
var walCheckpointAt = func(fileBytes int64) int64 { return max(walMinBytes, fileBytes) }

// walFormat is the first byte of an encoded batch.
const walFormat = 1

// appendWALBatch appends chs to b encoded as a batch: walFormat, uvarint
// count, then per change its op (1 byte), uvarint key length, key, uvarint
// value length, value. The seqs, times and epochs are the cursor's.
func appendWALBatch(b []byte, chs []transport.Change) []byte {
	n := 1 + binary.MaxVarintLen32
	for i := range chs {
		n += 1 + 2*binary.MaxVarintLen32 + len(chs[i].Key) + len(chs[i].Value)
	}
	b = slices.Grow(b, n)
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

// decodeWALBatch calls fn for each change of the encoded batch b, in order;
// the slices point into b.
func decodeWALBatch(b []byte, fn func(op transport.Op, key, value []byte) error) error {
	if len(b) < 1 || b[0] != walFormat {
		return errors.New("not an encoded batch")
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
// the rows file to read; from, badger's cursor's seq, above which the WAL
// is replayed (the file's seq, or the legacy overlay's); cover: the file
// holds the overlay's effect (a checkpoint's).
func (c *Component) bulkSource(txn *badger.Txn, base string, cur cursor) (path string, from uint64, cover bool, err error) {
	ck, err := readCkpt(txn, base)
	if err != nil {
		return "", 0, false, err
	}
	stored, err := readCursor(txn, base)
	if err != nil {
		return "", 0, false, err
	}
	if stored.Gen != cur.Gen || !stored.Bulk || stored.Seq > cur.Seq {
		return "", 0, false, fmt.Errorf("badger's cursor %+v does not lead to %+v", stored, cur)
	}
	prefix := genPrefix(base, cur.Gen)
	if ck.ok && ck.gen == cur.Gen {
		if ck.seq != stored.Seq {
			return "", 0, false, fmt.Errorf("checkpoint at seq %d, the cursor at %d", ck.seq, stored.Seq)
		}
		return c.ckptPath(prefix, ck.seq), stored.Seq, true, nil
	}
	return c.bulkPath(prefix), stored.Seq, false, nil
}

// replayInto applies the WAL's changes above from up to the cursor cur
// (replayWAL) to rows, keeping n, their key+value bytes.
func (c *Component) replayInto(base string, cur cursor, from uint64, rows *resTable, n *int64) error {
	return c.replayWAL(genPrefix(base, cur.Gen), cur.Gen, from, cur.Seq, func(op transport.Op, k, v []byte) error {
		*n += setRow(rows, k, v, op == transport.OpDelete)
		return nil
	})
}

// walCatchUpFactor: while the replica catches up (its stream has not held
// the owner's head since it began), a checkpoint waits for the WAL to
// reach this many times its bound. A catch-up is the one time a replica
// applies as fast as it can, and a checkpoint then takes a core from it
// for the rows file's write (about a seventh of a 100k-change catch-up on
// two cores), while the catch-up's end is a moment away and the
// checkpoint as due then as now. The factor bounds the WAL of a replica
// that never catches up (a writer faster than it).
const walCatchUpFactor = 4

// ckptDue decides whether a checkpoint starts after an append: the WAL
// holds bytes of records, bound is the checkpoint's (checkpointAt), none
// is tried below retryAt (one put off for want of room), and behind says
// the replica is catching up.
func ckptDue(bytes, bound, retryAt int64, behind bool) bool {
	if bytes <= bound || bytes < retryAt {
		return false
	}
	return !behind || bytes > walCatchUpFactor*bound
}

// applyWAL appends changes and next, the cursor after them, to the WAL of
// the bulk generation next names as one record; then starts a checkpoint
// if one is due.
func (g *genStore) applyWAL(next cursor, chs []transport.Change) error {
	n, err := g.appendWAL(next, chs)
	if err != nil {
		return fmt.Errorf("apply %s: %w", g.table, err)
	}
	behind := g.wal.behind != nil && g.wal.behind(next.Seq)
	g.mu.Lock()
	g.wal.bytes += n
	g.wal.entries = append(g.wal.entries, walRef{next.Seq, n})
	g.wal.segs[len(g.wal.segs)-1].last = next.Seq
	due := !g.wal.running && ckptDue(g.wal.bytes, g.checkpointAt(), g.wal.retryAt, behind)
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

// appendWAL writes the record of chs ending at next to the open segment
// (a new one first if there is none or it is full) and returns its bytes.
// Run by the stream goroutine only.
func (g *genStore) appendWAL(next cursor, chs []transport.Change) (int64, error) {
	w := &g.wal
	g.mu.Lock()
	full := w.f != nil && w.size >= g.segmentBytes()
	serr := w.syncErr
	w.syncErr = nil
	g.mu.Unlock()
	if serr != nil {
		// A closed segment's fsync failed: this batch is not applied, and
		// the stream starts over, as if its own write had failed.
		return 0, walWriteErr(g.c, serr)
	}
	if full {
		g.rotateSegment()
	}
	if w.f == nil {
		path := g.c.walSegPath(genPrefix(g.base, next.Gen), next.Seq)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return 0, walWriteErr(g.c, err)
		}
		f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return 0, walWriteErr(g.c, err)
		}
		if g.c.cfg.Durability == Sync {
			// The new file's name must reach the disk with its records.
			if err := syncDir(filepath.Dir(path)); err != nil {
				_ = f.Close()
				return 0, walWriteErr(g.c, err)
			}
		}
		w.f, w.size = f, 0
		g.mu.Lock()
		w.segs = append(w.segs, walSeg{path: path})
		g.mu.Unlock()
	}
	rec, err := appendWALRecord(w.buf[:0], w.last, next, chs)
	if err != nil {
		return 0, err
	}
	// The record, not badger, takes the disk (copies is 0).
	if err := g.c.disk.Admit(walCost(len(rec))); err != nil {
		return 0, err
	}
	if cap(rec) <= 1<<20 {
		w.buf = rec // kept for the next; a huge one is not
	}
	// One write of the whole record: what a bufio.Writer flushed at the
	// batch's end would do.
	write := w.f.Write
	if w.write != nil {
		write = func(b []byte) (int, error) { return w.write(w.f, b) }
	}
	if _, err := write(rec); err != nil {
		// Nothing of the record may stay: a later one would follow a
		// torn one. When the truncation fails too, the segment is left
		// and the next record starts a new one (a load reads on past a
		// segment's torn end; walScan).
		if terr := w.f.Truncate(w.size); terr != nil {
			g.log.Warn("WAL segment not truncated after a failed write", "file", filepath.Base(w.f.Name()), "err", terr)
			_ = w.f.Close()
			w.f = nil
		}
		return 0, walWriteErr(g.c, err)
	}
	w.size += int64(len(rec))
	w.last = next.Seq
	if g.c.cfg.Durability == Sync {
		// Durability Sync: the batch is on disk before it is published,
		// as badger's SyncWrites makes an owner's commit. A failed fsync
		// leaves the record's fate unknown: the stream restarts from a
		// load of the WAL, which reads what reached the disk.
		if err := w.f.Sync(); err != nil {
			_ = w.f.Close()
			w.f = nil
			return 0, walWriteErr(g.c, err)
		}
		g.c.walSyncs.Add(1)
	}
	return int64(len(rec)), nil
}

// walWriteErr wraps a failed WAL write. A full disk (the guard admitted
// the write on a measure that other writers made stale) has the guard
// measure again, which then refuses writes (and says so in its metric)
// until space returns; the error is a DiskFullError either way, so that
// the replica backs off.
func walWriteErr(c *Component, err error) error {
	if errors.Is(err, syscall.ENOSPC) {
		c.disk.Refresh()
		if ferr := c.disk.Admit(diskguard.Cost{}); ferr != nil {
			return errors.Join(ferr, err)
		}
		return &DiskFullError{Dir: c.cfg.DataDir, Err: err}
	}
	return fmt.Errorf("write WAL: %w", err)
}

// walCost is what the disk guard counts for a WAL record of n bytes: its
// bytes, as entries small enough that the guard prepares no value log
// space for them (none goes to badger).
func walCost(n int) diskguard.Cost {
	const piece = diskguard.ValueThreshold / 2
	var w diskguard.Cost
	for ; n > 0; n -= piece {
		w.Add(0, min(n, piece), 1)
	}
	return w
}

// rotateSegment closes the open segment, which is full, for the next
// record to start a new one (the stream goroutine). Its fsync and close
// run in the background: the stream would wait some milliseconds for each
// (a fifth of a 100k-change catch-up, every 4 MiB), while nothing waits
// for them but a machine's crash (the records are written; a checkpoint
// fsyncs its own file). A failure fails the next append (syncErr);
// closeWAL waits for them.
func (g *genStore) rotateSegment() {
	w := &g.wal
	f := w.f
	w.f = nil
	w.syncs.Add(1)
	sync := (*os.File).Sync
	if w.sync != nil {
		sync = w.sync
	}
	go func() {
		defer w.syncs.Done()
		if err := errors.Join(sync(f), f.Close()); err != nil {
			g.mu.Lock()
			if w.syncErr == nil {
				w.syncErr = fmt.Errorf("segment %s: %w", filepath.Base(f.Name()), err)
			}
			g.mu.Unlock()
		}
	}()
}

// closeWAL fsyncs and closes the open segment of a replica that stopped,
// and waits for the rotated ones'.
func (g *genStore) closeWAL() {
	w := &g.wal
	if w.f != nil {
		if err := errors.Join(w.f.Sync(), w.f.Close()); err != nil {
			g.log.Warn("close WAL segment", "err", err)
		}
		w.f = nil
	}
	w.syncs.Wait()
	g.mu.Lock()
	err := w.syncErr
	w.syncErr = nil
	g.mu.Unlock()
	if err != nil {
		g.log.Warn("close WAL segment", "err", err)
	}
}

// walState is a genStore's view of its live bulk generation's WAL. The
// stream goroutine alone uses f, size, last and buf; the rest is guarded
// by genStore.mu (a checkpoint and the rotated segments' fsyncs share
// it).
type walState struct {
	gen       uint64 // the live generation (the cursor's)
	path      string // its rows file (the transfer's or a checkpoint's)
	fileBytes int64  // that file's size
	bytes     int64  // the WAL's bytes (records) above the file's seq
	running   bool   // a checkpoint is being written
	retryAt   int64  // bytes: no checkpoint is tried before
	// entries are the WAL's records above the file's seq, in seq order
	// (for bytes, once a checkpoint covers some).
	entries []walRef
	// segs are the WAL's segments, in order; the last is f's while f is
	// open.
	segs []walSeg
	f    *os.File // the segment being appended to, nil: none yet
	size int64    // its bytes, all whole records
	last uint64   // the seq of the WAL's last record (or its base)
	buf  []byte   // a record being built
	// syncs are the rotated segments' fsyncs under way (rotateSegment);
	// syncErr is the first that failed, not yet reported.
	syncs   sync.WaitGroup
	syncErr error
	// bulkLive: the live generation is bulk (copies).
	bulkLive bool
	// min overrides walMinBytes, seg the segments' size, write the
	// records' write, sync a rotated segment's fsync (tests); hook, when
	// set, is called at the steps of a checkpoint and stops it there on
	// an error (tests: a crash between the steps).
	min   int64
	seg   int64
	write func(f *os.File, b []byte) (int, error)
	sync  func(f *os.File) error
	hook  func(step string) error
	res   *resident // the replica's resident state (Replica.load sets it)
	// behind, when set, reports whether the replica applying the record
	// that ends at seq is catching up (Replica.behind); the stream
	// goroutine calls it.
	behind func(seq uint64) bool
}

// walRef is one WAL record: its seq and its bytes.
type walRef struct {
	seq   uint64
	bytes int64
}

// segmentBytes is the size at which a segment is closed and the next
// record starts a new one: a quarter of the checkpoint's bound, so that a
// checkpoint finds most of the WAL in whole segments it covers.
func (g *genStore) segmentBytes() int64 {
	if g.wal.seg > 0 {
		return g.wal.seg
	}
	return g.checkpointAt() / 4
}

func (g *genStore) checkpointAt() int64 {
	if g.wal.min > 0 {
		return max(g.wal.min, g.wal.fileBytes)
	}
	return walCheckpointAt(g.wal.fileBytes)
}

func (g *genStore) startCheckpoint(gen uint64) bool {
	res := g.wal.res
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
// generation) as the generation's rows file at v's seq, records it with
// the cursor, and deletes what it replaces: the old file, the WAL's
// segments up to the seq, the overlay of an old data dir.
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
		return err // the file is deleted
	}
	if err := g.ckptStep("written"); err != nil {
		return err
	}
	cb, err := marshalCursor(v.cur)
	if err != nil {
		return err
	}
	g.mu.Lock()
	if g.wal.gen != gen {
		g.mu.Unlock()
		_ = os.Remove(path)
		return errCkptAbandoned
	}
	// The cursor at seq: the WAL's segments up to it go next, and the
	// load replays from badger's cursor.
	err = c.updateDB(func(txn *badger.Txn) error {
		if err := txn.Set(ckptKey(g.base), encodeCkpt(gen, seq)); err != nil {
			return err
		}
		return txn.Set(cursorKey(g.base), cb)
	})
	old := g.wal.path
	if err == nil {
		g.wal.path, g.wal.fileBytes, g.wal.retryAt = path, size, 0
	}
	g.mu.Unlock()
	if err != nil {
		_ = os.Remove(path)
		return fmt.Errorf("record checkpoint: %w", err)
	}
	// The record is durable before the file and the WAL it replaces go.
	if err := c.useDB((*badger.DB).Sync); err != nil {
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

// deleteCovered deletes the WAL's segments of generation gen whose
// records are all at or below seq (a recorded checkpoint's), but the one
// being appended to, and stops counting the records up to seq.
func (g *genStore) deleteCovered(gen, seq uint64) error {
	g.mu.Lock()
	if g.wal.gen != gen {
		g.mu.Unlock()
		return errCkptAbandoned // the dropper deletes them with the generation
	}
	k, _ := slices.BinarySearchFunc(g.wal.entries, seq+1, func(r walRef, s uint64) int { return cmp.Compare(r.seq, s) })
	var n int64
	for _, r := range g.wal.entries[:k] {
		n += r.bytes
	}
	// Applies only append: the first k are those covered.
	g.wal.entries = slices.Clone(g.wal.entries[k:])
	g.wal.bytes -= n
	var done []string
	keep := g.wal.segs[:0:0]
	for i, s := range g.wal.segs {
		if i < len(g.wal.segs)-1 && s.last <= seq {
			done = append(done, s.path)
		} else {
			keep = append(keep, s)
		}
	}
	g.wal.segs = keep
	g.mu.Unlock()
	for _, p := range done {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

func (g *genStore) ckptStep(step string) error {
	if g.wal.hook == nil {
		return nil
	}
	return g.wal.hook(step)
}

// loadWAL prepares the WAL of the live bulk generation cur (badger's
// cursor) names when the replica opens, and returns the replica's cursor:
// the WAL's last record's, if it chains above cur. It deletes what a
// crash left (a checkpoint record of another generation, overlay rows a
// recorded checkpoint holds, segments the checkpoint covers), truncates
// the WAL's torn end (walScan), and measures the WAL and the file for the
// checkpoint's bound.
func (g *genStore) loadWAL(cur cursor) (cursor, error) {
	c := g.c
	var path string
	var cover, staleRecord bool
	err := c.viewDB(func(txn *badger.Txn) error {
		ck, err := readCkpt(txn, g.base)
		if err != nil {
			return err
		}
		staleRecord = ck.ok && ck.gen != cur.Gen
		path, _, cover, err = c.bulkSource(txn, g.base, cur)
		return err
	})
	if err != nil {
		return cur, fmt.Errorf("load WAL: %w", err)
	}
	if staleRecord {
		if err := c.updateDB(func(txn *badger.Txn) error { return txn.Delete(ckptKey(g.base)) }); err != nil {
			return cur, err
		}
	}
	if cover {
		if err := c.deletePrefix(genPrefix(g.base, cur.Gen)); err != nil {
			return cur, err
		}
	}
	ld, err := c.walScan(g.log, genPrefix(g.base, cur.Gen), cur.Gen, cur.Seq, true, nil)
	if err != nil {
		return cur, fmt.Errorf("load WAL: %w", err)
	}
	st, err := os.Stat(path)
	if err != nil {
		return cur, fmt.Errorf("load WAL: %w", err)
	}
	if ld.ok {
		cur = ld.cur
	}
	g.mu.Lock()
	g.wal.gen, g.wal.path, g.wal.fileBytes, g.wal.bytes, g.wal.entries, g.wal.segs = cur.Gen, path, st.Size(), ld.bytes, ld.entries, ld.segs
	g.wal.last = cur.Seq
	g.mu.Unlock()
	return cur, nil
}

// sweepFiles deletes the rows files of this replica other than keep
// (none: ""): a checkpoint's file that was never recorded, or one that a
// checkpoint replaced, left by a crash; and the WAL segments of other
// generations than the one at prefix wal (none: nil). It runs when the
// replica opens, when no transfer or checkpoint of it is under way.
func (g *genStore) sweepFiles(keep string, wal []byte) error {
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
	segs := "\x00" // no name starts so
	if wal != nil {
		segs = strings.TrimSuffix(filepath.Base(g.c.bulkPath(wal)), ".rows") + walSegInfix
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if !strings.HasPrefix(e.Name(), mine) || p == keep || strings.HasPrefix(e.Name(), segs) {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// writeRowsFile writes rows as a rows file at path (a rowsWriter),
// durably, and returns its size. It gives up when stop reports true,
// deleting the file; so does an error.
func writeRowsFile(path string, rows *resTable, stop func() bool) (int64, error) {
	w, err := newRowsWriter(path)
	if err != nil {
		return 0, err
	}
	var n uint64
	rows.Scan(func(r resRow) bool {
		if n++; n%4096 == 0 && stop != nil && stop() {
			err = errCkptAbandoned
			return false
		}
		err = w.put(r.key(), r.value())
		return err == nil
	})
	if err != nil {
		w.abort()
		return 0, err
	}
	size, err := w.finish()
	if err != nil {
		w.abort()
	}
	return size, err
}
