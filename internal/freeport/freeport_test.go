package freeport

import (
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
)

// Pick hands out distinct ports below the ephemeral range that can be
// bound.
func TestPick_DistinctBindableBelowEphemeral(t *testing.T) {
	ephemeral := 1 << 16
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if v, err := strconv.Atoi(strings.Fields(string(b))[0]); err == nil {
			ephemeral = v
		}
	}
	seen := map[int]bool{}
	for range 50 {
		p, err := Pick()
		if err != nil {
			t.Fatal(err)
		}
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
		if p >= ephemeral || p < 1024 {
			t.Fatalf("port %d: want 1024 <= port < %d (the ephemeral range's start)", p, ephemeral)
		}
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			t.Fatalf("port %d cannot be bound: %v", p, err)
		}
		ln.Close()
	}
}
