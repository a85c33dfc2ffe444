package chaos

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// report formats the results of a run: one line per scenario, then the
// totals every guarantee is judged by.
func report(level string, results []*result, took time.Duration) string {
	var b strings.Builder
	passed := 0
	for _, r := range results {
		if r.passed() {
			passed++
		}
	}
	security := "mTLS with identities, access policy, encrypted gossip"
	if !tlsOn() {
		security = "plaintext (" + envTLS + "=0)"
	}
	fmt.Fprintf(&b, "replmesh chaos report (%s level; %s): %d/%d scenarios passed in %s\n\n", level, security, passed, len(results), took.Round(time.Second))
	fmt.Fprintf(&b, "%-28s %-20s %-6s %8s %23s %8s %8s %8s %7s %s\n",
		"scenario", "seed", "result", "took", "writes inv/ok/fail/unk", "changes", "converge", "progress", "resyncs", "faults")
	all := newViolations()
	var inv, ok, fail, unk, changes, hist, rows, rewinds, tReads, resC, resS, prom int
	var reads, dups uint64
	var conv, cups []time.Duration
	var maxProgress time.Duration
	faults := map[string]int{}
	attacks := attackStats{byName: map[string]int{}}
	for _, r := range results {
		res := "PASS"
		if !r.passed() {
			res = "FAIL"
		}
		var fs []string
		for _, k := range slices.Sorted(maps.Keys(r.faults)) {
			fs = append(fs, fmt.Sprintf("%s=%d", k, r.faults[k]))
			faults[k] += r.faults[k]
		}
		fmt.Fprintf(&b, "%-28s %-20d %-6s %8s %23s %8d %8s %8s %3d+%-3d %s\n",
			r.name, r.seed, res, r.took.Round(100*time.Millisecond),
			fmt.Sprintf("%d/%d/%d/%d", r.invoked, r.ok, r.failed, r.unknown), r.changesChecked,
			r.convergence.Round(time.Millisecond), r.progress.Round(time.Millisecond), r.resyncConsumers, r.resyncStandbys, strings.Join(fs, " "))
		all.merge(r.v)
		inv, ok, fail, unk = inv+r.invoked, ok+r.ok, fail+r.failed, unk+r.unknown
		changes, hist, rows = changes+r.changesChecked, hist+r.historyChecked, rows+r.rowsChecked
		rewinds, tReads, resC, resS, prom = rewinds+r.rewinds, tReads+r.transferReads, resC+r.resyncConsumers, resS+r.resyncStandbys, prom+r.promotions
		reads, dups = reads+r.reads, dups+r.duplicatesSkipped
		if r.err == nil {
			conv = append(conv, r.convergence)
			maxProgress = max(maxProgress, r.progress)
		}
		cups = append(cups, r.catchups...)
		attacks.refused, attacks.succeeded, attacks.skipped = attacks.refused+r.attacks.refused, attacks.succeeded+r.attacks.succeeded, attacks.skipped+r.attacks.skipped
		for k, v := range r.attacks.byName {
			attacks.byName[k] += v
		}
	}
	fmt.Fprintf(&b, "\nwrites: %d invoked, %d ok, %d failed, %d unknown\n", inv, ok, fail, unk)
	fmt.Fprintf(&b, "changes checked: %d applied by consumers (seq order, epochs, keys against the final history); %d acknowledged writes found at their seq in the final history; %d final rows checked against the history on every replica\n", changes, hist, rows)
	fmt.Fprintf(&b, "reads checked: %d consumer reads (%d of them during a full transfer)\n", reads, tReads)
	lostOps := 0
	for _, r := range results {
		lostOps += len(r.v.lostOps)
	}
	fmt.Fprintf(&b, "lost acknowledged writes: %d\n", lostOps)
	if faults[fOwnerDiskLoss] > 0 {
		lostByFault, held := 0, 0
		for _, r := range results {
			lostByFault, held = lostByFault+r.lostByFault, held+r.heldByReplica
		}
		fmt.Fprintf(&b, "owner-disk-loss: %d acknowledged writes lost by the fault (the restored replica never received them; reported, not violations); %d acknowledged writes the replica held checked\n", lostByFault, held)
	}
	fmt.Fprintf(&b, "violations seen: lost: %d  duplicated: %d  out-of-order: %d  stale-epoch: %d  atomicity: %d  phantom: %d  bad reads: %d  diverged: %d  history: %d  split-epoch: %d  grant: %d\n",
		all.counts[vLost], all.counts[vDuplicated], all.counts[vOutOfOrder], all.counts[vStaleEpoch], all.counts[vAtomicity],
		all.counts[vPhantom], all.counts[vRead], all.counts[vDiverged], all.counts[vHistory], all.counts[vSplitEpoch], all.counts[vGrant])
	var acks, gOps, gChecked, gOK, gRuns, rawOK int
	for _, r := range results {
		acks += r.epochAcks
		if g := r.grants; g != nil {
			gRuns++
			gOps += g.writes + g.reads
			gChecked += g.opsChecked
			if g.result == porcupine.Ok {
				gOK++
			}
			if g.raw == porcupine.Ok {
				rawOK++
			}
		}
	}
	fmt.Fprintf(&b, "epochs: %d acknowledged writes checked for one instance per epoch\n", acks)
	fmt.Fprintf(&b, "grant history (porcupine, one register per service): %d grants and confirmed registry reads (%d ops given to porcupine once reads implied by others are dropped), linearizable in %d of %d scenarios (registry reads at face value, i.e. unconfirmed: linearizable in %d of %d)\n",
		gOps, gChecked, gOK, gRuns, rawOK, gRuns)
	fmt.Fprintf(&b, "convergence after the last fault (digests equal): max %s, p99 %s over %d scenarios\n",
		maxDur(conv).Round(time.Millisecond), pct(conv, 0.99).Round(time.Millisecond), len(conv))
	fmt.Fprintf(&b, "catch-up after each fault (every replica at the primary's head): max %s, p99 %s, p50 %s over %d faults\n",
		maxDur(cups).Round(time.Millisecond), pct(cups, 0.99).Round(time.Millisecond), pct(cups, 0.5).Round(time.Millisecond), len(cups))
	fmt.Fprintf(&b, "progress after the last fault (first acknowledged write): max %s (limit 30s)\n", maxProgress.Round(time.Millisecond))
	fmt.Fprintf(&b, "resyncs (full transfers completed): %d by consumers, %d by standbys; promotions seen: %d; duplicate changes received and skipped by consumers: %d\n", resC, resS, prom, dups)
	var fs []string
	for _, k := range slices.Sorted(maps.Keys(faults)) {
		fs = append(fs, fmt.Sprintf("%s %d", k, faults[k]))
	}
	fmt.Fprintf(&b, "faults fired: %s\n", strings.Join(fs, ", "))
	if faults[fAttacker] > 0 {
		var as []string
		for _, k := range slices.Sorted(maps.Keys(attacks.byName)) {
			as = append(as, fmt.Sprintf("%s %d", k, attacks.byName[k]))
		}
		fmt.Fprintf(&b, "attacks (attacker fault): %d refused, %d succeeded, %d skipped; refused: %s\n",
			attacks.refused, attacks.succeeded, attacks.skipped, strings.Join(as, ", "))
	}
	for _, r := range results {
		if r.passed() && len(r.notes) == 0 && len(r.skipped) == 0 && len(r.known) == 0 && len(r.v.known) == 0 {
			continue
		}
		fmt.Fprintf(&b, "\n%s (seed %d):\n", r.name, r.seed)
		if r.err != nil {
			fmt.Fprintf(&b, "  error: %v\n", r.err)
		}
		if t := r.v.total(); t > 0 {
			for _, l := range strings.Split(strings.TrimRight(r.v.String(), "\n"), "\n") {
				fmt.Fprintf(&b, "  %s\n", l)
			}
		}
		for _, f := range r.findings {
			fmt.Fprintf(&b, "  finding: %s\n", f)
		}
		for _, k := range dedupe(r.known) {
			fmt.Fprintf(&b, "  KNOWN ISSUE: %s\n", k)
		}
		for _, k := range slices.Sorted(maps.Keys(r.v.known)) {
			fmt.Fprintf(&b, "  KNOWN ISSUE: %d x %s, e.g.:\n", r.v.known[k], k)
			for _, e := range r.v.knownEx[k] {
				fmt.Fprintf(&b, "    %s\n", e)
			}
		}
		for _, s := range r.skipped {
			fmt.Fprintf(&b, "  skipped: %s\n", s)
		}
		for _, n := range r.notes {
			fmt.Fprintf(&b, "  note: %s\n", n)
		}
		if !r.passed() {
			fmt.Fprintf(&b, "  run dir (logs, apply logs): %s\n", r.dir)
		}
	}
	return b.String()
}

// dedupe drops repeated lines that differ only in their numbers.
func dedupe(lines []string) []string {
	seen := map[string]int{}
	var out []string
	for _, l := range lines {
		k := strings.Map(func(r rune) rune {
			if r >= '0' && r <= '9' || r == '.' {
				return -1
			}
			return r
		}, l)
		if seen[k]++; seen[k] == 1 {
			out = append(out, l)
		}
	}
	for i, l := range out {
		k := strings.Map(func(r rune) rune {
			if r >= '0' && r <= '9' || r == '.' {
				return -1
			}
			return r
		}, l)
		if n := seen[k]; n > 1 {
			out[i] = fmt.Sprintf("%s [seen %d times]", l, n)
		}
	}
	return out
}

func maxDur(ds []time.Duration) time.Duration {
	var m time.Duration
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}

// pct returns the p-quantile (nearest rank) of ds.
func pct(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s))*p+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}
