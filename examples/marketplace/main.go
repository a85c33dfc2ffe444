// Command marketplace is the replmesh quickstart: the marketplace scenario
// of the design (DESIGN.md, "The problem it solves") run in one process.
//
//	go run ./examples/marketplace        (or: make demo)
//
// Two services, each with its own replication component, its own data
// directory and its own listen address:
//
//   - stores (package stores) owns the tables `stores` and `store_managers`
//     and is the only service that writes them;
//   - products (package products) lets a user add a product to a store only
//     if the user manages that store. It subscribes to both tables of stores
//     and decides from its local replica: no call to stores on the decision
//     path. Its own products go to a table it owns, `products`.
//
// The demo then walks through four steps and prints each:
//
//  1. stores creates store S1 and makes alice a manager; products waits
//     for that commit (WaitFor: read-your-writes across services); alice
//     may add a product to S1, bob may not (the reason is printed);
//  2. bob becomes a manager and is allowed; alice is revoked and denied;
//  3. stores is stopped: products keeps deciding from its replica (bob
//     allowed, alice denied) and reports the replica's state (connecting)
//     and lag;
//  4. stores restarts on the same data directory and address and adds
//     carol: the replica resumes from its cursor (no second full transfer)
//     and carol is allowed.
//
// The program checks every decision and counter it prints: it exits 1 with
// a message naming the first expectation that failed, 0 otherwise, so CI
// runs it as a test (.ci/run calls make demo). Logs (slog, warnings and
// above) go to stderr; the steps go to stdout. The data directories live in
// a temporary directory that is removed at exit.
//
// This is one process for convenience only: the services talk to each other
// over gRPC on 127.0.0.1 exactly as separate processes would.
package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"time"

	"github.com/replmesh/replmesh/examples/marketplace/products"
	"github.com/replmesh/replmesh/examples/marketplace/stores"
	"github.com/replmesh/replmesh/replica"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	dir, err := os.MkdirTemp("", "replmesh-marketplace-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "marketplace:", err)
		os.Exit(1)
	}
	err = run(ctx, os.Stdout, logger, dir)
	if rerr := os.RemoveAll(dir); rerr != nil && err == nil {
		err = rerr
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "marketplace demo FAILED:", err)
		os.Exit(1)
	}
}

// stepTimeout bounds every wait of the demo (replication is milliseconds;
// a reconnect after the restart is well under a second).
const stepTimeout = 15 * time.Second

// config returns a component config for service in dir. The defaults are
// production ones; the demo only shortens the reconnect backoff so the
// restart in step 4 is noticed at once.
func config(service, dir string, logger *slog.Logger) replica.Config {
	cfg := replica.DefaultConfig()
	cfg.Service = service
	cfg.Instance = service + "-1"
	cfg.DataDir = dir
	cfg.Logger = logger
	cfg.ReconnectMin = 20 * time.Millisecond
	cfg.ReconnectMax = 250 * time.Millisecond
	return cfg
}

// demo holds the running services and the output.
type demo struct {
	out      io.Writer
	logger   *slog.Logger
	dir      string
	stores   *stores.Service
	products *products.Service
}

// run runs the four steps; the data lives under dir. It returns the first
// expectation that failed.
func run(ctx context.Context, out io.Writer, logger *slog.Logger, dir string) (err error) {
	start := time.Now()
	d := &demo{out: out, logger: logger, dir: dir}
	defer func() {
		if cerr := d.close(); err == nil {
			err = cerr
		}
	}()
	d.printf("replmesh marketplace demo (data in %s)\n", dir)
	if err := d.start(ctx); err != nil {
		return err
	}
	steps := []struct {
		title string
		fn    func(context.Context) error
	}{
		{"create store S1, add manager alice", d.step1},
		{"add manager bob, revoke alice", d.step2},
		{"stop stores: products decides from its replica", d.step3},
		{"restart stores on the same data dir and address, add carol", d.step4},
	}
	for i, s := range steps {
		d.printf("\nstep %d: %s\n", i+1, s.title)
		sctx, cancel := context.WithTimeout(ctx, stepTimeout)
		err := s.fn(sctx)
		cancel()
		if err != nil {
			return fmt.Errorf("step %d (%s): %w", i+1, s.title, err)
		}
	}
	d.printf("\nall expectations met in %s\n", time.Since(start).Round(time.Millisecond))
	return nil
}

func (d *demo) printf(format string, args ...any) { fmt.Fprintf(d.out, format, args...) }

