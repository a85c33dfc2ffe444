package transport

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DevCA is a certificate authority for a first setup and for tests: an
// ECDSA P-256 self-signed CA whose certificate carries its trust domain's
// SPIFFE ID (spiffe://TRUST-DOMAIN) as URI SAN, and which issues leaf
// certificates with a replmesh identity (what `replctl tls ca create` and
// `replctl tls cert create` write). Production deployments bring their
// own PKI; replmesh only needs the CA bundle and leaves with the SPIFFE ID.
type DevCA struct {
	Cert        *x509.Certificate
	Key         crypto.Signer
	TrustDomain string
}

// clockSkew backdates NotBefore so that a peer whose clock runs a little
// behind accepts a certificate issued just now.
const clockSkew = 5 * time.Minute

// NewDevCA creates a CA for trustDomain valid for validity from now. Its
// common name carries the start of its key's ID, so that the CAs of two
// setups tell apart in error messages.
func NewDevCA(trustDomain string, validity time.Duration) (*DevCA, error) {
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		return nil, fmt.Errorf("trust domain %q: %w", trustDomain, err)
	}
	if validity <= 0 {
		return nil, errors.New("CA validity must be positive")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	skid, err := subjectKeyID(key.Public())
	if err != nil {
		return nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: fmt.Sprintf("replmesh dev CA %s %x", td.Name(), skid[:4]), Organization: []string{"replmesh"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		SubjectKeyId:          skid,
		URIs:                  []*url.URL{td.ID().URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &DevCA{Cert: cert, Key: key, TrustDomain: td.Name()}, nil
}

// ParseDevCA reads a CA from its PEM certificate and PEM private key (as
// written by CertPEM and KeyPEM). The trust domain is the CA
// certificate's spiffe://TRUST-DOMAIN URI SAN.
func ParseDevCA(certPEM, keyPEM []byte) (*DevCA, error) {
	pair, err := tlsKeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	cert := pair.Leaf
	if !cert.IsCA {
		return nil, fmt.Errorf("certificate %q is not a CA", cert.Subject.CommonName)
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("the key of CA %q cannot sign", cert.Subject.CommonName)
	}
	if len(cert.URIs) != 1 {
		return nil, fmt.Errorf("CA %q carries %d URI SANs, want one: spiffe://TRUST-DOMAIN", cert.Subject.CommonName, len(cert.URIs))
	}
	td, err := spiffeid.TrustDomainFromURI(cert.URIs[0])
	if err != nil || cert.URIs[0].Path != "" {
		return nil, fmt.Errorf("CA %q: URI SAN %q is not spiffe://TRUST-DOMAIN", cert.Subject.CommonName, cert.URIs[0])
	}
	return &DevCA{Cert: cert, Key: signer, TrustDomain: td.Name()}, nil
}

// CertPEM returns the CA certificate in PEM (the CA bundle peers trust).
func (ca *DevCA) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}

// KeyPEM returns the CA's private key in PKCS #8 PEM. Keep it secret.
func (ca *DevCA) KeyPEM() ([]byte, error) { return keyPEM(ca.Key) }

// LeafRequest says what leaf certificate DevCA.Issue makes.
type LeafRequest struct {
	// Identity goes into the URI SAN; its TrustDomain must be the CA's
	// (empty: the CA's).
	Identity Identity
	// Validity from now; capped at the CA's own expiry.
	Validity time.Duration
	// IPs and DNSNames are added as SANs, for clients that verify host
	// names (replmesh peers verify the SPIFFE ID instead).
	IPs      []net.IP
	DNSNames []string
}

// Issue makes a leaf certificate and its new ECDSA P-256 key, for server
// and client authentication, and returns both in PEM.
func (ca *DevCA) Issue(req LeafRequest) (certPEM, keyPEMBytes []byte, err error) {
	id := req.Identity
	if id.TrustDomain == "" {
		id.TrustDomain = ca.TrustDomain
	}
	if id.TrustDomain != ca.TrustDomain {
		return nil, nil, fmt.Errorf("identity %s is not in the CA's trust domain %q", id, ca.TrustDomain)
	}
	u, err := id.URL()
	if err != nil {
		return nil, nil, err
	}
	if req.Validity <= 0 {
		return nil, nil, errors.New("certificate validity must be positive")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	skid, err := subjectKeyID(key.Public())
	if err != nil {
		return nil, nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	notAfter := now.Add(req.Validity)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	cn := id.Name
	if id.Role == RoleService {
		cn = id.Instance + "." + id.Service
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"replmesh"}, OrganizationalUnit: []string{id.Role.String()}},
		NotBefore:    now.Add(-clockSkew),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		SubjectKeyId: skid,
		URIs:         []*url.URL{u},
		IPAddresses:  req.IPs,
		DNSNames:     req.DNSNames,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("create certificate for %s: %w", id, err)
	}
	kp, err := keyPEM(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), kp, nil
}

func keyPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func randomSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
}

// subjectKeyID is the SHA-1 of the public key's DER (RFC 5280 4.2.1.2's
// method 1 takes only the BIT STRING; any unique value is allowed).
func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	sum := sha1.Sum(der)
	return sum[:], nil
}
