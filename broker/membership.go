package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/replmesh/replmesh/transport"
)

// gossipVersion is the first byte of every gossip payload (broadcasts,
// reliable sends and push/pull state). Brokers drop payloads of another
// version rather than guess.
const gossipVersion byte = 1

// maxBroadcast is the largest record payload spread by UDP gossip; larger
// records (instances with many tables or subscriptions) are sent to every
// member over TCP instead. maxQueued is the broadcast queue depth from which
// records go over TCP too (UDP gossip carries only a few records per round),
// in batches of up to maxDirectBatch bytes.
const (
	maxBroadcast   = 1000
	maxQueued      = 32
	maxDirectBatch = 256 << 10
)

// nodeMeta is what a broker announces about itself in memberlist.
type nodeMeta struct {
	GRPC string `msgpack:"g"`
	Raft uint64 `msgpack:"r,omitempty"` // its Raft node id
}

// member is one broker as membership shows it.
type member struct {
	Name   string
	GRPC   string // gRPC address ("" if its meta is unreadable)
	State  string // alive or gone
	IP     string // gossip address
	Port   uint16
	Gossip string // gossip address, host:port
	Raft   uint64 // Raft node id (0 if its meta is unreadable)
}

// node returns a memberlist node to send to.
func (m member) node() *memberlist.Node {
	return &memberlist.Node{Name: m.Name, Addr: net.ParseIP(m.IP), Port: m.Port}
}

func encodeGossip(g *gossipMsg) ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteByte(gossipVersion)
	enc := msgpack.NewEncoder(&buf)
	enc.SetSortMapKeys(true)
	if err := enc.Encode(g); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// decodeGossip decodes a gossip payload. It never trusts a length claim:
// every count and length is checked against the bytes left before anything
// is read, slices grow by one element per element decoded and checked (so
// a record is kept only once its names are valid), and unknown fields are
// skipped to a bounded depth. What it allocates is therefore bounded by a
// small multiple of len(b): a payload of a few bytes claiming 2^32 records
// fails at once instead of allocating gigabytes (msgpack/v5 would grow the
// slice to the claimed length first, ignoring its own allocation limit).
//
// It reads what msgpack/v5 writes for gossipMsg (maps keyed by the msgpack
// tags, fields in any order, unknown ones skipped), and refuses what no
// broker writes: a key given twice, a struct written as an array, records
// with invalid names or a MinSync outside what a Register may report.
func decodeGossip(b []byte) (*gossipMsg, error) {
	if len(b) == 0 {
		return nil, errors.New("empty gossip payload")
	}
	if b[0] != gossipVersion {
		return nil, fmt.Errorf("gossip payload version %d, this build speaks %d", b[0], gossipVersion)
	}
	r := gossipReader{b: b, pos: 1}
	g := new(gossipMsg)
	if err := r.message(g); err != nil {
		return nil, fmt.Errorf("decode gossip: %w", err)
	}
	return g, nil
}

// maxGossipNesting bounds how deeply the unknown values a gossip payload
// may carry nest (gossipMsg itself nests three deep).
const maxGossipNesting = 32

// gossipReader reads msgpack from a gossip payload, checking every length
// it reads against the bytes left (see decodeGossip).
type gossipReader struct {
	b   []byte
	pos int
}

func (r *gossipReader) errorf(format string, args ...any) error {
	return fmt.Errorf("byte %d: "+format, append([]any{r.pos}, args...)...)
}

func (r *gossipReader) left() int { return len(r.b) - r.pos }

func (r *gossipReader) code() (byte, error) {
	if r.pos >= len(r.b) {
		return 0, r.errorf("unexpected end of data")
	}
	c := r.b[r.pos]
	r.pos++
	return c, nil
}

// next returns the next n bytes.
func (r *gossipReader) next(n int) ([]byte, error) {
	if n < 0 || n > r.left() {
		return nil, r.errorf("%d bytes claimed, %d left", n, r.left())
	}
	p := r.b[r.pos : r.pos+n]
	r.pos += n
	return p, nil
}

// uintN reads a big-endian unsigned integer of size bytes (1, 2, 4 or 8).
func (r *gossipReader) uintN(size int) (uint64, error) {
	p, err := r.next(size)
	if err != nil {
		return 0, err
	}
	var n uint64
	for _, c := range p {
		n = n<<8 | uint64(c)
	}
	return n, nil
}

