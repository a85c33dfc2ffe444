package replica

import (
	"fmt"

	"github.com/replmesh/replmesh/transport"
)

// startAction is what a stream does after the owner's Start frame.
type startAction int

const (
	// startResume: continue from the replica's cursor; changes follow.
	startResume startAction = iota
	// startTransfer: take a full state transfer (a first copy, a replica
	// behind the owner's log, a new history the replica may take).
	startTransfer
	// startTruncate: a full transfer that replaces changes the replica holds
	// but the owner's history does not (written by a deposed primary, or
	// lost by an owner that restarted).
	startTruncate
	// startDiverged: the owner's history is shorter than the replica's; keep
	// the replica, serve it and wait (until the owner is restored or
	// AcceptNewHistory is called).
	startDiverged
	// startRefused: end the stream with startDecision.Err.
	startRefused
)

func (a startAction) String() string {
	return [...]string{"resume", "transfer", "truncate", "diverged", "refused"}[a]
}

// startInput is what the start decision looks at.
type startInput struct {
	// Cursor is the replica's position (LogID, Epoch and Seq are used; an
	// empty LogID: the replica holds no copy yet).
	Cursor cursor
	// Accept: take whatever history the owner has (AcceptNewHistory was
	// called, or the replica is a standby's follower).
	Accept bool
	// Start is the owner's Start frame.
	Start *transport.Start
	// MinEpoch is the epoch of the primary the broker names (0: no broker,
	// an address from the options). Owner is that owner's address, named in
	// the error that refuses a deposed one.
	MinEpoch uint64
	Owner    string
}

// startDecision is the start decision's answer.
type startDecision struct {
	Action startAction
	// EpochEnd is, for startTruncate, the first seq after the replica's
	// epoch in the owner's history: the replica's changes from there on are
	// not part of it.
	EpochEnd uint64
	// Err is, for startRefused, why the stream ends: ErrStaleEpoch (a
	// deposed owner, or one behind the replica's epoch) or
	// transport.ErrBadRequest (a resume of another history).
	Err error
}

// decideStart decides how a stream goes on after the owner's Start frame.
// It is pure: no clock, no I/O, no state; the caller acts on the answer
// (counts and logs a truncation, marks a divergence, runs the transfer).
//
// In order, the first rule that applies decides:
//
//   - an owner below MinEpoch was deposed: refused (ErrStaleEpoch);
//   - a replica that holds a copy (Cursor.LogID set) and does not Accept:
//     an owner below the replica's epoch is refused (ErrStaleEpoch); when
//     the owner does not offer a resume, then
//     – another history (another log id) shorter than the replica
//     (Start.HeadSeq < Cursor.Seq) has diverged, a longer one is
//     transferred;
//     – the same history in which the replica's epoch ended at or before
//     the replica's seq (Start.Epochs.End) is a truncate;
//     – otherwise the same history shorter than the replica has diverged,
//     a longer one is transferred (the replica is behind the log);
//   - an owner that offers a resume of another log id than the cursor's is
//     refused (transport.ErrBadRequest); one of the cursor's log id is a
//     resume;
//   - anything else is a transfer.
//
// An accepting replica thus never diverges and never refuses an owner
// behind its epoch; it takes a resume when offered and a transfer
// otherwise.
func decideStart(in startInput) startDecision {
	cur, st := in.Cursor, in.Start
	if st.Epoch < in.MinEpoch {
		// The broker knows a newer primary: this one was deposed.
		return refused(fmt.Errorf("%w: owner at %s is at epoch %d, the broker's primary is at epoch %d", ErrStaleEpoch, in.Owner, st.Epoch, in.MinEpoch))
	}
	if cur.LogID != "" && !in.Accept {
		if st.Epoch < cur.Epoch {
			return refused(fmt.Errorf("%w: owner is at epoch %d, replica at %d", ErrStaleEpoch, st.Epoch, cur.Epoch))
		}
		if !st.Resume {
			if st.LogID == cur.LogID {
				if end := st.Epochs.End(cur.Epoch); cur.Seq >= end {
					return startDecision{Action: startTruncate, EpochEnd: end}
				}
			}
			// A new history, or the same one with the replica behind the
			// log: taken with a full transfer, unless it is shorter than
			// what the replica holds (the owner lost its data).
			if st.HeadSeq < cur.Seq {
				return startDecision{Action: startDiverged}
			}
			return startDecision{Action: startTransfer}
		}
	}
	if st.Resume {
		if st.LogID != cur.LogID {
			return refused(fmt.Errorf("%w: owner resumes log %s, replica has %s", transport.ErrBadRequest, st.LogID, cur.LogID))
		}
		return startDecision{Action: startResume}
	}
	return startDecision{Action: startTransfer}
}

func refused(err error) startDecision { return startDecision{Action: startRefused, Err: err} }

// resumable reports whether a consumer at (logID, seq, epoch) can continue
// from seq+1 in the table whose meta is m: same history, seq still in the
// log, not ahead of the head, and no change of its epoch beyond the point
// where that epoch ended here.
func resumable(m ownerMeta, logID string, seq, epoch uint64) bool {
	return logID == m.LogID &&
		seq <= m.Head &&
		seq+1 >= m.First &&
		epoch <= m.Epoch &&
		seq < m.Epochs.End(epoch)
}
