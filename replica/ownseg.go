package replica

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/dgraph-io/badger/v4"
)

// The owner's log segments (owner format 3, a data dir only). A log
// group's bytes (ownlog.go: the same value a group held in badger before)
// are appended to a file of the table's own, and badger holds, under the
// group's key, a reference to them: groupExt, the segment, the offset, the
// length and the CRC-32C of the bytes, its entry count and size. A
// change then costs badger its ref row and a fourteenth of a 33-byte
// reference instead of its whole log entry: badger's memtable, its memtable log, its L0 tables and its
// compactions no longer carry the values, which they did twice (the
// write, then the compaction). The value is still written once.
//
// Files: <DataDir>/ownlog/<hex of the table name>/<id, 16 hex>.seg, each
// a plain concatenation of group values. A component appends to a new
// segment after each open (it never appends to a file a crash may have
// cut) and rolls to the next one at segMax bytes. Bytes appended for a
// group whose transaction then failed (or was lost in a crash) are
// garbage no reference reaches; they go with their segment.
//
// Ordering. A group's bytes are written (write(2)) before the badger
// transaction that references them is handed to badger, so a process
// crash never leaves a reference without its bytes: both are in the page
// cache. With Durability Sync the segment is fdatasynced before the
// commit. With Async, writeback of each segMax/64 written is started at
// once (sync_file_range) and a rolled segment is synced; a machine crash
// can still lose bytes that badger's references outlive, which Own
// detects (a reference past its segment's end; a read checks the CRC)
// and refuses the table with an error that says so: restore it from its
// consumers. See docs/design.md, "Owner log segments".
//
// Deletion. Trimming deletes or rewrites (into badger, inline) every
// group wholly below the window, so a segment whose groups all lie below
// First is referenced by no current key. Readers of an older badger
// snapshot may still follow a reference into it, so a segment is retired
// first and deleted once every reader pinned before its retirement has
// unpinned (pin, unpin: the owner's read paths pin around their
// transactions).

// groupExt is the kind of a group value that references its bytes in a
// segment: kind, segment id (8 BE), offset (8 BE), length (4 BE), CRC-32C
// of the bytes (4 BE), the group's entry count (4 BE; the top bit set
// when its seqs are not consecutive), the size of its entries (4 BE).
// The last two let measureLog size the log from badger's keys alone.
const groupExt byte = 3

// groupExtSize is the size of a groupExt value.
const groupExtSize = 1 + 8 + 8 + 4 + 4 + 4 + 4

// segMax is the size at which a segment is closed and the next begun.
const segMax = 64 << 20

// segMaxForTest, when above 0, is segMax (tests that roll segments).
var segMaxForTest atomic.Int64

func segLimit() int64 {
	if n := segMaxForTest.Load(); n > 0 {
		return n
	}
	return segMax
}

// segWriteback is how many bytes are appended between two starts of
// writeback (Async durability).
const segWriteback = 1 << 20

// segRef is where a group's bytes lie, and what measureLog needs of it.
type segRef struct {
	id, off uint64
	n, crc  uint32
	entries uint32 // the entry count
	sparse  bool   // its seqs are not consecutive
	data    uint32 // the entries' bytes
}

// sparseBit marks a sparse group in a reference's entry count.
const sparseBit = 1 << 31

func (r segRef) encode() []byte {
	v := make([]byte, 0, groupExtSize)
	v = append(v, groupExt)
	v = binary.BigEndian.AppendUint64(v, r.id)
	v = binary.BigEndian.AppendUint64(v, r.off)
	v = binary.BigEndian.AppendUint32(v, r.n)
	v = binary.BigEndian.AppendUint32(v, r.crc)
	e := r.entries
	if r.sparse {
		e |= sparseBit
	}
	v = binary.BigEndian.AppendUint32(v, e)
	return binary.BigEndian.AppendUint32(v, r.data)
}

// parseSegRef parses a groupExt value.
func parseSegRef(v []byte) (segRef, error) {
	if len(v) != groupExtSize || v[0] != groupExt {
		return segRef{}, fmt.Errorf("log group reference: %d bytes", len(v))
	}
	e := binary.BigEndian.Uint32(v[25:])
	return segRef{
		id:      binary.BigEndian.Uint64(v[1:]),
		off:     binary.BigEndian.Uint64(v[9:]),
		n:       binary.BigEndian.Uint32(v[17:]),
		crc:     binary.BigEndian.Uint32(v[21:]),
		entries: e &^ sparseBit,
		sparse:  e&sparseBit != 0,
		data:    binary.BigEndian.Uint32(v[29:]),
	}, nil
}