// count reads the length of an array (per = 1) or map (per = 2) whose code
// is c, checking that the bytes left can hold that many objects (each takes
// at least one byte). It returns -1 for nil and ok false for a code of
// another type.
func (r *gossipReader) count(c byte, per int) (n int, ok bool, err error) {
	var size int
	switch {
	case c == 0xc0:
		return -1, true, nil
	case per == 1 && c >= 0x90 && c <= 0x9f:
		n = int(c & 0x0f)
	case per == 2 && c >= 0x80 && c <= 0x8f:
		n = int(c & 0x0f)
	case per == 1 && c == 0xdc, per == 2 && c == 0xde:
		size = 2
	case per == 1 && c == 0xdd, per == 2 && c == 0xdf:
		size = 4
	default:
		return 0, false, nil
	}
	if size > 0 {
		v, err := r.uintN(size)
		if err != nil {
			return 0, true, err
		}
		if v > uint64(r.left()/per) {
			return 0, true, r.errorf("%d elements claimed, %d bytes left", v, r.left())
		}
		n = int(v)
	}
	if n > r.left()/per {
		return 0, true, r.errorf("%d elements claimed, %d bytes left", n, r.left())
	}
	return n, true, nil
}

// bytesLen reads the length of a string or binary whose code is c (-1 for
// nil), checked against the bytes left.
func (r *gossipReader) bytesLen(c byte) (int, error) {
	var size int
	switch {
	case c == 0xc0:
		return -1, nil
	case c >= 0xa0 && c <= 0xbf:
		n := int(c & 0x1f)
		if n > r.left() {
			return 0, r.errorf("%d bytes claimed, %d left", n, r.left())
		}
		return n, nil
	case c == 0xd9 || c == 0xc4:
		size = 1
	case c == 0xda || c == 0xc5:
		size = 2
	case c == 0xdb || c == 0xc6:
		size = 4
	default:
		return 0, r.errorf("code 0x%02x where a string belongs", c)
	}
	n, err := r.uintN(size)
	if err != nil {
		return 0, err
	}
	if n > uint64(r.left()) {
		return 0, r.errorf("%d bytes claimed, %d left", n, r.left())
	}
	return int(n), nil
}

// rawString returns the bytes of a string without copying them (nil for a
// msgpack nil).
func (r *gossipReader) rawString() ([]byte, error) {
	c, err := r.code()
	if err != nil {
		return nil, err
	}
	n, err := r.bytesLen(c)
	if err != nil || n < 0 {
		return nil, err
	}
	return r.next(n)
}

func (r *gossipReader) str() (string, error) {
	p, err := r.rawString()
	return string(p), err
}

// integer reads any msgpack integer (or nil, as 0) as its 64 bits, the way
// msgpack/v5 decodes into both uint64 and int64 fields.
func (r *gossipReader) integer() (uint64, error) {
	c, err := r.code()
	if err != nil {
		return 0, err
	}
	switch {
	case c == 0xc0:
		return 0, nil
	case c <= 0x7f || c >= 0xe0: // fixints
		return uint64(int64(int8(c))), nil
	}
	switch c {
	case 0xcc, 0xcd, 0xce, 0xcf: // uint8..uint64
		return r.uintN(1 << (c - 0xcc))
	case 0xd0: // int8
		v, err := r.uintN(1)
		return uint64(int64(int8(v))), err
	case 0xd1: // int16
		v, err := r.uintN(2)
		return uint64(int64(int16(v))), err
	case 0xd2: // int32
		v, err := r.uintN(4)
		return uint64(int64(int32(v))), err
	case 0xd3: // int64
		return r.uintN(8)
	}
	return 0, r.errorf("code 0x%02x where an integer belongs", c)
}

func (r *gossipReader) uint() (uint64, error) { return r.integer() }

func (r *gossipReader) int() (int64, error) {
	v, err := r.integer()
	return int64(v), err
}

