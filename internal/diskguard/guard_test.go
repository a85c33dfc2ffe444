package diskguard

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/replmesh/replmesh/internal/testutil"
)

// fakeDisk stands in for statfs and fallocate: free is what statfs says,
// fallocErr what every preallocation returns, allocs records them.
type fakeDisk struct {
	free      int64
	statErr   error
	fallocErr error
	statfs    int // statfs calls
	allocs    []string
}

func (d *fakeDisk) allocated(name string) []string {
	var out []string
	for _, a := range d.allocs {
		if strings.HasPrefix(a, name+" ") {
			out = append(out, a)
		}
	}
	return out
}

const testMemTable = 4 << 20

// newTestGuard returns a guard on a temporary data dir holding badger-like
// files (an active memtable log, a value log, the discard stats), with
// statfs and fallocate faked by d.
func newTestGuard(t *testing.T, d *fakeDisk) *Guard {
	t.Helper()
	dir := t.TempDir()
	for name, size := range map[string]int64{"00001.mem": 2 * testMemTable, "000001.vlog": 1 << 30, "DISCARD": 1 << 20} {
		mustSparseFile(t, filepath.Join(dir, name), size)
	}
	g := New(dir, testMemTable, testutil.Logger(t))
	g.statfs = func(string) (int64, error) { d.statfs++; return d.free, d.statErr }
	g.falloc = func(f *os.File, off, n int64) error {
		d.allocs = append(d.allocs, fmt.Sprintf("%s %d+%d", filepath.Base(f.Name()), off, n))
		return d.fallocErr
	}
	return g
}

func mustSparseFile(t *testing.T, path string, size int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestGuard_Admit(t *testing.T) {
	p := newPolicy(testMemTable)
	full := p.reserve + p.ballast // free space that makes the ballast and keeps the reserve
	small := Cost{n: 4 << 10}
	tests := []struct {
		name      string
		free      int64
		statErr   error
		fallocErr error
		w         Cost
		wantErr   error  // nil: admitted
		wantCause error  // the DiskFullError's cause
		wantMsg   string // in the error's text
	}{
		{name: "plenty of space", free: full + 100<<20, w: small},
		{name: "exactly the reserve and the ballast", free: full + small.n, w: small},
		{name: "below the reserve", free: full - 1, w: small, wantErr: ErrDiskFull, wantCause: syscall.ENOSPC, wantMsg: "no space left"},
		{name: "nothing free", free: 0, w: Cost{}, wantErr: ErrDiskFull, wantCause: syscall.ENOSPC, wantMsg: "0 KiB free"},
		{name: "the write would cross the reserve", free: full + 100, w: Cost{n: 1000}, wantErr: ErrDiskFull, wantMsg: "needed"},
		{name: "preallocation finds no space", free: full + 100<<20, fallocErr: syscall.ENOSPC, w: small, wantErr: ErrDiskFull, wantCause: syscall.ENOSPC, wantMsg: "preallocate"},
		{name: "no fallocate: the reserve takes the unallocated parts", free: full + 1<<20, fallocErr: syscall.EOPNOTSUPP, w: small, wantErr: ErrDiskFull},
		{name: "no fallocate, room for all of it", free: p.reserveFor(false) + 1<<20, fallocErr: syscall.EOPNOTSUPP, w: small},
		{name: "statfs fails: unguarded, not refused", free: 0, statErr: syscall.EIO, w: small},
		{name: "no statfs on this system", free: 0, statErr: errUnsupported, w: small},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := &fakeDisk{free: tc.free, statErr: tc.statErr, fallocErr: tc.fallocErr}
			g := newTestGuard(t, d)
			err := g.Admit(tc.w)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("admit: %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("admit: %v, want %v", err, tc.wantErr)
			}
			var de *DiskFullError
			if !errors.As(err, &de) {
				t.Fatalf("admit: %T, want a *DiskFullError", err)
			}
			if de.Dir != g.dir || tc.fallocErr == nil && de.Need <= de.Free {
				t.Errorf("error says %d free, %d needed, dir %q", de.Free, de.Need, de.Dir)
			}
			if tc.wantCause != nil && !errors.Is(err, tc.wantCause) {
				t.Errorf("admit: %v, want cause %v", err, tc.wantCause)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) || !strings.Contains(err.Error(), "space") {
				t.Errorf("error %q does not say %q and space", err, tc.wantMsg)
			}
			if st := g.Status(); !st.Full || st.Refused != 1 {
				t.Errorf("status %+v, want full with 1 refusal", st)
			}
		})
	}
}

