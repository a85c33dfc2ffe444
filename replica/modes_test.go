package replica

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/replmesh/replmesh/modes"
	"github.com/replmesh/replmesh/transport"
)

func dur(d time.Duration) *time.Duration { return &d }
func flt(f float64) *float64             { return &f }

func pullOnDemand() *modes.TableConfig {
	return &modes.TableConfig{Mode: modes.Pull, Pull: modes.PullConfig{Interval: dur(0), MaxStaleness: dur(0)}}
}

// In pull mode the owner sends nothing until asked; a pull returns exactly
// the owner's state, and a key written 10,000 times between two pulls
// crosses the wire once.
func TestPull_OnDemandCoalesced(t *testing.T) {
	var mem memNet
	owner := mem.open(t, "stores", "s1", "")
	defer mustClose(t, owner)
	cons := mem.open(t, "products", "p1", t.TempDir())
	defer mustClose(t, cons)
	tbl, _ := owner.Own("t")
	ctx := ctxT(t, 30*time.Second)
	for i := range 100 {
		if _, err := tbl.Put(ctx, fmt.Appendf(nil, "k%03d", i), []byte("v0")); err != nil {
			t.Fatal(err)
		}
	}
	r, err := cons.Subscribe(ctx, SubscribeOptions{Service: "stores", Table: "t", Addr: owner.Addr(), Modes: pullOnDemand()})
	if err != nil {
		t.Fatal(err)
	}
	<-r.Ready()
	if eff, conf, _ := r.Mode(); eff != "pull" || conf != "pull" {
		t.Fatalf("mode %s (configured %s), want pull", eff, conf)
	}
	mustConverge(t, tbl, r) // the first transfer
	at := r.Seq()

	// 10,000 writes of one key, plus a delete and a few puts.
	var pend []*Pending
	for i := range 10000 {
		p, err := tbl.Submit(ctx, Write{Key: []byte("hot"), Value: fmt.Appendf(nil, "v%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		pend = append(pend, p)
	}
	for _, p := range pend {
		if _, err := p.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tbl.Delete(ctx, []byte("k000")); err != nil {
		t.Fatal(err)
	}
	if _, err := tbl.Put(ctx, []byte("k001"), []byte("v1")); err != nil {
		t.Fatal(err)
	}
	// Nothing was pushed: the owner's heartbeats say how far behind we are.
	waitUntil(t, 30*time.Second, "the owner's head known", func() bool { return r.Status().OwnerHead == tbl.Head() })
	if got := r.Seq(); got != at {
		t.Fatalf("replica moved from %d to %d without a pull", at, got)
	}
	if l := r.Lag(); l.Seqs != tbl.Head()-at {
		t.Fatalf("lag %d seqs, want %d", l.Seqs, tbl.Head()-at)
	}
	applied := r.Status().Stats.Applied
	if err := r.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	mustConverge(t, tbl, r)
	st := r.Status()
	if got := st.Stats.Applied - applied; got != 3 {
		t.Fatalf("the pull applied %d changes, want 3 (hot once, the delete, the put)", got)
	}
	if st.Stats.FullTransfers != 1 || st.Stats.Pulls != 1 {
		t.Fatalf("full transfers %d, pulls %d; want 1 and 1", st.Stats.FullTransfers, st.Stats.Pulls)
	}
	v, ok, _ := r.Get([]byte("hot"))
	if !ok || string(v) != "v9999" {
		t.Fatalf("hot = %q, %v", v, ok)
	}
	if _, ok, _ := r.Get([]byte("k000")); ok {
		t.Fatal("the deleted key survived the delta")
	}
	// A pull with nothing new answers at once and changes nothing.
	if err := r.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if r.Seq() != tbl.Head() {
		t.Fatalf("seq %d after an empty pull, head %d", r.Seq(), tbl.Head())
	}
}

// A pull interval pulls by itself.
func TestPull_Interval(t *testing.T) {
	var mem memNet
	owner := mem.open(t, "stores", "s1", "")
	defer mustClose(t, owner)
	cons := mem.open(t, "products", "p1", "")
	defer mustClose(t, cons)
	tbl, _ := owner.Own("t")
	ctx := ctxT(t, 30*time.Second)
	r, _ := cons.Subscribe(ctx, SubscribeOptions{Service: "stores", Table: "t", Addr: owner.Addr(),
		Modes: &modes.TableConfig{Mode: modes.Pull, Pull: modes.PullConfig{Interval: dur(20 * time.Millisecond)}}})
	<-r.Ready()
	for i := range 50 {
		if _, err := tbl.Put(ctx, fmt.Appendf(nil, "k%d", i), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	mustConverge(t, tbl, r)
	// A pull is counted just after its delta is applied: the replica can
	// show the head a moment before the count.
	waitUntil(t, 30*time.Second, "a pull counted", func() bool { return r.Status().Stats.Pulls > 0 })
}

// push -> pull -> push while the owner writes: no reconnect, no resync, and
// the replica ends equal to the owner.
func TestModes_SwitchUnderWrites(t *testing.T) {
	var mem memNet
	owner := mem.open(t, "stores", "s1", "")
	defer mustClose(t, owner)
	cons := mem.open(t, "products", "p1", "")
	defer mustClose(t, cons)
	tbl, _ := owner.Own("t")
	ctx := ctxT(t, 60*time.Second)
	r, _ := cons.Subscribe(ctx, SubscribeOptions{Service: "stores", Table: "t", Addr: owner.Addr()})
	<-r.Ready()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := tbl.Put(ctx, fmt.Appendf(nil, "k%d", i%300), fmt.Appendf(nil, "v%d", i)); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	waitSeq := func(min uint64) {
		waitUntil(t, 20*time.Second, fmt.Sprintf("replica past %d", min), func() bool { return r.Seq() > min })
	}
	waitSeq(200)
	if err := r.SetModes(pullOnDemand()); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 30*time.Second, "pull mode", func() bool { eff, _, _ := r.Mode(); return eff == "pull" })
	for range 3 {
		at := r.Seq()
		waitUntil(t, 30*time.Second, "a write the replica lacks", func() bool { return tbl.Head() > at })
		if err := r.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
		if r.Seq() <= at {
			t.Fatalf("a refresh under writes did not move the replica (%d)", at)
		}
	}
	if err := r.SetModes(&modes.TableConfig{Mode: modes.Push}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 30*time.Second, "push mode", func() bool { eff, _, _ := r.Mode(); return eff == "push" })
	waitSeq(r.Seq() + 100) // pushed again
	close(stop)
	wg.Wait()
	mustConverge(t, tbl, r)
	st := r.Status()
	if st.Stats.FullTransfers != 1 || st.Stats.Reconnects != 0 || st.ModeSwitches != 2 {
		t.Fatalf("full transfers %d, reconnects %d, switches %d; want 1, 0, 2", st.Stats.FullTransfers, st.Stats.Reconnects, st.ModeSwitches)
	}
}

// The owner's table default is the lowest level: a subscription option wins.
func TestModes_Precedence(t *testing.T) {
	var mem memNet
	owner := mem.open(t, "stores", "s1", "")
	defer mustClose(t, owner)
	cons := mem.open(t, "products", "p1", "")
	defer mustClose(t, cons)
	if _, err := owner.Own("pulled", TableOptions{Mode: modes.Pull}); err != nil {
		t.Fatal(err)
	}
	if _, err := owner.Own("pushed", TableOptions{Mode: modes.Pull}); err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, 20*time.Second)
	r1, _ := cons.Subscribe(ctx, SubscribeOptions{Service: "stores", Table: "pulled", Addr: owner.Addr()})
	r2, _ := cons.Subscribe(ctx, SubscribeOptions{Service: "stores", Table: "pushed", Addr: owner.Addr(), Modes: &modes.TableConfig{Mode: modes.Push}})
	waitUntil(t, 30*time.Second, "owner default applied", func() bool { eff, _, _ := r1.Mode(); return eff == "pull" })
	if eff, _, _ := r2.Mode(); eff != "push" {
		t.Fatalf("subscription option push lost to the owner default: %s", eff)
	}
	r2.setOverride("pull") // as a broker override does
	waitUntil(t, 30*time.Second, "override applied", func() bool { eff, _, _ := r2.Mode(); return eff == "pull" })
	r2.setOverride("")
	waitUntil(t, 30*time.Second, "override cleared", func() bool { eff, _, _ := r2.Mode(); return eff == "push" })
}

// Auto mode: a hot table (many writes, no reads) settles on pull; when the
// writes stop and reads come, it goes back to push; each switch is
// explained.
func TestModes_Auto(t *testing.T) {
	var mem memNet
	owner := mem.open(t, "stores", "s1", "")
	defer mustClose(t, owner)
	cons := mem.open(t, "products", "p1", "")
	defer mustClose(t, cons)
	tbl, _ := owner.Own("t")
	ctx := ctxT(t, 60*time.Second)
	auto := &modes.TableConfig{Mode: modes.Auto, Auto: modes.AutoConfig{Ratio: flt(10), Window: dur(300 * time.Millisecond)},
		Pull: modes.PullConfig{Interval: dur(50 * time.Millisecond)}}
	r, _ := cons.Subscribe(ctx, SubscribeOptions{Service: "stores", Table: "t", Addr: owner.Addr(), Modes: auto})
	<-r.Ready()
	if eff, conf, _ := r.Mode(); eff != "push" || conf != "auto" {
		t.Fatalf("auto starts as %s (%s), want push (auto)", eff, conf)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := tbl.Put(ctx, fmt.Appendf(nil, "k%d", i%50), []byte("v")); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	waitUntil(t, 20*time.Second, "hot table settles on pull", func() bool { eff, _, _ := r.Mode(); return eff == "pull" })
	close(stop)
	wg.Wait()
	_, _, reason := r.Mode()
	t.Logf("switched to pull: %s", reason)
	deadline := time.Now().Add(20 * time.Second)
	for {
		for range 200 {
			r.Get([]byte("k1"))
		}
		if eff, _, _ := r.Mode(); eff == "push" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cold table did not go back to push: %+v", r.Status())
		}
		time.Sleep(time.Millisecond) // the read load itself, not synchronization
	}
	mustConverge(t, tbl, r)
	if st := r.Status(); st.Stats.FullTransfers != 1 || st.ModeSwitches < 2 {
		t.Fatalf("full transfers %d, switches %d", st.Stats.FullTransfers, st.ModeSwitches)
	}
}

// Reads with a policy: Cached never leaves the process, Live asks the
// owner, Fresh goes live when the replica is too old and falls back to the
// cached value with a StaleError when the owner is down.
func TestRead_Policies(t *testing.T) {
	var mem memNet
	owner := mem.open(t, "stores", "s1", "")
	ownerClosed := false
	defer func() {
		if !ownerClosed {
			mustClose(t, owner)
		}
	}()
	cons := mem.open(t, "products", "p1", "")
	defer mustClose(t, cons)
	tbl, _ := owner.Own("t")
	ctx := ctxT(t, 30*time.Second)
	if _, err := tbl.Put(ctx, []byte("k"), []byte("v1")); err != nil {
		t.Fatal(err)
	}
	// Pull on demand: the replica stays at v1 while the owner moves on.
	r, _ := cons.Subscribe(ctx, SubscribeOptions{Service: "stores", Table: "t", Addr: owner.Addr(), Modes: pullOnDemand()})
	mustConverge(t, tbl, r)
	if _, err := tbl.Put(ctx, []byte("k"), []byte("v2")); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 30*time.Second, "lag known", func() bool { return r.Lag().Seqs == 1 })
	read := func(p ReadPolicy) (string, error) {
		v, _, err := r.Read(ctx, []byte("k"), p)
		return string(v), err
	}
	if v, err := read(Cached); v != "v1" || err != nil {
		t.Fatalf("cached = %q, %v", v, err)
	}
	if v, err := read(Live); v != "v2" || err != nil {
		t.Fatalf("live = %q, %v", v, err)
	}
	if v, err := read(Fresh(time.Hour)); v != "v1" || err != nil {
		t.Fatalf("fresh(1h) = %q, %v (the replica is within the bound)", v, err)
	}
	if v, err := read(Fresh(time.Nanosecond)); v != "v2" || err != nil {
		t.Fatalf("fresh(1ns) = %q, %v (the replica is too old: go live)", v, err)
	}
	res := <-r.ReadAsync(ctx, []byte("k"), Live)
	if string(res.Value) != "v2" || res.Err != nil {
		t.Fatalf("async live = %q, %v", res.Value, res.Err)
	}
	ownerClosed = true
	mustClose(t, owner)
	waitUntil(t, 30*time.Second, "owner gone", func() bool { return r.Status().State != StateStreaming })
	v, err := read(Fresh(time.Nanosecond))
	var se *StaleError
	if v != "v1" || !errors.Is(err, ErrStale) || !errors.As(err, &se) || se.Seq != r.Seq() || se.Staleness <= 0 {
		t.Fatalf("fresh with the owner down = %q, %v; want the cached v1 and a StaleError", v, err)
	}
	if !errors.Is(err, transport.ErrUnavailable) {
		t.Logf("note: the staleness error wraps %v", se.Err)
	}
	if _, err := read(Live); err == nil {
		t.Fatal("a live read with the owner down succeeded")
	}
	if v, err := read(Cached); v != "v1" || err != nil {
		t.Fatalf("cached with the owner down = %q, %v", v, err)
	}
}

// The mode file: an owner's entry is its table default, a consumer's entry
// its subscription option; a reload switches live subscriptions.
func TestModes_File(t *testing.T) {
	var mem memNet
	file, err := modes.Parse([]byte(`version: 1
tables:
  stores/t:
    mode: pull
    pull: {interval: 0s, max_staleness: 0s}
    retention: {max_changes: 10}
`))
	if err != nil {
		t.Fatal(err)
	}
	cfg := LocalConfig("stores", "s1")
	cfg.Modes = file
	cfg.Logger = testLogger(t)
	mem.join(&cfg)
	owner, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer mustClose(t, owner)
	tbl, _ := owner.Own("t")
	if got := tbl.ownerMode(); got != modes.Pull {
		t.Fatalf("owner default from the file = %q, want pull", got)
	}
	tbl.mu.Lock()
	ret := tbl.retention
	tbl.mu.Unlock()
	// The file's field over the component's default, the others kept.
	if want := (Retention{MaxChanges: 10, MaxBytes: cfg.Retention.MaxBytes, MaxAge: cfg.Retention.MaxAge}); ret != want {
		t.Fatalf("retention from the file = %+v, want %+v", ret, want)
	}
	ccfg := LocalConfig("products", "p1")
	ccfg.Modes = &modes.Config{Version: 1, Tables: map[string]modes.TableConfig{"stores/t": {Mode: modes.Push}}}
	ccfg.Logger = testLogger(t)
	mem.join(&ccfg)
	cons, err := Open(context.Background(), ccfg)
	if err != nil {
		t.Fatal(err)
	}
	defer mustClose(t, cons)
	ctx := ctxT(t, 20*time.Second)
	r, _ := cons.Subscribe(ctx, SubscribeOptions{Service: "stores", Table: "t", Addr: owner.Addr()})
	<-r.Ready()
	if eff, _, _ := r.Mode(); eff != "push" {
		t.Fatalf("consumer file says push, mode is %s", eff)
	}
	if err := cons.ReloadModes(&modes.Config{Version: 1}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 30*time.Second, "owner default after the reload", func() bool { eff, _, _ := r.Mode(); return eff == "pull" })
}

// The auto mode's choice and the switches are visible in the metrics.
func TestMetrics_ModeAndLag(t *testing.T) {
	var mem memNet
	owner := mem.open(t, "stores", "s1", "")
	defer mustClose(t, owner)
	cons := mem.open(t, "products", "p1", "")
	defer mustClose(t, cons)
	tbl, _ := owner.Own("t")
	ctx := ctxT(t, 20*time.Second)
	r, _ := cons.Subscribe(ctx, SubscribeOptions{Service: "stores", Table: "t", Addr: owner.Addr(), Modes: pullOnDemand()})
	<-r.Ready()
	if _, err := tbl.Put(ctx, []byte("k"), []byte("v")); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 30*time.Second, "lag known", func() bool { return r.Lag().Seqs == 1 })
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(cons.Metrics(), owner.Metrics())
	want := `
# HELP replmesh_replica_lag_seqs Owner head minus replica seq.
# TYPE replmesh_replica_lag_seqs gauge
replmesh_replica_lag_seqs{component="products/p1",service="stores",table="t"} 1
# HELP replmesh_replica_mode 1 for the mode the subscription's stream runs.
# TYPE replmesh_replica_mode gauge
replmesh_replica_mode{component="products/p1",mode="pull",service="stores",table="t"} 1
replmesh_replica_mode{component="products/p1",mode="push",service="stores",table="t"} 0
# HELP replmesh_table_head_seq Seq of the newest change committed to an owned table.
# TYPE replmesh_table_head_seq gauge
replmesh_table_head_seq{component="stores/s1",table="t"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "replmesh_replica_lag_seqs", "replmesh_replica_mode", "replmesh_table_head_seq"); err != nil {
		t.Fatal(err)
	}
}