// float reads a float64 as msgpack/v5 does: a float32 or float64, or an
// integer.
func (r *gossipReader) float() (float64, error) {
	if r.pos < len(r.b) {
		switch r.b[r.pos] {
		case 0xca:
			r.pos++
			v, err := r.uintN(4)
			return float64(math.Float32frombits(uint32(v))), err
		case 0xcb:
			r.pos++
			v, err := r.uintN(8)
			return math.Float64frombits(v), err
		}
	}
	v, err := r.int()
	return float64(v), err
}

func (r *gossipReader) bool() (bool, error) {
	c, err := r.code()
	if err != nil {
		return false, err
	}
	switch c {
	case 0xc0, 0xc2:
		return false, nil
	case 0xc3:
		return true, nil
	}
	return false, r.errorf("code 0x%02x where a bool belongs", c)
}

// skip reads past one value of any type; containers may nest depth more
// levels.
func (r *gossipReader) skip(depth int) error {
	c, err := r.code()
	if err != nil {
		return err
	}
	for per := 1; per <= 2; per++ {
		n, ok, err := r.count(c, per)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		if n > 0 && depth == 0 {
			return r.errorf("values nested deeper than %d", maxGossipNesting)
		}
		for range n * per {
			if err := r.skip(depth - 1); err != nil {
				return err
			}
		}
		return nil
	}
	var size, fixed int // bytes of length, bytes that follow regardless
	switch {
	case c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3:
		return nil
	case c >= 0xa0 && c <= 0xbf, c == 0xd9, c == 0xda, c == 0xdb, c == 0xc4, c == 0xc5, c == 0xc6:
		n, err := r.bytesLen(c)
		if err != nil {
			return err
		}
		_, err = r.next(n)
		return err
	case c == 0xc7, c == 0xc8, c == 0xc9: // ext8..ext32: length, type, data
		size, fixed = 1<<(c-0xc7), 1
	case c == 0xcc || c == 0xd0:
		fixed = 1
	case c == 0xcd || c == 0xd1:
		fixed = 2
	case c == 0xca || c == 0xce || c == 0xd2:
		fixed = 4
	case c == 0xcb || c == 0xcf || c == 0xd3:
		fixed = 8
	case c >= 0xd4 && c <= 0xd8: // fixext1..16: type, data
		fixed = 1 + 1<<(c-0xd4)
	default:
		return r.errorf("invalid code 0x%02x", c)
	}
	n := uint64(0)
	if size > 0 {
		if n, err = r.uintN(size); err != nil {
			return err
		}
	}
	if n > uint64(r.left()) {
		return r.errorf("%d bytes claimed, %d left", n, r.left())
	}
	_, err = r.next(fixed + int(n))
	return err
}

// fields reads a struct written as a map: for each key, it calls field
// with the key's index in names, or skips the value of a key not in names.
// A key given twice is an error. It returns false for a nil (the zero
// value).
func (r *gossipReader) fields(what string, names []string, field func(i int) error) (bool, error) {
	c, err := r.code()
	if err != nil {
		return false, err
	}
	n, ok, err := r.count(c, 2)
	switch {
	case err != nil:
		return false, err
	case !ok:
		return false, r.errorf("code 0x%02x where a %s belongs", c, what)
	case n < 0:
		return false, nil
	}
	var seen uint64
	for range n {
		key, err := r.rawString()
		if err != nil {
			return false, err
		}
		i := slices.IndexFunc(names, func(s string) bool { return s == string(key) })
		if i < 0 {
			if err := r.skip(maxGossipNesting); err != nil {
				return false, err
			}
			continue
		}
		if seen&(1<<i) != 0 {
			return false, r.errorf("%s field %q given twice", what, key)
		}
		seen |= 1 << i
		if err := field(i); err != nil {
			return false, fmt.Errorf("%s field %q: %w", what, key, err)
		}
	}
	return true, nil
}

