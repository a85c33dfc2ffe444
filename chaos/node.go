package chaos

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// errDown is returned by a call to a node that is not running.
var errDown = errors.New("chaos: node is down")

// node is one process of the cluster as the harness sees it: its fixed
// identity (name, role, data dir, addresses), which survives restarts, and
// the process currently running it, if any.
type node struct {
	cl     *cluster
	name   string
	role   string
	dir    string   // the node's data directory (badger in dir/db; may be a small tmpfs)
	logDir string   // where its logs go (never on its data file system)
	addr   string   // broker gRPC address or owner replication address (consumers: "" unless spec.consumerListen)
	gossip string   // broker memberlist address
	ip     string   // real-network level: the node's address in its namespace
	sec    []string // its security flags: certificate, policy, gossip key (see pki)

	mu    sync.Mutex
	proc  *proc
	nruns int  // processes started so far
	wiped bool // the data dir was wiped since the last start (a W record is due)
	// inMemory: an owner that keeps no data dir (the dup-instance fault's
	// newcomer).
	inMemory bool
	// startFrames is the frame fault a consumer starts with (nil: none).
	startFrames *FrameFault
}

// proc is one running chaosnode process.
type proc struct {
	n      *node
	cmd    *exec.Cmd
	pid    int
	stdin  io.WriteCloser
	inMu   sync.Mutex
	nextID atomic.Uint64
	exited chan struct{}

	mu      sync.Mutex
	pending map[uint64]chan Response
	waitErr error
	bad     []string // unparsable output
}

func (n *node) String() string { return n.name }

// logPath is the node's stderr log, appended to by every run.
func (n *node) logPath() string { return filepath.Join(n.logDir, n.name+".log") }

// grantLogPath is an owner's or a broker's grant log (see grants.go).
func (n *node) grantLogPath() string { return filepath.Join(n.logDir, n.name+".grants.log") }

// applyLogPath is a consumer's apply log.
func (n *node) applyLogPath() string { return filepath.Join(n.logDir, n.name+".apply.log") }

// current returns the running process (nil when down).
func (n *node) current() *proc {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.proc
}

func (n *node) up() bool {
	p := n.current()
	if p == nil {
		return false
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// start runs a new process for n and waits for its ready line.
func (n *node) start(ctx context.Context) error {
	n.mu.Lock()
	if n.proc != nil {
		select {
		case <-n.proc.exited:
		default:
			n.mu.Unlock()
			return fmt.Errorf("start %s: already running", n.name)
		}
	}
	n.nruns++
	run := n.nruns
	wiped := n.wiped
	n.wiped = false
	n.mu.Unlock()
	if err := os.MkdirAll(n.dir, 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(n.logDir, 0o755); err != nil {
		return err
	}
	if wiped && n.role == RoleConsumer {
		if err := appendFile(n.applyLogPath(), RecWipe+"\n"); err != nil {
			return err
		}
	}
	args := n.cl.args(n)
	var cmd *exec.Cmd
	if ns := n.cl.netnsOf(n); ns != "" {
		cmd = exec.Command("ip", append([]string{"netns", "exec", ns, n.cl.bin}, args...)...)
	} else {
		cmd = exec.Command(n.cl.bin, args...)
	}
	cmd.SysProcAttr = procAttr()
	logf, err := os.OpenFile(n.logPath(), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "=== run %d: %s\n", run, strings.Join(cmd.Args, " "))
	cmd.Stderr = logf
	out, err := cmd.StdoutPipe()
	if err != nil {
		logf.Close()
		return err
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		logf.Close()
		return err
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", n.name, err)
	}
	p := &proc{n: n, cmd: cmd, pid: cmd.Process.Pid, stdin: in, exited: make(chan struct{}), pending: map[uint64]chan Response{}}
	readyCh := make(chan Ready, 1)
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 512<<20)
		first := true
		for sc.Scan() {
			line := sc.Bytes()
			if first {
				first = false
				var r Ready
				if err := json.Unmarshal(line, &r); err == nil && r.Ready {
					readyCh <- r
					continue
				}
			}
			var resp Response
			if err := json.Unmarshal(line, &resp); err != nil || resp.ID == 0 {
				p.mu.Lock()
				p.bad = append(p.bad, string(line))
				p.mu.Unlock()
				continue
			}
			p.mu.Lock()
			ch := p.pending[resp.ID]
			delete(p.pending, resp.ID)
			p.mu.Unlock()
			if ch != nil {
				ch <- resp
			}
		}
		_, _ = io.Copy(io.Discard, out)
		err := cmd.Wait()
		logf.Close()
		p.mu.Lock()
		p.waitErr = err
		p.mu.Unlock()
		close(p.exited)
	}()
	n.mu.Lock()
	n.proc = p
	n.mu.Unlock()
	select {
	case <-readyCh:
		return nil
	case <-p.exited:
		return fmt.Errorf("start %s: exited before it was ready (%v); see %s:\n%s", n.name, p.err(), n.logPath(), tail(n.logPath(), 2000))
	case <-ctx.Done():
		p.kill()
		return fmt.Errorf("start %s: not ready: %w; see %s:\n%s", n.name, ctx.Err(), n.logPath(), tail(n.logPath(), 2000))
	}
}

func (p *proc) err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.waitErr
}

