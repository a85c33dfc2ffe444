package broker

import (
	"slices"
	"time"
)

// The periodic work of a broker: loop reads membership and runs step every
// CheckInterval and whenever kicked; step runs its named steps in a fixed
// order under Broker.mu, all at one clock reading. The decisions (who may
// decide, what is granted) are in decide.go.

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
	leader := len(live) > 0 && live[0].Name == b.cfg.Name
	if leader != b.leader {
		b.leader = leader
		if leader {
			b.log.Info("this broker now decides leases and primaries", "members", len(live))
		}
	}
	if !slices.Equal(addrs, b.brokers) {
		b.brokers = addrs
		b.rev++
		b.notifyAllLocked()
	}
}

// aliveLocked reports whether the named broker is a live member.
func (b *Broker) aliveLocked(name string) bool {
	for _, m := range b.live {
		if m.Name == name {
			return true
		}
	}
	return false
}

// step does one round of periodic work at time now, under mu, in this
// order; then, without mu, it sends what the round wrote and starts a
// rejoin if one is due. Every step reads now, never the clock.
func (b *Broker) step(now time.Time) {
	b.mu.Lock()
	if b.shutting {
		b.mu.Unlock()
		return
	}
	b.trackLeasesLocked(now)
	b.stopWaitingForClusterLocked(now)
	var out []*broadcast
	out = append(out, b.beatLocked(now)...)
	out = append(out, b.decideRoundLocked(now)...)
	out = append(out, b.flushHeadsLocked(now)...)
	b.forgetTombstonesLocked(now)
	b.capTombstonesLocked()
	b.forgetClearedOverridesLocked(now)
	rejoin := b.rejoinDueLocked(now)
	b.mu.Unlock()
	b.send(out)
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
	if b.ready || now.Sub(b.started) < b.cfg.Lease {
		return
	}
	// Said once: it stays so until a broker answers ("joined the broker
	// cluster").
	if len(b.live) <= 1 {
		b.log.Warn("no broker of the cluster is reachable: this broker decides leases and primaries alone, "+
			"from its own registry, until one answers; retrying", "join", b.cfg.Join, "waited", b.cfg.Lease, "retry_every", b.cfg.RejoinInterval)
	} else {
		b.log.Warn("no registry exchange with the cluster for a whole lease; serving with this broker's registry")
	}
	b.setReadyLocked()
}

// beatLocked returns this broker's beat every tenth of a lease while it
// has peers: the others count it toward their quorum.
func (b *Broker) beatLocked(now time.Time) []*broadcast {
	if len(b.live) <= 1 || now.Sub(b.lastBeat) < b.cfg.Lease/10 {
		return nil
	}
	b.lastBeat = now
	return []*broadcast{newBroadcast("beat/"+b.cfg.Name, &gossipMsg{Beat: b.cfg.Name})}
}

// decideRoundLocked, on the deciding broker once it is ready and while it
// hears a majority, removes the instances whose lease lapsed and grants
// the primaries that are due.
func (b *Broker) decideRoundLocked(now time.Time) []*broadcast {
	if !b.leader || !b.ready || !b.quorumLocked(now) {
		return nil
	}
	out := b.expireLocked(now)
	return append(out, b.decideLocked("")...)
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

// forgetClearedOverridesLocked drops the cleared mode overrides (Mode "")
// TombstoneTTL after they were first seen cleared.
func (b *Broker) forgetClearedOverridesLocked(now time.Time) {
	for k, m := range b.reg.modes {
		if m.Mode != "" {
			delete(b.clearedAt, k)
			continue
		}
		at, ok := b.clearedAt[k]
		if !ok {
			b.clearedAt[k] = now
		} else if now.Sub(at) >= b.cfg.TombstoneTTL {
			delete(b.reg.modes, k)
			delete(b.clearedAt, k)
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