// list reads an array, calling elem for each element: elem decodes it and
// appends it only once it is valid, so the slice grows per valid element,
// never by the length claimed. At most limit elements are accepted. It
// returns an empty (not nil) slice for an empty array, as msgpack/v5 does.
func list[T any](r *gossipReader, what string, limit int, elem func(out []T) ([]T, error)) ([]T, error) {
	c, err := r.code()
	if err != nil {
		return nil, err
	}
	n, ok, err := r.count(c, 1)
	switch {
	case err != nil:
		return nil, err
	case !ok:
		return nil, r.errorf("code 0x%02x where a list of %s belongs", c, what)
	case n < 0:
		return nil, nil
	case n > limit:
		return nil, r.errorf("%d %s, at most %d", n, what, limit)
	}
	out := []T{}
	for i := range n {
		if out, err = elem(out); err != nil {
			return nil, fmt.Errorf("%s %d: %w", what, i, err)
		}
	}
	return out, nil
}

// The field names (msgpack tags) of the gossiped types, by field index.
var (
	gossipMsgFields = []string{"i"}
	instanceFields  = []string{"svc", "inst", "addr", "own", "tables", "subs", "ep", "msync", "sess", "ver", "conn", "gone", "seen"}
	versionFields   = []string{"c", "b"}
	sessionFields   = []string{"s", "b"}
	tableFields     = []string{"t", "mode", "log", "ep", "head"}
	subFields       = []string{"svc", "t", "mode", "seq", "log", "ep", "lag", "stale", "st", "run", "why", "xr", "xe", "xb", "xrr", "xeta"}
)

func (r *gossipReader) message(g *gossipMsg) error {
	// Every record takes more than one byte, so no list is longer than the
	// payload.
	limit := len(r.b)
	_, err := r.fields("message", gossipMsgFields, func(i int) (err error) {
		switch i {
		case 0:
			g.Instances, err = list(r, "instances", limit, func(out []*instanceRec) ([]*instanceRec, error) {
				rec := new(instanceRec)
				ok, err := r.fields("instance", instanceFields, func(i int) error { return r.instance(rec, i) })
				if err != nil {
					return nil, err
				}
				if !ok || !validName(rec.Service) || !validName(rec.Instance) {
					return nil, errors.New("bad instance record")
				}
				return append(out, rec), nil
			})
		}
		return err
	})
	return err
}

// instance decodes field i of an instance record.
func (r *gossipReader) instance(rec *instanceRec, i int) (err error) {
	switch i {
	case 0:
		rec.Service, err = r.str()
	case 1:
		rec.Instance, err = r.str()
	case 2:
		rec.Addr, err = r.str()
	case 3:
		rec.Owner, err = r.bool()
	case 4:
		// Registrations are limited to MaxTables and MaxSubscriptions, at
		// most ListCeiling, and their names checked: so are records.
		rec.Tables, err = list(r, "tables", ListCeiling, func(out []transport.TableInfo) ([]transport.TableInfo, error) {
			var t transport.TableInfo
			if _, err := r.fields("table", tableFields, func(i int) error { return r.table(&t, i) }); err != nil {
				return nil, err
			}
			if !validName(t.Table) {
				return nil, errors.New("bad table name")
			}
			return append(out, t), nil
		})
	case 5:
		rec.Subs, err = list(r, "subscriptions", ListCeiling, func(out []transport.SubInfo) ([]transport.SubInfo, error) {
			var s transport.SubInfo
			if _, err := r.fields("subscription", subFields, func(i int) error { return r.sub(&s, i) }); err != nil {
				return nil, err
			}
			if !validName(s.Service) || !validName(s.Table) {
				return nil, errors.New("bad subscription name")
			}
			return append(out, s), nil
		})
	case 6:
		rec.Epoch, err = r.uint()
	case 7:
		// As a Register is checked: a broker admits none outside this.
		var k int64
		if k, err = r.int(); err == nil && (k < 0 || k > transport.MaxMinSyncStandbys) {
			err = fmt.Errorf("minimum synced standbys %d outside 0..%d", k, transport.MaxMinSyncStandbys)
		}
		rec.MinSync = int(k)
	case 8:
		_, err = r.fields("session", sessionFields, func(i int) (err error) {
			if i == 0 {
				rec.Session.Start, err = r.int()
			} else {
				rec.Session.Broker, err = r.str()
			}
			return err
		})
	case 9:
		err = r.version(&rec.Ver)
	case 10:
		rec.Connected, err = r.bool()
	case 11:
		rec.Gone, err = r.bool()
	case 12:
		rec.SeenMs, err = r.int()
	}
	return err
}

