package replica

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"github.com/replmesh/replmesh/internal/diskguard"
	"github.com/replmesh/replmesh/modes"
	"github.com/replmesh/replmesh/transport"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health/grpc_health_v1"
)

// Component is the replication component one service instance embeds. It
// owns tables (OwnedTable), holds replicas of other services' tables
// (Replica), and serves the replication service to consumers.
//
// Lock order: Component.mu before OwnedTable.mu before tail.mu; Replica.mu
// is never held while taking another lock.
type Component struct {
	cfg Config
	log *slog.Logger
	// db is the database; fullDBLocked replaces it, under mu, while it is
	// small: the small database an in-memory component starts on
	// (Config.startsSmall; nil for the others). Once replaced, small stays
	// open until Close, for any reader that still holds it.
	db     *badger.DB
	small  *badger.DB
	ln     net.Listener
	server *transport.Server

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// disk refuses writes while the data dir is short of space (nil in
	// memory; see diskfull.go).
	disk *diskguard.Guard
	// walSyncs counts the WAL records fsynced one by one (Durability Sync).
	walSyncs atomic.Uint64

	writes     chan *pendingWrite
	commitDone chan struct{} // closed when the committer has stopped
	dropKick   chan struct{}

	mu       sync.Mutex
	closed   bool
	owned    map[string]*OwnedTable
	replicas map[string]*Replica
	conns    map[peerKind]*grpc.ClientConn
	// Broker state: the last topology, this instance's role, and the
	// followers that keep a standby's tables in step with the primary.
	topo       *transport.Topology
	role       role
	followers  map[string]*Replica
	roleMu     sync.Mutex // serializes role changes; taken before mu
	brokerKick chan struct{}
	lease      primaryLease // with MinSyncStandbys: see lease.go
	// emptyAtOpen: the database held no owned table at Open (AutoRestore
	// restores the tables owned from then on).
	emptyAtOpen bool
	// storedEpoch is the highest epoch the owned tables in the database
	// carried at Open (opened with Own or not), reported in every Register
	// (transport.Register.Epoch). Set before the broker session starts.
	storedEpoch uint64

	// memRows (guarded by mu) are the resident rows of closed in-memory
	// replicas, by "SERVICE/TABLE": a later Subscribe resumes from them.
	memRows map[string]*resView

	// reads keeps the database open while a read is in flight (see
	// readGate).
	reads readGate

	closeOnce sync.Once
	closeErr  error

	// guard counts refused calls, limits hit and protocol errors, and the
	// subscriptions of each caller (see authz.go).
	guard ownerGuard
	// policy is the access policy in force (Config.AccessPolicy, then
	// ReloadAccessPolicy).
	policy atomic.Pointer[modes.AccessPolicy]

	hooks hooks // test knobs, set before any Subscribe
}

// readGate lets Close wait for the reads in flight before it closes the
// database: badger's DB.Close unmaps every table file even under an open
// iterator, so a Get, Scan or Digest racing Close read unmapped memory and
// crashed the process (SIGSEGV). A read enters and leaves the gate; once
// Close has shut it, a read gets ErrClosed. It is an atomic counter rather
// than a lock, so that a read nested in another (a Get in a Scan callback)
// cannot deadlock with Close.
type readGate struct {
	n        atomic.Int64  // reads in flight, minus gateShut once shut
	drained  chan struct{} // closed when the gate is shut and empty
	drainOne sync.Once
}

const gateShut = 1 << 62

// enter admits a read; the caller must call leave when done, also when
// enter fails.
func (g *readGate) enter() error {
	if g.n.Add(1) < 0 {
		return ErrClosed
	}
	return nil
}

func (g *readGate) leave() {
	if g.n.Add(-1) == -gateShut {
		g.drainOne.Do(func() { close(g.drained) })
	}
}

// shut refuses new reads and waits for those in flight.
func (g *readGate) shut() {
	if g.n.Add(-gateShut) == -gateShut {
		g.drainOne.Do(func() { close(g.drained) })
	}
	<-g.drained
}

// In memory, badger has no value log: a value above its ValueThreshold is
// refused, so an in-memory component raises the threshold to badger's
// maximum and holds smaller values than the protocol allows (its log entries
// carry the value plus a few dozen bytes of metadata).
const (
	memValueThreshold = 1 << 20
	memMaxValue       = memValueThreshold - 1<<10
)

