package replica

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/replmesh/replmesh/transport"
	"google.golang.org/grpc"
)

// A Feed follows one table's change log from a chosen seq: a change-data
// capture consumer (replctl tail, a CDC pipeline into another system) reads
// every change in seq order, each once, without holding a replica of the
// table.
//
// Unlike a Replica, a Feed never takes a full state transfer: it delivers
// changes only, from the owner's log, and stops with a typed error where a
// replica would quietly copy the owner's state instead:
//
//   - the changes after its position were trimmed from the owner's log
//     (*FeedTrimmedError, wrapping transport.ErrResync);
//   - the owner's history no longer contains the changes it delivered (the
//     owner lost its disk, or changes written by a deposed primary were
//     lost in a failover): *FeedDivergedError, wrapping ErrDiverged, with
//     both positions. A feed never continues across a rewritten history;
//   - the table is unknown (transport.ErrUnknownTable; after a stream got
//     going this is taken for an owner still starting, and retried) or
//     access is denied (transport.ErrPermission).
//
// Anything else (an owner restarting, a lost connection, a failover to a
// standby, a deposed primary) is retried with a bounded backoff, and the
// feed resumes after the last change it received: on a Component through
// the broker's directory (as replicas find their owners), standalone
// through FeedConfig.Locate.
//
// Memory is bounded: the feed's goroutine receives ahead of Next at most
// FeedOptions.Buffer frames (each at most one owner frame, 64 KiB of
// changes) plus the one it is handing over; when the reader is slower,
// the goroutine stops receiving, gRPC's flow control stops the owner's
// sender, and the owner reads the changes from its log once the feed asks
// again.
type Feed struct {
	cfg   FeedConfig
	log   *slog.Logger
	label string // service/table

	ctx    context.Context // ends with Close (or the component)
	cancel context.CancelFunc
	closed atomic.Bool
	wg     sync.WaitGroup

	ch  chan feedBatch // batches received, not yet taken by Next
	err error          // why the feed ended; written before ch is closed
	// slots holds a token for each frame received and not yet taken by
	// Next: the goroutine takes one before it receives a frame (so it
	// receives nothing while Buffer frames wait), Next gives it back.
	slots chan struct{}

	// held counts the frames received from the owner and not yet taken by
	// Next (or dropped: heartbeats, resent changes); peak is its highest
	// value. Never above Options.Buffer.
	held, peak atomic.Int64

	// The feed goroutine's own state (no lock: only it touches them).
	pos     FeedPosition // where the next stream resumes: the last change received, or the start
	placed  bool         // pos.LogID is the owner's history (the start point is resolved)
	known   bool         // pos.Epoch is a change's epoch (or a saved position's), not a guess
	started int          // streams that got going

	mu        sync.Mutex
	delivered FeedPosition // the last change Next returned, or the start
}

// FeedStart says where a feed begins in the table's history.
type FeedStart int

// Where a feed begins. ONLY APPEND TO THIS LIST.
const (
	// FeedAtHead: after the owner's head when the feed first reaches it:
	// the changes committed from then on.
	FeedAtHead FeedStart = iota
	// FeedFromOldest: from the oldest change the owner's log holds.
	FeedFromOldest
	// FeedAfter: after FeedOptions.Seq, which must be in the owner's log
	// (or be its head, or the seq just before its oldest change).
	FeedAfter
	// FeedResume: after FeedOptions.Position, a position an earlier feed
	// returned (Feed.Position), in that history only: a history that no
	// longer contains it is a *FeedDivergedError.
	FeedResume
)

func (s FeedStart) String() string {
	switch s {
	case FeedAtHead:
		return "head"
	case FeedFromOldest:
		return "oldest"
	case FeedAfter:
		return "after"
	case FeedResume:
		return "resume"
	}
	return fmt.Sprintf("FeedStart(%d)", int(s))
}

// FeedPosition is a place in a table's history: the last change delivered
// (its seq and the epoch it was written in) in the log LogID. A CDC
// consumer saves it with what it wrote and resumes a later feed from it
// (FeedResume).
type FeedPosition struct {
	LogID string
	Seq   uint64
	Epoch uint64
}

// DefaultFeedBuffer is the number of frames a feed receives ahead of Next
// when FeedOptions.Buffer is 0.
const DefaultFeedBuffer = 4

