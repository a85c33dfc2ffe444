package replica

import (
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/replmesh/replmesh/transport"
	"github.com/vmihailenco/msgpack/v5"
)

func TestEpochHistory(t *testing.T) {
	hist := []transport.EpochStart{{Epoch: 1, Seq: 1}, {Epoch: 3, Seq: 11}, {Epoch: 4, Seq: 20}}
	ends := []struct{ epoch, want uint64 }{{0, 1}, {1, 11}, {2, 11}, {3, 20}, {4, math.MaxUint64}, {9, math.MaxUint64}}
	for _, tt := range ends {
		if got := epochEnd(hist, tt.epoch); got != tt.want {
			t.Errorf("epochEnd(%d) = %d, want %d", tt.epoch, got, tt.want)
		}
	}
	ofs := []struct{ seq, want uint64 }{{0, 0}, {1, 1}, {10, 1}, {11, 3}, {19, 3}, {20, 4}, {1000, 4}}
	for _, tt := range ofs {
		if got := epochOf(hist, tt.seq); got != tt.want {
			t.Errorf("epochOf(%d) = %d, want %d", tt.seq, got, tt.want)
		}
	}
	// An epoch that wrote nothing is replaced; an older epoch is ignored.
	h := appendEpoch(nil, 1, 1)
	h = appendEpoch(h, 2, 5)
	h = appendEpoch(h, 3, 5)
	h = appendEpoch(h, 2, 9)
	if want := []transport.EpochStart{{Epoch: 1, Seq: 1}, {Epoch: 3, Seq: 5}}; fmt.Sprint(h) != fmt.Sprint(want) {
		t.Fatalf("history %v, want %v", h, want)
	}
	for i := range 2 * maxEpochHistory {
		h = appendEpoch(h, uint64(10+i), uint64(10+i))
	}
	if len(h) != maxEpochHistory {
		t.Fatalf("history grew to %d entries", len(h))
	}
}

func TestResumable(t *testing.T) {
	m := ownerMeta{LogID: "L", Epoch: 4, Head: 30, First: 5, Epochs: []transport.EpochStart{{Epoch: 1, Seq: 1}, {Epoch: 3, Seq: 11}, {Epoch: 4, Seq: 20}}}
	tests := []struct {
		name  string
		log   string
		seq   uint64
		epoch uint64
		want  bool
	}{
		{"caught up", "L", 30, 4, true},
		{"behind, same epoch", "L", 25, 4, true},
		{"behind, older epoch inside it", "L", 15, 3, true},
		{"older epoch, ended exactly there", "L", 19, 3, true},
		{"holds a change of epoch 3 that epoch 4 replaced", "L", 20, 3, false},
		{"other history", "M", 10, 4, false},
		{"ahead of head", "L", 31, 4, false},
		{"trimmed", "L", 3, 1, false},
		{"first still in log", "L", 4, 1, true},
		{"newer epoch than owner", "L", 30, 5, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := resumable(m, tt.log, tt.seq, tt.epoch); got != tt.want {
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
			if err := txn.Delete(ownLogKey(ownLogPrefix("t"), seq)); err != nil {
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
