package broker

import (
	"math"
	"testing"
	"time"

	"github.com/replmesh/replmesh/transport"
)

func TestNextGrant(t *testing.T) {
	type inst struct {
		name      string
		broker    string // session broker; "dead" is not a live member, "woken" is one whose heads are not current yet
		owner     bool
		connected bool
		gone      bool
		epoch     uint64   // Register.Epoch
		tables    []uint64 // table epochs
		heads     []uint64
	}
	owner := func(name string, heads ...uint64) inst {
		return inst{name: name, broker: "b1", owner: true, connected: true, heads: heads}
	}
	with := func(i inst, f func(*inst)) inst { f(&i); return i }
	tests := []struct {
		name        string
		insts       []inst
		owner       *ownerRec // nil: none yet
		minSync     int       // the primary's MinSyncStandbys (0: unknown)
		wantPrimary string    // "": no grant
		wantEpoch   uint64
	}{
		{name: "no owner instance", insts: []inst{{name: "c1", broker: "b1", connected: true}}},
		{name: "first owner, epoch 1", insts: []inst{owner("s1")}, wantPrimary: "s1", wantEpoch: 1},
		{name: "first of several: the most data", insts: []inst{owner("s1", 3), owner("s2", 7)}, wantPrimary: "s2", wantEpoch: 1},
		{name: "above the epoch its data held at register",
			insts: []inst{with(owner("s1"), func(i *inst) { i.epoch = 5 })}, wantPrimary: "s1", wantEpoch: 6},
		{name: "above a table's epoch",
			insts: []inst{with(owner("s1"), func(i *inst) { i.tables = []uint64{2, 3} })}, wantPrimary: "s1", wantEpoch: 4},
		{name: "present primary keeps its lease", owner: &ownerRec{Epoch: 2, Primary: "s1"},
			insts: []inst{owner("s1"), owner("s2", 9)}},
		{name: "disconnected primary keeps its lease until it lapses", owner: &ownerRec{Epoch: 2, Primary: "s1"},
			insts: []inst{with(owner("s1"), func(i *inst) { i.connected = false }), owner("s2", 9)}},
		{name: "present primary granted again above a reported epoch", owner: &ownerRec{Epoch: 2, Primary: "s1"},
			insts: []inst{owner("s1"), with(owner("s2"), func(i *inst) { i.epoch = 5 })}, wantPrimary: "s1", wantEpoch: 6},
		{name: "a reported epoch at the grant's changes nothing", owner: &ownerRec{Epoch: 2, Primary: "s1"},
			insts: []inst{owner("s1"), with(owner("s2"), func(i *inst) { i.tables = []uint64{2} })}},
		{name: "lapsed primary: the standby with the most data", owner: &ownerRec{Epoch: 2, Primary: "s1"},
			insts:       []inst{with(owner("s1", 20), func(i *inst) { i.gone = true }), owner("s2", 5), owner("s3", 9)},
			wantPrimary: "s3", wantEpoch: 3},
		{name: "lapsed primary: a tie goes to the smaller name", owner: &ownerRec{Epoch: 2, Primary: "s1"},
			insts:       []inst{with(owner("s1"), func(i *inst) { i.gone = true }), owner("s3", 4), owner("s2", 2, 2)},
			wantPrimary: "s2", wantEpoch: 3},
		{name: "a primary record naming no present instance", owner: &ownerRec{Epoch: 4, Primary: "s9"},
			insts: []inst{owner("s2")}, wantPrimary: "s2", wantEpoch: 5},
		{name: "a primary record naming an instance that is no owner", owner: &ownerRec{Epoch: 4, Primary: "s1"},
			insts: []inst{with(owner("s1"), func(i *inst) { i.owner = false }), owner("s2")}, wantPrimary: "s2", wantEpoch: 5},
		{name: "no candidate: standbys on a dead broker, disconnected or gone", owner: &ownerRec{Epoch: 2, Primary: "s1"},
			insts: []inst{
				with(owner("s1"), func(i *inst) { i.gone = true }),
				with(owner("s2", 9), func(i *inst) { i.broker = "dead" }),
				with(owner("s3", 9), func(i *inst) { i.connected = false }),
				with(owner("s4", 9), func(i *inst) { i.gone = true }),
			}},
		// A promotion needs the heads of enough standbys that one of them
		// holds every acknowledged write: S-k+1 of the S standbys not
		// gone (k = minSync; 0, unknown: all of them).
		{name: "not the standby with less data while the other's broker is not alive", owner: &ownerRec{Epoch: 2, Primary: "s1"},
			insts: []inst{with(owner("s1"), func(i *inst) { i.gone = true }),
				with(owner("s2", 9), func(i *inst) { i.broker = "dead" }), owner("s3", 1)}},
		{name: "k 1 of 2 standbys: one unknown is one too many", owner: &ownerRec{Epoch: 2, Primary: "s1"}, minSync: 1,
			insts: []inst{with(owner("s1"), func(i *inst) { i.gone = true }),
				with(owner("s2", 9), func(i *inst) { i.broker = "dead" }), owner("s3", 1)}},
		{name: "not while the other standby's session ended (disconnected, within its lease)", owner: &ownerRec{Epoch: 2, Primary: "s1"},
			insts: []inst{with(owner("s1"), func(i *inst) { i.gone = true }),
				with(owner("s2", 9), func(i *inst) { i.connected = false }), owner("s3", 1)}},
		{name: "the standby re-homed to a live broker: its head is known, it has the most data", owner: &ownerRec{Epoch: 2, Primary: "s1"},
			insts: []inst{with(owner("s1"), func(i *inst) { i.gone = true }),
				with(owner("s2", 9), func(i *inst) { i.broker = "b2" }), owner("s3", 1)},
			wantPrimary: "s2", wantEpoch: 3},
		{name: "the unknown standby removed (lease lapsed): the other is promoted", owner: &ownerRec{Epoch: 2, Primary: "s1"},
			insts: []inst{with(owner("s1"), func(i *inst) { i.gone = true }),
				with(owner("s2", 9), func(i *inst) { i.broker, i.gone = "dead", true }), owner("s3", 1)},
			wantPrimary: "s3", wantEpoch: 3},
		{name: "k 2 of 2 standbys: every acknowledged write is on both, one head suffices", owner: &ownerRec{Epoch: 2, Primary: "s1"}, minSync: 2,
			insts: []inst{with(owner("s1"), func(i *inst) { i.gone = true }),
				with(owner("s2", 9), func(i *inst) { i.broker = "dead" }), owner("s3", 1)},
			wantPrimary: "s3", wantEpoch: 3},
		{name: "k above the standbys: one head still needed and enough", owner: &ownerRec{Epoch: 2, Primary: "s1"}, minSync: 3,
			insts: []inst{with(owner("s1"), func(i *inst) { i.gone = true }),
				with(owner("s2", 9), func(i *inst) { i.broker = "dead" }), owner("s3", 1)},
			wantPrimary: "s3", wantEpoch: 3},
		{name: "k 1 of 3 standbys, one unknown: no promotion", owner: &ownerRec{Epoch: 2, Primary: "s1"}, minSync: 1,
			insts: []inst{with(owner("s1"), func(i *inst) { i.gone = true }),
				with(owner("s2", 9), func(i *inst) { i.broker = "dead" }), owner("s3", 1), owner("s4", 2)}},
		{name: "k 2 of 3 standbys, one unknown: two heads suffice", owner: &ownerRec{Epoch: 2, Primary: "s1"}, minSync: 2,
			insts: []inst{with(owner("s1"), func(i *inst) { i.gone = true }),
				with(owner("s2", 9), func(i *inst) { i.broker = "dead" }), owner("s3", 1), owner("s4", 2)},
			wantPrimary: "s4", wantEpoch: 3},
		{name: "k 2 of 3 standbys, two unknown: no promotion", owner: &ownerRec{Epoch: 2, Primary: "s1"}, minSync: 2,
			insts: []inst{with(owner("s1"), func(i *inst) { i.gone = true }),
				with(owner("s2", 9), func(i *inst) { i.broker = "dead" }),
				with(owner("s3", 1), func(i *inst) { i.connected = false }), owner("s4", 2)}},
		{name: "k 3 of 3 standbys, two unknown: one head suffices", owner: &ownerRec{Epoch: 2, Primary: "s1"}, minSync: 3,
			insts: []inst{with(owner("s1"), func(i *inst) { i.gone = true }),
				with(owner("s2", 9), func(i *inst) { i.broker = "dead" }),
				with(owner("s3", 1), func(i *inst) { i.connected = false }), owner("s4", 2)},
			wantPrimary: "s4", wantEpoch: 3},
		{name: "not while the other standby's broker is alive again but its heads are not current", owner: &ownerRec{Epoch: 2, Primary: "s1"},
			insts: []inst{with(owner("s1"), func(i *inst) { i.gone = true }),
				with(owner("s2", 9), func(i *inst) { i.broker = "woken" }), owner("s3", 1)}},
		{name: "first grant: an owner on a broker whose heads are not current is a candidate",
			insts:       []inst{with(owner("s2", 9), func(i *inst) { i.broker = "woken" })},
			wantPrimary: "s2", wantEpoch: 1},
		{name: "one standby, connected: promoted", owner: &ownerRec{Epoch: 2, Primary: "s1"},
			insts:       []inst{with(owner("s1", 5), func(i *inst) { i.gone = true }), owner("s2", 5)},
			wantPrimary: "s2", wantEpoch: 3},
		{name: "one standby, its broker not alive: no promotion", owner: &ownerRec{Epoch: 2, Primary: "s1"}, minSync: 1,
			insts: []inst{with(owner("s1", 5), func(i *inst) { i.gone = true }),
				with(owner("s2", 5), func(i *inst) { i.broker = "dead" })}},
		{name: "first grant: the connected owner, an owner on a dead broker is not waited for",
			insts:       []inst{owner("s1", 1), with(owner("s2", 9), func(i *inst) { i.broker = "dead" })},
			wantPrimary: "s1", wantEpoch: 1},
		{name: "first grant: a disconnected owner is not waited for",
			insts:       []inst{owner("s1", 1), with(owner("s2", 9), func(i *inst) { i.connected = false })},
			wantPrimary: "s1", wantEpoch: 1},
		{name: "the last epoch a grant may take", owner: &ownerRec{Epoch: math.MaxUint64 - 2, Primary: "s1"},
			insts:       []inst{with(owner("s1"), func(i *inst) { i.gone = true }), owner("s2")},
			wantPrimary: "s2", wantEpoch: math.MaxUint64 - 1},
		{name: "no grant that would wrap: owner record", owner: &ownerRec{Epoch: math.MaxUint64 - 1, Primary: "s1"},
			insts: []inst{with(owner("s1"), func(i *inst) { i.gone = true }), owner("s2")}},
		{name: "no grant that would wrap: reported epoch",
			insts: []inst{with(owner("s1"), func(i *inst) { i.tables = []uint64{math.MaxUint64} })}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			insts := make(map[string]*instanceRec)
			for _, i := range tt.insts {
				rec := &instanceRec{Service: "s", Instance: i.name, Owner: i.owner, Connected: i.connected, Gone: i.gone,
					Epoch: i.epoch, Session: sessionID{Start: 1, Broker: i.broker}}
				for n, e := range i.tables {
					rec.Tables = append(rec.Tables, transport.TableInfo{Table: "e" + string(rune('0'+n)), Epoch: e})
				}
				for n, h := range i.heads {
					rec.Tables = append(rec.Tables, transport.TableInfo{Table: "h" + string(rune('0'+n)), Head: h})
				}
				insts[i.name] = rec
			}
			if tt.owner != nil {
				tt.owner.Service = "s"
			}
			view := grantView{
				alive:   func(broker string) bool { return broker != "dead" },
				current: func(broker string) bool { return broker != "dead" && broker != "woken" },
				minSync: tt.minSync,
			}
			best, epoch, ok := nextGrant(insts, tt.owner, view)
			got := ""
			if ok {
				got = best.Instance
			}
			if got != tt.wantPrimary || (ok && epoch != tt.wantEpoch) {
				t.Fatalf("nextGrant = %q at epoch %d (ok %v), want %q at epoch %d", got, epoch, ok, tt.wantPrimary, tt.wantEpoch)
			}
			if ok && best != insts[tt.wantPrimary] {
				t.Fatal("the primary is not the service's own record")
			}
		})
	}
}

