package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/replmesh/replmesh/transport"
)

// tlsCtl runs a tls subcommand in this process with -o json and decodes
// what it printed.
func tlsCtl(t *testing.T, args ...string) tlsResult {
	t.Helper()
	r := runCtl(t, append([]string{"-o", "json"}, args...)...)
	if r.code != 0 {
		t.Fatalf("replctl %q: %v", args, r)
	}
	var out tlsResult
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("replctl %q: %v\n%s", args, err, r.stdout)
	}
	return out
}

func fileMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

// identityBroker is a broker whose Status answers the caller's identity
// (transport.IdentityFromContext) as the broker name.
type identityBroker struct{ fakeBroker }

func (b *identityBroker) Status(ctx context.Context, _ *transport.StatusRequest) (*transport.StatusResponse, error) {
	id, err := transport.IdentityFromContext(ctx)
	if err != nil {
		return nil, transport.StatusError(err)
	}
	return &transport.StatusResponse{Broker: id.String()}, nil
}

// serveMTLS serves an identityBroker over mTLS made from files.
func serveMTLS(t *testing.T, files transport.TLSFiles) (string, *transport.TLSSource) {
	t.Helper()
	src, err := transport.NewTLSSource(files, testLogger(t))
	if err != nil {
		t.Fatalf("server TLS: %v", err)
	}
	srv := transport.NewServer(transport.Options{TLS: src.ServerConfig()})
	transport.RegisterBrokerServer(srv, &identityBroker{})
	lis, err := transport.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { srv.Serve(lis); close(served) }()
	t.Cleanup(func() { srv.Stop(); <-served })
	return lis.Addr().String(), src
}

// callerIdentity calls Status over a new mTLS connection made from files
// and returns the identity the server saw.
func callerIdentity(t *testing.T, addr string, files transport.TLSFiles, check transport.IdentityCheck) (string, error) {
	t.Helper()
	src, err := transport.NewTLSSource(files, testLogger(t))
	if err != nil {
		t.Fatalf("client TLS: %v", err)
	}
	cc, err := transport.Dial(addr, transport.Options{TLS: src.ClientConfig(check)})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	st, err := transport.NewBrokerClient(cc).Status(ctxT(t, 10*time.Second), &transport.StatusRequest{Version: transport.ProtocolVersion})
	if err != nil {
		return "", err
	}
	return st.Broker, nil
}

