// Package freeport picks loopback ports for processes that must come back
// on the same address after a restart (a killed owner, a broker restarted
// under a test). A port taken from the kernel with 127.0.0.1:0 lies in
// the ephemeral range, where any outgoing connection or port-0 listener
// may take it while its process is down, and the restart then fails with
// "address already in use"; the ports picked here lie below that range.
package freeport

import (
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

var (
	mu   sync.Mutex
	used = map[int]bool{} // ports handed out by this process
)

// Pick returns a port below the kernel's ephemeral range that is free for
// TCP and UDP on 127.0.0.1 now and that this process has not handed out
// before. Another process may still take it (nothing can prevent that),
// but the kernel never hands it out on its own.
func Pick() (int, error) {
	lo := low()
	mu.Lock()
	defer mu.Unlock()
	for range 1000 {
		p := lo + rand.IntN(10000)
		if used[p] || !free(p) {
			continue
		}
		used[p] = true
		return p, nil
	}
	return 0, errors.New("freeport: no free port below the ephemeral range")
}

// Addr is Pick as a "127.0.0.1:port" address.
func Addr() (string, error) {
	p, err := Pick()
	if err != nil {
		return "", err
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p)), nil
}

// low is the first port of the 10,000 Pick draws from: 12,000 below the
// start of the ephemeral range (Linux: ip_local_port_range), 20000 when
// that is unknown or too low.
func low() int {
	lo := 20000
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil && v > lo+2000 {
				lo = v - 12000
			}
		}
	}
	return lo
}

// free says whether p can be bound on 127.0.0.1 for TCP and UDP.
func free(p int) bool {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	defer ln.Close()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return false
	}
	pc.Close()
	return true
}
