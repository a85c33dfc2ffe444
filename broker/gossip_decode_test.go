package broker

import (
	"bytes"
	"encoding/binary"
	"math"
	"math/rand/v2"
	"reflect"
	rtmetrics "runtime/metrics"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/replmesh/replmesh/transport"
)

// heapAllocated returns the bytes allocated on the heap so far. Large
// allocations are counted at once, small ones up to a few pages late, which
// is precise enough to catch a decoder that trusts a length claim.
func heapAllocated() uint64 {
	s := []rtmetrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	rtmetrics.Read(s)
	return s[0].Value.Uint64()
}

// Decoding a gossip payload may allocate at most maxGossipAllocPerByte per
// input byte plus gossipAllocSlack. The largest element is an instance
// record (about 190 bytes) of at least 14 bytes of input, and a slice
// grows by doubling: about 30 bytes per input byte at worst. The slack
// covers what the counter shows late or early: the runtime counts a span
// of small objects as allocated when it hands it to a goroutine, and other
// goroutines (the fuzzing engine's) allocate meanwhile.
const (
	maxGossipAllocPerByte = 64
	gossipAllocSlack      = 1 << 20
)

// claim returns a gossip payload whose message holds one field, key, with
// an array (map: a map) of 32-bit length n and nothing after it: 9 bytes
// for a one-letter key. Prefixed with memberlist's user message type, it is
// the 10-byte UDP packet that took replbroker down with an older decoder.
func claim(key string, n uint32, isMap bool) []byte {
	b := []byte{gossipVersion, 0x81, 0xa0 | byte(len(key))}
	b = append(b, key...)
	code := byte(0xdd)
	if isMap {
		code = 0xdf
	}
	b = append(b, code)
	return binary.BigEndian.AppendUint32(b, n)
}

// nested returns a payload whose message holds one record list with one
// record whose field key (a list or a string) claims n elements or bytes.
func nested(list, key string, code byte, n uint32) []byte {
	b := []byte{gossipVersion, 0x81, 0xa0 | byte(len(list)), list[0], 0x91, 0x83,
		0xa3, 's', 'v', 'c', 0xa1, 's', 0xa4, 'i', 'n', 's', 't'}
	if list != "i" { // owners: svc, ep, and the field under test
		b = b[:len(b)-5]
		b = append(b, 0xa2, 'e', 'p', 0x01)
	} else {
		b = append(b, 0xa1, 'i')
	}
	b = append(b, 0xa0|byte(len(key)))
	b = append(b, key...)
	b = append(b, code)
	return binary.BigEndian.AppendUint32(b, n)
}

// hostileClaims are payloads that claim far more than they hold.
func hostileClaims() map[string][]byte {
	return map[string][]byte{
		"2^32-1 instances":            claim("i", math.MaxUint32, false),
		"100M instances (800 MB)":     claim("i", 100_000_000, false),
		"2^32-1 owners":               claim("o", math.MaxUint32, false),
		"2^32-1 modes":                claim("m", math.MaxUint32, false),
		"a 2^32-1 entry unknown map":  claim("x", math.MaxUint32, true),
		"2^32-1 tables":               nested("i", "tables", 0xdd, math.MaxUint32),
		"2^32-1 subscriptions":        nested("i", "subs", 0xdd, math.MaxUint32),
		"a 4 GiB address":             nested("i", "addr", 0xdb, math.MaxUint32),
		"a 4 GiB primary name":        nested("o", "p", 0xdb, math.MaxUint32),
		"a 4 GiB unknown binary":      nested("i", "zz", 0xc6, math.MaxUint32),
		"a 2^32-1 entry unknown list": nested("i", "zz", 0xdd, math.MaxUint32),
	}
}

// decodeAllocs decodes b and returns what it allocated.
func decodeAllocs(b []byte) (*gossipMsg, uint64, error) {
	before := heapAllocated()
	g, err := decodeGossip(b)
	return g, heapAllocated() - before, err
}

func allocLimit(n int) uint64 { return uint64(maxGossipAllocPerByte*n + gossipAllocSlack) }

func TestGossip_DecodeRefusesLengthClaims(t *testing.T) {
	for name, b := range hostileClaims() {
		t.Run(name, func(t *testing.T) {
			_, got, err := decodeAllocs(b)
			if err == nil {
				t.Fatalf("decodeGossip(%x) = nil error, want a refused length claim", b)
			}
			if got > allocLimit(len(b)) {
				t.Fatalf("decodeGossip(%x) allocated %d bytes, want at most %d", b, got, allocLimit(len(b)))
			}
		})
	}
	// The 9-byte payload of the report: version, a one-key map, "i", array32.
	if b := claim("i", math.MaxUint32, false); len(b) != 9 {
		t.Fatalf("the oversized-claim payload is %d bytes, want 9", len(b))
	}
}

