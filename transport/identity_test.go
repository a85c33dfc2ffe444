package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/url"
	"strings"
	"testing"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

func TestParseIdentity(t *testing.T) {
	long := strings.Repeat("a", 129)
	tests := []struct {
		in      string
		want    Identity
		wantErr string
	}{
		{in: "spiffe://replmesh.local/replmesh/stores/stores-1",
			want: Identity{TrustDomain: "replmesh.local", Role: RoleService, Service: "stores", Instance: "stores-1"}},
		{in: "spiffe://example.org/replmesh/A_b.c/x-1",
			want: Identity{TrustDomain: "example.org", Role: RoleService, Service: "A_b.c", Instance: "x-1"}},
		{in: "spiffe://td/replmesh-admin/alice", want: Identity{TrustDomain: "td", Role: RoleAdmin, Name: "alice"}},
		{in: "spiffe://td/replmesh-operator/bob", want: Identity{TrustDomain: "td", Role: RoleOperator, Name: "bob"}},
		{in: "spiffe://td/replmesh-broker/b1", want: Identity{TrustDomain: "td", Role: RoleBroker, Name: "b1"}},

		{in: "", wantErr: "cannot be empty"},
		{in: "https://td/replmesh/s/i", wantErr: "scheme"},
		{in: "spiffe://TD/replmesh/s/i", wantErr: "trust domain characters"},
		{in: "spiffe:///replmesh/s/i", wantErr: "trust domain is missing"},
		{in: "spiffe://td", wantErr: "not a replmesh identity"},
		{in: "spiffe://td/replmesh/s", wantErr: "not a replmesh identity"},
		{in: "spiffe://td/replmesh/s/i/x", wantErr: "not a replmesh identity"},
		{in: "spiffe://td/replmesh-admin/a/b", wantErr: "not a replmesh identity"},
		{in: "spiffe://td/other/s/i", wantErr: "not a replmesh identity"},
		{in: "spiffe://td/replmesh/s/..", wantErr: "dot segments"},
		{in: "spiffe://td/replmesh/s/a%20b", wantErr: "path segment characters"},
		{in: "spiffe://td/replmesh/s/i?x=1", wantErr: "path segment characters"},
		{in: "spiffe://td/replmesh/s//i", wantErr: "empty segments"},
		{in: "spiffe://td/replmesh/s/i/", wantErr: "trailing slash"},
		{in: "spiffe://td/replmesh/" + long + "/i", wantErr: "must be 1-128 characters"},
		{in: "spiffe://td/replmesh-broker/" + long, wantErr: "broker name"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseIdentity(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseIdentity(%q) = %+v, %v; want an error with %q", tc.in, got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseIdentity(%q): %v", tc.in, err)
			}
			if got != tc.want {
				t.Fatalf("ParseIdentity(%q) = %+v, want %+v", tc.in, got, tc.want)
			}
			if s := got.String(); s != tc.in {
				t.Fatalf("String() = %q, want %q", s, tc.in)
			}
			u, err := got.URL()
			if err != nil || u.String() != tc.in {
				t.Fatalf("URL() = %v, %v; want %s", u, err, tc.in)
			}
		})
	}
}

