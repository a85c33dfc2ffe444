package replica

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/replmesh/replmesh/modes"
	"github.com/replmesh/replmesh/transport"
)

// SubscribeOptions name the table a replica follows and where its owner is.
type SubscribeOptions struct {
	// Service is the owner's service name.
	Service string
	// Table is the table's name.
	Table string
	// Addr is the owner's replication address. (With a broker, the address
	// is learned from it; Addr stays useful for tests and small setups.)
	Addr string
	// Modes is the subscription's mode option (push, pull or auto, with
	// pull and auto tuning). It overrides the owner's table default and is
	// overridden by the broker's (replctl mode set). Nil: no preference.
	Modes *modes.TableConfig
	// DiskOnly keeps the replica's rows on disk only, for a table too
	// large to hold in memory: reads go to disk instead of the resident
	// copy (with a data dir, the rows file of its last full transfer,
	// found through a small index in memory, and badger for the changes
	// since; a read transaction per Get). By default every replica is
	// resident: its rows are held in memory (at about len(key)+len(value)
	// plus 100 bytes a row, see docs/design.md) and, in a component with a
	// data dir, on disk as well. In a component without one, a DiskOnly
	// replica lives in badger's memory mode.
	DiskOnly bool
}

// cursor is a replica's durable position, written in the same badger
// transaction as the rows it covers: it is never ahead of the data.
type cursor struct {
	LogID string `msgpack:"log"`
	Epoch uint64 `msgpack:"ep"`
	Seq   uint64 `msgpack:"seq"`
	Gen   uint64 `msgpack:"gen"` // generation holding the rows (see keys.go)
	Time  int64  `msgpack:"tm"`  // commit time of the change at Seq
	// Bulk: the generation's rows are its rows file, then its write-ahead
	// log's records (a durable resident replica's; bulkgen.go, wal.go),
	// whose last one holds the cursor: badger's is the one of the last
	// switch or checkpoint.
	Bulk bool `msgpack:"bulk,omitempty"`
}

// Event is delivered to OnChange callbacks after a batch is durable.
type Event struct {
	// Reset: a full transfer replaced the replica's contents; Changes is
	// empty and the caller should rebuild what it derives with Scan.
	Reset bool
	// Seq is the replica's seq after the event.
	Seq uint64
	// Changes are the changes applied, in seq order. They are the
	// callback's to keep, but their keys and values share memory with the
	// rest of the frame they arrived in (up to 64 KiB), and with the
	// replica's in-memory rows: never modify them in place (an append
	// to a key or a value copies: their capacities end with them). A
	// callback that keeps a few of them for long should copy those
	// (bytes.Clone), or it keeps whole frames alive.
	Changes []Change
}

// Replica is a local, durable, consistent copy of one table of another
// service. Reads never touch the network.
//
// Locks. A Replica has three mutexes; when they nest, they are taken in
// the order cbMu → sendMu → mu (an OnChange callback may call Refresh,
// which sends; sendFrame reads the stream under mu while it holds sendMu).
// mu is innermost but for the resident rows' writer lock (resident.mu,
// taken under mu by a transfer's switch; readers never take it).
// Counters that only count are atomics (stats), and so are reads and
// genPfx; the fields the stream goroutine alone uses (pending) need no lock.
type Replica struct {
	c    *Component
	opts SubscribeOptions
	base string
	log  *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	// mu guards the fields from here to modes. They change only in the
	// stream goroutine (and cur only with the sink written), but are read
	// by any reader.
	mu           sync.RWMutex
	cur          cursor
	state        State
	ownerHead    uint64
	caughtUpAt   time.Time // last time the replica was known to hold the owner's head
	catchingUp   bool      // the stream has not held the owner's head since it began
	subscribed   time.Time // when the subscription began (the staleness base until caught up)
	xfer         *transfer // the running full transfer, nil when none
	lastErr      error
	accept       bool               // AcceptNewHistory was called (always set on a standby)
	seqCh        chan struct{}      // closed and replaced whenever cur changes
	streamAddr   string             // address of the current stream
	streamCancel context.CancelFunc // ends the current stream
	modes        modeState

	stats    counters      // what the subscription has done (Stats); atomics
	reads    atomic.Uint64 // Get/Scan calls, for auto mode's read rate
	genPfx   atomic.Pointer[genPfx]
	ready    chan struct{} // closed once the replica holds a complete copy
	kick     chan struct{} // wakes the reconnect loop early (topology changed)
	modeKick chan struct{} // the effective mode changed: tell the owner
	pullKick chan struct{} // a read found the replica too stale: pull

	// staleCheck: a read must check staleness (pull mode with
	// MaxStaleness; setStaleCheckLocked). Else noteRead takes no lock.
	staleCheck atomic.Bool

	// sink is where the stream writes: the generation store of a
	// consumer's replica, or a standby's owned copy (a follower). Set
	// before the stream starts.
	sink sink
	// pending are received changes waiting for their TxnEnd; the stream
	// goroutine's alone.
	pending []transport.Change
	// res holds the rows in memory (resident.go); nil for a DiskOnly
	// replica and a standby's follower, which read badger. resOn says
	// load makes it. Set before the stream starts.
	res   *resident
	resOn bool
	// builds are the resident hash index builds running (spawned by the
	// stream goroutine or by a reader); stop waits for them, and
	// buildsDone (under buildMu) refuses new ones from then on.
	buildMu    sync.Mutex
	builds     sync.WaitGroup
	buildsDone bool

	// sendMu serializes sends on the stream (acks, pulls, mode switches).
	sendMu sync.Mutex

	// cbMu guards the OnChange callbacks; notify holds it (read) while
	// they run.
	cbMu   sync.RWMutex
	cbs    map[int]func(Event)
	nextCB int
}

