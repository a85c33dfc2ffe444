package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/replmesh/replmesh/replica"
	"github.com/replmesh/replmesh/transport"
)

// runRestore: the full state transfer in both directions in one run, on
// one table of -rows rows. An owner on disk is loaded; a durable consumer
// with a listener takes the full transfer (Subscribe to Ready: owner to
// consumer); the owner then loses its disk (a new, empty data dir) and is
// restored from that consumer's replica (Component.Restore: consumer to
// owner, the rows into a fresh generation, then the switch). The figures
// are both directions' rows/s and their ratio; the restored table must
// equal the replica (Digest). Both sides run in this process: the
// comparison is the point, not the consumer's memory (see transfer).
func (b *bench) runRestore(ctx context.Context) (err error) {
	rows := b.opts.rows
	rig, err := b.newOwnerRig(ctx, "restore", rows)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, rig.close()) }()
	dir, owner, head := rig.dir, rig.owner, rig.head
	cons, err := b.openConsumer(ctx, "restore-source", filepath.Join(dir, "consumer"), func(c *replica.Config) { c.ListenAddr = "127.0.0.1:0" })
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, closeAll(cons)) }()
	b.progress("restore: full transfer of %d rows owner -> consumer", rows)
	xctx, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	began := time.Now()
	rep, err := subscribe(xctx, cons, owner.Addr())
	if err != nil {
		return err
	}
	if err := rep.WaitFor(xctx, head); err != nil {
		return fmt.Errorf("consumer: %w", err)
	}
	transferTook := time.Since(began)
	want, err := rep.Digest(nil, nil)
	if err != nil {
		return err
	}
	if want.Rows != uint64(rows) || want.Seq != head {
		return fmt.Errorf("consumer holds %d rows at seq %d, want %d at %d", want.Rows, want.Seq, rows, head)
	}

	// The owner loses its disk: the same service and instance on an empty
	// data dir, restored from the consumer's replica.
	if err := owner.Close(); err != nil {
		return err
	}
	owner, tbl, err := b.openOwner(ctx, filepath.Join(dir, "owner-new"), "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, closeAll(owner)) }()
	b.progress("restore: owner restored from the consumer's replica (%d rows)", rows)
	res, err := owner.Restore(xctx, tableName, replica.RestoreOptions{
		Source: transport.RestoreSource{Service: consumerService, Addr: cons.Addr()},
	})
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	got, err := tbl.Digest(nil, nil)
	if err != nil {
		return err
	}
	if res.Rows != uint64(rows) || got.Seq != want.Seq || got.Rows != want.Rows || !bytes.Equal(got.Hash, want.Hash) || got.LogID != want.LogID {
		return fmt.Errorf("restored %d rows: the owner's table is %d rows at seq %d (log %s), the replica's %d at %d (log %s), hashes equal %v",
			res.Rows, got.Rows, got.Seq, got.LogID, want.Rows, want.Seq, want.LogID, bytes.Equal(got.Hash, want.Hash))
	}
	restoreRate := float64(res.Rows) / res.Took.Seconds()
	transferRate := float64(rows) / transferTook.Seconds()
	b.add(result{
		Workload: "restore", Figure: "rows/s, replica -> empty owner", Value: restoreRate, Unit: unitRowsPerSec,
		Notes: fmt.Sprintf("%d rows (%.1f MB) in %.2f s, Restore call to writable (rows alone %.2f s); the owner's Digest equals the replica's",
			res.Rows, float64(res.Bytes)/1e6, res.Took.Seconds(), res.Transfer.Seconds()),
	})
	b.add(result{
		Workload: "restore", Figure: "rows/s, owner -> new replica (same run)", Value: transferRate, Unit: unitRowsPerSec,
		Notes: fmt.Sprintf("%d rows in %.2f s, Subscribe to caught up, the consumer in this process", rows, transferTook.Seconds()),
	})
	b.add(result{
		Workload: "restore", Figure: "restore/transfer rows/s", Value: restoreRate / transferRate, Unit: unitRatio,
		Notes: "the restore's rate over the forward transfer's, same table, same run",
	})
	return nil
}
