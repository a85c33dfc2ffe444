package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Faults. Each one breaks something, holds it for a seeded while, and
// repairs it (restart, heal) before the injector goes on.
const (
	fKillPrimary          = "kill-primary"               // SIGKILL the primary, restart it later
	fKillStandby          = "kill-standby"               // SIGKILL a standby, restart it later
	fKillConsumer         = "kill-consumer"              // SIGKILL a consumer, restart it later
	fKillBroker           = "kill-broker"                // SIGKILL a broker, restart it later
	fKillConsumerTransfer = "kill-consumer-mid-transfer" // wipe a consumer, SIGKILL it during its full transfer
	fKillStandbyTransfer  = "kill-standby-mid-transfer"  // wipe a standby, SIGKILL it during its full transfer
	fKillPrimaryTransfer  = "kill-primary-mid-transfer"  // SIGKILL the primary while it sends a consumer a full transfer
	fPartition            = "partition"                  // blackhole the traffic between two processes
	fIsolatePrimary       = "isolate-primary"            // blackhole everything to and from the primary
	fPrimaryLosesBrokers  = "primary-loses-brokers"      // blackhole the primary's broker sessions long enough for a promotion
	fPartitionBrokers     = "partition-brokers"          // split the broker cluster (real-network level only)
	fReset                = "reset"                      // reset every connection of one process
	fSlowLink             = "slow-link"                  // delay and bandwidth-limit one consumer's links to the owners
	fDiskFull             = "disk-full"                  // fill a consumer's (tmpfs) data file system, then free it
	fDupReorder           = "dup-reorder-frames"         // duplicate and swap the frames one consumer's replica receives
	fAttacker             = "attacker"                   // a hostile process attacks the live cluster (security on; see attacker.go)

	// The owner loses its disk with no standby running; the harness
	// restores it from the most advanced consumer (restore.go).
	fOwnerDiskLoss = "owner-disk-loss"
)

// Fault parameters.
const (
	fTransferRate = 512 << 10              // bytes/s on a link during a transfer fault
	fTransferWait = 30 * time.Second       // how long a transfer fault waits for the transfer
	fRecoverWait  = 90 * time.Second       // how long a fault waits for its repair to take
	fSlowRateMin  = 32 << 10               // slow link: bandwidth range (bytes/s)
	fSlowRateMax  = 256 << 10              //
	fSlowDelayMin = 30 * time.Millisecond  // slow link: one-way delay range
	fSlowDelayMax = 150 * time.Millisecond //
	fDiskFullSize = "64m"                  // the disk-full consumer's tmpfs
	fFramesMin    = 2 * time.Second        // dup-reorder: how long the fault is on
	fFramesMax    = 5 * time.Second        //
	fFramesCap    = 15 * time.Second       // dup-reorder: on at most this long waiting for both kinds of injection
)

// injector injects faults into a cluster at seeded random moments.
type injector struct {
	cl   *cluster
	rng  *rand.Rand
	logf func(string, ...any)
	disk *diskFull // the consumer with a tmpfs data dir (nil: not available)

	mu         sync.Mutex
	counts     map[string]int
	catchups   []time.Duration // per fault: heal -> every replica holds the primary's head at the heal
	findings   []string        // guarantees seen broken while a fault was on
	notes      []string        // what some faults saw, for the report
	known      []string        // known issues seen (reported, not failing the run unless REPLMESH_CHAOS_STRICT)
	frames     frameTotals     // what the dup-reorder fault injected, over the scenario
	framesNote int             // 1 + the index of its note in notes (0: none yet)
	attacks    attackStats     // what the attacker fault tried
	stops      []string        // leader-sigstop: per firing, SIGSTOP -> new leader and kill -> promotion
	stopsNote  int             // 1 + the index of their note in notes (0: none yet)
	restores   []restorePoint  // what each owner-disk-loss restored (restore.go)
	// leader-sigstop: firings, those where the standby with the most data
	// had its session on the paused leader, those where a standby behind
	// another was promoted; note: 1 + the index of their note (0: none).
	stopCases struct{ fired, aheadOnPaused, behind, note int }
	gen       atomic.Int64 // bumped when a fault begins
	wg        sync.WaitGroup
}

