package broker

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/replmesh/replmesh/transport"
)

// randomRecords returns records as several brokers might write them for a
// few instances and services: sessions on different brokers, several
// writes per session, tombstones. (Owner records and overrides are
// decided through raft, not merged: fsm_test.go.)
func randomRecords(rng *rand.Rand) *gossipMsg {
	g := &gossipMsg{}
	brokers := []string{"b1", "b2", "b3"}
	for range 60 {
		svc := fmt.Sprintf("s%d", rng.IntN(3))
		rec := &instanceRec{
			Service:   svc,
			Instance:  fmt.Sprintf("i%d", rng.IntN(3)),
			Addr:      fmt.Sprintf("127.0.0.1:%d", 9000+rng.IntN(5)),
			Owner:     rng.IntN(2) == 0,
			MinSync:   rng.IntN(3),
			Session:   sessionID{Start: int64(rng.IntN(4)), Broker: brokers[rng.IntN(3)]},
			Ver:       version{Clock: uint64(rng.IntN(6)), Broker: brokers[rng.IntN(3)]},
			Connected: rng.IntN(2) == 0,
			Gone:      rng.IntN(5) == 0,
			Tables:    []transport.TableInfo{{Table: "t", Head: uint64(rng.IntN(100))}},
		}
		g.Instances = append(g.Instances, rec)
	}
	return g
}

// Records written with the same (session, version) by one broker always
// have the same content; the generator does not know that, so keep only
// the first of each such pair to stay within the model.
func dedupe(g *gossipMsg) {
	type ik struct {
		k instKey
		s sessionID
		v version
	}
	seen := map[ik]bool{}
	var insts []*instanceRec
	for _, r := range g.Instances {
		k := ik{r.key(), r.Session, r.Ver}
		if !seen[k] {
			seen[k] = true
			insts = append(insts, r)
		}
	}
	g.Instances = insts
}

func TestRegistry_MergeIsOrderIndependent(t *testing.T) {
	for seed := uint64(1); seed <= 200; seed++ {
		rng := rand.New(rand.NewPCG(seed, 7))
		g := randomRecords(rng)
		dedupe(g)
		var want []byte
		for run := range 4 {
			// Deliver in a random order, split into random batches, with
			// random duplicates, as broadcasts and state exchanges would.
			r := newRegistry()
			for _, i := range rng.Perm(len(g.Instances)) {
				for range 1 + rng.IntN(2) {
					r.mergeInstance(g.Instances[i])
				}
			}
			got := mustEncode(r.snapshot())
			if run == 0 {
				want = got
				continue
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("seed %d: registries differ after merging the same records in another order", seed)
			}
		}
	}
}

func TestRegistry_MergeRules(t *testing.T) {
	t.Run("newer session wins over a later write of an older session", func(t *testing.T) {
		r := newRegistry()
		newer := &instanceRec{Service: "s", Instance: "i", Addr: "new:1", Session: sessionID{Start: 20, Broker: "b2"}, Ver: version{Clock: 1, Broker: "b2"}, Connected: true}
		stale := &instanceRec{Service: "s", Instance: "i", Addr: "old:1", Session: sessionID{Start: 10, Broker: "b1"}, Ver: version{Clock: 99, Broker: "b1"}}
		r.mergeInstance(newer)
		if _, kept := r.mergeInstance(stale); kept {
			t.Fatal("a stale session's disconnect replaced a newer session")
		}
		if got := r.inst(instKey{"s", "i"}).Addr; got != "new:1" {
			t.Fatalf("addr %q", got)
		}
	})
	t.Run("within a session the later write wins", func(t *testing.T) {
		r := newRegistry()
		s := sessionID{Start: 10, Broker: "b1"}
		r.mergeInstance(&instanceRec{Service: "s", Instance: "i", Session: s, Ver: version{Clock: 5, Broker: "b1"}, Gone: true})
		r.mergeInstance(&instanceRec{Service: "s", Instance: "i", Session: s, Ver: version{Clock: 4, Broker: "b1"}, Connected: true})
		if rec := r.inst(instKey{"s", "i"}); !rec.Gone {
			t.Fatal("an older write replaced the tombstone")
		}
		if r.clock != 5 {
			t.Fatalf("clock %d after merging clock 5, want 5", r.clock)
		}
		if v := r.next("b3", 0); v.Clock != 6 {
			t.Fatalf("next write clock %d, want 6", v.Clock)
		}
	})
}

func TestRegistry_BestStandby(t *testing.T) {
	rec := func(inst string, heads ...uint64) *instanceRec {
		r := &instanceRec{Service: "s", Instance: inst, Owner: true}
		for _, h := range heads {
			r.Tables = append(r.Tables, transport.TableInfo{Table: fmt.Sprint(len(r.Tables)), Head: h})
		}
		return r
	}
	tests := []struct {
		name  string
		cands []*instanceRec
		want  string
	}{
		{"none", nil, ""},
		{"greatest sum", []*instanceRec{rec("a", 5, 5), rec("b", 9, 2), rec("c", 1, 1)}, "b"},
		{"tie goes to the smaller name", []*instanceRec{rec("c", 4), rec("a", 2, 2), rec("b", 4)}, "a"},
		{"no tables", []*instanceRec{rec("z"), rec("y")}, "y"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ""
			if b := bestStandby(tt.cands); b != nil {
				got = b.Instance
			}
			if got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestGossip_DecodeRejectsGarbage(t *testing.T) {
	good := mustEncode(&gossipMsg{Instances: []*instanceRec{{Service: "s", Instance: "i"}}})
	if _, err := decodeGossip(good); err != nil {
		t.Fatalf("good payload: %v", err)
	}
	bad := []struct {
		name    string
		payload []byte
	}{
		{"empty", nil},
		{"another version", []byte{gossipVersion + 1}},
		{"not msgpack", append([]byte{gossipVersion}, 0xc1)},
		{"instance without a service", mustEncode(&gossipMsg{Instances: []*instanceRec{{Service: "", Instance: "i"}}})},
		{"truncated", append([]byte{}, good[:len(good)-3]...)},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := decodeGossip(tt.payload); err == nil {
				t.Errorf("payload %q decoded without error", tt.name)
			}
		})
	}
}
