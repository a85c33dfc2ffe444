package replica

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/replmesh/replmesh/transport"
)

// Restore: an owner instance that lost its data (and every standby) gets a
// table back from a consumer's replica. The consumer's component serves its
// replica's current generation as a full state transfer (restoresource.go,
// the Subscribe machinery in the other direction); the owner receives it
// like a standby does, into its emptied table marked Restoring, so that a
// restore interrupted at any point (either side killed, the stream cut)
// leaves the table empty, never partial, and can be started again. The
// owner then continues the replica's history: its log id and seq, a log
// that starts after that seq, and a new epoch above every epoch that
// history has seen. Consumers then decide as after any owner change
// (decideStart): at the restored seq they resume, behind it they take a
// full transfer, beyond it (holding changes the source never had) they are
// truncated and transferred.
//
// Safety rules (checkRestore, a pure function):
//
//   - an owner that holds a newer history of its own is never restored
//     over: one at or beyond the source's seq (any log id), or of the
//     source's log id with changes of a newer epoch than the source's;
//   - the source's log id must be the expected one: the owner's own when
//     it holds changes, else the newest history (highest epoch) any
//     candidate holds, which is the one the owner's service served last;
//     RestoreOptions.LogID overrides it;
//   - with Config.TLS only an admin identity may start one over the wire
//     (the Restore RPC), only an instance of the table's service may ask
//     a replica for its rows, and the owner takes rows only from a source
//     whose service may read the table (its access rules).

// RestoreOptions configure Component.Restore and Component.PlanRestore.
type RestoreOptions struct {
	// Source names the replica to restore from (its component's
	// replication address; with Config.TLS also its service, which the
	// dial checks against the peer's certificate). Empty: the most
	// advanced replica among Candidates.
	Source transport.RestoreSource
	// Candidates are the components asked for their position when no
	// Source is named (and, with one, to learn the expected history).
	// Empty with Config.Brokers: every subscriber of the table the
	// broker's Status lists (which needs an admin or operator identity
	// when the broker checks identities: pass Candidates then, as replctl
	// does).
	Candidates []transport.RestoreSource
	// LogID overrides the log id check: the restore takes this history
	// even though it is not the expected one. It does not override the
	// newer-history rule.
	LogID string
	// Progress, when set, is called from the restoring goroutine: once
	// with the plan (Phase plan), during the transfer at most every
	// ProgressEvery (Phase transfer), once the copy is complete (Phase
	// epoch) and at the end (Phase done). It must not block for long.
	Progress func(RestoreProgress)
	// ProgressEvery bounds the rate of transfer progress calls (default
	// one second).
	ProgressEvery time.Duration
}

// RestorePlan is what a restore would do: every candidate's answer, the
// chosen source, the history expected and the owner's own.
type RestorePlan struct {
	Table string
	// Positions are the candidates asked (Err set for those that did not
	// answer or hold no copy).
	Positions []transport.ReplicaPosition
	// Source is the chosen replica and its position.
	Source transport.ReplicaPosition
	// ExpectedLogID is the history the source must hold (the log id
	// check), OverrideLogID the one RestoreOptions.LogID named.
	ExpectedLogID string
	OverrideLogID string
	// The owner's table before the restore.
	OwnerLogID string
	OwnerEpoch uint64
	OwnerHead  uint64
}

// RestoreProgress is one progress report of a running restore.
type RestoreProgress struct {
	Table string
	// Phase is one of transport.RestorePhasePlan, RestorePhaseTransfer,
	// RestorePhaseEpoch, RestorePhaseDone.
	Phase string
	Plan  RestorePlan
	// Transfer is the transfer's progress (zero before it begins).
	Transfer TransferProgress
	// NewEpoch is, at Phase done, the epoch the table writes at.
	NewEpoch uint64
	// Err is, at Phase failed, why the restore failed.
	Err error
}

