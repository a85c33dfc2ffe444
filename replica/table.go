package replica

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/dgraph-io/badger/v4"
	"github.com/replmesh/replmesh/modes"
	"github.com/replmesh/replmesh/transport"
	"github.com/vmihailenco/msgpack/v5"
)

// Change is one CRUD notification of a table (see transport.Change).
type Change = transport.Change

// Op is the operation of a change.
type Op = transport.Op

// Change operations.
const (
	OpPut    = transport.OpPut
	OpDelete = transport.OpDelete
)

// Write is one change submitted by the owner: a put (Value non-nil) or a
// delete (Delete true).
type Write struct {
	Key    []byte
	Value  []byte
	Delete bool
}

// ownerMeta is persisted with every commit that touches the table.
type ownerMeta struct {
	LogID string `msgpack:"log"`
	Epoch uint64 `msgpack:"ep"`
	Head  uint64 `msgpack:"head"`  // seq of the newest change
	First uint64 `msgpack:"first"` // oldest seq still in the log (Head+1 when empty)
	// Epochs is the epoch history: where each epoch began.
	Epochs transport.EpochHistory `msgpack:"eps"`
	// Restoring: a restore is writing the table (restore.go). Found at
	// Own, the restore was interrupted: the table is emptied (a new, empty
	// history), never served half-filled.
	Restoring bool `msgpack:"rst,omitempty"`
	// NeedEpoch: the table was restored and takes writes only at an epoch
	// above Epoch (the highest its restored history has seen); it reports
	// Epoch+1 to the broker, which grants above what instances report.
	NeedEpoch bool `msgpack:"nep,omitempty"`
	// Format is the storage format of the table's rows (ownFormat; 0: the
	// format before it, which Own migrates).
	Format int `msgpack:"fmt,omitempty"`
	// Migrated is the last row key a migration from format 0 converted
	// (migrateLegacy); nil when none is under way.
	Migrated []byte `msgpack:"mig,omitempty"`
	// Rows is the seq through which the rows in badger are the table's
	// (owner format 4): the changes above it, to Head, are in the log
	// only, and in the committer's overlay (ownrows.go). Whoever writes
	// rows with their meta (a standby, a transfer, a restore) sets it to
	// Head.
	Rows uint64 `msgpack:"rows,omitempty"`
}

// reportedEpoch is the epoch the table reports to the broker: its own, or
// one above it while it waits for a new epoch after a restore.
func (m ownerMeta) reportedEpoch() uint64 {
	if m.NeedEpoch {
		return m.Epoch + 1
	}
	return m.Epoch
}

// OwnedTable is a table this component owns and writes. Its methods are safe
// for concurrent use.
type OwnedTable struct {
	c            *Component
	name         string
	metaKey      []byte
	rowPrefix    []byte
	logPrefix    []byte
	keepPrefix   []byte
	tail         *tail
	seg          *segLog         // the log groups' bytes (data dir only; ownseg.go)
	allow        map[string]bool // services allowed to subscribe; nil: all
	writable     atomic.Bool     // this instance is the table's primary
	sync         *syncState      // standbys' acknowledgements (MinSyncStandbys)
	flow         flowGate        // push consumers' acknowledgements (Config.Flow)
	defaultMode  modes.Mode      // the owner's default mode, sent to consumers in Start (Unset: none; guarded by mu)
	explicitMode bool            // TableOptions.Mode was given (it wins over the mode file)
	retention    Retention       // this table's log retention (guarded by mu)

	// restoring: a restore is writing the table (restore.go): writes,
	// reads and subscriptions are refused with ErrRestoring. It is set
	// with restoreMu held for writing; Submit holds it for reading from
	// its check until the write is queued, so once a restore holds it no
	// write that passed the check is still on its way to the committer.
	restoring atomic.Bool
	restoreMu sync.RWMutex
	// lastRestore is the newest report of the running or last restore.
	lastRestore atomic.Pointer[RestoreProgress]

	// markOwn: the sync watermark was earned by this table's contents as
	// they are (it was primary since it opened, or restored from what
	// consumers held), so a promotion keeps it. False at open and once a
	// follower writes a standby's copy into the table: a promotion then
	// starts the watermark at 0 (see promoteNow).
	markOwn atomic.Bool

	// trimMu is held by trim and by whoever empties the table (clearTo).
	trimMu sync.Mutex

	mu      sync.Mutex
	meta    ownerMeta     // durable state as of the last commit
	next    uint64        // committer only: next seq to assign
	logSize int64         // approximate bytes in the log
	headCh  chan struct{} // closed and replaced on every commit

	// ov holds the rows of the committed changes above meta.Rows, not yet
	// written to badger (ownrows.go). The committer owns it (Own fills it
	// before the table is registered).
	ov      map[string]ovRow
	ovBytes int // the overlay's keys' bytes
	// ovChanges is how many changes the overlay took since its last
	// flush; direct, above 0, how many changes more the commits write
	// their rows themselves (the overlay did not pay: ownrows.go).
	ovChanges int
	direct    int
	// rowsBuilt is the Rows of the newest meta built (a commit's, in
	// flight or done, or a flush's; guarded by mu): a commit's meta never
	// carries less than one before it, which a trim may have relied on.
	rowsBuilt uint64
}

