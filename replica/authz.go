package replica

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/replmesh/replmesh/modes"
	"github.com/replmesh/replmesh/transport"
)

// Authorization on the owner. With Config.TLS (mTLS with identities) the
// owner trusts nothing a request says about who sends it: the caller is
// the identity of its client certificate (transport.IdentityFromContext),
// and
//
//   - a service identity S/I may Subscribe, Get, Digest and Keys only as
//     itself: Open.Service and Open.Instance, and the Service of a Get,
//     Digest or Keys request, must be S and I, else PermissionDenied naming
//     both; it reads a table of this service when S is this service (its
//     standbys), when the table's TableOptions.AllowServices lists S, or
//     when Config.AccessPolicy lets S read it (modes.AccessPolicy.MayRead);
//     anything else is denied (default deny);
//   - only an identity of this service may subscribe with Open.Standby;
//   - an admin identity (replctl) may Get, Digest, Keys and Subscribe (not
//     as a standby) every table: replctl get, keys, verify and tail; the
//     service it names in requests is not checked (it has none);
//   - an operator identity may Digest every table (replctl verify): a
//     read-only operator sees hashes, not rows;
//   - a broker identity may do nothing here.
//
// Without Config.TLS (development, the insecure mode, or Transport.TLS
// without identities) the check is today's, on the service the request
// names: a table with AllowServices is read by those services and its own;
// a table without is read by every service unless Config.AccessPolicy is
// set, which then decides with the same rule as above.
//
// Every refusal is counted (replmesh_owner_denials_total{call}) and logged
// at WARN.

// Calls the owner authorizes, the label of the denials metric.
const (
	callSubscribe = "subscribe"
	callGet       = "get"
	callDigest    = "digest"
	callKeys      = "keys"
)

// access is what authorize grants a call.
type access struct {
	// key names the caller for the per-caller subscription limit: its
	// identity with TLS, the service it claims without.
	key string
	// who names the caller in logs.
	who string
	// standby: a standby stream of this service (its acks count toward
	// MinSyncStandbys).
	standby bool
}

// authorize checks a call on table t by the caller of ctx, which names
// service and instance (instance "" for the unary reads) and asks for a
// standby stream when standby is set.
func (c *Component) authorize(ctx context.Context, call string, t *OwnedTable, service, instance string, standby bool) (access, error) {
	if c.cfg.TLS == nil {
		if err := t.allowed(service, false); err != nil {
			return access{}, c.deny(call, err)
		}
		return access{key: "service " + service, who: service + "/" + instance, standby: standby && service == c.cfg.Service}, nil
	}
	id, err := transport.IdentityFromContext(ctx)
	if err != nil {
		return access{}, c.deny(call, fmt.Errorf("%s %s: %w", call, t.name, err))
	}
	a := access{key: id.String(), who: id.String()}
	switch id.Role {
	case transport.RoleService:
		if service != id.Service || instance != "" && instance != id.Instance {
			named := service
			if instance != "" {
				named += "/" + instance
			}
			return access{}, c.deny(call, fmt.Errorf("%w: %s %s: the request names %s, the caller's identity is %s/%s (%s)",
				transport.ErrPermission, call, t.name, named, id.Service, id.Instance, id))
		}
		if standby && id.Service != c.cfg.Service {
			return access{}, c.deny(call, fmt.Errorf("%w: %s %s as a standby: only an instance of %s may, the caller is %s",
				transport.ErrPermission, call, t.name, c.cfg.Service, id))
		}
		if err := t.allowed(id.Service, true); err != nil {
			return access{}, c.deny(call, fmt.Errorf("%w (the caller is %s)", err, id))
		}
		a.standby = standby
		return a, nil
	case transport.RoleAdmin:
		if standby {
			return access{}, c.deny(call, fmt.Errorf("%w: %s %s as a standby: only an instance of %s may, the caller is %s",
				transport.ErrPermission, call, t.name, c.cfg.Service, id))
		}
		return a, nil
	case transport.RoleOperator:
		if call == callDigest {
			return a, nil
		}
	}
	return access{}, c.deny(call, fmt.Errorf("%w: %s %s: the caller %s is a %s, which may not",
		transport.ErrPermission, call, t.name, id, id.Role))
}

// deny counts a refused call and returns err.
func (c *Component) deny(call string, err error) error {
	c.guard.denials.add(call)
	c.log.Warn("call refused", "call", call, "err", err)
	return err
}

// allowed reports whether service may read the table: its own service, a
// service its AllowServices lists, or one the access policy allows. With
// strict false (no identities) a table without AllowServices and a
// component without an access policy is read by every service, as before
// identities.
func (t *OwnedTable) allowed(service string, strict bool) error {
	if service == t.c.cfg.Service || t.allow[service] {
		return nil
	}
	p := t.c.accessPolicy()
	if p != nil && p.MayRead(t.c.cfg.Service, t.name, service) {
		return nil
	}
	if !strict && t.allow == nil && p == nil {
		return nil
	}
	return fmt.Errorf("%w: service %q may not read table %s", transport.ErrPermission, service, t.name)
}

// accessPolicy returns the access policy in force.
func (c *Component) accessPolicy() *modes.AccessPolicy { return c.policy.Load() }

// ReloadAccessPolicy replaces Config.AccessPolicy (nil: none). It applies
// to the calls that begin after it; streams already open keep running
// (their reader was allowed when they opened).
func (c *Component) ReloadAccessPolicy(p *modes.AccessPolicy) {
	c.policy.Store(p)
	c.log.Info("access policy reloaded")
}

// ownerGuard holds the owner's security counters and the per-caller
// subscription counts.
type ownerGuard struct {
	denials  counterSet // refused calls, by call
	refusals counterSet // streams refused by a limit, by limit
	protocol counterSet // streams ended for a protocol error, by error

	mu   sync.Mutex
	subs map[string]int // open Subscribe streams per caller key
}

// Limits and protocol errors, the labels of their metrics.
const (
	limitCallerSubscriptions = "caller_subscriptions"
	limitConnStreams         = "conn_streams"
	errAckAboveHead          = "ack_above_head"
)

// enter admits one more stream of key, at most max at once; the caller
// calls leave when it ends.
func (g *ownerGuard) enter(key string, max int) (int, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := g.subs[key]
	if n >= max {
		return n, false
	}
	if g.subs == nil {
		g.subs = map[string]int{}
	}
	g.subs[key] = n + 1
	return n + 1, true
}

func (g *ownerGuard) leave(key string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.subs[key]--; g.subs[key] <= 0 {
		delete(g.subs, key)
	}
}

// counterSet is a set of monotonic counters by label, read when scraped.
type counterSet struct {
	m sync.Map // label -> *atomic.Uint64
}

func (s *counterSet) add(label string) {
	v, ok := s.m.Load(label)
	if !ok {
		v, _ = s.m.LoadOrStore(label, new(atomic.Uint64))
	}
	v.(*atomic.Uint64).Add(1)
}

// get returns the count of label.
func (s *counterSet) get(label string) uint64 {
	if v, ok := s.m.Load(label); ok {
		return v.(*atomic.Uint64).Load()
	}
	return 0
}

// each calls f with every label and its count.
func (s *counterSet) each(f func(label string, n uint64)) {
	s.m.Range(func(k, v any) bool {
		f(k.(string), v.(*atomic.Uint64).Load())
		return true
	})
}
