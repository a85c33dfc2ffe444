package replica

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/y"
	"github.com/replmesh/replmesh/modes"
	"github.com/replmesh/replmesh/transport"
)

// maxFrameBytes bounds the payload of one change batch or snapshot chunk
// (below the transport's chunk budget). A consumer drops a stream that
// delivers no frame for PeerTimeout, so a frame must cross the slowest link
// in less than that: with whole 4 MiB chunks a consumer behind a link under
// about 400 KB/s (PeerTimeout 10s) re-started its full transfer forever.
// 64 KiB frames need only 6.4 KB/s for the default timeout and cost no
// measurable throughput on fast links.
const maxFrameBytes = 64 << 10

// frameBudget is the payload budget of one frame the owner sends.
func frameBudget(o transport.Options) int { return min(o.ChunkBudget(), maxFrameBytes) }

// catchUpFrameBytes bounds a change batch sent to a consumer that is
// behind on a fast link (sender.pushBudget): a restarted consumer caught
// up on 100k changes in 288 ms instead of 329 ms (replbench -workloads
// resume, medians of 3), fewer frames meaning fewer applies, publishes
// and acks.
const catchUpFrameBytes = 256 << 10

// fastSend is how long a full frame may have taken to send for the link
// to count as fast: a link that moves maxFrameBytes in PeerTimeout/64
// moves catchUpFrameBytes in a sixteenth of the consumer's silence
// timeout, so a large frame never looks like a silent owner.
func fastSend(peerTimeout time.Duration) time.Duration { return peerTimeout / 64 }

type sender struct {
	c      *Component
	t      *OwnedTable
	stream transport.SubscribeServer
	open   *transport.Open
	// standby: the stream of a standby of this service (authorize): its
	// acks count toward MinSyncStandbys.
	standby bool
	// sent is the highest seq this stream may acknowledge: the position it
	// resumed from, then the last seq sent (set before the frame goes out,
	// read by the receiving goroutine).
	sent atomic.Uint64
	// acked is the highest seq the stream acknowledged (set by the
	// receiving goroutine).
	acked atomic.Uint64
	// mode is what the subscriber runs, Push or Pull: Open.Mode at first,
	// then each Mode frame.
	mode modes.Mode
	log  interface {
		Info(string, ...any)
		Debug(string, ...any)
	}
	lastSend time.Time
	// lastFull: the last change batch filled its budget (changes were
	// left for the next) and went out within fastSend: the next may be
	// larger.
	lastFull bool
	buf      []transport.Change
	parts    [][]byte // nextEncoded's encodings of one frame
	// ahead: the change batch being read while the one before is sent
	// (startReadAhead; nil: none).
	ahead *readAhead
	// gated: with MinSyncStandbys, this subscriber (a consumer, not a
	// standby) is sent only the changes that many standbys have confirmed
	// (capHead).
	gated bool
	rate  *modes.RateMeter // the table's write rate (changes/s), for auto mode
}

func (s *sender) send(f *transport.OwnerFrame) error {
	s.lastSend = time.Now()
	if h := s.c.hooks.send; h != nil {
		h(s, f, false)
		defer h(s, f, true)
	}
	return s.stream.Send(f)
}

