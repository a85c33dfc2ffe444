package broker

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the broker's Prometheus metrics, in a registry of its own
// (see Broker.Metrics).
type metrics struct {
	reg        *prometheus.Registry
	pushes     prometheus.Counter
	promotions prometheus.Counter
	grants     prometheus.Counter
	removals   prometheus.Counter
	gossipIn   prometheus.Counter
	gossipOut  prometheus.Counter

	denials           *prometheus.CounterVec // by call
	limited           *prometheus.CounterVec // by limit
	headsCapped       prometheus.Counter
	tombstonesDropped prometheus.Counter
	leaderChanges     prometheus.Counter
}

func newMetrics(b *Broker) *metrics {
	const ns, sub = "replmesh", "broker"
	m := &metrics{reg: prometheus.NewRegistry()}
	counter := func(name, help string) prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help})
		m.reg.MustRegister(c)
		return c
	}
	gauge := func(name, help string, f func() int) {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help},
			func() float64 {
				b.mu.Lock()
				defer b.mu.Unlock()
				return float64(f())
			}))
	}
	m.pushes = counter("topology_pushes_total", "Topologies sent to components (first answers and changes).")
	m.promotions = counter("promotions_total", "Standbys promoted to primary by this broker after a primary's lease lapsed.")
	m.grants = counter("primary_grants_total", "Primary leases granted by this broker to services that had none.")
	m.removals = counter("instance_removals_total", "Instances removed by this broker because their lease lapsed.")
	m.gossipIn = counter("gossip_received_total", "Registry messages received from other brokers.")
	m.gossipOut = counter("gossip_sent_total", "Registry records queued for gossip.")
	m.denials = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "authz_denials_total",
		Help: "Calls refused because the caller's identity may not make them (register, subscribe, lookup, status, setmode)."}, []string{"call"})
	m.limited = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "limit_refusals_total",
		Help: "Registrations and reports refused, and tombstones forgotten early, by the limit hit (registrations, instances, tables, subscriptions, tombstones, pending_sessions, identity_sessions)."}, []string{"limit"})
	m.reg.MustRegister(m.denials, m.limited)
	m.headsCapped = counter("standby_heads_capped_total", "Table heads reported by standbys far above the primary's, lowered to Config.MaxHeadLead above it.")
	m.tombstonesDropped = counter("tombstones_dropped_total", "Tombstones forgotten before Config.TombstoneTTL because more than Config.MaxTombstones were kept.")
	gauge("tombstones", "Removed instances remembered (tombstones).", func() int { return len(b.goneAt) })
	gauge("sessions_open", "Component sessions open on this broker.", func() int { return len(b.sessions) })
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "sessions_pending",
		Help: "Sessions in their handshake (Register being read and answered); at most Config.MaxPendingSessions."},
		func() float64 { return float64(b.shared.pending(b)) }))
	gauge("instances", "Instances in the registry (present, not removed).", func() int {
		n := 0
		for _, r := range b.reg.instances {
			if !r.Gone {
				n++
			}
		}
		return n
	})
	gauge("services", "Services in the registry.", func() int { return len(b.reg.bySvc) })
	gauge("members", "Live brokers in the cluster as this broker sees it.", func() int { return len(b.live) })
	m.leaderChanges = counter("raft_leader_elected_total", "Times this broker became the raft leader (the broker that decides leases and primaries).")
	gauge("leader", "1 if this broker is the raft leader: it decides leases and primaries.", func() int {
		if b.raft != nil && b.raft.isLeader() {
			return 1
		}
		return 0
	})
	return m
}

// Metrics returns the broker's Prometheus registry (not the global one),
// for serving on /metrics; an embedder may register more collectors in it.
func (b *Broker) Metrics() *prometheus.Registry { return b.metrics.reg }