func (r *gossipReader) version(v *version) error {
	_, err := r.fields("version", versionFields, func(i int) (err error) {
		if i == 0 {
			v.Clock, err = r.uint()
		} else {
			v.Broker, err = r.str()
		}
		return err
	})
	return err
}

// table decodes field i of a TableInfo.
func (r *gossipReader) table(t *transport.TableInfo, i int) (err error) {
	switch i {
	case 0:
		t.Table, err = r.str()
	case 1:
		t.Mode, err = r.str()
	case 2:
		t.LogID, err = r.str()
	case 3:
		t.Epoch, err = r.uint()
	case 4:
		t.Head, err = r.uint()
	}
	return err
}

// sub decodes field i of a SubInfo.
func (r *gossipReader) sub(s *transport.SubInfo, i int) (err error) {
	switch i {
	case 0:
		s.Service, err = r.str()
	case 1:
		s.Table, err = r.str()
	case 2:
		s.Mode, err = r.str()
	case 3:
		s.Seq, err = r.uint()
	case 4:
		s.LogID, err = r.str()
	case 5:
		s.Epoch, err = r.uint()
	case 6:
		s.Lag, err = r.uint()
	case 7:
		s.StaleMs, err = r.int()
	case 8:
		s.State, err = r.str()
	case 9:
		s.Running, err = r.str()
	case 10:
		s.Reason, err = r.str()
	case 11:
		s.XferRows, err = r.uint()
	case 12:
		s.XferExpected, err = r.uint()
	case 13:
		s.XferBytes, err = r.uint()
	case 14:
		s.XferRate, err = r.float()
	case 15:
		s.XferEtaMs, err = r.int()
	}
	return err
}

// broadcast is one record queued for UDP gossip; a newer broadcast of the
// same record replaces an older one still in the queue.
type broadcast struct {
	name    string
	rec     *gossipMsg // the one record
	msg     []byte     // rec, encoded
	refresh bool       // heads and positions only: UDP gossip is enough
}

func (b *broadcast) Invalidates(o memberlist.Broadcast) bool {
	nb, ok := o.(memberlist.NamedBroadcast)
	return ok && nb.Name() == b.name
}
func (b *broadcast) Message() []byte { return b.msg }
func (b *broadcast) Finished()       {}
func (b *broadcast) Name() string    { return b.name }

// delegate implements memberlist.Delegate and memberlist.EventDelegate for
// a broker. memberlist calls it from its own goroutines, some while holding
// its locks: so the event methods take no broker lock and never block, and
// the broker never calls memberlist while holding its own lock.
//
// Membership is read from the events (which memberlist delivers under its
// lock, so copying the node there is race-free), never from
// Memberlist.Members, whose nodes memberlist keeps writing.
type delegate struct {
	b    *Broker
	meta []byte
	// keyring holds the gossip keys (nil: gossip is not encrypted). Set by
	// memberlistConfig; memberlist reads it, the key calls (keyring.go)
	// change it, both under its own lock.
	keyring *memberlist.Keyring

	mu    sync.Mutex
	nodes map[string]member // every broker heard of, by name
}

func (d *delegate) NodeMeta(limit int) []byte {
	if len(d.meta) > limit {
		return nil
	}
	return d.meta
}

func (d *delegate) NotifyMsg(buf []byte) {
	g, err := decodeGossip(buf)
	if err != nil {
		d.b.log.Warn("dropped gossip message", "err", err)
		return
	}
	d.b.metrics.gossipIn.Inc()
	d.b.merge(g)
}

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.b.queue.GetBroadcasts(overhead, limit)
}

func (d *delegate) LocalState(join bool) []byte {
	buf, err := d.b.localState()
	if err != nil {
		d.b.log.Error("encode registry state", "err", err)
		return nil
	}
	return buf
}

func (d *delegate) MergeRemoteState(buf []byte, join bool) {
	if len(buf) == 0 {
		return
	}
	g, err := decodeGossip(buf)
	if err != nil {
		d.b.log.Warn("dropped remote registry state", "err", err)
		return
	}
	d.b.merge(g)
	if join {
		// A join's state exchange (either side): this broker now holds the
		// cluster's registry.
		d.b.mu.Lock()
		d.b.setReadyLocked()
		d.b.mu.Unlock()
	}
}