// TableOptions configure an owned table.
type TableOptions struct {
	// AllowServices lists the services that may subscribe to the table and
	// read it live (Subscribe, Get, Digest, Keys), besides the owner's own
	// service and those Config.AccessPolicy allows. With Config.TLS the
	// check is on the caller's certificate identity and a table is read by
	// nobody else (default deny); without, it is on the service name the
	// caller presents, and an empty list with no access policy allows
	// every service.
	AllowServices []string
	// Mode is the table's default replication mode (the lowest level of the
	// precedence: subscription options and broker overrides win). Unset:
	// push.
	Mode modes.Mode
}

// Own declares a table owned by this component, loading its state from the
// database or starting a new history (a new random log id) when it has none.
func (c *Component) Own(name string, opts ...TableOptions) (*OwnedTable, error) {
	if err := validName("table", name); err != nil {
		return nil, err
	}
	if len(c.cfg.Brokers) > 0 && !c.cfg.Owner {
		return nil, fmt.Errorf("%w: own %s: with Brokers, an owner instance needs Config.Owner (the broker grants the primary lease)", ErrInvalid, name)
	}
	t, fresh, err := c.own(name, opts)
	if err != nil {
		return nil, err
	}
	if len(c.cfg.Brokers) == 0 {
		t.writable.Store(true)
		return t, nil
	}
	c.applyCurrentRole(t)
	if fresh && c.cfg.AutoRestore && c.emptyAtOpen {
		c.startAutoRestore(t)
	}
	return t, nil
}

// own opens the table's state; fresh reports a new, empty history made
// because the database had none.
func (c *Component) own(name string, opts []TableOptions) (t *OwnedTable, fresh bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, false, ErrClosed
	}
	if _, ok := c.owned[name]; ok {
		return nil, false, fmt.Errorf("own %s: %w", name, ErrExists)
	}
	if err := c.fullDBLocked(); err != nil {
		return nil, false, fmt.Errorf("own %s: %w", name, err)
	}
	t = &OwnedTable{
		c:          c,
		name:       name,
		metaKey:    ownMetaKey(name),
		rowPrefix:  ownRowPrefix(name),
		logPrefix:  ownLogPrefix(name),
		keepPrefix: ownKeepPrefix(name),
		tail:       newTail(c.cfg.TailChanges, c.cfg.TailBytes),
		sync:       newSyncState(),
		headCh:     make(chan struct{}),
		ov:         map[string]ovRow{},
	}
	for _, o := range opts {
		if o.Mode != modes.Unset {
			t.defaultMode, t.explicitMode = o.Mode, true
		}
		for _, svc := range o.AllowServices {
			if t.allow == nil {
				t.allow = map[string]bool{}
			}
			t.allow[svc] = true
		}
	}
	err = c.db.Update(func(txn *badger.Txn) error {
		item, err := txn.Get(t.metaKey)
		if errors.Is(err, badger.ErrKeyNotFound) {
			fresh = true
			t.meta = ownerMeta{LogID: newLogID(), Epoch: 1, Head: 0, First: 1,
				Epochs: []transport.EpochStart{{Epoch: 1, Seq: 1}}, Format: ownFormat}
			return t.setMeta(txn, t.meta)
		}
		if err != nil {
			return err
		}
		if err := item.Value(func(v []byte) error { return msgpack.Unmarshal(v, &t.meta) }); err != nil {
			return err
		}
		if t.meta.Format > ownFormat {
			return fmt.Errorf("%w: the table is stored in owner format %d, newer than this build's %d: open the data dir with the build that wrote it", ErrInvalid, t.meta.Format, ownFormat)
		}
		if len(c.cfg.Brokers) > 0 {
			return nil // the broker assigns the epoch with the primary lease
		}
		// Without a broker every start of the owner is a new epoch: a
		// consumer that holds changes this owner lost (an async-durability
		// machine crash) is then detected by the epoch history instead of
		// silently resuming over different changes at the same seqs.
		t.meta.Epoch++
		t.meta.NeedEpoch = false // a restored table's new epoch is this one
		t.meta.Epochs = t.meta.Epochs.Append(t.meta.Epoch, t.meta.Head+1)
		return t.setMeta(txn, t.meta)
	})
	if err != nil {
		return nil, false, fmt.Errorf("own %s: load meta: %w", name, err)
	}
	// The new epoch must be durable before any change of it is: an epoch
	// number lost in a crash and reused would make two histories look alike.
	if err := c.db.Sync(); err != nil {
		return nil, false, fmt.Errorf("own %s: sync meta: %w", name, err)
	}
	if t.meta.Format < ownFormat && !t.meta.Restoring {
		c.log.Info("migrating the table to the current owner format", "table", name, "from", t.meta.Format, "to", ownFormat)
		if t.meta, err = t.migrate(t.meta); err != nil {
			return nil, false, fmt.Errorf("own %s: %w", name, err)
		}
	}
	if t.meta.Restoring {
		// A restore was interrupted (the process died during it): what it
		// wrote is partial. The table starts empty, a new history, and can
		// be restored again.
		c.log.Warn("table holds an interrupted restore: emptied", "table", name)
		if err := t.resetEmpty(); err != nil {
			return nil, false, fmt.Errorf("own %s: clear an interrupted restore: %w", name, err)
		}
	}
	if c.cfg.DataDir != "" {
		if t.seg, err = t.openSegments(); err != nil {
			return nil, false, fmt.Errorf("own %s: %w", name, err)
		}
	}
	if t.meta.Rows < t.meta.Head {
		// The process ended with rows the committer had not written.
		if err := t.replayRows(); err != nil {
			return nil, false, fmt.Errorf("own %s: %w", name, err)
		}
	}
	t.next = t.meta.Head + 1
	t.rowsBuilt = t.meta.Rows
	t.meta.First, t.logSize = t.measureLog(t.meta.Head)
	t.applyFileModes(c.cfg.Modes)
	t.tail.reset(t.meta.Head + 1)
	c.owned[name] = t
	if fresh && c.cfg.AutoRestore && c.emptyAtOpen {
		t.restoring.Store(true) // writes wait for the automatic restore (startAutoRestore)
	}
	c.log.Info("table owned", "table", name, "log_id", t.meta.LogID, "head", t.meta.Head, "first", t.meta.First)
	return t, fresh, nil
}