// valueLimit is the largest value this component stores, and the reason
// when it is below the protocol's.
func (c *Component) valueLimit() (int, string) {
	if c.cfg.DataDir == "" {
		return memMaxValue, ", in memory: no Config.DataDir"
	}
	return transport.MaxValueSize, ""
}

// Open opens the database, starts the group committer, the log trimmer and
// (when Listener or ListenAddr is set) the replication server.
//
// ctx bounds the opening, not the component: Open returns ctx's error
// (having closed what it opened) when ctx is done before it starts or once
// the database is open (badger's own open, which replays its logs, cannot
// be interrupted). The open component lives until Close.
func Open(ctx context.Context, cfg Config) (*Component, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("open component: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("open component: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	log = log.With("service", cfg.Service, "instance", cfg.Instance)
	if err := checkSecurity(&cfg, log); err != nil {
		return nil, fmt.Errorf("open component: %w", err)
	}

	sizing := cfg.dbSizing()
	small := cfg.startsSmall()
	if small {
		sizing = smallDBSizing()
	}
	var disk *diskguard.Guard
	if cfg.DataDir != "" {
		// On a full file system badger would fault while opening (it maps
		// new log files): refuse with an error instead.
		disk = diskguard.New(cfg.DataDir, sizing.MemTable, log)
		if err := disk.CheckOpen(); err != nil {
			return nil, fmt.Errorf("open component: %w", err)
		}
	}
	db, err := openDB(cfg, sizing, log)
	if err != nil {
		return nil, fmt.Errorf("open component: badger: %w", err)
	}
	if err := ctx.Err(); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open component: %w", err)
	}
	// Read before the broker session registers: the tables are opened
	// (Own) after Open returns, usually after the first Register.
	var epoch uint64
	tables := 0
	if len(cfg.Brokers) > 0 && cfg.Owner {
		if epoch, tables, err = storedEpoch(db); err != nil {
			_ = db.Close()
			return nil, fmt.Errorf("open component: read the owned tables' epochs: %w", err)
		}
	}
	cctx, cancel := context.WithCancel(context.Background())
	c := &Component{
		cfg:        cfg,
		log:        log,
		db:         db,
		ctx:        cctx,
		cancel:     cancel,
		writes:     make(chan *pendingWrite, 1024),
		commitDone: make(chan struct{}),
		dropKick:   make(chan struct{}, 1),
		conns:      map[peerKind]*grpc.ClientConn{},
		followers:  map[string]*Replica{},
		lease:      primaryLease{origin: time.Now()},
		brokerKick: make(chan struct{}, 1),
		owned:      map[string]*OwnedTable{},
		replicas:   map[string]*Replica{},
		reads:      readGate{drained: make(chan struct{})},
		disk:       disk,

		storedEpoch: epoch,
		emptyAtOpen: tables == 0,
	}
	c.policy.Store(cfg.AccessPolicy)
	if disk != nil {
		disk.OnRecover = c.kickDropper // a drop refused for lack of space goes on
		disk.Refresh()                 // preallocate the logs badger just opened
	}
	if ln := cfg.Listener; ln != nil || cfg.ListenAddr != "" {
		if ln == nil {
			if ln, err = transport.Listen(cfg.ListenAddr); err != nil {
				cancel()
				_ = db.Close()
				return nil, fmt.Errorf("open component: listen %s: %w", cfg.ListenAddr, err)
			}
		}
		c.ln = ln
		c.server = transport.NewServer(c.serverOptions(), grpc.StatsHandler(&connStreams{
			max: cfg.MaxConcurrentStreams,
			hit: func() { c.guard.refusals.add(limitConnStreams) },
		}))
		transport.RegisterReplicationServer(c.server, &replicationServer{c: c})
		transport.RegisterRestoreServer(c.server, &restoreServer{c: c})
		c.server.Health.SetServingStatus("", grpc_health_v1.HealthCheckResponse_SERVING)
		c.server.Health.SetServingStatus(transport.ReplicationServiceName, grpc_health_v1.HealthCheckResponse_SERVING)
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			if err := c.server.Serve(ln); err != nil && !errors.Is(err, net.ErrClosed) {
				log.Error("replication server stopped", "err", err)
			}
		}()
	}
	if len(cfg.Brokers) > 0 {
		c.wg.Add(1)
		go c.brokerLoop()
	}
	if disk != nil {
		c.wg.Add(1)
		go func() { defer c.wg.Done(); disk.Run(c.done()) }()
	}
	if small {
		// The dropper starts with the full database (fullDBLocked): the
		// small one holds no generation to drop.
		c.small = db
		c.wg.Add(2)
	} else {
		c.wg.Add(3)
		go c.dropLoop()
	}
	go c.commitLoop()
	go c.trimLoop()
	c.kickDropper()
	log.Info("component open", "addr", c.Addr(), "data_dir", cfg.DataDir, "durability", cfg.Durability.String())
	return c, nil
}

