package replica

import (
	"sync/atomic"
	"time"
)

// State is where a replica's subscription stands.
type State int

// Replica states.
const (
	StateConnecting   State = iota // no stream: dialing, or backing off after a failure
	StateTransferring              // receiving a full state transfer
	StateStreaming                 // resumed or transferred; following the change stream
	StateDiverged                  // the owner's history does not contain the replica's; waiting
	StateClosed                    // unsubscribed or component closed
)

func (s State) String() string {
	return [...]string{"connecting", "transferring", "streaming", "diverged", "closed"}[s]
}

// Stats count what a replica's subscription has done since it was opened.
type Stats struct {
	FullTransfers  uint64 // full state transfers completed
	Resumes        uint64 // streams resumed from the cursor without a transfer
	Reconnects     uint64 // streams that ended and were re-opened
	Applied        uint64 // changes applied
	Duplicates     uint64 // changes received again and skipped
	Pulls          uint64 // pull answers applied (deltas and in-stream transfers)
	Truncations    uint64 // times the replica held changes the owner's history lost (failover), replaced by a full transfer
	SnapshotRows   uint64 // rows received in full transfers
	SnapshotBytes  uint64 // key+value bytes received in full transfers
	LastTransferNs int64  // duration of the last full transfer
}

// Status is a snapshot of a replica's state for tools and tests. While a
// full transfer runs, Lag.Transfer reports its progress.
type Status struct {
	Service   string
	Table     string
	State     State
	LogID     string
	Epoch     uint64
	Seq       uint64
	OwnerHead uint64
	Lag       Lag
	Stats     Stats
	// LastErr is why the last stream ended or could not start (the owner
	// unreachable, a refused frame, ...). It stays through a reconnect and
	// a full transfer (a transfer that keeps failing says why), and is
	// cleared once a stream is streaming again (resumed, or transferred).
	LastErr error
	// Mode is what the stream runs now (push or pull); ModeConfigured is
	// the resolved configuration (push, pull or auto); ModeReason says why
	// the last switch happened; ModeSwitches counts switches.
	Mode           string
	ModeConfigured string
	ModeReason     string
	ModeSwitches   uint64
	// Resident: the replica's rows are held in memory (not DiskOnly);
	// ResidentRows and ResidentBytes (keys and values) are what its
	// latest published view holds (at Seq, or one batch ahead for an
	// instant). Memory used is about ResidentBytes + 180 bytes a row.
	Resident      bool
	ResidentRows  int
	ResidentBytes int64
	// ResidentIndexed: the latest published view has its hash index, so
	// point reads are map lookups (resident.go). A resident table of at
	// least 4096 rows gets one built in the background after it is loaded
	// or transferred, and keeps it while point reads come; until then
	// reads search the B-tree.
	ResidentIndexed bool
}

// Lag says how far a replica is behind its owner.
type Lag struct {
	// Seqs is the owner's head (as last heard) minus the replica's seq.
	Seqs uint64
	// Staleness is how long ago the replica was last known to hold the
	// owner's head: 0 while caught up and in touch; it grows while the
	// owner is unreachable, since nobody can say what was missed. It is
	// never negative: a replica not yet caught up since it was subscribed
	// (a first transfer, or a copy loaded from disk still catching up)
	// counts from when the subscription began, or from the commit time of
	// the newest change it holds when that is older.
	Staleness time.Duration
	// Transfer is the progress of the running full state transfer; nil
	// when none runs.
	Transfer *TransferProgress
}

// counters are a replica's Stats as atomics: most of the sites that count
// hold no lock. Sites that count while they publish the cursor (applied,
// switchTo, transferred) keep counting under mu, so a Status taken under
// mu sees the counters and the cursor agree there as before.
type counters struct {
	fullTransfers, resumes, reconnects, applied, duplicates, pulls,
	truncations, snapshotRows, snapshotBytes atomic.Uint64
	lastTransferNs atomic.Int64
}

// snapshot returns the counters as Stats.
func (c *counters) snapshot() Stats {
	return Stats{
		FullTransfers:  c.fullTransfers.Load(),
		Resumes:        c.resumes.Load(),
		Reconnects:     c.reconnects.Load(),
		Applied:        c.applied.Load(),
		Duplicates:     c.duplicates.Load(),
		Pulls:          c.pulls.Load(),
		Truncations:    c.truncations.Load(),
		SnapshotRows:   c.snapshotRows.Load(),
		SnapshotBytes:  c.snapshotBytes.Load(),
		LastTransferNs: c.lastTransferNs.Load(),
	}
}

// Lag says how far the replica is behind its owner, as last heard.
func (r *Replica) Lag() Lag {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.lagLocked(time.Now())
}

func (r *Replica) lagLocked(now time.Time) Lag {
	l := Lag{Transfer: r.transferLocked(now)}
	if r.ownerHead > r.cur.Seq {
		l.Seqs = r.ownerHead - r.cur.Seq
	}
	since := r.caughtUpAt
	if since.IsZero() {
		// Never caught up since subscribed: stale since the subscription
		// began, or since the newest change held was committed (a copy
		// loaded from disk) if that is older.
		since = r.subscribed
		if t := time.Unix(0, r.cur.Time); r.cur.Time != 0 && t.Before(since) {
			since = t
		}
	}
	if l.Seqs > 0 || r.state != StateStreaming || r.caughtUpAt.IsZero() {
		l.Staleness = max(now.Sub(since), 0)
	}
	return l
}

// Status returns the replica's state, position, lag and counters.
func (r *Replica) Status() Status {
	r.mu.RLock()
	defer r.mu.RUnlock()
	st := Status{
		Service: r.opts.Service, Table: r.opts.Table, State: r.state,
		LogID: r.cur.LogID, Epoch: r.cur.Epoch, Seq: r.cur.Seq, OwnerHead: r.ownerHead,
		Lag: r.lagLocked(time.Now()), Stats: r.stats.snapshot(), LastErr: r.lastErr,
		Mode: r.modes.effective.Wire(), ModeConfigured: r.modes.settings.Mode.String(),
		ModeReason: r.modes.reason, ModeSwitches: r.modes.switches,
	}
	if r.res != nil {
		v := r.res.view.Load()
		st.Resident, st.ResidentRows, st.ResidentBytes, st.ResidentIndexed = true, v.rows.Len(), v.bytes, v.base != nil
	}
	return st
}

func (r *Replica) setState(s State, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.state = s
	if err != nil {
		r.lastErr = err
	}
}

// streaming marks the stream healthy: resumed or transferred, following
// the change stream. The error of an earlier stream is over. A replica that
// holds the owner's head as of the stream's start (or a frame since) is
// caught up now, not at the owner's first heartbeat, which may be a whole
// Heartbeat away: until then an idle replica would report the time since
// Subscribe (or since its last change) as staleness.
//
// count, when not nil, is the counter of what brought the stream back (a
// resume); it is counted under the same lock as the state changes, so a
// Status that shows the resume shows the replica streaming.
func (r *Replica) streaming(count *atomic.Uint64) {
	r.mu.Lock()
	r.streamingLocked()
	if count != nil {
		count.Add(1)
	}
	r.mu.Unlock()
	r.c.kickBroker()
}

// streamingLocked is streaming's state change; r.mu is held.
func (r *Replica) streamingLocked() {
	r.state = StateStreaming
	r.lastErr = nil
	if r.cur.Seq >= r.ownerHead {
		r.caughtUpAt = time.Now()
	}
}
