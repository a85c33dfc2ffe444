package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/replmesh/replmesh/replica"
	"github.com/replmesh/replmesh/transport"
	"google.golang.org/grpc"
)

// peerTimeout: an owner heartbeats idle streams every second or so; a
// stream that carries nothing for this long is dropped and re-opened.
const peerTimeout = 15 * time.Second

// Reconnecting after a stream ends: the wait between attempts doubles from
// minRetry up to maxRetry (and starts over after a stream that got going);
// failed attempts are reported on stderr at most once per noticeEvery.
const (
	minRetry    = 100 * time.Millisecond
	maxRetry    = 5 * time.Second
	noticeEvery = 5 * time.Second
)

// brokerRecheck is how often a running tail asks the brokers where the
// primary is. A deposed primary may keep its streams open (and, as a
// standby with min_sync_standbys, send nothing more): the brokers are the
// only ones to say that the table has moved.
const brokerRecheck = 2 * time.Second

// changeLine is the JSON form of one change printed by "tail" (one object
// per line).
type changeLine struct {
	Seq      uint64  `json:"seq"`
	Epoch    uint64  `json:"epoch"`
	Op       string  `json:"op"` // put or delete
	Key      *string `json:"key,omitempty"`
	KeyHex   string  `json:"key_hex"`
	Value    *string `json:"value,omitempty"`
	ValueHex *string `json:"value_hex,omitempty"` // puts only
	// ValueMsgpack is the value decoded from msgpack, as JSON (see
	// getValue).
	ValueMsgpack json.RawMessage `json:"value_msgpack,omitempty"`
	Time         string          `json:"time"`    // commit time, RFC 3339 in UTC
	TxnEnd       bool            `json:"txn_end"` // last change of its commit group
}

// tailer follows one table: the change feed (replica.Feed) does the
// following (the start point, resuming after the last change, failovers,
// deposed primaries); the tailer prints, reports on stderr, and decides
// what a feed's end means for a tail (tailPolicy).
type tailer struct {
	c              *cli
	service, table string
	instance       string // the Instance presented in Open
	limit          int    // stop after this many changes (0: never)
	fromFlag       bool   // the start point was given with -from
	asHex          bool
	notices        bool // tell on stderr where the tail is reading from

	printed int
	// connected (a stream got going at least once) and retry are the
	// feed goroutine's (onEvent).
	connected bool
	retry     retryNotice

	mu    sync.Mutex
	owner transport.Endpoint // the owner last reached (or tried)
}

func (c *cli) tail(ctx context.Context, args []string) error {
	fs := c.cmdFlags("tail", "SERVICE/TABLE")
	n := fs.Int("n", 0, "stop after `N` changes (0: follow until interrupted)")
	from := fs.Int64("from", -1, "print the changes after `SEQ` (default: the table's head when tail starts)")
	asHex := fs.Bool("hex", false, "print keys and values as hex, with no msgpack decoding")
	raw := fs.Bool("raw", false, "no msgpack decoding: keys and values as raw hex (the same as -hex; a stream of values has no room for their bytes as stored)")
	pos, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("tail: want SERVICE/TABLE, got %d arguments", len(pos))
	}
	if *n < 0 {
		return usagef("tail: -n must be >= 0")
	}
	if *from < -1 {
		return usagef("tail: -from must be >= 0")
	}
	service, table, err := parseTableRef(pos[0])
	if err != nil {
		return err
	}
	tl := &tailer{c: c, service: service, table: table, instance: c.tailInstance(),
		limit: *n, fromFlag: *from >= 0, asHex: *asHex || *raw, notices: isTerminal(c.stderr),
		retry: retryNotice{every: noticeEvery}}
	opts := replica.FeedOptions{Start: replica.FeedAtHead}
	if tl.fromFlag {
		opts = replica.FeedOptions{Start: replica.FeedAfter, Seq: uint64(*from)}
	}
	return tl.run(ctx, opts)
}

// run follows the table from opts until the limit is reached or ctx ends.
// A feed that ends on a history the owner no longer has (trimmed, or
// rewritten) is started again where tailPolicy says, with a warning.
func (tl *tailer) run(ctx context.Context, opts replica.FeedOptions) error {
	for {
		err := tl.follow(ctx, opts)
		if err == nil {
			return nil
		}
		next, warning, ok := tailPolicy(err, tl.printed > 0, tl.fromFlag)
		if !ok {
			return err
		}
		if warning != "" {
			textf(tl.c.stderr, "replctl: tail %s/%s: %s\n", tl.service, tl.table, warning)
		}
		opts = next
	}
}

