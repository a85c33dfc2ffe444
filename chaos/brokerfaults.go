package chaos

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/replmesh/replmesh/broker"
)

// Faults of the broker cluster's agreement (the brokers decide through
// Raft, see broker/raft.go): a paused raft leader, a one-way partition
// between brokers, a broker's data dir wiped, brokers removed and added
// under load, and a second process with a live instance's name.
const (
	// fLeaderStop: SIGSTOP the raft leader for longer than a lease while
	// the primary is SIGKILLed; a standby must be promoted by the new
	// leader, and the paused one, on waking, must confirm no lease of the
	// old primary.
	fLeaderStop = "leader-sigstop"
	// fBrokerOneWay: drop every packet from one broker to another, only
	// that way (nftables, real-network level only: a TCP proxy cannot
	// drop one direction of UDP gossip, nor of a TCP connection, which
	// needs both ways to carry anything); half the time the primary is
	// SIGKILLed meanwhile, so the cluster must decide across it.
	fBrokerOneWay = "broker-oneway"
	// fBrokerWipe: SIGKILL a broker, wipe its data dir, restart it: it
	// joins as a new member and its old raft id must not linger as a
	// voter; then the primary is SIGKILLed and someone must be promoted.
	fBrokerWipe = "broker-wipe"
	// fBrokerChurn: remove a running broker from the raft group (the call
	// replctl broker remove makes), stop it, and add it back as a new
	// member (-join, empty data dir), under the write load.
	fBrokerChurn = "broker-churn"
	// fDupInstance: start a second process with a live owner instance's
	// name (in memory) beside it; the brokers must refuse it.
	fDupInstance = "dup-instance"
)

// brokerLease is the brokers' lease in the suite (chaosnode runs them with
// broker.LocalConfig).
var brokerLease = broker.LocalConfig("b").Lease

// signal sends sig to n's process.
func (n *node) signal(sig syscall.Signal) error {
	p := n.current()
	if p == nil {
		return errDown
	}
	return p.cmd.Process.Signal(sig)
}

// raftView returns broker b's view of the Raft group.
func raftView(ctx context.Context, b *node) (*RaftView, error) {
	st, err := b.status(ctx)
	if err != nil {
		return nil, err
	}
	if st.Raft == nil {
		return nil, fmt.Errorf("%s reports no raft status", b)
	}
	return st.Raft, nil
}

// raftLeader returns the running broker other than except that says it
// leads, with the highest term, and its view (nil: none).
func (cl *cluster) raftLeader(ctx context.Context, except *node) (*node, *RaftView) {
	var best *node
	var bv *RaftView
	for _, b := range cl.brokers {
		if b == except || !b.up() {
			continue
		}
		v, err := raftView(ctx, b)
		if err != nil || v.State != "StateLeader" {
			continue
		}
		if bv == nil || v.Term > bv.Term {
			best, bv = b, v
		}
	}
	return best, bv
}

// waitFor polls cond every 20 ms until it holds or d passes.
func waitFor(ctx context.Context, d time.Duration, what string, cond func(context.Context) (bool, string)) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	last := ""
	for {
		ok, desc := cond(ctx)
		if ok {
			return nil
		}
		if desc != "" {
			last = desc
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return fmt.Errorf("%s: not within %s (last: %s)", what, d, last)
		}
	}
}

// waitPromotion waits until the monitor sees a primary other than old at
// an epoch above epoch, and returns it.
func (cl *cluster) waitPromotion(ctx context.Context, old *node, epoch uint64, d time.Duration) (*node, uint64, error) {
	var p *node
	var e uint64
	err := waitFor(ctx, d, "promotion of a standby", func(context.Context) (bool, string) {
		cl.mu.Lock()
		p, e = cl.primary, cl.epoch
		cl.mu.Unlock()
		return p != old && e > epoch, cl.rolesNow()
	})
	return p, e, err
}

// primaryEpoch returns the current primary and its epoch (nil: none).
func (cl *cluster) primaryEpoch() (*node, uint64) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.primary, cl.epoch
}

