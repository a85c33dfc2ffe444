package replica

import (
	"context"
	"fmt"
	"time"

	"github.com/replmesh/replmesh/transport"
	"google.golang.org/grpc"
)

// The restore service as the component serves it (transport/restore.go):
// Position and Source as a possible source of a restore (a consumer's
// replica), Restore as an owner (the admin's call). Registered on the
// replication listener beside the replication service.
type restoreServer struct{ c *Component }

// Calls of the restore service, the labels of the denials metric.
const (
	callPosition = "restore_position"
	callSource   = "restore_source"
	callRestore  = "restore"
)

// replicaOf returns this component's replica of service/table.
func (c *Component) replicaOf(service, table string) (*Replica, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, fmt.Errorf("%w: component is closing", transport.ErrUnavailable)
	}
	r, ok := c.replicas[service+"/"+table]
	if !ok {
		return nil, fmt.Errorf("%w: %s/%s holds no replica of %s/%s", transport.ErrUnknownTable, c.cfg.Service, c.cfg.Instance, service, table)
	}
	return r, nil
}

// authorizeSource checks a restore-service call on this component's
// replica of a table of service. With Config.TLS the caller must be an
// instance of that service (its owner; as instance when one is named),
// or for Position also an admin or operator (replctl lists positions).
// Without, the request's names are taken as they are.
func (c *Component) authorizeSource(ctx context.Context, call, service, instance string) error {
	if c.cfg.TLS == nil {
		return nil
	}
	id, err := transport.IdentityFromContext(ctx)
	if err != nil {
		return c.deny(call, fmt.Errorf("%s: %w", call, err))
	}
	switch {
	case id.Role == transport.RoleService && id.Service == service && (instance == "" || id.Instance == instance):
		return nil
	case call == callPosition && (id.Role == transport.RoleAdmin || id.Role == transport.RoleOperator):
		return nil
	}
	return c.deny(call, fmt.Errorf("%w: %s of a replica of %s: only an instance of %s may (the caller is %s, naming %s/%s)",
		transport.ErrPermission, call, service, service, id, service, instance))
}

// Position answers where this component's replica stands.
func (s *restoreServer) Position(ctx context.Context, req *transport.PositionRequest) (*transport.PositionResponse, error) {
	if err := req.Validate(); err != nil {
		return nil, err
	}
	if err := s.c.authorizeSource(ctx, callPosition, req.Service, ""); err != nil {
		return nil, err
	}
	r, err := s.c.replicaOf(req.Service, req.Table)
	if err != nil {
		return nil, err
	}
	st := r.Status()
	return &transport.PositionResponse{Service: s.c.cfg.Service, Instance: s.c.cfg.Instance,
		LogID: st.LogID, Epoch: st.Epoch, Seq: st.Seq, State: st.State.String()}, nil
}

