//go:build !rmreader

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/replmesh/replmesh/internal/benchkit"
)

// Redis's side: redis-server child processes, a master and replicas with
// replicaof, all durable the same way (appendonly yes, appendfsync
// everysec, no RDB snapshots). The master's writer pipelines SETs, window
// at a time. Settings where Redis's defaults would measure a delay rather
// than the work: repl-diskless-sync-delay 0 (the master would wait 5 s
// for more replicas before a full sync), a replication backlog large
// enough for the missed changes (so a replica can resume, as the other
// systems do), and no output buffer limits (a subscriber or replica that
// falls behind would be disconnected).
type redisProc struct {
	cmd    *exec.Cmd
	port   int
	dir    string
	cl     *redis.Client
	exited chan struct{}
}

func (p *redisProc) addr() string { return fmt.Sprintf("127.0.0.1:%d", p.port) }

// redisGroup is the processes of one workload under one dir.
type redisGroup struct {
	b     *bench
	dir   string
	procs []*redisProc
}

func (b *bench) redisGroup(name string) (*redisGroup, error) {
	dir, err := b.subdir(name)
	if err != nil {
		return nil, err
	}
	return &redisGroup{b: b, dir: dir}, nil
}

// redisMaster makes a group and starts its master.
func (b *bench) redisMaster(ctx context.Context, name string) (*redisGroup, *redisProc, error) {
	g, err := b.redisGroup(name)
	if err != nil {
		return nil, nil, err
	}
	m, err := g.start(ctx, "master", 0)
	if err != nil {
		return nil, nil, errors.Join(err, g.close())
	}
	return g, m, nil
}

// start starts a process on sub of the group's dir (see startRedis).
func (g *redisGroup) start(ctx context.Context, sub string, port int, extra ...string) (*redisProc, error) {
	p, err := g.b.startRedis(ctx, filepath.Join(g.dir, sub), port, extra...)
	if err != nil {
		return nil, err
	}
	g.procs = append(g.procs, p)
	return p, nil
}

// close stops every process, replicas first (a master waits for them),
// and removes the dir.
func (g *redisGroup) close() error {
	var errs []error
	for _, p := range slices.Backward(g.procs) {
		errs = append(errs, p.stop())
	}
	return errors.Join(append(errs, os.RemoveAll(g.dir))...)
}

// startRedis starts redis-server on dir and port (0: a free one) with
// extra options.
func (b *bench) startRedis(ctx context.Context, dir string, port int, extra ...string) (*redisProc, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if port == 0 {
		var err error
		if port, err = freePort(); err != nil {
			return nil, err
		}
	}
	args := append([]string{
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir, "--daemonize", "no",
		"--logfile", filepath.Join(dir, "redis.log"),
		"--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
		"--repl-diskless-sync-delay", "0", "--repl-backlog-size", "256mb",
		"--client-output-buffer-limit", "replica 0 0 0 pubsub 0 0 0",
	}, extra...)
	p := &redisProc{cmd: exec.Command(b.redis, args...), port: port, dir: dir, exited: make(chan struct{})}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start redis-server: %w", err)
	}
	go func() { p.cmd.Wait(); close(p.exited) }()
	p.cl = redis.NewClient(&redis.Options{Addr: p.addr(), MaxRetries: -1})
	err := waitUntil(time.Now().Add(time.Minute), 2*time.Millisecond, "redis-server start", func() (bool, error) {
		select {
		case <-p.exited:
			return false, fmt.Errorf("redis-server exited: %s", p.logTail())
		default:
		}
		return p.cl.Ping(ctx).Err() == nil, nil
	})
	if err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

func (p *redisProc) logTail() string {
	b, _ := os.ReadFile(filepath.Join(p.dir, "redis.log"))
	s := strings.TrimSpace(string(b))
	if len(s) > 1500 {
		s = s[len(s)-1500:]
	}
	return s
}