func TestGossip_DecodeRefusesDeepNesting(t *testing.T) {
	b := []byte{gossipVersion, 0x81, 0xa1, 'x'}
	b = append(b, bytes.Repeat([]byte{0x91}, 100_000)...)
	b = append(b, 0xc0)
	if _, err := decodeGossip(b); err == nil || !strings.Contains(err.Error(), "nested deeper") {
		t.Fatalf("decodeGossip(100000 nested arrays) = %v, want a nesting error", err)
	}
}

// fullRecords returns one record of each kind with every field set, the
// tables and subscriptions included.
func fullRecords() *gossipMsg {
	return &gossipMsg{
		Instances: []*instanceRec{{
			Service: "stores", Instance: "stores-1", Addr: "10.0.0.1:7000", Owner: true,
			Tables: []transport.TableInfo{{Table: "t1", Mode: "push", LogID: "log", Epoch: 3, Head: 1 << 40}},
			Subs: []transport.SubInfo{{Service: "products", Table: "p1", Mode: "auto", Seq: 9, Lag: 2, StaleMs: -5,
				State: "streaming", Running: "push", Reason: "rate", XferRows: 1, XferExpected: 2, XferBytes: 3,
				XferRate: 1.5, XferEtaMs: 1 << 33, LogID: "log-p1", Epoch: 1<<40 + 7}},
			Epoch: 1<<62 + 1, MinSync: transport.MaxMinSyncStandbys, Session: sessionID{Start: -1 << 40, Broker: "b1"}, Ver: version{Clock: math.MaxUint64, Broker: "b2"},
			Connected: true, Gone: true, SeenMs: 1 << 41,
		}},
	}
}

// legacyGossip is a gossip message as builds before raft wrote it: owner
// records, mode overrides and quorum beats beside the instance records.
type legacyGossip struct {
	Instances []*instanceRec `msgpack:"i,omitempty"`
	Owners    []*ownerRec    `msgpack:"o,omitempty"`
	Modes     []*modeRec     `msgpack:"m,omitempty"`
	Beat      string         `msgpack:"beat,omitempty"`
}

// encodeLegacy encodes a legacyGossip as a gossip payload.
func encodeLegacy(g *legacyGossip) []byte {
	b, err := msgpack.Marshal(g)
	if err != nil {
		panic(err) // plain records: encoding cannot fail
	}
	return append([]byte{gossipVersion}, b...)
}

// What older builds gossiped of the decided state (owners, overrides,
// beats) is skipped unread, however wrong it is: raft decides it, and the
// soft state beside it is kept.
func TestGossip_DecidedStateFromOlderBuildsIsSkipped(t *testing.T) {
	inst := fullRecords().Instances
	for _, tt := range []struct {
		name string
		g    legacyGossip
	}{
		{"owners, overrides and a beat", legacyGossip{Instances: inst,
			Owners: []*ownerRec{{Service: "stores", Epoch: math.MaxUint64, Primary: "stores-1"}},
			Modes:  []*modeRec{{Service: "stores", Table: "t1", Mode: "pull", Ver: version{Clock: 7, Broker: "b3"}}},
			Beat:   "b1"}},
		{"an owner with a bad service name", legacyGossip{Instances: inst, Owners: []*ownerRec{{Service: "a b"}}}},
		{"an unknown mode", legacyGossip{Instances: inst, Modes: []*modeRec{{Service: "s", Table: "t", Mode: "fast"}}}},
		{"a beat alone", legacyGossip{Beat: "b9"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeGossip(encodeLegacy(&tt.g))
			if err != nil {
				t.Fatalf("decodeGossip: %v", err)
			}
			if want := (&gossipMsg{Instances: tt.g.Instances}); !reflect.DeepEqual(got, want) {
				t.Fatalf("decodeGossip = %+v, want the instance records only: %+v", got, want)
			}
		})
	}
}

