package replica

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/replmesh/replmesh/transport"
)

func TestConfig_Validate(t *testing.T) {
	good := LocalConfig("svc", "i1")
	if err := good.Validate(); err != nil {
		t.Fatalf("LocalConfig invalid: %v", err)
	}
	tests := []struct {
		name   string
		mutate func(*Config)
		field  string
	}{
		{"empty service", func(c *Config) { c.Service = "" }, "Config.Service"},
		{"slash in instance", func(c *Config) { c.Instance = "a/b" }, "Config.Instance"},
		{"bad durability", func(c *Config) { c.Durability = 7 }, "Config.Durability"},
		{"zero heartbeat", func(c *Config) { c.Heartbeat = 0 }, "Config.Heartbeat"},
		{"backoff inverted", func(c *Config) { c.ReconnectMax = c.ReconnectMin / 2 }, "Config.ReconnectMax"},
		{"group too big for memtable", func(c *Config) { c.MaxGroupBytes = 64 << 20; c.MaxApplyBytes = 1 << 20 }, "Config.MaxGroupBytes"},
		{"apply bigger than group", func(c *Config) { c.MaxApplyBytes = c.MaxGroupBytes + 1 }, "Config.MaxApplyBytes"},
		{"memtable below a megabyte", func(c *Config) { c.MemTableSize = 512 << 10 }, "Config.MemTableSize"},
		{"memtable too small for in-memory values", func(c *Config) {
			c.MemTableSize, c.MaxGroupBytes, c.MaxApplyBytes = 4<<20, 64<<10, 64<<10
		}, "Config.MemTableSize"},
		{"min sync standbys without brokers", func(c *Config) { c.MinSyncStandbys = 1 }, "Config.MinSyncStandbys"},
		{"min sync standbys above the wire's bound", func(c *Config) {
			c.Owner, c.Brokers, c.MinSyncStandbys = true, []string{"127.0.0.1:1"}, transport.MaxMinSyncStandbys+1
		}, "Config.MinSyncStandbys"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good
			tt.mutate(&c)
			err := c.Validate()
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Validate() = %v, want ErrInvalid", err)
			}
			if got := err.Error(); !contains(got, tt.field) {
				t.Fatalf("error %q does not name %s", got, tt.field)
			}
			if _, err := Open(context.Background(), c); !errors.Is(err, ErrInvalid) {
				t.Fatalf("Open with bad config = %v, want ErrInvalid", err)
			}
		})
	}
}

// The default retention stays what it was before Retention became
// modes.Retention.
func TestDefaultConfig_Retention(t *testing.T) {
	want := Retention{MaxChanges: 1_000_000, MaxBytes: 1 << 30, MaxAge: 24 * time.Hour}
	if got := DefaultConfig().Retention; got != want {
		t.Fatalf("DefaultConfig().Retention = %+v, want %+v", got, want)
	}
}

// The name errors keep their text now that the rule is transport's.
func TestValidName_Message(t *testing.T) {
	tests := []struct {
		name, what, value, want string
	}{
		{"empty", "Config.Service", "", `replica: invalid argument: Config.Service "" must be 1-128 characters of A-Z a-z 0-9 _ . -`},
		{"slash", "table", "bad/name", `replica: invalid argument: table "bad/name" must be 1-128 characters of A-Z a-z 0-9 _ . -`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := validName(tt.what, tt.value)
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("validName = %v, want ErrInvalid", err)
			}
			if got := err.Error(); got != tt.want {
				t.Fatalf("validName = %q, want %q", got, tt.want)
			}
		})
	}
	if err := validName("table", "ok.name-1_2"); err != nil {
		t.Fatalf("validName(ok.name-1_2) = %v", err)
	}
}

func contains(s, sub string) bool {
	return len(sub) == 0 || len(s) >= len(sub) && (s[:len(sub)] == sub || contains(s[1:], sub))
}

