// Package chaos is replmesh's fault-injection suite: it runs real
// processes (brokers, owner instances, consumers: the chaosnode binary),
// drives a write workload with a recorded history, injects faults, and
// checks every guarantee of the design.
package chaos
