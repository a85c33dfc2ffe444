package chaos

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
)

// The real-network level: every node runs in a network namespace of its
// own ("ip netns exec"), with one interface (eth0, 10.77.0.<i>/24) joined
// by a veth pair to a bridge in a hub namespace. Partitions are nftables
// rules inside the node namespaces (a set of blocked peer addresses, its
// packets dropped both ways; a second set drops only what the node sends
// to a peer: a one-way partition), so they hit every protocol, memberlist's UDP
// gossip between brokers included. Latency and bandwidth still come from
// the nodes' proxies (this kernel has no netem). Nothing is created or
// changed outside the namespaces the harness makes; deleting them removes
// the interfaces and the rules with them.

// netPrefix starts the name of every namespace the harness creates; the
// process id follows, so a later run can remove what a killed one left.
const netPrefix = "rmchaos"

// realNet is the real-network level of one scenario.
type realNet struct {
	prefix string // netPrefix + pid + "-" + a counter
	nodes  []string
	ips    map[string]string

	mu      sync.Mutex
	created []string // namespaces, in creation order
	blocked map[[2]string]bool
}

var netSeq struct {
	mu sync.Mutex
	n  int
}

// newRealNet checks that the real-network level can run here: root, ip
// and nft.
func newRealNet() (*realNet, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("not running as root")
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s not found (make chaos installs nftables)", tool)
		}
	}
	netSeq.mu.Lock()
	netSeq.n++
	n := netSeq.n
	netSeq.mu.Unlock()
	return &realNet{
		prefix:  fmt.Sprintf("%s%d-%d-", netPrefix, os.Getpid(), n),
		ips:     map[string]string{},
		blocked: map[[2]string]bool{},
	}, nil
}

func (rn *realNet) nsName(node string) string { return rn.prefix + node }

func (rn *realNet) hub() string { return rn.prefix + "hub" }

// addNode reserves a namespace and an address for a node.
func (rn *realNet) addNode(name string) string {
	rn.nodes = append(rn.nodes, name)
	ip := "10.77.0." + strconv.Itoa(len(rn.nodes)+1)
	rn.ips[name] = ip
	return ip
}

func runCmd(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// nft runs an nft command in ns.
func nft(ns string, args ...string) error {
	return runCmd(append([]string{"ip", "netns", "exec", ns, "nft"}, args...)...)
}

// setup creates the hub and one namespace per node, wires them and loads
// each node's (empty) block list.
func (rn *realNet) setup() error {
	if err := rn.addNS(rn.hub()); err != nil {
		return err
	}
	hub := rn.hub()
	for _, c := range [][]string{
		{"ip", "-n", hub, "link", "add", "br0", "type", "bridge"},
		{"ip", "-n", hub, "link", "set", "br0", "up"},
	} {
		if err := runCmd(c...); err != nil {
			return err
		}
	}
	for i, name := range rn.nodes {
		ns := rn.nsName(name)
		if err := rn.addNS(ns); err != nil {
			return err
		}
		peer := "v" + strconv.Itoa(i+1)
		for _, c := range [][]string{
			{"ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", peer, "netns", hub},
			{"ip", "-n", ns, "addr", "add", rn.ips[name] + "/24", "dev", "eth0"},
			{"ip", "-n", ns, "link", "set", "eth0", "up"},
			{"ip", "-n", hub, "link", "set", peer, "master", "br0"},
			{"ip", "-n", hub, "link", "set", peer, "up"},
		} {
			if err := runCmd(c...); err != nil {
				return err
			}
		}
		ruleset := `table inet rmchaos {
	set blocked { type ipv4_addr; }
	set outbound { type ipv4_addr; }
	chain input { type filter hook input priority 0; policy accept; ip saddr @blocked drop; }
	chain output { type filter hook output priority 0; policy accept; ip daddr @blocked drop; ip daddr @outbound drop; }
}`
		cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
		cmd.Stdin = strings.NewReader(ruleset)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("nft -f in %s: %v: %s", ns, err, bytes.TrimSpace(out))
		}
	}
	return nil
}

