package replica

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// Disk-only bulk generations. A DiskOnly replica in a component with a
// data dir receives its full transfer as a resident one does: into a
// bulk generation's rows file (bulkgen.go), not through badger's write
// path, whose memtables, table builders and memory-mapped tables cost such
// a transfer most of its memory (some 780 MB at peak for 1M rows of
// 256 B). It reads the file where it lies: a sparse index in memory (the
// first key and offset of every sparseBlock bytes of rows, some 1/200 of
// the file) finds the block that may hold a key, one pread brings it. The
// changes applied after the switch go to badger as the generation's
// overlay (bulkgen.go's, the format data dirs of older versions hold: a
// row, or a tombstone for a delete, under g/<gen>/), in one transaction
// with the cursor as any disk-only apply: a read transaction then sees
// the overlay and the cursor of one seq, and the file never changes, so a
// read of the overlay then the file is the table at that seq. A resident
// subscription later loads such a generation as it loads an old data
// dir's (file, overlay, then its own WAL); a DiskOnly one that finds a
// generation with a WAL or a checkpoint converts it to badger (convertBulk).
//
// genStore.file is the open rows file of the live generation, swapped
// under genStore.dmu in the same critical section as the switch's
// commit: a reader takes its read transaction and the file under dmu, so
// the two always agree. Each reader holds a reference: the file is closed
// when the last reader of a replaced generation is done (the dropper may
// have unlinked it by then; the open descriptor still reads it).

// sparseBlock is the bytes of rows between two sparse index entries.
const sparseBlock = 8 << 10

// sparseIndex is the first key and the offset of every block of a rows
// file.
type sparseIndex struct {
	every  int64    // block size: sparseBlock but in tests
	firsts [][]byte // into arena chunks
	offs   []int64
	arena  []byte
}

// note records the row at off with key if it starts a new block.
func (x *sparseIndex) note(off int64, key []byte) {
	if n := len(x.offs); n > 0 && off-x.offs[n-1] < x.every {
		return
	}
	if cap(x.arena)-len(x.arena) < len(key) {
		x.arena = make([]byte, 0, max(64<<10, len(key)))
	}
	s := len(x.arena)
	x.arena = append(x.arena, key...)
	x.firsts = append(x.firsts, x.arena[s:len(x.arena):len(x.arena)])
	x.offs = append(x.offs, off)
}

// block is the block that holds key if the file does: the last whose
// first key is not above it (-1: none).
func (x *sparseIndex) block(key []byte) int {
	return sort.Search(len(x.firsts), func(i int) bool { return bytes.Compare(x.firsts[i], key) > 0 }) - 1
}

// bulkFile is the open rows file of a disk-only replica's live bulk
// generation, with its sparse index.
type bulkFile struct {
	gen    uint64
	prefix []byte // the generation's row prefix (its overlay's)
	f      *os.File
	idx    *sparseIndex
	end    int64        // the offset of the rows' end
	refs   atomic.Int64 // the genStore's (while live) and its readers'
}

// openBulkFile opens the rows file at path of the generation gen (at
// prefix), checks it whole (readBulk's checks) and builds its index.
func openBulkFile(path string, gen uint64, prefix []byte, idx *sparseIndex) (*bulkFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	end, err := scanBulk(path, func(off int64, k, _ []byte) error {
		idx.note(off, k)
		return nil
	})
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	return newBulkFile(f, gen, prefix, idx, end), nil
}

func newBulkFile(f *os.File, gen uint64, prefix []byte, idx *sparseIndex, end int64) *bulkFile {
	b := &bulkFile{gen: gen, prefix: prefix, f: f, idx: idx, end: end}
	b.refs.Store(1)
	return b
}

func (b *bulkFile) acquire() { b.refs.Add(1) }

func (b *bulkFile) release() {
	if b.refs.Add(-1) == 0 {
		_ = b.f.Close()
	}
}

// blockEnd is the offset where block i ends.
func (b *bulkFile) blockEnd(i int) int64 {
	if i+1 < len(b.idx.offs) {
		return b.idx.offs[i+1]
	}
	return b.end
}

var blockPool = sync.Pool{New: func() any { b := make([]byte, 0, 2*sparseBlock); return &b }}

