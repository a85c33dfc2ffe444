package replica

import (
	"os"
	"path/filepath"
	"strings"

	"github.com/dgraph-io/badger/v4/skl"
	"github.com/replmesh/replmesh/internal/diskguard"
)

// The component's badger database is sized for what it must hold (issue
// 14: a component with one small table stays small). Badger's memtable is
// the main cost: its arena is allocated whole when the memtable is made,
// counts as live Go heap (so the garbage collector lets the heap grow by
// as much again before it collects), and on disk the memtable fills with
// every write until it is flushed. Badger also bounds one transaction by
// the memtable: under 15% of it in bytes and that divided by a skiplist
// node's size in entries. So the memtable is the smallest that holds the
// largest transaction this component writes:
//
//   - an owner's commit group (commit.go): a row and a log entry per
//     change plus the touched tables' metas, bounded by MaxGroupBytes and
//     MaxGroupChanges; Validate's rule 3 × MaxGroupBytes <= 15% of the
//     memtable covers its bytes, 3 × MaxGroupChanges entries its count;
//   - a consumer's apply (apply.go): pieces of about 1 MiB ending on an
//     owner's transaction, so up to 1 MiB plus one owner Apply (1 MiB by
//     default, DefaultConfig's MaxApplyBytes), with the same margin of
//     1.5: consumerTxnBytes;
//   - in memory, a value of up to memValueThreshold (badger refuses a
//     transaction limit below its value threshold).
//
// With the defaults that is 20 MiB, but the full database's memtable is
// at least fastMemTable: bulk writes (a full transfer into a durable
// replica) flush and compact more often with a smaller one. A component
// that is not an owner instance (Config.Owner) and leaves MemTableSize to
// the component starts on a small database instead (smallDBSizing):
// badger's smallest memtable, no cache. Its resident replicas keep their
// rows in memory; in memory they write nothing to badger, on disk only
// small transactions (cursors, checkpoint and stage records, drop markers,
// the dropper's write batches, which badger splits to fit) while their
// transfers and applies go to rows files and WALs of their own (bulkgen.go,
// wal.go). It moves to the full database (Component.fullDBLocked) the
// first time it needs badger for real: Own, a DiskOnly replica, or a
// resident replica whose stored generation lives in badger (a data dir a
// DiskOnly replica left: residentNeedsFullDB), since its applies are
// badger transactions of up to consumerTxnBytes. In memory the small
// database's keys are copied into a new one; on disk the same directory is
// closed and reopened with the full sizing, under the component's database
// gate (Component.useDB). A data dir is opened small again at the next
// start (the first of those calls moves it again), unless it holds an
// owned table (holdsOwnedTables: an owner restarting on its data dir would
// Own it at once, and paid a close and a reopen of its database for that:
// some 30 ms of W3's owner restart, a third of Own), or a crash left
// memtable logs written by the full database: badger replays them into
// memtables of the size it is opened with, and panics when they do not
// fit (smallReplayFits).
const (
	// badgerBatchPercent is badger's transaction limit in percent of the
	// memtable (Options.maxBatchSize).
	badgerBatchPercent = 15
	// consumerTxnBytes is the largest apply transaction a consumer plans
	// for (see above).
	consumerTxnBytes = 3 << 20
	// fastMemTable is the smallest memtable MemTableSize 0 gives the full
	// database: a full transfer of 1M rows of 256 B into a durable replica
	// ran at about 70% of the rows/s with 20 MiB (the rules' minimum with
	// the defaults) in the same run (cmd/replbench -workloads transfer).
	fastMemTable = 32 << 20
	// minMemTable is the smallest memtable Validate accepts, and
	// maxAutoMemTable the largest MemTableSize 0 stands for (a larger
	// transaction bound needs an explicit MemTableSize).
	minMemTable     = 1 << 20
	maxAutoMemTable = 256 << 20
	// smallMemTable and smallValueThreshold size the small database of a
	// component that holds nothing but small records in badger yet (the
	// value threshold must stay under the transaction limit, 15% of 1
	// MiB; on disk it is diskguard.ValueThreshold, under it too).
	smallMemTable       = 1 << 20
	smallValueThreshold = 100 << 10
	// indexCacheSize bounds the memory of table indexes on disk (0 in
	// memory: badger keeps an in-memory table's index with the table).
	indexCacheSize = 16 << 20
	// valueLogFileSize is a value log file's size on disk. badger maps
	// the active file in memory, and every page written to it stays in
	// the process's RSS (file-backed) until the file rotates: 1 GiB by
	// default, 64 MiB here. It is also the grain of value log GC.
	valueLogFileSize = 64 << 20
	// numMemtables: the active memtable and up to two waiting for their
	// flush (only the active one exists while the writes keep up).
	numMemtables = 3
	// numCompactors is the fewest badger runs when it compacts at all.
	numCompactors = 2
)

