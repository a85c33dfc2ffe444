package replica

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/replmesh/replmesh/modes"
	"github.com/replmesh/replmesh/transport"
)

// Modes. Each subscription runs in push mode (the owner streams every
// change) or pull mode (the owner sends nothing until asked, then a
// coalesced delta). The configured mode is resolved per field from, in
// order of precedence: the broker's override (replctl mode set), the
// subscription's option (SubscribeOptions.Modes, SetModes), the owner's
// table default (TableOptions.Mode, sent in Start), the built-in default
// (push). Auto mode lets a pure policy (modes.Policy) pick push or pull from
// the owner's write rate and this replica's read rate; every switch happens
// in the stream, with no reconnect and no resync.

// modeState is a replica's mode bookkeeping, guarded by Replica.mu.
type modeState struct {
	sub          *modes.TableConfig // subscription option (SubscribeOptions.Modes / SetModes)
	override     modes.Mode         // broker override (Unset: none)
	ownerDefault modes.Mode         // from the owner's Start (Unset: none)
	settings     modes.Settings     // resolved
	policy       *modes.Policy      // auto mode only
	effective    modes.Mode         // Push or Pull: what the stream runs (Unset until first resolved)
	reason       string             // why the last switch happened
	switches     uint64
	ownerRate    float64          // owner's write rate, from its frames
	readMeter    *modes.RateMeter // this replica's read rate
	pullGen      uint64           // pull answers applied
	pullCh       chan struct{}    // closed and replaced on each pull answer
	stream       *transport.ClientSubscription
}

// resolveModesLocked recomputes the settings and the effective mode; it
// reports whether the effective mode changed. r.mu is held.
func (r *Replica) resolveModesLocked(now time.Time, why string) bool {
	defer r.setStaleCheckLocked()
	m := &r.modes
	var override, owner *modes.TableConfig
	if m.override != modes.Unset {
		override = &modes.TableConfig{Mode: m.override}
	}
	if m.ownerDefault != modes.Unset {
		owner = &modes.TableConfig{Mode: m.ownerDefault}
	}
	s, err := modes.ResolveLayers(override, m.sub, owner)
	if err != nil {
		r.log.Error("mode settings do not resolve; keeping the previous ones", "err", err)
		return false
	}
	m.settings = s
	var want modes.Mode
	switch s.Mode {
	case modes.Pull:
		want, m.policy = modes.Pull, nil
	case modes.Auto:
		if m.policy == nil || m.policy.Settings() != s.Auto {
			start := modes.Push
			if m.effective == modes.Pull {
				start = modes.Pull
			}
			p, err := modes.NewPolicy(s.Auto, start)
			if err != nil {
				r.log.Error("auto mode settings invalid", "err", err)
				return false
			}
			m.policy = p
		}
		want = m.policy.Mode()
	default:
		want, m.policy = modes.Push, nil
	}
	if want == m.effective {
		return false
	}
	if m.effective != modes.Unset {
		m.switches++
	}
	m.effective = want
	m.reason = why
	return true
}

// observeLocked feeds the auto policy; it reports whether the effective
// mode changed. r.mu is held.
func (r *Replica) observeLocked(now time.Time) bool {
	defer r.setStaleCheckLocked()
	m := &r.modes
	m.readMeter.Record(now, r.reads.Load())
	if m.policy == nil {
		return false
	}
	d := m.policy.Observe(modes.Observation{At: now, OwnerWriteRate: m.ownerRate, ConsumerReadRate: m.readMeter.Rate()})
	if !d.Switched {
		return false
	}
	m.effective = d.Mode
	m.reason = "auto: " + d.Reason
	m.switches++
	return true
}

// Mode returns the mode the subscription runs now ("push" or "pull"), the
// configured mode ("push", "pull" or "auto") and the reason for the last
// switch.
func (r *Replica) Mode() (effective, configured, reason string) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.modes.effective.Wire(), r.modes.settings.Mode.String(), r.modes.reason
}

// SetModes replaces the subscription's mode option (a config reload); it
// takes effect on the live stream.
func (r *Replica) SetModes(tc *modes.TableConfig) error {
	if tc != nil {
		if err := tc.Validate(); err != nil {
			return fmt.Errorf("%w: %v", ErrInvalid, err)
		}
	}
	r.mu.Lock()
	r.modes.sub = tc
	changed := r.resolveModesLocked(time.Now(), "subscription option changed")
	r.mu.Unlock()
	if changed {
		r.kickMode()
	}
	return nil
}

// setOverride takes the broker's override for this table ("" clears it);
// an invalid one is logged and changes nothing.
func (r *Replica) setOverride(s string) {
	m, ok := r.parseOverride(s)
	if !ok {
		return
	}
	r.mu.Lock()
	if r.modes.override == m {
		r.mu.Unlock()
		return
	}
	r.modes.override = m
	changed := r.resolveModesLocked(time.Now(), "broker override "+orNone(s))
	r.mu.Unlock()
	if changed {
		r.kickMode()
	}
}

