package replica

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/replmesh/replmesh/transport"
)

// The progress math: percent, rate and ETA from the counts and the time,
// including no elapsed time and an unknown expected count.
func TestTransferProgress_Math(t *testing.T) {
	t0 := time.Unix(1000, 0)
	cases := []struct {
		name                 string
		rows, expected       uint64
		elapsed              time.Duration
		wantRate, wantPct    float64
		wantETA, wantElapsed time.Duration
	}{
		{name: "half way", rows: 50, expected: 100, elapsed: 10 * time.Second,
			wantRate: 5, wantPct: 50, wantETA: 10 * time.Second, wantElapsed: 10 * time.Second},
		{name: "no time elapsed", rows: 10, expected: 100,
			wantRate: 0, wantPct: 10, wantETA: 0},
		{name: "nothing received yet", rows: 0, expected: 100, elapsed: time.Second,
			wantRate: 0, wantPct: 0, wantETA: 0, wantElapsed: time.Second},
		{name: "unknown expected count", rows: 50, expected: 0, elapsed: 10 * time.Second,
			wantRate: 5, wantPct: 0, wantETA: 0, wantElapsed: 10 * time.Second},
		{name: "all expected rows received", rows: 100, expected: 100, elapsed: 4 * time.Second,
			wantRate: 25, wantPct: 100, wantETA: 0, wantElapsed: 4 * time.Second},
		{name: "more rows than announced", rows: 120, expected: 100, elapsed: 4 * time.Second,
			wantRate: 30, wantPct: 100, wantETA: 0, wantElapsed: 4 * time.Second},
		{name: "clock went back", rows: 10, expected: 100, elapsed: -time.Second,
			wantRate: 0, wantPct: 10, wantETA: 0},
		{name: "crawling transfer", rows: 1, expected: 1 << 62, elapsed: time.Hour,
			wantRate: 1.0 / 3600, wantPct: 100 / float64(1<<62), wantETA: time.Duration(maxETASeconds * float64(time.Second)), wantElapsed: time.Hour},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			x := &transfer{seq: 7, rows: tc.rows, bytes: 3 * tc.rows, expected: tc.expected, started: t0}
			got := x.progress(t0.Add(tc.elapsed))
			if got.Rate != tc.wantRate || got.Percent() != tc.wantPct || got.ETA != tc.wantETA || got.Elapsed != tc.wantElapsed {
				t.Fatalf("rate %v, percent %v, ETA %v, elapsed %v; want %v, %v, %v, %v",
					got.Rate, got.Percent(), got.ETA, got.Elapsed, tc.wantRate, tc.wantPct, tc.wantETA, tc.wantElapsed)
			}
			if got.Seq != 7 || got.Rows != tc.rows || got.Bytes != 3*tc.rows || got.ExpectedRows != tc.expected || !got.Started.Equal(t0) {
				t.Fatalf("progress %+v does not carry the counts", got)
			}
		})
	}
}

// heldTransfer is a full transfer from a real owner to a consumer, held
// still after its first rows frame by the consumer's test hook.
type heldTransfer struct {
	owner, cons *Component
	tbl         *OwnedTable
	r           *Replica
	rows        uint64 // the owner's row count at the snapshot
	logs        *captureHandler
	release     func()
}

