package replica

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
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
func newTestGuard(t *testing.T, d *fakeDisk) *diskGuard {
	t.Helper()
	dir := t.TempDir()
	for name, size := range map[string]int64{"00001.mem": 2 * testMemTable, "000001.vlog": 1 << 30, "DISCARD": 1 << 20} {
		mustSparseFile(t, filepath.Join(dir, name), size)
	}
	g := newDiskGuard(dir, testMemTable, testLogger(t))
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

func TestDiskPolicy(t *testing.T) {
	for _, m := range []int64{1 << 20, 8 << 20, 32 << 20, 256 << 20} {
		p := newDiskPolicy(m)
		// The reserve and the ballast together cover a new memtable log
		// and the flush of a full memtable twice over (one at the
		// rotation, one by Close or a flush in progress).
		if got, want := p.reserve+p.ballast, p.walAlloc+2*m; got < want {
			t.Errorf("M=%d: reserve+ballast %d < %d", m, got, want)
		}
		// badger writes at most M plus one batch (15%% of M, plus entry
		// headers) into a memtable log of 2M.
		if p.walAlloc < m+m*15/100+m/20 || p.walAlloc > 2*m {
			t.Errorf("M=%d: walAlloc %d", m, p.walAlloc)
		}
		if p.vlogAhead < 2*p.refreshBytes {
			t.Errorf("M=%d: value log window %d smaller than two measurements apart (%d)", m, p.vlogAhead, 2*p.refreshBytes)
		}
		if got, want := p.reserveFor(false), p.reserve+p.walAlloc+p.vlogAhead+p.ballast; got != want {
			t.Errorf("M=%d: reserve without fallocate %d, want %d", m, got, want)
		}
	}
}

func TestDiskGuard_Admit(t *testing.T) {
	p := newDiskPolicy(testMemTable)
	full := p.reserve + p.ballast // free space that makes the ballast and keeps the reserve
	small := writeCost{n: 4 << 10}
	tests := []struct {
		name      string
		free      int64
		statErr   error
		fallocErr error
		w         writeCost
		wantErr   error  // nil: admitted
		wantCause error  // the DiskFullError's cause
		wantMsg   string // in the error's text
	}{
		{name: "plenty of space", free: full + 100<<20, w: small},
		{name: "exactly the reserve and the ballast", free: full + small.n, w: small},
		{name: "below the reserve", free: full - 1, w: small, wantErr: ErrDiskFull, wantCause: syscall.ENOSPC, wantMsg: "no space left"},
		{name: "nothing free", free: 0, w: writeCost{}, wantErr: ErrDiskFull, wantCause: syscall.ENOSPC, wantMsg: "0 KiB free"},
		{name: "the write would cross the reserve", free: full + 100, w: writeCost{n: 1000}, wantErr: ErrDiskFull, wantMsg: "needed"},
		{name: "preallocation finds no space", free: full + 100<<20, fallocErr: syscall.ENOSPC, w: small, wantErr: ErrDiskFull, wantCause: syscall.ENOSPC, wantMsg: "preallocate"},
		{name: "no fallocate: the reserve takes the unallocated parts", free: full + 1<<20, fallocErr: syscall.EOPNOTSUPP, w: small, wantErr: ErrDiskFull},
		{name: "no fallocate, room for all of it", free: p.reserveFor(false) + 1<<20, fallocErr: syscall.EOPNOTSUPP, w: small},
		{name: "statfs fails: unguarded, not refused", free: 0, statErr: syscall.EIO, w: small},
		{name: "no statfs on this system", free: 0, statErr: errDiskUnsupported, w: small},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := &fakeDisk{free: tc.free, statErr: tc.statErr, fallocErr: tc.fallocErr}
			g := newTestGuard(t, d)
			err := g.admit(tc.w)
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
			if st := g.status(); !st.full || st.refused != 1 {
				t.Errorf("status %+v, want full with 1 refusal", st)
			}
		})
	}
}

