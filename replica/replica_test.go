package replica

import (
	"fmt"
	"testing"
	"time"
)

// TestReplica_EndToEnd runs on the in-memory network, and once over real
// sockets.
func TestReplica_EndToEnd(t *testing.T) {
	tests := []struct {
		name string
		join func(*Config) // nil: TCP on 127.0.0.1
	}{
		{"memnet", new(memNet).join},
		{"tcp", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			owner := openWith(t, "stores", "s1", "", "", tc.join)
			defer mustClose(t, owner)
			tbl, err := owner.Own("store_managers")
			if err != nil {
				t.Fatal(err)
			}
			ctx := ctxT(t, 30*time.Second)
			for i := range 100 {
				if _, err := tbl.Put(ctx, fmt.Appendf(nil, "k%03d", i), fmt.Appendf(nil, "v%d", i)); err != nil {
					t.Fatal(err)
				}
			}
			cons := openWith(t, "products", "p1", "", "", tc.join)
			defer mustClose(t, cons)
			r, err := cons.Subscribe(ctx, SubscribeOptions{Service: "stores", Table: "store_managers", Addr: owner.Addr()})
			if err != nil {
				t.Fatal(err)
			}
			<-r.Ready()
			mustConverge(t, tbl, r)
			for i := range 50 {
				if _, err := tbl.Delete(ctx, fmt.Appendf(nil, "k%03d", i)); err != nil {
					t.Fatal(err)
				}
			}
			seq, err := tbl.Apply(ctx, Write{Key: []byte("a"), Value: []byte("1")}, Write{Key: []byte("b"), Value: []byte("2")})
			if err != nil {
				t.Fatal(err)
			}
			if err := r.WaitFor(ctx, seq); err != nil {
				t.Fatal(err)
			}
			mustConverge(t, tbl, r)
			v, ok, err := r.Get([]byte("b"))
			if err != nil || !ok || string(v) != "2" {
				t.Fatalf("Get(b) = %q, %v, %v", v, ok, err)
			}
			if st := r.Status(); st.Stats.FullTransfers != 1 {
				t.Fatalf("full transfers = %d, want 1", st.Stats.FullTransfers)
			}
		})
	}
}
