package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/replmesh/replmesh/broker"
	"github.com/replmesh/replmesh/replica"
	"github.com/replmesh/replmesh/transport"
)

// ctlIn runs replctl in this process with stdin.
func ctlIn(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := runIn(ctxT(t, 60*time.Second), args, strings.NewReader(stdin), &stdout, &stderr, func(string) string { return "" })
	t.Logf("replctl %q -> %d\nstdout:\n%s\nstderr:\n%s", args, code, stdout.String(), stderr.String())
	return result{stdout: stdout.String(), stderr: stderr.String(), code: code}
}

// restoreMesh is an in-process broker, the stores owner s1 (its data dir
// replaced to lose its disk) and two products consumers with data dirs
// and listeners, p1 and p2, replicating stores/managers.
type restoreMesh struct {
	broker  *broker.Broker
	owner   *replica.Component
	tbl     *replica.OwnedTable
	dirs    map[string]string
	comps   map[string]*replica.Component
	reps    map[string]*replica.Replica
	written map[string]string // key -> the newest value acknowledged
}

func (m *restoreMesh) openOwner(t *testing.T) {
	t.Helper()
	cfg := replica.LocalConfig("stores", "s1")
	cfg.DataDir, cfg.Brokers, cfg.Owner, cfg.Logger = t.TempDir(), []string{m.broker.GRPCAddr()}, true, testLogger(t)
	c, err := replica.Open(ctxT(t, 20*time.Second), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	waitUntil(t, 30*time.Second, "s1 primary", func() bool { r, _ := c.Role(); return r == transport.RolePrimary })
	if m.tbl, err = c.Own("managers"); err != nil {
		t.Fatal(err)
	}
	m.owner = c
}

func (m *restoreMesh) openConsumer(t *testing.T, name string) {
	t.Helper()
	if m.dirs[name] == "" {
		m.dirs[name] = t.TempDir()
	}
	cfg := replica.LocalConfig("products", name)
	cfg.DataDir, cfg.Brokers, cfg.Logger = m.dirs[name], []string{m.broker.GRPCAddr()}, testLogger(t)
	c, err := replica.Open(ctxT(t, 20*time.Second), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	r, err := c.Subscribe(ctxT(t, 30*time.Second), replica.SubscribeOptions{Service: "stores", Table: "managers"})
	if err != nil {
		t.Fatal(err)
	}
	m.comps[name], m.reps[name] = c, r
}

// write puts n rows (keys store00.. wrapping at 35, so later rows
// overwrite earlier ones) tagged tag and returns the head.
func (m *restoreMesh) write(t *testing.T, from, n int, tag string) uint64 {
	t.Helper()
	var seq uint64
	for i := from; i < from+n; i++ {
		k, v := fmt.Sprintf("store%02d", i%35), fmt.Sprintf("manager-%s-%d", tag, i)
		seq = put(t, m.tbl, k, v)
		m.written[k] = v
	}
	return seq
}

// TestRestore_Command: replctl restore against a real broker, owner and
// consumers. The owner loses its disk (p1 holds seq 30 of the old history,
// p2 seq 50) and writes one change of its new history; each refusal changes
// nothing and says why, the dry run lists the candidates with their
// positions and picks p2, an answer other than y changes nothing, and the
// confirmed restore brings back every row p2 held and the history goes on.
func TestRestore_Command(t *testing.T) {
	bcfg := broker.LocalConfig("b1")
	bcfg.Logger = testLogger(t)
	b, err := broker.New(ctxT(t, 20*time.Second), bcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	m := &restoreMesh{broker: b, dirs: map[string]string{}, comps: map[string]*replica.Component{},
		reps: map[string]*replica.Replica{}, written: map[string]string{}}
	m.openOwner(t)
	m.openConsumer(t, "p1")
	m.openConsumer(t, "p2")
	head := m.write(t, 0, 30, "a")
	for _, r := range m.reps {
		if err := r.WaitFor(ctxT(t, 20*time.Second), head); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.comps["p1"].Close(); err != nil {
		t.Fatal(err)
	}
	if head = m.write(t, 30, 20, "b"); head != 50 {
		t.Fatalf("head %d, want 50", head)
	}
	if err := m.reps["p2"].WaitFor(ctxT(t, 20*time.Second), head); err != nil {
		t.Fatal(err)
	}
	want, err := m.reps["p2"].Digest(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	oldLog := want.LogID

	// The disk is lost: s1 comes back empty and takes a write of its new
	// history; p1 comes back at 30.
	if err := m.owner.Close(); err != nil {
		t.Fatal(err)
	}
	m.openOwner(t)
	newLog := m.tbl.LogID()
	put(t, m.tbl, "after-the-loss", "x")
	m.openConsumer(t, "p1")
	// The record of p1's closed component may still be listed at 30 for a
	// moment: wait for the one of its new component (its new address),
	// which the broker lists once the new replica reported its position.
	waitUntil(t, 30*time.Second, "the broker lists the reopened p1 at 30 and p2 at 50 of the old history", func() bool {
		got := 0
		for _, rc := range restoreCandidates(registry(t, b.GRPCAddr()), "stores", "managers") {
			c := m.comps[rc.Instance]
			if rc.BrokerLogID == oldLog && c != nil && rc.Addr == c.Addr() &&
				(rc.Instance == "p1" && rc.BrokerSeq == 30 || rc.Instance == "p2" && rc.BrokerSeq == 50) {
				got++
			}
		}
		return got == 2
	})

	br := "-broker=" + b.GRPCAddr()
	unchanged := func(t *testing.T) {
		t.Helper()
		if m.tbl.LogID() != newLog || m.tbl.Head() != 1 {
			t.Fatalf("the owner changed: log %s head %d, want %s at 1", m.tbl.LogID(), m.tbl.Head(), newLog)
		}
	}
	tests := []struct {
		name     string
		args     []string
		stdin    string
		code     int
		stderr   []string
		stdout   []string
		check    func(t *testing.T, r result)
		restores bool
	}{
		{name: "no replica holds the owner's new history", args: []string{"restore", "-yes", "stores/managers"}, code: exitError,
			stderr: []string{"restore refused", "no candidate holds log " + newLog, "-override-log-id"}, stdout: []string{"p1", "p2", oldLog}},
		{name: "a named replica of another history", args: []string{"restore", "-yes", "-from", "p2", "stores/managers"}, code: exitError,
			stderr: []string{"restore refused", "the expected history is log " + newLog, "-override-log-id"}},
		{name: "an unknown replica", args: []string{"restore", "-from", "nosuch", "stores/managers"}, code: exitUsage,
			stderr: []string{`-from "nosuch"`, "products/p1", "products/p2"}},
		{name: "an unknown service", args: []string{"restore", "-yes", "nosuch/managers"}, code: exitError,
			stderr: []string{`no service "nosuch"`}},
		{name: "no table argument", args: []string{"restore", "-yes"}, code: exitUsage},
		{name: "watch with nothing run yet", args: []string{"restore", "-watch", "stores/managers"}, code: exitOK,
			stdout: []string{"no restore of stores/managers since s1 opened"}},
		{name: "watch takes no -yes", args: []string{"restore", "-watch", "-yes", "stores/managers"}, code: exitUsage,
			stderr: []string{"-watch starts nothing"}},
		{name: "dry run", args: []string{"-o", "json", "restore", "-dry-run", "-override-log-id", oldLog, "stores/managers"}, code: exitOK,
			check: func(t *testing.T, r result) {
				var rep restoreReport
				if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
					t.Fatalf("%v: %s", err, r.stdout)
				}
				if rep.Restored || rep.Source.Instance != "p2" || rep.Seq != 50 || rep.LogID != oldLog || rep.OwnerHead != 1 ||
					rep.OwnerLogID != newLog || rep.ExpectedLogID != newLog || rep.OverrideLogID != oldLog || len(rep.Candidates) != 2 {
					t.Fatalf("dry run report %+v", rep)
				}
				for _, rc := range rep.Candidates {
					wantSeq := map[string]uint64{"p1": 30, "p2": 50}[rc.Instance]
					if rc.Seq != wantSeq || rc.LogID != oldLog || rc.Error != "" || rc.Chosen != (rc.Instance == "p2") || rc.Addr == "" {
						t.Errorf("candidate %+v: want seq %d of log %s", rc, wantSeq, oldLog)
					}
				}
			}},
		{name: "not confirmed", args: []string{"restore", "-override-log-id", oldLog, "stores/managers"}, stdin: "n\n", code: exitError,
			stderr: []string{"[y/N]", "not confirmed: nothing changed"}},
		{name: "no answer", args: []string{"restore", "-override-log-id", oldLog, "stores/managers"}, code: exitError,
			stderr: []string{"not confirmed"}},
		{name: "confirmed: from the most advanced", args: []string{"restore", "-override-log-id", oldLog, "stores/managers"}, stdin: "y\n",
			code: exitOK, restores: true, stdout: []string{"* ", "products/p2", "restored stores/managers on s1 from products/p2", "at seq 50"},
			stderr: []string{"restoring from products/p2", "done: the table takes writes"}},
		{name: "watch the last restore", args: []string{"restore", "-watch", "stores/managers"}, code: exitOK, restores: true,
			stdout: []string{"done: the table takes writes at epoch"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := ctlIn(t, tc.stdin, append([]string{br}, tc.args...)...)
			if r.code != tc.code {
				t.Fatalf("exit %d, want %d: %v", r.code, tc.code, r)
			}
			for _, w := range tc.stderr {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr does not say %q", w)
				}
			}
			for _, w := range tc.stdout {
				if !strings.Contains(r.stdout, w) {
					t.Errorf("stdout does not say %q", w)
				}
			}
			if tc.check != nil {
				tc.check(t, r)
			}
			if !tc.restores {
				unchanged(t)
			}
		})
	}

	// The owner holds p2's copy, continues its history, and both
	// consumers converge with it.
	got, err := m.tbl.Digest(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got.LogID != oldLog || got.Seq != 50 || !bytes.Equal(got.Hash, want.Hash) {
		t.Fatalf("owner after the restore: log %s seq %d hash %x; p2 held log %s seq 50 hash %x", got.LogID, got.Seq, got.Hash, oldLog, want.Hash)
	}
	for k, v := range m.written {
		val, found, err := m.tbl.Get([]byte(k))
		if err != nil || !found || string(val) != v {
			t.Fatalf("owner row %s = %q (found %v, %v), want %q", k, val, found, err, v)
		}
	}
	head = m.write(t, 50, 5, "c")
	for name, r := range m.reps {
		if err := r.WaitFor(ctxT(t, 30*time.Second), head); err != nil {
			t.Fatalf("%s: %v (%+v)", name, err, r.Status())
		}
		d, err := r.Digest(nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		o, err := m.tbl.Digest(nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if d.LogID != o.LogID || d.Seq != o.Seq || !bytes.Equal(d.Hash, o.Hash) {
			t.Fatalf("%s: digest %x at %d (log %s), owner %x at %d (log %s)", name, d.Hash, d.Seq, d.LogID, o.Hash, o.Seq, o.LogID)
		}
	}
}

// The progress lines of a running restore.
func TestPrintRestoreProgress(t *testing.T) {
	src := transport.RestoreSource{Service: "products", Instance: "p2", Addr: "127.0.0.1:7001"}
	tests := []struct {
		name string
		f    transport.RestoreStatus
		want string
	}{
		{"plan", transport.RestoreStatus{Phase: transport.RestorePhasePlan, Source: src, LogID: "L1", Seq: 50},
			"restoring from products/p2@127.0.0.1:7001 (log L1, seq 50)\n"},
		{"transfer with a known count", transport.RestoreStatus{Phase: transport.RestorePhaseTransfer, Rows: 250000, Expected: 1000000,
			Bytes: 66_000_000, Rate: 125000, EtaMs: 6000}, "transfer 250000/1000000 25% 125k rows/s ETA 6s, 66.0 MB\n"},
		{"transfer with an unknown count", transport.RestoreStatus{Phase: transport.RestorePhaseTransfer, Rows: 900, Bytes: 900},
			"transfer 900 rows, 900 B\n"},
		{"epoch", transport.RestoreStatus{Phase: transport.RestorePhaseEpoch, Rows: 10, Bytes: 2048, ElapsedMs: 1500},
			"copy complete: 10 rows (2.0 kB) in 1.5s; waiting for the new epoch\n"},
		{"done", transport.RestoreStatus{Phase: transport.RestorePhaseDone, Seq: 50, NewEpoch: 4},
			"done: the table takes writes at epoch 4 from seq 51\n"},
		{"failed", transport.RestoreStatus{Phase: transport.RestorePhaseFailed, Err: "restore managers: unavailable: the source ended the stream early"},
			"failed: restore managers: unavailable: the source ended the stream early\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			printRestoreProgress(&b, &tc.f)
			if got := b.String(); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// -from names a replica by instance, SERVICE/INSTANCE or address.
func TestPickSource(t *testing.T) {
	cands := []restoreCandidate{
		{Service: "products", Instance: "p1", Addr: "127.0.0.1:7001"},
		{Service: "orders", Instance: "p1", Addr: "127.0.0.1:7002"},
		{Service: "orders", Instance: "o2", Addr: "127.0.0.1:7003"},
	}
	tests := []struct {
		from    string
		want    transport.RestoreSource
		wantErr string
	}{
		{from: "o2", want: transport.RestoreSource{Service: "orders", Instance: "o2", Addr: "127.0.0.1:7003"}},
		{from: "products/p1", want: transport.RestoreSource{Service: "products", Instance: "p1", Addr: "127.0.0.1:7001"}},
		{from: "127.0.0.1:7002", want: transport.RestoreSource{Service: "orders", Instance: "p1", Addr: "127.0.0.1:7002"}},
		{from: "10.0.0.9:7400", want: transport.RestoreSource{Addr: "10.0.0.9:7400"}},
		{from: "p1", wantErr: "names several replicas (products/p1, orders/p1)"},
		{from: "orders/nosuch", wantErr: "no replica of that name"},
	}
	for _, tc := range tests {
		t.Run(tc.from, func(t *testing.T) {
			got, err := pickSource(cands, tc.from)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}