// leaderStop: SIGSTOP the raft leader, SIGKILL the primary, wait for the
// promotion by a new leader (at least 1.5 leases), SIGCONT, and check
// from the woken broker's grant log that it confirmed no lease naming an
// older epoch once it woke.
func (in *injector) leaderStop(ctx context.Context) (bool, error) {
	cl := in.cl
	if len(cl.brokers) < 3 {
		return false, nil // the others must be a majority without it
	}
	leader, lv := cl.raftLeader(ctx, nil)
	p, epoch := cl.primaryEpoch()
	if leader == nil || p == nil || !p.up() || len(cl.standbys()) == 0 {
		return false, nil
	}
	hold := in.between(3*brokerLease/2, 3*brokerLease)
	// Where the standbys' sessions are: one on the paused leader is
	// unknown to the new leader, and may hold the newest acknowledged
	// writes (the promotion must wait for it: broker/decide.go).
	var sessions map[string]string
	if st, err := leader.status(ctx); err == nil {
		sessions = st.Sessions
	}
	// Half the time, when one standby's session is on the leader and the
	// others' are not, the others are cut from the primary first, so the
	// one on the leader alone holds the newest acknowledged writes.
	lagging := in.standbysToLag(leader, sessions)
	for _, y := range lagging {
		if err := cl.partition(ctx, p, y); err != nil {
			return true, err
		}
	}
	healLag := func() error {
		var errs []error
		for _, y := range lagging {
			errs = append(errs, cl.heal(ctx, p, y))
		}
		return errors.Join(errs...)
	}
	if len(lagging) > 0 {
		ahead := in.waitAhead(ctx, p, lagging)
		in.logf("%s cut from primary %s: the standby on raft leader %s is %d changes ahead", strings.Join(nodeNames(lagging), ","), p, leader, ahead)
	}
	if err := leader.signal(syscall.SIGSTOP); err != nil {
		return true, errors.Join(err, healLag())
	}
	stopped := time.Now()
	cont := func() error { return leader.signal(syscall.SIGCONT) }
	in.logf("SIGSTOP raft leader %s (term %d) for at least %s; SIGKILL primary %s (epoch %d)", leader, lv.Term, hold, p, epoch)
	p.kill()
	killed := time.Now()
	if err := healLag(); err != nil {
		_ = cont()
		return true, err
	}
	heads := finalHeads(ctx, cl.standbys())
	// A new leader among the others (raft leader loss -> leader elected).
	var nl *node
	var nv *RaftView
	err := waitFor(ctx, fRecoverWait, "a new raft leader", func(ctx context.Context) (bool, string) {
		nl, nv = cl.raftLeader(ctx, leader)
		return nl != nil, ""
	})
	if err != nil {
		_ = cont()
		return true, err
	}
	elected := time.Since(stopped)
	np, ne, err := cl.waitPromotion(ctx, p, epoch, fRecoverWait)
	if err != nil {
		_ = cont()
		return true, err
	}
	promotedAt := time.Now() // after the grant was committed: the new primary had seen it
	promoted := promotedAt.Sub(killed)
	standbys := in.noteStandbys(leader, sessions, heads, np)
	if err := sleepCtx(ctx, time.Until(stopped.Add(hold))); err != nil {
		_ = cont()
		return true, err
	}
	if err := cont(); err != nil {
		return true, err
	}
	woke := time.Now()
	newLeader := fmt.Sprintf("%s (term %d, elected %s after the SIGSTOP)", nl, nv.Term, elected.Round(time.Millisecond))
	in.logf("%s promoted at epoch %d %s after the kill, by new raft leader %s; SIGCONT %s after %s",
		np, ne, promoted.Round(time.Millisecond), newLeader, leader, woke.Sub(stopped).Round(time.Millisecond))
	// The woken broker must catch up (its registry names the new epoch).
	err = waitFor(ctx, fRecoverWait, leader.name+" caught up after SIGCONT", func(ctx context.Context) (bool, string) {
		st, err := leader.status(ctx)
		if err != nil {
			return false, err.Error()
		}
		return st.PrimaryEpoch >= ne, fmt.Sprintf("epoch %d, raft %+v", st.PrimaryEpoch, st.Raft)
	})
	if err != nil {
		return true, err
	}
	// And watch it a lease longer.
	if err := sleepCtx(ctx, brokerLease); err != nil {
		return true, err
	}
	stale, reads := staleConfirmations(leader.grantLogPath(), woke, promotedAt, ne)
	note := fmt.Sprintf("%s: raft leader paused %s; primary killed -> %s promoted at epoch %d in %s by %s (standbys at the kill: %s); after SIGCONT the paused broker logged %d registry reads, %d of them with a fresh confirmation naming an epoch below %d",
		fLeaderStop, woke.Sub(stopped).Round(time.Millisecond), np, ne, promoted.Round(time.Millisecond), newLeader, standbys, reads, len(stale), ne)
	in.logf("%s", note)
	in.mu.Lock()
	in.notes = append(in.notes, note)
	// Every firing's figures in one note (the report folds notes that
	// differ only in numbers).
	in.stops = append(in.stops, fmt.Sprintf("%s/%s", elected.Round(time.Millisecond), promoted.Round(time.Millisecond)))
	all := fmt.Sprintf("%s figures, SIGSTOP of the raft leader -> new leader / SIGKILL of the primary -> standby promoted, per firing: %s",
		fLeaderStop, strings.Join(in.stops, ", "))
	if in.stopsNote == 0 {
		in.notes = append(in.notes, all)
		in.stopsNote = len(in.notes)
	} else {
		in.notes[in.stopsNote-1] = all
	}
	for _, s := range stale {
		in.findings = append(in.findings, fmt.Sprintf("%s: %s woke and confirmed a stale lease: %s", fLeaderStop, leader, s))
	}
	in.mu.Unlock()
	return true, in.restart(ctx, p)
}