// holdTransfer starts a consumer's first full transfer of a table of rows
// rows (written with overwrites and deletes, so that rows and seqs differ)
// and returns once the consumer has staged the first rows frame and holds
// there until release. tweak adjusts the consumer's config.
func holdTransfer(t *testing.T, rows int, tweak func(*Config)) *heldTransfer {
	t.Helper()
	h := &heldTransfer{rows: uint64(rows), logs: &captureHandler{rec: &captured{}}}
	h.owner = openWith(t, itOwner, "s1", "", "127.0.0.1:0", nil)
	t.Cleanup(func() { mustClose(t, h.owner) })
	h.tbl = mustOwn(t, h.owner)
	ctx := ctxT(t, time.Minute)
	val := strings.Repeat("v", 100)
	key := func(i int) []byte { return fmt.Appendf(nil, "row/%06d", i) }
	var ws []Write
	for i := range rows + 200 {
		ws = append(ws, Write{Key: key(i), Value: []byte(val)})
		if len(ws) == 500 {
			if _, err := h.tbl.Apply(ctx, ws...); err != nil {
				t.Fatal(err)
			}
			ws = ws[:0]
		}
	}
	for i := range 200 {
		ws = append(ws, Write{Key: key(rows + i), Delete: true}, Write{Key: key(i), Value: []byte("again")})
	}
	if _, err := h.tbl.Apply(ctx, ws...); err != nil {
		t.Fatal(err)
	}
	if d, err := h.tbl.Digest(nil, nil); err != nil || d.Rows != h.rows {
		t.Fatalf("owner holds %d rows (%v), want %d", d.Rows, err, rows)
	}

	held, release := make(chan struct{}), make(chan struct{})
	var holdOnce, releaseOnce sync.Once
	h.release = func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(h.release)
	h.cons = openWith(t, "products", "p1", "", "", func(c *Config) {
		c.Logger = slog.New(slog.NewMultiHandler(testLogger(t).Handler(), h.logs))
		if tweak != nil {
			tweak(c)
		}
	})
	t.Cleanup(func() { mustClose(t, h.cons) })
	h.cons.hooks.transferLogEvery = time.Nanosecond // a progress line for every frame
	h.cons.hooks.rowsStaged = func(r *Replica) {
		holdOnce.Do(func() {
			close(held)
			select {
			case <-release:
			case <-r.ctx.Done():
			}
		})
	}
	r, err := h.cons.Subscribe(ctx, SubscribeOptions{Service: itOwner, Table: itTable, Addr: h.owner.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	h.r = r
	select {
	case <-held:
	case <-ctx.Done():
		t.Fatalf("no rows frame staged: %+v", r.Status())
	}
	return h
}

// A transfer held in its middle reports, in Lag and Status, rows received,
// the owner's exact row count, a percent strictly between 0 and 100, a
// rate, an ETA and a staleness that is not negative; it logs its progress
// with constant keys; once it completes the report is gone.
func TestTransfer_ProgressWhileHeld(t *testing.T) {
	h := holdTransfer(t, 3000, nil)
	var p TransferProgress
	waitUntil(t, 30*time.Second, "a transfer rate", func() bool {
		l := h.r.Lag()
		if l.Transfer == nil {
			t.Fatalf("no transfer progress in Lag %+v", l)
		}
		p = *l.Transfer
		return p.Rate > 0
	})
	if p.Rows == 0 || p.Rows >= h.rows {
		t.Fatalf("rows received %d, want some of %d", p.Rows, h.rows)
	}
	if p.ExpectedRows != h.rows {
		t.Fatalf("expected rows %d, owner holds %d", p.ExpectedRows, h.rows)
	}
	if pct := p.Percent(); pct <= 0 || pct >= 100 {
		t.Fatalf("percent %v, want in (0, 100)", pct)
	}
	if p.ETA <= 0 || p.Bytes < p.Rows*10 || p.Started.IsZero() || p.Seq != h.tbl.Head() {
		t.Fatalf("progress %+v: want an ETA, the bytes, a start and the snapshot seq %d", p, h.tbl.Head())
	}
	st := h.r.Status()
	if st.State != StateTransferring || st.Lag.Transfer == nil || st.Lag.Transfer.Rows != p.Rows {
		t.Fatalf("status %+v: want transferring with %d rows received", st, p.Rows)
	}
	if st.Lag.Staleness < 0 {
		t.Fatalf("staleness %v during a first transfer, want >= 0", st.Lag.Staleness)
	}

	line, ok := h.logs.rec.find("full transfer progress")
	if !ok {
		t.Fatalf("no progress line logged; got %v", h.logs.rec.messages())
	}
	for _, k := range []string{"seq", "rows", "rows_expected", "percent", "rows_per_sec", "eta", "bytes", "replica"} {
		if _, ok := line[k]; !ok {
			t.Errorf("progress line %v has no %q", line, k)
		}
	}
	if got := line["rows_expected"]; got != fmt.Sprint(h.rows) {
		t.Errorf("progress line rows_expected=%s, want %d", got, h.rows)
	}

	h.release()
	mustConverge(t, h.tbl, h.r)
	waitUntil(t, 30*time.Second, "the transfer report to end", func() bool {
		st := h.r.Status()
		return st.State == StateStreaming && st.Lag.Transfer == nil
	})
	if st := h.r.Status(); st.Stats.SnapshotRows != h.rows || st.Stats.FullTransfers != 1 {
		t.Fatalf("stats %+v, want one transfer of %d rows", st.Stats, h.rows)
	}
}

// The transfer's progress is in the metrics while it runs, and its gauges
// fall back to 0 once it is done.
func TestMetrics_TransferProgress(t *testing.T) {
	h := holdTransfer(t, 3000, nil)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(h.cons.Metrics())
	var p TransferProgress
	waitUntil(t, 30*time.Second, "a transfer rate", func() bool { p = *h.r.Lag().Transfer; return p.Rate > 0 })
	got := gatherReplica(t, reg)
	want := map[string]float64{
		"replmesh_replica_transfer_rows":          float64(p.Rows),
		"replmesh_replica_transfer_rows_expected": float64(h.rows),
		"replmesh_replica_transfer_bytes":         float64(p.Bytes),
		"replmesh_replica_snapshot_rows_total":    float64(p.Rows),
	}
	for name, v := range want {
		if got[name] != v {
			t.Errorf("%s = %v, want %v", name, got[name], v)
		}
	}
	if got["replmesh_replica_transfer_eta_seconds"] <= 0 {
		t.Errorf("replmesh_replica_transfer_eta_seconds = %v, want > 0", got["replmesh_replica_transfer_eta_seconds"])
	}
	if got["replmesh_replica_staleness_seconds"] < 0 {
		t.Errorf("replmesh_replica_staleness_seconds = %v, want >= 0", got["replmesh_replica_staleness_seconds"])
	}

	h.release()
	mustConverge(t, h.tbl, h.r)
	waitUntil(t, 30*time.Second, "the transfer gauges to clear", func() bool {
		got := gatherReplica(t, reg)
		return got["replmesh_replica_transfer_rows"] == 0 && got["replmesh_replica_transfer_rows_expected"] == 0 &&
			got["replmesh_replica_transfer_bytes"] == 0 && got["replmesh_replica_transfer_eta_seconds"] == 0 &&
			got["replmesh_replica_snapshot_rows_total"] == float64(h.rows)
	})
}

// gatherReplica returns the value of every replmesh_replica_* metric of
// the one replica in reg (the mode gauge excepted).
func gatherReplica(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "replmesh_replica_") || mf.GetName() == "replmesh_replica_mode" {
			continue
		}
		for _, m := range mf.GetMetric() {
			out[mf.GetName()] = m.GetGauge().GetValue() + m.GetCounter().GetValue() // one of them is set
		}
	}
	return out
}

