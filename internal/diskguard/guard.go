package diskguard

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Guard refuses writes while the data dir's file system is short of space
// and preallocates badger's active memory-mapped files (see the package
// comment). A nil *Guard (an in-memory database) admits everything. Safe
// for concurrent use.
type Guard struct {
	// OnRecover runs (without the guard's lock) when writes are admitted
	// again after a refusal. Set it before the first Refresh, Admit or
	// Run.
	OnRecover func()

	dir    string
	log    *slog.Logger
	p      policy
	statfs func(dir string) (free int64, err error)
	falloc func(f *os.File, off, n int64) error

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

// New returns a guard of the database in dir, opened with memTableSize
// (badger's Options.MemTableSize, from which the reserve is derived) and
// ValueThreshold; it logs to log. It measures nothing yet: call CheckOpen
// before opening the database, Refresh once it is open, and Run.
func New(dir string, memTableSize int64, log *slog.Logger) *Guard {
	return &Guard{
		dir: dir, log: log, p: newPolicy(memTableSize),
		statfs: statfsFree, falloc: fallocate,
		recovered: make(chan struct{}),
		wal:       walState{fid: -1}, vlog: vlogState{fid: -1},
		ballastOut: true, lastRaw: math.MaxInt64,
	}
}

// CheckOpen refuses to open the database on a file system so full that
// badger could fault while opening it: it creates a memtable log and a
// value log and flushes the memtables it replays. The error is a
// *DiskFullError when space is short.
func (g *Guard) CheckOpen() error {
	dir := g.dir
	free, err := g.statfs(dir)
	for i := 0; i < 64 && errors.Is(err, os.ErrNotExist) && filepath.Dir(dir) != dir; i++ {
		dir = filepath.Dir(dir) // the data dir does not exist yet
		free, err = g.statfs(dir)
	}
	if errors.Is(err, errUnsupported) {
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

// Admit asks whether a write that adds w to the database's files may go
// ahead. It returns a *DiskFullError when not; the caller then writes
// nothing. Admit(Cost{}) asks whether anything may be written now.
func (g *Guard) Admit(w Cost) error {
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
	if recovered && g.OnRecover != nil {
		g.OnRecover()
	}
	return err
}

// vlogShortLocked reports whether a write of vlog value log bytes could
// pass the preallocated window's middle.
func (g *Guard) vlogShortLocked(vlog int64) bool {
	if vlog == 0 || g.vlog.fid < 0 {
		return false
	}
	return vlogHeaderSize+g.vlogTotal+vlog-g.vlog.base+g.p.vlogAhead/2 > g.vlog.to
}

// Refresh measures and preallocates now (Run's work; call it once the
// database is open, to preallocate the logs it just opened).
func (g *Guard) Refresh() {
	g.mu.Lock()
	recovered := g.refreshLocked(0)
	g.mu.Unlock()
	if recovered && g.OnRecover != nil {
		g.OnRecover()
	}
}

// refreshLocked preallocates badger's active files (with room for a write
// of pendingVlog value log bytes about to be admitted), measures the free
// space, trips or clears the guard, and releases or makes the ballast. It
// reports whether writes were refused before and are admitted now.
func (g *Guard) refreshLocked(pendingVlog int64) (recovered bool) {
	cause := g.preallocLocked(pendingVlog)
	free, err := g.statfs(g.dir)
	g.measured, g.since = true, 0
	switch {
	case errors.Is(err, errUnsupported):
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

func (g *Guard) tripLocked(e *DiskFullError) {
	if g.full == nil {
		g.log.Warn("data dir is short of space: refusing writes until it is freed", "err", e)
	}
	g.full = e
}

func (g *Guard) clearLocked() bool {
	if g.full == nil {
		return false
	}
	g.full = nil
	close(g.recovered)
	g.recovered = make(chan struct{})
	g.log.Info("data dir has space again: writes resume", "data_dir", g.dir, "free", fmtBytes(g.free))
	return true
}

// Closing runs once nothing writes any more, before the database is
// closed: badger's Close flushes the memtable into a table through a
// sparse memory map, so the ballast is released if the guard refuses
// writes or less than its size is free.
func (g *Guard) Closing() {
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

// Wait returns a channel closed when a refusing guard admits writes
// again; nil (never ready) when the guard admits writes now.
func (g *Guard) Wait() <-chan struct{} {
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

// Status is what the metrics report.
type Status struct {
	On      bool   // measuring (a data dir on a system with statfs)
	Free    int64  // bytes free, as last measured, minus what was admitted since
	Reserve int64  // the free space below which writes are refused
	Full    bool   // writes are refused
	Refused uint64 // writes refused so far
}

// Status returns the guard's figures; the zero Status for a nil guard.
func (g *Guard) Status() Status {
	if g == nil {
		return Status{}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return Status{
		On: !g.off && g.measured && g.statfsErr == nil, Free: g.free - g.since, Reserve: g.p.reserveFor(!g.noPrealloc),
		Full: g.full != nil, Refused: g.refused,
	}
}

// Run measures and preallocates every checkInterval until done is
// closed, or at once for good when this system has no statfs.
func (g *Guard) Run(done <-chan struct{}) {
	tk := time.NewTicker(checkInterval)
	defer tk.Stop()
	for {
		select {
		case <-done:
			return
		case <-tk.C:
			g.Refresh()
			g.mu.Lock()
			off := g.off
			g.mu.Unlock()
			if off {
				return
			}
		}
	}
}
