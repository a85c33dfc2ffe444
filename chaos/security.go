package chaos

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/replmesh/replmesh/transport"
)

// Security of the suite's processes. By default every link runs on mTLS
// with identities, as in production: each run makes a development CA
// (transport.DevCA) in its directory and a certificate per node: brokers
// spiffe://TD/replmesh-broker/bN (they require identities, with the access
// policy below and an encrypted gossip), owners .../replmesh/stores/oN
// (their tables are read by their own service and by products, the
// policy says so), consumers .../replmesh/products/cN. REPLMESH_CHAOS_TLS=0
// runs everything in plaintext (with the insecure flags at the
// real-network level, whose addresses are not loopback).
const envTLS = "REPLMESH_CHAOS_TLS"

// tlsOn reports whether the suite runs with mTLS (the default).
func tlsOn() bool { return os.Getenv(envTLS) != "0" }

// The services of the cluster and the trust domain of its certificates.
const (
	ownerService    = "stores"
	consumerService = "products"
	trustDomain     = "chaos.replmesh.local"
	// attackerInstance is the attacker's instance: it holds a certificate
	// of the consumers' service (a stolen or misused consumer identity).
	attackerInstance = "mallory"
)

// chaosPolicy is the access policy of every broker and owner: products
// reads stores' table.
const chaosPolicy = `version: 1
tables:
  stores/items:
    readers: [products]
`

// pki is one run's certificates, policy file and gossip key.
type pki struct {
	dir       string
	ca        *transport.DevCA
	policy    string // the access policy file
	gossipKey string // base64 of 32 bytes
}

// newPKI makes a CA, the policy file and a gossip key under root/tls.
func newPKI(root string) (*pki, error) {
	dir := filepath.Join(root, "tls")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	ca, err := transport.NewDevCA(trustDomain, 24*time.Hour)
	if err != nil {
		return nil, err
	}
	p := &pki{dir: dir, ca: ca, policy: filepath.Join(dir, "policy.yaml")}
	if err := os.WriteFile(p.policy, []byte(chaosPolicy), 0o600); err != nil {
		return nil, err
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	p.gossipKey = base64.StdEncoding.EncodeToString(key)
	return p, nil
}

// issue writes the certificate and key of id and returns the flags that
// hand them to chaosnode.
func (p *pki) issue(id transport.Identity) ([]string, error) {
	f, err := p.ca.IssueFiles(p.dir, transport.LeafRequest{Identity: id, Validity: 12 * time.Hour})
	if err != nil {
		return nil, fmt.Errorf("certificate of %s: %w", id, err)
	}
	return []string{"-tls-ca", f.CA, "-tls-cert", f.Cert, "-tls-key", f.Key}, nil
}

// identityOf is the identity of a node of the given role and name.
func identityOf(role, name string) transport.Identity {
	switch role {
	case RoleBroker:
		return transport.Identity{Role: transport.RoleBroker, Name: name}
	case RoleOwner:
		return transport.Identity{Role: transport.RoleService, Service: ownerService, Instance: name}
	}
	return transport.Identity{Role: transport.RoleService, Service: consumerService, Instance: name}
}

// securityFlags are the chaosnode flags of a node of role: its
// certificate, and the policy and gossip key where they apply; with no
// pki, -insecure on a network whose addresses are not loopback.
func (p *pki) securityFlags(role, name string, realNet bool) ([]string, error) {
	if p == nil {
		if realNet {
			return []string{"-insecure"}, nil
		}
		return nil, nil
	}
	a, err := p.issue(identityOf(role, name))
	if err != nil {
		return nil, err
	}
	switch role {
	case RoleBroker:
		a = append(a, "-policy", p.policy, "-gossip-key", p.gossipKey)
	case RoleOwner:
		a = append(a, "-policy", p.policy)
	}
	return a, nil
}
