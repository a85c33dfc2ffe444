package replica

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/dgraph-io/badger/v4"
	"github.com/replmesh/replmesh/transport"
)

// Bulk generations. A durable resident replica reads only memory; its
// copy on disk serves to load the rows when it opens. Its full transfer
// therefore writes the rows (in key order, as they arrive) to a file of
// their own, sequentially, instead of through badger's write path (WAL,
// memtables, table builders, compactions: most of a durable transfer's
// time and memory), and builds the resident tree from the same rows. The
// cursor names such a generation with Bulk set: its rows are the file's,
// then the changes applied since, which its write-ahead log holds
// (wal.go: one record per applied batch in segment files beside the rows
// file, checkpointed into a new rows file now and then). Data dirs of older versions hold those changes
// as the generation's overlay instead: badger rows under its prefix (a put
// set the row, a delete a tombstone, an empty entry with UserMeta
// metaTombstone, since the file may hold the key), read after the file and
// before the WAL. Only loadResident reads a bulk generation, and
// convertBulk, which writes it into badger alone when the replica is
// subscribed DiskOnly later.
//
// The file lives in <DataDir>/rows/, named by the hex of the generation's
// prefix (a checkpoint's adds its seq: ckptPath), so the dropper deletes
// it with the generation's keys (the drop marker names the prefix). It is
// fsynced before the switch commits; a crash before the commit leaves the
// stage marker, and the staged generation, file included, is dropped at
// the next Subscribe.
//
// Format: bulkMagic, then per row uvarint(len(key)) uvarint(len(value))
// key value, then a uvarint 0 (keys are never empty), the row count
// (8 bytes, big-endian) and the CRC-32C of everything before it (4 bytes,
// big-endian).

