package replica

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics returns a Prometheus collector for the component: register it in
// the service's registry (prometheus.MustRegister(c.Metrics())). Values are
// read when scraped, so the hot paths carry no metric cost.
//
// Owned tables: replmesh_table_head_seq, replmesh_table_log_first_seq,
// replmesh_table_epoch, replmesh_table_primary, and flow control's
// replmesh_table_flow_waits_total (writes that waited for a consumer),
// replmesh_table_flow_cut_loose_total (consumers cut loose) and
// replmesh_table_flow_held_streams (see FlowControl). Replicas (labels service,
// table): replmesh_replica_seq, replmesh_replica_owner_head_seq,
// replmesh_replica_lag_seqs, replmesh_replica_staleness_seconds,
// replmesh_replica_changes_applied_total, replmesh_replica_full_transfers_total,
// replmesh_replica_resumes_total, replmesh_replica_reconnects_total,
// replmesh_replica_pulls_total, replmesh_replica_snapshot_rows_total,
// replmesh_replica_snapshot_bytes_total, the running full transfer's
// replmesh_replica_transfer_rows, replmesh_replica_transfer_rows_expected,
// replmesh_replica_transfer_bytes and replmesh_replica_transfer_eta_seconds
// (all 0 while none runs; the rate is rate(snapshot_rows_total)),
// replmesh_replica_mode (1 for the mode the stream runs, label mode),
// replmesh_replica_mode_switches_total, replmesh_replica_diverged. With a
// data dir: replmesh_disk_free_bytes, replmesh_disk_reserve_bytes,
// replmesh_disk_full (1 while writes are refused for lack of space),
// replmesh_disk_refused_total. The owner's guard (see authz.go):
// replmesh_owner_denials_total (label call: subscribe, get, digest, keys),
// replmesh_owner_limit_refusals_total (label limit: caller_subscriptions,
// a stream refused by MaxCallerSubscriptions; conn_streams, a connection
// that reached MaxConcurrentStreams), replmesh_owner_protocol_errors_total
// (label error: ack_above_head).
func (c *Component) Metrics() prometheus.Collector {
	return &collector{c: c, d: newDescs(c.cfg.Service + "/" + c.cfg.Instance)}
}

type collector struct {
	c *Component
	d descs
}

type descs struct {
	tableHead, tableFirst, tableEpoch, tablePrimary                        *prometheus.Desc
	flowWaits, flowCutLoose, flowHeld                                      *prometheus.Desc
	seq, ownerHead, lag, stale, applied, transfers, resumes, reconn, pulls *prometheus.Desc
	snapRows, snapBytes, mode, switches, diverged                          *prometheus.Desc
	xferRows, xferExpected, xferBytes, xferETA                             *prometheus.Desc
	diskFree, diskReserve, diskFull, diskRefused                           *prometheus.Desc
	denials, limitRefusals, protocolErrors                                 *prometheus.Desc
}

// newDescs builds the descriptors with a const label naming the component
// ("service/instance"), so several components can share a registry.
func newDescs(component string) descs {
	tl, rl := []string{"table"}, []string{"service", "table"}
	cl := prometheus.Labels{"component": component}
	d := func(name, help string, labels []string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, cl)
	}
	return descs{
		tableHead:    d("replmesh_table_head_seq", "Seq of the newest change committed to an owned table.", tl),
		tableFirst:   d("replmesh_table_log_first_seq", "Oldest seq still in an owned table's change log.", tl),
		flowWaits:    d("replmesh_table_flow_waits_total", "Writes to an owned table that waited for a push consumer a flow window behind.", tl),
		flowCutLoose: d("replmesh_table_flow_cut_loose_total", "Push consumers of an owned table cut loose from flow control after holding a writer for the hold time.", tl),
		flowHeld:     d("replmesh_table_flow_held_streams", "Push streams of an owned table that writes wait for (keeping up).", tl),
		tableEpoch:   d("replmesh_table_epoch", "Owner epoch of an owned table.", tl),
		tablePrimary: d("replmesh_table_primary", "1 when this instance takes writes for the table.", tl),
		seq:          d("replmesh_replica_seq", "Seq the replica holds.", rl),
		ownerHead:    d("replmesh_replica_owner_head_seq", "Owner's head seq as last heard.", rl),
		lag:          d("replmesh_replica_lag_seqs", "Owner head minus replica seq.", rl),
		stale:        d("replmesh_replica_staleness_seconds", "Time since the replica was last known to hold the owner's head (never caught up: since it was subscribed).", rl),
		applied:      d("replmesh_replica_changes_applied_total", "Changes applied to the replica.", rl),
		transfers:    d("replmesh_replica_full_transfers_total", "Full state transfers completed.", rl),
		resumes:      d("replmesh_replica_resumes_total", "Streams resumed from the cursor.", rl),
		reconn:       d("replmesh_replica_reconnects_total", "Streams re-opened after ending.", rl),
		pulls:        d("replmesh_replica_pulls_total", "Pull answers applied.", rl),
		snapRows:     d("replmesh_replica_snapshot_rows_total", "Rows received in full transfers.", rl),
		snapBytes:    d("replmesh_replica_snapshot_bytes_total", "Key and value bytes received in full transfers.", rl),
		xferRows:     d("replmesh_replica_transfer_rows", "Rows received so far by the running full transfer (0: none runs).", rl),
		xferExpected: d("replmesh_replica_transfer_rows_expected", "Rows the owner announced for the running full transfer (0: none runs, or unknown).", rl),
		xferBytes:    d("replmesh_replica_transfer_bytes", "Key and value bytes received so far by the running full transfer.", rl),
		xferETA:      d("replmesh_replica_transfer_eta_seconds", "Estimated time until the running full transfer's last row arrives (0: none runs, or unknown).", rl),
		mode:         d("replmesh_replica_mode", "1 for the mode the subscription's stream runs.", append(rl, "mode")),
		switches:     d("replmesh_replica_mode_switches_total", "Mode switches of the subscription.", rl),
		diverged:     d("replmesh_replica_diverged", "1 while the owner's history does not contain the replica's.", rl),
		diskFree:     d("replmesh_disk_free_bytes", "Free space of the data dir's file system, as last measured.", nil),
		diskReserve:  d("replmesh_disk_reserve_bytes", "Free space below which writes are refused.", nil),
		diskFull:     d("replmesh_disk_full", "1 while writes and applies are refused for lack of space.", nil),
		diskRefused:  d("replmesh_disk_refused_total", "Writes, applies and transfer chunks refused for lack of space.", nil),

		denials:        d("replmesh_owner_denials_total", "Calls on owned tables refused by authorization.", []string{"call"}),
		limitRefusals:  d("replmesh_owner_limit_refusals_total", "Streams refused, or connections held back, by a limit.", []string{"limit"}),
		protocolErrors: d("replmesh_owner_protocol_errors_total", "Streams ended for breaking the protocol.", []string{"error"}),
	}
}

