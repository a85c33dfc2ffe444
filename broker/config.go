package broker

import (
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/replmesh/replmesh/modes"
	"github.com/replmesh/replmesh/transport"
)

// Well-known default addresses of a broker on one host. replctl talks to
// DefaultGRPCAddr when given no address.
const (
	DefaultGRPCAddr   = "127.0.0.1:7400"
	DefaultGossipAddr = "127.0.0.1:7401"
	DefaultHTTPAddr   = "127.0.0.1:7402"
)

// Config configures a broker. Start from DefaultConfig (production
// timings, well-known ports) or LocalConfig (fast timings, port 0).
type Config struct {
	// Name is this broker's name, unique in the cluster. Empty: the host
	// name and the gossip port ("host-7401").
	Name string

	// GRPCAddr is where the Broker gRPC service listens; port 0 picks a
	// free port (read it back with Broker.GRPCAddr).
	GRPCAddr string
	// AdvertiseGRPC is the gRPC address other brokers hand to components
	// for re-homing. Empty: the bound address (which must then not be a
	// wildcard address such as 0.0.0.0 for other hosts to use it).
	AdvertiseGRPC string

	// BindAddr is the memberlist (gossip) address, "host:port", TCP and
	// UDP; port 0 picks a free port (read it back with Broker.GossipAddr).
	BindAddr string
	// AdvertiseAddr is the gossip address announced to other brokers
	// ("host:port"); empty: memberlist's choice from BindAddr.
	AdvertiseAddr string
	// Join lists gossip addresses of brokers to join. When none answers,
	// the broker runs alone and retries every RejoinInterval for as long as
	// it has no other member.
	Join []string
	// GossipKey, when set, encrypts gossip (AES-128/192/256: 16, 24 or 32
	// bytes). Every broker of the cluster needs the same key. It is
	// required when BindAddr is not a loopback address, unless
	// InsecureGossip is set. It is the key gossip is encrypted with until
	// Broker.UseGossipKey makes another one primary.
	GossipKey []byte
	// GossipKeys are further keys this broker decrypts gossip with (never
	// encrypts): the new key while a rotation is rolled out, or the old one
	// while it is retired. Each is 16, 24 or 32 bytes; they need GossipKey.
	// See Broker.AddGossipKey for a rotation.
	GossipKeys [][]byte
	// InsecureGossip lets a broker whose BindAddr is not a loopback address
	// gossip without a key. Then anyone who reaches the gossip port can
	// read the registry, write records into it (take a service's primary
	// lease, point consumers at another address) and join the cluster (and
	// decide, if its name sorts first). The broker logs a warning on every
	// start. A loopback bind (one host, development) needs neither.
	InsecureGossip bool
	// Insecure lets a broker serve its gRPC service in plaintext (no
	// Transport.TLS) on a GRPCAddr or AdvertiseGRPC other hosts can reach.
	// Then every caller is trusted on its word (Token aside). The broker
	// logs a warning on every start. A loopback address needs no TLS.
	Insecure bool
	// ClusterLabel, when set, is carried on every gossip packet; brokers
	// with another label are ignored (at most 255 bytes).
	ClusterLabel string
	// Gossip is the base memberlist configuration (timings). Nil:
	// memberlist.DefaultLANConfig. Name, addresses, delegates, key, label and
	// logger are set from the fields above; the value is copied, not kept.
	Gossip *memberlist.Config

	// DataDir is where the broker keeps its Raft log, snapshots and node
	// id (a badger database in DataDir/raft). A broker restarted with its
	// data dir comes back as the member it was, with the decided state;
	// with an empty data dir it joins as a new member. Empty: in memory
	// only, for a single development broker and tests; an in-memory broker
	// forgets its votes and log when it stops, so it takes a new node id
	// on every start and rejoins as a new member (it needs the others'
	// majority to come back): give every broker of a real cluster a data
	// dir.
	DataDir string
	// PeerTransport is how this broker dials the others (Raft messages
	// and joins): their TLS with this broker's client certificate, whose
	// identity must be a broker's when they require identities.
	PeerTransport transport.Options

	// Token, when set, must be presented in every Register.
	Token string
	// Transport: TLS and message size limit of the gRPC server.
	Transport transport.Options

	// RequireIdentity turns authorization on: every gRPC caller is the
	// identity of its client certificate, and may do only what that
	// identity may (see Broker.SetPolicy and the package documentation,
	// "Authorization"). It needs Transport.TLS to require and verify client
	// certificates (transport.TLSSource.ServerConfig does); replbroker sets
	// it whenever it serves TLS with a CA bundle. Off (the default), no
	// call is checked: development and the insecure mode, as before.
	RequireIdentity bool
	// Policy says which services may read which tables (subscriptions and
	// Lookup) and may set per-service limits; it applies with
	// RequireIdentity (the limits always). Nil: every service reads only
	// its own tables. Replace it at run time with Broker.SetPolicy.
	Policy *modes.AccessPolicy

	// Limits; 0 means the default (DefaultMaxRegistrations and so on).
	// A refusal is counted in replmesh_broker_limit_refusals_total.
	//
	// MaxRegistrations bounds the instances of one service registered at
	// once (a policy may set it per service); MaxInstances those of the
	// whole registry.
	MaxRegistrations int
	MaxInstances     int
	// MaxTables and MaxSubscriptions bound the tables and subscriptions
	// one registration lists (a policy may set them per service).
	MaxTables        int
	MaxSubscriptions int
	// MaxTombstones bounds the removed instances remembered; beyond it the
	// oldest are forgotten before TombstoneTTL.
	MaxTombstones int
	// MaxHeadLead bounds how far ahead of the primary's last reported head
	// a standby's reported head of a table is taken (see DefaultMaxHeadLead).
	MaxHeadLead uint64
	// StatusPageSize is the most instances one Status answer carries (the
	// answer is also kept under half the message limit); a tool follows
	// StatusResponse.NextPageToken for the rest.
	StatusPageSize int
	// MaxPendingSessions bounds the Session streams in their handshake at
	// once, broker-wide: from the stream's start until its Register is
	// answered (the Register is read only once the stream has its turn, so
	// a flood of sessions cannot have the broker decode thousands of large
	// Registers at once). An identity (RequireIdentity) has one handshake
	// at a time. A session waits at most PendingSessionWait for its turn,
	// then is refused (ResourceExhausted); components retry.
	MaxPendingSessions int
	PendingSessionWait time.Duration
	// MaxPendingPerIdentity bounds the sessions of one identity in or
	// waiting for their handshake (RequireIdentity): a component opens one
	// at a time, so more are refused at once.
	MaxPendingPerIdentity int

	// Lease is how long an instance may be without a session (on any
	// broker) before it is removed; for a primary, it is also how long the
	// service waits before a standby is promoted.
	Lease time.Duration
	// RehomeWait is how long a component whose broker stops answering
	// without closing its connection (a paused or partitioned broker) may
	// take to open a session on another broker: the components'
	// PeerTimeout (replica.Config.PeerTimeout, 10s by default, 3s in
	// replica.LocalConfig). A standby whose session sits on a broker the
	// raft leader does not hear is kept for Lease + RehomeWait instead of
	// Lease, and no other standby is promoted over it meanwhile unless
	// enough standbys' heads are known (see nextGrant). 0: Lease alone.
	RehomeWait time.Duration
	// Heartbeat is the interval of the broker's heartbeats on sessions,
	// and of its checks for a silent session; at most Lease/2.
	Heartbeat time.Duration
	// RegisterTimeout bounds the wait for a session's Register frame.
	RegisterTimeout time.Duration
	// CheckInterval is how often leases are checked and (on the deciding
	// broker) primaries granted and promoted.
	CheckInterval time.Duration
	// UpdateInterval coalesces the gossip of table heads and replica
	// positions: each instance's latest report is spread at most this often.
	// Changes to the topology (registrations, addresses, tables, roles) are
	// spread at once.
	UpdateInterval time.Duration
	// TombstoneTTL is how long a removed instance is remembered, so that a
	// broker which missed the removal cannot bring it back.
	TombstoneTTL time.Duration
	// RejoinInterval is how often a broker that is alone retries Join.
	RejoinInterval time.Duration
	// ShutdownTimeout bounds Close: leaving the cluster and draining gRPC.
	ShutdownTimeout time.Duration

	// Logger receives the broker's logs (and memberlist's, at the matching
	// level); nil discards them.
	Logger *slog.Logger

	// silence, when set, replaces Lease/2 as how long a session may
	// deliver no frame before the broker ends it (see Broker.Session). For
	// the package's tests: a loaded test machine can hold back the
	// heartbeats of the in-process fake components for longer than half of
	// a sub-second test lease, and the tests that are not about silent
	// sessions must not lose theirs to it.
	silence time.Duration
	// noLeave makes Close skip leaving the gossip cluster, as a crash
	// would (or a leave that does not get out on a loaded host). For the
	// package's tests.
	noLeave bool
}

