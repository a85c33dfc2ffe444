package replica

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"maps"
	"math"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/dgraph-io/badger/v4"
	"github.com/replmesh/replmesh/transport"
	"github.com/tidwall/btree"
)

// Resident replicas. A replica's rows are held in memory in a resTable: an
// immutable sorted array of the rows as a transfer or a load left them,
// and a copy-on-write B-tree (github.com/tidwall/btree) of the changes
// since, merged into a new array in the background as it grows. After each
// applied batch the stream goroutine publishes an immutable view of it (the
// rows and the cursor they are at) through an atomic pointer. Get, Scan and
// Digest load the pointer and read that view: one consistent seq, no lock,
// no allocation. The table's Copy is O(1): the working table and the
// published views share the array and the overlay's nodes, and the next
// batch clones only the nodes it changes.
//
// A replica in a component without a data dir holds nothing anywhere else
// (memStore). A durable replica keeps its rows on disk (genStore: a rows
// file and a write-ahead log of the batches since, bulkgen.go and wal.go;
// each batch one record that holds the cursor after it, so the cursor is
// never ahead of the data) and, after each commit, in memory; it
// reads only memory, and loads the rows from disk when it opens. A replica
// subscribed with SubscribeOptions.DiskOnly holds nothing in memory and
// reads badger.

// resRow is one resident row: 24 bytes in an array or a B-tree node, one pointer (to
// the key and the value, one allocation) for the garbage collector to
// follow and for a copy-on-write clone to copy. Its bytes are never
// modified once stored: later changes replace the row, so a value handed
// out stays valid. pfx is the key's first 8 bytes (big-endian,
// zero-padded), in the node itself: most comparisons of a search end on it
// without reading the key's bytes, which are elsewhere in memory (a cache
// miss each).
type resRow struct {
	pfx        uint64
	p          *byte // key, then value
	klen, vlen uint32
}

// searchRow is a row to search for key with: it points into key, which
// it does not own.
func searchRow(key []byte) resRow {
	return resRow{pfx: keyPfx(key), p: unsafe.SliceData(key), klen: uint32(len(key))}
}

// ownRow copies key and value into one allocation and returns their row.
func ownRow(key, value []byte) resRow {
	kv := make([]byte, len(key)+len(value))
	copy(kv, key)
	copy(kv[len(key):], value)
	return kvRow(kv, len(key))
}

// kvRow is the row of kv, the key (klen bytes) then the value; kv is the
// row's from now on.
func kvRow(kv []byte, klen int) resRow {
	return resRow{pfx: keyPfx(kv[:klen]), p: unsafe.SliceData(kv), klen: uint32(klen), vlen: uint32(len(kv) - klen)}
}

func (r resRow) key() []byte { return unsafe.Slice(r.p, r.klen) }

// value is the row's value; its capacity ends with it, so an append to it
// copies.
func (r resRow) value() []byte {
	if r.vlen == 0 {
		return nil // no pointer past the allocation
	}
	return unsafe.Slice((*byte)(unsafe.Add(unsafe.Pointer(r.p), r.klen)), r.vlen)
}

// keyPfx orders as the key does: zero padding sorts a key before every
// longer key it is a prefix of, as bytes.Compare does; equal prefixes fall
// back to the whole key.
func keyPfx(k []byte) uint64 {
	if len(k) >= 8 {
		return binary.BigEndian.Uint64(k)
	}
	var b [8]byte
	copy(b[:], k)
	return binary.BigEndian.Uint64(b[:])
}

func resLess(a, b resRow) bool {
	if a.pfx != b.pfx {
		return a.pfx < b.pfx
	}
	return bytes.Compare(a.key(), b.key()) < 0
}

// resDegree is the B-trees' degree (nodes hold up to 2*resDegree-1 rows).
// A batch clones the nodes it changes, and the bytes it allocates (the
// garbage collector's work) fall with the degree: per change on 1M rows,
// batches of 100 (BenchmarkResidentApply), about 4.4 KB at degree 8, 5 KB
// at 16, 6.9 KB at 32, 9.9 KB at 64; a scan's seek gets slower below 16.
const resDegree = 16

// resRowOverhead is the approximate memory a resident row costs beyond its
// key and value bytes: the 24-byte item in the table's array (or, changed
// since the last merge, in its overlay's B-tree, whose nodes are about two
// thirds full), the allocation rounding of the key+value allocation,
// and the hash index's slot (see idxMinRows; 16 bytes in a table at most
// three quarters full, built at three quarters). Measured by TestResident_RowCost (about 70);
// docs/design.md says where the line between resident and disk-only lies.
const resRowOverhead = 150

// resTable is a resident replica's rows: base, an immutable sorted array
// of rows (exactly full, 24 bytes a row, where a B-tree loaded in key order
// leaves its leaves half full), shared by every view built on it, and
// over, a copy-on-write B-tree of the changes since base was built (a row,
// or a tombstone for a deleted row of base). Reads look in over first,
// then in base; walks merge the two in key order. When over outgrows a
// fraction of base (resMergeDiv), a merge folds the two into a new base in
// the background (resident.merge); until it is installed, changes go on
// into over. A transfer or a load builds base as its rows arrive in key
// order (Load), with no overlay at all.
type resTable struct {
	base *resBase
	over *btree.BTreeG[deltaRow]
	n    int // rows
	// shared: a copy of the table was taken, so base is no longer
	// appended to (Load falls back to Set) but through a header of its
	// own (ownBase: the table has one since).
	shared, ownBase bool
	// slabs tracks the dead bytes in the slabs of the rows adopted from a
	// transfer (nil: none); only a working table has it.
	slabs *slabSet
}

