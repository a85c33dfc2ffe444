package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sync/atomic"
	"time"

	"github.com/replmesh/replmesh/transport"
)

// peerTimeout: an owner heartbeats idle streams every second or so; a
// stream that carries nothing for this long is dropped and re-opened.
const peerTimeout = 15 * time.Second

// maxReopen bounds how often one connection re-opens its stream to find a
// resumable position before it takes the owner's snapshot instead.
const maxReopen = 3

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
}

func (c *cli) tail(ctx context.Context, args []string) error {
	fs := c.cmdFlags("tail", "SERVICE/TABLE")
	n := fs.Int("n", 0, "stop after `N` changes (0: follow until interrupted)")
	from := fs.Int64("from", -1, "print the changes after `SEQ` (default: the table's head when tail starts)")
	asHex := fs.Bool("hex", false, "print keys and values as hex, with no msgpack decoding")
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
	tl := &tailer{c: c, service: service, table: table, instance: fmt.Sprintf("replctl-%d", os.Getpid()),
		limit: *n, fromFlag: *from >= 0, asHex: *asHex, notices: isTerminal(c.stderr)}

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
	return tl.run(ctx, owner.Primary)
}

// run follows the table until the limit is reached or ctx ends, moving to
// the new primary when the stream breaks.
func (tl *tailer) run(ctx context.Context, ep transport.Endpoint) error {
	backoff := 100 * time.Millisecond
	for {
		before := tl.printed
		err := tl.follow(ctx, ep)
		if err == nil || ctx.Err() != nil {
			return nil // the limit was reached, or interrupted: a normal end
		}
		if !tl.connected || fatalTailError(err) {
			return err
		}
		if tl.printed > before {
			backoff = 100 * time.Millisecond
		}
		textf(tl.c.stderr, "replctl: tail %s/%s: %v; reconnecting\n", tl.service, tl.table, err)
		for {
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return nil
			}
			backoff = min(2*backoff, 5*time.Second)
			owner, lerr := tl.c.primaryOf(ctx, tl.service)
			if lerr == nil {
				ep = owner.Primary
				break
			}
			if ctx.Err() != nil {
				return nil
			}
			textf(tl.c.stderr, "replctl: tail %s/%s: %v; retrying\n", tl.service, tl.table, lerr)
		}
	}
}

// errTrimmed: the changes asked for with -from are no longer in the log.
var errTrimmed = errors.New("no longer in the owner's log")

func fatalTailError(err error) bool {
	for _, e := range []error{transport.ErrPermission, transport.ErrUnknownTable, transport.ErrBadRequest,
		transport.ErrProtocolVersion, errTrimmed} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// follow runs streams to the owner at ep: it returns nil once the limit is
// reached, or the error that ended the stream.
func (tl *tailer) follow(ctx context.Context, ep transport.Endpoint) error {
	cn, err := tl.c.dial(ep.Addr)
	if err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		reopen, err := tl.stream(ctx, cn, ep, attempt < maxReopen)
		if err != nil {
			return tl.c.ownerError(tl.service, tl.table, ep, err)
		}
		if !reopen {
			return nil
		}
	}
}

// stream runs one Subscribe stream. With mayReopen, an owner that does not
// resume at tl.pos makes it move tl.pos to a position it will resume at
// and return reopen; otherwise the owner's full transfer is skipped and
// the changes after it are printed.
func (tl *tailer) stream(ctx context.Context, cn *conn, ep transport.Endpoint, mayReopen bool) (reopen bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := cn.repl.Subscribe(sctx)
	if err != nil {
		return false, err
	}
	defer stream.CloseSend()
	var silent atomic.Bool
	watchdog := time.AfterFunc(peerTimeout, func() { silent.Store(true); cancel() })
	defer watchdog.Stop()
	recv := func() (*transport.OwnerFrame, error) {
		f, err := stream.Recv()
		if err != nil {
			if ctx.Err() == nil && sctx.Err() != nil && silent.Load() {
				return nil, fmt.Errorf("%w: no frame from the owner for %s", transport.ErrUnavailable, peerTimeout)
			}
			if errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("%w: the owner ended the stream", transport.ErrUnavailable)
			}
			return nil, transport.FromStatus(err)
		}
		watchdog.Reset(peerTimeout)
		return f, nil
	}
	ack := func() error {
		err := stream.Send(&transport.ConsumerFrame{Kind: transport.KindAck, Seq: tl.pos.Seq})
		if errors.Is(err, io.EOF) {
			// The stream is over; Recv tells why.
			_, err = recv()
			return err
		}
		return transport.FromStatus(err)
	}

	err = stream.Send(&transport.ConsumerFrame{Kind: transport.KindOpen, Open: &transport.Open{
		Version: transport.ProtocolVersion, Service: tl.c.service, Instance: tl.instance, Table: tl.table,
		LogID: tl.pos.LogID, Seq: tl.pos.Seq, Epoch: tl.pos.Epoch, Mode: transport.ModePush,
	}})
	if err != nil {
		return false, transport.FromStatus(err)
	}
	f, err := recv()
	if err != nil {
		return false, err
	}
	if f.Kind != transport.KindStart || f.Start == nil {
		return false, fmt.Errorf("%w: the owner's first frame is %s, want start", transport.ErrBadRequest, f.Kind)
	}
	st := f.Start
	if err := transport.CheckVersion(st.Version); err != nil {
		return false, err
	}
	if tl.printed > 0 && st.Epoch < tl.pos.Epoch {
		return false, fmt.Errorf("%w: the owner is at epoch %d, older than the changes printed (epoch %d): a deposed primary",
			transport.ErrUnavailable, st.Epoch, tl.pos.Epoch)
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
	if tl.notices {
		textf(tl.c.stderr, "replctl: tailing %s/%s on %s (%s) after seq %d (head %d); Ctrl-C stops\n",
			tl.service, tl.table, ep.Instance, ep.Addr, tl.pos.Seq, st.HeadSeq)
	}
	if err := ack(); err != nil {
		return false, err
	}
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
		if end := epochEnd(st.Epochs, next.Epoch); next.Seq >= end {
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
// epoch history hist (oldest first), or dflt when hist says nothing.
func epochOf(hist []transport.EpochStart, seq, dflt uint64) uint64 {
	e, found := uint64(0), false
	for _, h := range hist {
		if h.Seq > seq {
			break
		}
		e, found = h.Epoch, true
	}
	if !found {
		if len(hist) == 0 {
			return dflt
		}
		return 0
	}
	return e
}

// epochEnd returns the first seq after epoch e in hist (where the next
// epoch began), or MaxUint64 when e is the newest epoch there.
func epochEnd(hist []transport.EpochStart, e uint64) uint64 {
	for _, h := range hist {
		if h.Epoch > e {
			return h.Seq
		}
	}
	return math.MaxUint64
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
			cl.ValueMsgpack, _ = msgpackJSON(ch.Value)
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