// standbysToLag returns, half the time, the standbys to cut from the
// primary before a leader-sigstop: those whose session is not on the
// raft leader, when exactly one standby's is (none otherwise).
func (in *injector) standbysToLag(leader *node, sessions map[string]string) []*node {
	var on, off []*node
	for _, s := range in.cl.standbys() {
		switch sessions[s.name] {
		case "":
		case leader.name:
			on = append(on, s)
		default:
			off = append(off, s)
		}
	}
	if len(on) != 1 || len(off) == 0 || in.rng.IntN(2) == 0 {
		return nil
	}
	return off
}

// waitAhead waits, for at most two seconds, until the primary's head is
// 20 changes above the heads of the lagging standbys (the writes go on,
// acknowledged by the standby that is not cut off), and returns how far
// above it got.
func (in *injector) waitAhead(ctx context.Context, p *node, lagging []*node) uint64 {
	var base uint64
	for _, y := range lagging {
		if st, err := y.status(ctx); err == nil {
			base = max(base, st.Head)
		}
	}
	var ahead uint64
	for range 40 {
		if st, err := p.status(ctx); err == nil && st.Head > base {
			ahead = st.Head - base
		}
		if ahead >= 20 || sleepCtx(ctx, 50*time.Millisecond) != nil {
			break
		}
	}
	return ahead
}

// finalHeads returns the heads of the standbys once the primary is gone:
// each read until two reads 50 ms apart agree (the frames in flight have
// arrived), for at most a second; a standby that does not answer is left
// out.
func finalHeads(ctx context.Context, standbys []*node) map[*node]uint64 {
	out := make(map[*node]uint64, len(standbys))
	for _, n := range standbys {
		prev, ok := uint64(0), false
		for range 20 {
			st, err := n.status(ctx)
			if err != nil {
				break
			}
			if ok && st.Head == prev {
				out[n] = prev
				break
			}
			prev, ok = st.Head, true
			if sleepCtx(ctx, 50*time.Millisecond) != nil {
				break
			}
		}
	}
	return out
}

