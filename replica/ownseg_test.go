package replica

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// segFiles lists the segment files of table under dir.
func segFiles(t testing.TB, dir, table string) []string {
	t.Helper()
	ents, err := os.ReadDir(segDir(dir, table))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".seg") {
			names = append(names, e.Name())
		}
	}
	return names
}

// smallSegments makes segments roll at n bytes for the test.
func smallSegments(t testing.TB, n int64) {
	segMaxForTest.Store(n)
	t.Cleanup(func() { segMaxForTest.Store(0) })
}

// TestOwnerSegments_GroupsLiveInSegments: on disk, a log group's badger
// value is a reference to its bytes in a segment; the owner's reads
// return the values; a restart reads them back.
func TestOwnerSegments_GroupsLiveInSegments(t *testing.T) {
	dir := t.TempDir()
	c := openOwnerTrimmedByTest(t, dir)
	tbl, err := c.Own("t")
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, time.Minute)
	model := map[string]string{}
	for i := range 300 {
		k, v := fmt.Sprintf("k%03d", i%120), fmt.Sprintf("v%d-%s", i, strings.Repeat("x", i%300))
		if _, err := tbl.Put(ctx, []byte(k), []byte(v)); err != nil {
			t.Fatal(err)
		}
		model[k] = v
	}
	refs := 0
	err = c.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: ownLogPrefix("t")})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			err := it.Item().Value(func(v []byte) error {
				if v[0] != groupExt {
					return fmt.Errorf("a log group of %d bytes held in badger (kind %d)", len(v), v[0])
				}
				refs++
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if refs == 0 {
		t.Fatal("no log group written")
	}
	checkOwnerReads(t, tbl, model, keysOf(model))
	first, size := tbl.meta.First, tbl.logSize
	mustClose(t, c)

	c = openOwnerTrimmedByTest(t, dir)
	defer mustClose(t, c)
	tbl, err = c.Own("t")
	if err != nil {
		t.Fatal(err)
	}
	// measureLog sizes the log from the references alone.
	if tbl.meta.First != first || tbl.logSize != size {
		t.Fatalf("reopened: first %d, log size %d; before the close %d, %d", tbl.meta.First, tbl.logSize, first, size)
	}
	checkOwnerReads(t, tbl, model, keysOf(model))
	chs, err := tbl.readLog(1, 1000, 1<<30, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(chs) != 300 {
		t.Fatalf("log after reopen: %d changes, want 300", len(chs))
	}
}

func keysOf(m map[string]string) []string {
	ks := make([]string, 0, len(m)+1)
	for k := range m {
		ks = append(ks, k)
	}
	return append(ks, "missing")
}

// TestOwnerSegments_TrimDeletesSegments: trimming rewrites the kept
// entries of a segment's groups into badger and deletes the segment once
// no key references it, but not while a reader pinned before holds it.
func TestOwnerSegments_TrimDeletesSegments(t *testing.T) {
	smallSegments(t, 4<<10)
	dir := t.TempDir()
	c := openOwnerTrimmedByTest(t, dir)
	defer mustClose(t, c)
	tbl, err := c.Own("t")
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, time.Minute)
	model := map[string]string{}
	val := strings.Repeat("v", 200)
	for i := range 400 {
		// 40 keys written once (kept below the window), the rest cycling.
		k := fmt.Sprintf("hot%02d", i%20)
		if i < 40 {
			k = fmt.Sprintf("cold%02d", i)
		}
		v := fmt.Sprintf("%d-%s", i, val)
		if _, err := tbl.Put(ctx, []byte(k), []byte(v)); err != nil {
			t.Fatal(err)
		}
		model[k] = v
	}
	before := len(segFiles(t, dir, "t"))
	if before < 10 {
		t.Fatalf("%d segments after 400 writes of 4 KiB segments", before)
	}
	// A reader pinned now may follow the old references.
	pin := tbl.seg.pin()
	tbl.mu.Lock()
	tbl.retention = Retention{MaxChanges: 50}
	tbl.mu.Unlock()
	if err := tbl.trim(time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, retired := tbl.seg.segments(); retired == 0 {
		t.Fatal("trim retired no segment")
	}
	if n := len(segFiles(t, dir, "t")); n != before {
		t.Fatalf("%d segment files while a reader is pinned, want all %d", n, before)
	}
	tbl.seg.unpin(pin)
	after := len(segFiles(t, dir, "t"))
	if after >= before/2 {
		t.Fatalf("%d of %d segment files left after trimming to the last 50 of 400 changes", after, before)
	}
	if open, retired := tbl.seg.segments(); retired != 0 || open != after {
		t.Fatalf("segments: %d open, %d retired; %d files", open, retired, after)
	}
	checkOwnerReads(t, tbl, model, keysOf(model))
	checkOwnerStore(t, c.db, "t", tbl.meta.First, model, nil)
	// The window after a reopen, sized from the references of its
	// groups (the kept entries below it are groups rewritten into
	// badger), is the one trimming left.
	tbl.mu.Lock()
	first, head := tbl.meta.First, tbl.meta.Head
	tbl.mu.Unlock()
	if f, _ := tbl.measureLog(head); f != first {
		t.Fatalf("measured window from %d, trimming left it at %d", f, first)
	}
}

// TestOwnerSegments_OpenChecks: a segment no group references (bytes of
// a commit a crash lost) is deleted at Own; a reference past its
// segment's end (a machine crash lost the segment's tail) makes Own fail
// with errSegmentLost.
func TestOwnerSegments_OpenChecks(t *testing.T) {
	dir := t.TempDir()
	c := openOwnerTrimmedByTest(t, dir)
	tbl, err := c.Own("t")
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, time.Minute)
	for i := range 50 {
		if _, err := tbl.Put(ctx, fmt.Appendf(nil, "k%d", i), []byte("value")); err != nil {
			t.Fatal(err)
		}
	}
	mustClose(t, c)
	segs := segFiles(t, dir, "t")
	if len(segs) != 1 {
		t.Fatalf("segments %v, want one", segs)
	}
	orphan := filepath.Join(segDir(dir, "t"), fmt.Sprintf("%016x.seg", 99))
	if err := os.WriteFile(orphan, []byte("garbage of a lost commit"), 0o644); err != nil {
		t.Fatal(err)
	}
	c = openOwnerTrimmedByTest(t, dir)
	if _, err := c.Own("t"); err != nil {
		t.Fatal(err)
	}
	mustClose(t, c)
	if _, err := os.Stat(orphan); !os.IsNotExist(err) {
		t.Fatalf("unreferenced segment still there: %v", err)
	}

	path := filepath.Join(segDir(dir, "t"), segs[0])
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, fi.Size()-10); err != nil {
		t.Fatal(err)
	}
	c = openOwnerTrimmedByTest(t, dir)
	defer mustClose(t, c)
	if _, err := c.Own("t"); !errors.Is(err, errSegmentLost) {
		t.Fatalf("Own over a cut segment: %v, want errSegmentLost", err)
	}
}