func TestDiskGuard_MeasuresEveryRefreshBytes(t *testing.T) {
	p := newDiskPolicy(testMemTable)
	d := &fakeDisk{free: p.reserve + p.ballast + 10*p.refreshBytes}
	g := newTestGuard(t, d)
	w := writeCost{n: p.refreshBytes / 4}
	for i := range 12 {
		if err := g.admit(w); err != nil {
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
	if err := g2.admit(w); err != nil {
		t.Fatal(err)
	}
	if err := g2.admit(w); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("second write: %v, want ErrDiskFull (the first used the room)", err)
	}
}

func TestDiskGuard_RecoversWhenFreed(t *testing.T) {
	p := newDiskPolicy(testMemTable)
	d := &fakeDisk{free: p.reserve + p.ballast + 100<<20}
	g := newTestGuard(t, d)
	recovered := 0
	g.onRecover = func() { recovered++ }
	g.refresh()
	if _, err := os.Stat(filepath.Join(g.dir, ballastName)); err != nil {
		t.Fatalf("no ballast file with room for it: %v", err)
	}
	if g.waitCh() != nil {
		t.Fatal("waitCh of an admitting guard is not nil")
	}

	d.free = p.reserve - 1 // short of the reserve, but more than the ballast is free
	g.refresh()
	if err := g.admit(writeCost{n: 1}); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("admit below the reserve: %v", err)
	}
	if _, err := os.Stat(filepath.Join(g.dir, ballastName)); err != nil {
		t.Fatalf("ballast released while more than it is free: %v", err)
	}

	d.free = 0 // someone filled the disk
	g.refresh()
	if err := g.admit(writeCost{n: 1}); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("admit on a full disk: %v", err)
	}
	// Whoever fills the disk may still be writing: the ballast goes only
	// once the disk has stayed full for an interval.
	if _, err := os.Stat(filepath.Join(g.dir, ballastName)); err != nil {
		t.Fatalf("ballast released at the first sight of a full disk: %v", err)
	}
	g.refresh()
	if _, err := os.Stat(filepath.Join(g.dir, ballastName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("ballast not released on a disk that stayed full: %v", err)
	}
	ch := g.waitCh()
	if ch == nil {
		t.Fatal("waitCh of a refusing guard is nil")
	}
	// The released ballast is badger's room, not free space for writes.
	d.free = p.ballast + p.reserve - 1
	g.refresh()
	if err := g.admit(writeCost{n: 1}); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("admit with only the released ballast free: %v", err)
	}

	// Just above the reserve is not enough to resume: that would flap.
	d.free = p.ballast + p.reserve + 1
	g.refresh()
	if err := g.admit(writeCost{}); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("admit just above the reserve after a refusal: %v", err)
	}

	d.free = p.reserve + p.ballast + 100<<20 // freed
	g.refresh()
	select {
	case <-ch:
	default:
		t.Fatal("waitCh not closed once space is back")
	}
	if recovered != 1 {
		t.Errorf("onRecover called %d times, want 1", recovered)
	}
	if err := g.admit(writeCost{n: 1}); err != nil {
		t.Fatalf("admit once freed: %v", err)
	}
	if _, err := os.Stat(filepath.Join(g.dir, ballastName)); err != nil {
		t.Fatalf("ballast not made again once freed: %v", err)
	}

	// Close keeps the ballast while there is room, and releases it for
	// badger's flush when a write was just refused, measured or not.
	g.closing()
	if _, err := os.Stat(filepath.Join(g.dir, ballastName)); err != nil {
		t.Fatalf("ballast released at close with room to spare: %v", err)
	}
	if err := g.admit(writeCost{n: d.free}); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("admit of more than is free: %v", err)
	}
	g.closing()
	if _, err := os.Stat(filepath.Join(g.dir, ballastName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("ballast kept at close after a refusal: %v", err)
	}
}

func TestDiskGuard_Preallocates(t *testing.T) {
	p := newDiskPolicy(testMemTable)
	d := &fakeDisk{free: 1 << 40}
	g := newTestGuard(t, d)
	g.refresh()
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
	g.refresh()
	if len(d.allocs) != 0 {
		t.Errorf("second refresh preallocated %v", d.allocs)
	}

	// Value log writes move its window; a write that could pass the
	// window's middle moves it before it is admitted.
	big := writeCost{n: p.vlogAhead, vlog: p.vlogAhead}
	if err := g.admit(big); err != nil {
		t.Fatal(err)
	}
	want("000001.vlog", fmt.Sprintf("000001.vlog %d+%d", vlogHeaderSize+p.vlogAhead, p.vlogAhead))

	// A new memtable log (rotation) and a new value log are found; the
	// value log's window starts from what was admitted since the scan
	// before the one that found it.
	d.allocs = nil
	mustSparseFile(t, filepath.Join(g.dir, "00002.mem"), 2*testMemTable)
	mustSparseFile(t, filepath.Join(g.dir, "000002.vlog"), 1<<30)
	g.refresh()
	want("00001.mem")
	want("00002.mem", fmt.Sprintf("00002.mem 0+%d", p.walAlloc))
	want("000002.vlog", fmt.Sprintf("000002.vlog 0+%d", vlogHeaderSize+p.vlogAhead+p.vlogAhead))

	// A file smaller than the window is allocated up to its size.
	d.allocs = nil
	mustSparseFile(t, filepath.Join(g.dir, "000003.vlog"), 4096)
	g.refresh()
	want("000003.vlog", "000003.vlog 0+4096")
}

