package replica

import (
	"crypto/sha256"
	"encoding/binary"
	"hash"

	"github.com/replmesh/replmesh/transport"
)

// digester hashes rows in key order: for each row, the key's length
// (uvarint), the key, the value's length (uvarint), the value. Owner and
// replica feed it the same rows in the same order, so equal tables give
// equal hashes.
type digester struct {
	h    hash.Hash
	n    uint64
	lbuf [binary.MaxVarintLen64]byte
}

func newDigester() *digester { return &digester{h: sha256.New()} }

func (d *digester) add(k, v []byte) {
	d.h.Write(d.lbuf[:binary.PutUvarint(d.lbuf[:], uint64(len(k)))])
	d.h.Write(k)
	d.h.Write(d.lbuf[:binary.PutUvarint(d.lbuf[:], uint64(len(v)))])
	d.h.Write(v)
	d.n++
}

func (d *digester) result(logID string, seq uint64) transport.DigestResponse {
	return transport.DigestResponse{LogID: logID, Seq: seq, Rows: d.n, Hash: d.h.Sum(nil)}
}
