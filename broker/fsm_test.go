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
// proposals committed late would be); now and then a proposer gets a
// grant wrong outright (any epoch, decided on the current grant: an older
// build or a bug), which only the state machine's epoch check stops;
// mode overrides are set and cleared, brokers are added and removed.
// Every replica applies the log at its own pace; some restart from their
// own snapshot, some lagging ones install a more advanced replica's
// snapshot (as raft sends one), and all replay the rest. At the end every
// replica holds the same state, byte for byte, as do a full replay from
// index 1 and a replay from a snapshot at a random index; and no epoch of
// a service was ever applied for two instances on any replica, nor
// granted unless above every epoch granted before it.
func TestFSM_ReplicasAgreeAndEpochsAreUnique(t *testing.T) {
	for seed := uint64(1); seed <= 500; seed++ {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			runFSMHistory(t, seed)
		})
	}
}

// fsmEntry is one committed entry of the model log: a command, or a
// configuration change adding or removing a broker.
type fsmEntry struct {
	c      *command
	add    *transport.RaftMember
	remove uint64
}

// applyModel applies entry e at index to f as raftNode.applyEntry does.
func applyModel(f *fsm, index uint64, e fsmEntry) (*grantEvent, error) {
	switch {
	case e.add != nil:
		f.addMember(index, *e.add)
		return nil, nil
	case e.remove != 0:
		f.removeMember(index, e.remove)
		return nil, nil
	}
	return f.apply(index, e.c)
}

// grantLedger records every grant applied on any replica: an epoch of a
// service must always name the same instance, and the grants one replica
// applies must rise.
type grantLedger struct {
	t      *testing.T
	seed   uint64
	owner  map[string]map[uint64]string // service -> epoch -> instance
	last   map[*fsm]map[string]uint64   // replica -> service -> last epoch applied
	grants int
}

func (l *grantLedger) record(f *fsm, ev *grantEvent) {
	l.t.Helper()
	if ev == nil {
		return
	}
	l.grants++
	if l.owner[ev.Service] == nil {
		l.owner[ev.Service] = map[uint64]string{}
	}
	if who, ok := l.owner[ev.Service][ev.Epoch]; ok && who != ev.Instance {
		l.t.Fatalf("%s epoch %d applied for %s and for %s (seed %d)", ev.Service, ev.Epoch, who, ev.Instance, l.seed)
	}
	l.owner[ev.Service][ev.Epoch] = ev.Instance
	if l.last[f] == nil {
		l.last[f] = map[string]uint64{}
	}
	if ev.Epoch <= l.last[f][ev.Service] {
		l.t.Fatalf("%s granted epoch %d after %d (seed %d)", ev.Service, ev.Epoch, l.last[f][ev.Service], l.seed)
	}
	l.last[f][ev.Service] = ev.Epoch
}