// noteStandbys describes the standbys at a leader-sigstop's kill (head,
// the broker of its session, * for the paused leader) and counts the
// firings where a standby on the paused leader was strictly ahead of
// every other (the case a promotion among the standbys the new leader
// hears would lose writes in) and where the promoted one was behind
// another (a promotion by heads older than the standbys').
func (in *injector) noteStandbys(paused *node, sessions map[string]string, heads map[*node]uint64, promoted *node) string {
	var parts []string
	var top uint64
	var topNodes []*node
	for n, h := range heads {
		switch {
		case h > top || topNodes == nil:
			top, topNodes = h, []*node{n}
		case h == top:
			topNodes = append(topNodes, n)
		}
	}
	for n, h := range heads {
		at := sessions[n.name]
		if at == "" {
			at = "?"
		} else if at == paused.name {
			at += "*"
		}
		parts = append(parts, fmt.Sprintf("%s head %d on %s", n, h, at))
	}
	slices.Sort(parts)
	aheadOnPaused := len(topNodes) == 1 && len(heads) > 1 && sessions[topNodes[0].name] == paused.name
	behind := false
	if h, ok := heads[promoted]; ok && h < top {
		behind = true
	}
	in.mu.Lock()
	in.stopCases.fired++
	if aheadOnPaused {
		in.stopCases.aheadOnPaused++
	}
	if behind {
		in.stopCases.behind++
	}
	c := in.stopCases
	note := fmt.Sprintf("%s standbys: in %d of %d firings the standby with the most data had its session on the paused leader; a standby behind another was promoted in %d",
		fLeaderStop, c.aheadOnPaused, c.fired, c.behind)
	if c.note == 0 {
		in.notes = append(in.notes, note)
		c.note = len(in.notes)
		in.stopCases.note = c.note
	} else {
		in.notes[c.note-1] = note
	}
	in.mu.Unlock()
	return strings.Join(parts, ", ")
}

// staleConfirmations reads a broker's grant log from since on: the reads
// whose confirmation was fresh enough for the broker to confirm a
// primary's lease (under a quarter of a lease old, see broker/raft.go),
// was asked after committed (when the grant of epoch was known to be
// committed), and yet name an epoch below epoch. It returns them and how
// many reads it looked at.
func staleConfirmations(path string, since, committed time.Time, epoch uint64) (stale []string, reads int) {
	g := &grantHistory{addrs: map[string]string{}}
	_ = g.readBrokerLog("", path)
	for _, r := range g.reads {
		if r.call < since.UnixNano() {
			continue
		}
		reads++
		asked := r.call - (r.confirmedMs+1)*int64(time.Millisecond)
		if r.confirmedMs >= 0 && time.Duration(r.confirmedMs)*time.Millisecond < brokerLease/4 && asked > committed.UnixNano() && r.v.Epoch < epoch {
			stale = append(stale, fmt.Sprintf("at %s, confirmed %d ms before, its registry named %q at epoch %d", fmtNs(r.call), r.confirmedMs, r.v.Instance, r.v.Epoch))
		}
	}
	return stale, reads
}

// restart starts n again (it was SIGKILLed by a fault).
func (in *injector) restart(ctx context.Context, n *node) error {
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	return n.start(sctx)
}

// brokerOneWay drops every packet from one broker to another (one way),
// half the time with the primary SIGKILLed meanwhile, then heals.
func (in *injector) brokerOneWay(ctx context.Context) (bool, error) {
	cl := in.cl
	if cl.net == nil || len(cl.brokers) < 3 {
		return false, nil
	}
	leader, _ := cl.raftLeader(ctx, nil)
	if leader == nil {
		return false, nil
	}
	others := slices.DeleteFunc(slices.Clone(cl.brokers), func(n *node) bool { return n == leader })
	o := in.pick(others)
	from, to := leader, o
	if in.rng.IntN(2) == 0 {
		from, to = o, leader
	}
	d := in.between(2*brokerLease, 5*brokerLease)
	if err := cl.net.blockOneWay(from.name, to.name); err != nil {
		return true, err
	}
	in.logf("one-way partition: drop every packet %s -> %s (raft leader %s) for %s", from, to, leader, d)
	defer func() { _ = cl.net.unblockOneWay(from.name, to.name) }()
	p, epoch := cl.primaryEpoch()
	kill := p != nil && p.up() && len(cl.standbys()) > 0 && in.rng.IntN(2) == 0
	began := time.Now()
	if !kill {
		if err := sleepCtx(ctx, time.Until(began.Add(d))); err != nil {
			return true, err
		}
		return true, cl.net.unblockOneWay(from.name, to.name)
	}
	_ = sleepCtx(ctx, in.between(0, brokerLease))
	in.logf("SIGKILL primary %s (epoch %d) during the one-way partition", p, epoch)
	p.kill()
	killed := time.Now()
	// A majority (the leader and the broker on the other side) still
	// talks both ways: a standby should be promoted while the partition
	// holds (for at least 4 leases after the kill). If none is, that is
	// reported as a known issue (liveness), and the promotion must come
	// once the partition heals.
	during := max(time.Until(began.Add(d)), 4*brokerLease)
	np, ne, err := cl.waitPromotion(ctx, p, epoch, during)
	healed := false
	if err != nil {
		stuck, roles := time.Since(killed), cl.rolesNow()
		if err := cl.net.unblockOneWay(from.name, to.name); err != nil {
			return true, err
		}
		healed = true
		np, _, err = cl.waitPromotion(ctx, p, epoch, fRecoverWait)
		if err != nil {
			return true, err
		}
		known := fmt.Sprintf("%s: no standby promoted in the %s the partition %s -> %s (raft leader %s) held after the primary was killed (roles then %s); %s promoted %s after the heal",
			fBrokerOneWay, stuck.Round(time.Millisecond), from, to, leader, roles, np, time.Since(killed.Add(stuck)).Round(time.Millisecond))
		in.logf("KNOWN ISSUE %s", known)
		in.mu.Lock()
		in.known = append(in.known, known)
		in.mu.Unlock()
	} else {
		note := fmt.Sprintf("%s (%s -> %s dropped, leader %s): primary killed, %s promoted at epoch %d in %s",
			fBrokerOneWay, from, to, leader, np, ne, time.Since(killed).Round(time.Millisecond))
		in.logf("%s", note)
		in.mu.Lock()
		in.notes = append(in.notes, note)
		in.mu.Unlock()
	}
	if !healed {
		if err := sleepCtx(ctx, time.Until(began.Add(d))); err != nil {
			return true, err
		}
		if err := cl.net.unblockOneWay(from.name, to.name); err != nil {
			return true, err
		}
	}
	return true, in.restart(ctx, p)
}