// segPiece is one group of an append: where its value ends in the
// appended bytes, its entry count, whether its seqs are not consecutive,
// and its entries' size.
type segPiece struct {
	end     int
	entries int
	sparse  bool
	data    int
}

// errSegmentLost: a group reference points past its segment's end, or
// at bytes whose CRC does not match.
var errSegmentLost = errors.New("owner log segment lost bytes")

// segment is one open segment file.
type segment struct {
	id      uint64
	f       *os.File
	size    int64 // bytes written (the active one) or found (the others)
	retired bool  // no current key references it; deleted once unpinned
}

// segLog is an owned table's segments. Its methods are safe for
// concurrent use; a nil *segLog (a component without a data dir) holds
// nothing and pins nothing.
type segLog struct {
	dir  string
	sync bool // Durability Sync: flush before each commit

	appendMu sync.Mutex // serializes append
	mu       sync.Mutex
	segs     map[uint64]*segment
	active   *segment // appended to; nil: the next append begins one
	nextID   uint64
	maxBound map[uint64]uint64 // per segment, the highest group key referencing it
	dirty    bool              // the active segment has bytes not yet synced
	sinceWB  int64             // bytes appended since writeback was last started
	// pins: readers per pin epoch; retired: segments no current key
	// references, deleted once no reader pinned at or before their
	// epoch is left.
	epoch   uint64
	pins    map[uint64]int
	retired []retiredSeg
}

type retiredSeg struct {
	seg   *segment
	epoch uint64
}

// segDir is the directory of table's segments under dataDir.
func segDir(dataDir, table string) string {
	return filepath.Join(dataDir, "ownlog", hex.EncodeToString([]byte(table)))
}

// openSegLog opens the segments in dir (created if missing) for reading;
// appends go to a new one.
func openSegLog(dir string, sync bool) (*segLog, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("owner log segments: %w", err)
	}
	s := &segLog{dir: dir, sync: sync, segs: map[uint64]*segment{}, maxBound: map[uint64]uint64{}, pins: map[uint64]int{}, nextID: 1}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("owner log segments: %w", err)
	}
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".seg")
		if !ok || e.IsDir() {
			continue
		}
		id, err := strconv.ParseUint(name, 16, 64)
		if err != nil {
			continue
		}
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			s.closeAll()
			return nil, fmt.Errorf("owner log segments: %w", err)
		}
		fi, err := f.Stat()
		if err != nil {
			_ = f.Close()
			s.closeAll()
			return nil, fmt.Errorf("owner log segments: %w", err)
		}
		s.segs[id] = &segment{id: id, f: f, size: fi.Size()}
		s.nextID = max(s.nextID, id+1)
	}
	return s, nil
}

func (s *segLog) path(id uint64) string {
	return filepath.Join(s.dir, fmt.Sprintf("%016x.seg", id))
}

// check records that the group keyed bound references r, and reports
// errSegmentLost when r lies past its segment's end (Own, before any
// reader or writer).
func (s *segLog) check(bound uint64, r segRef) error {
	seg := s.segs[r.id]
	if seg == nil || int64(r.off)+int64(r.n) > seg.size {
		size := int64(-1)
		if seg != nil {
			size = seg.size
		}
		return fmt.Errorf("%w: the log group at seq %d is %d bytes at %d of segment %d, which has %d (a machine crash with async durability lost them): restore the table from its consumers", errSegmentLost, bound, r.n, r.off, r.id, size)
	}
	s.maxBound[r.id] = max(s.maxBound[r.id], bound)
	return nil
}

// dropUnreferenced deletes the segments no group referenced in the calls
// to check since open (Own, before any reader or writer).
func (s *segLog) dropUnreferenced() error {
	for id, seg := range s.segs {
		if _, ok := s.maxBound[id]; ok {
			continue
		}
		_ = seg.f.Close()
		delete(s.segs, id)
		if err := os.Remove(s.path(id)); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("owner log segments: %w", err)
		}
	}
	return nil
}

