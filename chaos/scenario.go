package chaos

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// scenario is one run: a cluster, a workload, faults for a while, then
// the heal and every check.
type scenario struct {
	name     string
	seed     uint64
	sp       spec
	bulk     int           // bulk rows written before the faults (1 KiB each)
	writers  int           // concurrent writers
	pace     time.Duration // per writer, between writes
	faults   []string      // the kinds the injector picks from
	ordered  bool          // inject the faults in their order instead of picking at random
	duration time.Duration // how long faults are injected
	diskFull bool          // give consumer c1 a tmpfs data dir (root only)
}

// result is what one scenario found.
type result struct {
	name     string
	seed     uint64
	err      error // the run could not be completed (harness or cluster failure)
	v        *violations
	findings []string
	known    []string // known issues seen (see injector.known)
	skipped  []string // parts that could not run here (and why)
	took     time.Duration
	dir      string

	invoked, ok, failed, unknown int
	changesChecked               int // changes of the consumers' apply logs checked
	historyChecked               int // acknowledged writes found at their seq in the final history
	historyLen                   int
	rowsChecked                  int
	convergence                  time.Duration   // last heal -> every replica's digest equals the primary's
	catchups                     []time.Duration // per fault
	progress                     time.Duration   // last heal -> first acknowledged write
	resyncConsumers              int             // full transfers completed by consumers
	resyncStandbys               int             // full transfers completed by standbys
	rewinds                      int
	transferReads                int
	reads                        uint64
	duplicatesSkipped            uint64 // changes received again (after reconnects, or duplicated by the dup-reorder fault) and skipped by consumers
	promotions                   int
	finalEpoch                   uint64
	faults                       map[string]int
	notes                        []string
	attacks                      attackStats // the attacker fault's attacks
	epochAcks                    int         // acknowledged writes whose commit epoch was checked
	grants                       *grantResult
	lostByFault, heldByReplica   int // owner-disk-loss: acknowledged writes it lost, and those the restored replica held (restore.go)
}

func (r *result) passed() bool {
	known := len(r.known) > 0 || len(r.v.known) > 0
	return r.err == nil && r.v.total() == 0 && len(r.findings) == 0 && (!known || os.Getenv(envStrict) == "")
}

// envStrict=1 makes known issues fail their scenario.
const envStrict = "REPLMESH_CHAOS_STRICT"

// runScenario runs sc with chaosnode binary bin under root (a fresh
// directory); rn is the real network (nil: portable level).
func runScenario(ctx context.Context, sc scenario, bin, root string, rn *realNet, logf func(string, ...any)) *result {
	began := time.Now()
	res := &result{name: sc.name, seed: sc.seed, v: newViolations(), faults: map[string]int{}, dir: root}
	res.err = runScenarioErr(ctx, sc, bin, root, rn, logf, res)
	res.took = time.Since(began)
	return res
}

