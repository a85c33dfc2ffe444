// Package browsertest starts a headless Chromium for tests, driven with
// chromedp, and watches the page it loads: script exceptions, console
// errors (a Content-Security-Policy violation is one) and main-frame
// navigations (a page that must update in place must not reload).
//
// The browser is REPLMESH_BROWSER when set, else the first of
// chromium-headless-shell, chromium and headless_shell on PATH
// (.ci/install-browser installs one). Without a browser the test is
// skipped, unless REPLMESH_REQUIRE_BROWSER=1 (CI), when it fails.
//
//	b := browsertest.Start(t)
//	if err := chromedp.Do(b.Ctx, chromedp.Navigate(url)); err != nil { ... }
//	n, err := chromedp.Run(b.Ctx, chromedp.Poll[int]("document.querySelectorAll('tr').length > 3"))
//	b.Check() // no exception, no console error
package browsertest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// Environment variables read by Find and Start.
const (
	EnvBrowser = "REPLMESH_BROWSER"         // the browser binary to use
	EnvRequire = "REPLMESH_REQUIRE_BROWSER" // "1": fail, not skip, without a browser
)

// names are the browser binaries looked for on PATH, in order.
var names = []string{"chromium-headless-shell", "chromium", "headless_shell"}

// Find returns the browser binary to use.
func Find() (string, error) {
	if p := os.Getenv(EnvBrowser); p != "" {
		path, err := exec.LookPath(p)
		if err != nil {
			return "", fmt.Errorf("%s=%s: %w", EnvBrowser, p, err)
		}
		return path, nil
	}
	for _, n := range names {
		if path, err := exec.LookPath(n); err == nil {
			return path, nil
		}
	}
	return "", fmt.Errorf("no headless browser: set %s or put one of %s on PATH (.ci/install-browser installs it)",
		EnvBrowser, strings.Join(names, ", "))
}

// Browser is one headless browser with one tab, for one test.
type Browser struct {
	// Ctx is the chromedp context of the tab; it ends with the test.
	Ctx context.Context

	t           testing.TB
	mu          sync.Mutex
	problems    []string // exceptions and console errors, in order
	navigations int      // main-frame navigations
}

// Start starts a fresh browser (its own profile directory) for t and
// stops it when t ends. It skips t when no browser is found, or fails it
// when REPLMESH_REQUIRE_BROWSER=1.
func Start(t testing.TB) *Browser {
	t.Helper()
	path, err := Find()
	if err != nil {
		if os.Getenv(EnvRequire) == "1" {
			t.Fatalf("%v (%s=1)", err, EnvRequire)
		}
		t.Skipf("skipped: %v", err)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		// A loaded machine must not slow the page's timers down.
		chromedp.Flag("disable-background-timer-throttling", true),
		chromedp.Flag("disable-renderer-backgrounding", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
	}
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf), chromedp.WithErrorf(func(f string, args ...any) {
		t.Logf("chromedp: "+f, args...)
	}))
	b := &Browser{Ctx: ctx, t: t}
	t.Cleanup(func() {
		// Close the browser gracefully (bounded), then free what is left.
		cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
		defer ccancel()
		_ = chromedp.Cancel(cctx)
		cancel()
		acancel()
	})
	// The first call starts the browser; it gets no deadline of its own
	// (that would end the browser with it).
	if err := chromedp.Listen(ctx, b.event); err != nil {
		t.Fatalf("start browser %s: %v", path, err)
	}
	for _, enable := range []cdp.Command[cdp.Empty, cdp.Empty]{runtime.Enable, log.Enable} {
		if _, err := chromedp.Call(ctx, enable, cdp.Empty{}); err != nil {
			t.Fatalf("browser %s: %s: %v", path, enable.Method, err)
		}
	}
	if _, err := chromedp.Call(ctx, page.Enable, page.EnableParams{}); err != nil {
		t.Fatalf("browser %s: %s: %v", path, page.Enable.Method, err)
	}
	return b
}

// event records the page events a test checks; it runs on chromedp's
// event goroutine and must not block.
func (b *Browser) event(ev any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch ev := ev.(type) {
	case *runtime.EventExceptionThrown:
		d := ev.ExceptionDetails
		msg := d.Text
		if d.Exception != nil && d.Exception.Description != "" {
			msg += ": " + d.Exception.Description
		}
		b.problems = append(b.problems, fmt.Sprintf("exception at %s:%d: %s", d.URL, d.LineNumber, msg))
	case *runtime.EventConsoleAPICalled:
		if ev.Type == runtime.ConsoleAPICalledTypeError || ev.Type == runtime.ConsoleAPICalledTypeAssert {
			var parts []string
			for _, a := range ev.Args {
				parts = append(parts, string(a.Value)+a.Description)
			}
			b.problems = append(b.problems, "console."+string(ev.Type)+": "+strings.Join(parts, " "))
		}
	case *log.EventEntryAdded:
		if ev.Entry.Level == log.EntryLevelError {
			b.problems = append(b.problems, fmt.Sprintf("browser log (%s): %s %s", ev.Entry.Source, ev.Entry.Text, ev.Entry.URL))
		}
	case *page.EventFrameNavigated:
		if ev.Frame.ParentID == "" {
			b.navigations++
		}
	}
}

// Navigations returns how many times the main frame navigated (a load or
// a reload each count one).
func (b *Browser) Navigations() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.navigations
}

// Problems returns the exceptions and console errors seen so far.
func (b *Browser) Problems() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.problems...)
}

// Check fails the test if the page threw an exception or logged an error.
// A test that makes requests fail on purpose reads Problems instead.
func (b *Browser) Check() {
	b.t.Helper()
	if p := b.Problems(); len(p) > 0 {
		b.t.Fatalf("the page reported problems:\n  %s", strings.Join(p, "\n  "))
	}
}

// Timeout derives a context of b's tab that ends after d (or with the
// test), for one action.
func (b *Browser) Timeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(b.Ctx, d)
}
