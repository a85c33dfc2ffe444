package diskguard

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// releaseBallastLocked deletes the ballast file, giving its room to badger.
func (g *Guard) releaseBallastLocked() {
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
func (g *Guard) makeBallastLocked() error {
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
		if errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, errUnsupported) {
			g.noPrealloc = true
		}
		return fmt.Errorf("make %s: %w", path, err)
	}
	g.ballastOut = false
	return nil
}

// preallocLocked finds badger's active memtable log and value log (the
// newest of each) and the discard stats, and allocates what badger can
// write into them. It returns the error of a preallocation that failed for
// lack of space.
func (g *Guard) preallocLocked(pendingVlog int64) error {
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
		case errors.Is(err, syscall.EOPNOTSUPP), errors.Is(err, errUnsupported):
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
func (g *Guard) allocate(name string, from, to int64) (int64, error) {
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
