package chaos

import (
	"time"

	"github.com/replmesh/replmesh/transport"
)

// The control protocol between the harness and a chaosnode process: one
// JSON object a line. The harness writes Requests to the node's stdin; the
// node writes to stdout first a Ready line, then one Response per Request
// (matched by ID; requests are served concurrently, so answers may come in
// any order). Logs go to stderr.

// Node roles (chaosnode -role).
const (
	RoleBroker   = "broker"
	RoleOwner    = "owner"
	RoleConsumer = "consumer"
	// RoleAttacker runs the attacks of the attacker fault once against
	// the live cluster, prints one AttackReport line and exits.
	RoleAttacker = "attacker"
)

// Attacks of the attacker fault (AttackResult.Name).
const (
	AttackRegisterHijack   = "register-hijack"     // Register the primary's instance with the attacker's address and certificate
	AttackSubscribeSpoof   = "subscribe-as-owner"  // Subscribe naming the owner's service, not the caller's
	AttackStandbySubscribe = "standby-subscribe"   // Subscribe as a standby with a consumer's identity
	AttackAckAboveHead     = "ack-above-head"      // ack 2^64-1 on a Subscribe stream
	AttackForgedGossip     = "forged-gossip"       // an unencrypted gossip packet: a fake primary at epoch 2^64-1
	AttackOversizedGossip  = "oversized-gossip"    // a 10-byte gossip packet claiming 2^32-1 records
	AttackStatus           = "status-as-service"   // broker Status with a service certificate
	AttackSetMode          = "set-mode-as-service" // broker SetMode with a service certificate
)

// AttackResult is what became of one attack. Refused: the peer refused
// it as it must (PermissionDenied, the stream ended as a protocol error);
// a packet attack (gossip) is only sent: the harness checks afterwards that
// nothing changed. Detail says what the peer answered.
type AttackResult struct {
	Name    string `json:"name"`
	Target  string `json:"target"`
	Refused bool   `json:"refused"`
	Sent    bool   `json:"sent,omitempty"` // a packet attack: sent, judged by the harness
	// Skipped: the attack could not be made (the target was away); it
	// neither succeeded nor was refused.
	Skipped bool   `json:"skipped,omitempty"`
	Detail  string `json:"detail"`
}

// AttackReport is the attacker's one line of output.
type AttackReport struct {
	Attacks []AttackResult `json:"attacks"`
}

// Request operations.
const (
	OpWrite   = "write"   // owner: Apply the Writes (one atomic commit group)
	OpStatus  = "status"  // all: NodeStatus
	OpDigest  = "digest"  // owner, consumer: the table's digest
	OpDump    = "dump"    // owner, consumer: every row
	OpRead    = "read"    // consumer: Read(Key) from the local replica
	OpHistory = "history" // owner (primary): the table's change log and epoch history
	OpLink    = "link"    // component: set the faults of the link to Link.Addr
	OpFrames  = "frames"  // consumer: set the frame fault of its Subscribe streams (Frames)
	OpQuit    = "quit"    // all: close cleanly and exit
	// OpRemoveBroker (broker): remove broker Name from the brokers' Raft
	// group for good, through the call replctl broker remove makes
	// (Broker.RaftRemove), made in the broker's process.
	OpRemoveBroker = "remove-broker"

	// OpRestore (owner, primary): restore the table from the most
	// advanced of Restore.Candidates (Component.Restore); the answer's
	// Restore says what it restored. The owner-disk-loss fault's.
	OpRestore = "restore"
)

// Write outcomes (Response.Class).
const (
	// ClassOK: the write was acknowledged (Seq is its last seq).
	ClassOK = "ok"
	// ClassFailed: the write was refused before anything was written
	// (not the primary, too few standbys).
	ClassFailed = "failed"
	// ClassUnknown: the write may or may not have been committed
	// (committed on the primary but not confirmed by a standby, timed out,
	// the node went away).
	ClassUnknown = "unknown"
)

// Ready is the first line a node prints.
type Ready struct {
	Ready bool   `json:"ready"`
	Role  string `json:"role"`
	Name  string `json:"name"`
	Pid   int    `json:"pid"`
	Addr  string `json:"addr,omitempty"` // component replication or broker gRPC address
}

// Request is one command to a node.
type Request struct {
	ID     uint64      `json:"id"`
	Op     string      `json:"op"`
	Writes []WriteOp   `json:"writes,omitempty"`
	Key    string      `json:"key,omitempty"`
	Link   *LinkFault  `json:"link,omitempty"`
	Frames *FrameFault `json:"frames,omitempty"`
	Name   string      `json:"name,omitempty"` // OpRemoveBroker: the broker to remove
	// OpRestore: the replicas to choose the source from.
	Restore []transport.RestoreSource `json:"restore,omitempty"`
}

// WriteOp is one write of an OpWrite.
type WriteOp struct {
	Key    string `json:"k"`
	Value  []byte `json:"v,omitempty"`
	Delete bool   `json:"d,omitempty"`
}