// silenceCutoff is how long a session may deliver no frame before the
// broker ends it: half the lease (or the tests' silence).
func (c *Config) silenceCutoff() time.Duration {
	if c.silence > 0 {
		return c.silence
	}
	return c.Lease / 2
}

// DefaultConfig returns production timings and the well-known local
// addresses (DefaultGRPCAddr, DefaultGossipAddr).
func DefaultConfig() Config {
	return Config{
		GRPCAddr:        DefaultGRPCAddr,
		BindAddr:        DefaultGossipAddr,
		Gossip:          memberlist.DefaultLANConfig(),
		Lease:           5 * time.Second,
		RehomeWait:      10 * time.Second,
		Heartbeat:       2 * time.Second,
		RegisterTimeout: 10 * time.Second,
		CheckInterval:   100 * time.Millisecond,
		UpdateInterval:  time.Second,
		TombstoneTTL:    time.Hour,
		RejoinInterval:  10 * time.Second,
		ShutdownTimeout: 5 * time.Second,
	}
}

// LocalConfig returns fast timings for tests and one-host demos
// (memberlist.DefaultLocalConfig with faster gossip, a 1s lease) and
// 127.0.0.1 port 0 for both listeners.
func LocalConfig(name string) Config {
	c := DefaultConfig()
	c.Name = name
	c.GRPCAddr = "127.0.0.1:0"
	c.BindAddr = "127.0.0.1:0"
	g := memberlist.DefaultLocalConfig()
	g.GossipInterval = 20 * time.Millisecond
	g.ProbeInterval = 200 * time.Millisecond
	g.ProbeTimeout = 100 * time.Millisecond
	g.PushPullInterval = 2 * time.Second
	c.Gossip = g
	c.Lease = time.Second
	c.RehomeWait = 3 * time.Second
	c.Heartbeat = 100 * time.Millisecond
	c.RegisterTimeout = 2 * time.Second
	c.CheckInterval = 10 * time.Millisecond
	c.UpdateInterval = 50 * time.Millisecond
	c.TombstoneTTL = time.Minute
	c.RejoinInterval = 200 * time.Millisecond
	c.ShutdownTimeout = 2 * time.Second
	return c
}

