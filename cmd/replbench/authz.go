package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/replmesh/replmesh/examples/marketplace/products"
	"github.com/replmesh/replmesh/examples/marketplace/stores"
	"github.com/replmesh/replmesh/replica"
)

// The authz workload (issue 5, "Speed"): the marketplace's authorization
// check, in this process over loopback, with a stores owner and products
// instances each on its own data dir (async), subscribed in push mode (the
// default):
//
//   - local check: products.Service.Authorize, which reads the local
//     store_managers replica (and the stores replica to explain a denial);
//   - live check: the same decision made by asking stores: the manager row
//     read with Replica.Read(..., replica.Live), the owner's Get RPC;
//   - revocation: from the moment stores acknowledges RevokeManager (the
//     call returns) until every products instance denies. Each instance
//     waits for the revoke's seq (Replica.WaitFor, woken when the change is
//     applied) and then calls Authorize, which must deny; the latency is
//     the last instance's denial. Measured with 1 and with 4 instances;
//     the manager is granted again (not timed) before the next revocation;
//   - decisions per second per core: GOMAXPROCS goroutines call Authorize
//     for a fixed time; the figure is the decisions divided by the CPU time
//     the process used meanwhile (decisions/s per core actually used; on
//     an idle machine that is decisions/s divided by GOMAXPROCS, which the
//     notes give too).

// authzSizes are the workload's sizes.
type authzSizes struct {
	Stores, Managers int // stores, and managers per store
	Local, Live      int // timed checks of each kind
	Revocations      int // per instance count
	Decide           time.Duration
}

// authzTestSizes replaces the sizes when set (tests).
var authzTestSizes *authzSizes

func (b *bench) authzSizes() authzSizes {
	switch {
	case authzTestSizes != nil:
		return *authzTestSizes
	case b.opts.quick:
		return authzSizes{Stores: 100, Managers: 10, Local: 20_000, Live: 2000, Revocations: 50, Decide: 500 * time.Millisecond}
	}
	return authzSizes{Stores: 100, Managers: 10, Local: 200_000, Live: 20_000, Revocations: 500, Decide: 3 * time.Second}
}

// authzCheck is one (user, store) question and its right answer.
type authzCheck struct {
	user, store string
	key         []byte // the manager row's key
	allowed     bool
}

func storeName(i int) string { return fmt.Sprintf("s%03d", i) }
func userName(i int) string  { return fmt.Sprintf("u%02d", i) }

// authzChecks draws n checks: users 0..Managers-1 manage every store,
// the next two manage none.
func authzChecks(sz authzSizes, n int) []authzCheck {
	rng := rand.New(rand.NewPCG(7, 8))
	out := make([]authzCheck, n)
	for i := range out {
		s, u := storeName(rng.IntN(sz.Stores)), rng.IntN(sz.Managers+2)
		out[i] = authzCheck{user: userName(u), store: s, key: []byte(stores.ManagerKey(s, userName(u))), allowed: u < sz.Managers}
	}
	return out
}

