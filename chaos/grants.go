package chaos

import (
	"bufio"
	"bytes"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// The grant history: which instance holds the primary lease of the owner
// service at which epoch, as the processes saw it, checked for
// linearizability with porcupine against a model of one register per
// service (there is one service here: "stores").
//
// Writes are the grants. A grant of epoch E to instance X is a write
// whose call is the first start of X in the scenario (no grant to X can
// be decided before X ever registered) and whose return is the moment X
// first saw itself primary at E (its grant log, chaosnode -grantlog: it
// learns it from a broker that applied the committed grant, so the
// commit, the write's linearization point, came before). A grant some
// read shows but X never saw (X killed before it heard) gets the return
// of the first read that showed it: a broker's registry holds only
// applied, hence committed, decisions.
//
// Reads are the brokers' registries: every broker reads its registry
// every 20 ms and logs the primary and epoch with the times around the
// read and the age of its newest quorum confirmation (a ReadIndex round,
// see broker/raft.go). The registry is the broker's applied state, which
// Lookup and the topologies serve; it is read without asking the leader
// anything, so it may be stale (a follower that has not applied the newest
// grant yet, a paused leader waking up): such a read is not linearizable
// at the moment it was made. What is linearizable is a confirmed read: a
// confirmation asked at t_a means the broker has applied everything
// committed before t_a, so its state was the register's state at some
// moment between t_a and the read's return. Confirmed reads therefore
// enter the checked history with their call moved back to t_a (the call
// minus the confirmation's age, minus a millisecond of rounding); reads
// with no confirmation are left out. The same reads taken at face value
// (call = the moment of the read) are checked too and only reported: that
// result says whether what Lookup serves happened to be linearizable.

// grantValue is the register's value: the service's primary and epoch
// (Instance "" when a read names no primary).
type grantValue struct {
	Epoch    uint64
	Instance string
}

// grantInput is an operation's input: a grant (write) of V, or a read.
type grantInput struct {
	Write bool
	V     grantValue
}

// grantModel is one register per service: a grant must be above every
// epoch granted before (an epoch is granted once, to one instance); a
// read returns the last grant's epoch and instance (or its epoch and no
// instance: the primary is gone and none took over).
var grantModel = porcupine.Model{
	Init: func() any { return grantValue{} },
	Step: func(state, input, output any) (bool, any) {
		st, in := state.(grantValue), input.(grantInput)
		if in.Write {
			if in.V.Epoch <= st.Epoch {
				return false, st
			}
			return true, in.V
		}
		out := output.(grantValue)
		return out.Epoch == st.Epoch && (out.Instance == "" || out.Instance == st.Instance), st
	},
	DescribeOperation: func(input, output any) string {
		in := input.(grantInput)
		if in.Write {
			return fmt.Sprintf("grant(%d, %s)", in.V.Epoch, in.V.Instance)
		}
		out := output.(grantValue)
		return fmt.Sprintf("read() -> (%d, %s)", out.Epoch, out.Instance)
	},
}

// grantRead is one registry read of a broker's grant log.
type grantRead struct {
	broker      string
	call, ret   int64 // unix ns
	confirmedMs int64 // age of the broker's newest confirmation; -1: none
	state       string
	v           grantValue
	addr        string
}

// grantHistory is what the grant logs of one scenario hold.
type grantHistory struct {
	starts  map[string]int64     // owner -> its first start (unix ns)
	granted map[grantValue]int64 // grant -> when its instance first saw it
	reads   []grantRead
	foreign []string          // reads naming an instance at an address that is not its own
	addrs   map[string]string // owner -> its address
}

// grantResult is the porcupine check of a grant history.
type grantResult struct {
	writes, synthesized     int // grants, of which only reads showed
	opsChecked              int // ops given to porcupine (grants, and reads not implied by others)
	rawOpsChecked           int
	reads, unconfirmed      int // reads checked (confirmed), reads left out (none)
	result                  porcupine.CheckResult
	raw                     porcupine.CheckResult // every read at face value (reported only)
	rawStale                []string              // examples of stale reads at face value
	rawStaleN               int                   // how many reads at face value were stale
	stale                   []string              // examples of stale confirmed reads (a failing check)
	foreign                 []string
	checkTook, rawCheckTook time.Duration
}

func (g grantResult) String() string {
	return fmt.Sprintf("%d grants (%d of them seen only by reads) and %d confirmed registry reads (%d unconfirmed left out): %d ops checked after dropping implied reads: %s in %s; every read at face value (%d ops): %s in %s",
		g.writes, g.synthesized, g.reads, g.unconfirmed, g.opsChecked, g.result, g.checkTook.Round(time.Millisecond), g.rawOpsChecked, g.raw, g.rawCheckTook.Round(time.Millisecond))
}

// grantCheckTimeout bounds each porcupine run.
const grantCheckTimeout = 60 * time.Second

// loadGrants reads the grant logs of the scenario's owners and brokers.
func loadGrants(cl *cluster) (*grantHistory, error) {
	g := &grantHistory{starts: map[string]int64{}, granted: map[grantValue]int64{}, addrs: map[string]string{}}
	for _, o := range cl.owners {
		g.addrs[o.name] = o.addr
		if err := g.readOwnerLog(o.name, o.grantLogPath()); err != nil {
			return nil, err
		}
	}
	for _, b := range cl.brokers {
		if err := g.readBrokerLog(b.name, b.grantLogPath()); err != nil {
			return nil, err
		}
	}
	return g, nil
}

// grantLines calls fn with the fields of every complete line of the file.
func grantLines(path string, fn func(f []string) error) error {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if i := bytes.LastIndexByte(b, '\n'); i+1 < len(b) {
		b = b[:i+1] // a line cut short by a SIGKILL
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	line := 0
	for sc.Scan() {
		line++
		if f := strings.Fields(sc.Text()); len(f) > 0 {
			if err := fn(f); err != nil {
				return fmt.Errorf("%s line %d: %w", path, line, err)
			}
		}
	}
	return sc.Err()
}

func parseInts(f []string, idx ...int) ([]int64, error) {
	out := make([]int64, len(idx))
	for i, j := range idx {
		if j >= len(f) {
			return nil, fmt.Errorf("short record %q", strings.Join(f, " "))
		}
		x, err := strconv.ParseInt(f[j], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("record %q: %w", strings.Join(f, " "), err)
		}
		out[i] = x
	}
	return out, nil
}

func (g *grantHistory) readOwnerLog(name, path string) error {
	return grantLines(path, func(f []string) error {
		switch f[0] {
		case RecGrantStart:
			x, err := parseInts(f, 1)
			if err != nil {
				return err
			}
			if s, ok := g.starts[name]; !ok || x[0] < s {
				g.starts[name] = x[0]
			}
		case RecGrantRole:
			x, err := parseInts(f, 1, 3)
			if err != nil {
				return err
			}
			if f[2] != "primary" {
				return nil
			}
			v := grantValue{Epoch: uint64(x[1]), Instance: name}
			if t, ok := g.granted[v]; !ok || x[0] < t {
				g.granted[v] = x[0]
			}
		default:
			return fmt.Errorf("unknown record %q", f[0])
		}
		return nil
	})
}

func (g *grantHistory) readBrokerLog(name, path string) error {
	return grantLines(path, func(f []string) error {
		if f[0] != RecGrantRead || len(f) < 8 {
			return fmt.Errorf("unknown record %q", strings.Join(f, " "))
		}
		x, err := parseInts(f, 1, 2, 3, 5)
		if err != nil {
			return err
		}
		r := grantRead{broker: name, call: x[0], ret: x[1], confirmedMs: x[2], state: f[4],
			v: grantValue{Epoch: uint64(x[3]), Instance: strings.TrimPrefix(f[6], "-")}, addr: strings.TrimPrefix(f[7], "-")}
		if r.v.Instance != "" {
			want, known := g.addrs[r.v.Instance]
			if !known || r.addr != "" && r.addr != want {
				g.foreign = append(g.foreign, fmt.Sprintf("broker %s's registry names %s at %q primary at epoch %d (the instance's process listens at %q)",
					name, r.v.Instance, r.addr, r.v.Epoch, want))
			}
		}
		g.reads = append(g.reads, r)
		return nil
	})
}

// check runs porcupine on the history: the confirmed reads (the verdict)
// and every read at face value (reported).
func (g *grantHistory) check() grantResult {
	var res grantResult
	res.foreign = dedupe(g.foreign)
	// Grants: seen by their instance, or only by reads.
	granted := make(map[grantValue]int64, len(g.granted))
	for v, t := range g.granted {
		granted[v] = t
	}
	for _, r := range g.reads {
		if r.v.Instance == "" || r.v.Epoch == 0 {
			continue
		}
		if _, owner := g.starts[r.v.Instance]; !owner {
			continue // foreign: reported above
		}
		if _, seen := g.granted[r.v]; seen {
			continue
		}
		if t, ok := granted[r.v]; !ok || r.ret < t {
			granted[r.v] = r.ret
		}
	}
	var writes []porcupine.Operation
	for _, v := range slices.SortedFunc(maps.Keys(granted), cmpGrant) {
		if _, seen := g.granted[v]; !seen {
			res.synthesized++
		}
		call := g.starts[v.Instance]
		ret := granted[v]
		writes = append(writes, porcupine.Operation{ClientId: 0, Input: grantInput{Write: true, V: v}, Call: call, Output: grantValue{}, Return: max(ret, call)})
	}
	res.writes = len(writes)
	// Reads, per broker in the order it made them.
	var checkedReads, rawReads [][]porcupine.Operation
	var lastBroker string
	for i, r := range g.reads {
		if i == 0 || r.broker != lastBroker {
			checkedReads, rawReads = append(checkedReads, nil), append(rawReads, nil)
			lastBroker = r.broker
		}
		op := porcupine.Operation{ClientId: len(rawReads), Input: grantInput{}, Call: r.call, Output: r.v, Return: r.ret}
		rawReads[len(rawReads)-1] = append(rawReads[len(rawReads)-1], op)
		if r.confirmedMs < 0 {
			res.unconfirmed++
			continue
		}
		op.Call = r.call - (r.confirmedMs+1)*int64(time.Millisecond)
		checkedReads[len(checkedReads)-1] = append(checkedReads[len(checkedReads)-1], op)
		res.reads++
	}
	checked, raw := slices.Clone(writes), slices.Clone(writes)
	for i := range rawReads {
		checked = append(checked, impliedReadsDropped(checkedReads[i])...)
		raw = append(raw, impliedReadsDropped(rawReads[i])...)
	}
	res.opsChecked, res.rawOpsChecked = len(checked), len(raw)
	began := time.Now()
	res.result = porcupine.CheckOperationsTimeout(grantModel, checked, grantCheckTimeout)
	res.checkTook = time.Since(began)
	if res.result != porcupine.Ok {
		_, res.stale = staleReads(checked, 5)
	}
	began = time.Now()
	res.raw = porcupine.CheckOperationsTimeout(grantModel, raw, grantCheckTimeout)
	res.rawCheckTook = time.Since(began)
	if res.raw != porcupine.Ok {
		res.rawStaleN, res.rawStale = staleReads(raw, 5)
	}
	return res
}

// impliedReadsDropped thins one broker's reads (in the order it made
// them): of a run of consecutive reads that returned the same value, it
// keeps the first and the last, and the reads between whose interval
// does not lie between theirs. A dropped read r2 (between r1 and r3 of
// the run, with ret2 >= ret1 and call2 <= call3) is implied by them: in
// the model a value's epoch is granted once and only grows, so the value
// holds over one interval of the linearization, which reaches back to
// ret1 or before (r1) and on to call3 or after (r3), hence meets
// [call2, ret2]. Porcupine's search grows with the reads that overlap;
// this keeps the check to a few ops per value per broker.
func impliedReadsDropped(reads []porcupine.Operation) []porcupine.Operation {
	var out []porcupine.Operation
	for i := 0; i < len(reads); {
		j := i
		for j+1 < len(reads) && reads[j+1].Output == reads[i].Output {
			j++
		}
		first, last := reads[i], reads[j]
		out = append(out, first)
		for k := i + 1; k < j; k++ {
			if r := reads[k]; r.Return < first.Return || r.Call > last.Call {
				out = append(out, r)
			}
		}
		if j > i {
			out = append(out, last)
		}
		i = j + 1
	}
	return out
}

func cmpGrant(a, b grantValue) int {
	if a.Epoch != b.Epoch {
		if a.Epoch < b.Epoch {
			return -1
		}
		return 1
	}
	return strings.Compare(a.Instance, b.Instance)
}

// staleReads explains a history porcupine refused, in the usual way it
// goes wrong: a read that returned an epoch below one a grant had already
// returned before the read was called (up to n examples); and two grants
// of one epoch. It returns how many reads were stale so.
func staleReads(ops []porcupine.Operation, n int) (stale int, out []string) {
	byEpoch := map[uint64][]string{}
	for _, w := range ops {
		in := w.Input.(grantInput)
		if in.Write {
			byEpoch[in.V.Epoch] = append(byEpoch[in.V.Epoch], in.V.Instance)
		}
	}
	for e, insts := range byEpoch {
		if len(insts) > 1 && len(out) < n {
			out = append(out, fmt.Sprintf("epoch %d granted to %s", e, strings.Join(insts, " and ")))
		}
	}
	for _, r := range ops {
		if r.Input.(grantInput).Write {
			continue
		}
		got := r.Output.(grantValue)
		for _, w := range ops {
			in := w.Input.(grantInput)
			if in.Write && w.Return < r.Call && in.V.Epoch > got.Epoch {
				stale++
				if len(out) < n {
					out = append(out, fmt.Sprintf("a read in [%s, %s] returned (%d, %s), but grant (%d, %s) had returned at %s",
						fmtNs(r.Call), fmtNs(r.Return), got.Epoch, got.Instance, in.V.Epoch, in.V.Instance, fmtNs(w.Return)))
				}
				break
			}
		}
	}
	return stale, out
}

func fmtNs(ns int64) string { return time.Unix(0, ns).UTC().Format("15:04:05.000000") }

// checkGrants turns a grant check into violations: an illegal (or, past
// its time limit, unknown) confirmed history, and a registry naming an
// instance at another process's address.
func checkGrants(v *violations, g grantResult) {
	switch g.result {
	case porcupine.Ok:
	case porcupine.Illegal:
		v.add(vGrant, "the grant history (%d ops) is not linearizable: %s", g.opsChecked, strings.Join(g.stale, "; "))
	default:
		v.add(vGrant, "porcupine could not decide the grant history (%d ops) within %s: %s", g.opsChecked, grantCheckTimeout, strings.Join(g.stale, "; "))
	}
	for _, f := range g.foreign {
		v.add(vGrant, "%s", f)
	}
}
