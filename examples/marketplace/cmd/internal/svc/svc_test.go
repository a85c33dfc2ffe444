package svc

import (
	"context"
	"errors"
	"flag"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/replmesh/replmesh/internal/testutil"
	"github.com/replmesh/replmesh/transport"
)

const testToken = "svc-test-token-0123456789abcdef"

// flags parses args as a service binary does.
func flags(t *testing.T, args ...string) *Flags {
	t.Helper()
	fs := flag.NewFlagSet("svc", flag.ContinueOnError)
	f := Register(fs, "t-1", "127.0.0.1:0")
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return f
}

// serveFlags runs f.Serve with a handler answering "ok" until the test
// ends, and returns the base URL.
func serveFlags(t *testing.T, f *Flags) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addr := make(chan string, 1)
	done := make(chan error, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
	go func() { done <- f.Serve(ctx, testutil.Logger(t), h, func(a string) { addr <- a }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	select {
	case a := <-addr:
		return "http://" + a
	case err := <-done:
		t.Fatalf("Serve: %v", err)
	}
	return ""
}

func status(t *testing.T, url, auth string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(testutil.Context(t, 10*time.Second), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, resp.Header.Get("WWW-Authenticate")
}

// With -http-token-file every request (the API and /metrics) needs the
// token: right 200, wrong or missing 401 with WWW-Authenticate.
func TestFlagsServe_Token(t *testing.T) {
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte(testToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := serveFlags(t, flags(t, "-http-token-file", tok))
	tests := []struct {
		name, auth string
		want       int
	}{
		{"right", "Bearer " + testToken, http.StatusOK},
		{"wrong", "Bearer " + strings.ToUpper(testToken), http.StatusUnauthorized},
		{"missing", "", http.StatusUnauthorized},
	}
	for _, path := range []string{"/metrics", "/status"} {
		for _, tc := range tests {
			t.Run(path+" "+tc.name, func(t *testing.T) {
				code, www := status(t, base+path, tc.auth)
				if code != tc.want {
					t.Fatalf("got %d, want %d", code, tc.want)
				}
				if code == http.StatusUnauthorized && !strings.Contains(www, `Bearer realm="replmesh"`) {
					t.Errorf("WWW-Authenticate %q", www)
				}
			})
		}
	}
}

// Without a token HTTP serves open on loopback (as before), and refuses an
// address other hosts can reach unless -http-insecure.
func TestFlagsServe_Bind(t *testing.T) {
	t.Run("loopback open", func(t *testing.T) {
		base := serveFlags(t, flags(t))
		if code, _ := status(t, base+"/metrics", ""); code != http.StatusOK {
			t.Fatalf("got %d, want 200", code)
		}
	})
	for _, addr := range []string{":0", "0.0.0.0:0", "10.1.2.3:0"} {
		t.Run("refused "+addr, func(t *testing.T) {
			f := flags(t, "-http", addr)
			err := f.Serve(context.Background(), slog.New(slog.DiscardHandler), http.NotFoundHandler(), func(string) {
				t.Error("listened")
			})
			if !errors.Is(err, transport.ErrInsecureTransport) || !strings.Contains(err.Error(), "-http-insecure") {
				t.Fatalf("got %v, want ErrInsecureTransport naming -http-insecure", err)
			}
		})
	}
	t.Run("short token", func(t *testing.T) {
		tok := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(tok, []byte("abc"), 0o600); err != nil {
			t.Fatal(err)
		}
		err := flags(t, "-http-token-file", tok).Serve(context.Background(), slog.New(slog.DiscardHandler), http.NotFoundHandler(), func(string) {
			t.Error("listened")
		})
		if err == nil || !strings.Contains(err.Error(), "at least 16") {
			t.Fatalf("got %v", err)
		}
	})
}

// The security flags: all three -tls-* or none, the certificate must be
// this instance's, and -policy loads the policy file; Reload re-reads both.
func TestFlagsConfig_Security(t *testing.T) {
	dir := t.TempDir()
	ca, err := transport.NewDevCA("test.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(id transport.Identity) transport.TLSFiles {
		t.Helper()
		files, err := ca.IssueFiles(dir, transport.LeafRequest{Identity: id, Validity: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		return files
	}
	own := issue(transport.Identity{Role: transport.RoleService, Service: "svc", Instance: "t-1"})
	other := issue(transport.Identity{Role: transport.RoleService, Service: "other", Instance: "t-1"})
	policy := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policy, []byte("version: 1\ntables:\n  svc/*: {readers: [other]}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("version: 1\ntables:\n  svc: {readers: [other]}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tls := func(f transport.TLSFiles) []string {
		return []string{"-tls-ca", f.CA, "-tls-cert", f.Cert, "-tls-key", f.Key}
	}
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"none", nil, ""},
		{"mtls and policy", append(tls(own), "-policy", policy), ""},
		{"cert without key", []string{"-tls-ca", own.CA, "-tls-cert", own.Cert}, "go together"},
		{"another service's cert", tls(other), `want an identity of service "svc" instance "t-1"`},
		{"bad policy", []string{"-policy", bad}, "line 3"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := flags(t, tc.args...).Config("svc", testutil.Logger(t))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got, want := cfg.TLS != nil, len(tc.args) > 0; got != want {
				t.Errorf("TLS set %v, want %v", got, want)
			}
			if got, want := cfg.AccessPolicy.MayRead("svc", "t", "other"), len(tc.args) > 0; got != want {
				t.Errorf("other may read svc/t: %v, want %v", got, want)
			}
		})
	}
}