// parseOverride parses the broker's override for this table as it
// arrives in a topology ("" is Unset: none). ok is false, and the value
// logged, when it is not a mode.
func (r *Replica) parseOverride(s string) (m modes.Mode, ok bool) {
	m, err := modes.ParseWire(s)
	if err != nil {
		r.log.Warn("ignoring an invalid mode override", "mode", s)
		return modes.Unset, false
	}
	return m, true
}

func orNone(s string) string {
	if s == "" {
		return "cleared"
	}
	return s
}

func (r *Replica) kickMode() {
	select {
	case r.modeKick <- struct{}{}:
	default:
	}
}

// Refresh brings the replica up to the owner's state: in pull mode it pulls
// and waits for the delta; in push mode it waits for the changes the owner
// has announced.
func (r *Replica) Refresh(ctx context.Context) error {
	r.mu.RLock()
	pull, gen, ch, head := r.modes.effective == modes.Pull, r.modes.pullGen, r.modes.pullCh, r.ownerHead
	r.mu.RUnlock()
	if !pull {
		return r.WaitFor(ctx, head)
	}
	if err := r.sendFrame(&transport.ConsumerFrame{Kind: transport.KindPull}); err != nil {
		return fmt.Errorf("refresh %s: %w", r.opts.Table, err)
	}
	for {
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("refresh %s: %w", r.opts.Table, ctx.Err())
		case <-r.done:
			return ErrClosed
		}
		r.mu.RLock()
		g, c := r.modes.pullGen, r.modes.pullCh
		r.mu.RUnlock()
		if g > gen {
			return nil
		}
		ch = c
	}
}

// pulled records an applied pull answer (a delta or an in-stream transfer).
func (r *Replica) pulled() {
	r.mu.Lock()
	r.stats.pulls.Add(1)
	r.modes.pullGen++
	close(r.modes.pullCh)
	r.modes.pullCh = make(chan struct{})
	r.mu.Unlock()
}

// noteRead counts a read (auto mode's read rate) and, in pull mode, asks
// for a pull when the replica is staler than MaxStaleness; it never waits.
func (r *Replica) noteRead() {
	r.reads.Add(1)
	if !r.staleCheck.Load() {
		return // the common case takes no lock: a read is a counter
	}
	r.mu.RLock()
	pull, maxSt := r.modes.effective == modes.Pull, r.modes.settings.Pull.MaxStaleness
	var st time.Duration
	if pull && maxSt > 0 {
		st = r.lagLocked(time.Now()).Staleness
	}
	r.mu.RUnlock()
	if pull && maxSt > 0 && st > maxSt {
		select {
		case r.pullKick <- struct{}{}:
		default:
		}
	}
}

// setStaleCheckLocked records whether a read must check the replica's
// staleness (pull mode with a MaxStaleness). r.mu is held.
func (r *Replica) setStaleCheckLocked() {
	r.staleCheck.Store(r.modes.effective == modes.Pull && r.modes.settings.Pull.MaxStaleness > 0)
}

// fileModes returns the mode config file's entry for service/table merged
// over the file's defaults, or nil when the file says nothing.
func fileModes(cfg *modes.Config, service, table string) *modes.TableConfig {
	if cfg == nil {
		return nil
	}
	entry, ok := cfg.Lookup(service + "/" + table)
	if !ok {
		if cfg.Defaults == (modes.TableConfig{}) {
			return nil
		}
		d := cfg.Defaults
		return &d
	}
	m := modes.Merge(entry, &cfg.Defaults)
	return &m
}

// ReloadModes applies a new mode configuration file to the live component:
// replicas without an explicit SubscribeOptions.Modes take their new entry
// (switching in-stream), owned tables their new default mode and retention.
func (c *Component) ReloadModes(cfg *modes.Config) error {
	if cfg != nil {
		if err := cfg.Validate(); err != nil {
			return fmt.Errorf("%w: reload modes: %v", ErrInvalid, err)
		}
	}
	c.mu.Lock()
	c.cfg.Modes = cfg
	reps := slices.Collect(maps.Values(c.replicas))
	tables := slices.Collect(maps.Values(c.owned))
	c.mu.Unlock()
	for _, t := range tables {
		t.applyFileModes(cfg)
	}
	for _, r := range reps {
		if r.opts.Modes != nil {
			continue // the program's own option wins over the file
		}
		if err := r.SetModes(fileModes(cfg, r.opts.Service, r.opts.Table)); err != nil {
			return err
		}
	}
	return nil
}

// applyFileModes takes the table's default mode and retention from the
// owner's mode file (an explicit TableOptions.Mode wins for the mode).
func (t *OwnedTable) applyFileModes(cfg *modes.Config) {
	tc := fileModes(cfg, t.c.cfg.Service, t.name)
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.explicitMode {
		t.defaultMode = modes.Unset
		if tc != nil {
			t.defaultMode = tc.Mode
		}
	}
	ret := t.c.cfg.Retention
	if tc != nil {
		ret = tc.Retention.Over(ret)
	}
	t.retention = ret
}
