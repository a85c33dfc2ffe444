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
	"github.com/replmesh/replmesh/internal/diskguard"
)

// The disk guard's own tests are in internal/diskguard; these run it in a
// component, on a tmpfs filled for real.

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
			return bytes.Repeat([]byte{byte(i)}, 2*diskguard.ValueThreshold) // goes to badger's value log
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
	if err := os.WriteFile(spare, make([]byte, 24<<20), 0o644); err != nil {
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
	value := bytes.Repeat([]byte{'v'}, 2*diskguard.ValueThreshold)
	const batch = 50
	rows := (30 << 20) / len(value) / batch * batch // 30 MiB of values: more than the consumer has room for
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
