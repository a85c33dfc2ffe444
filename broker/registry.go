package broker

import (
	"cmp"
	"slices"
	"strings"

	"github.com/replmesh/replmesh/transport"
)

// The registry is the state every broker holds a copy of: one record per
// instance (soft state, spread by gossip), and, read from the decided state
// (fsm.go, the same maps), one owner record per owner service and one
// override per table. Copies of the soft state converge because every merge
// keeps the greater of two records under a total order that does not depend
// on who merges or in which order:
//
//   - instance records (key service/instance) are ordered by
//     (Session.Start, Session.Broker, Ver.Clock, Ver.Broker): a newer session
//     wins over everything an older session wrote, and within one session
//     the later write wins (Ver is a hybrid logical clock, so a broker that
//     has seen a write always writes after it).
//
// The registry itself is a plain value guarded by Broker.mu; it starts no
// goroutine and reads no clock.

// version orders writes within one session (and mode overrides).
type version struct {
	Clock  uint64 `msgpack:"c"`
	Broker string `msgpack:"b"`
}

func (v version) compare(o version) int {
	if c := cmp.Compare(v.Clock, o.Clock); c != 0 {
		return c
	}
	return strings.Compare(v.Broker, o.Broker)
}

// sessionID names one Session stream: when it started (unix ns, and always
// after any session of the same instance the broker had seen) and where.
type sessionID struct {
	Start  int64  `msgpack:"s"`
	Broker string `msgpack:"b"`
}

func (s sessionID) compare(o sessionID) int {
	if c := cmp.Compare(s.Start, o.Start); c != 0 {
		return c
	}
	return strings.Compare(s.Broker, o.Broker)
}

// instKey identifies an instance.
type instKey struct {
	Service  string
	Instance string
}

func (k instKey) String() string { return k.Service + "/" + k.Instance }

// instanceRec is the registry's record of one instance. Only the broker
// holding the session writes it, except for the tombstone (Gone) written by
// the raft leader when the lease lapses.
type instanceRec struct {
	Service   string                `msgpack:"svc"`
	Instance  string                `msgpack:"inst"`
	Addr      string                `msgpack:"addr,omitempty"`
	Owner     bool                  `msgpack:"own,omitempty"`
	Tables    []transport.TableInfo `msgpack:"tables,omitempty"`
	Subs      []transport.SubInfo   `msgpack:"subs,omitempty"`
	Epoch     uint64                `msgpack:"ep,omitempty"`    // Register.Epoch: the highest epoch its data held when it registered
	MinSync   int                   `msgpack:"msync,omitempty"` // Register.MinSyncStandbys (0: none or unknown)
	Session   sessionID             `msgpack:"sess"`
	Ver       version               `msgpack:"ver"`
	Connected bool                  `msgpack:"conn,omitempty"` // the session is open on Session.Broker
	Gone      bool                  `msgpack:"gone,omitempty"` // removed: its lease lapsed
	SeenMs    int64                 `msgpack:"seen,omitempty"` // unix ms of the write
}

func (r *instanceRec) key() instKey { return instKey{r.Service, r.Instance} }

func (r *instanceRec) compare(o *instanceRec) int {
	if c := r.Session.compare(o.Session); c != 0 {
		return c
	}
	return r.Ver.compare(o.Ver)
}

// clone returns a copy that shares nothing mutable with r.
func (r *instanceRec) clone() *instanceRec {
	c := *r
	c.Tables = slices.Clone(r.Tables)
	c.Subs = slices.Clone(r.Subs)
	return &c
}

// interest returns the services whose topology this instance needs: its
// own and every service it subscribes to, sorted, without duplicates.
func (r *instanceRec) interest() []string {
	s := make([]string, 0, 1+len(r.Subs))
	s = append(s, r.Service)
	for _, sub := range r.Subs {
		s = append(s, sub.Service)
	}
	slices.Sort(s)
	return slices.Compact(s)
}

// maxEpoch is the highest epoch the instance's data is known to carry:
// the one it registered with and those of the tables it reports.
func (r *instanceRec) maxEpoch() uint64 {
	e := r.Epoch
	for _, t := range r.Tables {
		e = max(e, t.Epoch)
	}
	return e
}

// headSum is the sum of the heads of the instance's tables: the measure by
// which the most advanced standby is chosen for promotion.
func (r *instanceRec) headSum() uint64 {
	var n uint64
	for _, t := range r.Tables {
		n += t.Head
	}
	return n
}

