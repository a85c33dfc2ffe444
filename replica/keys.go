package replica

import (
	"encoding/binary"
	"fmt"

	"github.com/replmesh/replmesh/transport"
)

// Badger key layout. Table and service names never contain '/', so the
// prefixes below cannot collide.
//
//	o/<table>/m                owned table meta (ownerMeta, msgpack)
//	o/<table>/r/<key>          owned row: kind, 8-byte seq, the value if
//	                           inline (ownerstore.go: encodeRefRow,
//	                           encodeInlineRow)
//	o/<table>/g/<seq:8 BE>     change log group: the log entries of a
//	                           commit group (or a piece of one), keyed by
//	                           the seq of its last one (ownlog.go)
//	o/<table>/l/<seq:8 BE>     change log entry of owner format 1, which
//	                           Own migrates to groups (migrateLog)
//	o/<table>/k/<key>          keep index: 8-byte seq of the key's entry
//	                           kept below First (ownerstore.go: retire)
//	c/<svc>/<table>/cur        replica cursor (cursor, msgpack)
//	c/<svc>/<table>/stage      generation of an unfinished full transfer
//	c/<svc>/<table>/g/<gen:8 BE>/<key>   replica row of one generation
//	c/<svc>/<table>/w/<gen:8 BE>/<seq:8 BE>   write-ahead log entry of a
//	                           bulk generation: changes of an applied
//	                           batch, the last at seq (wal.go:
//	                           appendWALBatch)
//	c/<svc>/<table>/ckpt       checkpoint of the live bulk generation:
//	                           gen (8 BE), seq (8 BE) (wal.go)
//	x/drop/<prefix>            every key under <prefix> waits to be deleted
//	                           (dropMarker, generations.go); <prefix> is a
//	                           replaced or abandoned replica generation,
//	                           c/<svc>/<table>/g/<gen:8 BE>/

func ownMetaKey(table string) []byte   { return []byte("o/" + table + "/m") }
func ownRowPrefix(table string) []byte { return []byte("o/" + table + "/r/") }
func ownLogPrefix(table string) []byte { return []byte("o/" + table + "/g/") }

// ownLegacyLogPrefix is the prefix of the log entries of owner format 1
// and before: one badger entry per change.
func ownLegacyLogPrefix(table string) []byte { return []byte("o/" + table + "/l/") }

func ownKeepPrefix(table string) []byte { return []byte("o/" + table + "/k/") }

func ownLogKey(prefix []byte, seq uint64) []byte {
	k := make([]byte, len(prefix)+8)
	copy(k, prefix)
	binary.BigEndian.PutUint64(k[len(prefix):], seq)
	return k
}

func replicaBase(service, table string) string { return "c/" + service + "/" + table + "/" }
func cursorKey(base string) []byte             { return []byte(base + "cur") }
func stageKey(base string) []byte              { return []byte(base + "stage") }

func genPrefix(base string, gen uint64) []byte { return numberedPrefix(base, "g/", gen) }

// numberedPrefix is base, kind, gen (8 BE), '/'.
func numberedPrefix(base, kind string, gen uint64) []byte {
	p := make([]byte, len(base)+len(kind)+8+1)
	n := copy(p, base)
	n += copy(p[n:], kind)
	binary.BigEndian.PutUint64(p[n:], gen)
	p[n+8] = '/'
	return p
}

// The key of a bulk generation's checkpoint record (wal.go).

func ckptKey(base string) []byte { return []byte(base + "ckpt") }

// dropMarkers is the prefix of the drop markers.
const dropMarkers = "x/drop/"

// dropMarker is the key that schedules the deletion of every key under
// prefix (an abandoned or replaced replica generation).
func dropMarker(prefix []byte) []byte { return concat([]byte(dropMarkers), prefix) }

func concat(a, b []byte) []byte {
	k := make([]byte, len(a)+len(b))
	copy(k, a)
	copy(k[len(a):], b)
	return k
}

// Log entries: op (1), txnEnd (1), time (8, BE), epoch (8, BE), key length
// (uvarint), key, value. logEntrySize is the size of c's log entry, at
// most.
func logEntrySize(c *transport.Change) int {
	return 18 + binary.MaxVarintLen32 + len(c.Key) + len(c.Value)
}

// appendLogEntry appends c's log entry to b.
func appendLogEntry(b []byte, c *transport.Change) []byte {
	end := byte(0)
	if c.TxnEnd {
		end = 1
	}
	b = append(b, byte(c.Op), end)
	b = binary.BigEndian.AppendUint64(b, uint64(c.Time))
	b = binary.BigEndian.AppendUint64(b, c.Epoch)
	b = binary.AppendUvarint(b, uint64(len(c.Key)))
	b = append(b, c.Key...)
	return append(b, c.Value...)
}

func decodeLogEntry(seq uint64, b []byte) (transport.Change, error) {
	if len(b) < 19 {
		return transport.Change{}, fmt.Errorf("log entry %d: short (%d bytes)", seq, len(b))
	}
	c := transport.Change{Seq: seq, Op: transport.Op(b[0]), TxnEnd: b[1] == 1,
		Time: int64(binary.BigEndian.Uint64(b[2:10])), Epoch: binary.BigEndian.Uint64(b[10:18])}
	kl, n := binary.Uvarint(b[18:])
	if n <= 0 || uint64(len(b)-18-n) < kl {
		return transport.Change{}, fmt.Errorf("log entry %d: bad key length", seq)
	}
	rest := b[18+n:]
	c.Key = rest[:kl:kl]
	if v := rest[kl:]; len(v) > 0 || c.Op == transport.OpPut {
		c.Value = v
	}
	return c, nil
}
