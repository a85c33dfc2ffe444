package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/vmihailenco/msgpack/v5"
)

// gossipVersion is the first byte of every gossip payload (broadcasts,
// reliable sends and push/pull state). Brokers drop payloads of another
// version rather than guess.
const gossipVersion byte = 1

// maxBroadcast is the largest record payload spread by UDP gossip; larger
// records (instances with many tables or subscriptions) are sent to every
// member over TCP instead. maxQueued is the broadcast queue depth from which
// records go over TCP too (UDP gossip carries only a few records per round),
// in batches of up to maxDirectBatch bytes.
const (
	maxBroadcast   = 1000
	maxQueued      = 32
	maxDirectBatch = 256 << 10
)

// nodeMeta is what a broker announces about itself in memberlist.
type nodeMeta struct {
	GRPC string `msgpack:"g"`
}

// member is one broker as membership shows it.
type member struct {
	Name   string
	GRPC   string // gRPC address ("" if its meta is unreadable)
	State  string // alive or gone
	IP     string // gossip address
	Port   uint16
	Gossip string // gossip address, host:port
}

// node returns a memberlist node to send to.
func (m member) node() *memberlist.Node {
	return &memberlist.Node{Name: m.Name, Addr: net.ParseIP(m.IP), Port: m.Port}
}

func encodeGossip(g *gossipMsg) ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteByte(gossipVersion)
	enc := msgpack.NewEncoder(&buf)
	enc.SetSortMapKeys(true)
	if err := enc.Encode(g); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func decodeGossip(b []byte) (*gossipMsg, error) {
	if len(b) == 0 {
		return nil, errors.New("empty gossip payload")
	}
	if b[0] != gossipVersion {
		return nil, fmt.Errorf("gossip payload version %d, this build speaks %d", b[0], gossipVersion)
	}
	g := new(gossipMsg)
	if err := msgpack.Unmarshal(b[1:], g); err != nil {
		return nil, fmt.Errorf("decode gossip: %w", err)
	}
	for _, r := range g.Instances {
		if r == nil || !validName(r.Service) || !validName(r.Instance) {
			return nil, errors.New("decode gossip: bad instance record")
		}
	}
	for _, o := range g.Owners {
		if o == nil || !validName(o.Service) {
			return nil, errors.New("decode gossip: bad owner record")
		}
	}
	for _, m := range g.Modes {
		if m == nil || !validName(m.Service) || !validName(m.Table) || checkMode("mode", m.Mode) != nil {
			return nil, errors.New("decode gossip: bad mode record")
		}
	}
	return g, nil
}

// broadcast is one record queued for UDP gossip; a newer broadcast of the
// same record replaces an older one still in the queue.
type broadcast struct {
	name    string
	rec     *gossipMsg // the one record
	msg     []byte     // rec, encoded
	refresh bool       // heads and positions only: UDP gossip is enough
}

func (b *broadcast) Invalidates(o memberlist.Broadcast) bool {
	nb, ok := o.(memberlist.NamedBroadcast)
	return ok && nb.Name() == b.name
}
func (b *broadcast) Message() []byte { return b.msg }
func (b *broadcast) Finished()       {}
func (b *broadcast) Name() string    { return b.name }

// delegate implements memberlist.Delegate and memberlist.EventDelegate for
// a broker. memberlist calls it from its own goroutines, some while holding
// its locks: so the event methods take no broker lock and never block, and
// the broker never calls memberlist while holding its own lock.
//
// Membership is read from the events (which memberlist delivers under its
// lock, so copying the node there is race-free), never from
// Memberlist.Members, whose nodes memberlist keeps writing.
type delegate struct {
	b    *Broker
	meta []byte

	mu    sync.Mutex
	nodes map[string]member // every broker heard of, by name
}

func (d *delegate) NodeMeta(limit int) []byte {
	if len(d.meta) > limit {
		return nil
	}
	return d.meta
}

