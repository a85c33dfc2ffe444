package replica

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/replmesh/replmesh/transport"
)

// A full disk must be an error, not a crash. badger writes its memtable
// write-ahead logs (*.mem), its value log (*.vlog), its discard stats and
// its tables through memory maps of sparse files (ristretto's
// z.OpenMmapFile truncates a new file to its maximum size instead of
// allocating it). Touching a page the file system cannot allocate raises
// SIGBUS, which Go cannot turn into an error: the process dies. So the
// component keeps badger from ever touching an unallocated page when the
// space for it may be missing:
//
//   - The disk guard (diskGuard) measures the data dir's free space
//     (statfs) and refuses every write while it is below a reserve that
//     covers what badger may still write through its maps on its own: the
//     next memtable's log, the flush of the full one, a window of the value
//     log and metadata (diskPolicy; the ballast below adds room for a
//     flush at Close and compaction output). The owner's
//     committer asks before each group commit, a replica before each apply
//     and each chunk of a full transfer. A refused write writes nothing
//     and fails with a DiskFullError (ErrDiskFull); a replica stops
//     applying, keeps serving reads, reports the error in its Status,
//     retries with backoff and resumes from its seq once space is back.
//   - The guard preallocates (fallocate, FALLOC_FL_KEEP_SIZE) the part of
//     the active memtable log that badger can write, a window of the active
//     value log ahead of what was written, and the discard stats file, so
//     that the writes admitted while space ran out (by someone else) land
//     in allocated blocks. A preallocation that fails for lack of space
//     trips the guard too.
//   - Part of the headroom is held as a preallocated file in the data dir
//     (ballastName): free space can be taken by another process, this
//     cannot. It is the room for what badger does on its own once writes
//     stop: the flush of the memtable in Close (released there when short
//     of space), and flushes or compactions that start while the disk is
//     full (released once nothing has been free for a whole interval). It
//     is made again once there is room for it and the reserve.
//
// The measurement is cached: refreshed every diskCheckInterval and, on the
// write path, whenever more than diskPolicy.refreshBytes were admitted
// since the last one.
//
// What remains (honestly): when this component is what fills the disk,
// its writes stop at the reserve and badger's own work after that fits in
// the reserve and the ballast. When another process takes the last free
// blocks, the guard narrows the window but cannot close it: until its next
// measurement (up to diskCheckInterval, or refreshBytes of writes), badger
// faults if it (a) starts a new memtable (the new log is written before
// the guard preallocates it), (b) writes a table (a flush or compaction in
// progress: the ballast is released only once the disk has stayed full
// for an interval), or (c) writes into the value log past the
// preallocated window (one oversized batch). Later, table writes needing
// more than the ballast fault too, and a process that keeps taking space
// takes the released ballast as well. The value log window follows what
// was admitted, which is approximate across a value log rotation (writes
// in flight at the rotation are not counted). On file systems without
// fallocate (EOPNOTSUPP) nothing is preallocated and the reserve grows by
// what would have been. Builds for other systems than Linux have no statfs
// here: the guard is off there (see diskspace_other.go).

// ErrDiskFull is returned (wrapped in a DiskFullError) by a write refused
// because the file system of Config.DataDir has too little free space for
// it to be written safely. Nothing of a refused write is written. A
// replica that cannot apply for that reason reports it in Status.LastErr
// and resumes by itself once space is freed.
var ErrDiskFull = errors.New("replica: no space left on the data dir's file system")

// DiskFullError says how much space a refused write needed. It wraps
// ErrDiskFull and the cause (syscall.ENOSPC when the free space was below
// the reserve, or the error of a failed preallocation).
type DiskFullError struct {
	Dir  string // Config.DataDir
	Free int64  // bytes free, as last measured, minus what was admitted since
	Need int64  // bytes that must be free: the reserve plus this write
	Err  error  // the cause
}

func (e *DiskFullError) Error() string {
	return fmt.Sprintf("replica: no space left on the file system of %s: %s free, %s needed "+
		"(a reserve for the database's memory-mapped files plus the write); writes resume once space is freed: %v",
		e.Dir, fmtBytes(e.Free), fmtBytes(e.Need), e.Err)
}

// Unwrap returns ErrDiskFull and the cause.
func (e *DiskFullError) Unwrap() []error { return []error{ErrDiskFull, e.Err} }