// maxFeedBuffer bounds FeedOptions.Buffer (a frame holds up to 64 KiB of
// changes).
const maxFeedBuffer = 1024

// FeedOptions say where a feed starts and how it reports.
type FeedOptions struct {
	// Start says where the feed begins (default FeedAtHead).
	Start FeedStart
	// Seq is, with FeedAfter, the seq after which changes are delivered.
	Seq uint64
	// Position is, with FeedResume, the position to resume after.
	Position FeedPosition
	// Addr is the owner's address, for Component.Feed without brokers
	// (or to bypass them). Empty: the primary the brokers name.
	Addr string
	// Buffer is the number of frames received ahead of Next (0:
	// DefaultFeedBuffer; at most 1024).
	Buffer int
	// OnEvent, if set, is told when a stream gets going and when an
	// attempt failed and will be retried. It is called from the feed's
	// goroutine, in order; it must not block (the feed waits for it) and
	// must not call the Feed's methods other than Position.
	OnEvent func(FeedEvent)
}

// FeedEventKind says what a FeedEvent reports.
type FeedEventKind int

// Kinds of feed events. ONLY APPEND TO THIS LIST.
const (
	// FeedConnected: a stream got going on Owner; the changes after Seq
	// follow (the owner's head was HeadSeq).
	FeedConnected FeedEventKind = iota + 1
	// FeedRetrying: an attempt failed with Err; the next is in Wait.
	FeedRetrying
)

// FeedEvent is a feed's report of its connection (FeedOptions.OnEvent).
type FeedEvent struct {
	Kind FeedEventKind
	// Owner is the owner instance the stream went (or was going) to;
	// empty when none was found.
	Owner   transport.Endpoint
	Seq     uint64 // FeedConnected: the changes after this seq follow
	HeadSeq uint64 // FeedConnected: the owner's head
	Err     error  // FeedRetrying: why the attempt failed
	// Wait is, for FeedRetrying, the time until the next attempt.
	Wait time.Duration
	// Connected is, for FeedRetrying, whether a stream of this feed got
	// going before.
	Connected bool
}

// FeedBatch is what Next returns: changes in seq order, each delivered
// once per feed, continuing the previous batch with no gap. A commit group
// (one Apply) may span batches: Change.TxnEnd marks its last change.
// Change.Epoch is the epoch the change was written in.
type FeedBatch struct {
	Changes []Change
	// HeadSeq is the owner's head when it sent the batch.
	HeadSeq uint64
}

// FeedConfig is what a standalone feed (NewFeed) needs: where the owner is
// and how to reach it. Component.Feed fills it from the component (its
// broker session's directory, TLS config and identity).
type FeedConfig struct {
	// Service and Table name the table followed (the owner's service).
	Service, Table string
	// ConsumerService and ConsumerInstance are presented to the owner in
	// the stream's Open: the owner's access policy decides on them (with
	// TLS, on the certificate's identity).
	ConsumerService, ConsumerInstance string
	// Locate returns the table's primary owner, and the lowest epoch it
	// may have (a deposed primary is below it: its stream is refused and
	// retried). It is called before each connection and every Recheck
	// while a stream runs (a moved primary ends the stream); never
	// concurrently with itself.
	Locate func(ctx context.Context) (transport.ServiceOwner, error)
	// Dial returns a connection to an owner and a func that releases it
	// (called when the feed is done with it).
	Dial func(addr string) (grpc.ClientConnInterface, func(), error)
	// PeerTimeout: a stream on which the owner says nothing for this long
	// (owners heartbeat idle streams) is dropped and re-opened. Only the
	// time waiting for the owner counts, not the time the reader takes.
	PeerTimeout time.Duration
	// Recheck is the interval of Locate while a stream runs.
	Recheck time.Duration
	// ReconnectMin and ReconnectMax bound the backoff between attempts.
	ReconnectMin, ReconnectMax time.Duration
	// Logger (nil: slog.Default()).
	Logger *slog.Logger
	// Options: where the feed starts, its buffer, its events.
	Options FeedOptions
}

// Errors of feeds.
var (
	// ErrFeedClosed is returned by Next after Close.
	ErrFeedClosed = errors.New("replica: feed closed")
)

