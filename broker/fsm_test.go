package broker

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/replmesh/replmesh/transport"
)

// TestFSM_ReplicasAgreeAndEpochsAreUnique drives the decided state with
// random histories: instances register (reporting epochs), their sessions
// end, their leases lapse; the raft leader changes, and each new leader
// decides on its own copy of the decided state, which may lag the log (so
// it proposes grants decided on stale state, as a deposed leader's
// proposals committed late would be). Every replica applies the log at
// its own pace, some restart from a snapshot taken at a random point and
// replay the rest. At the end every replica holds the same state, byte
// for byte, and no epoch of a service was ever granted to two instances,
// or granted at all unless above every epoch before it.
func TestFSM_ReplicasAgreeAndEpochsAreUnique(t *testing.T) {
	for seed := uint64(1); seed <= 200; seed++ {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			runFSMHistory(t, seed)
		})
	}
}

func runFSMHistory(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, seed*7919))
	const nodes, steps = 3, 400
	services := []string{"stores", "orders", "billing"}
	instances := []string{"a", "b", "c", "d"}

	// Soft state: what gossip would carry, as the leader sees it.
	soft := map[string]map[string]*instanceRec{}
	for _, s := range services {
		soft[s] = map[string]*instanceRec{}
	}
	alive := func(string) bool { return true }

	var log []*command
	replicas := make([]*fsm, nodes)
	for i := range replicas {
		replicas[i] = newFSM()
	}
	// applyTo applies the log to replica i up to n entries.
	applyTo := func(i, n int) {
		f := replicas[i]
		for idx := int(f.applied); idx < n; idx++ {
			_, _ = f.apply(uint64(idx+1), log[idx])
		}
	}
	leader := 0
	for step := range steps {
		svc := services[rng.IntN(len(services))]
		inst := instances[rng.IntN(len(instances))]
		switch op := rng.IntN(10); {
		case op < 3: // register (or re-register) with some data
			rec := &instanceRec{Service: svc, Instance: inst, Owner: true, Connected: true,
				Addr: "127.0.0.1:1", Epoch: uint64(rng.IntN(4)),
				Tables: []transport.TableInfo{{Table: "t", Head: uint64(rng.IntN(100))}}}
			soft[svc][inst] = rec
		case op < 4: // session ends
			if r := soft[svc][inst]; r != nil {
				r.Connected = false
			}
		case op < 5: // lease lapses
			if r := soft[svc][inst]; r != nil {
				r.Gone, r.Connected = true, false
			}
		case op < 6: // leader change: the new leader may lag
			leader = rng.IntN(nodes)
		default: // the leader decides on its copy and proposes
			view := replicas[leader]
			o := view.owners[svc]
			if best, epoch, ok := nextGrant(soft[svc], o, alive); ok {
				c := &command{Kind: cmdGrant, Service: svc, Instance: best.Instance, Epoch: epoch}
				if o != nil {
					c.Prev = o.Epoch
				}
				log = append(log, c)
			}
			if rng.IntN(8) == 0 {
				log = append(log, &command{Kind: cmdMode, Service: svc, Table: "t", Mode: []string{"", "push", "pull"}[rng.IntN(3)]})
			}
		}
		// Replicas apply at their own pace; the leader usually keeps up.
		for i := range replicas {
			if i == leader && rng.IntN(4) != 0 || rng.IntN(3) == 0 {
				applyTo(i, int(replicas[i].applied)+rng.IntN(len(log)-int(replicas[i].applied)+1))
			}
		}
		// Now and then a replica restarts from its snapshot.
		if rng.IntN(40) == 0 {
			i := rng.IntN(nodes)
			r := newFSM()
			if err := r.restore(replicas[i].encode()); err != nil {
				t.Fatalf("step %d: restore: %v", step, err)
			}
			replicas[i] = r
		}
	}
	for i := range replicas {
		applyTo(i, len(log))
	}
	for i := 1; i < nodes; i++ {
		if !bytes.Equal(replicas[i].encode(), replicas[0].encode()) {
			t.Fatalf("replica %d differs from replica 0 after the whole log (seed %d)", i, seed)
		}
	}
	// A replay of the whole log from scratch, and from a snapshot at a
	// random point, gives the same state.
	full := newFSM()
	cut := rng.IntN(len(log) + 1)
	var granted = map[string]map[uint64]string{}
	var last = map[string]uint64{}
	for idx, c := range log {
		if idx == cut {
			r := newFSM()
			if err := r.restore(full.encode()); err != nil {
				t.Fatal(err)
			}
			full = r
		}
		ev, err := full.apply(uint64(idx+1), c)
		if err != nil || ev == nil {
			continue
		}
		if granted[ev.Service] == nil {
			granted[ev.Service] = map[uint64]string{}
		}
		if who, ok := granted[ev.Service][ev.Epoch]; ok {
			t.Fatalf("%s epoch %d granted to %s and to %s (seed %d)", ev.Service, ev.Epoch, who, ev.Instance, seed)
		}
		if ev.Epoch <= last[ev.Service] {
			t.Fatalf("%s granted epoch %d after %d (seed %d)", ev.Service, ev.Epoch, last[ev.Service], seed)
		}
		granted[ev.Service][ev.Epoch] = ev.Instance
		last[ev.Service] = ev.Epoch
	}
	if !bytes.Equal(full.encode(), replicas[0].encode()) {
		t.Fatalf("a replay from a snapshot at %d differs (seed %d)", cut, seed)
	}
}

func TestFSM_RefusesGrants(t *testing.T) {
	f := newFSM()
	mustApply := func(i uint64, c *command) {
		t.Helper()
		if _, err := f.apply(i, c); err != nil {
			t.Fatalf("apply %d: %v", i, err)
		}
	}
	mustApply(1, &command{Kind: cmdGrant, Service: "s", Instance: "a", Epoch: 3})
	tests := []struct {
		name string
		c    *command
	}{
		{"the same epoch to another instance", &command{Kind: cmdGrant, Service: "s", Instance: "b", Epoch: 3, Prev: 3}},
		{"a lower epoch", &command{Kind: cmdGrant, Service: "s", Instance: "b", Epoch: 2, Prev: 3}},
		{"decided on a stale grant", &command{Kind: cmdGrant, Service: "s", Instance: "b", Epoch: 4, Prev: 0}},
		{"a bad name", &command{Kind: cmdGrant, Service: "s", Instance: "", Epoch: 9, Prev: 3}},
		{"an unknown command", &command{Kind: 99, Service: "s"}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := f.encode()
			if _, err := f.apply(uint64(2+i), tt.c); err == nil {
				t.Fatal("applied, want refused")
			}
			// Only the applied index moves.
			g := newFSM()
			_ = g.restore(before)
			g.applied = f.applied
			if !bytes.Equal(g.encode(), f.encode()) {
				t.Fatal("a refused command changed the state")
			}
		})
	}
	if o := f.owners["s"]; o.Primary != "a" || o.Epoch != 3 {
		t.Fatalf("owner %+v, want a at 3", o)
	}
}
