package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// The attacker fault (fAttacker): with security on, a hostile process
// (chaosnode -role attacker, holding a certificate of the consumers'
// service, products/mallory) tries every attack of AttackRegisterHijack
// and the others against the live cluster while the workload runs: a
// Register hijack of the primary's instance, Status and SetMode on every
// broker, a Subscribe naming the owner's service, a standby Subscribe, an
// ack of 2^64-1, and on every broker's gossip port an unencrypted forged
// packet (a fake primary at epoch 2^64-1) and a 10-byte packet claiming
// 2^32-1 records. Each must be refused and change nothing: the attacker
// reports what the peers answered, and the harness then checks that every
// broker still runs and still names a real owner, at its address and at a
// sane epoch, as primary. An attack that succeeded is a finding (the
// scenario fails); the usual checks prove the guarantees held. In
// plaintext (REPLMESH_CHAOS_TLS=0) the fault does not fire: there is no
// security to attack.

// attackStats counts the attacker fault's attacks over a scenario.
type attackStats struct {
	refused, succeeded, skipped int
	byName                      map[string]int // refused attacks by name
}

// attackWatch is how long the brokers are watched for the effects of the
// gossip packets after they were sent.
const attackWatch = time.Second

// attack runs the attacker once; fired is false when there is nothing to
// attack (no security, or no primary now).
func (in *injector) attack(ctx context.Context) (fired bool, err error) {
	cl := in.cl
	if cl.pki == nil {
		return false, nil
	}
	p := cl.currentPrimary()
	if p == nil || !p.up() {
		return false, nil
	}
	if st, err := p.status(ctx); err != nil || st.OwnerRole != "primary" {
		return false, nil
	}
	sec, err := cl.pki.issue(identityOf(RoleConsumer, attackerInstance))
	if err != nil {
		return true, err
	}
	var gossip []string
	for _, b := range cl.brokers {
		gossip = append(gossip, b.gossip)
	}
	args := append([]string{"-role", RoleAttacker, "-name", attackerInstance, "-loglevel", "info",
		"-brokers", strings.Join(addrsOf(cl.brokers), ","), "-gossip-to", strings.Join(gossip, ","),
		"-owner", p.addr, "-primary", p.name, "-service", ownerService, "-table", "items"}, sec...)
	actx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var cmd *exec.Cmd
	if cl.net != nil && len(cl.consumers) > 0 {
		// From inside a consumer's namespace: the addresses exist only there.
		cmd = exec.CommandContext(actx, "ip", append([]string{"netns", "exec", cl.netnsOf(cl.consumers[0]), cl.bin}, args...)...)
	} else {
		cmd = exec.CommandContext(actx, cl.bin, args...)
	}
	logPath := filepath.Join(cl.root, "logs", "attacker.log")
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return true, err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "=== %s\n", strings.Join(cmd.Args, " "))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, logf
	if err := cmd.Run(); err != nil {
		return true, fmt.Errorf("attacker: %w (see %s)", err, logPath)
	}
	var rep AttackReport
	if err := json.Unmarshal(bytes.TrimSpace(out.Bytes()), &rep); err != nil {
		return true, fmt.Errorf("attacker's report %q: %w", out.String(), err)
	}
	// The packets: every broker runs and keeps a real primary.
	st, findings := judgeAttacks(rep, in.watchBrokers(ctx, attackWatch))
	in.logf("attacker: %d attacks refused, %d succeeded, %d skipped", st.refused, st.succeeded, st.skipped)
	in.mu.Lock()
	in.findings = append(in.findings, findings...)
	in.attacks.refused += st.refused
	in.attacks.succeeded += st.succeeded
	in.attacks.skipped += st.skipped
	if in.attacks.byName == nil {
		in.attacks.byName = map[string]int{}
	}
	for k, v := range st.byName {
		in.attacks.byName[k] += v
	}
	in.mu.Unlock()
	return true, nil
}

// judgeAttacks counts the attacker's report: an attack a peer refused is
// refused, one it took succeeded (a finding), one that could not be made
// is skipped; the gossip packets count as refused unless the brokers
// showed an effect (bad: what watchBrokers saw), then all as succeeded.
func judgeAttacks(rep AttackReport, bad []string) (attackStats, []string) {
	var findings []string
	st := attackStats{byName: map[string]int{}}
	packets := map[string]int{}
	for _, a := range rep.Attacks {
		switch {
		case a.Skipped:
			st.skipped++
		case a.Sent:
			packets[a.Name]++
		case a.Refused:
			st.refused++
			st.byName[a.Name]++
		default:
			st.succeeded++
			findings = append(findings, fmt.Sprintf("attack %s on %s succeeded: %s", a.Name, a.Target, a.Detail))
		}
	}
	for _, f := range bad {
		findings = append(findings, "attack by gossip packet: "+f)
	}
	for k, n := range packets {
		if len(bad) > 0 {
			st.succeeded += n
		} else {
			st.refused += n
			st.byName[k] += n
		}
	}
	return st, findings
}

// watchBrokers polls every broker for d and returns what it saw that the
// forged or oversized gossip would have caused: a broker that exited, or
// that names as the owner's primary an instance that is no owner, at an
// address that is not that owner's, or at an epoch no grant reaches.
func (in *injector) watchBrokers(ctx context.Context, d time.Duration) []string {
	cl := in.cl
	owners := map[string]*node{}
	for _, o := range cl.owners {
		owners[o.name] = o
	}
	seen := map[string]bool{}
	var out []string
	add := func(s string) {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	end := time.Now().Add(d)
	for {
		for _, b := range cl.brokers {
			if !b.up() {
				add(fmt.Sprintf("broker %s exited", b))
				continue
			}
			st, err := b.status(ctx)
			if err != nil {
				continue // busy: the next round asks again
			}
			if st.Primary == "" {
				continue
			}
			o := owners[st.Primary]
			switch {
			case o == nil:
				add(fmt.Sprintf("broker %s names %q primary, which is no owner", b, st.Primary))
			case st.PrimaryAddr != "" && st.PrimaryAddr != o.addr:
				add(fmt.Sprintf("broker %s has primary %s at %s, not at its address %s", b, o, st.PrimaryAddr, o.addr))
			case st.PrimaryEpoch >= 1<<32:
				add(fmt.Sprintf("broker %s has epoch %d", b, st.PrimaryEpoch))
			}
		}
		if time.Now().After(end) {
			return out
		}
		if sleepCtx(ctx, 100*time.Millisecond) != nil {
			return out
		}
	}
}