// FeedTrimmedError: the changes after the feed's position are no longer in
// the owner's log (trimmed by its retention). It wraps transport.ErrResync.
type FeedTrimmedError struct {
	Table string
	// After is the feed's position: the changes after it were asked for.
	After uint64
	// FirstSeq is the oldest change the owner's log holds; HeadSeq its
	// newest.
	FirstSeq, HeadSeq uint64
}

func (e *FeedTrimmedError) Error() string {
	return fmt.Sprintf("feed %s: the changes after seq %d are no longer in the owner's log (the oldest kept is seq %d, the head %d)",
		e.Table, e.After, e.FirstSeq, e.HeadSeq)
}

// Unwrap returns transport.ErrResync.
func (e *FeedTrimmedError) Unwrap() error { return transport.ErrResync }

// FeedDivergedError: the owner's history no longer contains the feed's
// position. It wraps ErrDiverged.
type FeedDivergedError struct {
	Table string
	// Position is the feed's: the last change it received (or its start).
	Position FeedPosition
	// The owner's history: its log, epoch and head.
	OwnerLogID string
	OwnerEpoch uint64
	OwnerHead  uint64
	// ForkSeq is, in the same log, the last seq both histories share (the
	// changes after it that the feed delivered are not in the owner's
	// history); 0 when the owner's log is another one.
	ForkSeq uint64
	// Reason says how the histories differ.
	Reason string
}

func (e *FeedDivergedError) Error() string {
	return fmt.Sprintf("feed %s: owner history diverged: %s (feed at log %s seq %d epoch %d; owner at log %s head %d epoch %d)",
		e.Table, e.Reason, e.Position.LogID, e.Position.Seq, e.Position.Epoch, e.OwnerLogID, e.OwnerHead, e.OwnerEpoch)
}

// Unwrap returns ErrDiverged.
func (e *FeedDivergedError) Unwrap() error { return ErrDiverged }

// Feed starts a change feed of table of service (see Feed). It returns at
// once; the feed finds the owner and starts in the background, and Next
// returns its changes, or the error that ended it. ctx bounds the call,
// not the feed, which runs until Close or until the component closes.
//
// Feed uses the component's broker session to find the primary (unless
// opts.Addr is set), its TLS config to dial it, and its identity
// (Config.Service, Config.Instance) for the owner's access policy. A
// program without a Component uses NewFeed.
func (c *Component) Feed(ctx context.Context, service, table string, opts FeedOptions) (*Feed, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("feed %s/%s: %w", service, table, err)
	}
	if opts.Addr == "" && len(c.cfg.Brokers) == 0 {
		return nil, fmt.Errorf("%w: FeedOptions.Addr is empty and no broker is configured", ErrInvalid)
	}
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	cfg := FeedConfig{
		Service: service, Table: table,
		ConsumerService: c.cfg.Service, ConsumerInstance: c.cfg.Instance,
		Locate: func(ctx context.Context) (transport.ServiceOwner, error) {
			if opts.Addr != "" {
				return transport.ServiceOwner{Service: service, Primary: transport.Endpoint{Addr: opts.Addr}}, nil
			}
			return c.locate(ctx, service)
		},
		Dial: func(addr string) (grpc.ClientConnInterface, func(), error) {
			cc, err := c.conn(ownerPeer(addr, service))
			return cc, func() {}, err // shared: the component closes it
		},
		PeerTimeout:  c.cfg.PeerTimeout,
		Recheck:      max(c.cfg.Heartbeat, feedRecheck),
		ReconnectMin: c.cfg.ReconnectMin,
		ReconnectMax: c.cfg.ReconnectMax,
		Logger:       c.log,
		Options:      opts,
	}
	return newFeed(c.ctx, cfg)
}

// feedRecheck is the least interval at which a component's feed asks
// where the primary is while its stream runs (a broker Lookup when the
// session's topology does not name the service).
const feedRecheck = time.Second

// locate returns the primary of service: from the broker session's
// topology when it names one (the component subscribes to the service, or
// is an instance of it), else from a broker's Lookup.
func (c *Component) locate(ctx context.Context, service string) (transport.ServiceOwner, error) {
	if so, ok := c.serviceOwner(service); ok && so.Primary.Addr != "" {
		return so, nil
	}
	err := fmt.Errorf("%w: no broker answered", transport.ErrUnavailable)
	for _, addr := range c.brokerAddrs() {
		cc, cerr := c.conn(brokerPeer(addr))
		if cerr != nil {
			err = cerr
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, c.cfg.PeerTimeout)
		r, lerr := transport.NewBrokerClient(cc).Lookup(cctx, &transport.LookupRequest{Version: transport.ProtocolVersion, Service: service})
		cancel()
		if lerr != nil {
			err = fmt.Errorf("lookup %s at broker %s: %w", service, addr, lerr)
			continue
		}
		if r.Owner.Primary.Addr == "" {
			return r.Owner, fmt.Errorf("%w: service %s has no live primary (a promotion under way?)", transport.ErrUnavailable, service)
		}
		return r.Owner, nil
	}
	return transport.ServiceOwner{}, err
}