// voters returns the voters as the leader lists them (by name, and
// name/id).
func (cl *cluster) voters(ctx context.Context) (names []string, ids []string, err error) {
	l, v := cl.raftLeader(ctx, nil)
	if l == nil {
		return nil, nil, fmt.Errorf("no raft leader")
	}
	for _, x := range v.Voters {
		name, _, _ := strings.Cut(x, "/")
		names = append(names, name)
	}
	return names, v.Voters, nil
}

// waitVoters waits until the leader lists exactly the brokers want as
// voters, each once, and every one of them up has a fresh confirmation,
// and returns the voters (name/id).
func (cl *cluster) waitVoters(ctx context.Context, want []*node) ([]string, error) {
	var ids []string
	err := waitFor(ctx, fRecoverWait, "raft voters "+strings.Join(nodeNames(want), ","), func(ctx context.Context) (bool, string) {
		names, vs, err := cl.voters(ctx)
		if err != nil {
			return false, err.Error()
		}
		ids = vs
		slices.Sort(names)
		wn := nodeNames(want)
		slices.Sort(wn)
		if !slices.Equal(names, wn) {
			return false, "voters " + strings.Join(vs, ",")
		}
		for _, b := range want {
			v, err := raftView(ctx, b)
			if err != nil || v.ConfirmedMs < 0 || time.Duration(v.ConfirmedMs)*time.Millisecond > brokerLease/4 {
				return false, fmt.Sprintf("%s not confirmed (%v, %+v)", b, err, v)
			}
		}
		return true, ""
	})
	return ids, err
}

func nodeNames(ns []*node) []string {
	out := make([]string, len(ns))
	for i, n := range ns {
		out[i] = n.name
	}
	return out
}