func (d *delegate) NotifyJoin(n *memberlist.Node)   { d.note(n, "alive") }
func (d *delegate) NotifyUpdate(n *memberlist.Node) { d.note(n, "alive") }

// NotifyLeave: the broker died or left. (memberlist does not keep
// Node.State up to date, so the two cannot be told apart here.)
func (d *delegate) NotifyLeave(n *memberlist.Node) { d.note(n, "gone") }

func (d *delegate) note(n *memberlist.Node, state string) {
	var meta nodeMeta
	_ = msgpack.Unmarshal(n.Meta, &meta)
	m := member{Name: n.Name, GRPC: meta.GRPC, State: state, IP: n.Addr.String(), Port: n.Port,
		Gossip: net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port))), Raft: meta.Raft}
	d.mu.Lock()
	d.nodes[n.Name] = m
	d.mu.Unlock()
	d.b.kickLoop()
}

// members returns the live brokers and the departed ones, each sorted by
// name.
func (d *delegate) members() (live, departed []member) {
	d.mu.Lock()
	for _, m := range d.nodes {
		if m.State == "alive" {
			live = append(live, m)
		} else {
			departed = append(departed, m)
		}
	}
	d.mu.Unlock()
	byName := func(a, b member) int { return strings.Compare(a.Name, b.Name) }
	slices.SortFunc(live, byName)
	slices.SortFunc(departed, byName)
	return live, departed
}

// slogWriter routes memberlist's log lines ("[LEVEL] memberlist: ...") to
// slog at the matching level.
type slogWriter struct{ log *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	// memberlist's log.Logger has no flags, but tolerate a date prefix.
	if i := strings.IndexByte(line, '['); i > 0 {
		line = line[i:]
	}
	level := slog.LevelInfo
	for prefix, l := range map[string]slog.Level{
		"[DEBUG]": slog.LevelDebug, "[TRACE]": slog.LevelDebug, "[INFO]": slog.LevelInfo,
		"[WARN]": slog.LevelWarn, "[ERR]": slog.LevelError, "[ERROR]": slog.LevelError,
	} {
		if strings.HasPrefix(line, prefix) {
			level = l
			line = strings.TrimSpace(strings.TrimPrefix(line, prefix))
			break
		}
	}
	w.log.Log(context.Background(), level, line, "component", "memberlist")
	return len(p), nil
}

// memberlistConfig builds the memberlist configuration of a broker.
func (b *Broker) memberlistConfig(d *delegate) (*memberlist.Config, error) {
	base := b.cfg.Gossip
	if base == nil {
		base = memberlist.DefaultLANConfig()
	}
	mc := *base // copy: memberlist writes the bound port back into it
	mc.Name = b.cfg.Name
	host, port, err := splitHostPort(b.cfg.BindAddr)
	if err != nil {
		return nil, err
	}
	mc.BindAddr = host
	mc.BindPort = port
	mc.AdvertiseAddr, mc.AdvertisePort = "", 0
	if port != 0 {
		mc.AdvertisePort = port
	}
	if b.cfg.AdvertiseAddr != "" {
		ah, ap, _ := splitHostPort(b.cfg.AdvertiseAddr)
		mc.AdvertiseAddr, mc.AdvertisePort = ah, ap
	}
	mc.Delegate = d
	mc.Events = d
	mc.Conflict, mc.Merge, mc.Ping, mc.Alive = nil, nil, nil, nil
	mc.SecretKey = nil
	mc.Keyring = nil
	if len(b.cfg.GossipKey) > 0 {
		keys := [][]byte{slices.Clone(b.cfg.GossipKey)}
		for _, k := range b.cfg.GossipKeys {
			keys = append(keys, slices.Clone(k))
		}
		kr, err := memberlist.NewKeyring(keys, keys[0])
		if err != nil {
			return nil, invalid("Config.GossipKeys", "%v", err)
		}
		mc.Keyring, d.keyring = kr, kr
	} else if !loopbackBind(b.cfg.BindAddr) {
		// Validate let it through: InsecureGossip is set. Say so on every start.
		b.log.Warn("gossip is not encrypted: anyone who reaches the gossip address can read and rewrite the registry "+
			"and join the cluster (Config.InsecureGossip); set a gossip key", "gossip", b.cfg.BindAddr)
	}
	if mc.DeadNodeReclaimTime == 0 {
		// memberlist's 0 keeps a dead broker's name bound to its old
		// address until the dead node is reaped (GossipToTheDeadTime,
		// 15-30s): a broker that restarts on a new port after a crash, or
		// after a Close whose leave did not get out, is refused by every
		// peer as a conflicting address until then. Once the failure
		// detector has declared it dead, a probe interval is long enough
		// for that verdict to spread; the raft layer still refuses a
		// newcomer under a live broker's name (Status.Raft.JoinRefused).
		mc.DeadNodeReclaimTime = mc.ProbeInterval
	}
	mc.Label = b.cfg.ClusterLabel
	mc.Logger = nil
	mc.LogOutput = slogWriter{b.log}
	mc.Transport = nil
	return &mc, nil
}