// An owner older than the row announcement (SnapshotBegin without a count)
// makes the progress report an unknown total: no percent, no ETA.
func TestTransfer_ProgressUnknownCount(t *testing.T) {
	var mem memNet
	fake := &fakeOwner{script: func(n int, open *transport.Open, s transport.SubscribeServer) error { return sendGood(open, s) }}
	addr := mem.serve(t, func(srv *transport.Server) { transport.RegisterReplicationServer(srv, fake) })
	c := mem.open(t, "products", "p1", "")
	defer mustClose(t, c)
	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	c.hooks.rowsStaged = func(r *Replica) {
		once.Do(func() {
			close(held)
			select {
			case <-release:
			case <-r.ctx.Done():
			}
		})
	}
	r, err := c.Subscribe(ctxT(t, 30*time.Second), SubscribeOptions{Service: "stores", Table: "items", Addr: addr})
	if err != nil {
		t.Fatal(err)
	}
	<-held
	p := r.Lag().Transfer
	close(release)
	if p == nil || p.Rows != 4 || p.ExpectedRows != 0 || p.Percent() != 0 || p.ETA != 0 {
		t.Fatalf("progress %+v, want 4 rows of an unknown total, no percent, no ETA", p)
	}
	waitUntil(t, 30*time.Second, "the transfer to complete", func() bool { return r.Seq() == fakeSeq })
}

// The owner announces the exact row count of the snapshot in SnapshotBegin
// (deleted and overwritten keys do not count), or 0 (unknown) when counting
// takes longer than its budget.
func TestSender_AnnouncesRowCount(t *testing.T) {
	cases := []struct {
		name        string
		peerTimeout time.Duration
		want        func(rows uint64) uint64
	}{
		{"counted", 0, func(rows uint64) uint64 { return rows }},
		{"too slow to count", time.Nanosecond, func(uint64) uint64 { return 0 }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			owner := openWith(t, itOwner, "s1", "", "127.0.0.1:0", func(c *Config) {
				if tc.peerTimeout > 0 {
					c.PeerTimeout = tc.peerTimeout
				}
			})
			defer mustClose(t, owner)
			tbl := mustOwn(t, owner)
			ctx := ctxT(t, 30*time.Second)
			const rows = 5000 // more than one count check interval
			var ws []Write
			for i := range rows + 10 {
				ws = append(ws, Write{Key: fmt.Appendf(nil, "k%05d", i), Value: []byte("v")})
			}
			for i := range 10 {
				ws = append(ws, Write{Key: fmt.Appendf(nil, "k%05d", rows+i), Delete: true}, Write{Key: fmt.Appendf(nil, "k%05d", i), Value: []byte("w")})
			}
			if _, err := tbl.Apply(ctx, ws...); err != nil {
				t.Fatal(err)
			}
			begin, end := rawTransfer(t, ctx, owner.Addr())
			if begin.Count != tc.want(rows) || end.Count != rows || begin.Seq != tbl.Head() {
				t.Fatalf("begin announces %d rows at seq %d, end counts %d; want %d, %d at seq %d",
					begin.Count, begin.Seq, end.Count, tc.want(rows), rows, tbl.Head())
			}
		})
	}
}