// storedEpoch returns the highest epoch any owned table in the database
// carries (its meta's Epoch), whether or not it has been opened with Own
// yet, and how many owned tables the database holds: what an owner instance reports to the broker from its first frame,
// so that a broker that lost its registry grants above it. It reads one
// meta per table and skips the tables' rows and logs.
func storedEpoch(db *badger.DB) (epoch uint64, tables int, err error) {
	err = db.View(func(txn *badger.Txn) error {
		o := badger.DefaultIteratorOptions
		o.PrefetchValues = false
		o.Prefix = []byte("o/")
		it := txn.NewIterator(o)
		defer it.Close()
		for it.Rewind(); it.Valid(); {
			k := it.Item().Key()
			i := bytes.IndexByte(k[2:], '/')
			if i < 0 {
				it.Next() // not a table's key
				continue
			}
			table := string(k[2 : 2+i])
			item, err := txn.Get(ownMetaKey(table))
			if err == nil {
				var m ownerMeta
				if err := item.Value(func(v []byte) error { return msgpack.Unmarshal(v, &m) }); err != nil {
					return fmt.Errorf("meta of table %s: %w", table, err)
				}
				epoch = max(epoch, m.reportedEpoch())
				tables++
			} else if !errors.Is(err, badger.ErrKeyNotFound) {
				return err
			}
			// Past every key of the table: what follows "o/<table>/" is
			// never 0xff (g, k, l, m or r).
			it.Seek([]byte("o/" + table + "/\xff"))
		}
		return nil
	})
	return epoch, tables, err
}

func newLogID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Name is the table's name.
func (t *OwnedTable) Name() string { return t.name }

// Head returns the seq of the table's newest committed change.
func (t *OwnedTable) Head() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.meta.Head
}

// LogID returns the id of the table's history.
func (t *OwnedTable) LogID() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.meta.LogID
}

func (t *OwnedTable) state() (ownerMeta, chan struct{}) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.meta, t.headCh
}

// Put writes key=value and returns the seq of the commit.
func (t *OwnedTable) Put(ctx context.Context, key, value []byte) (uint64, error) {
	if value == nil {
		value = []byte{}
	}
	return t.Apply(ctx, Write{Key: key, Value: value})
}

// Delete removes key and returns the seq of the commit. Deleting a missing
// key is still a change (consumers see it; it is idempotent).
func (t *OwnedTable) Delete(ctx context.Context, key []byte) (uint64, error) {
	return t.Apply(ctx, Write{Key: key, Delete: true})
}

// Apply commits several writes atomically: they get consecutive seqs, and a
// consumer applies all of them or none. It returns the seq of the last one.
func (t *OwnedTable) Apply(ctx context.Context, ws ...Write) (uint64, error) {
	p, err := t.Submit(ctx, ws...)
	if err != nil {
		return 0, err
	}
	return p.Wait(ctx)
}

