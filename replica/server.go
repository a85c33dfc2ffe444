package replica

import (
	"context"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/replmesh/replmesh/modes"
	"github.com/replmesh/replmesh/transport"
)

// rateWindow is the window over which write and read rates are measured
// for auto mode.
const rateWindow = 5 * time.Second

// replicationServer serves the replication service for the component's
// owned tables.
type replicationServer struct{ c *Component }

func (c *Component) ownedTable(name string) (*OwnedTable, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, fmt.Errorf("%w: component is closing", transport.ErrUnavailable)
	}
	t, ok := c.owned[name]
	if !ok {
		return nil, fmt.Errorf("%w: %q is not owned by %s/%s", transport.ErrUnknownTable, name, c.cfg.Service, c.cfg.Instance)
	}
	return t, nil
}

// Subscribe serves one consumer: a resume or a full transfer, then the
// change stream, heartbeats, and the consumer's acks.
func (s *replicationServer) Subscribe(stream transport.SubscribeServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	if first.Kind != transport.KindOpen {
		return fmt.Errorf("%w: first frame is %s, want open", transport.ErrBadRequest, first.Kind)
	}
	if err := first.Open.Validate(); err != nil {
		return err
	}
	open := first.Open
	mode, err := openMode(open)
	if err != nil {
		return err
	}
	t, err := s.c.ownedTable(open.Table)
	if err != nil {
		return err
	}
	acc, err := s.c.authorize(stream.Context(), callSubscribe, t, open.Service, open.Instance, open.Standby)
	if err != nil {
		return err
	}
	if t.restoring.Load() {
		return t.errRestoring()
	}
	if len(s.c.cfg.Brokers) > 0 && !t.writable.Load() {
		// Only the primary serves: a standby's copy may lag, and a deposed
		// primary's may hold changes the new primary's history does not.
		return t.checkWritable()
	}
	if n, ok := s.c.guard.enter(acc.key, s.c.cfg.MaxCallerSubscriptions); !ok {
		s.c.guard.refusals.add(limitCallerSubscriptions)
		err := fmt.Errorf("%w: subscribe %s: %s has %d subscriptions open on %s/%s, at most %d (Config.MaxCallerSubscriptions)",
			transport.ErrTooLarge, t.name, acc.who, n, s.c.cfg.Service, s.c.cfg.Instance, s.c.cfg.MaxCallerSubscriptions)
		s.c.log.Warn("subscription refused", "err", err)
		return err
	}
	defer s.c.guard.leave(acc.key)
	snd := &sender{
		c:       s.c,
		t:       t,
		stream:  stream,
		open:    open,
		mode:    mode,
		standby: acc.standby,
		log:     s.c.log.With("table", t.name, "consumer", open.Service+"/"+open.Instance),
		rate:    modes.NewRateMeter(rateWindow),
	}
	return snd.run()
}

// openMode is the mode a consumer opens its stream in: Open.Mode parsed
// (Validate lets only "", push and pull through), "" being push.
func openMode(o *transport.Open) (modes.Mode, error) {
	m, err := modes.ParseWire(o.Mode)
	if err != nil {
		return modes.Unset, fmt.Errorf("%w: open: %v", transport.ErrBadRequest, err)
	}
	if m == modes.Unset {
		m = modes.Push
	}
	return m, nil
}

// Get reads keys from an owned table at one seq.
func (s *replicationServer) Get(ctx context.Context, req *transport.GetRequest) (*transport.GetResponse, error) {
	if err := transport.CheckVersion(req.Version); err != nil {
		return nil, err
	}
	t, err := s.readableTable(ctx, callGet, req.Table, req.Service)
	if err != nil {
		return nil, err
	}
	if len(req.Keys) > 10000 {
		return nil, fmt.Errorf("%w: get of %d keys (max 10000)", transport.ErrTooLarge, len(req.Keys))
	}
	out := &transport.GetResponse{Values: make([]transport.Value, len(req.Keys))}
	defer s.c.reads.leave()
	if s.c.reads.enter() != nil {
		return nil, fmt.Errorf("%w: owner is shutting down", transport.ErrUnavailable)
	}
	err = t.rowView(func(txn *badger.Txn, m ownerMeta) error {
		out.Seq, out.LogID = m.Head, m.LogID
		for i, k := range req.Keys {
			val, ok, err := t.getRow(txn, k)
			if err != nil {
				return err
			}
			if !ok {
				continue
			}
			out.Values[i] = transport.Value{Found: true, Value: val}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Digest hashes an owned table at its current seq.
func (s *replicationServer) Digest(ctx context.Context, req *transport.DigestRequest) (*transport.DigestResponse, error) {
	if err := transport.CheckVersion(req.Version); err != nil {
		return nil, err
	}
	t, err := s.readableTable(ctx, callDigest, req.Table, req.Service)
	if err != nil {
		return nil, err
	}
	d, err := t.Digest(req.Start, req.End)
	if err != nil {
		return nil, err
	}
	return &d, nil
}