func (b *bench) runAuthz(ctx context.Context) (err error) {
	sz := b.authzSizes()
	dir, err := b.subdir("authz")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, os.RemoveAll(dir)) }()
	b.progress("authz: stores with %d stores x %d managers", sz.Stores, sz.Managers)
	st, err := stores.Open(ctx, b.config(stores.ServiceName, "stores", filepath.Join(dir, "stores"), "127.0.0.1:0"))
	if err != nil {
		return err
	}
	var insts []*products.Service
	defer func() {
		cs := []*replica.Component{st.Component()}
		for _, p := range insts {
			cs = append(cs, p.Component())
		}
		err = errors.Join(err, closeAll(cs...))
	}()
	var lastStore, lastManager stores.Commit // every instance waits for both
	for s := range sz.Stores {
		if lastStore, err = st.CreateStore(ctx, storeName(s), "store "+storeName(s)); err != nil {
			return err
		}
		for u := range sz.Managers {
			if lastManager, err = st.AddManager(ctx, storeName(s), userName(u)); err != nil {
				return err
			}
		}
	}
	open := func(i int) error {
		cfg := b.config(products.ServiceName, fmt.Sprintf("products-%d", i), filepath.Join(dir, fmt.Sprintf("products-%d", i)), "")
		p, err := products.Open(ctx, cfg, products.Options{StoresAddr: st.Addr()})
		if err != nil {
			return err
		}
		insts = append(insts, p)
		wctx, cancel := context.WithTimeout(ctx, setupTimeout)
		defer cancel()
		if err := p.WaitReady(wctx); err != nil {
			return err
		}
		if err := p.WaitFor(wctx, lastStore); err != nil {
			return err
		}
		return p.WaitFor(wctx, lastManager)
	}
	if err := open(0); err != nil {
		return err
	}
	p0 := insts[0]
	checks := authzChecks(sz, 4096)

	// Local checks, each timed; every answer is checked.
	b.progress("authz: %d local checks, %d live checks", sz.Local, sz.Live)
	local := make(samples, sz.Local)
	for i := range local {
		c := &checks[i%len(checks)]
		t := time.Now()
		d, err := p0.Authorize(c.user, c.store)
		local[i] = int64(time.Since(t))
		if err != nil {
			return err
		}
		if d.Allowed() != c.allowed {
			return fmt.Errorf("local check of %s on %s: %s, want allowed=%v", c.user, c.store, d, c.allowed)
		}
	}
	// The same decisions asked of stores.
	mr, err := p0.Replica(stores.TableManagers)
	if err != nil {
		return err
	}
	live := make(samples, sz.Live)
	for i := range live {
		c := &checks[i%len(checks)]
		t := time.Now()
		_, found, err := mr.Read(ctx, c.key, replica.Live)
		live[i] = int64(time.Since(t))
		if err != nil {
			return err
		}
		if found != c.allowed {
			return fmt.Errorf("live check of %s on %s: found=%v, want %v", c.user, c.store, found, c.allowed)
		}
	}
	allowedPct := 0
	for _, c := range checks {
		if c.allowed {
			allowedPct++
		}
	}
	allowedPct = 100 * allowedPct / len(checks)
	lp, vp := local.percentiles(0.50, 0.99), live.percentiles(0.50, 0.99)
	b.add(result{Workload: "authz", Figure: "local check p50", Value: float64(lp[0]), Unit: unitNanos,
		Notes: fmt.Sprintf("products Authorize on its local replicas; %d checks of %d stores x %d managers, %d%% allowed; mean %s",
			sz.Local, sz.Stores, sz.Managers, allowedPct, formatDuration(local.mean()))})
	b.add(result{Workload: "authz", Figure: "local check p99", Value: float64(lp[1]), Unit: unitNanos})
	b.add(result{Workload: "authz", Figure: "live check p50", Value: float64(vp[0]), Unit: unitNanos,
		Notes: fmt.Sprintf("the same decision as a live call to stores: Read(Live) of the manager row (the owner's Get RPC over loopback); %d calls; %.0fx the local p50",
			sz.Live, float64(vp[0])/math.Max(1, float64(lp[0])))})
	b.add(result{Workload: "authz", Figure: "live check p99", Value: float64(vp[1]), Unit: unitNanos})

	if err := b.authzThroughput(p0, checks, sz.Decide); err != nil {
		return err
	}

	for _, n := range []int{1, 4} {
		for len(insts) < n {
			if err := open(len(insts)); err != nil {
				return err
			}
		}
		b.progress("authz: %d revocations to %d products instances", sz.Revocations, n)
		lat, err := revocations(ctx, st, insts[:n], sz)
		if err != nil {
			return fmt.Errorf("revocation to %d: %w", n, err)
		}
		ps := lat.percentiles(0.50, 0.99, 1)
		b.add(result{Workload: "authz", Figure: fmt.Sprintf("revocation to %d p50", n), Value: float64(ps[0]), Unit: unitNanos,
			Notes: fmt.Sprintf("stores acknowledges RevokeManager .. every products instance denies (WaitFor the revoke's seq, then Authorize); %d revocations, push mode", len(lat))})
		b.add(result{Workload: "authz", Figure: fmt.Sprintf("revocation to %d p99", n), Value: float64(ps[1]), Unit: unitNanos,
			Notes: fmt.Sprintf("max %s", formatDuration(ps[2]))})
	}
	return nil
}

