package broker

import (
	"context"
	"fmt"
	"time"

	"github.com/replmesh/replmesh/transport"
)

// Lookup returns where a service's tables are served, with the primary's
// table heads as last reported. A service the registry has never heard of
// is ErrUnknownService.
func (b *Broker) Lookup(ctx context.Context, req *transport.LookupRequest) (*transport.LookupResponse, error) {
	if err := transport.CheckVersion(req.Version); err != nil {
		return nil, err
	}
	if err := checkName("service", req.Service); err != nil {
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
	return &transport.LookupResponse{Owner: b.reg.serviceOwner(req.Service, true)}, nil
}

// Status returns this broker's view of the cluster: the brokers (live ones,
// State "alive", then those that died or left, State "gone"), every owner
// service, every present instance and the mode overrides.
func (b *Broker) Status(ctx context.Context, req *transport.StatusRequest) (*transport.StatusResponse, error) {
	if err := transport.CheckVersion(req.Version); err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.shutting {
		return nil, ErrClosed
	}
	return b.statusLocked(), nil
}

func (b *Broker) statusLocked() *transport.StatusResponse {
	st := &transport.StatusResponse{
		Broker:    b.cfg.Name,
		Brokers:   make([]transport.BrokerInfo, 0, len(b.live)+len(b.departed)),
		Owners:    []transport.ServiceOwner{},
		Instances: []transport.InstanceInfo{},
		Overrides: b.reg.overrides(),
	}
	for _, m := range b.live {
		st.Brokers = append(st.Brokers, transport.BrokerInfo{Name: m.Name, Addr: m.GRPC, State: m.State})
	}
	for _, m := range b.departed {
		st.Brokers = append(st.Brokers, transport.BrokerInfo{Name: m.Name, Addr: m.GRPC, State: m.State})
	}
	for _, svc := range b.reg.services() {
		isOwner := b.reg.owners[svc] != nil
		recs := b.reg.sortedInstances(svc)
		for _, rec := range recs {
			isOwner = isOwner || (rec.Owner && !rec.Gone)
		}
		if isOwner {
			st.Owners = append(st.Owners, b.reg.serviceOwner(svc, true))
		}
		for _, rec := range recs {
			if rec.Gone {
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
			st.Instances = append(st.Instances, info)
		}
	}
	return st
}

// SetMode sets (Mode push, pull or auto) or clears (Mode "") the override
// of a table's mode and spreads it to every broker; subscribers of the
// service receive it in their topology.
func (b *Broker) SetMode(ctx context.Context, req *transport.SetModeRequest) (*transport.SetModeResponse, error) {
	if err := transport.CheckVersion(req.Version); err != nil {
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
	now := time.Now()
	b.mu.Lock()
	if b.shutting {
		b.mu.Unlock()
		return nil, ErrClosed
	}
	m := &modeRec{Service: req.Service, Table: req.Table, Mode: req.Mode, Ver: b.reg.next(b.cfg.Name, now.UnixMicro())}
	b.reg.mergeMode(m)
	b.rev++
	rev := b.rev
	b.notifyLocked(req.Service)
	b.mu.Unlock()
	b.send([]*broadcast{modeBroadcast(m)})
	b.log.Info("mode override", "service", req.Service, "table", req.Table, "mode", req.Mode)
	return &transport.SetModeResponse{Revision: rev}, nil
}
