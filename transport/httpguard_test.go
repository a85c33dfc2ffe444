package transport

import (
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/replmesh/replmesh/internal/testutil"
)

// guardResult is what a client got from a guarded endpoint.
type guardResult struct {
	code    int
	body    string
	proto   int      // the HTTP major version the server answered in
	www     []string // WWW-Authenticate
	connErr error    // the request failed (the handshake)
}

// guardGet asks url with client, setting the Authorization header auth
// when not empty.
func guardGet(t *testing.T, client *http.Client, url, auth string) guardResult {
	t.Helper()
	req, err := http.NewRequestWithContext(testutil.Context(t, 10*time.Second), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := client.Do(req)
	if err != nil {
		return guardResult{connErr: err}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return guardResult{code: resp.StatusCode, body: string(body), proto: resp.ProtoMajor, www: resp.Header.Values("WWW-Authenticate")}
}

// serveGuarded serves an endpoint answering "ok <caller>" behind g on a
// real listener (HTTPS when g has TLS) and returns its URL.
func serveGuarded(t *testing.T, g *HTTPGuard) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := g.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		who := "token"
		if id, err := IdentityFromTLS(r.TLS); err == nil {
			who = id.String()
		}
		_, _ = io.WriteString(w, "ok "+who)
	}))
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(testutil.Logger(t).Handler(), slog.LevelWarn)}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(g.Listener(ln)) }()
	t.Cleanup(func() {
		_ = srv.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
	})
	scheme := "http"
	if g.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + ln.Addr().String() + "/metrics"
}