// Subscribe starts following table opts.Table of service opts.Service. It
// returns at once: the replica loads its cursor, then resumes or takes a
// full transfer in the background. Ready tells when it holds a full copy.
//
// ctx bounds the call, not the replica: Subscribe returns ctx's error (and
// subscribes nothing) when ctx is done before it starts or before the
// replica's stream would start, and the replica follows its owner until
// Close.
func (c *Component) Subscribe(ctx context.Context, opts SubscribeOptions) (*Replica, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("subscribe %s/%s: %w", opts.Service, opts.Table, err)
	}
	if err := validName("SubscribeOptions.Service", opts.Service); err != nil {
		return nil, err
	}
	if err := validName("SubscribeOptions.Table", opts.Table); err != nil {
		return nil, err
	}
	if opts.Addr == "" && len(c.cfg.Brokers) == 0 {
		return nil, fmt.Errorf("%w: SubscribeOptions.Addr is empty and no broker is configured", ErrInvalid)
	}
	key := opts.Service + "/" + opts.Table
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	if _, ok := c.replicas[key]; ok {
		return nil, fmt.Errorf("subscribe %s: %w", key, ErrExists)
	}
	if opts.Modes != nil {
		if err := opts.Modes.Validate(); err != nil {
			return nil, fmt.Errorf("%w: SubscribeOptions.Modes: %v", ErrInvalid, err)
		}
	}
	if opts.DiskOnly {
		if err := c.fullDBLocked(); err != nil { // its rows live in badger
			return nil, fmt.Errorf("subscribe %s: %w", key, err)
		}
	}
	r := c.newReplica(opts, c.log.With("replica", key), nil)
	if opts.Modes == nil {
		// The mode file's entry is the subscription option, re-read on
		// ReloadModes; an explicit option is the program's and stays.
		r.modes.sub = fileModes(c.cfg.Modes, opts.Service, opts.Table)
	}
	if c.topo != nil {
		r.modes.override, _ = r.parseOverride(c.topo.Overrides[key]) // invalid: logged, none
	}
	r.resolveModesLocked(time.Now(), "subscribed")
	if m, ok := r.sink.(*memStore); ok {
		m.saved = c.memRows[key] // what the table's last Replica left
		delete(c.memRows, key)
	}
	if opts.Addr != "" {
		// Connect to the owner while the replica loads its rows (a
		// durable one's rows file and WAL): the stream then opens on a
		// made connection instead of waiting for the dial and the HTTP/2
		// handshake. A failure is the stream's to report.
		if cc, err := c.connLocked(ownerPeer(opts.Addr, opts.Service)); err == nil {
			cc.Connect()
		}
	}
	if err := r.load(); err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", key, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", key, err)
	}
	r.ctx, r.cancel = context.WithCancel(c.ctx)
	c.replicas[key] = r
	c.wg.Add(1)
	if h := c.hooks.subscribed; h != nil {
		h(r)
	}
	go r.loop()
	return r, nil
}

