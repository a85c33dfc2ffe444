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
// their service. Exactly one broker decides: the live memberlist member with
// the smallest name (every broker computes the same from membership), once
// it has exchanged the registry with the cluster. It grants the primary to
// the first connected owner instance of a service that has none (epoch 1).
// When the primary's lease lapses it promotes the connected standby whose
// tables' heads have the greatest sum (ties: the smaller instance name) and
// bumps the epoch. A primary whose lease lapses with no standby keeps the
// lease until another owner instance connects (which is then granted it with
// the next epoch) or it comes back itself (same epoch). An instance that
// comes back after it was replaced is a standby: roles are derived from the
// owner record, which names one instance per epoch.
//
// # Convergence
//
// Every broker holds the whole registry. Changes are spread by memberlist
// broadcasts; because UDP gossip may miss a member, every change that
// matters to a topology or a decision is also sent to each live member over
// TCP (as are records too large for a packet and bursts), while the frequent
// head and position refreshes rely on gossip alone. memberlist's periodic
// push/pull state exchange repairs whatever was missed. Merges
// keep the greater record under a total order (see registry.go), so every
// broker ends with the same registry whatever the order of delivery:
// instance records by (session start, session broker, write clock, writer);
// owner records by epoch, then the smaller primary name; overrides by write
// clock. The broker holding a session is the authority on its instance's
// record: if a merge marks it disconnected or removed while the session is
// open, the broker writes it again; if a newer session for the same instance
// appears elsewhere, the older session is ended with ErrSuperseded.
//
// # Partitions
//
// Brokers do not run a consensus protocol, but a broker decides leases and
// promotions, and confirms a primary's lease, only while it hears a
// majority of the brokers it has ever known (departed ones count until they
// come back): every broker gossips a beat every tenth of a lease, and a
// member counts if its beat arrived within a quarter of one. A broker cut
// off with a minority therefore stops confirming within a quarter of a
// lease and promotes nobody; the primary whose session it holds stops
// acknowledging writes (min_sync_standbys) half a lease after its last
// confirmation, while the majority side promotes a standby only a whole
// lease after it lost that broker. (memberlist's own failure detector is
// not used for this: a minority member has nobody to confirm its
// suspicions and declares its peers dead seconds after the majority has
// declared it dead.) When the partition heals the owner records merge to
// the greater one (higher epoch; at equal epochs, the smaller instance
// name). Losing half of the brokers or more stops grants and promotions
// until they return.
package broker
