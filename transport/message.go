package transport

import (
	"fmt"
	"unsafe"

	"github.com/vmihailenco/msgpack/v5"
)

// ProtocolVersion is the replication protocol spoken by this build. A peer
// sends it first on every stream and in every unary request.
const ProtocolVersion uint32 = 1

// MinProtocolVersion is the oldest protocol version this build still accepts.
const MinProtocolVersion uint32 = 1

// CheckVersion returns ErrProtocolVersion (wrapped, naming both versions)
// unless v is a version this build speaks.
func CheckVersion(v uint32) error {
	if v < MinProtocolVersion || v > ProtocolVersion {
		return fmt.Errorf("%w: peer speaks %d, this build speaks %d..%d",
			ErrProtocolVersion, v, MinProtocolVersion, ProtocolVersion)
	}
	return nil
}

// FrameKind says which message a frame on the Subscribe stream carries.
//
// ONLY APPEND TO THIS LIST: the numbers are on the wire.
type FrameKind uint8

// Frame kinds.
const (
	KindInvalid       FrameKind = iota // zero value, never sent
	KindOpen                           // consumer -> owner: first frame, carries Open
	KindStart                          // owner -> consumer: answer to Open, carries Start
	KindSnapshotBegin                  // owner -> consumer: full transfer at Seq begins
	KindRows                           // owner -> consumer: a chunk of snapshot rows
	KindSnapshotEnd                    // owner -> consumer: full transfer at Seq complete
	KindChanges                        // owner -> consumer: a batch of changes, in seq order
	KindHeartbeat                      // both ways: liveness and the owner's head seq
	KindAck                            // consumer -> owner: everything up to Seq is durable
	KindPull                           // consumer -> owner: send a coalesced delta (pull mode)
	KindMode                           // consumer -> owner: switch this subscription's mode
	KindDelta                          // owner -> consumer: a pull's coalesced delta up to Seq (apply atomically)
)

var kindNames = [...]string{"invalid", "open", "start", "snapshot-begin", "rows", "snapshot-end",
	"changes", "heartbeat", "ack", "pull", "mode", "delta"}

