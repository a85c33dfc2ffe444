package replica

import (
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/replmesh/replmesh/modes"
	"github.com/replmesh/replmesh/transport"
)

// Durability says when a write is acknowledged.
type Durability int

const (
	// Async: a write returns once it is committed to badger's log and
	// memtable; the OS flushes it to disk later. A process crash loses
	// nothing, a machine crash may lose the last writes.
	Async Durability = iota
	// Sync: a write returns only after it is fsynced.
	Sync
)

func (d Durability) String() string {
	if d == Sync {
		return "sync"
	}
	return "async"
}

// Config configures a component. Start from DefaultConfig.
type Config struct {
	// Service is the name of the service this instance belongs to.
	Service string
	// Instance is this process's unique id.
	Instance string
	// ListenAddr is where the replication service listens; "127.0.0.1:0"
	// picks a free port (read it back with Component.Addr). Empty: the
	// component serves nothing (a pure consumer).
	ListenAddr string
	// Listener, when set, is where the replication service is served
	// instead of ListenAddr, and Component.Addr reports its address: for
	// tests (an in-memory network) and for embedding in a process that
	// makes its own listeners. The component closes it at Close; a failed
	// Open leaves it to the caller.
	Listener net.Listener
	// DataDir holds the badger database. Empty: in memory (tests, demos).
	DataDir string
	// Durability of owner writes and replica applies.
	Durability Durability
	// Logger receives the component's logs; nil discards them.
	Logger *slog.Logger
	// Brokers are the gRPC addresses of the broker cluster (any subset).
	// Empty: no broker; owners are always primary and replicas need
	// SubscribeOptions.Addr.
	Brokers []string
	// BrokerToken is presented to the brokers when they require one.
	BrokerToken string
	// Owner marks an instance of an owner service: with Brokers, it writes
	// its tables only while the broker grants it the primary lease, and
	// keeps them as a standby (a copy of the primary's, same log id and
	// seqs) otherwise, ready to take over. Without Brokers an owner is
	// always primary.
	Owner bool
	// AutoRestore: an owner instance whose data dir is empty at Open
	// restores every table it then owns (Own) from the most advanced
	// replica the broker lists (Component.Restore with no source named),
	// once it is the primary and if its service has no standby. From Own
	// until the restore completes, or AutoRestoreWait passes with no
	// replica to restore from (the table then starts empty), writes to the
	// table fail with ErrRestoring. Needs Brokers and Owner. Off by
	// default, because of its risks: no operator confirms what is lost
	// (every write the lost owner acknowledged and no replica received;
	// an asynchronous consumer may lag far behind); an instance started on
	// the wrong (empty) directory takes its consumers' copies instead of
	// failing loudly; and it needs the broker's Status, which brokers that
	// check identities give only to admins and operators (with identities
	// the search fails and the table starts empty after AutoRestoreWait:
	// restore by hand with replctl).
	AutoRestore bool
	// AutoRestoreWait bounds the search for a replica to restore from
	// (AutoRestore).
	AutoRestoreWait time.Duration
	// MinSyncStandbys: a write returns only once this many standbys hold
	// it durably (0: do not wait). Needs Brokers and Owner.
	MinSyncStandbys int
	// SyncTimeout bounds the wait for MinSyncStandbys; a write that times
	// out is committed on the primary but reported as ErrNotReplicated.
	SyncTimeout time.Duration
	// Modes is the per-table mode configuration (the YAML file of package
	// modes): for a table this component owns, its entry is the owner's
	// default (mode and retention); for a table it subscribes to, its entry
	// is the subscription option when SubscribeOptions.Modes is nil.
	// Entries are keyed "SERVICE/TABLE". Reload with Component.ReloadModes.
	Modes *modes.Config
	// Transport: message size limit and TLS for both serving and dialing.
	// Transport.TLS is a fixed TLS configuration without identities (no
	// caller is authorized by its certificate); Config.TLS is the
	// production mode. Give one or the other.
	Transport transport.Options

	// TLS, when set, runs every link of the component on mTLS with
	// identities, from one source for the server and every dial (its
	// certificates and CA bundle rotate from disk, see transport.TLSSource):
	// the certificate must carry this instance's identity (Service and
	// Instance; Open refuses another), the owners it dials must present an
	// identity of the service they own, the brokers a broker identity, and
	// every caller of the owned tables is authorized by its certificate
	// (see authz.go): default deny.
	TLS *transport.TLSSource
	// AccessPolicy says which services may read which owned tables, in
	// addition to the table's own TableOptions.AllowServices and to this
	// service itself (the same policy file the brokers use; nil: none).
	// Reload with Component.ReloadAccessPolicy.
	AccessPolicy *modes.AccessPolicy
	// Insecure lets the component listen on or dial an address other
	// hosts can reach without TLS (a trusted network only); it is said at
	// WARN on every Open. Without it such a component does not open.
	Insecure bool
	// MaxConcurrentStreams bounds the streams one client connection may
	// have open on the replication server at once (a client past it waits).
	MaxConcurrentStreams uint32
	// MaxCallerSubscriptions bounds the Subscribe streams one caller may
	// have open on this owner at once: one identity with TLS, one claimed
	// service without. A stream past it is refused (ResourceExhausted).
	MaxCallerSubscriptions int

	// MaxGroupChanges and MaxGroupBytes bound one group commit.
	MaxGroupChanges int // also the most changes one Apply may carry (ErrTooLarge)
	MaxGroupBytes   int
	// MaxApplyBytes bounds one Apply (all its keys and values).
	MaxApplyBytes int

	// BatchMaxChanges bounds one push batch; bytes are bounded by the
	// transport's chunk budget.
	BatchMaxChanges int
	// Linger is how long an owner waits for more changes before sending a
	// partial batch (0: send at once; batches still form under load).
	Linger time.Duration
	// Heartbeat is the interval of heartbeats on idle streams.
	Heartbeat time.Duration
	// TailChanges and TailBytes bound the in-memory copy of each table's
	// newest changes, from which caught-up subscribers are fed.
	TailChanges int
	TailBytes   int
	// Flow bounds how far writers run ahead of the push consumers that
	// keep up (see FlowControl; the zero value is the defaults).
	Flow FlowControl

	// Retention trims each owned table's change log.
	Retention Retention
	// TrimInterval is how often the log is trimmed.
	TrimInterval time.Duration

	// PeerTimeout: a replica that hears nothing from its owner for this
	// long (owners heartbeat every Heartbeat) drops the stream and reconnects.
	PeerTimeout time.Duration
	// ReconnectMin and ReconnectMax bound a replica's reconnect backoff.
	// ReconnectMax is also the longest a replica may take to notice that a
	// restarted owner is back (1s by default: a dial a second per
	// subscription while an owner is down is cheap).
	ReconnectMin time.Duration
	ReconnectMax time.Duration

	// MemTableSize is badger's memtable size, which also bounds one badger
	// transaction (15% of it; see Validate). 0 (the default) sizes it for
	// what the component holds (dbsize.go): the largest group commit
	// (MaxGroupBytes, MaxGroupChanges) and consumer apply, at least 32 MiB;
	// and an in-memory component that is not an owner instance (Owner)
	// starts on a 1 MiB one, moving to the full size when it first keeps
	// something in badger (Own, a DiskOnly replica). The memtable's arena
	// is allocated whole and counts as live heap: a small durable
	// component saves about 11 MB of RSS with 20<<20 (the least Validate
	// accepts with the default group bounds), for about 30% fewer rows/s
	// in a bulk write such as a full transfer.
	MemTableSize int64
	// BlockCacheSize is badger's block cache on disk (none in memory).
	BlockCacheSize int64
}