// resMergeDiv and resMinMerge: a merge is due when over holds more than
// resMinMerge changes and more than base's rows / resMergeDiv. Each change
// then costs about resMergeDiv rows' worth of copying in the background,
// and over stays small against base. Until a merge, base still holds the
// rows over replaced (and their slabs): a small table rewritten whole kept
// about twice its rows with a floor of 4096 changes (the footprint
// workload's 4,000-row table: 18.7-21.1 MB above the floor against
// 17.6-18.3 MB with 512, cmd/replbench -workloads footprint, alternated).
const (
	resMergeDiv = 8
	resMinMerge = 512
)

// resBase is a table's sorted rows in chunks of resChunk (all full but the
// last): a large table is never copied to grow, and its memory is its
// rows'. Nothing modifies one once a table holding it was copied, nor its
// first n rows: a table appending a row past every row it holds
// (resTable.Set) appends to a copy of the header, writing past the n of
// every copy, which none reads.
type resBase struct {
	chunks [][]resRow // each resChunk long (the last filled up to n)
	n      int
}

const (
	resChunkBits = 12
	resChunk     = 1 << resChunkBits
)

func (b *resBase) at(i int) resRow { return b.chunks[i>>resChunkBits][i&(resChunk-1)] }

// appendRow appends r. It writes the row's slot, and a new chunk's slot
// in chunks, past what any copy of b reads, never a slice header a copy
// holds.
func (b *resBase) appendRow(r resRow) {
	if b.n>>resChunkBits == len(b.chunks) {
		b.chunks = append(b.chunks, make([]resRow, resChunk))
	}
	b.chunks[b.n>>resChunkBits][b.n&(resChunk-1)] = r
	b.n++
}