func (k FrameKind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Op is the operation of one change.
//
// ONLY APPEND TO THIS LIST: the numbers are on the wire.
type Op uint8

// Change operations.
const (
	OpInvalid Op = iota
	OpPut
	OpDelete
)

func (o Op) String() string {
	switch o {
	case OpPut:
		return "put"
	case OpDelete:
		return "delete"
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Mode names as they travel in Open and Mode frames (see package modes for
// the typed form).
const (
	ModePush = "push"
	ModePull = "pull"
)

// Open is the consumer's first frame on a Subscribe stream.
type Open struct {
	Version  uint32 `msgpack:"v"`
	Service  string `msgpack:"svc"`  // the consumer's service name
	Instance string `msgpack:"inst"` // the consumer's instance id
	Table    string `msgpack:"t"`
	LogID    string `msgpack:"log"` // empty: no replica yet
	Seq      uint64 `msgpack:"seq"` // last seq the consumer has durably applied
	Epoch    uint64 `msgpack:"ep"`
	Mode     string `msgpack:"mode"` // ModePush or ModePull; empty means push
	// Standby: the consumer is a standby instance of the owner's service
	// (its acks count towards min_sync_standbys, and it is sent changes
	// before they are confirmed on the standbys).
	Standby bool `msgpack:"sb,omitempty"`
}

// EpochStart records that epoch Epoch began at seq Seq in a table's log.
// An owner's list of them (oldest first, an EpochHistory) tells where each epoch ended, so a
// consumer that holds changes of an epoch beyond that end (written by a
// deposed primary and lost in a failover) is detected.
type EpochStart struct {
	Epoch uint64 `msgpack:"e"`
	Seq   uint64 `msgpack:"s"`
}

// Start is the owner's answer to Open. With Resume the changes after the
// consumer's seq follow; without, a full transfer follows.
type Start struct {
	Version  uint32 `msgpack:"v"`
	LogID    string `msgpack:"log"`
	Epoch    uint64 `msgpack:"ep"`
	HeadSeq  uint64 `msgpack:"head"`
	FirstSeq uint64 `msgpack:"first"` // oldest seq still in the owner's log
	Resume   bool   `msgpack:"resume"`
	// Epochs is the owner's epoch history (standbys copy it).
	Epochs EpochHistory `msgpack:"eps,omitempty"`
	// Mode is the owner's default mode for the table ("push", "pull",
	// "auto"; empty: push), the lowest level of the mode precedence.
	Mode string `msgpack:"mode,omitempty"`
}

// ConsumerFrame is every message a consumer sends on a Subscribe stream.
type ConsumerFrame struct {
	Kind FrameKind `msgpack:"k"`
	Open *Open     `msgpack:"o,omitempty"`  // KindOpen
	Seq  uint64    `msgpack:"s,omitempty"`  // KindAck: durable seq; KindHeartbeat: applied seq
	Mode string    `msgpack:"m,omitempty"`  // KindMode
	Rate float64   `msgpack:"rr,omitempty"` // KindHeartbeat: consumer read rate (reads/s)
}

// OwnerFrame is every message an owner sends on a Subscribe stream.
type OwnerFrame struct {
	Kind    FrameKind  `msgpack:"k"`
	Start   *Start     `msgpack:"st,omitempty"` // KindStart
	Seq     uint64     `msgpack:"s,omitempty"`  // KindSnapshotBegin/End: the snapshot's seq
	HeadSeq uint64     `msgpack:"h,omitempty"`  // every kind: the owner's head seq when sent
	Epoch   uint64     `msgpack:"ep,omitempty"` // KindChanges: the epoch the changes were written in
	Time    int64      `msgpack:"tm,omitempty"` // KindHeartbeat: owner clock, unix nanoseconds
	Rate    float64    `msgpack:"wr,omitempty"` // KindHeartbeat: owner write rate (changes/s)
	Rows    RowList    `msgpack:"r,omitempty"`  // KindRows
	Changes ChangeList `msgpack:"c,omitempty"`  // KindChanges
	// Count is, on KindSnapshotEnd, the number of rows the transfer sent:
	// a consumer that received another number (a frame lost or reordered
	// on the way) refuses the copy instead of serving it as complete. On
	// KindSnapshotBegin it is the number of rows the owner expects to send
	// (0 = unknown; an older owner), for progress reports only.
	Count uint64 `msgpack:"n,omitempty"`

	// encoded, when set, holds a KindChanges frame's changes already
	// encoded (EncodedChanges); Codec sends them instead of Changes.
	encoded *encodedChanges
}

// Row is one key and value of a snapshot.
type Row struct {
	Key   []byte
	Value []byte
}

// Change is one CRUD notification: the seq-th change of its table.
type Change struct {
	Seq    uint64
	Op     Op
	Key    []byte
	Value  []byte // nil for OpDelete
	Time   int64  // commit time, unix nanoseconds
	TxnEnd bool   // last change of its commit group (Apply)
	Epoch  uint64 // the owner epoch the change was written in
}

// Size is an estimate of the change's encoded size, used to bound batches.
func (c *Change) Size() int { return len(c.Key) + len(c.Value) + 32 }

// Size is an estimate of the row's encoded size, used to bound chunks.
func (r *Row) Size() int { return len(r.Key) + len(r.Value) + 8 }

// Rows and changes are the bulk of the traffic: they are encoded as compact
// arrays rather than maps.

var (
	_ msgpack.CustomEncoder = (*Change)(nil)
	_ msgpack.CustomDecoder = (*Change)(nil)
	_ msgpack.CustomEncoder = (*Row)(nil)
	_ msgpack.CustomDecoder = (*Row)(nil)
)

// EncodeMsgpack writes the change as a 7-element array.
func (c *Change) EncodeMsgpack(e *msgpack.Encoder) error {
	if err := e.EncodeArrayLen(7); err != nil {
		return err
	}
	if err := e.EncodeUint(c.Seq); err != nil {
		return err
	}
	if err := e.EncodeUint(uint64(c.Op)); err != nil {
		return err
	}
	if err := e.EncodeBytes(c.Key); err != nil {
		return err
	}
	if err := e.EncodeBytes(c.Value); err != nil {
		return err
	}
	if err := e.EncodeInt(c.Time); err != nil {
		return err
	}
	if err := e.EncodeBool(c.TxnEnd); err != nil {
		return err
	}
	return e.EncodeUint(c.Epoch)
}

// DecodeMsgpack reads the array written by EncodeMsgpack.
func (c *Change) DecodeMsgpack(d *msgpack.Decoder) error { return c.decode(d, false) }

// decode is DecodeMsgpack, the key and value shared with the message when
// shared (decodeBin).
func (c *Change) decode(d *msgpack.Decoder, shared bool) error {
	n, err := d.DecodeArrayLen()
	if err != nil {
		return err
	}
	if n != 7 {
		return fmt.Errorf("change: want 7 fields, got %d", n)
	}
	if c.Seq, err = d.DecodeUint64(); err != nil {
		return err
	}
	op, err := d.DecodeUint64()
	if err != nil {
		return err
	}
	if op > 255 {
		return fmt.Errorf("change: op %d out of range", op)
	}
	c.Op = Op(op)
	if c.Key, err = decodeBin(d, shared); err != nil {
		return err
	}
	if c.Value, err = decodeBin(d, shared); err != nil {
		return err
	}
	if c.Time, err = d.DecodeInt64(); err != nil {
		return err
	}
	if c.TxnEnd, err = d.DecodeBool(); err != nil {
		return err
	}
	c.Epoch, err = d.DecodeUint64()
	return err
}

// EncodeMsgpack writes the row as a 2-element array.
func (r *Row) EncodeMsgpack(e *msgpack.Encoder) error {
	if err := e.EncodeArrayLen(2); err != nil {
		return err
	}
	if err := e.EncodeBytes(r.Key); err != nil {
		return err
	}
	return e.EncodeBytes(r.Value)
}

// DecodeMsgpack reads the array written by EncodeMsgpack. The key and the
// value are one allocation (see decode, RowBytes).
func (r *Row) DecodeMsgpack(d *msgpack.Decoder) error {
	var scratch []byte
	return r.decode(d, &scratch)
}

// decode reads the array written by EncodeMsgpack into one allocation
// owned by the row: the key, then the value right after it, Key's
// capacity covering both (RowBytes). A receiver may keep the bytes (a
// resident replica keeps them as they are). The key is read into *scratch
// first (reused across a list's rows), since the value's length follows
// it on the wire.
func (r *Row) decode(d *msgpack.Decoder, scratch *[]byte) error {
	n, err := d.DecodeArrayLen()
	if err != nil {
		return err
	}
	if n != 2 {
		return fmt.Errorf("row: want 2 fields, got %d", n)
	}
	klen, err := d.DecodeBytesLen()
	if err != nil {
		return err
	}
	if klen > 0 {
		if cap(*scratch) < klen {
			*scratch = make([]byte, klen)
		}
		if err := d.ReadFull((*scratch)[:klen]); err != nil {
			return err
		}
	}
	vlen, err := d.DecodeBytesLen()
	if err != nil {
		return err
	}
	kn, vn := max(klen, 0), max(vlen, 0) // -1: a msgpack nil
	kv := make([]byte, kn+vn)
	copy(kv, (*scratch)[:kn])
	if vn > 0 {
		if err := d.ReadFull(kv[kn:]); err != nil {
			return err
		}
	}
	r.cut(kv, kn, klen >= 0, vlen >= 0)
	return nil
}

// cut sets r to the key kv[:kn] and the value kv[kn:], the key and the
// value nil unless hasKey and hasValue (a msgpack nil).
func (r *Row) cut(kv []byte, kn int, hasKey, hasValue bool) {
	r.Key, r.Value = nil, nil
	if hasKey {
		r.Key = kv[:kn]
	}
	if hasValue {
		r.Value = kv[kn:]
	}
}

// RowBytes returns the bytes holding r's key and then its value, ok when r
// is a decoded row (a Row decoded from the wire is one): its Key's
// capacity covers the value, which starts where the key ends. Slices of
// one array prove they are one allocation (for rows decoded by Codec, the
// slab of their frame, shared with its other rows: keeping kv keeps the
// slab), so a receiver that owns the row may keep kv instead of copying
// the row. The key and value of a change of a changes frame decoded by
// Codec are laid out the same way (frameReader.parseChange), so RowBytes
// of a Row holding them says so too. A decoded Key is therefore
// never appended to in place (that would overwrite the value): append to
// a copy.
func RowBytes(r *Row) (kv []byte, ok bool) {
	k, v := r.Key, r.Value
	if len(k) == 0 || len(v) == 0 || cap(k) != len(k)+len(v) ||
		unsafe.Pointer(unsafe.SliceData(v)) != unsafe.Add(unsafe.Pointer(unsafe.SliceData(k)), len(k)) {
		return nil, false
	}
	return k[:cap(k)], true
}

// decodeBin reads a bin (or nil). A list's element (shared) read from
// Codec (a frameReader) gets a slice of the message: one allocation per
// message instead of two per change. Otherwise it gets a copy, as
// msgpack's DecodeBytes makes.
func decodeBin(d *msgpack.Decoder, shared bool) ([]byte, error) {
	fr, ok := d.Buffered().(*frameReader)
	if !shared || !ok {
		return d.DecodeBytes()
	}
	n, err := d.DecodeBytesLen()
	if err != nil || n < 0 {
		return nil, err
	}
	return fr.take(n)
}

// ChangeList is a batch of changes. It decodes element by element, growing
// as valid changes arrive, instead of allocating what the array header
// claims; a nil element is an error. A hostile frame therefore costs
// memory in proportion to its real content.
type ChangeList []Change

// RowList is a chunk of snapshot rows, decoded like ChangeList.
type RowList []Row

var (
	_ msgpack.CustomDecoder = (*ChangeList)(nil)
	_ msgpack.CustomDecoder = (*RowList)(nil)
)

// EncodeMsgpack writes the list as an array of changes.
func (l ChangeList) EncodeMsgpack(e *msgpack.Encoder) error {
	return encodeList(e, l, (*Change).EncodeMsgpack)
}

// DecodeMsgpack reads an array of changes. Read from Codec (a
// frameReader), each change in the forms msgpack's encoder writes is
// parsed straight from the message bytes (frameReader.parseChange).
func (l *ChangeList) DecodeMsgpack(d *msgpack.Decoder) error {
	fr, _ := d.Buffered().(*frameReader)
	out, err := decodeList(d, func(c *Change, d *msgpack.Decoder) error {
		if fr != nil && fr.parseChange(c) {
			return nil
		}
		return c.decode(d, true)
	})
	*l = out
	return err
}

// EncodeMsgpack writes the list as an array of rows.
func (l RowList) EncodeMsgpack(e *msgpack.Encoder) error {
	return encodeList(e, l, (*Row).EncodeMsgpack)
}

// DecodeMsgpack reads an array of rows, each row's key and value in one
// allocation (Row.decode).
func (l *RowList) DecodeMsgpack(d *msgpack.Decoder) error {
	var scratch []byte
	fr, _ := d.Buffered().(*frameReader)
	out, err := decodeListCap(d, rowListCap(fr), func(r *Row, d *msgpack.Decoder) error {
		if fr != nil && fr.parseRow(r) {
			return nil
		}
		return r.decode(d, &scratch)
	})
	*l = out
	return err
}

// minListRowBytes is the fewest message bytes a row of a RowList read
// from Codec is taken to hold when its list is sized (rowListCap): a
// Row is 48 bytes, so a list sized by a hostile frame costs at most two
// bytes per message byte.
const minListRowBytes = 24

// rowListCap is the capacity a RowList of n rows starts with, given the
// message bytes left: all n when the bytes can hold them at
// minListRowBytes each (a real transfer's rows frame, some 300 rows:
// grown from 256 by append, its list was allocated twice), so a hostile
// array header still gets no more than the message's size allows.
func rowListCap(fr *frameReader) func(n int) int {
	if fr == nil {
		return nil
	}
	return func(n int) int { return min(n, max(256, (len(fr.b)-fr.pos)/minListRowBytes)) }
}

func encodeList[T any](e *msgpack.Encoder, l []T, enc func(*T, *msgpack.Encoder) error) error {
	if l == nil {
		return e.EncodeNil()
	}
	if err := e.EncodeArrayLen(len(l)); err != nil {
		return err
	}
	for i := range l {
		if err := enc(&l[i], e); err != nil {
			return err
		}
	}
	return nil
}

func decodeList[T any](d *msgpack.Decoder, dec func(*T, *msgpack.Decoder) error) ([]T, error) {
	return decodeListCap(d, nil, dec)
}

// decodeListCap is decodeList with the list's first capacity for n
// elements given by capFor (nil: at most 256, grown by append).
func decodeListCap[T any](d *msgpack.Decoder, capFor func(n int) int, dec func(*T, *msgpack.Decoder) error) ([]T, error) {
	n, err := d.DecodeArrayLen()
	if err != nil || n < 0 {
		return nil, err
	}
	c := min(n, 256)
	if capFor != nil {
		c = capFor(n)
	}
	out := make([]T, 0, c)
	for i := 0; i < n; i++ {
		out = append(out, *new(T))
		if err := dec(&out[i], d); err != nil {
			return nil, fmt.Errorf("element %d: %w", i, err)
		}
	}
	return out, nil
}

// GetRequest asks the owner for the current value of some keys (a live read).
type GetRequest struct {
	Version uint32   `msgpack:"v"`
	Table   string   `msgpack:"t"`
	Keys    [][]byte `msgpack:"keys"`
	Service string   `msgpack:"svc,omitempty"` // the caller's service name, for the table's access check
}

// Value is one result of a Get: Found is false when the key has no row.
type Value struct {
	Found bool   `msgpack:"f"`
	Value []byte `msgpack:"v"`
}

// GetResponse answers GetRequest: one Value per key, in request order, all
// read at Seq.
type GetResponse struct {
	Seq    uint64  `msgpack:"s"`
	LogID  string  `msgpack:"log"`
	Values []Value `msgpack:"vals"`
}

// DigestRequest asks for a hash of a table's rows with Start <= key < End
// (an empty End means no upper bound).
type DigestRequest struct {
	Version uint32 `msgpack:"v"`
	Table   string `msgpack:"t"`
	Start   []byte `msgpack:"from,omitempty"`
	End     []byte `msgpack:"to,omitempty"`
	Service string `msgpack:"svc,omitempty"` // the caller's service name, for the table's access check
}

// DigestResponse is the hash of a table's rows at Seq. Owner and replica
// compute it the same way (see replica.Digest), so equal hashes at equal seqs
// prove equal tables.
type DigestResponse struct {
	LogID string `msgpack:"log"`
	Seq   uint64 `msgpack:"s"`
	Rows  uint64 `msgpack:"n"`
	Hash  []byte `msgpack:"h"`
}

// Validate checks the parts of an Open frame that must be present.
func (o *Open) Validate() error {
	if o == nil {
		return fmt.Errorf("%w: first frame must be open", ErrBadRequest)
	}
	if err := CheckVersion(o.Version); err != nil {
		return err
	}
	if o.Table == "" {
		return fmt.Errorf("%w: open: empty table name", ErrBadRequest)
	}
	switch o.Mode {
	case "", ModePush, ModePull:
	default:
		return fmt.Errorf("%w: open: unknown mode %q", ErrBadRequest, o.Mode)
	}
	return nil
}

// Validate checks the structure of a change received from a peer.
func (c *Change) Validate() error {
	switch c.Op {
	case OpPut:
	case OpDelete:
		if len(c.Value) != 0 {
			return fmt.Errorf("%w: change %d: delete carries a value", ErrBadRequest, c.Seq)
		}
	default:
		return fmt.Errorf("%w: change %d: unknown op %d", ErrBadRequest, c.Seq, c.Op)
	}
	if len(c.Key) == 0 {
		return fmt.Errorf("%w: change %d: empty key", ErrBadRequest, c.Seq)
	}
	return nil
}
