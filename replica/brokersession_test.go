package replica

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/replmesh/replmesh/transport"
)

// The broker hears a held transfer's progress in the session updates,
// which keep coming while the replica's seq does not move.
func TestSession_ReportsTransferProgress(t *testing.T) {
	fb := &fakeBroker{}
	brokerAddr := serveFakeBroker(t, fb)
	h := holdTransfer(t, 3000, func(c *Config) { c.Brokers = []string{brokerAddr} })
	// Two updates while held: the reports are periodic, not tied to seqs.
	var first transport.SubInfo
	waitUntil(t, 20*time.Second, "two session updates reporting the held transfer", func() bool {
		subs := fb.transferring()
		if len(subs) > 0 {
			first = subs[0]
		}
		return len(subs) >= 2
	})
	p := h.r.Lag().Transfer
	if first.Service != itOwner || first.Table != itTable || first.State != StateTransferring.String() ||
		first.XferRows != p.Rows || first.XferExpected != h.rows || first.XferBytes != p.Bytes ||
		first.XferRate <= 0 || first.XferEtaMs <= 0 || first.StaleMs < 0 {
		t.Fatalf("broker got %+v; replica reports %+v with %d rows expected", first, *p, h.rows)
	}
	h.release()
	mustConverge(t, h.tbl, h.r)
	waitUntil(t, 20*time.Second, "an update without a transfer", func() bool {
		si, ok := fb.last()
		return ok && si.State == StateStreaming.String() && si.XferRows == 0 && si.XferExpected == 0 && si.XferEtaMs == 0
	})
}

// The component reports its MinSyncStandbys in its Register, so that the
// brokers know how many standbys' heads a promotion needs; 0 (none) for a
// component without it, the broker's bound for a k above it.
func TestSession_RegisterReportsMinSyncStandbys(t *testing.T) {
	tests := []struct {
		name  string
		owner bool
		k     int
		want  int
	}{
		{"owner with k 2", true, 2, 2},
		{"owner without", true, 0, 0},
		{"consumer", false, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fb := &fakeBroker{}
			brokerAddr := serveFakeBroker(t, fb)
			c := openWith(t, "minsync", "minsync-1", "", "", func(cfg *Config) {
				cfg.Brokers = []string{brokerAddr}
				cfg.Owner = tt.owner
				cfg.MinSyncStandbys = tt.k
			})
			defer c.Close()
			var reg *transport.Register
			waitUntil(t, 20*time.Second, "the Register", func() bool {
				reg = fb.register()
				return reg != nil
			})
			if reg.Service != "minsync" || reg.Instance != "minsync-1" || reg.Owner != tt.owner || reg.MinSyncStandbys != tt.want {
				t.Fatalf("Register %s/%s owner %v MinSyncStandbys %d, want minsync/minsync-1 owner %v MinSyncStandbys %d",
					reg.Service, reg.Instance, reg.Owner, reg.MinSyncStandbys, tt.owner, tt.want)
			}
		})
	}
}

// ---- a broker that only records Registers and session updates ----

type fakeBroker struct {
	mu      sync.Mutex
	regs    []*transport.Register
	updates [][]transport.SubInfo
}

// register returns the newest Register received (nil if none).
func (b *fakeBroker) register() *transport.Register {
	b.mu.Lock()
	defer b.mu.Unlock()
	if n := len(b.regs); n > 0 {
		return b.regs[n-1]
	}
	return nil
}

func (b *fakeBroker) Session(s transport.SessionServer) error {
	first, err := s.Recv()
	if err != nil {
		return err
	}
	if first.Kind != transport.SessionRegister || first.Register == nil {
		return fmt.Errorf("%w: fake broker wants register", transport.ErrBadRequest)
	}
	b.mu.Lock()
	b.regs = append(b.regs, first.Register)
	b.mu.Unlock()
	if err := s.Send(&transport.SessionResponse{Kind: transport.SessionTopology, Broker: "fake",
		Topology: &transport.Topology{Revision: 1, Role: "consumer"}}); err != nil {
		return err
	}
	for {
		f, err := s.Recv()
		if err != nil {
			return nil
		}
		if f.Kind == transport.SessionUpdate {
			b.mu.Lock()
			b.updates = append(b.updates, f.Subscriptions)
			b.mu.Unlock()
		}
	}
}

// transferring returns the subscription reports of the updates that
// carried transfer progress, oldest first.
func (b *fakeBroker) transferring() []transport.SubInfo {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []transport.SubInfo
	for _, u := range b.updates {
		if len(u) == 1 && u[0].XferRows > 0 {
			out = append(out, u[0])
		}
	}
	return out
}

// last returns the newest update's subscription report.
func (b *fakeBroker) last() (transport.SubInfo, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if n := len(b.updates); n > 0 && len(b.updates[n-1]) == 1 {
		return b.updates[n-1][0], true
	}
	return transport.SubInfo{}, false
}

func (b *fakeBroker) Lookup(context.Context, *transport.LookupRequest) (*transport.LookupResponse, error) {
	return nil, transport.ErrUnavailable
}

func (b *fakeBroker) Status(context.Context, *transport.StatusRequest) (*transport.StatusResponse, error) {
	return nil, transport.ErrUnavailable
}

func (b *fakeBroker) SetMode(context.Context, *transport.SetModeRequest) (*transport.SetModeResponse, error) {
	return nil, transport.ErrUnavailable
}

// serveFakeBroker serves b on a fresh 127.0.0.1 port until the test ends.
func serveFakeBroker(t *testing.T, b *fakeBroker) string {
	t.Helper()
	return serveTest(t, func(srv *transport.Server) { transport.RegisterBrokerServer(srv, b) })
}