func fmtBytes(n int64) string {
	if n < 0 {
		n = 0
	}
	const mib = 1 << 20
	if n < mib {
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/mib)
}

const (
	// diskCheckInterval is how often the guard measures the free space and
	// preallocates new files when no write asks sooner.
	diskCheckInterval = 50 * time.Millisecond
	// valueThreshold is badger's ValueThreshold (component.go): values of
	// at least this size go to the value log.
	valueThreshold = 1 << 10
	// vlogHeaderSize is the size of a value log file's header.
	vlogHeaderSize = 20
	// entryOverhead bounds what badger adds to a key and value in its logs
	// (header, version, checksum) and what this package adds to a key
	// (table prefixes) or a value (row and log entry encodings).
	entryOverhead = 128
)

// diskPolicy is the guard's arithmetic, derived from Config.MemTableSize
// (M below; badger's memtable log file is 2M, sparse).
type diskPolicy struct {
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
	// full (see ballastFloor and diskGuard.closing): the flush of one full
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

func newDiskPolicy(memTableSize int64) diskPolicy {
	m := memTableSize
	p := diskPolicy{walAlloc: m + m/4, refreshBytes: max(256<<10, m/16), ballast: m + 1<<20}
	p.vlogAhead = 4 * p.refreshBytes
	p.reserve = p.walAlloc + m + p.vlogAhead + 1<<20
	return p
}

// reserveFor is the reserve when nothing could be preallocated (no
// fallocate): the active files' unallocated parts and the ballast must be
// free space too.
func (p diskPolicy) reserveFor(prealloc bool) int64 {
	if prealloc {
		return p.reserve
	}
	return p.reserve + p.walAlloc + p.vlogAhead + p.ballast
}

// ballastFloor: the ballast is released when less than this is free at two
// measurements in a row (and at Close, see diskGuard.closing).
const ballastFloor = 1 << 20

// ballastName is the preallocated file in the data dir that holds the
// ballast (badger ignores files it does not know).
const ballastName = "REPLMESH_SPACE_RESERVE"

// writeCost adds up what writes add to badger's files: n in all, vlog of
// it in the value log.
type writeCost struct{ n, vlog int64 }

// add counts one key and value written copies times (an owner writes a
// row and a log entry per change, a replica a row).
func (w *writeCost) add(klen, vlen, copies int) {
	size := int64(klen + vlen + entryOverhead)
	w.n += int64(copies) * size
	if klen+vlen+entryOverhead/2 >= valueThreshold {
		w.vlog += int64(copies) * size
	}
}

func changesCost(chs []transport.Change, copies int) writeCost {
	var w writeCost
	for i := range chs {
		w.add(len(chs[i].Key), len(chs[i].Value), copies)
	}
	return w
}

func rowsCost(rows []transport.Row) writeCost {
	var w writeCost
	for i := range rows {
		w.add(len(rows[i].Key), len(rows[i].Value), 1)
	}
	return w
}

// diskGuard refuses writes while the data dir's file system is short of
// space and preallocates badger's active memory-mapped files (see the
// comment at the top of this file). A nil *diskGuard (an in-memory
// component) admits everything.
type diskGuard struct {
	dir    string
	log    *slog.Logger
	p      diskPolicy
	statfs func(dir string) (free int64, err error)
	falloc func(f *os.File, off, n int64) error
	// onRecover runs (without the lock) when writes are admitted again.
	onRecover func()

	mu          sync.Mutex
	off         bool  // no statfs on this system: admit everything
	measured    bool  // free is valid
	free        int64 // bytes free at the last measurement
	since       int64 // bytes admitted since the last measurement
	vlogTotal   int64 // value log bytes admitted since the guard started
	vlogAtScan  int64 // vlogTotal when the last scan began
	noPrealloc  bool  // the file system does not support fallocate
	ballastOut  bool  // the ballast file is not in place (released, or not made yet)
	lastRaw     int64 // free space at the last measurement, ballast not counted
	wal         walState
	vlog        vlogState
	discardSize int64
	full        *DiskFullError // non-nil while writes are refused
	recovered   chan struct{}  // closed and replaced when writes are admitted again
	refused     uint64
	statfsErr   error // the last measurement failed
}

// walState is the preallocation of the active memtable log.
type walState struct {
	fid  int
	done bool
}

// vlogState is the preallocation of the active value log: blocks up to
// to are allocated; base is vlogTotal when the file may have begun.
type vlogState struct {
	fid  int
	base int64
	to   int64
}

func newDiskGuard(dir string, memTableSize int64, log *slog.Logger) *diskGuard {
	return &diskGuard{
		dir: dir, log: log, p: newDiskPolicy(memTableSize),
		statfs: statfsFree, falloc: fallocate,
		recovered: make(chan struct{}),
		wal:       walState{fid: -1}, vlog: vlogState{fid: -1},
		ballastOut: true, lastRaw: math.MaxInt64,
	}
}

// checkOpen refuses to open the database on a file system so full that
// badger could fault while opening it: it creates a memtable log and a
// value log and flushes the memtables it replays.
func (g *diskGuard) checkOpen() error {
	dir := g.dir
	free, err := g.statfs(dir)
	for i := 0; i < 64 && errors.Is(err, os.ErrNotExist) && filepath.Dir(dir) != dir; i++ {
		dir = filepath.Dir(dir) // the data dir does not exist yet
		free, err = g.statfs(dir)
	}
	if errors.Is(err, errDiskUnsupported) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("measure free space of %s: %w", g.dir, err)
	}
	// A new memtable log and value log, and the flush of the memtables
	// replayed (at most the space their logs take).
	need := g.p.walAlloc + g.p.vlogAhead + 1<<20
	if ents, err := os.ReadDir(g.dir); err == nil {
		for _, e := range ents {
			if strings.HasSuffix(e.Name(), ".mem") {
				if fi, err := e.Info(); err == nil {
					need += allocated(fi)
				}
			}
		}
	}
	// A ballast left by an earlier run is kept if whole; it is the first
	// thing to give up when opening needs the room.
	ballast := filepath.Join(g.dir, ballastName)
	if fi, err := os.Stat(ballast); err == nil {
		if fi.Size() == g.p.ballast && allocated(fi) >= g.p.ballast && free >= need {
			g.ballastOut = false
		} else if err := os.Remove(ballast); err == nil {
			free, err = g.statfs(dir)
			if err != nil {
				return fmt.Errorf("measure free space of %s: %w", g.dir, err)
			}
		}
	}
	if free < need {
		return &DiskFullError{Dir: g.dir, Free: free, Need: need, Err: syscall.ENOSPC}
	}
	return nil
}