// kill SIGKILLs the process and waits until it is gone.
func (p *proc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

// kill SIGKILLs n's process, if any.
func (n *node) kill() {
	if p := n.current(); p != nil {
		p.kill()
	}
}

// stop asks n's process to quit and waits for it (SIGKILL after d).
func (n *node) stop(d time.Duration) error {
	p := n.current()
	if p == nil {
		return nil
	}
	select {
	case <-p.exited:
		return nil
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	_, err := p.call(ctx, Request{Op: OpQuit})
	if err == nil {
		select {
		case <-p.exited:
			if werr := p.err(); werr != nil {
				return fmt.Errorf("%s exited with %v", n.name, werr)
			}
			return nil
		case <-ctx.Done():
		}
	}
	// A goroutine dump to its log (Go prints one on SIGQUIT), then SIGKILL.
	_ = p.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-p.exited:
	case <-time.After(3 * time.Second):
	}
	p.kill()
	return fmt.Errorf("%s did not quit within %s (%v); killed (goroutine dump in %s)", n.name, d, err, n.logPath())
}

// call sends req to n's process and waits for the answer.
func (n *node) call(ctx context.Context, req Request) (Response, error) {
	p := n.current()
	if p == nil {
		return Response{}, errDown
	}
	return p.call(ctx, req)
}

func (p *proc) call(ctx context.Context, req Request) (Response, error) {
	req.ID = p.nextID.Add(1)
	ch := make(chan Response, 1)
	p.mu.Lock()
	p.pending[req.ID] = ch
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.pending, req.ID)
		p.mu.Unlock()
	}()
	b, err := json.Marshal(req)
	if err != nil {
		return Response{}, err
	}
	p.inMu.Lock()
	_, err = p.stdin.Write(append(b, '\n'))
	p.inMu.Unlock()
	if err != nil {
		return Response{}, fmt.Errorf("%s: %w (%v)", p.n.name, errDown, err)
	}
	select {
	case r := <-ch:
		return r, nil
	case <-p.exited:
		return Response{}, fmt.Errorf("%s: %w (exited: %v)", p.n.name, errDown, p.err())
	case <-ctx.Done():
		return Response{}, fmt.Errorf("%s %s: %w", p.n.name, req.Op, ctx.Err())
	}
}

// status returns n's status (errDown when it is not running).
func (n *node) status(ctx context.Context) (*NodeStatus, error) {
	r, err := n.call(ctx, Request{Op: OpStatus})
	if err != nil {
		return nil, err
	}
	if r.Err != "" {
		return nil, fmt.Errorf("%s status: %s", n.name, r.Err)
	}
	return r.Status, nil
}

func (n *node) digest(ctx context.Context) (Digest, error) {
	r, err := n.call(ctx, Request{Op: OpDigest})
	if err != nil {
		return Digest{}, err
	}
	if r.Err != "" || r.Digest == nil {
		return Digest{}, fmt.Errorf("%s digest: %s", n.name, r.Err)
	}
	return *r.Digest, nil
}

func (n *node) dump(ctx context.Context) ([]Row, error) {
	r, err := n.call(ctx, Request{Op: OpDump})
	if err != nil {
		return nil, err
	}
	if r.Err != "" {
		return nil, fmt.Errorf("%s dump: %s", n.name, r.Err)
	}
	return r.Rows, nil
}

// appendFile appends s to path in one write.
func appendFile(path, s string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	_, err = f.WriteString(s)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// tail returns the last n bytes of the file at path.
func tail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(st.Size()-n, 0)
	b := make([]byte, st.Size()-off)
	_, _ = f.ReadAt(b, off)
	return string(b)
}
