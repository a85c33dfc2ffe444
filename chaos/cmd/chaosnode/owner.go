package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/replmesh/replmesh/chaos"
	"github.com/replmesh/replmesh/replica"
	"github.com/replmesh/replmesh/transport"
)

// startOwner opens an owner instance: sync durability, min_sync_standbys 1,
// registered with the brokers, which make it primary or standby.
func (n *node) startOwner(ctx context.Context, listen, data string, brokers []string, service, table string, retention uint64) error {
	cfg := replica.LocalConfig(service, n.name)
	cfg.ListenAddr, cfg.DataDir = listen, data
	cfg.Durability = replica.Sync
	cfg.Brokers, cfg.Owner = brokers, true
	cfg.MinSyncStandbys, cfg.SyncTimeout = 1, 2*time.Second
	// Several of these run at once on a small machine: keep badger small.
	cfg.MemTableSize, cfg.BlockCacheSize = 8<<20, 1<<20
	cfg.MaxGroupBytes, cfg.MaxApplyBytes = 256<<10, 256<<10
	if retention > 0 {
		cfg.Retention.MaxChanges = retention
	}
	cfg.Logger = n.log
	cfg.TLS, cfg.AccessPolicy, cfg.Insecure = n.sec.tls, n.sec.policy, n.sec.insecure
	c, err := replica.Open(ctx, cfg)
	if err != nil {
		return err
	}
	t, err := c.Own(table)
	if err != nil {
		_ = c.Close()
		return err
	}
	n.comp, n.own, n.addr = c, t, c.Addr()
	return nil
}

func (n *node) handleOwner(req *chaos.Request) chaos.Response {
	switch req.Op {
	case chaos.OpWrite:
		return n.write(req.Writes)
	case chaos.OpDigest:
		d, err := n.own.Digest(nil, nil)
		if err != nil {
			return chaos.Response{Err: err.Error()}
		}
		return chaos.Response{Digest: &chaos.Digest{LogID: d.LogID, Seq: d.Seq, Rows: d.Rows, Hash: d.Hash}}
	case chaos.OpDump:
		var rows []chaos.Row
		_, err := n.own.Scan(nil, func(k, v []byte) bool {
			rows = append(rows, chaos.Row{Key: string(k), Value: append([]byte(nil), v...)})
			return true
		})
		if err != nil {
			return chaos.Response{Err: err.Error()}
		}
		return chaos.Response{Rows: rows}
	case chaos.OpRestore:
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		res, err := n.comp.Restore(ctx, n.own.Name(), replica.RestoreOptions{Candidates: req.Restore})
		if err != nil {
			return chaos.Response{Err: err.Error()}
		}
		return chaos.Response{Restore: &chaos.Restored{Source: res.Plan.Source.Source, LogID: res.LogID, Epoch: res.Epoch,
			Seq: res.Seq, NewEpoch: res.NewEpoch, Rows: res.Rows, Positions: res.Plan.Positions}}
	case chaos.OpHistory:
		h, err := n.history()
		if err != nil {
			return chaos.Response{Err: err.Error()}
		}
		return chaos.Response{History: h}
	}
	return chaos.Response{Err: fmt.Sprintf("op %q is not served by an owner", req.Op)}
}

