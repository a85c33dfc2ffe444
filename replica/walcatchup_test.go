package replica

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/replmesh/replmesh/transport"
)

func TestCkptDue(t *testing.T) {
	const bound = 100
	for _, tc := range []struct {
		name           string
		bytes, retryAt int64
		behind         bool
		want           bool
	}{
		{"under the bound", 100, 0, false, false},
		{"over the bound", 101, 0, false, true},
		{"over the bound, put off for room", 120, 125, false, false},
		{"over the bound, past the retry", 125, 125, false, true},
		{"catching up, over the bound", 101, 0, true, false},
		{"catching up, at the hard bound", walCatchUpFactor * bound, 0, true, false},
		{"catching up, over the hard bound", walCatchUpFactor*bound + 1, 0, true, true},
		{"catching up, over the hard bound, put off for room", walCatchUpFactor*bound + 1, walCatchUpFactor*bound + 2, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ckptDue(tc.bytes, bound, tc.retryAt, tc.behind); got != tc.want {
				t.Fatalf("ckptDue(%d, %d, %d, %v) = %v, want %v", tc.bytes, bound, tc.retryAt, tc.behind, got, tc.want)
			}
		})
	}
}

// A checkpoint does not start while the replica catches up: it starts at
// the first append once caught up, or, for a replica that never catches
// up, once the WAL outgrows walCatchUpFactor times its bound.
func TestWAL_CheckpointWaitsForCatchUp(t *testing.T) {
	const walMin = 8 << 10
	for _, tc := range []struct {
		name string
		// caughtUp is the batch (counted from 1) whose seq reaches the
		// owner's head: from it on the replica is not behind.
		caughtUp int
	}{
		{"caught up", 1},
		{"behind, then caught up", 20},
		{"never caught up", math.MaxInt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWALRig(t, walMin)
			w.transfer(map[string]string{"a": "1", "b": "2"})
			bound := w.g.checkpointAt()
			if bound != walMin {
				t.Fatalf("checkpoint bound %d, want %d", bound, walMin)
			}
			caughtSeq := uint64(math.MaxUint64)
			ckpts := 0
			w.g.wal.hook = func(s string) error {
				if s == "recorded" {
					ckpts++
				}
				return nil
			}
			w.g.wal.behind = func(seq uint64) bool { return seq < caughtSeq }
			for i := 1; ckpts == 0; i++ {
				if i > 200 {
					t.Fatalf("no checkpoint after %d batches, WAL at %d bytes (bound %d)", i-1, w.g.wal.bytes, bound)
				}
				chs := make([]transport.Change, 10)
				for j := range chs {
					chs[j] = transport.Change{Op: transport.OpPut, Key: fmt.Appendf(nil, "k%02d-%d", i, j), Value: bytes.Repeat([]byte{'v'}, 100)}
				}
				if i == tc.caughtUp {
					caughtSeq = w.cur.Seq + uint64(len(chs))
				}
				before := w.g.wal.bytes
				must(t, w.apply(chs))
				// The batch's record stays above the checkpoint, which is of
				// the view before it.
				after := before + w.g.wal.entries[len(w.g.wal.entries)-1].bytes
				behind := i < tc.caughtUp
				want := after > bound && (!behind || after > walCatchUpFactor*bound)
				if got := ckpts == 1; got != want {
					t.Fatalf("batch %d (behind %v): WAL at %d bytes (bound %d): checkpoint started %v, want %v", i, behind, after, bound, got, want)
				}
			}
			w.reopen(true)
			w.check("reopened after the checkpoint")
			w.checkFiles("reopened after the checkpoint")
		})
	}
}