func (rn *realNet) addNS(ns string) error {
	if err := runCmd("ip", "netns", "add", ns); err != nil {
		return err
	}
	rn.mu.Lock()
	rn.created = append(rn.created, ns)
	rn.mu.Unlock()
	return runCmd("ip", "-n", ns, "link", "set", "lo", "up")
}

// block drops every packet between nodes a and b (both ways, in both
// namespaces).
func (rn *realNet) block(a, b string) error {
	rn.mu.Lock()
	rn.blocked[[2]string{a, b}] = true
	rn.mu.Unlock()
	return errors.Join(
		nft(rn.nsName(a), "add", "element", "inet", "rmchaos", "blocked", "{", rn.ips[b], "}"),
		nft(rn.nsName(b), "add", "element", "inet", "rmchaos", "blocked", "{", rn.ips[a], "}"))
}

// blockOneWay drops every packet node a sends to node b (TCP and UDP),
// and only those: b's packets still reach a. b's UDP gossip reaches a;
// on TCP, b's segments still arrive but a's acknowledgements do not, so
// b's connections to a carry only a window's worth and then retransmit,
// and a's connections to b carry nothing: what breaks is everything a
// says to b (raft messages, gossip, replies to b's calls).
func (rn *realNet) blockOneWay(a, b string) error {
	return nft(rn.nsName(a), "add", "element", "inet", "rmchaos", "outbound", "{", rn.ips[b], "}")
}

// unblockOneWay ends a blockOneWay(a, b).
func (rn *realNet) unblockOneWay(a, b string) error {
	err := nft(rn.nsName(a), "delete", "element", "inet", "rmchaos", "outbound", "{", rn.ips[b], "}")
	if err != nil && strings.Contains(err.Error(), "No such file or directory") {
		return nil
	}
	return err
}

// unblock ends a block between a and b.
func (rn *realNet) unblock(a, b string) error {
	rn.mu.Lock()
	delete(rn.blocked, [2]string{a, b})
	delete(rn.blocked, [2]string{b, a})
	rn.mu.Unlock()
	var errs []error
	for _, x := range [][2]string{{a, b}, {b, a}} {
		err := nft(rn.nsName(x[0]), "delete", "element", "inet", "rmchaos", "blocked", "{", rn.ips[x[1]], "}")
		if err != nil && !strings.Contains(err.Error(), "No such file or directory") {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// unblockAll empties every node's block list.
func (rn *realNet) unblockAll() error {
	var errs []error
	for _, name := range rn.nodes {
		errs = append(errs, nft(rn.nsName(name), "flush", "set", "inet", "rmchaos", "blocked"),
			nft(rn.nsName(name), "flush", "set", "inet", "rmchaos", "outbound"))
	}
	rn.mu.Lock()
	clear(rn.blocked)
	rn.mu.Unlock()
	return errors.Join(errs...)
}

// cleanup deletes every namespace this realNet created (their interfaces
// and nftables rules go with them). It is safe to call more than once.
func (rn *realNet) cleanup() error {
	rn.mu.Lock()
	created := rn.created
	rn.created = nil
	rn.mu.Unlock()
	var errs []error
	for i := len(created) - 1; i >= 0; i-- {
		if err := runCmd("ip", "netns", "del", created[i]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removeStaleNamespaces deletes the namespaces left by chaos runs whose
// process is gone (a run killed before its cleanup).
func removeStaleNamespaces() error {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return err
	}
	var errs []error
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], netPrefix) {
			continue
		}
		pidStr, _, ok := strings.Cut(strings.TrimPrefix(f[0], netPrefix), "-")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil {
			continue // not one of ours
		}
		if pid == os.Getpid() || processAlive(pid) {
			continue
		}
		errs = append(errs, runCmd("ip", "netns", "del", f[0]))
	}
	return errors.Join(errs...)
}

func processAlive(pid int) bool {
	_, err := os.Stat("/proc/" + strconv.Itoa(pid))
	return err == nil
}
