package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/replmesh/replmesh/transport"
)

// peerTimeout: an owner heartbeats idle streams every second or so; a
// stream that carries nothing for this long is dropped and re-opened.
const peerTimeout = 15 * time.Second

// maxReopen bounds how often one connection re-opens its stream to find a
// resumable position before it takes the owner's snapshot instead.
const maxReopen = 3

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

// errDeposed: the owner a stream reached is older than the primary the
// brokers name (or than the changes printed): a failover is under way.
var errDeposed = errors.New("a deposed primary")

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

// position is where a tail stands in a table's history: the last seq
// printed (or the starting point) and the epoch it was written in.
type position struct {
	LogID string
	Seq   uint64
	Epoch uint64
}

// tailer follows one table.
type tailer struct {
	c              *cli
	service, table string
	instance       string // the Instance presented in Open
	limit          int    // stop after this many changes (0: never)
	fromFlag       bool   // the start point was given with -from
	asHex          bool
	notices        bool // tell on stderr where the tail is reading from

	pos       position
	printed   int
	connected bool // a stream got going at least once
	started   int  // streams that got going
	retry     retryNotice
	// watch asks the brokers where the primary is while a stream runs
	// (watchPrimary, another goroutine): a cli of its own, so that the
	// two never share a connection map.
	watch *cli
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

	// The start point: the table's head (or -from) in the primary's
	// current history. The epoch is a first guess, corrected from the
	// owner's epoch history if the owner does not resume at it.
	owner, cn, err := c.primaryConn(ctx, service)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, c.timeout)
	head, err := cn.repl.Get(cctx, &transport.GetRequest{Version: transport.ProtocolVersion, Table: table, Service: c.service})
	cancel()
	if err != nil {
		return c.ownerError(service, table, owner.Primary, err)
	}
	tl.pos = position{LogID: head.LogID, Seq: head.Seq, Epoch: owner.Epoch}
	for _, ti := range owner.Tables {
		if ti.Table == table && ti.Epoch > 0 {
			tl.pos.Epoch = ti.Epoch
		}
	}
	if tl.fromFlag {
		if uint64(*from) > head.Seq {
			return fmt.Errorf("tail %s/%s: -from %d is ahead of the table's head %d", service, table, *from, head.Seq)
		}
		tl.pos.Seq = uint64(*from)
	}
	return tl.run(ctx, owner)
}

// run follows the table until the limit is reached or ctx ends. When a
// stream ends, or the brokers name another primary while it runs, it asks
// the brokers where the primary is now and resumes there after the last
// change printed, waiting a bounded, growing time between attempts.
func (tl *tailer) run(ctx context.Context, owner transport.ServiceOwner) error {
	tl.watch = &cli{stdout: io.Discard, stderr: io.Discard, brokerFlag: tl.c.brokerFlag, timeout: tl.c.timeout,
		service: tl.c.service, topts: tl.c.topts, conns: map[string]*conn{}}
	defer tl.watch.close()
	backoff := transport.Backoff{Min: minRetry, Max: maxRetry}
	for {
		started := tl.started
		err := tl.follow(ctx, owner)
		if err == nil || ctx.Err() != nil {
			return nil // the limit was reached, or interrupted: a normal end
		}
		if fatalTailError(err, tl.connected) || !tl.connected && !failingOver(err) {
			return err
		}
		if tl.started > started {
			backoff.Reset()
		}
		for {
			tl.retry.failed(tl.c.stderr, time.Now(), tl.service+"/"+tl.table, err, backoff.Current())
			t := time.NewTimer(backoff.Next())
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return nil
			}
			owner, err = tl.c.primaryOf(ctx, tl.service)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return nil
			}
		}
	}
}