// ConfigError is the error Validate (and New) return for an unusable
// field: which field, and what is wrong with it, including the values it
// accepts. It wraps ErrInvalidConfig.
type ConfigError struct {
	// Field is the field's name, "Config.Lease".
	Field string
	// Problem follows the field's name in the message: "is 0s; it must be
	// more than 0". It names other fields the same way ("Config.Lease").
	Problem string
}

func (e *ConfigError) Error() string {
	return ErrInvalidConfig.Error() + ": " + e.Field + " " + e.Problem
}

func (e *ConfigError) Unwrap() error { return ErrInvalidConfig }

func invalid(field, format string, args ...any) error {
	return &ConfigError{Field: field, Problem: fmt.Sprintf(format, args...)}
}

// checkPeerTransport refuses a broker that serves TLS, joins other
// brokers and would dial them in plaintext: its raft messages and its join
// would never reach a broker that serves TLS. (A broker that joins no one
// is checked when another asks to join it: RaftJoin.)
func (c *Config) checkPeerTransport() error {
	if c.Transport.TLS != nil && c.PeerTransport.TLS == nil && len(c.Join) > 0 {
		return invalid("Config.PeerTransport", "has no TLS while Config.Transport serves TLS and Config.Join "+
			"names other brokers: this broker would dial their gRPC (raft messages, joins) in plaintext; set "+
			"Config.PeerTransport.TLS to a client config with this broker's certificate "+
			"(transport.TLSSource.ClientConfig(transport.ExpectRole(transport.RoleBroker)))")
	}
	return nil
}

// peerTLSMissing reports whether this broker serves TLS but dials other
// brokers in plaintext (no Config.PeerTransport.TLS): it can serve alone
// but cannot take other brokers into its raft group.
func (c *Config) peerTLSMissing() bool {
	return c.Transport.TLS != nil && c.PeerTransport.TLS == nil
}

// splitHostPort parses "host:port" with a numeric port in 0..65535.
func splitHostPort(a string) (string, int, error) {
	host, p, err := net.SplitHostPort(a)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", p)
	}
	return host, port, nil
}