func TestServiceMinSync(t *testing.T) {
	type inst struct {
		owner, gone bool
		k           int
	}
	tests := []struct {
		name  string
		insts []inst
		want  int
	}{
		{"no instance", nil, 0},
		{"every owner reports 2", []inst{{owner: true, k: 2}, {owner: true, k: 2}, {owner: true, k: 2}}, 2},
		{"they disagree: the smallest", []inst{{owner: true, k: 3}, {owner: true, k: 1}, {owner: true, k: 2}}, 1},
		{"one reports none: unknown", []inst{{owner: true, k: 2}, {owner: true}, {owner: true, k: 2}}, 0},
		{"a removed owner (the lapsed primary) counts", []inst{{owner: true, gone: true, k: 1}, {owner: true, k: 2}}, 1},
		{"a removed owner reporting none counts", []inst{{owner: true, gone: true}, {owner: true, k: 2}}, 0},
		{"consumers are left out", []inst{{owner: true, k: 2}, {k: 0}, {owner: true, k: 2}}, 2},
		{"consumers only", []inst{{}, {}}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			insts := make(map[string]*instanceRec)
			for n, i := range tt.insts {
				name := "i" + string(rune('0'+n))
				insts[name] = &instanceRec{Service: "s", Instance: name, Owner: i.owner, Gone: i.gone, MinSync: i.k}
			}
			if got := serviceMinSync(insts); got != tt.want {
				t.Fatalf("serviceMinSync = %d, want %d", got, tt.want)
			}
		})
	}
}

