package transport

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// Role is the kind of principal an Identity names. The role is the first
// segment of the SPIFFE ID's path.
type Role uint8

// Roles. Their path segments are part of every certificate issued, so they
// never change.
const (
	// RoleService: an instance of a service (a replica component),
	// spiffe://TRUST-DOMAIN/replmesh/SERVICE/INSTANCE.
	RoleService Role = iota + 1
	// RoleAdmin: an operator allowed every broker call (replctl),
	// spiffe://TRUST-DOMAIN/replmesh-admin/NAME.
	RoleAdmin
	// RoleOperator: a read-only operator (status, not SetMode),
	// spiffe://TRUST-DOMAIN/replmesh-operator/NAME.
	RoleOperator
	// RoleBroker: a broker of the cluster,
	// spiffe://TRUST-DOMAIN/replmesh-broker/NAME.
	RoleBroker
)

// The first path segment of each role's SPIFFE ID.
const (
	pathService  = "replmesh"
	pathAdmin    = "replmesh-admin"
	pathOperator = "replmesh-operator"
	pathBroker   = "replmesh-broker"
)

// DefaultTrustDomain is the trust domain `replctl tls ca create` uses when
// none is given.
const DefaultTrustDomain = "replmesh.local"

var rolePaths = map[Role]string{
	RoleService:  pathService,
	RoleAdmin:    pathAdmin,
	RoleOperator: pathOperator,
	RoleBroker:   pathBroker,
}

// String returns the role's name: service, admin, operator or broker.
func (r Role) String() string {
	switch r {
	case RoleService:
		return "service"
	case RoleAdmin:
		return "admin"
	case RoleOperator:
		return "operator"
	case RoleBroker:
		return "broker"
	}
	return fmt.Sprintf("Role(%d)", uint8(r))
}

// Identity is who a peer is, as its certificate proves it: the one SPIFFE
// ID in the certificate's URI SAN. Compare identities with ==.
type Identity struct {
	// TrustDomain is the SPIFFE trust domain, e.g. "replmesh.local".
	TrustDomain string
	// Role says which of the fields below are set.
	Role Role
	// Service and Instance name a RoleService identity; empty otherwise.
	Service  string
	Instance string
	// Name names a RoleAdmin, RoleOperator or RoleBroker identity; empty
	// for RoleService.
	Name string
}

// ErrNoIdentity: the caller proved no replmesh identity (no TLS, no
// verified client certificate, or one without a valid replmesh SPIFFE ID).
// It wraps ErrPermission, so it crosses the wire as PermissionDenied.
var ErrNoIdentity = fmt.Errorf("no verified identity: %w", ErrPermission)

// CheckIdentityName is CheckName, and also refuses "." and "..", which
// SPIFFE does not allow as path segments: the rule for every name that
// can appear in an Identity (and in an access policy naming identities).
func CheckIdentityName(what, s string) error {
	if err := CheckName(what, s); err != nil {
		return err
	}
	if s == "." || s == ".." {
		return fmt.Errorf("%s %q cannot be a SPIFFE path segment", what, s)
	}
	return nil
}

// Validate reports what makes id unusable: a bad trust domain, an unknown
// role, a bad or missing name, or a field its role does not use.
func (id Identity) Validate() error {
	if _, err := spiffeid.TrustDomainFromString(id.TrustDomain); err != nil {
		return fmt.Errorf("trust domain %q: %w", id.TrustDomain, err)
	}
	switch id.Role {
	case RoleService:
		if err := CheckIdentityName("service", id.Service); err != nil {
			return err
		}
		if err := CheckIdentityName("instance", id.Instance); err != nil {
			return err
		}
		if id.Name != "" {
			return fmt.Errorf("a service identity has no Name (got %q)", id.Name)
		}
	case RoleAdmin, RoleOperator, RoleBroker:
		if err := CheckIdentityName(id.Role.String()+" name", id.Name); err != nil {
			return err
		}
		if id.Service != "" || id.Instance != "" {
			return fmt.Errorf("%s identity %q has no Service or Instance (got %q, %q)", id.Role, id.Name, id.Service, id.Instance)
		}
	default:
		return fmt.Errorf("unknown role %d", uint8(id.Role))
	}
	return nil
}

// spiffeID returns id as a SPIFFE ID; id must be valid.
func (id Identity) spiffeID() (spiffeid.ID, error) {
	if err := id.Validate(); err != nil {
		return spiffeid.ID{}, err
	}
	td, err := spiffeid.TrustDomainFromString(id.TrustDomain)
	if err != nil {
		return spiffeid.ID{}, err
	}
	if id.Role == RoleService {
		return spiffeid.FromSegments(td, pathService, id.Service, id.Instance)
	}
	return spiffeid.FromSegments(td, rolePaths[id.Role], id.Name)
}

