package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"
)

// BinDir is where the tests of one package build the binaries they run:
// a temporary directory that Main makes and removes, built into once per
// test process by Build. A package keeps one in a variable:
//
//	var bins testutil.BinDir
//
//	func TestMain(m *testing.M) { bins.Main(m, "replbroker-test") }
//
//	func binary(t *testing.T) string {
//		return filepath.Join(bins.Build(t, []string{"."}), "replbroker")
//	}
type BinDir struct {
	dir  string
	once sync.Once
	err  error
}

// Main is a TestMain: it makes the directory (named after pattern, as
// os.MkdirTemp does), runs the tests, removes the directory and, when the
// tests passed, fails the run if goroutines are left (goleak.Find with
// opts). It exits the process with the result.
func (b *BinDir) Main(m *testing.M, pattern string, opts ...goleak.Option) {
	dir, err := os.MkdirTemp("", pattern)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	b.dir = dir
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(opts...); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

// Build runs `go build -o DIR/ ARGS...` for each of builds (flags and
// packages, resolved from the test's directory), on its first call only,
// and returns the directory. Every call of a test process must ask for the
// same builds. A failed build fails t, on that call and every later one.
func (b *BinDir) Build(t testing.TB, builds ...[]string) string {
	t.Helper()
	b.once.Do(func() {
		if b.dir == "" {
			b.err = fmt.Errorf("no directory: BinDir.Main is not the package's TestMain")
			return
		}
		for _, args := range builds {
			args = append([]string{"build", "-o", b.dir + string(filepath.Separator)}, args...)
			out, err := exec.Command("go", args...).CombinedOutput()
			if err != nil {
				b.err = fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
				return
			}
		}
	})
	if b.err != nil {
		t.Fatalf("go build: %v", b.err)
	}
	return b.dir
}
