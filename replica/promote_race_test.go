package replica

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/replmesh/replmesh/transport"
)

// TestOwnedTable_PromoteWhileWriting: a table that is already primary is
// promoted again with a higher epoch (a restarted broker re-grants the
// lease) while writes are committed. Each promotion must wait for the group
// in flight: the log stays contiguous, every change carries the epoch the
// table's epoch history gives its seq, and a replica fed from the log ends
// equal to the owner. (Promoting in the broker session's goroutine rewound
// the committer's seq counter under a group in flight: two changes got the
// same seq, and replicas diverged from the owner at equal seqs.)
func TestOwnedTable_PromoteWhileWriting(t *testing.T) {
	owner := openComponent(t, "stores", "s1", t.TempDir(), "127.0.0.1:0")
	defer mustClose(t, owner)
	tbl, err := owner.Own("items")
	if err != nil {
		t.Fatal(err)
	}
	cons := openComponent(t, "products", "p1", "", "")
	defer mustClose(t, cons)
	r, err := cons.Subscribe(ctxT(t, 30*time.Second), SubscribeOptions{Service: "stores", Table: "items", Addr: owner.Addr()})
	if err != nil {
		t.Fatal(err)
	}

	// Each write is waited for to its end (no deadline), so none is still
	// committing once the writers are stopped.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				k := fmt.Appendf(nil, "w%d-%05d", w, n)
				if _, err := tbl.Apply(context.Background(), Write{Key: k, Value: k}, Write{Key: fmt.Appendf(k, "-b"), Value: k}); err != nil {
					t.Errorf("write: %v", err)
					return
				}
			}
		}()
	}
	tbl.mu.Lock()
	epoch := tbl.meta.Epoch
	tbl.mu.Unlock()
	for range 40 {
		epoch++
		if err := tbl.promote(epoch); err != nil {
			t.Fatal(err)
		}
		head := tbl.Head()
		waitUntil(t, 30*time.Second, "a commit after the promotion", func() bool { return tbl.Head() > head })
	}
	close(stop)
	wg.Wait()

	// The log: contiguous from 1, each change with its epoch.
	tbl.mu.Lock()
	m := tbl.meta
	tbl.mu.Unlock()
	var prev uint64
	for from := uint64(1); from <= m.Head; {
		chs, err := tbl.readChanges(from, 1024, 1<<20, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, ch := range chs {
			if ch.Seq != prev+1 {
				t.Fatalf("log has seq %d after %d", ch.Seq, prev)
			}
			if want := m.Epochs.EpochOf(ch.Seq); ch.Epoch != want {
				t.Fatalf("seq %d has epoch %d, the epoch history says %d", ch.Seq, ch.Epoch, want)
			}
			prev = ch.Seq
		}
		from = prev + 1
	}
	if prev != m.Head {
		t.Fatalf("log ends at %d, head %d", prev, m.Head)
	}
	mustConverge(t, tbl, r)
}

// TestOwnedTable_PromotionKeepsOnlyItsOwnWatermark: the sync watermark
// (what consumers may be sent under MinSyncStandbys) after a promotion. A
// primary whose lease lapsed and is granted again keeps the watermark its
// standbys earned: its head holds changes no standby confirmed. (Before,
// any promotion of a table not taking writes set the watermark to the
// head, and a consumer was sent changes that the standby later promoted
// did not hold.) A table opened from disk (an old primary restarted, or a
// standby's copy) starts at 0: it cannot know which of its changes were
// confirmed.
func TestOwnedTable_PromotionKeepsOnlyItsOwnWatermark(t *testing.T) {
	dir := t.TempDir()
	write := func(tbl *OwnedTable, n int) {
		t.Helper()
		for i := range n {
			k := fmt.Appendf(nil, "k%03d", i)
			if _, err := tbl.Apply(ctxT(t, 30*time.Second), Write{Key: k, Value: k}); err != nil {
				t.Fatal(err)
			}
		}
	}
	visible := func(tbl *OwnedTable) uint64 {
		v, _ := tbl.sync.visible(tbl.Head())
		return v
	}
	epochOf := func(tbl *OwnedTable) uint64 {
		tbl.mu.Lock()
		defer tbl.mu.Unlock()
		return tbl.meta.Epoch
	}

	c := openComponent(t, "stores", "s1", dir, "")
	tbl, err := c.Own("items")
	if err != nil {
		t.Fatal(err)
	}
	if err := tbl.promote(epochOf(tbl)); err != nil { // taken as primary, as a broker grant does
		t.Fatal(err)
	}
	write(tbl, 5)
	tbl.sync.reset(3) // standbys confirmed up to 3
	if got := visible(tbl); got != 3 {
		t.Fatalf("watermark %d before the lapse, want 3", got)
	}

	// The lease lapses (no role known) and is granted again.
	c.roleMu.Lock()
	c.applyRole(tbl, role{})
	c.applyRole(tbl, role{name: transport.RolePrimary, epoch: epochOf(tbl) + 1})
	c.roleMu.Unlock()
	if !tbl.writable.Load() {
		t.Fatal("table not writable after the grant")
	}
	if got := visible(tbl); got != 3 {
		t.Fatalf("watermark %d after the lease came back at head %d, want 3 (what standbys confirmed)", got, tbl.Head())
	}
	mustClose(t, c)

	// The same instance restarts on its data dir and is promoted.
	c = openComponent(t, "stores", "s1", dir, "")
	defer mustClose(t, c)
	tbl, err = c.Own("items")
	if err != nil {
		t.Fatal(err)
	}
	tbl.writable.Store(false) // not yet granted, as with brokers
	if err := tbl.promote(epochOf(tbl) + 1); err != nil {
		t.Fatal(err)
	}
	if got := visible(tbl); got != 0 || tbl.Head() != 5 {
		t.Fatalf("watermark %d at head %d after a promotion from disk, want 0 at 5", got, tbl.Head())
	}
}