func (s *sender) run() error {
	ctx := s.stream.Context()
	meta, _ := s.t.state()
	o := s.open
	resume := resumable(meta, o.LogID, o.Seq, o.Epoch)
	if err := s.send(&transport.OwnerFrame{Kind: transport.KindStart, HeadSeq: meta.Head, Start: &transport.Start{
		Version: transport.ProtocolVersion, LogID: meta.LogID, Epoch: meta.Epoch,
		HeadSeq: meta.Head, FirstSeq: meta.First, Resume: resume, Epochs: meta.Epochs, Mode: s.t.ownerMode().Wire(),
	}}); err != nil {
		return err
	}
	next := o.Seq + 1
	if resume {
		s.sent.Store(o.Seq)
		s.log.Info("subscriber resumes", "from", next, "head", meta.Head)
	} else {
		s.log.Info("subscriber needs full transfer", "consumer_log", o.LogID, "consumer_seq", o.Seq, "head", meta.Head)
		var err error
		if next, err = s.sendSnapshot(); err != nil {
			return err
		}
	}

	standby := s.standby
	if standby {
		s.t.sync.track(s)
		defer s.t.sync.untrack(s)
	}
	s.gated = s.c.cfg.MinSyncStandbys > 0 && !standby
	// Flow control: a push stream holds writes while it keeps up.
	window := s.c.cfg.Flow.window()
	s.acked.Store(next - 1)
	if !s.pulls() {
		s.t.flow.join(s, next-1, s.t.Head(), window)
	}
	defer s.t.flow.leave(s)
	// The receiver goroutine hands mode switches and pull requests to the
	// sending loop below; it never sends.
	modeCh := make(chan modes.Mode, 1)
	pullCh := make(chan struct{}, 1)
	recvErr := make(chan error, 1)
	go func() {
		for {
			f, err := s.stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			switch f.Kind {
			case transport.KindAck:
				// A consumer acks what it applied, a standby what it holds:
				// never past the head. An ack beyond it is a lie that
				// would confirm writes no standby holds.
				if sent := s.sent.Load(); f.Seq > sent {
					err := fmt.Errorf("%w: ack of seq %d above the head %d of %s (sent to this stream up to %d)",
						transport.ErrBadRequest, f.Seq, s.t.Head(), s.t.name, sent)
					s.c.guard.protocol.add(errAckAboveHead)
					s.c.log.Warn("protocol error: stream ended", "table", s.t.name, "consumer", s.open.Service+"/"+s.open.Instance, "err", err)
					recvErr <- err
					return
				}
				if standby {
					s.t.sync.ack(s, f.Seq, s.c.cfg.MinSyncStandbys, s.c.lease.left() > 0)
				}
				s.acked.Store(f.Seq)
				s.t.flow.ack(s, f.Seq, s.t.Head(), window)
			case transport.KindHeartbeat:
			case transport.KindPull:
				select {
				case pullCh <- struct{}{}:
				default:
				}
			case transport.KindMode:
				m, err := modes.ParseWire(f.Mode)
				if err != nil || (m != modes.Push && m != modes.Pull) {
					recvErr <- fmt.Errorf("%w: unknown mode %q", transport.ErrBadRequest, f.Mode)
					return
				}
				select {
				case <-modeCh:
				default:
				}
				modeCh <- m
			default:
				recvErr <- fmt.Errorf("%w: unexpected %s frame from consumer", transport.ErrBadRequest, f.Kind)
				return
			}
		}
	}()

	hb := time.NewTicker(s.c.cfg.Heartbeat)
	defer hb.Stop()
	defer s.dropReadAhead()
	budget := frameBudget(s.c.cfg.Transport)
	var linger *time.Timer
	var lingerUntil time.Time
	if s.c.cfg.Linger > 0 {
		linger = time.NewTimer(s.c.cfg.Linger)
		defer linger.Stop()
	}
	for {
		if s.t.restoring.Load() {
			// The table is being replaced: the subscriber starts again
			// once the restore is over (resume, transfer or truncation).
			return s.t.errRestoring()
		}
		meta, headCh := s.t.state()
		s.rate.Record(time.Now(), meta.Head)
		confirmed := s.capHead(&meta)
		if !s.pulls() && linger != nil && next <= meta.Head && meta.Head-next+1 < uint64(s.c.cfg.BatchMaxChanges) {
			// A partial batch: give it up to Linger to fill.
			now := time.Now()
			if lingerUntil.IsZero() {
				lingerUntil = now.Add(s.c.cfg.Linger)
				linger.Reset(s.c.cfg.Linger)
			}
			if now.Before(lingerUntil) {
				select {
				case <-linger.C:
				case <-headCh:
					continue
				case <-confirmed:
					continue
				case <-ctx.Done():
					return ctx.Err()
				case <-s.c.done():
					return fmt.Errorf("%w: owner is shutting down", transport.ErrUnavailable)
				}
			}
		}
		lingerUntil = time.Time{}
		if !s.pulls() && next <= meta.Head && !s.gated {
			// The common case: the changes are in the table's tail, with
			// encodings shared by every stream; or, for a consumer behind
			// the tail, encoded from the log's entries.
			b := s.nextEncoded(next, meta, s.pushBudget(budget))
			if b.err != nil {
				return b.err
			}
			if b.n > 0 {
				last := next + uint64(b.n) - 1
				if last < meta.Head {
					// The consumer is behind: the next batch is read while
					// this one is sent.
					s.startReadAhead(last+1, meta, s.catchUpBudget(budget))
				}
				err := s.sendBatch(b.f, last, b.head)
				clear(b.parts) // hold no encoding the tail has dropped
				if err != nil {
					return err
				}
				next = last + 1
				continue
			}
		}
		if !s.pulls() && next <= meta.Head {
			var err error
			s.buf, err = s.t.readChanges(next, s.c.cfg.BatchMaxChanges, s.pushBudget(budget), s.buf[:0])
			if err != nil {
				return err
			}
			if s.gated {
				s.buf = capChanges(s.buf, meta.Head)
			}
			if len(s.buf) > 0 {
				if err := s.sendBatch(&transport.OwnerFrame{Kind: transport.KindChanges, HeadSeq: meta.Head, Epoch: meta.Epoch,
					Rate: s.rate.Rate(), Changes: s.buf}, s.buf[len(s.buf)-1].Seq, meta.Head); err != nil {
					return err
				}
				next = s.buf[len(s.buf)-1].Seq + 1
				clear(s.buf)
				continue
			}
		}
		var commits, moved <-chan struct{}
		if !s.pulls() {
			commits, moved = headCh, confirmed // in pull mode a commit alone sends nothing
		}
		select {
		case <-commits:
		case <-moved:
		case m := <-modeCh:
			if m != s.mode {
				s.mode = m
				s.log.Info("subscriber switches mode", "mode", m.String(), "at", next-1)
				if s.pulls() {
					s.dropReadAhead()
					s.t.flow.leave(s)
				} else {
					s.t.flow.join(s, s.acked.Load(), s.t.Head(), window)
				}
			}
		case <-pullCh:
			var err error
			if next, err = s.sendDelta(next); err != nil {
				return err
			}
		case now := <-hb.C:
			if now.Sub(s.lastSend) >= s.c.cfg.Heartbeat/2 {
				if err := s.send(&transport.OwnerFrame{Kind: transport.KindHeartbeat, HeadSeq: meta.Head, Time: now.UnixNano(), Rate: s.rate.Rate()}); err != nil {
					return err
				}
			}
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case <-ctx.Done():
			return ctx.Err()
		case <-s.c.done():
			return fmt.Errorf("%w: owner is shutting down", transport.ErrUnavailable)
		}
	}
}

