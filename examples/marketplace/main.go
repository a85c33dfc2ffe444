// Command marketplace is the replmesh quickstart: the marketplace scenario
// of the design (docs/design.md, "What replmesh is") run in one process.
//
//	go run ./examples/marketplace        (or: make demo)
//
// A broker and two services, each instance with its own replication
// component, its own data directory and its own listen address:
//
//   - the broker (package broker, embedded here) tells the components where
//     the owners of the tables they subscribe to are, and grants the
//     primary lease of each owner service; it is never on the data path;
//   - stores (package stores) owns the tables `stores` and `store_managers`
//     and is the only service that writes them. It runs two instances,
//     stores-1 and stores-2, with min_sync_standbys 1: the broker makes one
//     the primary, the other a standby that keeps a copy of its tables, and
//     a write returns only once the standby holds it;
//   - products (package products) lets a user add a product to a store only
//     if the user manages that store. It subscribes to both tables of stores
//     through the broker (it is given no address) and decides from its
//     local replica: no call to stores on the decision path. Its own
//     products go to a table it owns, `products`.
//
// The demo then walks through six steps and prints each:
//
//  1. stores creates store S1 and makes alice a manager; products waits
//     for that commit (WaitFor: read-your-writes across services); alice
//     may add a product to S1, bob may not (the reason is printed);
//  2. bob becomes a manager and is allowed; alice is revoked and denied;
//  3. stores is stopped (both instances): products keeps deciding from its
//     replica (bob allowed, alice denied) and reports the replica's state
//     (connecting) and lag;
//  4. stores restarts on the same data directories (on new ports: products
//     finds the primary through the broker) and adds carol: the replica
//     resumes from its cursor (no second full transfer) and carol is
//     allowed;
//  5. the stores primary is stopped: the broker promotes the standby with a
//     new epoch (the time it took is printed). With min_sync_standbys 1 the
//     new primary takes writes only while a standby confirms them, so the
//     stopped instance is restarted on its data directory: it comes back
//     as a standby (its writes are refused). bob is revoked on the new
//     primary and products denies him (the time from the revoke's
//     acknowledgement to the denial is printed); products followed the new
//     primary without a full transfer;
//  6. stores loses its disk with no standby running: both instances stop
//     and their data directories are removed; one restarts empty (a new
//     history). products keeps deciding from its replica, which reports
//     the divergence and keeps its rows. An operator (an admin
//     certificate, as replctl restore uses) restores both tables of stores
//     from products' replica over the Restore RPC: every row is back (the
//     digests equal those before the loss), products resumes without a
//     full transfer, the other instance starts empty as a standby and
//     copies the restored primary, and a new manager, dave, is allowed.
//
// The program checks every decision and counter it prints: it exits 1 with
// a message naming the first expectation that failed, 0 otherwise, so CI
// runs it as a test (.ci/run calls make demo). Logs (slog, warnings and
// above) go to stderr; the steps go to stdout. The data directories live in
// a temporary directory that is removed at exit.
//
// This is one process for convenience only: the services and the broker
// talk to each other over gRPC on 127.0.0.1 exactly as separate processes
// would, and with the security on, as in production: a development CA
// (transport.DevCA) made at start issues each instance a certificate of
// its identity (spiffe://replmesh.local/replmesh/SERVICE/INSTANCE) and the
// broker one of a broker; every link is mTLS, the broker requires
// identities, and an access policy lets products read stores' tables.
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

	"github.com/replmesh/replmesh/broker"
	"github.com/replmesh/replmesh/examples/marketplace/products"
	"github.com/replmesh/replmesh/examples/marketplace/stores"
	"github.com/replmesh/replmesh/modes"
	"github.com/replmesh/replmesh/replica"
	"github.com/replmesh/replmesh/transport"
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
// a promotion waits for the broker's lease, one second here).
const stepTimeout = 15 * time.Second

// The stores instances.
const (
	stores1 = "stores-1"
	stores2 = "stores-2"
)