func TestTail_Bounds(t *testing.T) {
	tl := newTail(10, 1<<20)
	tl.reset(1)
	for i := uint64(1); i <= 25; i++ {
		tl.append([]transport.Change{{Seq: i, Op: transport.OpPut, Key: []byte("k"), TxnEnd: true}})
	}
	if _, ok := tl.read(15, 100, 1<<20, nil); ok {
		t.Fatal("read(15) succeeded after 15 was evicted (capacity 10)")
	}
	got, ok := tl.read(16, 100, 1<<20, nil)
	if !ok || len(got) != 10 || got[0].Seq != 16 || got[9].Seq != 25 {
		t.Fatalf("read(16) = %d changes, ok=%v", len(got), ok)
	}
	got, ok = tl.read(26, 100, 1<<20, nil)
	if !ok || len(got) != 0 {
		t.Fatalf("read(head+1) = %d changes, ok=%v; want none, ok", len(got), ok)
	}
	// A batch never splits a commit group.
	tl.reset(1)
	grp := make([]transport.Change, 5)
	for i := range grp {
		grp[i] = transport.Change{Seq: uint64(i + 1), Op: transport.OpPut, Key: []byte("k"), TxnEnd: i == 4}
	}
	tl.append(grp)
	got, _ = tl.read(1, 2, 1<<20, nil)
	if len(got) != 5 {
		t.Fatalf("batch split a group: got %d changes, want 5", len(got))
	}
}

func TestOwnedTable_InputLimits(t *testing.T) {
	c := openComponent(t, "stores", "s1", "", "")
	defer mustClose(t, c)
	tbl, err := c.Own("t")
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, 30*time.Second)
	tests := []struct {
		name string
		ws   []Write
		want error
	}{
		{"no writes", nil, ErrInvalid},
		{"empty key", []Write{{Key: nil, Value: []byte("v")}}, ErrInvalid},
		{"key too large", []Write{{Key: make([]byte, transport.MaxKeySize+1)}}, ErrTooLarge},
		{"value too large", []Write{{Key: []byte("k"), Value: make([]byte, transport.MaxValueSize+1)}}, ErrTooLarge},
		{"apply too large", []Write{{Key: []byte("a"), Value: make([]byte, 700<<10)}, {Key: []byte("b"), Value: make([]byte, 700<<10)}}, ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := tbl.Apply(ctx, tt.ws...); !errors.Is(err, tt.want) {
				t.Fatalf("Apply = %v, want %v", err, tt.want)
			}
			if h := tbl.Head(); h != 0 {
				t.Fatalf("head = %d after a refused write, want 0", h)
			}
		})
	}
	if _, err := c.Own("t"); !errors.Is(err, ErrExists) {
		t.Fatalf("second Own = %v, want ErrExists", err)
	}
	if _, err := c.Own("bad/name"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Own(bad/name) = %v, want ErrInvalid", err)
	}
}

func TestComponent_CloseIdempotentAndRefuses(t *testing.T) {
	var mem memNet
	c := mem.open(t, "stores", "s1", t.TempDir())
	tbl, err := c.Own("t")
	if err != nil {
		t.Fatal(err)
	}
	mustClose(t, c)
	mustClose(t, c)
	if _, err := tbl.Put(context.Background(), []byte("k"), []byte("v")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Put after Close = %v, want ErrClosed", err)
	}
	if _, err := c.Own("u"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Own after Close = %v, want ErrClosed", err)
	}
}