const (
	bulkDir   = "rows"
	bulkMagic = "replmesh rows 1\n"
	// metaTombstone is the UserMeta of an overlay entry that deletes its
	// key in a bulk generation.
	metaTombstone byte = 1
	// bulkBuffer is the write and read buffer of a bulk file.
	bulkBuffer = 1 << 20
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// bulkPath is the file of the bulk generation with row prefix prefix.
func (c *Component) bulkPath(prefix []byte) string {
	return filepath.Join(c.cfg.DataDir, bulkDir, hex.EncodeToString(prefix)+".rows")
}

// removeBulk deletes the files of the generation at prefix, if any: the
// transfer's, its checkpoints' (ckptPath) and its WAL's segments.
func (c *Component) removeBulk(prefix []byte) error {
	if c.cfg.DataDir == "" {
		return nil
	}
	// Its rows files and its WAL's segments (walseg.go).
	paths, err := filepath.Glob(strings.TrimSuffix(c.bulkPath(prefix), ".rows") + "*.rows")
	if err != nil {
		return err
	}
	segs, err := c.walSegPaths(prefix)
	if err != nil {
		return err
	}
	paths = append(paths, segs...)
	for _, p := range paths {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// bulkTransfer is a full transfer into a bulk generation: the rows go to
// the generation's file (a rowsWriter); the resTransfer around it builds
// the tree.
type bulkTransfer struct {
	*rowsWriter
	g      *genStore
	gen    uint64
	prefix []byte
	done   bool // finished: abort leaves the file to the switch (or the dropper)
	// file: a disk-only replica's (g.diskBulk), open for its reads from
	// finish on, handed to the switch.
	file *bulkFile
}

func newBulkTransfer(g *genStore, gen uint64) (*bulkTransfer, error) {
	prefix := genPrefix(g.base, gen)
	w, err := newRowsWriter(g.c.bulkPath(prefix))
	if err != nil {
		return nil, fmt.Errorf("stage rows: %w", err)
	}
	if g.diskBulk() {
		w.idx = g.newIndex()
	}
	return &bulkTransfer{rowsWriter: w, g: g, gen: gen, prefix: prefix}, nil
}

// finish makes the file complete and durable before the switch can name
// it.
func (x *bulkTransfer) finish(next cursor) (cursor, error) {
	if _, err := x.rowsWriter.finish(); err != nil {
		return cursor{}, fmt.Errorf("stage rows: %w", err)
	}
	x.done = true
	if x.idx != nil {
		f, err := os.Open(x.path)
		if err != nil {
			return cursor{}, fmt.Errorf("open rows: %w", err)
		}
		x.file = newBulkFile(f, x.gen, x.prefix, x.idx, x.off)
	}
	next.Gen, next.Bulk = x.gen, true
	return next, nil
}

func (x *bulkTransfer) switchIn(old, next cursor) error {
	f := x.file
	x.file = nil
	return x.g.switchInFile(old, next, f)
}

// abort deletes an unfinished file (the stage marker, left in place,
// would have the dropper delete it too).
func (x *bulkTransfer) abort() {
	if !x.done {
		x.rowsWriter.abort()
	}
	if x.file != nil {
		x.file.release()
		x.file = nil
	}
}

// rowsWriter writes a rows file (the format above): a full transfer's
// (bulkTransfer) or a checkpoint's (writeRowsFile). Its caller fills
// buffers of bulkBuffer bytes, and a writer goroutine of its own writes
// the full ones (and sums their CRC), so that the write calls overlap the
// producing of the next rows.
type rowsWriter struct {
	path  string
	f     *os.File
	buf   []byte        // being filled
	full  chan []byte   // to the writer goroutine
	free  chan []byte   // written, back from it
	wdone chan struct{} // closed when the writer goroutine has ended
	werr  error         // the writer's first error; read after a receive from free or wdone
	crc   uint32        // the writer's CRC of the bytes written; read after wdone
	size  int64         // the writer's count of the bytes written; read after wdone
	rows  uint64
	ended bool // full closed
	hdr   [2 * binary.MaxVarintLen64]byte
	// off is the offset of the next row in the file; idx, when set, is
	// given the first row of every sparseBlock bytes (a disk-only
	// replica's transfer: its reads search the file through it).
	off int64
	idx *sparseIndex
}

// bulkBuffers is how many buffers a rowsWriter fills and writes in turn.
const bulkBuffers = 3

// newRowsWriter creates the file at path (and its directory) and starts
// its writer goroutine.
func newRowsWriter(path string) (*rowsWriter, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, err
	}
	x := &rowsWriter{path: path, f: f,
		full: make(chan []byte, bulkBuffers), free: make(chan []byte, bulkBuffers), wdone: make(chan struct{})}
	for range bulkBuffers - 1 {
		x.free <- make([]byte, 0, bulkBuffer)
	}
	x.buf = append(make([]byte, 0, bulkBuffer), bulkMagic...)
	x.off = int64(len(bulkMagic))
	go x.writer()
	return x, nil
}

// writer writes the full buffers in order until full is closed; after an
// error it only hands the buffers back. The kernel is asked to start
// writing each buffer to the disk once written (startWriteback): the rows
// then reach the disk while the transfer goes on, and the fsync before
// the switch waits for the last few, not the whole file (some 110 ms for
// 270 MB of rows otherwise, all of it between the last rows frame and
// the switch).
func (x *rowsWriter) writer() {
	defer close(x.wdone)
	for b := range x.full {
		if x.werr == nil {
			if _, err := x.f.Write(b); err != nil {
				x.werr = err
			} else {
				startWriteback(x.f, x.size, int64(len(b)))
			}
			x.crc = crc32.Update(x.crc, crcTable, b)
			x.size += int64(len(b))
		}
		x.free <- b[:0]
	}
}

// flushBuf hands the buffer being filled to the writer and takes an empty
// one (waiting while the writer is behind).
func (x *rowsWriter) flushBuf() error {
	x.full <- x.buf
	x.buf = <-x.free
	return x.werr
}

func (x *rowsWriter) put(key, value []byte) error {
	n := binary.PutUvarint(x.hdr[:], uint64(len(key)))
	n += binary.PutUvarint(x.hdr[n:], uint64(len(value)))
	if len(x.buf)+n+len(key)+len(value) > bulkBuffer && len(x.buf) > 0 {
		if err := x.flushBuf(); err != nil {
			return err
		}
	}
	x.buf = append(append(append(x.buf, x.hdr[:n]...), key...), value...)
	x.rows++
	if x.idx != nil {
		x.idx.note(x.off, key)
	}
	x.off += int64(n + len(key) + len(value))
	return nil
}

// endWriter hands the last buffer to the writer and waits until it has
// written everything; it returns the writer's error.
func (x *rowsWriter) endWriter() error {
	if !x.ended {
		x.ended = true
		x.full <- x.buf
		x.buf = nil
		close(x.full)
	}
	<-x.wdone
	return x.werr
}

// finish writes the file's end and makes it durable (the file, then its
// directory entry); it returns the file's size.
func (x *rowsWriter) finish() (int64, error) {
	x.buf = append(x.buf, 0) // uvarint 0: no more rows
	x.buf = binary.BigEndian.AppendUint64(x.buf, x.rows)
	if err := x.endWriter(); err != nil {
		return 0, err
	}
	if _, err := x.f.Write(binary.BigEndian.AppendUint32(nil, x.crc)); err != nil {
		return 0, err
	}
	if err := x.f.Sync(); err != nil {
		return 0, err
	}
	if err := x.f.Close(); err != nil {
		return 0, err
	}
	x.f = nil
	if err := syncDir(filepath.Dir(x.path)); err != nil {
		return 0, err
	}
	return x.size + 4, nil
}

// abort stops the writer and deletes the file.
func (x *rowsWriter) abort() {
	_ = x.endWriter()
	if x.f != nil {
		_ = x.f.Close()
		x.f = nil
	}
	_ = os.Remove(x.path)
}

// syncDir fsyncs a directory, so that a file created in it survives a
// machine crash.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	return errors.Join(err, d.Close())
}

// readBulk calls fn with every row of the bulk file at path, in key order,
// and checks the file's end (row count, CRC, nothing after): a file that
// does not end as written is an error, never a shorter table. The slices
// are valid only during the call.
func readBulk(path string, fn func(k, v []byte) error) error {
	_, err := scanBulk(path, func(_ int64, k, v []byte) error { return fn(k, v) })
	return err
}

// scanBulk is readBulk giving fn each row's offset in the file too; it
// returns the offset of the rows' end (the uvarint 0).
func scanBulk(path string, fn func(off int64, k, v []byte) error) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, bulkBuffer)
	r := &crcReader{r: br}
	bad := func(what string, err error) (int64, error) {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, fmt.Errorf("rows file %s: %s: %w", filepath.Base(path), what, err)
	}
	magic := make([]byte, len(bulkMagic))
	if _, err := io.ReadFull(r, magic); err != nil {
		return bad("header", err)
	}
	if string(magic) != bulkMagic {
		return bad("header", errors.New("not a rows file"))
	}
	var buf []byte
	var rows uint64
	var off int64
	for {
		off = r.n
		var k, v []byte
		var end bool
		k, v, buf, end, err = readRowRecord(r, buf)
		if err != nil {
			return bad("row", err)
		}
		if end {
			break
		}
		if err := fn(off, k, v); err != nil {
			return 0, err
		}
		rows++
	}
	var end [8]byte
	if _, err := io.ReadFull(r, end[:]); err != nil {
		return bad("row count", err)
	}
	if n := binary.BigEndian.Uint64(end[:]); n != rows {
		return bad("row count", fmt.Errorf("the file says %d rows, it holds %d", n, rows))
	}
	var sum [4]byte
	if _, err := io.ReadFull(br, sum[:]); err != nil {
		return bad("CRC", err)
	}
	if want := binary.BigEndian.Uint32(sum[:]); r.crc != want {
		return bad("CRC", fmt.Errorf("%08x, the file says %08x", r.crc, want))
	}
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		return bad("end", errors.Join(err, errors.New("bytes after the CRC")))
	}
	return off, nil
}

