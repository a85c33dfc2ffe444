package main

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/replmesh/replmesh/transport"
)

const (
	testTD    = "replmesh.test"
	testToken = "replbroker-test-token-0123456789"
)

// pki is a dev CA and the directory its files go to.
type pki struct {
	t   *testing.T
	dir string
	ca  *transport.DevCA
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	ca, err := transport.NewDevCA(testTD, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p := &pki{t: t, dir: t.TempDir(), ca: ca}
	p.write("ca.pem", ca.CertPEM())
	return p
}

func (p *pki) write(name string, data []byte) string {
	p.t.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		p.t.Fatal(err)
	}
	return path
}

// files issues a certificate for id and returns the TLS files naming it.
func (p *pki) files(name string, id transport.Identity) transport.TLSFiles {
	p.t.Helper()
	certPEM, keyPEM, err := p.ca.Issue(transport.LeafRequest{Identity: id, Validity: time.Hour})
	if err != nil {
		p.t.Fatal(err)
	}
	return transport.TLSFiles{CA: filepath.Join(p.dir, "ca.pem"), Cert: p.write(name+".pem", certPEM), Key: p.write(name+"-key.pem", keyPEM)}
}

// client is an HTTPS client presenting id's certificate (none for a zero
// id) and expecting a broker's.
func (p *pki) client(name string, id transport.Identity) *http.Client {
	p.t.Helper()
	present := id != transport.Identity{}
	if !present {
		id = transport.Identity{Role: transport.RoleAdmin, Name: "unused"}
	}
	src, err := transport.NewTLSSource(p.files(name, id), nil)
	if err != nil {
		p.t.Fatal(err)
	}
	cfg := src.ClientConfig(transport.ExpectRole(transport.RoleBroker))
	if !present {
		cfg.GetClientCertificate = nil
	}
	tr := &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}
	p.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// answer is one HTTP exchange's outcome.
type answer struct {
	code int
	body string
	www  string
	err  error
}

