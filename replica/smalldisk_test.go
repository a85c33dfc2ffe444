package replica

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// The sizing decision a durable resident replica's stored cursor makes: a
// generation in badger (a DiskOnly replica's) needs the full database, a
// bulk one (rows file and WAL) or none does not.
func TestResidentNeedsFullDB(t *testing.T) {
	tests := []struct {
		name string
		cur  cursor
		want bool
	}{
		{"no copy yet", cursor{}, false},
		{"bulk generation", cursor{LogID: "l", Seq: 9, Gen: 2, Bulk: true}, false},
		{"generation in badger", cursor{LogID: "l", Seq: 9, Gen: 2}, true},
		{"empty generation in badger", cursor{LogID: "l", Gen: 1}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := residentNeedsFullDB(tt.cur); got != tt.want {
				t.Errorf("residentNeedsFullDB(%+v) = %v, want %v", tt.cur, got, tt.want)
			}
		})
	}
}

const smallDiskTables = 3

// smallDiskOwner is an owner with smallDiskTables tables, each holding a
// few rows, and a writer that keeps changing them until stopped.
type smallDiskOwner struct {
	c      *Component
	tables []*OwnedTable
	stop   chan struct{}
	wg     sync.WaitGroup
	errs   chan error
}

func newSmallDiskOwner(t *testing.T) *smallDiskOwner {
	t.Helper()
	o := &smallDiskOwner{c: openWith(t, itOwner, "o1", t.TempDir(), "127.0.0.1:0", nil), errs: make(chan error, smallDiskTables)}
	t.Cleanup(func() { mustClose(t, o.c) })
	ctx := ctxT(t, time.Minute)
	for i := range smallDiskTables {
		tbl, err := o.c.Own(fmt.Sprintf("t%d", i))
		if err != nil {
			t.Fatal(err)
		}
		for k := range 50 {
			if _, err := tbl.Put(ctx, fmt.Appendf(nil, "k%03d", k), fmt.Appendf(nil, "v0-%s", pad)); err != nil {
				t.Fatal(err)
			}
		}
		o.tables = append(o.tables, tbl)
	}
	return o
}

// write starts a writer per table, changing its rows until stopWriting.
func (o *smallDiskOwner) write(ctx context.Context) {
	o.stop = make(chan struct{})
	for _, tbl := range o.tables {
		o.wg.Add(1)
		go func() {
			defer o.wg.Done()
			for i := 0; ; i++ {
				select {
				case <-o.stop:
					return
				default:
				}
				if _, err := tbl.Put(ctx, fmt.Appendf(nil, "k%03d", i%200), fmt.Appendf(nil, "v%d-%s", i, pad)); err != nil {
					o.errs <- err
					return
				}
			}
		}()
	}
}

func (o *smallDiskOwner) stopWriting(t *testing.T) {
	t.Helper()
	close(o.stop)
	o.wg.Wait()
	select {
	case err := <-o.errs:
		t.Fatal(err)
	default:
	}
}

// ckptWatch counts the checkpoints recorded, and once armed holds the
// next checkpoint written (before its record) until released.
type ckptWatch struct {
	recorded atomic.Int64
	armed    atomic.Bool
	held     chan struct{} // receives when a checkpoint is held
	release  chan struct{}
}

func newCkptWatch() *ckptWatch {
	return &ckptWatch{held: make(chan struct{}, 1), release: make(chan struct{})}
}

func (w *ckptWatch) hook(step string) error {
	switch step {
	case "written":
		if w.armed.CompareAndSwap(true, false) {
			w.held <- struct{}{}
			<-w.release
		}
	case "recorded":
		w.recorded.Add(1)
	}
	return nil
}

// subscribeResident subscribes c to every table of o, resident, with
// checkpoints every 16 KiB of WAL watched by ckpts.
func (o *smallDiskOwner) subscribeResident(t *testing.T, c *Component, ckpts *ckptWatch) []*Replica {
	t.Helper()
	var reps []*Replica
	for _, tbl := range o.tables {
		r := newTestReplica(t, c, SubscribeOptions{Service: itOwner, Table: tbl.name, Addr: o.c.Addr()})
		g, ok := r.sink.(*genStore)
		if !ok || !g.bulk {
			t.Fatalf("replica %s: sink %T, want a bulk genStore", tbl.name, r.sink)
		}
		g.wal.min = 16 << 10
		g.wal.hook = ckpts.hook
		startTestReplica(t, r)
		reps = append(reps, r)
	}
	return reps
}