// write commits ws as one group and says what became of it. The outcome is
// final when it returns: the commit itself is waited for without a
// deadline (it ends with an fsync), the standby's confirmation for at most
// SyncTimeout; so a later write of the same key can never overtake it.
func (n *node) write(ws []chaos.WriteOp) chaos.Response {
	writes := make([]replica.Write, len(ws))
	for i, w := range ws {
		writes[i] = replica.Write{Key: []byte(w.Key), Value: w.Value, Delete: w.Delete}
		if !w.Delete && w.Value == nil {
			writes[i].Value = []byte{}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	role0, epoch0 := n.comp.Role()
	p, err := n.own.Submit(ctx, writes...)
	if err != nil {
		// Nothing was queued: not the primary, too few standbys, closed,
		// or the queue stayed full.
		return chaos.Response{Class: chaos.ClassFailed, Err: err.Error()}
	}
	seq, err := p.Wait(context.Background())
	role, epoch := n.comp.Role()
	switch {
	case err == nil:
		// The write committed at epoch0 if this instance was primary at
		// that epoch from before it was submitted until it was
		// acknowledged (0: the role moved meanwhile, the epoch is unknown).
		var at uint64
		if role0 == role && epoch0 == epoch {
			at = epoch
		}
		return chaos.Response{Class: chaos.ClassOK, Seq: seq, Epoch: epoch, CommitEpoch: at}
	case errors.Is(err, replica.ErrClosed):
		// The committer stopped without committing it.
		return chaos.Response{Class: chaos.ClassFailed, Err: err.Error()}
	default:
		// Committed here but not confirmed by a standby (ErrNotReplicated),
		// or the commit failed midway: it may be in the history or not.
		return chaos.Response{Class: chaos.ClassUnknown, Seq: seq, Err: err.Error()}
	}
}

// history reads the table's change log through its own Subscribe stream,
// the way a consumer would: from seq 0 when the log still starts at 1,
// else from the log's first seq, up to the head (as far as the standbys
// have confirmed it: the stream serves no more). Only a primary serves it.
func (n *node) history() (*chaos.History, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	logID := n.own.LogID()
	h, err := n.readLog(ctx, logID, 0, 0)
	if err != nil {
		return nil, err
	}
	if h.Complete {
		return h, nil
	}
	return n.readLog(ctx, logID, h.First-1, h.Epochs.EpochOf(h.First-1))
}

// readLog opens a stream at (logID, from, epoch). When the owner resumes
// it, the changes after from are read until the stream's head; otherwise
// only the start (epoch history, first seq) is returned, with First set.
func (n *node) readLog(ctx context.Context, logID string, from, epoch uint64) (*chaos.History, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// With mTLS the owner reads its own log as itself (its certificate is
	// the only identity it has); in plaintext as an auditor.
	service, instance := "chaos-audit", n.name+"-audit"
	if n.sec.tls != nil {
		service, instance = n.svc, n.name
	}
	conn, err := transport.Dial(n.addr, n.sec.clientOptions(transport.ExpectService(n.svc)))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	stream, st, err := transport.NewReplicationClient(conn).OpenSubscribe(ctx, &transport.Open{
		Version: transport.ProtocolVersion, Service: service, Instance: instance,
		Table: n.own.Name(), LogID: logID, Seq: from, Epoch: epoch,
	})
	if err != nil {
		return nil, err
	}
	defer stream.Close()
	h := &chaos.History{LogID: st.LogID, Epochs: st.Epochs, First: st.FirstSeq, Head: st.HeadSeq}
	if !st.Resume {
		return h, nil
	}
	h.First, h.Complete = from+1, from == 0
	last := from
	for last < st.HeadSeq {
		f, err := stream.Recv()
		if err != nil {
			return nil, fmt.Errorf("history at seq %d of %d: %w", last, st.HeadSeq, err)
		}
		switch f.Kind {
		case transport.KindChanges:
			for _, ch := range f.Changes {
				if ch.Seq != last+1 {
					return nil, fmt.Errorf("history: seq %d after %d", ch.Seq, last)
				}
				last = ch.Seq
				h.Changes = append(h.Changes, chaos.HistoryChange{Seq: ch.Seq, Epoch: ch.Epoch,
					Delete: ch.Op == transport.OpDelete, Key: string(ch.Key), Value: ch.Value, TxnEnd: ch.TxnEnd})
			}
		case transport.KindHeartbeat:
			if f.HeadSeq <= last {
				// The stream serves no more (not yet confirmed by a
				// standby): the history ends here.
				h.Head = last
				return h, nil
			}
		default:
			return nil, fmt.Errorf("history: unexpected %s frame", f.Kind)
		}
	}
	h.Head = last
	return h, nil
}