// loopbackBind reports whether the gossip address addr ("host:port")
// binds a loopback address only: localhost or a loopback IP. An empty host
// binds every interface; a host name other than localhost may resolve to
// anything.
func loopbackBind(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Validate reports the first unusable field.
func (c *Config) Validate() error {
	if c.Name != "" && !validName(c.Name) {
		return invalid("Config.Name", "%q must be 1-128 characters of A-Z a-z 0-9 _ . -", c.Name)
	}
	if _, _, err := splitHostPort(c.GRPCAddr); err != nil {
		return invalid("Config.GRPCAddr", "%q: %v", c.GRPCAddr, err)
	}
	if c.AdvertiseGRPC != "" {
		if _, port, err := splitHostPort(c.AdvertiseGRPC); err != nil || port == 0 {
			return invalid("Config.AdvertiseGRPC", "%q must be host:port with a port", c.AdvertiseGRPC)
		}
	}
	if _, _, err := splitHostPort(c.BindAddr); err != nil {
		return invalid("Config.BindAddr", "%q: %v", c.BindAddr, err)
	}
	if c.AdvertiseAddr != "" {
		if _, port, err := splitHostPort(c.AdvertiseAddr); err != nil || port == 0 {
			return invalid("Config.AdvertiseAddr", "%q must be host:port with a port", c.AdvertiseAddr)
		}
	}
	for _, j := range c.Join {
		if j == "" {
			return invalid("Config.Join", "has an empty address")
		}
	}
	if err := c.checkPeerTransport(); err != nil {
		return err
	}
	switch len(c.GossipKey) {
	case 0, 16, 24, 32:
	default:
		return invalid("Config.GossipKey", "is %d bytes; it must be 16, 24 or 32", len(c.GossipKey))
	}
	for i, k := range c.GossipKeys {
		if err := checkGossipKey(k); err != nil {
			return invalid("Config.GossipKeys", "[%d] %v", i, err)
		}
	}
	if len(c.GossipKeys) > 0 && len(c.GossipKey) == 0 {
		return invalid("Config.GossipKeys", "are set without Config.GossipKey, the key gossip is encrypted with")
	}
	if len(c.GossipKey) == 0 && !c.InsecureGossip && !loopbackBind(c.BindAddr) {
		return invalid("Config.GossipKey", "is not set and Config.BindAddr %q is not a loopback address: anyone "+
			"who reaches it could read and rewrite the registry and join the cluster; set a key (16, 24 or 32 "+
			"bytes), or Config.InsecureGossip to gossip in the clear", c.BindAddr)
	}
	if c.Transport.TLS == nil && !c.Insecure {
		if err := transport.CheckTransportSecurity([]string{c.GRPCAddr, c.AdvertiseGRPC}, false, false); err != nil {
			return invalid("Config.Transport.TLS", "is not set: %v; set TLS, or Config.Insecure to serve in plaintext", err)
		}
	}
	if len(c.ClusterLabel) > memberlist.LabelMaxSize {
		return invalid("Config.ClusterLabel", "is longer than %d bytes", memberlist.LabelMaxSize)
	}
	// Durations, each with the range it accepts. Heartbeat: the broker
	// checks a session for silence on its heartbeat ticks once the session
	// has been silent for half a lease, so a heartbeat of at most half the
	// lease ends a silent session within one lease.
	positive := "it must be more than 0"
	checks := []struct {
		name string
		v    time.Duration
		bad  bool
		want string
	}{
		{"Config.Lease", c.Lease, c.Lease <= 0, positive},
		{"Config.RehomeWait", c.RehomeWait, c.RehomeWait < 0, "it must be 0 or more"},
		{"Config.Heartbeat", c.Heartbeat, c.Heartbeat <= 0 || c.Heartbeat > c.Lease/2,
			fmt.Sprintf("it must be more than 0 and at most half of Config.Lease (%v): %v or less", c.Lease, c.Lease/2)},
		{"Config.RegisterTimeout", c.RegisterTimeout, c.RegisterTimeout <= 0, positive},
		{"Config.CheckInterval", c.CheckInterval, c.CheckInterval <= 0 || c.CheckInterval > c.Lease,
			fmt.Sprintf("it must be more than 0 and at most Config.Lease (%v)", c.Lease)},
		{"Config.UpdateInterval", c.UpdateInterval, c.UpdateInterval <= 0, positive},
		{"Config.TombstoneTTL", c.TombstoneTTL, c.TombstoneTTL < c.Lease,
			fmt.Sprintf("it must be at least Config.Lease (%v)", c.Lease)},
		{"Config.RejoinInterval", c.RejoinInterval, c.RejoinInterval <= 0, positive},
		{"Config.ShutdownTimeout", c.ShutdownTimeout, c.ShutdownTimeout <= 0, positive},
	}
	for _, ch := range checks {
		if ch.bad {
			return invalid(ch.name, "is %v; %s", ch.v, ch.want)
		}
	}
	return c.validateLimits()
}
