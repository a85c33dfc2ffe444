// Package integration holds the tests that need the broker and the
// replication component together (the two packages never import each
// other, so their meeting is tested here): registration and discovery
// through a broker cluster, following owners that move, serving while all
// brokers are down, and standby failover.
package integration