func (x *collector) Describe(ch chan<- *prometheus.Desc) {
	d := &x.d
	for _, desc := range []*prometheus.Desc{d.tableHead, d.tableFirst, d.tableEpoch, d.tablePrimary, d.flowWaits, d.flowCutLoose, d.flowHeld, d.seq, d.ownerHead, d.lag, d.stale,
		d.applied, d.transfers, d.resumes, d.reconn, d.pulls, d.snapRows, d.snapBytes, d.mode, d.switches, d.diverged,
		d.xferRows, d.xferExpected, d.xferBytes, d.xferETA,
		d.diskFree, d.diskReserve, d.diskFull, d.diskRefused, d.denials, d.limitRefusals, d.protocolErrors} {
		ch <- desc
	}
}

func (x *collector) Collect(ch chan<- prometheus.Metric) {
	c, d := x.c, &x.d
	c.mu.Lock()
	tables := make([]*OwnedTable, 0, len(c.owned))
	for _, t := range c.owned {
		tables = append(tables, t)
	}
	reps := make([]*Replica, 0, len(c.replicas))
	for _, r := range c.replicas {
		reps = append(reps, r)
	}
	c.mu.Unlock()
	gauge := func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, labels...)
	}
	counter := func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, v, labels...)
	}
	for _, g := range []struct {
		desc *prometheus.Desc
		set  *counterSet
	}{{d.denials, &c.guard.denials}, {d.limitRefusals, &c.guard.refusals}, {d.protocolErrors, &c.guard.protocol}} {
		g.set.each(func(label string, n uint64) { counter(g.desc, float64(n), label) })
	}
	if ds := c.disk.Status(); ds.On {
		full := 0.0
		if ds.Full {
			full = 1
		}
		gauge(d.diskFree, float64(ds.Free))
		gauge(d.diskReserve, float64(ds.Reserve))
		gauge(d.diskFull, full)
		counter(d.diskRefused, float64(ds.Refused))
	}
	for _, t := range tables {
		m, _ := t.state()
		gauge(d.tableHead, float64(m.Head), t.name)
		gauge(d.tableFirst, float64(m.First), t.name)
		gauge(d.tableEpoch, float64(m.Epoch), t.name)
		primary := 0.0
		if t.writable.Load() {
			primary = 1
		}
		gauge(d.tablePrimary, primary, t.name)
		fs := t.flow.stats()
		counter(d.flowWaits, float64(fs.waits), t.name)
		counter(d.flowCutLoose, float64(fs.cutLoose), t.name)
		gauge(d.flowHeld, float64(fs.held), t.name)
	}
	for _, r := range reps {
		st := r.Status()
		l := []string{st.Service, st.Table}
		gauge(d.seq, float64(st.Seq), l...)
		gauge(d.ownerHead, float64(st.OwnerHead), l...)
		gauge(d.lag, float64(st.Lag.Seqs), l...)
		gauge(d.stale, st.Lag.Staleness.Seconds(), l...)
		counter(d.applied, float64(st.Stats.Applied), l...)
		counter(d.transfers, float64(st.Stats.FullTransfers), l...)
		counter(d.resumes, float64(st.Stats.Resumes), l...)
		counter(d.reconn, float64(st.Stats.Reconnects), l...)
		counter(d.pulls, float64(st.Stats.Pulls), l...)
		counter(d.snapRows, float64(st.Stats.SnapshotRows), l...)
		counter(d.snapBytes, float64(st.Stats.SnapshotBytes), l...)
		var x TransferProgress
		if st.Lag.Transfer != nil {
			x = *st.Lag.Transfer
		}
		gauge(d.xferRows, float64(x.Rows), l...)
		gauge(d.xferExpected, float64(x.ExpectedRows), l...)
		gauge(d.xferBytes, float64(x.Bytes), l...)
		gauge(d.xferETA, x.ETA.Seconds(), l...)
		for _, m := range []string{"push", "pull"} {
			v := 0.0
			if st.Mode == m {
				v = 1
			}
			gauge(d.mode, v, st.Service, st.Table, m)
		}
		counter(d.switches, float64(st.ModeSwitches), l...)
		div := 0.0
		if st.State == StateDiverged {
			div = 1
		}
		gauge(d.diverged, div, l...)
	}
}
