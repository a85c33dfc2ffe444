package transport

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/replmesh/replmesh/internal/testutil"
)

const testTrustDomain = "replmesh.test"

func serviceID(service, instance string) Identity {
	return Identity{TrustDomain: testTrustDomain, Role: RoleService, Service: service, Instance: instance}
}

func adminID(name string) Identity {
	return Identity{TrustDomain: testTrustDomain, Role: RoleAdmin, Name: name}
}

func newTestCA(t *testing.T, td string) *DevCA {
	t.Helper()
	ca, err := NewDevCA(td, time.Hour)
	if err != nil {
		t.Fatalf("NewDevCA: %v", err)
	}
	return ca
}

// writeFile writes the concatenation of parts to path, replacing it.
func writeFile(t *testing.T, path string, parts ...[]byte) {
	t.Helper()
	if err := os.WriteFile(path, bytes.Join(parts, nil), 0o600); err != nil {
		t.Fatal(err)
	}
}

// tlsPeer is one peer's files in its own directory.
type tlsPeer struct {
	files TLSFiles
}

func newTLSPeer(t *testing.T, td string) *tlsPeer {
	t.Helper()
	dir := t.TempDir()
	return &tlsPeer{files: TLSFiles{
		CA: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(dir, "cert.pem"), Key: filepath.Join(dir, "key.pem"),
		TrustDomain: td, CheckInterval: -1,
	}}
}

// trust writes the peer's CA bundle.
func (p *tlsPeer) trust(t *testing.T, cas ...*DevCA) {
	t.Helper()
	var parts [][]byte
	for _, ca := range cas {
		parts = append(parts, ca.CertPEM())
	}
	writeFile(t, p.files.CA, parts...)
}

// issue writes a new leaf for id signed by ca and returns its serial.
func (p *tlsPeer) issue(t *testing.T, ca *DevCA, id Identity) string {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue(LeafRequest{Identity: id, Validity: time.Hour})
	if err != nil {
		t.Fatalf("Issue %s: %v", id, err)
	}
	writeFile(t, p.files.Cert, certPEM)
	writeFile(t, p.files.Key, keyPEM)
	return serialOf(t, certPEM)
}

func serialOf(t *testing.T, certPEM []byte) string {
	t.Helper()
	b, _ := pem.Decode(certPEM)
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.SerialNumber.String()
}

func (p *tlsPeer) source(t *testing.T, logger *slog.Logger) *TLSSource {
	t.Helper()
	if logger == nil {
		logger = testutil.Logger(t)
	}
	s, err := NewTLSSource(p.files, logger)
	if err != nil {
		t.Fatalf("NewTLSSource: %v", err)
	}
	return s
}

// fakeClock drives a TLSSource's check interval.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// checkEvery makes s check its files on handshakes at most once per
// interval of clk's time.
func checkEvery(s *TLSSource, interval time.Duration) *fakeClock {
	clk := &fakeClock{now: time.Unix(1_000_000, 0)}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.interval = interval
	s.now = clk.Now
	s.lastCheck = clk.Now()
	return clk
}

// whoAmI is a test service whose one method answers the caller's
// identity (IdentityFromContext) and certificate serial.
type whoAmIResponse struct {
	ID     string `msgpack:"id"`
	Serial string `msgpack:"serial"`
}

var whoAmIDesc = grpc.ServiceDesc{
	ServiceName: "replmesh.test.Identity",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "WhoAmI",
		Handler: func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			var req struct{}
			if err := dec(&req); err != nil {
				return nil, err
			}
			id, err := IdentityFromContext(ctx)
			if err != nil {
				return nil, StatusError(err)
			}
			p, _ := peer.FromContext(ctx)
			leaf := p.AuthInfo.(credentials.TLSInfo).State.VerifiedChains[0][0]
			return &whoAmIResponse{ID: id.String(), Serial: leaf.SerialNumber.String()}, nil
		},
	}},
}

