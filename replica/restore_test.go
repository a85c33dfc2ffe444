package replica

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/replmesh/replmesh/internal/faultproxy"
	"github.com/replmesh/replmesh/modes"
	"github.com/replmesh/replmesh/transport"
	"github.com/vmihailenco/msgpack/v5"
)

func TestCheckRestore(t *testing.T) {
	src := restoreHistory{LogID: "L", Epoch: 3, Seq: 100}
	tests := []struct {
		name      string
		own       restoreHistory
		src       restoreHistory
		expected  string
		override  string
		wantErr   bool
		wantParts []string
	}{
		{name: "an empty owner takes the expected history", own: restoreHistory{LogID: "N"}, src: src, expected: "L"},
		{name: "an owner behind on the same history (lost its tail) is restored", own: restoreHistory{LogID: "L", Epoch: 3, Seq: 60}, src: src, expected: "L"},
		{name: "an owner behind on the same history at an older epoch is restored", own: restoreHistory{LogID: "L", Epoch: 2, Seq: 60}, src: src, expected: "L"},
		{
			name: "an owner at the source's seq holds a newer history", own: restoreHistory{LogID: "L", Epoch: 3, Seq: 100}, src: src, expected: "L",
			wantErr: true, wantParts: []string{"newer history", "log L at epoch 3, seq 100"},
		},
		{
			name: "an owner beyond the source holds a newer history, override or not", own: restoreHistory{LogID: "M", Epoch: 5, Seq: 150}, src: src, expected: "M", override: "L",
			wantErr: true, wantParts: []string{"owner holds a newer history of its own (log M at epoch 5, seq 150) than the source (log L at epoch 3, seq 100)"},
		},
		{
			name: "an owner behind on the same history but at a newer epoch holds a newer history", own: restoreHistory{LogID: "L", Epoch: 4, Seq: 90}, src: src, expected: "L",
			wantErr: true, wantParts: []string{"newer history", "epoch 4, seq 90"},
		},
		{
			name: "a source of another history than expected is refused", own: restoreHistory{LogID: "N"}, src: src, expected: "K",
			wantErr: true, wantParts: []string{"the source holds log L at epoch 3, seq 100", "expected history is log K"},
		},
		{name: "the override names the source's history", own: restoreHistory{LogID: "N"}, src: src, expected: "K", override: "L"},
		{
			name: "an owner with a short history of its own needs the override", own: restoreHistory{LogID: "N", Epoch: 4, Seq: 3}, src: src, expected: "N",
			wantErr: true, wantParts: []string{"expected history is log N"},
		},
		{name: "an owner with a short history of its own, overridden", own: restoreHistory{LogID: "N", Epoch: 4, Seq: 3}, src: src, expected: "N", override: "L"},
		{
			name: "an override naming another log id does not help", own: restoreHistory{LogID: "N"}, src: src, expected: "K", override: "J",
			wantErr: true, wantParts: []string{"expected history is log K"},
		},
		{
			name: "a source with no copy", own: restoreHistory{LogID: "N"}, src: restoreHistory{LogID: "L"}, expected: "L",
			wantErr: true, wantParts: []string{"holds no copy"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkRestore("t", tt.own, tt.src, tt.expected, tt.override)
			if !tt.wantErr {
				if err != nil {
					t.Fatalf("checkRestore = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, transport.ErrRestoreRefused) {
				t.Fatalf("checkRestore = %v, want ErrRestoreRefused", err)
			}
			for _, p := range tt.wantParts {
				if !strings.Contains(err.Error(), p) {
					t.Errorf("checkRestore = %q, want it to mention %q", err, p)
				}
			}
		})
	}
}

func TestMostAdvanced(t *testing.T) {
	a := transport.ReplicaPosition{Source: transport.RestoreSource{Addr: "a"}, LogID: "L", Epoch: 2, Seq: 90}
	b := transport.ReplicaPosition{Source: transport.RestoreSource{Addr: "b"}, LogID: "L", Epoch: 3, Seq: 80}
	c := transport.ReplicaPosition{Source: transport.RestoreSource{Addr: "c"}, LogID: "L", Epoch: 3, Seq: 85}
	d := transport.ReplicaPosition{Source: transport.RestoreSource{Addr: "d"}, LogID: "M", Epoch: 1, Seq: 500}
	down := transport.ReplicaPosition{Source: transport.RestoreSource{Addr: "e"}, LogID: "L", Epoch: 9, Seq: 999, Err: "unavailable"}
	empty := transport.ReplicaPosition{Source: transport.RestoreSource{Addr: "f"}, LogID: "L", Epoch: 9}
	tests := []struct {
		name   string
		ps     []transport.ReplicaPosition
		logID  string
		want   string
		wantOK bool
	}{
		{"the newest epoch wins over more seqs of an older one", []transport.ReplicaPosition{a, b}, "", "b", true},
		{"same epoch: the highest seq", []transport.ReplicaPosition{b, c, a}, "", "c", true},
		{"any log id: the newest epoch", []transport.ReplicaPosition{d, a}, "", "a", true},
		{"restricted to a log id", []transport.ReplicaPosition{a, b, d}, "M", "d", true},
		{"candidates that failed or hold nothing are skipped", []transport.ReplicaPosition{down, empty, a}, "", "a", true},
		{"none", []transport.ReplicaPosition{down, empty}, "", "", false},
		{"none of the log id", []transport.ReplicaPosition{a}, "M", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := mostAdvanced(tt.ps, tt.logID)
			if ok != tt.wantOK || got.Source.Addr != tt.want {
				t.Fatalf("mostAdvanced = %s, %v; want %s, %v", got.Source.Addr, ok, tt.want, tt.wantOK)
			}
		})
	}
}

// pad makes the rows of the restore tests 1 KiB: a transfer of them takes
// several frames.
var pad = strings.Repeat("p", 1<<10)

// putRows writes rows k000.. with values v<i>-<tag>-<pad> and returns the
// head.
func putRows(t *testing.T, ctx context.Context, tbl *OwnedTable, from, n int, tag string) uint64 {
	t.Helper()
	var seq uint64
	for i := from; i < from+n; i++ {
		var err error
		if seq, err = tbl.Put(ctx, fmt.Appendf(nil, "k%03d", i), fmt.Appendf(nil, "v%d-%s-%s", i, tag, pad)); err != nil {
			t.Fatal(err)
		}
	}
	return seq
}

// restoreSetup is an owner (on addr, with data dir) of table t with rows
// k000..k119, and a consumer (with a listener) whose replica holds them.
type restoreSetup struct {
	addr   string
	owner  *Component
	tbl    *OwnedTable
	cons   *Component
	r      *Replica
	logID  string
	head   uint64
	digest transport.DigestResponse
}

func newRestoreSetup(t *testing.T) *restoreSetup {
	t.Helper()
	ctx := ctxT(t, 30*time.Second)
	s := &restoreSetup{addr: freeAddr(t)}
	s.owner = openComponent(t, "stores", "s1", t.TempDir(), s.addr)
	t.Cleanup(func() { _ = s.owner.Close() })
	var err error
	if s.tbl, err = s.owner.Own("t"); err != nil {
		t.Fatal(err)
	}
	putRows(t, ctx, s.tbl, 0, 100, "a")
	if _, err := s.tbl.Delete(ctx, []byte("k007")); err != nil {
		t.Fatal(err)
	}
	s.head = putRows(t, ctx, s.tbl, 100, 20, "a")
	s.logID = s.tbl.LogID()
	s.cons = openComponent(t, "products", "p1", "", "127.0.0.1:0")
	t.Cleanup(func() { _ = s.cons.Close() })
	if s.r, err = s.cons.Subscribe(ctx, SubscribeOptions{Service: "stores", Table: "t", Addr: s.addr}); err != nil {
		t.Fatal(err)
	}
	mustConverge(t, s.tbl, s.r)
	if s.digest, err = s.r.Digest(nil, nil); err != nil {
		t.Fatal(err)
	}
	return s
}

// loseDisk closes the owner and opens it again on its address with an
// empty data dir: a new, empty history.
func (s *restoreSetup) loseDisk(t *testing.T) {
	t.Helper()
	mustClose(t, s.owner)
	s.owner = openComponent(t, "stores", "s1", t.TempDir(), s.addr)
	t.Cleanup(func() { _ = s.owner.Close() })
	var err error
	if s.tbl, err = s.owner.Own("t"); err != nil {
		t.Fatal(err)
	}
	if s.tbl.LogID() == s.logID || s.tbl.Head() != 0 {
		t.Fatalf("owner after losing its disk: log %s head %d", s.tbl.LogID(), s.tbl.Head())
	}
}

// Restore of an owner that lost its disk from its consumer's replica:
// the owner gets every row back at the replica's seq, continues that
// history at a new epoch, and the consumer resumes (no second transfer).
// While the restore runs, writes, reads and subscriptions of the table are
// refused with ErrRestoring.
func TestRestore_FromReplica(t *testing.T) {
	s := newRestoreSetup(t)
	ctx := ctxT(t, 60*time.Second)
	s.loseDisk(t)
	waitUntil(t, 20*time.Second, "the replica sees the new, shorter history", func() bool { return s.r.Status().State == StateDiverged })
	transfersBefore := s.r.Status().Stats.FullTransfers
	oldEpoch := s.r.Status().Epoch

	var phases []string
	var during []error
	res, err := s.owner.Restore(ctx, "t", RestoreOptions{
		Source:        transport.RestoreSource{Addr: s.cons.Addr()},
		ProgressEvery: time.Nanosecond,
		Progress: func(p RestoreProgress) {
			if len(phases) == 0 || phases[len(phases)-1] != p.Phase {
				phases = append(phases, p.Phase)
			}
			if p.Phase != transport.RestorePhaseTransfer || during != nil {
				return
			}
			// Mid-transfer: the table refuses everything.
			_, perr := s.tbl.Put(ctx, []byte("x"), []byte("y"))
			_, _, gerr := s.tbl.Get([]byte("k001"))
			_, serr := s.tbl.Scan(nil, func(k, v []byte) bool { return true })
			_, derr := s.tbl.Digest(nil, nil)
			cl := rawClient(t, s.addr, transport.Options{})
			_, rerr := cl.Get(ctx, &transport.GetRequest{Version: transport.ProtocolVersion, Table: "t", Service: "products", Keys: [][]byte{[]byte("k001")}})
			sub, err := cl.Subscribe(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := sub.Send(&transport.ConsumerFrame{Kind: transport.KindOpen, Open: &transport.Open{Version: transport.ProtocolVersion,
				Service: "products", Instance: "p9", Table: "t"}}); err != nil {
				t.Fatal(err)
			}
			_, suberr := sub.Recv()
			during = []error{perr, gerr, serr, derr, transport.FromStatus(rerr), transport.FromStatus(suberr)}
		},
	})
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if want := []string{"plan", "transfer", "epoch", "done"}; strings.Join(phases, ",") != strings.Join(want, ",") {
		t.Errorf("progress phases %v, want %v", phases, want)
	}
	if len(during) != 6 {
		t.Fatalf("the progress callback saw no transfer phase")
	}
	for i, e := range during[:4] {
		if !errors.Is(e, ErrRestoring) {
			t.Errorf("local call %d during the restore: %v, want ErrRestoring", i, e)
		}
	}
	for i, e := range during[4:] {
		if !errors.Is(e, transport.ErrUnavailable) || !strings.Contains(e.Error(), "restored") {
			t.Errorf("remote call %d (Get, Subscribe) during the restore: %v, want ErrUnavailable saying it is being restored", i, e)
		}
	}
	if res.LogID != s.logID || res.Seq != s.head || res.Rows != uint64(s.digest.Rows) || res.NewEpoch <= oldEpoch {
		t.Fatalf("result %+v: want log %s seq %d, %d rows, a new epoch above %d", res, s.logID, s.head, s.digest.Rows, oldEpoch)
	}
	got, err := s.tbl.Digest(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got.LogID != s.digest.LogID || got.Seq != s.digest.Seq || string(got.Hash) != string(s.digest.Hash) {
		t.Fatalf("owner after restore: log %s seq %d hash %x; replica had log %s seq %d hash %x",
			got.LogID, got.Seq, got.Hash, s.digest.LogID, s.digest.Seq, s.digest.Hash)
	}
	// The history goes on: the consumer resumes from its cursor.
	seq := putRows(t, ctx, s.tbl, 200, 5, "b")
	if seq != s.head+5 {
		t.Fatalf("first writes after the restore end at seq %d, want %d", seq, s.head+5)
	}
	mustConverge(t, s.tbl, s.r)
	st := s.r.Status()
	if st.Stats.FullTransfers != transfersBefore || st.Stats.Resumes == 0 || st.Epoch != res.NewEpoch {
		t.Fatalf("consumer after the restore: %+v; want a resume (no new transfer) into epoch %d", st.Stats, res.NewEpoch)
	}
	// Restoring again is refused: the owner holds the replica's history
	// and more of it; nothing changes.
	_, err = s.owner.Restore(ctx, "t", RestoreOptions{Source: transport.RestoreSource{Addr: s.cons.Addr()}})
	if !errors.Is(err, transport.ErrRestoreRefused) || !strings.Contains(err.Error(), "newer history") {
		t.Fatalf("restore over the owner's own newer history: %v, want ErrRestoreRefused", err)
	}
	if h := s.tbl.Head(); h != seq {
		t.Fatalf("head after a refused restore: %d, want %d", h, seq)
	}
	if _, err := s.tbl.Put(ctx, []byte("after"), []byte("refusal")); err != nil {
		t.Fatalf("write after a refused restore: %v", err)
	}
}

// wantEmpty checks that t is an empty, readable table of a history other
// than notLog.
func wantEmpty(t *testing.T, tbl *OwnedTable, notLog string) {
	t.Helper()
	if tbl.Head() != 0 || tbl.LogID() == "" || tbl.LogID() == notLog {
		t.Fatalf("table after an interrupted restore: head %d log %q; want empty, a new history", tbl.Head(), tbl.LogID())
	}
	n := 0
	if _, err := tbl.Scan(nil, func(k, v []byte) bool { n++; return true }); err != nil {
		t.Fatalf("scan after an interrupted restore: %v", err)
	}
	if n != 0 {
		t.Fatalf("table after an interrupted restore holds %d rows, want none", n)
	}
}

// A restore cut off mid-transfer (the owner's call cancelled; the source's
// connection cut by a fault proxy) leaves the table empty, readable, and
// restorable again.
func TestRestore_Interrupted(t *testing.T) {
	tests := []struct {
		name string
		cut  func(cancel context.CancelFunc, p *faultproxy.Proxy)
		want error
	}{
		{"the owner's call is cancelled", func(cancel context.CancelFunc, _ *faultproxy.Proxy) { cancel() }, context.Canceled},
		{"the source's connection is cut", func(_ context.CancelFunc, p *faultproxy.Proxy) { p.CutAll() }, transport.ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newRestoreSetup(t)
			s.loseDisk(t)
			proxy, err := faultproxy.New(s.cons.Addr())
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = proxy.Close() }()
			proxy.SetBandwidth(64 << 10) // about two seconds for the table
			ctx, cancel := context.WithCancel(ctxT(t, 60*time.Second))
			defer cancel()
			emptyLog := s.tbl.LogID()
			cut := false
			_, err = s.owner.Restore(ctx, "t", RestoreOptions{
				Source:        transport.RestoreSource{Addr: proxy.Addr()},
				ProgressEvery: time.Nanosecond,
				Progress: func(p RestoreProgress) {
					if p.Phase == transport.RestorePhaseTransfer && !cut {
						cut = true
						tt.cut(cancel, proxy)
					}
				},
			})
			if !cut || !errors.Is(err, tt.want) {
				t.Fatalf("interrupted restore (cut %v): %v, want %v", cut, err, tt.want)
			}
			wantEmpty(t, s.tbl, s.logID)
			if s.tbl.LogID() == emptyLog {
				t.Errorf("the emptied table kept the history it had before the restore began (%s)", emptyLog)
			}
			// Restartable: the second attempt completes.
			proxy.SetBandwidth(0)
			res, err := s.owner.Restore(ctxT(t, 60*time.Second), "t", RestoreOptions{Source: transport.RestoreSource{Addr: proxy.Addr()}})
			if err != nil {
				t.Fatalf("restore again: %v", err)
			}
			got, err := s.tbl.Digest(nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			if res.Seq != s.head || got.LogID != s.logID || string(got.Hash) != string(s.digest.Hash) {
				t.Fatalf("restored again: seq %d log %s hash %x; want seq %d log %s hash %x", res.Seq, got.LogID, got.Hash, s.head, s.logID, s.digest.Hash)
			}
		})
	}
}

// An owner killed during a restore finds the Restoring mark at Own: what
// the restore wrote is dropped and the table starts empty, a new history.
func TestRestore_CrashLeavesTableEmpty(t *testing.T) {
	dir := t.TempDir()
	c := openComponent(t, "stores", "s1", dir, "")
	// What a restore killed mid-transfer leaves: the marked meta and some
	// of the source's rows.
	m := ownerMeta{Epoch: 3, First: 1, Restoring: true, Format: ownFormat}
	b, err := msgpack.Marshal(&m)
	if err != nil {
		t.Fatal(err)
	}
	err = c.db.Update(func(txn *badger.Txn) error {
		if err := txn.Set(ownMetaKey("t"), b); err != nil {
			return err
		}
		for i := range 50 {
			if err := txn.Set(concat(ownRowPrefix("t"), fmt.Appendf(nil, "k%03d", i)), encodeInlineRow(90, []byte("partial"))); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	mustClose(t, c)
	c = openComponent(t, "stores", "s1", dir, "")
	defer mustClose(t, c)
	tbl, err := c.Own("t")
	if err != nil {
		t.Fatal(err)
	}
	wantEmpty(t, tbl, "")
	if _, err := tbl.Put(ctxT(t, 10*time.Second), []byte("k"), []byte("v")); err != nil {
		t.Fatalf("write after the interrupted restore was cleared: %v", err)
	}
	if got := tbl.Head(); got != 1 {
		t.Fatalf("head %d, want 1", got)
	}
}

// An owner that wrote a few changes of its own new history after losing
// its disk is restored only when the caller names the source's history:
// without the override the log id check refuses (naming both histories)
// and nothing changes; with it, the new history's changes are replaced.
func TestRestore_LogIDOverride(t *testing.T) {
	s := newRestoreSetup(t)
	ctx := ctxT(t, 60*time.Second)
	s.loseDisk(t)
	putRows(t, ctx, s.tbl, 500, 3, "new")
	newLog := s.tbl.LogID()
	src := transport.RestoreSource{Addr: s.cons.Addr()}
	plan, err := s.owner.PlanRestore(ctx, "t", RestoreOptions{Source: src})
	if !errors.Is(err, transport.ErrRestoreRefused) || !strings.Contains(err.Error(), "expected history is log "+newLog) ||
		!strings.Contains(err.Error(), "log "+s.logID) {
		t.Fatalf("plan without override: %v, want a refusal naming both histories", err)
	}
	if plan.Source.LogID != s.logID || plan.ExpectedLogID != newLog || plan.OwnerHead != 3 || len(plan.Positions) != 1 {
		t.Fatalf("plan %+v", plan)
	}
	if _, err := s.owner.Restore(ctx, "t", RestoreOptions{Source: src}); !errors.Is(err, transport.ErrRestoreRefused) {
		t.Fatalf("restore without override: %v, want ErrRestoreRefused", err)
	}
	if s.tbl.Head() != 3 || s.tbl.LogID() != newLog {
		t.Fatalf("a refused restore changed the table: head %d log %s", s.tbl.Head(), s.tbl.LogID())
	}
	res, err := s.owner.Restore(ctx, "t", RestoreOptions{Source: src, LogID: s.logID})
	if err != nil {
		t.Fatalf("restore with override: %v", err)
	}
	if res.LogID != s.logID || res.Seq != s.head {
		t.Fatalf("result %+v", res)
	}
	if _, found, err := s.tbl.Get([]byte("k500")); err != nil || found {
		t.Fatalf("the new history's row after the restore: found %v, %v", found, err)
	}
}

// With identities: only an admin may start a restore over the wire, only
// the table's owner service may read a replica's rows, and the owner takes
// rows only from a service its access rules let read the table.
func TestRestore_Security(t *testing.T) {
	p := newTestPKI(t)
	ctx := ctxT(t, 60*time.Second)
	policy := func(readers ...string) *modes.AccessPolicy {
		ap := modes.NewAccessPolicy()
		for _, r := range readers {
			if err := ap.Allow("stores", "managers", r); err != nil {
				t.Fatal(err)
			}
		}
		return ap
	}
	owner1, tbl1 := secureOwner(t, p, policy("products", "billing"), nil)
	for i := range 30 {
		if _, err := tbl1.Put(ctx, fmt.Appendf(nil, "s%d", i+2), []byte("bob")); err != nil {
			t.Fatal(err)
		}
	}
	consumer := func(service string) (*Component, *Replica) {
		c := openWith(t, service, service+"-1", "", "127.0.0.1:0", func(c *Config) {
			c.TLS = p.source(svcID(service, service+"-1"))
		})
		t.Cleanup(func() { _ = c.Close() })
		r, err := c.Subscribe(ctx, SubscribeOptions{Service: "stores", Table: "managers", Addr: owner1.Addr()})
		if err != nil {
			t.Fatal(err)
		}
		mustConverge(t, tbl1, r)
		return c, r
	}
	products, pr := consumer("products")
	billing, _ := consumer("billing")
	mustClose(t, owner1)

	// The owner lost everything; billing may no longer read managers.
	cfg := LocalConfig("stores", "stores-1")
	cfg.Logger = testLogger(t)
	cfg.ListenAddr = "127.0.0.1:0"
	cfg.TLS = p.source(svcID("stores", "stores-1"))
	cfg.AccessPolicy = policy("products")
	owner, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer mustClose(t, owner)
	tbl, err := owner.Own("managers")
	if err != nil {
		t.Fatal(err)
	}
	restoreCall := func(id transport.Identity, req *transport.RestoreRequest) ([]*transport.RestoreStatus, error) {
		cc, err := transport.Dial(owner.Addr(), transport.Options{TLS: p.source(id).ClientConfig(transport.ExpectService("stores"))})
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = cc.Close() }()
		req.Version = transport.ProtocolVersion
		st, err := transport.NewRestoreClient(cc).Restore(ctx, req)
		if err != nil {
			return nil, err
		}
		var frames []*transport.RestoreStatus
		for {
			f, err := st.Recv()
			if err != nil {
				if errors.Is(err, io.EOF) {
					return frames, nil
				}
				return frames, err
			}
			frames = append(frames, f)
		}
	}
	src := func(c *Component, service string) transport.RestoreSource {
		return transport.RestoreSource{Service: service, Instance: service + "-1", Addr: c.Addr()}
	}

	watch := func(t *testing.T) *transport.RestoreStatus {
		t.Helper()
		frames, err := restoreCall(roleID(transport.RoleAdmin, "root"), &transport.RestoreRequest{Table: "managers", Watch: true})
		if err != nil || len(frames) == 0 {
			t.Fatalf("watch: %d frames, %v", len(frames), err)
		}
		return frames[len(frames)-1]
	}

	t.Run("no restore to watch yet", func(t *testing.T) {
		if f := watch(t); f.Phase != transport.RestorePhaseNone || f.Table != "managers" {
			t.Fatalf("watch before any restore: %+v", f)
		}
	})
	t.Run("a service may not start a restore", func(t *testing.T) {
		_, err := restoreCall(svcID("stores", "stores-2"), &transport.RestoreRequest{Table: "managers", Source: src(products, "products")})
		wantDenied(t, err, "only an admin")
	})
	t.Run("an operator may not start a restore", func(t *testing.T) {
		_, err := restoreCall(roleID(transport.RoleOperator, "ops"), &transport.RestoreRequest{Table: "managers", Source: src(products, "products")})
		wantDenied(t, err, "only an admin")
	})
	t.Run("a source that may not read the table is refused", func(t *testing.T) {
		_, err := restoreCall(roleID(transport.RoleAdmin, "root"), &transport.RestoreRequest{Table: "managers", Source: src(billing, "billing")})
		wantDenied(t, err, "billing", "may not read table managers")
		if tbl.Head() != 0 {
			t.Fatalf("head %d after a refused restore", tbl.Head())
		}
		if f := watch(t); f.Phase != transport.RestorePhaseFailed || !strings.Contains(f.Err, "may not read table managers") {
			t.Fatalf("watch after the refused restore: %+v", f)
		}
	})
	t.Run("only the table's service reads a replica's rows", func(t *testing.T) {
		cc, err := transport.Dial(products.Addr(), transport.Options{TLS: p.source(svcID("billing", "billing-1")).ClientConfig(transport.ExpectService("products"))})
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = cc.Close() }()
		st, err := transport.NewRestoreClient(cc).Source(ctx, &transport.SourceRequest{Version: transport.ProtocolVersion,
			Service: "stores", Instance: "stores-1", Table: "managers"})
		if err == nil {
			_, err = st.Recv()
		}
		wantDenied(t, err, "only an instance of stores")
	})
	t.Run("an admin restores from a subscriber", func(t *testing.T) {
		frames, err := restoreCall(roleID(transport.RoleAdmin, "root"), &transport.RestoreRequest{Table: "managers", Source: src(products, "products")})
		if err != nil {
			t.Fatalf("restore: %v", err)
		}
		if len(frames) < 3 || frames[0].Phase != transport.RestorePhasePlan || frames[len(frames)-1].Phase != transport.RestorePhaseDone {
			t.Fatalf("status frames %+v", frames)
		}
		last := frames[len(frames)-1]
		want, err := pr.Digest(nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		got, err := tbl.Digest(nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if last.Rows != uint64(want.Rows) || last.Seq != want.Seq || string(got.Hash) != string(want.Hash) || got.Seq != want.Seq {
			t.Fatalf("restored %d rows at seq %d (hash %x); the replica has %d at %d (hash %x)", last.Rows, got.Seq, got.Hash, want.Rows, want.Seq, want.Hash)
		}
		if f := watch(t); f.Phase != transport.RestorePhaseDone || f.Rows != last.Rows || f.NewEpoch == 0 {
			t.Fatalf("watch after the restore: %+v", f)
		}
		p, err := owner.RestoreProgress("managers")
		if err != nil || p.Phase != transport.RestorePhaseDone || p.Plan.Source.Source.Service != "products" {
			t.Fatalf("RestoreProgress after the restore: %+v, %v", p, err)
		}
	})
}

// BenchmarkRestore measures a restore's throughput beside the full
// transfer's, both of the same table (REPLMESH_BENCH_ROWS rows of 256 B,
// default 100,000) on data dirs over loopback TCP: the consumer's first
// full transfer from the owner, then b.N restores of an empty owner from
// the consumer's replica. The end-to-end figure (1M rows) belongs in
// cmd/replbench.
func BenchmarkRestore(b *testing.B) {
	rows := 100_000
	if s := os.Getenv("REPLMESH_BENCH_ROWS"); s != "" {
		if _, err := fmt.Sscan(s, &rows); err != nil {
			b.Fatal(err)
		}
	}
	ctx := ctxT(b, 30*time.Minute)
	owner := openComponent(b, "bench", "owner", b.TempDir(), "127.0.0.1:0")
	defer mustClose(b, owner)
	tbl, err := owner.Own("bench")
	if err != nil {
		b.Fatal(err)
	}
	val := benchValue()
	for i := 0; i < rows; i += 1000 {
		ws := make([]Write, 0, 1000)
		for j := i; j < min(i+1000, rows); j++ {
			ws = append(ws, Write{Key: benchKey(j), Value: val})
		}
		if _, err := tbl.Apply(ctx, ws...); err != nil {
			b.Fatal(err)
		}
	}
	cons := openComponent(b, "reader", "r1", b.TempDir(), "127.0.0.1:0")
	defer mustClose(b, cons)
	r, err := cons.Subscribe(ctx, SubscribeOptions{Service: "bench", Table: "bench", Addr: owner.Addr()})
	if err != nil {
		b.Fatal(err)
	}
	if err := r.WaitFor(ctx, tbl.Head()); err != nil {
		b.Fatal(err)
	}
	xfer := time.Duration(r.Status().Stats.LastTransferNs)
	b.ResetTimer()
	var took time.Duration
	for range b.N {
		b.StopTimer()
		o := openComponent(b, "bench", "owner", b.TempDir(), "")
		t2, err := o.Own("bench")
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		res, err := o.Restore(ctx, "bench", RestoreOptions{Source: transport.RestoreSource{Addr: cons.Addr()}})
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		took += res.Transfer
		if res.Rows != uint64(rows) || t2.Head() != tbl.Head() {
			b.Fatalf("restored %d rows at %d, want %d at %d", res.Rows, t2.Head(), rows, tbl.Head())
		}
		mustClose(b, o)
		b.StartTimer()
	}
	b.ReportMetric(float64(rows)*float64(b.N)/took.Seconds(), "restore_rows/s")
	b.ReportMetric(float64(rows)/xfer.Seconds(), "transfer_rows/s") // after ResetTimer, which deletes reported metrics
}
