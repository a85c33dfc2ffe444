package broker

import (
	"math"
	"slices"
	"strings"
	"time"
)

// The raft leader's decisions: which instances' leases lapsed
// (expireLocked) and which services are due a primary grant (nextGrant,
// proposed by decideLocked, applied by appliedLocked once committed).
// nextGrant is pure: it reads no clock and changes nothing.

// expireLocked removes (tombstones) the instances whose session has been
// gone for a whole lease (keptLocked). Only the raft leader calls it.
func (b *Broker) expireLocked(now time.Time) []*broadcast {
	var out []*broadcast
	for k, since := range b.downSince {
		rec := b.reg.inst(k)
		if now.Sub(since) < b.keptLocked(rec) {
			continue
		}
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

// keptLocked is how long rec may be without a live session before it is
// removed: a lease; for a standby whose session sits on a broker that is
// not alive, a lease plus RehomeWait. Such a standby is unknown, not
// absent: its broker may be paused or cut off while the standby itself
// runs on with the newest acknowledged writes, and it opens a session on
// another broker only after its PeerTimeout; until it does, or is removed,
// nextGrant may have too few standbys' heads to promote anyone. The
// primary keeps the plain lease: lease fencing stops it acknowledging
// writes before then.
func (b *Broker) keptLocked(rec *instanceRec) time.Duration {
	if rec == nil || !rec.Owner || b.aliveLocked(rec.Session.Broker) {
		return b.cfg.Lease
	}
	if o := b.reg.owners[rec.Service]; o == nil || o.Primary == rec.Instance {
		return b.cfg.Lease
	}
	return b.cfg.Lease + b.cfg.RehomeWait
}

// decideLocked decides the primary lease of every owner service that is
// due one (see nextGrant), or of the one named service if only is not "",
// and returns the grants to propose. Nothing changes until a grant is
// committed and applied (appliedLocked); the state machine refuses a
// grant decided on a state that has moved on (fsm.checkGrant). A service
// whose grant was proposed less than an election timeout ago is left
// alone. Only the raft leader calls it.
func (b *Broker) decideLocked(only string, now time.Time) []*command {
	var out []*command
	for svc, insts := range b.reg.bySvc {
		if only != "" && svc != only {
			continue
		}
		if at, ok := b.inflight[svc]; ok && now.Sub(at) < raftElectionTicks*b.raft.tick {
			continue
		}
		o := b.reg.owners[svc]
		best, epoch, ok := nextGrant(insts, o, grantView{
			alive:   b.aliveLocked,
			current: func(name string) bool { return b.headsCurrentLocked(name, now) },
			minSync: serviceMinSync(insts),
		})
		if !ok {
			continue
		}
		c := &command{Kind: cmdGrant, Service: svc, Instance: best.Instance, Epoch: epoch, HeadSum: best.headSum()}
		if o != nil {
			c.Prev = o.Epoch
		}
		b.inflight[svc] = now
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b *command) int { return strings.Compare(a.Service, b.Service) })
	return out
}

// appliedLocked records the effects of a command the decided state has
// just applied: topologies change; grants are logged and counted by the
// broker that proposed them, and kept for Grants.
func (b *Broker) appliedLocked(c *command, ev *grantEvent) {
	b.rev++
	b.notifyLocked(c.Service)
	if ev == nil {
		if c.Kind == cmdMode {
			b.log.Info("mode override", "service", c.Service, "table", c.Table, "mode", c.Mode)
		}
		return
	}
	delete(b.inflight, c.Service)
	b.grants = append(b.grants, *ev)
	if n := len(b.grants); n > raftGrantHistory {
		b.grants = slices.Delete(b.grants, 0, n-raftGrantHistory)
	}
	if c.By != b.cfg.Name {
		return
	}
	switch ev.Previous {
	case "":
		b.metrics.grants.Inc()
		b.log.Info("primary granted", "service", c.Service, "primary", c.Instance, "epoch", c.Epoch, "index", ev.Index)
	case c.Instance:
		b.metrics.grants.Inc()
		b.log.Warn("primary granted again at a new epoch: an instance reports an epoch above the grant",
			"service", c.Service, "primary", c.Instance, "epoch", c.Epoch, "was", c.Prev, "index", ev.Index)
	default:
		b.metrics.promotions.Inc()
		b.log.Info("standby promoted", "service", c.Service, "primary", c.Instance, "epoch", c.Epoch,
			"previous", ev.Previous, "head_sum", c.HeadSum, "index", ev.Index)
	}
}

// grantView is what nextGrant knows beside the records: the brokers and
// the primary's durability.
type grantView struct {
	// alive reports whether a broker is a live member the raft leader
	// hears; current, whether the leader also holds current heads of the
	// sessions on it (nil: whenever alive).
	alive, current func(broker string) bool
	// minSync is the service's MinSyncStandbys k (serviceMinSync; 0:
	// unknown).
	minSync int
}

// serviceMinSync is the MinSyncStandbys k a promotion of the service
// counts on: the smallest its owner instances report (Register
// .MinSyncStandbys), 0 (unknown: every standby's head is needed) if one of
// them reports none. The smallest is the cautious choice: a write
// acknowledged once fewer standbys held it needs more standbys' heads to
// be found. Removed instances count too: the primary a promotion replaces
// is the one whose k its acknowledged writes were made under, and its
// record is removed (its lease lapsed) by the time of the promotion.
// Instances of another kind (consumers) report none and are left out.
func serviceMinSync(insts map[string]*instanceRec) int {
	k, owners := 0, 0
	for _, rec := range insts {
		if !rec.Owner {
			continue
		}
		if rec.MinSync <= 0 {
			return 0
		}
		if owners == 0 || rec.MinSync < k {
			k = rec.MinSync
		}
		owners++
	}
	return k
}

// nextGrant decides the primary lease of one owner service from its
// instance records (by instance name) and its owner record (nil if it has
// none): ok is false when the service is not due a grant. It reads no
// clock and changes nothing.
//
// A present primary (registered, an owner instance) keeps its lease; it is
// granted again at a new epoch when an instance of its service reports
// data of an epoch above the grant's (a grant made before that data was
// reported). A service with no present primary is granted to the connected
// owner instance with the most data (bestStandby): its first owner, or a
// standby promoted when the primary's lease lapsed.
//
// A promotion (the service had a primary) waits until the heads of enough
// standbys are known that one of them must hold every acknowledged write:
// with S standbys (owner instances not removed) and view.minSync the
// service's MinSyncStandbys k, an acknowledged write is on at least k of
// them, so the heads of S-k+1 are needed (minSync 0: unknown, all S). A standby's
// head is known while its session is connected on a live broker whose
// heads are current (view.current); one on a broker not alive or not
// current, or disconnected, is unknown until it opens a session
// again or its lease lapses and it is removed (keptLocked: a lease plus
// RehomeWait for one whose broker is not alive). Otherwise the standby
// whose broker is paused, with the newest acknowledged writes, would be
// passed over for a connected one that lacks them. The first grant (no
// primary yet) does not wait: nothing was acknowledged.
//
// The new epoch is above every epoch known for the service, the ones its
// instances report included (those their data held when they registered
// and their tables'): after all brokers restarted (an empty registry) a
// grant must not reuse an epoch the owners' histories already hold, or two
// histories would carry one epoch and the primary could not take over at
// it.
func nextGrant(insts map[string]*instanceRec, o *ownerRec, view grantView) (primary *instanceRec, epoch uint64, ok bool) {
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
		// The first grant: any connected owner; a promotion: the
		// standbys whose heads are current.
		known := view.alive
		if o != nil && view.current != nil {
			known = view.current
		}
		var cands []*instanceRec
		standbys := 0
		for _, rec := range insts {
			if !rec.Owner || rec.Gone {
				continue
			}
			standbys++
			if rec.Connected && known(rec.Session.Broker) {
				cands = append(cands, rec)
			}
		}
		if o != nil && len(cands) < headsNeeded(standbys, view.minSync) {
			return nil, 0, false // a standby that may hold acknowledged writes is unknown
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

// headsNeeded is how many heads of a service's standbys (standbys of
// them) a promotion needs when the primary acknowledged each write once
// minSync of them held it (0: unknown, all of them): one of any
// standbys-minSync+1 holds every acknowledged write.
func headsNeeded(standbys, minSync int) int {
	if minSync <= 0 {
		return standbys
	}
	return max(1, standbys-minSync+1)
}

// Grant is one primary grant the decided state applied: for observers
// such as a linearizability checker of the grant history.
type Grant struct {
	Index    uint64 // the raft log index of the grant
	Service  string
	Instance string
	Epoch    uint64
	Previous string // the primary it replaced ("" none)
}

// Grants returns the grants this broker applied, oldest first (the
// newest 4096 at most, since it started).
func (b *Broker) Grants() []Grant {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]Grant, len(b.grants))
	for i, g := range b.grants {
		out[i] = Grant(g)
	}
	return out
}