// topoChanged reports whether the difference between a and b can change
// some component's topology or a decision of the raft leader, as
// opposed to a refresh of heads and positions only.
func topoChanged(a, b *instanceRec) bool {
	if a == nil || b == nil {
		return a != b
	}
	if a.Addr != b.Addr || a.Owner != b.Owner || a.Gone != b.Gone || a.Connected != b.Connected ||
		a.Session != b.Session || len(a.Tables) != len(b.Tables) || len(a.Subs) != len(b.Subs) {
		return true
	}
	for i := range a.Tables {
		x, y := a.Tables[i], b.Tables[i]
		if x.Table != y.Table || x.Mode != y.Mode || x.LogID != y.LogID || x.Epoch != y.Epoch {
			return true
		}
	}
	for i := range a.Subs {
		x, y := a.Subs[i], b.Subs[i]
		if x.Service != y.Service || x.Table != y.Table || x.Mode != y.Mode {
			return true
		}
	}
	return false
}

// ownerRec is the primary lease of an owner service.
type ownerRec struct {
	Service string `msgpack:"svc"`
	Epoch   uint64 `msgpack:"ep"`
	Primary string `msgpack:"p"` // instance
}

// modeRec is a broker override of one table's mode; Mode "" clears it.
type modeRec struct {
	Service string  `msgpack:"svc"`
	Table   string  `msgpack:"t"`
	Mode    string  `msgpack:"mode,omitempty"`
	Ver     version `msgpack:"ver"`
}

func (m *modeRec) key() string { return m.Service + "/" + m.Table }

// registry holds the records. Not safe for concurrent use.
type registry struct {
	clock     uint64 // hybrid logical clock of this broker's writes
	instances map[instKey]*instanceRec
	bySvc     map[string]map[string]*instanceRec // service -> instance -> record
	owners    map[string]*ownerRec
	modes     map[string]*modeRec // "service/table"
}

func newRegistry() *registry {
	return &registry{
		instances: make(map[instKey]*instanceRec),
		bySvc:     make(map[string]map[string]*instanceRec),
		owners:    make(map[string]*ownerRec),
		modes:     make(map[string]*modeRec),
	}
}

// next returns the version of a new local write: after every version this
// registry has seen, and not behind wall time (nowUs, unix µs) so that a
// broker restarted under the same name still writes after its old self.
func (r *registry) next(self string, nowUs int64) version {
	r.clock = max(r.clock+1, uint64(max(nowUs, 0)))
	return version{Clock: r.clock, Broker: self}
}

func (r *registry) observe(v version) { r.clock = max(r.clock, v.Clock) }

func (r *registry) inst(k instKey) *instanceRec { return r.instances[k] }

func (r *registry) store(rec *instanceRec) {
	k := rec.key()
	r.instances[k] = rec
	m := r.bySvc[rec.Service]
	if m == nil {
		m = make(map[string]*instanceRec)
		r.bySvc[rec.Service] = m
	}
	m[rec.Instance] = rec
}

func (r *registry) drop(k instKey) {
	delete(r.instances, k)
	if m := r.bySvc[k.Service]; m != nil {
		delete(m, k.Instance)
		if len(m) == 0 {
			delete(r.bySvc, k.Service)
		}
	}
}

// mergeInstance keeps rec if it is greater than the record held; it returns
// the record it replaced (nil if none) and whether rec was kept. rec must
// not be modified afterwards.
func (r *registry) mergeInstance(rec *instanceRec) (old *instanceRec, kept bool) {
	r.observe(rec.Ver)
	old = r.instances[rec.key()]
	if old != nil && rec.compare(old) <= 0 {
		return old, false
	}
	r.store(rec)
	return old, true
}

// role is rec's role as the registry sees it.
func (r *registry) role(rec *instanceRec) string {
	if !rec.Owner {
		return transport.RoleConsumer
	}
	if o := r.owners[rec.Service]; o != nil && o.Primary == rec.Instance {
		return transport.RolePrimary
	}
	return transport.RoleStandby
}

// epoch is the service's current epoch (0: no primary ever granted).
func (r *registry) epoch(service string) uint64 {
	if o := r.owners[service]; o != nil {
		return o.Epoch
	}
	return 0
}

// known reports whether the registry has ever heard of the service.
func (r *registry) known(service string) bool {
	return r.owners[service] != nil || len(r.bySvc[service]) > 0
}

// sortedInstances returns the service's records sorted by instance.
func (r *registry) sortedInstances(service string) []*instanceRec {
	m := r.bySvc[service]
	out := make([]*instanceRec, 0, len(m))
	for _, rec := range m {
		out = append(out, rec)
	}
	slices.SortFunc(out, func(a, b *instanceRec) int { return strings.Compare(a.Instance, b.Instance) })
	return out
}

