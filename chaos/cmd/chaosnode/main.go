// Command chaosnode is one process of the chaos suite (package chaos): a
// broker, an owner instance of service "stores" (table "items", sync
// durability, min_sync_standbys 1), or a consumer of that table that
// follows it through the brokers.
//
// The harness starts it, talks to it over stdin/stdout (one JSON object a
// line, see chaos.Request and chaos.Response), SIGKILLs and restarts it.
// Every gRPC connection it makes goes through a fault proxy of its own per
// destination (links.go), which the harness pauses, cuts or slows. A
// consumer's Subscribe streams can duplicate and reorder the frames they
// receive (frames.go). A consumer writes an apply log (every applied
// change's seq and epoch, see chaos.RecChange) and runs a reader that
// checks every read it makes.
//
// It is built by the chaos tests with go build; it is not meant to be run
// by hand.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/replmesh/replmesh/broker"
	"github.com/replmesh/replmesh/chaos"
	"github.com/replmesh/replmesh/replica"
	"github.com/replmesh/replmesh/transport"
	"google.golang.org/grpc/resolver"
)

func main() {
	var (
		role       = flag.String("role", "", "broker, owner or consumer")
		name       = flag.String("name", "", "broker name or instance id")
		dir        = flag.String("dir", "", "data dir (components; brokers: the raft log)")
		listen     = flag.String("listen", "", "gRPC address: the broker's, or a component's replication address (consumers: none unless given)")
		gossip     = flag.String("gossip", "", "broker: memberlist bind address")
		join       = flag.String("join", "", "broker: comma-separated gossip addresses to join")
		brokers    = flag.String("brokers", "", "components: comma-separated broker gRPC addresses")
		service    = flag.String("service", "stores", "the owner service")
		table      = flag.String("table", "items", "the owned / consumed table")
		retention  = flag.Uint64("retention", 0, "owner: keep at most this many changes in the log (0: default)")
		applyLog   = flag.String("applylog", "", "consumer: append the apply log to this file")
		grantLogF  = flag.String("grantlog", "", "owner: log its start and role changes; broker: log its registry's primary every 20ms (see grants.go)")
		inMemory   = flag.Bool("inmemory", false, "owner: keep no data dir (a careless second process with a live instance's name)")
		linksJSON  = flag.String("links", "", "JSON list of chaos.LinkFault to apply from the start")
		framesJSON = flag.String("frames", "", "consumer: JSON chaos.FrameFault to apply from the start")
		logLevel   = flag.String("loglevel", "info", "debug, info, warn or error")
		tlsCA      = flag.String("tls-ca", "", "PEM CA bundle: every link on mTLS with identities (with -tls-cert, -tls-key)")
		tlsCert    = flag.String("tls-cert", "", "PEM certificate with this node's identity")
		tlsKey     = flag.String("tls-key", "", "PEM key of -tls-cert")
		policy     = flag.String("policy", "", "brokers and owners: the access policy file")
		gossipKey  = flag.String("gossip-key", "", "brokers: base64 gossip encryption key")
		insecure   = flag.Bool("insecure", false, "plaintext on addresses that are not loopback")
		ownerAddr  = flag.String("owner", "", "attacker: the primary's replication address")
		primary    = flag.String("primary", "", "attacker: the primary's instance")
		gossipTo   = flag.String("gossip-to", "", "attacker: comma-separated gossip addresses of the brokers")
	)
	flag.Parse()

	var initial []chaos.LinkFault
	if *linksJSON != "" {
		if err := json.Unmarshal([]byte(*linksJSON), &initial); err != nil {
			fatal("bad -links: %v", err)
		}
	}
	var frames chaos.FrameFault
	if *framesJSON != "" {
		if err := json.Unmarshal([]byte(*framesJSON), &frames); err != nil {
			fatal("bad -frames: %v", err)
		}
	}
	lk := newLinks(initial)
	resolver.Register(resolverBuilder{l: lk})

	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*logLevel)); err != nil {
		fatal("bad -loglevel: %v", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))

	sec, err := loadSecurity(*tlsCA, *tlsCert, *tlsKey, *policy, *gossipKey, *insecure, log)
	if err != nil {
		fatal("%v", err)
	}
	n := &node{role: *role, name: *name, svc: *service, links: lk, log: log, out: json.NewEncoder(os.Stdout), sec: sec}
	if *role == chaos.RoleAttacker {
		n.attack(attackTargets{brokers: splitList(*brokers), gossip: splitList(*gossipTo), owner: *ownerAddr,
			primary: *primary, service: *service, table: *table})
		lk.close()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	switch *role {
	case chaos.RoleBroker:
		err = n.startBroker(ctx, *listen, *gossip, splitList(*join), *dir)
		if err == nil && *grantLogF != "" {
			if n.grants, err = openGrantLog(*grantLogF); err == nil {
				n.readRegistry()
			}
		}
	case chaos.RoleOwner:
		if *grantLogF != "" {
			if err = n.startGrantLog(*grantLogF); err != nil {
				break
			}
		}
		data := dataDir(*dir)
		if *inMemory {
			data = ""
		}
		err = n.startOwner(ctx, *listen, data, splitList(*brokers), *service, *table, *retention)
		if err == nil && n.grants != nil {
			n.watchRole()
		}
	case chaos.RoleConsumer:
		err = n.startConsumer(ctx, *listen, *dir, splitList(*brokers), *service, *table, *applyLog, frames)
	default:
		err = fmt.Errorf("unknown -role %q", *role)
	}
	cancel()
	if err != nil {
		fatal("start %s %s: %v", *role, *name, err)
	}
	n.emit(chaos.Ready{Ready: true, Role: *role, Name: *name, Pid: os.Getpid(), Addr: n.addr})
	n.serve()
	n.close()
	lk.close()
}

