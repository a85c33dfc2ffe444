package testutil

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// SelfArgs returns the command line that re-executes the running test
// binary to run only the test function named test (once, bounded by
// timeout): the body of a child process. The child tells its role from
// the environment its parent gives it (ChildSpec.Env); without it, the
// test function returns at once, so it passes when the suite runs it.
func SelfArgs(test string, timeout time.Duration) []string {
	return []string{os.Args[0], "-test.run=^" + test + "$", "-test.count=1", "-test.timeout=" + timeout.String()}
}

// ChildSpec says how to run a child process and read what it writes.
type ChildSpec struct {
	// Name names the child in failures ("owner run 2").
	Name string
	// Args is the command and its arguments (SelfArgs for the test
	// binary itself).
	Args []string
	// Env is the child's environment; nil: this process's.
	Env []string
	// Stdin gives the child a pipe on stdin, written with Send.
	Stdin bool
	// Prefix marks the child's report lines on stdout. A report line
	// whose first word is "bad" is a problem the child found (see
	// Problem); Report gets every other one, without the prefix. The
	// lines that are not reports, and stderr, make the child's output.
	Prefix string
	// Report handles one report line; at is this process's clock when it
	// was read. It runs under the child's lock (Lock), from one goroutine:
	// the state it writes is read under that lock.
	Report func(line string, at time.Time)
	// State, if set, describes the child's last reports in failure
	// messages; it runs under the child's lock.
	State func() string
}

// Child is a process a test runs: started with Start, read line by line
// while it runs, killed when the test ends if it is still running. Its
// methods fail the test (with the child's state and output) on anything
// unexpected: a problem the child reported, an early exit, a deadline.
type Child struct {
	t      testing.TB
	spec   ChildSpec
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	exited chan struct{} // closed once the output is read to the end and the process reaped

	mu       sync.Mutex
	changed  chan struct{} // closed and replaced on every line read
	waitErr  error
	output   bytes.Buffer
	problems []string
}

// NewChild returns the child spec describes, not started yet (Start), so
// that spec's callbacks may refer to it.
func NewChild(t testing.TB, spec ChildSpec) *Child {
	return &Child{t: t, spec: spec, exited: make(chan struct{}), changed: make(chan struct{})}
}

// String returns the child's name.
func (c *Child) String() string { return c.spec.Name }

// Start starts the process and the goroutines that read its stdout and
// stderr. When the test ends, a child still running is killed.
func (c *Child) Start() {
	c.t.Helper()
	c.cmd = exec.Command(c.spec.Args[0], c.spec.Args[1:]...)
	c.cmd.Env = c.spec.Env
	stdout, err := c.cmd.StdoutPipe()
	if err != nil {
		c.t.Fatal(err)
	}
	stderr, err := c.cmd.StderrPipe()
	if err != nil {
		c.t.Fatal(err)
	}
	if c.spec.Stdin {
		if c.stdin, err = c.cmd.StdinPipe(); err != nil {
			c.t.Fatal(err)
		}
	}
	if err := c.cmd.Start(); err != nil {
		c.t.Fatalf("start %s: %v", c, err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { c.read(stdout, true) })
	wg.Go(func() { c.read(stderr, false) })
	go func() {
		wg.Wait() // Wait closes the pipes: read them to the end first
		err := c.cmd.Wait()
		c.mu.Lock()
		c.waitErr = err
		c.mu.Unlock()
		close(c.exited)
	}()
	c.t.Cleanup(func() {
		select {
		case <-c.exited:
		default:
			_ = c.cmd.Process.Kill()
			<-c.exited
		}
	})
}

// read passes the lines of r to the report handler or the output.
func (c *Child) read(r io.Reader, reports bool) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line, at := sc.Text(), time.Now()
		c.mu.Lock()
		rest, ok := strings.CutPrefix(line, c.spec.Prefix)
		switch {
		case !reports || c.spec.Prefix == "" || !ok:
			c.output.WriteString(line + "\n")
		case rest == "bad" || strings.HasPrefix(rest, "bad "):
			c.problems = append(c.problems, rest)
		case c.spec.Report != nil:
			c.spec.Report(rest, at)
		}
		close(c.changed)
		c.changed = make(chan struct{})
		c.mu.Unlock()
	}
	_, _ = io.Copy(io.Discard, r)
}

// Lock takes the lock the report handler runs under.
func (c *Child) Lock() { c.mu.Lock() }

// Unlock releases the lock Lock took.
func (c *Child) Unlock() { c.mu.Unlock() }

// Locked returns f's result, computed under c's lock.
func Locked[T any](c *Child, f func() T) T {
	c.mu.Lock()
	defer c.mu.Unlock()
	return f()
}

// Problem records a problem with the child's reports (a malformed line);
// the report handler calls it, under the child's lock.
func (c *Child) Problem(p string) { c.problems = append(c.problems, p) }

// Uint returns field i of a report line's fields f as a number, for a
// report handler. A missing field ("short line: ") or one that is no
// unsigned number ("bad number in: ") is recorded as a problem naming
// line; the result is then 0 (or what strconv.ParseUint returns). Call it
// under the child's lock, as Problem.
func (c *Child) Uint(f []string, i int, line string) uint64 {
	if i >= len(f) {
		c.Problem("short line: " + line)
		return 0
	}
	v, err := strconv.ParseUint(f[i], 10, 64)
	if err != nil {
		c.Problem("bad number in: " + line)
	}
	return v
}