// admit asks whether a write that adds w to badger's files may go ahead.
// It returns a *DiskFullError when not; the caller then writes nothing.
func (g *diskGuard) admit(w writeCost) error {
	if g == nil {
		return nil
	}
	var recovered bool
	err := func() error {
		g.mu.Lock()
		defer g.mu.Unlock()
		if g.off {
			return nil
		}
		if !g.measured || g.since+w.n > g.p.refreshBytes || g.vlogShortLocked(w.vlog) {
			recovered = g.refreshLocked(w.vlog)
		}
		if g.off || g.statfsErr != nil {
			return nil // cannot measure: do not refuse on a guess
		}
		if g.full != nil {
			g.refused++
			return g.full
		}
		free, need := g.free-g.since, g.p.reserveFor(!g.noPrealloc)+w.n
		if free < need {
			g.refused++
			g.tripLocked(&DiskFullError{Dir: g.dir, Free: free, Need: need, Err: syscall.ENOSPC})
			return g.full
		}
		g.since += w.n
		g.vlogTotal += w.vlog
		return nil
	}()
	if recovered && g.onRecover != nil {
		g.onRecover()
	}
	return err
}

// vlogShortLocked reports whether a write of vlog value log bytes could
// pass the preallocated window's middle.
func (g *diskGuard) vlogShortLocked(vlog int64) bool {
	if vlog == 0 || g.vlog.fid < 0 {
		return false
	}
	return vlogHeaderSize+g.vlogTotal+vlog-g.vlog.base+g.p.vlogAhead/2 > g.vlog.to
}

// refresh measures and preallocates now (the ticker's work).
func (g *diskGuard) refresh() {
	g.mu.Lock()
	recovered := g.refreshLocked(0)
	g.mu.Unlock()
	if recovered && g.onRecover != nil {
		g.onRecover()
	}
}