// append writes groups, group values back to back (pieces says where
// each ends, and what it holds; the last one's key is bound), to the
// active segment in one write, and returns their references (the groups'
// badger values). Appends are serialized
// (appendMu); the write itself holds no lock readers take.
func (s *segLog) append(groups []byte, pieces []segPiece, bound uint64) ([][]byte, error) {
	s.appendMu.Lock()
	defer s.appendMu.Unlock()
	s.mu.Lock()
	if s.active != nil && s.active.size+int64(len(groups)) > segLimit() && s.active.size > 0 {
		// Roll: the full segment is synced (most of it is written back
		// already) by the appender alone; readers go on meanwhile.
		old := s.active
		s.active, s.dirty, s.sinceWB = nil, false, 0
		s.mu.Unlock()
		if err := old.f.Sync(); err != nil {
			return nil, fmt.Errorf("owner log segment %d: sync: %w", old.id, err)
		}
		s.mu.Lock()
	}
	if s.active == nil {
		id := s.nextID
		f, err := os.OpenFile(s.path(id), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			s.mu.Unlock()
			return nil, fmt.Errorf("owner log segment: %w", err)
		}
		s.nextID++
		s.active = &segment{id: id, f: f}
		s.segs[id] = s.active
		s.maxBound[id] = 0 // retired with the others even if nothing lands in it
	}
	a := s.active
	off := a.size
	s.mu.Unlock()
	_, err := a.f.WriteAt(groups, off)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		// What was written is garbage: the next groups go to a new
		// segment, at an offset no partial write can have reached.
		if s.active == a {
			s.active = nil
		}
		return nil, fmt.Errorf("owner log segment %d: %w", a.id, err)
	}
	if a.retired {
		return nil, fmt.Errorf("owner log segment %d: the table was cleared during the write", a.id)
	}
	a.size += int64(len(groups))
	s.dirty = true
	if _, ok := s.maxBound[a.id]; ok {
		s.maxBound[a.id] = max(s.maxBound[a.id], bound)
	}
	if s.sinceWB += int64(len(groups)); s.sinceWB >= segWriteback && !s.sync {
		startWriteback(a.f, a.size-s.sinceWB, s.sinceWB)
		s.sinceWB = 0
	}
	refs := make([][]byte, len(pieces))
	start := 0
	for i, p := range pieces {
		v := groups[start:p.end]
		refs[i] = segRef{id: a.id, off: uint64(off) + uint64(start), n: uint32(len(v)), crc: crc32.Checksum(v, crcTable),
			entries: uint32(p.entries), sparse: p.sparse, data: uint32(p.data)}.encode()
		start = p.end
	}
	return refs, nil
}

// flush makes what was appended durable before the commit that
// references it, with Durability Sync; with Async it does nothing.
func (s *segLog) flush() error {
	if s == nil || !s.sync {
		return nil
	}
	s.mu.Lock()
	a := s.active
	if !s.dirty || a == nil {
		s.mu.Unlock()
		return nil
	}
	s.dirty = false
	s.mu.Unlock()
	if err := a.f.Sync(); err != nil {
		s.mu.Lock()
		s.dirty = true
		s.mu.Unlock()
		return fmt.Errorf("owner log segment %d: sync: %w", a.id, err)
	}
	return nil
}

// read returns the bytes r references, in buf (grown as needed).
func (s *segLog) read(r segRef, buf []byte) ([]byte, error) {
	s.mu.Lock()
	seg := s.segs[r.id]
	s.mu.Unlock()
	if seg == nil {
		return nil, fmt.Errorf("%w: segment %d is gone", errSegmentLost, r.id)
	}
	if cap(buf) < int(r.n) {
		buf = make([]byte, r.n)
	}
	buf = buf[:r.n]
	if _, err := seg.f.ReadAt(buf, int64(r.off)); err != nil {
		return nil, fmt.Errorf("%w: segment %d at %d: %w", errSegmentLost, r.id, r.off, err)
	}
	if crc32.Checksum(buf, crcTable) != r.crc {
		return nil, fmt.Errorf("%w: segment %d at %d: checksum mismatch", errSegmentLost, r.id, r.off)
	}
	return buf, nil
}

// pin marks the start of a reader that may follow references of the
// snapshot it is about to open; unpin(pin()) ends it.
func (s *segLog) pin() uint64 {
	if s == nil {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pins[s.epoch]++
	return s.epoch
}

func (s *segLog) unpin(e uint64) {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pins[e]--; s.pins[e] <= 0 {
		delete(s.pins, e)
	}
	s.deleteRetiredLocked()
}

// below returns the segments, other than the active one, whose groups
// all have keys below first.
func (s *segLog) below(first uint64) map[uint64]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ids map[uint64]bool
	for id, b := range s.maxBound {
		if b < first && (s.active == nil || id != s.active.id) {
			if ids == nil {
				ids = map[uint64]bool{}
			}
			ids[id] = true
		}
	}
	return ids
}

// retire retires the segments ids.
func (s *segLog) retire(ids map[uint64]bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id := range ids {
		s.retireLocked(id)
	}
	s.deleteRetiredLocked()
}

