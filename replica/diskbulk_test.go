package replica

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// A DiskOnly replica with a data dir receives its full transfer into a
// rows file, none of it through badger; the changes after it go to badger
// as the generation's overlay, never to a WAL; reopened DiskOnly it
// resumes on the same generation. Each state equals the owner's.
func TestDiskBulk_TransferChangesReopen(t *testing.T) {
	var mem memNet
	owner := mem.open(t, itOwner, "s1", "")
	defer mustClose(t, owner)
	tbl := mustOwn(t, owner)
	ctx := ctxT(t, 2*time.Minute)
	const rows = 3000
	loadRows(ctx, t, tbl, rows, func(i int) []byte { return bytes.Repeat(fmt.Appendf(nil, "v1-%d.", i), 10) })
	dir := t.TempDir()
	subscribe := func(c *Component) *Replica {
		t.Helper()
		r, err := c.Subscribe(ctx, SubscribeOptions{Service: itOwner, Table: itTable, Addr: owner.Addr(), DiskOnly: true})
		must(t, err)
		mustConverge(t, tbl, r)
		return r
	}
	c := mem.open(t, "products", "c1", dir)
	r := subscribe(c)
	cur := replicaCursor(r)
	prefix := genPrefix(r.base, cur.Gen)
	if !cur.Bulk {
		t.Fatalf("cursor after the transfer %+v: not a bulk generation", cur)
	}
	if n := countKeys(t, c, prefix); n != 0 {
		t.Fatalf("the transfer wrote %d rows through badger, want none", n)
	}
	applyMixedChanges(ctx, t, tbl, rows)
	mustConverge(t, tbl, r)
	if n := countKeys(t, c, prefix); n == 0 {
		t.Fatal("the changes left no overlay rows in badger")
	}
	if segs, err := c.walSegPaths(prefix); err != nil || len(segs) != 0 {
		t.Fatalf("WAL segments %v of a disk-only replica: %v", segs, err)
	}
	checkReads := func(r *Replica) {
		t.Helper()
		for _, i := range []int{0, 1, 2, 3, 7, 14, 21, 28, 1500, rows - 1, rows, rows + 49, rows + 50} {
			k := fmt.Appendf(nil, "row%05d", i)
			want, wok, err := tbl.Get(k)
			must(t, err)
			got, ok, err := r.Get(k)
			if err != nil || ok != wok || !bytes.Equal(got, want) {
				t.Fatalf("Get(%s) = %q, %v, %v; the owner's %q, %v", k, got, ok, err, want, wok)
			}
		}
		var owned, got []string
		_, err := tbl.Scan([]byte("row012"), func(k, v []byte) bool { owned = append(owned, string(k)+"="+string(v)); return true })
		must(t, err)
		_, err = r.Scan([]byte("row012"), func(k, v []byte) bool { got = append(got, string(k)+"="+string(v)); return true })
		must(t, err)
		if strings.Join(got, ",") != strings.Join(owned, ",") {
			t.Fatalf("Scan(row012): %d rows, the owner's %d", len(got), len(owned))
		}
		wd, err := tbl.Digest([]byte("row00100"), []byte("row02000"))
		must(t, err)
		gd, err := r.Digest([]byte("row00100"), []byte("row02000"))
		must(t, err)
		if !bytes.Equal(gd.Hash, wd.Hash) || gd.Rows != wd.Rows {
			t.Fatalf("Digest of a range: %d rows, the owner's %d", gd.Rows, wd.Rows)
		}
	}
	checkReads(r)
	mustClose(t, c)

	c = mem.open(t, "products", "c1", dir)
	defer mustClose(t, c)
	r = subscribe(c)
	if got := replicaCursor(r); got.Gen != cur.Gen || !got.Bulk || r.Status().Stats.FullTransfers != 0 {
		t.Fatalf("reopened: cursor %+v, %d full transfers; want generation %d, bulk, resumed", got, r.Status().Stats.FullTransfers, cur.Gen)
	}
	checkReads(r)
}

