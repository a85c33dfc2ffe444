package replica

import (
	"bytes"
	"fmt"

	"github.com/dgraph-io/badger/v4"
	"github.com/replmesh/replmesh/transport"
	"github.com/vmihailenco/msgpack/v5"
)

// Get reads the table's current value of key.
func (t *OwnedTable) Get(key []byte) ([]byte, bool, error) {
	defer t.c.reads.leave()
	if err := t.c.reads.enter(); err != nil {
		return nil, false, err
	}
	var out []byte
	found := false
	err := t.rowView(func(txn *badger.Txn, _ ownerMeta) error {
		var err error
		out, found, err = t.getRow(txn, key)
		return err
	})
	if err != nil {
		return nil, false, fmt.Errorf("get %s: %w", t.name, err)
	}
	return out, found, nil
}

// Scan calls fn for every row whose key starts with prefix, in key order, at
// one consistent seq (returned). fn must not retain key or value; returning
// false stops the scan.
func (t *OwnedTable) Scan(prefix []byte, fn func(key, value []byte) bool) (uint64, error) {
	defer t.c.reads.leave()
	if err := t.c.reads.enter(); err != nil {
		return 0, err
	}
	var seq uint64
	err := t.rowView(func(txn *badger.Txn, m ownerMeta) error {
		seq = m.Head
		return t.scanValues(txn, prefix, nil, nil, func(k, v []byte) (bool, error) {
			return fn(k, v), nil
		})
	})
	if err != nil {
		return 0, fmt.Errorf("scan %s: %w", t.name, err)
	}
	return seq, nil
}

func (t *OwnedTable) readMeta(txn *badger.Txn) (ownerMeta, error) {
	var m ownerMeta
	item, err := txn.Get(t.metaKey)
	if err != nil {
		return m, fmt.Errorf("read meta: %w", err)
	}
	if err := item.Value(func(v []byte) error { return msgpack.Unmarshal(v, &m) }); err != nil {
		return m, err
	}
	if m.Restoring {
		// The durable meta says so before a restore touches a row and
		// until its last row is written: a read transaction that sees it
		// unset sees no partial table.
		return m, t.errRestoring()
	}
	return m, nil
}

// Digest hashes the rows with start <= key < end (nil end: no bound) at the
// table's current seq.
func (t *OwnedTable) Digest(start, end []byte) (transport.DigestResponse, error) {
	defer t.c.reads.leave()
	if err := t.c.reads.enter(); err != nil {
		return transport.DigestResponse{}, err
	}
	var out transport.DigestResponse
	err := t.rowView(func(txn *badger.Txn, m ownerMeta) error {
		d := newDigester()
		err := t.scanValues(txn, nil, start, end, func(k, v []byte) (bool, error) {
			d.add(k, v)
			return true, nil
		})
		out = d.result(m.LogID, m.Head)
		return err
	})
	if err != nil {
		return out, fmt.Errorf("digest %s: %w", t.name, err)
	}
	return out, nil
}

// scanRows iterates, in key order, the keys under base that start with
// prefix and lie in [start, end) (nil end: no upper bound); fn gets the key
// without base. fn must not retain k or v.
func scanRows(txn *badger.Txn, base, prefix, start, end []byte, fn func(k, v []byte) (bool, error)) error {
	o := badger.DefaultIteratorOptions
	o.Prefix = concat(base, prefix)
	o.PrefetchValues = false
	it := txn.NewIterator(o)
	defer it.Close()
	seek := prefix
	if bytes.Compare(start, prefix) > 0 {
		seek = start
	}
	for it.Seek(concat(base, seek)); it.Valid(); it.Next() {
		item := it.Item()
		k := item.Key()[len(base):]
		if end != nil && bytes.Compare(k, end) >= 0 {
			return nil
		}
		var cont bool
		err := item.Value(func(v []byte) error {
			var err error
			cont, err = fn(k, v)
			return err
		})
		if err != nil || !cont {
			return err
		}
	}
	return nil
}