// LinkFault is the state of a node's outgoing link to one address. Every
// gRPC connection a chaosnode makes goes through a proxy of its own per
// destination address (see chaosnode), so these faults hit exactly the
// traffic between the node and that destination, in both directions.
type LinkFault struct {
	Addr   string        `json:"addr"`
	Paused bool          `json:"paused,omitempty"` // blackhole: nothing goes through, connections stay open
	Cut    bool          `json:"cut,omitempty"`    // reset every open connection now (not a state)
	Delay  time.Duration `json:"delay,omitempty"`  // one-way latency
	Rate   int64         `json:"rate,omitempty"`   // bytes per second per direction; 0: unlimited
}

// FrameFault is the state of a consumer's frame fault. Every frame an
// owner sends on the consumer's Subscribe streams goes through a gRPC
// client interceptor in the consumer process (see chaosnode), above
// HTTP/2: with probability Dup the replica receives the frame twice in a
// row, with probability Swap it receives the frame and the next one in
// reverse order. Every frame but the opening Start may be touched, a full
// transfer's included. Zero is off.
type FrameFault struct {
	Dup  float64 `json:"dup,omitempty"`
	Swap float64 `json:"swap,omitempty"`
}

// FrameStatus is a consumer's frame fault and what it did since the
// process started.
type FrameStatus struct {
	FrameFault
	Frames     uint64 `json:"frames"`     // frames received from owners
	Duplicated uint64 `json:"duplicated"` // frames delivered twice
	Swapped    uint64 `json:"swapped"`    // pairs of consecutive frames delivered in reverse order
	// SwappedChanges counts the swaps of two frames that both carried
	// changes: the replica must see each one as a gap.
	SwappedChanges uint64 `json:"swapped_changes"`
}

// Response answers one Request.
type Response struct {
	ID  uint64 `json:"id"`
	Err string `json:"err,omitempty"`

	// OpWrite
	Class string `json:"class,omitempty"`
	Seq   uint64 `json:"seq,omitempty"`
	Epoch uint64 `json:"epoch,omitempty"` // the writer's role epoch when the write returned
	// CommitEpoch is the epoch an acknowledged write committed at: the
	// writer was primary at that epoch from before the write was
	// submitted until it was acknowledged (0: its role moved meanwhile).
	CommitEpoch uint64 `json:"commit_epoch,omitempty"`

	Status  *NodeStatus `json:"status,omitempty"`
	Restore *Restored   `json:"restored,omitempty"`
	Digest  *Digest     `json:"digest,omitempty"`
	Rows    []Row       `json:"rows,omitempty"`
	History *History    `json:"history,omitempty"`

	// OpRead
	Value []byte `json:"value,omitempty"`
	Found bool   `json:"found,omitempty"`
	Ready bool   `json:"ready,omitempty"`
	State string `json:"state,omitempty"`
}

// Restored answers OpRestore: the replica the owner's table was restored
// from, the history it held (log id, the epoch of its newest change, its
// seq: the owner's head), the epoch the owner writes at from Seq+1, and
// every candidate's position.
type Restored struct {
	Source    transport.RestoreSource     `json:"source"`
	LogID     string                      `json:"log_id"`
	Epoch     uint64                      `json:"epoch"`
	Seq       uint64                      `json:"seq"`
	NewEpoch  uint64                      `json:"new_epoch"`
	Rows      uint64                      `json:"rows"`
	Positions []transport.ReplicaPosition `json:"positions"`
}

// NodeStatus is a node's state.
type NodeStatus struct {
	Role string `json:"role"`
	// Owner instances.
	OwnerRole string `json:"owner_role,omitempty"` // primary, standby or ""
	Epoch     uint64 `json:"epoch,omitempty"`
	Head      uint64 `json:"head,omitempty"`
	LogID     string `json:"log_id,omitempty"`
	// Consumers.
	Replica *ReplicaStatus `json:"replica,omitempty"`
	Frames  *FrameStatus   `json:"frames,omitempty"`
	// Components: their outgoing links.
	Links []LinkStatus `json:"links,omitempty"`
	// Brokers: the owner service's primary and epoch in this broker's
	// registry, and the live brokers it sees.
	Primary      string `json:"primary,omitempty"`
	PrimaryEpoch uint64 `json:"primary_epoch,omitempty"`
	PrimaryAddr  string `json:"primary_addr,omitempty"`
	Members      int    `json:"members,omitempty"`
	// Brokers: the broker holding each owner instance's session, as this
	// broker's registry has it (instance name -> broker name).
	Sessions map[string]string `json:"sessions,omitempty"`
	// Brokers: the Raft group as this broker sees it (transport.RaftStatus).
	Raft *RaftView `json:"raft,omitempty"`
	// Brokers: the Registers it refused because another live session held
	// the instance name (transport.RefusedRegister).
	Refused []transport.RefusedRegister `json:"refused,omitempty"`
}

