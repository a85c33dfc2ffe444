package replica

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/replmesh/replmesh/transport"
	"github.com/vmihailenco/msgpack/v5"
)

// The WAL's segment files (wal.go). A segment is named by its generation's
// prefix (as the rows files are, so removeBulk deletes it with them) and
// the seq of its first record: <hex of the prefix>-wal-<seq, 16 hex>.log.
// It is a sequence of records:
//
//	4 bytes, big-endian: n, the payload's length
//	4 bytes, big-endian: the CRC-32C (crcTable) of the payload
//	payload: 8 bytes, big-endian: prev, the seq before the batch (the
//	         previous record's, or the WAL's base); uvarint length and the
//	         cursor after the batch (msgpack, as badger's cursor key holds
//	         it: log id and epoch changes are carried); the changes
//	         (appendWALBatch)
//
// The records chain: each one's prev is the seq of the one before it (the
// base for the first above it), across segments. A load reads the chain
// from the base and stops at the first record that is cut short, fails
// its CRC or does not chain; see walScan.

// walRecHeader is the bytes of a record before its payload.
const walRecHeader = 8

// walSegSuffix ends a segment's name; walSegInfix precedes its seq.
const (
	walSegInfix  = "-wal-"
	walSegSuffix = ".log"
)

// walRecord is a decoded record.
type walRecord struct {
	prev  uint64
	cur   cursor
	batch []byte // appendWALBatch's; points into the read buffer
	size  int64  // the record's bytes, header included
}

// appendWALRecord appends the record of the batch chs after prev, ending
// at the cursor next, to b.
func appendWALRecord(b []byte, prev uint64, next cursor, chs []transport.Change) ([]byte, error) {
	cb, err := marshalCursor(next)
	if err != nil {
		return b, err
	}
	start := len(b)
	b = append(b, make([]byte, walRecHeader)...)
	b = binary.BigEndian.AppendUint64(b, prev)
	b = binary.AppendUvarint(b, uint64(len(cb)))
	b = append(b, cb...)
	b = appendWALBatch(b, chs)
	payload := b[start+walRecHeader:]
	if uint64(len(payload)) > walMaxRecord {
		return b[:start], fmt.Errorf("a WAL record of %d bytes", len(payload))
	}
	binary.BigEndian.PutUint32(b[start:], uint32(len(payload)))
	binary.BigEndian.PutUint32(b[start+4:], crc32.Checksum(payload, crcTable))
	return b, nil
}

// walMaxRecord bounds a record's payload.
const walMaxRecord = 1<<31 - 1

// decodeWALRecord decodes a record's payload (its CRC checked); the batch
// is checked whole.
func decodeWALRecord(p []byte) (walRecord, error) {
	var rec walRecord
	if len(p) < 8 {
		return rec, errors.New("record cut short")
	}
	rec.prev = beUint64(p)
	p = p[8:]
	cl, n := binary.Uvarint(p)
	if n <= 0 || cl > uint64(len(p)-n) {
		return rec, errors.New("bad cursor length")
	}
	if err := msgpack.Unmarshal(p[n:n+int(cl)], &rec.cur); err != nil {
		return rec, fmt.Errorf("decode cursor: %w", err)
	}
	rec.batch = p[n+int(cl):]
	if err := decodeWALBatch(rec.batch, func(transport.Op, []byte, []byte) error { return nil }); err != nil {
		return rec, err
	}
	if !rec.cur.Bulk || rec.cur.Seq <= rec.prev {
		return rec, fmt.Errorf("record of seq %d after %d (bulk %v)", rec.cur.Seq, rec.prev, rec.cur.Bulk)
	}
	return rec, nil
}

// readSegment calls fn with every whole record of the segment at path, in
// order, and the offset after it. It returns the offset after the last
// whole record, and tail, why the bytes after it are not a record (nil:
// there are none). An error of fn ends the read and is returned.
func readSegment(path string, fn func(end int64, rec *walRecord) error) (good int64, tail, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, nil, err
	}
	size := st.Size()
	br := bufio.NewReaderSize(f, 1<<16)
	var hdr [walRecHeader]byte
	var buf []byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return good, nil, nil
			}
			return good, fmt.Errorf("record header at %d: %w", good, err), nil
		}
		n := int64(binary.BigEndian.Uint32(hdr[:]))
		if n > size-good-walRecHeader {
			return good, fmt.Errorf("record at %d: %d bytes, past the end", good, n), nil
		}
		if int64(cap(buf)) < n {
			buf = make([]byte, n)
		}
		p := buf[:n]
		if _, err := io.ReadFull(br, p); err != nil {
			return good, fmt.Errorf("record at %d: %w", good, err), nil
		}
		if sum := crc32.Checksum(p, crcTable); sum != binary.BigEndian.Uint32(hdr[4:]) {
			return good, fmt.Errorf("record at %d: CRC %08x, the record says %08x", good, sum, binary.BigEndian.Uint32(hdr[4:])), nil
		}
		rec, err := decodeWALRecord(p)
		if err != nil {
			return good, fmt.Errorf("record at %d: %w", good, err), nil
		}
		rec.size = walRecHeader + n
		end := good + rec.size
		if err := fn(end, &rec); err != nil {
			return good, nil, err
		}
		good = end
	}
}

