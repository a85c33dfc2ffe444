package benchkit

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/replmesh/replmesh/internal/cputime"
	"github.com/replmesh/replmesh/replica"
)

func TestSI(t *testing.T) {
	tests := []struct {
		v    float64
		want string
	}{
		{0, "0"},
		{999.4, "999"},
		{1000, "1.0k"},
		{172_740, "172.7k"},
		{999_999, "1000.0k"},
		{1_000_000, "1.00M"},
		{1_254_000, "1.25M"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := SI(tt.v); got != tt.want {
				t.Errorf("SI(%v) = %q, want %q", tt.v, got, tt.want)
			}
		})
	}
}

func TestFormatDuration(t *testing.T) {
	tests := []struct {
		d                 time.Duration
		sDigits, msDigits int
		want              string
	}{
		{1500 * time.Millisecond, 2, 2, "1.50 s"},
		{1500 * time.Millisecond, 3, 1, "1.500 s"},
		{time.Second, 2, 2, "1.00 s"},
		{7_912_345 * time.Nanosecond, 2, 2, "7.91 ms"},
		{7_912_345 * time.Nanosecond, 3, 1, "7.9 ms"},
		{time.Millisecond, 3, 1, "1.0 ms"},
		{1_234 * time.Nanosecond, 2, 2, "1.2 µs"},
		{time.Microsecond, 3, 1, "1.0 µs"},
		{999, 2, 2, "999 ns"},
		{0, 3, 1, "0 ns"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := FormatDuration(tt.d, tt.sDigits, tt.msDigits); got != tt.want {
				t.Errorf("FormatDuration(%v, %d, %d) = %q, want %q", tt.d, tt.sDigits, tt.msDigits, got, tt.want)
			}
		})
	}
}

func TestAppendKey(t *testing.T) {
	tests := []struct {
		dst  string
		i    int
		want string
	}{
		{"", 0, "k000000000"},
		{"", 7, "k000000007"},
		{"", 123_456_789, "k123456789"},
		{"x", 42, "xk000000042"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := string(AppendKey([]byte(tt.dst), tt.i)); got != tt.want {
				t.Errorf("AppendKey(%q, %d) = %q, want %q", tt.dst, tt.i, got, tt.want)
			}
		})
	}
	if !(string(AppendKey(nil, 9)) < string(AppendKey(nil, 10))) {
		t.Error("keys do not sort by row")
	}
}

func TestParseStatus(t *testing.T) {
	const status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nRssAnon:\t bad kB\nThreads:\t4\n"
	tests := []struct {
		name  string
		names []string
		want  map[string]int64
	}{
		{"one field", []string{"VmHWM"}, map[string]int64{"VmHWM": 2048 << 10}},
		{"two fields", []string{"VmHWM", "VmRSS"}, map[string]int64{"VmHWM": 2048 << 10, "VmRSS": 1024 << 10}},
		{"unparsable is absent", []string{"RssAnon"}, map[string]int64{}},
		{"missing is absent", []string{"RssFile"}, map[string]int64{}},
		{"a count without unit", []string{"Threads"}, map[string]int64{"Threads": 4 << 10}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := parseStatus(strings.NewReader(status), tt.names)
			if len(got) != len(tt.want) {
				t.Fatalf("parseStatus(%v) = %v, want %v", tt.names, got, tt.want)
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Errorf("parseStatus(%v)[%s] = %d, want %d", tt.names, k, got[k], v)
				}
			}
		})
	}
}

func TestLoopback(t *testing.T) {
	buf := make([]byte, 64<<10)
	r, err := Loopback(context.Background(), 20*time.Millisecond, buf)
	if err != nil {
		t.Fatal(err)
	}
	if r.Bytes <= 0 {
		t.Fatalf("Loopback = %+v: want a positive byte count", r)
	}
	if r.Elapsed <= 0 || r.BytesPerSec() <= 0 {
		t.Fatalf("Loopback = %+v, %.0f B/s: want a positive time and rate", r, r.BytesPerSec())
	}
}

func TestLoopback_CanceledWritesNothing(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r, err := Loopback(ctx, time.Hour, make([]byte, 1024))
	if err != nil {
		t.Fatal(err)
	}
	if r.Bytes != 0 {
		t.Fatalf("Loopback with a canceled context wrote %d bytes, want 0", r.Bytes)
	}
}

func TestConfig(t *testing.T) {
	cfg := Config(nil, "svc", "inst", "", "127.0.0.1:0")
	if cfg.Service != "svc" || cfg.Instance != "inst" || cfg.DataDir != "" || cfg.ListenAddr != "127.0.0.1:0" {
		t.Errorf("Config names = %q %q %q %q", cfg.Service, cfg.Instance, cfg.DataDir, cfg.ListenAddr)
	}
	if cfg.Durability != replica.Async {
		t.Errorf("Durability = %v, want replica.Async", cfg.Durability)
	}
	def := replica.DefaultConfig()
	if cfg.MaxApplyBytes != def.MaxApplyBytes {
		t.Errorf("MaxApplyBytes = %d, want the default %d", cfg.MaxApplyBytes, def.MaxApplyBytes)
	}
}

// TestWaitQuiet: a process with goroutines spinning is not quiet; once
// they stop, it goes quiet (measured on this process's CPU time: the
// machine's may be busy with other tests).
func TestWaitQuiet(t *testing.T) {
	if _, ok := cputime.Process(); !ok {
		t.Skip("no process CPU time on this platform")
	}
	ctx := context.Background()
	const window = 100 * time.Millisecond
	var stop atomic.Bool
	var done sync.WaitGroup
	for range 2 {
		done.Go(func() {
			for !stop.Load() {
			}
		})
	}
	_, quiet := waitQuiet(ctx, 350*time.Millisecond, window, cputime.Process)
	stop.Store(true)
	done.Wait()
	if quiet {
		t.Fatal("waitQuiet reported quiet while two goroutines spun")
	}
	if waited, quiet := waitQuiet(ctx, time.Minute, window, cputime.Process); !quiet {
		t.Fatalf("waitQuiet: not quiet after %v with nothing running", waited)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, quiet := waitQuiet(cctx, time.Minute, window, cputime.Process); quiet {
		t.Fatal("waitQuiet reported quiet on a canceled context")
	}
	if _, quiet := waitQuiet(ctx, time.Minute, window, func() (time.Duration, bool) { return 0, false }); !quiet {
		t.Fatal("waitQuiet without a CPU time to read did not return at once, quiet")
	}
}