// get reads key's row from the file: one pread of its block.
func (b *bulkFile) get(key []byte) ([]byte, bool, error) {
	i := b.idx.block(key)
	if i < 0 {
		return nil, false, nil
	}
	lo, hi := b.idx.offs[i], b.blockEnd(i)
	bp := blockPool.Get().(*[]byte)
	defer blockPool.Put(bp)
	p := *bp
	if int64(cap(p)) < hi-lo {
		p = make([]byte, hi-lo) // a block of large rows: its buffer is not kept
	}
	p = p[:hi-lo]
	if _, err := b.f.ReadAt(p, lo); err != nil {
		return nil, false, b.bad(err)
	}
	for len(p) > 0 {
		k, v, rest, err := splitRow(p)
		if err != nil {
			return nil, false, b.bad(err)
		}
		switch c := bytes.Compare(k, key); {
		case c == 0:
			return bytes.Clone(v), true, nil
		case c > 0:
			return nil, false, nil
		}
		p = rest
	}
	return nil, false, nil
}

func (b *bulkFile) bad(err error) error {
	return fmt.Errorf("rows file %s: %w", filepath.Base(b.f.Name()), err)
}

// splitRow parses the row at the start of p (rows file format).
func splitRow(p []byte) (k, v, rest []byte, err error) {
	klen, n := binary.Uvarint(p)
	if n <= 0 || klen == 0 {
		return nil, nil, nil, errors.New("bad row header")
	}
	vlen, m := binary.Uvarint(p[n:])
	if m <= 0 || uint64(len(p)-n-m) < klen+vlen {
		return nil, nil, nil, errors.New("bad row header")
	}
	p = p[n+m:]
	return p[:klen], p[klen : klen+vlen], p[klen+vlen:], nil
}

// bulkIter reads the file's rows in order from a key on.
type bulkIter struct {
	r        *bufio.Reader
	key, val []byte
	buf      []byte
	ok       bool
	err      error
}

// iter returns an iterator at the first row whose key is not below seek.
func (b *bulkFile) iter(seek []byte) *bulkIter {
	it := &bulkIter{}
	if len(b.idx.offs) == 0 {
		return it
	}
	i := max(b.idx.block(seek), 0)
	off := b.idx.offs[i]
	it.r = bufio.NewReaderSize(io.NewSectionReader(b.f, off, b.end-off), 64<<10)
	for it.next(); it.ok && bytes.Compare(it.key, seek) < 0; it.next() {
	}
	if it.err != nil {
		it.err = b.bad(it.err)
	}
	return it
}

// next moves to the next row (ok false at the end or on an error).
func (it *bulkIter) next() {
	it.ok = false
	if it.r == nil || it.err != nil {
		return
	}
	k, v, buf, end, err := readRowRecord(it.r, it.buf)
	it.buf = buf
	switch {
	case errors.Is(err, io.EOF):
		// The section ends before the rows' end mark: the last row.
	case err != nil:
		it.err = err
	case end:
		it.err = errors.New("bad row header")
	default:
		it.key, it.val, it.ok = k, v, true
	}
}

// diskView is one consistent read of a replica on disk: a read
// transaction and, when the live generation is a bulk one, its rows file.
type diskView struct {
	txn    *badger.Txn
	prefix []byte    // the generation's row prefix
	file   *bulkFile // nil: badger holds every row
}

func (v diskView) release() {
	v.txn.Discard()
	if v.file != nil {
		v.file.release()
	}
}

// get reads key: the overlay first, then the file.
func (v diskView) get(key []byte) ([]byte, bool, error) {
	item, err := v.txn.Get(concat(v.prefix, key))
	switch {
	case err == nil:
		if v.file != nil && item.UserMeta() == metaTombstone {
			return nil, false, nil
		}
		val, err := item.ValueCopy(nil)
		return val, err == nil, err
	case !errors.Is(err, badger.ErrKeyNotFound):
		return nil, false, err
	case v.file == nil:
		return nil, false, nil
	}
	return v.file.get(key)
}