func TestGuard_MeasuresEveryRefreshBytes(t *testing.T) {
	p := newPolicy(testMemTable)
	d := &fakeDisk{free: p.reserve + p.ballast + 10*p.refreshBytes}
	g := newTestGuard(t, d)
	w := Cost{n: p.refreshBytes / 4}
	for i := range 12 {
		if err := g.Admit(w); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	// The first write measures; after that one measurement per
	// refreshBytes admitted: 12 quarter-writes are 3 more.
	if d.statfs < 3 || d.statfs > 4 {
		t.Errorf("%d measurements for 12 writes of refreshBytes/4, want 3 or 4", d.statfs)
	}
	// Between measurements the admitted bytes count as used: with the
	// cached figure a little above the reserve, a second write is refused
	// before anything is measured again.
	d2 := &fakeDisk{free: p.reserve + p.ballast + 3*p.refreshBytes/8}
	g2 := newTestGuard(t, d2)
	if err := g2.Admit(w); err != nil {
		t.Fatal(err)
	}
	if err := g2.Admit(w); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("second write: %v, want ErrDiskFull (the first used the room)", err)
	}
}

func TestGuard_RecoversWhenFreed(t *testing.T) {
	p := newPolicy(testMemTable)
	d := &fakeDisk{free: p.reserve + p.ballast + 100<<20}
	g := newTestGuard(t, d)
	recovered := 0
	g.OnRecover = func() { recovered++ }
	g.Refresh()
	if _, err := os.Stat(filepath.Join(g.dir, ballastName)); err != nil {
		t.Fatalf("no ballast file with room for it: %v", err)
	}
	if g.Wait() != nil {
		t.Fatal("waitCh of an admitting guard is not nil")
	}

	d.free = p.reserve - 1 // short of the reserve, but more than the ballast is free
	g.Refresh()
	if err := g.Admit(Cost{n: 1}); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("admit below the reserve: %v", err)
	}
	if _, err := os.Stat(filepath.Join(g.dir, ballastName)); err != nil {
		t.Fatalf("ballast released while more than it is free: %v", err)
	}

	d.free = 0 // someone filled the disk
	g.Refresh()
	if err := g.Admit(Cost{n: 1}); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("admit on a full disk: %v", err)
	}
	// Whoever fills the disk may still be writing: the ballast goes only
	// once the disk has stayed full for an interval.
	if _, err := os.Stat(filepath.Join(g.dir, ballastName)); err != nil {
		t.Fatalf("ballast released at the first sight of a full disk: %v", err)
	}
	g.Refresh()
	if _, err := os.Stat(filepath.Join(g.dir, ballastName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("ballast not released on a disk that stayed full: %v", err)
	}
	ch := g.Wait()
	if ch == nil {
		t.Fatal("waitCh of a refusing guard is nil")
	}
	// The released ballast is badger's room, not free space for writes.
	d.free = p.ballast + p.reserve - 1
	g.Refresh()
	if err := g.Admit(Cost{n: 1}); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("admit with only the released ballast free: %v", err)
	}

	// Just above the reserve is not enough to resume: that would flap.
	d.free = p.ballast + p.reserve + 1
	g.Refresh()
	if err := g.Admit(Cost{}); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("admit just above the reserve after a refusal: %v", err)
	}

	d.free = p.reserve + p.ballast + 100<<20 // freed
	g.Refresh()
	select {
	case <-ch:
	default:
		t.Fatal("waitCh not closed once space is back")
	}
	if recovered != 1 {
		t.Errorf("onRecover called %d times, want 1", recovered)
	}
	if err := g.Admit(Cost{n: 1}); err != nil {
		t.Fatalf("admit once freed: %v", err)
	}
	if _, err := os.Stat(filepath.Join(g.dir, ballastName)); err != nil {
		t.Fatalf("ballast not made again once freed: %v", err)
	}

	// Close keeps the ballast while there is room, and releases it for
	// badger's flush when a write was just refused, measured or not.
	g.Closing()
	if _, err := os.Stat(filepath.Join(g.dir, ballastName)); err != nil {
		t.Fatalf("ballast released at close with room to spare: %v", err)
	}
	if err := g.Admit(Cost{n: d.free}); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("admit of more than is free: %v", err)
	}
	g.Closing()
	if _, err := os.Stat(filepath.Join(g.dir, ballastName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("ballast kept at close after a refusal: %v", err)
	}
}