func newInjector(cl *cluster, seed uint64, logf func(string, ...any)) *injector {
	return &injector{cl: cl, rng: rand.New(rand.NewPCG(seed, 0xfa17)), logf: logf, counts: map[string]int{}}
}

func (in *injector) between(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(in.rng.Int64N(int64(hi-lo)+1))
}

func (in *injector) pick(ns []*node) *node {
	if len(ns) == 0 {
		return nil
	}
	return ns[in.rng.IntN(len(ns))]
}

// run injects faults of the given kinds, one after another, for d: in a
// seeded random order, or (ordered) each in turn.
func (in *injector) run(ctx context.Context, kinds []string, d time.Duration, ordered bool) error {
	defer in.wg.Wait() // the catch-up measurements
	end := time.Now().Add(d)
	for i := 0; time.Now().Before(end); i++ {
		if err := sleepCtx(ctx, in.between(200*time.Millisecond, 1200*time.Millisecond)); err != nil {
			return err
		}
		k := kinds[i%len(kinds)]
		if !ordered {
			k = kinds[in.rng.IntN(len(kinds))]
		}
		in.gen.Add(1)
		began := time.Now()
		fired, err := in.inject(ctx, k)
		if err != nil {
			return fmt.Errorf("fault %s: %w", k, err)
		}
		if !fired {
			continue
		}
		in.mu.Lock()
		in.counts[k]++
		in.mu.Unlock()
		in.logf("fault %s done in %s", k, time.Since(began).Round(time.Millisecond))
		in.measureCatchup()
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// measureCatchup records, in the background, how long after now every
// running consumer and standby holds the primary's current head (given
// up, not recorded, when another fault begins first or after 30 s).
func (in *injector) measureCatchup() {
	gen := in.gen.Load()
	start := time.Now()
	in.wg.Add(1)
	go func() {
		defer in.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		p := in.cl.currentPrimary()
		if p == nil {
			return
		}
		st, err := p.status(ctx)
		if err != nil || st.OwnerRole != "primary" {
			return
		}
		target := st.Head
		for {
			if in.gen.Load() != gen {
				return
			}
			if in.cl.caughtUp(ctx, target, p) {
				in.mu.Lock()
				in.catchups = append(in.catchups, time.Since(start))
				in.mu.Unlock()
				return
			}
			if sleepCtx(ctx, 20*time.Millisecond) != nil {
				return
			}
		}
	}()
}

// caughtUp reports whether every running consumer and every running owner
// other than primary holds seq.
func (cl *cluster) caughtUp(ctx context.Context, seq uint64, primary *node) bool {
	for _, n := range cl.components() {
		if n == primary || !n.up() {
			continue
		}
		st, err := n.status(ctx)
		if err != nil {
			return false
		}
		have := st.Head
		if st.Replica != nil {
			have = st.Replica.Seq
		}
		if have < seq {
			return false
		}
	}
	return true
}

// inject runs one fault to its end; fired is false when it did not apply
// (no such process now).
func (in *injector) inject(ctx context.Context, kind string) (fired bool, err error) {
	cl := in.cl
	switch kind {
	case fKillPrimary:
		p := cl.currentPrimary()
		if p == nil || !p.up() {
			return false, nil
		}
		return true, in.killRestart(ctx, p, in.between(300*time.Millisecond, 3*time.Second))
	case fKillStandby:
		s := in.pick(cl.standbys())
		if s == nil {
			return false, nil
		}
		return true, in.killRestart(ctx, s, in.between(200*time.Millisecond, 2*time.Second))
	case fKillConsumer:
		c := in.pick(cl.consumers)
		return true, in.killRestart(ctx, c, in.between(100*time.Millisecond, 2*time.Second))
	case fKillBroker:
		b := in.pick(cl.brokers)
		return true, in.killRestart(ctx, b, in.between(200*time.Millisecond, 3*time.Second))
	case fKillConsumerTransfer:
		return true, in.consumerTransfer(ctx, false)
	case fKillPrimaryTransfer:
		return true, in.consumerTransfer(ctx, true)
	case fKillStandbyTransfer:
		return in.standbyTransfer(ctx)
	case fPartition:
		a, b := in.pair()
		if err := cl.partition(ctx, a, b); err != nil {
			return true, err
		}
		in.logf("partition %s | %s", a, b)
		if err := sleepCtx(ctx, in.between(500*time.Millisecond, 5*time.Second)); err != nil {
			return true, err
		}
		return true, cl.heal(ctx, a, b)
	case fIsolatePrimary:
		p := cl.currentPrimary()
		if p == nil {
			return false, nil
		}
		others := slices.DeleteFunc(cl.all(), func(n *node) bool { return n == p })
		for _, o := range others {
			if err := cl.partition(ctx, p, o); err != nil {
				return true, err
			}
		}
		d := in.between(time.Second, 20*time.Second)
		in.logf("isolate %s for %s", p, d)
		if err := sleepCtx(ctx, d); err != nil {
			return true, err
		}
		for _, o := range others {
			if err := cl.heal(ctx, p, o); err != nil {
				return true, err
			}
		}
		return true, nil
	case fPrimaryLosesBrokers:
		// The primary still reaches its standbys and consumers; the
		// brokers end its silent session after half a lease, let
		// its lease lapse and promote a standby.
		p := cl.currentPrimary()
		if p == nil {
			return false, nil
		}
		pst, err := p.status(ctx)
		if err != nil || pst.OwnerRole != "primary" {
			return false, nil
		}
		for _, b := range cl.brokers {
			if err := cl.partition(ctx, p, b); err != nil {
				return true, err
			}
		}
		// One standby hears from the brokers late (a slow link), so it
		// may still be following the old primary when the other is
		// promoted.
		late := in.pick(cl.standbys())
		lag := LinkFault{Delay: in.between(100*time.Millisecond, 400*time.Millisecond)}
		if late != nil {
			if err := in.slow(ctx, late, cl.brokers, lag); err != nil {
				return true, err
			}
		}
		d := in.between(18*time.Second, 24*time.Second)
		in.logf("cut primary %s from every broker for %s (standby %v hears from the brokers %s late)", p, d, late, lag.Delay)
		if err := sleepCtx(ctx, d); err != nil {
			return true, err
		}
		for _, b := range cl.brokers {
			if err := cl.heal(ctx, p, b); err != nil {
				return true, err
			}
		}
		if late != nil {
			if err := in.slow(ctx, late, cl.brokers, LinkFault{}); err != nil {
				return true, err
			}
		}
		return true, nil
	case fPartitionBrokers:
		if cl.net == nil || len(cl.brokers) < 2 {
			return false, nil
		}
		b := in.pick(cl.brokers)
		others := slices.DeleteFunc(slices.Clone(cl.brokers), func(n *node) bool { return n == b })
		for _, o := range others {
			if err := cl.partition(ctx, b, o); err != nil {
				return true, err
			}
		}
		d := in.between(time.Second, 6*time.Second)
		in.logf("partition broker %s from the other brokers for %s", b, d)
		if err := sleepCtx(ctx, d); err != nil {
			return true, err
		}
		for _, o := range others {
			if err := cl.heal(ctx, b, o); err != nil {
				return true, err
			}
		}
		return true, nil
	case fReset:
		n := in.pick(cl.components())
		for _, p := range cl.peers(n) {
			if err := cl.cut(ctx, n, p); err != nil {
				return true, err
			}
		}
		in.logf("reset every connection of %s", n)
		return true, nil
	case fSlowLink:
		c := in.pick(cl.consumers)
		f := LinkFault{Delay: in.between(fSlowDelayMin, fSlowDelayMax), Rate: fSlowRateMin + in.rng.Int64N(fSlowRateMax-fSlowRateMin)}
		if err := in.slow(ctx, c, cl.owners, f); err != nil {
			return true, err
		}
		d := in.between(2*time.Second, 8*time.Second)
		in.logf("slow links %s -> owners: delay %s, %d B/s, for %s", c, f.Delay, f.Rate, d)
		if err := sleepCtx(ctx, d); err != nil {
			return true, err
		}
		return true, in.slow(ctx, c, cl.owners, LinkFault{})
	case fDiskFull:
		if in.disk == nil {
			return false, nil
		}
		return true, in.disk.run(ctx, in)
	case fDupReorder:
		return in.dupReorder(ctx)
	case fAttacker:
		return in.attack(ctx)
	case fLeaderStop:
		return in.leaderStop(ctx)
	case fBrokerOneWay:
		return in.brokerOneWay(ctx)
	case fBrokerWipe:
		return in.brokerWipe(ctx)
	case fBrokerChurn:
		return in.brokerChurn(ctx)
	case fDupInstance:
		return in.dupInstance(ctx)
	case fOwnerDiskLoss:
		return in.ownerDiskLoss(ctx)
	}
	return false, fmt.Errorf("unknown fault %q", kind)
}

// standbys are the running owners other than the current primary.
func (cl *cluster) standbys() []*node {
	p := cl.currentPrimary()
	var out []*node
	for _, o := range cl.owners {
		if o != p && o.up() {
			out = append(out, o)
		}
	}
	return out
}

// pair picks two processes that talk to each other.
func (in *injector) pair() (*node, *node) {
	for {
		a := in.pick(in.cl.components())
		b := in.pick(in.cl.peers(a))
		if b != nil {
			return a, b
		}
	}
}

// slow sets f (delay and rate) on n's links to every node of to.
func (in *injector) slow(ctx context.Context, n *node, to []*node, f LinkFault) error {
	for _, o := range to {
		lf := in.cl.link(n, o.addr)
		lf.Delay, lf.Rate = f.Delay, f.Rate
		if err := in.cl.setLink(ctx, n, lf); err != nil {
			return err
		}
	}
	return nil
}

// killRestart SIGKILLs n and restarts it after d.
func (in *injector) killRestart(ctx context.Context, n *node, d time.Duration) error {
	in.logf("SIGKILL %s (restart in %s)", n, d.Round(time.Millisecond))
	n.kill()
	if err := sleepCtx(ctx, d); err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	return n.start(sctx)
}

// consumerTransfer wipes a consumer and restarts it with slow links to the
// owners, so it takes a full transfer that lasts; once the transfer runs it
// SIGKILLs the consumer (or, with primary, the primary that sends it), and
// restarts it. The consumer must end up Ready with no read of a partial copy.
func (in *injector) consumerTransfer(ctx context.Context, primary bool) error {
	cl := in.cl
	c := in.pick(cl.consumers)
	c.kill()
	if err := c.wipe(); err != nil {
		return err
	}
	if err := in.slow(ctx, c, cl.owners, LinkFault{Rate: fTransferRate}); err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := c.start(sctx); err != nil {
		return err
	}
	if err := in.waitConsumer(ctx, c, fTransferWait, "transferring"); err != nil {
		in.logf("%s: %v; no kill mid-transfer this time", c, err)
	} else {
		_ = sleepCtx(ctx, in.between(0, 500*time.Millisecond))
		victim := c
		if primary {
			if victim = cl.currentPrimary(); victim == nil {
				victim = c
			}
		}
		st, _ := c.status(ctx)
		state := "?"
		if st != nil && st.Replica != nil {
			state = st.Replica.State
		}
		in.logf("SIGKILL %s while %s's full transfer is %s", victim, c, state)
		if err := in.killRestart(ctx, victim, in.between(100*time.Millisecond, 2*time.Second)); err != nil {
			return err
		}
	}
	if err := in.waitConsumer(ctx, c, fRecoverWait, "streaming"); err != nil {
		return err
	}
	return in.slow(ctx, c, cl.owners, LinkFault{})
}

// waitConsumer waits until c's replica is in state (and, for streaming,
// Ready).
func (in *injector) waitConsumer(ctx context.Context, c *node, d time.Duration, state string) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var last *ReplicaStatus
	for {
		st, err := c.status(ctx)
		if err == nil && st.Replica != nil {
			last = st.Replica
			if st.Replica.State == state && (state != "streaming" || st.Replica.Ready) {
				return nil
			}
		}
		if err := sleepCtx(ctx, 10*time.Millisecond); err != nil {
			return fmt.Errorf("%s not %s within %s (last: %+v)", c, state, d, last)
		}
	}
}

// standbyTransfer wipes a standby and restarts it with a slow link to the
// primary; once its full transfer runs (its table's log id is empty: the
// copy is marked incomplete) it SIGKILLs and restarts it, and waits until
// the copy is complete again.
func (in *injector) standbyTransfer(ctx context.Context) (bool, error) {
	cl := in.cl
	if len(cl.standbys()) < 2 {
		return false, nil // the other standby confirms writes meanwhile
	}
	s := in.pick(cl.standbys())
	p := cl.currentPrimary()
	if p == nil {
		return false, nil
	}
	s.kill()
	if err := s.wipe(); err != nil {
		return true, err
	}
	if err := in.slow(ctx, s, cl.owners, LinkFault{Rate: fTransferRate}); err != nil {
		return true, err
	}
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := s.start(sctx); err != nil {
		return true, err
	}
	wctx, wcancel := context.WithTimeout(ctx, fTransferWait)
	inTransfer := false
	for !inTransfer {
		st, err := s.status(wctx)
		if err == nil && st.LogID == "" {
			inTransfer = true
			break
		}
		if sleepCtx(wctx, 5*time.Millisecond) != nil {
			break
		}
	}
	wcancel()
	if inTransfer {
		in.logf("SIGKILL standby %s during its full transfer", s)
		if err := in.killRestart(ctx, s, in.between(100*time.Millisecond, time.Second)); err != nil {
			return true, err
		}
	} else {
		in.logf("%s: no full transfer seen; no kill mid-transfer this time", s)
	}
	// Wait until the copy is complete: same log id as the primary's.
	rctx, rcancel := context.WithTimeout(ctx, fRecoverWait)
	defer rcancel()
	for {
		pst, perr := cl.currentPrimary().status(rctx)
		st, err := s.status(rctx)
		if perr == nil && err == nil && st.LogID != "" && st.LogID == pst.LogID && st.OwnerRole == "standby" {
			break
		}
		if err := sleepCtx(rctx, 20*time.Millisecond); err != nil {
			return true, fmt.Errorf("standby %s did not complete its copy: %v (last %+v)", s, err, st)
		}
	}
	return true, in.slow(ctx, s, cl.owners, LinkFault{})
}

// dupReorder switches on the frame fault of one consumer (FrameFault: its
// replica receives some frames of its Subscribe stream twice, and some
// pairs of consecutive frames in reverse order) while the workload runs,
// at least until both a duplicate and a swap of two changes frames reached
// the replica, then off. The replica must skip every duplicate and see
// every such swap as a gap (drop the stream, resume from its seq); the
// apply log check proves nothing was applied twice or out of order.
func (in *injector) dupReorder(ctx context.Context) (bool, error) {
	var up []*node
	for _, c := range in.cl.consumers {
		if c.up() {
			up = append(up, c)
		}
	}
	c := in.pick(up)
	if c == nil {
		return false, nil
	}
	before, err := c.status(ctx)
	if err != nil {
		return true, err
	}
	if before.Frames == nil || before.Replica == nil {
		return true, fmt.Errorf("%s reports no frame fault", c)
	}
	gaps0 := countLines(c.logPath(), gapLog)
	f := FrameFault{Dup: 0.05 + 0.15*in.rng.Float64(), Swap: 0.02 + 0.06*in.rng.Float64()}
	d := in.between(fFramesMin, fFramesMax)
	if err := in.setFrames(ctx, c, f); err != nil {
		return true, err
	}
	in.logf("dup-reorder frames to %s: dup %.2f, swap %.2f, for %s", c, f.Dup, f.Swap, d)
	began := time.Now()
	if err := sleepCtx(ctx, d); err != nil {
		return true, err
	}
	// Keep it on until both kinds of injection reached the replica.
	var st *NodeStatus
	for {
		if st, err = c.status(ctx); err != nil {
			return true, err
		}
		if st.Frames.Duplicated > before.Frames.Duplicated && st.Frames.SwappedChanges > before.Frames.SwappedChanges {
			break
		}
		if time.Since(began) > fFramesCap {
			_ = in.setFrames(ctx, c, FrameFault{})
			return true, fmt.Errorf("the frame fault on %s injected nothing that reached its replica in %s: %+v (before %+v)", c, fFramesCap, *st.Frames, *before.Frames)
		}
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return true, err
		}
	}
	if err := in.setFrames(ctx, c, FrameFault{}); err != nil {
		return true, err
	}
	on := time.Since(began)
	// Every swap of two changes frames must end its stream on a seq gap;
	// the replica logs it as the stream ends, then resumes (wait for the
	// last one).
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		if st, err = c.status(wctx); err == nil {
			if countLines(c.logPath(), gapLog)-gaps0 >= int(st.Frames.SwappedChanges-before.Frames.SwappedChanges) &&
				st.Replica.State == "streaming" {
				break
			}
		}
		if sleepCtx(wctx, 20*time.Millisecond) != nil {
			break
		}
	}
	if st, err = c.status(ctx); err != nil {
		return true, err
	}
	fb, fa, rb, ra := before.Frames, st.Frames, before.Replica, st.Replica
	t := frameTotals{fired: 1, on: on, frames: fa.Frames - fb.Frames, dups: fa.Duplicated - fb.Duplicated,
		swaps: fa.Swapped - fb.Swapped, swapsCh: fa.SwappedChanges - fb.SwappedChanges,
		skipped: ra.Duplicates - rb.Duplicates, gaps: uint64(countLines(c.logPath(), gapLog) - gaps0), resumes: ra.Resumes - rb.Resumes}
	in.logf("dup-reorder frames to %s off (dup %.2f, swap %.2f): %s", c, f.Dup, f.Swap, t)
	in.mu.Lock()
	in.frames.add(t)
	note := fmt.Sprintf("%s: %s", fDupReorder, in.frames)
	if in.framesNote == 0 {
		in.notes = append(in.notes, note)
		in.framesNote = len(in.notes)
	} else {
		in.notes[in.framesNote-1] = note
	}
	if t.gaps < t.swapsCh {
		in.findings = append(in.findings, fmt.Sprintf("%s: the replica saw only %d seq gaps for %d swapped changes frames: it accepted a reordered frame (%s)", c, t.gaps, t.swapsCh, t))
	}
	in.mu.Unlock()
	return true, in.transferUnderFrames(ctx, c)
}

