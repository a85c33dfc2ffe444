package replica

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/replmesh/replmesh/transport"
)

// The owner lists a table's keys in key order, page by page, each page at
// one seq; access checks and unknown tables answer as for Get.
func TestOwnedTable_KeysPages(t *testing.T) {
	var mem memNet
	owner := mem.open(t, "stores", "s1", "")
	t.Cleanup(func() { mustClose(t, owner) })
	ctx := ctxT(t, 20*time.Second)
	items, err := owner.Own("items")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := owner.Own("secrets", TableOptions{AllowServices: []string{"products"}}); err != nil {
		t.Fatal(err)
	}
	var want [][]byte
	for i := range 25 {
		k := fmt.Appendf(nil, "item/%03d", i)
		want = append(want, k)
		if _, err := items.Put(ctx, k, []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []string{"a", "item", "itemz", "j"} { // around the prefix
		if _, err := items.Put(ctx, []byte(k), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	head := items.Head()
	cc, err := transport.Dial(owner.Addr(), mem.options(transport.Options{}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	client := transport.NewReplicationClient(cc)

	list := func(t *testing.T, prefix, after string, limit uint32) (keys [][]byte, pages int) {
		t.Helper()
		req := &transport.KeysRequest{Version: transport.ProtocolVersion, Table: "items", Prefix: []byte(prefix), After: []byte(after), Limit: limit}
		for {
			resp, err := client.Keys(ctx, req)
			if err != nil {
				t.Fatalf("Keys(%+v): %v", req, err)
			}
			pages++
			if resp.Seq != head || resp.LogID != items.LogID() {
				t.Fatalf("page read at %s/%d, want %s/%d", resp.LogID, resp.Seq, items.LogID(), head)
			}
			if limit > 0 && len(resp.Keys) > int(limit) {
				t.Fatalf("page of %d keys, limit %d", len(resp.Keys), limit)
			}
			keys = append(keys, resp.Keys...)
			if !resp.More {
				return keys, pages
			}
			if len(resp.Keys) == 0 {
				t.Fatal("More without keys: the listing would never end")
			}
			req.After = resp.Keys[len(resp.Keys)-1]
		}
	}
	for _, tc := range []struct {
		name, prefix, after string
		limit               uint32
		want                [][]byte
		pages               int
	}{
		{name: "one page", prefix: "item/", want: want, pages: 1},
		{name: "pages of 10", prefix: "item/", limit: 10, want: want, pages: 3},
		{name: "exact pages", prefix: "item/", limit: 5, want: want, pages: 5}, // More is exact: no empty last page
		{name: "after a key", prefix: "item/", after: "item/019", want: want[20:], pages: 1},
		{name: "after a key outside the prefix", prefix: "item/", after: "a", want: want, pages: 1},
		{name: "after every key", prefix: "item/", after: "item/999", want: nil, pages: 1},
		{name: "no match", prefix: "zzz", want: nil, pages: 1},
		{name: "whole table", want: append(append([][]byte{[]byte("a"), []byte("item")}, want...), []byte("itemz"), []byte("j")), pages: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, pages := list(t, tc.prefix, tc.after, tc.limit)
			if len(got) != len(tc.want) {
				t.Fatalf("%d keys, want %d: %q", len(got), len(tc.want), got)
			}
			for i := range got {
				if !bytes.Equal(got[i], tc.want[i]) {
					t.Fatalf("key %d = %q, want %q", i, got[i], tc.want[i])
				}
			}
			if pages != tc.pages {
				t.Errorf("%d pages, want %d", pages, tc.pages)
			}
		})
	}

	for _, tc := range []struct {
		name string
		req  transport.KeysRequest
		want error
	}{
		{"unknown table", transport.KeysRequest{Table: "nosuch"}, transport.ErrUnknownTable},
		{"restricted table", transport.KeysRequest{Table: "secrets", Service: "replctl"}, transport.ErrPermission},
		{"empty table name", transport.KeysRequest{}, transport.ErrBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.req.Version = transport.ProtocolVersion
			if _, err := client.Keys(ctx, &tc.req); !errors.Is(err, tc.want) {
				t.Fatalf("Keys(%+v) = %v, want %v", tc.req, err, tc.want)
			}
		})
	}
	t.Run("allowed service", func(t *testing.T) {
		resp, err := client.Keys(ctx, &transport.KeysRequest{Version: transport.ProtocolVersion, Table: "secrets", Service: "products"})
		if err != nil || len(resp.Keys) != 0 || resp.More {
			t.Fatalf("Keys of an empty restricted table as products: %+v %v", resp, err)
		}
	})
}

// A page stops at its byte budget (with at least one key), so a table of
// large keys needs more, smaller pages rather than one giant message.
func TestOwnedTable_KeysByteBudget(t *testing.T) {
	var mem memNet
	cfg := LocalConfig("stores", "s1")
	cfg.Transport.MaxMessageSize = 256 << 10 // a key budget of 128 KiB
	cfg.MaxGroupBytes, cfg.MaxApplyBytes = 100<<10, 100<<10
	cfg.Logger = testLogger(t)
	mem.join(&cfg)
	owner, err := Open(ctxT(t, 30*time.Second), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mustClose(t, owner) })
	if got := keysBudget(cfg.Transport); got != 128<<10 {
		t.Fatalf("keysBudget = %d, want %d", got, 128<<10)
	}
	tb, err := owner.Own("big")
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, 20*time.Second)
	for i := range 5 {
		k := append(fmt.Appendf(nil, "%d", i), bytes.Repeat([]byte("k"), 50<<10)...) // two fit in a page
		if _, err := tb.Put(ctx, k, nil); err != nil {
			t.Fatal(err)
		}
	}
	cc, err := transport.Dial(owner.Addr(), cfg.Transport)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	client := transport.NewReplicationClient(cc)
	var sizes []int
	req := &transport.KeysRequest{Version: transport.ProtocolVersion, Table: "big", Limit: transport.MaxKeysPage}
	for {
		resp, err := client.Keys(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, len(resp.Keys))
		if !resp.More {
			break
		}
		req.After = resp.Keys[len(resp.Keys)-1]
	}
	if fmt.Sprint(sizes) != "[2 2 1]" {
		t.Fatalf("page sizes %v, want [2 2 1]", sizes)
	}
}
