package chaos

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/replmesh/replmesh/internal/freeport"
)

// dupInstance starts, beside a live owner instance (the primary or a
// standby, at random), a second process with its name and certificate,
// in memory, at another address: what a careless operator does. While it
// runs, the brokers must refuse its Register (ErrInstanceInUse, naming
// the holder's address: their Status lists the refusal), it must never
// hold a role, the real instance must keep its role and epoch, and no
// consumer may turn diverged. Its grant log must show no grant, and the
// grant check (grants.go) refuses any registry read naming the instance at
// the newcomer's address.
func (in *injector) dupInstance(ctx context.Context) (bool, error) {
	cl := in.cl
	// Beside a settled cluster: every owner at the primary's epoch (a
	// standby still learning of the last promotion is not the newcomer's
	// doing).
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	_, err := cl.stableOwners(sctx)
	cancel()
	if err != nil {
		return false, nil
	}
	p, _ := cl.primaryEpoch()
	targets := cl.standbys()
	if p != nil && p.up() {
		targets = append(targets, p)
	}
	target := in.pick(targets)
	if target == nil {
		return false, nil
	}
	st0, err := target.status(ctx)
	if err != nil || st0.OwnerRole == "" {
		return false, nil
	}
	dup := &node{cl: cl, name: target.name, role: RoleOwner, dir: filepath.Join(cl.root, target.name+"-dup"),
		logDir: filepath.Join(cl.root, "logs", "dup"), sec: target.sec, ip: target.ip, inMemory: true}
	if cl.net != nil {
		dup.addr = net.JoinHostPort(target.ip, "7501") // in the instance's own namespace
	} else {
		port, err := freeport.Pick()
		if err != nil {
			return true, err
		}
		dup.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	}
	if err := in.restart(ctx, dup); err != nil {
		return true, err
	}
	defer dup.kill()
	d := in.between(2*brokerLease, 4*brokerLease)
	in.logf("second process %s (in memory, at %s) beside the live %s %s at %s, for %s", dup, dup.addr, st0.OwnerRole, target, target.addr, d)
	var bad []string
	flag := func(format string, args ...any) {
		if len(bad) < 5 {
			bad = append(bad, fmt.Sprintf(format, args...))
		}
	}
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		if st, err := dup.status(ctx); err == nil && st.OwnerRole != "" {
			flag("the newcomer %s at %s holds the role %s at epoch %d", dup, dup.addr, st.OwnerRole, st.Epoch)
		}
		if st, err := target.status(ctx); err == nil && (st.OwnerRole != st0.OwnerRole || st.Epoch != st0.Epoch) {
			flag("the live %s went from %s@%d to %s@%d", target, st0.OwnerRole, st0.Epoch, st.OwnerRole, st.Epoch)
		}
		for _, c := range cl.consumers {
			if st, err := c.status(ctx); err == nil && st.Replica != nil && st.Replica.State == "diverged" {
				flag("consumer %s turned diverged", c)
			}
		}
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return true, err
		}
	}
	// Every broker that saw the Register refused it naming the holder.
	var refusals uint64
	var refusers []string
	for _, b := range cl.brokers {
		st, err := b.status(ctx)
		if err != nil {
			continue
		}
		for _, r := range st.Refused {
			if r.Instance != target.name || r.Addr != dup.addr {
				continue
			}
			if r.Holder != target.addr {
				flag("broker %s refused the newcomer naming holder %q, not %s", b, r.Holder, target.addr)
			}
			refusals += r.Count
			refusers = append(refusers, b.name)
		}
	}
	if refusals == 0 {
		flag("no broker lists a refused Register of %s from %s", target, dup.addr)
	}
	dup.kill()
	granted := 0
	_ = grantLines(dup.grantLogPath(), func(f []string) error {
		if f[0] == RecGrantRole && len(f) > 2 && f[2] != "-" {
			granted++
			flag("the newcomer saw itself %s (%s)", f[2], strings.Join(f, " "))
		}
		return nil
	})
	note := fmt.Sprintf("%s: a second %s (in memory, %s) beside the live %s for %s: %d Registers refused by %s (holder %s named), %d roles granted to it",
		fDupInstance, target, dup.addr, st0.OwnerRole, d, refusals, strings.Join(refusers, ","), target.addr, granted)
	in.logf("%s", note)
	in.mu.Lock()
	in.notes = append(in.notes, note)
	for _, b := range bad {
		in.findings = append(in.findings, fDupInstance+": "+b)
	}
	in.mu.Unlock()
	return true, nil
}