// config returns a component config for instance of service in dir,
// registered with brokers (none: consumers need an address). The defaults
// are production ones; the demo only shortens the reconnect backoff so
// that restarts and moves are noticed at once.
func config(service, instance, dir string, brokers []string, logger *slog.Logger) replica.Config {
	cfg := replica.DefaultConfig()
	cfg.Service = service
	cfg.Instance = instance
	cfg.DataDir = dir
	cfg.Logger = logger
	cfg.Brokers = brokers
	cfg.Owner = len(brokers) > 0 // both services own tables
	cfg.ReconnectMin = 20 * time.Millisecond
	cfg.ReconnectMax = 250 * time.Millisecond
	return cfg
}

// storesConfig is the config of a stores instance: with a broker, a write
// returns only once the standby holds it.
func storesConfig(instance, dir string, brokers []string, logger *slog.Logger) replica.Config {
	cfg := config(stores.ServiceName, instance, filepath.Join(dir, instance), brokers, logger)
	if len(brokers) > 0 {
		cfg.MinSyncStandbys = 1
		cfg.SyncTimeout = 2 * time.Second
	}
	return cfg
}

// demoPolicy is the access policy of the demo (the broker's and each
// owner's): products reads stores' tables; each service reads its own.
func demoPolicy() *modes.AccessPolicy {
	p := modes.NewAccessPolicy()
	if err := p.Allow(stores.ServiceName, modes.AnyTable, products.ServiceName); err != nil {
		panic(err) // constant, valid names
	}
	return p
}

// demo holds the running services and the output.
type demo struct {
	out      io.Writer
	logger   *slog.Logger
	dir      string
	ca       *transport.DevCA // issues every certificate of the run
	policy   *modes.AccessPolicy
	broker   *broker.Broker
	primary  *stores.Service // the stores instance that holds the primary lease
	standby  *stores.Service
	products *products.Service
}

