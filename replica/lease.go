package replica

import (
	"fmt"
	"sync/atomic"
	"time"

	"github.com/replmesh/replmesh/transport"
)

// The primary lease (with Config.MinSyncStandbys > 0).
//
// A broker promotes a standby once it has not heard from the primary for a
// whole lease (broker Config.Lease). A primary cut off from every broker
// but not from its standbys would otherwise go on acknowledging writes that
// a standby confirms, while another standby is promoted without them: the
// acknowledged writes are lost when the deposed primary's history is cut
// back (split brain). So a primary that promises durability across its own
// loss acknowledges a write only while its lease is confirmed.
//
// Every frame the component sends on its broker session carries Ping, the
// component's monotonic clock at sending; the broker echoes the newest
// Ping it received as Pong with its lease and, when it holds this instance
// primary, the epoch. The broker heard from the instance no earlier than
// Pong, so it cannot declare the instance gone before Pong + lease; the
// primary treats its lease as held until Pong + lease/2, keeping half the
// lease as the margin for the broker's check interval and clock rates.
// After that, until a broker answers again, writes are refused (nothing
// written) and a write already committed but acknowledged by a standby
// too late is reported as not confirmed (ErrNoLease, outcome unknown).
//
// The trade-off: with MinSyncStandbys > 0 a primary takes no writes while
// no broker answers for more than half a lease. Without MinSyncStandbys
// (the default) writes go on with every broker down, and a failover may
// lose the acknowledged writes the promoted standby had not received.

// primaryLease is the component's view of its primary lease.
type primaryLease struct {
	origin time.Time    // the clock Pings are measured on (monotonic)
	until  atomic.Int64 // nanoseconds after origin; 0 = never held
}

// ping is the value of SessionRequest.Ping for a frame sent now.
func (l *primaryLease) ping() int64 { return int64(time.Since(l.origin)) + 1 }

// renew extends the lease from a broker frame that holds this instance
// primary. It reports whether the lease had lapsed (or was never held)
// and holds now.
func (l *primaryLease) renew(f *transport.SessionResponse) (regained bool) {
	if f.Pong <= 0 || f.LeaseMs <= 0 || f.PrimaryEpoch == 0 {
		return false
	}
	until := f.Pong + (time.Duration(f.LeaseMs) * time.Millisecond / 2).Nanoseconds()
	for {
		old := l.until.Load()
		if until <= old {
			return false
		}
		if l.until.CompareAndSwap(old, until) {
			now := int64(time.Since(l.origin))
			return old <= now && until > now
		}
	}
}

// renewLease applies a broker frame to the lease; when it regains the
// lease, the standbys' acknowledgements received meanwhile move the sync
// watermarks.
func (c *Component) renewLease(f *transport.SessionResponse) {
	if !c.lease.renew(f) || c.cfg.MinSyncStandbys <= 0 {
		return
	}
	for _, t := range c.ownedTables() {
		t.sync.advance(c.cfg.MinSyncStandbys)
	}
}

// left is how long the lease still holds (<= 0: lapsed; never held is
// reported as lapsed since the origin).
func (l *primaryLease) left() time.Duration {
	return time.Duration(l.until.Load()) - time.Since(l.origin)
}

// checkLease returns ErrNoLease when the component needs a confirmed lease
// to acknowledge writes (MinSyncStandbys > 0) and has none now.
func (c *Component) checkLease(table string) error {
	if c.cfg.MinSyncStandbys <= 0 {
		return nil
	}
	if left := c.lease.left(); left <= 0 {
		return fmt.Errorf("%w: no broker has confirmed this primary of %s for %s (half the broker lease); with min_sync_standbys a primary cut off from the brokers stops acknowledging writes",
			ErrNoLease, table, (-left).Round(time.Millisecond))
	}
	return nil
}
