package broker

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/replmesh/replmesh/transport"
)

// Limits: what one service, one registration and the registry may hold,
// so that no component (hostile or broken) can take the broker's memory or
// the cluster's gossip. Each is a Config field; 0 there means the default
// below. A policy (modes.AccessPolicy limits) may set per-service values for
// registrations, tables and subscriptions. Every refusal is counted in
// replmesh_broker_limit_refusals_total{limit=...}.
const (
	// DefaultMaxRegistrations: instances of one service registered at once.
	DefaultMaxRegistrations = 256
	// DefaultMaxInstances: instances registered at once in the registry.
	DefaultMaxInstances = 4096
	// DefaultMaxTables: tables one registration may list.
	DefaultMaxTables = 1024
	// DefaultMaxSubscriptions: subscriptions one registration may list.
	DefaultMaxSubscriptions = 1024
	// ListCeiling is the most MaxTables and MaxSubscriptions may be set
	// to, and what the gossip decoder accepts in one record (brokers may
	// be configured differently; every broker must decode what any other
	// one admitted).
	ListCeiling = 1 << 16
	// DefaultMaxTombstones: removed instances remembered (Config.TombstoneTTL);
	// past it the oldest tombstones are forgotten early.
	DefaultMaxTombstones = 16384
	// DefaultMaxHeadLead: how far a standby's reported head of a table may
	// run ahead of the primary's last reported head of it.
	DefaultMaxHeadLead = 1 << 20
	// DefaultStatusPageSize: instances in one Status page.
	DefaultStatusPageSize = 500
	// DefaultMaxPendingSessions: sessions in their handshake at once. Each
	// holds at most one decoded Register (about 300 kB with 1024 tables of
	// long names).
	DefaultMaxPendingSessions = 32
	// DefaultPendingSessionWait: how long a session waits for its
	// handshake turn before it is refused.
	DefaultPendingSessionWait = 2 * time.Second
	// DefaultMaxPendingPerIdentity: sessions of one identity in or
	// waiting for their handshake (one in it, one waiting).
	DefaultMaxPendingPerIdentity = 2
)

// MaxHead is the largest table head (seq) an instance may report: far
// above any real log (2^48 changes), and low enough that the sum of 1024
// heads by which standbys are ranked cannot wrap.
const MaxHead = 1 << 48

// maxSubText bounds the free-text fields of a subscription report (State
// is bounded by checkSubs already).
const maxSubText = 1024

