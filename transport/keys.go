package transport

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Bounds of one Keys page. A listing of a large table is a sequence of
// pages, each a small unary call, so no message comes near the message
// size limit.
const (
	// DefaultKeysPage is the number of keys an owner returns when a
	// KeysRequest gives no Limit.
	DefaultKeysPage = 1000
	// MaxKeysPage bounds KeysRequest.Limit; an owner returns at most this
	// many keys per page whatever is asked.
	MaxKeysPage = 10000
	// MaxKeysBytes bounds the key bytes of one page (at least one key is
	// always returned: a key is at most MaxKeySize). With the per-key
	// framing it stays far below DefaultMaxMessageSize.
	MaxKeysBytes = 1 << 20
)

// ErrUnimplemented: the peer does not serve the method called (an older
// build). It travels as codes.Unimplemented.
var ErrUnimplemented = errors.New("not implemented by the peer")

// KeysRequest asks an owner for one page of a table's keys, in key order:
// the keys that begin with Prefix and sort after After (all of them when
// After is empty), at most Limit of them. The next page asks again with
// After set to the last key received.
type KeysRequest struct {
	Version uint32 `msgpack:"v"`
	Table   string `msgpack:"t"`
	Prefix  []byte `msgpack:"p,omitempty"`
	After   []byte `msgpack:"a,omitempty"`
	Limit   uint32 `msgpack:"n,omitempty"`   // 0: DefaultKeysPage; above MaxKeysPage: MaxKeysPage
	Service string `msgpack:"svc,omitempty"` // the caller's service name, for the table's access check
}

// KeysResponse answers KeysRequest: the keys of one page, all read in one
// read transaction at Seq. Pages of one listing may be read at different
// seqs (writes go on between them).
type KeysResponse struct {
	LogID string   `msgpack:"log"`
	Seq   uint64   `msgpack:"s"`
	Keys  [][]byte `msgpack:"keys"`
	// More: keys under Prefix remain after the last one returned.
	More bool `msgpack:"more,omitempty"`
}

// Validate checks a KeysRequest received from a peer and returns the
// number of keys to return at most.
func (r *KeysRequest) Validate() (limit int, err error) {
	if err := CheckVersion(r.Version); err != nil {
		return 0, err
	}
	if r.Table == "" {
		return 0, fmt.Errorf("%w: keys: empty table name", ErrBadRequest)
	}
	if len(r.Prefix) > MaxKeySize || len(r.After) > MaxKeySize {
		return 0, fmt.Errorf("%w: keys: prefix or start key over %d bytes", ErrTooLarge, MaxKeySize)
	}
	switch {
	case r.Limit == 0:
		return DefaultKeysPage, nil
	case r.Limit > MaxKeysPage:
		return MaxKeysPage, nil
	}
	return int(r.Limit), nil
}

// KeysServer is implemented by a ReplicationServer that lists keys. It is
// a separate interface so that servers written before Keys existed still
// register; a server without it answers Keys with ErrUnimplemented.
type KeysServer interface {
	// Keys returns one page of a table's keys at the owner's current seq.
	Keys(context.Context, *KeysRequest) (*KeysResponse, error)
}

func keysHandler(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
	in := new(KeysRequest)
	if err := decodeRequest(dec, in); err != nil {
		return nil, StatusError(err)
	}
	ks, ok := srv.(KeysServer)
	if !ok {
		return nil, status.Error(codes.Unimplemented, "this owner does not list keys")
	}
	out, err := ks.Keys(ctx, in)
	return out, StatusError(err)
}

// Keys asks the owner for one page of a table's keys. An owner of an older
// build answers ErrUnimplemented.
func (c *ReplicationClient) Keys(ctx context.Context, in *KeysRequest, opts ...grpc.CallOption) (*KeysResponse, error) {
	out := new(KeysResponse)
	if err := c.cc.Invoke(ctx, "/"+ReplicationServiceName+"/Keys", in, out, opts...); err != nil {
		if status.Code(err) == codes.Unimplemented {
			return nil, fmt.Errorf("%w: %s", ErrUnimplemented, status.Convert(err).Message())
		}
		return nil, FromStatus(err)
	}
	return out, nil
}