// RestoreResult is the outcome of a completed restore.
type RestoreResult struct {
	Plan RestorePlan
	// The history restored: its log id, the epoch of its newest change
	// and its seq (the owner's head; its log starts at Seq+1).
	LogID string
	Epoch uint64
	Seq   uint64
	// NewEpoch is the epoch the table takes writes at from Seq+1: above
	// every epoch the restored history has seen.
	NewEpoch uint64
	// Rows and Bytes (keys plus values) received; Took is the whole
	// restore's duration, Transfer the rows' alone.
	Rows, Bytes    uint64
	Took, Transfer time.Duration
}

// restoreHistory is one side of the restore checks.
type restoreHistory struct {
	LogID string
	Epoch uint64 // the owner's: the epoch of its head; a source's: of its newest change
	Seq   uint64
}

func (h restoreHistory) String() string {
	if h.LogID == "" {
		return "no history"
	}
	return fmt.Sprintf("log %s at epoch %d, seq %d", h.LogID, h.Epoch, h.Seq)
}

// checkRestore decides whether the owner's table (own) may be replaced by
// the source's history (src), expected being the log id the source must
// hold and override the one the caller named (""). It is pure.
func checkRestore(table string, own, src restoreHistory, expected, override string) error {
	if src.LogID == "" || src.Seq == 0 {
		return fmt.Errorf("%w: restore %s: the source holds no copy (%s)", transport.ErrRestoreRefused, table, src)
	}
	if own.Seq > 0 {
		newer := own.Seq >= src.Seq || (own.LogID == src.LogID && own.Epoch > src.Epoch)
		if newer {
			return fmt.Errorf("%w: restore %s: the owner holds a newer history of its own (%s) than the source (%s)",
				transport.ErrRestoreRefused, table, own, src)
		}
	}
	if src.LogID != expected && src.LogID != override {
		return fmt.Errorf("%w: restore %s: the source holds %s, but the expected history is log %s (owner: %s); name the source's log id to override",
			transport.ErrRestoreRefused, table, src, expected, own)
	}
	return nil
}

// errRestoring says that t is being restored.
func (t *OwnedTable) errRestoring() error {
	return fmt.Errorf("%w: %w: table %s of %s/%s", ErrRestoring, transport.ErrUnavailable, t.name, t.c.cfg.Service, t.c.cfg.Instance)
}

// PlanRestore asks the candidates where they stand and chooses the source
// as Restore would, changing nothing. The plan comes back also with the
// error that would refuse the restore (ErrRestoreRefused).
func (c *Component) PlanRestore(ctx context.Context, table string, opts RestoreOptions) (RestorePlan, error) {
	t, err := c.ownedTable(table)
	if err != nil {
		return RestorePlan{}, err
	}
	own := t.ownHistory()
	plan, _, err := c.planRestore(ctx, t, own, opts)
	return plan, err
}

// ownHistory is the owner's table as the restore checks see it.
func (t *OwnedTable) ownHistory() restoreHistory {
	m, _ := t.state()
	return restoreHistory{LogID: m.LogID, Epoch: m.Epochs.EpochOf(m.Head), Seq: m.Head}
}

