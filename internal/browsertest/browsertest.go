// Package browsertest starts a headless Chromium for tests, driven with
// chromedp, and watches the page it loads: script exceptions, console
// errors (a Content-Security-Policy violation is one) and main-frame
// navigations (a page that must update in place must not reload).
//
// The browser is REPLMESH_BROWSER when set, else the first of
// chromium-headless-shell, chromium and headless_shell on PATH
// (.ci/install-browser installs one). Without a browser the test is
// skipped, unless REPLMESH_REQUIRE_BROWSER=1 (CI), when it fails; a
// REPLMESH_BROWSER that names no executable fails too.
//
//	b := browsertest.Start(t)
//	b.Open(browsertest.Serve(t, handler) + "/")
//	b.WaitFor("three rows", `document.querySelectorAll("tr").length === 3`)
//	... // change what the page shows
//	b.WaitFor("four rows", `document.querySelectorAll("tr").length === 4`)
//	if b.Reloaded() { t.Fatal("the page reloaded") }
//	b.Check() // no exception, no console error
package browsertest

import (
	"context"
	"fmt"
	"net"
	"net/http"
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
	opened      int      // navigations when Open returned
}

// Start starts a fresh browser (its own profile directory) for t and
// stops it when t ends. It skips t when no browser is found, or fails it
// when REPLMESH_REQUIRE_BROWSER=1 or REPLMESH_BROWSER names none.
func Start(t testing.TB) *Browser {
	t.Helper()
	path, err := Find()
	switch {
	case err != nil && os.Getenv(EnvBrowser) != "":
		t.Fatal(err) // asked for a browser that is not there
	case err != nil && os.Getenv(EnvRequire) == "1":
		t.Fatalf("%v (%s=1)", err, EnvRequire)
	case err != nil:
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

// WaitFor polls the JavaScript expression expr in the page until it is
// true; after a minute it fails the test, showing the page's text.
func (b *Browser) WaitFor(what, expr string) {
	b.t.Helper()
	ctx, cancel := b.Timeout(time.Minute)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](expr, chromedp.WithPollingInterval(50*time.Millisecond),
		chromedp.WithPollingTimeout(0))); err != nil {
		b.t.Fatalf("the page never showed %s: %v\npage:\n%s\nproblems: %v", what, err, b.Text(`document.body.innerText`), b.Problems())
	}
}

// Text evaluates the JavaScript string expression expr in the page; an
// error comes back as the text "(error)".
func (b *Browser) Text(expr string) string {
	ctx, cancel := b.Timeout(10 * time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](expr))
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	return s
}

// Open loads url in the tab and marks the page's window, for Reloaded.
func (b *Browser) Open(url string) {
	b.t.Helper()
	ctx, cancel := b.Timeout(time.Minute)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
		b.t.Fatalf("open %s: %v", url, err)
	}
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.browsertestMark = true`)); err != nil {
		b.t.Fatalf("mark %s: %v", url, err)
	}
	b.mu.Lock()
	b.opened = b.navigations
	b.mu.Unlock()
}

// Reloaded says whether the page opened by Open has been left or reloaded
// since: its main frame navigated, or its window lost Open's mark.
func (b *Browser) Reloaded() bool {
	b.mu.Lock()
	navigated := b.navigations != b.opened
	b.mu.Unlock()
	return navigated || b.Text(`String(window.browsertestMark === true)`) != "true"
}

// Serve serves h on 127.0.0.1 (a free port) until the test ends and
// returns its base URL.
func Serve(t testing.TB, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return "http://" + ln.Addr().String()
}