// encodedBatch is a change frame read for a stream (readEncoded): its n
// changes from seq from on, and what it was read for (budget, and the
// table's head, log id and epoch then).
type encodedBatch struct {
	from   uint64
	n      int
	f      *transport.OwnerFrame
	head   uint64
	logID  string
	epoch  uint64
	budget int
	parts  [][]byte // the encodings f holds, cleared once it is sent
	err    error
}

// readAhead is a change batch read in the background (startReadAhead):
// b is set once done is closed.
type readAhead struct {
	done chan struct{}
	b    encodedBatch
}

// readEncoded reads the changes from next on for one frame, as the
// encodings the table's tail keeps (encoded once for every stream), or,
// when the tail no longer holds next, as encodings built straight from
// the log's entries (readLogEncoded: no transport.Change is made and no
// frame encoded again; that buffer is the frame's alone, as the
// transport may still hold it after Send returns). parts is the slice
// the tail's encodings are appended to; rate is the frame's write rate.
// It touches no state of the sender's but what it is given, so that it
// may run beside the sending loop (startReadAhead).
func (s *sender) readEncoded(next uint64, meta ownerMeta, budget int, rate float64, parts [][]byte) encodedBatch {
	b := encodedBatch{from: next, head: meta.Head, logID: meta.LogID, epoch: meta.Epoch, budget: budget}
	parts, n, ok, err := s.t.tail.readEncoded(next, s.c.cfg.BatchMaxChanges, budget, parts)
	if !ok && err == nil {
		var enc []byte
		enc, n, err = s.t.readLogEncoded(next, s.c.cfg.BatchMaxChanges, budget, nil)
		parts = append(parts[:0], enc)
	}
	b.parts = parts
	if err != nil || n == 0 {
		b.err = err
		return b
	}
	b.n = n
	b.f = transport.EncodedChanges(meta.Head, meta.Epoch, rate, n, parts)
	return b
}