// Reads of a disk-only replica running while full transfers switch its
// generation again and again each see one generation whole: a Scan every
// row of one transfer, a Get a value of some transfer, never an error.
func TestDiskBulk_ReadsDuringSwitches(t *testing.T) {
	dir := t.TempDir()
	c := openComponent(t, "svc", "i1", dir, "")
	defer mustClose(t, c)
	g := &genStore{c: c, base: replicaBase("svc", "t"), table: "t", log: testLogger(t), blockBytes: 256}
	defer g.closeFile()
	const rows = 500
	table := func(gen int) map[string]string {
		m := map[string]string{}
		for i := range rows {
			m[fmt.Sprintf("k%04d", i)] = fmt.Sprintf("gen%03d-%d", gen, i)
		}
		return m
	}
	cur := bulkTransferRows(t, g, cursor{}, table(0), true, true)
	var stop atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for w := range 3 {
		wg.Go(func() {
			for n := 0; !stop.Load(); n++ {
				if err := readOnce(g, w, n); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	for i := 1; i <= 30 && len(errs) == 0; i++ {
		cur = bulkTransferRows(t, g, cur, table(i), true, true)
		must(t, c.dropMarked()) // the replaced generation's file goes
	}
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// readOnce is one read of TestDiskBulk_ReadsDuringSwitches: a Scan or a
// Get.
func readOnce(g *genStore, w, n int) error {
	if (w+n)%2 == 0 {
		v, _, err := g.snapshotView()
		if err != nil {
			return fmt.Errorf("snapshot: %w", err)
		}
		defer v.release()
		tag, count := "", 0
		err = v.scan(nil, nil, nil, func(_, val []byte) (bool, error) {
			t, _, _ := strings.Cut(string(val), "-")
			if tag == "" {
				tag = t
			}
			if t != tag {
				return false, fmt.Errorf("one scan saw %s and %s", tag, t)
			}
			count++
			return true, nil
		})
		if err == nil && count != 500 {
			err = fmt.Errorf("a scan saw %d rows", count)
		}
		return err
	}
	v, ok, err := g.fileView()
	if err != nil || !ok {
		return fmt.Errorf("file view: %v, %v", ok, err)
	}
	defer v.release()
	k := fmt.Sprintf("k%04d", (w*131+n*17)%500)
	val, found, err := v.get([]byte(k))
	if err != nil || !found || !strings.HasSuffix(string(val), fmt.Sprintf("-%d", (w*131+n*17)%500)) {
		return fmt.Errorf("Get(%s) = %q, %v, %v", k, val, found, err)
	}
	return nil
}

// The sparse index finds the block of any key, first and last included,
// and misses between and around the rows.
func TestDiskBulk_SparseIndexBlocks(t *testing.T) {
	dir := t.TempDir()
	c := openComponent(t, "svc", "i1", dir, "")
	defer mustClose(t, c)
	for _, block := range []int64{1, 40, 1000, sparseBlock} {
		t.Run(fmt.Sprint(block), func(t *testing.T) {
			g := &genStore{c: c, base: replicaBase("svc", fmt.Sprint("t", block)), table: "t", log: testLogger(t), blockBytes: block}
			defer g.closeFile()
			rows := map[string]string{}
			for i := 0; i < 400; i += 2 {
				rows[fmt.Sprintf("k%04d", i)] = strings.Repeat("v", i%37)
			}
			bulkTransferRows(t, g, cursor{}, rows, true, true)
			if n := len(g.file.idx.offs); block == 1 && n != len(rows) {
				t.Fatalf("%d index entries for %d rows in blocks of 1 byte", n, len(rows))
			}
			for i := -1; i <= 401; i++ {
				k := fmt.Sprintf("k%04d", i)
				want, wok := rows[k]
				v, ok, err := g.fileView()
				if err != nil || !ok {
					t.Fatalf("file view: %v, %v", ok, err)
				}
				got, found, err := v.get([]byte(k))
				v.release()
				if err != nil || found != wok || string(got) != want {
					t.Fatalf("get(%s) = %q, %v, %v; want %q, %v", k, got, found, err, want, wok)
				}
			}
			// The file's reopened index (openBulkFile) is the transfer's.
			reopened, err := openBulkFile(g.file.f.Name(), g.file.gen, g.file.prefix, g.newIndex())
			must(t, err)
			defer reopened.release()
			if fmt.Sprint(reopened.idx.offs) != fmt.Sprint(g.file.idx.offs) || reopened.end != g.file.end {
				t.Fatalf("reopened index %v (end %d), the transfer's %v (end %d)", reopened.idx.offs, reopened.end, g.file.idx.offs, g.file.end)
			}
			if _, err := os.Stat(g.file.f.Name()); err != nil {
				t.Fatal(err)
			}
		})
	}
}