// scan is scanRows over the view: the file's rows merged with the
// overlay's (an overlay row replaces the file's, a tombstone hides it).
func (v diskView) scan(prefix, start, end []byte, fn func(k, val []byte) (bool, error)) error {
	if v.file == nil {
		return scanRows(v.txn, v.prefix, prefix, start, end, fn)
	}
	seek := prefix
	if bytes.Compare(start, prefix) > 0 {
		seek = start
	}
	in := func(k []byte) bool {
		return bytes.HasPrefix(k, prefix) && (end == nil || bytes.Compare(k, end) < 0)
	}
	fi := v.file.iter(seek)
	o := badger.DefaultIteratorOptions
	o.Prefix = concat(v.prefix, prefix)
	o.PrefetchValues = false
	it := v.txn.NewIterator(o)
	defer it.Close()
	it.Seek(concat(v.prefix, seek))
	for {
		if fi.err != nil {
			return fi.err
		}
		fok := fi.ok && in(fi.key)
		var ok []byte
		ook := it.Valid()
		if ook {
			ok = it.Item().Key()[len(v.prefix):]
			ook = in(ok)
		}
		if !fok && !ook {
			return nil
		}
		if ook && (!fok || bytes.Compare(ok, fi.key) <= 0) {
			if fok && bytes.Equal(ok, fi.key) {
				fi.next()
			}
			item := it.Item()
			if item.UserMeta() != metaTombstone {
				cont := false
				err := item.Value(func(val []byte) error {
					var err error
					cont, err = fn(ok, val)
					return err
				})
				if err != nil || !cont {
					return err
				}
			}
			it.Next()
			continue
		}
		cont, err := fn(fi.key, fi.val)
		if err != nil || !cont {
			return err
		}
		fi.next()
	}
}

// count counts the view's rows; past deadline it gives up (0: unknown),
// as countRows does.
func (v diskView) count(ctx context.Context, deadline time.Time, log interface{ Info(string, ...any) }) (uint64, error) {
	if v.file == nil {
		return countRows(ctx, v.txn, v.prefix, deadline, log)
	}
	var n uint64
	late := false
	err := v.scan(nil, nil, nil, func(_, _ []byte) (bool, error) {
		if n++; n%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return false, err
			}
			if !deadline.IsZero() && time.Now().After(deadline) {
				late = true
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return 0, err
	}
	if late {
		log.Info("full transfer: too many rows to count in time; announcing an unknown count", "counted", n)
		return 0, nil
	}
	return n, nil
}

// errFileMismatch: a read found a cursor on a bulk generation whose rows
// file is not the one open (never, as long as switches install the file
// with their commit).
var errFileMismatch = errors.New("the rows file open is not the cursor's generation's")

// snapshotView returns a view with the cursor stored in its transaction
// (snapshotTxn's, with the rows file of a bulk generation).
func (g *genStore) snapshotView() (diskView, cursor, error) {
	g.dmu.RLock()
	txn := g.c.db.NewTransaction(false)
	f, closed := g.file, g.fileClosed
	if f != nil {
		f.acquire()
	}
	g.dmu.RUnlock()
	v := diskView{txn: txn, file: f}
	cur, err := readCursor(txn, g.base)
	switch {
	case err != nil:
	case !cur.Bulk:
		if f != nil {
			f.release()
		}
		v.file = nil
	case f == nil && closed:
		err = ErrClosed
	case f == nil || f.gen != cur.Gen:
		err = fmt.Errorf("generation %d: %w", cur.Gen, errFileMismatch)
	}
	if err != nil {
		v.release()
		return diskView{}, cursor{}, err
	}
	v.prefix = genPrefix(g.base, cur.Gen)
	return v, cur, nil
}

// fileView returns a view of the live bulk generation without reading the
// cursor (a point read), or false when the live generation is not bulk.
func (g *genStore) fileView() (diskView, bool, error) {
	g.dmu.RLock()
	defer g.dmu.RUnlock()
	if g.file == nil {
		if g.fileClosed {
			return diskView{}, false, ErrClosed
		}
		return diskView{}, false, nil
	}
	g.file.acquire()
	return diskView{txn: g.c.db.NewTransaction(false), prefix: g.file.prefix, file: g.file}, true, nil
}

// setFile makes f (nil: none) the live generation's rows file and
// releases the one it replaces; the caller holds dmu for writing.
func (g *genStore) setFileLocked(f *bulkFile) {
	if g.file != nil {
		g.file.release()
	}
	g.file = f
}

// newIndex is an empty sparse index of the replica's block size.
func (g *genStore) newIndex() *sparseIndex {
	x := &sparseIndex{every: sparseBlock}
	if g.blockBytes > 0 {
		x.every = g.blockBytes
	}
	return x
}

// closeFile releases the rows file of a replica that stopped; its reads
// then return ErrClosed.
func (g *genStore) closeFile() {
	g.dmu.Lock()
	defer g.dmu.Unlock()
	g.fileClosed = g.file != nil
	g.setFileLocked(nil)
}