// rawTransfer subscribes to the owner at addr with an empty cursor and
// returns the transfer's begin and end frames.
func rawTransfer(t *testing.T, ctx context.Context, addr string) (begin, end *transport.OwnerFrame) {
	t.Helper()
	conn, err := transport.Dial(addr, transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := transport.NewReplicationClient(conn).Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&transport.ConsumerFrame{Kind: transport.KindOpen, Open: &transport.Open{
		Version: transport.ProtocolVersion, Service: "products", Instance: "raw", Table: itTable}}); err != nil {
		t.Fatal(err)
	}
	for {
		f, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		switch f.Kind {
		case transport.KindSnapshotBegin:
			begin = f
		case transport.KindSnapshotEnd:
			return begin, f
		}
	}
}

// ---- a log handler that keeps records ----

type captured struct {
	mu   sync.Mutex
	recs []map[string]string // message under "msg", then every attribute
}

func (c *captured) find(msg string) (map[string]string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range c.recs {
		if r["msg"] == msg {
			return r, true
		}
	}
	return nil, false
}

func (c *captured) messages() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, r := range c.recs {
		out = append(out, r["msg"])
	}
	return out
}

type captureHandler struct {
	rec   *captured
	attrs []slog.Attr
}

func (h *captureHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *captureHandler) Handle(_ context.Context, r slog.Record) error {
	m := map[string]string{"msg": r.Message}
	for _, a := range h.attrs {
		m[a.Key] = a.Value.String()
	}
	r.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.String(); return true })
	h.rec.mu.Lock()
	h.rec.recs = append(h.rec.recs, m)
	h.rec.mu.Unlock()
	return nil
}

func (h *captureHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &captureHandler{rec: h.rec, attrs: append(slices.Clip(h.attrs), as...)}
}

func (h *captureHandler) WithGroup(string) slog.Handler { return h }

// ---- last error ----

// A startup error (the owner unreachable) stays in LastErr while the
// replica retries, and is cleared once the stream is streaming again, after
// a full transfer and after a resume.
func TestReplica_LastErrClearedWhenStreaming(t *testing.T) {
	cases := []struct {
		name   string
		resume bool // the consumer holds a copy already: it resumes
	}{
		{"after a full transfer", false},
		{"after a resume", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			owner := openWith(t, itOwner, "s1", "", "127.0.0.1:0", nil)
			defer mustClose(t, owner)
			tbl := mustOwn(t, owner)
			ctx := ctxT(t, 30*time.Second)
			if _, err := tbl.Put(ctx, []byte("k"), []byte("v")); err != nil {
				t.Fatal(err)
			}
			proxy := newProxy(t, owner.Addr())
			dir := t.TempDir()
			if tc.resume {
				cs := openComponent(t, "products", "p1", dir, "")
				r, err := cs.Subscribe(ctx, SubscribeOptions{Service: itOwner, Table: itTable, Addr: proxy.Addr()})
				if err != nil {
					t.Fatal(err)
				}
				mustConverge(t, tbl, r)
				mustClose(t, cs)
			}
			proxy.SetTarget(freeAddr(t)) // nothing listens there
			cs := openComponent(t, "products", "p1", dir, "")
			defer mustClose(t, cs)
			r, err := cs.Subscribe(ctx, SubscribeOptions{Service: itOwner, Table: itTable, Addr: proxy.Addr()})
			if err != nil {
				t.Fatal(err)
			}
			waitUntil(t, 20*time.Second, "the unreachable owner in LastErr", func() bool {
				st := r.Status()
				return st.LastErr != nil && st.State == StateConnecting
			})
			t.Logf("startup error: %v", r.Status().LastErr)
			proxy.SetTarget(owner.Addr())
			waitUntil(t, 20*time.Second, "the stream to run", func() bool {
				st := r.Status()
				return st.State == StateStreaming && st.Stats.FullTransfers+st.Stats.Resumes > 0
			})
			st := r.Status()
			if st.LastErr != nil {
				t.Fatalf("LastErr %v while streaming (state %s)", st.LastErr, st.State)
			}
			if tc.resume != (st.Stats.Resumes > 0) {
				t.Fatalf("stats %+v: want resumed=%v", st.Stats, tc.resume)
			}
			mustConverge(t, tbl, r)
		})
	}
}