// planRestore gathers the positions and chooses the source. src is the
// chosen source's history.
func (c *Component) planRestore(ctx context.Context, t *OwnedTable, own restoreHistory, opts RestoreOptions) (RestorePlan, restoreHistory, error) {
	m, _ := t.state()
	plan := RestorePlan{Table: t.name, OverrideLogID: opts.LogID, OwnerLogID: m.LogID, OwnerEpoch: m.Epoch, OwnerHead: m.Head}
	cands := slices.Clone(opts.Candidates)
	if len(cands) == 0 && opts.Source.Addr == "" {
		var err error
		if cands, err = c.brokerCandidates(ctx, t.name); err != nil {
			return plan, restoreHistory{}, fmt.Errorf("restore %s: find candidates: %w", t.name, err)
		}
	}
	if opts.Source.Addr != "" && !slices.ContainsFunc(cands, func(s transport.RestoreSource) bool { return s.Addr == opts.Source.Addr }) {
		cands = append(cands, opts.Source)
	}
	if len(cands) == 0 {
		return plan, restoreHistory{}, fmt.Errorf("%w: restore %s: no candidate replica (name a source or candidates)", ErrInvalid, t.name)
	}
	plan.Positions = c.positions(ctx, t.name, cands)
	if err := ctx.Err(); err != nil {
		return plan, restoreHistory{}, err
	}
	// The expected history: the owner's own when it holds changes, else
	// the newest (highest epoch, then seq) any candidate holds.
	plan.ExpectedLogID = own.LogID
	if own.Seq == 0 {
		plan.ExpectedLogID = ""
		if best, ok := mostAdvanced(plan.Positions, ""); ok {
			plan.ExpectedLogID = best.LogID
		}
	}
	var chosen transport.ReplicaPosition
	if opts.Source.Addr != "" {
		i := slices.IndexFunc(plan.Positions, func(p transport.ReplicaPosition) bool { return p.Source.Addr == opts.Source.Addr })
		chosen = plan.Positions[i]
		if chosen.Err != "" {
			return plan, restoreHistory{}, fmt.Errorf("%w: restore %s: source %s: %s", transport.ErrUnavailable, t.name, chosen.Source, chosen.Err)
		}
	} else {
		want := plan.ExpectedLogID
		if opts.LogID != "" {
			want = opts.LogID
		}
		best, ok := mostAdvanced(plan.Positions, want)
		if !ok {
			return plan, restoreHistory{}, fmt.Errorf("%w: restore %s: no candidate holds log %s (%s)", transport.ErrRestoreRefused, t.name, want, describePositions(plan.Positions))
		}
		chosen = best
	}
	plan.Source = chosen
	src := restoreHistory{LogID: chosen.LogID, Epoch: chosen.Epoch, Seq: chosen.Seq}
	return plan, src, checkRestore(t.name, own, src, plan.ExpectedLogID, opts.LogID)
}

// mostAdvanced returns the position with the newest copy among those that
// answered (of log id logID, unless ""): the highest epoch, then the
// highest seq (a replica of a newer epoch holds the later history even
// when a deposed primary's replica has more changes).
func mostAdvanced(ps []transport.ReplicaPosition, logID string) (transport.ReplicaPosition, bool) {
	var best transport.ReplicaPosition
	ok := false
	for _, p := range ps {
		if p.Err != "" || p.LogID == "" || p.Seq == 0 || (logID != "" && p.LogID != logID) {
			continue
		}
		if !ok || p.Epoch > best.Epoch || (p.Epoch == best.Epoch && p.Seq > best.Seq) {
			best, ok = p, true
		}
	}
	return best, ok
}

func describePositions(ps []transport.ReplicaPosition) string {
	if len(ps) == 0 {
		return "no candidates"
	}
	s := ""
	for i, p := range ps {
		if i > 0 {
			s += "; "
		}
		if p.Err != "" {
			s += fmt.Sprintf("%s: %s", p.Source, p.Err)
		} else {
			s += fmt.Sprintf("%s: log %s epoch %d seq %d (%s)", p.Source, p.LogID, p.Epoch, p.Seq, p.State)
		}
	}
	return s
}

// positions asks every candidate, in parallel, where its replica of this
// service's table stands.
func (c *Component) positions(ctx context.Context, table string, cands []transport.RestoreSource) []transport.ReplicaPosition {
	out := make([]transport.ReplicaPosition, len(cands))
	var wg sync.WaitGroup
	for i, s := range cands {
		out[i].Source = s
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := &out[i]
			cctx, cancel := context.WithTimeout(ctx, c.cfg.PeerTimeout)
			defer cancel()
			cli, err := c.restoreClient(s)
			if err != nil {
				p.Err = err.Error()
				return
			}
			r, err := cli.Position(cctx, &transport.PositionRequest{Version: transport.ProtocolVersion, Service: c.cfg.Service, Table: table})
			if err != nil {
				p.Err = err.Error()
				return
			}
			if s.Service != "" && r.Service != s.Service {
				p.Err = fmt.Sprintf("answered as service %q, not %q", r.Service, s.Service)
				return
			}
			p.Source.Service, p.Source.Instance = r.Service, r.Instance
			p.LogID, p.Epoch, p.Seq, p.State = r.LogID, r.Epoch, r.Seq, r.State
			if r.LogID == "" || r.Seq == 0 {
				p.Err = "holds no complete copy"
			}
		}()
	}
	wg.Wait()
	return out
}