// refreshLocked preallocates badger's active files (with room for a write
// of pendingVlog value log bytes about to be admitted), measures the free
// space, trips or clears the guard, and releases or makes the ballast. It
// reports whether writes were refused before and are admitted now.
func (g *diskGuard) refreshLocked(pendingVlog int64) (recovered bool) {
	cause := g.preallocLocked(pendingVlog)
	free, err := g.statfs(g.dir)
	g.measured, g.since = true, 0
	switch {
	case errors.Is(err, errDiskUnsupported):
		g.off = true
		g.log.Info("free space guard off: no statfs on this system", "data_dir", g.dir)
		return g.clearLocked()
	case err != nil:
		if g.statfsErr == nil {
			g.log.Warn("cannot measure free space; writes go on unguarded", "data_dir", g.dir, "err", err)
		}
		g.statfsErr = err
		return g.clearLocked()
	}
	g.statfsErr = nil
	raw := free
	defer func() { g.lastRaw = raw }()
	if g.ballastOut && !g.noPrealloc {
		free -= g.p.ballast // released (it is badger's room now) or still to be made
	}
	g.free = free
	need := g.p.reserveFor(!g.noPrealloc)
	if g.full != nil {
		need += g.p.vlogAhead // resume with room for some writes, not at the edge
	}
	if cause == nil && free < need {
		cause = syscall.ENOSPC
	}
	if cause != nil {
		g.tripLocked(&DiskFullError{Dir: g.dir, Free: free, Need: need, Err: cause})
		if raw < ballastFloor && g.lastRaw < ballastFloor {
			// The disk has stayed full for a whole interval (whoever
			// filled it has stopped, or is blocked): give badger's
			// background work the room. Released at once, it would go
			// to a writer still filling the disk.
			g.releaseBallastLocked()
		}
		return false
	}
	if g.ballastOut && !g.noPrealloc {
		if err := g.makeBallastLocked(); err != nil {
			g.log.Warn("cannot make the space reserve file", "err", err)
			if errors.Is(err, syscall.ENOSPC) {
				g.tripLocked(&DiskFullError{Dir: g.dir, Free: free, Need: need, Err: err})
				return false
			}
		}
	}
	return g.clearLocked()
}

