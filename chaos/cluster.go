package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/replmesh/replmesh/internal/freeport"
)

// spec is the shape of a cluster.
type spec struct {
	brokers, owners, consumers int
	// retention caps the owners' change logs (0: the default), so that a
	// consumer that was away long enough gets a full transfer over the
	// replica it holds.
	retention uint64
	// consumerListen gives each consumer a replication listener, so that
	// its replica may serve a restore of the owner (owner-disk-loss).
	consumerListen bool
}

// cluster is the set of processes of one scenario: brokers b1.., owner
// instances o1.. of service "stores" and consumers c1.. of its table.
type cluster struct {
	logf func(format string, args ...any)
	sp   spec
	root string // the run's directory
	bin  string // the chaosnode binary
	net  *realNet
	pki  *pki // nil: plaintext (REPLMESH_CHAOS_TLS=0)

	brokers, owners, consumers []*node

	mu      sync.Mutex
	links   map[linkKey]LinkFault // faults of the links between nodes (portable level and slow links)
	primary *node                 // the monitor's latest view
	epoch   uint64
	roles   map[string]string // owner -> its last reported role
	statusN int
	monStop chan struct{}
	monDone chan struct{}
	mon     monitorStats
}

// monitorStats is what the monitor saw over the run.
type monitorStats struct {
	promotions int      // times the primary (highest epoch) changed
	splitBrain []string // two primaries at the same epoch
	maxEpoch   uint64
}

// linkKey names the link from a node to a destination address.
type linkKey struct {
	from string
	to   string
}

// newCluster lays out the nodes; nothing runs yet.
func newCluster(root, bin string, sp spec, rn *realNet, logf func(string, ...any)) (*cluster, error) {
	cl := &cluster{logf: logf, sp: sp, root: root, bin: bin, net: rn, links: map[linkKey]LinkFault{}, roles: map[string]string{}}
	if tlsOn() {
		p, err := newPKI(root)
		if err != nil {
			return nil, fmt.Errorf("certificates: %w", err)
		}
		cl.pki = p
	}
	port := func() (int, error) {
		if rn != nil {
			return 0, nil
		}
		return freeport.Pick()
	}
	mk := func(role, name string) (*node, error) {
		n := &node{cl: cl, name: name, role: role, dir: filepath.Join(root, name), logDir: filepath.Join(root, "logs")}
		if rn != nil {
			n.ip = rn.addNode(name)
		}
		sec, err := cl.pki.securityFlags(role, name, rn != nil)
		if err != nil {
			return nil, err
		}
		n.sec = sec
		switch role {
		case RoleBroker:
			p1, err := port()
			if err != nil {
				return nil, err
			}
			p2, err := port()
			if err != nil {
				return nil, err
			}
			n.addr, n.gossip = cl.hostPort(n, p1, 7400), cl.hostPort(n, p2, 7401)
		case RoleOwner:
			p, err := port()
			if err != nil {
				return nil, err
			}
			n.addr = cl.hostPort(n, p, 7500)
		case RoleConsumer:
			if sp.consumerListen {
				p, err := port()
				if err != nil {
					return nil, err
				}
				n.addr = cl.hostPort(n, p, 7500)
			}
		}
		return n, nil
	}
	for i := 1; i <= sp.brokers; i++ {
		n, err := mk(RoleBroker, fmt.Sprintf("b%d", i))
		if err != nil {
			return nil, err
		}
		cl.brokers = append(cl.brokers, n)
	}
	for i := 1; i <= sp.owners; i++ {
		n, err := mk(RoleOwner, fmt.Sprintf("o%d", i))
		if err != nil {
			return nil, err
		}
		cl.owners = append(cl.owners, n)
	}
	for i := 1; i <= sp.consumers; i++ {
		n, err := mk(RoleConsumer, fmt.Sprintf("c%d", i))
		if err != nil {
			return nil, err
		}
		cl.consumers = append(cl.consumers, n)
	}
	return cl, nil
}