func runScenarioErr(ctx context.Context, sc scenario, bin, root string, rn *realNet, logf func(string, ...any), res *result) (err error) {
	cl, err := newCluster(root, bin, sc.sp, rn, logf)
	if err != nil {
		return err
	}
	defer cl.killAll() // before the caller deletes the namespaces
	if rn != nil {
		if err := rn.setup(); err != nil {
			return fmt.Errorf("real network: %w", err)
		}
	}
	in := newInjector(cl, sc.seed, logf)
	if sc.diskFull && len(cl.consumers) > 0 {
		d, err := setupDiskFull(cl.consumers[0])
		if err != nil {
			res.skipped = append(res.skipped, "disk-full: "+err.Error())
			logf("disk-full fault skipped: %v", err)
		} else {
			in.disk = d
			defer func() {
				cl.killAll()
				if cerr := d.cleanup(); cerr != nil && err == nil {
					err = cerr
				}
			}()
		}
	}
	sctx, cancel := context.WithTimeout(ctx, 120*time.Second)
	defer cancel()
	if err := cl.start(sctx); err != nil {
		return fmt.Errorf("start cluster: %w", err)
	}
	w := newWorkload(cl, sc.seed, sc.writers, sc.pace)
	if err := w.setup(sctx, sc.bulk); err != nil {
		return err
	}
	for _, c := range cl.consumers {
		if err := in.waitConsumer(sctx, c, 60*time.Second, "streaming"); err != nil {
			return err
		}
	}
	w.start()
	defer w.stop()
	logf("%s: cluster up, %d bulk rows, workload running; faults for %s", sc.name, sc.bulk, sc.duration)

	if err := in.run(ctx, sc.faults, sc.duration, sc.ordered); err != nil {
		return err
	}
	in.mu.Lock()
	maps := in.counts
	res.faults, res.catchups, res.findings, res.known = maps, slices.Clone(in.catchups), slices.Clone(in.findings), slices.Clone(in.known)
	res.notes = append(res.notes, dedupe(in.notes)...)
	res.attacks = in.attacks
	in.mu.Unlock()
	if cl.pki == nil && slices.Contains(sc.faults, fAttacker) {
		res.skipped = append(res.skipped, "attacker: the cluster runs in plaintext ("+envTLS+"=0): there is no security to attack")
	}

	// Heal everything; every process runs.
	hctx, hcancel := context.WithTimeout(ctx, 60*time.Second)
	defer hcancel()
	if err := cl.healAll(hctx); err != nil {
		return fmt.Errorf("heal: %w", err)
	}
	for _, n := range cl.all() {
		if !n.up() {
			if err := n.start(hctx); err != nil {
				return fmt.Errorf("restart after the faults: %w", err)
			}
		}
	}
	healed := time.Now()
	logf("%s: healed; waiting for progress", sc.name)

	// Progress: a write is acknowledged within 30 s of the heal.
	for w.h.firstOKAfter(healed).IsZero() {
		if time.Since(healed) > 30*time.Second {
			p := cl.currentPrimary()
			return fmt.Errorf("no write acknowledged within 30s of the last fault (primary %v, roles %v)", p, cl.rolesNow())
		}
		if err := sleepCtx(ctx, 10*time.Millisecond); err != nil {
			return err
		}
	}
	res.progress = w.h.firstOKAfter(healed).Sub(healed)
	w.stop()

	// Convergence: every replica (consumers and standbys) has the primary's
	// digest.
	cctx, ccancel := context.WithTimeout(ctx, 60*time.Second)
	defer ccancel()
	primary, err := cl.stableOwners(cctx)
	if err != nil {
		return err
	}
	want, err := converge(cctx, cl, primary)
	if err != nil {
		return err
	}
	res.convergence = time.Since(healed)
	logf("%s: converged at seq %d (%d rows) %s after the heal; primary %s", sc.name, want.Seq, want.Rows, res.convergence.Round(time.Millisecond), primary)

	// The final state against the history.
	ops := w.h.snapshot()
	res.invoked, res.ok, res.failed, res.unknown = w.h.counts()
	// What an owner-disk-loss lost is reported, not checked (restore.go).
	restores := in.restorePoints()
	var lossNote string
	ops, res.lostByFault, res.heldByReplica, lossNote = excuseDiskLoss(ops, restores)
	if lossNote != "" {
		res.notes = append(res.notes, lossNote)
	}
	rows, err := primary.dump(cctx)
	if err != nil {
		return err
	}
	prim := rowMap(rows)
	res.rowsChecked = len(prim)
	hr, err := primary.call(cctx, Request{Op: OpHistory})
	if err != nil || hr.Err != "" || hr.History == nil {
		return fmt.Errorf("history of %s: %v %s", primary, err, hr.Err)
	}
	hist := hr.History
	tr := &truth{h: hist, restores: restores}
	checkState(res.v, "primary "+primary.name, ops, prim, tr)
	res.historyLen = len(hist.Changes)
	res.finalEpoch = hist.Epochs.EpochOf(hist.Head)
	if !hist.Complete {
		res.notes = append(res.notes, fmt.Sprintf("the final primary's log starts at seq %d (trimmed by retention, or its copy began with a full transfer): acknowledged writes before it are checked in the rows only", hist.First))
	}
	res.historyChecked = checkHistory(res.v, tr, ops, prim)
	res.epochAcks = checkEpochs(res.v, ops)
	for _, c := range cl.consumers {
		crows, err := c.dump(cctx)
		if err != nil {
			return err
		}
		m := rowMap(crows)
		if !sameRows(m, prim) {
			res.v.add(vDiverged, "consumer %s: %d rows, the primary %d, with equal digests?", c, len(m), len(prim))
		}
		checkState(res.v, "consumer "+c.name, ops, m, tr)
		st, err := c.status(cctx)
		if err != nil {
			return err
		}
		res.reads += st.Replica.Reads
		res.duplicatesSkipped += st.Replica.Duplicates
	}
	cl.mu.Lock()
	res.promotions = cl.mon.promotions
	for _, s := range cl.mon.splitBrain {
		res.v.add(vStaleEpoch, "%s", s)
	}
	cl.mu.Unlock()

	// Clean stop, then the logs.
	if err := cl.stop(); err != nil {
		return fmt.Errorf("stop: %w", err)
	}
	for _, c := range cl.consumers {
		st, err := checkApplyLog(res.v, c.name, c.applyLogPath(), tr)
		if err != nil {
			return err
		}
		res.changesChecked += st.changes
		res.rewinds += st.rewinds
		res.transferReads += st.transferReads
		res.resyncConsumers += countLines(c.logPath(), `msg="full transfer complete"`)
	}
	for _, o := range cl.owners {
		res.resyncStandbys += countLines(o.logPath(), `msg="full transfer complete"`)
	}
	gh, err := loadGrants(cl)
	if err != nil {
		return fmt.Errorf("grant logs: %w", err)
	}
	gr := gh.check()
	res.grants = &gr
	checkGrants(res.v, gr)
	res.notes = append(res.notes, "grant history (porcupine): "+gr.String())
	if gr.raw != porcupine.Ok {
		res.notes = append(res.notes, fmt.Sprintf("registry reads at face value (what Lookup serves, no quorum asked): porcupine %s; %d reads returned an epoch below a grant that had already returned, e.g. %s",
			gr.raw, gr.rawStaleN, strings.Join(gr.rawStale, "; ")))
	}
	if res.rewinds > 0 {
		res.notes = append(res.notes, fmt.Sprintf("consumers took %d full transfers to a lower seq (they held changes the final history does not: see stale-epoch and the known issues)", res.rewinds))
	}
	return nil
}