// stop ends the process as an operator would (SIGTERM: it fsyncs its AOF
// and exits) and waits for it. Redis refuses a SIGTERM while it writes its
// first AOF (after a full sync): the signal is repeated until it exits.
func (p *redisProc) stop() error {
	p.cl.Close()
	for range 60 {
		select {
		case <-p.exited:
			return nil
		default:
		}
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
			return nil
		case <-time.After(time.Second):
		}
	}
	p.cmd.Process.Kill()
	<-p.exited
	return fmt.Errorf("redis-server on port %d did not stop on SIGTERM: %s", p.port, p.logTail())
}

// info returns the fields of one INFO section.
func (p *redisProc) info(ctx context.Context, section string) (map[string]string, error) {
	s, err := p.cl.Info(ctx, section).Result()
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, l := range strings.Split(s, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(l), ":"); ok {
			out[k] = v
		}
	}
	return out, nil
}

// offset is a master's replication offset.
func (p *redisProc) offset(ctx context.Context) (int64, error) {
	in, err := p.info(ctx, "replication")
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(in["master_repl_offset"], 10, 64)
}

// syncs returns the master's full and partial sync counters.
func (p *redisProc) syncs(ctx context.Context) (full, partial int64, err error) {
	in, err := p.info(ctx, "stats")
	if err != nil {
		return 0, 0, err
	}
	full, _ = strconv.ParseInt(in["sync_full"], 10, 64)
	partial, _ = strconv.ParseInt(in["sync_partial_ok"], 10, 64)
	return full, partial, nil
}

// waitSynced waits until replica r's link to its master is up and it has
// processed the master's stream up to offset. A Redis replica has no event
// for it: INFO replication is polled every step (1 ms), which bounds the
// figure's resolution.
func (r *redisProc) waitSynced(ctx context.Context, offset int64) error {
	return waitUntil(time.Now().Add(setupTimeout), time.Millisecond, "replica sync", func() (bool, error) {
		select {
		case <-r.exited:
			return false, fmt.Errorf("replica exited: %s", r.logTail())
		default:
		}
		in, err := r.info(ctx, "replication")
		if err != nil {
			return false, nil // loading or restarting: not yet
		}
		if in["master_link_status"] != "up" || in["master_sync_in_progress"] != "0" {
			return false, nil
		}
		got, err := strconv.ParseInt(in["slave_repl_offset"], 10, 64)
		if err != nil {
			return false, fmt.Errorf("slave_repl_offset %q: %w", in["slave_repl_offset"], err)
		}
		return got >= offset, nil
	})
}

// waitOnline waits until master m streams to n replicas: after a full
// sync a master holds the stream back until the replica's first
// REPLCONF ACK (sent once a second), and the fan-out must not measure
// that wait.
func (m *redisProc) waitOnline(ctx context.Context, n int) error {
	return waitUntil(time.Now().Add(setupTimeout), time.Millisecond, "replicas online", func() (bool, error) {
		in, err := m.info(ctx, "replication")
		if err != nil {
			return false, err
		}
		online := 0
		for i := range n {
			if strings.Contains(in[fmt.Sprintf("slave%d", i)], "state=online") {
				online++
			}
		}
		return online == n, nil
	})
}

// redisWrite pipelines n SETs (ordinals first..) to cl, window per
// pipeline; sent (if not nil) receives each write's time by ordinal.
func redisWrite(ctx context.Context, cl *redis.Client, first, n, keys, size, window int, sent []atomic.Int64) error {
	for i := first; i < first+n; {
		pipe := cl.Pipeline()
		for end := min(first+n, i+window); i < end; i++ {
			v := newValue(size, i)
			if sent != nil {
				ts, _, _ := stamp(v)
				sent[i-first].Store(ts.UnixNano())
			}
			pipe.Set(ctx, key(i%keys), v, 0)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("redis pipeline: %w", err)
		}
	}
	return nil
}

func (b *bench) redisFanout(ctx context.Context) error {
	return b.perReaders(func(n int) error { return b.redisFanoutOne(ctx, n) })
}