// nextEncoded is the batch to send from next on with budget: the one read
// ahead when it was read for exactly that (and for the table's current
// log id and epoch), else one read now.
func (s *sender) nextEncoded(next uint64, meta ownerMeta, budget int) encodedBatch {
	if p := s.takeReadAhead(); p != nil {
		if p.b.from == next && p.b.budget == budget && p.b.logID == meta.LogID && p.b.epoch == meta.Epoch {
			return p.b
		}
		clear(p.b.parts)
	}
	b := s.readEncoded(next, meta, budget, s.rate.Rate(), s.parts[:0])
	s.parts = b.parts[:0]
	return b
}

// startReadAhead starts reading the batch from next on with budget in the
// background, while the sending loop sends the batch before it: a
// consumer catching up then waits for the send of a frame, not for its
// read (from badger, for a consumer behind the tail) and then its send.
// The batch is taken by the next nextEncoded, which uses it only if it
// was read for what that one needs.
func (s *sender) startReadAhead(next uint64, meta ownerMeta, budget int) {
	if s.ahead != nil {
		return
	}
	p := &readAhead{done: make(chan struct{})}
	rate := s.rate.Rate()
	s.ahead = p
	go func() {
		defer close(p.done)
		p.b = s.readEncoded(next, meta, budget, rate, nil)
	}()
}

// takeReadAhead returns the batch read ahead once it is read, and
// forgets it (nil: none was started).
func (s *sender) takeReadAhead() *readAhead {
	p := s.ahead
	if p == nil {
		return nil
	}
	s.ahead = nil
	<-p.done
	return p
}

// dropReadAhead waits for the batch read ahead, if any, and drops it.
func (s *sender) dropReadAhead() {
	if p := s.takeReadAhead(); p != nil {
		clear(p.b.parts)
	}
}

// sendBatch sends a change batch ending at seq last, head being the
// table's head when it was read, and notes whether the next batch may be
// a catch-up one (pushBudget).
func (s *sender) sendBatch(f *transport.OwnerFrame, last, head uint64) error {
	s.sent.Store(last)
	start := time.Now()
	err := s.send(f)
	// A batch that left changes behind was cut by its budget.
	s.lastFull = last < head && time.Since(start) < fastSend(s.c.cfg.PeerTimeout)
	return err
}

// pushBudget is the payload budget of the next change batch: budget, or
// up to catchUpFrameBytes while the consumer is behind (the last batch
// was full) on a fast link (it went out within fastSend). A slow link
// keeps frames it can carry well within the consumer's silence timeout.
func (s *sender) pushBudget(budget int) int {
	if s.lastFull {
		return s.catchUpBudget(budget)
	}
	return budget
}

// catchUpBudget is pushBudget's budget for a consumer that is behind on
// a fast link.
func (s *sender) catchUpBudget(budget int) int {
	return max(budget, min(s.c.cfg.Transport.ChunkBudget(), catchUpFrameBytes))
}

// pulls reports whether the subscriber runs in pull mode: the owner sends
// nothing until asked.
func (s *sender) pulls() bool { return s.mode == modes.Pull }

// capHead caps m.Head at what the subscriber may be sent. With
// MinSyncStandbys, a consumer gets only the changes that many standbys have
// confirmed (the sync watermark): whichever standby is promoted then holds
// every change a consumer has applied, so the consumer resumes on it, and
// no consumer ever reads a change that is lost with the primary. It returns
// a channel closed when the watermark moves (nil when not gated).
func (s *sender) capHead(m *ownerMeta) <-chan struct{} {
	if !s.gated {
		return nil
	}
	var moved <-chan struct{}
	m.Head, moved = s.t.sync.visible(m.Head)
	return moved
}