func ask(t *testing.T, c *http.Client, url, auth string) answer {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := c.Do(req)
	if err != nil {
		return answer{err: err}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{code: resp.StatusCode, body: string(b), www: strings.Join(resp.Header.Values("WWW-Authenticate"), " | ")}
}

// The status page, /api/status and /metrics over HTTPS with client
// certificates: an admin and an operator read them, a service's
// certificate gets 403, a client without a certificate fails the
// handshake, and plaintext HTTP gets nothing.
func TestReplbroker_HTTPClientCertificates(t *testing.T) {
	p := newPKI(t)
	f := p.files("broker", transport.Identity{TrustDomain: testTD, Role: transport.RoleBroker, Name: "h1"})
	b := start(t, local("h1", "-http-tls-cert", f.Cert, "-http-tls-key", f.Key, "-http-tls-ca", f.CA, "-http-trust-domain", testTD)...)
	if !strings.Contains(b.log(), `"http_auth":"client-cert"`) {
		t.Errorf("the start line does not name the HTTP auth:\n%s", b.log())
	}
	base := "https://" + b.HTTP

	admin := p.client("admin", transport.Identity{TrustDomain: testTD, Role: transport.RoleAdmin, Name: "alice"})
	operator := p.client("operator", transport.Identity{TrustDomain: testTD, Role: transport.RoleOperator, Name: "ops"})
	service := p.client("service", transport.Identity{TrustDomain: testTD, Role: transport.RoleService, Service: "stores", Instance: "stores-1"})
	anonymous := p.client("anonymous", transport.Identity{})
	for _, path := range []string{"/", "/api/status", "/metrics"} {
		t.Run(path, func(t *testing.T) {
			for name, c := range map[string]*http.Client{"admin": admin, "operator": operator} {
				t.Run(name, func(t *testing.T) {
					if a := ask(t, c, base+path, ""); a.err != nil || a.code != http.StatusOK {
						t.Errorf("%s: %d %v\n%s", name, a.code, a.err, a.body)
					}
				})
			}
			if a := ask(t, service, base+path, ""); a.err != nil || a.code != http.StatusForbidden ||
				!strings.Contains(a.body, "replmesh/stores/stores-1 is a service; this endpoint is for admin or operator") {
				t.Errorf("service: %d %v\n%s", a.code, a.err, a.body)
			}
			if a := ask(t, anonymous, base+path, ""); a.err == nil {
				t.Errorf("no certificate: got %d, want the handshake to fail", a.code)
			}
			if a := ask(t, http.DefaultClient, "http://"+b.HTTP+path, ""); a.err == nil && a.code == http.StatusOK {
				t.Errorf("plaintext: got 200")
			}
		})
	}
	a := ask(t, admin, base+"/api/status", "")
	var st transport.StatusResponse
	if err := json.Unmarshal([]byte(a.body), &st); err != nil || st.Broker != "h1" {
		t.Fatalf("/api/status for the admin: %v %+v", err, st)
	}
	b.stop(15 * time.Second)
}

// A bearer token: the right one reads the status page, /api/status and
// /metrics; a wrong or missing one gets 401 with WWW-Authenticate.
func TestReplbroker_HTTPToken(t *testing.T) {
	p := newPKI(t)
	tok := p.write("token", []byte(testToken+"\n"))
	b := start(t, local("h2", "-http-token-file", tok)...)
	base := "http://" + b.HTTP
	for _, path := range []string{"/", "/api/status", "/metrics"} {
		t.Run(path, func(t *testing.T) {
			if a := ask(t, http.DefaultClient, base+path, "Bearer "+testToken); a.err != nil || a.code != http.StatusOK {
				t.Errorf("right token: %d %v\n%s", a.code, a.err, a.body)
			}
			for _, tc := range []struct{ name, auth string }{
				{"no token", ""},
				{"wrong token", "Bearer wrong-token-0123456789abcdef"},
				{"basic auth", "Basic " + testToken},
			} {
				t.Run(tc.name, func(t *testing.T) {
					auth := tc.auth
					a := ask(t, http.DefaultClient, base+path, auth)
					if a.err != nil || a.code != http.StatusUnauthorized || !strings.Contains(a.www, `Bearer realm="replbroker"`) {
						t.Errorf("auth %q: %d %v (WWW-Authenticate %q)\n%s", auth, a.code, a.err, a.www, a.body)
					}
				})
			}
		})
	}
	b.stop(15 * time.Second)
}

// An HTTP address other hosts can reach is refused without TLS or a
// token, unless -http-insecure, which then warns; the settings that
// secure it must be complete and load.
func TestParseArgsHTTP(t *testing.T) {
	p := newPKI(t)
	f := p.files("broker", transport.Identity{TrustDomain: testTD, Role: transport.RoleBroker, Name: "b"})
	tok := p.write("token", []byte(testToken))
	short := p.write("short", []byte("abc"))
	tlsArgs := []string{"-http-tls-cert", f.Cert, "-http-tls-key", f.Key, "-http-tls-ca", f.CA}
	tests := []struct {
		name     string
		args     []string
		wantErr  string // "" when accepted
		wantWarn string // in the log when accepted
		wantAuth string
	}{
		{"default loopback", nil, "", "", "none"},
		{"loopback", []string{"-http", "127.0.0.1:0"}, "", "", "none"},
		{"off", []string{"-http", "off"}, "", "", "none"},
		{"every interface", []string{"-http", ":7402"}, `insecure transport: ":7402" is reachable from other hosts`, "", ""},
		{"other host", []string{"-http", "10.1.2.3:7402"}, "-http-insecure", "", ""},
		{"insecure", []string{"-http", "0.0.0.0:7402", "-http-insecure"}, "", "insecure mode: HTTP serves", "none"},
		{"token", []string{"-http", "0.0.0.0:7402", "-http-token-file", tok}, "", "the bearer token crosses the network in the clear", "token"},
		{"tls", append([]string{"-http", "0.0.0.0:7402"}, tlsArgs...), "", "", "client-cert"},
		{"tls and token", append([]string{"-http", "0.0.0.0:7402", "-http-token-file", tok}, tlsArgs...), "", "", "client-cert-or-token"},
		{"tls without key", []string{"-http-tls-cert", f.Cert, "-http-tls-ca", f.CA}, "-http-tls-cert, -http-tls-key and -http-tls-ca are all required", "", ""},
		{"tls with another trust domain", append([]string{"-http-trust-domain", "other.test"}, tlsArgs...), "not in trust domain", "", ""},
		{"short token", []string{"-http-token-file", short}, "want at least 16", "", ""},
		{"missing token file", []string{"-http-token-file", filepath.Join(p.dir, "nope")}, "no such file", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stderr strings.Builder
			_, hs, err := parseSettingsHTTP(tc.args, &stderr)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := hs.auth(); got != tc.wantAuth {
				t.Errorf("auth %q, want %q", got, tc.wantAuth)
			}
			if w := stderr.String(); tc.wantWarn == "" && strings.Contains(w, "WARN") || !strings.Contains(w, tc.wantWarn) {
				t.Errorf("log %q, want a WARN with %q", w, tc.wantWarn)
			}
		})
	}
	t.Run("insecure refusal wraps ErrInsecureTransport", func(t *testing.T) {
		_, _, err := parseSettingsHTTP([]string{"-http", ":0"}, io.Discard)
		if !errors.Is(err, transport.ErrInsecureTransport) {
			t.Fatalf("got %v", err)
		}
	})
}