func (d *delegate) NotifyMsg(buf []byte) {
	g, err := decodeGossip(buf)
	if err != nil {
		d.b.log.Warn("dropped gossip message", "err", err)
		return
	}
	d.b.metrics.gossipIn.Inc()
	d.b.merge(g)
}

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.b.queue.GetBroadcasts(overhead, limit)
}

func (d *delegate) LocalState(join bool) []byte {
	buf, err := d.b.localState()
	if err != nil {
		d.b.log.Error("encode registry state", "err", err)
		return nil
	}
	return buf
}

func (d *delegate) MergeRemoteState(buf []byte, join bool) {
	if len(buf) == 0 {
		return
	}
	g, err := decodeGossip(buf)
	if err != nil {
		d.b.log.Warn("dropped remote registry state", "err", err)
		return
	}
	d.b.merge(g)
	if join {
		// A join's state exchange (either side): this broker now holds the
		// cluster's registry.
		d.b.mu.Lock()
		d.b.setReadyLocked()
		d.b.mu.Unlock()
	}
}

func (d *delegate) NotifyJoin(n *memberlist.Node)   { d.note(n, "alive") }
func (d *delegate) NotifyUpdate(n *memberlist.Node) { d.note(n, "alive") }

// NotifyLeave: the broker died or left. (memberlist does not keep
// Node.State up to date, so the two cannot be told apart here.)
func (d *delegate) NotifyLeave(n *memberlist.Node) { d.note(n, "gone") }

func (d *delegate) note(n *memberlist.Node, state string) {
	var meta nodeMeta
	_ = msgpack.Unmarshal(n.Meta, &meta)
	m := member{Name: n.Name, GRPC: meta.GRPC, State: state, IP: n.Addr.String(), Port: n.Port,
		Gossip: net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))}
	d.mu.Lock()
	d.nodes[n.Name] = m
	d.mu.Unlock()
	d.b.kickLoop()
}

// members returns the live brokers and the departed ones, each sorted by
// name.
func (d *delegate) members() (live, departed []member) {
	d.mu.Lock()
	for _, m := range d.nodes {
		if m.State == "alive" {
			live = append(live, m)
		} else {
			departed = append(departed, m)
		}
	}
	d.mu.Unlock()
	byName := func(a, b member) int { return strings.Compare(a.Name, b.Name) }
	slices.SortFunc(live, byName)
	slices.SortFunc(departed, byName)
	return live, departed
}

// slogWriter routes memberlist's log lines ("[LEVEL] memberlist: ...") to
// slog at the matching level.
type slogWriter struct{ log *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	// memberlist's log.Logger has no flags, but tolerate a date prefix.
	if i := strings.IndexByte(line, '['); i > 0 {
		line = line[i:]
	}
	level := slog.LevelInfo
	for prefix, l := range map[string]slog.Level{
		"[DEBUG]": slog.LevelDebug, "[TRACE]": slog.LevelDebug, "[INFO]": slog.LevelInfo,
		"[WARN]": slog.LevelWarn, "[ERR]": slog.LevelError, "[ERROR]": slog.LevelError,
	} {
		if strings.HasPrefix(line, prefix) {
			level = l
			line = strings.TrimSpace(strings.TrimPrefix(line, prefix))
			break
		}
	}
	w.log.Log(context.Background(), level, line, "component", "memberlist")
	return len(p), nil
}

// memberlistConfig builds the memberlist configuration of a broker.
func (b *Broker) memberlistConfig(d *delegate) (*memberlist.Config, error) {
	base := b.cfg.Gossip
	if base == nil {
		base = memberlist.DefaultLANConfig()
	}
	mc := *base // copy: memberlist writes the bound port back into it
	mc.Name = b.cfg.Name
	host, port, err := splitHostPort(b.cfg.BindAddr)
	if err != nil {
		return nil, err
	}
	mc.BindAddr = host
	mc.BindPort = port
	mc.AdvertiseAddr, mc.AdvertisePort = "", 0
	if port != 0 {
		mc.AdvertisePort = port
	}
	if b.cfg.AdvertiseAddr != "" {
		ah, ap, _ := splitHostPort(b.cfg.AdvertiseAddr)
		mc.AdvertiseAddr, mc.AdvertisePort = ah, ap
	}
	mc.Delegate = d
	mc.Events = d
	mc.Conflict, mc.Merge, mc.Ping, mc.Alive = nil, nil, nil, nil
	mc.SecretKey = nil
	mc.Keyring = nil
	if len(b.cfg.GossipKey) > 0 {
		mc.SecretKey = slices.Clone(b.cfg.GossipKey)
	}
	mc.Label = b.cfg.ClusterLabel
	mc.Logger = nil
	mc.LogOutput = slogWriter{b.log}
	mc.Transport = nil
	return &mc, nil
}