// readRowRecord reads one row of a rows file from r (uvarint key length,
// uvarint value length, the key, the value) into buf, grown as needed
// and returned; a key length of 0, the end of the rows, is end. An
// io.EOF before the row's first byte is returned as it is; one inside the
// row is io.ErrUnexpectedEOF.
func readRowRecord(r interface {
	io.Reader
	io.ByteReader
}, buf []byte) (k, v, nbuf []byte, end bool, err error) {
	klen, err := binary.ReadUvarint(r)
	if err != nil || klen == 0 {
		return nil, nil, buf, err == nil, err
	}
	vlen, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, nil, buf, false, fmt.Errorf("row header: %w", noEOF(err))
	}
	if klen+vlen > 1<<31 || klen+vlen < klen {
		return nil, nil, buf, false, fmt.Errorf("row header: a row of %d+%d bytes", klen, vlen)
	}
	if n := int(klen + vlen); cap(buf) < n {
		buf = make([]byte, n)
	}
	kv := buf[:klen+vlen]
	if _, err := io.ReadFull(r, kv); err != nil {
		return nil, nil, buf, false, noEOF(err)
	}
	return kv[:klen], kv[klen:], buf, false, nil
}

// noEOF is err, io.ErrUnexpectedEOF for io.EOF: the end came inside a row.
func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// crcReader computes the CRC-32C of the bytes read through it.
type crcReader struct {
	r   *bufio.Reader
	crc uint32
	n   int64 // bytes read
	b   [1]byte
}

func (c *crcReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.crc = crc32.Update(c.crc, crcTable, p[:n])
	c.n += int64(n)
	return n, err
}

func (c *crcReader) ReadByte() (byte, error) {
	b, err := c.r.ReadByte()
	if err == nil {
		c.b[0] = b
		c.crc = crc32.Update(c.crc, crcTable, c.b[:])
		c.n++
	}
	return b, err
}