// dbSizing is the part of badger's options that sizes its memory.
type dbSizing struct {
	MemTable       int64 // Options.MemTableSize
	ValueThreshold int64 // Options.ValueThreshold
	BlockCache     int64 // Options.BlockCacheSize
	IndexCache     int64 // Options.IndexCacheSize
	ValueLogFile   int64 // Options.ValueLogFileSize (unused in memory)
	NumMemtables   int
	NumCompactors  int
}

// memTableFor returns the smallest memtable whose transaction limit holds
// txnBytes bytes and txnEntries entries, rounded up to a whole MiB (badger
// refuses the entry that reaches its count limit, hence the one more).
func memTableFor(txnBytes, txnEntries int64) int64 {
	byBytes := ceilDiv(txnBytes*100, badgerBatchPercent)
	byEntries := ceilDiv((txnEntries+1)*int64(skl.MaxNodeSize)*100, badgerBatchPercent)
	return ceilDiv(max(byBytes, byEntries), 1<<20) << 20
}

func ceilDiv(a, b int64) int64 { return (a + b - 1) / b }

// autoMemTable is the memtable Config.MemTableSize 0 stands for: the
// smallest that holds this configuration's largest transaction (see the
// comment at the top of this file), at least fastMemTable and at most
// maxAutoMemTable (Validate then refuses the transaction bounds).
func (c *Config) autoMemTable() int64 {
	m := max(memTableFor(3*int64(c.MaxGroupBytes), 3*int64(c.MaxGroupChanges)),
		memTableFor(consumerTxnBytes, 0), fastMemTable)
	if c.DataDir == "" {
		m = max(m, memTableFor(memValueThreshold, 0))
	}
	return min(m, maxAutoMemTable)
}

// memTable is the memtable of the component's full database: MemTableSize,
// or when it is 0 autoMemTable.
func (c *Config) memTable() int64 {
	if c.MemTableSize > 0 {
		return c.MemTableSize
	}
	return c.autoMemTable()
}

// dbSizing sizes the component's full database.
func (c *Config) dbSizing() dbSizing {
	s := dbSizing{
		MemTable:      c.memTable(),
		BlockCache:    c.BlockCacheSize,
		IndexCache:    indexCacheSize,
		ValueLogFile:  valueLogFileSize,
		NumMemtables:  numMemtables,
		NumCompactors: numCompactors,
	}
	if c.DataDir == "" {
		// An in-memory table's blocks and index are memory already: a
		// cache would hold a second copy of what it decodes.
		s.ValueThreshold, s.BlockCache, s.IndexCache = memValueThreshold, 0, 0
	} else {
		s.ValueThreshold = diskguard.ValueThreshold
	}
	return s
}

// startsSmall reports whether the component opens on the small database
// (smallDBSizing): MemTableSize left to the component, and not an owner
// instance (Config.Owner opens the full database at once: its broker
// session reads and writes the owned tables).
func (c *Config) startsSmall() bool {
	return c.MemTableSize == 0 && !c.Owner
}

// smallDBSizing sizes the small database a component starts on
// (startsSmall): in memory nothing is written to it while every replica is
// resident (their rows are in memory, memStore); on disk only small
// records (see the comment at the top of this file). So it needs no more
// than badger's smallest memtable and no cache; on disk the value
// threshold and value log files are the full database's.
func (c *Config) smallDBSizing() dbSizing {
	s := dbSizing{
		MemTable:       smallMemTable,
		ValueThreshold: smallValueThreshold,
		NumMemtables:   2,
		NumCompactors:  numCompactors,
	}
	if c.DataDir != "" {
		s.ValueThreshold, s.ValueLogFile = diskguard.ValueThreshold, valueLogFileSize
	}
	return s
}

// residentNeedsFullDB reports whether a resident replica loaded at cur
// needs the full database: its live generation's rows are in badger (a
// data dir a DiskOnly replica left), so its applies are badger
// transactions of up to consumerTxnBytes, more than the small database
// takes. A bulk generation's applies go to its WAL; no generation yet
// (no log id): its first transfer makes a bulk one.
func residentNeedsFullDB(cur cursor) bool {
	return cur.LogID != "" && !cur.Bulk
}

// holdsOwnedTables reports whether the data dir holds an owned table's
// log segments (ownseg.go; a table that was owned once keeps its directory
// there), so that the component opens the full database at once. A dir
// that cannot be read holds none.
func holdsOwnedTables(dir string) bool {
	ents, err := os.ReadDir(filepath.Dir(segDir(dir, "t")))
	return err == nil && len(ents) > 0
}

// smallReplayFits reports whether the memtable logs (*.mem) in the data
// dir fit the small database's memtables when badger replays them at Open:
// badger makes each log twice its memtable's size, so a log larger than
// the small database's was written by the full one (which a crash left
// unflushed; a clean Close flushes and deletes them), and holds more than
// a small memtable's arena takes. A dir that cannot be read fits (badger's
// open reports what is wrong with it).
func smallReplayFits(dir string) bool {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return true
	}
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".mem") {
			continue
		}
		fi, err := e.Info()
		if err == nil && fi.Size() > 2*smallMemTable {
			return false
		}
	}
	return true
}