// capChanges drops the changes past head (read beyond what may be sent).
// head is a commit group's end: standbys confirm whole groups.
func capChanges(chs []transport.Change, head uint64) []transport.Change {
	for len(chs) > 0 && chs[len(chs)-1].Seq > head {
		chs = chs[:len(chs)-1]
	}
	return chs
}

// sendDelta answers a pull: the latest change of every key changed since
// next (deletes included), read from the log, in one frame the consumer
// applies atomically. A consumer behind the log, or a delta larger than a
// message, gets a full transfer in the stream instead. It returns the seq
// after the delta.
func (s *sender) sendDelta(next uint64) (uint64, error) {
	meta, _ := s.t.state()
	s.capHead(&meta)
	if next < meta.First {
		s.log.Info("pull behind the log; full transfer", "from", next, "first", meta.First)
		return s.sendSnapshot()
	}
	// A delta is applied in one consumer transaction: keep it far under
	// badger's transaction limit.
	budget := min(s.c.cfg.Transport.ChunkBudget(), 1<<20)
	var out []transport.Change
	index := map[string]int{}
	size := 0
	to := next - 1
	for to < meta.Head {
		var err error
		s.buf, err = s.t.readChanges(to+1, s.c.cfg.BatchMaxChanges, budget, s.buf[:0])
		if errors.Is(err, transport.ErrResync) {
			return s.sendSnapshot()
		}
		if err != nil {
			return 0, err
		}
		if s.gated {
			s.buf = capChanges(s.buf, meta.Head)
		}
		if len(s.buf) == 0 {
			break
		}
		for _, ch := range s.buf {
			if i, ok := index[string(ch.Key)]; ok {
				size += ch.Size() - out[i].Size()
				out[i] = ch
			} else {
				index[string(ch.Key)] = len(out)
				out = append(out, ch)
				size += ch.Size()
			}
		}
		to = s.buf[len(s.buf)-1].Seq
		clear(s.buf)
		if size > budget {
			s.log.Info("pull delta larger than a message; full transfer", "from", next, "bytes", size)
			return s.sendSnapshot()
		}
	}
	for i := range out {
		out[i].TxnEnd = false
	}
	if n := len(out); n > 0 {
		out[n-1].TxnEnd = true
	}
	slices.SortFunc(out, func(a, b transport.Change) int { return cmp.Compare(a.Seq, b.Seq) })
	s.sent.Store(max(s.sent.Load(), to))
	err := s.send(&transport.OwnerFrame{Kind: transport.KindDelta, Seq: to, HeadSeq: meta.Head, Epoch: meta.Epoch,
		Rate: s.rate.Rate(), Changes: out})
	return to + 1, err
}

// sendSnapshot streams the table's rows from one read transaction (a
// consistent snapshot at the seq it reads from the meta in the same
// transaction) and returns the seq after it.
func (s *sender) sendSnapshot() (uint64, error) {
	defer s.c.reads.leave()
	if s.c.reads.enter() != nil {
		return 0, fmt.Errorf("%w: owner is shutting down", transport.ErrUnavailable)
	}
	txn, m, done, err := s.t.rowTxn()
	if err != nil {
		return 0, err
	}
	defer done()
	// A snapshot holds the table at its head, and rows cannot be cut back
	// to the sync watermark: a gated consumer's transfer waits until the
	// standbys have confirmed that head, or a consumer could hold changes
	// the promoted standby lacks.
	if s.gated {
		if err := s.t.waitConfirmed(s.stream.Context(), m.Head); err != nil {
			return 0, fmt.Errorf("%w: full transfer of %s at seq %d: not confirmed by %d standby(s) within %s: %v",
				transport.ErrUnavailable, s.t.name, m.Head, s.c.cfg.MinSyncStandbys, s.c.cfg.SyncTimeout, err)
		}
	}
	// The frame's Epoch is the epoch of the snapshot's last change: the
	// consumer's cursor epoch after the transfer. Its Count announces the
	// rows to come, for the consumer's progress report.
	snapEpoch := m.Epochs.EpochOf(m.Head)
	expected, err := s.countRows(txn)
	if err != nil {
		return 0, fmt.Errorf("snapshot of %s: count rows: %w", s.t.name, err)
	}
	s.sent.Store(m.Head)
	if err := s.send(&transport.OwnerFrame{Kind: transport.KindSnapshotBegin, Seq: m.Head, HeadSeq: m.Head, Epoch: snapEpoch, Count: expected}); err != nil {
		return 0, err
	}
	start := time.Now()
	walk := func(fn func(k, v []byte) (bool, error)) error { return s.t.scanValues(txn, nil, nil, nil, fn) }
	total, bytes, err := sendRows(s.stream.Context(), walk, frameBudget(s.c.cfg.Transport), func(v []byte) ([]byte, error) { return v, nil }, s.send)
	if err != nil {
		return 0, fmt.Errorf("snapshot of %s: %w", s.t.name, err)
	}
	if err := s.send(&transport.OwnerFrame{Kind: transport.KindSnapshotEnd, Seq: m.Head, HeadSeq: m.Head, Epoch: snapEpoch, Count: uint64(total)}); err != nil {
		return 0, err
	}
	s.log.Info("full transfer sent", "seq", m.Head, "rows", total, "bytes", bytes, "took", time.Since(start))
	return m.Head + 1, nil
}