// Source sends this component's replica to its owner as a full state
// transfer: the rows of the replica's current generation from one read
// transaction holding the cursor, so exactly the rows at the cursor's seq
// (a consistent snapshot, while the replica goes on applying). The frames
// are an owner's: start (the replica's history as far as it knows it: log
// id, the epoch of its newest change, its seq), snapshot-begin with the row
// count, rows, snapshot-end; then the stream ends.
func (s *restoreServer) Source(req *transport.SourceRequest, stream grpc.ServerStreamingServer[transport.OwnerFrame]) error {
	if err := req.Validate(); err != nil {
		return err
	}
	ctx := stream.Context()
	if err := s.c.authorizeSource(ctx, callSource, req.Service, req.Instance); err != nil {
		return err
	}
	r, err := s.c.replicaOf(req.Service, req.Table)
	if err != nil {
		return err
	}
	defer s.c.reads.leave()
	if s.c.reads.enter() != nil {
		return fmt.Errorf("%w: component is shutting down", transport.ErrUnavailable)
	}
	snap, err := r.restoreSnapshot()
	if err != nil {
		return fmt.Errorf("restore source %s/%s: %w", req.Service, req.Table, err)
	}
	defer snap.release()
	cur := snap.cur
	if cur.LogID == "" || cur.Seq == 0 {
		return fmt.Errorf("%w: restore source: the replica of %s/%s on %s/%s holds no complete copy",
			transport.ErrUnavailable, req.Service, req.Table, s.c.cfg.Service, s.c.cfg.Instance)
	}
	if req.LogID != "" && req.LogID != cur.LogID {
		return fmt.Errorf("%w: restore source: the replica of %s/%s holds log %s, the owner asked for %s",
			transport.ErrRestoreRefused, req.Service, req.Table, cur.LogID, req.LogID)
	}
	log := s.c.log.With("restore_of", req.Service+"/"+req.Table, "owner", req.Service+"/"+req.Instance)
	start := time.Now()
	if err := stream.Send(&transport.OwnerFrame{Kind: transport.KindStart, HeadSeq: cur.Seq, Start: &transport.Start{
		Version: transport.ProtocolVersion, LogID: cur.LogID, Epoch: cur.Epoch, HeadSeq: cur.Seq, FirstSeq: cur.Seq + 1,
		Epochs: transport.EpochHistory{{Epoch: cur.Epoch, Seq: cur.Seq}},
	}}); err != nil {
		return err
	}
	count, err := snap.count(ctx, start.Add(s.c.cfg.PeerTimeout/2), log)
	if err != nil {
		return fmt.Errorf("restore source: count rows: %w", err)
	}
	if err := stream.Send(&transport.OwnerFrame{Kind: transport.KindSnapshotBegin, Seq: cur.Seq, HeadSeq: cur.Seq, Epoch: cur.Epoch, Count: count}); err != nil {
		return err
	}
	total, nbytes, err := sendRows(ctx, snap.walk, frameBudget(s.c.cfg.Transport), func(v []byte) ([]byte, error) { return v, nil }, stream.Send)
	if err != nil {
		return fmt.Errorf("restore source %s/%s: %w", req.Service, req.Table, err)
	}
	if err := stream.Send(&transport.OwnerFrame{Kind: transport.KindSnapshotEnd, Seq: cur.Seq, HeadSeq: cur.Seq, Epoch: cur.Epoch, Count: uint64(total)}); err != nil {
		return err
	}
	log.Info("restore source sent", "log_id", cur.LogID, "seq", cur.Seq, "rows", total, "bytes", nbytes, "took", time.Since(start))
	return nil
}

// Restore runs (or, with DryRun, plans) a restore of an owned table for an
// admin, streaming its status. The restore lives as long as the call:
// a caller that goes away cancels it (the table is left empty).
func (s *restoreServer) Restore(req *transport.RestoreRequest, stream grpc.ServerStreamingServer[transport.RestoreStatus]) error {
	if err := req.Validate(); err != nil {
		return err
	}
	ctx := stream.Context()
	if s.c.cfg.TLS != nil {
		id, err := transport.IdentityFromContext(ctx)
		if err != nil {
			return s.c.deny(callRestore, fmt.Errorf("%s %s: %w", callRestore, req.Table, err))
		}
		if id.Role != transport.RoleAdmin {
			return s.c.deny(callRestore, fmt.Errorf("%w: restore %s: only an admin may start a restore, the caller is %s",
				transport.ErrPermission, req.Table, id))
		}
	}
	opts := RestoreOptions{Source: req.Source, Candidates: req.Candidates, LogID: req.LogID}
	if req.Watch {
		return s.watch(req.Table, stream)
	}
	if req.DryRun {
		plan, err := s.c.PlanRestore(ctx, req.Table, opts)
		if serr := stream.Send(statusFrame(RestoreProgress{Table: req.Table, Phase: transport.RestorePhasePlan, Plan: plan})); serr != nil {
			return serr
		}
		return err
	}
	opts.Progress = func(p RestoreProgress) { _ = stream.Send(statusFrame(p)) }
	_, err := s.c.Restore(ctx, req.Table, opts)
	return err
}