// NewFeed starts a feed without a Component: cfg says how to find and
// reach the owner. The feed runs until Close.
func NewFeed(cfg FeedConfig) (*Feed, error) {
	return newFeed(context.Background(), cfg)
}

func newFeed(parent context.Context, cfg FeedConfig) (*Feed, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	o := cfg.Options
	if o.Buffer == 0 {
		o.Buffer = DefaultFeedBuffer
	}
	cfg.Options = o
	label := cfg.Service + "/" + cfg.Table
	f := &Feed{cfg: cfg, label: label, log: cfg.Logger.With("feed", label),
		ch: make(chan feedBatch, o.Buffer), slots: make(chan struct{}, o.Buffer)}
	switch o.Start {
	case FeedResume:
		f.pos, f.placed, f.known = o.Position, true, true
	case FeedAfter:
		f.pos.Seq = o.Seq
	}
	f.delivered = f.pos
	f.ctx, f.cancel = context.WithCancel(parent)
	f.wg.Add(1)
	go f.run()
	return f, nil
}

func (cfg *FeedConfig) validate() error {
	if err := validName("FeedConfig.Service", cfg.Service); err != nil {
		return err
	}
	if err := validName("FeedConfig.Table", cfg.Table); err != nil {
		return err
	}
	o := cfg.Options
	for _, c := range []struct {
		field string
		bad   bool
	}{
		{"FeedConfig.Locate", cfg.Locate == nil},
		{"FeedConfig.Dial", cfg.Dial == nil},
		{"FeedConfig.PeerTimeout", cfg.PeerTimeout <= 0},
		{"FeedConfig.Recheck", cfg.Recheck <= 0},
		{"FeedConfig.ReconnectMin", cfg.ReconnectMin <= 0},
		{"FeedConfig.ReconnectMax", cfg.ReconnectMax < cfg.ReconnectMin},
		{"FeedOptions.Start", o.Start < FeedAtHead || o.Start > FeedResume},
		{"FeedOptions.Position.LogID (FeedResume needs a saved position)", o.Start == FeedResume && o.Position.LogID == ""},
		{"FeedOptions.Buffer", o.Buffer < 0 || o.Buffer > maxFeedBuffer},
	} {
		if c.bad {
			return fmt.Errorf("%w: %s", ErrInvalid, c.field)
		}
	}
	return nil
}

// Next returns the next batch of changes, waiting for one until ctx ends.
// Once the feed has ended it returns why: a *FeedTrimmedError, a
// *FeedDivergedError, transport.ErrUnknownTable or ErrPermission (wrapped,
// naming the owner), ErrFeedClosed after Close, ErrClosed when the
// component closed. Next is meant for one reader goroutine; the batch is
// the caller's.
func (f *Feed) Next(ctx context.Context) (FeedBatch, error) {
	if f.closed.Load() {
		return FeedBatch{}, ErrFeedClosed
	}
	select {
	case b, ok := <-f.ch:
		if !ok {
			if f.closed.Load() {
				return FeedBatch{}, ErrFeedClosed
			}
			return FeedBatch{}, f.err
		}
		f.held.Add(-1)
		<-f.slots
		last := b.Changes[len(b.Changes)-1]
		f.mu.Lock()
		f.delivered = FeedPosition{LogID: b.logID, Seq: last.Seq, Epoch: last.Epoch}
		f.mu.Unlock()
		return b.FeedBatch, nil
	case <-ctx.Done():
		return FeedBatch{}, ctx.Err()
	}
}

// Position returns the position of the last change Next returned (before
// the first: the start asked for; its LogID and Epoch are known once a
// change was delivered). A consumer that saves it with what it wrote can
// resume a later feed after it (FeedResume).
func (f *Feed) Position() FeedPosition {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.delivered
}

