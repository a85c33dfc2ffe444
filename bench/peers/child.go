package main

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
	"time"

	"github.com/replmesh/replmesh/internal/benchkit"
)

// A reader (or owner) process is this binary re-executed with envRole set;
// its parameters travel in the other variables. It writes lines on stdout
// (a JSON childResult, or the owner's "ready"/"head" lines) and reads
// commands from stdin; its stderr goes to a file in the scratch dir,
// quoted when it fails.
const (
	envRole    = "PEERBENCH_ROLE"
	envAddr    = "PEERBENCH_ADDR"   // owner address / NATS URL
	envDir     = "PEERBENCH_DIR"    // data dir ("" in memory)
	envTarget  = "PEERBENCH_TARGET" // seq / revision to reach
	envRows    = "PEERBENCH_ROWS"   // rows a full transfer must bring
	envResume  = "PEERBENCH_RESUME" // NATS: revision to resume after
	envKeys    = "PEERBENCH_KEYS"   // owner: key space of its writes
	envValue   = "PEERBENCH_VALUE"  // owner: value size
	envLog     = "PEERBENCH_VERBOSE"
	envProf    = "PEERBENCH_CPUPROFILE" // replmesh reader: CPU profile path prefix
	envIndexed = "PEERBENCH_INDEXED"    // replmesh reader (W2): report the peak RSS once the hash index is built

	roleRMReader   = "rm-reader"
	roleRMOwner    = "rm-owner"
	roleNATSReader = "nats-reader"
)

// childResult is what a reader process reports when it is done.
type childResult struct {
	Rows      uint64  `json:"rows"`      // rows it holds (or received in a full transfer)
	Seq       uint64  `json:"seq"`       // seq / revision it reached
	Seconds   float64 `json:"seconds"`   // from subscribing to done, by its own clock
	PeakRSS   int64   `json:"peak_rss"`  // VmHWM, bytes
	Transfers uint64  `json:"transfers"` // full transfers taken (replmesh)
	Resumes   uint64  `json:"resumes"`   // streams resumed (replmesh)
	// at is when the parent read the result line: a reader writes it once
	// caught up, before it shuts down, so catch-up times end here and not
	// at the process's exit (Redis's end at its synced offset).
	at time.Time
}

// childMain runs the role named by envRole and returns the exit code.
func childMain() int {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	var err error
	switch role := os.Getenv(envRole); role {
	case roleRMReader:
		err = rmReaderMain(ctx)
	case roleRMOwner:
		err = rmOwnerMain(ctx, os.Stdin, os.Stdout)
	case roleNATSReader:
		err = natsReaderMain(ctx)
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "peers %s: %v\n", os.Getenv(envRole), err)
		return 1
	}
	return 0
}

// envInt reads a numeric parameter; missing is 0.
func envInt(name string) (uint64, error) {
	s := os.Getenv(name)
	if s == "" {
		return 0, nil
	}
	var v uint64
	if _, err := fmt.Sscan(s, &v); err != nil {
		return 0, fmt.Errorf("%s=%q: %w", name, s, err)
	}
	return v, nil
}

func writeResult(w io.Writer, r childResult) error {
	r.PeakRSS = benchkit.ProcStatus(0, "VmHWM")["VmHWM"]
	return json.NewEncoder(w).Encode(r)
}

// child is a running child process.
type child struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	out    *bufio.Scanner
	errLog string
}

// spawn starts this binary in role with env (NAME=value).
func (b *bench) spawn(ctx context.Context, name, role string, env ...string) (*child, error) {
	c := &child{errLog: filepath.Join(b.dir, name+".stderr")}
	exe := b.exe
	if role == roleRMReader && b.readerExe != "" {
		exe = b.readerExe
	}
	c.cmd = exec.CommandContext(ctx, exe)
	c.cmd.Env = append(os.Environ(), append([]string{envRole + "=" + role}, env...)...)
	if b.logger != nil {
		c.cmd.Env = append(c.cmd.Env, envLog+"=1")
	}
	if b.readerProfile != "" && role == roleRMReader {
		c.cmd.Env = append(c.cmd.Env, envProf+"="+b.readerProfile+"-"+name)
	}
	stderr, err := os.Create(c.errLog)
	if err != nil {
		return nil, err
	}
	defer stderr.Close()
	c.cmd.Stderr = stderr
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	stdout, err := c.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	c.out = bufio.NewScanner(stdout)
	c.out.Buffer(make([]byte, 64<<10), 1<<20)
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return c, nil
}

// runReader runs a reader process in role to its end and returns its
// result.
func (b *bench) runReader(ctx context.Context, name, role string, env ...string) (childResult, error) {
	c, err := b.spawn(ctx, name, role, env...)
	if err != nil {
		return childResult{}, err
	}
	res, err := c.result()
	if err == nil {
		err = c.wait()
	}
	if err != nil {
		c.kill()
	}
	return res, err
}

// line reads the child's next stdout line.
func (c *child) line() (string, error) {
	if c.out.Scan() {
		return c.out.Text(), nil
	}
	err := c.out.Err()
	if err == nil {
		err = io.EOF
	}
	return "", c.failed(err)
}

// result reads the child's JSON result line.
func (c *child) result() (childResult, error) {
	var r childResult
	l, err := c.line()
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal([]byte(l), &r); err != nil {
		return r, fmt.Errorf("child said %q: %w", l, err)
	}
	r.at = time.Now()
	return r, nil
}

// send writes one command line to the child.
func (c *child) send(cmd string) error {
	_, err := io.WriteString(c.stdin, cmd+"\n")
	return err
}

// wait closes the child's stdin (its signal to finish) and waits for it.
func (c *child) wait() error {
	c.stdin.Close()
	if err := c.cmd.Wait(); err != nil {
		return c.failed(err)
	}
	return nil
}

// kill ends a child that is no longer wanted (an error path).
func (c *child) kill() {
	if c.cmd.ProcessState == nil {
		c.cmd.Process.Kill()
		c.cmd.Wait()
	}
}

// failed wraps err with the tail of the child's stderr.
func (c *child) failed(err error) error {
	b, _ := os.ReadFile(c.errLog)
	s := strings.TrimSpace(string(b))
	if len(s) > 2000 {
		s = s[len(s)-2000:]
	}
	if s == "" {
		return err
	}
	return errors.Join(err, fmt.Errorf("child stderr: %s", s))
}
