package replica

import (
	"errors"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/replmesh/replmesh/transport"
	"github.com/vmihailenco/msgpack/v5"
)

// TestDecideStart has a row for every branch of the start decision, in the
// order decideStart documents its rules.
func TestDecideStart(t *testing.T) {
	hist := []transport.EpochStart{{Epoch: 1, Seq: 1}, {Epoch: 2, Seq: 50}, {Epoch: 3, Seq: 80}}
	held := cursor{LogID: "L", Epoch: 2, Seq: 60}
	tests := []struct {
		name     string
		in       startInput
		want     startAction
		wantEnd  uint64
		wantErr  error
		wantText string
	}{
		{
			name:    "an owner below the broker's epoch was deposed",
			in:      startInput{Cursor: held, Start: &transport.Start{LogID: "L", Epoch: 3, HeadSeq: 90, Resume: true}, MinEpoch: 4, Owner: "h:1"},
			want:    startRefused,
			wantErr: ErrStaleEpoch, wantText: "replica: stale epoch: owner at h:1 is at epoch 3, the broker's primary is at epoch 4",
		},
		{
			name:    "a deposed owner is refused even by an accepting replica with no copy",
			in:      startInput{Accept: true, Start: &transport.Start{LogID: "L", Epoch: 3}, MinEpoch: 4},
			want:    startRefused,
			wantErr: ErrStaleEpoch,
		},
		{
			name: "an owner at the broker's epoch is taken",
			in:   startInput{Cursor: held, Start: &transport.Start{LogID: "L", Epoch: 4, HeadSeq: 90, Resume: true}, MinEpoch: 4},
			want: startResume,
		},
		{
			name:    "an owner below the replica's epoch is refused",
			in:      startInput{Cursor: held, Start: &transport.Start{LogID: "L", Epoch: 1, HeadSeq: 90, Resume: true}},
			want:    startRefused,
			wantErr: ErrStaleEpoch, wantText: "replica: stale epoch: owner is at epoch 1, replica at 2",
		},
		{
			name: "an accepting replica takes an owner below its epoch",
			in:   startInput{Cursor: held, Accept: true, Start: &transport.Start{LogID: "M", Epoch: 1, HeadSeq: 10}},
			want: startTransfer,
		},
		{
			name: "another history at least as long is transferred",
			in:   startInput{Cursor: held, Start: &transport.Start{LogID: "M", Epoch: 2, HeadSeq: 60}},
			want: startTransfer,
		},
		{
			name: "another, shorter history has diverged",
			in:   startInput{Cursor: held, Start: &transport.Start{LogID: "M", Epoch: 2, HeadSeq: 59}},
			want: startDiverged,
		},
		{
			name: "another history is no truncate whatever its epochs say",
			in:   startInput{Cursor: held, Start: &transport.Start{LogID: "M", Epoch: 3, HeadSeq: 100, Epochs: []transport.EpochStart{{Epoch: 3, Seq: 1}}}},
			want: startTransfer,
		},
		{
			name:    "the replica's epoch ended at its seq: truncate",
			in:      startInput{Cursor: cursor{LogID: "L", Epoch: 2, Seq: 80}, Start: &transport.Start{LogID: "L", Epoch: 3, HeadSeq: 90, Epochs: hist}},
			want:    startTruncate,
			wantEnd: 80,
		},
		{
			name:    "the replica's epoch ended before its seq: truncate, even with an owner head below it",
			in:      startInput{Cursor: cursor{LogID: "L", Epoch: 2, Seq: 85}, Start: &transport.Start{LogID: "L", Epoch: 3, HeadSeq: 82, Epochs: hist}},
			want:    startTruncate,
			wantEnd: 80,
		},
		{
			name: "same history, replica behind the log: transfer",
			in:   startInput{Cursor: held, Start: &transport.Start{LogID: "L", Epoch: 3, HeadSeq: 90, FirstSeq: 70, Epochs: hist}},
			want: startTransfer,
		},
		{
			name: "same history, replica in its epoch but past the owner's head: diverged",
			in:   startInput{Cursor: cursor{LogID: "L", Epoch: 3, Seq: 95}, Start: &transport.Start{LogID: "L", Epoch: 3, HeadSeq: 90, Epochs: hist}},
			want: startDiverged,
		},
		{
			name: "an accepting replica never diverges",
			in:   startInput{Cursor: held, Accept: true, Start: &transport.Start{LogID: "M", Epoch: 2, HeadSeq: 1}},
			want: startTransfer,
		},
		{
			name: "an accepting replica is never truncated, it is transferred",
			in:   startInput{Cursor: cursor{LogID: "L", Epoch: 2, Seq: 80}, Accept: true, Start: &transport.Start{LogID: "L", Epoch: 3, HeadSeq: 90, Epochs: hist}},
			want: startTransfer,
		},
		{
			name: "a resume of the replica's history",
			in:   startInput{Cursor: held, Start: &transport.Start{LogID: "L", Epoch: 2, HeadSeq: 60, Resume: true}},
			want: startResume,
		},
		{
			name: "an accepting replica takes a resume",
			in:   startInput{Cursor: held, Accept: true, Start: &transport.Start{LogID: "L", Epoch: 1, HeadSeq: 60, Resume: true}},
			want: startResume,
		},
		{
			name:    "a resume of another history is refused",
			in:      startInput{Cursor: held, Start: &transport.Start{LogID: "M", Epoch: 2, HeadSeq: 60, Resume: true}},
			want:    startRefused,
			wantErr: transport.ErrBadRequest,
		},
		{
			name:    "a resume offered to a replica with no copy is refused",
			in:      startInput{Start: &transport.Start{LogID: "L", Epoch: 1, HeadSeq: 5, Resume: true}},
			want:    startRefused,
			wantErr: transport.ErrBadRequest,
		},
		{
			name: "a replica with no copy is transferred",
			in:   startInput{Start: &transport.Start{LogID: "L", Epoch: 1, HeadSeq: 5}},
			want: startTransfer,
		},
		// An owner restored from a replica at seq 100 (epoch 2) continues
		// that history at a new epoch 5 from seq 101, with a log that
		// starts there (restore.go): the source knows the epoch of its
		// newest change only, so the history begins at seq 100.
		{
			name: "restored owner: a replica behind the restored seq is transferred",
			in:   startInput{Cursor: cursor{LogID: "L", Epoch: 2, Seq: 50}, Start: restoredStart},
			want: startTransfer,
		},
		{
			name: "restored owner: a replica behind it in an older epoch is transferred, not truncated",
			in:   startInput{Cursor: cursor{LogID: "L", Epoch: 1, Seq: 50}, Start: restoredStart},
			want: startTransfer,
		},
		{
			name:    "restored owner: a replica holding changes beyond the restored seq is truncated",
			in:      startInput{Cursor: cursor{LogID: "L", Epoch: 2, Seq: 120}, Start: restoredStart},
			want:    startTruncate,
			wantEnd: 101,
		},
		{
			name:    "restored owner: beyond the restored seq and below the owner's head: truncated, never resumed",
			in:      startInput{Cursor: cursor{LogID: "L", Epoch: 2, Seq: 105}, Start: restoredStart},
			want:    startTruncate,
			wantEnd: 101,
		},
		{
			name:    "restored owner: beyond it at an epoch the source never saw: truncated",
			in:      startInput{Cursor: cursor{LogID: "L", Epoch: 4, Seq: 120}, Start: restoredStart},
			want:    startTruncate,
			wantEnd: 101,
		},
		{
			name: "a replica with no copy is transferred an empty table",
			in:   startInput{Start: &transport.Start{LogID: "L", Epoch: math.MaxUint64}},
			want: startTransfer,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := decideStart(tt.in)
			if got.Action != tt.want {
				t.Fatalf("action = %s, want %s (err %v)", got.Action, tt.want, got.Err)
			}
			if got.EpochEnd != tt.wantEnd {
				t.Errorf("epoch end = %d, want %d", got.EpochEnd, tt.wantEnd)
			}
			switch {
			case tt.wantErr == nil && got.Err != nil:
				t.Errorf("err = %v, want none", got.Err)
			case tt.wantErr != nil && !errors.Is(got.Err, tt.wantErr):
				t.Errorf("err = %v, want %v", got.Err, tt.wantErr)
			case tt.wantText != "" && got.Err.Error() != tt.wantText:
				t.Errorf("err = %q, want %q", got.Err, tt.wantText)
			}
		})
	}
}

