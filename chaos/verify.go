package chaos

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// violations collects what a check found, with a few examples per kind.
type violations struct {
	counts   map[string]int
	examples map[string][]string
	// known issues: counted and reported, not failing the run unless
	// REPLMESH_CHAOS_STRICT is set.
	known   map[string]int
	knownEx map[string][]string
	lostOps map[int]bool // ids of the acknowledged writes found missing
}

func newViolations() *violations {
	return &violations{counts: map[string]int{}, examples: map[string][]string{},
		known: map[string]int{}, knownEx: map[string][]string{}, lostOps: map[int]bool{}}
}

// truth is what the checks compare against: the final primary's history.
type truth struct {
	h *History
	// restores are the owner-disk-losses of the run: the changes they
	// lost are not held against the final history (restore.go).
	restores []restorePoint
}

// lost records that acknowledged write o is missing (at where). Since a
// primary with min_sync_standbys acknowledges only under a lease a broker
// confirmed (replica/lease.go), no window excuses it: even a write
// acknowledged by a primary cut off from the brokers must survive.
func (v *violations) lost(o *op, format string, args ...any) {
	v.lostOps[o.id] = true
	v.add(vLost, format, args...)
}

// Kinds of violations (all must stay 0).
const (
	vLost       = "lost"         // an acknowledged write missing from the final state or history
	vDuplicated = "duplicated"   // a change applied twice, or a unique write twice in the history
	vOutOfOrder = "out-of-order" // a gap or a step back in a consumer's applied seqs, epochs going down
	vStaleEpoch = "stale-epoch"  // a change applied with an epoch the final history does not give its seq
	vAtomicity  = "atomicity"    // part of one Apply visible or applied without the rest
	vPhantom    = "phantom"      // a row no write explains, or a failed write applied
	vRead       = "read"         // a consumer read that a consistent replica never returns
	vDiverged   = "diverged"     // a replica's rows differ from the primary's after convergence
	vHistory    = "history"      // the primary's own log is inconsistent
	vSplitEpoch = "split-epoch"  // two instances acknowledged writes at the same epoch
	vGrant      = "grant"        // the grant history is not linearizable, or a grant went to a process that is not the instance
)

func (v *violations) add(kind, format string, args ...any) {
	v.counts[kind]++
	if len(v.examples[kind]) < 5 {
		v.examples[kind] = append(v.examples[kind], fmt.Sprintf(format, args...))
	}
}

func (v *violations) total() int {
	n := 0
	for _, c := range v.counts {
		n += c
	}
	return n
}

func (v *violations) merge(o *violations) {
	for k, c := range o.known {
		v.known[k] += c
	}
	for k, ex := range o.knownEx {
		for _, e := range ex {
			if len(v.knownEx[k]) < 5 {
				v.knownEx[k] = append(v.knownEx[k], e)
			}
		}
	}
	for k, c := range o.counts {
		v.counts[k] += c
	}
	for k, ex := range o.examples {
		for _, e := range ex {
			if len(v.examples[k]) < 5 {
				v.examples[k] = append(v.examples[k], e)
			}
		}
	}
}