// start opens stores, then products subscribed to it, and waits for the
// products' first full transfer.
func (d *demo) start(ctx context.Context) error {
	var err error
	d.stores, err = stores.Open(ctx, config(stores.ServiceName, filepath.Join(d.dir, "stores"), d.logger))
	if err != nil {
		return err
	}
	d.printf("stores   listening on %s, owns tables %s and %s\n", d.stores.Addr(), stores.TableStores, stores.TableManagers)
	d.products, err = products.Open(ctx, config(products.ServiceName, filepath.Join(d.dir, "products"), d.logger),
		products.Options{StoresAddr: d.stores.Addr()})
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, stepTimeout)
	defer cancel()
	if err := d.products.WaitReady(wctx); err != nil {
		return err
	}
	st, err := d.products.Status(stores.TableManagers)
	if err != nil {
		return err
	}
	d.printf("products listening on %s, replicates %s/%s and %s/%s (first start: %d full transfer)\n",
		d.products.Component().Addr(), stores.ServiceName, stores.TableStores, stores.ServiceName, stores.TableManagers, st.Stats.FullTransfers)
	return nil
}

func (d *demo) close() error {
	var errs []error
	if d.products != nil {
		errs = append(errs, d.products.Close())
	}
	if d.stores != nil {
		errs = append(errs, d.stores.Close())
	}
	return errors.Join(errs...)
}

// write runs a stores write, prints it, and waits until products' replica
// holds it.
func (d *demo) write(ctx context.Context, what string, fn func(context.Context) (stores.Commit, error)) error {
	c, err := fn(ctx)
	if err != nil {
		return fmt.Errorf("stores: %s: %w", what, err)
	}
	if err := d.products.WaitFor(ctx, c); err != nil {
		return fmt.Errorf("products: wait for %s: %w", c, err)
	}
	d.printf("  stores:   %-22s commit %-18s products: replica holds it (WaitFor)\n", what, c)
	return nil
}

// expect tries to add a product as user to S1 and checks the decision.
func (d *demo) expect(ctx context.Context, user, product string, allow bool) error {
	p, _, err := d.products.AddProduct(ctx, user, "S1", products.Product{Name: product, PriceCents: 1999})
	var denied *products.DeniedError
	switch {
	case err == nil:
		d.printf("  products: %-5s adds %-14q to S1 -> ALLOWED (product %s)\n", user, product, p.ID)
		if !allow {
			return fmt.Errorf("%s was allowed to add a product to S1, expected a denial", user)
		}
	case errors.As(err, &denied):
		d.printf("  products: %-5s adds %-14q to S1 -> DENIED: %s\n", user, product, denied.Decision.Reason)
		if allow {
			return fmt.Errorf("%s was denied (%s), expected to be allowed", user, denied.Decision.Reason)
		}
		if denied.Decision.Code != products.NotManager {
			return fmt.Errorf("%s denied with code %s, want %s", user, denied.Decision.Code, products.NotManager)
		}
	default:
		return fmt.Errorf("%s adds a product: %w", user, err)
	}
	return nil
}

func (d *demo) step1(ctx context.Context) error {
	if err := d.write(ctx, "create store S1", func(ctx context.Context) (stores.Commit, error) {
		return d.stores.CreateStore(ctx, "S1", "Lamps & Co")
	}); err != nil {
		return err
	}
	if err := d.write(ctx, "add manager alice", func(ctx context.Context) (stores.Commit, error) {
		return d.stores.AddManager(ctx, "S1", "alice")
	}); err != nil {
		return err
	}
	if err := d.expect(ctx, "alice", "desk lamp", true); err != nil {
		return err
	}
	return d.expect(ctx, "bob", "bicycle", false)
}

func (d *demo) step2(ctx context.Context) error {
	if err := d.write(ctx, "add manager bob", func(ctx context.Context) (stores.Commit, error) {
		return d.stores.AddManager(ctx, "S1", "bob")
	}); err != nil {
		return err
	}
	if err := d.expect(ctx, "bob", "floor lamp", true); err != nil {
		return err
	}
	if err := d.write(ctx, "revoke manager alice", func(ctx context.Context) (stores.Commit, error) {
		return d.stores.RevokeManager(ctx, "S1", "alice")
	}); err != nil {
		return err
	}
	return d.expect(ctx, "alice", "lava lamp", false)
}