// Close stops the feed and waits for its goroutine. It is safe to call
// more than once.
func (f *Feed) Close() error {
	f.closed.Store(true)
	f.cancel()
	f.wg.Wait()
	return nil
}

// heldPeak is the most frames the feed held ahead of Next at once.
func (f *Feed) heldPeak() int64 { return f.peak.Load() }

func (f *Feed) event(e FeedEvent) {
	if f.cfg.Options.OnEvent != nil {
		f.cfg.Options.OnEvent(e)
	}
}

// run connects, streams, and retries with backoff until the feed ends: a
// fatal error (feedFatal), Close, or the component closing.
func (f *Feed) run() {
	defer f.wg.Done()
	defer close(f.ch)
	backoff := transport.Backoff{Min: f.cfg.ReconnectMin, Max: f.cfg.ReconnectMax, Jitter: true}
	for {
		started := f.started
		ep, err := f.connect()
		if f.ctx.Err() != nil {
			f.err = ErrClosed // the component closed (or Close: Next says so)
			return
		}
		if feedFatal(err, f.started > 0) {
			f.err = err
			f.log.Info("feed ended", "err", err)
			return
		}
		if f.started > started {
			backoff.Reset()
		}
		wait := backoff.Next()
		f.log.Info("feed stream ended; reconnecting", "err", err, "backoff", wait)
		f.event(FeedEvent{Kind: FeedRetrying, Owner: ep, Err: err, Wait: wait, Connected: f.started > 0})
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-f.ctx.Done():
			t.Stop()
			f.err = ErrClosed
			return
		}
	}
}

