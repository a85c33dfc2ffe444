package chaos

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/replmesh/replmesh/transport"
)

// The owner-disk-loss fault: the primary loses its disk while no standby
// runs, and the harness restores it from the most advanced consumer's
// replica (the restore of docs/design.md, "Restore from a replica").
//
//  1. The consumers' links to the primary are paused for a seeded while,
//     so that they fall behind the writes the primary and its standbys
//     acknowledge meanwhile (without it they would hold every one);
//  2. every standby is SIGKILLed (its data kept): none runs;
//  3. the primary is SIGKILLed, its data dir wiped, and it is started
//     again: empty, a new history, primary again (the only owner up);
//  4. the harness asks it to restore the table from the most advanced of
//     the consumers (OpRestore: Component.Restore with every consumer as a
//     candidate); the answer says which replica, at which seq S of which
//     history, and the new epoch N the owner writes at from S+1;
//  5. the links are healed and the standbys started again on their data
//     (holding changes beyond S of an older epoch: truncated, transferred).
//
// The checker then knows what the fault lost: the acknowledged writes of
// an epoch below N at a seq beyond S, which the replica never received.
// They are reported (counted, by op), not checked and not violations;
// every other acknowledged write — those the replica held, and everything
// after the restore — is checked as always. A consumer change of such a
// seq and epoch in an apply log is likewise lost by the fault, not a
// stale epoch.

// Parameters of the owner-disk-loss fault.
const (
	fDiskLossLagMax = 1500 * time.Millisecond // the consumers' links to the primary are paused up to this long first
)

// classLostByFault marks, for the checks, an acknowledged write an
// owner-disk-loss lost: neither acknowledged-and-kept nor failed.
const classLostByFault = "lost-by-fault"

// restorePoint is one owner-disk-loss as the restore ended it.
type restorePoint struct {
	owner    string
	restored Restored
	lostHead uint64 // the primary's head before it lost its disk, as last reported
}

// lost reports whether a write (or an applied change) at seq of epoch was
// lost by this disk loss: beyond the restored seq, of an older epoch than
// the one the restored owner writes at.
func (r restorePoint) lost(seq, epoch uint64) bool {
	return seq > r.restored.Seq && epoch < r.restored.NewEpoch
}

// lostByFault reports whether any owner-disk-loss of t lost a write at
// seq of epoch.
func (t *truth) lostByFault(seq, epoch uint64) bool {
	return slices.ContainsFunc(t.restores, func(r restorePoint) bool { return r.lost(seq, epoch) })
}

// restorePoints returns the disk losses of the scenario so far.
func (in *injector) restorePoints() []restorePoint {
	in.mu.Lock()
	defer in.mu.Unlock()
	return slices.Clone(in.restores)
}

// ownerDiskLoss runs the fault (see the top of this file). It does not
// fire without a primary or when a consumer has no listener.
func (in *injector) ownerDiskLoss(ctx context.Context) (bool, error) {
	cl := in.cl
	p := cl.currentPrimary()
	if p == nil || !p.up() {
		return false, nil
	}
	var cands []transport.RestoreSource
	for _, c := range cl.consumers {
		if c.addr == "" {
			return false, nil
		}
		cands = append(cands, transport.RestoreSource{Service: "products", Instance: c.name, Addr: c.addr})
	}
	pause := func(paused bool) error {
		for _, c := range cl.consumers {
			f := cl.link(c, p.addr)
			f.Paused = paused
			if err := cl.setLink(ctx, c, f); err != nil {
				return err
			}
		}
		return nil
	}
	lag := in.between(0, fDiskLossLagMax)
	if err := pause(true); err != nil {
		return true, err
	}
	if err := sleepCtx(ctx, lag); err != nil {
		return true, err
	}
	var standbys []*node
	for _, o := range cl.owners {
		if o != p && o.up() {
			o.kill()
			standbys = append(standbys, o)
		}
	}
	var head uint64
	if st, err := p.status(ctx); err == nil {
		head = st.Head
	}
	p.kill()
	if err := p.wipe(); err != nil {
		return true, err
	}
	in.logf("owner-disk-loss: consumers cut from primary %s for %s, standbys %v killed, %s killed at head %d and its data dir wiped",
		p, lag, standbys, p, head)
	rctx, cancel := context.WithTimeout(ctx, fRecoverWait)
	defer cancel()
	if err := p.start(rctx); err != nil {
		return true, err
	}
	if err := cl.waitRole(rctx, p, "primary"); err != nil {
		return true, err
	}
	var res *Restored
	var last string
	for res == nil {
		r, err := p.call(rctx, Request{Op: OpRestore, Restore: cands})
		switch {
		case err == nil && r.Err == "" && r.Restore != nil:
			res = r.Restore
			continue
		case err != nil:
			last = err.Error()
		default:
			last = r.Err
		}
		if err := sleepCtx(rctx, 200*time.Millisecond); err != nil {
			return true, fmt.Errorf("owner-disk-loss: restore %s: %w (last: %s)", p, err, last)
		}
	}
	in.mu.Lock()
	in.restores = append(in.restores, restorePoint{owner: p.name, restored: *res, lostHead: head})
	in.mu.Unlock()
	var pos []string
	for _, x := range res.Positions {
		if x.Err != "" {
			pos = append(pos, fmt.Sprintf("%s: %s", x.Source.Instance, x.Err))
		} else {
			pos = append(pos, fmt.Sprintf("%s at %d", x.Source.Instance, x.Seq))
		}
	}
	in.logf("owner-disk-loss: %s restored from %s (%s) at seq %d of log %s, %d rows; writes at epoch %d",
		p, res.Source.Instance, strings.Join(pos, ", "), res.Seq, res.LogID, res.Rows, res.NewEpoch)
	if err := pause(false); err != nil {
		return true, err
	}
	for _, s := range standbys {
		if err := s.start(rctx); err != nil {
			return true, err
		}
	}
	return true, nil
}

// excuseDiskLoss returns ops with the acknowledged writes an
// owner-disk-loss lost marked classLostByFault (copies: the history is
// not changed), and says for the report how many it lost and how many
// acknowledged writes of the lost history the restored replica held
// (they stay acknowledged: the checks that follow check them).
func excuseDiskLoss(ops []*op, points []restorePoint) (out []*op, lost, held int, note string) {
	if len(points) == 0 {
		return ops, 0, 0, ""
	}
	t := &truth{restores: points}
	out = make([]*op, len(ops))
	var ids []string
	for i, o := range ops {
		out[i] = o
		if o.class != ClassOK {
			continue
		}
		if t.lostByFault(o.seq, o.epoch) {
			c := *o
			c.class = classLostByFault
			out[i] = &c
			lost++
			if len(ids) < 10 {
				ids = append(ids, fmt.Sprintf("op %d seq %d", o.id, o.seq))
			}
			continue
		}
		if slices.ContainsFunc(points, func(r restorePoint) bool { return o.epoch < r.restored.NewEpoch }) {
			held++
		}
	}
	var where []string
	for _, r := range points {
		where = append(where, fmt.Sprintf("%s restored from %s at seq %d (its head had been %d), epoch %d",
			r.owner, r.restored.Source.Instance, r.restored.Seq, r.lostHead, r.restored.NewEpoch))
	}
	note = fmt.Sprintf("owner-disk-loss: %s; %d acknowledged writes lost by the fault (the restored replica never received them: reported, not checked)",
		strings.Join(where, "; "), lost)
	if len(ids) > 0 {
		note += " e.g. " + strings.Join(ids, ", ")
	}
	note += fmt.Sprintf("; %d acknowledged writes it held checked", held)
	return out, lost, held, note
}
