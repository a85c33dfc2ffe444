package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/replmesh/replmesh/broker"
	"github.com/replmesh/replmesh/examples/marketplace/products"
	"github.com/replmesh/replmesh/examples/marketplace/stores"
	"github.com/replmesh/replmesh/internal/testutil"
	"github.com/replmesh/replmesh/replica"
	"github.com/replmesh/replmesh/transport"
	"go.uber.org/goleak"
)

// bins holds the service binaries TestServices builds; removed when the
// tests end.
var bins testutil.BinDir

func TestMain(m *testing.M) {
	bins.Main(m, "marketplace-test",
		// badger's ristretto cache and glog-style flushers outlive DB.Close briefly.
		goleak.IgnoreTopFunction("github.com/golang/glog.(*fileSink).flushDaemon"),
		goleak.IgnoreAnyFunction("github.com/dgraph-io/ristretto/v2/z.(*AllocatorPool).freeupAllocators"),
	)
}

// testLogger routes warnings and errors to t.Log until the test and its
// cleanups are over (the broker's memberlist may log while winding down).
func testLogger(t testing.TB) *slog.Logger {
	w := &tWriter{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.over = true; w.mu.Unlock() })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type tWriter struct {
	t    testing.TB
	mu   sync.Mutex
	over bool
}

func (w *tWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.over {
		w.t.Log(string(bytes.TrimRight(p, "\n")))
	}
	return len(p), nil
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestDemo runs the demo program's scenario as `go run` does (a broker,
// a stores primary and standby, products subscribed through the broker)
// and checks that it meets its own expectations and says so.
func TestDemo(t *testing.T) {
	var out bytes.Buffer
	if err := run(ctxT(t, time.Minute), &out, testLogger(t), t.TempDir()); err != nil {
		t.Fatalf("demo failed: %v\noutput:\n%s", err, out.String())
	}
	for _, want := range []string{
		"mTLS     on: a dev CA",
		`alice adds "desk lamp"    to S1 -> ALLOWED`,
		`bob   adds "bicycle"      to S1 -> DENIED: bob is not a manager of store S1`,
		`alice adds "lava lamp"    to S1 -> DENIED: alice is not a manager of store S1`,
		`state=connecting`,
		`full transfers 1 -> 1, resumes 0 -> 1`,
		`carol adds "lamp shade"   to S1 -> ALLOWED`,
		// step 5: the standby takes over.
		`stores:   stores-1 (primary, epoch`,
		`stores:   stores-2 took over as primary (epoch`,
		`revoke bob on stores-2 with no standby -> refused: replica: not confirmed by enough standbys`,
		`stores-1 restarted on its data dir: standby (epoch`,
		`a write there -> refused: not primary: stores/stores-1 is a standby; the primary is stores-2`,
		`on stores-2, confirmed by standby stores-1`,
		`products: denies bob`,
		`bob   adds "ceiling fan"  to S1 -> DENIED: bob is not a manager of store S1`,
		`full transfers 1 -> 1, resumes 1 -> 2`,
		// step 6: the disk is lost, stores is restored from products.
		`stores-1 and stores-2 stopped, their data directories removed (no standby left)`,
		`restarted on an empty data dir: primary`,
		`state=diverged (kept its`,
		`carol adds "wall lamp"    to S1 -> ALLOWED`,
		`operator: restore stores/store_managers from products/products-1@`,
		`operator: store_managers restored:`,
		`every row is back (digests equal to those before the loss)`,
		`started on an empty data dir: standby`,
		`full transfers 1, truncations 0`,
		`dave  adds "lamp post"    to S1 -> ALLOWED`,
		`all expectations met`,
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q; output:\n%s", want, out.String())
		}
	}
}

// marketplace is the two services of the scenario without a broker
// (products is given stores' address), for tests.
type marketplace struct {
	t        *testing.T // the running (sub)test
	root     *testing.T // the test that owns the services (they log to it)
	dir      string
	stores   *stores.Service
	products *products.Service
}