func TestIdentity_Validate(t *testing.T) {
	tests := []struct {
		name    string
		id      Identity
		wantErr string
	}{
		{"service", Identity{TrustDomain: "td", Role: RoleService, Service: "s", Instance: "i"}, ""},
		{"admin", Identity{TrustDomain: "td", Role: RoleAdmin, Name: "a"}, ""},
		{"no trust domain", Identity{Role: RoleAdmin, Name: "a"}, "trust domain"},
		{"no role", Identity{TrustDomain: "td", Name: "a"}, "unknown role"},
		{"service without instance", Identity{TrustDomain: "td", Role: RoleService, Service: "s"}, `instance ""`},
		{"service with name", Identity{TrustDomain: "td", Role: RoleService, Service: "s", Instance: "i", Name: "n"}, "has no Name"},
		{"broker with service", Identity{TrustDomain: "td", Role: RoleBroker, Name: "b", Service: "s"}, "has no Service"},
		{"operator without name", Identity{TrustDomain: "td", Role: RoleOperator}, `operator name ""`},
		{"dot name", Identity{TrustDomain: "td", Role: RoleAdmin, Name: "."}, "SPIFFE path segment"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.id.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Validate = %v, want an error with %q", err, tc.wantErr)
			}
			if s := tc.id.String(); !strings.HasPrefix(s, "invalid identity") {
				t.Fatalf("String of an invalid identity = %q", s)
			}
		})
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestIdentityFromCert(t *testing.T) {
	tests := []struct {
		name    string
		uris    []string
		want    Identity
		wantErr string
	}{
		{name: "one", uris: []string{"spiffe://td/replmesh/stores/stores-1"},
			want: Identity{TrustDomain: "td", Role: RoleService, Service: "stores", Instance: "stores-1"}},
		{name: "none", wantErr: "has no URI SAN"},
		{name: "two", uris: []string{"spiffe://td/replmesh/stores/stores-1", "spiffe://td/replmesh-admin/root"},
			wantErr: "has 2 URI SANs (spiffe://td/replmesh/stores/stores-1, spiffe://td/replmesh-admin/root)"},
		{name: "one and a URL", uris: []string{"spiffe://td/replmesh/stores/stores-1", "https://example.org/"}, wantErr: "has 2 URI SANs"},
		{name: "not replmesh", uris: []string{"spiffe://td/ns/default/sa/web"}, wantErr: `"spiffe://td/ns/default/sa/web" is not a replmesh identity`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cert := &x509.Certificate{}
			cert.Subject.CommonName = "cn"
			for _, s := range tc.uris {
				cert.URIs = append(cert.URIs, mustURL(t, s))
			}
			got, err := IdentityFromCert(cert)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("IdentityFromCert = %+v, %v; want an error with %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("IdentityFromCert = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
	if _, err := IdentityFromCert(nil); err == nil {
		t.Fatal("IdentityFromCert(nil): no error")
	}
}

// IdentityFromContext trusts verified chains only; every other case is
// ErrNoIdentity (PermissionDenied on the wire). The real handshake is in
// tlsfiles_test.go.
func TestIdentityFromContext_NoIdentity(t *testing.T) {
	addr := &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 1}
	unverified := &x509.Certificate{URIs: []*url.URL{mustURL(t, "spiffe://td/replmesh-admin/root")}}
	verifiedNoID := &x509.Certificate{}
	tests := []struct {
		name    string
		ctx     context.Context
		wantErr string
	}{
		{"no peer", context.Background(), "no peer"},
		{"plaintext", peer.NewContext(context.Background(), &peer.Peer{Addr: addr, AuthInfo: plainAuth{}}), "is not TLS"},
		{"no auth info", peer.NewContext(context.Background(), &peer.Peer{Addr: addr}), "is not TLS"},
		{"unverified certificate", peer.NewContext(context.Background(), &peer.Peer{Addr: addr, AuthInfo: credentials.TLSInfo{
			State: tls.ConnectionState{PeerCertificates: []*x509.Certificate{unverified}}}}), "no verified client certificate"},
		{"verified without identity", peer.NewContext(context.Background(), &peer.Peer{Addr: addr, AuthInfo: credentials.TLSInfo{
			State: tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{verifiedNoID}}}}}), "no URI SAN"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id, err := IdentityFromContext(tc.ctx)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("IdentityFromContext = %+v, %v; want an error with %q", id, err, tc.wantErr)
			}
			if !errors.Is(err, ErrNoIdentity) || !errors.Is(err, ErrPermission) {
				t.Fatalf("error %v is not ErrNoIdentity and ErrPermission", err)
			}
		})
	}
	verified := &x509.Certificate{URIs: []*url.URL{mustURL(t, "spiffe://td/replmesh-admin/root")}}
	ctx := peer.NewContext(context.Background(), &peer.Peer{Addr: addr, AuthInfo: credentials.TLSInfo{
		State: tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{verified}}}}})
	if id, err := IdentityFromContext(ctx); err != nil || id != (Identity{TrustDomain: "td", Role: RoleAdmin, Name: "root"}) {
		t.Fatalf("verified chain: %+v, %v", id, err)
	}
}

// plainAuth is the AuthInfo of a connection without TLS.
type plainAuth struct{}

func (plainAuth) AuthType() string { return "insecure" }

func TestRole_String(t *testing.T) {
	for r, want := range map[Role]string{RoleService: "service", RoleAdmin: "admin", RoleOperator: "operator", RoleBroker: "broker", 0: "Role(0)"} {
		t.Run(want, func(t *testing.T) {
			if got := r.String(); got != want {
				t.Errorf("Role(%d).String() = %q, want %q", uint8(r), got, want)
			}
		})
	}
}