// startWhoAmI serves whoAmI over mTLS with src's server configuration.
func startWhoAmI(t *testing.T, src *TLSSource) string {
	t.Helper()
	lis, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	s := NewServer(Options{TLS: src.ServerConfig()})
	s.RegisterService(&whoAmIDesc, struct{}{})
	served := make(chan error, 1)
	go func() { served <- s.Serve(lis) }()
	t.Cleanup(func() {
		s.GracefulStop(time.Second)
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return lis.Addr().String()
}

// whoAmI calls the server over a new connection (a new handshake) made
// with cfg.
func whoAmI(t *testing.T, addr string, cfg *tls.Config) (whoAmIResponse, error) {
	t.Helper()
	cc, err := Dial(addr, Options{TLS: cfg})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer cc.Close()
	var resp whoAmIResponse
	err = cc.Invoke(testutil.Context(t, 10*time.Second), "/replmesh.test.Identity/WhoAmI", &struct{}{}, &resp)
	return resp, FromStatus(err)
}

// A real mTLS handshake over gRPC: the client's identity arrives in the
// handler; a client or server that the other side's bundle, trust domain
// or expectation does not accept is refused.
func TestTLSSource_Handshake(t *testing.T) {
	caA := newTestCA(t, testTrustDomain)
	caB := newTestCA(t, testTrustDomain) // trusted by nobody's server
	caOther := newTestCA(t, "other.test")

	server := newTLSPeer(t, testTrustDomain)
	server.trust(t, caA, caOther)
	server.issue(t, caA, serviceID("stores", "stores-1"))
	addr := startWhoAmI(t, server.source(t, nil))

	tests := []struct {
		name  string
		trust []*DevCA // the client's bundle
		ca    *DevCA   // signs the client's leaf
		id    Identity
		check IdentityCheck
		// wantErr "": the handler sees id; "*": any error (the server
		// refuses: the client sees its alert or a closed connection,
		// whichever comes first)
		wantErr string
	}{
		{name: "service", trust: []*DevCA{caA}, ca: caA, id: serviceID("products", "products-1")},
		{name: "admin, server of the expected service", trust: []*DevCA{caA}, ca: caA, id: adminID("root"), check: ExpectService("stores")},
		{name: "expected identity", trust: []*DevCA{caA}, ca: caA, id: adminID("root"), check: ExpectIdentity(serviceID("stores", "stores-1"))},
		{name: "expected role", trust: []*DevCA{caA}, ca: caA, id: adminID("root"), check: ExpectRole(RoleBroker, RoleService)},
		{name: "server of another service", trust: []*DevCA{caA}, ca: caA, id: adminID("root"), check: ExpectService("products"),
			wantErr: "is not an instance of service"},
		{name: "server of another instance", trust: []*DevCA{caA}, ca: caA, id: adminID("root"), check: ExpectIdentity(serviceID("stores", "stores-2")),
			wantErr: "is not spiffe://replmesh.test/replmesh/stores/stores-2"},
		{name: "server not a broker", trust: []*DevCA{caA}, ca: caA, id: adminID("root"), check: ExpectRole(RoleBroker),
			wantErr: "is a service, want [broker]"},
		{name: "server from a CA the client does not trust", trust: []*DevCA{caB}, ca: caB, id: adminID("root"),
			wantErr: "certificate signed by unknown authority"},
		{name: "client from a CA the server does not trust", trust: []*DevCA{caA, caB}, ca: caB, id: adminID("root"), wantErr: "*"},
		{name: "client of another trust domain", trust: []*DevCA{caA, caOther}, ca: caOther,
			id: Identity{TrustDomain: "other.test", Role: RoleAdmin, Name: "root"}, wantErr: "*"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			client := newTLSPeer(t, "")
			client.trust(t, tc.trust...)
			client.issue(t, tc.ca, tc.id)
			resp, err := whoAmI(t, addr, client.source(t, nil).ClientConfig(tc.check))
			switch {
			case tc.wantErr == "":
				if err != nil {
					t.Fatalf("WhoAmI: %v", err)
				}
				if resp.ID != tc.id.String() {
					t.Fatalf("the handler saw %q, want %q", resp.ID, tc.id)
				}
			case err == nil:
				t.Fatalf("WhoAmI answered %+v, want a refused handshake", resp)
			case tc.wantErr != "*" && !strings.Contains(err.Error(), tc.wantErr):
				t.Fatalf("WhoAmI: %v, want an error with %q", err, tc.wantErr)
			default:
				t.Logf("refused: %v", err)
			}
		})
	}

	// Plaintext against the mTLS server: refused.
	if resp, err := whoAmI(t, addr, nil); err == nil {
		t.Fatalf("plaintext client answered %+v", resp)
	}
}

// A new leaf written over the old one is used from the next handshake on:
// at once after Reload, or by the handshake check once its interval has
// passed.
func TestTLSSource_RotateLeaf(t *testing.T) {
	ca := newTestCA(t, testTrustDomain)
	server := newTLSPeer(t, testTrustDomain)
	server.trust(t, ca)
	server.issue(t, ca, serviceID("stores", "stores-1"))
	addr := startWhoAmI(t, server.source(t, nil))

	id := serviceID("products", "products-1")
	call := func(t *testing.T, cfg *tls.Config) string {
		t.Helper()
		resp, err := whoAmI(t, addr, cfg)
		if err != nil {
			t.Fatalf("WhoAmI: %v", err)
		}
		if resp.ID != id.String() {
			t.Fatalf("the handler saw %q, want %q", resp.ID, id)
		}
		return resp.Serial
	}

	t.Run("Reload", func(t *testing.T) {
		client := newTLSPeer(t, testTrustDomain)
		client.trust(t, ca)
		first := client.issue(t, ca, id)
		src := client.source(t, nil)
		cfg := src.ClientConfig(nil)
		if got := call(t, cfg); got != first {
			t.Fatalf("serial %s, want the first leaf's %s", got, first)
		}
		second := client.issue(t, ca, id)
		if err := src.Reload(); err != nil {
			t.Fatalf("Reload: %v", err)
		}
		if got := call(t, cfg); got != second {
			t.Fatalf("after Reload: serial %s, want the new leaf's %s", got, second)
		}
	})

	t.Run("check on handshake", func(t *testing.T) {
		client := newTLSPeer(t, testTrustDomain)
		client.trust(t, ca)
		first := client.issue(t, ca, id)
		src := client.source(t, nil)
		clk := checkEvery(src, time.Second)
		cfg := src.ClientConfig(nil)
		second := client.issue(t, ca, id)
		if got := call(t, cfg); got != first {
			t.Fatalf("within the interval: serial %s, want the first leaf's %s", got, first)
		}
		clk.Advance(time.Second)
		if got := call(t, cfg); got != second {
			t.Fatalf("after the interval: serial %s, want the new leaf's %s", got, second)
		}
		if got := src.Identity(); got != id {
			t.Fatalf("Identity() = %s, want %s", got, id)
		}
	})
}

// A CA added to the server's bundle is trusted from the next handshake
// on, without a restart.
func TestTLSSource_RotateCA(t *testing.T) {
	oldCA, newCA := newTestCA(t, testTrustDomain), newTestCA(t, testTrustDomain)
	server := newTLSPeer(t, testTrustDomain)
	server.trust(t, oldCA)
	server.issue(t, oldCA, serviceID("stores", "stores-1"))
	src := server.source(t, nil)
	clk := checkEvery(src, time.Second)
	addr := startWhoAmI(t, src)

	client := newTLSPeer(t, testTrustDomain)
	client.trust(t, oldCA, newCA)
	id := adminID("root")
	client.issue(t, newCA, id)
	cfg := client.source(t, nil).ClientConfig(nil)
	if resp, err := whoAmI(t, addr, cfg); err == nil {
		t.Fatalf("a leaf of a CA not yet in the server's bundle was accepted: %+v", resp)
	}
	server.trust(t, oldCA, newCA)
	clk.Advance(time.Second)
	resp, err := whoAmI(t, addr, cfg)
	if err != nil {
		t.Fatalf("after the new CA joined the bundle: %v", err)
	}
	if resp.ID != id.String() {
		t.Fatalf("the handler saw %q, want %q", resp.ID, id)
	}
}

// New files that do not load leave the material in force: Reload returns
// the error, it is logged at WARN, and handshakes go on with the old
// certificate. Once good files are back they are taken.
func TestTLSSource_BadReloadKeepsMaterial(t *testing.T) {
	ca, otherCA := newTestCA(t, testTrustDomain), newTestCA(t, testTrustDomain)
	otherTD := newTestCA(t, "other.test")
	server := newTLSPeer(t, testTrustDomain)
	server.trust(t, ca)
	server.issue(t, ca, serviceID("stores", "stores-1"))
	addr := startWhoAmI(t, server.source(t, nil))

	id := serviceID("products", "products-1")
	client := newTLSPeer(t, testTrustDomain)
	client.trust(t, ca, otherTD)
	serial := client.issue(t, ca, id)
	var logs testutil.LogBuffer
	src := client.source(t, slog.New(slog.NewJSONHandler(&logs, nil)))
	cfg := src.ClientConfig(nil)
	goodCA, _ := os.ReadFile(client.files.CA)
	goodCert, _ := os.ReadFile(client.files.Cert)
	goodKey, _ := os.ReadFile(client.files.Key)
	otherCert, otherKey, err := ca.Issue(LeafRequest{Identity: id, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	issue := func(ca *DevCA, id Identity) func(t *testing.T) {
		return func(t *testing.T) {
			c, k, err := ca.Issue(LeafRequest{Identity: id, Validity: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			writeFile(t, client.files.Cert, c)
			writeFile(t, client.files.Key, k)
		}
	}

	tests := []struct {
		name    string
		break_  func(t *testing.T)
		wantErr string
	}{
		{"garbage certificate", func(t *testing.T) { writeFile(t, client.files.Cert, []byte("not PEM")) }, "tls certificate"},
		{"key of another certificate", func(t *testing.T) { writeFile(t, client.files.Key, otherKey) }, "private key does not match"},
		{"certificate without its key", func(t *testing.T) { writeFile(t, client.files.Cert, otherCert) }, "private key does not match"},
		{"missing key", func(t *testing.T) { os.Remove(client.files.Key) }, "tls key"},
		{"empty CA bundle", func(t *testing.T) { writeFile(t, client.files.CA) }, "no PEM certificate"},
		{"leaf of a CA not in the bundle", issue(otherCA, id), "does not chain to the CA bundle"},
		{"another identity", issue(ca, serviceID("products", "products-2")), "an identity changes only with a restart"},
		{"another trust domain", issue(otherTD, Identity{TrustDomain: "other.test", Role: RoleService, Service: "products", Instance: "products-1"}),
			`is not in trust domain "replmesh.test"`},
	}
	warn := testutil.Msg("tls reload failed; keeping the certificates in force")
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := len(logs.Records(t, warn))
			tc.break_(t)
			err := src.Reload()
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Reload = %v, want an error with %q", err, tc.wantErr)
			}
			recs := logs.Records(t, warn)
			if len(recs) != before+1 || recs[len(recs)-1]["level"] != "WARN" || recs[len(recs)-1]["error"] != err.Error() {
				t.Fatalf("want one WARN naming %q, got %v", err, recs[before:])
			}
			resp, err := whoAmI(t, addr, cfg)
			if err != nil || resp.Serial != serial {
				t.Fatalf("WhoAmI with the material in force: %+v, %v; want serial %s", resp, err, serial)
			}
			writeFile(t, client.files.CA, goodCA)
			writeFile(t, client.files.Cert, goodCert)
			writeFile(t, client.files.Key, goodKey)
			if err := src.Reload(); err != nil {
				t.Fatalf("Reload of the good files: %v", err)
			}
		})
	}

	// On the handshake path a failure is logged once per bad content, not
	// on every check.
	clk := checkEvery(src, time.Second)
	writeFile(t, client.files.Cert, []byte("not PEM"))
	before := len(logs.Records(t, warn))
	for range 3 {
		clk.Advance(time.Second)
		if resp, err := whoAmI(t, addr, cfg); err != nil || resp.Serial != serial {
			t.Fatalf("WhoAmI with the material in force: %+v, %v", resp, err)
		}
	}
	if got := len(logs.Records(t, warn)) - before; got != 1 {
		t.Fatalf("%d WARN records for one bad file over 3 checks, want 1", got)
	}
}

func TestNewTLSSource_Errors(t *testing.T) {
	ca := newTestCA(t, testTrustDomain)
	good := newTLSPeer(t, "")
	good.trust(t, ca)
	good.issue(t, ca, adminID("root"))
	noID := newTLSPeer(t, "")
	noID.trust(t, ca)
	writeFile(t, noID.files.Cert, ca.CertPEM()) // the CA's own certificate carries spiffe://TD, no replmesh ID
	caKey, _ := ca.KeyPEM()
	writeFile(t, noID.files.Key, caKey)

	tests := []struct {
		name    string
		files   func() TLSFiles
		wantErr string
	}{
		{"no CA", func() TLSFiles { f := good.files; f.CA = ""; return f }, "TLSFiles.CA: a file is required"},
		{"no key", func() TLSFiles { f := good.files; f.Key = ""; return f }, "TLSFiles.Key: a file is required"},
		{"bad trust domain", func() TLSFiles { f := good.files; f.TrustDomain = "Upper"; return f }, `TLSFiles.TrustDomain "Upper"`},
		{"missing certificate", func() TLSFiles { f := good.files; f.Cert += ".missing"; return f }, "tls certificate"},
		{"other trust domain", func() TLSFiles { f := good.files; f.TrustDomain = "other.test"; return f }, `not in trust domain "other.test"`},
		{"certificate without replmesh ID", func() TLSFiles { return noID.files }, "not a replmesh identity"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := NewTLSSource(tc.files(), testutil.Logger(t))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("NewTLSSource = %v, %v; want an error with %q", s, err, tc.wantErr)
			}
		})
	}
	s, err := NewTLSSource(good.files, nil)
	if err != nil {
		t.Fatalf("NewTLSSource: %v", err)
	}
	if got, want := s.Identity(), adminID("root"); got != want {
		t.Fatalf("Identity() = %s, want %s", got, want)
	}
	if !s.NotAfter().After(time.Now()) {
		t.Fatalf("NotAfter() = %v", s.NotAfter())
	}
}
