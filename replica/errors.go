package replica

import (
	"errors"
	"fmt"

	"github.com/replmesh/replmesh/transport"
)

// Errors returned by the component. Errors that can also come back from a
// peer (ErrUnknownTable, ErrTooLarge, ...) are the transport sentinels, so
// errors.Is works the same for local and remote failures.
var (
	// ErrClosed is returned by every call on a closed component.
	ErrClosed = errors.New("replica: component closed")
	// ErrUnknownTable: the table is not declared (owner) or not subscribed.
	ErrUnknownTable = transport.ErrUnknownTable
	// ErrTooLarge: a key, value or Apply is over its limit.
	ErrTooLarge = transport.ErrTooLarge
	// ErrInvalid: a bad argument (empty key, bad table name, bad config).
	ErrInvalid = errors.New("replica: invalid argument")
	// ErrExists: the table is already declared or subscribed.
	ErrExists = errors.New("replica: already exists")
	// ErrReadOnly: a write through a typed view of a replica.
	ErrReadOnly = errors.New("replica: read-only replica")
	// ErrDiverged: the owner's history no longer contains the replica's
	// (see DivergedError); the replica keeps serving and waits.
	ErrDiverged = errors.New("replica: owner history diverged")
	// ErrStaleEpoch: a change or owner from an older epoch was refused.
	ErrStaleEpoch = errors.New("replica: stale epoch")
	// ErrNotReplicated: Config.MinSyncStandbys standbys did not confirm a
	// write (either none was written: too few standbys connected; or it is
	// committed on the primary but unconfirmed when SyncTimeout ran out).
	ErrNotReplicated = errors.New("replica: not confirmed by enough standbys")
	// ErrNoLease: with Config.MinSyncStandbys, the primary's lease is not
	// confirmed by a broker (none answered for half the broker's lease), so
	// it does not acknowledge writes: another standby may be promoted.
	ErrNoLease = errors.New("replica: primary lease not confirmed by a broker")
	// ErrGap: a received batch did not continue the replica's seq.
	ErrGap = errors.New("replica: seq gap")
	// ErrRestoring: the owned table is being restored (Component.Restore):
	// its writes, reads and subscriptions are refused until the restore
	// completes or fails. A peer gets it as transport.ErrUnavailable.
	ErrRestoring = errors.New("replica: table is being restored")
)

// DivergedError says how the owner's history disagrees with the replica's.
// It wraps ErrDiverged.
type DivergedError struct {
	Table        string
	ReplicaLogID string
	ReplicaSeq   uint64
	OwnerLogID   string
	OwnerHead    uint64
}

func (e *DivergedError) Error() string {
	return fmt.Sprintf("replica %s: owner history diverged: replica has log %s up to seq %d, owner has log %s with head %d; "+
		"serving the existing replica until the owner is restored or AcceptNewHistory is called",
		e.Table, e.ReplicaLogID, e.ReplicaSeq, e.OwnerLogID, e.OwnerHead)
}

// Unwrap returns ErrDiverged.
func (e *DivergedError) Unwrap() error { return ErrDiverged }
