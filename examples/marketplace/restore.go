package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"github.com/replmesh/replmesh/examples/marketplace/stores"
	"github.com/replmesh/replmesh/replica"
	"github.com/replmesh/replmesh/transport"
)

// step6: stores loses its disk with no standby running. Both instances are
// stopped and their data directories removed; one comes back empty (a new,
// empty history). products goes on deciding from its replica, which keeps
// every row and reports the divergence instead of following the empty
// history. An operator (an admin certificate, as replctl restore uses)
// restores each table of stores from products' replica over the Restore
// RPC; every manager row is back (the tables' digests equal the ones
// before the loss), products resumes without a full transfer, the other
// instance starts empty as a standby and copies the restored primary, and
// a new manager is allowed.
func (d *demo) step6(ctx context.Context) error {
	tables := []string{stores.TableStores, stores.TableManagers}
	before := map[string]transport.DigestResponse{}
	for _, name := range tables {
		tb := d.ownedTable(d.primary, name)
		dg, err := tb.Digest(nil, nil)
		if err != nil {
			return err
		}
		if err := d.products.WaitFor(ctx, stores.Commit{Table: name, Seq: dg.Seq}); err != nil {
			return fmt.Errorf("products: wait for %s@%d: %w", name, dg.Seq, err)
		}
		before[name] = dg
	}
	managers, err := d.primary.Managers("S1")
	if err != nil {
		return err
	}
	slices.Sort(managers)
	d.printf("  stores:   %s holds %d rows of %s (seq %d) and %d of %s (seq %d); managers of S1: %v\n", d.primary.Instance(),
		before[stores.TableStores].Rows, stores.TableStores, before[stores.TableStores].Seq,
		before[stores.TableManagers].Rows, stores.TableManagers, before[stores.TableManagers].Seq, managers)

	// The disk is lost, and no standby runs: both instances stop and
	// their data directories go.
	primary := d.primary.Instance()
	for _, s := range []*stores.Service{d.standby, d.primary} {
		if err := s.Close(); err != nil {
			return fmt.Errorf("close %s: %w", s.Instance(), err)
		}
		if err := os.RemoveAll(filepath.Join(d.dir, s.Instance())); err != nil {
			return err
		}
	}
	d.primary, d.standby = nil, nil
	d.printf("  stores:   %s and %s stopped, their data directories removed (no standby left)\n", stores1, stores2)
	if d.primary, err = d.openStores(ctx, primary); err != nil {
		return fmt.Errorf("restart %s: %w", primary, err)
	}
	_, epoch, err := waitRole(ctx, d.primary, transport.RolePrimary, 0)
	if err != nil {
		return err
	}
	empty := d.ownedTable(d.primary, stores.TableManagers)
	d.printf("  stores:   %s restarted on an empty data dir: primary (epoch %d), %s empty (log %s, head %d)\n",
		primary, epoch, stores.TableManagers, empty.LogID(), empty.Head())
	st, err := d.waitState(ctx, replica.StateDiverged)
	if err != nil {
		return err
	}
	d.printf("  products: replica %s/%s state=%s (kept its %d seqs of log %s, did not follow the empty history)\n",
		st.Service, st.Table, st.State, st.Seq, st.LogID)
	if st.LogID != before[stores.TableManagers].LogID || st.Seq != before[stores.TableManagers].Seq {
		return fmt.Errorf("products' replica holds log %s at %d, want %s at %d", st.LogID, st.Seq, before[stores.TableManagers].LogID, before[stores.TableManagers].Seq)
	}
	if err := d.expect(ctx, "carol", "wall lamp", true); err != nil {
		return err
	}
	if err := d.expect(ctx, "bob", "wall clock", false); err != nil {
		return err
	}

	// The operator restores each table from the most advanced replica.
	for _, name := range tables {
		if err := d.restore(ctx, name); err != nil {
			return err
		}
	}
	for _, name := range tables {
		got, err := d.ownedTable(d.primary, name).Digest(nil, nil)
		if err != nil {
			return err
		}
		want := before[name]
		if got.LogID != want.LogID || got.Seq != want.Seq || got.Rows != want.Rows || !bytes.Equal(got.Hash, want.Hash) {
			return fmt.Errorf("%s after the restore: log %s seq %d %d rows hash %x; before the loss: log %s seq %d %d rows hash %x",
				name, got.LogID, got.Seq, got.Rows, got.Hash, want.LogID, want.Seq, want.Rows, want.Hash)
		}
	}
	back, err := d.primary.Managers("S1")
	if err != nil {
		return err
	}
	slices.Sort(back)
	if !slices.Equal(back, managers) {
		return fmt.Errorf("managers of S1 after the restore: %v, before the loss: %v", back, managers)
	}
	d.printf("  stores:   every row is back (digests equal to those before the loss); managers of S1: %v\n", back)

	// The history goes on: the other instance starts empty and copies the
	// restored primary as a standby, products resumes, a new manager
	// reaches it.
	other := stores1
	if primary == stores1 {
		other = stores2
	}
	if d.standby, err = d.openStores(ctx, other); err != nil {
		return fmt.Errorf("start %s: %w", other, err)
	}
	_, epoch = d.primary.Component().Role()
	if _, _, err := waitRole(ctx, d.standby, transport.RoleStandby, epoch); err != nil {
		return err
	}
	d.printf("  stores:   %s started on an empty data dir: standby (epoch %d), copies the restored primary\n", other, epoch)
	if _, err := d.write(ctx, "add manager dave", func(ctx context.Context) (stores.Commit, error) {
		return d.primary.AddManager(ctx, "S1", "dave")
	}); err != nil {
		return err
	}
	after, err := d.waitState(ctx, replica.StateStreaming)
	if err != nil {
		return err
	}
	d.printf("  products: replica %s/%s state=%s seq=%d epoch=%d; full transfers %d, truncations %d\n",
		after.Service, after.Table, after.State, after.Seq, after.Epoch, after.Stats.FullTransfers, after.Stats.Truncations)
	if after.Stats.FullTransfers != 1 || after.Stats.Truncations != 0 {
		return fmt.Errorf("store_managers replica made %d full transfers (%d truncations), want 1: at the restored seq it resumes",
			after.Stats.FullTransfers, after.Stats.Truncations)
	}
	if err := d.expect(ctx, "dave", "lamp post", true); err != nil {
		return err
	}
	return d.expect(ctx, "bob", "lamp oil", false)
}