// Pid returns the process id.
func (c *Child) Pid() int { return c.cmd.Process.Pid }

// Exited is closed once the process has exited and its output is read to
// the end: the state its reports wrote is final from then on.
func (c *Child) Exited() <-chan struct{} { return c.exited }

// Err returns the process's exit error (nil: exit 0), once it has exited.
func (c *Child) Err() error { return Locked(c, func() error { return c.waitErr }) }

// Output returns the child's stderr and the stdout lines that are not
// reports.
func (c *Child) Output() string { return Locked(c, c.output.String) }

// Fatalf fails the test with the child's state and the tail of its output.
func (c *Child) Fatalf(format string, args ...any) {
	c.t.Helper()
	c.mu.Lock()
	out := c.output.String()
	state := ""
	if c.spec.State != nil {
		state = c.spec.State()
	}
	c.mu.Unlock()
	if len(out) > 8000 {
		out = "..." + out[len(out)-8000:]
	}
	c.t.Fatalf("%s: %s\n--- its state: %s\n--- its output:\n%s", c, fmt.Sprintf(format, args...), state, out)
}

// checkProblems fails the test if the child reported a problem.
func (c *Child) checkProblems() {
	c.t.Helper()
	if p := Locked(c, func() []string { return slices.Clone(c.problems) }); len(p) > 0 {
		c.Fatalf("reported: %s", strings.Join(p, "; "))
	}
}

// Check fails the test if the child reported a problem or has exited.
func (c *Child) Check() {
	c.t.Helper()
	c.checkProblems()
	select {
	case <-c.exited:
		c.Fatalf("exited: %v", c.Err())
	default:
	}
}

// WaitFor waits until cond (called under the child's lock, after each
// line the child writes) holds, failing the test if the child reports a
// problem or exits first, or if d passes first.
func (c *Child) WaitFor(d time.Duration, what string, cond func() bool) {
	c.t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		c.mu.Lock()
		ok, bad, changed := cond(), len(c.problems) > 0, c.changed
		c.mu.Unlock()
		if bad {
			c.checkProblems()
		}
		if ok {
			return
		}
		select {
		case <-changed:
		case <-c.exited:
			// The last lines are read: one more look at cond.
			if Locked(c, cond) {
				return
			}
			c.checkProblems()
			c.Fatalf("exited (%v) while waiting for %s", c.Err(), what)
		case <-timer.C:
			c.Fatalf("timed out after %s waiting for %s", d, what)
		}
	}
}

// Send writes line and a newline to the child's stdin.
func (c *Child) Send(line string) {
	c.t.Helper()
	if _, err := io.WriteString(c.stdin, line+"\n"); err != nil {
		c.Fatalf("send %q: %v", line, err)
	}
}

// Signal sends sig to the process, which must still be running.
func (c *Child) Signal(sig os.Signal) {
	c.t.Helper()
	if err := c.cmd.Process.Signal(sig); err != nil {
		c.Fatalf("signal %v: %v", sig, err)
	}
}

// Kill SIGKILLs the process, waits until its output is read to the end,
// and fails the test if it reported a problem.
func (c *Child) Kill() {
	c.t.Helper()
	c.Signal(syscall.SIGKILL)
	<-c.exited
	c.checkProblems()
}

// ExpectCleanExit waits up to d for the process to exit after what (the
// signal or command that asked it to) and fails the test unless it exited
// 0, closed reports true (under the child's lock) and it reported no
// problem.
func (c *Child) ExpectCleanExit(d time.Duration, what string, closed func() bool) {
	c.t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-c.exited:
	case <-timer.C:
		c.Fatalf("did not exit within %s of %s", d, what)
	}
	c.mu.Lock()
	err, ok, bad := c.waitErr, closed(), slices.Clone(c.problems)
	c.mu.Unlock()
	if err != nil || !ok || len(bad) > 0 {
		c.Fatalf("unclean exit: %v (closed %v, reported %q)", err, ok, bad)
	}
}

// WaitStopped waits up to d until the SIGSTOPped process has stopped
// (Linux: its state in /proc is T). Where /proc cannot tell, it logs so
// and returns.
func (c *Child) WaitStopped(d time.Duration) {
	c.t.Helper()
	path := fmt.Sprintf("/proc/%d/stat", c.Pid())
	deadline := time.Now().Add(d)
	for {
		b, err := os.ReadFile(path)
		if err != nil {
			c.t.Logf("cannot tell whether %s has stopped: %v", c, err)
			return
		}
		// The state follows the command name in parentheses.
		if i := bytes.LastIndexByte(b, ')'); i >= 0 && bytes.HasPrefix(b[i+1:], []byte(" T")) {
			return
		}
		if time.Now().After(deadline) {
			c.Fatalf("not stopped %s after SIGSTOP: %s", d, b)
		}
		time.Sleep(time.Millisecond) // a stop writes no line to wait on
	}
}
