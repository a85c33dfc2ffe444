package replica

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/replmesh/replmesh/transport"
)

// A durable resident replica's full transfer writes a bulk generation: the
// rows in a file of their own, none through badger. Changes after it
// overlay the file (puts and tombstones in badger); the replica reopened
// loads file + overlay; subscribed DiskOnly later, the generation is
// written into badger alone and the file deleted. Each state equals the
// owner's.
func TestBulkGen_TransferReopenDiskOnly(t *testing.T) {
	var mem memNet
	owner := mem.open(t, itOwner, "s1", "")
	defer mustClose(t, owner)
	tbl := mustOwn(t, owner)
	ctx := ctxT(t, 2*time.Minute)
	const rows = 3000
	loadRows(ctx, t, tbl, rows, func(i int) []byte { return fmt.Appendf(nil, "v1-%d", i) })

	dir := t.TempDir()
	c := mem.open(t, "products", "c1", dir)
	subscribe := func(c *Component, diskOnly bool) *Replica {
		t.Helper()
		r, err := c.Subscribe(ctx, SubscribeOptions{Service: itOwner, Table: itTable, Addr: owner.Addr(), DiskOnly: diskOnly})
		if err != nil {
			t.Fatal(err)
		}
		mustConverge(t, tbl, r)
		return r
	}
	r := subscribe(c, false)
	cur := replicaCursor(r)
	prefix := genPrefix(r.base, cur.Gen)
	if !cur.Bulk {
		t.Fatalf("cursor after the transfer %+v: not a bulk generation", cur)
	}
	if n := countKeys(t, c, prefix); n != 0 {
		t.Fatalf("the transfer wrote %d rows through badger, want none", n)
	}
	if _, err := os.Stat(c.bulkPath(prefix)); err != nil {
		t.Fatalf("rows file: %v", err)
	}

	// Changes overlay the file.
	applyMixedChanges(ctx, t, tbl, rows)
	mustConverge(t, tbl, r)
	if n := countKeys(t, c, prefix); n != 0 {
		t.Fatalf("the changes wrote %d rows through badger, want none", n)
	}
	if segs, err := c.walSegPaths(prefix); err != nil || len(segs) == 0 {
		t.Fatalf("no WAL segment after the changes: %v", err)
	}
	mustClose(t, c)

	// Reopened resident: the rows file and the WAL.
	c = mem.open(t, "products", "c1", dir)
	r = subscribe(c, false)
	if got := replicaCursor(r); got.Gen != cur.Gen || !got.Bulk || r.Status().Stats.FullTransfers != 0 {
		t.Fatalf("reopened: cursor %+v, %d full transfers; want generation %d, bulk, resumed", got, r.Status().Stats.FullTransfers, cur.Gen)
	}
	mustClose(t, c)

	// Reopened DiskOnly: badger alone holds the rows, in a generation
	// of their own; the bulk one is dropped.
	c = mem.open(t, "products", "c1", dir)
	defer mustClose(t, c)
	r = subscribe(c, true)
	got := replicaCursor(r)
	if got.Gen <= cur.Gen || got.Bulk || r.Status().Stats.FullTransfers != 0 {
		t.Fatalf("disk only: cursor %+v, %d full transfers; want a generation after %d, not bulk", got, r.Status().Stats.FullTransfers, cur.Gen)
	}
	must(t, c.dropMarked())
	if _, err := os.Stat(c.bulkPath(prefix)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("rows file after the conversion: %v", err)
	}
	if segs, err := c.walSegPaths(prefix); err != nil || len(segs) != 0 {
		t.Fatalf("WAL segments %v after the conversion: %v", segs, err)
	}
	want, err := tbl.Digest(nil, nil)
	must(t, err)
	if n := countKeys(t, c, genPrefix(r.base, got.Gen)); n != int(want.Rows) {
		t.Fatalf("badger holds %d rows of the converted generation, want %d", n, want.Rows)
	}
}

// loadRows writes rows keys row%05d with value(i), 500 a transaction.
func loadRows(ctx context.Context, t *testing.T, tbl *OwnedTable, rows int, value func(i int) []byte) {
	t.Helper()
	var ws []Write
	for i := range rows {
		ws = append(ws, Write{Key: fmt.Appendf(nil, "row%05d", i), Value: value(i)})
	}
	for len(ws) > 0 {
		n := min(len(ws), 500)
		_, err := tbl.Apply(ctx, ws[:n]...)
		must(t, err)
		ws = ws[n:]
	}
}