func (v *violations) String() string {
	var b strings.Builder
	kinds := make([]string, 0, len(v.counts))
	for k := range v.counts {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	for _, k := range kinds {
		fmt.Fprintf(&b, "%s: %d\n", k, v.counts[k])
		for _, e := range v.examples[k] {
			fmt.Fprintf(&b, "    %s\n", e)
		}
	}
	return b.String()
}

// rowMap turns a dump into a map.
func rowMap(rows []Row) map[string][]byte {
	m := make(map[string][]byte, len(rows))
	for _, r := range rows {
		m[r.Key] = r.Value
	}
	return m
}

// checkState checks a table's final rows (where) against the write
// history: every acknowledged write is there (or, for an overwritten key,
// a version no older), no failed write is, every Apply is all or nothing,
// and every row comes from a write that may have happened.
func checkState(v *violations, where string, ops []*op, rows map[string][]byte, t *truth) {
	known := map[string]bool{} // keys some not-failed write wrote
	type version struct {
		o     *op
		value []byte
		del   bool
	}
	over := map[string][]version{}
	// The values written by writes that may have happened: a failed write
	// retried with the same rows (the setup's mustWrite) is explained by
	// the retry, not a phantom.
	written := map[string][][]byte{}
	for _, o := range ops {
		if o.kind == opOverwrite || o.class == ClassFailed {
			continue
		}
		for _, w := range o.writes {
			written[w.Key] = append(written[w.Key], w.Value)
		}
	}
	retried := func(key string, value []byte) bool {
		for _, x := range written[key] {
			if bytes.Equal(x, value) {
				return true
			}
		}
		return false
	}
	for _, o := range ops {
		if o.kind == opOverwrite {
			w := o.writes[0]
			over[o.key] = append(over[o.key], version{o: o, value: w.Value, del: w.Delete})
			if o.class != ClassFailed {
				known[o.key] = true
			}
			continue
		}
		present, unexplained := 0, 0
		for _, w := range o.writes {
			got, ok := rows[w.Key]
			if ok && bytes.Equal(got, w.Value) {
				present++
				if !retried(w.Key, w.Value) {
					unexplained++
				}
			}
			if o.class != ClassFailed {
				known[w.Key] = true
			}
		}
		switch {
		case o.kind == opSentinel:
			if o.class == ClassOK && present != len(o.writes) {
				v.add(vLost, "%s: acknowledged sentinel write (op %d, seq %d) missing", where, o.id, o.seq)
			}
		case o.class == ClassOK && present != len(o.writes):
			v.lost(o, "%s: acknowledged %s write of %s (op %d, seq %d, to %s) missing: %d of %d rows there",
				where, o.kind, o.writes[0].Key, o.id, o.seq, o.node, present, len(o.writes))
		case o.class == ClassFailed:
			if unexplained == 0 {
				break // absent, or every row there is a retry's
			}
			v.add(vPhantom, "%s: failed %s write of %s (op %d, to %s: %s) is there", where, o.kind, o.writes[0].Key, o.id, o.node, o.err)
		case present != 0 && present != len(o.writes):
			v.add(vAtomicity, "%s: %d of the %d rows of %s write %s (op %d, %s)", where, present, len(o.writes), o.kind, o.writes[0].Key, o.id, o.class)
		}
	}
	for k, vs := range over {
		// The last acknowledged version.
		acked := -1
		for i, x := range vs {
			if x.o.class == ClassOK {
				acked = i
			}
		}
		got, ok := rows[k]
		match := func(x version) bool {
			if x.del {
				return !ok
			}
			return ok && bytes.Equal(got, x.value)
		}
		good := acked < 0 && !ok // never acknowledged, and absent
		tainted := false
		for i, x := range vs {
			tainted = tainted || x.o.tainted
			if x.o.class != ClassFailed && (i >= acked || x.o.tainted) && match(x) {
				good = true
			}
		}
		if !good && tainted {
			for _, x := range vs {
				if x.o.class != ClassFailed && match(x) {
					good = true
				}
			}
		}
		if !good {
			last := "none"
			if acked >= 0 {
				last = fmt.Sprintf("version %d (op %d, seq %d)", vs[acked].o.version, vs[acked].o.id, vs[acked].o.seq)
				v.lostOps[vs[acked].o.id] = true
			}
			v.add(vLost, "%s: overwritten key %s holds %q (present %v); last acknowledged: %s", where, k, got, ok, last)
		}
	}
	for k := range rows {
		if !known[k] {
			v.add(vPhantom, "%s: row %s was written by no write that may have happened", where, k)
		}
	}
}

// checkEpochs checks that no two distinct instances acknowledged a write
// at the same epoch: an epoch is granted to one instance, ever, and only
// the holder of an epoch's lease may acknowledge writes at it. It returns
// how many acknowledged writes carried their epoch (the others' role
// moved while they ran).
func checkEpochs(v *violations, ops []*op) (checked int) {
	type ack struct {
		node string
		id   int
		seq  uint64
	}
	first := map[uint64]ack{}
	for _, o := range ops {
		if o.class != ClassOK || o.epoch == 0 {
			continue
		}
		checked++
		a, ok := first[o.epoch]
		if !ok {
			first[o.epoch] = ack{o.node, o.id, o.seq}
			continue
		}
		if a.node != o.node {
			v.add(vSplitEpoch, "epoch %d: %s acknowledged op %d (seq %d) and %s acknowledged op %d (seq %d)",
				o.epoch, a.node, a.id, a.seq, o.node, o.id, o.seq)
		}
	}
	return checked
}

// checkHistory checks the final primary's change log: contiguous, epochs
// as its epoch history says and never going down, every acknowledged write
// at the seq it was acknowledged with, every unique key once, and (when
// the log is complete) replaying it gives the primary's rows.
func checkHistory(v *violations, t *truth, ops []*op, rows map[string][]byte) (checked int) {
	h := t.h
	if h == nil {
		return 0
	}
	bySeq := make(map[uint64]*HistoryChange, len(h.Changes))
	var prevEpoch uint64
	seen := map[string]uint64{}
	for i := range h.Changes {
		c := &h.Changes[i]
		bySeq[c.Seq] = c
		if want := h.Epochs.EpochOf(c.Seq); c.Epoch != want {
			v.add(vHistory, "history: seq %d has epoch %d, its epoch history says %d", c.Seq, c.Epoch, want)
		}
		if c.Epoch < prevEpoch {
			v.add(vHistory, "history: seq %d of epoch %d after epoch %d", c.Seq, c.Epoch, prevEpoch)
		}
		prevEpoch = c.Epoch
		if strings.HasPrefix(c.Key, "u/") || strings.HasPrefix(c.Key, GroupPrefix) || strings.HasPrefix(c.Key, "b/") {
			if s, dup := seen[c.Key]; dup {
				v.add(vDuplicated, "history: %s written at seq %d and again at %d", c.Key, s, c.Seq)
			}
			seen[c.Key] = c.Seq
		}
	}
	for _, o := range ops {
		if o.class != ClassOK {
			continue
		}
		if o.seq < h.First || o.seq > h.Head {
			continue // before the log this instance holds
		}
		checked++
		c := bySeq[o.seq]
		w := o.writes[len(o.writes)-1]
		if c == nil || c.Key != w.Key || c.Delete != w.Delete || (!w.Delete && !bytes.Equal(c.Value, w.Value)) {
			got := "nothing"
			if c != nil {
				got = fmt.Sprintf("%s (epoch %d)", c.Key, c.Epoch)
			}
			v.lost(o, "history: acknowledged write of %s (op %d, to %s) at seq %d, the history has %s there", w.Key, o.id, o.node, o.seq, got)
		}
	}
	if h.Complete {
		replay := map[string][]byte{}
		for _, c := range h.Changes {
			if c.Delete {
				delete(replay, c.Key)
			} else {
				replay[c.Key] = c.Value
			}
		}
		if !sameRows(replay, rows) {
			v.add(vHistory, "history: replaying the primary's log (%d changes) does not give its rows (%d rows vs %d)", len(h.Changes), len(replay), len(rows))
		}
	}
	return checked
}

func sameRows(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, va := range a {
		vb, ok := b[k]
		if !ok || !bytes.Equal(va, vb) {
			return false
		}
	}
	return true
}

// applyStats is what one consumer's apply log says.
type applyStats struct {
	changes       int // C records
	events        int
	resets        int // R records: full transfers
	rewinds       int // resets to a lower seq (a replica holding changes the history lost)
	transferReads int // T records
	starts, wipes int
}

// appliedChange is one C record.
type appliedChange struct {
	seq, epoch uint64
	del        bool
	key        string
}

// checkApplyLog reads a consumer's apply log: within each run of the
// replica (between starts, transfers and wipes) applied seqs go up by
// exactly one, epochs never go down, every event ends on a commit group's
// end; every applied change agrees with the final history (its epoch, and
// its key when the history holds that seq); and it carries the reader's
// violations.
func checkApplyLog(v *violations, name, path string, t *truth) (applyStats, error) {
	h := t.h
	var st applyStats
	b, err := os.ReadFile(path)
	if err != nil {
		return st, err
	}
	if i := bytes.LastIndexByte(b, '\n'); i+1 < len(b) {
		b = b[:i+1] // a record cut short by a SIGKILL
	}
	var bySeq map[uint64]*HistoryChange
	if h != nil {
		bySeq = make(map[uint64]*HistoryChange, len(h.Changes))
		for i := range h.Changes {
			bySeq[h.Changes[i].Seq] = &h.Changes[i]
		}
	}
	var last, lastEpoch uint64
	midGroup := false // the last change did not end its commit group
	// The changes of the current event, checked against the final history
	// at its end record, which carries the time of the apply.
	type pendingChange struct {
		c     appliedChange
		where string
	}
	var pending []pendingChange
	checkPending := func(at time.Time) {
		for _, p := range pending {
			c := p.c
			if h == nil || c.seq > h.Head {
				continue
			}
			if t.lostByFault(c.seq, c.epoch) {
				continue // an owner-disk-loss lost it (restore.go)
			}
			want := h.Epochs.EpochOf(c.seq)
			if want == 0 {
				continue // the final history's epochs begin after seq: a restored owner's begins at the restored seq (restore.go)
			}
			hc := bySeq[c.seq]
			bad := c.epoch != want || hc != nil && (hc.Key != c.key || hc.Delete != c.del)
			switch {
			case !bad:
			case c.epoch != want:
				v.add(vStaleEpoch, "%s: seq %d applied with epoch %d; the final history has epoch %d there", p.where, c.seq, c.epoch, want)
			default:
				v.add(vStaleEpoch, "%s: seq %d applied as %s (epoch %d); the final history has %s (epoch %d) there",
					p.where, c.seq, c.key, c.epoch, hc.Key, hc.Epoch)
			}
		}
		pending = pending[:0]
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	line := 0
	num := func(f []string, i int) uint64 {
		if i >= len(f) {
			return 0
		}
		x, _ := strconv.ParseUint(f[i], 10, 64)
		return x
	}
	for sc.Scan() {
		line++
		text := sc.Text()
		f := strings.Fields(text)
		if len(f) == 0 {
			continue
		}
		where := fmt.Sprintf("%s apply log line %d", name, line)
		switch f[0] {
		case RecStart:
			st.starts++
			s, e := num(f, 1), num(f, 2)
			if s < last {
				v.add(vOutOfOrder, "%s: restarted at seq %d, but it had applied up to %d", where, s, last)
			}
			last, lastEpoch, midGroup = s, e, false
		case RecWipe:
			st.wipes++
			last, lastEpoch, midGroup = 0, 0, false
		case RecReset:
			st.resets++
			s, e := num(f, 1), num(f, 2)
			if s < last {
				st.rewinds++
			}
			last, lastEpoch, midGroup = s, e, false
		case RecChange:
			if len(f) < 6 {
				v.add(vOutOfOrder, "%s: short record %q", where, text)
				continue
			}
			st.changes++
			c := appliedChange{seq: num(f, 1), epoch: num(f, 2), del: f[4] == "d", key: f[5]}
			switch {
			case c.seq == last+1:
			case c.seq <= last:
				v.add(vDuplicated, "%s: seq %d applied again (had %d)", where, c.seq, last)
			default:
				v.add(vOutOfOrder, "%s: seq %d applied after %d (gap)", where, c.seq, last)
			}
			if c.epoch < lastEpoch {
				v.add(vOutOfOrder, "%s: seq %d of epoch %d applied after epoch %d", where, c.seq, c.epoch, lastEpoch)
			}
			last, lastEpoch = max(last, c.seq), max(lastEpoch, c.epoch)
			midGroup = f[3] != "1"
			pending = append(pending, pendingChange{c, where})
		case RecEnd:
			st.events++
			if midGroup {
				v.add(vAtomicity, "%s: an applied batch ends at seq %d in the middle of a commit group", where, num(f, 1))
			}
			at := time.Time{}
			if ns := num(f, 2); ns > 0 {
				at = time.Unix(0, int64(ns))
			}
			checkPending(at)
		case RecTransferRead:
			st.transferReads++
		case RecViolation:
			v.add(vRead, "%s: %s", name, strings.TrimPrefix(text, RecViolation+" "))
		default:
			v.add(vOutOfOrder, "%s: unknown record %q", where, text)
		}
	}
	checkPending(time.Time{}) // an event cut short by a SIGKILL
	return st, sc.Err()
}

// countLines counts the lines of the file at path that contain s.
func countLines(path, s string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	return bytes.Count(b, []byte(s))
}