// authzThroughput runs GOMAXPROCS goroutines calling Authorize for d.
func (b *bench) authzThroughput(p *products.Service, checks []authzCheck, d time.Duration) error {
	g := runtime.GOMAXPROCS(0)
	b.progress("authz: %d goroutines deciding for %s", g, d)
	var stop atomic.Bool
	counts := make([]int, g)
	errs := make([]error, g)
	var wg sync.WaitGroup
	cpu0, cpuOK := processCPU()
	start := time.Now()
	for i := range g {
		wg.Go(func() {
			n := 0
			for j := i * 997; !stop.Load(); j++ {
				c := &checks[j%len(checks)]
				if _, err := p.Authorize(c.user, c.store); err != nil {
					errs[i] = err
					break
				}
				n++
			}
			counts[i] = n
		})
	}
	time.Sleep(d)
	stop.Store(true)
	wg.Wait()
	took := time.Since(start)
	cpu1, cpuOK1 := processCPU()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	total := 0
	for _, n := range counts {
		total += n
	}
	rate := float64(total) / took.Seconds()
	// Per core: divided by the cores the process actually used (its CPU
	// time over the run, getrusage), which is GOMAXPROCS on an idle machine
	// and less on a busy one; by GOMAXPROCS where CPU time is unknown.
	perCore, notes := rate/float64(g), fmt.Sprintf("%d goroutines, GOMAXPROCS %d: %s decisions/s in all", g, g, si(rate))
	if used := (cpu1 - cpu0).Seconds(); cpuOK && cpuOK1 && used > 0 {
		perCore = float64(total) / used
		notes += fmt.Sprintf(", using %.2f cores (process CPU time): per core %s/s; per GOMAXPROCS %s/s", used/took.Seconds(), si(perCore), si(rate/float64(g)))
	} else {
		notes += "; process CPU time unknown: divided by GOMAXPROCS"
	}
	b.add(result{Workload: "authz", Figure: "decisions/s per core", Value: math.Round(perCore/100) / 10, Unit: "k/s", Notes: notes})
	return nil
}

// revocations revokes sz.Revocations managers one after the other and
// returns, for each, the time from the acknowledged revoke until every
// instance denies; each manager is granted again afterwards (not timed).
func revocations(ctx context.Context, st *stores.Service, insts []*products.Service, sz authzSizes) (samples, error) {
	wctx, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	lat := make(samples, 0, sz.Revocations)
	for i := range sz.Revocations {
		store, user := storeName(i%sz.Stores), userName(i/sz.Stores%sz.Managers)
		for j, p := range insts {
			d, err := p.Authorize(user, store)
			if err != nil {
				return nil, err
			}
			if !d.Allowed() {
				return nil, fmt.Errorf("instance %d denies %s on %s before the revoke: %s", j, user, store, d)
			}
		}
		var commit stores.Commit // written before start is closed
		start := make(chan struct{})
		deniedAt := make([]time.Time, len(insts))
		errs := make([]error, len(insts))
		var wg sync.WaitGroup
		for j, p := range insts {
			wg.Go(func() {
				<-start
				if commit.Seq == 0 {
					return // the revoke failed
				}
				if err := p.WaitFor(wctx, commit); err != nil {
					errs[j] = err
					return
				}
				d, err := p.Authorize(user, store)
				switch {
				case err != nil:
					errs[j] = err
				case d.Allowed():
					errs[j] = fmt.Errorf("instance %d still allows %s on %s at seq %d, after WaitFor(%s)", j, user, store, d.ManagersSeq, commit)
				default:
					deniedAt[j] = time.Now()
				}
			})
		}
		c, err := st.RevokeManager(ctx, store, user)
		acked := time.Now()
		if err == nil {
			commit = c
		}
		close(start)
		wg.Wait()
		if err != nil {
			return nil, err
		}
		if err := errors.Join(errs...); err != nil {
			return nil, err
		}
		lat = append(lat, int64(slices.MaxFunc(deniedAt, time.Time.Compare).Sub(acked)))
		g, err := st.AddManager(ctx, store, user)
		if err != nil {
			return nil, err
		}
		for _, p := range insts {
			if err := p.WaitFor(wctx, g); err != nil {
				return nil, err
			}
		}
	}
	return lat, nil
}