// rowWalk walks a consistent snapshot's rows in key order, calling fn for
// each until it returns false or an error (which the walk returns).
type rowWalk func(fn func(k, v []byte) (bool, error)) error

// txnRows walks the rows under prefix in txn (one read transaction: a
// consistent snapshot).
func txnRows(txn *badger.Txn, prefix []byte) rowWalk {
	return func(fn func(k, v []byte) (bool, error)) error { return scanRows(txn, prefix, nil, nil, nil, fn) }
}

// sendRows sends the rows of a consistent snapshot (walk) as rows frames
// of at most budget bytes of keys and values, in key order, each stored
// value turned into the row's value by value. It returns the rows and
// bytes sent. Both full transfers use it: an owner's (sendSnapshot) and a
// replica's serving a restore, from disk or from its resident view. Each
// row is encoded into its frame as it is walked (transport.AppendRow,
// EncodedRows): one copy of its key and value, where a list of rows
// copied into an arena, then encoded by the codec and copied out of its
// buffer, took three. A frame's bytes are its own (gRPC may write them
// after the send returns).
func sendRows(ctx context.Context, walk rowWalk, budget int, value func(stored []byte) ([]byte, error), send func(*transport.OwnerFrame) error) (total, nbytes int, err error) {
	// A frame holds up to a quarter more than budget, as the arena its
	// rows were copied into did; its bytes add the rows' headers (some 5
	// bytes a row, a sixteenth of rows of 80 bytes).
	limit := budget + budget/4
	var body []byte
	n, kvBytes := 0, 0
	flush := func() error {
		if n == 0 {
			return nil
		}
		err := send(transport.EncodedRows(n, body))
		total += n
		nbytes += kvBytes
		body, n, kvBytes = nil, 0, 0
		return err
	}
	err = walk(func(k, v []byte) (bool, error) {
		val, err := value(v)
		if err != nil {
			return false, err
		}
		if n > 0 && kvBytes+len(k)+len(val) > limit {
			if err := flush(); err != nil {
				return false, err
			}
		}
		if body == nil {
			body = make([]byte, 0, max(limit+limit/16, len(k)+len(val)+rowWireOverhead))
		}
		body = transport.AppendRow(body, k, val)
		n++
		kvBytes += len(k) + len(val)
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		return true, nil
	})
	if err == nil {
		err = flush()
	}
	return total, nbytes, err
}

// rowWireOverhead bounds the bytes a row's encoding adds to its key and
// value (transport.AppendRow: an array header, two bin headers of at most
// 5 bytes).
const rowWireOverhead = 11

