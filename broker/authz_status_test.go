package broker

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/replmesh/replmesh/transport"
)

// Status of a registry far over the message limit, over gRPC: every page
// fits, and following the pages shows every owner and instance once.
// Before: one answer of the whole registry, refused by gRPC past 8 MiB
// (168 MB for 500 sessions x 1024 tables).
func TestStatus_Paging(t *testing.T) {
	p := newTestPKI(t)
	b := startSecureBroker(t, p, nil)
	const services, perService, tables = 20, 10, 1024
	name := strings.Repeat("t", 40)
	// Records as the broker holding their sessions writes them (connected,
	// on this live broker), so that no lease lapses during the test.
	now := time.Now()
	b.mu.Lock()
	for s := range services {
		svc := fmt.Sprintf("svc-%02d", s)
		for i := range perService {
			rec := &instanceRec{Service: svc, Instance: fmt.Sprintf("i-%02d", i), Addr: "127.0.0.1:7000", Owner: true,
				Session: sessionID{Start: now.UnixNano(), Broker: b.Name()}, Ver: version{Clock: uint64(s*perService + i + 1), Broker: b.Name()},
				Connected: true, SeenMs: now.UnixMilli()}
			for j := range tables {
				rec.Tables = append(rec.Tables, transport.TableInfo{Table: fmt.Sprintf("%s-%04d", name, j), LogID: "0123456789abcdef0123456789abcdef", Head: uint64(j)})
			}
			b.reg.store(rec)
		}
		b.fsm.owners[svc] = &ownerRec{Service: svc, Epoch: 1, Primary: "i-00"}
	}
	b.mu.Unlock()
	whole := status(t, b) // in process: unpaged
	size, err := transport.Marshal(whole)
	if err != nil {
		t.Fatal(err)
	}
	if len(size) <= transport.DefaultMaxMessageSize {
		t.Fatalf("the registry is %d bytes, not over the message limit", len(size))
	}
	t.Logf("the whole registry is %d MiB", len(size)>>20)

	cl := clientAs(t, p, b.GRPCAddr(), roleID(transport.RoleOperator, "ops"))
	for _, pageSize := range []int{0, 7} {
		t.Run(fmt.Sprintf("page size %d", pageSize), func(t *testing.T) {
			seen := map[string]int{}
			owners := map[string]int{}
			token, pages := "", 0
			for {
				st, err := cl.Status(ctxT(t, waitLong), &transport.StatusRequest{Version: transport.ProtocolVersion, PageToken: token, PageSize: pageSize})
				if err != nil {
					t.Fatalf("page %d: %v", pages, err)
				}
				pages++
				buf, _ := transport.Marshal(st)
				if len(buf) > transport.DefaultMaxMessageSize/2+64<<10 {
					t.Fatalf("page %d is %d bytes", pages, len(buf))
				}
				if pageSize > 0 && len(st.Instances) > pageSize {
					t.Fatalf("page %d has %d instances, asked for %d", pages, len(st.Instances), pageSize)
				}
				if (pages == 1) != (len(st.Brokers) > 0) {
					t.Fatalf("page %d has %d brokers; only the first has them", pages, len(st.Brokers))
				}
				for _, in := range st.Instances {
					seen[in.Service+"/"+in.Instance]++
				}
				for _, o := range st.Owners {
					owners[o.Service]++
				}
				if token = st.NextPageToken; token == "" {
					break
				}
			}
			t.Logf("%d pages", pages)
			for s := range services {
				for i := range perService {
					if k := fmt.Sprintf("svc-%02d/i-%02d", s, i); seen[k] == 0 {
						t.Errorf("instance %s not seen", k)
					}
				}
			}
			if len(seen) != services*perService || len(owners) != services {
				t.Fatalf("saw %d instances and %d owners, want %d and %d", len(seen), len(owners), services*perService, services)
			}
			for k, n := range seen {
				if n != 1 {
					t.Fatalf("instance %s seen %d times", k, n)
				}
			}
			for k, n := range owners {
				if n != 1 {
					t.Fatalf("owner %s seen %d times", k, n)
				}
			}
		})
	}
	t.Run("bad token", func(t *testing.T) {
		_, err := cl.Status(ctxT(t, waitLong), &transport.StatusRequest{Version: transport.ProtocolVersion, PageToken: "no token"})
		if err == nil || !strings.Contains(err.Error(), "page token") {
			t.Fatalf("got %v", err)
		}
	})
}
