// Package benchkit holds the pieces the two benchmark commands share:
// cmd/replbench (replmesh against its targets) and bench/peers (replmesh
// beside NATS and Redis, a module of its own). Both measure the machine's
// loopback TCP ceiling the same way, open their components with the same
// production configuration, format figures with the same scales and read
// the same /proc fields; what a figure means and how a table is laid out
// stays with each command.
//
// It is a library of the top layer: it may use replica (and so badger),
// and the commands of the top may import it, though it is no tree of
// theirs (internal/depcheck lists it as shared).
package benchkit