// restoredStart is the Start of an owner restored from a replica at seq
// 100 of epoch 2, continuing at epoch 5, with head 110.
var restoredStart = &transport.Start{LogID: "L", Epoch: 5, HeadSeq: 110, FirstSeq: 101,
	Epochs: transport.EpochHistory{{Epoch: 2, Seq: 100}, {Epoch: 5, Seq: 101}}}

func TestResumable(t *testing.T) {
	m := ownerMeta{LogID: "L", Epoch: 4, Head: 30, First: 5, Epochs: []transport.EpochStart{{Epoch: 1, Seq: 1}, {Epoch: 3, Seq: 11}, {Epoch: 4, Seq: 20}}}
	// restored: an owner restored from a replica at seq 100 of epoch 2 (see
	// restoredStart).
	restored := ownerMeta{LogID: "L", Epoch: 5, Head: 110, First: 101, Epochs: restoredStart.Epochs}
	tests := []struct {
		name  string
		m     ownerMeta
		log   string
		seq   uint64
		epoch uint64
		want  bool
	}{
		{"caught up", m, "L", 30, 4, true},
		{"behind, same epoch", m, "L", 25, 4, true},
		{"behind, older epoch inside it", m, "L", 15, 3, true},
		{"older epoch, ended exactly there", m, "L", 19, 3, true},
		{"holds a change of epoch 3 that epoch 4 replaced", m, "L", 20, 3, false},
		{"other history", m, "M", 10, 4, false},
		{"ahead of head", m, "L", 31, 4, false},
		{"trimmed", m, "L", 3, 1, false},
		{"first still in log", m, "L", 4, 1, true},
		{"newer epoch than owner", m, "L", 30, 5, false},
		{"restored: at the restored seq", restored, "L", 100, 2, true},
		{"restored: behind the restored seq", restored, "L", 99, 2, false},
		{"restored: beyond the restored seq, source's epoch", restored, "L", 105, 2, false},
		{"restored: beyond, an epoch the source never saw", restored, "L", 105, 4, false},
		{"restored: a change of the new epoch", restored, "L", 105, 5, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := resumable(tt.m, tt.log, tt.seq, tt.epoch); got != tt.want {
				t.Fatalf("resumable(%s, %d, %d) = %v, want %v", tt.log, tt.seq, tt.epoch, got, tt.want)
			}
		})
	}
}