// orDefault returns v, or def when v is 0.
func orDefault[T cmp.Ordered](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// validateLimits reports the first negative limit.
func (c *Config) validateLimits() error {
	for _, l := range []struct {
		name string
		v    int
	}{
		{"Config.MaxRegistrations", c.MaxRegistrations}, {"Config.MaxInstances", c.MaxInstances},
		{"Config.MaxTables", c.MaxTables}, {"Config.MaxSubscriptions", c.MaxSubscriptions},
		{"Config.MaxTombstones", c.MaxTombstones}, {"Config.StatusPageSize", c.StatusPageSize},
		{"Config.MaxPendingSessions", c.MaxPendingSessions}, {"Config.MaxPendingPerIdentity", c.MaxPendingPerIdentity},
	} {
		if l.v < 0 {
			return invalid(l.name, "is %d; it must be 0 (the default) or more", l.v)
		}
	}
	if c.PendingSessionWait < 0 {
		return invalid("Config.PendingSessionWait", "is %v; it must be 0 (the default) or more", c.PendingSessionWait)
	}
	if c.MaxTables > ListCeiling {
		return invalid("Config.MaxTables", "is %d; it must be at most %d", c.MaxTables, ListCeiling)
	}
	if c.MaxSubscriptions > ListCeiling {
		return invalid("Config.MaxSubscriptions", "is %d; it must be at most %d", c.MaxSubscriptions, ListCeiling)
	}
	if c.RequireIdentity && c.Transport.TLS == nil {
		return invalid("Config.RequireIdentity", "needs TLS with client certificates (Config.Transport.TLS, e.g. transport.TLSSource.ServerConfig)")
	}
	return nil
}

// limits are the limits in force for one service.
type limits struct {
	registrations, tables, subscriptions int
}

// limitsFor returns the limits of service: the policy's, else the
// config's, else the defaults.
func (b *Broker) limitsFor(service string) limits {
	l := limits{
		registrations: orDefault(b.cfg.MaxRegistrations, DefaultMaxRegistrations),
		tables:        orDefault(b.cfg.MaxTables, DefaultMaxTables),
		subscriptions: orDefault(b.cfg.MaxSubscriptions, DefaultMaxSubscriptions),
	}
	if pl, ok := b.policy.Load().Limits(service); ok {
		l.registrations = orDefault(pl.Registrations, l.registrations)
		l.tables = orDefault(pl.Tables, l.tables)
		l.subscriptions = orDefault(pl.Subscriptions, l.subscriptions)
	}
	return l
}

// limited counts a refusal by limit and returns the error (ErrTooLarge:
// gRPC ResourceExhausted).
func (b *Broker) limited(limit, format string, args ...any) error {
	b.metrics.limited.WithLabelValues(limit).Inc()
	return fmt.Errorf("%w: "+format, append([]any{transport.ErrTooLarge}, args...)...)
}

// checkRegistrationLocked refuses a new registration of k past the
// registrations of its service or the instances of the registry; an
// instance already present registers again freely.
func (b *Broker) checkRegistrationLocked(k instKey) error {
	if prev := b.reg.inst(k); prev != nil && !prev.Gone {
		return nil
	}
	return b.checkRegistrationLockedPlus(k, 0)
}

// checkRegistrationLockedPlus is checkRegistrationLocked for a new
// instance k, with joining more instances of its service (in their
// handshake) counted as registered.
func (b *Broker) checkRegistrationLockedPlus(k instKey, joining int) error {
	perSvc := b.limitsFor(k.Service).registrations
	n := 0
	for _, rec := range b.reg.bySvc[k.Service] {
		if !rec.Gone {
			n++
		}
	}
	if n+joining >= perSvc {
		if joining > 0 {
			return b.limited("registrations", "register %s: service %s has %d instances registered and %d registering, at most %d",
				k, k.Service, n, joining, perSvc)
		}
		return b.limited("registrations", "register %s: service %s has %d instances registered, at most %d", k, k.Service, n, perSvc)
	}
	total := orDefault(b.cfg.MaxInstances, DefaultMaxInstances)
	n = 0
	for _, rec := range b.reg.instances {
		if !rec.Gone {
			n++
		}
	}
	if n+joining >= total {
		return b.limited("instances", "register %s: %d instances registered, at most %d", k, n, total)
	}
	return nil
}

// capHeadsLocked bounds the heads a standby reports: a standby holds what
// the primary sent it, so its head of a table cannot be far ahead of the
// primary's last report (which may lag by one UpdateInterval of writes).
// A head more than MaxHeadLead ahead is lowered to that bound and counted,
// so that a report cannot win a promotion by a made-up head alone. The
// primary's own reports, and those of services with no primary record,
// are left as they are.
func (b *Broker) capHeadsLocked(rec *instanceRec) {
	o := b.reg.owners[rec.Service]
	if o == nil || o.Primary == rec.Instance {
		return
	}
	p := b.reg.inst(instKey{rec.Service, o.Primary})
	lead := orDefault(b.cfg.MaxHeadLead, DefaultMaxHeadLead)
	for i := range rec.Tables {
		t := &rec.Tables[i]
		var ph uint64
		if p != nil {
			if j, ok := slices.BinarySearchFunc(p.Tables, t.Table, func(x transport.TableInfo, name string) int { return cmp.Compare(x.Table, name) }); ok {
				ph = p.Tables[j].Head
			}
		}
		if limit := ph + lead; t.Head > limit {
			b.metrics.headsCapped.Inc()
			b.log.Warn("standby head above the primary's: capped", "service", rec.Service, "instance", rec.Instance,
				"table", t.Table, "head", t.Head, "primary", o.Primary, "primary_head", ph, "cap", limit)
			t.Head = limit
		}
	}
}

// capTombstonesLocked forgets the oldest tombstones beyond MaxTombstones
// (before their TombstoneTTL), counting each.
func (b *Broker) capTombstonesLocked() {
	limit := orDefault(b.cfg.MaxTombstones, DefaultMaxTombstones)
	if len(b.goneAt) <= limit {
		return
	}
	type tomb struct {
		k  instKey
		at time.Time
	}
	all := make([]tomb, 0, len(b.goneAt))
	for k, at := range b.goneAt {
		all = append(all, tomb{k, at})
	}
	slices.SortFunc(all, func(a, b tomb) int {
		return cmp.Or(a.at.Compare(b.at), cmp.Compare(a.k.Service, b.k.Service), cmp.Compare(a.k.Instance, b.k.Instance))
	})
	drop := all[:len(all)-limit]
	for _, t := range drop {
		b.reg.drop(t.k)
		delete(b.goneAt, t.k)
	}
	b.metrics.tombstonesDropped.Add(float64(len(drop)))
	b.metrics.limited.WithLabelValues("tombstones").Add(float64(len(drop)))
	b.log.Warn("tombstones forgotten early: more than the limit", "dropped", len(drop), "limit", limit)
}