func TestOwnedTable_GroupCommitOrder(t *testing.T) {
	c := openComponent(t, "stores", "s1", "", "")
	defer mustClose(t, c)
	tbl, _ := c.Own("t")
	ctx := ctxT(t, 20*time.Second)
	const writers, each = 8, 200
	seqs := make(chan uint64, writers*each)
	errs := make(chan error, writers)
	for w := range writers {
		go func() {
			for i := range each {
				s, err := tbl.Put(ctx, fmt.Appendf(nil, "w%d-%d", w, i), []byte("v"))
				if err != nil {
					errs <- err
					return
				}
				seqs <- s
			}
			errs <- nil
		}()
	}
	for range writers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	close(seqs)
	seen := map[uint64]bool{}
	for s := range seqs {
		if seen[s] {
			t.Fatalf("seq %d returned twice", s)
		}
		seen[s] = true
	}
	if len(seen) != writers*each || tbl.Head() != writers*each {
		t.Fatalf("%d distinct seqs, head %d; want %d", len(seen), tbl.Head(), writers*each)
	}
	// The log holds exactly 1..head in order.
	chs, err := tbl.readChanges(1, 1<<30, 1<<30, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, ch := range chs {
		if ch.Seq != uint64(i+1) {
			t.Fatalf("log[%d].Seq = %d", i, ch.Seq)
		}
	}
}

func TestOwnedTable_TrimByCountBytesAge(t *testing.T) {
	tests := []struct {
		name      string
		ret       Retention
		advance   time.Duration
		wantFirst uint64
	}{
		{"count", Retention{MaxChanges: 30}, 0, 71},
		{"bytes", Retention{MaxBytes: 20 * 68}, 0, 81}, // entries are 68 bytes: key 8 + value 40 + 20 header
		{"age", Retention{MaxAge: time.Hour}, 2 * time.Hour, 101},
		{"none", Retention{}, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := LocalConfig("stores", "s1")
			cfg.Retention = tt.ret
			cfg.TrimInterval = time.Hour // trimmed by hand below
			cfg.Logger = testLogger(t)
			c, err := Open(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer mustClose(t, c)
			tbl, _ := c.Own("t")
			ctx := ctxT(t, 30*time.Second)
			for i := range 100 {
				if _, err := tbl.Put(ctx, fmt.Appendf(nil, "key%05d", i), make([]byte, 40)); err != nil {
					t.Fatal(err)
				}
			}
			if err := tbl.trim(time.Now().Add(tt.advance)); err != nil {
				t.Fatal(err)
			}
			meta, _ := tbl.state()
			if meta.First != tt.wantFirst {
				t.Fatalf("first = %d, want %d", meta.First, tt.wantFirst)
			}
			if tt.wantFirst > 1 {
				if _, err := tbl.readChanges(tt.wantFirst-1, 10, 1<<20, nil); !errors.Is(err, transport.ErrResync) {
					t.Fatalf("reading a trimmed seq = %v, want ErrResync", err)
				}
			}
			if tt.wantFirst <= 100 {
				chs, err := tbl.readChanges(tt.wantFirst, 1000, 1<<20, nil)
				if err != nil || len(chs) == 0 || chs[0].Seq != tt.wantFirst {
					t.Fatalf("readChanges(first) = %d changes, %v", len(chs), err)
				}
			}
		})
	}
}

func TestTyped_RoundTrip(t *testing.T) {
	var mem memNet
	type Manager struct {
		Store string
		User  string
		Since time.Time
		Roles []string
	}
	owner := mem.open(t, "stores", "s1", "")
	defer mustClose(t, owner)
	cons := mem.open(t, "products", "p1", "")
	defer mustClose(t, cons)
	ot, _ := owner.Own("store_managers")
	w := Typed[Manager](ot)
	ctx := ctxT(t, 20*time.Second)
	want := Manager{Store: "s1", User: "alice", Since: time.Unix(1700000000, 0).UTC(), Roles: []string{"admin"}}
	seq, err := w.Put(ctx, "s1/alice", want)
	if err != nil {
		t.Fatal(err)
	}
	r, err := cons.Subscribe(ctx, SubscribeOptions{Service: "stores", Table: "store_managers", Addr: owner.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.WaitFor(ctx, seq); err != nil {
		t.Fatal(err)
	}
	view := Typed[Manager](r)
	got, ok, err := view.Get("s1/alice")
	if err != nil || !ok {
		t.Fatalf("Get = %v, %v", ok, err)
	}
	if !got.Since.Equal(want.Since) || got.Store != want.Store || got.User != want.User || len(got.Roles) != 1 || got.Roles[0] != "admin" {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	n := 0
	if _, err := view.Scan("s1/", func(k string, m Manager) bool { n++; return true }); err != nil || n != 1 {
		t.Fatalf("Scan = %d rows, %v", n, err)
	}
	if _, err := view.Put(ctx, "x", want); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("Put on a replica view = %v, want ErrReadOnly", err)
	}
}

func TestReplica_OnChangeAndWatch(t *testing.T) {
	ctx := ctxT(t, 20*time.Second)
	ot, r := ownedAndReplica(ctx, t)
	var cbSeqs []uint64
	done := make(chan struct{})
	const n = 300
	cancel := r.OnChange(func(e Event) {
		for _, ch := range e.Changes {
			// The change is durable and visible before the callback runs.
			if _, ok, _ := r.Get(ch.Key); !ok && ch.Op == OpPut {
				t.Errorf("callback for seq %d before the row is readable", ch.Seq)
			}
			cbSeqs = append(cbSeqs, ch.Seq)
			if ch.Seq == n {
				close(done)
			}
		}
	})
	defer cancel()
	wctx, wcancel := context.WithCancel(ctx)
	events := r.Watch(wctx, 16)
	<-r.Ready()
	go func() {
		for i := range n {
			if _, err := ot.Put(ctx, fmt.Appendf(nil, "k%d", i%17), []byte("v")); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	// Read the watch channel while the writes go on: a full channel holds
	// the replica back (backpressure), so the callbacks could not finish.
	watchErr := make(chan error, 1)
	go func() {
		var last uint64
		for last < n {
			e, ok := <-events
			if !ok {
				watchErr <- fmt.Errorf("watch channel closed early at %d", last)
				return
			}
			for _, ch := range e.Changes {
				if ch.Seq != last+1 {
					watchErr <- fmt.Errorf("watch: seq %d after %d", ch.Seq, last)
					return
				}
				last = ch.Seq
			}
		}
		watchErr <- nil
	}()
	<-done
	if err := <-watchErr; err != nil {
		t.Fatal(err)
	}
	for i, s := range cbSeqs {
		if s != uint64(i+1) {
			t.Fatalf("callback %d got seq %d: not in commit order", i, s)
		}
	}
	wcancel()
	for range events { // drains, then the channel is closed
	}
}

func TestSender_LingerBatchesTrickle(t *testing.T) {
	var mem memNet
	cfg := LocalConfig("stores", "s1")
	cfg.Linger = time.Second
	cfg.Logger = testLogger(t)
	mem.join(&cfg)
	owner, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer mustClose(t, owner)
	cons := mem.open(t, "products", "p1", "")
	defer mustClose(t, cons)
	ot, _ := owner.Own("t")
	ctx := ctxT(t, 20*time.Second)
	r, _ := cons.Subscribe(ctx, SubscribeOptions{Service: "stores", Table: "t", Addr: owner.Addr()})
	<-r.Ready()
	events := r.Watch(ctx, 16)
	var last uint64
	for i := range 3 {
		if last, err = ot.Put(ctx, fmt.Appendf(nil, "k%d", i), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	e := <-events
	for e.Reset { // the first transfer's event may arrive after Ready
		e = <-events
	}
	if len(e.Changes) != 3 || e.Seq != last {
		t.Fatalf("first batch has %d changes up to seq %d; want the 3 trickled writes in one batch (linger)", len(e.Changes), e.Seq)
	}
}

// TestReplica_OnChangeAppendCopies: a callback that appends to a change's
// key or value (as code building a derived key does) gets a copy; the
// replica's row, which keeps the decoded bytes of a large batch, keeps its
// value.
func TestReplica_OnChangeAppendCopies(t *testing.T) {
	ctx := ctxT(t, 20*time.Second)
	ot, r := ownedAndReplica(ctx, t)
	<-r.Ready()
	cancel := r.OnChange(func(e Event) {
		for _, ch := range e.Changes {
			_ = append(ch.Key, "XXXXXXXX"...)
			_ = append(ch.Value, "YYYYYYYY"...)
		}
	})
	defer cancel()
	// One Apply of 40 KiB: a batch large enough that the replica keeps
	// its decoded bytes as its rows.
	want := map[string][]byte{}
	var ws []Write
	for i := range 100 {
		k, v := fmt.Appendf(nil, "k%03d", i), bytes.Repeat([]byte{byte('a' + i%26)}, 400)
		ws = append(ws, Write{Key: k, Value: v})
		want[string(k)] = v
	}
	seq, err := ot.Apply(ctx, ws...)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.WaitFor(ctx, seq); err != nil {
		t.Fatal(err)
	}
	for k, v := range want {
		got, ok, err := r.Get([]byte(k))
		if err != nil || !ok || !bytes.Equal(got, v) {
			t.Fatalf("Get(%s) = %.20q…, %v, %v; want %.20q…", k, got, ok, err, v)
		}
	}
}

// ownedAndReplica: table t of service stores, owned by one in-memory
// component and subscribed by another, on a memNet; both close with t.
func ownedAndReplica(ctx context.Context, t *testing.T) (*OwnedTable, *Replica) {
	t.Helper()
	var mem memNet
	owner := mem.open(t, "stores", "s1", "")
	t.Cleanup(func() { mustClose(t, owner) })
	cons := mem.open(t, "products", "p1", "")
	t.Cleanup(func() { mustClose(t, cons) })
	ot, err := owner.Own("t")
	if err != nil {
		t.Fatal(err)
	}
	r, err := cons.Subscribe(ctx, SubscribeOptions{Service: "stores", Table: "t", Addr: owner.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	return ot, r
}
