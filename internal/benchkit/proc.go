package benchkit

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
)

// ProcStatus returns the named fields (kB) of /proc/PID/status in bytes;
// pid 0 is this process. Fields it cannot read (no /proc, no such field)
// are absent.
func ProcStatus(pid int, names ...string) map[string]int64 {
	path := "/proc/self/status"
	if pid != 0 {
		path = fmt.Sprintf("/proc/%d/status", pid)
	}
	f, err := os.Open(path)
	if err != nil {
		return map[string]int64{}
	}
	defer f.Close()
	return parseStatus(f, names)
}

// parseStatus reads the named "Name:  123 kB" lines of a status file.
func parseStatus(r io.Reader, names []string) map[string]int64 {
	out := map[string]int64{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || !slices.Contains(names, name) {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
		if err == nil {
			out[name] = kb << 10
		}
	}
	return out
}

// Settle collects the garbage of earlier runs (badger's memtables live in
// the Go heap) and returns it to the OS, so every measurement starts from
// the same state.
func Settle() {
	runtime.GC()
	debug.FreeOSMemory()
}