func (o *smallDiskOwner) converge(t *testing.T, reps []*Replica) {
	t.Helper()
	for i, r := range reps {
		mustConverge(t, o.tables[i], r)
	}
}

// onSmallDB reports whether c is still on its small database.
func onSmallDB(c *Component) bool { return !c.full.Load() }

func wantMemTable(t *testing.T, c *Component, want int64) {
	t.Helper()
	c.mu.Lock()
	got := c.db.Opts().MemTableSize
	c.mu.Unlock()
	if got != want {
		t.Fatalf("memtable %d, want %d", got, want)
	}
}

// A durable component that is not an owner instance starts on the small
// database and moves to the full one (closing and reopening its data dir)
// at the first Own or DiskOnly replica, while its resident replicas apply
// and checkpoint (the race detector watches every use of the database);
// what it held is there after the move and after a restart, which opens
// the data dir small again, unless it holds an owned table
// (holdsOwnedTables).
func TestComponent_SmallDiskMovesToFull(t *testing.T) {
	tests := []struct {
		name string
		// reopensFull: the restart opens the full database at once.
		reopensFull bool
		// move makes c need the full database; after checks what it
		// made, on the component opened again when reopened.
		move  func(t *testing.T, o *smallDiskOwner, c *Component)
		after func(t *testing.T, o *smallDiskOwner, c *Component, reopened bool)
	}{
		{"Own", true,
			func(t *testing.T, o *smallDiskOwner, c *Component) {
				tbl, err := c.Own("mine")
				if err != nil {
					t.Fatal(err)
				}
				if _, err := tbl.Put(ctxT(t, time.Minute), []byte("k"), []byte("v1")); err != nil {
					t.Fatal(err)
				}
			},
			func(t *testing.T, o *smallDiskOwner, c *Component, reopened bool) {
				tbl, err := c.Own("mine")
				if !reopened {
					// Still owned from move.
					c.mu.Lock()
					tbl, err = c.owned["mine"], nil
					c.mu.Unlock()
				}
				if err != nil {
					t.Fatal(err)
				}
				v, ok, err := tbl.Get([]byte("k"))
				if err != nil || !ok || string(v) != "v1" {
					t.Fatalf("owned row: %q, %v, %v; want v1", v, ok, err)
				}
			}},
		{"disk-only replica", false,
			func(t *testing.T, o *smallDiskOwner, c *Component) {
				o.extra(t)
				r, err := c.Subscribe(ctxT(t, time.Minute), SubscribeOptions{Service: itOwner, Table: "extra", Addr: o.c.Addr(), DiskOnly: true})
				if err != nil {
					t.Fatal(err)
				}
				mustConverge(t, o.extraTable(t), r)
			},
			func(t *testing.T, o *smallDiskOwner, c *Component, reopened bool) {
				r, err := c.replicaOf(itOwner, "extra")
				if reopened {
					r, err = c.Subscribe(ctxT(t, time.Minute), SubscribeOptions{Service: itOwner, Table: "extra", Addr: o.c.Addr(), DiskOnly: true})
				}
				if err != nil {
					t.Fatal(err)
				}
				if r.res != nil {
					t.Fatal("the disk-only replica is resident")
				}
				mustConverge(t, o.extraTable(t), r)
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := newSmallDiskOwner(t)
			dir := t.TempDir()
			c := openWith(t, "cons", "c1", dir, "", nil)
			closed := false
			t.Cleanup(func() {
				if !closed {
					mustClose(t, c)
				}
			})
			if !onSmallDB(c) {
				t.Fatal("a durable consumer opened on the full database")
			}
			wantMemTable(t, c, smallMemTable)
			ckpts := newCkptWatch()
			reps := o.subscribeResident(t, c, ckpts)
			o.converge(t, reps)

			ctx := ctxT(t, 2*time.Minute)
			o.write(ctx)
			waitUntil(t, time.Minute, "a checkpoint on the small database", func() bool { return ckpts.recorded.Load() > 0 })
			if !onSmallDB(c) {
				t.Fatal("resident replicas moved the component to the full database")
			}
			// A checkpoint, held before its record, goes on while the
			// component moves: nothing orders the two but the
			// component's own synchronization.
			ckpts.armed.Store(true)
			select {
			case <-ckpts.held:
			case <-ctx.Done():
				t.Fatal("no checkpoint held")
			}
			go close(ckpts.release)
			tt.move(t, o, c)
			if onSmallDB(c) {
				t.Fatal("still on the small database")
			}
			wantMemTable(t, c, c.cfg.memTable())
			before := ckpts.recorded.Load()
			waitUntil(t, time.Minute, "a checkpoint on the full database", func() bool { return ckpts.recorded.Load() > before })
			o.stopWriting(t)
			o.converge(t, reps)
			tt.after(t, o, c, false)

			// Restart: small again (full for an owner), every replica
			// loads what it held.
			mustClose(t, c)
			closed = true
			c = openWith(t, "cons", "c1", dir, "", nil)
			closed = false
			if onSmallDB(c) == tt.reopensFull {
				t.Fatalf("the reopened consumer on the small database: %v, want %v", onSmallDB(c), !tt.reopensFull)
			}
			reps = o.subscribeResident(t, c, newCkptWatch())
			o.converge(t, reps)
			tt.after(t, o, c, true)
			if onSmallDB(c) {
				t.Fatal("still on the small database after the move's call again")
			}
			o.write(ctx)
			o.stopWriting(t)
			o.converge(t, reps)
		})
	}
}

