package replica

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
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