// Retention says how much change log an owner keeps. A consumer whose seq
// is older than the log's first entry gets a full transfer. Zero fields
// are unlimited. It is modes.Retention, the one retention type: a mode
// file's entry overrides Config.Retention field by field.
type Retention = modes.Retention

// Defaults of the limits a hostile peer meets (see Config).
const (
	// DefaultMaxConcurrentStreams is Config.MaxConcurrentStreams' default:
	// a component opens one stream per subscribed table on its connection
	// to an owner, plus its reads.
	DefaultMaxConcurrentStreams = 256
	// DefaultMaxCallerSubscriptions is Config.MaxCallerSubscriptions'
	// default.
	DefaultMaxCallerSubscriptions = 256
)

// DefaultConfig returns a config with production defaults; Service and
// Instance must still be set.
func DefaultConfig() Config {
	return Config{
		ListenAddr:      "127.0.0.1:0",
		MaxGroupChanges: 8192,
		MaxGroupBytes:   1 << 20,
		MaxApplyBytes:   1 << 20,
		BatchMaxChanges: 2048,
		Heartbeat:       time.Second,
		TailChanges:     1 << 16,
		TailBytes:       32 << 20,
		Retention:       modes.DefaultRetention(),
		TrimInterval:    10 * time.Second,
		PeerTimeout:     10 * time.Second,
		SyncTimeout:     5 * time.Second,
		ReconnectMin:    50 * time.Millisecond,
		ReconnectMax:    time.Second,
		AutoRestoreWait: 30 * time.Second,
		BlockCacheSize:  32 << 20,

		MaxConcurrentStreams:   DefaultMaxConcurrentStreams,
		MaxCallerSubscriptions: DefaultMaxCallerSubscriptions,
	}
}