func TestGuard_Preallocates(t *testing.T) {
	p := newPolicy(testMemTable)
	d := &fakeDisk{free: 1 << 40}
	g := newTestGuard(t, d)
	g.Refresh()
	want := func(name string, allocs ...string) {
		t.Helper()
		if got := d.allocated(name); fmt.Sprint(got) != fmt.Sprint(allocs) {
			t.Errorf("%s preallocated %v, want %v", name, got, allocs)
		}
	}
	want("00001.mem", fmt.Sprintf("00001.mem 0+%d", p.walAlloc))
	want("000001.vlog", fmt.Sprintf("000001.vlog 0+%d", vlogHeaderSize+p.vlogAhead))
	want("DISCARD", fmt.Sprintf("DISCARD 0+%d", 1<<20))
	want(ballastName, fmt.Sprintf("%s 0+%d", ballastName, p.ballast))

	// Measuring again preallocates nothing new.
	d.allocs = nil
	g.Refresh()
	if len(d.allocs) != 0 {
		t.Errorf("second refresh preallocated %v", d.allocs)
	}

	// Value log writes move its window; a write that could pass the
	// window's middle moves it before it is admitted.
	big := Cost{n: p.vlogAhead, vlog: p.vlogAhead}
	if err := g.Admit(big); err != nil {
		t.Fatal(err)
	}
	want("000001.vlog", fmt.Sprintf("000001.vlog %d+%d", vlogHeaderSize+p.vlogAhead, p.vlogAhead))

	// A new memtable log (rotation) and a new value log are found; the
	// value log's window starts from what was admitted since the scan
	// before the one that found it.
	d.allocs = nil
	mustSparseFile(t, filepath.Join(g.dir, "00002.mem"), 2*testMemTable)
	mustSparseFile(t, filepath.Join(g.dir, "000002.vlog"), 1<<30)
	g.Refresh()
	want("00001.mem")
	want("00002.mem", fmt.Sprintf("00002.mem 0+%d", p.walAlloc))
	want("000002.vlog", fmt.Sprintf("000002.vlog 0+%d", vlogHeaderSize+p.vlogAhead+p.vlogAhead))

	// A file smaller than the window is allocated up to its size.
	d.allocs = nil
	mustSparseFile(t, filepath.Join(g.dir, "000003.vlog"), 4096)
	g.Refresh()
	want("000003.vlog", "000003.vlog 0+4096")
}

func TestGuard_Nil(t *testing.T) {
	var g *Guard // an in-memory database
	if err := g.Admit(Cost{n: 1 << 30}); err != nil {
		t.Fatal(err)
	}
	if g.Wait() != nil || g.Status().On {
		t.Fatal("a nil guard guards")
	}
}