// restoreClient dials s. With Config.TLS its service must be named: the
// handshake checks the peer's certificate against it.
func (c *Component) restoreClient(s transport.RestoreSource) (*transport.RestoreClient, error) {
	if c.cfg.TLS != nil && s.Service == "" {
		return nil, fmt.Errorf("%w: restore source %s: name its service (the TLS handshake checks the peer's identity)", ErrInvalid, s.Addr)
	}
	cc, err := c.conn(ownerPeer(s.Addr, s.Service))
	if err != nil {
		return nil, err
	}
	return transport.NewRestoreClient(cc), nil
}

// brokerCandidates lists, from the broker's Status, every instance that
// subscribes to this service's table and has a replication address.
func (c *Component) brokerCandidates(ctx context.Context, table string) ([]transport.RestoreSource, error) {
	if len(c.cfg.Brokers) == 0 {
		return nil, nil
	}
	var lastErr error
	for _, addr := range c.brokerAddrs() {
		cc, err := c.conn(brokerPeer(addr))
		if err != nil {
			lastErr = err
			continue
		}
		var out []transport.RestoreSource
		token := ""
		for page := 0; page < 10000; page++ {
			cctx, cancel := context.WithTimeout(ctx, c.cfg.PeerTimeout)
			st, err := transport.NewBrokerClient(cc).Status(cctx, &transport.StatusRequest{Version: transport.ProtocolVersion, PageToken: token})
			cancel()
			if err != nil {
				lastErr = err
				out = nil
				break
			}
			for _, in := range st.Instances {
				if in.Addr == "" || (in.Service == c.cfg.Service && in.Instance == c.cfg.Instance) {
					continue
				}
				if slices.ContainsFunc(in.Subscriptions, func(s transport.SubInfo) bool { return s.Service == c.cfg.Service && s.Table == table }) {
					out = append(out, transport.RestoreSource{Service: in.Service, Instance: in.Instance, Addr: in.Addr})
				}
			}
			if token = st.NextPageToken; token == "" {
				return out, nil
			}
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
	return nil, lastErr
}

// Restore replaces owned table `table` with a consumer's replica of it and
// continues that replica's history (see the top of restore.go). It blocks
// until the table takes writes again (with brokers: until the broker
// granted the new epoch), the restore fails, or ctx ends.
//
// While it runs, writes to the table fail with ErrRestoring, and reads and
// subscriptions of it are refused (ErrRestoring; transport.ErrUnavailable
// for a peer). If it fails once it has begun (the source or the stream
// lost, ctx cancelled, the process killed), the table is left empty: a
// new, empty history, not readable half-filled; it can be restored again.
// A restore refused by a safety rule (transport.ErrRestoreRefused) or
// before any row arrived changes nothing.
//
// With brokers only the primary instance restores (a standby copies the
// restored primary). The source must have a listener (Config.ListenAddr).
func (c *Component) Restore(ctx context.Context, table string, opts RestoreOptions) (RestoreResult, error) {
	began := time.Now()
	t, err := c.ownedTable(table)
	if err != nil {
		return RestoreResult{}, err
	}
	if len(c.cfg.Brokers) > 0 {
		if r, _ := c.Role(); r != transport.RolePrimary {
			return RestoreResult{}, fmt.Errorf("restore %s: %w", table, t.checkWritable())
		}
	}
	if !t.markRestoring() {
		return RestoreResult{}, fmt.Errorf("restore %s: %w: a restore of it is running", table, ErrRestoring)
	}
	defer t.restoring.Store(false)
	res, err := c.restoreMarked(ctx, t, opts)
	res.Took = time.Since(began)
	return res, err
}

// markRestoring sets t's restoring flag; false if it was set. Submit holds
// restoreMu (read) from its check until its write is queued: once the flag
// is set under the write lock, every write that passed the check is
// queued, and beginRestore's barrier sees it committed before the table
// is emptied.
func (t *OwnedTable) markRestoring() bool {
	t.restoreMu.Lock()
	defer t.restoreMu.Unlock()
	return t.restoring.CompareAndSwap(false, true)
}

// restoreMarked runs a restore of t, whose restoring flag the caller has
// set (and clears when it is done with the table). A failure once rows
// began to arrive leaves the table empty.
func (c *Component) restoreMarked(ctx context.Context, t *OwnedTable, opts RestoreOptions) (RestoreResult, error) {
	started := false // the table was touched: a failure leaves it empty
	res, err := c.restore(ctx, t, opts, &started)
	if err != nil {
		if started {
			if rerr := t.resetEmpty(); rerr != nil {
				c.log.Error("restore failed and the table could not be emptied", "table", t.name, "err", rerr)
			}
			if len(c.cfg.Brokers) > 0 {
				c.applyCurrentRole(t)
			}
		}
		c.log.Warn("restore failed", "table", t.name, "err", err, "table_emptied", started)
		t.report(&opts, RestoreProgress{Table: t.name, Phase: transport.RestorePhaseFailed, Plan: res.Plan, Err: err})
		return res, err
	}
	c.log.Info("table restored", "table", t.name, "source", res.Plan.Source.Source.String(), "log_id", res.LogID,
		"seq", res.Seq, "epoch", res.NewEpoch, "rows", res.Rows)
	return res, nil
}

// startAutoRestore restores t in the background (Config.AutoRestore): t
// was created empty in a data dir that was empty at Open, and refuses
// writes (its restoring flag is set) until this is over.
func (c *Component) startAutoRestore(t *OwnedTable) {
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer t.restoring.Store(false)
		c.autoRestore(t)
	}()
}

// autoRestore looks for a replica to restore t from for up to
// AutoRestoreWait: once this instance is the primary and its service has
// no standby, the most advanced replica the broker lists. Attempts that
// find no source are repeated with backoff; a restore that fails is tried
// again within the same bound.
func (c *Component) autoRestore(t *OwnedTable) {
	search, cancel := context.WithTimeout(c.ctx, c.cfg.AutoRestoreWait)
	defer cancel()
	backoff := transport.Backoff{Min: c.cfg.ReconnectMin, Max: c.cfg.ReconnectMax, Jitter: true}
	var last error = errors.New("not the primary yet")
	for {
		if role, _ := c.Role(); role == transport.RolePrimary {
			if so, ok := c.serviceOwner(c.cfg.Service); ok && len(so.Standbys) > 0 {
				c.log.Info("automatic restore skipped: the service has a standby", "table", t.name, "standbys", len(so.Standbys))
				return
			}
			var plan RestorePlan
			if plan, last = c.PlanRestore(search, t.name, RestoreOptions{}); last == nil {
				c.log.Warn("automatic restore from the most advanced replica (Config.AutoRestore)", "table", t.name,
					"source", plan.Source.Source.String(), "log_id", plan.Source.LogID, "seq", plan.Source.Seq)
				cands := make([]transport.RestoreSource, 0, len(plan.Positions))
				for _, p := range plan.Positions {
					cands = append(cands, p.Source)
				}
				if _, last = c.restoreMarked(c.ctx, t, RestoreOptions{Candidates: cands}); last == nil {
					return
				}
			}
		}
		tm := time.NewTimer(backoff.Next())
		select {
		case <-tm.C:
		case <-search.Done():
			tm.Stop()
			if c.ctx.Err() == nil {
				c.log.Warn("automatic restore found no replica to restore from: the table starts empty", "table", t.name,
					"waited", c.cfg.AutoRestoreWait, "last_err", last)
			}
			return
		}
	}
}

// report records p as t's newest restore report (RestoreProgress, the
// Watch of the Restore RPC) and passes it to opts.Progress.
func (t *OwnedTable) report(opts *RestoreOptions, p RestoreProgress) {
	t.lastRestore.Store(&p)
	if opts.Progress != nil {
		opts.Progress(p)
	}
}

// RestoreProgress returns the newest report of the table's running or last
// restore since the component opened (Phase "" when there was none),
// however it was started (Restore, the Restore RPC, AutoRestore). Transfer
// reports are recorded every RestoreOptions.ProgressEvery.
func (c *Component) RestoreProgress(table string) (RestoreProgress, error) {
	t, err := c.ownedTable(table)
	if err != nil {
		return RestoreProgress{}, err
	}
	if p := t.lastRestore.Load(); p != nil {
		return *p, nil
	}
	return RestoreProgress{Table: table}, nil
}

func (c *Component) restore(ctx context.Context, t *OwnedTable, opts RestoreOptions, started *bool) (RestoreResult, error) {
	own := t.ownHistory()
	plan, src, err := c.planRestore(ctx, t, own, opts)
	res := RestoreResult{Plan: plan}
	if err != nil {
		return res, err
	}
	t.report(&opts, RestoreProgress{Table: t.name, Phase: transport.RestorePhasePlan, Plan: plan})
	cli, err := c.restoreClient(plan.Source.Source)
	if err != nil {
		return res, err
	}
	// Only a service that may read the table may serve it: with TLS the
	// dial checked the peer is of the named service.
	if err := t.allowed(plan.Source.Source.Service, c.cfg.TLS != nil); err != nil {
		return res, fmt.Errorf("restore %s: source %s: %w", t.name, plan.Source.Source, err)
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := cli.Source(sctx, &transport.SourceRequest{Version: transport.ProtocolVersion, Service: c.cfg.Service,
		Instance: c.cfg.Instance, Table: t.name, LogID: src.LogID})
	if err != nil {
		return res, fmt.Errorf("restore %s: source %s: %w", t.name, plan.Source.Source, err)
	}
	// A stream that delivers nothing for PeerTimeout is dropped, as a
	// consumer's is.
	watchdog := time.AfterFunc(c.cfg.PeerTimeout, cancel)
	defer watchdog.Stop()
	recv := func() (*transport.OwnerFrame, error) {
		if err := ctx.Err(); err != nil {
			return nil, err // frames already buffered are not taken once the caller gave up
		}
		f, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("%w: the source ended the stream early", transport.ErrUnavailable)
			}
			if sctx.Err() != nil && ctx.Err() == nil {
				return nil, fmt.Errorf("%w: no frame from the source for %s", transport.ErrUnavailable, c.cfg.PeerTimeout)
			}
			return nil, err
		}
		watchdog.Reset(c.cfg.PeerTimeout)
		return f, nil
	}
	f, err := recv()
	if err != nil {
		return res, fmt.Errorf("restore %s: %w", t.name, err)
	}
	if f.Kind != transport.KindStart || f.Start == nil {
		return res, fmt.Errorf("%w: restore %s: first frame is %s, want start", transport.ErrBadRequest, t.name, f.Kind)
	}
	// The replica may have moved on since it was asked: check what it sends.
	st := f.Start
	src = restoreHistory{LogID: st.LogID, Epoch: st.Epoch, Seq: st.HeadSeq}
	if err := checkRestore(t.name, own, src, plan.ExpectedLogID, opts.LogID); err != nil {
		return res, err
	}
	begin, err := recv()
	if err != nil {
		return res, fmt.Errorf("restore %s: %w", t.name, err)
	}
	if begin.Kind != transport.KindSnapshotBegin || begin.Seq != src.Seq || begin.Epoch != src.Epoch {
		return res, fmt.Errorf("%w: restore %s: expected snapshot-begin at seq %d epoch %d, got %s at seq %d epoch %d",
			transport.ErrBadRequest, t.name, src.Seq, src.Epoch, begin.Kind, begin.Seq, begin.Epoch)
	}
	*started = true
	x, err := t.beginRestore(src.Seq)
	if err != nil {
		return res, err
	}
	defer x.wb.Cancel()
	xfer := &transfer{seq: src.Seq, expected: begin.Count, started: time.Now()}
	every := opts.ProgressEvery
	if every <= 0 {
		every = time.Second
	}
	for {
		f, err := recv()
		if err != nil {
			return res, fmt.Errorf("restore %s: %w", t.name, err)
		}
		if f.Kind == transport.KindSnapshotEnd {
			if err := checkSnapshotEnd(f, src.Seq, xfer.rows); err != nil {
				return res, fmt.Errorf("restore %s: %w", t.name, err)
			}
			break
		}
		if f.Kind != transport.KindRows {
			return res, fmt.Errorf("%w: restore %s: unexpected %s frame during the transfer", transport.ErrBadRequest, t.name, f.Kind)
		}
		if err := c.disk.Admit(rowsCost(f.Rows)); err != nil {
			return res, fmt.Errorf("restore %s: stage rows: %w", t.name, err)
		}
		for i := range f.Rows {
			row := &f.Rows[i]
			if len(row.Key) == 0 || len(row.Key) > transport.MaxKeySize {
				return res, fmt.Errorf("%w: restore %s: row with a key of %d bytes", transport.ErrBadRequest, t.name, len(row.Key))
			}
			if err := x.put(row.Key, row.Value); err != nil {
				return res, fmt.Errorf("restore %s: stage rows: %w", t.name, err)
			}
			xfer.bytes += uint64(len(row.Key) + len(row.Value))
		}
		xfer.rows += uint64(len(f.Rows))
		if now := time.Now(); now.Sub(xfer.logged) >= every {
			xfer.logged = now
			t.report(&opts, RestoreProgress{Table: t.name, Phase: transport.RestorePhaseTransfer, Plan: plan, Transfer: xfer.progress(now)})
		}
	}
	final := xfer.progress(time.Now())
	res.LogID, res.Epoch, res.Seq, res.Rows, res.Bytes, res.Transfer = src.LogID, src.Epoch, src.Seq, xfer.rows, xfer.bytes, final.Elapsed
	// Above every epoch the history has seen: the source's, the other
	// candidates' (one beyond the source may hold a later epoch), the
	// owner's own and its grant's.
	seen := max(src.Epoch, plan.OwnerEpoch)
	for _, p := range plan.Positions {
		if p.Err == "" {
			seen = max(seen, p.Epoch)
		}
	}
	if len(c.cfg.Brokers) > 0 {
		_, e := c.Role()
		seen = max(seen, e)
	}
	if err := x.finish(src, seen, len(c.cfg.Brokers) == 0); err != nil {
		return res, err
	}
	t.report(&opts, RestoreProgress{Table: t.name, Phase: transport.RestorePhaseEpoch, Plan: plan, Transfer: final})
	t.restoring.Store(false)
	*started = false // complete: from here on a failure is the epoch wait's, the copy stays
	if len(c.cfg.Brokers) > 0 {
		c.applyCurrentRole(t)
		if err := t.waitWritable(ctx); err != nil {
			return res, fmt.Errorf("restore %s: the copy is complete at seq %d; waiting for a new epoch from the broker: %w", t.name, src.Seq, err)
		}
	}
	m, _ := t.state()
	res.NewEpoch = m.Epoch
	t.report(&opts, RestoreProgress{Table: t.name, Phase: transport.RestorePhaseDone, Plan: plan, Transfer: final, NewEpoch: m.Epoch})
	return res, nil
}

