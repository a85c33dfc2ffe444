package transport

import (
	"crypto/x509"
	"encoding/pem"
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestDevCA_IssueAndParse(t *testing.T) {
	ca := newTestCA(t, testTrustDomain)
	keyPEM, err := ca.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseDevCA(ca.CertPEM(), keyPEM)
	if err != nil {
		t.Fatalf("ParseDevCA: %v", err)
	}
	if back.TrustDomain != testTrustDomain || !back.Cert.Equal(ca.Cert) {
		t.Fatalf("ParseDevCA: trust domain %q, same certificate %v", back.TrustDomain, back.Cert.Equal(ca.Cert))
	}

	certPEM, _, err := back.Issue(LeafRequest{Identity: Identity{Role: RoleBroker, Name: "b1"}, Validity: 100 * time.Hour,
		IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"}})
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	b, _ := pem.Decode(certPEM)
	leaf, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	id, err := IdentityFromCert(leaf)
	if err != nil || id != (Identity{TrustDomain: testTrustDomain, Role: RoleBroker, Name: "b1"}) {
		t.Fatalf("leaf identity %+v, %v", id, err)
	}
	if !leaf.NotAfter.Equal(ca.Cert.NotAfter) {
		t.Errorf("leaf NotAfter %v, want it capped at the CA's %v", leaf.NotAfter, ca.Cert.NotAfter)
	}
	if !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
		t.Errorf("leaf EKUs %v, want server and client auth", leaf.ExtKeyUsage)
	}
	if len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(net.IPv4(127, 0, 0, 1)) || !slices.Equal(leaf.DNSNames, []string{"localhost"}) {
		t.Errorf("leaf SANs %v %v", leaf.IPAddresses, leaf.DNSNames)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("leaf does not verify against its CA: %v", err)
	}
}

func TestDevCA_Errors(t *testing.T) {
	ca := newTestCA(t, testTrustDomain)
	leafCert, leafKey, err := ca.Issue(LeafRequest{Identity: adminID("root"), Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	caKey, _ := ca.KeyPEM()

	issues := []struct {
		name    string
		req     LeafRequest
		wantErr string
	}{
		{"other trust domain", LeafRequest{Identity: Identity{TrustDomain: "other.test", Role: RoleAdmin, Name: "a"}, Validity: time.Hour}, `not in the CA's trust domain "replmesh.test"`},
		{"invalid identity", LeafRequest{Identity: Identity{Role: RoleService, Service: "s"}, Validity: time.Hour}, `instance ""`},
		{"no validity", LeafRequest{Identity: adminID("a")}, "validity must be positive"},
	}
	for _, tc := range issues {
		t.Run("Issue/"+tc.name, func(t *testing.T) {
			if _, _, err := ca.Issue(tc.req); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Issue = %v, want an error with %q", err, tc.wantErr)
			}
		})
	}

	parses := []struct {
		name      string
		cert, key []byte
		wantErr   string
	}{
		{"a leaf", leafCert, leafKey, "is not a CA"},
		{"another key", ca.CertPEM(), leafKey, "private key does not match"},
		{"garbage", []byte("x"), caKey, "failed to find any PEM data"},
	}
	for _, tc := range parses {
		t.Run("ParseDevCA/"+tc.name, func(t *testing.T) {
			if _, err := ParseDevCA(tc.cert, tc.key); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("ParseDevCA = %v, want an error with %q", err, tc.wantErr)
			}
		})
	}

	for _, tc := range []struct {
		name     string
		td       string
		validity time.Duration
		wantErr  string
	}{
		{"bad trust domain", "Not Valid", time.Hour, "trust domain"},
		{"no validity", testTrustDomain, 0, "validity must be positive"},
	} {
		t.Run("NewDevCA/"+tc.name, func(t *testing.T) {
			if _, err := NewDevCA(tc.td, tc.validity); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("NewDevCA = %v, want an error with %q", err, tc.wantErr)
			}
		})
	}
}
