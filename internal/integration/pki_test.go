package integration

import (
	"testing"
	"time"

	"github.com/replmesh/replmesh/transport"
)

// The certificates of the security suite: one dev CA (as `replctl tls ca
// create` makes it), leaves for every identity a test needs, brokers,
// components and attackers alike. An attacker here holds certificates the
// CA really issued, of identities other than the one it attacks.

const testTrustDomain = "replmesh.test"

// testPKI issues the certificates of one trust domain into files, the way
// a deployment gives them to its processes.
type testPKI struct {
	t   testing.TB
	ca  *transport.DevCA
	dir string
}

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	ca, err := transport.NewDevCA(testTrustDomain, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &testPKI{t: t, ca: ca, dir: t.TempDir()}
}

// source issues a certificate for id and returns a TLSSource of it (its
// files are read once: the suite does not rotate them).
func (p *testPKI) source(id transport.Identity) *transport.TLSSource {
	p.t.Helper()
	f, err := p.ca.IssueFiles(p.dir, transport.LeafRequest{Identity: id, Validity: time.Hour})
	if err != nil {
		p.t.Fatal(err)
	}
	f.CheckInterval = -1
	src, err := transport.NewTLSSource(f, testLogger(p.t))
	if err != nil {
		p.t.Fatal(err)
	}
	return src
}

// dialAs returns the options of a client with identity id that accepts
// a server check accepts (a broker: transport.ExpectRole(RoleBroker); an
// owner: transport.ExpectService).
func (p *testPKI) dialAs(id transport.Identity, check transport.IdentityCheck) transport.Options {
	p.t.Helper()
	return transport.Options{TLS: p.source(id).ClientConfig(check)}
}

func svcID(service, instance string) transport.Identity {
	return transport.Identity{TrustDomain: testTrustDomain, Role: transport.RoleService, Service: service, Instance: instance}
}

func roleID(role transport.Role, name string) transport.Identity {
	return transport.Identity{TrustDomain: testTrustDomain, Role: role, Name: name}
}