// waitWritable waits until t takes writes (a primary at a new epoch).
func (t *OwnedTable) waitWritable(ctx context.Context) error {
	for {
		_, ch := t.state()
		if t.writable.Load() {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-t.c.done():
			return ErrClosed
		}
	}
}

// restoreTransfer is a restore being written into an owned table.
type restoreTransfer struct {
	t   *OwnedTable
	seq uint64
	wb  *badger.WriteBatch
}

// beginRestore empties t and marks it Restoring, durably, before touching
// a row: readers then refuse it (readMeta), and an owner that dies during
// the restore finds the mark at Own and starts empty.
func (t *OwnedTable) beginRestore(seq uint64) (*restoreTransfer, error) {
	// The writes queued before the restoring flag was set are committed
	// before the table is emptied; later ones fail their check.
	if err := t.c.inCommitter(func() {}); err != nil {
		return nil, err
	}
	t.c.roleMu.Lock()
	defer t.c.roleMu.Unlock()
	t.mu.Lock()
	m := t.meta
	t.mu.Unlock()
	m.LogID, m.Head, m.First, m.Epochs, m.Restoring, m.NeedEpoch = "", 0, 1, nil, true, false
	// clearTo wakes the senders: they see restoring and end their streams.
	if err := t.clearTo(m); err != nil {
		return nil, fmt.Errorf("begin restore of %s: %w", t.name, err)
	}
	return &restoreTransfer{t: t, seq: seq, wb: t.c.db.NewWriteBatch()}, nil
}