// httpsClient is a client presenting id's certificate issued by ca (none
// for a zero id), trusting ca for the server's.
func httpsClient(t *testing.T, ca *DevCA, id Identity) *http.Client {
	t.Helper()
	var cfg *tls.Config
	if id == (Identity{}) {
		p := newTLSPeer(t, testTrustDomain)
		p.trust(t, ca)
		p.issue(t, ca, adminID("only-for-the-bundle"))
		cfg = p.source(t, nil).ClientConfig(ExpectRole(RoleBroker))
		cfg.GetClientCertificate = nil // present no certificate
	} else {
		p := newTLSPeer(t, testTrustDomain)
		p.trust(t, ca)
		p.issue(t, ca, id)
		cfg = p.source(t, nil).ClientConfig(ExpectRole(RoleBroker))
	}
	tr := &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// writeToken writes a token file and returns its path.
func writeToken(t *testing.T, dir, token string) string {
	t.Helper()
	path := filepath.Join(dir, "token")
	if err := os.WriteFile(path, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func loadToken(t *testing.T, path string) *HTTPToken {
	t.Helper()
	tok, err := LoadHTTPToken(path, -1, testutil.Logger(t))
	if err != nil {
		t.Fatalf("LoadHTTPToken: %v", err)
	}
	return tok
}

const (
	goodToken  = "0123456789abcdef0123456789abcdef"
	otherToken = "fedcba9876543210fedcba9876543210"
)

// HTTPS with client certificates: an admin or operator gets through (over
// HTTP/2), a service's certificate is refused with 403 naming it, and a
// client without a certificate fails the handshake.
func TestHTTPGuard_ClientCertificate(t *testing.T) {
	ca := newTestCA(t, testTrustDomain)
	srv := newTLSPeer(t, testTrustDomain)
	srv.trust(t, ca)
	srv.issue(t, ca, Identity{TrustDomain: testTrustDomain, Role: RoleBroker, Name: "b1"})
	url := serveGuarded(t, &HTTPGuard{TLS: srv.source(t, nil), Roles: []Role{RoleAdmin, RoleOperator}, Realm: "test"})

	tests := []struct {
		name     string
		id       Identity
		wantCode int
		wantBody string
	}{
		{"admin", adminID("alice"), http.StatusOK, "ok spiffe://replmesh.test/replmesh-admin/alice"},
		{"operator", Identity{TrustDomain: testTrustDomain, Role: RoleOperator, Name: "ops"}, http.StatusOK, "ok spiffe://replmesh.test/replmesh-operator/ops"},
		{"service", serviceID("stores", "stores-1"), http.StatusForbidden, "spiffe://replmesh.test/replmesh/stores/stores-1 is a service; this endpoint is for admin or operator"},
		{"broker", Identity{TrustDomain: testTrustDomain, Role: RoleBroker, Name: "b2"}, http.StatusForbidden, "is a broker"},
		{"no certificate", Identity{}, 0, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := guardGet(t, httpsClient(t, ca, tc.id), url, "Bearer "+goodToken)
			if tc.wantCode == 0 {
				if got.connErr == nil {
					t.Fatalf("got %d %q, want the handshake to fail", got.code, got.body)
				}
				return
			}
			if got.connErr != nil {
				t.Fatalf("request: %v", got.connErr)
			}
			if got.code != tc.wantCode || !strings.Contains(got.body, tc.wantBody) {
				t.Fatalf("got %d %q, want %d with %q", got.code, got.body, tc.wantCode, tc.wantBody)
			}
			if got.proto != 2 {
				t.Errorf("answered in HTTP/%d, want HTTP/2", got.proto)
			}
		})
	}
}

// A bearer token: the right one (as Bearer, or as a Basic password for a
// browser) gets through; a wrong or missing one gets 401 offering both
// schemes, invalid_token when one was presented.
func TestHTTPGuard_Token(t *testing.T) {
	url := serveGuarded(t, &HTTPGuard{Token: loadToken(t, writeToken(t, t.TempDir(), "\n"+goodToken+"\n")), Realm: "test"})
	basic := func(user, pass string) string {
		r, _ := http.NewRequest(http.MethodGet, "/", nil)
		r.SetBasicAuth(user, pass)
		return r.Header.Get("Authorization")
	}
	tests := []struct {
		name     string
		auth     string
		wantCode int
		wantWWW  string
	}{
		{"bearer", "Bearer " + goodToken, http.StatusOK, ""},
		{"bearer, scheme in lower case", "bearer " + goodToken, http.StatusOK, ""},
		{"basic password", basic("anyone", goodToken), http.StatusOK, ""},
		{"wrong bearer", "Bearer " + otherToken, http.StatusUnauthorized, `Bearer realm="test", error="invalid_token"`},
		{"a prefix of the token", "Bearer " + goodToken[:20], http.StatusUnauthorized, `error="invalid_token"`},
		{"wrong basic password", basic("admin", otherToken), http.StatusUnauthorized, `error="invalid_token"`},
		{"token as basic user", basic(goodToken, ""), http.StatusUnauthorized, `Bearer realm="test"`},
		{"missing", "", http.StatusUnauthorized, `Bearer realm="test"`},
		{"empty bearer", "Bearer ", http.StatusUnauthorized, `Bearer realm="test"`},
		{"other scheme", "Token " + goodToken, http.StatusUnauthorized, `Bearer realm="test"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := guardGet(t, http.DefaultClient, url, tc.auth)
			if got.connErr != nil {
				t.Fatal(got.connErr)
			}
			if got.code != tc.wantCode {
				t.Fatalf("got %d %q, want %d", got.code, got.body, tc.wantCode)
			}
			if tc.wantCode != http.StatusUnauthorized {
				return
			}
			www := strings.Join(got.www, " | ")
			if !strings.Contains(www, tc.wantWWW) || !strings.Contains(www, `Basic realm="test"`) {
				t.Errorf("WWW-Authenticate %q, want %q and Basic", www, tc.wantWWW)
			}
			if strings.Contains(got.body, goodToken) {
				t.Errorf("the answer shows the token: %q", got.body)
			}
		})
	}
}

// TLS and a token together: either proves the caller, so a client without
// a certificate may connect and present the token.
func TestHTTPGuard_CertificateOrToken(t *testing.T) {
	ca := newTestCA(t, testTrustDomain)
	srv := newTLSPeer(t, testTrustDomain)
	srv.trust(t, ca)
	srv.issue(t, ca, Identity{TrustDomain: testTrustDomain, Role: RoleBroker, Name: "b1"})
	url := serveGuarded(t, &HTTPGuard{TLS: srv.source(t, nil), Roles: []Role{RoleAdmin},
		Token: loadToken(t, writeToken(t, t.TempDir(), goodToken)), Realm: "test"})

	tests := []struct {
		name     string
		id       Identity
		auth     string
		wantCode int
	}{
		{"admin certificate", adminID("alice"), "", http.StatusOK},
		{"no certificate, token", Identity{}, "Bearer " + goodToken, http.StatusOK},
		{"no certificate, no token", Identity{}, "", http.StatusUnauthorized},
		{"no certificate, wrong token", Identity{}, "Bearer " + otherToken, http.StatusUnauthorized},
		{"service certificate, token", serviceID("stores", "stores-1"), "Bearer " + goodToken, http.StatusOK},
		{"service certificate, no token", serviceID("stores", "stores-1"), "", http.StatusForbidden},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := guardGet(t, httpsClient(t, ca, tc.id), url, tc.auth)
			if got.connErr != nil {
				t.Fatal(got.connErr)
			}
			if got.code != tc.wantCode {
				t.Fatalf("got %d %q, want %d", got.code, got.body, tc.wantCode)
			}
		})
	}
}

// A token file rotates: after Reload (or the check interval) the new
// token is the one; a file that no longer loads keeps the one in force.
func TestHTTPToken_Rotate(t *testing.T) {
	dir := t.TempDir()
	tok := loadToken(t, writeToken(t, dir, goodToken))
	clk := &fakeClock{now: time.Unix(1_000_000, 0)}
	tok.mu.Lock()
	tok.interval, tok.now, tok.lastCheck = time.Minute, clk.Now, clk.Now()
	tok.mu.Unlock()

	writeToken(t, dir, otherToken)
	if !tok.Match(goodToken) || tok.Match(otherToken) {
		t.Fatal("the token changed before the check was due")
	}
	clk.Advance(time.Minute)
	if tok.Match(goodToken) || !tok.Match(otherToken) {
		t.Fatal("after the check interval: the new token is not the one in force")
	}

	writeToken(t, dir, "short")
	if err := tok.Reload(); err == nil || !strings.Contains(err.Error(), "at least 16") {
		t.Fatalf("Reload of a short token: %v", err)
	}
	if err := os.Remove(filepath.Join(dir, "token")); err != nil {
		t.Fatal(err)
	}
	if err := tok.Reload(); err == nil {
		t.Fatal("Reload of a missing file succeeded")
	}
	if !tok.Match(otherToken) {
		t.Fatal("a file that does not load replaced the token in force")
	}
}

func TestLoadHTTPToken_Errors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name, content, want string
	}{
		{"empty", "", "has 0 bytes, want at least 16"},
		{"blank", " \n\t\n", "has 0 bytes"},
		{"short", "abc\n", "has 3 bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadHTTPToken(writeToken(t, dir, tc.content), -1, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
	t.Run("missing", func(t *testing.T) {
		_, err := LoadHTTPToken(filepath.Join(dir, "nope"), -1, nil)
		if !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("got %v, want not exist", err)
		}
	})
}

// CheckBind: plaintext without a token binds only on loopback, unless
// insecure; TLS or a token may bind anywhere.
func TestHTTPGuard_CheckBind(t *testing.T) {
	tok := loadToken(t, writeToken(t, t.TempDir(), goodToken))
	tests := []struct {
		name     string
		g        *HTTPGuard
		addr     string
		insecure bool
		wantErr  bool
	}{
		{"nil guard, loopback", nil, "127.0.0.1:7402", false, false},
		{"plaintext, loopback", &HTTPGuard{}, "localhost:7402", false, false},
		{"plaintext, every interface", &HTTPGuard{}, ":7402", false, true},
		{"plaintext, other host", &HTTPGuard{}, "10.0.0.1:7402", false, true},
		{"plaintext, insecure", &HTTPGuard{}, "0.0.0.0:7402", true, false},
		{"token", &HTTPGuard{Token: tok}, "0.0.0.0:7402", false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.g.CheckBind(tc.addr, tc.insecure)
			if (err != nil) != tc.wantErr {
				t.Fatalf("CheckBind(%q, %v) = %v, want error %v", tc.addr, tc.insecure, err, tc.wantErr)
			}
			if err != nil && !errors.Is(err, ErrInsecureTransport) {
				t.Fatalf("got %v, want ErrInsecureTransport", err)
			}
		})
	}
}

// Without TLS or a token the guard lets everything through (loopback).
func TestHTTPGuard_Open(t *testing.T) {
	h := (&HTTPGuard{}).Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("got %d, want 200", rec.Code)
	}
}
