package broker

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/grpc/peer"

	"github.com/replmesh/replmesh/transport"
)

// Lookup returns where a service's tables are served, with the primary's
// table heads as last reported. A service the registry has never heard of
// is ErrUnknownService. With Config.RequireIdentity a service identity
// learns only about services the policy lets it read (PermissionDenied
// otherwise, whether the service exists or not), and only their tables it
// may read.
func (b *Broker) Lookup(ctx context.Context, req *transport.LookupRequest) (*transport.LookupResponse, error) {
	if err := transport.CheckVersion(req.Version); err != nil {
		return nil, err
	}
	if err := checkName("service", req.Service); err != nil {
		return nil, err
	}
	readable, err := b.authorizeLookup(ctx, req.Service)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.shutting {
		return nil, ErrClosed
	}
	if !b.reg.known(req.Service) {
		return nil, fmt.Errorf("%w: %q", ErrUnknownService, req.Service)
	}
	o := b.reg.serviceOwner(req.Service, true)
	if readable != nil {
		o.Tables = slices.DeleteFunc(slices.Clone(o.Tables), func(t transport.TableInfo) bool { return !readable(t.Table) })
	}
	return &transport.LookupResponse{Owner: o}, nil
}

// Status returns this broker's view of the cluster: the brokers (live ones,
// State "alive", then those that died or left, State "gone"), every owner
// service, every present instance and the mode overrides. Over gRPC the
// answer is paged (see transport.StatusRequest.PageToken): at most
// Config.StatusPageSize instances, and under half the message limit; a
// call in the broker's own process with no page asked for gets the whole
// registry. With Config.RequireIdentity it needs an admin or operator
// identity.
func (b *Broker) Status(ctx context.Context, req *transport.StatusRequest) (*transport.StatusResponse, error) {
	if err := transport.CheckVersion(req.Version); err != nil {
		return nil, err
	}
	if err := b.authorize(ctx, "status", transport.RoleAdmin, transport.RoleOperator); err != nil {
		return nil, err
	}
	pg, err := b.statusPage(ctx, req)
	if err != nil {
		return nil, err
	}
	var rs *transport.RaftStatus
	if pg.first {
		rs = b.raft.status()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.shutting {
		return nil, ErrClosed
	}
	st := b.statusLocked(pg)
	if rs != nil {
		rs.Members = b.fsm.memberList()
		for _, m := range rs.Members {
			if m.ID == rs.Leader {
				rs.LeaderName = m.Name
			}
		}
		st.Raft = rs
	}
	return st, nil
}

// page is where a Status answer starts and how much it may hold.
type page struct {
	service, instance string // the first record: instance "" = the service's owner record first
	first             bool   // the first page: brokers and overrides too
	size              int    // instances at most; 0 = unbounded (the whole registry)
	bytes             int    // encoded owners and instances at most; 0 = unbounded
}

// statusPage reads the page a Status request asks for.
func (b *Broker) statusPage(ctx context.Context, req *transport.StatusRequest) (page, error) {
	pg := page{first: req.PageToken == ""}
	if req.PageToken != "" {
		svc, inst, ok := strings.Cut(req.PageToken, "/")
		if !ok || !validName(svc) || (inst != "" && !validName(inst)) {
			return page{}, badRequest("page token %q is not one a broker gave", req.PageToken)
		}
		pg.service, pg.instance = svc, inst
	}
	if req.PageSize < 0 {
		return page{}, badRequest("page size %d is negative", req.PageSize)
	}
	if _, remote := peer.FromContext(ctx); !remote && req.PageToken == "" && req.PageSize == 0 {
		return pg, nil // in process: the whole registry
	}
	pg.size = orDefault(b.cfg.StatusPageSize, DefaultStatusPageSize)
	if req.PageSize > 0 && req.PageSize < pg.size {
		pg.size = req.PageSize
	}
	pg.bytes = b.cfg.Transport.ChunkBudget()
	return pg, nil
}

// encodedSize is the size of v in a message (0 if it does not encode,
// which plain records always do).
func encodedSize(v any) int {
	buf, err := transport.Marshal(v)
	if err != nil {
		return 0
	}
	return len(buf)
}

// statusLocked builds one page of the status (see page).
func (b *Broker) statusLocked(pg page) *transport.StatusResponse {
	st := &transport.StatusResponse{
		Broker:    b.cfg.Name,
		Brokers:   make([]transport.BrokerInfo, 0, len(b.live)+len(b.departed)),
		Owners:    []transport.ServiceOwner{},
		Instances: []transport.InstanceInfo{},
	}
	if pg.first {
		st.Overrides = b.reg.overrides()
		for _, r := range b.refused {
			st.Refused = append(st.Refused, *r)
		}
		slices.SortFunc(st.Refused, func(a, b transport.RefusedRegister) int {
			return cmp.Or(strings.Compare(a.Service, b.Service), strings.Compare(a.Instance, b.Instance))
		})
		for _, m := range b.live {
			st.Brokers = append(st.Brokers, transport.BrokerInfo{Name: m.Name, Addr: m.GRPC, State: m.State})
		}
		for _, m := range b.departed {
			st.Brokers = append(st.Brokers, transport.BrokerInfo{Name: m.Name, Addr: m.GRPC, State: m.State})
		}
	}
	used, items := 0, 0
	if pg.bytes > 0 {
		used = encodedSize(st)
	}
	// fits reports whether one more record of n bytes fits the page; a
	// page always takes its first record.
	fits := func(n int) bool {
		return items == 0 || pg.bytes == 0 || used+n <= pg.bytes
	}
	for _, svc := range b.reg.services() {
		if svc < pg.service {
			continue
		}
		resume := svc == pg.service && pg.instance != ""
		isOwner := b.reg.owners[svc] != nil
		recs := b.reg.sortedInstances(svc)
		for _, rec := range recs {
			isOwner = isOwner || (rec.Owner && !rec.Gone)
		}
		if isOwner && !resume {
			o := b.reg.serviceOwner(svc, true)
			n := 0
			if pg.bytes > 0 {
				n = encodedSize(&o)
			}
			if !fits(n) {
				st.NextPageToken = svc + "/"
				return st
			}
			st.Owners = append(st.Owners, o)
			used += n
			items++
		}
		for _, rec := range recs {
			if rec.Gone || (resume && rec.Instance < pg.instance) {
				continue
			}
			info := transport.InstanceInfo{
				Service:       rec.Service,
				Instance:      rec.Instance,
				Addr:          rec.Addr,
				Role:          b.reg.role(rec),
				LastSeenMs:    rec.SeenMs,
				Tables:        rec.Tables,
				Subscriptions: rec.Subs,
			}
			if rec.Connected && b.aliveLocked(rec.Session.Broker) {
				info.Broker = rec.Session.Broker
			}
			if s := b.sessions[rec.key()]; s != nil && s.id == rec.Session {
				info.LastSeenMs = s.lastFrame.Load()
			}
			n := 0
			if pg.bytes > 0 {
				n = encodedSize(&info)
			}
			if (pg.size > 0 && len(st.Instances) >= pg.size) || !fits(n) {
				st.NextPageToken = svc + "/" + rec.Instance
				return st
			}
			st.Instances = append(st.Instances, info)
			used += n
			items++
		}
	}
	return st
}

// SetMode sets (Mode push, pull or auto) or clears (Mode "") the override
// of a table's mode through the brokers' Raft log: it answers once the
// change is committed and applied here; subscribers of the service
// receive it in their topology. Without a reachable raft leader (no
// majority of the brokers) it fails with transport.ErrUnavailable.
//
// With Config.RequireIdentity it needs an admin identity.
func (b *Broker) SetMode(ctx context.Context, req *transport.SetModeRequest) (*transport.SetModeResponse, error) {
	if err := transport.CheckVersion(req.Version); err != nil {
		return nil, err
	}
	if err := b.authorize(ctx, "setmode", transport.RoleAdmin); err != nil {
		return nil, err
	}
	if err := checkName("service", req.Service); err != nil {
		return nil, err
	}
	if err := checkName("table", req.Table); err != nil {
		return nil, err
	}
	if err := checkMode("mode", req.Mode); err != nil {
		return nil, err
	}
	ctx, done, err := b.clusterCall(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	if err := b.raft.propose(ctx, &command{Kind: cmdMode, Service: req.Service, Table: req.Table, Mode: req.Mode}); err != nil {
		return nil, err
	}
	b.mu.Lock()
	rev := b.rev
	b.mu.Unlock()
	return &transport.SetModeResponse{Revision: rev}, nil
}