func runFSMHistory(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, seed*7919))
	const nodes, steps = 3, 400
	services := []string{"stores", "orders", "billing"}
	instances := []string{"a", "b", "c", "d"}
	ledger := &grantLedger{t: t, seed: seed, owner: map[string]map[uint64]string{}, last: map[*fsm]map[string]uint64{}}

	// Soft state: what gossip would carry, as the leader sees it.
	soft := map[string]map[string]*instanceRec{}
	for _, s := range services {
		soft[s] = map[string]*instanceRec{}
	}
	alive := func(string) bool { return true }

	var log []fsmEntry
	replicas := make([]*fsm, nodes)
	for i := range replicas {
		replicas[i] = newFSM()
	}
	// applyTo applies the log to replica i up to n entries.
	applyTo := func(i, n int) {
		f := replicas[i]
		for idx := int(f.applied); idx < n; idx++ {
			ev, _ := applyModel(f, uint64(idx+1), log[idx])
			ledger.record(f, ev)
		}
	}
	leader := 0
	members := map[uint64]bool{}
	nextMember := uint64(1)
	for step := range steps {
		svc := services[rng.IntN(len(services))]
		inst := instances[rng.IntN(len(instances))]
		switch op := rng.IntN(12); {
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
		case op < 7: // a broker is added, or one removed
			if len(members) > 0 && rng.IntN(3) == 0 {
				for id := range members {
					log = append(log, fsmEntry{remove: id})
					delete(members, id)
					break
				}
			} else {
				m := transport.RaftMember{ID: nextMember, Name: fmt.Sprintf("b%d", nextMember), Addr: "127.0.0.1:2"}
				log = append(log, fsmEntry{add: &m})
				members[nextMember] = true
				nextMember++
			}
		case op < 8: // a wrong grant: any epoch, decided on the current grant
			var cur uint64
			if o := replicas[leader].owners[svc]; o != nil {
				cur = o.Epoch
			}
			log = append(log, fsmEntry{c: &command{Kind: cmdGrant, Service: svc, Instance: inst,
				Epoch: uint64(rng.IntN(int(cur) + 2)), Prev: cur}})
		default: // the leader decides on its copy and proposes
			view := replicas[leader]
			o := view.owners[svc]
			if best, epoch, ok := nextGrant(soft[svc], o, grantView{alive: alive, minSync: rng.IntN(3)}); ok {
				c := &command{Kind: cmdGrant, Service: svc, Instance: best.Instance, Epoch: epoch}
				if o != nil {
					c.Prev = o.Epoch
				}
				log = append(log, fsmEntry{c: c})
			}
			if rng.IntN(8) == 0 {
				log = append(log, fsmEntry{c: &command{Kind: cmdMode, Service: svc, Table: "t", Mode: []string{"", "push", "pull"}[rng.IntN(3)]}})
			}
		}
		// Replicas apply at their own pace; the leader usually keeps up.
		for i := range replicas {
			if i == leader && rng.IntN(4) != 0 || rng.IntN(3) == 0 {
				applyTo(i, int(replicas[i].applied)+rng.IntN(len(log)-int(replicas[i].applied)+1))
			}
		}
		switch rng.IntN(40) {
		case 0: // a replica restarts from its own snapshot
			i := rng.IntN(nodes)
			r := newFSM()
			if err := r.restore(replicas[i].encode()); err != nil {
				t.Fatalf("step %d: restore: %v", step, err)
			}
			replicas[i] = r
		case 1: // a lagging replica installs the most advanced one's snapshot
			i, j := rng.IntN(nodes), 0
			for k := range replicas {
				if replicas[k].applied > replicas[j].applied {
					j = k
				}
			}
			if replicas[i].applied < replicas[j].applied {
				if err := replicas[i].restore(replicas[j].encode()); err != nil {
					t.Fatalf("step %d: install snapshot: %v", step, err)
				}
			}
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
	// A replay of the whole log from index 1, and one from a snapshot at a
	// random point, give the same state.
	full, cut := newFSM(), newFSM()
	at := rng.IntN(len(log) + 1)
	for idx, e := range log {
		if idx == at {
			r := newFSM()
			if err := r.restore(cut.encode()); err != nil {
				t.Fatal(err)
			}
			cut = r
		}
		ev, _ := applyModel(full, uint64(idx+1), e)
		ledger.record(full, ev)
		ev, _ = applyModel(cut, uint64(idx+1), e)
		ledger.record(cut, ev)
	}
	if !bytes.Equal(full.encode(), replicas[0].encode()) {
		t.Fatalf("a full replay of the log differs (seed %d)", seed)
	}
	if !bytes.Equal(cut.encode(), replicas[0].encode()) {
		t.Fatalf("a replay from a snapshot at %d differs (seed %d)", at, seed)
	}
	if ledger.grants == 0 || len(replicas[0].members) != len(members) {
		t.Fatalf("%d grants applied, %d members (want %d): the history tested nothing (seed %d)",
			ledger.grants, len(replicas[0].members), len(members), seed)
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