// applyMixedChanges changes the table of rows keys row%05d: overwrite,
// delete, delete then put back, put then delete, and 50 new keys.
func applyMixedChanges(ctx context.Context, t *testing.T, tbl *OwnedTable, rows int) {
	t.Helper()
	for i := 0; i < rows; i += 7 {
		k := fmt.Appendf(nil, "row%05d", i)
		switch i % 4 {
		case 0:
			_, err := tbl.Put(ctx, k, []byte("v2"))
			must(t, err)
		case 1:
			_, err := tbl.Delete(ctx, k)
			must(t, err)
		case 2:
			_, err := tbl.Delete(ctx, k)
			must(t, err)
			_, err = tbl.Put(ctx, k, []byte("back"))
			must(t, err)
		case 3:
			_, err := tbl.Put(ctx, k, []byte("brief"))
			must(t, err)
			_, err = tbl.Delete(ctx, k)
			must(t, err)
		}
	}
	for i := rows; i < rows+50; i++ {
		_, err := tbl.Put(ctx, fmt.Appendf(nil, "row%05d", i), []byte("new"))
		must(t, err)
	}
}

func replicaCursor(r *Replica) cursor {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.cur
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// A crash in a bulk transfer — rows half-written, or the file complete
// but the switch not committed — leaves the old generation serving: the
// next Subscribe finds the stage marker, and the staged generation, file
// included, is deleted.
func TestBulkGen_CrashLeavesTheOldGeneration(t *testing.T) {
	tests := []struct {
		name     string
		finish   bool
		diskOnly bool // a DiskOnly replica's bulk generation (diskbulk.go)
	}{
		{"crash while the rows arrive", false, false},
		{"crash after the file is complete, before the switch", true, false},
		{"disk only: crash while the rows arrive", false, true},
		{"disk only: crash after the file is complete, before the switch", true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			c := openComponent(t, "svc", "i1", dir, "")
			base := replicaBase("svc", "t")
			g := &genStore{c: c, base: base, table: "t", log: testLogger(t), bulk: !tt.diskOnly}
			old := map[string]string{"a": "1", "b": "2", "c": "3"}
			first := bulkTransferRows(t, g, cursor{}, old, true, true)

			// The second transfer dies: the component goes away without
			// an abort, as a killed process would.
			x, err := g.beginTransfer(&transport.Start{LogID: "L", Epoch: 1, HeadSeq: 2},
				&transport.OwnerFrame{Kind: transport.KindSnapshotBegin, Seq: 2, Epoch: 1}, first)
			must(t, err)
			bx := x.(*bulkTransfer)
			for i := range 5000 {
				must(t, bx.put(fmt.Appendf(nil, "new%05d", i), bytes.Repeat([]byte{'n'}, 200)))
			}
			if tt.finish {
				if _, err := bx.finish(cursor{LogID: "L", Epoch: 1, Seq: 2}); err != nil {
					t.Fatal(err)
				}
			} else {
				must(t, bx.flushBuf()) // part of the rows on disk
				close(bx.full)         // the writer ends, as the process would
				<-bx.wdone
				_ = bx.f.Close()
			}
			stagedPath := bx.path
			if _, err := os.Stat(stagedPath); err != nil {
				t.Fatalf("staged rows file: %v", err)
			}
			if bx.file != nil { // the dead process's descriptors
				bx.file.release()
			}
			g.closeFile()
			mustClose(t, c)

			c = openComponent(t, "svc", "i1", dir, "")
			defer mustClose(t, c)
			r := newTestReplica(t, c, SubscribeOptions{Service: "svc", Table: "t", Addr: "127.0.0.1:1", DiskOnly: tt.diskOnly})
			defer r.cancel()
			if r.cur != first {
				t.Fatalf("cursor after the crash %+v, want the old %+v", r.cur, first)
			}
			got := map[string]string{}
			_, err = r.Scan(nil, func(k, v []byte) bool { got[string(k)] = string(v); return true })
			must(t, err)
			if tt.diskOnly {
				defer r.sink.(*genStore).closeFile()
			}
			if !maps.Equal(got, old) {
				t.Fatalf("rows after the crash %v, want the old generation's %v", got, old)
			}
			must(t, c.dropMarked())
			if _, err := os.Stat(stagedPath); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("the staged rows file after the drop: %v", err)
			}
			if _, err := os.Stat(c.bulkPath(genPrefix(base, first.Gen))); err != nil {
				t.Fatalf("the live generation's rows file: %v", err)
			}
		})
	}
}

