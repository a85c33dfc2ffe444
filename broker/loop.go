package broker

import (
	"slices"
	"time"
)

// The periodic work of a broker: loop reads membership and runs step every
// CheckInterval and whenever kicked; step runs its named steps in a fixed
// order under Broker.mu, all at one clock reading. The decisions (what is
// granted) are in decide.go; who decides is Raft's (raft.go).

// loop runs the periodic work: membership refresh, then step, every
// CheckInterval and whenever kicked. Both read one clock reading.
func (b *Broker) loop() {
	defer b.wg.Done()
	t := time.NewTicker(b.cfg.CheckInterval)
	defer t.Stop()
	for {
		select {
		case <-b.ctx.Done():
			return
		case <-b.kick:
		case <-t.C:
		}
		now := time.Now()
		b.refreshMembers(now)
		b.step(now)
	}
}

// refreshMembers reads membership (without holding mu) and installs it;
// brokers seen live for the first time are noted live since now.
func (b *Broker) refreshMembers(now time.Time) {
	live, departed := b.del.members()
	addrs := make([]string, 0, len(live))
	for _, m := range live {
		if m.GRPC != "" {
			addrs = append(addrs, m.GRPC)
		}
	}
	slices.Sort(addrs)
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, m := range live {
		if _, ok := b.liveSince[m.Name]; !ok {
			b.liveSince[m.Name] = now
		}
	}
	for _, m := range departed {
		delete(b.liveSince, m.Name)
	}
	b.departed = departed
	if slices.Equal(live, b.live) {
		return
	}
	b.live = live
	b.nlive.Store(int32(len(live)))
	if !slices.Equal(addrs, b.brokers) {
		b.brokers = addrs
		b.rev++
		b.notifyAllLocked()
	}
}

// aliveLocked reports whether the named broker is a live member and, on
// the raft leader, one it heard from within an election timeout: a
// broker cut off from the raft leader stops confirming leases within a
// quarter of a lease (raft.go), so its sessions must not count as live
// on the deciding side either.
func (b *Broker) aliveLocked(name string) bool {
	for _, m := range b.live {
		if m.Name == name {
			return b.raftActive == nil || m.Raft == 0 || b.raftActive[m.Raft]
		}
	}
	return false
}

// trackAliveLocked notes, on the raft leader, since when each live broker
// has been alive (aliveLocked) without a break; elsewhere it forgets.
func (b *Broker) trackAliveLocked(now time.Time) {
	if b.raftActive == nil {
		b.aliveSince = nil
		return
	}
	if b.aliveSince == nil {
		b.aliveSince = make(map[string]time.Time)
	}
	for name := range b.aliveSince {
		if !b.aliveLocked(name) {
			delete(b.aliveSince, name)
		}
	}
	for _, m := range b.live {
		if _, ok := b.aliveSince[m.Name]; !ok && b.aliveLocked(m.Name) {
			b.aliveSince[m.Name] = now
		}
	}
}

// headsCurrentLocked reports whether the raft leader holds current heads
// of the sessions on the named broker: it is this broker, or it has been
// alive (aliveLocked) for two UpdateIntervals. A broker back from a pause
// or a partition has the heads its sessions reported meanwhile, but has
// not gossiped them yet (flushHeadsLocked, every UpdateInterval): until
// then the leader holds the heads from before, and would pick a standby
// by heads older than its own.
func (b *Broker) headsCurrentLocked(name string, now time.Time) bool {
	if name == b.cfg.Name {
		return true
	}
	since, ok := b.aliveSince[name]
	return ok && b.aliveLocked(name) && now.Sub(since) >= 2*b.cfg.UpdateInterval
}

// step does one round of periodic work at time now, under mu, in this
// order; then, without mu, it sends what the round wrote and starts a
// rejoin if one is due. Every step reads now, never the clock.
func (b *Broker) step(now time.Time) {
	active := b.raft.activePeers()
	leader := b.raft.isLeader()
	b.mu.Lock()
	b.raftActive = active
	if b.shutting {
		b.mu.Unlock()
		return
	}
	b.trackAliveLocked(now)
	b.trackLeasesLocked(now)
	b.stopWaitingForClusterLocked(now)
	var out []*broadcast
	var grants []*command
	if leader && b.ready {
		out = append(out, b.expireLocked(now)...)
		grants = b.decideLocked("", now)
	}
	out = append(out, b.flushHeadsLocked(now)...)
	b.forgetTombstonesLocked(now)
	b.capTombstonesLocked()
	b.forgetRefusalsLocked(now)
	rejoin := b.rejoinDueLocked(now)
	b.mu.Unlock()
	b.send(out)
	b.raft.enqueue(grants)
	if rejoin && b.enter() {
		go b.joinThenIdle()
	}
}