// openDB opens the component's badger database with sizing.
func openDB(cfg Config, sizing dbSizing, log *slog.Logger) (*badger.DB, error) {
	opts := badger.DefaultOptions(cfg.DataDir).
		WithInMemory(cfg.DataDir == "").
		WithSyncWrites(cfg.Durability == Sync).
		WithDetectConflicts(false).
		WithLogger(badgerLogger{log.With("subsystem", "badger")}).
		WithMetricsEnabled(false). // nothing reads badger's expvar metrics; each write and read paid for them
		WithMemTableSize(sizing.MemTable).
		WithNumMemtables(sizing.NumMemtables).
		WithBlockCacheSize(sizing.BlockCache).
		WithIndexCacheSize(sizing.IndexCache).
		WithNumCompactors(sizing.NumCompactors).
		WithValueThreshold(sizing.ValueThreshold).
		WithCompression(options.None) // rows and log entries are small: compression costs more CPU than it saves
	if cfg.DataDir != "" {
		opts = opts.WithValueLogFileSize(sizing.ValueLogFile)
	}
	return badger.Open(opts)
}

// fullDBLocked moves an in-memory component that started on its small
// database (Config.startsSmall) to the full one, before it first keeps
// something in badger: Own, a DiskOnly replica. Until then nothing reads
// the database but under mu, the calls that read it without mu (the
// committer, the trimmer, the servers, a DiskOnly replica) follow one of
// those, and the dropper starts here. Whatever the small database holds
// is copied (it holds nothing: a resident replica keeps its rows in
// memory). The caller holds mu.
func (c *Component) fullDBLocked() error {
	if c.small == nil || c.db != c.small {
		return nil
	}
	db, err := openDB(c.cfg, c.cfg.dbSizing(), c.log)
	if err != nil {
		return fmt.Errorf("open the database: %w", err)
	}
	if err := copyDB(c.small, db); err != nil {
		_ = db.Close()
		return fmt.Errorf("open the database: %w", err)
	}
	c.db = db
	c.wg.Add(1)
	go c.dropLoop()
	c.log.Info("database sized for owned tables or disk-only replicas", "memtable_bytes", c.cfg.memTable())
	return nil
}

// copyDB copies every key of from into to.
func copyDB(from, to *badger.DB) error {
	wb := to.NewWriteBatch()
	defer wb.Cancel()
	err := from.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.DefaultIteratorOptions)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			if err := wb.Set(it.Item().KeyCopy(nil), v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return wb.Flush()
}

// Addr is the address the replication service listens on ("" when none).
func (c *Component) Addr() string {
	if c.ln == nil {
		return ""
	}
	return c.ln.Addr().String()
}

// Config returns the component's configuration.
func (c *Component) Config() Config { return c.cfg }

// Close stops serving, stops every replica, waits for every goroutine and
// closes the database. It is safe to call more than once.
func (c *Component) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		reps := make([]*Replica, 0, len(c.replicas)+len(c.followers))
		for _, r := range c.replicas {
			reps = append(reps, r)
		}
		for _, r := range c.followers {
			reps = append(reps, r)
		}
		c.mu.Unlock()
		c.cancel()
		if c.server != nil {
			c.server.GracefulStop(2 * time.Second)
		}
		for _, r := range reps {
			r.stop()
		}
		c.wg.Wait()
		for _, cc := range c.conns {
			_ = cc.Close()
		}
		c.reads.shut()
		c.disk.Closing() // room for the flush in db.Close
		c.closeErr = c.db.Close()
		if c.small != nil && c.small != c.db {
			c.closeErr = errors.Join(c.closeErr, c.small.Close())
		}
		c.log.Info("component closed")
	})
	return c.closeErr
}

// done reports whether Close has begun.
func (c *Component) done() <-chan struct{} { return c.ctx.Done() }

// badgerLogger routes badger's logs to slog (warnings and errors only).
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any)   { b.l.Error(fmt.Sprintf(f, a...)) }
func (b badgerLogger) Warningf(f string, a ...any) { b.l.Warn(fmt.Sprintf(f, a...)) }
func (b badgerLogger) Infof(string, ...any)        {}
func (b badgerLogger) Debugf(string, ...any)       {}