// run runs the six steps; the data lives under dir. It returns the first
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
	sctx, cancel := context.WithTimeout(ctx, stepTimeout)
	err = d.start(sctx)
	cancel()
	if err != nil {
		return fmt.Errorf("start: %w", err)
	}
	steps := []struct {
		title string
		fn    func(context.Context) error
	}{
		{"create store S1, add manager alice", d.step1},
		{"add manager bob, revoke alice", d.step2},
		{"stop stores: products decides from its replica", d.step3},
		{"restart stores on the same data dirs, add carol", d.step4},
		{"stop the stores primary: the standby takes over", d.step5},
		{"stores loses its disk, no standby: restore it from products' replica", d.step6},
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

// start opens the broker, the stores primary and standby, then products
// subscribed through the broker, and waits for products' first full
// transfer.
func (d *demo) start(ctx context.Context) error {
	var err error
	if d.ca, err = transport.NewDevCA(transport.DefaultTrustDomain, time.Hour); err != nil {
		return err
	}
	d.policy = demoPolicy()
	bcfg := broker.LocalConfig("broker-1") // 127.0.0.1, fast timers: a 1s lease
	bcfg.Logger = d.logger
	src, err := d.tlsSource(transport.Identity{Role: transport.RoleBroker, Name: bcfg.Name})
	if err != nil {
		return err
	}
	bcfg.Transport.TLS, bcfg.RequireIdentity, bcfg.Policy = src.ServerConfig(), true, d.policy
	bcfg.PeerTransport.TLS = src.ClientConfig(transport.ExpectRole(transport.RoleBroker)) // for brokers that would join it
	if d.broker, err = broker.New(ctx, bcfg); err != nil {
		return err
	}
	d.printf("mTLS     on: a dev CA of trust domain %s issued every certificate; products may read stores' tables (access policy)\n", d.ca.TrustDomain)
	d.printf("broker   listening on %s (lease %s)\n", d.broker.GRPCAddr(), bcfg.Lease)
	if err := d.startStores(ctx, true); err != nil {
		return err
	}
	pcfg, err := d.secure(config(products.ServiceName, products.ServiceName+"-1", filepath.Join(d.dir, "products"), d.brokers(), d.logger))
	if err != nil {
		return err
	}
	d.products, err = products.Open(ctx, pcfg, products.Options{}) // no address: the broker says where stores is
	if err != nil {
		return err
	}
	if err := d.products.WaitReady(ctx); err != nil {
		return err
	}
	st, err := d.products.Status(stores.TableManagers)
	if err != nil {
		return err
	}
	d.printf("products listening on %s, replicates %s/%s and %s/%s through the broker (first start: %d full transfer)\n",
		d.products.Component().Addr(), stores.ServiceName, stores.TableStores, stores.ServiceName, stores.TableManagers, st.Stats.FullTransfers)
	return nil
}

func (d *demo) brokers() []string { return []string{d.broker.GRPCAddr()} }

// tlsSource issues a certificate of id (into the run's directory, where
// TLSSource reads it) and returns its source.
func (d *demo) tlsSource(id transport.Identity) (*transport.TLSSource, error) {
	dir := filepath.Join(d.dir, "tls")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	files, err := d.ca.IssueFiles(dir, transport.LeafRequest{Identity: id, Validity: time.Hour})
	if err != nil {
		return nil, err
	}
	return transport.NewTLSSource(files, d.logger)
}

// secure puts cfg's instance on mTLS with a certificate of its identity
// and the demo's access policy.
func (d *demo) secure(cfg replica.Config) (replica.Config, error) {
	src, err := d.tlsSource(transport.Identity{Role: transport.RoleService, Service: cfg.Service, Instance: cfg.Instance})
	if err != nil {
		return cfg, err
	}
	cfg.TLS, cfg.AccessPolicy = src, d.policy
	return cfg, nil
}

// openStores opens a stores instance of the demo (secured, see secure).
func (d *demo) openStores(ctx context.Context, instance string) (*stores.Service, error) {
	cfg, err := d.secure(storesConfig(instance, d.dir, d.brokers(), d.logger))
	if err != nil {
		return nil, err
	}
	return stores.Open(ctx, cfg)
}

// startStores opens stores-1, waits until it is the primary, then
// stores-2, and waits until it is its standby and holds its tables.
func (d *demo) startStores(ctx context.Context, first bool) error {
	var err error
	if d.primary, err = d.openStores(ctx, stores1); err != nil {
		return err
	}
	role, epoch, err := waitRole(ctx, d.primary, transport.RolePrimary, 0)
	if err != nil {
		return err
	}
	if first {
		d.printf("%s listening on %s: %s (epoch %d), owns tables %s and %s\n", stores1, d.primary.Addr(), role, epoch, stores.TableStores, stores.TableManagers)
	} else {
		d.printf("  stores:   %s restarted on %s (same data dir, new port): %s (epoch %d)\n", stores1, d.primary.Addr(), role, epoch)
	}
	if d.standby, err = d.openStores(ctx, stores2); err != nil {
		return err
	}
	if role, epoch, err = waitRole(ctx, d.standby, transport.RoleStandby, epoch); err != nil {
		return err
	}
	if first {
		d.printf("%s listening on %s: %s (epoch %d), copies the primary's tables (min_sync_standbys 1)\n", stores2, d.standby.Addr(), role, epoch)
	} else {
		d.printf("  stores:   %s restarted on %s (same data dir, new port): %s (epoch %d)\n", stores2, d.standby.Addr(), role, epoch)
	}
	return nil
}

// waitRole waits until s holds role (at epoch, if not 0). The component has
// no role-change notification, so this polls it.
func waitRole(ctx context.Context, s *stores.Service, want string, epoch uint64) (string, uint64, error) {
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		role, e := s.Component().Role()
		if role == want && (epoch == 0 || e == epoch) {
			return role, e, nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return role, e, fmt.Errorf("%s is %q at epoch %d, want %s (epoch %d): %w", s.Instance(), role, e, want, epoch, ctx.Err())
		}
	}
}

func (d *demo) close() error {
	var errs []error
	if d.products != nil {
		errs = append(errs, d.products.Close())
	}
	for _, s := range []*stores.Service{d.standby, d.primary} {
		if s != nil {
			errs = append(errs, s.Close())
		}
	}
	if d.broker != nil {
		errs = append(errs, d.broker.Close())
	}
	return errors.Join(errs...)
}