// countRows counts the rows a snapshot's read transaction holds, keys only
// (no value is read: about a quarter of a second for 1M rows, during which
// the consumer waits for the snapshot's first frame). The commit path
// writes rows blindly, without knowing whether a put creates its key, so
// no count is kept with the table; counting the snapshot's own
// transaction is exact. The rows are counted in two halves at once
// (countRowsSplit). The consumer drops a stream silent for PeerTimeout, so
// a table too large to count in half of that since the last frame sent is
// announced as unknown (0).
func (s *sender) countRows(txn *badger.Txn) (uint64, error) {
	return countRowsSplit(s.stream.Context(), txn, s.t.rowPrefix, middleKey(s.c.db, s.t.rowPrefix), s.lastSend.Add(s.c.cfg.PeerTimeout/2), s.log)
}

// countRows counts the keys under prefix in txn, giving up (0: unknown)
// at deadline.
func countRows(ctx context.Context, txn *badger.Txn, prefix []byte, deadline time.Time, log interface{ Info(string, ...any) }) (uint64, error) {
	return countRowsSplit(ctx, txn, prefix, nil, deadline, log)
}

// countRowsSplit is countRows counting the keys below split and those from
// it on in two goroutines, each with an iterator of its own over txn (a
// read-only transaction's iterators may run at once); nil split, or one
// not under prefix: one count.
func countRowsSplit(ctx context.Context, txn *badger.Txn, prefix, split []byte, deadline time.Time, log interface{ Info(string, ...any) }) (uint64, error) {
	var n uint64
	var done bool
	var err error
	if !bytes.HasPrefix(split, prefix) {
		split = nil // not a key of the range: count it whole
	}
	if split == nil {
		n, done, err = countRange(ctx, txn, prefix, nil, nil, deadline)
	} else {
		var hi uint64
		var hiDone bool
		var hiErr error
		var wg sync.WaitGroup
		wg.Go(func() { hi, hiDone, hiErr = countRange(ctx, txn, prefix, split, nil, deadline) })
		n, done, err = countRange(ctx, txn, prefix, nil, split, deadline)
		wg.Wait()
		n, done, err = n+hi, done && hiDone, errors.Join(err, hiErr)
	}
	if err != nil {
		return 0, err
	}
	if !done {
		log.Info("full transfer: too many rows to count in time; announcing an unknown count", "counted", n)
		return 0, nil
	}
	return n, nil
}

// countRange counts the keys under prefix from from (nil: the first) to
// before to (nil: the last); done is false when it gave up at deadline.
func countRange(ctx context.Context, txn *badger.Txn, prefix, from, to []byte, deadline time.Time) (n uint64, done bool, err error) {
	o := badger.DefaultIteratorOptions
	o.PrefetchValues = false
	o.Prefix = prefix
	it := txn.NewIterator(o)
	defer it.Close()
	if from == nil {
		from = prefix
	}
	for it.Seek(from); it.Valid(); it.Next() {
		if to != nil && bytes.Compare(it.Item().Key(), to) >= 0 {
			break
		}
		n++
		if n%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return 0, false, err
			}
			if time.Now().After(deadline) {
				return n, false, nil
			}
		}
	}
	return n, true, nil
}

// middleKey is a key under prefix near the middle of its keys in db,
// where a count splits them (countRowsSplit): of badger's tables that lie
// under prefix, in the order of their smallest keys, the smallest key of
// the first one with half of their keys before it (KeyCount; tables of
// different levels overlap, so this is an estimate). It is nil when fewer
// than two tables lie under prefix (the rows are in the memtables, or in
// tables that hold other keys too: too few to tell where their middle
// is).
func middleKey(db *badger.DB, prefix []byte) []byte {
	type span struct {
		left []byte
		keys uint64
	}
	var spans []span
	var total uint64
	for _, ti := range db.Tables() {
		if l := y.ParseKey(ti.Left); bytes.HasPrefix(l, prefix) && bytes.HasPrefix(y.ParseKey(ti.Right), prefix) {
			spans = append(spans, span{l, uint64(ti.KeyCount)})
			total += uint64(ti.KeyCount)
		}
	}
	if len(spans) < 2 {
		return nil
	}
	slices.SortFunc(spans, func(a, b span) int { return bytes.Compare(a.left, b.left) })
	var before uint64
	for i := 1; i < len(spans); i++ {
		if before += spans[i-1].keys; before*2 >= total {
			return spans[i].left
		}
	}
	return spans[len(spans)-1].left
}