func (cl *cluster) hostPort(n *node, port, fixed int) string {
	if cl.net != nil {
		return net.JoinHostPort(n.ip, strconv.Itoa(fixed))
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

func (cl *cluster) all() []*node {
	return slices.Concat(cl.brokers, cl.owners, cl.consumers)
}

func (cl *cluster) components() []*node { return slices.Concat(cl.owners, cl.consumers) }

func addrsOf(ns []*node) []string {
	var out []string
	for _, n := range ns {
		out = append(out, n.addr)
	}
	return out
}

func (cl *cluster) netnsOf(n *node) string {
	if cl.net == nil {
		return ""
	}
	return cl.net.nsName(n.name)
}

// args are the chaosnode flags of n.
func (cl *cluster) args(n *node) []string {
	a := []string{"-role", n.role, "-name", n.name, "-loglevel", "info"}
	a = append(a, n.sec...)
	switch n.role {
	case RoleBroker:
		var join []string
		for _, b := range cl.brokers {
			if b != n && (b.runs() > 0 || n.runs() > 1) {
				join = append(join, b.gossip)
			}
		}
		a = append(a, "-dir", n.dir, "-listen", n.addr, "-gossip", n.gossip, "-grantlog", n.grantLogPath())
		if len(join) > 0 {
			a = append(a, "-join", strings.Join(join, ","))
		}
	case RoleOwner:
		a = append(a, "-dir", n.dir, "-listen", n.addr, "-brokers", strings.Join(addrsOf(cl.brokers), ","), "-grantlog", n.grantLogPath())
		if n.inMemory {
			a = append(a, "-inmemory")
		}
		if cl.sp.retention > 0 {
			a = append(a, "-retention", strconv.FormatUint(cl.sp.retention, 10))
		}
	case RoleConsumer:
		a = append(a, "-dir", n.dir, "-brokers", strings.Join(addrsOf(cl.brokers), ","), "-applylog", n.applyLogPath())
		if n.addr != "" {
			a = append(a, "-listen", n.addr)
		}
	}
	if fs := cl.linkFaults(n); len(fs) > 0 {
		b, _ := json.Marshal(fs)
		a = append(a, "-links", string(b))
	}
	n.mu.Lock()
	if f := n.startFrames; f != nil {
		b, _ := json.Marshal(f)
		a = append(a, "-frames", string(b))
	}
	n.mu.Unlock()
	return a
}

func (n *node) runs() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.nruns
}

// linkFaults are the faults of n's outgoing links that are set now.
func (cl *cluster) linkFaults(n *node) []LinkFault {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	var out []LinkFault
	for k, f := range cl.links {
		if k.from == n.name && (f.Paused || f.Delay > 0 || f.Rate > 0) {
			out = append(out, f)
		}
	}
	return out
}

// peers are the nodes n dials: components dial the brokers, consumers and
// owners dial the owners (a standby follows the primary).
func (cl *cluster) peers(n *node) []*node {
	switch n.role {
	case RoleOwner:
		var out []*node
		for _, o := range cl.owners {
			if o != n {
				out = append(out, o)
			}
		}
		return append(out, cl.brokers...)
	case RoleConsumer:
		return slices.Concat(cl.owners, cl.brokers)
	}
	return nil
}

// setLink sets the faults of n's link to addr, now if n runs and at its
// next start otherwise.
func (cl *cluster) setLink(ctx context.Context, n *node, f LinkFault) error {
	cl.mu.Lock()
	st := f
	st.Cut = false
	cl.links[linkKey{n.name, f.Addr}] = st
	cl.mu.Unlock()
	if !n.up() {
		return nil
	}
	_, err := n.call(ctx, Request{Op: OpLink, Link: &f})
	if errors.Is(err, errDown) {
		return nil
	}
	return err
}

// link returns the faults set on n's link to addr.
func (cl *cluster) link(n *node, addr string) LinkFault {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	f := cl.links[linkKey{n.name, addr}]
	f.Addr = addr
	return f
}

// partition blackholes the traffic between a and b (both ways) until heal.
func (cl *cluster) partition(ctx context.Context, a, b *node) error {
	if cl.net != nil {
		return cl.net.block(a.name, b.name)
	}
	return cl.pauseBetween(ctx, a, b, true)
}

// heal ends a partition between a and b.
func (cl *cluster) heal(ctx context.Context, a, b *node) error {
	if cl.net != nil {
		return cl.net.unblock(a.name, b.name)
	}
	return cl.pauseBetween(ctx, a, b, false)
}

func (cl *cluster) pauseBetween(ctx context.Context, a, b *node, paused bool) error {
	for _, x := range [][2]*node{{a, b}, {b, a}} {
		from, to := x[0], x[1]
		if !slices.Contains(cl.peers(from), to) {
			continue
		}
		f := cl.link(from, to.addr)
		f.Paused = paused
		if err := cl.setLink(ctx, from, f); err != nil {
			return err
		}
	}
	return nil
}

// cut resets every open connection between a and b.
func (cl *cluster) cut(ctx context.Context, a, b *node) error {
	for _, x := range [][2]*node{{a, b}, {b, a}} {
		from, to := x[0], x[1]
		if !slices.Contains(cl.peers(from), to) {
			continue
		}
		f := cl.link(from, to.addr)
		f.Cut = true
		if err := cl.setLink(ctx, from, f); err != nil {
			return err
		}
	}
	return nil
}

// healAll removes every link fault and every partition.
func (cl *cluster) healAll(ctx context.Context) error {
	cl.mu.Lock()
	keys := make([]linkKey, 0, len(cl.links))
	for k := range cl.links {
		keys = append(keys, k)
	}
	cl.mu.Unlock()
	byName := map[string]*node{}
	for _, n := range cl.all() {
		byName[n.name] = n
	}
	var errs []error
	for _, k := range keys {
		errs = append(errs, cl.setLink(ctx, byName[k.from], LinkFault{Addr: k.to}))
	}
	if cl.net != nil {
		errs = append(errs, cl.net.unblockAll())
	}
	return errors.Join(errs...)
}

// start starts the whole cluster: brokers, then the owners (the first
// becomes primary), then the consumers.
func (cl *cluster) start(ctx context.Context) error {
	for _, b := range cl.brokers {
		if err := b.start(ctx); err != nil {
			return err
		}
	}
	for i, o := range cl.owners {
		if err := o.start(ctx); err != nil {
			return err
		}
		want := "standby"
		if i == 0 {
			want = "primary"
		}
		if err := cl.waitRole(ctx, o, want); err != nil {
			return err
		}
	}
	for _, c := range cl.consumers {
		if err := c.start(ctx); err != nil {
			return err
		}
	}
	cl.monStop, cl.monDone = make(chan struct{}), make(chan struct{})
	go cl.monitor()
	return cl.waitPrimary(ctx)
}

// waitRole waits until owner o reports role.
func (cl *cluster) waitRole(ctx context.Context, o *node, role string) error {
	for {
		st, err := o.status(ctx)
		if err == nil && st.OwnerRole == role {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s did not become %s: %w (last: %+v, %v)", o.name, role, ctx.Err(), st, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// waitPrimary waits until the monitor knows a primary.
func (cl *cluster) waitPrimary(ctx context.Context) error {
	for cl.currentPrimary() == nil {
		select {
		case <-ctx.Done():
			return fmt.Errorf("no primary: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// currentPrimary is the owner the monitor last saw as primary with the
// highest epoch (nil: none).
func (cl *cluster) currentPrimary() *node {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.primary
}

// monitor polls the owners' roles every 50 ms.
func (cl *cluster) monitor() {
	defer close(cl.monDone)
	tk := time.NewTicker(50 * time.Millisecond)
	defer tk.Stop()
	for {
		cl.pollOwners()
		select {
		case <-tk.C:
		case <-cl.monStop:
			return
		}
	}
}

func (cl *cluster) pollOwners() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	type seen struct {
		n  *node
		st *NodeStatus
	}
	var prims []seen
	roles := map[string]string{}
	for _, o := range cl.owners {
		st, err := o.status(ctx)
		if err != nil {
			roles[o.name] = "down"
			continue
		}
		roles[o.name] = st.OwnerRole
		if st.OwnerRole == "primary" {
			prims = append(prims, seen{o, st})
		}
	}
	cl.mu.Lock()
	defer cl.mu.Unlock()
	cl.roles = roles
	cl.statusN++
	var best *seen
	for i := range prims {
		if best == nil || prims[i].st.Epoch > best.st.Epoch {
			best = &prims[i]
		}
	}
	for i := range prims {
		for j := i + 1; j < len(prims); j++ {
			if prims[i].st.Epoch == prims[j].st.Epoch && len(cl.mon.splitBrain) < 10 {
				cl.mon.splitBrain = append(cl.mon.splitBrain, fmt.Sprintf("%s and %s both primary at epoch %d",
					prims[i].n.name, prims[j].n.name, prims[i].st.Epoch))
			}
		}
	}
	if best == nil {
		return // keep the last known primary: writes to it fail and say why
	}
	if best.st.Epoch > cl.epoch || cl.primary == nil {
		if cl.primary != nil && best.n != cl.primary {
			cl.mon.promotions++
		}
		cl.primary, cl.epoch = best.n, best.st.Epoch
		cl.mon.maxEpoch = max(cl.mon.maxEpoch, best.st.Epoch)
	}
}

// stableOwners waits until exactly one owner is primary, at the highest
// epoch any owner reports, every other running owner is its standby at
// that epoch, and returns the primary.
func (cl *cluster) stableOwners(ctx context.Context) (*node, error) {
	var last string
	for {
		var prim *node
		var epoch uint64
		ok := true
		var desc []string
		for _, o := range cl.owners {
			st, err := o.status(ctx)
			if err != nil {
				ok = false
				desc = append(desc, fmt.Sprintf("%s: %v", o.name, err))
				continue
			}
			desc = append(desc, fmt.Sprintf("%s %s@%d head %d", o.name, st.OwnerRole, st.Epoch, st.Head))
			switch {
			case st.OwnerRole == "primary" && prim == nil:
				prim, epoch = o, st.Epoch
			case st.OwnerRole == "standby":
			default:
				ok = false
			}
		}
		if ok && prim != nil {
			for _, o := range cl.owners {
				st, err := o.status(ctx)
				if err != nil || st.Epoch != epoch {
					ok = false
				}
			}
			if ok {
				return prim, nil
			}
		}
		last = strings.Join(desc, "; ")
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("owners not settled: %w (last: %s)", ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stop stops every node cleanly (brokers last).
func (cl *cluster) stop() error {
	if cl.monStop != nil {
		close(cl.monStop)
		<-cl.monDone
		cl.monStop = nil
	}
	var errs []error
	for _, group := range [][]*node{cl.consumers, cl.owners, cl.brokers} {
		var wg sync.WaitGroup
		var mu sync.Mutex
		for _, n := range group {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := n.stop(30 * time.Second); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
	}
	return errors.Join(errs...)
}

// killAll SIGKILLs every process (cleanup after a failure).
func (cl *cluster) killAll() {
	if cl.monStop != nil {
		close(cl.monStop)
		<-cl.monDone
		cl.monStop = nil
	}
	for _, n := range cl.all() {
		n.kill()
	}
}

// wipe deletes n's data (n must be down); a consumer's apply log records
// it at the next start.
func (n *node) wipe() error {
	if n.up() {
		return fmt.Errorf("wipe %s: it is running", n.name)
	}
	n.mu.Lock()
	n.wiped = true
	n.mu.Unlock()
	return os.RemoveAll(filepath.Join(n.dir, "db"))
}