// walSegPath is the segment of the generation at prefix whose first
// record ends at seq first.
func (c *Component) walSegPath(prefix []byte, first uint64) string {
	return fmt.Sprintf("%s%s%016x%s", strings.TrimSuffix(c.bulkPath(prefix), ".rows"), walSegInfix, first, walSegSuffix)
}

// walSegPaths lists the segments of the generation at prefix, in seq
// order (their names' fixed-width seqs sort so).
func (c *Component) walSegPaths(prefix []byte) ([]string, error) {
	if c.cfg.DataDir == "" {
		return nil, nil
	}
	paths, err := filepath.Glob(strings.TrimSuffix(c.bulkPath(prefix), ".rows") + walSegInfix + "*" + walSegSuffix)
	slices.Sort(paths)
	return paths, err
}

// walSeg is a segment of the live generation's WAL.
type walSeg struct {
	path string
	last uint64 // the seq of its last record
}

// walScanned is what walScan found.
type walScanned struct {
	ok      bool   // a record above the base chains
	cur     cursor // the last such record's cursor
	segs    []walSeg
	entries []walRef // the records above the base
	bytes   int64    // their bytes
}

// errWALBreak ends a segment's read at a record that does not chain.
var errWALBreak = errors.New("record does not follow the one before")

// walScan reads the WAL of generation gen (row prefix prefix) from base,
// the seq of badger's cursor (the rows file's, or a seq the legacy overlay
// reached): it calls fn (if not nil) with each record above base that
// chains (prev the seq before it, gen the generation), in order. The
// chain ends at the first record that is cut short, corrupt or does not
// chain: after a crash, the torn end of what was being written. With
// repair set (the load, before anything reads or writes the WAL), the
// bytes past the chain's end in that segment are truncated, the segments
// after a record that does not chain and those that hold no record above
// base deleted, each with a warning where data goes. A segment whose torn
// end is followed by another that chains (a write that failed and could
// not be truncated away, then a new segment) is read on.
func (c *Component) walScan(log *slog.Logger, prefix []byte, gen, base uint64, repair bool, fn func(rec *walRecord) error) (walScanned, error) {
	var out walScanned
	paths, err := c.walSegPaths(prefix)
	if err != nil {
		return out, err
	}
	last := base
	broken := false
	for _, p := range paths {
		if broken {
			if repair {
				log.Warn("WAL segment after the end of the log deleted", "file", filepath.Base(p))
				if err := os.Remove(p); err != nil {
					return out, err
				}
			}
			continue
		}
		seg := walSeg{path: p}
		good, tail, err := readSegment(p, func(end int64, rec *walRecord) error {
			if rec.cur.Seq <= base {
				return nil // the rows file holds it (a checkpoint's leftover)
			}
			if rec.prev != last || rec.cur.Gen != gen {
				return errWALBreak
			}
			if fn != nil {
				if err := fn(rec); err != nil {
					return err
				}
			}
			last = rec.cur.Seq
			out.ok, out.cur = true, rec.cur
			seg.last = last
			out.entries = append(out.entries, walRef{last, rec.size})
			out.bytes += rec.size
			return nil
		})
		if errors.Is(err, errWALBreak) {
			broken, tail, err = true, errWALBreak, nil
		}
		if err != nil {
			return out, fmt.Errorf("WAL segment %s: %w", filepath.Base(p), err)
		}
		if tail != nil && repair {
			log.Warn("WAL segment truncated after its last whole record", "file", filepath.Base(p), "at", good, "cause", tail)
			if err := os.Truncate(p, good); err != nil {
				return out, err
			}
		}
		switch {
		case seg.last > 0:
			out.segs = append(out.segs, seg)
		case repair:
			if err := os.Remove(p); err != nil {
				return out, err
			}
		}
	}
	return out, nil
}

// replayWAL calls fn for every change of the WAL of generation gen at
// prefix above base, up to to (the load's cursor: genStore.load repaired
// the WAL, so its chain ends there), in order; the slices are valid only
// during the call.
func (c *Component) replayWAL(prefix []byte, gen, base, to uint64, fn func(op transport.Op, key, value []byte) error) error {
	reached := base == to
	_, err := c.walScan(c.log, prefix, gen, base, false, func(rec *walRecord) error {
		if rec.cur.Seq > to {
			return nil
		}
		reached = rec.cur.Seq == to
		return decodeWALBatch(rec.batch, fn)
	})
	if err != nil {
		return err
	}
	if !reached {
		return fmt.Errorf("the WAL from seq %d does not reach the cursor's seq %d", base, to)
	}
	return nil
}