// decideLocked promotes with the k the service's instances report: the
// lapsed primary a and standbys b (the most data, on b3, which the leader
// does not hear), c (on the leader b1) and d (on b2). S = 3 standbys; with
// k = 2 any S-k+1 = 2 heads hold every acknowledged write, so c is
// promoted while b is unknown; with k unknown, or 1, all three are needed.
func TestBroker_DecideLockedUsesTheReportedMinSync(t *testing.T) {
	const ui = 50 * time.Millisecond
	now := time.Unix(1000, 0)
	tests := []struct {
		name        string
		ks          map[string]int // a, b, c, d; absent: 0
		b3Heard     bool
		wantPrimary string // "": no grant
	}{
		{"k 2 everywhere: two heads suffice", map[string]int{"a": 2, "b": 2, "c": 2, "d": 2}, false, "c"},
		{"k 2, b heard: the most data", map[string]int{"a": 2, "b": 2, "c": 2, "d": 2}, true, "b"},
		{"k unknown: waits for b", nil, false, ""},
		{"the lapsed primary reports none: waits for b", map[string]int{"b": 2, "c": 2, "d": 2}, false, ""},
		{"a standby reports 1 (the smallest): waits for b", map[string]int{"a": 2, "b": 2, "c": 2, "d": 1}, false, ""},
		{"k 1 everywhere, b heard: all three known", map[string]int{"a": 1, "b": 1, "c": 1, "d": 1}, true, "b"},
		{"k 3 everywhere: one head suffices", map[string]int{"a": 3, "b": 3, "c": 3, "d": 3}, false, "c"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := &Broker{cfg: Config{Name: "b1", UpdateInterval: ui}, reg: newRegistry(),
				raft: &raftNode{tick: ui}, inflight: make(map[string]time.Time)}
			b.live = []member{{Name: "b1", Raft: 1}, {Name: "b2", Raft: 2}, {Name: "b3", Raft: 3}}
			b.raftActive = map[uint64]bool{1: true, 2: true, 3: tt.b3Heard}
			b.aliveSince = map[string]time.Time{"b2": now.Add(-time.Hour), "b3": now.Add(-time.Hour)}
			b.reg.owners["stores"] = &ownerRec{Service: "stores", Primary: "a", Epoch: 1}
			for _, i := range []struct {
				name, broker string
				head         uint64
				gone         bool
			}{{"a", "b1", 10, true}, {"b", "b3", 10, false}, {"c", "b1", 8, false}, {"d", "b2", 4, false}} {
				b.reg.store(&instanceRec{Service: "stores", Instance: i.name, Addr: "127.0.0.1:9000", Owner: true,
					Tables: []transport.TableInfo{{Table: "t", Head: i.head}}, MinSync: tt.ks[i.name],
					Session: sessionID{Start: 1, Broker: i.broker}, Connected: !i.gone, Gone: i.gone})
			}
			b.reg.store(&instanceRec{Service: "stores", Instance: "reader", Connected: true, Session: sessionID{Start: 1, Broker: "b1"}})
			got := ""
			if cs := b.decideLocked("", now); len(cs) == 1 {
				if cs[0].Kind != cmdGrant || cs[0].Service != "stores" || cs[0].Epoch != 2 || cs[0].Prev != 1 {
					t.Fatalf("decideLocked = %+v, want a grant of stores at epoch 2 after 1", cs[0])
				}
				got = cs[0].Instance
			} else if len(cs) > 1 {
				t.Fatalf("decideLocked = %d commands, want at most one", len(cs))
			}
			if got != tt.wantPrimary {
				t.Fatalf("decideLocked promoted %q, want %q", got, tt.wantPrimary)
			}
		})
	}
}