// String returns the SPIFFE ID, e.g.
// "spiffe://replmesh.local/replmesh/stores/stores-1", or a description
// of what is wrong with an invalid identity.
func (id Identity) String() string {
	sid, err := id.spiffeID()
	if err != nil {
		return fmt.Sprintf("invalid identity (%v)", err)
	}
	return sid.String()
}

// URL returns the SPIFFE ID as the URL to put in a certificate's URI SAN.
func (id Identity) URL() (*url.URL, error) {
	sid, err := id.spiffeID()
	if err != nil {
		return nil, err
	}
	return sid.URL(), nil
}

// ParseIdentity parses a replmesh SPIFFE ID:
// spiffe://TD/replmesh/SERVICE/INSTANCE, spiffe://TD/replmesh-admin/NAME,
// spiffe://TD/replmesh-operator/NAME or spiffe://TD/replmesh-broker/NAME.
func ParseIdentity(s string) (Identity, error) {
	sid, err := spiffeid.FromString(s)
	if err != nil {
		return Identity{}, fmt.Errorf("SPIFFE ID %q: %w", s, err)
	}
	segs := strings.Split(strings.TrimPrefix(sid.Path(), "/"), "/")
	id := Identity{TrustDomain: sid.TrustDomain().Name()}
	switch {
	case segs[0] == pathService && len(segs) == 3:
		id.Role, id.Service, id.Instance = RoleService, segs[1], segs[2]
	case segs[0] == pathAdmin && len(segs) == 2:
		id.Role, id.Name = RoleAdmin, segs[1]
	case segs[0] == pathOperator && len(segs) == 2:
		id.Role, id.Name = RoleOperator, segs[1]
	case segs[0] == pathBroker && len(segs) == 2:
		id.Role, id.Name = RoleBroker, segs[1]
	default:
		return Identity{}, fmt.Errorf("SPIFFE ID %q is not a replmesh identity (want spiffe://TD/%s/SERVICE/INSTANCE, spiffe://TD/%s/NAME, spiffe://TD/%s/NAME or spiffe://TD/%s/NAME)",
			s, pathService, pathAdmin, pathOperator, pathBroker)
	}
	if err := id.Validate(); err != nil {
		return Identity{}, fmt.Errorf("SPIFFE ID %q: %w", s, err)
	}
	return id, nil
}

// IdentityFromCert returns the identity cert carries. As in SPIFFE's
// X509-SVID, a certificate carries exactly one URI SAN, and it must be a
// replmesh SPIFFE ID; anything else is an error naming what was found. It
// does not verify the certificate: take cert from a verified chain.
func IdentityFromCert(cert *x509.Certificate) (Identity, error) {
	if cert == nil {
		return Identity{}, errors.New("no certificate")
	}
	switch len(cert.URIs) {
	case 0:
		return Identity{}, fmt.Errorf("certificate %q has no URI SAN (want one replmesh SPIFFE ID)", cert.Subject.CommonName)
	case 1:
	default:
		found := make([]string, len(cert.URIs))
		for i, u := range cert.URIs {
			found[i] = u.String()
		}
		return Identity{}, fmt.Errorf("certificate %q has %d URI SANs (%s), want exactly one replmesh SPIFFE ID",
			cert.Subject.CommonName, len(found), strings.Join(found, ", "))
	}
	id, err := ParseIdentity(cert.URIs[0].String())
	if err != nil {
		return Identity{}, fmt.Errorf("certificate %q: %w", cert.Subject.CommonName, err)
	}
	return id, nil
}

// IdentityFromContext returns the identity of the caller of a gRPC handler:
// the SPIFFE ID of the client certificate verified by the TLS handshake.
// It returns an error wrapping ErrNoIdentity when the connection is not
// TLS, the client presented no certificate, the server did not verify it
// (verified chains are the only ones trusted), or it carries no valid
// replmesh identity.
func IdentityFromContext(ctx context.Context) (Identity, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Identity{}, fmt.Errorf("%w: no peer in the context", ErrNoIdentity)
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return Identity{}, fmt.Errorf("%w: the connection from %s is not TLS", ErrNoIdentity, p.Addr)
	}
	chains := info.State.VerifiedChains
	if len(chains) == 0 || len(chains[0]) == 0 {
		return Identity{}, fmt.Errorf("%w: %s presented no verified client certificate", ErrNoIdentity, p.Addr)
	}
	id, err := IdentityFromCert(chains[0][0])
	if err != nil {
		return Identity{}, fmt.Errorf("%w: %s: %v", ErrNoIdentity, p.Addr, err)
	}
	return id, nil
}