// redisFanoutOne: a master and n replica processes. A Redis replica calls
// nobody back when it applies a write, and polling it for each change
// would measure the poll; the one push it offers is keyspace
// notifications (notify-keyspace-events K$ on the replicas, where they
// fire for the writes the master streams), so each reader is a
// PSUBSCRIBE __keyspace@0__:* on its replica. The notification carries
// the key, not the value: deliveries come in the master's order, so the
// k-th notification is the k-th write (checked by its key) and its latency
// is measured from that write's send time, recorded by ordinal.
func (b *bench) redisFanoutOne(ctx context.Context, n int) (err error) {
	b.progress("W1 redis: %d changes to %d replica(s)", b.sz.Changes, n)
	g, m, err := b.redisMaster(ctx, fmt.Sprintf("redis-w1-%d", n))
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, g.close()) }()
	var reps []*redisProc
	for i := range n {
		r, err := g.start(ctx, fmt.Sprintf("r%02d", i), 0,
			"--replicaof", "127.0.0.1", strconv.Itoa(m.port), "--notify-keyspace-events", "K$")
		if err != nil {
			return err
		}
		reps = append(reps, r)
	}
	off, err := m.offset(ctx)
	if err != nil {
		return err
	}
	for _, r := range reps {
		if err := r.waitSynced(ctx, off); err != nil {
			return err
		}
	}
	if err := m.waitOnline(ctx, n); err != nil {
		return err
	}
	sent := make([]atomic.Int64, b.sz.Changes)
	probes := make([]*probe, n)
	const prefix = "__keyspace@0__:"
	for i, r := range reps {
		ps := r.cl.PSubscribe(ctx, prefix+"*")
		defer ps.Close()
		if _, err := ps.Receive(ctx); err != nil {
			return fmt.Errorf("psubscribe: %w", err)
		}
		p := newProbe(b.sz.Changes)
		probes[i] = p
		go func() {
			for k := 0; k < b.sz.Changes; k++ {
				msg, err := ps.ReceiveMessage(ctx)
				if err != nil {
					p.fail(err)
					return
				}
				now := time.Now()
				if want := prefix + key(k%b.sz.Keys); msg.Channel != want || msg.Payload != "set" {
					p.fail(fmt.Errorf("notification %d is %s %s, want %s set", k, msg.Channel, msg.Payload, want))
				}
				p.add(now.Sub(time.Unix(0, sent[k].Load())))
			}
		}()
	}
	start := time.Now()
	if err := redisWrite(ctx, m.cl, 0, b.sz.Changes, b.sz.Keys, b.sz.Value, b.sz.Window, sent); err != nil {
		return err
	}
	parts, err := waitProbes(ctx, probes)
	if err != nil {
		return err
	}
	return b.addFanout(sysRedis, n, start, time.Now(), parts)
}

// redisBigTable loads the W2/W4 table into a master, starts a new replica
// process and times its full sync (W2), then times GETs on it (W4).
func (b *bench) redisBigTable(ctx context.Context) (err error) {
	g, m, err := b.redisMaster(ctx, "redis-big")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, g.close()) }()
	b.progress("W2 redis: loading %d rows", b.sz.Rows)
	if err := redisWrite(ctx, m.cl, 0, b.sz.Rows, b.sz.Rows, b.sz.Value, 1000, nil); err != nil {
		return err
	}
	off, err := m.offset(ctx)
	if err != nil {
		return err
	}
	r, err := g.start(ctx, "replica", 0)
	if err != nil {
		return err
	}
	b.settleQuiet(ctx, "W2 "+sysRedis)
	b.progress("W2 redis: a new replica process takes a full sync")
	full0, _, err := m.syncs(ctx)
	if err != nil {
		return err
	}
	start := time.Now()
	if err := r.cl.ReplicaOf(ctx, "127.0.0.1", strconv.Itoa(m.port)).Err(); err != nil {
		return fmt.Errorf("replicaof: %w", err)
	}
	if err := r.waitSynced(ctx, off); err != nil {
		return err
	}
	took := time.Since(start)
	n, err := r.cl.DBSize(ctx).Result()
	if err != nil {
		return err
	}
	if full1, _, err := m.syncs(ctx); err != nil {
		return err
	} else if full1 != full0+1 {
		return fmt.Errorf("the new replica took %d full syncs, want 1", full1-full0)
	}
	if n != int64(b.sz.Rows) {
		return fmt.Errorf("replica holds %d keys, want %d", n, b.sz.Rows)
	}
	if b.does("w2") {
		b.addTransfer(sysRedis, float64(n)/took.Seconds(), benchkit.ProcStatus(r.cmd.Process.Pid, "VmHWM")["VmHWM"],
			"REPLICAOF to synced (diskless full sync, no delay); progress polled every 1 ms")
	}
	if b.does("w4") {
		// Not settleQuiet: see the comment of quietWait.
		benchkit.Settle()
		b.progress("W4 redis: %d GETs on the replica", b.sz.Reads)
		keys := b.readKeys()
		lat, err := timeReads(keys, func(i int) ([]byte, bool, error) {
			v, err := r.cl.Get(ctx, keys[i]).Bytes()
			if errors.Is(err, redis.Nil) {
				return nil, false, nil
			}
			return v, err == nil, err
		})
		if err != nil {
			return fmt.Errorf("get: %w", err)
		}
		b.addReads(caseRead, sysRedis, lat)
	}
	return nil
}

