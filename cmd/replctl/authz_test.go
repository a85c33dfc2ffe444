package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/replmesh/replmesh/broker"
	"github.com/replmesh/replmesh/transport"
)

// replctl against a broker that requires identities: an admin certificate
// (given by the environment) reads the status and sets modes, an operator
// reads the status only, a service identity neither; the status of more
// instances than a page is read whole.
func TestAuthorizedBroker(t *testing.T) {
	dir := t.TempDir()
	tlsCtl(t, "tls", "ca", "create", "-dir", dir, "-trust-domain", "replmesh.test")
	files := map[string]tlsResult{}
	for name, args := range map[string][]string{
		"broker":   {"-broker", "b1"},
		"admin":    {"-admin", "root"},
		"operator": {"-operator", "ops"},
		"service":  {"-service", "products", "-instance", "p1"},
	} {
		files[name] = tlsCtl(t, append([]string{"tls", "cert", "create", "-ca-dir", dir, "-dir", dir}, args...)...)
	}
	ca := filepath.Join(dir, "ca.pem")
	src, err := transport.NewTLSSource(transport.TLSFiles{CA: ca, Cert: files["broker"].CertFile, Key: files["broker"].KeyFile}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg := broker.LocalConfig("b1")
	cfg.Logger = testLogger(t)
	cfg.Transport.TLS = src.ServerConfig()
	cfg.RequireIdentity = true
	cfg.StatusPageSize = 2
	b, err := broker.New(ctxT(t, 30*time.Second), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	// Five instances of stores, each with its own identity: three pages.
	for i := 1; i <= 5; i++ {
		inst := "stores-" + string(rune('0'+i))
		r := tlsCtl(t, "tls", "cert", "create", "-ca-dir", dir, "-dir", dir, "-service", "stores", "-instance", inst)
		isrc, err := transport.NewTLSSource(transport.TLSFiles{CA: ca, Cert: r.CertFile, Key: r.KeyFile}, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		cc, err := transport.Dial(b.GRPCAddr(), transport.Options{TLS: isrc.ClientConfig(nil)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		s, err := transport.NewBrokerClient(cc).Session(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&transport.SessionRequest{Kind: transport.SessionRegister, Register: &transport.Register{Version: transport.ProtocolVersion,
			Service: "stores", Instance: inst, Addr: "127.0.0.1:7001", Owner: true}}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); err != nil {
			t.Fatalf("register %s: %v", inst, err)
		}
	}
	ctl := func(who string, args ...string) result {
		env := map[string]string{EnvTLSCA: ca, EnvTLSCert: files[who].CertFile, EnvTLSKey: files[who].KeyFile, EnvBroker: b.GRPCAddr()}
		var stdout, stderr bytes.Buffer
		code := run(ctxT(t, 30*time.Second), args, &stdout, &stderr, func(k string) string { return env[k] })
		return result{stdout: stdout.String(), stderr: stderr.String(), code: code}
	}
	tests := []struct {
		who            string
		status, setMod bool
	}{
		{"admin", true, true},
		{"operator", true, false},
		{"service", false, false},
	}
	for _, tc := range tests {
		t.Run(tc.who, func(t *testing.T) {
			r := ctl(tc.who, "-o", "json", "status")
			if tc.status != (r.code == 0) {
				t.Fatalf("status: %v", r)
			}
			if tc.status {
				var st transport.StatusResponse
				if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
					t.Fatal(err)
				}
				if len(st.Instances) != 5 || len(st.Owners) != 1 {
					t.Fatalf("status shows %d instances and %d owners, want 5 and 1:\n%s", len(st.Instances), len(st.Owners), r.stdout)
				}
			}
			if !tc.status && !strings.Contains(r.stderr, "permission denied") {
				t.Fatalf("status refused without saying why: %v", r)
			}
			r = ctl(tc.who, "mode", "set", "stores/stores", "pull")
			if tc.setMod != (r.code == 0) {
				t.Fatalf("mode set: %v", r)
			}
		})
	}
	if err := os.Remove(files["admin"].KeyFile); err != nil {
		t.Fatal(err)
	}
	if r := ctl("admin", "status"); r.code != exitUsage {
		t.Fatalf("a missing key: %v", r)
	}
}
