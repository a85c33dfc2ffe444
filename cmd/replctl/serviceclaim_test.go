package main

import (
	"io"
	"strings"
	"testing"
	"time"
)

// With a certificate of a service identity, the service replctl presents
// to owners (get, keys, tail, verify) is the certificate's: owners that
// require identities check the name against it.
func TestServiceClaimFromCertificate(t *testing.T) {
	dir := t.TempDir()
	ca := tlsCtl(t, "tls", "ca", "create", "-dir", dir, "-trust-domain", "replmesh.test")
	leaf := tlsCtl(t, "tls", "cert", "create", "-ca-dir", dir, "-dir", dir, "-service", "products", "-instance", "products-7")
	admin := tlsCtl(t, "tls", "cert", "create", "-ca-dir", dir, "-dir", dir, "-admin", "root")
	for _, tc := range []struct {
		name                   string
		args                   []string
		service, instance, err string
	}{
		{"service certificate", []string{"-tls-cert", leaf.CertFile, "-tls-key", leaf.KeyFile}, "products", "products-7", ""},
		{"the same -service", []string{"-service", "products", "-tls-cert", leaf.CertFile, "-tls-key", leaf.KeyFile}, "products", "products-7", ""},
		{"another -service", []string{"-service", "stores", "-tls-cert", leaf.CertFile, "-tls-key", leaf.KeyFile}, "", "", `-service "stores"`},
		{"admin certificate", []string{"-service", "ops", "-tls-cert", admin.CertFile, "-tls-key", admin.KeyFile}, "ops", "", ""},
		{"no TLS", nil, "replctl", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &cli{stdout: io.Discard, stderr: io.Discard, conns: map[string]*conn{}}
			c.brokerFlag, c.output, c.timeout, c.service = "127.0.0.1:7400", "text", time.Second, "replctl"
			fs := c.flagSet("get")
			args := tc.args
			if args != nil {
				args = append([]string{"-tls-ca", ca.CertFile}, args...)
			}
			_, err := c.parse(fs, args)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, want an error naming %s", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.service != tc.service || c.instance != tc.instance {
				t.Fatalf("presents %s/%s, want %s/%s", c.service, c.instance, tc.service, tc.instance)
			}
		})
	}
}