func startMarketplace(t *testing.T) *marketplace {
	t.Helper()
	m := &marketplace{t: t, root: t, dir: t.TempDir()}
	m.openStores(testutil.FreeAddr(t)) // stores is restarted on it
	var err error
	m.products, err = products.Open(ctxT(t, 30*time.Second), config(products.ServiceName, "products-1", filepath.Join(m.dir, "products"), nil, testLogger(t)),
		products.Options{StoresAddr: m.stores.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.products.Close(); err != nil {
			t.Errorf("close products: %v", err)
		}
		if err := m.stores.Close(); err != nil {
			t.Errorf("close stores: %v", err)
		}
	})
	if err := m.products.WaitReady(ctxT(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	return m
}

func (m *marketplace) openStores(addr string) {
	m.t.Helper()
	cfg := storesConfig(stores1, m.dir, nil, testLogger(m.root))
	cfg.ListenAddr = addr
	s, err := stores.Open(ctxT(m.t, 30*time.Second), cfg)
	if err != nil {
		m.t.Fatalf("open stores: %v", err)
	}
	m.stores = s
}

// commit runs a stores write and waits until products holds it.
func (m *marketplace) commit(c stores.Commit, err error) stores.Commit {
	m.t.Helper()
	if err != nil {
		m.t.Fatalf("stores write: %v", err)
	}
	if err := m.products.WaitFor(ctxT(m.t, 30*time.Second), c); err != nil {
		m.t.Fatalf("products wait for %s: %v", c, err)
	}
	return c
}

// mustDecide checks the decision for user adding a product to store, both
// through Authorize and through AddProduct.
func (m *marketplace) mustDecide(user, store string, want products.Code) {
	m.t.Helper()
	d, err := m.products.Authorize(user, store)
	if err != nil {
		m.t.Fatalf("authorize %s on %s: %v", user, store, err)
	}
	if d.Code != want {
		m.t.Fatalf("authorize %s on %s = %s (%s), want %s", user, store, d.Code, d.Reason, want)
	}
	if d.Reason == "" || !strings.Contains(d.Reason, user) && want != products.UnknownStore {
		m.t.Fatalf("reason %q does not name the user %s", d.Reason, user)
	}
	p, seq, err := m.products.AddProduct(ctxT(m.t, 30*time.Second), user, store, products.Product{Name: "lamp", PriceCents: 100})
	if want == products.Allowed {
		if err != nil {
			m.t.Fatalf("add product as %s to %s: %v", user, store, err)
		}
		if seq == 0 || p.ID == "" || p.AddedBy != user || p.StoreID != store {
			m.t.Fatalf("add product as %s to %s returned %+v at seq %d", user, store, p, seq)
		}
		return
	}
	var denied *products.DeniedError
	if !errors.As(err, &denied) || !errors.Is(err, products.ErrDenied) {
		m.t.Fatalf("add product as %s to %s: err = %v, want a *DeniedError", user, store, err)
	}
	if denied.Decision.Code != want {
		m.t.Fatalf("add product as %s to %s denied with %s, want %s", user, store, denied.Decision.Code, want)
	}
}

func (m *marketplace) managersStatus() replica.Status {
	m.t.Helper()
	st, err := m.products.Status(stores.TableManagers)
	if err != nil {
		m.t.Fatal(err)
	}
	return st
}

// waitState waits until the store_managers replica is in state want.
func (m *marketplace) waitState(want replica.State) replica.Status {
	m.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := m.managersStatus()
		if st.State == want {
			return st
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("replica state is %s after 30s, want %s (last error %v)", st.State, want, st.LastErr)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestScenario runs the demo's steps against the services' APIs.
func TestScenario(t *testing.T) {
	m := startMarketplace(t)
	ctx := ctxT(t, time.Minute)

	t.Run("1 manager allowed, others denied", func(t *testing.T) {
		m.t = t
		m.commit(m.stores.CreateStore(ctx, "S1", "Lamps & Co"))
		c := m.commit(m.stores.AddManager(ctx, "S1", "alice"))
		if c.Table != stores.TableManagers || c.Seq != 1 {
			t.Fatalf("first manager commit = %s, want %s@1", c, stores.TableManagers)
		}
		m.mustDecide("alice", "S1", products.Allowed)
		m.mustDecide("bob", "S1", products.NotManager)
		m.mustDecide("alice", "S2", products.UnknownStore)
	})

	t.Run("2 add and revoke follow", func(t *testing.T) {
		m.t = t
		m.commit(m.stores.AddManager(ctx, "S1", "bob"))
		m.mustDecide("bob", "S1", products.Allowed)
		m.commit(m.stores.RevokeManager(ctx, "S1", "alice"))
		m.mustDecide("alice", "S1", products.NotManager)
		m.mustDecide("bob", "S1", products.Allowed)
	})

	t.Run("3 decisions survive the owner's absence", func(t *testing.T) {
		m.t = t
		if err := m.stores.Close(); err != nil {
			t.Fatal(err)
		}
		m.waitState(replica.StateConnecting)
		m.mustDecide("bob", "S1", products.Allowed)
		m.mustDecide("alice", "S1", products.NotManager)
		st := m.managersStatus()
		if st.Seq != 3 || st.OwnerHead != 3 || st.Lag.Seqs != 0 {
			t.Fatalf("replica at seq %d, owner head %d, lag %d; want 3, 3, 0", st.Seq, st.OwnerHead, st.Lag.Seqs)
		}
		if st.Lag.Staleness <= 0 {
			t.Fatalf("staleness %s while the owner is down, want > 0", st.Lag.Staleness)
		}
		d, err := m.products.Authorize("bob", "S1")
		if err != nil || d.ManagersSeq != 3 || d.Staleness <= 0 {
			t.Fatalf("decision %+v, %v: want it based on seq 3 and stale", d, err)
		}
	})

	t.Run("4 restart resumes without a full transfer", func(t *testing.T) {
		m.t = t
		before := m.managersStatus()
		addr := m.stores.Addr()
		m.openStores(addr)
		if m.stores.Addr() != addr {
			t.Fatalf("stores restarted on %s, want %s", m.stores.Addr(), addr)
		}
		c := m.commit(m.stores.AddManager(ctx, "S1", "carol"))
		if c.Seq != 4 {
			t.Fatalf("commit after restart = %s, want seq 4 (the history continues)", c)
		}
		m.mustDecide("carol", "S1", products.Allowed)
		m.mustDecide("alice", "S1", products.NotManager)
		after := m.waitState(replica.StateStreaming)
		if after.Stats.FullTransfers != 1 || after.Stats.Resumes != before.Stats.Resumes+1 {
			t.Fatalf("full transfers %d -> %d, resumes %d -> %d; want 1 -> 1 and one resume",
				before.Stats.FullTransfers, after.Stats.FullTransfers, before.Stats.Resumes, after.Stats.Resumes)
		}
		if st, _ := m.products.Status(stores.TableStores); st.Stats.FullTransfers != 1 {
			t.Fatalf("stores replica made %d full transfers, want 1", st.Stats.FullTransfers)
		}
		ps, err := m.products.Products("S1")
		if err != nil {
			t.Fatal(err)
		}
		// alice 1 (step 1), bob 2 (step 2) + 1 (step 3), carol 1.
		if len(ps) != 5 {
			t.Fatalf("S1 has %d products, want 5: %+v", len(ps), ps)
		}
	})
}

// TestAuthorize_NotReady: before its first full transfer the replica is
// empty, and products must deny (fail closed) saying so, not "not a manager".
func TestAuthorize_NotReady(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close() // nothing listens there: the replica never gets a copy
	p, err := products.Open(ctxT(t, 30*time.Second), config(products.ServiceName, "products-1", "", nil, testLogger(t)), products.Options{StoresAddr: addr})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	d, err := p.Authorize("alice", "S1")
	if err != nil {
		t.Fatal(err)
	}
	if d.Code != products.NotReady || d.Allowed() {
		t.Fatalf("decision without a replica = %s (%s), want %s", d.Code, d.Reason, products.NotReady)
	}
	if _, _, err := p.AddProduct(ctxT(t, 30*time.Second), "alice", "S1", products.Product{Name: "x"}); !errors.Is(err, products.ErrDenied) {
		t.Fatalf("AddProduct without a replica: %v, want ErrDenied", err)
	}
}

func TestStores_Errors(t *testing.T) {
	s, err := stores.Open(ctxT(t, 30*time.Second), config(stores.ServiceName, stores1, "", nil, testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := ctxT(t, 30*time.Second)
	if _, err := s.AddManager(ctx, "S1", "alice"); !errors.Is(err, stores.ErrNoStore) {
		t.Fatalf("AddManager on a missing store: %v, want ErrNoStore", err)
	}
	if _, err := s.CreateStore(ctx, "S1", "one"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateStore(ctx, "S1", "again"); !errors.Is(err, stores.ErrStoreExists) {
		t.Fatalf("CreateStore twice: %v, want ErrStoreExists", err)
	}
	for _, tc := range []struct{ name, id string }{
		{"empty", ""},
		{"with a slash", "a/b"},
		{"too long", strings.Repeat("x", 129)},
	} {
		t.Run("invalid id "+tc.name, func(t *testing.T) {
			if _, err := s.CreateStore(ctx, tc.id, "bad"); !errors.Is(err, stores.ErrInvalidID) {
				t.Fatalf("CreateStore(%q): %v, want ErrInvalidID", tc.id, err)
			}
		})
	}
	c, err := s.RevokeManager(ctx, "S1", "nobody")
	if err != nil || c.Table != stores.TableManagers || c.Seq == 0 {
		t.Fatalf("RevokeManager of a non-manager = %s, %v: want a commit", c, err)
	}
	if _, err := s.AddManager(ctx, "S1", "alice"); err != nil {
		t.Fatal(err)
	}
	got, err := s.Managers("S1")
	if err != nil || len(got) != 1 || got[0] != "alice" {
		t.Fatalf("Managers(S1) = %v, %v; want [alice]", got, err)
	}
}

// With a broker, two stores instances are a primary and a standby
// (min_sync_standbys 1): alone, the primary refuses a write before writing
// anything (a zero Commit); with the standby, a write returns once the
// standby holds it; the standby refuses writes, naming the primary.
func TestStores_PrimaryAndStandby(t *testing.T) {
	bcfg := broker.LocalConfig("b1")
	bcfg.Logger = testLogger(t)
	b, err := broker.New(ctxT(t, 30*time.Second), bcfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := ctxT(t, time.Minute)
	dir, brokers := t.TempDir(), []string{b.GRPCAddr()}
	s1, err := stores.Open(ctx, storesConfig(stores1, dir, brokers, testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer s1.Close()
	if _, _, err := waitRole(ctx, s1, transport.RolePrimary, 0); err != nil {
		t.Fatal(err)
	}
	c, err := s1.CreateStore(ctx, "S1", "Lamps & Co")
	if !errors.Is(err, replica.ErrNotReplicated) || c != (stores.Commit{}) {
		t.Fatalf("write with no standby: %v, %v; want a zero Commit and ErrNotReplicated", c, err)
	}
	if _, found, _ := s1.Store("S1"); found {
		t.Fatal("a write refused for want of a standby was written")
	}

	s2, err := stores.Open(ctx, storesConfig(stores2, dir, brokers, testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	_, epoch := s1.Component().Role()
	if _, _, err := waitRole(ctx, s2, transport.RoleStandby, epoch); err != nil {
		t.Fatal(err)
	}
	c, err = (&demo{}).commit(ctx, func(ctx context.Context) (stores.Commit, error) { return s1.CreateStore(ctx, "S1", "Lamps & Co") })
	if err != nil || c.Seq == 0 {
		t.Fatalf("write with a standby: %v, %v", c, err)
	}
	if st, found, err := s2.Store("S1"); err != nil || !found || st.Name != "Lamps & Co" {
		t.Fatalf("the standby does not hold an acknowledged write: %+v, %v, %v", st, found, err)
	}
	_, err = s2.AddManager(ctx, "S1", "alice")
	if !errors.Is(err, transport.ErrNotPrimary) || !strings.Contains(err.Error(), "the primary is "+stores1) {
		t.Fatalf("write on the standby: %v, want ErrNotPrimary naming %s", err, stores1)
	}
}