// `tls ca create` and `tls cert create` write a CA and leaves whose
// identities arrive in a gRPC handler over mTLS built from the files.
func TestTLSCreate(t *testing.T) {
	dir := t.TempDir()
	ca := tlsCtl(t, "tls", "ca", "create", "-dir", dir, "-trust-domain", "replmesh.test", "-days", "30")
	if ca.CertFile != filepath.Join(dir, "ca.pem") || ca.KeyFile != filepath.Join(dir, "ca-key.pem") || ca.ID != "spiffe://replmesh.test" {
		t.Fatalf("ca create: %+v", ca)
	}
	if d := time.Until(ca.NotAfter); d < 29*24*time.Hour || d > 30*24*time.Hour {
		t.Fatalf("ca create -days 30: expires %v", ca.NotAfter)
	}
	if got := fileMode(t, ca.KeyFile); got != 0o600 {
		t.Fatalf("CA key mode %v, want 0600", got)
	}

	certs := dir + "/certs"
	leaves := []struct {
		args []string
		base string
		id   transport.Identity
	}{
		{[]string{"-service", "stores", "-instance", "stores-1"}, "stores-stores-1",
			transport.Identity{TrustDomain: "replmesh.test", Role: transport.RoleService, Service: "stores", Instance: "stores-1"}},
		{[]string{"-admin", "root"}, "admin-root", transport.Identity{TrustDomain: "replmesh.test", Role: transport.RoleAdmin, Name: "root"}},
		{[]string{"-operator", "ops"}, "operator-ops", transport.Identity{TrustDomain: "replmesh.test", Role: transport.RoleOperator, Name: "ops"}},
		{[]string{"-broker", "b1", "-name", "b1"}, "b1", transport.Identity{TrustDomain: "replmesh.test", Role: transport.RoleBroker, Name: "b1"}},
	}
	files := map[string]transport.TLSFiles{}
	for _, l := range leaves {
		t.Run("cert create "+l.base, func(t *testing.T) {
			r := tlsCtl(t, append([]string{"tls", "cert", "create", "-ca-dir", dir, "-dir", certs, "-days", "7"}, l.args...)...)
			want := tlsResult{CertFile: filepath.Join(certs, l.base+".pem"), KeyFile: filepath.Join(certs, l.base+"-key.pem"),
				ID: l.id.String(), TrustDomain: "replmesh.test"}
			r.NotAfter = time.Time{}
			if r != want {
				t.Fatalf("cert create: %+v, want %+v", r, want)
			}
			if got := fileMode(t, r.KeyFile); got != 0o600 {
				t.Fatalf("key mode %v, want 0600", got)
			}
			if got := fileMode(t, certs); got != 0o700 {
				t.Fatalf("created -dir mode %v, want 0700", got)
			}
			files[l.base] = transport.TLSFiles{CA: ca.CertFile, Cert: r.CertFile, Key: r.KeyFile, TrustDomain: "replmesh.test"}
		})
	}

	addr, server := serveMTLS(t, files["b1"])
	for _, l := range leaves {
		t.Run("handshake "+l.base, func(t *testing.T) {
			got, err := callerIdentity(t, addr, files[l.base], transport.ExpectRole(transport.RoleBroker))
			if err != nil {
				t.Fatalf("Status over mTLS: %v", err)
			}
			if got != l.id.String() {
				t.Fatalf("the handler saw %q, want %q", got, l.id)
			}
		})
	}

	// A certificate from another CA is refused by the server.
	other := t.TempDir()
	tlsCtl(t, "tls", "ca", "create", "-dir", other, "-trust-domain", "replmesh.test")
	r := tlsCtl(t, "tls", "cert", "create", "-ca-dir", other, "-dir", other, "-admin", "mallory")
	caPEM, _ := os.ReadFile(ca.CertFile)
	otherPEM, _ := os.ReadFile(filepath.Join(other, "ca.pem"))
	bundle := filepath.Join(other, "bundle.pem")
	if err := os.WriteFile(bundle, append(caPEM, otherPEM...), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := callerIdentity(t, addr, transport.TLSFiles{CA: bundle, Cert: r.CertFile, Key: r.KeyFile}, nil); err == nil {
		t.Fatalf("a certificate of another CA was accepted as %q", got)
	}

	// Rotation: -force writes a new leaf over the server's, which takes
	// it (a later expiry tells them apart) and goes on serving.
	old := server.NotAfter()
	tlsCtl(t, "tls", "cert", "create", "-ca-dir", dir, "-dir", certs, "-broker", "b1", "-name", "b1", "-force", "-days", "8")
	if err := server.Reload(); err != nil {
		t.Fatalf("Reload of the rotated certificate: %v", err)
	}
	if !server.NotAfter().After(old) {
		t.Fatalf("after the rotation the server's certificate expires %v, before %v", server.NotAfter(), old)
	}
	if got, err := callerIdentity(t, addr, files["admin-root"], nil); err != nil || got != leaves[1].id.String() {
		t.Fatalf("after the rotation: %q, %v", got, err)
	}
}

func TestTLSCreate_Errors(t *testing.T) {
	dir := t.TempDir()
	tlsCtl(t, "tls", "ca", "create", "-dir", dir)
	tlsCtl(t, "tls", "cert", "create", "-ca-dir", dir, "-dir", dir, "-admin", "root")
	empty := t.TempDir()
	tests := []struct {
		name     string
		args     []string
		wantCode int
		want     string
	}{
		{"no subcommand", []string{"tls"}, exitUsage, "want 'tls ca create [flags]'"},
		{"bad subcommand", []string{"tls", "ca", "delete"}, exitUsage, "want 'tls ca create [flags]'"},
		{"CA exists", []string{"tls", "ca", "create", "-dir", dir}, exitError, "ca.pem exists (pass -force to overwrite it)"},
		{"cert exists", []string{"tls", "cert", "create", "-ca-dir", dir, "-dir", dir, "-admin", "root"}, exitError, "admin-root.pem exists"},
		{"bad trust domain", []string{"tls", "ca", "create", "-dir", empty, "-trust-domain", "Bad Domain"}, exitUsage, "trust domain"},
		{"no days", []string{"tls", "ca", "create", "-dir", empty, "-days", "0"}, exitUsage, "-days must be positive"},
		{"no identity", []string{"tls", "cert", "create", "-ca-dir", dir}, exitUsage, "give exactly one of"},
		{"two identities", []string{"tls", "cert", "create", "-ca-dir", dir, "-admin", "a", "-broker", "b"}, exitUsage, "give exactly one of"},
		{"service without instance", []string{"tls", "cert", "create", "-ca-dir", dir, "-service", "stores"}, exitUsage, "-service and -instance go together"},
		{"bad name", []string{"tls", "cert", "create", "-ca-dir", dir, "-dir", empty, "-admin", "a b"}, exitUsage, `admin name "a b"`},
		{"bad ip", []string{"tls", "cert", "create", "-ca-dir", dir, "-admin", "a", "-ip", "1.2.3"}, exitUsage, `-ip "1.2.3"`},
		{"path as name", []string{"tls", "cert", "create", "-ca-dir", dir, "-admin", "a", "-name", "../x"}, exitUsage, "must be a file name"},
		{"no CA", []string{"tls", "cert", "create", "-ca-dir", empty, "-admin", "a"}, exitError, "make one with 'replctl tls ca create'"},
		{"unknown flag", []string{"tls", "cert", "create", "-frob"}, exitUsage, "flag provided but not defined"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := runCtl(t, tc.args...)
			if r.code != tc.wantCode || !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("want exit %d and %q on stderr, got %v", tc.wantCode, tc.want, r)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(empty, "ca.pem")); err == nil {
		t.Fatal("a refused ca create wrote files")
	}
}

// The files also serve today's TLS flags: replbroker's -tls-cert,
// -tls-key and -tls-client-ca and replctl's -tls-ca, -tls-cert and
// -tls-key (host names verified against the default 127.0.0.1 IP SAN).
func TestTLSCreate_WithTodaysFlags(t *testing.T) {
	dir := t.TempDir()
	tlsCtl(t, "tls", "ca", "create", "-dir", dir)
	b := tlsCtl(t, "tls", "cert", "create", "-ca-dir", dir, "-dir", dir, "-broker", "bt")
	a := tlsCtl(t, "tls", "cert", "create", "-ca-dir", dir, "-dir", dir, "-admin", "root")
	ca := filepath.Join(dir, "ca.pem")
	addr := startBroker(t, "bt", "-tls-cert", b.CertFile, "-tls-key", b.KeyFile, "-tls-client-ca", ca)
	var st transport.StatusResponse
	ctlJSON(t, &st, "-broker", addr, "-tls-ca", ca, "-tls-cert", a.CertFile, "-tls-key", a.KeyFile, "status")
	if st.Broker != "bt" {
		t.Fatalf("status over mTLS: %+v", st)
	}
}