// feedFatal reports whether err ends the feed rather than a retry.
// connected says a stream got going before: an owner that does not know
// the table then is one still starting (it serves before it owns its
// tables), which a failover may reach first.
func feedFatal(err error, connected bool) bool {
	var te *FeedTrimmedError
	var de *FeedDivergedError
	var le *locateError
	switch {
	case errors.As(err, &le):
		return false // no primary known yet: the directory may learn of one
	case errors.As(err, &te), errors.As(err, &de), errors.Is(err, ErrInvalid), errors.Is(err, ErrClosed):
		return true
	case errors.Is(err, transport.ErrUnknownTable):
		return !connected
	}
	for _, e := range []error{transport.ErrPermission, transport.ErrProtocolVersion} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// locateError is an error of FeedConfig.Locate: never fatal.
type locateError struct{ err error }

func (e *locateError) Error() string { return "find the primary: " + e.err.Error() }
func (e *locateError) Unwrap() error { return e.err }

// maxFeedReopen bounds how often one connection re-opens its stream to
// move to a position the owner resumes at (a start point resolved, an
// epoch guess corrected) before the attempt counts as failed.
const maxFeedReopen = 3

// connect finds the primary and runs streams to it until one fails; it
// returns the owner tried and why it failed. Nothing is nil: a feed runs
// until an error.
func (f *Feed) connect() (transport.Endpoint, error) {
	so, err := f.cfg.Locate(f.ctx)
	if err != nil {
		return transport.Endpoint{}, &locateError{err}
	}
	ep := so.Primary
	cc, release, err := f.cfg.Dial(ep.Addr)
	if err != nil {
		return ep, fmt.Errorf("dial %s: %w", ep.Addr, err)
	}
	defer release()
	repl := transport.NewReplicationClient(cc)
	for range maxFeedReopen + 1 {
		reopen, err := f.stream(repl, so)
		if err != nil || !reopen {
			return ep, fmt.Errorf("%s at %s: %w", ownerName(ep), ep.Addr, err)
		}
	}
	return ep, fmt.Errorf("%w: %s at %s does not resume after seq %d (log %s, epoch %d)",
		transport.ErrUnavailable, ownerName(ep), ep.Addr, f.pos.Seq, f.pos.LogID, f.pos.Epoch)
}

func ownerName(ep transport.Endpoint) string {
	if ep.Instance == "" {
		return "owner"
	}
	return "owner " + ep.Instance
}

// feedBatch is a batch with the log it belongs to.
type feedBatch struct {
	FeedBatch
	logID string
}

// stream runs one Subscribe stream to the owner so names. reopen says the
// owner did not resume and f.pos moved to a position it will resume at;
// otherwise it returns the error that ended the stream.
func (f *Feed) stream(repl *transport.ReplicationClient, so transport.ServiceOwner) (reopen bool, err error) {
	ctx := f.ctx
	// sctx ends with the stream; its cause says why when this side ended
	// it (a silent owner, a primary that moved).
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	watchdog := time.AfterFunc(f.cfg.PeerTimeout, func() {
		cancel(fmt.Errorf("%w: no frame from the owner for %s", transport.ErrUnavailable, f.cfg.PeerTimeout))
	})
	defer watchdog.Stop()
	streamErr := func(err error) error {
		if ctx.Err() == nil && sctx.Err() != nil {
			return context.Cause(sctx)
		}
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("%w: the owner ended the stream", transport.ErrUnavailable)
		}
		return err
	}
	sub, st, err := repl.OpenSubscribe(sctx, &transport.Open{
		Version: transport.ProtocolVersion, Service: f.cfg.ConsumerService, Instance: f.cfg.ConsumerInstance,
		Table: f.cfg.Table, LogID: f.pos.LogID, Seq: f.pos.Seq, Epoch: f.pos.Epoch, Mode: transport.ModePush,
	})
	watchdog.Stop()
	if err != nil {
		return false, streamErr(err)
	}
	defer sub.Close()
	d := decideFeed(feedInput{Table: f.label, Pos: f.pos, Placed: f.placed, Known: f.known,
		Start: f.cfg.Options.Start, St: st, MinEpoch: so.Epoch, Owner: so.Primary.Addr})
	switch d.Action {
	case feedRefuse:
		return false, d.Err
	case feedReopen:
		f.pos, f.placed, f.known = d.Pos, true, d.Known
		return true, nil
	}
	f.pos, f.placed, f.known = d.Pos, true, d.Known
	f.started++
	f.log.Info("feed resumes", "owner", so.Primary.Instance, "addr", so.Primary.Addr, "after", f.pos.Seq, "head", st.HeadSeq)
	f.event(FeedEvent{Kind: FeedConnected, Owner: so.Primary, Seq: f.pos.Seq, HeadSeq: st.HeadSeq})
	ack := func() error {
		err := sub.Send(&transport.ConsumerFrame{Kind: transport.KindAck, Seq: f.pos.Seq})
		if errors.Is(err, io.EOF) {
			return nil // the stream is over: the next Recv says why
		}
		return err
	}
	if err := ack(); err != nil {
		return false, streamErr(err)
	}
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		f.watchPrimary(sctx, so, cancel)
	}()
	defer func() { cancel(nil); <-watched }()
	for {
		// Room for the next frame first: while the reader is slow,
		// nothing is received (and the watchdog is not running).
		if err := f.reserve(sctx); err != nil {
			return false, streamErr(err)
		}
		watchdog.Reset(f.cfg.PeerTimeout)
		fr, err := sub.Recv()
		watchdog.Stop()
		if err != nil {
			f.release()
			return false, streamErr(err)
		}
		var chs []Change
		switch fr.Kind {
		case transport.KindChanges:
			if chs, err = f.fresh(fr); err != nil {
				f.release()
				return false, err
			}
		case transport.KindHeartbeat:
		default:
			f.release()
			return false, fmt.Errorf("%w: unexpected %s frame from the owner", transport.ErrBadRequest, fr.Kind)
		}
		if len(chs) > 0 {
			f.ch <- feedBatch{FeedBatch{Changes: chs, HeadSeq: fr.HeadSeq}, f.pos.LogID} // never blocks: a slot is held
			last := chs[len(chs)-1]
			f.pos.Seq, f.pos.Epoch, f.known = last.Seq, last.Epoch, true
		} else {
			f.release()
		}
		if err := ack(); err != nil {
			return false, streamErr(err)
		}
	}
}

// fresh returns the changes of fr after f.pos (a resent prefix is
// dropped), with their epoch set; a change that does not follow the one
// before is an error (the stream is re-opened at f.pos: never a gap).
func (f *Feed) fresh(fr *transport.OwnerFrame) ([]Change, error) {
	chs := fr.Changes
	i := 0
	for i < len(chs) && chs[i].Seq <= f.pos.Seq {
		i++
	}
	chs = chs[i:]
	prev := f.pos.Seq
	for j := range chs {
		if chs[j].Seq != prev+1 {
			return nil, fmt.Errorf("%w: change %d follows %d", ErrGap, chs[j].Seq, prev)
		}
		prev = chs[j].Seq
		if chs[j].Epoch == 0 {
			chs[j].Epoch = fr.Epoch
		}
		// A decoded key's capacity covers its value (transport.RowBytes):
		// the caller's append to it must copy, not write over the value.
		k := chs[j].Key
		chs[j].Key = k[:len(k):len(k)]
	}
	return chs, nil
}