func (x *restoreTransfer) put(key, value []byte) error {
	return x.wb.Set(concat(x.t.rowPrefix, key), encodeInlineRow(x.seq, value))
}

// finish makes the restored copy the table: the rows are flushed, then one
// meta write names src's history at its seq, with a log that starts after
// it. seen is the highest epoch known to that history. Without brokers
// (newEpoch) the table takes epoch seen+1 at once; with brokers it waits
// for a grant above seen (NeedEpoch).
func (x *restoreTransfer) finish(src restoreHistory, seen uint64, newEpoch bool) error {
	t := x.t
	if err := x.wb.Flush(); err != nil {
		return fmt.Errorf("finish restore of %s: stage rows: %w", t.name, err)
	}
	t.c.roleMu.Lock()
	defer t.c.roleMu.Unlock()
	t.mu.Lock()
	m := t.meta
	t.mu.Unlock()
	// The source knows the epoch of its newest change only: the history
	// says it began at that seq (an older replica at a lower seq is
	// transferred, never truncated for it).
	m.LogID, m.Head, m.First, m.Restoring = src.LogID, src.Seq, src.Seq+1, false
	m.Rows = m.Head
	m.Epochs = transport.EpochHistory{{Epoch: src.Epoch, Seq: src.Seq}}
	m.Epoch, m.NeedEpoch = seen, true
	if newEpoch {
		m.Epoch, m.NeedEpoch = seen+1, false
		m.Epochs = m.Epochs.Append(m.Epoch, src.Seq+1)
	}
	if err := t.writeMeta(m); err != nil {
		return fmt.Errorf("finish restore of %s: %w", t.name, err)
	}
	if err := t.c.db.Sync(); err != nil {
		return fmt.Errorf("finish restore of %s: sync: %w", t.name, err)
	}
	if !newEpoch {
		t.writable.Store(false) // until the broker grants the new epoch
	}
	t.sync.reset(m.Head) // consumers held every restored change
	t.markOwn.Store(true)
	t.publish(m)
	return nil
}

// resetEmpty makes t an empty table with a new history: what a restore
// leaves when it does not complete. The rows go while the meta still says
// Restoring (a restart in between empties the table again); the epoch is
// kept (a new one comes with the next grant or start).
func (t *OwnedTable) resetEmpty() error {
	t.mu.Lock()
	epoch := max(t.meta.Epoch, 1)
	t.mu.Unlock()
	m := ownerMeta{Epoch: epoch, First: 1, Restoring: true, Format: ownFormat}
	if err := t.clearTo(m); err != nil {
		return err
	}
	m.LogID, m.Restoring = newLogID(), false
	m.Epochs = transport.EpochHistory{{Epoch: epoch, Seq: 1}}
	if err := t.writeMeta(m); err != nil {
		return err
	}
	if err := t.c.db.Sync(); err != nil {
		return err
	}
	t.publish(m)
	return nil
}