// newReplica builds a replica (or, with standby set, a standby's
// follower) that is not started yet.
func (c *Component) newReplica(opts SubscribeOptions, log *slog.Logger, standby *OwnedTable) *Replica {
	r := &Replica{
		c:        c,
		opts:     opts,
		base:     replicaBase(opts.Service, opts.Table),
		log:      log,
		done:     make(chan struct{}),
		seqCh:    make(chan struct{}),
		ready:    make(chan struct{}),
		kick:     make(chan struct{}, 1),
		modeKick: make(chan struct{}, 1),
		pullKick: make(chan struct{}, 1),
		cbs:      map[int]func(Event){},
		// The staleness base until the replica first catches up.
		subscribed: time.Now(),
	}
	r.sink = &genStore{c: c, base: r.base, table: opts.Table, log: log}
	if standby != nil {
		r.sink = &ownedCopy{t: standby, log: log}
	} else {
		r.setupResident()
	}
	r.accept = r.sink.standby() // a standby always takes its primary's history
	r.modes.sub = opts.Modes
	if r.sink.standby() {
		r.modes.sub = &modes.TableConfig{Mode: modes.Push} // standbys stay current
	}
	r.modes.readMeter = modes.NewRateMeter(rateWindow)
	r.modes.pullCh = make(chan struct{})
	r.resolveModesLocked(time.Now(), "subscribed")
	return r
}

// setupResident makes r a resident replica unless it is DiskOnly; in a
// component without a data dir its rows are then nowhere else (memStore).
func (r *Replica) setupResident() {
	if r.opts.DiskOnly {
		return
	}
	r.resOn = true
	if r.c.cfg.DataDir == "" {
		r.sink = &memStore{}
	} else if g, ok := r.sink.(*genStore); ok {
		g.bulk = true // its transfers write a rows file (bulkgen.go)
	}
}

// load reads the cursor and queues the leftovers of an unfinished transfer
// for deletion; a resident replica then loads its rows into memory.
func (r *Replica) load() error {
	cur, err := r.sink.load()
	if err != nil {
		return err
	}
	if r.resOn {
		var rows *resTable
		var n int64
		switch s := r.sink.(type) {
		case *memStore:
			rows, n = newResRows(), 0
			if s.saved != nil {
				rows, n = s.saved.rows, s.saved.bytes
				s.saved = nil
			}
		default:
			if rows, n, err = r.c.loadResident(r.base, cur); err != nil {
				return err
			}
		}
		r.res = newResident(cur, rows, n, r.spawnIndexBuild, r.stopping, r.reads.Load)
		if g, ok := r.sink.(*genStore); ok {
			g.wal.res = r.res // its checkpoints read the published views
			g.wal.behind = r.behind
		}
	}
	r.cur = cur
	if r.cur.LogID != "" {
		close(r.ready)
	}
	return nil
}

// spawnIndexBuild runs a resident hash index build (resident.go) in the
// background, unless the replica is stopping (false); stop waits for it.
func (r *Replica) spawnIndexBuild(f func()) bool {
	r.buildMu.Lock()
	defer r.buildMu.Unlock()
	if r.buildsDone {
		return false
	}
	r.builds.Add(1)
	go func() {
		defer r.builds.Done()
		f()
	}()
	return true
}

// stopping reports whether the replica is stopping or stopped.
func (r *Replica) stopping() bool {
	select {
	case <-r.done:
		return true
	default:
		return r.c.ctx.Err() != nil
	}
}

// Ready is closed once the replica holds a complete copy of the table (at
// once for a replica that had one before a restart).
func (r *Replica) Ready() <-chan struct{} { return r.ready }

// Table is the replicated table's name.
func (r *Replica) Table() string { return r.opts.Table }

// Service is the owner service's name.
func (r *Replica) Service() string { return r.opts.Service }

// readTxn returns a read transaction and the row prefix of the generation
// it must read. Taking both under the lock makes them agree: a transfer's
// switch commits and publishes the new cursor under the write lock, so the
// generation read is never one already handed to the dropper. It is for
// point reads: the cursor it returns may be older than the rows the
// transaction sees (apply publishes the cursor after its commit); readers
// that report a seq use snapshotTxn.
func (r *Replica) readTxn() (*badger.Txn, []byte, cursor) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	p := r.genPfx.Load()
	if p == nil || p.gen != r.cur.Gen {
		p = &genPfx{gen: r.cur.Gen, prefix: genPrefix(r.base, r.cur.Gen)}
		r.genPfx.Store(p)
	}
	return r.c.db.NewTransaction(false), p.prefix, r.cur
}

// genPfx caches the row prefix of one generation (point reads are hot).
type genPfx struct {
	gen    uint64
	prefix []byte
}

// snapshotTxn returns a read transaction with the cursor stored in it and
// the row prefix of that cursor's generation. The cursor is written in the
// same transaction as the rows it covers, so the rows read through txn are
// exactly those of the returned cursor's seq.
func (r *Replica) snapshotTxn() (*badger.Txn, []byte, cursor, error) {
	txn := r.c.db.NewTransaction(false)
	cur, err := readCursor(txn, r.base) // none: no copy yet, generation 0 is empty
	if err != nil {
		txn.Discard()
		return nil, nil, cur, err
	}
	return txn, genPrefix(r.base, cur.Gen), cur, nil
}

