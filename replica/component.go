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
// is never held while taking another lock; Component.dbMu is taken last
// (useDB holds it around badger calls only).
type Component struct {
	cfg Config
	log *slog.Logger
	// db is the database. A component that starts small
	// (Config.startsSmall) opens it with smallDBSizing, and fullDBLocked
	// replaces it, under mu and dbMu, with the full one and sets full;
	// until then it is read only under dbMu (useDB) or under mu. Once
	// full, db never changes. small is the in-memory small database,
	// which stays open until Close (nil for the others: on disk it is
	// closed, its directory reopened).
	db     *badger.DB
	small  *badger.DB
	dbMu   sync.RWMutex
	full   atomic.Bool
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
	// logSpare is the committer's spare log writer buffers (commit.go):
	// the groups of one commit are encoded into the buffers the last
	// one grew, not into new ones grown again for every commit.
	logSpare logBuffers
	dropKick chan struct{}

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
	small := cfg.startsSmall() && (cfg.DataDir == "" || smallReplayFits(cfg.DataDir) && !holdsOwnedTables(cfg.DataDir))
	if small {
		sizing = cfg.smallDBSizing()
	}
	var disk *diskguard.Guard
	if cfg.DataDir != "" {
		// On a full file system badger would fault while opening (it maps
		// new log files): refuse with an error instead. The reserve is
		// the full database's, which a small one may become.
		disk = diskguard.New(cfg.DataDir, cfg.memTable(), log)
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
	c.full.Store(!small)
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
	if small && cfg.DataDir == "" {
		// The dropper starts with the full database (fullDBLocked): the
		// small one in memory holds no generation to drop.
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

// fullDBLocked moves a component that started on its small database
// (Config.startsSmall) to the full one, before it first keeps something
// in badger that the small one cannot hold: Own, a DiskOnly replica, a
// resident replica whose generation is in badger (residentNeedsFullDB).
// Those, and what follows them (the committer's and trimmer's work, the
// servers' reads of owned tables, a DiskOnly replica's reads and applies),
// read c.db without the gate: they happen after the switch. What reads the
// database while it is small (a durable resident replica's cursor,
// transfer, checkpoint and WAL records, the dropper) does so through
// useDB, whose gate the switch holds. In memory the small database's keys
// are copied into a new one (it holds nothing: a resident replica keeps
// its rows in memory) and the dropper starts here; on disk the database
// is closed and its directory reopened with the full sizing. The caller
// holds mu.
func (c *Component) fullDBLocked() error {
	if c.full.Load() {
		return nil
	}
	c.dbMu.Lock()
	defer c.dbMu.Unlock()
	if c.cfg.DataDir == "" {
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
	} else if err := c.reopenFullLocked(); err != nil {
		return err
	}
	c.full.Store(true)
	c.log.Info("database sized for owned tables or disk-only replicas", "memtable_bytes", c.cfg.memTable())
	return nil
}

// reopenFullLocked closes the small database on disk and reopens its
// directory with the full sizing; if that fails, with the small sizing
// again, so that the resident replicas go on. The caller holds mu and
// dbMu.
func (c *Component) reopenFullLocked() error {
	if err := c.db.Close(); err != nil {
		return fmt.Errorf("close the small database: %w", err)
	}
	db, err := openDB(c.cfg, c.cfg.dbSizing(), c.log)
	if err != nil {
		small, err2 := openDB(c.cfg, c.cfg.smallDBSizing(), c.log)
		if err2 != nil {
			// c.db stays the closed database: every use fails with
			// badger's ErrDBClosed.
			c.log.Error("reopen the database", "err", err2)
			return fmt.Errorf("open the database: %w (and reopening the small one: %v)", err, err2)
		}
		c.db = small
		c.disk.Refresh()
		return fmt.Errorf("open the database: %w", err)
	}
	c.db = db
	c.disk.Refresh() // preallocate the logs badger just opened
	return nil
}

// useDB calls fn with the database, holding the gate (dbMu) while the
// component is small, so that fullDBLocked cannot replace it meanwhile.
// fn must not keep db, nor anything of it (a transaction, an iterator, a
// write batch), after it returns, and must not call useDB again (a switch
// waiting for the gate would deadlock the nested call) nor take a lock a
// switch's caller may hold (Component.mu).
func (c *Component) useDB(fn func(db *badger.DB) error) error {
	if c.full.Load() {
		return fn(c.db)
	}
	c.dbMu.RLock()
	defer c.dbMu.RUnlock()
	return fn(c.db)
}

// viewDB and updateDB are badger's View and Update through useDB.
func (c *Component) viewDB(fn func(txn *badger.Txn) error) error {
	return c.useDB(func(db *badger.DB) error { return db.View(fn) })
}

func (c *Component) updateDB(fn func(txn *badger.Txn) error) error {
	return c.useDB(func(db *badger.DB) error { return db.Update(fn) })
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
		c.mu.Lock()
		for _, t := range c.owned {
			c.closeErr = errors.Join(c.closeErr, t.seg.close())
		}
		c.mu.Unlock()
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
