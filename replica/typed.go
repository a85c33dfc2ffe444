package replica

import (
	"context"
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
)

// Reader is the read side shared by an owned table and a replica.
type Reader interface {
	Get(key []byte) ([]byte, bool, error)
	Scan(prefix []byte, fn func(key, value []byte) bool) (uint64, error)
}

var (
	_ Reader = (*OwnedTable)(nil)
	_ Reader = (*Replica)(nil)
)

// Table is a typed view of a table whose values are msgpack-encoded V:
// a Go value in, the same Go value out. Over an OwnedTable it reads and
// writes; over a Replica it reads, and writes fail with ErrReadOnly.
type Table[V any] struct {
	r Reader
	w *OwnedTable
}

// Typed returns the typed view of r (an *OwnedTable or a *Replica).
func Typed[V any](r Reader) *Table[V] {
	t := &Table[V]{r: r}
	if o, ok := r.(*OwnedTable); ok {
		t.w = o
	}
	return t
}

// sharedGetter is a Reader that can hand out its stored value without a
// copy (Replica.GetShared).
type sharedGetter interface {
	GetShared(key []byte) ([]byte, bool, error)
}

// Get decodes the value of key; found is false when there is none.
func (t *Table[V]) Get(key string) (v V, found bool, err error) {
	get := t.r.Get
	if sg, ok := t.r.(sharedGetter); ok {
		get = sg.GetShared // the decoder copies what it keeps
	}
	b, found, err := get([]byte(key))
	if err != nil || !found {
		return v, found, err
	}
	if err := msgpack.Unmarshal(b, &v); err != nil {
		return v, true, fmt.Errorf("decode %q: %w", key, err)
	}
	return v, true, nil
}

// Scan calls fn with every decoded row whose key starts with prefix, at one
// seq (returned); false from fn stops the scan.
func (t *Table[V]) Scan(prefix string, fn func(key string, v V) bool) (uint64, error) {
	var derr error
	seq, err := t.r.Scan([]byte(prefix), func(k, b []byte) bool {
		var v V
		if err := msgpack.Unmarshal(b, &v); err != nil {
			derr = fmt.Errorf("decode %q: %w", k, err)
			return false
		}
		return fn(string(k), v)
	})
	if err == nil {
		err = derr
	}
	return seq, err
}

// Put encodes v and writes it under key, returning the commit's seq.
func (t *Table[V]) Put(ctx context.Context, key string, v V) (uint64, error) {
	if t.w == nil {
		return 0, ErrReadOnly
	}
	b, err := msgpack.Marshal(&v)
	if err != nil {
		return 0, fmt.Errorf("encode %q: %w", key, err)
	}
	return t.w.Put(ctx, []byte(key), b)
}

// Delete removes key, returning the commit's seq.
func (t *Table[V]) Delete(ctx context.Context, key string) (uint64, error) {
	if t.w == nil {
		return 0, ErrReadOnly
	}
	return t.w.Delete(ctx, []byte(key))
}