// transferUnderFrames wipes consumer c and restarts it with the frame fault
// on from its first frame, so that its full transfer's frames are
// duplicated and swapped too. A transfer whose end frame counts other rows
// than arrived must be refused and run again; the replica must end up
// streaming a complete copy (the scenario's final digests and the reads
// checked during the transfer show whether it did).
func (in *injector) transferUnderFrames(ctx context.Context, c *node) error {
	// Rates high enough that a transfer of a dozen frames is hit; once a
	// transfer has been refused the fault goes off and the next one runs
	// clean.
	f := FrameFault{Dup: 0.05 + 0.1*in.rng.Float64(), Swap: 0.1 + 0.1*in.rng.Float64()}
	refused0 := countLines(c.logPath(), refusedTransferLog)
	c.kill()
	if err := c.wipe(); err != nil {
		return err
	}
	c.mu.Lock()
	c.startFrames = &f
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.startFrames = nil
		c.mu.Unlock()
	}()
	in.logf("%s wiped and restarted with dup %.2f, swap %.2f from its first frame: a full transfer under the frame fault", c, f.Dup, f.Swap)
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	err := c.start(sctx)
	cancel()
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, fRecoverWait)
	defer cancel()
	var st *NodeStatus
	for {
		if st, err = c.status(wctx); err != nil {
			return err
		}
		if st.Replica != nil && st.Replica.State == "streaming" || countLines(c.logPath(), refusedTransferLog) > refused0 {
			break
		}
		if err := sleepCtx(wctx, 20*time.Millisecond); err != nil {
			return fmt.Errorf("%s: no transfer ended under the frame fault: %w", c, err)
		}
	}
	if err := in.setFrames(ctx, c, FrameFault{}); err != nil {
		return err
	}
	if err := in.waitConsumer(ctx, c, fRecoverWait, "streaming"); err != nil {
		return err
	}
	if st, err = c.status(ctx); err != nil {
		return err
	}
	refused := countLines(c.logPath(), refusedTransferLog) - refused0
	note := fmt.Sprintf("%s: full transfer of %s under the fault: %d frames received, %d delivered twice, %d pairs swapped; %d transfer(s) refused for a wrong row count, %d completed",
		fDupReorder, c, st.Frames.Frames, st.Frames.Duplicated, st.Frames.Swapped, refused, st.Replica.FullTransfers)
	in.logf("%s", note)
	in.mu.Lock()
	in.notes = append(in.notes, note)
	in.mu.Unlock()
	return nil
}

