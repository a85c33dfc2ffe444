package integration

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/replmesh/replmesh/replica"
	"github.com/replmesh/replmesh/transport"
)

// pad makes rows of 2 KiB: the transfer of the table takes several frames.
var pad = strings.Repeat("m", 2<<10)

// restoreConsumer is one consumer of stores/managers with a data dir, so
// that it can be stopped at a seq and started again on its cursor.
type restoreConsumer struct {
	name string
	dir  string
	c    *replica.Component
	r    *replica.Replica
}

func (rc *restoreConsumer) start(t *testing.T, brokers []string) {
	t.Helper()
	rc.c = component(t, "products", rc.name, rc.dir, "", brokers, false, nil)
	t.Cleanup(func() { _ = rc.c.Close() })
	rc.r = subscribe(t, rc.c)
}

func (rc *restoreConsumer) stop(t *testing.T) {
	t.Helper()
	if err := rc.c.Close(); err != nil {
		t.Fatalf("close %s: %v", rc.name, err)
	}
}

// TestRestore_OwnerFromMostAdvancedReplica: an owner with data and three
// consumers at different seqs — p1 behind, p2 at the head the owner had
// when p2 stopped, p3 holding changes p2 never received (it is down during
// the restore) — loses its disk. It comes back empty (a new history; the
// consumers report the divergence and keep their rows), and is restored
// from the most advanced replica the broker lists, p2. The owner then
// holds every write p2 had, continues p2's history at a new epoch granted
// by the broker, and each consumer converges its own way: p2 resumes, p1
// (behind the restored log) takes a full transfer, p3 (beyond it) is
// truncated and transferred, never resumed. A first attempt, cancelled
// mid-transfer, leaves the owner empty and does not stop the second.
func TestRestore_OwnerFromMostAdvancedReplica(t *testing.T) {
	bs := startBrokers(t, 1)
	brokers := grpcAddrs(bs...)
	ctx := ctxT(t, 120*time.Second)
	owner := component(t, "stores", "s1", t.TempDir(), "", brokers, true, nil)
	t.Cleanup(func() { _ = owner.Close() })
	waitRole(t, owner, "primary")
	tbl := own(t, owner, "managers")
	// acked holds every acknowledged write by seq: key and value.
	type write struct{ key, value string }
	acked := map[uint64]write{}
	writeN := func(tbl *replica.OwnedTable, from, n int, tag string) uint64 {
		t.Helper()
		var seq uint64
		for i := from; i < from+n; i++ {
			k, v := fmt.Sprintf("store%03d", i%70), fmt.Sprintf("manager-%s-%d-%s", tag, i, pad)
			seq = putOne(t, tbl, []byte(k), []byte(v))
			acked[seq] = write{k, v}
		}
		return seq
	}
	cons := make([]*restoreConsumer, 3)
	for i := range cons {
		cons[i] = &restoreConsumer{name: fmt.Sprintf("p%d", i+1), dir: t.TempDir()}
		cons[i].start(t, brokers)
	}
	p1, p2, p3 := cons[0], cons[1], cons[2]
	writeN(tbl, 0, 50, "a")
	for _, rc := range cons {
		converge(t, tbl, rc.r)
	}
	p1.stop(t) // p1 stays at 50
	writeN(tbl, 50, 50, "b")
	converge(t, tbl, p2.r)
	converge(t, tbl, p3.r)
	p2.stop(t) // p2 stays at 100
	head := writeN(tbl, 100, 20, "c")
	converge(t, tbl, p3.r)
	p3.stop(t) // p3 holds 101..120, which p2 never received
	oldLog := tbl.LogID()
	_, oldEpoch := owner.Role()
	if head != 120 {
		t.Fatalf("owner head %d, want 120", head)
	}

	// The owner loses its disk and comes back empty: a new history.
	if err := owner.Close(); err != nil {
		t.Fatal(err)
	}
	owner = component(t, "stores", "s1", t.TempDir(), "", brokers, true, nil)
	t.Cleanup(func() { _ = owner.Close() })
	waitRole(t, owner, "primary")
	tbl = own(t, owner, "managers")
	if tbl.LogID() == oldLog || tbl.Head() != 0 {
		t.Fatalf("owner after the disk loss: log %s head %d", tbl.LogID(), tbl.Head())
	}
	p1.start(t, brokers)
	p2.start(t, brokers)
	for _, rc := range []*restoreConsumer{p1, p2} {
		waitUntil(t, 30*time.Second, rc.name+" reports the divergence", func() bool {
			return rc.r.Status().State == replica.StateDiverged
		})
	}
	p2Digest, err := p2.r.Digest(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p2Digest.Seq != 100 || p2Digest.LogID != oldLog {
		t.Fatalf("p2 holds log %s seq %d, want %s at 100", p2Digest.LogID, p2Digest.Seq, oldLog)
	}
	// The broker's Status lists each subscription's history and position
	// (what replctl lists), and the owner finds the candidates through it.
	waitUntil(t, 30*time.Second, "the broker's Status shows p2's log id, epoch and seq", func() bool {
		st, err := bs[0].Status(ctx, &transport.StatusRequest{Version: transport.ProtocolVersion})
		if err != nil {
			t.Fatal(err)
		}
		for _, in := range st.Instances {
			for _, s := range in.Subscriptions {
				if in.Instance == "p2" && s.Table == "managers" && s.LogID == oldLog && s.Epoch == oldEpoch && s.Seq == 100 {
					return true
				}
			}
		}
		return false
	})
	waitUntil(t, 30*time.Second, "the owner's plan lists p1 and p2 with their positions", func() bool {
		ps, err := owner.PlanRestore(ctx, "managers", replica.RestoreOptions{})
		if err != nil {
			return false
		}
		found := 0
		for _, p := range ps.Positions {
			if p.Err == "" && p.LogID == oldLog && (p.Source.Instance == "p1" && p.Seq == 50 || p.Source.Instance == "p2" && p.Seq == 100) {
				found++
			}
		}
		return found == 2 && ps.Source.Source.Instance == "p2"
	})

	// A first attempt, cancelled mid-transfer, leaves the owner empty.
	cctx, cancel := context.WithCancel(ctx)
	_, err = owner.Restore(cctx, "managers", replica.RestoreOptions{
		ProgressEvery: time.Nanosecond,
		Progress: func(p replica.RestoreProgress) {
			if p.Phase == transport.RestorePhaseTransfer {
				cancel()
			}
		},
	})
	cancel()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled restore: %v", err)
	}
	if tbl.Head() != 0 || tbl.LogID() == oldLog {
		t.Fatalf("owner after the cancelled restore: head %d log %s, want empty", tbl.Head(), tbl.LogID())
	}

	// The restore: writes are refused while it runs.
	var during error
	res, err := owner.Restore(ctx, "managers", replica.RestoreOptions{
		Progress: func(p replica.RestoreProgress) {
			if p.Phase == transport.RestorePhasePlan {
				_, during = tbl.Put(ctx, []byte("store999"), []byte("during"))
			}
		},
	})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	if !errors.Is(during, replica.ErrRestoring) {
		t.Errorf("a write during the restore: %v, want ErrRestoring", during)
	}
	if res.Plan.Source.Source.Instance != "p2" || res.LogID != oldLog || res.Seq != 100 || res.NewEpoch <= oldEpoch {
		t.Fatalf("restore result %+v: want p2's log %s at 100 and an epoch above %d", res, oldLog, oldEpoch)
	}
	waitUntil(t, 30*time.Second, "the owner primary at the new epoch", func() bool {
		role, epoch := owner.Role()
		return role == "primary" && epoch == res.NewEpoch
	})
	got, err := tbl.Digest(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got.LogID != oldLog || got.Seq != 100 || string(got.Hash) != string(p2Digest.Hash) {
		t.Fatalf("owner after the restore: log %s seq %d hash %x; p2 had log %s seq 100 hash %x", got.LogID, got.Seq, got.Hash, oldLog, p2Digest.Hash)
	}
	// Every acknowledged write p2 had is present (the newest per key).
	latest := map[string]string{}
	for seq := uint64(1); seq <= 100; seq++ {
		latest[acked[seq].key] = acked[seq].value
	}
	for k, v := range latest {
		val, found, err := tbl.Get([]byte(k))
		if err != nil || !found || string(val) != v {
			t.Fatalf("owner row %s = %q (found %v, %v), want %q", k, val, found, err, v)
		}
	}

	// The history goes on at the new epoch; the consumers converge.
	if seq := writeN(tbl, 200, 30, "d"); seq != 130 {
		t.Fatalf("the writes after the restore end at seq %d, want 130", seq)
	}
	p3.start(t, brokers)
	for _, rc := range cons {
		converge(t, tbl, rc.r)
	}
	outcomes := []struct {
		rc                              *restoreConsumer
		transfers, truncations, resumes bool
	}{
		{p1, true, false, false}, // behind the restored log: a full transfer
		{p2, false, false, true}, // at the restored seq: a resume
		{p3, true, true, false},  // beyond it: truncated, transferred
	}
	for _, o := range outcomes {
		st := o.rc.r.Status().Stats
		if (st.FullTransfers == 1) != o.transfers || (st.Truncations == 1) != o.truncations || (st.Resumes > 0) != o.resumes ||
			st.FullTransfers > 1 || st.Truncations > 1 {
			t.Errorf("%s: %d full transfers, %d truncations, %d resumes; want transfer %v, truncation %v, resume %v",
				o.rc.name, st.FullTransfers, st.Truncations, st.Resumes, o.transfers, o.truncations, o.resumes)
		}
	}
}

// TestRestore_AutoRestore: an owner instance started on an empty data dir
// with Config.AutoRestore restores its table from the most advanced
// replica the broker lists; writes wait for it (ErrRestoring). With no
// replica to restore from, the table starts empty after AutoRestoreWait.
func TestRestore_AutoRestore(t *testing.T) {
	brokers := grpcAddrs(startBrokers(t, 1)...)
	ctx := ctxT(t, 120*time.Second)
	auto := func(wait time.Duration) func(*replica.Config) {
		return func(c *replica.Config) { c.AutoRestore, c.AutoRestoreWait = true, wait }
	}

	t.Run("nothing to restore from: the table starts empty", func(t *testing.T) {
		owner := component(t, "lonely", "l1", t.TempDir(), "", brokers, true, auto(300*time.Millisecond))
		defer func() { _ = owner.Close() }()
		tbl := own(t, owner, "managers")
		if _, err := tbl.Put(ctx, []byte("k"), []byte("v")); !errors.Is(err, replica.ErrRestoring) {
			t.Fatalf("a write while the automatic restore looks for a source: %v, want ErrRestoring", err)
		}
		waitUntil(t, 30*time.Second, "the table takes writes", func() bool {
			_, err := tbl.Put(ctx, []byte("k"), []byte("v"))
			return err == nil
		})
	})

	t.Run("restored from the most advanced replica", func(t *testing.T) {
		owner := component(t, "stores", "s1", t.TempDir(), "", brokers, true, nil)
		t.Cleanup(func() { _ = owner.Close() })
		waitRole(t, owner, "primary")
		tbl := own(t, owner, "managers")
		put(t, tbl, 40, "a")
		behind := &restoreConsumer{name: "p1", dir: t.TempDir()}
		ahead := &restoreConsumer{name: "p2", dir: t.TempDir()}
		behind.start(t, brokers)
		ahead.start(t, brokers)
		converge(t, tbl, behind.r)
		behind.stop(t)
		head := put(t, tbl, 60, "b")
		converge(t, tbl, ahead.r)
		want, err := ahead.r.Digest(nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		behind.start(t, brokers)
		if err := owner.Close(); err != nil {
			t.Fatal(err)
		}
		owner = component(t, "stores", "s1", t.TempDir(), "", brokers, true, auto(30*time.Second))
		t.Cleanup(func() { _ = owner.Close() })
		tbl = own(t, owner, "managers")
		if _, err := tbl.Put(ctx, []byte("early"), []byte("write")); !errors.Is(err, replica.ErrRestoring) {
			t.Fatalf("a write before the automatic restore: %v, want ErrRestoring", err)
		}
		waitUntil(t, 60*time.Second, "the automatic restore", func() bool {
			_, err := tbl.Put(ctx, []byte("after"), []byte("restore"))
			return err == nil
		})
		if tbl.LogID() != want.LogID || tbl.Head() != head+1 {
			t.Fatalf("owner after the automatic restore: log %s head %d; want log %s head %d", tbl.LogID(), tbl.Head(), want.LogID, head+1)
		}
		converge(t, tbl, ahead.r)
		converge(t, tbl, behind.r)
	})
}
