package replica

import "github.com/replmesh/replmesh/transport"

// sink is where a Replica's stream writes what the owner sends: the
// operations of one stream, in the replica's terms (cursors, rows,
// changes), with no storage type showing. Two implementations exist: the
// generation store of a consumer's replica (genStore, generations.go) and
// the owned copy of a standby's follower (ownedCopy, standby.go); an
// in-memory store would be a third.
//
// Every method is called from the replica's stream goroutine only (load
// before it starts), one at a time; switchIn is called with Replica.mu
// held.
type sink interface {
	// standby reports whether this is a standby's copy of its own
	// service's table: the stream says so in Open (its acks count for
	// MinSyncStandbys), and it always takes its primary's history.
	standby() bool
	// load returns the durable cursor (zero: no copy yet) and clears what
	// an interrupted transfer left behind.
	load() (cursor, error)
	// beginTransfer stages a fresh, empty copy for the full transfer whose
	// Start is st and snapshot-begin frame is begin; cur is the replica's
	// cursor. The generation store keeps the current copy readable until
	// switchIn; the owned copy is emptied and marked incomplete durably at
	// once (a standby serves no reads of it, and one that crashes
	// mid-transfer must not take over with half a table).
	beginTransfer(st *transport.Start, begin *transport.OwnerFrame, cur cursor) (stagedTransfer, error)
	// copies is how many entries each applied change writes (rows, log
	// entries), for the disk guard.
	copies() int
	// apply writes changes (whole commit groups, in seq order, continuing
	// the cursor) and next, the cursor after them, atomically.
	apply(next cursor, chs []transport.Change) error
}

// stagedTransfer is a full transfer being written into a sink.
type stagedTransfer interface {
	// put stages one row.
	put(key, value []byte) error
	// finish makes the staged rows durable, not yet live, and returns
	// next, the cursor of the finished copy, as the sink records it.
	finish(next cursor) (cursor, error)
	// switchIn makes the finished copy the replica's contents in place of
	// the one at old, atomically. Replica.mu is held: no reader may pick
	// the old copy once it is scheduled for deletion.
	switchIn(old, next cursor) error
	// abort drops what is staged and not finished; a no-op after finish.
	abort()
}