// converge waits until every consumer and every other owner has the
// primary's digest, the primary's digest being at its head, and returns it.
func converge(ctx context.Context, cl *cluster, primary *node) (Digest, error) {
	var last []string
	for {
		last = last[:0]
		want, err := primary.digest(ctx)
		if err != nil {
			last = append(last, fmt.Sprintf("primary %s: digest: %v", primary, err))
		} else {
			st, serr := primary.status(ctx)
			ok := serr == nil && st.Head == want.Seq && st.OwnerRole == "primary"
			if !ok {
				last = append(last, fmt.Sprintf("primary %s: %+v %v", primary, st, serr))
			}
			for _, n := range cl.components() {
				if n == primary {
					continue
				}
				d, err := n.digest(ctx)
				if err != nil || !d.Equal(want) {
					ok = false
					last = append(last, fmt.Sprintf("%s at seq %d rows %d (%v)", n, d.Seq, d.Rows, err))
				}
			}
			if ok {
				return want, nil
			}
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return Digest{}, fmt.Errorf("replicas did not converge on %s's digest (seq %d): %w; last: %s", primary, want.Seq, err, strings.Join(last, "; "))
		}
	}
}

// rolesNow describes the owners' last reported roles.
func (cl *cluster) rolesNow() string {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	var out []string
	for _, o := range cl.owners {
		out = append(out, o.name+"="+cl.roles[o.name])
	}
	return strings.Join(out, " ")
}

// keepDir reports whether a run's directory is kept (on failure, or when
// REPLMESH_CHAOS_KEEP is set).
func keepDir(res *result) bool {
	return !res.passed() || os.Getenv("REPLMESH_CHAOS_KEEP") != ""
}
