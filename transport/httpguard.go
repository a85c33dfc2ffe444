package transport

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// MinHTTPTokenLen is the shortest bearer token HTTPToken accepts.
const MinHTTPTokenLen = 16

// HTTPToken is a bearer token read from a file, for an operator HTTP
// endpoint (the broker's status page and /metrics, a service's /metrics).
// The file holds the token alone; surrounding white space is ignored. Like
// TLSSource, it re-reads the file at most once per check interval when a
// request is checked, so that a token rotates without a restart; a file
// that no longer loads leaves the token in force (logged at WARN).
//
// An HTTPToken is safe for concurrent use.
type HTTPToken struct {
	path     string
	interval time.Duration
	logger   *slog.Logger
	now      func() time.Time // tests replace it

	mu        sync.Mutex // serializes loads; guards raw, lastCheck and lastErr
	raw       []byte     // the file's content in force
	lastCheck time.Time
	lastErr   string

	sum atomic.Pointer[[sha256.Size]byte] // SHA-256 of the token in force
}

// LoadHTTPToken reads the token file at path. checkInterval is how often,
// at most, a request's check looks at the file again: 0 means
// DefaultTLSCheckInterval, negative means never (only Reload). A nil
// logger logs to slog.Default().
func LoadHTTPToken(path string, checkInterval time.Duration, logger *slog.Logger) (*HTTPToken, error) {
	if logger == nil {
		logger = slog.Default()
	}
	if checkInterval == 0 {
		checkInterval = DefaultTLSCheckInterval
	}
	t := &HTTPToken{path: path, interval: checkInterval, logger: logger, now: time.Now}
	if err := t.load(); err != nil {
		return nil, err
	}
	t.lastCheck = t.now()
	return t, nil
}

// Reload reads the file now. On error the token in force stays, and the
// error is logged at WARN and returned.
func (t *HTTPToken) Reload() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lastCheck = t.now()
	return t.reloadLocked(true)
}

func (t *HTTPToken) reloadLocked(always bool) error {
	err := t.load()
	if err != nil {
		if always || err.Error() != t.lastErr {
			t.logger.Warn("http token reload failed; keeping the token in force", "error", err.Error(), "file", t.path)
		}
		t.lastErr = err.Error()
		return err
	}
	t.lastErr = ""
	return nil
}

// load reads the file and puts its token in force if it changed; t.mu is
// held, or t is not shared yet.
func (t *HTTPToken) load() error {
	raw, err := os.ReadFile(t.path)
	if err != nil {
		return fmt.Errorf("http token: %w", err)
	}
	if t.sum.Load() != nil && bytes.Equal(raw, t.raw) {
		return nil
	}
	tok := bytes.TrimSpace(raw)
	if len(tok) < MinHTTPTokenLen {
		return fmt.Errorf("http token file %s: the token has %d bytes, want at least %d (e.g. `openssl rand -hex 32`)", t.path, len(tok), MinHTTPTokenLen)
	}
	sum := sha256.Sum256(tok)
	first := t.sum.Load() == nil
	t.raw = raw
	t.sum.Store(&sum)
	if !first {
		t.logger.Info("http token reloaded", "file", t.path)
	}
	return nil
}

// reloadIfDue reloads the file when the check interval has passed since
// the last check (or the clock went back).
func (t *HTTPToken) reloadIfDue() {
	if t.interval <= 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	if d := now.Sub(t.lastCheck); d < t.interval && d >= 0 {
		return
	}
	t.lastCheck = now
	_ = t.reloadLocked(false) // logged; the token in force stays
}

// Match reports whether got is the token in force, in time independent of
// where they differ (and of their lengths: the SHA-256 digests are
// compared). It first reloads the file when the check is due.
func (t *HTTPToken) Match(got string) bool {
	t.reloadIfDue()
	if got == "" {
		return false
	}
	sum := sha256.Sum256([]byte(got))
	return subtle.ConstantTimeCompare(sum[:], t.sum.Load()[:]) == 1
}

// HTTPGuard authenticates the requests of an operator HTTP endpoint: by a
// client certificate (HTTPS with the TLS material of a TLSSource; the
// certificate's identity must have one of Roles), by a bearer token, or by
// either when both are set. With neither it lets every request through:
// that is plaintext, for loopback (see CheckBind).
//
// The token is taken from "Authorization: Bearer TOKEN" (Prometheus'
// authorization / bearer_token_file) or as the password of HTTP Basic
// authentication, whatever the user name, so that a browser can open a
// status page: a 401 offers both schemes.
type HTTPGuard struct {
	// TLS, when set, makes the endpoint HTTPS (Listener) and lets a
	// client certificate prove the caller. Without Token, a client
	// certificate is required by the handshake.
	TLS *TLSSource
	// Roles are the roles a client certificate's identity must have, e.g.
	// RoleAdmin and RoleOperator; another role is refused with 403.
	Roles []Role
	// Token, when set, lets a request carrying it through.
	Token *HTTPToken
	// Realm names the protection space in WWW-Authenticate, e.g.
	// "replbroker". It must not contain a double quote.
	Realm string
}