// bulkTransferRows runs a transfer of rows into g (a bulk genStore) from
// cur and returns the new cursor.
func bulkTransferRows(t *testing.T, g *genStore, cur cursor, rows map[string]string, finish, switchIn bool) cursor {
	t.Helper()
	x, err := g.beginTransfer(&transport.Start{LogID: "L", Epoch: 1, HeadSeq: 1},
		&transport.OwnerFrame{Kind: transport.KindSnapshotBegin, Seq: 1, Epoch: 1}, cur)
	must(t, err)
	defer x.abort()
	for _, k := range sortedKeys(rows) {
		must(t, x.put([]byte(k), []byte(rows[k])))
	}
	if !finish {
		return cur
	}
	next, err := x.finish(cursor{LogID: "L", Epoch: 1, Seq: 1})
	must(t, err)
	if switchIn {
		must(t, x.switchIn(cur, next))
	}
	return next
}

func sortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// A rows file that does not end as written — cut short anywhere, a byte
// changed, bytes added — fails the load: never a replica with fewer or
// other rows.
func TestBulkGen_DamagedFileFailsTheLoad(t *testing.T) {
	dir := t.TempDir()
	c := openComponent(t, "svc", "i1", dir, "")
	defer mustClose(t, c)
	g := &genStore{c: c, base: replicaBase("svc", "t"), table: "t", log: testLogger(t), bulk: true}
	rows := map[string]string{}
	for i := range 200 {
		rows[fmt.Sprintf("k%04d", i)] = fmt.Sprintf("value %d", i)
	}
	cur := bulkTransferRows(t, g, cursor{}, rows, true, true)
	path := c.bulkPath(genPrefix(g.base, cur.Gen))
	good, err := os.ReadFile(path)
	must(t, err)
	load := func() (map[string]string, error) {
		tree, _, err := c.loadResident(g.base, cur)
		if err != nil {
			return nil, err
		}
		got := map[string]string{}
		tree.Scan(func(r resRow) bool { got[string(r.key())] = string(r.value()); return true })
		return got, nil
	}
	if got, err := load(); err != nil || !maps.Equal(got, rows) {
		t.Fatalf("the intact file: %d rows, %v; want %d rows", len(got), err, len(rows))
	}
	flip := func(i int) []byte { b := bytes.Clone(good); b[i] ^= 0x10; return b }
	cases := []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"cut in the header", good[:5]},
		{"cut after a few rows", good[:len(bulkMagic)+40]},
		{"cut before the row count", good[:len(good)-12]},
		{"cut in the CRC", good[:len(good)-2]},
		{"a value byte changed", flip(len(good) / 2)},
		{"the row count changed", flip(len(good) - 5)},
		{"bytes added", append(bytes.Clone(good), 0)},
		{"not a rows file", append([]byte("something else"), good[len(bulkMagic):]...)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			must(t, os.WriteFile(path, tc.data, 0o644))
			if got, err := load(); err == nil {
				t.Fatalf("loaded %d rows from a damaged file", len(got))
			}
		})
	}
	must(t, os.Remove(path))
	if _, err := load(); err == nil {
		t.Fatal("loaded without the rows file")
	}
	if filepath.Dir(path) != filepath.Join(dir, bulkDir) {
		t.Fatalf("rows file %s outside %s", path, filepath.Join(dir, bulkDir))
	}
}

// A conversion to badger alone that stopped after its cursor, before the
// file's deletion, leaves a rows file no cursor names: the next load
// deletes it.
func TestBulkGen_LoadDeletesAConvertedFile(t *testing.T) {
	c := openComponent(t, "svc", "i1", t.TempDir(), "")
	defer mustClose(t, c)
	g := &genStore{c: c, base: replicaBase("svc", "t"), table: "t", log: testLogger(t), bulk: true}
	cur := bulkTransferRows(t, g, cursor{}, map[string]string{"a": "1"}, true, true)
	path := c.bulkPath(genPrefix(g.base, cur.Gen))
	cur.Bulk = false
	must(t, writeCursor(c.db, g.base, cur))
	if _, err := os.Stat(path); err != nil {
		t.Fatal(err)
	}
	got, err := g.load()
	must(t, err)
	if got != cur {
		t.Fatalf("loaded %+v, want %+v", got, cur)
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("rows file after the load: %v", err)
	}
}
