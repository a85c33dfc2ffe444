package transport

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DefaultTLSCheckInterval is how often, at most, a handshake looks at the
// TLS files for changes when TLSFiles.CheckInterval is 0.
const DefaultTLSCheckInterval = time.Second

// TLSFiles names the PEM files of a peer's TLS material and how peers are
// checked. The files are read by NewTLSSource and re-read when they change.
type TLSFiles struct {
	// CA is the CA bundle: one or more PEM certificates. Peers' chains
	// must end in one of them (both directions: this is mTLS).
	CA string
	// Cert is this peer's PEM certificate, optionally followed by the
	// intermediates up to a CA of the bundle. It must carry a replmesh
	// SPIFFE ID (see Identity) and chain to the bundle.
	Cert string
	// Key is the PEM private key of Cert.
	Key string
	// TrustDomain, when set, is the only SPIFFE trust domain a peer (and
	// this peer's own certificate) may belong to.
	TrustDomain string
	// CheckInterval is how often, at most, a handshake compares the files
	// with the material in use and reloads them when they changed; 0
	// means DefaultTLSCheckInterval, negative means never (only Reload).
	CheckInterval time.Duration
}

// Validate reports the first field that is unusable.
func (f TLSFiles) Validate() error {
	for _, fld := range []struct{ name, val string }{{"CA", f.CA}, {"Cert", f.Cert}, {"Key", f.Key}} {
		if fld.val == "" {
			return fmt.Errorf("TLSFiles.%s: a file is required", fld.name)
		}
	}
	if f.TrustDomain != "" {
		if _, err := spiffeid.TrustDomainFromString(f.TrustDomain); err != nil {
			return fmt.Errorf("TLSFiles.TrustDomain %q: %w", f.TrustDomain, err)
		}
	}
	return nil
}

// TLSSource holds the TLS material read from TLSFiles and builds mTLS
// configurations whose handshakes always use the material in force:
// certificates and the CA bundle rotate without a restart and without
// new configurations.
//
// Rotation: each handshake first checks whether the files changed (their
// bytes, at most once per CheckInterval) and, if they did, loads them; a
// handshake is the only moment the material is used, so no goroutine
// watches the files between handshakes, and there is nothing to stop.
// Reload does the same at once (for SIGHUP). New files that do not load
// (unreadable, unparsable, a key that does not match, a certificate that
// does not chain to the new bundle or carries another identity) leave the
// material in force; the error is logged at WARN (once per bad content on
// the handshake path) and returned by Reload. Write the files one after
// the other in any order: a half-rotated set is refused and the next check
// takes the complete one.
//
// A TLSSource is safe for concurrent use.
type TLSSource struct {
	files    TLSFiles
	interval time.Duration
	logger   *slog.Logger
	now      func() time.Time // tests replace it

	mu        sync.Mutex // serializes loads; guards lastCheck and lastErr
	lastCheck time.Time
	lastErr   string // the last load error logged

	cur atomic.Pointer[tlsMaterial]
}

// tlsMaterial is one consistent load of the three files.
type tlsMaterial struct {
	caPEM, certPEM, keyPEM []byte
	pool                   *x509.CertPool
	pair                   tls.Certificate
	id                     Identity
}

// NewTLSSource reads files and returns a source for them. It fails when
// they do not load: at start there is no material to fall back to. A nil
// logger logs to slog.Default().
func NewTLSSource(files TLSFiles, logger *slog.Logger) (*TLSSource, error) {
	if err := files.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.Default()
	}
	s := &TLSSource{files: files, interval: files.CheckInterval, logger: logger, now: time.Now}
	if s.interval == 0 {
		s.interval = DefaultTLSCheckInterval
	}
	m, err := s.load(nil)
	if err != nil {
		return nil, err
	}
	s.cur.Store(m)
	s.lastCheck = s.now()
	return s, nil
}

// Identity returns the identity of this peer's certificate in force.
func (s *TLSSource) Identity() Identity { return s.cur.Load().id }