// trackLeasesLocked notes when each instance was first seen without a live
// session (downSince: its lease runs from then) and when each was first
// seen removed (goneAt: its tombstone ages from then).
func (b *Broker) trackLeasesLocked(now time.Time) {
	for k, rec := range b.reg.instances {
		if rec.Gone {
			delete(b.downSince, k)
			if _, ok := b.goneAt[k]; !ok {
				b.goneAt[k] = now
			}
			continue
		}
		delete(b.goneAt, k)
		if rec.Connected && b.aliveLocked(rec.Session.Broker) {
			delete(b.downSince, k)
		} else if _, ok := b.downSince[k]; !ok {
			b.downSince[k] = now
		}
	}
}

// stopWaitingForClusterLocked makes the broker ready when joining has not
// succeeded for a whole lease: it runs alone.
func (b *Broker) stopWaitingForClusterLocked(now time.Time) {
	if b.gossipReady || now.Sub(b.started) < b.cfg.Lease {
		return
	}
	// Said once: it stays so until a broker answers ("joined the broker
	// cluster").
	if len(b.live) <= 1 {
		b.log.Warn("no broker of the cluster is reachable: this broker serves sessions from its own registry, "+
			"and decides nothing without a raft majority, until one answers; retrying", "join", b.cfg.Join, "waited", b.cfg.Lease, "retry_every", b.cfg.RejoinInterval)
	} else {
		b.log.Warn("no registry exchange with the cluster for a whole lease; serving with this broker's registry")
	}
	b.setReadyLocked()
	b.setRaftReadyLocked()
}

// flushHeadsLocked gossips the records whose heads and positions changed
// (dirty), coalesced: at most every UpdateInterval.
func (b *Broker) flushHeadsLocked(now time.Time) []*broadcast {
	if len(b.dirty) == 0 || now.Sub(b.lastFlush) < b.cfg.UpdateInterval {
		return nil
	}
	var out []*broadcast
	for k := range b.dirty {
		if rec := b.reg.inst(k); rec != nil {
			bc := b.instanceBroadcast(rec)
			bc.refresh = true
			out = append(out, bc)
		}
	}
	clear(b.dirty)
	b.lastFlush = now
	return out
}

// forgetTombstonesLocked drops the removed instances' records
// TombstoneTTL after they were first seen removed.
func (b *Broker) forgetTombstonesLocked(now time.Time) {
	for k, at := range b.goneAt {
		if now.Sub(at) >= b.cfg.TombstoneTTL {
			b.reg.drop(k)
			delete(b.goneAt, k)
		}
	}
}

// forgetRefusalsLocked drops the refused Registers (see Status) last
// seen TombstoneTTL ago.
func (b *Broker) forgetRefusalsLocked(now time.Time) {
	for k, r := range b.refused {
		if now.Sub(time.UnixMilli(r.AtMs)) >= b.cfg.TombstoneTTL {
			delete(b.refused, k)
		}
	}
}

// rejoinDueLocked reports whether a join of Config.Join is due (this
// broker is alone, none is running, and the last started RejoinInterval
// ago or more) and, if so, marks one running from now.
func (b *Broker) rejoinDueLocked(now time.Time) bool {
	if len(b.cfg.Join) == 0 || len(b.live) > 1 || b.joining || now.Sub(b.lastJoin) < b.cfg.RejoinInterval {
		return false
	}
	b.joining, b.lastJoin = true, now
	return true
}

// joinThenIdle joins Config.Join and marks no join running. The caller
// has counted it in wg and set joining.
func (b *Broker) joinThenIdle() {
	defer b.wg.Done()
	b.join(b.ctx)
	b.mu.Lock()
	b.joining = false
	b.mu.Unlock()
}
