package replica

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// A snapshot's rows counted in two halves at once (countRowsSplit) are
// the rows counted in one, wherever the split falls: before the first key,
// on a key, between keys, after the last, outside the prefix; and
// middleKey splits a table badger holds in several tables of its own
// inside the prefix.
func TestCountRowsSplit(t *testing.T) {
	db, err := badger.Open(badger.DefaultOptions(t.TempDir()).WithLogger(nil).WithMemTableSize(1 << 20).WithValueThreshold(1 << 10).WithNumLevelZeroTables(100).WithNumLevelZeroTablesStall(200))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	const rows = 30_000
	val := make([]byte, 100)
	write := func(prefix string, n int) {
		wb := db.NewWriteBatch()
		for i := range n {
			if err := wb.Set(fmt.Appendf(nil, "%sk%06d", prefix, i), val); err != nil {
				t.Fatal(err)
			}
		}
		if err := wb.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	write("p/", rows)
	write("a/", 1000) // rows of other tables around the prefix
	write("z/", 1000)
	prefix := []byte("p/")
	// The 3 MB of rows outgrow the 1 MB memtables: wait for their flushes.
	var mid []byte
	waitUntil(t, 30*time.Second, "a split key from badger's tables", func() bool {
		mid = middleKey(db, prefix)
		return mid != nil
	})
	if got, lo, hi := string(mid), "p/k010000", "p/k020000"; got < lo || got > hi {
		t.Errorf("middleKey = %q, want one near the middle (%s..%s)", got, lo, hi)
	}
	txn := db.NewTransaction(false)
	defer txn.Discard()
	log := slog.New(slog.DiscardHandler)
	ctx := context.Background()
	far := time.Now().Add(time.Hour)
	for _, split := range [][]byte{nil, mid, []byte("p/"), []byte("p/k000000"), []byte("p/k012345x"), []byte("p/k029999"), []byte("p/l"), []byte("a/"), []byte("zz")} {
		t.Run(fmt.Sprintf("split %q", split), func(t *testing.T) {
			n, err := countRowsSplit(ctx, txn, prefix, split, far, log)
			if err != nil || n != rows {
				t.Fatalf("countRowsSplit = %d, %v; want %d", n, err, rows)
			}
		})
	}
	t.Run("out of time", func(t *testing.T) {
		n, err := countRowsSplit(ctx, txn, prefix, mid, time.Now().Add(-time.Second), log)
		if err != nil || n != 0 {
			t.Fatalf("countRowsSplit past its deadline = %d, %v; want 0 (unknown)", n, err)
		}
	})
}