// failingOver reports whether err says that a failover is under way (the
// owner reached is no longer, or not yet, the primary): worth retrying
// even before a first stream got going.
func failingOver(err error) bool {
	return errors.Is(err, errDeposed) || errors.Is(err, transport.ErrNotPrimary)
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

// errTrimmed: the changes asked for with -from are no longer in the log.
var errTrimmed = errors.New("no longer in the owner's log")

// fatalTailError reports whether err ends the tail instead of a
// reconnection. connected says a stream got going before: an owner that
// does not know the table then is one still starting (it serves before
// it owns its tables), which a failover may reach first.
func fatalTailError(err error, connected bool) bool {
	if connected && errors.Is(err, transport.ErrUnknownTable) {
		return false
	}
	for _, e := range []error{transport.ErrPermission, transport.ErrUnknownTable, transport.ErrBadRequest,
		transport.ErrProtocolVersion, errTrimmed} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// follow runs streams to owner's primary: it returns nil once the limit is
// reached, or the error that ended the stream. Each call dials a new
// connection and closes it on return: a connection that failed is never
// used again, so gRPC's reconnect backoff (which grows to two minutes)
// does not decide when a restarted owner is reached.
func (tl *tailer) follow(ctx context.Context, owner transport.ServiceOwner) error {
	ep := owner.Primary
	cc, err := transport.Dial(ep.Addr, tl.c.topts)
	if err != nil {
		return fmt.Errorf("dial %s: %w", ep.Addr, err)
	}
	defer cc.Close()
	repl := transport.NewReplicationClient(cc)
	for attempt := 0; ; attempt++ {
		reopen, err := tl.stream(ctx, repl, ep, owner.Epoch, attempt < maxReopen)
		if err != nil {
			return tl.c.ownerError(tl.service, tl.table, ep, err)
		}
		if !reopen {
			return nil
		}
	}
}

// stream runs one Subscribe stream to the owner at ep, which the brokers
// named primary at epoch minEpoch. With mayReopen, an owner that does not
// resume at tl.pos makes it move tl.pos to a position it will resume at
// and return reopen; otherwise the owner's full transfer is skipped and
// the changes after it are printed.
func (tl *tailer) stream(ctx context.Context, repl *transport.ReplicationClient, ep transport.Endpoint, minEpoch uint64, mayReopen bool) (reopen bool, err error) {
	// sctx ends with the stream; its cause says why when this side ended
	// it (a silent owner, or a primary that moved).
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	watchdog := time.AfterFunc(peerTimeout, func() {
		cancel(fmt.Errorf("%w: no frame from the owner for %s", transport.ErrUnavailable, peerTimeout))
	})
	defer watchdog.Stop()
	// streamErr says why the stream failed: the cause this side gave when
	// it ended it, or the owner's end of it.
	streamErr := func(err error) error {
		if ctx.Err() == nil && sctx.Err() != nil {
			return context.Cause(sctx)
		}
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("%w: the owner ended the stream", transport.ErrUnavailable)
		}
		return err
	}
	stream, st, err := repl.OpenSubscribe(sctx, &transport.Open{
		Version: transport.ProtocolVersion, Service: tl.c.service, Instance: tl.instance, Table: tl.table,
		LogID: tl.pos.LogID, Seq: tl.pos.Seq, Epoch: tl.pos.Epoch, Mode: transport.ModePush,
	})
	if err != nil {
		return false, streamErr(err)
	}
	defer stream.Close()
	defer stream.CloseSend()
	watchdog.Reset(peerTimeout)
	recv := func() (*transport.OwnerFrame, error) {
		f, err := stream.Recv()
		if err != nil {
			return nil, streamErr(err)
		}
		watchdog.Reset(peerTimeout)
		return f, nil
	}
	ack := func() error {
		err := stream.Send(&transport.ConsumerFrame{Kind: transport.KindAck, Seq: tl.pos.Seq})
		if errors.Is(err, io.EOF) {
			// The stream is over. The next recv returns what the owner
			// sent before it ended it (changes to print), then why.
			return nil
		}
		return err
	}

	if st.Epoch < minEpoch {
		return false, fmt.Errorf("%w: the owner is at epoch %d, the brokers' primary at epoch %d: %w",
			transport.ErrUnavailable, st.Epoch, minEpoch, errDeposed)
	}
	if tl.printed > 0 && st.Epoch < tl.pos.Epoch {
		return false, fmt.Errorf("%w: the owner is at epoch %d, older than the changes printed (epoch %d): %w",
			transport.ErrUnavailable, st.Epoch, tl.pos.Epoch, errDeposed)
	}
	if !st.Resume {
		if mayReopen {
			next, warning, err := replan(st, tl.pos, tl.printed > 0, tl.fromFlag)
			if err != nil {
				return false, err
			}
			if next != tl.pos {
				if warning != "" {
					textf(tl.c.stderr, "replctl: tail %s/%s: %s\n", tl.service, tl.table, warning)
				}
				tl.pos = next
				return true, nil
			}
		}
		// No position to resume at: take the owner's snapshot, print
		// nothing of it, and follow the changes after it.
		if err := tl.skipSnapshot(recv, st); err != nil {
			return false, err
		}
	}
	tl.connected = true
	tl.started++
	tl.retry.resumed(tl.c.stderr, tl.notices, tl.service+"/"+tl.table, ep, tl.pos.Seq, st.HeadSeq)
	if err := ack(); err != nil {
		return false, err
	}
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		tl.watchPrimary(sctx, ep, st.Epoch, cancel)
	}()
	defer func() { cancel(nil); <-watched }()
	for {
		f, err := recv()
		if err != nil {
			return false, err
		}
		switch f.Kind {
		case transport.KindChanges:
			for i := range f.Changes {
				ch := &f.Changes[i]
				if ch.Seq <= tl.pos.Seq {
					continue // sent before (a resent prefix)
				}
				if ch.Seq != tl.pos.Seq+1 {
					return false, fmt.Errorf("%w: change %d follows %d", transport.ErrBadRequest, ch.Seq, tl.pos.Seq)
				}
				if err := tl.print(ch); err != nil {
					return false, err
				}
				ep := ch.Epoch
				if ep == 0 {
					ep = f.Epoch
				}
				tl.pos.Seq, tl.pos.Epoch = ch.Seq, ep
				tl.printed++
				if tl.limit > 0 && tl.printed >= tl.limit {
					ack()
					return false, nil
				}
			}
			if err := ack(); err != nil {
				return false, err
			}
		case transport.KindHeartbeat:
			if err := ack(); err != nil {
				return false, err
			}
		default:
			return false, fmt.Errorf("%w: unexpected %s frame from the owner", transport.ErrBadRequest, f.Kind)
		}
	}
}

