package replica

import (
	"maps"
	"testing"

	"github.com/replmesh/replmesh/transport"
)

// TestSink drives both sinks through the interface as a stream does: a
// first full transfer, then changes, each checked by what load returns and
// by the rows stored.
func TestSink(t *testing.T) {
	impls := []struct {
		name        string
		new         func(t *testing.T, c *Component) sink
		rows        func(t *testing.T, c *Component, s sink) map[string]string
		wantStandby bool
		wantCopies  int
		// startsEmpty: load finds no copy at first (an owned table has
		// its own history from the start).
		startsEmpty bool
	}{
		{
			name: "generation store",
			new: func(t *testing.T, c *Component) sink {
				return &genStore{c: c, base: replicaBase("svc", "t"), table: "t", log: testLogger(t)}
			},
			rows: func(t *testing.T, c *Component, s sink) map[string]string {
				t.Helper()
				cur, err := s.load()
				if err != nil {
					t.Fatal(err)
				}
				txn := c.db.NewTransaction(false)
				defer txn.Discard()
				got := map[string]string{}
				err = scanRows(txn, genPrefix(replicaBase("svc", "t"), cur.Gen), nil, nil, nil, func(k, v []byte) (bool, error) {
					got[string(k)] = string(v)
					return true, nil
				})
				if err != nil {
					t.Fatal(err)
				}
				return got
			},
			wantCopies:  1,
			startsEmpty: true,
		},
		{
			name: "owned copy",
			new: func(t *testing.T, c *Component) sink {
				tbl, err := c.Own("t")
				if err != nil {
					t.Fatal(err)
				}
				return &ownedCopy{t: tbl, log: testLogger(t)}
			},
			rows: func(t *testing.T, c *Component, s sink) map[string]string {
				t.Helper()
				got := map[string]string{}
				if _, err := s.(*ownedCopy).t.Scan(nil, func(k, v []byte) bool { got[string(k)] = string(v); return true }); err != nil {
					t.Fatal(err)
				}
				return got
			},
			wantStandby: true,
			wantCopies:  2,
		},
	}
	for _, impl := range impls {
		t.Run(impl.name, func(t *testing.T) {
			c := openComponent(t, "svc", "i1", "", "")
			defer mustClose(t, c)
			s := impl.new(t, c)
			if got := s.standby(); got != impl.wantStandby {
				t.Errorf("standby() = %v, want %v", got, impl.wantStandby)
			}
			if got := s.copies(); got != impl.wantCopies {
				t.Errorf("copies() = %d, want %d", got, impl.wantCopies)
			}
			cur, err := s.load()
			if err != nil {
				t.Fatal(err)
			}
			if impl.startsEmpty && (cur.LogID != "" || cur.Seq != 0) {
				t.Fatalf("load before any transfer = %+v, want no copy", cur)
			}

			// A full transfer at seq 3.
			st := &transport.Start{LogID: "L", Epoch: 1, HeadSeq: 3, Epochs: []transport.EpochStart{{Epoch: 1, Seq: 1}}}
			x, err := s.beginTransfer(st, &transport.OwnerFrame{Kind: transport.KindSnapshotBegin, Seq: 3, Epoch: 1, Count: 2}, cur)
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range map[string]string{"a": "1", "b": "2"} {
				if err := x.put([]byte(k), []byte(v)); err != nil {
					t.Fatal(err)
				}
			}
			next, err := x.finish(cursor{LogID: "L", Epoch: 1, Seq: 3})
			if err != nil {
				t.Fatal(err)
			}
			if err := x.switchIn(cur, next); err != nil {
				t.Fatal(err)
			}
			x.abort() // as the stream does, deferred: a no-op once finished
			checkSink(t, "after the transfer", s, next, impl.rows(t, c, s), map[string]string{"a": "1", "b": "2"})

			// Changes 4 and 5, one commit group.
			chs := []transport.Change{
				{Seq: 4, Op: transport.OpPut, Key: []byte("c"), Value: []byte("3"), Epoch: 1, Time: 40},
				{Seq: 5, Op: transport.OpDelete, Key: []byte("a"), Epoch: 1, Time: 50, TxnEnd: true},
			}
			after := next
			after.Seq, after.Time = 5, 50
			if err := s.apply(after, chs); err != nil {
				t.Fatal(err)
			}
			checkSink(t, "after the changes", s, after, impl.rows(t, c, s), map[string]string{"b": "2", "c": "3"})
		})
	}
}

// checkSink checks the cursor s loads and the rows it holds.
func checkSink(t *testing.T, what string, s sink, want cursor, got, wantRows map[string]string) {
	t.Helper()
	cur, err := s.load()
	if err != nil {
		t.Fatal(err)
	}
	if cur.LogID != want.LogID || cur.Seq != want.Seq || cur.Epoch != want.Epoch {
		t.Errorf("%s: load = %+v, want log %s seq %d epoch %d", what, cur, want.LogID, want.Seq, want.Epoch)
	}
	if !maps.Equal(got, wantRows) {
		t.Errorf("%s: rows = %v, want %v", what, got, wantRows)
	}
}

// TestGenStore_AbortedTransferKeepsTheCopy: a transfer that ends before it
// finishes leaves the live generation and cursor as they were, and a later
// transfer goes into a generation after the abandoned one.
func TestGenStore_AbortedTransferKeepsTheCopy(t *testing.T) {
	c := openComponent(t, "svc", "i1", "", "")
	defer mustClose(t, c)
	g := &genStore{c: c, base: replicaBase("svc", "t"), table: "t", log: testLogger(t)}
	st := &transport.Start{LogID: "L", Epoch: 1, HeadSeq: 1}
	begin := &transport.OwnerFrame{Kind: transport.KindSnapshotBegin, Seq: 1, Epoch: 1}
	transfer := func(cur cursor, rows map[string]string, finish bool) (cursor, uint64) {
		t.Helper()
		x, err := g.beginTransfer(st, begin, cur)
		if err != nil {
			t.Fatal(err)
		}
		defer x.abort()
		for k, v := range rows {
			if err := x.put([]byte(k), []byte(v)); err != nil {
				t.Fatal(err)
			}
		}
		gen := x.(*genTransfer).gen
		if !finish {
			return cur, gen
		}
		next, err := x.finish(cursor{LogID: "L", Epoch: 1, Seq: 1})
		if err != nil {
			t.Fatal(err)
		}
		if err := x.switchIn(cur, next); err != nil {
			t.Fatal(err)
		}
		return next, gen
	}
	first, gen1 := transfer(cursor{}, map[string]string{"a": "1"}, true)
	_, gen2 := transfer(first, map[string]string{"x": "9"}, false)
	cur, err := g.load()
	if err != nil {
		t.Fatal(err)
	}
	if cur != first {
		t.Fatalf("cursor after an aborted transfer = %+v, want %+v", cur, first)
	}
	if _, gen3 := transfer(first, nil, false); gen1 >= gen2 || gen2 >= gen3 {
		t.Fatalf("generations %d, %d, %d: want each transfer after the last", gen1, gen2, gen3)
	}
}