// A resident replica subscribed on a data dir where its table was a
// DiskOnly replica's loads its bulk generation (rows file and overlay,
// diskbulk.go) and stays on the small database: its applies go to its WAL,
// a 600 KiB owner transaction included, more than the small database's
// transactions take. (A generation in badger, one convertBulk left, moves
// it to the full database: TestResidentNeedsFullDB.)
func TestComponent_SmallDiskResidentOverDiskOnlyData(t *testing.T) {
	o := newSmallDiskOwner(t)
	dir := t.TempDir()
	c := openWith(t, "cons", "c1", dir, "", nil)
	opts := SubscribeOptions{Service: itOwner, Table: o.tables[0].name, Addr: o.c.Addr(), DiskOnly: true}
	r, err := c.Subscribe(ctxT(t, time.Minute), opts)
	if err != nil {
		mustClose(t, c)
		t.Fatal(err)
	}
	mustConverge(t, o.tables[0], r)
	if cur := replicaCursor(r); !cur.Bulk {
		t.Fatalf("the disk-only replica's cursor %+v: not a bulk generation", cur)
	}
	mustClose(t, c)

	c = openWith(t, "cons", "c1", dir, "", nil)
	defer mustClose(t, c)
	if !onSmallDB(c) {
		t.Fatal("the reopened consumer opened on the full database")
	}
	opts.DiskOnly = false
	if r, err = c.Subscribe(ctxT(t, time.Minute), opts); err != nil {
		t.Fatal(err)
	}
	if !onSmallDB(c) {
		t.Fatal("a resident replica over a disk-only replica's bulk generation moved the component to the full database")
	}
	if r.res == nil {
		t.Fatal("the replica is not resident")
	}
	// One owner transaction of 600 KiB: applied as one badger
	// transaction, more than the small database takes.
	ws := make([]Write, 600)
	for i := range ws {
		ws[i] = Write{Key: fmt.Appendf(nil, "k%03d", i), Value: fmt.Appendf(nil, "big-%s", pad)}
	}
	if _, err := o.tables[0].Apply(ctxT(t, time.Minute), ws...); err != nil {
		t.Fatal(err)
	}
	mustConverge(t, o.tables[0], r)
	if !onSmallDB(c) {
		t.Fatal("the large transaction moved the component to the full database")
	}
}

// extra is a fourth table of o, owned on first use.
func (o *smallDiskOwner) extra(t *testing.T) {
	t.Helper()
	tbl := o.extraTable(t)
	ctx := ctxT(t, time.Minute)
	for k := range 300 {
		if _, err := tbl.Put(ctx, fmt.Appendf(nil, "k%03d", k), fmt.Appendf(nil, "x-%s", pad)); err != nil {
			t.Fatal(err)
		}
	}
}

func (o *smallDiskOwner) extraTable(t *testing.T) *OwnedTable {
	t.Helper()
	o.c.mu.Lock()
	tbl := o.c.owned["extra"]
	o.c.mu.Unlock()
	if tbl != nil {
		return tbl
	}
	tbl, err := o.c.Own("extra")
	if err != nil {
		t.Fatal(err)
	}
	return tbl
}

// The memtable logs a data dir holds decide whether it can open small:
// badger replays them into memtables of the size it opens with.
func TestSmallReplayFits(t *testing.T) {
	tests := []struct {
		name string
		mem  map[string]int64 // *.mem files and their sizes
		want bool
	}{
		{"no data dir yet", nil, true},
		{"no memtable log", map[string]int64{"000001.vlog": 64 * mib}, true},
		{"the small database's log", map[string]int64{"00001.mem": 2 * smallMemTable}, true},
		{"the full database's log", map[string]int64{"00001.mem": 2 * smallMemTable, "00002.mem": 64 * mib}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "db")
			if tt.mem != nil {
				if err := os.Mkdir(dir, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			for name, size := range tt.mem {
				if err := os.WriteFile(filepath.Join(dir, name), nil, 0o644); err != nil {
					t.Fatal(err)
				}
				if err := os.Truncate(filepath.Join(dir, name), size); err != nil {
					t.Fatal(err)
				}
			}
			if got := smallReplayFits(dir); got != tt.want {
				t.Errorf("smallReplayFits = %v, want %v", got, tt.want)
			}
		})
	}
}