// watchPrimary asks the brokers every brokerRecheck where the primary is,
// until ctx ends, and ends the stream (through cancel, with the reason)
// once they name another instance than ep, or ep at a newer epoch than
// epoch, the one its stream started at. A broker that does not answer, or
// names no primary (a promotion under way), changes nothing: the stream
// needs no broker, and ends by itself if its owner is gone.
func (tl *tailer) watchPrimary(ctx context.Context, ep transport.Endpoint, epoch uint64, cancel context.CancelCauseFunc) {
	t := time.NewTicker(brokerRecheck)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
		owner, err := tl.watch.lookup(ctx, tl.service)
		p := owner.Primary
		if err != nil || p.Instance == "" || p.Addr == "" {
			continue
		}
		if p.Instance != ep.Instance || p.Addr != ep.Addr || owner.Epoch > epoch {
			cancel(fmt.Errorf("%w: the brokers name %s (%s) primary at epoch %d now", transport.ErrUnavailable, p.Instance, p.Addr, owner.Epoch))
			return
		}
	}
}

// skipSnapshot reads a full transfer without keeping it and moves tl.pos
// to the snapshot's seq.
func (tl *tailer) skipSnapshot(recv func() (*transport.OwnerFrame, error), st *transport.Start) error {
	f, err := recv()
	if err != nil {
		return err
	}
	if f.Kind != transport.KindSnapshotBegin {
		return fmt.Errorf("%w: expected snapshot-begin, got %s", transport.ErrBadRequest, f.Kind)
	}
	seq := f.Seq
	for {
		f, err := recv()
		if err != nil {
			return err
		}
		switch f.Kind {
		case transport.KindRows:
		case transport.KindSnapshotEnd:
			if f.Seq != seq {
				return fmt.Errorf("%w: snapshot-end at %d for a snapshot at %d", transport.ErrBadRequest, f.Seq, seq)
			}
			if tl.printed > 0 || tl.fromFlag || seq != tl.pos.Seq {
				textf(tl.c.stderr, "replctl: tail %s/%s: the owner could not resume after seq %d; continuing after its snapshot at seq %d\n",
					tl.service, tl.table, tl.pos.Seq, seq)
			}
			tl.pos = position{LogID: st.LogID, Seq: seq, Epoch: f.Epoch}
			return nil
		default:
			return fmt.Errorf("%w: unexpected %s frame during a transfer", transport.ErrBadRequest, f.Kind)
		}
	}
}

