package transport

import (
	"crypto/tls"
	"fmt"
	"slices"
)

// httpNextProtos are the ALPN protocols an HTTPS server offers: net/http
// serves HTTP/2 on a TLS connection only when ALPN chose "h2".
var httpNextProtos = []string{"h2", "http/1.1"}

// HTTPServerConfig returns the configuration of an HTTPS server (the
// broker's status page and /metrics) built on the material in force, as
// ServerConfig's is: it presents this peer's certificate, verifies a
// client certificate against the CA bundle in force and accepts it only
// with a valid replmesh identity (in TLSFiles.TrustDomain when set). It
// offers h2 and http/1.1 by ALPN, which ServerConfig does not (gRPC
// negotiates its own).
//
// clientAuth is tls.RequireAndVerifyClientCert, where a client without a
// certificate fails the handshake, or tls.VerifyClientCertIfGiven, where
// it may connect and must prove itself otherwise (a bearer token); any
// other value is taken as tls.RequireAndVerifyClientCert. The handshake
// proves who the client is, not what it may do: handlers read the
// identity with IdentityFromTLS(r.TLS) and check its role on every
// request.
func (s *TLSSource) HTTPServerConfig(clientAuth tls.ClientAuthType) *tls.Config {
	if clientAuth != tls.VerifyClientCertIfGiven {
		clientAuth = tls.RequireAndVerifyClientCert
	}
	cfg := s.ServerConfig()
	cfg.NextProtos = slices.Clone(httpNextProtos)
	perClient := cfg.GetConfigForClient
	cfg.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		c, err := perClient(hello)
		if err != nil {
			return nil, err
		}
		c.NextProtos = slices.Clone(httpNextProtos)
		c.ClientAuth = clientAuth
		if verify := c.VerifyConnection; clientAuth == tls.VerifyClientCertIfGiven {
			c.VerifyConnection = func(cs tls.ConnectionState) error {
				if len(cs.PeerCertificates) == 0 {
					return nil // no certificate: the handler asks for another proof
				}
				return verify(cs)
			}
		}
		return c, nil
	}
	return cfg
}

// IdentityFromTLS returns the identity of the client of an HTTPS request
// (pass r.TLS): the SPIFFE ID of its client certificate as the handshake
// verified it. It returns an error wrapping ErrNoIdentity when cs is nil
// (no TLS), the client presented no verified certificate, or the
// certificate carries no valid replmesh identity.
func IdentityFromTLS(cs *tls.ConnectionState) (Identity, error) {
	if cs == nil {
		return Identity{}, fmt.Errorf("%w: the connection is not TLS", ErrNoIdentity)
	}
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return Identity{}, fmt.Errorf("%w: no verified client certificate", ErrNoIdentity)
	}
	id, err := IdentityFromCert(cs.VerifiedChains[0][0])
	if err != nil {
		return Identity{}, fmt.Errorf("%w: %v", ErrNoIdentity, err)
	}
	return id, nil
}