// A data dir the full database left unflushed (a crash: its memtable log
// holds more than a small memtable) opens full, and what the log held is
// there; once closed cleanly it opens small again.
func TestComponent_OpensFullOverAFullMemtableLog(t *testing.T) {
	cfg := LocalConfig("cons", "c1")
	cfg.DataDir, cfg.ListenAddr, cfg.Logger = t.TempDir(), "", testLogger(t)
	db, err := openDB(cfg, cfg.dbSizing(), cfg.Logger)
	if err != nil {
		t.Fatal(err)
	}
	// 4 MiB of small entries: in the memtable and its log only.
	val := make([]byte, 512)
	for b := range 64 {
		err := db.Update(func(txn *badger.Txn) error {
			for i := range 128 {
				if err := txn.Set(fmt.Appendf(nil, "x/probe/%03d/%03d", b, i), val); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// The crash: the files as they are now (the memtable log is mapped
	// shared, so its file holds every write), copied to another dir.
	crashed := filepath.Join(t.TempDir(), "db")
	copyDir(t, cfg.DataDir, crashed)
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if smallReplayFits(crashed) {
		t.Fatal("the crashed dir's memtable log fits a small memtable")
	}
	cfg.DataDir = crashed
	for _, wantSmall := range []bool{false, true} {
		c, err := Open(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if got := onSmallDB(c); got != wantSmall {
			mustClose(t, c)
			t.Fatalf("on the small database: %v, want %v", got, wantSmall)
		}
		n := 0
		err = c.viewDB(func(txn *badger.Txn) error {
			o := badger.DefaultIteratorOptions
			o.Prefix = []byte("x/probe/")
			it := txn.NewIterator(o)
			defer it.Close()
			for it.Rewind(); it.Valid(); it.Next() {
				n++
			}
			return nil
		})
		mustClose(t, c)
		if err != nil {
			t.Fatal(err)
		}
		if n != 64*128 {
			t.Fatalf("%d probe keys, want %d", n, 64*128)
		}
	}
}

// A data dir that holds an owned table opens on the full database at
// once: its owner restarting would Own the table right away, and the
// move from the small database (a close and a reopen) was a third of
// that Own. A dir that never held one opens small; the restarted owner's
// table keeps its history and rows.
func TestComponent_OwnerDirOpensFull(t *testing.T) {
	for _, owned := range []bool{false, true} {
		t.Run(fmt.Sprintf("owned=%v", owned), func(t *testing.T) {
			cfg := LocalConfig("own", "o1")
			cfg.DataDir, cfg.ListenAddr, cfg.Logger = t.TempDir(), "", testLogger(t)
			c, err := Open(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			if !onSmallDB(c) {
				mustClose(t, c)
				t.Fatal("a new data dir opened on the full database")
			}
			var head uint64
			var logID string
			if owned {
				tbl, err := c.Own("t")
				if err != nil {
					mustClose(t, c)
					t.Fatal(err)
				}
				if head, err = tbl.Apply(ctxT(t, time.Minute), Write{Key: []byte("k"), Value: []byte("v")}); err != nil {
					mustClose(t, c)
					t.Fatal(err)
				}
				logID = tbl.LogID()
			}
			mustClose(t, c)
			c, err = Open(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer mustClose(t, c)
			if got := onSmallDB(c); got != !owned {
				t.Fatalf("reopened on the small database: %v, want %v", got, !owned)
			}
			tbl, err := c.Own("t")
			if err != nil {
				t.Fatal(err)
			}
			if onSmallDB(c) {
				t.Fatal("owning did not move to the full database")
			}
			if !owned {
				return
			}
			if got := tbl.Head(); got != head || tbl.LogID() != logID {
				t.Fatalf("restarted owner at head %d of log %s, want %d of %s", got, tbl.LogID(), head, logID)
			}
			v, ok, err := tbl.Get([]byte("k"))
			if err != nil || !ok || string(v) != "v" {
				t.Fatalf("Get(k) = %q, %v, %v; want v", v, ok, err)
			}
		})
	}
}
