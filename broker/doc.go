// Package broker is the replmesh registry and discovery service: it tells
// components who owns which tables and where, grants the primary lease of
// each owner service, and is never on the data path. Brokers form a cluster
// with hashicorp/memberlist; the daemon is cmd/replbroker, and the package
// can be embedded in a service coordinator.
//
// # Usage
//
//	cfg := broker.DefaultConfig()          // or LocalConfig("b1") for tests
//	cfg.Name = "b1"
//	cfg.Join = []string{"10.0.0.2:7401"}   // gossip addresses of other brokers
//	b, err := broker.New(ctx, cfg)
//	if err != nil { ... }
//	defer b.Close()
//	fmt.Println(b.GRPCAddr(), b.GossipAddr())
//
// # Sessions
//
// A component opens one Session stream (transport.BrokerClient.Session) with
// any broker and sends a Register first: service, instance, replication
// address, whether it is an owner instance (a primary candidate) with the
// tables it holds, and its subscriptions. The broker answers with a
// transport.Topology: the ServiceOwner of every service it subscribes to and
// of its own service, the mode overrides of those services, its own role and
// epoch, and the gRPC addresses of the live brokers. It then pushes a new
// Topology each time that view changes (only then: heads and positions
// moving do not count, which is why the tables in a pushed Topology carry no
// Head) and sends heartbeats. Later SessionUpdate frames report table heads
// and subscription positions.
//
// A ServiceOwner names the primary for as long as that instance is
// registered, that is until its lease lapses, even while its session is
// momentarily gone (a component re-homing, a broker dying): consumers keep
// streaming from it peer to peer, so a broker hiccup never changes where
// they read. Primary.Instance is "" once the primary has been removed and no
// standby could take over.
//
// The stream is the liveness lease. When it ends (or the broker holding it
// dies), the instance stays registered for Config.Lease; a component that
// opens a session on any broker within the lease keeps its registration.
// After the lease the instance is removed on every broker and the change is
// pushed to every component that needs it. A stream that delivers no frame
// for half the lease (a blackholed link that TCP keeps open) is ended by the
// broker, so the lease starts running then.
//
// Every frame a component sends may carry a Ping (its own monotonic clock);
// the broker answers it at once and echoes the newest one on every frame as
// Pong, with its lease and, to the instance it holds primary, the epoch. The
// broker heard from the instance no earlier than the echoed ping, so it
// cannot promote another instance before ping + lease: a primary that
// acknowledges writes only until ping + lease/2 (replica, with
// min_sync_standbys) never acknowledges one its successor lacks.
//
// # Primary lease and promotion
//
// Instances that register with Owner=true are the primary candidates of
// their service. The brokers decide through Raft (go.etcd.io/raft/v3):
// only the raft leader decides, and a decision takes effect only once its
// log entry is committed by a majority and applied (fsm.go), on every
// broker in the same order. The leader grants the primary to the first
// connected owner instance of a service that has none (epoch 1). When the
// primary's lease lapses it promotes the connected standby whose tables'
// heads have the greatest sum (ties: the smaller instance name) and bumps
// the epoch, but only once it knows the heads of enough standbys that one
// of them holds every acknowledged write: with min_sync_standbys k, an
// acknowledged write is on k of the S standbys, not on a particular one,
// so S-k+1 heads are needed. Each owner instance reports its k in its
// Register (transport.Register.MinSyncStandbys), the broker keeps it in the
// instance's record and gossips it; the leader counts on the smallest k
// the service's owner instances report, removed ones included (the lapsed
// primary's k is the one its writes were acknowledged under), and waits
// for every standby not removed while any of them reports none (an older
// build). A standby's head is known while its
// session is connected on a broker the raft leader has heard for two
// UpdateIntervals (one back from a pause gossips the heads its sessions
// reported meanwhile within one); one whose broker is paused, cut off or
// dead is unknown, not absent (it may hold the newest writes): it is kept
// for Lease + Config.RehomeWait (its PeerTimeout, after which it re-homes
// to a live broker) and only then removed. The price: when a standby's
// broker is lost together with the primary, the promotion waits until that
// standby re-homes, up to about RehomeWait + Lease if it was lost for good
// (a disconnected standby on a live broker: up to a lease). A primary
// whose lease lapses with no standby keeps the lease until another owner
// instance connects (which is then granted it with the next epoch) or it
// comes back itself (same epoch). An instance that comes back after it was
// replaced is a standby: roles are derived from the decided owner record,
// which names one instance per epoch. The state machine refuses a grant
// that is not above every epoch it recorded for the service, so an epoch
// is granted exactly once, to one instance, ever. Mode overrides (SetMode)
// and the broker membership are decided the same way.
//
// Lease confirmations (PrimaryEpoch in pongs) come only from a broker whose
// newest ReadIndex round (the raft leader confirming with a quorum that it
// still leads) was asked under a quarter of a lease ago and is applied: a
// deposed, paused or cut-off broker stops confirming within a quarter of a
// lease, before a successor can promote anyone (see raft.go).
//
// # Soft state and convergence
//
// What the brokers observe — instance records: sessions, addresses, table
// heads, subscription positions — is soft state: every broker holds all of
// it, spread by memberlist broadcasts; because UDP gossip may miss a
// member, every change that matters to a topology or a decision is also
// sent to each live member over TCP (as are records too large for a packet
// and bursts), while the frequent head and position refreshes rely on
// gossip alone. memberlist's periodic push/pull state exchange repairs
// whatever was missed. Merges keep the greater record under a total order
// (see registry.go): instance records by (session start, session broker,
// write clock, writer). The broker holding a session is the authority on
// its instance's record: if a merge marks it disconnected or removed while
// the session is open, the broker writes it again.
//
// A Register for an instance that holds a live session (open on this
// broker, or connected on another broker) is refused with
// transport.ErrInstanceInUse, naming the holder's address, until that
// session ends: a second process started with a running instance's name
// never takes its place. When the holder's broker looks gone from the
// broker asked, only the instance's own address may register (re-homing
// within its lease); another process waits until the lease lapses, since
// "looks gone" may be a one-way partition. Status lists the refused
// attempts.
//
// # Running a cluster
//
// A single broker (no Join, any DataDir) is a one-broker cluster and just
// works. For a cluster run 3 or 5 brokers, each with its own DataDir:
//
//	replbroker -name b1 -data-dir /var/lib/rb -gossip 10.0.0.1:7401 -grpc 10.0.0.1:7400
//	replbroker -name b2 -data-dir /var/lib/rb -gossip 10.0.0.2:7401 -grpc 10.0.0.2:7400 -join 10.0.0.1:7401
//	replbroker -name b3 -data-dir /var/lib/rb -gossip 10.0.0.3:7401 -grpc 10.0.0.3:7400 -join 10.0.0.1:7401
//
// A broker with Join and an empty data dir asks the cluster (through the
// raft leader) to add it as a voter; a voter of the same name under another
// id (the broker lost its data dir) is removed first. A broker restarted
// with its data dir comes back as the member it was, with the decided
// state. `replctl broker remove NAME` removes a voter for good: it no
// longer counts toward the majority.
//
// A majority of the voters (2 of 3, 3 of 5) must be up and connected for
// anything to be decided. Losing a majority stops grants, promotions, mode
// overrides and membership changes, and lease confirmations, so primaries
// stop acknowledging writes (with min_sync_standbys) until a majority is
// back; sessions, topologies and the peer-to-peer streams go on. An
// in-memory broker (empty DataDir) forgets its raft log and votes when it
// stops, so it takes a new node id on every start and joins as a new
// member, like a broker whose data dir was wiped: it comes back only while
// a majority of the others is up. Use one alone or in tests.
package broker