// overlay calls fn for every overlay entry of the bulk generation at
// prefix in txn, in key order: the key (without the prefix), the value
// and whether it is a tombstone. The slices are valid only during the
// call.
func overlay(txn *badger.Txn, prefix []byte, fn func(k, v []byte, deleted bool) error) error {
	o := badger.DefaultIteratorOptions
	o.Prefix = prefix
	o.PrefetchValues = false
	it := txn.NewIterator(o)
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		item := it.Item()
		k := item.Key()[len(prefix):]
		deleted := item.UserMeta() == metaTombstone
		if err := item.Value(func(v []byte) error { return fn(k, v, deleted) }); err != nil {
			return err
		}
	}
	return nil
}

// loadBulk reads the bulk generation cur names (its rows file, then, as
// long as no checkpoint holds it, the overlay of an old data dir, then its
// WAL up to the cursor; wal.go) into rows and returns their key+value
// bytes.
func (c *Component) loadBulk(txn *badger.Txn, base string, cur cursor, rows *resTable) (int64, error) {
	path, from, cover, err := c.bulkSource(txn, base, cur)
	if err != nil {
		return 0, err
	}
	var n int64
	err = readBulk(path, func(k, v []byte) error {
		n += loadRow(rows, k, v)
		return nil
	})
	if err != nil {
		return 0, err
	}
	if !cover {
		if err := loadOverlay(txn, genPrefix(base, cur.Gen), rows, &n); err != nil {
			return 0, err
		}
	}
	if err := c.replayInto(base, cur, from, rows, &n); err != nil {
		return 0, err
	}
	return n, nil
}

// loadOverlay applies the overlay at prefix in txn to rows, keeping n,
// their key+value bytes.
func loadOverlay(txn *badger.Txn, prefix []byte, rows *resTable, n *int64) error {
	return overlay(txn, prefix, func(k, v []byte, deleted bool) error {
		*n += setRow(rows, k, v, deleted)
		return nil
	})
}

// convertBulk writes the rows of the bulk generation cur names into a
// fresh generation in badger alone and switches the cursor to it (Bulk
// cleared), as a full transfer does: a replica subscribed DiskOnly reads
// badger only. The rows are the file's, but for the keys the overlay (an
// old data dir's) or the WAL changed since, which take their last value
// or are left out. Interrupted, it leaves the bulk generation live and
// the fresh one staged (dropped at the next Subscribe, which converts
// again).
func (g *genStore) convertBulk(cur cursor) (cursor, error) {
	c := g.c
	prefix := genPrefix(g.base, cur.Gen)
	type last struct {
		value   []byte
		deleted bool
	}
	changed := map[string]last{}
	var path string
	var stage uint64
	err := c.db.View(func(txn *badger.Txn) error {
		from, cover, err := uint64(0), false, error(nil)
		if path, from, cover, err = c.bulkSource(txn, g.base, cur); err != nil {
			return err
		}
		if stage, err = readStage(txn, g.base); err != nil {
			return err
		}
		if !cover {
			err := overlay(txn, prefix, func(k, v []byte, deleted bool) error {
				changed[string(k)] = last{bytes.Clone(v), deleted}
				return nil
			})
			if err != nil {
				return err
			}
		}
		return c.replayWAL(prefix, cur.Gen, from, cur.Seq, func(op transport.Op, k, v []byte) error {
			changed[string(k)] = last{bytes.Clone(v), op == transport.OpDelete}
			return nil
		})
	})
	if err != nil {
		return cur, err
	}
	gen := max(stage, cur.Gen) + 1
	err = c.db.Update(func(txn *badger.Txn) error {
		return txn.Set(stageKey(g.base), binary.BigEndian.AppendUint64(nil, gen))
	})
	if err != nil {
		return cur, err
	}
	to := genPrefix(g.base, gen)
	wb := c.db.NewWriteBatch()
	defer wb.Cancel()
	err = readBulk(path, func(k, v []byte) error {
		if _, ok := changed[string(k)]; ok {
			return nil
		}
		return wb.Set(concat(to, k), bytes.Clone(v))
	})
	if err != nil {
		return cur, err
	}
	for k, l := range changed {
		if !l.deleted {
			if err := wb.Set(concat(to, []byte(k)), l.value); err != nil {
				return cur, err
			}
		}
	}
	if err := wb.Flush(); err != nil {
		return cur, err
	}
	next := cur
	next.Gen, next.Bulk = gen, false
	if err := g.switchIn(cur, next); err != nil {
		return cur, err
	}
	g.log.Info("replica converted to disk only", "gen", gen, "rows_file", filepath.Base(path))
	return next, nil
}
