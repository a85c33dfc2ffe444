package replica

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

func beUint64(b []byte) uint64 { return binary.BigEndian.Uint64(b) }

// dropMarker is the key that schedules the deletion of every key under
// prefix (an abandoned or replaced replica generation).
func dropMarker(prefix []byte) []byte { return concat([]byte("x/drop/"), prefix) }

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
	err := c.db.View(func(txn *badger.Txn) error {
		o := badger.DefaultIteratorOptions
		o.Prefix = []byte("x/drop/")
		o.PrefetchValues = false
		it := txn.NewIterator(o)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			prefixes = append(prefixes, it.Item().KeyCopy(nil)[len("x/drop/"):])
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
		if err := c.db.Update(func(txn *badger.Txn) error { return txn.Delete(dropMarker(p)) }); err != nil {
			return err
		}
	}
	return nil
}

func (c *Component) deletePrefix(p []byte) error {
	for {
		var keys [][]byte
		err := c.db.View(func(txn *badger.Txn) error {
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
		var cost writeCost
		for _, k := range keys {
			cost.add(len(k), 0, 1)
		}
		if err := c.disk.admit(cost); err != nil {
			return err // the marker stays: retried when space is back
		}
		wb := c.db.NewWriteBatch()
		for _, k := range keys {
			if err := wb.Delete(k); err != nil {
				wb.Cancel()
				return err
			}
		}
		if err := wb.Flush(); err != nil {
			return err
		}
		if c.ctx.Err() != nil {
			return c.ctx.Err()
		}
	}
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