// reserve takes room for one frame, waiting while Buffer frames wait for
// Next (the backpressure: nothing more is received meanwhile) until ctx
// ends.
func (f *Feed) reserve(ctx context.Context) error {
	select {
	case f.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	n := f.held.Add(1)
	for {
		p := f.peak.Load()
		if n <= p || f.peak.CompareAndSwap(p, n) {
			return nil
		}
	}
}

// release gives back the room of a frame not handed to Next.
func (f *Feed) release() {
	f.held.Add(-1)
	<-f.slots
}

// watchPrimary asks Locate every Recheck where the primary is, until ctx
// ends, and ends the stream (through cancel, with the reason) once it names
// another instance than so's, or so's at a newer epoch. An answer with no
// primary (a promotion under way) or an error changes nothing: the stream
// needs no directory, and ends by itself if its owner is gone.
func (f *Feed) watchPrimary(ctx context.Context, so transport.ServiceOwner, cancel context.CancelCauseFunc) {
	t := time.NewTicker(f.cfg.Recheck)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
		now, err := f.cfg.Locate(ctx)
		p := now.Primary
		if err != nil || p.Addr == "" {
			continue
		}
		if p.Instance != so.Primary.Instance || p.Addr != so.Primary.Addr || now.Epoch > so.Epoch {
			cancel(fmt.Errorf("%w: the primary is %s (%s) at epoch %d now", transport.ErrUnavailable, p.Instance, p.Addr, now.Epoch))
			return
		}
	}
}

// feedAction is what a feed's stream does after the owner's Start.
type feedAction int

const (
	// feedResume: the owner resumes at the position; changes follow.
	feedResume feedAction = iota
	// feedReopen: re-open the stream at feedDecision.Pos (the start point
	// resolved, an epoch guess corrected).
	feedReopen
	// feedRefuse: end the stream with feedDecision.Err.
	feedRefuse
)

// feedInput is what the feed's start decision looks at.
type feedInput struct {
	Table string
	// Pos is the feed's position; Placed says Pos.LogID is set (the start
	// point is resolved), Known that Pos.Epoch is a change's epoch rather
	// than a guess.
	Pos           FeedPosition
	Placed, Known bool
	// Start is where the feed begins (used while not Placed).
	Start FeedStart
	// St is the owner's Start frame.
	St *transport.Start
	// MinEpoch is the lowest epoch the primary may have (the directory's);
	// Owner its address, named in errors.
	MinEpoch uint64
	Owner    string
}

// feedDecision is the start decision's answer: the action, the position to
// resume or re-open at, or the error.
type feedDecision struct {
	Action feedAction
	Pos    FeedPosition
	// Known: Pos.Epoch is the owner's word (its epoch history covers
	// Pos.Seq), or a change's; not a guess.
	Known bool
	Err   error
}

