package replica

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/replmesh/replmesh/transport"
)

// role is this instance's standing in its owner service, as the broker
// grants it. Without brokers an owner is always primary.
type role struct {
	name    string // transport.RolePrimary, transport.RoleStandby, or "" (no lease known yet)
	epoch   uint64
	primary transport.Endpoint // the service's primary (possibly this instance)
}

// serviceOwner returns what the broker last said about service.
func (c *Component) serviceOwner(service string) (transport.ServiceOwner, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.topo == nil {
		return transport.ServiceOwner{}, false
	}
	for _, so := range c.topo.Owners {
		if so.Service == service {
			return so, true
		}
	}
	return transport.ServiceOwner{}, false
}

// Role returns this instance's role ("primary", "standby", or "" while no
// broker has answered) and its service's epoch.
func (c *Component) Role() (string, uint64) {
	if len(c.cfg.Brokers) == 0 {
		return transport.RolePrimary, 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.role.name, c.role.epoch
}

// checkWritable refuses writes on an instance that is not the primary.
func (t *OwnedTable) checkWritable() error {
	if t.restoring.Load() {
		return t.errRestoring()
	}
	if t.writable.Load() {
		return nil
	}
	t.c.mu.Lock()
	r := t.c.role
	t.c.mu.Unlock()
	switch {
	case r.name == "":
		return fmt.Errorf("%w: %s/%s has no primary lease yet (no broker has answered)", transport.ErrNotPrimary, t.c.cfg.Service, t.c.cfg.Instance)
	case r.primary.Instance != "" && r.primary.Instance != t.c.cfg.Instance:
		return fmt.Errorf("%w: %s/%s is a standby; the primary is %s at %s (epoch %d)",
			transport.ErrNotPrimary, t.c.cfg.Service, t.c.cfg.Instance, r.primary.Instance, r.primary.Addr, r.epoch)
	default:
		return fmt.Errorf("%w: table %s of %s/%s cannot take writes (see the logs)", transport.ErrNotPrimary, t.name, t.c.cfg.Service, t.c.cfg.Instance)
	}
}

// applyTopology takes a topology from the broker: replicas follow their
// owners' moves, and an owner instance takes the role it was given.
func (c *Component) applyTopology(topo *transport.Topology) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.topo = topo
	reps := slices.Collect(maps.Values(c.replicas))
	nrep := len(reps)
	reps = slices.AppendSeq(reps, maps.Values(c.followers))
	c.mu.Unlock()
	for i, r := range reps {
		if i < nrep {
			r.setOverride(topo.Overrides[r.opts.Service+"/"+r.opts.Table])
		}
		r.redirect()
	}
	if !c.cfg.Owner {
		return
	}
	var primary transport.Endpoint
	for _, so := range topo.Owners {
		if so.Service == c.cfg.Service {
			primary = so.Primary
		}
	}
	c.setRole(role{name: topo.Role, epoch: topo.Epoch, primary: primary})
}

// setRole moves the owned tables to a new role: a primary promotes its
// copies (stopping the followers first) and takes writes; a standby refuses
// writes and follows the primary.
func (c *Component) setRole(nr role) {
	c.roleMu.Lock()
	defer c.roleMu.Unlock()
	c.mu.Lock()
	old := c.role
	if c.closed || old == nr {
		c.mu.Unlock()
		return
	}
	tables := slices.Collect(maps.Values(c.owned))
	if nr.name != transport.RolePrimary {
		c.role = nr // refuse writes before the tables change hands
	}
	c.mu.Unlock()
	c.log.Info("role", "role", nr.name, "epoch", nr.epoch, "primary", nr.primary.Instance, "was", old.name)
	for _, t := range tables {
		c.applyRole(t, nr)
	}
	// Published last for a promotion: Role() says primary once the tables
	// take writes.
	c.mu.Lock()
	c.role = nr
	c.mu.Unlock()
}

// applyCurrentRole puts t in line with this instance's role (a table just
// opened, or changed under its role by a restore) and reports it to the
// broker.
func (c *Component) applyCurrentRole(t *OwnedTable) {
	c.roleMu.Lock()
	defer c.roleMu.Unlock()
	c.mu.Lock()
	r := c.role
	c.mu.Unlock()
	c.applyRole(t, r)
	c.kickBroker()
}

// applyRole puts one owned table in line with role r. The caller holds
// roleMu.
func (c *Component) applyRole(t *OwnedTable, r role) {
	switch r.name {
	case transport.RolePrimary:
		c.stopFollower(t)
		if err := t.promote(r.epoch); err != nil {
			t.writable.Store(false)
			if errors.Is(err, errGrantBehind) {
				// Report the table's epoch now: the broker grants above it.
				c.log.Warn("waiting for a newer grant to take over table", "table", t.name, "err", err)
				c.kickBroker()
				return
			}
			c.log.Error("cannot take over table", "table", t.name, "err", err)
			return
		}
		t.writable.Store(true)
		t.mu.Lock()
		t.signalLocked() // a restore waits for the table to take writes (waitWritable)
		t.mu.Unlock()
	case transport.RoleStandby:
		t.writable.Store(false)
		t.markOwn.Store(false) // the follower writes the primary's changes, confirmed or not
		c.startFollower(t)
	default:
		t.writable.Store(false)
	}
}

// startFollower starts replicating t from the service's primary.
func (c *Component) startFollower(t *OwnedTable) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.followers[t.name] != nil {
		return
	}
	r := c.newReplica(SubscribeOptions{Service: c.cfg.Service, Table: t.name}, c.log.With("standby_of", t.name), t)
	_ = r.load()
	r.ctx, r.cancel = context.WithCancel(c.ctx)
	c.followers[t.name] = r
	c.wg.Add(1)
	go r.loop()
}

// stopFollower stops t's follower and waits for it.
func (c *Component) stopFollower(t *OwnedTable) {
	c.mu.Lock()
	r := c.followers[t.name]
	delete(c.followers, t.name)
	c.mu.Unlock()
	if r != nil {
		r.stop()
	}
}