func TestDiskGuard_Nil(t *testing.T) {
	var g *diskGuard // an in-memory component
	if err := g.admit(writeCost{n: 1 << 30}); err != nil {
		t.Fatal(err)
	}
	if g.waitCh() != nil || g.status().on {
		t.Fatal("a nil guard guards")
	}
}

func TestWriteCost(t *testing.T) {
	small := make([]byte, 100)
	large := make([]byte, valueThreshold)
	tests := []struct {
		name     string
		klen     int
		value    []byte
		copies   int
		wantVlog bool
	}{
		{"small value stays in the LSM", 10, small, 1, false},
		{"value at the threshold goes to the value log", 10, large, 1, true},
		{"an owner writes twice", 10, large, 2, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var w writeCost
			w.add(tc.klen, len(tc.value), tc.copies)
			if min := int64(tc.copies * (tc.klen + len(tc.value))); w.n < min {
				t.Errorf("n %d < %d", w.n, min)
			}
			if got := w.vlog > 0; got != tc.wantVlog {
				t.Errorf("vlog %d, want value log %v", w.vlog, tc.wantVlog)
			}
			if tc.wantVlog && w.vlog != w.n {
				t.Errorf("vlog %d != n %d for a value log write", w.vlog, w.n)
			}
		})
	}
}

// mountTmpfs mounts a tmpfs of size bytes on a temporary directory for the
// test (unmounted in its cleanup, after the components registered later
// are closed). It skips the test unless running as root on Linux.
func mountTmpfs(t *testing.T, size int64) string {
	t.Helper()
	if runtime.GOOS != "linux" || os.Geteuid() != 0 {
		t.Skip("needs root on Linux to mount a tmpfs")
	}
	dir := t.TempDir()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d", size), "rmtest-diskfull", dir).CombinedOutput()
	if err != nil {
		t.Skipf("mount -t tmpfs: %v: %s", err, bytes.TrimSpace(out))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, bytes.TrimSpace(out))
		}
	})
	return dir
}

// fillDisk writes path until its file system is full and returns the
// bytes written.
func fillDisk(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 256<<10)
	var n int64
	for range 1 << 16 { // 16 GiB: far more than any test's tmpfs
		w, err := f.Write(buf)
		n += int64(w)
		if errors.Is(err, syscall.ENOSPC) {
			return n
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Fatalf("%s: the file system did not fill up", path)
	return n
}

// smallDiskConfig makes a component fit a small tmpfs: a 4 MiB memtable
// (the disk guard's reserve is derived from it).
func smallDiskConfig(c *Config) {
	c.MemTableSize = 4 << 20
	c.MaxGroupBytes, c.MaxApplyBytes = 128<<10, 128<<10
	c.Durability = Sync
}

func gaugeValue(t *testing.T, c *Component, name string) (float64, bool) {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(c.Metrics())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			m := mf.GetMetric()[0]
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue(), true
			}
			return m.GetCounter().GetValue(), true
		}
	}
	return 0, false
}