func splitList(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

func fatal(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "chaosnode: "+format+"\n", args...)
	os.Exit(2)
}

// node is the process's one role.
type node struct {
	role, name string
	svc        string // the owner service
	links      *links
	frames     *frameFaults // consumers: the frame fault of the Subscribe streams
	log        *slog.Logger
	addr       string
	sec        *security

	outMu sync.Mutex
	out   *json.Encoder

	brk    *broker.Broker
	comp   *replica.Component
	grants *grantLog // the grant log (nil: none)
	own    *replica.OwnedTable
	cons   *consumer
}

// emit writes one line to stdout.
func (n *node) emit(v any) {
	n.outMu.Lock()
	defer n.outMu.Unlock()
	if err := n.out.Encode(v); err != nil {
		fatal("stdout: %v", err)
	}
}

// serve answers requests from stdin until quit or EOF (the harness went
// away), each in its own goroutine.
func (n *node) serve() {
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	var wg sync.WaitGroup
	defer wg.Wait()
	for sc.Scan() {
		var req chaos.Request
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
			fatal("bad request %q: %v", sc.Text(), err)
		}
		if req.Op == chaos.OpQuit {
			wg.Wait()
			n.emit(chaos.Response{ID: req.ID})
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp := n.handle(&req)
			resp.ID = req.ID
			n.emit(resp)
		}()
	}
}

func (n *node) handle(req *chaos.Request) (resp chaos.Response) {
	fail := func(err error) chaos.Response { return chaos.Response{Err: err.Error()} }
	switch {
	case req.Op == chaos.OpStatus:
		st, err := n.status()
		if err != nil {
			return fail(err)
		}
		return chaos.Response{Status: st}
	case req.Op == chaos.OpLink && req.Link != nil:
		n.links.set(*req.Link)
		return chaos.Response{}
	case req.Op == chaos.OpFrames && req.Frames != nil && n.frames != nil:
		n.frames.set(*req.Frames)
		return chaos.Response{}
	case req.Op == chaos.OpRemoveBroker && n.brk != nil:
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := n.brk.RaftRemove(ctx, &transport.RaftRemoveRequest{Version: transport.ProtocolVersion, Name: req.Name}); err != nil {
			return fail(err)
		}
		return chaos.Response{}
	case n.own != nil:
		return n.handleOwner(req)
	case n.cons != nil:
		return n.cons.handle(req)
	}
	return chaos.Response{Err: fmt.Sprintf("op %q is not served by a %s", req.Op, n.role)}
}

func (n *node) status() (*chaos.NodeStatus, error) {
	st := &chaos.NodeStatus{Role: n.role}
	if n.links.err != nil {
		return nil, fmt.Errorf("a link proxy could not start: %w", n.links.err)
	}
	st.Links = n.links.status()
	switch {
	case n.brk != nil:
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		bs, err := n.brk.Status(ctx, brokerStatusRequest())
		if err != nil {
			return nil, err
		}
		for _, o := range bs.Owners {
			if o.Service == n.svc {
				st.Primary, st.PrimaryEpoch, st.PrimaryAddr = o.Primary.Instance, o.Epoch, o.Primary.Addr
			}
		}
		for _, b := range bs.Brokers {
			if b.State == "alive" {
				st.Members++
			}
		}
		for _, i := range bs.Instances {
			if i.Service == n.svc && i.Broker != "" && (i.Role == transport.RolePrimary || i.Role == transport.RoleStandby) {
				if st.Sessions == nil {
					st.Sessions = make(map[string]string)
				}
				st.Sessions[i.Instance] = i.Broker
			}
		}
		if r := bs.Raft; r != nil {
			v := &chaos.RaftView{ID: r.ID, State: r.State, Term: r.Term, Leader: r.LeaderName, ConfirmedMs: r.ConfirmedMs}
			for _, m := range r.Members {
				v.Voters = append(v.Voters, fmt.Sprintf("%s/%x", m.Name, m.ID))
			}
			st.Raft = v
		}
		st.Refused = bs.Refused
	case n.own != nil:
		st.OwnerRole, st.Epoch = n.comp.Role()
		st.Head, st.LogID = n.own.Head(), n.own.LogID()
	case n.cons != nil:
		st.Replica = n.cons.status()
		st.Frames = n.frames.status()
	}
	return st, nil
}

func (n *node) close() {
	n.grants.close()
	switch {
	case n.brk != nil:
		_ = n.brk.Close()
	case n.comp != nil:
		if err := n.comp.Close(); err != nil {
			n.log.Error("close", "err", err)
		}
		if n.cons != nil {
			n.cons.stop()
		}
	}
}

// dataDir is where badger lives: a directory under the node's dir, so the
// harness can put other files (a disk filler) on the same file system.
func dataDir(dir string) string { return filepath.Join(dir, "db") }
