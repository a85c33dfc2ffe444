package broker

import (
	"testing"
	"time"

	"github.com/replmesh/replmesh/transport"
)

// A broker that knows no epoch of a service (every broker restarted: an
// empty registry) grants its primary lease above every epoch the owner
// instances report: the one their data held when they registered
// (Register.Epoch) and their tables'. A grant made before an instance
// reported a newer epoch is made again, above it, to the same primary.
func TestBroker_GrantsAboveTheEpochsInstancesReport(t *testing.T) {
	t.Run("Register.Epoch", func(t *testing.T) {
		b := startBroker(t, "b1", nil, nil)
		reg := ownerReg("stores", "s1", "127.0.0.1:9001")
		reg.Epoch = 5 // its data's epoch; no table opened yet
		s := mustConnect(t, b.GRPCAddr(), reg)
		if got := s.last; got.Role != transport.RolePrimary || got.Epoch != 6 {
			t.Fatalf("first topology: %s at epoch %d, want primary at epoch 6", got.Role, got.Epoch)
		}
	})
	t.Run("a table's epoch reported after the grant", func(t *testing.T) {
		b := startBroker(t, "b1", nil, nil)
		// An owner that registered before opening its tables and did not
		// report its data's epoch (a component built before Register.Epoch).
		s := mustConnect(t, b.GRPCAddr(), ownerReg("stores", "s1", "127.0.0.1:9001"))
		if got := s.last; got.Role != transport.RolePrimary || got.Epoch != 1 {
			t.Fatalf("first topology: %s at epoch %d, want primary at epoch 1", got.Role, got.Epoch)
		}
		s.update([]transport.TableInfo{{Table: "managers", LogID: "log1", Epoch: 3, Head: 40}}, nil)
		s.waitTopo("s1 primary at epoch 4", func(tp *transport.Topology) bool {
			return tp.Role == transport.RolePrimary && tp.Epoch == 4
		})
		// A standby whose data holds a newer epoch still: above it too.
		reg := ownerReg("stores", "s2", "127.0.0.1:9002")
		reg.Epoch = 7
		s2 := mustConnect(t, b.GRPCAddr(), reg)
		s2.waitTopo("s2 standby at epoch 8", func(tp *transport.Topology) bool {
			return tp.Role == transport.RoleStandby && tp.Epoch == 8
		})
		s.waitTopo("s1 still primary, at epoch 8", func(tp *transport.Topology) bool {
			return tp.Role == transport.RolePrimary && tp.Epoch == 8
		})
		// Reports at or below the grant change nothing.
		s.update([]transport.TableInfo{{Table: "managers", LogID: "log1", Epoch: 8, Head: 41}}, nil)
		s2.update([]transport.TableInfo{{Table: "managers", LogID: "log1", Epoch: 8, Head: 41}}, nil)
		waitUntil(t, waitLong, "both updates applied", func() bool {
			st := status(t, b)
			i1, i2 := findInstance(st, "stores", "s1"), findInstance(st, "stores", "s2")
			return i1 != nil && i2 != nil && len(i1.Tables) == 1 && i1.Tables[0].Head == 41 && len(i2.Tables) == 1 && i2.Tables[0].Head == 41
		})
		b.step(time.Now()) // a decision round after the updates
		if o := findOwner(status(t, b).Owners, "stores"); o == nil || o.Epoch != 8 || o.Primary.Instance != "s1" {
			t.Fatalf("stores owner %+v, want s1 at epoch 8", o)
		}
	})
}