// Pending is a submitted, not yet acknowledged write.
type Pending struct {
	closed <-chan struct{} // closed once the committer has stopped (Component.commitDone)
	done   chan struct{}
	seq    uint64
	err    error
	table  *OwnedTable // for the wait on synchronous standbys
}

// Done is closed when the write is committed or has failed.
func (p *Pending) Done() <-chan struct{} { return p.done }

// Wait blocks until the write is committed (returning its last seq) or has
// failed. A ctx that ends first leaves the write's fate unknown.
func (p *Pending) Wait(ctx context.Context) (uint64, error) {
	select {
	case <-p.done:
		if p.err == nil && p.table != nil {
			if err := p.table.syncWait(ctx, p.seq); err != nil {
				return p.seq, err
			}
		}
		return p.seq, p.err
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-p.closed:
		// The committer has stopped, after finishing every group it
		// started: a write not done by then was never committed. (Waiting
		// for the component's done channel instead would report ErrClosed
		// for a group still being committed.)
		select {
		case <-p.done:
			return p.seq, p.err
		default:
			return 0, ErrClosed
		}
	}
}

type pendingWrite struct {
	Pending
	table   *OwnedTable
	changes []transport.Change
	size    int
	// barrier, when set, makes this no write but a function the committer
	// runs once every group before it is committed and finished, before any
	// group after it is built (see Component.inCommitter).
	barrier func()
	// one holds the change of a single write (changes is one[:]): a
	// write of one change is one allocation, not two.
	one [1]transport.Change
}

// Submit queues writes for the next group commit and returns without
// waiting for it; Wait on the result for the seq. Submit blocks only while
// the commit queue is full or flow control holds writes (Config.Flow).
func (t *OwnedTable) Submit(ctx context.Context, ws ...Write) (*Pending, error) {
	if len(ws) == 0 {
		return nil, fmt.Errorf("%w: apply %s: no writes", ErrInvalid, t.name)
	}
	pw := &pendingWrite{Pending: Pending{closed: t.c.commitDone, done: make(chan struct{})}, table: t}
	if len(ws) == 1 {
		pw.changes = pw.one[:]
	} else {
		pw.changes = make([]transport.Change, len(ws))
	}
	for i, w := range ws {
		if len(w.Key) == 0 {
			return nil, fmt.Errorf("%w: %s: empty key", ErrInvalid, t.name)
		}
		if len(w.Key) > transport.MaxKeySize {
			return nil, fmt.Errorf("%w: %s: key of %d bytes (max %d)", ErrTooLarge, t.name, len(w.Key), transport.MaxKeySize)
		}
		if limit, why := t.c.valueLimit(); len(w.Value) > limit {
			return nil, fmt.Errorf("%w: %s: value of %d bytes (max %d%s)", ErrTooLarge, t.name, len(w.Value), limit, why)
		}
		var ch transport.Change
		if w.Delete {
			ch = transport.Change{Op: transport.OpDelete, Key: bytes.Clone(w.Key)}
		} else {
			// The key and value copied into one allocation, each
			// slice capped at its end.
			kv := make([]byte, len(w.Key)+len(w.Value))
			k := copy(kv, w.Key)
			copy(kv[k:], w.Value)
			ch = transport.Change{Op: transport.OpPut, Key: kv[:k:k], Value: kv[k:]}
		}
		pw.changes[i] = ch
		pw.size += ch.Size()
	}
	// Flow control: wait (holding no lock) while a consumer that keeps up
	// is a window behind.
	if err := t.awaitFlow(ctx); err != nil {
		return nil, err
	}
	t.restoreMu.RLock()
	defer t.restoreMu.RUnlock()
	if err := t.checkWritable(); err != nil {
		return nil, err
	}
	if err := t.checkStandbys(); err != nil {
		return nil, err
	}
	pw.Pending.table = t
	if pw.size > t.c.cfg.MaxApplyBytes {
		return nil, fmt.Errorf("%w: %s: apply of %d bytes (max %d)", ErrTooLarge, t.name, pw.size, t.c.cfg.MaxApplyBytes)
	}
	// One Apply is committed in one group, which badger bounds in entries
	// as well as bytes (dbsize.go sizes the memtable for MaxGroupChanges).
	if len(pw.changes) > t.c.cfg.MaxGroupChanges {
		return nil, fmt.Errorf("%w: %s: apply of %d changes (max %d)", ErrTooLarge, t.name, len(pw.changes), t.c.cfg.MaxGroupChanges)
	}
	select {
	case t.c.writes <- pw:
		return &pw.Pending, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.c.done():
		return nil, ErrClosed
	}
}

// ownerMode is the table's default mode, sent in Start (Unset: none, so
// push unless the consumer asks otherwise).
func (t *OwnedTable) ownerMode() modes.Mode {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.defaultMode
}