// retireAll retires every segment: the table's log keys are deleted, and
// that is synced (clearTo).
func (s *segLog) retireAll() {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// The active segment's bytes are garbage now: retired with the
	// others, unsynced.
	s.active, s.dirty, s.sinceWB = nil, false, 0
	for id := range s.segs {
		s.retireLocked(id)
	}
	s.deleteRetiredLocked()
}

func (s *segLog) retireLocked(id uint64) {
	seg := s.segs[id]
	delete(s.maxBound, id)
	if seg == nil || seg.retired {
		return
	}
	seg.retired = true
	s.retired = append(s.retired, retiredSeg{seg: seg, epoch: s.epoch})
	s.epoch++
}

// deleteRetiredLocked deletes the retired segments no pinned reader can
// still reach.
func (s *segLog) deleteRetiredLocked() {
	oldest := s.epoch
	for e := range s.pins {
		oldest = min(oldest, e)
	}
	kept := s.retired[:0]
	for _, r := range s.retired {
		if r.epoch >= oldest {
			kept = append(kept, r)
			continue
		}
		_ = r.seg.f.Close()
		_ = os.Remove(s.path(r.seg.id))
		delete(s.segs, r.seg.id)
	}
	clear(s.retired[len(kept):])
	s.retired = kept
}

// segments is how many segments are open or retired and not yet deleted
// (tests).
func (s *segLog) segments() (open, retired int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.segs) - len(s.retired), len(s.retired)
}

// close syncs the active segment and closes every file.
func (s *segLog) close() error {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var err error
	if s.active != nil && s.dirty {
		err = s.active.f.Sync()
	}
	s.active = nil
	s.closeAll()
	s.segs, s.retired = map[uint64]*segment{}, nil
	return err
}

func (s *segLog) closeAll() {
	for _, seg := range s.segs {
		_ = seg.f.Close()
	}
}

// retireSegments retires t's segments that trimming left unreferenced:
// those whose groups all have keys below first, the new first seq, once
// trimming (trimKept, which deletes such a group or rewrites it into
// badger) is durable. Before retiring, it checks that no key below first
// still references them (a value of groupExtSize bytes is read); one that
// does keeps its segment, and is reported.
func (t *OwnedTable) retireSegments(first uint64) error {
	if t.seg == nil {
		return nil
	}
	ids := t.seg.below(first)
	if len(ids) == 0 {
		return nil
	}
	if err := t.c.db.Sync(); err != nil {
		return err
	}
	err := t.c.db.View(func(txn *badger.Txn) error {
		return t.eachSegRef(txn, first, func(_ uint64, r segRef) error {
			if ids[r.id] {
				t.c.log.Warn("a trimmed log group still references its segment: the segment is kept", "table", t.name, "segment", r.id)
				delete(ids, r.id)
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	t.seg.retire(ids)
	return nil
}

// openSegments opens t's segments and checks the references of t's log
// groups against them; a segment no group references is deleted.
func (t *OwnedTable) openSegments() (*segLog, error) {
	s, err := openSegLog(segDir(t.c.cfg.DataDir, t.name), t.c.cfg.Durability == Sync)
	if err != nil {
		return nil, err
	}
	err = t.c.db.View(func(txn *badger.Txn) error {
		return t.eachSegRef(txn, math.MaxUint64, s.check)
	})
	if err == nil {
		err = s.dropUnreferenced()
	}
	if err != nil {
		_ = s.close()
		return nil, err
	}
	return s, nil
}

// view runs fn in a read transaction of t's store with t's segments
// pinned: every owner read that may follow a group's reference goes
// through it (or pins around its own transaction).
func (t *OwnedTable) view(fn func(txn *badger.Txn) error) error {
	defer t.seg.unpin(t.seg.pin())
	return t.c.db.View(fn)
}

// eachSegRef calls fn with the key's seq and the reference of each of t's
// log groups with a key below below that references a segment; the
// others' values are not read.
func (t *OwnedTable) eachSegRef(txn *badger.Txn, below uint64, fn func(bound uint64, r segRef) error) error {
	o := t.logIterOptions()
	o.PrefetchValues = false
	it := txn.NewIterator(o)
	defer it.Close()
	lp := t.logPrefix
	for it.Rewind(); it.Valid(); it.Next() {
		bound := binary.BigEndian.Uint64(it.Item().Key()[len(lp):])
		if bound >= below {
			return nil
		}
		if it.Item().ValueSize() != groupExtSize {
			continue
		}
		err := it.Item().Value(func(v []byte) error {
			if v[0] != groupExt {
				return nil // a group of that size held in badger
			}
			r, err := parseSegRef(v)
			if err != nil {
				return err
			}
			return fn(bound, r)
		})
		if err != nil {
			return err
		}
	}
	return nil
}