// search returns the index of the first row not before key (n: none).
func (b *resBase) search(key resRow) int {
	lo, hi := 0, b.n
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if resLess(b.at(m), key) {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

func (b *resBase) get(key resRow) (resRow, bool) {
	if i := b.search(key); i < b.n {
		if r := b.at(i); !resLess(key, r) {
			return r, true
		}
	}
	return resRow{}, false
}

// newResRows is an empty table.
func newResRows() *resTable { return &resTable{base: &resBase{}, over: newDeltaRows()} }

// Len is the number of rows.
func (t *resTable) Len() int { return t.n }

// Copy returns a copy of t in O(1): the two share base, which neither
// modifies, and over's nodes, which each clones before it changes them.
func (t *resTable) Copy() *resTable {
	t.shared, t.ownBase = true, false
	return &resTable{base: t.base, over: t.over.Copy(), n: t.n, shared: true}
}

// Get returns the row of key's row (a searchRow).
func (t *resTable) Get(key resRow) (resRow, bool) {
	if t.over.Len() > 0 {
		if d, ok := t.over.Get(deltaRow{resRow: key}); ok {
			if d.deleted {
				return resRow{}, false
			}
			return d.resRow, true
		}
	}
	return t.base.get(key)
}

// Set sets row (t's from now on) and returns the row it replaced. A row
// past every row of t (keys written in ascending order: a log's, a time
// series') is appended to base, not set in over: over stays small and
// merges do not come due.
func (t *resTable) Set(row resRow) (resRow, bool) {
	if t.past(row) {
		if t.shared && !t.ownBase {
			t.base = &resBase{chunks: t.base.chunks, n: t.base.n}
			t.ownBase = true
		}
		t.base.appendRow(row)
		t.n++
		return resRow{}, false
	}
	old, had := resRow{}, false
	if d, ok := t.over.Set(deltaRow{resRow: row}); ok {
		old, had = d.resRow, !d.deleted
	} else {
		old, had = t.base.get(row)
	}
	if !had {
		t.n++
	}
	return old, had
}

// past reports whether row's key comes after every row of t, base's and
// over's (tombstones included).
func (t *resTable) past(row resRow) bool {
	if t.base.n > 0 && !resLess(t.base.at(t.base.n-1), row) {
		return false
	}
	if t.over.Len() > 0 {
		if d, _ := t.over.Max(); !resLess(d.resRow, row) {
			return false
		}
	}
	return true
}

// Delete deletes key's row (a searchRow) and returns it. A row of base
// gets a tombstone in over (base's own row: nothing new to keep).
func (t *resTable) Delete(key resRow) (resRow, bool) {
	if b, ok := t.base.get(key); ok {
		old, had := b, true
		if d, ok := t.over.Set(deltaRow{resRow: b, deleted: true}); ok {
			old, had = d.resRow, !d.deleted
		}
		if had {
			t.n--
		}
		return old, had
	}
	if d, ok := t.over.Delete(deltaRow{resRow: key}); ok && !d.deleted {
		t.n--
		return d.resRow, true
	}
	return resRow{}, false
}

// Load sets row as Set does; a row after every row of a table not yet
// copied and without changes (a transfer or a load, in key order) is
// appended to base.
func (t *resTable) Load(row resRow) (resRow, bool) {
	if !t.shared && t.over.Len() == 0 && (t.base.n == 0 || resLess(t.base.at(t.base.n-1), row)) {
		t.base.appendRow(row)
		t.n++
		return resRow{}, false
	}
	return t.Set(row)
}

// Scan calls fn for every row in key order until fn returns false.
func (t *resTable) Scan(fn func(resRow) bool) { t.ascend(nil, fn) }

// Ascend calls fn for the rows from pivot's key on, in key order, until fn
// returns false.
func (t *resTable) Ascend(pivot resRow, fn func(resRow) bool) { t.ascend(&pivot, fn) }

// ascend merges base and over from pivot (nil: the first row): a row of
// over replaces base's row of the same key, a tombstone hides it.
func (t *resTable) ascend(pivot *resRow, fn func(resRow) bool) {
	b := t.base
	i := 0
	if pivot != nil {
		i = b.search(*pivot)
	}
	stopped := false
	each := func(d deltaRow) bool {
		for ; i < b.n; i++ {
			r := b.at(i)
			if !resLess(r, d.resRow) {
				break
			}
			if !fn(r) {
				stopped = true
				return false
			}
		}
		if i < b.n && !resLess(d.resRow, b.at(i)) {
			i++ // replaced or deleted
		}
		if d.deleted {
			return true
		}
		if !fn(d.resRow) {
			stopped = true
			return false
		}
		return true
	}
	if t.over.Len() > 0 {
		if pivot != nil {
			t.over.Ascend(deltaRow{resRow: *pivot}, each)
		} else {
			t.over.Scan(each)
		}
	}
	if stopped {
		return
	}
	for ; i < b.n; i++ {
		if !fn(b.at(i)) {
			return
		}
	}
}

// merged is a new base of t's rows, or false when stop reported true
// (checked every 4096 rows; nil: never). The rows held by a run of
// copyOut (sorted) are copied into new slabs, whose runs it returns.
func (t *resTable) merged(stop func() bool, copyOut []slabRun) (*resBase, []slabRun, bool) {
	nb := &resBase{chunks: make([][]resRow, 0, (t.n+resChunk-1)/resChunk)}
	var c copier
	ok := true
	t.Scan(func(r resRow) bool {
		if len(copyOut) > 0 && findRun(copyOut, rowAddr(r)) >= 0 {
			r = c.copyRow(r)
		}
		nb.appendRow(r)
		if nb.n%4096 == 0 && stop != nil && stop() {
			ok = false
		}
		return ok
	})
	return nb, c.runs, ok
}

// Slabs. A transfer's rows are kept as the transport decoded them: the
// keys and values of a rows frame in one allocation, its slab
// (transport.RowBytes). A slab stays in memory while any of its rows is
// referenced, so rows replaced or deleted since leave dead bytes in it.
// The working table tracks, per run of adopted rows (consecutive rows of a
// slab), the bytes of its rows still in the table (slabSet); when the dead
// bytes pass half of all the runs' bytes (and resMinCompact), the next
// merge copies the surviving rows of every run that is more dead than live
// into new slabs of its own: after it, no run is more than half dead, so
// the dead bytes are at most half of the slab bytes again. The hash index
// points to the rows it copies, so it is dropped and built again.
const resMinCompact = 256 << 10

// compactSlab is the size of the slabs a compaction copies rows into.
const compactSlab = 64 << 10

// slabRun is a run of rows adopted into a table, contiguous in memory
// (within one slab): the bytes from start, and those of the rows still in
// the working table.
type slabRun struct {
	start      uintptr
	size, live int64
}

func (r *slabRun) holds(p uintptr) bool { return p >= r.start && p < r.start+uintptr(r.size) }

// slabSet is the runs of a working table, sorted by start, and their
// totals. A run leaves the set when its last row does: the garbage
// collector may then reuse its memory, which the set never names again.
type slabSet struct {
	runs       []slabRun
	size, live int64
}

// newSlabSet makes a set of runs (in any order, not overlapping).
func newSlabSet(runs []slabRun) *slabSet {
	slices.SortFunc(runs, func(a, b slabRun) int { return cmp.Compare(a.start, b.start) })
	ss := &slabSet{runs: runs}
	for _, r := range runs {
		ss.size += r.size
		ss.live += r.live
	}
	return ss
}

func rowAddr(r resRow) uintptr { return uintptr(unsafe.Pointer(r.p)) }

// find returns the index of the run in runs (sorted) that holds p, or -1.
func findRun(runs []slabRun, p uintptr) int {
	i := sort.Search(len(runs), func(i int) bool { return runs[i].start > p }) - 1
	if i >= 0 && runs[i].holds(p) {
		return i
	}
	return -1
}

// release accounts for r leaving the working table (replaced or deleted):
// its bytes are dead in its run, if it is in one.
func (ss *slabSet) release(r resRow) {
	if ss == nil || len(ss.runs) == 0 {
		return
	}
	i := findRun(ss.runs, rowAddr(r))
	if i < 0 {
		return
	}
	n := rowBytes(r)
	ss.runs[i].live -= n
	ss.live -= n
	if ss.runs[i].live <= 0 {
		ss.size -= ss.runs[i].size
		ss.live -= ss.runs[i].live // 0
		ss.runs = slices.Delete(ss.runs, i, i+1)
	}
}

// adopt accounts for r joining the working table as adopted (its bytes
// kept where they were decoded) and returns the start of its run. A row
// that starts where the previous adopted row (of the run starting at
// prev) ends joins its run: rows of a changes frame's slab are adopted in
// order, and a slab's spare last byte (transport's slabFor) means rows
// that follow each other in memory are in the same slab. Any other row
// starts a run of its own.
func (ss *slabSet) adopt(prev uintptr, r resRow) uintptr {
	p, n := rowAddr(r), rowBytes(r)
	if prev != 0 {
		if i := findRun(ss.runs, prev); i >= 0 && ss.runs[i].start == prev && ss.runs[i].start+uintptr(ss.runs[i].size) == p {
			ss.runs[i].size += n
			ss.runs[i].live += n
			ss.size += n
			ss.live += n
			return prev
		}
	}
	i := sort.Search(len(ss.runs), func(i int) bool { return ss.runs[i].start > p })
	ss.runs = slices.Insert(ss.runs, i, slabRun{start: p, size: n, live: n})
	ss.size += n
	ss.live += n
	return p
}

// dead is the bytes of the runs whose rows left the table.
func (ss *slabSet) dead() int64 {
	if ss == nil {
		return 0
	}
	return ss.size - ss.live
}

// compactDue says the dead bytes passed half of the runs' bytes and min.
func (ss *slabSet) compactDue(min int64) bool {
	d := ss.dead()
	return d > min && 2*d > ss.size
}

// sparse is a copy of the runs more dead than live: a compaction's.
func (ss *slabSet) sparse() []slabRun {
	var out []slabRun
	for _, r := range ss.runs {
		if 2*r.live < r.size {
			out = append(out, r)
		}
	}
	return out
}

// compacted replaces the runs a compaction copied out of (gone, sorted)
// with the ones it copied into (fresh, all their rows live).
func (ss *slabSet) compacted(gone, fresh []slabRun) {
	keep := ss.runs[:0]
	for _, r := range ss.runs {
		if findRun(gone, r.start) >= 0 {
			ss.size -= r.size
			ss.live -= r.live
			continue
		}
		keep = append(keep, r)
	}
	runs := append(keep, fresh...)
	slices.SortFunc(runs, func(a, b slabRun) int { return cmp.Compare(a.start, b.start) })
	ss.runs = runs
	for _, r := range fresh {
		ss.size += r.size
		ss.live += r.live
	}
}

// copier copies rows into slabs of compactSlab bytes, keeping their runs.
type copier struct {
	buf  []byte
	runs []slabRun
}

func (c *copier) copyRow(r resRow) resRow {
	n := int(rowBytes(r))
	if cap(c.buf)-len(c.buf) < n {
		c.buf = make([]byte, 0, max(compactSlab, n))
		c.runs = append(c.runs, slabRun{start: uintptr(unsafe.Pointer(unsafe.SliceData(c.buf)))})
	}
	l := len(c.buf)
	c.buf = append(c.buf, unsafe.Slice(r.p, n)...)
	run := &c.runs[len(c.runs)-1]
	run.size += int64(n)
	run.live += int64(n)
	return kvRow(c.buf[l:l+n:l+n], int(r.klen))
}

func rowBytes(r resRow) int64 { return int64(r.klen) + int64(r.vlen) }

// resView is one published state of a resident replica: its rows at cur.
// Nothing modifies a view once it is published.
type resView struct {
	cur   cursor
	rows  *resTable
	bytes int64 // key+value bytes of the rows
	// base and delta are the hash index at cur (base nil: none): the
	// rows as of the build, and the rows changed since.
	base  *hashIndex
	delta *btree.BTreeG[deltaRow]
}

// walk calls fn for every row of the view in key order until fn returns
// false or an error, which it returns: a rowWalk over a published view.
func (v *resView) walk(fn func(k, val []byte) (bool, error)) error {
	var err error
	v.rows.Scan(func(r resRow) bool {
		var more bool
		more, err = fn(r.key(), r.value())
		return more && err == nil
	})
	return err
}

// get returns the stored value of key (shared: never modify it). With a
// hash index, the rows changed since it was built are looked up first
// (delta: small, and hot in the cache), then the index; without one, the
// B-tree.
func (v *resView) get(key []byte) ([]byte, bool) {
	if v.base == nil {
		r, ok := v.rows.Get(searchRow(key))
		return r.value(), ok
	}
	if v.delta.Len() > 0 {
		if d, ok := v.delta.Get(deltaRow{resRow: searchRow(key)}); ok {
			return d.value(), !d.deleted
		}
	}
	return v.base.get(key)
}

// scan calls fn for the rows with start <= key < end (nil end: no bound)
// whose key starts with prefix, in key order, until fn returns false.
func (v *resView) scan(prefix, start, end []byte, fn func(k, v []byte) bool) {
	pivot := prefix
	if bytes.Compare(start, pivot) > 0 {
		pivot = start
	}
	v.rows.Ascend(searchRow(pivot), func(r resRow) bool {
		k := r.key()
		if !bytes.HasPrefix(k, prefix) || end != nil && bytes.Compare(k, end) >= 0 {
			return false
		}
		return fn(k, r.value())
	})
}

// deltaRow is a row changed since the hash index was built: its new
// value, or deleted.
type deltaRow struct {
	resRow
	deleted bool
}

func newDeltaRows() *btree.BTreeG[deltaRow] {
	return btree.NewBTreeGOptions(func(a, b deltaRow) bool { return resLess(a.resRow, b.resRow) },
		btree.Options{NoLocks: true, Degree: resDegree})
}

// The hash index. A point read in the B-tree costs a cache miss per
// comparison (about log2(rows) of them); a hash table two. A table of at
// least idxMinRows rows therefore gets a hash table of its rows (base, a
// hashIndex), built in the background from a published view, plus a small
// copy-on-write B-tree of the rows changed since (delta). It is built again
// (the old table copied, the delta applied to the copy) when delta
// outgrows idxMinDelta and an eighth of the table: each change then costs
// about one insert and 8 rows' worth of table copying in the background,
// and delta stays small. The delta costs each change a second B-tree insert,
// worth it only while point reads come: a rebuild is due only after
// idxMinReads reads since the last one, and without them the index is
// dropped instead (a write-heavy replica nobody reads pays for the rows'
// B-tree alone). Point reads of a replica without an index ask for one
// (wantIndex) every idxMinReads reads.
const (
	idxMinRows  = 4096
	idxMinDelta = 4096
	idxDeltaDiv = 8
	idxMinReads = 1024
)

// resident is the mutable side of a resident replica: the working tree,
// which only the stream goroutine changes, the hash index's state, and the
// published view. Readers only load view.
type resident struct {
	// mu serializes the writers: the stream goroutine (apply, a
	// transfer's switch) and the install of a built index. Readers never
	// take it.
	mu    sync.Mutex
	w     *resTable
	bytes int64
	// base and delta are the hash index (base nil: none yet); next, while
	// a build runs, collects the changes since the view it builds from,
	// to become delta when it is installed; gen counts the transfers, so
	// an index built from replaced rows is dropped.
	base     *hashIndex
	delta    *btree.BTreeG[deltaRow]
	next     *btree.BTreeG[deltaRow]
	building bool
	gen      uint64
	// merging: a merge of the working table's overlay into a new base
	// runs in the background; mnext collects the changes since the table
	// it merges, to become the new table's overlay when it is installed.
	merging bool
	mnext   *btree.BTreeG[deltaRow]
	// compactions counts the slab compactions (tests).
	compactions int
	// adopted counts the applied rows kept as decoded, without a copy
	// (tests).
	adopted int
	// minRows and minDelta are idxMinRows and idxMinDelta (tests set
	// smaller ones); spawn runs a build in the background, stop tells it
	// to give up (the replica is closing); reads counts the replica's
	// reads (nil: reads are always coming), readsAt is its count when
	// the last build began, built says a build began once.
	minRows, minDelta, minMerge int
	minCompact                  int64
	spawn                       func(func()) bool
	stop                        func() bool
	reads                       func() uint64
	readsAt                     uint64
	built                       bool
	view                        atomic.Pointer[resView]
}

// newResident makes rows (owned by the result from now on) the resident
// state at cur and publishes it; spawn (false: refused, the replica is
// stopping) and stop run the hash index's builds (nil spawn: no index,
// every read searches the B-tree).
func newResident(cur cursor, rows *resTable, n int64, spawn func(func()) bool, stop func() bool, reads func() uint64) *resident {
	s := &resident{w: rows, bytes: n, delta: newDeltaRows(), minRows: idxMinRows, minDelta: idxMinDelta, minMerge: resMinMerge, minCompact: resMinCompact, spawn: spawn, stop: stop, reads: reads}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.publishLocked(cur)
	return s
}

// readsSince is the reads since the last build began.
func (s *resident) readsSince() uint64 {
	if s.reads == nil {
		return math.MaxUint64
	}
	return s.reads() - s.readsAt // reads only grows
}

// wantIndex is a point read's request for an index, made every
// idxMinReads reads while the view has none: it builds one unless the
// writers hold the lock (the next publish decides then) or one is being
// built. It never waits.
func (s *resident) wantIndex() {
	if !s.mu.TryLock() {
		return
	}
	defer s.mu.Unlock()
	s.maybeBuildLocked(s.view.Load())
}

// publishLocked makes the working state the view at cur. Copy gives the
// working trees a new identity, so their next change clones the nodes it
// touches instead of modifying the published ones. It then starts an index
// build if one is due.
func (s *resident) publishLocked(cur cursor) {
	if s.base != nil && !s.building && s.delta.Len() > max(s.minDelta, s.base.n/idxDeltaDiv) && s.readsSince() < idxMinReads {
		s.base, s.delta = nil, newDeltaRows() // unread: not worth a rebuild
	}
	v := &resView{cur: cur, rows: s.w.Copy(), bytes: s.bytes}
	if s.base != nil {
		v.base, v.delta = s.base, s.delta.Copy()
	}
	s.view.Store(v)
	s.maybeMergeLocked(v)
	s.maybeBuildLocked(v)
}

// maybeMergeLocked starts merging the overlay of v's table (the working
// table's, just published) into a new base when it is due, or when the
// slabs' dead bytes call for a compaction: in the background where builds
// run (spawn), else here.
func (s *resident) maybeMergeLocked(v *resView) {
	if s.merging {
		return
	}
	compact := s.w.slabs.compactDue(s.minCompact)
	if !compact && s.w.over.Len() <= max(s.minMerge, s.w.base.n/resMergeDiv) {
		return
	}
	var gone []slabRun
	if compact {
		gone = s.w.slabs.sparse()
	}
	if s.spawn == nil {
		nb, fresh, _ := s.w.merged(nil, gone)
		s.installMergeLocked(nb, gone, fresh, newDeltaRows())
		return
	}
	s.merging, s.mnext = true, newDeltaRows()
	gen := s.gen
	if !s.spawn(func() { s.merge(v.rows, gen, gone) }) {
		s.merging, s.mnext = false, nil
	}
}

// merge makes a new base of t's rows (a published view's table), copying
// out the rows of the runs gone, and installs it with the changes since t
// as its overlay, unless a transfer or a compaction replaced the rows
// meanwhile (gen) or the replica stops.
func (s *resident) merge(t *resTable, gen uint64, gone []slabRun) {
	nb, fresh, ok := t.merged(s.stop, gone)
	s.mu.Lock()
	defer s.mu.Unlock()
	if gen != s.gen {
		return // a transfer's switch ended this merge
	}
	next := s.mnext
	s.merging, s.mnext = false, nil
	if !ok {
		return
	}
	// next holds exactly the changes applied since t.
	s.installMergeLocked(nb, gone, fresh, next)
}

// installMergeLocked makes nb, with the changes next over it, the working
// table, and publishes the current view again on it, so the old base is
// garbage once no reader holds an older view. After a compaction (gone:
// the runs copied out of, fresh: those copied into) the copies of the rows
// changed since are dead, and the hash index, which points to the rows
// copied out of, is dropped (a build from the old rows is ended by gen)
// and built again.
func (s *resident) installMergeLocked(nb *resBase, gone, fresh []slabRun, next *btree.BTreeG[deltaRow]) {
	ss := s.w.slabs
	s.w = &resTable{base: nb, over: next, n: s.w.n, slabs: ss}
	if len(gone) > 0 {
		slices.SortFunc(fresh, func(a, b slabRun) int { return cmp.Compare(a.start, b.start) })
		ss.compacted(gone, fresh)
		next.Scan(func(d deltaRow) bool {
			if r, ok := nb.get(d.resRow); ok && findRun(fresh, rowAddr(r)) >= 0 {
				ss.release(r)
			}
			return true
		})
		s.base, s.delta, s.next, s.building = nil, newDeltaRows(), nil, false
		s.gen++
		s.compactions++
	}
	cur := s.view.Load()
	v := &resView{cur: cur.cur, rows: s.w.Copy(), bytes: cur.bytes}
	if s.base != nil {
		v.base, v.delta = cur.base, cur.delta
	}
	s.view.Store(v)
	if s.w.slabs.compactDue(s.minCompact) {
		// The changes during the merge left the slabs more dead than
		// live: compact now, not at the next batch.
		s.maybeMergeLocked(v)
	}
	s.maybeBuildLocked(s.view.Load()) // the compaction's view, if one ran here
}

// maybeBuildLocked starts building an index from v, the published view,
// when one is due: none yet (a first one is built for every table large
// enough; later ones only while reads come), or the delta outgrew it.
func (s *resident) maybeBuildLocked(v *resView) {
	if s.spawn == nil || s.building || s.w.Len() < s.minRows {
		return
	}
	if s.base != nil && s.delta.Len() <= max(s.minDelta, s.base.n/idxDeltaDiv) {
		return
	}
	if s.built && s.readsSince() < idxMinReads {
		return
	}
	if s.reads != nil {
		s.readsAt = s.reads()
	}
	s.built = true
	s.building, s.next = true, newDeltaRows()
	gen := s.gen
	if !s.spawn(func() { s.build(v, gen) }) {
		s.building, s.next = false, nil
	}
}

// build makes the hash index of view v's rows and installs it, unless a
// transfer replaced the rows meanwhile (gen) or the replica stops. With an
// index in v already, the new one is a copy of it (copying the table's
// memory is far cheaper than inserting every row) with v's delta applied;
// else it is built from the rows.
func (s *resident) build(v *resView, gen uint64) {
	var m *hashIndex
	n := 0
	stopped := false
	if v.base != nil {
		m = v.base.clone(v.delta.Len())
		v.delta.Scan(func(d deltaRow) bool {
			if d.deleted {
				m.del(d.key())
			} else {
				m.put(d.resRow)
			}
			if n++; n%4096 == 0 && s.stop != nil && s.stop() {
				stopped = true
				return false
			}
			return true
		})
	} else {
		m = newHashIndex(v.rows.Len())
		v.rows.Scan(func(r resRow) bool {
			m.put(r)
			if n++; n%4096 == 0 && s.stop != nil && s.stop() {
				stopped = true
				return false
			}
			return true
		})
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if gen != s.gen {
		return // a transfer's switch ended this build (and may run another)
	}
	s.building = false
	if stopped {
		s.next = nil
		return
	}
	// next holds exactly the changes applied since v.
	s.base, s.delta, s.next = m, s.next, nil
	cur := s.view.Load()
	s.view.Store(&resView{cur: cur.cur, rows: cur.rows, bytes: cur.bytes, base: m, delta: s.delta.Copy()})
}

// hashIndex is the hash index's table of rows: open addressing with
// linear probing, a 16-byte slot a row (the row's pointer, 32 bits of the
// key's hash and the row's lengths), at most three quarters full. Its size
// is not a power of two: a table is built with room for its rows at three
// quarters full (a key's home slot is its hash scaled to the size, home),
// where rounding up to a power of two would leave it between three
// eighths and three quarters full (a 1M-row table 2M slots, 32 MB, not
// 1.33M, 21 MB). A hit
// reads its slot (and rarely the next few, mostly in the same cache line)
// and then the row's memory, which holds the key and the value's first
// bytes: two cache misses on a table far larger than the cache, where a Go
// map[string][]byte pointing into the rows takes three (its control word,
// its slot, the key's bytes). A row whose lengths do not fit a slot
// (idxMaxKey, idxMaxValue) has a slot marked idxLong and its row in long.
// Nothing modifies a published one: a build modifies its own clone.
type hashIndex struct {
	slots []idxSlot // fewer than 1<<32 of them
	n     int       // used slots
	// long holds the rows of the slots marked idxLong, by key (the key
	// string points into the row, which is immutable); nil while none.
	long map[string]resRow
}

// idxSlot is one row of a hashIndex; p is nil in an empty slot. lens is
// the key's length (the top 12 bits) and the value's (the low 20), or
// idxLong.
type idxSlot struct {
	p    *byte
	h    uint32
	lens uint32
}

// A row's lengths fit a slot when its key is shorter than idxMaxKey and
// its value at most idxMaxValue bytes; idxLong marks a slot whose row is
// in hashIndex.long (a key length of idxMaxKey, which no fitting row has).
const (
	idxValueBits = 20
	idxMaxKey    = 1<<(32-idxValueBits) - 1
	idxMaxValue  = 1<<idxValueBits - 1
	idxLong      = math.MaxUint32
)

// slotOf is r's slot for hash h, and whether r's lengths fit in it (else
// the slot is marked idxLong).
func slotOf(r resRow, h uint32) (idxSlot, bool) {
	if r.klen >= idxMaxKey || r.vlen > idxMaxValue {
		return idxSlot{p: r.p, h: h, lens: idxLong}, false
	}
	return idxSlot{p: r.p, h: h, lens: r.klen<<idxValueBits | r.vlen}, true
}

// row is the row of a slot whose lengths fit it (not idxLong).
func (sl *idxSlot) row() resRow {
	return resRow{p: sl.p, klen: sl.lens >> idxValueBits, vlen: sl.lens & idxMaxValue}
}

// idxSeed seeds the index's hash, per process.
var idxSeed = maphash.MakeSeed()

// hashOf is the hash of key in a hashIndex.
func hashOf(key []byte) uint32 { return uint32(maphash.Bytes(idxSeed, key)) }

// newHashIndex is an empty table with room for n rows: at most three
// quarters full with them.
func newHashIndex(n int) *hashIndex {
	return &hashIndex{slots: make([]idxSlot, max(8, (n*4+2)/3+1))}
}

// home is the slot where the probe for hash h starts: h scaled to the
// table's size (a multiply and a shift, where a modulo would divide).
func (x *hashIndex) home(h uint32) uint32 {
	return uint32(uint64(h) * uint64(len(x.slots)) >> 32)
}

// nextSlot is the slot after i, the first after the last.
func (x *hashIndex) nextSlot(i uint32) uint32 {
	if i++; int(i) == len(x.slots) {
		return 0
	}
	return i
}

// get returns the value of key (shared: never modify it).
func (x *hashIndex) get(key []byte) ([]byte, bool) {
	i, ok := x.find(key, hashOf(key))
	if !ok {
		return nil, false
	}
	sl := &x.slots[i]
	if sl.lens == idxLong {
		return x.long[string(key)].value(), true
	}
	return sl.row().value(), true
}

// find returns the slot of key, or the empty slot that ends its probe.
func (x *hashIndex) find(key []byte, h uint32) (uint32, bool) {
	for i := x.home(h); ; i = x.nextSlot(i) {
		sl := &x.slots[i]
		if sl.p == nil {
			return i, false
		}
		if sl.h != h {
			continue
		}
		if sl.lens == idxLong {
			if r, ok := x.long[string(key)]; ok && r.p == sl.p {
				return i, true
			}
			continue
		}
		if klen := sl.lens >> idxValueBits; int(klen) == len(key) && string(unsafe.Slice(sl.p, klen)) == string(key) {
			return i, true
		}
	}
}

// put sets r's key to r (x must not be published), growing the table to
// stay at most three quarters full (by an eighth of its rows at least, so
// puts grow it O(log) times, not once each).
func (x *hashIndex) put(r resRow) {
	if (x.n+1)*4 > len(x.slots)*3 {
		x.grow(x.n + 1 + x.n/8)
	}
	key := r.key()
	h := hashOf(key)
	i, found := x.find(key, h)
	if !found {
		x.n++
	} else if x.slots[i].lens == idxLong {
		delete(x.long, string(key))
	}
	sl, fits := slotOf(r, h)
	if !fits {
		if x.long == nil {
			x.long = make(map[string]resRow)
		}
		x.long[unsafe.String(r.p, r.klen)] = r
	}
	x.slots[i] = sl
}

// del removes key (x must not be published), shifting back the rows of
// its probe sequence that follow it, so no probe meets a hole it should
// have passed.
func (x *hashIndex) del(key []byte) {
	i, found := x.find(key, hashOf(key))
	if !found {
		return
	}
	if x.slots[i].lens == idxLong {
		delete(x.long, string(key))
	}
	for j := x.nextSlot(i); x.slots[j].p != nil; j = x.nextSlot(j) {
		home := x.home(x.slots[j].h)
		// The row at j stays when its home lies cyclically in (i, j].
		if i <= j && i < home && home <= j || i > j && (i < home || home <= j) {
			continue
		}
		x.slots[i] = x.slots[j]
		i = j
	}
	x.slots[i] = idxSlot{}
	x.n--
}

// grow rehashes x into a table with room for n rows.
func (x *hashIndex) grow(n int) {
	y := newHashIndex(n)
	for _, sl := range x.slots {
		if sl.p == nil {
			continue
		}
		i := y.home(sl.h)
		for y.slots[i].p != nil {
			i = y.nextSlot(i)
		}
		y.slots[i] = sl
	}
	x.slots = y.slots
}

// clone is a copy of x with room for extra more rows.
func (x *hashIndex) clone(extra int) *hashIndex {
	y := &hashIndex{slots: x.slots, n: x.n}
	if x.long != nil {
		y.long = maps.Clone(x.long)
	}
	if (x.n+extra)*4 > len(x.slots)*3 {
		y.grow(x.n + extra) // new slots: x's stay as they are
		return y
	}
	y.slots = slices.Clone(x.slots)
	return y
}

// resAdoptMin is the fewest key and value bytes a batch of changes
// applied to a resident table must hold for its rows to be kept as decoded
// (resident.apply): each batch adds a run or two to the working table's
// slabs, so runs are at least this large when made, and a compaction
// leaves none of them more dead than live. Smaller batches (a steady
// stream's) are copied row by row: their runs would be many and small.
const resAdoptMin = 16 << 10

// apply applies changes (whole commit groups, continuing the view's
// cursor) and publishes the result as the view at next. A change decoded
// from the wire has its key and value in its frame's slab, one after the
// other (transport.RowBytes): in a batch of resAdoptMin bytes or more (a
// catch-up's) the row keeps those bytes as they are, the slab's run of
// adopted rows accounted for in the working table's slabs like a
// transfer's (adopt); any other row is a copy.
func (s *resident) apply(next cursor, chs []transport.Change) {
	s.mu.Lock()
	defer s.mu.Unlock()
	size := 0
	for i := range chs {
		size += len(chs[i].Key) + len(chs[i].Value)
	}
	adopt := size >= resAdoptMin
	var run uintptr // start of the run the previous row was adopted into (0: none)
	for i := range chs {
		ch := &chs[i]
		del := ch.Op == transport.OpDelete
		var row resRow
		if del {
			row = ownRow(ch.Key, nil) // the delta keeps it
		} else if kv, ok := transport.RowBytes(&transport.Row{Key: ch.Key, Value: ch.Value}); ok && adopt {
			row = kvRow(kv, len(ch.Key))
			if s.w.slabs == nil {
				s.w.slabs = &slabSet{}
			}
			run = s.w.slabs.adopt(run, row)
			s.adopted++
		} else {
			row = ownRow(ch.Key, ch.Value)
		}
		var old resRow
		var had bool
		if del {
			old, had = s.w.Delete(row)
		} else {
			old, had = s.w.Set(row)
			s.bytes += rowBytes(row)
		}
		if had {
			s.bytes -= rowBytes(old)
			s.w.slabs.release(old)
		}
		if s.base != nil {
			s.delta.Set(deltaRow{row, del})
		}
		if s.next != nil {
			s.next.Set(deltaRow{row, del})
		}
		if s.mnext != nil {
			s.mnext.Set(deltaRow{row, del})
		}
	}
	s.publishLocked(next)
}

// switchTo makes rows (a full transfer's) the resident state at next: the
// hash index starts over.
func (s *resident) switchTo(next cursor, rows *resTable, n int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.w, s.bytes = rows, n
	s.base, s.delta, s.next, s.building = nil, newDeltaRows(), nil, false
	s.merging, s.mnext = false, nil
	s.gen++
	s.publishLocked(next)
}

// resTransfer builds the resident rows of a full transfer as they arrive
// and switches them in together with what the sink staged (a durable
// replica's rows file, bulkgen.go; nothing for an in-memory one); the old
// view stays readable until then.
type resTransfer struct {
	inner stagedTransfer
	s     *resident
	rows  *resTable
	bytes int64
	// adopted counts the rows kept as decoded, without a copy (tests);
	// runs are their runs in the slabs they were decoded into, released
	// the adopted rows a later row of the same key replaced.
	adopted  int
	runs     []slabRun
	released []resRow
	// finished: finish succeeded, switchIn may run.
	finished bool
}

func (s *resident) stage(inner stagedTransfer) *resTransfer {
	return &resTransfer{inner: inner, s: s, rows: newResRows()}
}

// put stages the row with the sink and, where the tree is built as the
// rows arrive, loads it. The row's bytes are the transfer's (a decoded
// frame's, which nothing else keeps): a row decoded as one allocation
// (transport.RowBytes) is kept as it is, not copied.
func (x *resTransfer) put(key, value []byte) error {
	if err := x.inner.put(key, value); err != nil {
		return err
	}
	if kv, ok := transport.RowBytes(&transport.Row{Key: key, Value: value}); ok {
		row := kvRow(kv, len(key))
		p, n := rowAddr(row), rowBytes(row)
		if i := len(x.runs) - 1; i >= 0 && x.runs[i].start+uintptr(x.runs[i].size) == p {
			x.runs[i].size += n
			x.runs[i].live += n
		} else {
			x.runs = append(x.runs, slabRun{start: p, size: n, live: n})
		}
		old, had := x.rows.Load(row)
		if had {
			x.released = append(x.released, old)
			x.bytes -= rowBytes(old)
		}
		x.bytes += n
		x.adopted++
	} else {
		x.bytes += loadRow(x.rows, key, value)
	}
	return nil
}

// setRow sets key to a copy of value in rows, or deletes it (del), and
// returns the change of the rows' key+value bytes: how a load replays
// changes over a rows file.
func setRow(rows *resTable, key, value []byte, del bool) int64 {
	if del {
		if old, had := rows.Delete(searchRow(key)); had {
			return -rowBytes(old)
		}
		return 0
	}
	row := ownRow(key, value)
	if old, had := rows.Set(row); had {
		return rowBytes(row) - rowBytes(old)
	}
	return rowBytes(row)
}

// loadRow copies the row key, value into rows and returns the change of
// the rows' key+value bytes.
func loadRow(rows *resTable, key, value []byte) int64 {
	return loadResRow(rows, ownRow(key, value))
}

// loadResRow loads row (rows' from now on) into rows and returns the
// change of the rows' key+value bytes. Rows arrive in key order: Load
// appends to the rightmost leaf (and falls back to a Set for a key out of
// order).
func loadResRow(rows *resTable, row resRow) int64 {
	old, had := rows.Load(row)
	if had {
		return rowBytes(row) - rowBytes(old)
	}
	return rowBytes(row)
}

// finish finishes the sink's copy (for a durable replica, its rows file
// made durable). It runs before switchIn, outside Replica.mu: readers keep
// the old view meanwhile and never see the new tree before it is complete.
func (x *resTransfer) finish(next cursor) (cursor, error) {
	next, err := x.inner.finish(next)
	if err != nil {
		return next, err
	}
	x.finished = true
	return next, nil
}

// switchIn switches the sink's copy first (for a durable replica, the
// commit that names the new generation), then publishes the built rows.
// Replica.mu is held, as for every switchIn.
func (x *resTransfer) switchIn(old, next cursor) error {
	if !x.finished || x.rows == nil {
		return errors.New("switch to transferred rows: not finished")
	}
	if err := x.inner.switchIn(old, next); err != nil {
		return err
	}
	if len(x.runs) > 0 {
		x.rows.slabs = newSlabSet(x.runs)
		for _, r := range x.released {
			x.rows.slabs.release(r)
		}
	}
	x.s.switchTo(next, x.rows, x.bytes)
	x.rows = nil
	return nil
}

func (x *resTransfer) abort() {
	x.inner.abort()
	x.rows = nil
}

// loadResident reads the rows of the generation cur names (a durable
// replica opening) into a fresh tree: from badger, or for a bulk
// generation from its rows file and its WAL (loadBulk). The cursor is
// read in the same transaction and must equal cur (the stream has not
// started, so nothing else writes it); a bulk generation's must lead to
// cur, the WAL's last record's (bulkSource).
func (c *Component) loadResident(base string, cur cursor) (*resTable, int64, error) {
	rows := newResRows()
	var n int64
	err := c.viewDB(func(txn *badger.Txn) error {
		stored, err := readCursor(txn, base)
		if err != nil {
			return err
		}
		if cur.Bulk {
			// The cursor is the WAL's last record; badger's, as of the
			// last switch or checkpoint, is where it starts (bulkSource
			// checks).
			n, err = c.loadBulk(txn, base, cur, rows)
			return err
		}
		if stored != cur {
			return fmt.Errorf("cursor moved while the replica was loading: %+v, loaded %+v", stored, cur)
		}
		return scanRows(txn, genPrefix(base, cur.Gen), nil, nil, nil, func(k, v []byte) (bool, error) {
			n += loadRow(rows, k, v)
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