// commit runs a stores write on the primary. A write refused before
// anything was written because no standby is connected yet (the standby
// has just started or restarted; min_sync_standbys 1) is tried again.
func (d *demo) commit(ctx context.Context, fn func(context.Context) (stores.Commit, error)) (stores.Commit, error) {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		c, err := fn(ctx)
		if !errors.Is(err, replica.ErrNotReplicated) || c.Seq != 0 {
			return c, err
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return c, fmt.Errorf("%w (still no standby: %w)", err, ctx.Err())
		}
	}
}

// write runs a stores write, prints it, and waits until products' replica
// holds it.
func (d *demo) write(ctx context.Context, what string, fn func(context.Context) (stores.Commit, error)) (stores.Commit, error) {
	c, err := d.commit(ctx, fn)
	if err != nil {
		return c, fmt.Errorf("stores: %s: %w", what, err)
	}
	if err := d.products.WaitFor(ctx, c); err != nil {
		return c, fmt.Errorf("products: wait for %s: %w", c, err)
	}
	d.printf("  stores:   %-22s commit %-18s products: replica holds it (WaitFor)\n", what, c)
	return c, nil
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
	if _, err := d.write(ctx, "create store S1", func(ctx context.Context) (stores.Commit, error) {
		return d.primary.CreateStore(ctx, "S1", "Lamps & Co")
	}); err != nil {
		return err
	}
	if _, err := d.write(ctx, "add manager alice", func(ctx context.Context) (stores.Commit, error) {
		return d.primary.AddManager(ctx, "S1", "alice")
	}); err != nil {
		return err
	}
	if err := d.expect(ctx, "alice", "desk lamp", true); err != nil {
		return err
	}
	return d.expect(ctx, "bob", "bicycle", false)
}

func (d *demo) step2(ctx context.Context) error {
	if _, err := d.write(ctx, "add manager bob", func(ctx context.Context) (stores.Commit, error) {
		return d.primary.AddManager(ctx, "S1", "bob")
	}); err != nil {
		return err
	}
	if err := d.expect(ctx, "bob", "floor lamp", true); err != nil {
		return err
	}
	if _, err := d.write(ctx, "revoke manager alice", func(ctx context.Context) (stores.Commit, error) {
		return d.primary.RevokeManager(ctx, "S1", "alice")
	}); err != nil {
		return err
	}
	return d.expect(ctx, "alice", "lava lamp", false)
}