// joinLogEvery is how often an address of Config.Join that stays
// unreachable is logged again (see joinLog).
const joinLogEvery = time.Minute

// join tries every address of Config.Join, one at a time so that each
// failure is logged on its own line (see joinLog). It is run in a
// goroutine at start and, while the broker is alone, every RejoinInterval.
func (b *Broker) join(ctx context.Context) {
	start := time.Now()
	contacted := 0
	for _, addr := range b.cfg.Join {
		n, err := b.ml.Join([]string{addr})
		if ctx.Err() != nil {
			return
		}
		switch {
		case n > 0:
			err = nil
		case err == nil:
			err = errors.New("no broker answered")
		}
		b.joins.attempt(b.log, addr, err, time.Now())
		contacted += n
	}
	if contacted > 0 {
		b.log.Info("joined the broker cluster", "contacted", contacted, "took", time.Since(start))
		b.mu.Lock()
		b.setReadyLocked()
		b.mu.Unlock()
		b.kickLoop()
	}
}

// joinLog logs the join attempts of each address of Config.Join: a
// failure at WARN at once, then at most one line every `every` while the
// address stays unreachable, counting the failures not logged; the first
// success after failures at INFO. Every failure also shows at DEBUG.
type joinLog struct {
	every time.Duration

	mu    sync.Mutex
	addrs map[string]*joinRun // addresses failing now
}

// joinRun is a run of failures of one address.
type joinRun struct {
	failures, unlogged int
	since, logged      time.Time
}

// attempt records one join attempt of addr at now (err nil: it joined)
// and logs what it should.
func (l *joinLog) attempt(log *slog.Logger, addr string, err error, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	run := l.addrs[addr]
	if err == nil {
		if run != nil {
			log.Info("reached a broker to join", "addr", addr, "failed_attempts", run.failures,
				"unreachable_for", now.Sub(run.since).Round(time.Millisecond))
			delete(l.addrs, addr)
		}
		return
	}
	msg := oneLine(err)
	log.Debug("join attempt failed", "addr", addr, "err", msg)
	switch {
	case run == nil:
		if l.addrs == nil {
			l.addrs = make(map[string]*joinRun)
		}
		l.addrs[addr] = &joinRun{failures: 1, since: now, logged: now}
		log.Warn("cannot reach a broker to join; retrying", "addr", addr, "err", msg)
	case now.Sub(run.logged) >= l.every:
		run.failures++
		log.Warn("still cannot reach a broker to join; retrying", "addr", addr, "err", msg, "failed_attempts", run.failures,
			"not_logged", run.unlogged, "unreachable_for", now.Sub(run.since).Round(time.Millisecond))
		run.unlogged, run.logged = 0, now
	default:
		run.failures++
		run.unlogged++
	}
}

// oneLine flattens an error that spans lines (memberlist's Join returns a
// go-multierror: "1 error occurred:\n\t* Failed to join ...") to one line.
func oneLine(err error) string {
	var parts []string
	for _, line := range strings.Split(err.Error(), "\n") {
		line = strings.TrimSpace(line)
		line = strings.TrimSpace(strings.TrimPrefix(line, "* "))
		if line == "" || strings.HasSuffix(line, "occurred:") {
			continue
		}
		parts = append(parts, line)
	}
	return strings.Join(parts, "; ")
}