// RaftView is a broker's view of the brokers' Raft group.
type RaftView struct {
	ID     uint64 `json:"id"`
	State  string `json:"state"`
	Term   uint64 `json:"term"`
	Leader string `json:"leader"` // the leader's name ("" none known)
	// Voters are "name/id-in-hex", in the order the broker lists them.
	Voters []string `json:"voters"`
	// ConfirmedMs is the age of the broker's newest quorum confirmation
	// (-1: none).
	ConfirmedMs int64 `json:"confirmed_ms"`
}

// ReplicaStatus is a consumer's replica.Status, flattened.
type ReplicaStatus struct {
	State         string `json:"state"`
	Ready         bool   `json:"ready"`
	LogID         string `json:"log_id"`
	Epoch         uint64 `json:"epoch"`
	Seq           uint64 `json:"seq"`
	OwnerHead     uint64 `json:"owner_head"`
	LastErr       string `json:"last_err,omitempty"`
	FullTransfers uint64 `json:"full_transfers"`
	Resumes       uint64 `json:"resumes"`
	Reconnects    uint64 `json:"reconnects"`
	Applied       uint64 `json:"applied"`
	Duplicates    uint64 `json:"duplicates"`
	Truncations   uint64 `json:"truncations"`
	// Reads is the number of reads the node's reader made; ReadViolations
	// lists what it saw that a consistent replica never shows (capped).
	Reads          uint64   `json:"reads"`
	ReadViolations []string `json:"read_violations,omitempty"`
}

// LinkStatus is one outgoing link of a node.
type LinkStatus struct {
	LinkFault
	Proxy string `json:"proxy"`
	Up    int64  `json:"up"`   // bytes delivered to the destination
	Down  int64  `json:"down"` // bytes delivered back
}

// Digest is a table digest (transport.DigestResponse).
type Digest struct {
	LogID string `json:"log_id"`
	Seq   uint64 `json:"seq"`
	Rows  uint64 `json:"rows"`
	Hash  []byte `json:"hash"`
}

// Equal reports whether two digests describe the same table at the same seq.
func (d Digest) Equal(o Digest) bool {
	return d.LogID == o.LogID && d.Seq == o.Seq && d.Rows == o.Rows && string(d.Hash) == string(o.Hash)
}

// Row is one row of a dump.
type Row struct {
	Key   string `json:"k"`
	Value []byte `json:"v"`
}

// History is an owner's change log as its Subscribe stream serves it.
type History struct {
	LogID  string                 `json:"log_id"`
	Epochs transport.EpochHistory `json:"epochs"`
	First  uint64                 `json:"first"` // the first seq in Changes
	Head   uint64                 `json:"head"`
	// Complete: Changes start at seq 1 (the log was never trimmed or
	// replaced by a transfer on this instance).
	Complete bool            `json:"complete"`
	Changes  []HistoryChange `json:"changes"`
}

// HistoryChange is one change of a History.
type HistoryChange struct {
	Seq    uint64 `json:"s"`
	Epoch  uint64 `json:"e"`
	Delete bool   `json:"d,omitempty"`
	Key    string `json:"k"`
	Value  []byte `json:"v,omitempty"`
	TxnEnd bool   `json:"t,omitempty"`
}

// Apply-log records, one a line, written by a consumer for every event of
// its replica (see chaosnode): the harness checks seq order from them.
//
//	S <seq> <epoch>                       the process started; its durable cursor
//	C <seq> <epoch> <txnend 0|1> <p|d> <key>  one applied change
//	E <seq> <unix ns>                     the end of one OnChange event, and when it was logged
//	R <seq> <epoch>                       a full transfer replaced the replica at seq
//	T <seq> <rows>                        a read made while a full transfer ran (it saw the old copy)
//	V <text>                              a read saw what a consistent replica never shows
//	W                                     the harness wiped the data dir (a fresh replica follows)
const (
	RecStart        = "S"
	RecChange       = "C"
	RecEnd          = "E"
	RecReset        = "R"
	RecTransferRead = "T"
	RecViolation    = "V"
	RecWipe         = "W"
)

// Grant-log records, one a line (chaosnode -grantlog; see grants.go):
//
//	S <unix ns> <pid>                                  an owner process started (before it registers)
//	P <unix ns> <role|-> <epoch> <addr>                an owner saw its role or epoch change
//	L <call ns> <return ns> <confirmed ms> <raft state> <epoch> <instance|-> <addr|->
//	                                                   a broker read the service's primary in its registry
const (
	RecGrantStart = "S"
	RecGrantRole  = "P"
	RecGrantRead  = "L"
)

// Well-known keys of the workload: both sentinels are written in the
// table's first commit group and never changed, so a read that sees rows
// but not both saw a copy cut short; the rows of a group (GroupPrefix +
// "<writer>/<n>/<i>", i < GroupSize) are written by one Apply.
const (
	FirstKey    = "!first"
	LastKey     = "~last"
	GroupPrefix = "g/"
	GroupSize   = 3
)