// TestDiskFull_ReplicaServesReadsAndResumes fills a consumer's disk while
// its owner writes (values both under and over the value log threshold):
// the consumer must not die, must keep serving reads, must report the lack
// of space, and must catch up by itself (resuming from its seq, no full
// transfer) once the space is freed.
func TestDiskFull_ReplicaServesReadsAndResumes(t *testing.T) {
	mnt := mountTmpfs(t, 40<<20)
	// On disk: in memory, badger takes no value over its value threshold.
	owner := openComponent(t, itOwner, "o1", t.TempDir(), "127.0.0.1:0")
	t.Cleanup(func() { mustClose(t, owner) })
	tbl, err := owner.Own(itTable)
	if err != nil {
		t.Fatal(err)
	}
	value := func(i int) []byte {
		if i%10 == 0 {
			return bytes.Repeat([]byte{byte(i)}, 2*valueThreshold) // goes to badger's value log
		}
		return fmt.Appendf(nil, "v%d", i)
	}
	ctx := ctxT(t, 2*time.Minute)
	for i := range 300 {
		if _, err := tbl.Put(ctx, fmt.Appendf(nil, "k%05d", i), value(i)); err != nil {
			t.Fatal(err)
		}
	}
	cons := openWith(t, "products", "c1", filepath.Join(mnt, "db"), "", smallDiskConfig)
	t.Cleanup(func() { mustClose(t, cons) })
	r, err := cons.Subscribe(ctx, SubscribeOptions{Service: itOwner, Table: itTable, Addr: owner.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	mustConverge(t, tbl, r)

	// A steady write load on the owner from here on.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var writeErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		tk := time.NewTicker(time.Millisecond)
		defer tk.Stop()
		for i := 300; i < 1_000_000; i++ {
			select {
			case <-stop:
				return
			case <-tk.C:
			}
			if _, err := tbl.Put(ctx, fmt.Appendf(nil, "k%05d", i%5000), value(i)); err != nil {
				writeErr = err
				return
			}
		}
	}()
	stopWriter := sync.OnceFunc(func() { close(stop); wg.Wait() })
	t.Cleanup(stopWriter)
	seq0 := r.Seq()
	waitUntil(t, 30*time.Second, "the replica follows the writes", func() bool { return r.Seq() > seq0+20 })
	before := r.Status().Stats

	filler := filepath.Join(mnt, "filler")
	t.Logf("disk full after %d MiB of filler", fillDisk(t, filler)>>20)
	waitUntil(t, 30*time.Second, "the replica reports the lack of space", func() bool {
		return errors.Is(r.Status().LastErr, ErrDiskFull)
	})
	st := r.Status()
	if !strings.Contains(st.LastErr.Error(), "space") {
		t.Errorf("LastErr %q does not say space", st.LastErr)
	}
	t.Logf("status while full: state %s, seq %d, last error: %v", st.State, st.Seq, st.LastErr)
	if v, ok := gaugeValue(t, cons, "replmesh_disk_full"); !ok || v != 1 {
		t.Errorf("replmesh_disk_full = %v (reported %v), want 1", v, ok)
	}
	// It applies nothing more while full, and keeps serving what it has.
	held := r.Seq()
	waitUntil(t, 30*time.Second, "the owner writes on", func() bool { return tbl.Head() > held+200 })
	if got := r.Seq(); got != held {
		t.Errorf("replica applied up to %d on a full disk (held %d)", got, held)
	}
	for _, i := range []int{0, 1, 150, 299} {
		k := fmt.Appendf(nil, "k%05d", i)
		v, found, err := r.Get(k)
		if err != nil || !found {
			t.Fatalf("read %s on a full disk: found %v, %v", k, found, err)
		}
		if i < 300 && len(v) == 0 {
			t.Errorf("read %s: empty value", k)
		}
	}
	if _, err := r.Scan(nil, func(_, _ []byte) bool { return true }); err != nil {
		t.Fatalf("scan on a full disk: %v", err)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	stopWriter()
	if writeErr != nil {
		t.Fatalf("owner write: %v", writeErr)
	}
	mustConverge(t, tbl, r)
	after := r.Status().Stats
	if after.FullTransfers != before.FullTransfers {
		t.Errorf("%d full transfers after the disk was freed, want a resume", after.FullTransfers-before.FullTransfers)
	}
	if after.Resumes <= before.Resumes {
		t.Errorf("resumes %d -> %d, want more", before.Resumes, after.Resumes)
	}
	if v, _ := gaugeValue(t, cons, "replmesh_disk_full"); v != 0 {
		t.Errorf("replmesh_disk_full = %v once freed, want 0", v)
	}
}

// TestDiskFull_OwnerRefusesWrites fills an owner's disk: a write is refused
// with ErrDiskFull and changes nothing; Close on the full disk does not
// crash; once freed, writes go on from the same head and nothing was lost;
// and Open on a full disk is refused rather than crashing.
func TestDiskFull_OwnerRefusesWrites(t *testing.T) {
	mnt := mountTmpfs(t, 40<<20)
	dir := filepath.Join(mnt, "db")
	owner := openWith(t, itOwner, "o1", dir, "", smallDiskConfig)
	closed := false
	t.Cleanup(func() {
		if !closed {
			mustClose(t, owner)
		}
	})
	tbl, err := owner.Own(itTable)
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, time.Minute)
	for i := range 100 {
		if _, err := tbl.Put(ctx, fmt.Appendf(nil, "k%03d", i), bytes.Repeat([]byte{'v'}, 100+20*i)); err != nil {
			t.Fatal(err)
		}
	}
	filler := filepath.Join(mnt, "filler")
	fillDisk(t, filler)
	// Writes admitted before the guard measured land in preallocated
	// space; from its next measurement on, writes are refused.
	i := 0
	waitUntil(t, 30*time.Second, "a write refused for lack of space", func() bool {
		i++
		_, err := tbl.Put(ctx, fmt.Appendf(nil, "late%d", i), []byte("x"))
		return errors.Is(err, ErrDiskFull)
	})
	head := tbl.Head()
	want, err := tbl.Digest(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = tbl.Apply(ctx, Write{Key: []byte("refused"), Value: []byte("1")}, Write{Key: []byte("k000"), Delete: true})
	if !errors.Is(err, ErrDiskFull) || !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "space") {
		t.Fatalf("write on a full disk: %v, want ErrDiskFull saying space", err)
	}
	t.Logf("refused: %v", err)
	got, err := tbl.Digest(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if tbl.Head() != head || !bytes.Equal(got.Hash, want.Hash) || got.Rows != want.Rows {
		t.Fatalf("a refused write changed the table: head %d -> %d, %d -> %d rows", head, tbl.Head(), want.Rows, got.Rows)
	}
	if _, found, _ := tbl.Get([]byte("refused")); found {
		t.Fatal("a refused write is readable")
	}

	// Close flushes badger's memtable: on the full disk it uses the
	// released reserve file instead of faulting.
	closed = true
	mustClose(t, owner)
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	owner = openWith(t, itOwner, "o1", dir, "", smallDiskConfig)
	closed = false
	if tbl, err = owner.Own(itTable); err != nil {
		t.Fatal(err)
	}
	if got, err := tbl.Digest(nil, nil); err != nil || got.Seq != head || !bytes.Equal(got.Hash, want.Hash) {
		t.Fatalf("after a restart: digest %x at seq %d (%v), want %x at %d", got.Hash, got.Seq, err, want.Hash, head)
	}
	seq, err := tbl.Put(ctx, []byte("after"), []byte("1"))
	if err != nil || seq != head+1 {
		t.Fatalf("write once freed: seq %d, %v; want %d", seq, err, head+1)
	}

	// Open on a full disk is an error, not a crash.
	closed = true
	mustClose(t, owner)
	fillDisk(t, filler)
	cfg := LocalConfig(itOwner, "o1")
	cfg.DataDir, cfg.Logger = dir, testLogger(t)
	smallDiskConfig(&cfg)
	c, err := Open(ctx, cfg)
	if err == nil {
		_ = c.Close()
		t.Fatal("Open on a full disk succeeded")
	}
	if !errors.Is(err, ErrDiskFull) {
		t.Fatalf("Open on a full disk: %v, want ErrDiskFull", err)
	}
	t.Logf("open refused: %v", err)
}

// TestDiskFull_ReplicaFillsItsOwnDisk lets a consumer's own data fill its
// disk (memtable rotations, flushes, value log growth): the guard must
// stop it at its reserve, with no crash, and it must go on once space is
// freed.
func TestDiskFull_ReplicaFillsItsOwnDisk(t *testing.T) {
	mnt := mountTmpfs(t, 64<<20)
	spare := filepath.Join(mnt, "spare")
	mustSparseFile(t, spare, 0)
	f, err := os.OpenFile(spare, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(make([]byte, 24<<20)); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	owner := openComponent(t, itOwner, "o1", t.TempDir(), "127.0.0.1:0")
	t.Cleanup(func() { mustClose(t, owner) })
	tbl, err := owner.Own(itTable)
	if err != nil {
		t.Fatal(err)
	}
	cons := openWith(t, "products", "c1", filepath.Join(mnt, "db"), "", smallDiskConfig)
	t.Cleanup(func() { mustClose(t, cons) })
	r, err := cons.Subscribe(ctxT(t, time.Minute), SubscribeOptions{Service: itOwner, Table: itTable, Addr: owner.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, 2*time.Minute)
	value := bytes.Repeat([]byte{'v'}, 2*valueThreshold)
	const rows, batch = 15000, 50 // 30 MiB of values: more than the consumer has room for
	for i := 0; i < rows; i += batch {
		ws := make([]Write, batch)
		for j := range ws {
			ws[j] = Write{Key: fmt.Appendf(nil, "k%05d", i+j), Value: value}
		}
		if _, err := tbl.Apply(ctx, ws...); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, 30*time.Second, "the replica refuses to apply for lack of space", func() bool {
		return errors.Is(r.Status().LastErr, ErrDiskFull)
	})
	st := r.Status()
	t.Logf("stopped at seq %d of %d: %v", st.Seq, tbl.Head(), st.LastErr)
	if st.Seq >= tbl.Head() {
		t.Fatalf("the replica holds everything (seq %d): the disk did not fill", st.Seq)
	}
	if _, found, err := r.Get([]byte("k00000")); err != nil || !found {
		t.Fatalf("read on a full disk: found %v, %v", found, err)
	}
	if err := os.Remove(spare); err != nil {
		t.Fatal(err)
	}
	mustConverge(t, tbl, r)
}
