package broker

import (
	"math"
	"time"
)

// The deciding broker's decisions: whether it may decide at all (quorum),
// which instances' leases lapsed (expireLocked) and which services are due
// a primary grant (nextGrant, recorded by decideLocked). quorum and
// nextGrant are pure: they read no clock and change nothing.

// quorumLocked reports whether this broker hears a majority of the brokers
// it has ever known at now (see quorum). Only then does it decide leases
// and promotions or confirm a primary's lease. A broker cut off with a
// minority stops confirming within a quarter of a lease, so the primary
// whose session it holds stops acknowledging (min_sync_standbys) within
// three quarters of one, before the majority side can have promoted a
// standby (a whole lease after it lost the broker). memberlist's failure
// detector is not used for this: a minority member has nobody to confirm
// its suspicions and declares its peers dead seconds after the majority
// declared it dead. Departed brokers count until they come back, so losing
// half of the cluster or more stops grants and promotions (as with any
// majority-based system) until brokers return.
func (b *Broker) quorumLocked(now time.Time) bool {
	return quorum(b.cfg.Name, b.live, b.departed, b.heard, b.liveSince, b.cfg.Lease/4, now)
}

// quorum reports whether self hears a majority of the brokers it has ever
// known (live and departed, itself included): itself, and each live member
// whose last beat arrived (heard), or which became live (liveSince), at
// most window before now. It reads no clock.
func quorum(self string, live, departed []member, heard, liveSince map[string]time.Time, window time.Duration, now time.Time) bool {
	recent := func(at map[string]time.Time, name string) bool {
		t, ok := at[name]
		return ok && now.Sub(t) <= window
	}
	n := 0
	for _, m := range live {
		// A member that joined a moment ago counts: its beats are on
		// their way.
		if m.Name == self || recent(heard, m.Name) || recent(liveSince, m.Name) {
			n++
		}
	}
	return n > (len(live)+len(departed))/2
}

// expireLocked removes (tombstones) the instances whose session has been
// gone for a whole lease. Only the deciding broker calls it.
func (b *Broker) expireLocked(now time.Time) []*broadcast {
	var out []*broadcast
	for k, since := range b.downSince {
		if now.Sub(since) < b.cfg.Lease {
			continue
		}
		rec := b.reg.inst(k)
		delete(b.downSince, k)
		if rec == nil || rec.Gone {
			continue
		}
		t := rec.clone()
		t.Gone, t.Connected = true, false
		t.Ver = b.reg.next(b.cfg.Name, now.UnixMicro())
		t.SeenMs = now.UnixMilli()
		b.reg.store(t)
		b.goneAt[k] = now
		delete(b.dirty, k)
		b.rev++
		b.metrics.removals.Inc()
		b.log.Info("instance removed: its lease lapsed", "service", k.Service, "instance", k.Instance,
			"down", now.Sub(since).Round(time.Millisecond))
		b.notifyLocked(k.Service)
		out = append(out, b.instanceBroadcast(t))
	}
	return out
}

// decideLocked grants the primary lease of every owner service that is
// due one (see nextGrant), or of the one named service if only is not "",
// and records, logs and counts each grant. Only the deciding broker calls
// it.
func (b *Broker) decideLocked(only string) []*broadcast {
	var out []*broadcast
	for svc, insts := range b.reg.bySvc {
		if only != "" && svc != only {
			continue
		}
		o := b.reg.owners[svc]
		best, epoch, ok := nextGrant(insts, o, b.aliveLocked)
		if !ok {
			continue
		}
		old := ""
		if o != nil {
			old = o.Primary
		}
		no := &ownerRec{Service: svc, Epoch: epoch, Primary: best.Instance}
		b.reg.mergeOwner(no)
		b.rev++
		switch old {
		case "":
			b.metrics.grants.Inc()
			b.log.Info("primary granted", "service", svc, "primary", best.Instance, "epoch", no.Epoch)
		case best.Instance:
			b.metrics.grants.Inc()
			b.log.Warn("primary granted again at a new epoch: an instance reports an epoch above the grant",
				"service", svc, "primary", best.Instance, "epoch", no.Epoch, "was", o.Epoch)
		default:
			b.metrics.promotions.Inc()
			b.log.Info("standby promoted", "service", svc, "primary", best.Instance, "epoch", no.Epoch,
				"previous", old, "head_sum", best.headSum())
		}
		b.notifyLocked(svc)
		// The lapsed primary's tombstone travels with the new owner record,
		// so that no broker shows the new primary beside the old one still
		// listed as a standby.
		g := &gossipMsg{Owners: []*ownerRec{no}}
		if p := insts[old]; p != nil && p.Gone {
			g.Instances = []*instanceRec{p}
		}
		out = append(out, newBroadcast("o/"+svc, g))
	}
	return out
}

// nextGrant decides the primary lease of one owner service from its
// instance records (by instance name) and its owner record (nil if it has
// none): ok is false when the service is not due a grant. alive reports
// whether a broker is a live member. It reads no clock and changes
// nothing.
//
// A present primary (registered, an owner instance) keeps its lease; it is
// granted again at a new epoch when an instance of its service reports
// data of an epoch above the grant's (a grant made before that data was
// reported). A service with no present primary is granted to the connected
// owner instance with the most data (bestStandby): its first owner, or a
// standby promoted when the primary's lease lapsed.
//
// The new epoch is above every epoch known for the service, the ones its
// instances report included (those their data held when they registered
// and their tables'): after all brokers restarted (an empty registry) a
// grant must not reuse an epoch the owners' histories already hold, or two
// histories would carry one epoch and the primary could not take over at
// it.
func nextGrant(insts map[string]*instanceRec, o *ownerRec, alive func(broker string) bool) (primary *instanceRec, epoch uint64, ok bool) {
	var maxEpoch uint64
	for _, rec := range insts {
		maxEpoch = max(maxEpoch, rec.maxEpoch())
	}
	var best *instanceRec
	if o != nil {
		if p := insts[o.Primary]; p != nil && !p.Gone && p.Owner {
			if maxEpoch <= o.Epoch {
				return nil, 0, false // the primary is present (its lease holds)
			}
			best = p
		}
		maxEpoch = max(maxEpoch, o.Epoch)
	}
	if best == nil {
		var cands []*instanceRec
		for _, rec := range insts {
			if rec.Owner && !rec.Gone && rec.Connected && alive(rec.Session.Broker) {
				cands = append(cands, rec)
			}
		}
		if best = bestStandby(cands); best == nil {
			return nil, 0, false
		}
	}
	if maxEpoch >= math.MaxUint64-1 {
		// Reports are bounded by MaxEpoch; a record this high came from
		// elsewhere (gossip): granting would wrap to 0 and repeat on every
		// step.
		return nil, 0, false
	}
	return best, maxEpoch + 1, true
}
