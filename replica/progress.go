package replica

import (
	"math"
	"time"

	"github.com/replmesh/replmesh/transport"
)

const (
	// transferLogEvery is how often a running full transfer logs its
	// progress.
	transferLogEvery = 5 * time.Second
	// maxETASeconds bounds an ETA (about 31 years) so that a crawling
	// transfer's estimate cannot overflow a Duration.
	maxETASeconds = 1e9
)

// TransferProgress is how far a running full state transfer has come. It is
// a snapshot taken when Lag or Status was called; Elapsed, Rate and ETA are
// measured up to that moment.
type TransferProgress struct {
	// Seq is the seq of the snapshot being transferred.
	Seq uint64
	// Rows and Bytes (keys plus values) received so far.
	Rows  uint64
	Bytes uint64
	// ExpectedRows is the number of rows the owner announced at the
	// transfer's start; 0 when unknown (an owner older than the
	// announcement, or a table too large to count before the owner's
	// deadline for its first frame).
	ExpectedRows uint64
	// Started is when the transfer's first frame arrived; Elapsed is the
	// time since.
	Started time.Time
	Elapsed time.Duration
	// Rate is the rows received per second since Started (0 before any
	// time has passed).
	Rate float64
	// ETA is the estimated time until the last row arrives, at Rate; 0
	// when it cannot be estimated (no rate yet, ExpectedRows unknown) or
	// no row remains.
	ETA time.Duration
}

// Percent is the share of the expected rows received, from 0 to 100; 0 when
// ExpectedRows is unknown. It never exceeds 100.
func (p TransferProgress) Percent() float64 {
	if p.ExpectedRows == 0 {
		return 0
	}
	return min(100, 100*float64(p.Rows)/float64(p.ExpectedRows))
}

// transfer is the running full transfer of a replica (guarded by
// Replica.mu).
type transfer struct {
	seq, expected, rows, bytes uint64
	started, logged            time.Time
}

// progress derives the transfer's rate and ETA as of now.
func (x *transfer) progress(now time.Time) TransferProgress {
	p := TransferProgress{Seq: x.seq, Rows: x.rows, Bytes: x.bytes, ExpectedRows: x.expected,
		Started: x.started, Elapsed: max(now.Sub(x.started), 0)}
	if p.Elapsed > 0 {
		p.Rate = float64(p.Rows) / p.Elapsed.Seconds()
	}
	if p.Rate > 0 && p.ExpectedRows > p.Rows {
		secs := min(float64(p.ExpectedRows-p.Rows)/p.Rate, maxETASeconds)
		p.ETA = time.Duration(secs * float64(time.Second))
	}
	return p
}

// transferBegins starts the progress report of a full transfer whose first
// frame is begin.
func (r *Replica) transferBegins(begin *transport.OwnerFrame) {
	now := time.Now()
	r.mu.Lock()
	r.state = StateTransferring
	r.xfer = &transfer{seq: begin.Seq, expected: begin.Count, started: now, logged: now}
	r.mu.Unlock()
	r.c.kickBroker()
}

// transferEnds ends the progress report (the transfer completed or
// failed).
func (r *Replica) transferEnds() {
	r.mu.Lock()
	r.xfer = nil
	r.mu.Unlock()
	r.c.kickBroker()
}

// transferred counts rows received in the running transfer, logs the
// progress at most every transferLogEvery, and runs the test hook.
func (r *Replica) transferred(rows, nbytes uint64) {
	now := time.Now()
	every := transferLogEvery
	if r.c.hooks.transferLogEvery > 0 {
		every = r.c.hooks.transferLogEvery
	}
	r.mu.Lock()
	r.stats.snapshotRows.Add(rows)
	x := r.xfer
	var p TransferProgress
	logNow := false
	if x != nil {
		x.rows += rows
		x.bytes += nbytes
		p = x.progress(now)
		if now.Sub(x.logged) >= every {
			x.logged, logNow = now, true
		}
	}
	r.mu.Unlock()
	if logNow {
		r.log.Info("full transfer progress", "seq", p.Seq, "rows", p.Rows, "rows_expected", p.ExpectedRows,
			"percent", math.Round(p.Percent()*10)/10, "rows_per_sec", math.Round(p.Rate), "eta", p.ETA.Round(time.Second),
			"bytes", p.Bytes, "elapsed", p.Elapsed.Round(time.Millisecond))
	}
	if h := r.c.hooks.rowsStaged; h != nil {
		h(r)
	}
}

// transferLocked is the running transfer's progress as of now (nil when no
// transfer runs).
func (r *Replica) transferLocked(now time.Time) *TransferProgress {
	if r.xfer == nil {
		return nil
	}
	p := r.xfer.progress(now)
	return &p
}

// hooks are test knobs; zero in production.
type hooks struct {
	// rowsStaged runs in the replica's stream goroutine after each rows
	// frame of a full transfer is staged and counted; it may block to hold
	// the transfer still.
	rowsStaged func(*Replica)
	// transferLogEvery overrides the progress log interval.
	transferLogEvery time.Duration
	// send runs in an owner's sending loop before (returned false) and
	// after (returned true) each frame goes to the stream.
	send func(s *sender, f *transport.OwnerFrame, returned bool)
	// subscribed runs in Subscribe once the replica is loaded, before
	// its stream starts (with Component.mu held).
	subscribed func(*Replica)
}
