package broker

import (
	"context"
	"fmt"

	"google.golang.org/grpc/peer"

	"github.com/replmesh/replmesh/modes"
	"github.com/replmesh/replmesh/transport"
)

// Authorization. With Config.RequireIdentity the broker trusts nothing a
// request says about who sends it: the caller is the identity of its
// client certificate (transport.IdentityFromContext), and
//
//   - Session: only a service identity S/I may register, and only as
//     instance I of service S (so it owns only S's tables and is a standby
//     only of S); every subscription it lists must be one the policy lets
//     S read (modes.AccessPolicy.MayRead), in the Register and in every
//     update;
//   - SetMode: admin identities only;
//   - Status: admin and operator identities;
//   - Lookup: admins, operators and brokers about every service; a service
//     identity S about S itself and about the services of which the policy
//     lets S read some table (and of those, only the readable tables).
//
// Brokers do not call each other over gRPC (the registry travels by
// gossip), so no broker call needs the broker role today; a broker
// identity may Lookup, as the role that would.
//
// A call that arrives without a gRPC peer in its context is a call made in
// the broker's own process (replbroker applying its -modes file, the HTTP
// status page) by code that holds the *Broker: it is not checked.
//
// Without RequireIdentity (no mTLS: development and the insecure mode)
// nothing is checked, as before; the limits apply either way.

// caller is who makes a call, as far as authorization goes.
type caller struct {
	id      transport.Identity
	checked bool // false: no check applies (RequireIdentity off, or an in-process call)
}

// caller returns who makes the call of ctx, or an error wrapping
// transport.ErrPermission when identities are required and the caller
// proved none.
func (b *Broker) caller(ctx context.Context) (caller, error) {
	if !b.cfg.RequireIdentity {
		return caller{}, nil
	}
	if _, ok := peer.FromContext(ctx); !ok {
		return caller{}, nil // in process
	}
	id, err := transport.IdentityFromContext(ctx)
	if err != nil {
		return caller{}, err
	}
	return caller{id: id, checked: true}, nil
}

// deny counts a refused call and returns the PermissionDenied error.
func (b *Broker) deny(call string, format string, args ...any) error {
	b.metrics.denials.WithLabelValues(call).Inc()
	err := fmt.Errorf("%w: "+format, append([]any{transport.ErrPermission}, args...)...)
	b.log.Warn("call refused", "call", call, "err", err)
	return err
}

// authorize checks that the caller of call has one of roles.
func (b *Broker) authorize(ctx context.Context, call string, roles ...transport.Role) error {
	c, err := b.caller(ctx)
	if err != nil {
		return b.deny(call, "%s: %v", call, err)
	}
	if !c.checked {
		return nil
	}
	for _, r := range roles {
		if c.id.Role == r {
			return nil
		}
	}
	return b.deny(call, "%s needs the %v role, the caller %s is a %s", call, roles, c.id, c.id.Role)
}

// authorizeRegister checks a Register against the caller's identity and
// the policy: the identity must be the instance registered, and every
// subscription must be one its service may read.
func (b *Broker) authorizeRegister(ctx context.Context, r *transport.Register) error {
	c, err := b.caller(ctx)
	if err != nil {
		return b.deny("register", "register %s/%s: %v", r.Service, r.Instance, err)
	}
	if !c.checked {
		return nil
	}
	if c.id.Role != transport.RoleService {
		return b.deny("register", "register %s/%s: the caller %s is a %s, not an instance of a service",
			r.Service, r.Instance, c.id, c.id.Role)
	}
	if c.id.Service != r.Service || c.id.Instance != r.Instance {
		return b.deny("register", "register %s/%s: the caller's identity is %s/%s (%s); an instance registers only as itself",
			r.Service, r.Instance, c.id.Service, c.id.Instance, c.id)
	}
	return b.authorizeSubs(r.Service, r.Instance, r.Subscriptions)
}

// authorizeSubs checks that service may read the table of every
// subscription in subs. Called only when identities are required.
func (b *Broker) authorizeSubs(service, instance string, subs []transport.SubInfo) error {
	p := b.policy.Load()
	for _, s := range subs {
		if !p.MayRead(s.Service, s.Table, service) {
			return b.deny("subscribe", "%s/%s subscribes to %s/%s, which the policy does not let service %s read",
				service, instance, s.Service, s.Table, service)
		}
	}
	return nil
}

// authorizeLookup checks that the caller may learn where service is
// served; the returned function filters the tables it may see (nil: all).
func (b *Broker) authorizeLookup(ctx context.Context, service string) (func(table string) bool, error) {
	c, err := b.caller(ctx)
	if err != nil {
		return nil, b.deny("lookup", "lookup %s: %v", service, err)
	}
	if !c.checked || c.id.Role != transport.RoleService {
		return nil, nil
	}
	p := b.policy.Load()
	if !p.MayReadService(service, c.id.Service) {
		return nil, b.deny("lookup", "lookup %s: the policy lets the caller's service %s (%s) read no table of %s",
			service, c.id.Service, c.id, service)
	}
	reader := c.id.Service
	return func(table string) bool { return p.MayRead(service, table, reader) }, nil
}

// SetPolicy replaces the policy in force (Config.Policy at start; nil:
// each service reads only its own tables). Sessions whose subscriptions
// the new policy no longer allows are ended with PermissionDenied (their
// component's next Register is refused the same way until its
// subscriptions fit). It applies only with Config.RequireIdentity.
func (b *Broker) SetPolicy(p *modes.AccessPolicy) {
	b.policy.Store(p)
	if !b.cfg.RequireIdentity {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for k, s := range b.sessions {
		rec := b.reg.inst(k)
		if rec == nil || rec.Session != s.id {
			continue
		}
		for _, sub := range rec.Subs {
			if !p.MayRead(sub.Service, sub.Table, k.Service) {
				s.end(b.deny("subscribe", "policy changed: %s subscribes to %s/%s, which the policy no longer lets service %s read",
					k, sub.Service, sub.Table, k.Service))
				break
			}
		}
	}
}

// Policy returns the policy in force.
func (b *Broker) Policy() *modes.AccessPolicy { return b.policy.Load() }