// A resumed stream that is behind the owner's head reports the replica
// catching up to its WAL (behind) until the record that reaches the head,
// and not after.
func TestReplica_CatchingUpUntilTheHead(t *testing.T) {
	var mem memNet
	owner := mem.open(t, itOwner, "s1", "")
	defer mustClose(t, owner)
	tbl := mustOwn(t, owner)
	ctx := ctxT(t, 2*time.Minute)
	write := func(from, n int) {
		t.Helper()
		for i := from; i < from+n; i += 100 {
			var ws []Write
			for j := i; j < min(i+100, from+n); j++ {
				ws = append(ws, Write{Key: fmt.Appendf(nil, "row%05d", j), Value: bytes.Repeat([]byte{'v'}, 1000)})
			}
			_, err := tbl.Apply(ctx, ws...)
			must(t, err)
		}
	}
	write(0, 100)
	dir := t.TempDir()
	c := mem.open(t, "products", "c1", dir)
	r, err := c.Subscribe(ctx, SubscribeOptions{Service: itOwner, Table: itTable, Addr: owner.Addr()})
	must(t, err)
	mustConverge(t, tbl, r)
	mustClose(t, c)
	// About 3 MiB missed: applied in several batches of about 1 MiB.
	write(100, 3000)
	head := tbl.Head()

	// The stream waits until the WAL's question is wrapped.
	wrapped := make(chan struct{})
	hold := holdStreams(wrapped)
	c = openWith(t, "products", "c1", dir, "", func(cfg *Config) {
		mem.join(cfg)
		cfg.Transport.DialOptions = append(cfg.Transport.DialOptions, hold)
	})
	defer mustClose(t, c)
	r, err = c.Subscribe(ctx, SubscribeOptions{Service: itOwner, Table: itTable, Addr: owner.Addr()})
	must(t, err)
	g, ok := r.sink.(*genStore)
	if !ok || g.wal.behind == nil {
		t.Fatalf("the durable resident replica's sink %T has no catch-up question", r.sink)
	}
	type answer struct {
		seq    uint64
		behind bool
	}
	var mu sync.Mutex
	var answers []answer
	ask := g.wal.behind
	g.wal.behind = func(seq uint64) bool {
		b := ask(seq)
		mu.Lock()
		answers = append(answers, answer{seq, b})
		mu.Unlock()
		return b
	}
	close(wrapped)
	mustConverge(t, tbl, r)
	if st := r.Status().Stats; st.FullTransfers != 0 || st.Resumes != 1 {
		t.Fatalf("reopened: %d full transfers, %d resumes; want a resume", st.FullTransfers, st.Resumes)
	}
	write(3100, 10) // caught up: the next records are not behind
	mustConverge(t, tbl, r)
	mu.Lock()
	defer mu.Unlock()
	if len(answers) < 3 {
		t.Fatalf("%d WAL records asked about, want several: %v", len(answers), answers)
	}
	for i, a := range answers {
		if want := a.seq < head; a.behind != want {
			t.Fatalf("record %d at seq %d (head %d when resumed): behind %v, want %v; all: %v", i, a.seq, head, a.behind, want, answers)
		}
	}
}

// A full segment's fsync runs beside the applies: they go on while it
// waits, and closeWAL waits for it.
func TestWAL_RotatedSegmentSyncsInTheBackground(t *testing.T) {
	w, rng := newWALRigApplied(t, 0, 21)
	w.seg, w.g.wal.seg = 1<<10, 1<<10
	release := make(chan struct{})
	var mu sync.Mutex
	var synced []string
	w.g.wal.sync = func(f *os.File) error {
		<-release
		mu.Lock()
		synced = append(synced, f.Name())
		mu.Unlock()
		return f.Sync()
	}
	for len(w.g.wal.segs) < 4 {
		must(t, w.apply(randomBatch(rng, 50))) // never waits for release
	}
	rotated := w.g.wal.segs[:len(w.g.wal.segs)-1]
	close(release)
	end := w.cur
	w.g.closeWAL()
	mu.Lock()
	if len(synced) != len(rotated) {
		t.Fatalf("%d rotated segments synced by closeWAL, want %d", len(synced), len(rotated))
	}
	mu.Unlock()
	w.reopen(true)
	if w.cur != end {
		t.Fatalf("reopened at %+v, want %+v", w.cur, end)
	}
	w.check("reopened")
	w.checkFiles("reopened")
}

// A rotated segment whose fsync fails fails the next append (the disk
// full: ErrDiskFull) and nothing of that batch is applied; the ones after
// it apply.
func TestWAL_RotatedSegmentSyncFailure(t *testing.T) {
	w, rng := newWALRigApplied(t, 0, 22)
	w.seg, w.g.wal.seg = 1<<10, 1<<10
	failed := make(chan struct{})
	w.g.wal.sync = func(f *os.File) error {
		defer close(failed)
		return syscall.ENOSPC
	}
	for len(w.g.wal.segs) < 2 {
		must(t, w.apply(randomBatch(rng, 50)))
	}
	<-failed
	// The sync returned; its error is recorded by the goroutine that ran
	// it, after (syncs counts it).
	w.g.wal.syncs.Wait()
	w.g.wal.sync = nil
	before, records := w.cur, len(w.g.wal.entries)
	if err := w.apply(randomBatch(rng, 50)); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("apply after a rotated segment's failed fsync: %v, want ErrDiskFull", err)
	}
	w.cur = before // the rig's seqs
	if n := len(w.g.wal.entries); n != records {
		t.Fatalf("%d WAL records after the failed apply, want %d", n, records)
	}
	w.applyThenReopen(rng, "a failed fsync")
}