// Secured reports whether the guard authenticates anything (TLS or a
// token is set).
func (g *HTTPGuard) Secured() bool { return g != nil && (g.TLS != nil || g.Token != nil) }

// CheckBind is the insecure-mode guard of the endpoint about to listen on
// addr: see CheckTransportSecurity, where a token alone counts as secure
// (it proves the caller, though it crosses the network in the clear
// without TLS).
func (g *HTTPGuard) CheckBind(addr string, insecure bool) error {
	return CheckTransportSecurity([]string{addr}, g.Secured(), insecure)
}

// TLSConfig returns the HTTPS configuration (see
// TLSSource.HTTPServerConfig), or nil without TLS.
func (g *HTTPGuard) TLSConfig() *tls.Config {
	if g == nil || g.TLS == nil {
		return nil
	}
	auth := tls.RequireAndVerifyClientCert
	if g.Token != nil {
		auth = tls.VerifyClientCertIfGiven // a client may prove itself with the token instead
	}
	return g.TLS.HTTPServerConfig(auth)
}

// Listener returns ln, wrapped in TLS when the guard has TLS. Serve it
// with http.Server.Serve: HTTP/2 is negotiated by ALPN.
func (g *HTTPGuard) Listener(ln net.Listener) net.Listener {
	if cfg := g.TLSConfig(); cfg != nil {
		return tls.NewListener(ln, cfg)
	}
	return ln
}

// Handler returns next behind the guard: a request that proves no
// allowed caller gets 401 (no proof, or a wrong token; with
// WWW-Authenticate) or 403 (a certificate whose identity has another
// role), and next never sees it.
func (g *HTTPGuard) Handler(next http.Handler) http.Handler {
	if !g.Secured() {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		code, why := g.check(r)
		if code == 0 {
			next.ServeHTTP(w, r)
			return
		}
		w.Header().Set("Cache-Control", "no-store")
		if code == http.StatusUnauthorized {
			bearer := fmt.Sprintf("Bearer realm=%q", g.Realm)
			if errors.Is(why, errWrongToken) {
				bearer += `, error="invalid_token"`
			}
			w.Header().Add("WWW-Authenticate", bearer)
			w.Header().Add("WWW-Authenticate", fmt.Sprintf("Basic realm=%q, charset=\"UTF-8\"", g.Realm))
		}
		http.Error(w, http.StatusText(code)+": "+why.Error(), code)
	})
}

var (
	errNoProof    = errors.New("no credentials: present a client certificate or the bearer token")
	errWrongToken = errors.New("the token is not valid")
)

// check returns 0 for a request that may go through, else the status to
// answer and why.
func (g *HTTPGuard) check(r *http.Request) (int, error) {
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
		id, err := IdentityFromTLS(r.TLS)
		if err == nil && slices.Contains(g.Roles, id.Role) {
			return 0, nil
		}
		if g.Token != nil && g.Token.Match(requestToken(r)) {
			return 0, nil
		}
		if err != nil {
			return http.StatusForbidden, err
		}
		return http.StatusForbidden, fmt.Errorf("%s is a %s; this endpoint is for %s", id, id.Role, roleList(g.Roles))
	}
	if g.Token == nil {
		// The handshake requires a certificate; not reached but by a
		// server that does not serve Listener's connections.
		return http.StatusForbidden, errors.New("no verified client certificate")
	}
	tok := requestToken(r)
	if tok == "" {
		return http.StatusUnauthorized, errNoProof
	}
	if !g.Token.Match(tok) {
		return http.StatusUnauthorized, errWrongToken
	}
	return 0, nil
}

// requestToken returns the bearer token of r, or the password of its Basic
// authentication, or "".
func requestToken(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if scheme, tok, ok := strings.Cut(h, " "); ok && strings.EqualFold(scheme, "Bearer") {
		return strings.TrimSpace(tok)
	}
	if _, pass, ok := r.BasicAuth(); ok {
		return pass
	}
	return ""
}

func roleList(roles []Role) string {
	names := make([]string, len(roles))
	for i, r := range roles {
		names[i] = r.String()
	}
	if len(names) == 0 {
		return "no role"
	}
	return strings.Join(names, " or ")
}