// NotAfter returns when this peer's certificate in force expires.
func (s *TLSSource) NotAfter() time.Time { return s.cur.Load().pair.Leaf.NotAfter }

// Reload reads the files now and uses them from the next handshake on if
// they changed and load. On error the material in force stays, and the
// error is logged at WARN and returned.
func (s *TLSSource) Reload() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastCheck = s.now()
	return s.reloadLocked(true)
}

// material returns the material for a handshake, reloading it first when
// the check is due.
func (s *TLSSource) material() *tlsMaterial {
	if s.interval > 0 {
		s.mu.Lock()
		now := s.now()
		if d := now.Sub(s.lastCheck); d >= s.interval || d < 0 {
			s.lastCheck = now
			_ = s.reloadLocked(false) // logged; the material in force stays
		}
		s.mu.Unlock()
	}
	return s.cur.Load()
}

// reloadLocked loads the files if they changed; with always it logs every
// failure, else only a failure unlike the last one logged.
func (s *TLSSource) reloadLocked(always bool) error {
	old := s.cur.Load()
	m, err := s.load(old)
	if err != nil {
		if always || err.Error() != s.lastErr {
			s.logger.Warn("tls reload failed; keeping the certificates in force",
				"error", err.Error(), "cert", s.files.Cert, "ca", s.files.CA, "identity", old.id.String())
		}
		s.lastErr = err.Error()
		return err
	}
	s.lastErr = ""
	if m != old {
		s.cur.Store(m)
		s.logger.Info("tls reloaded", "identity", m.id.String(), "not_after", m.pair.Leaf.NotAfter.UTC().Format(time.RFC3339),
			"cert", s.files.Cert, "ca", s.files.CA)
	}
	return nil
}

// load reads the files; it returns old when they are unchanged.
func (s *TLSSource) load(old *tlsMaterial) (*tlsMaterial, error) {
	caPEM, err := os.ReadFile(s.files.CA)
	if err != nil {
		return nil, fmt.Errorf("tls CA bundle: %w", err)
	}
	certPEM, err := os.ReadFile(s.files.Cert)
	if err != nil {
		return nil, fmt.Errorf("tls certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(s.files.Key)
	if err != nil {
		return nil, fmt.Errorf("tls key: %w", err)
	}
	if old != nil && bytes.Equal(caPEM, old.caPEM) && bytes.Equal(certPEM, old.certPEM) && bytes.Equal(keyPEM, old.keyPEM) {
		return old, nil
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("tls CA bundle %s: no PEM certificate in it", s.files.CA)
	}
	pair, err := tlsKeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("tls certificate %s / key %s: %w", s.files.Cert, s.files.Key, err)
	}
	id, err := IdentityFromCert(pair.Leaf)
	if err != nil {
		return nil, fmt.Errorf("tls certificate %s: %w", s.files.Cert, err)
	}
	if err := s.checkTrustDomain(id); err != nil {
		return nil, fmt.Errorf("tls certificate %s: %w", s.files.Cert, err)
	}
	if _, err := verifyChain(pool, pair.Leaf, parseChain(pair.Certificate[1:]), x509.ExtKeyUsageAny); err != nil {
		return nil, fmt.Errorf("tls certificate %s does not chain to the CA bundle %s: %w", s.files.Cert, s.files.CA, err)
	}
	if old != nil && old.id != id {
		return nil, fmt.Errorf("tls certificate %s now carries %s, the one in force %s: an identity changes only with a restart", s.files.Cert, id, old.id)
	}
	return &tlsMaterial{caPEM: caPEM, certPEM: certPEM, keyPEM: keyPEM, pool: pool, pair: pair, id: id}, nil
}

func (s *TLSSource) checkTrustDomain(id Identity) error {
	if s.files.TrustDomain != "" && id.TrustDomain != s.files.TrustDomain {
		return fmt.Errorf("identity %s is not in trust domain %q", id, s.files.TrustDomain)
	}
	return nil
}

// ServerConfig returns the configuration of an mTLS server: it presents
// the certificate in force, requires a client certificate that chains to
// the CA bundle in force (for client authentication) and carries a valid
// replmesh identity (in TLSFiles.TrustDomain when set). Handlers read that
// identity with IdentityFromContext.
func (s *TLSSource) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			m := s.material()
			return &tls.Config{
				MinVersion:   tls.VersionTLS12,
				Certificates: []tls.Certificate{m.pair},
				ClientAuth:   tls.RequireAndVerifyClientCert,
				ClientCAs:    m.pool,
				VerifyConnection: func(cs tls.ConnectionState) error {
					if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
						return errors.New("no verified client certificate")
					}
					id, err := IdentityFromCert(cs.VerifiedChains[0][0])
					if err != nil {
						return err
					}
					return s.checkTrustDomain(id)
				},
			}, nil
		},
	}
}