// TestOwnerSegments_CorruptBytes: a read of a group whose bytes do not
// match its reference's CRC fails with errSegmentLost rather than
// returning them.
func TestOwnerSegments_CorruptBytes(t *testing.T) {
	dir := t.TempDir()
	c := openOwnerTrimmedByTest(t, dir)
	tbl, err := c.Own("t")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tbl.Put(ctxT(t, time.Minute), []byte("k"), []byte("value")); err != nil {
		t.Fatal(err)
	}
	mustClose(t, c)
	path := filepath.Join(segDir(dir, "t"), segFiles(t, dir, "t")[0])
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-1] ^= 0xff
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	c = openOwnerTrimmedByTest(t, dir)
	defer mustClose(t, c)
	tbl, err = c.Own("t")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := tbl.Get([]byte("k")); !errors.Is(err, errSegmentLost) {
		t.Fatalf("Get over corrupt bytes: %v, want errSegmentLost", err)
	}
}

// FuzzParseSegRef: a reference parses only from its exact encoding, and
// encodes back to the same bytes.
func FuzzParseSegRef(f *testing.F) {
	f.Add(segRef{id: 1, off: 4096, n: 300, crc: 7, entries: 14, data: 250}.encode())
	f.Add(segRef{id: 2, entries: 3, sparse: true, data: 9}.encode())
	f.Add([]byte{groupExt, 0})
	f.Fuzz(func(t *testing.T, v []byte) {
		r, err := parseSegRef(v)
		if err != nil {
			return
		}
		if got := r.encode(); string(got) != string(v) {
			t.Fatalf("parse(%x) encodes to %x", v, got)
		}
	})
}

// FuzzParseGroup: parseGroup never panics, and every entry of a group it
// accepts lies within its bytes, in order.
func FuzzParseGroup(f *testing.F) {
	var b groupBuilder
	b.add(5, []byte("entry five"))
	b.add(6, []byte("six"))
	f.Add(b.encode())
	b.reset()
	b.add(5, []byte("a"))
	b.add(9, []byte("bb"))
	f.Add(b.encode())
	f.Add([]byte{groupDense, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, v []byte) {
		g, err := parseGroup(v)
		if err != nil {
			return
		}
		for i := range g.n {
			e, err := g.entry(i)
			if err != nil {
				continue
			}
			if len(e) > len(g.data) {
				t.Fatalf("entry %d of %d bytes in %d", i, len(e), len(g.data))
			}
			if _, ok := g.find(g.seq(i)); !ok && g.seqs == nil {
				t.Fatalf("dense entry %d at seq %d not found", i, g.seq(i))
			}
		}
	})
}