// LocalConfig is DefaultConfig with fast timers, for tests.
func LocalConfig(service, instance string) Config {
	c := DefaultConfig()
	c.Service = service
	c.Instance = instance
	c.Heartbeat = 100 * time.Millisecond
	c.TrimInterval = 200 * time.Millisecond
	c.PeerTimeout = 3 * time.Second
	c.ReconnectMin = 10 * time.Millisecond
	c.ReconnectMax = 200 * time.Millisecond
	return c
}

// validName checks a configured name against transport's one name rule
// (transport.CheckName), as an ErrInvalid that names the field.
func validName(what, s string) error {
	if err := transport.CheckName(what, s); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return nil
}

// Validate reports the first field that is unusable.
func (c *Config) Validate() error {
	if err := validName("Config.Service", c.Service); err != nil {
		return err
	}
	if err := validName("Config.Instance", c.Instance); err != nil {
		return err
	}
	checks := []struct {
		name string
		bad  bool
	}{
		{"Config.Durability", c.Durability != Async && c.Durability != Sync},
		{"Config.MaxGroupChanges", c.MaxGroupChanges <= 0},
		{"Config.MaxGroupBytes", c.MaxGroupBytes <= 0},
		{"Config.MaxApplyBytes", c.MaxApplyBytes <= 0 || c.MaxApplyBytes > c.MaxGroupBytes},
		{"Config.BatchMaxChanges", c.BatchMaxChanges <= 0},
		{"Config.Linger", c.Linger < 0},
		{"Config.Heartbeat", c.Heartbeat <= 0},
		{"Config.TailChanges", c.TailChanges < 0},
		{"Config.TailBytes", c.TailBytes < 0},
		{"Config.TrimInterval", c.TrimInterval <= 0},
		{"Config.PeerTimeout", c.PeerTimeout <= 0},
		{"Config.MinSyncStandbys", c.MinSyncStandbys < 0 || c.MinSyncStandbys > transport.MaxMinSyncStandbys ||
			c.MinSyncStandbys > 0 && (len(c.Brokers) == 0 || !c.Owner)},
		{"Config.SyncTimeout", c.MinSyncStandbys > 0 && c.SyncTimeout <= 0},
		{"Config.AutoRestore", c.AutoRestore && (len(c.Brokers) == 0 || !c.Owner)},
		{"Config.AutoRestoreWait", c.AutoRestore && c.AutoRestoreWait <= 0},
		{"Config.ReconnectMin", c.ReconnectMin <= 0},
		{"Config.ReconnectMax", c.ReconnectMax < c.ReconnectMin},
		{"Config.MemTableSize", c.MemTableSize != 0 && c.MemTableSize < minMemTable},
		{"Config.MaxConcurrentStreams", c.MaxConcurrentStreams == 0},
		{"Config.MaxCallerSubscriptions", c.MaxCallerSubscriptions <= 0},
		{"Config.BlockCacheSize", c.BlockCacheSize < 0},
	}
	for _, ch := range checks {
		if ch.bad {
			return fmt.Errorf("%w: %s is out of range", ErrInvalid, ch.name)
		}
	}
	if err := c.Flow.validate(); err != nil {
		return err
	}
	// Every badger transaction must stay under badger's batch limit (15% of
	// the memtable): a group writes each change twice (row and log entry).
	// A MemTableSize of 0 is sized to hold it (dbsize.go).
	if m := c.memTable(); int64(3*c.MaxGroupBytes) > m*badgerBatchPercent/100 {
		return fmt.Errorf("%w: Config.MaxGroupBytes (%d) is too large for Config.MemTableSize (%d): need 3*MaxGroupBytes <= 15%% of MemTableSize",
			ErrInvalid, c.MaxGroupBytes, m)
	}
	// In memory badger refuses a transaction limit below its value
	// threshold (memValueThreshold).
	if need := memTableFor(memValueThreshold, 0); c.DataDir == "" && c.MemTableSize != 0 && c.MemTableSize < need {
		return fmt.Errorf("%w: Config.MemTableSize (%d) is too small for an in-memory component: need at least %d (or 0)",
			ErrInvalid, c.MemTableSize, need)
	}
	if c.Modes != nil {
		if err := c.Modes.Validate(); err != nil {
			return fmt.Errorf("%w: Config.Modes: %v", ErrInvalid, err)
		}
	}
	if c.TLS != nil && c.Transport.TLS != nil {
		return fmt.Errorf("%w: Config.TLS and Config.Transport.TLS: give one (Config.TLS: mTLS with identities)", ErrInvalid)
	}
	if c.MaxApplyBytes > c.Transport.ChunkBudget() {
		return fmt.Errorf("%w: Config.MaxApplyBytes (%d) must fit in one message chunk (%d)", ErrInvalid, c.MaxApplyBytes, c.Transport.ChunkBudget())
	}
	return nil
}