// joinLogEvery is how often an address of Config.Join that stays
// unreachable is logged again (see joinLog).
const joinLogEvery = time.Minute

// join tries every address of Config.Join, one at a time so that each
// failure is logged on its own line (see joinLog). It is run in a
// goroutine at start and, while the broker is alone, every RejoinInterval.
func (b *Broker) join(ctx context.Context) {
	start := time.Now()
	contacted := 0
	for _, addr := range b.cfg.Join {
		n, err := b.ml.Join([]string{addr})
		if ctx.Err() != nil {
			return
		}
		switch {
		case n > 0:
			err = nil
		case err == nil:
			err = errors.New("no broker answered")
		}
		b.joins.attempt(b.log, addr, err, time.Now())
		contacted += n
	}
	if contacted > 0 {
		b.log.Info("joined the broker cluster", "contacted", contacted, "took", time.Since(start))
		b.mu.Lock()
		b.setReadyLocked()
		b.mu.Unlock()
		b.kickLoop()
	}
}

// joinLog logs the join attempts of each address of Config.Join: a
// failure at WARN at once, then at most one line every `every` while the
// address stays unreachable, counting the failures not logged; the first
// success after failures at INFO. Every failure also shows at DEBUG.
type joinLog struct {
	every time.Duration

	mu    sync.Mutex
	addrs map[string]*joinRun // addresses failing now
}

// joinRun is a run of failures of one address.
type joinRun struct {
	failures, unlogged int
	since, logged      time.Time
}

// attempt records one join attempt of addr at now (err nil: it joined)
// and logs what it should.
func (l *joinLog) attempt(log *slog.Logger, addr string, err error, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	run := l.addrs[addr]
	if err == nil {
		if run != nil {
			log.Info("reached a broker to join", "addr", addr, "failed_attempts", run.failures,
				"unreachable_for", now.Sub(run.since).Round(time.Millisecond))
			delete(l.addrs, addr)
		}
		return
	}
	msg := oneLine(err)
	log.Debug("join attempt failed", "addr", addr, "err", msg)
	switch {
	case run == nil:
		if l.addrs == nil {
			l.addrs = make(map[string]*joinRun)
		}
		l.addrs[addr] = &joinRun{failures: 1, since: now, logged: now}
		log.Warn("cannot reach a broker to join; retrying", "addr", addr, "err", msg)
	case now.Sub(run.logged) >= l.every:
		run.failures++
		log.Warn("still cannot reach a broker to join; retrying", "addr", addr, "err", msg, "failed_attempts", run.failures,
			"not_logged", run.unlogged, "unreachable_for", now.Sub(run.since).Round(time.Millisecond))
		run.unlogged, run.logged = 0, now
	default:
		run.failures++
		run.unlogged++
	}
}

// oneLine flattens an error that spans lines (memberlist's Join returns a
// go-multierror: "1 error occurred:\n\t* Failed to join ...") to one line.
func oneLine(err error) string {
	var parts []string
	for _, line := range strings.Split(err.Error(), "\n") {
		line = strings.TrimSpace(line)
		line = strings.TrimSpace(strings.TrimPrefix(line, "* "))
		if line == "" || strings.HasSuffix(line, "occurred:") {
			continue
		}
		parts = append(parts, line)
	}
	return strings.Join(parts, "; ")
}