// wipeBroker deletes a (stopped) broker's data dir: its raft log, votes
// and snapshots.
func wipeBroker(b *node) error {
	if b.up() {
		return fmt.Errorf("wipe %s: it is running", b)
	}
	ents, err := os.ReadDir(b.dir)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(b.dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// brokerWipe SIGKILLs a broker, wipes its data dir and restarts it: it
// must come back as a new member, replacing its old raft id, and the
// cluster must go on deciding (the primary is SIGKILLed and a standby
// must be promoted).
func (in *injector) brokerWipe(ctx context.Context) (bool, error) {
	cl := in.cl
	b, before, fired, err := in.settledBroker(ctx)
	if !fired || err != nil {
		return fired, err
	}
	b.kill()
	if err := wipeBroker(b); err != nil {
		return true, err
	}
	in.logf("SIGKILL broker %s, data dir wiped, restarting it (voters were %s)", b, strings.Join(before, ","))
	if err := in.restart(ctx, b); err != nil {
		return true, err
	}
	after, werr := cl.waitVoters(ctx, cl.brokers)
	oldID := ""
	for _, x := range before {
		if strings.HasPrefix(x, b.name+"/") {
			oldID = x
		}
	}
	note := fmt.Sprintf("%s: %s wiped and restarted: voters %s -> %s", fBrokerWipe, b, strings.Join(before, ","), strings.Join(after, ","))
	in.logf("%s", note)
	in.mu.Lock()
	in.notes = append(in.notes, note)
	if slices.Contains(after, oldID) || werr != nil {
		in.findings = append(in.findings, fmt.Sprintf("%s: %s's old raft id %s still a voter or the voters did not settle: %v", fBrokerWipe, b, oldID, werr))
	}
	in.mu.Unlock()
	if werr != nil {
		return true, nil
	}
	return true, in.killPromote(ctx, fBrokerWipe)
}

// settledBroker is the start of the membership faults: with 3 brokers or
// more (fewer: the fault does not fire), it waits for the voters to settle
// and picks the broker to act on; before lists the voters.
func (in *injector) settledBroker(ctx context.Context) (b *node, before []string, fired bool, err error) {
	cl := in.cl
	if len(cl.brokers) < 3 {
		return nil, nil, false, nil
	}
	if before, err = cl.waitVoters(ctx, cl.brokers); err != nil {
		return nil, nil, true, err
	}
	return in.pick(cl.brokers), before, true, nil
}

// killPromote SIGKILLs the primary, waits for a promotion (the cluster
// decides) and restarts it.
func (in *injector) killPromote(ctx context.Context, fault string) error {
	cl := in.cl
	p, epoch := cl.primaryEpoch()
	if p == nil || !p.up() || len(cl.standbys()) == 0 {
		return nil
	}
	p.kill()
	killed := time.Now()
	np, ne, err := cl.waitPromotion(ctx, p, epoch, fRecoverWait)
	if err != nil {
		return fmt.Errorf("%s: %w", fault, err)
	}
	in.logf("%s: primary %s killed, %s promoted at epoch %d in %s", fault, p, np, ne, time.Since(killed).Round(time.Millisecond))
	return in.restart(ctx, p)
}

// brokerChurn removes a running broker from the raft group through
// another broker (the call replctl broker remove makes), stops it, checks
// that the others decide without it, and adds it back as a new member: an
// empty data dir and -join, as a replacement broker would.
func (in *injector) brokerChurn(ctx context.Context) (bool, error) {
	cl := in.cl
	b, before, fired, err := in.settledBroker(ctx)
	if !fired || err != nil {
		return fired, err
	}
	others := slices.DeleteFunc(slices.Clone(cl.brokers), func(n *node) bool { return n == b })
	via := in.pick(others)
	began := time.Now()
	r, err := via.call(ctx, Request{Op: OpRemoveBroker, Name: b.name})
	if err != nil {
		return true, err
	}
	if r.Err != "" {
		return true, fmt.Errorf("remove broker %s through %s: %s", b, via, r.Err)
	}
	removed := time.Since(began)
	in.logf("broker %s removed through %s in %s; stopping it", b, via, removed.Round(time.Millisecond))
	if err := b.stop(30 * time.Second); err != nil {
		return true, err
	}
	mid, err := cl.waitVoters(ctx, others)
	if err != nil {
		return true, err
	}
	// The others decide alone: a promotion.
	if err := in.killPromote(ctx, fBrokerChurn); err != nil {
		return true, err
	}
	if err := wipeBroker(b); err != nil {
		return true, err
	}
	if err := in.restart(ctx, b); err != nil {
		return true, err
	}
	after, err := cl.waitVoters(ctx, cl.brokers)
	if err != nil {
		return true, err
	}
	note := fmt.Sprintf("%s: %s removed (in %s) and added back as a new member: voters %s -> %s -> %s",
		fBrokerChurn, b, removed.Round(time.Millisecond), strings.Join(before, ","), strings.Join(mid, ","), strings.Join(after, ","))
	in.logf("%s", note)
	in.mu.Lock()
	in.notes = append(in.notes, note)
	in.mu.Unlock()
	return true, nil
}