// diskSnapshot is snapshotTxn as a view: with the rows file of a
// disk-only replica's bulk generation (diskbulk.go).
func (r *Replica) diskSnapshot() (diskView, cursor, error) {
	if g, ok := r.sink.(*genStore); ok {
		return g.snapshotView()
	}
	txn, prefix, cur, err := r.snapshotTxn()
	if err != nil {
		return diskView{}, cur, err
	}
	return diskView{txn: txn, prefix: prefix}, cur, nil
}

// Get returns the replica's value of key; found is false when it has none.
// It reads only local storage. The value is the caller's (a copy); see
// GetShared for a read that allocates nothing.
func (r *Replica) Get(key []byte) (value []byte, found bool, err error) {
	if r.res != nil {
		v, ok, err := r.GetShared(key)
		if !ok || err != nil {
			return nil, ok, err
		}
		return bytes.Clone(v), true, nil
	}
	return r.getDisk(key)
}

// GetShared is Get without the copy: the value returned is the replica's
// own, shared with every reader, so the caller may read it and keep it
// (it stays valid and unchanged: a later change replaces the row, it never
// modifies the value) but must never modify it. A resident replica reads
// its published view: no lock, no allocation. A DiskOnly replica returns a
// copy, as Get does.
func (r *Replica) GetShared(key []byte) (value []byte, found bool, err error) {
	if r.res == nil {
		return r.getDisk(key)
	}
	if r.c.ctx.Err() != nil {
		return nil, false, ErrClosed
	}
	r.noteRead()
	view := r.res.view.Load()
	if view.base == nil && r.reads.Load()%idxMinReads == 0 {
		r.res.wantIndex() // point reads come: an index may pay
	}
	v, ok := view.get(key)
	return v, ok, nil
}

// getDisk is Get of a replica that is not resident: a badger read.
func (r *Replica) getDisk(key []byte) (value []byte, found bool, err error) {
	if r.c.ctx.Err() != nil {
		return nil, false, ErrClosed
	}
	defer r.c.reads.leave()
	if err := r.c.reads.enter(); err != nil {
		return nil, false, err
	}
	r.noteRead()
	if g, ok := r.sink.(*genStore); ok {
		v, ok, err := g.fileView()
		if err != nil {
			return nil, false, fmt.Errorf("get %s: %w", r.opts.Table, err)
		}
		if ok { // a bulk generation (diskbulk.go)
			defer v.release()
			val, found, err := v.get(key)
			if err != nil {
				return nil, false, fmt.Errorf("get %s: %w", r.opts.Table, err)
			}
			return val, found, nil
		}
	}
	txn, prefix, _ := r.readTxn()
	defer txn.Discard()
	item, err := txn.Get(concat(prefix, key))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("get %s: %w", r.opts.Table, err)
	}
	v, err := item.ValueCopy(nil)
	if err != nil {
		return nil, false, fmt.Errorf("get %s: %w", r.opts.Table, err)
	}
	return v, true, nil
}

// Scan calls fn for each row whose key starts with prefix, in key order, all
// at one seq (returned). fn must not retain key or value; false stops.
func (r *Replica) Scan(prefix []byte, fn func(key, value []byte) bool) (uint64, error) {
	if r.c.ctx.Err() != nil {
		return 0, ErrClosed
	}
	if r.res != nil {
		r.noteRead()
		v := r.res.view.Load()
		v.scan(prefix, nil, nil, fn)
		return v.cur.Seq, nil
	}
	defer r.c.reads.leave()
	if err := r.c.reads.enter(); err != nil {
		return 0, err
	}
	r.noteRead()
	v, cur, err := r.diskSnapshot()
	if err != nil {
		return 0, fmt.Errorf("scan %s: %w", r.opts.Table, err)
	}
	defer v.release()
	err = v.scan(prefix, nil, nil, func(k, v []byte) (bool, error) { return fn(k, v), nil })
	if err != nil {
		return 0, fmt.Errorf("scan %s: %w", r.opts.Table, err)
	}
	return cur.Seq, nil
}