// follow runs one feed from opts: nil once the limit is reached or ctx
// ends, else the error that ended the feed.
func (tl *tailer) follow(ctx context.Context, opts replica.FeedOptions) error {
	// fctx ends with the feed; its cause is a failure that ends the tail
	// though the feed would retry it (tl.onEvent).
	fctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// The feed asks the brokers from its own goroutine: a cli of its own,
	// so that the two never share a connection map.
	locator := &cli{stdout: io.Discard, stderr: io.Discard, brokerFlag: tl.c.brokerFlag, timeout: tl.c.timeout,
		service: tl.c.service, topts: tl.c.topts, conns: map[string]*conn{}}
	defer locator.close()
	opts.OnEvent = func(e replica.FeedEvent) { tl.onEvent(e, cancel) }
	f, err := replica.NewFeed(replica.FeedConfig{
		Service: tl.service, Table: tl.table, ConsumerService: tl.c.service, ConsumerInstance: tl.instance,
		Locate: func(ctx context.Context) (transport.ServiceOwner, error) { return locator.primaryOf(ctx, tl.service) },
		// A connection of its own per attempt, closed after it: a
		// connection that failed is never used again, so gRPC's reconnect
		// backoff (which grows to two minutes) does not decide when a
		// restarted owner is reached.
		Dial: func(addr string) (grpc.ClientConnInterface, func(), error) {
			cc, err := transport.Dial(addr, tl.c.topts)
			if err != nil {
				return nil, nil, err
			}
			return cc, func() { cc.Close() }, nil
		},
		PeerTimeout: peerTimeout, Recheck: brokerRecheck, ReconnectMin: minRetry, ReconnectMax: maxRetry,
		Logger:  slog.New(slog.DiscardHandler),
		Options: opts,
	})
	if err != nil {
		return err
	}
	defer f.Close()
	for {
		b, err := f.Next(fctx)
		switch {
		case ctx.Err() != nil:
			return nil // interrupted: a normal end
		case fctx.Err() != nil:
			return context.Cause(fctx)
		case err != nil:
			return tl.word(err)
		}
		for i := range b.Changes {
			if err := tl.print(&b.Changes[i]); err != nil {
				return err
			}
			tl.printed++
			if tl.limit > 0 && tl.printed >= tl.limit {
				return nil
			}
		}
	}
}

// onEvent reports the feed's connections on stderr. Before any stream got
// going, a failure that is not a failover under way ends the tail (through
// cancel): the owner or the table named may not exist.
func (tl *tailer) onEvent(e replica.FeedEvent, cancel context.CancelCauseFunc) {
	if e.Owner.Addr != "" {
		tl.mu.Lock()
		tl.owner = e.Owner
		tl.mu.Unlock()
	}
	label := tl.service + "/" + tl.table
	switch e.Kind {
	case replica.FeedConnected:
		tl.connected = true
		tl.retry.resumed(tl.c.stderr, tl.notices, label, e.Owner, e.Seq, e.HeadSeq)
	case replica.FeedRetrying:
		if !tl.connected && !failingOver(e.Err) {
			cancel(tl.word(e.Err))
			return
		}
		tl.retry.failed(tl.c.stderr, time.Now(), label, e.Err, e.Wait)
	}
}

// word words an error that ends the tail: an owner's, through ownerError
// (naming the owner last reached); the feed's own as it is.
func (tl *tailer) word(err error) error {
	tl.mu.Lock()
	owner := tl.owner
	tl.mu.Unlock()
	var re *transport.RemoteError
	if owner.Addr == "" || !errors.As(err, &re) && !errors.Is(err, transport.ErrUnavailable) {
		return err
	}
	return tl.c.ownerError(tl.service, tl.table, owner, err)
}

// failingOver reports whether err says that a failover is under way (the
// owner reached is no longer, or not yet, the primary): worth retrying
// even before a first stream got going.
func failingOver(err error) bool {
	return errors.Is(err, replica.ErrStaleEpoch) || errors.Is(err, transport.ErrNotPrimary)
}

// retryNotice reports failed attempts to follow the table on stderr at a
// bounded pace: the first failure at once, then at most one line per
// every, counting the attempts not reported; and, once a stream goes
// again, where it resumed.
type retryNotice struct {
	every    time.Duration
	failures int       // failed attempts since the last stream got going
	quiet    int       // failures not reported since the last line
	last     time.Time // when the last line was written
}