// An owner that restarts having lost the tail of its log (an async
// durability machine crash) must not let a consumer that holds the lost
// changes resume over different changes at the same seqs: the restart is a
// new epoch, the consumer's changes lie past the end of its epoch, and it
// takes a full transfer of the owner's actual state.
func TestReplica_OwnerLostTail(t *testing.T) {
	dir := t.TempDir()
	owner := openComponent(t, "stores", "s1", dir, freeAddr(t)) // restarted on it
	addr := owner.Addr()
	tbl, _ := owner.Own("t")
	ctx := ctxT(t, 30*time.Second)
	for i := range 10 {
		if _, err := tbl.Put(ctx, fmt.Appendf(nil, "k%d", i), []byte("v1")); err != nil {
			t.Fatal(err)
		}
	}
	cons := openComponent(t, "products", "p1", "", "")
	defer mustClose(t, cons)
	r, err := cons.Subscribe(ctx, SubscribeOptions{Service: "stores", Table: "t", Addr: addr})
	if err != nil {
		t.Fatal(err)
	}
	mustConverge(t, tbl, r)
	epochBefore := r.Status().Epoch
	mustClose(t, owner)

	// Simulate the crash: the log and rows of seqs 8..10 are gone, the
	// durable meta says head 7.
	db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(txn *badger.Txn) error {
		item, err := txn.Get(ownMetaKey("t"))
		if err != nil {
			return err
		}
		var m ownerMeta
		if err := item.Value(func(v []byte) error { return msgpack.Unmarshal(v, &m) }); err != nil {
			return err
		}
		for seq := uint64(8); seq <= 10; seq++ {
			if err := deleteLogEntries(txn, db.Opts().Dir, "t", seq); err != nil {
				return err
			}
			if err := txn.Delete(concat(ownRowPrefix("t"), fmt.Appendf(nil, "k%d", seq-1))); err != nil {
				return err
			}
		}
		m.Head = 7
		b, _ := msgpack.Marshal(&m)
		return txn.Set(ownMetaKey("t"), b)
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}

	owner = openComponent(t, "stores", "s1", dir, addr)
	defer mustClose(t, owner)
	tbl, _ = owner.Own("t")
	// The owner writes new, different changes at the lost seqs.
	for i := range 5 {
		if _, err := tbl.Put(ctx, fmt.Appendf(nil, "n%d", i), []byte("v2")); err != nil {
			t.Fatal(err)
		}
	}
	mustConverge(t, tbl, r)
	st := r.Status()
	if st.Stats.Truncations != 1 || st.Stats.FullTransfers != 2 {
		t.Fatalf("truncations %d, full transfers %d; want 1 and 2", st.Stats.Truncations, st.Stats.FullTransfers)
	}
	if st.Epoch <= epochBefore {
		t.Fatalf("replica epoch %d, want above %d", st.Epoch, epochBefore)
	}
	if _, ok, _ := r.Get([]byte("k9")); ok {
		t.Fatal("the replica still holds a change the owner lost")
	}
}
