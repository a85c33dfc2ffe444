package testutil

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const childRoleEnv = "TESTUTIL_CHILD_ROLE"

// TestChildBody is the child of the Child tests: it returns at once unless
// TESTUTIL_CHILD_ROLE is set. It writes "@t ready", then answers each line
// on stdin: "quit" ends it ("@t closed"), "exit" ends it without a word,
// any other line comes back as "@t got <line>", or as a problem for "oops".
func TestChildBody(t *testing.T) {
	if os.Getenv(childRoleEnv) == "" {
		return
	}
	fmt.Fprintln(os.Stderr, "a line on stderr")
	fmt.Println("a plain line on stdout")
	fmt.Println("@t ready")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		switch l := sc.Text(); l {
		case "quit":
			fmt.Println("@t closed")
			return
		case "exit":
			return
		case "oops":
			fmt.Println("@t bad oops")
		default:
			fmt.Println("@t got " + l)
		}
	}
}

// child runs TestChildBody; its reports land in got under the child's
// lock.
type child struct {
	*Child
	ready, closed bool
	got           []string
}

func startChild(t testing.TB) *child {
	c := &child{}
	c.Child = NewChild(t, ChildSpec{
		Name:   "the child",
		Args:   SelfArgs("TestChildBody", time.Minute),
		Env:    append(os.Environ(), childRoleEnv+"=1"),
		Stdin:  true,
		Prefix: "@t ",
		Report: func(line string, _ time.Time) {
			switch {
			case line == "ready":
				c.ready = true
			case line == "closed":
				c.closed = true
			case strings.HasPrefix(line, "got "):
				c.got = append(c.got, strings.TrimPrefix(line, "got "))
			default:
				c.Problem("unknown line: " + line)
			}
		},
		State: func() string { return fmt.Sprintf("%d answers", len(c.got)) },
	})
	c.Start()
	c.WaitFor(time.Minute, "ready", func() bool { return c.ready })
	return c
}

func TestChild(t *testing.T) {
	if testing.Short() {
		t.Skip("runs child processes; skipped in -short mode")
	}
	t.Run("reports, commands and a clean exit", func(t *testing.T) {
		c := startChild(t)
		c.Send("x")
		c.Send("y")
		c.WaitFor(time.Minute, "two answers", func() bool { return len(c.got) == 2 })
		c.Check()
		c.Send("quit")
		c.ExpectCleanExit(time.Minute, "quit", func() bool { return c.closed })
		if got := Locked(c.Child, func() string { return strings.Join(c.got, ",") }); got != "x,y" {
			t.Errorf("answers %q, want x,y", got)
		}
		out := c.Output()
		for _, want := range []string{"a line on stderr\n", "a plain line on stdout\n"} {
			if !strings.Contains(out, want) {
				t.Errorf("output %q lacks %q", out, want)
			}
		}
		if strings.Contains(out, "@t ") {
			t.Errorf("output %q holds report lines", out)
		}
	})
	t.Run("kill", func(t *testing.T) {
		c := startChild(t)
		c.Kill()
		if err := c.Err(); err == nil {
			t.Error("a killed child exited 0")
		}
	})
	t.Run("signal", func(t *testing.T) {
		c := startChild(t)
		c.Signal(syscall.SIGTERM)
		<-c.Exited()
		if err := c.Err(); err == nil || !strings.Contains(err.Error(), "terminated") {
			t.Errorf("exit after SIGTERM: %v", err)
		}
	})

	// The failures: each must fail the test, with a message naming the
	// child and what went wrong.
	failures := []struct {
		name string
		run  func(c *child)
		want string
	}{
		{"a problem while waiting", func(c *child) {
			c.Send("oops")
			c.WaitFor(time.Minute, "nothing", func() bool { return false })
		}, "the child: reported: bad oops\n--- its state: 0 answers"},
		{"a problem found at the kill", func(c *child) {
			c.Send("oops")
			c.Send("x")
			c.WaitFor(time.Minute, "an answer", func() bool { return len(c.got) == 1 })
			c.Kill()
		}, "the child: reported: bad oops"},
		{"an exit while waiting", func(c *child) {
			c.Send("exit")
			c.WaitFor(time.Minute, "an answer", func() bool { return len(c.got) == 1 })
		}, "the child: exited (<nil>) while waiting for an answer"},
		{"an exit while running", func(c *child) {
			c.Send("exit")
			<-c.Exited()
			c.Check()
		}, "the child: exited: <nil>"},
		{"a deadline", func(c *child) {
			c.WaitFor(time.Millisecond, "an answer", func() bool { return len(c.got) == 1 })
		}, "the child: timed out after 1ms waiting for an answer"},
		{"an exit without closing", func(c *child) {
			c.Send("exit")
			c.ExpectCleanExit(time.Minute, "exit", func() bool { return c.closed })
		}, "the child: unclean exit: <nil> (closed false, reported [])"},
		{"a send after the exit", func(c *child) {
			c.Send("quit")
			<-c.Exited()
			c.Send("late")
		}, `the child: send "late": `},
	}
	for _, tt := range failures {
		t.Run(tt.name, func(t *testing.T) {
			ft := &fatalTB{TB: t}
			done := make(chan struct{})
			go func() {
				defer close(done)
				tt.run(startChild(ft))
			}()
			<-done
			ft.mu.Lock()
			msg := ft.msg
			ft.mu.Unlock()
			if !strings.Contains(msg, tt.want) {
				t.Errorf("failure %q, want it to hold %q", msg, tt.want)
			}
		})
	}
}

// fatalTB records the first Fatal of a helper run in its own goroutine,
// and ends that goroutine as testing.T would.
type fatalTB struct {
	testing.TB
	mu  sync.Mutex
	msg string
}

func (f *fatalTB) Fatalf(format string, args ...any) {
	f.mu.Lock()
	if f.msg == "" {
		f.msg = fmt.Sprintf(format, args...)
	}
	f.mu.Unlock()
	runtime.Goexit()
}

func (f *fatalTB) Fatal(args ...any) { f.Fatalf("%s", fmt.Sprint(args...)) }

func TestChild_Uint(t *testing.T) {
	tests := []struct {
		name    string
		line    string
		i       int
		want    uint64
		problem string
	}{
		{"a number", "ack 42 k1", 1, 42, ""},
		{"the first field", "7 x", 0, 7, ""},
		{"missing", "ack", 1, 0, "short line: ack"},
		{"not a number", "ack x4 k1", 1, 0, "bad number in: ack x4 k1"},
		{"negative", "ack -1", 1, 0, "bad number in: ack -1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &Child{}
			got := c.Uint(strings.Fields(tt.line), tt.i, tt.line)
			if got != tt.want {
				t.Errorf("Uint(%q, %d) = %d, want %d", tt.line, tt.i, got, tt.want)
			}
			var want []string
			if tt.problem != "" {
				want = []string{tt.problem}
			}
			if !slices.Equal(c.problems, want) {
				t.Errorf("problems = %q, want %q", c.problems, want)
			}
		})
	}
}
