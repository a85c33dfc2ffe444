package replica

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"

	"github.com/dgraph-io/badger/v4"
	"github.com/replmesh/replmesh/internal/diskguard"
	"github.com/replmesh/replmesh/transport"
	"github.com/vmihailenco/msgpack/v5"
)

func beUint64(b []byte) uint64 { return binary.BigEndian.Uint64(b) }

// kickDropper wakes the background deleter of replaced generations.
func (c *Component) kickDropper() {
	select {
	case c.dropKick <- struct{}{}:
	default:
	}
}

// dropLoop deletes the generations named by drop markers, in the background
// so a full transfer's switch never waits for the old copy's deletion.
func (c *Component) dropLoop() {
	defer c.wg.Done()
	for {
		select {
		case <-c.dropKick:
		case <-c.done():
			return
		}
		if err := c.dropMarked(); err != nil && c.ctx.Err() == nil {
			c.log.Error("delete replaced replica generation", "err", err)
		}
	}
}

func (c *Component) dropMarked() error {
	var prefixes [][]byte
	err := c.viewDB(func(txn *badger.Txn) error {
		o := badger.DefaultIteratorOptions
		o.Prefix = []byte(dropMarkers)
		o.PrefetchValues = false
		it := txn.NewIterator(o)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			prefixes = append(prefixes, it.Item().KeyCopy(nil)[len(dropMarkers):])
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, p := range prefixes {
		if err := c.deletePrefix(p); err != nil {
			return err
		}
		if err := c.removeBulk(p); err != nil {
			return err
		}
		if err := c.updateDB(func(txn *badger.Txn) error { return txn.Delete(dropMarker(p)) }); err != nil {
			return err
		}
	}
	return nil
}

func (c *Component) deletePrefix(p []byte) error {
	for {
		var keys [][]byte
		err := c.viewDB(func(txn *badger.Txn) error {
			o := badger.DefaultIteratorOptions
			o.Prefix = p
			o.PrefetchValues = false
			it := txn.NewIterator(o)
			defer it.Close()
			for it.Rewind(); it.Valid() && len(keys) < 10000; it.Next() {
				keys = append(keys, it.Item().KeyCopy(nil))
			}
			return nil
		})
		if err != nil || len(keys) == 0 {
			return err
		}
		var cost diskguard.Cost
		for _, k := range keys {
			cost.Add(len(k), 0, 1)
		}
		if err := c.disk.Admit(cost); err != nil {
			return err // the marker stays: retried when space is back
		}
		err = c.useDB(func(db *badger.DB) error {
			wb := db.NewWriteBatch()
			for _, k := range keys {
				if err := wb.Delete(k); err != nil {
					wb.Cancel()
					return err
				}
			}
			return wb.Flush()
		})
		if err != nil {
			return err
		}
		if c.ctx.Err() != nil {
			return c.ctx.Err()
		}
	}
}

// readCursor returns the cursor stored in txn (zero: none, no copy yet).
func readCursor(txn *badger.Txn, base string) (cursor, error) {
	var cur cursor
	item, err := txn.Get(cursorKey(base))
	switch {
	case errors.Is(err, badger.ErrKeyNotFound):
	case err != nil:
		return cur, err
	default:
		if err := item.Value(func(v []byte) error { return msgpack.Unmarshal(v, &cur) }); err != nil {
			return cur, fmt.Errorf("decode cursor: %w", err)
		}
	}
	return cur, nil
}

// readStage returns the generation of an unfinished transfer (0: none).
func readStage(txn *badger.Txn, base string) (uint64, error) {
	item, err := txn.Get(stageKey(base))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	var g uint64
	err = item.Value(func(v []byte) error {
		if len(v) != 8 {
			return fmt.Errorf("stage marker of %d bytes", len(v))
		}
		g = beUint64(v)
		return nil
	})
	return g, err
}

// genStore is the sink of a consumer's replica: rows in generations (see
// keys.go), the cursor naming the live one. A full transfer writes a fresh
// generation and switches the cursor to it in one transaction; the old one
// is deleted in the background (dropLoop).
type genStore struct {
	c     *Component
	base  string // the replica's key prefix (replicaBase)
	table string
	log   *slog.Logger
	// bulk: the replica is resident (it reads memory only), so a full
	// transfer writes a bulk generation (bulkgen.go); else the rows go
	// through a WriteBatch into badger, which serves its reads.
	bulk bool
	// mu guards wal, which the stream goroutine and a checkpoint share.
	mu  sync.Mutex
	wal walState
	// dmu orders a disk-only replica's reads with its switches: file is
	// the open rows file of its live generation when that is bulk
	// (diskbulk.go), nil otherwise; fileClosed: the replica stopped
	// with one open.
	dmu        sync.RWMutex
	file       *bulkFile
	fileClosed bool
	blockBytes int64 // the sparse index's block size (0: sparseBlock; tests)
}

// diskBulk says whether the replica's full transfers write a bulk
// generation although it is not resident: a DiskOnly replica with a data
// dir (diskbulk.go).
func (g *genStore) diskBulk() bool { return !g.bulk && g.c.cfg.DataDir != "" }

func (g *genStore) standby() bool { return false }

// copies is 1 (a row per change), or 0 while the live generation is bulk:
// its WAL's records go to files of its own, which applyWAL admits with the
// disk guard itself.
func (g *genStore) copies() int {
	if g.wal.bulkLive && g.bulk {
		return 0
	}
	return 1 // a disk-only replica's bulk generation: an overlay row per change
}

// load reads the cursor. Its caller (Subscribe) holds Component.mu: a
// resident replica whose generation is in badger moves a small database
// to the full one here (residentNeedsFullDB).
func (g *genStore) load() (cursor, error) {
	var cur cursor
	err := g.c.updateDB(func(txn *badger.Txn) error {
		var err error
		if cur, err = readCursor(txn, g.base); err != nil {
			return err
		}
		stage, err := readStage(txn, g.base)
		if err != nil {
			return err
		}
		if stage > cur.Gen {
			if err := txn.Set(dropMarker(genPrefix(g.base, stage)), nil); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return cursor{}, err
	}
	if g.bulk && residentNeedsFullDB(cur) {
		if err := g.c.fullDBLocked(); err != nil {
			return cursor{}, err
		}
	}
	keep, keepGen := "", []byte(nil)
	if cur.Bulk {
		// The WAL's last record is the cursor (wal.go).
		if cur, err = g.loadWAL(cur); err != nil {
			return cursor{}, err
		}
		keep, keepGen = g.wal.path, genPrefix(g.base, cur.Gen)
	}
	if cur.Bulk && !g.bulk && len(g.wal.segs) == 0 && g.wal.path == g.c.bulkPath(keepGen) {
		// DiskOnly: its transfer's file, changes in the overlay alone
		// (diskbulk.go).
		f, err := openBulkFile(g.wal.path, cur.Gen, keepGen, g.newIndex())
		if err != nil {
			return cursor{}, fmt.Errorf("open the rows file: %w", err)
		}
		g.dmu.Lock()
		g.setFileLocked(f)
		g.dmu.Unlock()
	} else if cur.Bulk && !g.bulk {
		// Subscribed DiskOnly now, a resident replica's generation (a
		// WAL or a checkpoint): reads go to badger, which must hold every
		// row.
		if cur, err = g.convertBulk(cur); err != nil {
			return cursor{}, fmt.Errorf("convert a resident replica's rows file for a disk-only subscription: %w", err)
		}
		keep, keepGen = "", nil
	}
	g.wal.bulkLive = cur.Bulk
	// Rows files no cursor or checkpoint names: a checkpoint's that a
	// crash left unrecorded or replaced, or (data dirs of older versions)
	// a converted generation's; WAL segments of a generation not live.
	if err := g.sweepFiles(keep, keepGen); err != nil {
		return cursor{}, err
	}
	if cur.LogID != "" {
		g.log.Info("replica loaded", "log_id", cur.LogID, "seq", cur.Seq, "epoch", cur.Epoch)
	}
	g.c.kickDropper()
	return cur, nil
}

// beginTransfer records the fresh generation as the stage (scheduling an
// abandoned earlier stage for deletion) before any of its rows is written.
func (g *genStore) beginTransfer(st *transport.Start, begin *transport.OwnerFrame, cur cursor) (stagedTransfer, error) {
	var gen uint64
	err := g.c.updateDB(func(txn *badger.Txn) error {
		stage, err := readStage(txn, g.base)
		if err != nil {
			return err
		}
		gen = max(stage, cur.Gen) + 1
		if stage > 0 && stage != cur.Gen {
			if err := txn.Set(dropMarker(genPrefix(g.base, stage)), nil); err != nil {
				return err
			}
		}
		return txn.Set(stageKey(g.base), binary.BigEndian.AppendUint64(nil, gen))
	})
	if err != nil {
		return nil, fmt.Errorf("stage transfer: %w", err)
	}
	g.c.kickDropper()
	g.log.Info("full transfer begins", "seq", begin.Seq, "log_id", st.LogID, "gen", gen, "rows_expected", begin.Count, "bulk", g.bulk || g.diskBulk())
	if g.bulk || g.diskBulk() {
		return newBulkTransfer(g, gen)
	}
	// Not bulk: a DiskOnly replica's without a data dir, on the full
	// database (no gate).
	return &genTransfer{g: g, gen: gen, prefix: genPrefix(g.base, gen), wb: g.c.db.NewWriteBatch()}, nil
}

// genTransfer is a full transfer into a fresh generation.
type genTransfer struct {
	g      *genStore
	gen    uint64
	prefix []byte
	wb     *badger.WriteBatch
	// keys is where the staged keys (prefix + key) are built, one
	// allocation for many: the WriteBatch keeps them until it commits,
	// so a full chunk is left to it and a new one begun.
	keys []byte
}

// keyChunk is the size of genTransfer's key chunks.
const keyChunk = 32 << 10

func (x *genTransfer) put(key, value []byte) error {
	n := len(x.prefix) + len(key)
	if cap(x.keys)-len(x.keys) < n {
		x.keys = make([]byte, 0, max(keyChunk, n))
	}
	start := len(x.keys)
	x.keys = append(append(x.keys, x.prefix...), key...)
	return x.wb.Set(x.keys[start:len(x.keys):len(x.keys)], value)
}

func (x *genTransfer) abort() { x.wb.Cancel() }

func (x *genTransfer) finish(next cursor) (cursor, error) {
	if err := x.wb.Flush(); err != nil {
		return cursor{}, fmt.Errorf("stage rows: %w", err)
	}
	next.Gen = x.gen
	return next, nil
}

func (x *genTransfer) switchIn(old, next cursor) error { return x.g.switchIn(old, next) }

// writeCursor stores cur as the cursor of the replica at base.
func writeCursor(db *badger.DB, base string, cur cursor) error {
	b, err := msgpack.Marshal(&cur)
	if err != nil {
		return err
	}
	return db.Update(func(txn *badger.Txn) error { return txn.Set(cursorKey(base), b) })
}

func marshalCursor(cur cursor) ([]byte, error) { return msgpack.Marshal(&cur) }

// switchIn writes the new cursor, ends the staging and schedules the old
// generation (its rows, files and WAL) for deletion, in one transaction;
// the checkpoint record, which names the old generation, goes with it. A
// checkpoint of the old generation under way then records nothing
// (genStore.mu orders it with the switch).
func (g *genStore) switchIn(old, next cursor) error { return g.switchInFile(old, next, nil) }

// switchInFile is switchIn installing f (nil: none), the rows file of a
// disk-only replica's new bulk generation, with the commit: a reader
// sees both or neither. It takes f over, even on an error.
func (g *genStore) switchInFile(old, next cursor, f *bulkFile) error {
	var size int64
	if next.Bulk {
		st, err := os.Stat(g.c.bulkPath(genPrefix(g.base, next.Gen)))
		if err != nil {
			return err
		}
		size = st.Size()
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.dmu.Lock()
	err := g.c.updateDB(func(txn *badger.Txn) error {
		b, err := marshalCursor(next)
		if err != nil {
			return err
		}
		if err := txn.Set(cursorKey(g.base), b); err != nil {
			return err
		}
		if err := txn.Delete(stageKey(g.base)); err != nil {
			return err
		}
		if old.Gen != next.Gen {
			if err := txn.Delete(ckptKey(g.base)); err != nil {
				return err
			}
			// Its rows, files and WAL segments (removeBulk).
			return txn.Set(dropMarker(genPrefix(g.base, old.Gen)), nil)
		}
		return nil
	})
	if err != nil {
		g.dmu.Unlock()
		if f != nil {
			f.release()
		}
		return err
	}
	g.setFileLocked(f)
	g.dmu.Unlock()
	// The old generation's open segment: the dropper deletes it; the new
	// generation's first record starts a segment of its own.
	if g.wal.f != nil {
		_ = g.wal.f.Close()
		g.wal.f = nil
	}
	g.wal.gen, g.wal.path, g.wal.fileBytes, g.wal.bytes, g.wal.entries, g.wal.retryAt = next.Gen, "", size, 0, nil, 0
	g.wal.segs, g.wal.last, g.wal.bulkLive = nil, next.Seq, next.Bulk
	if next.Bulk {
		g.wal.path = g.c.bulkPath(genPrefix(g.base, next.Gen))
	}
	return nil
}

// apply writes the changes into the cursor's generation and the cursor: a
// bulk generation's as one WAL record (wal.go), another's as a row per
// change with the cursor, in one transaction.
func (g *genStore) apply(next cursor, chs []transport.Change) error {
	if next.Bulk && g.bulk {
		return g.applyWAL(next, chs)
	}
	// A DiskOnly replica's, or a resident one's whose generation is in
	// badger; either runs on the full database. A disk-only replica's
	// bulk generation takes the rows as its overlay (diskbulk.go): a
	// delete is a tombstone there, since the rows file may hold the key.
	prefix := genPrefix(g.base, next.Gen)
	txn := g.c.db.NewTransaction(true)
	defer txn.Discard()
	for i := range chs {
		ch := &chs[i]
		var err error
		switch {
		case ch.Op == transport.OpDelete && next.Bulk:
			err = txn.SetEntry(badger.NewEntry(concat(prefix, ch.Key), nil).WithMeta(metaTombstone))
		case ch.Op == transport.OpDelete:
			err = txn.Delete(concat(prefix, ch.Key))
		default:
			err = txn.Set(concat(prefix, ch.Key), ch.Value)
		}
		if err != nil {
			return fmt.Errorf("apply %s: %w", g.table, err)
		}
	}
	b, err := marshalCursor(next)
	if err != nil {
		return err
	}
	if err := txn.Set(cursorKey(g.base), b); err != nil {
		return fmt.Errorf("apply %s: %w", g.table, err)
	}
	if err := txn.Commit(); err != nil {
		return fmt.Errorf("apply %s: %w", g.table, err)
	}
	return nil
}