// releaseBallastLocked deletes the ballast file, giving its room to badger.
func (g *diskGuard) releaseBallastLocked() {
	if g.ballastOut {
		return
	}
	if err := os.Remove(filepath.Join(g.dir, ballastName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		g.log.Warn("cannot release the space reserve file", "err", err)
		return
	}
	g.ballastOut = true
	g.log.Warn("released the space reserve file for the database's background work", "data_dir", g.dir, "bytes", g.p.ballast)
}

// makeBallastLocked preallocates the ballast file.
func (g *diskGuard) makeBallastLocked() error {
	path := filepath.Join(g.dir, ballastName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	err = g.falloc(f, 0, g.p.ballast)
	if err == nil {
		err = f.Truncate(g.p.ballast) // allocated with KEEP_SIZE: give it its size
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(path)
		if errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, errDiskUnsupported) {
			g.noPrealloc = true
		}
		return fmt.Errorf("make %s: %w", path, err)
	}
	g.ballastOut = false
	return nil
}

func (g *diskGuard) tripLocked(e *DiskFullError) {
	if g.full == nil {
		g.log.Warn("data dir is short of space: refusing writes until it is freed", "err", e)
	}
	g.full = e
}

func (g *diskGuard) clearLocked() bool {
	if g.full == nil {
		return false
	}
	g.full = nil
	close(g.recovered)
	g.recovered = make(chan struct{})
	g.log.Info("data dir has space again: writes resume", "data_dir", g.dir, "free", fmtBytes(g.free))
	return true
}

// preallocLocked finds badger's active memtable log and value log (the
// newest of each) and the discard stats, and allocates what badger can
// write into them. It returns the error of a preallocation that failed for
// lack of space.
func (g *diskGuard) preallocLocked(pendingVlog int64) error {
	ents, err := os.ReadDir(g.dir)
	if err != nil {
		return nil // not there yet, or unreadable: statfs decides
	}
	scanVlog := g.vlogTotal
	walFid, vlogFid, discard := -1, -1, false
	var walName, vlogName string
	for _, e := range ents {
		name := e.Name()
		if name == "DISCARD" {
			discard = true
		}
		if fid, ok := fileID(name, ".mem"); ok && fid > walFid {
			walFid, walName = fid, name
		}
		if fid, ok := fileID(name, ".vlog"); ok && fid > vlogFid {
			vlogFid, vlogName = fid, name
		}
	}
	var noSpace error
	note := func(err error) {
		switch {
		case err == nil:
		case errors.Is(err, syscall.ENOSPC):
			noSpace = err
		case errors.Is(err, syscall.EOPNOTSUPP), errors.Is(err, errDiskUnsupported):
			if !g.noPrealloc {
				g.log.Info("file system cannot preallocate (fallocate); reserving more free space instead", "data_dir", g.dir, "err", err)
			}
			g.noPrealloc = true
		case errors.Is(err, os.ErrNotExist): // badger deleted it meanwhile
		default:
			g.log.Warn("preallocate database file", "err", err)
		}
	}
	if walFid != g.wal.fid {
		g.wal = walState{fid: walFid}
	}
	if walFid >= 0 && !g.wal.done && !g.noPrealloc {
		_, err := g.allocate(walName, 0, g.p.walAlloc)
		note(err)
		g.wal.done = err == nil
	}
	if vlogFid != g.vlog.fid {
		// A value log that appeared since the last scan holds at most
		// what was admitted since that scan began.
		g.vlog = vlogState{fid: vlogFid, base: g.vlogAtScan}
	}
	if vlogFid >= 0 && !g.noPrealloc {
		want := vlogHeaderSize + g.vlogTotal + pendingVlog - g.vlog.base + g.p.vlogAhead
		if want > g.vlog.to {
			to, err := g.allocate(vlogName, g.vlog.to, want)
			note(err)
			if err == nil {
				g.vlog.to = to
			}
		}
	}
	if discard && !g.noPrealloc {
		if fi, err := os.Stat(filepath.Join(g.dir, "DISCARD")); err == nil && fi.Size() != g.discardSize {
			_, err := g.allocate("DISCARD", 0, fi.Size())
			note(err)
			if err == nil {
				g.discardSize = fi.Size()
			}
		}
	}
	g.vlogAtScan = scanVlog
	return noSpace
}

// allocate preallocates [from, to) of a file in the data dir, within its
// size; it returns how far the file is allocated then.
func (g *diskGuard) allocate(name string, from, to int64) (int64, error) {
	f, err := os.OpenFile(filepath.Join(g.dir, name), os.O_RDWR, 0)
	if err != nil {
		return from, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return from, err
	}
	to = min(to, fi.Size())
	if to <= from {
		return to, nil
	}
	if err := g.falloc(f, from, to-from); err != nil {
		return from, fmt.Errorf("preallocate %s [%d, %d): %w", name, from, to, err)
	}
	return to, nil
}

// fileID parses badger's numbered file names ("00012.mem").
func fileID(name, ext string) (int, bool) {
	s, ok := strings.CutSuffix(name, ext)
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	return n, err == nil && n >= 0
}

// closing runs once nothing writes any more, before the database is
// closed: badger's Close flushes the memtable into a table through a
// sparse memory map, so the ballast is released if the guard refuses
// writes or less than its size is free.
func (g *diskGuard) closing() {
	if g == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.off {
		return
	}
	free, err := g.statfs(g.dir)
	if g.full != nil || err == nil && free < g.p.ballast {
		g.releaseBallastLocked()
	}
}

// waitCh is closed when a refusing guard admits writes again.
func (g *diskGuard) waitCh() <-chan struct{} {
	if g == nil {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.full == nil {
		return nil
	}
	return g.recovered
}

// diskStatus is what the metrics report.
type diskStatus struct {
	on            bool // measuring (a data dir on a system with statfs)
	free, reserve int64
	full          bool
	refused       uint64
}

func (g *diskGuard) status() diskStatus {
	if g == nil {
		return diskStatus{}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return diskStatus{
		on: !g.off && g.measured && g.statfsErr == nil, free: g.free - g.since, reserve: g.p.reserveFor(!g.noPrealloc),
		full: g.full != nil, refused: g.refused,
	}
}

// run measures and preallocates every diskCheckInterval until done.
func (g *diskGuard) run(done <-chan struct{}) {
	tk := time.NewTicker(diskCheckInterval)
	defer tk.Stop()
	for {
		select {
		case <-done:
			return
		case <-tk.C:
			g.refresh()
			g.mu.Lock()
			off := g.off
			g.mu.Unlock()
			if off {
				return
			}
		}
	}
}