// serviceOwner describes where the service's tables are served: the
// primary while its record is present (its lease has not lapsed), the other
// present owner instances as standbys. withHeads keeps the tables' heads
// (Lookup, Status); topologies pushed to components leave them out so that
// a head moving does not count as a topology change.
func (r *registry) serviceOwner(service string, withHeads bool) transport.ServiceOwner {
	so := transport.ServiceOwner{Service: service}
	o := r.owners[service]
	if o != nil {
		so.Epoch = o.Epoch
	}
	for _, rec := range r.sortedInstances(service) {
		if rec.Gone || !rec.Owner {
			continue
		}
		if o != nil && rec.Instance == o.Primary {
			so.Primary = transport.Endpoint{Instance: rec.Instance, Addr: rec.Addr, Role: transport.RolePrimary}
			if len(rec.Tables) > 0 {
				so.Tables = slices.Clone(rec.Tables)
				if !withHeads {
					for i := range so.Tables {
						so.Tables[i].Head = 0
					}
				}
			}
			continue
		}
		so.Standbys = append(so.Standbys, transport.Endpoint{Instance: rec.Instance, Addr: rec.Addr, Role: transport.RoleStandby})
	}
	return so
}

// topology is what the instance rec needs to know. brokers are the gRPC
// addresses of the live brokers, sorted; owner gives a service's owner
// view (serviceOwner without heads, or the broker's shared copy of it).
func (r *registry) topology(rec *instanceRec, brokers []string, rev uint64, owner func(service string) transport.ServiceOwner) *transport.Topology {
	t := &transport.Topology{
		Revision: rev,
		Role:     r.role(rec),
		Epoch:    r.epoch(rec.Service),
		Brokers:  brokers,
	}
	svcs := rec.interest()
	t.Owners = make([]transport.ServiceOwner, 0, len(svcs))
	for _, s := range svcs {
		t.Owners = append(t.Owners, owner(s))
	}
	for _, m := range r.modes {
		if m.Mode == "" {
			continue
		}
		if _, ok := slices.BinarySearch(svcs, m.Service); !ok {
			continue
		}
		if t.Overrides == nil {
			t.Overrides = make(map[string]string)
		}
		t.Overrides[m.key()] = m.Mode
	}
	return t
}

// ownerView is serviceOwner without the table heads: a topology's owner.
func (r *registry) ownerView(service string) transport.ServiceOwner {
	return r.serviceOwner(service, false)
}

// overrides returns every override in force.
func (r *registry) overrides() map[string]string {
	var out map[string]string
	for k, m := range r.modes {
		if m.Mode == "" {
			continue
		}
		if out == nil {
			out = make(map[string]string)
		}
		out[k] = m.Mode
	}
	return out
}

// services returns every service the registry knows, sorted.
func (r *registry) services() []string {
	out := make([]string, 0, len(r.bySvc)+len(r.owners))
	for s := range r.bySvc {
		out = append(out, s)
	}
	for s := range r.owners {
		if _, ok := r.bySvc[s]; !ok {
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return out
}

// bestStandby returns the candidate to promote among cands (live owner
// instances other than the lapsed primary): the one with the greatest sum
// of table heads, ties going to the smaller instance name. Nil if none.
func bestStandby(cands []*instanceRec) *instanceRec {
	var best *instanceRec
	for _, c := range cands {
		if best == nil {
			best = c
			continue
		}
		hc, hb := c.headSum(), best.headSum()
		if hc > hb || (hc == hb && c.Instance < best.Instance) {
			best = c
		}
	}
	return best
}

// gossipMsg carries the soft state between brokers: one instance record
// in a broadcast, every instance record in a push/pull state exchange.
// Owner records and mode overrides are decided through raft, never
// gossiped; the fields older builds gossiped them in ("o", "m", and the
// quorum beats "beat") are skipped unread by decodeGossip.
type gossipMsg struct {
	Instances []*instanceRec `msgpack:"i,omitempty"`
}

// snapshot returns every instance record (the soft state; owner records
// and overrides are decided through raft), in a deterministic order.
func (r *registry) snapshot() *gossipMsg {
	g := &gossipMsg{Instances: make([]*instanceRec, 0, len(r.instances))}
	for _, rec := range r.instances {
		g.Instances = append(g.Instances, rec)
	}
	slices.SortFunc(g.Instances, func(a, b *instanceRec) int {
		return cmp.Or(strings.Compare(a.Service, b.Service), strings.Compare(a.Instance, b.Instance))
	})
	return g
}