// Digest hashes the replica's rows with start <= key < end (nil end: no
// bound) exactly as the owner does (OwnedTable.Digest), at the replica's seq.
func (r *Replica) Digest(start, end []byte) (transport.DigestResponse, error) {
	if r.c.ctx.Err() != nil {
		return transport.DigestResponse{}, ErrClosed
	}
	if r.res != nil {
		v := r.res.view.Load()
		d := newDigester()
		v.scan(nil, start, end, func(k, val []byte) bool { d.add(k, val); return true })
		return d.result(v.cur.LogID, v.cur.Seq), nil
	}
	defer r.c.reads.leave()
	if err := r.c.reads.enter(); err != nil {
		return transport.DigestResponse{}, err
	}
	v, cur, err := r.diskSnapshot()
	if err != nil {
		return transport.DigestResponse{}, fmt.Errorf("digest %s: %w", r.opts.Table, err)
	}
	defer v.release()
	d := newDigester()
	err = v.scan(nil, start, end, func(k, v []byte) (bool, error) { d.add(k, v); return true, nil })
	if err != nil {
		return transport.DigestResponse{}, fmt.Errorf("digest %s: %w", r.opts.Table, err)
	}
	return d.result(cur.LogID, cur.Seq), nil
}

// Seq is the seq of the newest change the replica holds.
func (r *Replica) Seq() uint64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.cur.Seq
}

// WaitFor blocks until the replica holds seq (read-your-writes across
// services: the owner returns the seq of a write, the reader waits for it).
func (r *Replica) WaitFor(ctx context.Context, seq uint64) error {
	for {
		r.mu.RLock()
		have, ch := r.cur.Seq, r.seqCh
		r.mu.RUnlock()
		if have >= seq {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("wait for seq %d of %s (have %d): %w", seq, r.opts.Table, have, ctx.Err())
		case <-r.done:
			return ErrClosed
		}
	}
}

// AcceptNewHistory tells the replica to accept the owner's current history
// even though it is shorter than the replica's (the owner lost its data and
// an operator decided to go on with what it has now). The next connection
// replaces the replica with a full transfer.
func (r *Replica) AcceptNewHistory() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.accept = true
	r.log.Warn("operator accepted the owner's new history")
}

// OnChange registers fn to be called after every applied batch, in commit
// order, from one goroutine, after the batch is durable. fn must not block:
// the replica does not apply the next batch until it returns. The returned
// func unregisters fn.
func (r *Replica) OnChange(fn func(Event)) (cancel func()) {
	r.cbMu.Lock()
	id := r.nextCB
	r.nextCB++
	r.cbs[id] = fn
	r.cbMu.Unlock()
	return func() {
		r.cbMu.Lock()
		delete(r.cbs, id)
		r.cbMu.Unlock()
	}
}

// Watch is the channel form of OnChange: events arrive on the returned
// channel, which is closed when ctx ends or the replica stops. A full
// channel holds back the replica (backpressure), so keep reading.
func (r *Replica) Watch(ctx context.Context, buf int) <-chan Event {
	ch := make(chan Event, buf)
	var once sync.Once
	var mu sync.Mutex
	closed := false
	cancel := r.OnChange(func(e Event) {
		mu.Lock()
		defer mu.Unlock()
		if closed {
			return
		}
		select {
		case ch <- e:
		case <-ctx.Done():
		case <-r.done:
		}
	})
	go func() {
		select {
		case <-ctx.Done():
		case <-r.done:
		}
		cancel()
		once.Do(func() {
			mu.Lock()
			closed = true
			close(ch)
			mu.Unlock()
		})
	}()
	return ch
}

func (r *Replica) notify(e Event) {
	r.cbMu.RLock()
	defer r.cbMu.RUnlock()
	for _, fn := range r.cbs {
		fn(e)
	}
}

// Close stops following the owner; the replica's data stays on disk and a
// later Subscribe resumes from it.
func (r *Replica) Close() error {
	r.stop()
	r.c.mu.Lock()
	if key := r.opts.Service + "/" + r.opts.Table; r.c.replicas[key] == r {
		delete(r.c.replicas, key)
		if _, mem := r.sink.(*memStore); mem && r.res != nil && !r.c.closed {
			// The stream has stopped: the working tree is the last
			// published state, and the next Subscribe takes it over.
			if r.c.memRows == nil {
				r.c.memRows = map[string]*resView{}
			}
			v := r.res.view.Load()
			r.c.memRows[key] = &resView{cur: v.cur, rows: r.res.w, bytes: r.res.bytes}
		}
	}
	r.c.mu.Unlock()
	return nil
}

func (r *Replica) stop() {
	r.cancel()
	<-r.done
	r.buildMu.Lock()
	r.buildsDone = true
	r.buildMu.Unlock()
	r.builds.Wait() // they see stopping and give up
	if g, ok := r.sink.(*genStore); ok {
		g.closeWAL() // the stream and the checkpoints have ended
		g.closeFile()
	}
}
