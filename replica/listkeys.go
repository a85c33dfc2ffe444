package replica

import (
	"context"
	"fmt"

	"github.com/dgraph-io/badger/v4"
	"github.com/replmesh/replmesh/transport"
)

var _ transport.KeysServer = (*replicationServer)(nil)

// Keys returns one page of an owned table's keys in key order, read in one
// read transaction (so at one seq). Only keys are read: the iteration
// never touches values. A page holds at most the request's limit of keys
// and about keysBudget bytes of them, whichever comes first, and at least
// one key when any remains.
func (s *replicationServer) Keys(ctx context.Context, req *transport.KeysRequest) (*transport.KeysResponse, error) {
	limit, err := req.Validate()
	if err != nil {
		return nil, err
	}
	t, err := s.readableTable(ctx, callKeys, req.Table, req.Service)
	if err != nil {
		return nil, err
	}
	budget := keysBudget(s.c.cfg.Transport)
	defer s.c.reads.leave()
	if s.c.reads.enter() != nil {
		return nil, fmt.Errorf("%w: owner is shutting down", transport.ErrUnavailable)
	}
	out := &transport.KeysResponse{Keys: [][]byte{}}
	err = t.rowView(func(txn *badger.Txn, m ownerMeta) error {
		out.Seq, out.LogID = m.Head, m.LogID
		o := badger.DefaultIteratorOptions
		o.PrefetchValues = false
		o.Prefix = concat(t.rowPrefix, req.Prefix)
		it := txn.NewIterator(o)
		defer it.Close()
		seek := o.Prefix
		if len(req.After) > 0 {
			// The first key after After is After followed by a zero byte.
			if after := concat(concat(t.rowPrefix, req.After), []byte{0}); string(after) > string(seek) {
				seek = after
			}
		}
		size := 0
		for it.Seek(seek); it.Valid(); it.Next() {
			k := it.Item().Key()[len(t.rowPrefix):]
			if len(out.Keys) == limit || len(out.Keys) > 0 && size+keyWireSize(k) > budget {
				out.More = true
				return nil
			}
			if len(out.Keys)%256 == 255 && ctx.Err() != nil {
				return ctx.Err()
			}
			out.Keys = append(out.Keys, append([]byte(nil), k...))
			size += keyWireSize(k)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("keys %s: %w", t.name, err)
	}
	return out, nil
}

// readableTable returns the owned table named table if the caller of ctx,
// naming service, may read it (the access check of every unary read; see
// authz.go).
func (s *replicationServer) readableTable(ctx context.Context, call, table, service string) (*OwnedTable, error) {
	t, err := s.c.ownedTable(table)
	if err != nil {
		return nil, err
	}
	if _, err := s.c.authorize(ctx, call, t, service, "", false); err != nil {
		return nil, err
	}
	return t, nil
}

// keysBudget is the key bytes one Keys page may carry: MaxKeysBytes, or
// less when the transport's messages are smaller.
func keysBudget(o transport.Options) int { return min(transport.MaxKeysBytes, o.ChunkBudget()) }

// keyWireSize is a key's size in a KeysResponse: the bytes and their
// msgpack header (at most 5 bytes).
func keyWireSize(k []byte) int { return len(k) + 5 }