// The hand-written decoder reads what the encoder writes exactly as
// msgpack/v5 does.
func TestGossip_DecodeMatchesMsgpack(t *testing.T) {
	msgs := map[string]*gossipMsg{
		"every field": fullRecords(),
		"random":      randomRecords(rand.New(rand.NewPCG(3, 4))),
		"empty":       {},
	}
	for name, g := range msgs {
		t.Run(name, func(t *testing.T) {
			b := mustEncode(g)
			got, err := decodeGossip(b)
			if err != nil {
				t.Fatalf("decodeGossip: %v", err)
			}
			want := new(gossipMsg)
			if err := msgpack.Unmarshal(b[1:], want); err != nil {
				t.Fatalf("msgpack.Unmarshal: %v", err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("decodeGossip = %+v\nmsgpack      %+v", got, want)
			}
			if !reflect.DeepEqual(got, g) {
				t.Fatalf("decodeGossip = %+v\nencoded      %+v", got, g)
			}
		})
	}
}

// The decoder lists the fields of every gossiped type by msgpack tag: a
// field added to one of them (in transport, say) must be added there too.
func TestGossip_DecoderKnowsEveryField(t *testing.T) {
	tests := []struct {
		v     any
		names []string
	}{
		{gossipMsg{}, gossipMsgFields},
		{instanceRec{}, instanceFields},
		{version{}, versionFields},
		{sessionID{}, sessionFields},
		{transport.TableInfo{}, tableFields},
		{transport.SubInfo{}, subFields},
	}
	for _, tt := range tests {
		typ := reflect.TypeOf(tt.v)
		t.Run(typ.Name(), func(t *testing.T) {
			var tags []string
			for i := range typ.NumField() {
				tag, _, _ := strings.Cut(typ.Field(i).Tag.Get("msgpack"), ",")
				tags = append(tags, tag)
			}
			if !reflect.DeepEqual(tags, tt.names) {
				t.Fatalf("msgpack tags of %s are %q, the decoder reads %q", typ, tags, tt.names)
			}
		})
	}
}

func TestGossip_DecodeRefusesWhatNoBrokerWrites(t *testing.T) {
	tests := map[string][]byte{
		"a key twice":             {gossipVersion, 0x82, 0xa1, 'i', 0x90, 0xa1, 'i', 0x90},
		"a record as an array":    {gossipVersion, 0x81, 0xa1, 'i', 0x91, 0x92, 0xa1, 's', 0xa1, 'i'},
		"a nil instance":          {gossipVersion, 0x81, 0xa1, 'i', 0x91, 0xc0},
		"a table without a name":  mustEncode(&gossipMsg{Instances: []*instanceRec{{Service: "s", Instance: "i", Tables: []transport.TableInfo{{Mode: "push"}}}}}),
		"a subscription name bad": mustEncode(&gossipMsg{Instances: []*instanceRec{{Service: "s", Instance: "i", Subs: []transport.SubInfo{{Service: "a b", Table: "t"}}}}}),
		"a negative MinSync":      mustEncode(&gossipMsg{Instances: []*instanceRec{{Service: "s", Instance: "i", Owner: true, MinSync: -1}}}),
		"a MinSync above the cap": mustEncode(&gossipMsg{Instances: []*instanceRec{{Service: "s", Instance: "i", Owner: true, MinSync: transport.MaxMinSyncStandbys + 1}}}),
		"a string where a number": {gossipVersion, 0x81, 0xa1, 'i', 0x91, 0x83, 0xa3, 's', 'v', 'c', 0xa1, 's', 0xa4, 'i', 'n', 's', 't', 0xa1, 'i', 0xa2, 'e', 'p', 0xa1, '1'},
	}
	for name, b := range tests {
		t.Run(name, func(t *testing.T) {
			if g, err := decodeGossip(b); err == nil {
				t.Fatalf("decodeGossip(%x) = %+v, want an error", b, g)
			}
		})
	}
}

func FuzzDecodeGossip(f *testing.F) {
	f.Add(mustEncode(randomRecords(rand.New(rand.NewPCG(1, 2)))))
	f.Add(mustEncode(fullRecords()))
	f.Add([]byte{gossipVersion})
	for _, b := range hostileClaims() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		g, allocated, err := decodeAllocs(b)
		if allocated > allocLimit(len(b)) {
			t.Fatalf("decodeGossip(%x) allocated %d bytes, want at most %d", b, allocated, allocLimit(len(b)))
		}
		if err != nil {
			return
		}
		// What the decoder accepts, msgpack/v5 decodes the same way (its
		// allocations are bounded now: every claim was checked).
		want := new(gossipMsg)
		if err := msgpack.Unmarshal(b[1:], want); err != nil {
			t.Fatalf("decodeGossip accepted %x, msgpack refuses it: %v", b, err)
		}
		if got, exp := mustEncode(g), mustEncode(want); !bytes.Equal(got, exp) {
			t.Fatalf("decodeGossip(%x) re-encodes to %x, msgpack's decoding to %x", b, got, exp)
		}
		r := newRegistry()
		for _, rec := range g.Instances {
			r.mergeInstance(rec)
		}
		for _, s := range r.services() {
			r.serviceOwner(s, true)
		}
	})
}