func (d *demo) step3(ctx context.Context) error {
	if err := d.stores.Close(); err != nil {
		return fmt.Errorf("close stores: %w", err)
	}
	d.printf("  stores:   stopped (component closed)\n")
	st, err := d.waitState(ctx, replica.StateConnecting)
	if err != nil {
		return err
	}
	if err := d.expect(ctx, "bob", "table lamp", true); err != nil {
		return err
	}
	if err := d.expect(ctx, "alice", "night lamp", false); err != nil {
		return err
	}
	// The replica cannot know what it missed while the owner is away:
	// staleness grows from the last moment it was known to be current.
	st, _ = d.products.Status(stores.TableManagers)
	d.printf("  products: replica %s/%s state=%s seq=%d owner_head=%d lag=%d seqs, stale for %s\n",
		st.Service, st.Table, st.State, st.Seq, st.OwnerHead, st.Lag.Seqs, st.Lag.Staleness.Round(time.Millisecond))
	if st.State != replica.StateConnecting {
		return fmt.Errorf("replica state is %s while stores is down, want %s", st.State, replica.StateConnecting)
	}
	if st.Lag.Seqs != 0 {
		return fmt.Errorf("replica lags %d seqs behind the head it last heard, want 0", st.Lag.Seqs)
	}
	if st.Lag.Staleness <= 0 {
		return fmt.Errorf("replica staleness is %s while stores is down, want > 0", st.Lag.Staleness)
	}
	if st.LastErr != nil {
		d.printf("  products: last stream error: %v\n", st.LastErr)
	}
	return nil
}

func (d *demo) step4(ctx context.Context) error {
	before, err := d.products.Status(stores.TableManagers)
	if err != nil {
		return err
	}
	cfg := config(stores.ServiceName, filepath.Join(d.dir, "stores"), d.logger)
	cfg.ListenAddr = d.stores.Addr() // the address products knows
	d.stores, err = stores.Open(ctx, cfg)
	if err != nil {
		d.stores = nil
		return fmt.Errorf("restart stores: %w", err)
	}
	d.printf("  stores:   restarted on %s with the same data dir\n", d.stores.Addr())
	if err := d.write(ctx, "add manager carol", func(ctx context.Context) (stores.Commit, error) {
		return d.stores.AddManager(ctx, "S1", "carol")
	}); err != nil {
		return err
	}
	after, err := d.waitState(ctx, replica.StateStreaming)
	if err != nil {
		return err
	}
	d.printf("  products: replica %s/%s state=%s seq=%d lag=%d; full transfers %d -> %d, resumes %d -> %d, reconnects %d\n",
		after.Service, after.Table, after.State, after.Seq, after.Lag.Seqs,
		before.Stats.FullTransfers, after.Stats.FullTransfers, before.Stats.Resumes, after.Stats.Resumes, after.Stats.Reconnects)
	if after.Stats.FullTransfers != 1 {
		return fmt.Errorf("store_managers replica made %d full transfers, want 1 (it must resume)", after.Stats.FullTransfers)
	}
	if after.Stats.Resumes <= before.Stats.Resumes {
		return fmt.Errorf("store_managers replica resumes %d -> %d, want an increase", before.Stats.Resumes, after.Stats.Resumes)
	}
	if st, _ := d.products.Status(stores.TableStores); st.Stats.FullTransfers != 1 {
		return fmt.Errorf("stores replica made %d full transfers, want 1", st.Stats.FullTransfers)
	}
	if err := d.expect(ctx, "carol", "lamp shade", true); err != nil {
		return err
	}
	if err := d.expect(ctx, "alice", "reading lamp", false); err != nil {
		return err
	}
	ps, err := d.products.Products("S1")
	if err != nil {
		return err
	}
	slices.SortFunc(ps, func(a, b products.Product) int { return cmp.Compare(a.AddedAt, b.AddedAt) })
	d.printf("  products: S1 now lists %d products:", len(ps))
	for _, p := range ps {
		d.printf(" %q (by %s)", p.Name, p.AddedBy)
	}
	d.printf("\n")
	if len(ps) != 4 {
		return fmt.Errorf("S1 lists %d products, want 4 (alice 1, bob 2, carol 1)", len(ps))
	}
	return nil
}

// waitState waits until the store_managers replica is in state want. The
// replica has no state-change notification, so this polls its Status.
func (d *demo) waitState(ctx context.Context, want replica.State) (replica.Status, error) {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		st, err := d.products.Status(stores.TableManagers)
		if err != nil || st.State == want {
			return st, err
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return st, fmt.Errorf("replica state is still %s, want %s: %w", st.State, want, ctx.Err())
		}
	}
}