// watchEvery is how often a watch of a restore looks for a newer report.
const watchEvery = 100 * time.Millisecond

// watch sends the table's newest restore report whenever it changes,
// until the restore is over (done or failed), or at once when none ran.
func (s *restoreServer) watch(table string, stream grpc.ServerStreamingServer[transport.RestoreStatus]) error {
	t, err := s.c.ownedTable(table)
	if err != nil {
		return err
	}
	tk := time.NewTicker(watchEvery)
	defer tk.Stop()
	var sent *RestoreProgress
	for {
		p := t.lastRestore.Load()
		if p == nil {
			return stream.Send(&transport.RestoreStatus{Phase: transport.RestorePhaseNone, Table: table})
		}
		if p != sent {
			if err := stream.Send(statusFrame(*p)); err != nil {
				return err
			}
			sent = p
		}
		if !t.restoring.Load() && (p.Phase == transport.RestorePhaseDone || p.Phase == transport.RestorePhaseFailed) {
			return nil
		}
		select {
		case <-tk.C:
		case <-stream.Context().Done():
			return stream.Context().Err()
		case <-s.c.done():
			return fmt.Errorf("%w: component is closing", transport.ErrUnavailable)
		}
	}
}

// statusFrame is the wire form of a progress report.
func statusFrame(p RestoreProgress) *transport.RestoreStatus {
	f := &transport.RestoreStatus{Phase: p.Phase, Table: p.Table, Source: p.Plan.Source.Source,
		ExpectedLogID: p.Plan.ExpectedLogID, OwnerLogID: p.Plan.OwnerLogID, OwnerEpoch: p.Plan.OwnerEpoch, OwnerHead: p.Plan.OwnerHead,
		LogID: p.Plan.Source.LogID, Epoch: p.Plan.Source.Epoch, Seq: p.Plan.Source.Seq, NewEpoch: p.NewEpoch}
	if p.Phase == transport.RestorePhasePlan {
		f.Positions = p.Plan.Positions
	}
	x := p.Transfer
	f.Rows, f.Expected, f.Bytes, f.Rate = x.Rows, x.ExpectedRows, x.Bytes, x.Rate
	f.EtaMs, f.ElapsedMs = x.ETA.Milliseconds(), x.Elapsed.Milliseconds()
	if x.Seq != 0 {
		f.Seq = x.Seq
	}
	if p.Err != nil {
		f.Err = p.Err.Error()
	}
	return f
}

// replicaSnapshot is one consistent state of a replica to send: its
// cursor and its rows at it, from the resident view (nothing to release)
// or from one read transaction of its generation on disk (DiskOnly).
type replicaSnapshot struct {
	cur     cursor
	walk    rowWalk
	count   func(ctx context.Context, deadline time.Time, log interface{ Info(string, ...any) }) (uint64, error)
	release func()
}

// restoreSnapshot returns the replica's current state for a restore
// source: a resident replica's published view (an in-memory replica has
// nothing else), else a read transaction holding the cursor.
func (r *Replica) restoreSnapshot() (replicaSnapshot, error) {
	if r.res != nil {
		v := r.res.view.Load()
		n := uint64(v.rows.Len())
		return replicaSnapshot{cur: v.cur, walk: v.walk, release: func() {},
			count: func(context.Context, time.Time, interface{ Info(string, ...any) }) (uint64, error) { return n, nil }}, nil
	}
	v, cur, err := r.diskSnapshot()
	if err != nil {
		return replicaSnapshot{}, err
	}
	walk := txnRows(v.txn, v.prefix)
	if v.file != nil { // a disk-only replica's bulk generation: file and overlay
		walk = func(fn func(k, val []byte) (bool, error)) error { return v.scan(nil, nil, nil, fn) }
	}
	return replicaSnapshot{cur: cur, walk: walk, release: v.release, count: v.count}, nil
}