// decideFeed decides how a feed's stream goes on after the owner's Start.
// It is pure. In order, the first rule that applies decides:
//
//   - an owner below MinEpoch was deposed, and one below the epoch of the
//     changes delivered (same log) is behind: refused with ErrStaleEpoch
//     (retried);
//   - a start point not yet resolved is resolved against the owner's log
//     (head, oldest, or the seq asked for, with the epoch it was written
//     in) and the stream re-opened: a seq ahead of the head is ErrInvalid,
//     one whose successors were trimmed a *FeedTrimmedError;
//   - a resume is taken (the epoch corrected from the owner's history when
//     it was a guess); a resume of another log is refused
//     (transport.ErrBadRequest);
//   - otherwise the owner did not resume, and says why: another log, the
//     feed's epoch ended before its seq in the owner's history, or a head
//     behind the seq are a *FeedDivergedError; a log trimmed past the seq
//     a *FeedTrimmedError; an epoch guess is corrected (re-open); anything
//     else is refused with transport.ErrUnavailable (retried).
func decideFeed(in feedInput) feedDecision {
	pos, st := in.Pos, in.St
	if st.Epoch < in.MinEpoch {
		return feedRefused(fmt.Errorf("%w: the owner at %s is at epoch %d, the brokers' primary at epoch %d", ErrStaleEpoch, in.Owner, st.Epoch, in.MinEpoch))
	}
	if in.Known && st.LogID == pos.LogID && st.Epoch < pos.Epoch {
		return feedRefused(fmt.Errorf("%w: the owner at %s is at epoch %d, older than the changes delivered (epoch %d)", ErrStaleEpoch, in.Owner, st.Epoch, pos.Epoch))
	}
	trimmed := func(seq uint64) feedDecision {
		return feedRefused(&FeedTrimmedError{Table: in.Table, After: seq, FirstSeq: st.FirstSeq, HeadSeq: st.HeadSeq})
	}
	if !in.Placed {
		var seq uint64
		switch in.Start {
		case FeedAtHead:
			seq = st.HeadSeq
		case FeedFromOldest:
			seq = max(st.FirstSeq, 1) - 1
		default:
			seq = pos.Seq
			if seq > st.HeadSeq {
				return feedRefused(fmt.Errorf("%w: feed %s: seq %d is ahead of the table's head %d", ErrInvalid, in.Table, seq, st.HeadSeq))
			}
			if seq+1 < st.FirstSeq {
				return trimmed(seq)
			}
		}
		e, known := epochOf(st.Epochs, seq, st.Epoch)
		return feedDecision{Action: feedReopen, Pos: FeedPosition{LogID: st.LogID, Seq: seq, Epoch: e}, Known: known}
	}
	if st.Resume {
		if st.LogID != pos.LogID {
			return feedRefused(fmt.Errorf("%w: the owner resumes log %s, the feed is in log %s", transport.ErrBadRequest, st.LogID, pos.LogID))
		}
		known := in.Known
		if !known {
			pos.Epoch, known = epochOf(st.Epochs, pos.Seq, pos.Epoch)
		}
		return feedDecision{Action: feedResume, Pos: pos, Known: known}
	}
	diverged := func(fork uint64, reason string, args ...any) feedDecision {
		return feedRefused(&FeedDivergedError{Table: in.Table, Position: pos, OwnerLogID: st.LogID, OwnerEpoch: st.Epoch,
			OwnerHead: st.HeadSeq, ForkSeq: fork, Reason: fmt.Sprintf(reason, args...)})
	}
	switch {
	case st.LogID != pos.LogID:
		return diverged(0, "the owner's log is %s, a new history (the owner lost its data, or was restored)", st.LogID)
	case pos.Seq+1 < st.FirstSeq:
		return trimmed(pos.Seq)
	case in.Known && pos.Seq >= st.Epochs.End(pos.Epoch):
		end := st.Epochs.End(pos.Epoch)
		return diverged(end-1, "changes %d..%d of epoch %d are not in the owner's history (lost in a failover; epoch %d began at seq %d)",
			end, pos.Seq, pos.Epoch, st.Epochs.EpochOf(end), end)
	case pos.Seq > st.HeadSeq:
		fork := st.HeadSeq
		if end := st.Epochs.End(pos.Epoch); end-1 < fork {
			fork = end - 1
		}
		return diverged(fork, "the owner's head %d is behind seq %d (changes %d..%d are not in its history)",
			st.HeadSeq, pos.Seq, st.HeadSeq+1, pos.Seq)
	case !in.Known:
		if e, known := epochOf(st.Epochs, pos.Seq, st.Epoch); e != pos.Epoch {
			pos.Epoch = e
			return feedDecision{Action: feedReopen, Pos: pos, Known: known}
		}
	}
	return feedRefused(fmt.Errorf("%w: the owner at %s does not resume after seq %d (log %s, epoch %d)",
		transport.ErrUnavailable, in.Owner, pos.Seq, pos.LogID, pos.Epoch))
}

func feedRefused(err error) feedDecision { return feedDecision{Action: feedRefuse, Err: err} }

// epochOf returns the epoch in which seq was written according to the
// epoch history hist (known), or dflt when hist says nothing of it (an
// owner that sends none: the epoch it is at is the best guess).
func epochOf(hist transport.EpochHistory, seq, dflt uint64) (epoch uint64, known bool) {
	if e := hist.EpochOf(seq); e != 0 {
		return e, true
	}
	return dflt, false
}