// redisCatchUp is W3 for Redis: a replica process misses the changes
// while it is stopped, and is restarted on its dir. (Redis resumes a
// replica by partial sync only while it keeps its master's replication id
// in memory or in an RDB written at shutdown; with appendonly it restarts
// from its AOF, which does not hold it, so the restart is a full sync. A
// relink by REPLICAOF NO ONE and back is a full sync too, the replica
// having taken a new id: neither is a resume, so only the restart, the
// case the other systems are measured in, is reported.)
func (b *bench) redisCatchUp(ctx context.Context) (err error) {
	g, m, err := b.redisMaster(ctx, "redis-w3")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, g.close()) }()
	replicaOf := []string{"--replicaof", "127.0.0.1", strconv.Itoa(m.port)}
	r, err := g.start(ctx, "replica", 0, replicaOf...)
	if err != nil {
		return err
	}
	written := 0
	// write writes the next n changes (see w3Keys) and returns the
	// master's offset.
	write := func(n int) (int64, error) {
		if err := redisWrite(ctx, m.cl, written, n, b.w3Keys(), b.sz.Value, b.sz.Window, nil); err != nil {
			return 0, err
		}
		written += n
		return m.offset(ctx)
	}
	off, err := write(b.sz.Keys)
	if err != nil {
		return err
	}
	if err := r.waitSynced(ctx, off); err != nil {
		return err
	}
	// syncNote says how the replica caught up.
	syncNote := func(f0, p0 int64) (string, error) {
		f1, p1, err := m.syncs(ctx)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("%d full, %d partial sync(s); progress polled every 1 ms", f1-f0, p1-p0), nil
	}

	b.progress("W3 redis: %d missed changes, replica process restarted", b.sz.Missed)
	port := r.port
	if err := r.stop(); err != nil {
		return err
	}
	if off, err = write(b.sz.Missed); err != nil {
		return err
	}
	f0, p0, err := m.syncs(ctx)
	if err != nil {
		return err
	}
	benchkit.Settle()
	start := time.Now()
	r, err = g.start(ctx, "replica", port, replicaOf...)
	if err != nil {
		return err
	}
	if err := r.waitSynced(ctx, off); err != nil {
		return err
	}
	took := time.Since(start)
	note, err := syncNote(f0, p0)
	if err != nil {
		return err
	}
	b.addCatchUp(caseReaderRestart, sysRedis, took, "process start (its AOF) to synced: "+note)
	return nil
}

// freePort returns a loopback port free a moment ago, for the processes
// that cannot report the port they bound (redis-server).
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitUntil polls cond every step until it is true, fails, or deadline
// passes. It serves the measurements of systems that have no event for the
// condition (a Redis replica's sync state is only visible in INFO).
func waitUntil(deadline time.Time, step time.Duration, what string, cond func() (bool, error)) error {
	for {
		ok, err := cond()
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not done by the deadline", what)
		}
		time.Sleep(step)
	}
}