// replan decides where to re-open a stream the owner did not resume (its
// Start is st) at pos. printed says changes were printed (pos.Epoch is
// then the epoch of the last one, not a guess); fromFlag that the start
// point was given with -from. A jump over changes the user asked for is
// reported in the warning. It returns pos itself when no better position
// is known.
func replan(st *transport.Start, pos position, printed, fromFlag bool) (next position, warning string, err error) {
	strict := printed || fromFlag
	atHead := position{LogID: st.LogID, Seq: st.HeadSeq, Epoch: st.Epoch}
	if st.LogID != pos.LogID {
		if !strict {
			return atHead, "", nil
		}
		return atHead, fmt.Sprintf("the table has a new history (log %s, was %s); continuing at its head %d", st.LogID, pos.LogID, st.HeadSeq), nil
	}
	next = pos
	switch {
	case next.Seq > st.HeadSeq:
		warning = fmt.Sprintf("the owner's head %d is behind seq %d; continuing at its head", st.HeadSeq, next.Seq)
		next.Seq = st.HeadSeq
		next.Epoch = epochOf(st.Epochs, next.Seq, st.Epoch)
	case !printed:
		// The epoch was a guess: take the owner's word for it.
		next.Epoch = epochOf(st.Epochs, next.Seq, st.Epoch)
	default:
		if end := st.Epochs.End(next.Epoch); next.Seq >= end {
			// Changes of our epoch past the point where that epoch ended
			// in the owner's history: a deposed primary wrote them and
			// they are lost. The history goes on after end-1.
			warning = fmt.Sprintf("changes %d..%d printed above are not in the owner's history (lost in a failover); it continues after seq %d",
				end, next.Seq, end-1)
			next.Seq = end - 1
			next.Epoch = epochOf(st.Epochs, next.Seq, st.Epoch)
		}
	}
	if next.Epoch > st.Epoch {
		next.Epoch = st.Epoch
	}
	if next.Seq+1 < st.FirstSeq {
		if fromFlag && !printed {
			return pos, "", fmt.Errorf("-from %d: the changes after it are %w (the oldest kept is seq %d)", pos.Seq, errTrimmed, st.FirstSeq)
		}
		next = atHead
		warning = ""
		if strict {
			warning = fmt.Sprintf("changes after seq %d are no longer in the owner's log (the oldest kept is %d); continuing at its head %d",
				pos.Seq, st.FirstSeq, st.HeadSeq)
		}
	}
	if !strict {
		warning = ""
	}
	return next, warning, nil
}

// epochOf returns the epoch in which seq was written according to the
// epoch history hist, or dflt when hist is empty (an owner that sends
// none: the epoch it is at is the best guess).
func epochOf(hist transport.EpochHistory, seq, dflt uint64) uint64 {
	if len(hist) == 0 {
		return dflt
	}
	return hist.EpochOf(seq)
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