// IdentityCheck decides whether a server's identity is the one a client
// meant to reach; nil accepts any valid replmesh identity.
type IdentityCheck func(Identity) error

// ExpectRole accepts an identity of one of roles.
func ExpectRole(roles ...Role) IdentityCheck {
	return func(id Identity) error {
		for _, r := range roles {
			if id.Role == r {
				return nil
			}
		}
		return fmt.Errorf("peer %s is a %s, want %v", id, id.Role, roles)
	}
}

// ExpectService accepts any instance of service.
func ExpectService(service string) IdentityCheck {
	return func(id Identity) error {
		if id.Role != RoleService || id.Service != service {
			return fmt.Errorf("peer %s is not an instance of service %q", id, service)
		}
		return nil
	}
}

// ExpectIdentity accepts want only.
func ExpectIdentity(want Identity) IdentityCheck {
	return func(id Identity) error {
		if id != want {
			return fmt.Errorf("peer %s is not %s", id, want)
		}
		return nil
	}
}

// ClientConfig returns the configuration of an mTLS client: it presents
// the certificate in force and accepts a server whose chain ends in the CA
// bundle in force (for server authentication) and whose certificate
// carries a valid replmesh identity (in TLSFiles.TrustDomain when set)
// that check accepts (nil: any). Host names are not verified: peers are
// dialed by the address they registered, and their identity is the
// SPIFFE ID, as in SPIFFE's own TLS configurations.
func (s *TLSSource) ClientConfig(check IdentityCheck) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// The chain is verified in VerifyConnection, against the bundle in
		// force and without host names.
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			m := s.material()
			return &m.pair, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			m := s.material()
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the server presented no certificate")
			}
			if _, err := verifyChain(m.pool, cs.PeerCertificates[0], cs.PeerCertificates[1:], x509.ExtKeyUsageServerAuth); err != nil {
				return err
			}
			id, err := IdentityFromCert(cs.PeerCertificates[0])
			if err != nil {
				return err
			}
			if err := s.checkTrustDomain(id); err != nil {
				return err
			}
			if check != nil {
				return check(id)
			}
			return nil
		},
	}
}

// verifyChain verifies leaf against roots, with intermediates, for usage.
func verifyChain(roots *x509.CertPool, leaf *x509.Certificate, intermediates []*x509.Certificate, usage x509.ExtKeyUsage) ([][]*x509.Certificate, error) {
	inter := x509.NewCertPool()
	for _, c := range intermediates {
		inter.AddCert(c)
	}
	return leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}})
}

// parseChain parses DER certificates, skipping those that do not parse
// (verification then fails on the missing link).
func parseChain(ders [][]byte) []*x509.Certificate {
	var out []*x509.Certificate
	for _, der := range ders {
		if c, err := x509.ParseCertificate(der); err == nil {
			out = append(out, c)
		}
	}
	return out
}

// tlsKeyPair parses a PEM certificate (chain) and key, with Leaf set.
func tlsKeyPair(certPEM, keyPEM []byte) (tls.Certificate, error) {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return pair, err
	}
	if pair.Leaf == nil {
		if pair.Leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return pair, err
		}
	}
	return pair, nil
}
