// Package chaos is replmesh's fault-injection suite. It runs real
// processes, breaks them, and checks every guarantee of docs/design.md
// ("Guarantees") against a recorded history of writes.
//
// # Running it
//
//	go test ./chaos                          # one small smoke scenario (part of make test)
//	make chaos-short                         # a seeded subset, about two minutes (CI)
//	make chaos                               # everything, with the real-network level as root
//	REPLMESH_CHAOS=short go test ./chaos     # what make chaos-short runs
//	REPLMESH_CHAOS=full REPLMESH_CHAOS_NETNS=1 REPLMESH_CHAOS_REPORT=report.txt go test -timeout 30m ./chaos
//
// REPLMESH_CHAOS_SEED sets the base seed (each scenario's seed is derived
// from it and printed in the report), REPLMESH_CHAOS_ONLY runs only the
// scenarios whose name contains it, REPLMESH_CHAOS_KEEP keeps every run's
// directory (logs and apply logs; a failed run's is always kept), and
// REPLMESH_CHAOS_STRICT=1 makes the known issues listed in the report fail
// their scenario. REPLMESH_CHAOS_TLS=0 runs every process in plaintext
// (see Security below; the default is mTLS).
//
// # Security
//
// Every process runs as in production, with the security on (security.go):
// each run makes a development CA (transport.DevCA) in its directory and a
// certificate per node, and every link is mTLS with identities: brokers
// (spiffe://TD/replmesh-broker/bN) require the callers' identities, read
// the access policy (products may read stores/items) and encrypt their
// gossip with a key of the run; owners (.../replmesh/stores/oN) authorize
// every caller by its certificate with the same policy; consumers are
// .../replmesh/products/cN. The fault proxies are TCP proxies: TLS runs
// through them end to end. REPLMESH_CHAOS_TLS=0 runs plaintext (with the
// insecure flags at the real-network level), the report says which.
//
// # Processes
//
// The tests build cmd/chaosnode with go build and start one process per
// node: brokers (broker.New), owner instances of service "stores" (table
// "items", sync durability, min_sync_standbys 1; the broker makes one
// primary, the others standbys) and consumers that follow the table
// through the brokers. The harness talks to each process over its
// stdin/stdout (Request, Response): writes, status, digest, dump, reads,
// the primary's change log (History), link and frame faults. It SIGKILLs
// and restarts them at will; nodes keep their addresses and data
// directories across restarts.
//
// # Faults
//
// Portable level (everywhere, including go test): every gRPC connection a
// node makes goes through a fault proxy of its own per destination
// (internal/faultproxy), so the harness can blackhole (pause), reset, delay
// and bandwidth-limit the traffic between any two processes that talk:
// component and broker, consumer and owner, standby and primary. Faults:
// SIGKILL and restart of the primary, a standby, a consumer, a broker;
// SIGKILL in the middle of a full transfer (of a wiped consumer, of a
// wiped standby, and of the primary sending one); partitions between two
// processes, the primary isolated from everyone, the primary cut from every
// broker long enough for a promotion while a standby hears of it late;
// connection resets; a slow link (delay and bandwidth) for a consumer; a
// consumer's disk filled and freed (a size-capped tmpfs, root only);
// duplicated and reordered frames on a consumer's stream (below); an
// attacker (attacker.go): a hostile process with a consumer's certificate
// (products/mallory) tries, against the live cluster, a Register hijack of
// the primary's instance, a Subscribe naming the owner's service, a standby
// Subscribe, an ack of 2^64-1, Status and SetMode on every broker, and on
// every broker's gossip port an unencrypted forged packet (a fake primary
// at epoch 2^64-1) and a 10-byte packet claiming 2^32-1 records; each must
// be refused and change nothing (every broker still runs and names a real
// owner, at its address, as primary), the report counts the attacks
// refused, and one that succeeded fails the scenario; the owner losing
// its disk with no standby running (owner-disk-loss, restore.go: the
// consumers fall behind, the standbys are killed, the primary's data dir
// is wiped and it restarts empty), restored by the harness from the most
// advanced consumer (whose listener serves the restore): the acknowledged
// writes that replica held are checked as any other, those it never
// received are counted in the report as lost by the fault, not violations.
//
// The brokers' agreement (brokerfaults.go, dupinstance.go; scenarios
// "raft", "netns-raft" and "netns-raft-pause"): leader-sigstop SIGSTOPs the raft leader (from
// the brokers' Status) for 1.5 to 3 leases while the primary is
// SIGKILLed: a new leader must promote a standby, and the paused broker,
// once woken, must log no registry read with a confirmation fresh enough
// to confirm a lease (under a quarter of a lease) that names an older
// epoch. When exactly one standby's session is on the leader, half the
// time the other standbys are first cut from the primary until it is 20
// changes ahead of them: the standby on the paused leader alone holds the
// newest acknowledged writes, and promoting another (the standbys the new
// leader hears) would lose them. The report notes each firing's standbys
// (head, session's broker) and how often a standby behind another was
// promoted. broker-oneway drops every packet from one broker to another
// (the raft leader at one end), that way only, TCP and UDP, half the time
// with the primary killed meanwhile (a standby must be promoted while
// the partition holds; if none is, that is reported as a known issue and
// the promotion must follow the heal): real-network level only, as a TCP
// proxy cannot drop one direction of UDP gossip nor of a TCP connection.
// broker-wipe SIGKILLs a broker, wipes its data dir and restarts it: it
// must rejoin as a new member and its old raft id must not stay a voter;
// then a primary kill shows the cluster still decides. broker-churn
// removes a running broker through Broker.RaftRemove (what replctl broker
// remove calls), checks that the others decide alone (a promotion), and
// adds it back as a new member (empty data dir, -join). dup-instance
// starts a second process with the name and certificate of a live owner
// instance (primary or standby), in memory, at another address: every
// broker must refuse it naming the holder's address, it must never hold a
// role, the holder keeps its role and epoch, no consumer turns diverged.
//
// Real-network level (REPLMESH_CHAOS_NETNS=1, root, ip and nft): every
// node runs in a network namespace of its own, joined by veth pairs to a
// bridge in a hub namespace, with addresses 10.77.0.x that exist only in
// those namespaces; partitions are nftables drop rules inside them, which
// also split the brokers' memberlist gossip (UDP), out of reach of a TCP
// proxy. Latency and bandwidth still come from the proxies. The namespaces
// are deleted after each scenario, on failure, on SIGINT/SIGTERM, and (if a
// run was killed) by the next run.
//
// Duplicated and reordered frames (dup-reorder-frames) are injected at
// the gRPC message level, inside the consumer process: TCP and HTTP/2
// never deliver bytes twice or out of order (a proxy that duplicated or
// reordered bytes would only break HTTP/2 framing, and nothing would
// reach the replica). Every consumer gives its replica a gRPC client
// stream interceptor (transport.Options.DialOptions) that sits above
// HTTP/2, under the replica's code, on its Subscribe streams; while the
// harness switches it on (OpFrames), for a few seconds on one consumer
// as the workload runs, the replica receives some of the owner's frames
// twice in a row and some pairs of consecutive frames in reverse order,
// exactly as a misbehaving owner would send them. The frames of a
// running stream (changes, heartbeats, deltas) and of a full transfer
// are touched, not the opening: a transfer's end frame carries the number
// of rows sent, so a copy missing a rows frame (moved behind the end
// frame) or holding one twice is refused and transferred again; the
// fault ends with a consumer wiped and re-transferred under it. The
// replica must skip every duplicate
// (its change seqs are at or below its cursor) and see every swap of two
// changes frames as a gap (drop the stream, resume from its seq): the
// fault counts what it injected (FrameStatus) and the gaps the replica
// logged, and the apply-log checks below prove nothing was applied twice
// or out of order. The frame-level unit tests (replica/badinput_test.go,
// replica/apply_property_test.go) cover the same handling in isolation.
//
// # Checks
//
// The workload (workload.go) writes unique keys, keys overwritten one
// version at a time, atomic groups of rows, and bulk rows, and records
// each write as invoked, then ok (with its seq and the primary's epoch),
// failed (nothing was written) or unknown. After the faults the harness
// heals everything and checks (verify.go):
//
//   - progress: a write is acknowledged within 30 s of the last fault;
//   - convergence: every consumer's and standby's Digest equals the
//     primary's (the time from the heal is reported);
//   - every acknowledged write is in the primary's rows and every
//     consumer's, and in the primary's change log at the seq it was
//     acknowledged with; no failed write is; every group is all or
//     nothing; every row comes from a write; overwritten keys hold a
//     version no older than the last acknowledged one;
//   - per consumer (its apply log): applied seqs go up by exactly one, with
//     no gap and no duplicate, epochs never go down, every applied batch
//     ends on a commit group's end, and every applied change has the epoch
//     (and key) the final history has at its seq: no change of a stale
//     epoch was accepted;
//   - the consumers read their replica all the time and check each read:
//     nothing before Ready, never a copy cut short, never part of a group,
//     during a full transfer the old copy at the cursor's seq, never a step
//     back without a transfer;
//   - the primary's own log: contiguous, epochs as its epoch history says,
//     each unique key once, and replaying it gives its rows;
//   - one instance per epoch: every acknowledgement carries the epoch the
//     write committed at (the writer was primary at it from submit to
//     acknowledgement), and no two instances acknowledged at one epoch;
//   - the grant history is linearizable (grants.go, checked with
//     github.com/anishathalye/porcupine against one register per service):
//     owners log the grants they observe, brokers log their registry's
//     primary every 20 ms with the age of their newest quorum confirmation;
//     a confirmed read enters the history with its call moved back to the
//     confirmation, unconfirmed ones are left out; the same reads taken at
//     face value (what Lookup serves) are checked too and only reported.
//
// The report (report.go) gives, per scenario and in total: the seed, the
// writes invoked/ok/failed/unknown, the changes and reads checked, the
// lost/duplicated/out-of-order/stale-epoch counts (all must be 0),
// convergence and per-fault catch-up times (max, p99), resyncs (full
// transfers), promotions, and how often each fault fired.
package chaos