// refusedTransferLog is what a replica's log says when a transfer's end
// frame counts other rows than it received.
const refusedTransferLog = "were received"

// frameTotals is what the frame fault injected and how the replica took it:
// for one firing, or summed over a scenario's.
type frameTotals struct {
	fired                        int
	on                           time.Duration
	frames, dups, swaps, swapsCh uint64 // injected (see FrameStatus)
	skipped, gaps, resumes       uint64 // the replica's reaction
}

func (t *frameTotals) add(o frameTotals) {
	t.fired += o.fired
	t.on += o.on
	t.frames, t.dups, t.swaps, t.swapsCh = t.frames+o.frames, t.dups+o.dups, t.swaps+o.swaps, t.swapsCh+o.swapsCh
	t.skipped, t.gaps, t.resumes = t.skipped+o.skipped, t.gaps+o.gaps, t.resumes+o.resumes
}

func (t frameTotals) String() string {
	return fmt.Sprintf("on %s over %d firing(s); of %d frames received, %d delivered twice and %d pairs swapped (%d of two changes frames); "+
		"the replica skipped %d changes received twice, dropped its stream on %d seq gaps and resumed it %d times",
		t.on.Round(100*time.Millisecond), t.fired, t.frames, t.dups, t.swaps, t.swapsCh, t.skipped, t.gaps, t.resumes)
}

// gapLog is what a replica's log says when a received batch did not
// continue its seq (replica.ErrGap).
const gapLog = "seq gap"

// setFrames sets the frame fault of consumer c.
func (in *injector) setFrames(ctx context.Context, c *node, f FrameFault) error {
	r, err := c.call(ctx, Request{Op: OpFrames, Frames: &f})
	if err != nil {
		return err
	}
	if r.Err != "" {
		return fmt.Errorf("%s frames: %s", c, r.Err)
	}
	return nil
}
