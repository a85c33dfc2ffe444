package main

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/replmesh/replmesh/broker"
	"github.com/replmesh/replmesh/transport"
)

// devFiles writes a dev CA and a certificate for id into a directory and
// returns the CA, certificate and key file names.
func devFiles(t *testing.T, id transport.Identity) (ca, cert, key string) {
	t.Helper()
	dca, err := transport.NewDevCA("replmesh.test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := dca.Issue(transport.LeafRequest{Identity: id, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ca, cert, key = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "b1.pem"), filepath.Join(dir, "b1-key.pem")
	for path, b := range map[string][]byte{ca: dca.CertPEM(), cert: certPEM, key: keyPEM} {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return ca, cert, key
}

func TestSettings_Security(t *testing.T) {
	ca, cert, key := devFiles(t, transport.Identity{TrustDomain: "replmesh.test", Role: transport.RoleBroker, Name: "b1"})
	dir := t.TempDir()
	policy := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policy, []byte("version: 1\ntables:\n  stores/stores: {readers: [products]}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	badPolicy := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(badPolicy, []byte("version: 1\ntables:\n  stores/stores: {writers: [products]}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tlsArgs := []string{"-tls-cert", cert, "-tls-key", key}
	tests := []struct {
		name     string
		args     []string
		identity bool   // RequireIdentity
		wantErr  string // "" accepted
	}{
		{"loopback, no TLS", nil, false, ""},
		{"wildcard, no TLS", []string{"-grpc", "0.0.0.0:7400"}, false, "insecure transport"},
		{"other host, no TLS", []string{"-grpc", "10.0.0.1:7400"}, false, "-insecure"},
		{"wildcard, insecure", []string{"-grpc", "0.0.0.0:7400", "-insecure"}, false, ""},
		{"wildcard, insecure in the file", []string{"-grpc", "0.0.0.0:7400", "-config", writeFile(t, "insecure: true\n")}, false, ""},
		{"mTLS with identities", append([]string{"-grpc", "0.0.0.0:7400", "-tls-ca", ca}, tlsArgs...), true, ""},
		{"former flag name", append([]string{"-tls-client-ca", ca}, tlsArgs...), true, ""},
		{"both CA flags", append([]string{"-tls-client-ca", ca, "-tls-ca", cert}, tlsArgs...), false, "not both"},
		{"server TLS only", tlsArgs, false, ""},
		{"policy", append([]string{"-tls-ca", ca, "-policy", policy}, tlsArgs...), true, ""},
		{"bad policy", []string{"-policy", badPolicy}, false, "line 3"},
		{"missing policy", []string{"-policy", filepath.Join(dir, "none.yaml")}, false, "load policy"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, err := parseSettings(tc.args, io.Discard)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if st.cfg.RequireIdentity != tc.identity || (st.tls != nil) != tc.identity {
				t.Fatalf("RequireIdentity %v (source %v), want %v", st.cfg.RequireIdentity, st.tls != nil, tc.identity)
			}
		})
	}
	if _, err := parseSettings([]string{"-grpc", "0.0.0.0:7400"}, io.Discard); !errors.Is(err, transport.ErrInsecureTransport) {
		t.Fatalf("got %v, want ErrInsecureTransport", err)
	}
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "broker.yaml")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// SIGHUP reloads the policy file; one that does not load leaves the
// policy in force.
func TestSettings_ReloadPolicy(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("version: 1\ntables:\n  stores/stores: {readers: [products]}\n")
	st, err := parseSettings([]string{"-policy", path}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	cfg := broker.LocalConfig("p1")
	cfg.Policy = st.cfg.Policy
	b, err := broker.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	steps := []struct {
		name, file string
		want       bool // billing may read stores/stores
	}{
		{"as started", "", false},
		{"billing added", "version: 1\ntables:\n  stores/stores: {readers: [products, billing]}\n", true},
		{"a bad file keeps it", "version: 1\ntables:\n  stores/stores: {readers: [billing]}\nbogus: 1\n", true},
		{"billing removed", "version: 1\ntables:\n  stores/stores: {readers: [products]}\n", false},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			if s.file != "" {
				write(s.file)
				st.reload(b)
			}
			if got := b.Policy().MayRead("stores", "stores", "billing"); got != s.want {
				t.Fatalf("billing may read stores/stores: %v, want %v", got, s.want)
			}
		})
	}
}