// failed reports a failed attempt at now; the next one is in next.
func (n *retryNotice) failed(w io.Writer, now time.Time, table string, err error, next time.Duration) {
	n.failures++
	if n.failures > 1 && now.Sub(n.last) < n.every {
		n.quiet++
		return
	}
	if n.failures == 1 {
		textf(w, "replctl: tail %s: %v; reconnecting\n", table, err)
	} else {
		textf(w, "replctl: tail %s: %v; still reconnecting (%d attempts failed, %d not shown; next in %s)\n",
			table, err, n.failures, n.quiet, next)
	}
	n.quiet, n.last = 0, now
}

// resumed reports that a stream got going again (after failed attempts:
// said always, else only with notices) and starts the count over.
func (n *retryNotice) resumed(w io.Writer, notices bool, table string, ep transport.Endpoint, seq, head uint64) {
	switch {
	case n.failures > 0:
		textf(w, "replctl: tail %s: resumed on %s (%s) after seq %d (head %d)\n", table, ep.Instance, ep.Addr, seq, head)
	case notices:
		textf(w, "replctl: tailing %s on %s (%s) after seq %d (head %d); Ctrl-C stops\n", table, ep.Instance, ep.Addr, seq, head)
	}
	*n = retryNotice{every: n.every}
}

// tailPolicy decides what a feed's end means for a tail, which (unlike a
// change-data consumer) is read by a person and goes on where it can: on a
// history the owner rewrote it continues after the last seq both share (in
// the same log) or at the new history's head; past a trimmed log, at the
// head. printed says changes were printed, fromFlag that the start was
// given with -from: then the jump is said in the warning. A -from whose
// changes were trimmed before anything was printed is an error, as is
// every other end (ok false).
func tailPolicy(err error, printed, fromFlag bool) (next replica.FeedOptions, warning string, ok bool) {
	var de *replica.FeedDivergedError
	var te *replica.FeedTrimmedError
	switch {
	case errors.As(err, &de) && de.OwnerLogID == de.Position.LogID:
		next = replica.FeedOptions{Start: replica.FeedAfter, Seq: de.ForkSeq}
		warning = fmt.Sprintf("%s; continuing after seq %d", de.Reason, de.ForkSeq)
	case errors.As(err, &de):
		next = replica.FeedOptions{Start: replica.FeedAtHead}
		warning = fmt.Sprintf("the table has a new history (log %s, was %s); continuing at its head", de.OwnerLogID, de.Position.LogID)
	case errors.As(err, &te):
		if fromFlag && !printed {
			return next, "", false
		}
		next = replica.FeedOptions{Start: replica.FeedAtHead}
		warning = fmt.Sprintf("changes after seq %d are no longer in the owner's log (the oldest kept is %d); continuing at its head",
			te.After, te.FirstSeq)
	default:
		return next, "", false
	}
	if !printed && !fromFlag {
		warning = ""
	}
	return next, warning, true
}

func (tl *tailer) print(ch *transport.Change) error {
	tm := time.Unix(0, ch.Time).UTC()
	w := tl.c.stdout
	if tl.c.output == "json" {
		cl := changeLine{Seq: ch.Seq, Epoch: ch.Epoch, Op: ch.Op.String(), Key: textOrNil(ch.Key), KeyHex: hex.EncodeToString(ch.Key),
			Time: tm.Format(time.RFC3339Nano), TxnEnd: ch.TxnEnd}
		if ch.Op == transport.OpPut {
			h := hex.EncodeToString(ch.Value)
			cl.ValueHex = &h
			cl.Value = textOrNil(ch.Value)
			if !tl.asHex {
				cl.ValueMsgpack, _ = msgpackJSON(ch.Value)
			}
		}
		return writeJSONLine(w, cl)
	}
	val := "-"
	if ch.Op == transport.OpPut {
		val = showValue(ch.Value, tl.asHex)
	}
	return textf(w, "%d %s %s %s %s\n", ch.Seq, ch.Op, showBytes(ch.Key, tl.asHex), val, tm.Format("2006-01-02T15:04:05.000Z07:00"))
}

// isTerminal reports whether w is a terminal (for notices and progress).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// tailInstance is the Instance a tail presents in its Subscribe: the
// certificate's with a service identity (owners check it), else one of
// this process.
func (c *cli) tailInstance() string {
	if c.instance != "" {
		return c.instance
	}
	return fmt.Sprintf("replctl-%d", os.Getpid())
}
