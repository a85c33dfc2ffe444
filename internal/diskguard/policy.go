package diskguard

import "time"

const (
	// checkInterval is how often the guard measures the free space and
	// preallocates new files when no write asks sooner.
	checkInterval = 50 * time.Millisecond
	// vlogHeaderSize is the size of a value log file's header.
	vlogHeaderSize = 20
	// entryOverhead bounds what badger adds to a key and value in its logs
	// (header, version, checksum) and what the caller adds to a key (table
	// prefixes) or a value (row and log entry encodings).
	entryOverhead = 128
)

// ValueThreshold is the ValueThreshold the guarded database must be opened
// with (badger's Options.ValueThreshold): values of at least this size go
// to the value log, and Cost counts them there. 4 KiB keeps an owner's log
// groups of small changes in the LSM tree with about fourteen 256-byte
// entries each (docs/design.md, "Log groups", has the measurements).
const ValueThreshold = 4 << 10

// policy is the guard's arithmetic, derived from the database's memtable
// size (M below; badger's memtable log file is 2M, sparse).
type policy struct {
	// walAlloc is what badger can write into one memtable's log: it starts
	// a new memtable once M bytes are written, and the batch that crosses M
	// is at most 15% of M plus entry headers. The guard preallocates this
	// much of the active log.
	walAlloc int64
	// vlogAhead is the preallocated window of the active value log beyond
	// what the admitted writes can have written.
	vlogAhead int64
	// refreshBytes: the write path measures again once this much was
	// admitted since the last measurement.
	refreshBytes int64
	// ballast is the preallocated room given to badger when the disk is
	// full (see ballastFloor and Guard.Closing): the flush of one full
	// memtable into a table (M; Close flushes) plus 1 MiB for compaction
	// output, the manifest and the discard stats.
	ballast int64
	// reserve is the free space (beside the ballast) below which writes are
	// refused, with every preallocation in place: the next memtable's log
	// (walAlloc; written before the guard can preallocate it), the flush of
	// the full one (M), one advance of the value log window (vlogAhead),
	// and 1 MiB of metadata.
	reserve int64
}

func newPolicy(memTableSize int64) policy {
	m := memTableSize
	p := policy{walAlloc: m + m/4, refreshBytes: max(256<<10, m/16), ballast: m + 1<<20}
	p.vlogAhead = 4 * p.refreshBytes
	p.reserve = p.walAlloc + m + p.vlogAhead + 1<<20
	return p
}

// reserveFor is the reserve when nothing could be preallocated (no
// fallocate): the active files' unallocated parts and the ballast must be
// free space too.
func (p policy) reserveFor(prealloc bool) int64 {
	if prealloc {
		return p.reserve
	}
	return p.reserve + p.walAlloc + p.vlogAhead + p.ballast
}

// ballastFloor: the ballast is released when less than this is free at two
// measurements in a row (and at Close, see Guard.Closing).
const ballastFloor = 1 << 20

// ballastName is the preallocated file in the data dir that holds the
// ballast (badger ignores files it does not know).
const ballastName = "REPLMESH_SPACE_RESERVE"

// Cost is what a write adds to the database's files: n bytes in all, vlog
// of them in the value log. The zero Cost is a write of nothing; build one
// with Add.
type Cost struct{ n, vlog int64 }

// Add counts one key and value written copies times (an owner writes a
// row and a log entry per change, a replica a row). A small entry of the
// caller's own (a cursor, a table's meta) is Add(0, 0, 1): the overhead
// bound covers it.
func (w *Cost) Add(klen, vlen, copies int) {
	size := int64(klen + vlen + entryOverhead)
	w.n += int64(copies) * size
	if klen+vlen+entryOverhead/2 >= ValueThreshold {
		w.vlog += int64(copies) * size
	}
}