func (d *demo) step3(ctx context.Context) error {
	// The standby first: stopped after the primary, it would be promoted.
	for _, s := range []*stores.Service{d.standby, d.primary} {
		if err := s.Close(); err != nil {
			return fmt.Errorf("close %s: %w", s.Instance(), err)
		}
	}
	d.printf("  stores:   %s and %s stopped (components closed)\n", stores2, stores1)
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
	d.primary, d.standby = nil, nil // closed in step 3
	if err := d.startStores(ctx, false); err != nil {
		return fmt.Errorf("restart stores: %w", err)
	}
	if _, err := d.write(ctx, "add manager carol", func(ctx context.Context) (stores.Commit, error) {
		return d.primary.AddManager(ctx, "S1", "carol")
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

func (d *demo) step5(ctx context.Context) error {
	before, err := d.products.Status(stores.TableManagers)
	if err != nil {
		return err
	}
	_, oldEpoch := d.primary.Component().Role()
	old, next := d.primary, d.standby

	// The primary stops; the broker promotes the standby once the
	// primary's lease lapses.
	stopped := time.Now()
	if err := old.Close(); err != nil {
		return fmt.Errorf("close %s: %w", old.Instance(), err)
	}
	d.printf("  stores:   %s (primary, epoch %d) stopped\n", old.Instance(), oldEpoch)
	d.primary, d.standby = next, nil
	// Until the standby takes over, stores has no primary; products goes
	// on deciding from its replica.
	if err := d.expect(ctx, "bob", "desk fan", true); err != nil {
		return err
	}
	_, epoch, err := waitRole(ctx, next, transport.RolePrimary, 0)
	if err != nil {
		return err
	}
	took := time.Since(stopped)
	d.printf("  stores:   %s took over as primary (epoch %d -> %d) %s after the stop\n", next.Instance(), oldEpoch, epoch, took.Round(time.Millisecond))
	if epoch <= oldEpoch {
		return fmt.Errorf("%s promoted at epoch %d, the stopped primary's was %d", next.Instance(), epoch, oldEpoch)
	}

	// Alone, the new primary cannot have a write confirmed by a standby:
	// min_sync_standbys refuses it before anything is written.
	c, err := next.RevokeManager(ctx, "S1", "bob")
	if !errors.Is(err, replica.ErrNotReplicated) || c.Seq != 0 {
		return fmt.Errorf("revoke on %s with no standby: commit %v, err %v; want nothing written and replica.ErrNotReplicated", next.Instance(), c, err)
	}
	d.printf("  stores:   revoke bob on %s with no standby -> refused: %v\n", next.Instance(), errors.Unwrap(err))

	// The stopped instance restarts on its data dir: a standby now.
	restarted, err := d.openStores(ctx, old.Instance())
	if err != nil {
		return fmt.Errorf("restart %s: %w", old.Instance(), err)
	}
	d.standby = restarted
	if _, _, err := waitRole(ctx, restarted, transport.RoleStandby, epoch); err != nil {
		return err
	}
	_, err = restarted.AddManager(ctx, "S1", "mallory")
	if !errors.Is(err, transport.ErrNotPrimary) {
		return fmt.Errorf("a write on the restarted %s: %v, want it refused (not primary)", restarted.Instance(), err)
	}
	d.printf("  stores:   %s restarted on its data dir: standby (epoch %d); a write there -> refused: %v\n",
		restarted.Instance(), epoch, errors.Unwrap(err))

	// The revoke on the new primary, confirmed by the standby, reaches
	// products.
	c, err = d.commit(ctx, func(ctx context.Context) (stores.Commit, error) { return next.RevokeManager(ctx, "S1", "bob") })
	if err != nil {
		return fmt.Errorf("stores: revoke manager bob on %s: %w", next.Instance(), err)
	}
	acked := time.Now()
	if err := d.products.WaitFor(ctx, c); err != nil {
		return fmt.Errorf("products: wait for %s: %w", c, err)
	}
	dec, err := d.products.Authorize("bob", "S1")
	if err != nil {
		return err
	}
	latency := time.Since(acked)
	d.printf("  stores:   %-22s commit %-18s on %s, confirmed by standby %s\n", "revoke manager bob", c, next.Instance(), restarted.Instance())
	d.printf("  products: denies bob %s after stores acknowledged the revoke (%s)\n", latency.Round(time.Microsecond), dec)
	if dec.Allowed() {
		return fmt.Errorf("products still allows bob after the revoke %s", c)
	}
	if err := d.expect(ctx, "bob", "ceiling fan", false); err != nil {
		return err
	}
	if err := d.expect(ctx, "carol", "fan heater", true); err != nil {
		return err
	}

	after, err := d.waitState(ctx, replica.StateStreaming)
	if err != nil {
		return err
	}
	d.printf("  products: replica %s/%s state=%s seq=%d epoch=%d; full transfers %d -> %d, resumes %d -> %d\n",
		after.Service, after.Table, after.State, after.Seq, after.Epoch,
		before.Stats.FullTransfers, after.Stats.FullTransfers, before.Stats.Resumes, after.Stats.Resumes)
	if after.Stats.FullTransfers != 1 || after.Stats.Truncations != 0 {
		return fmt.Errorf("store_managers replica made %d full transfers (%d truncations), want 1: it must resume on the new primary",
			after.Stats.FullTransfers, after.Stats.Truncations)
	}
	if after.Epoch != epoch {
		return fmt.Errorf("store_managers replica is at epoch %d, want the new primary's %d", after.Epoch, epoch)
	}
	if after.Stats.Resumes <= before.Stats.Resumes {
		return fmt.Errorf("store_managers replica resumes %d -> %d, want an increase", before.Stats.Resumes, after.Stats.Resumes)
	}
	if st, _ := d.products.Status(stores.TableStores); st.Stats.FullTransfers != 1 {
		return fmt.Errorf("stores replica made %d full transfers, want 1", st.Stats.FullTransfers)
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