// ownedTable returns s's table name (the stores service owns both).
func (d *demo) ownedTable(s *stores.Service, name string) *replica.OwnedTable {
	for _, t := range s.Tables() {
		if t.Name() == name {
			return t
		}
	}
	panic("stores owns no table " + name) // the service's constant tables
}

// restore is what an operator does with replctl restore -yes: as an admin,
// list the consumers of stores/table from the broker's status, and ask the
// primary to restore the table from the most advanced of them, following
// its progress until it takes writes again.
func (d *demo) restore(ctx context.Context, table string) error {
	src, err := d.tlsSource(transport.Identity{Role: transport.RoleAdmin, Name: "operator"})
	if err != nil {
		return err
	}
	opts := transport.Options{TLS: src.ClientConfig(nil)}
	bc, err := transport.Dial(d.broker.GRPCAddr(), opts)
	if err != nil {
		return err
	}
	defer bc.Close()
	st, err := transport.NewBrokerClient(bc).Status(ctx, &transport.StatusRequest{Version: transport.ProtocolVersion})
	if err != nil {
		return fmt.Errorf("broker status: %w", err)
	}
	var cands []transport.RestoreSource
	for _, in := range st.Instances {
		for _, s := range in.Subscriptions {
			if in.Addr != "" && s.Service == stores.ServiceName && s.Table == table {
				cands = append(cands, transport.RestoreSource{Service: in.Service, Instance: in.Instance, Addr: in.Addr})
			}
		}
	}
	oc, err := transport.Dial(d.primary.Addr(), opts)
	if err != nil {
		return err
	}
	defer oc.Close()
	stream, err := transport.NewRestoreClient(oc).Restore(ctx, &transport.RestoreRequest{Version: transport.ProtocolVersion, Table: table, Candidates: cands})
	if err != nil {
		return fmt.Errorf("restore %s: %w", table, err)
	}
	var last *transport.RestoreStatus
	for {
		f, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("restore %s: %w", table, err)
		}
		last = f
		if f.Phase == transport.RestorePhasePlan {
			d.printf("  operator: restore %s/%s from %s (log %s, seq %d; %d candidate(s) asked)\n", stores.ServiceName, table, f.Source, f.LogID, f.Seq, len(f.Positions))
		}
	}
	if last == nil || last.Phase != transport.RestorePhaseDone {
		return fmt.Errorf("restore %s: the call ended before the table took writes again", table)
	}
	d.printf("  operator: %s restored: %d rows in %dms; writes again at epoch %d from seq %d\n", table, last.Rows, last.ElapsedMs, last.NewEpoch, last.Seq+1)
	return nil
}
