package transport

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// IssueFiles issues a leaf certificate for req (see Issue) and writes it
// into dir with the CA bundle: ca.pem (this CA's certificate), and the
// leaf's certificate and key (0600) named after its identity. It returns
// the TLSFiles naming them, with the CA's trust domain, for
// NewTLSSource. Issuing the same identity again overwrites its files: a
// rotation, picked up by the sources reading them.
func (ca *DevCA) IssueFiles(dir string, req LeafRequest) (TLSFiles, error) {
	certPEM, keyPEM, err := ca.Issue(req)
	if err != nil {
		return TLSFiles{}, err
	}
	id := req.Identity
	if id.TrustDomain == "" {
		id.TrustDomain = ca.TrustDomain
	}
	base := filepath.Join(dir, strings.NewReplacer("spiffe://", "", "/", "_").Replace(id.String()))
	f := TLSFiles{CA: filepath.Join(dir, "ca.pem"), Cert: base + ".pem", Key: base + "-key.pem", TrustDomain: ca.TrustDomain}
	for _, w := range []struct {
		path string
		data []byte
	}{{f.CA, ca.CertPEM()}, {f.Cert, certPEM}, {f.Key, keyPEM}} {
		if err := os.WriteFile(w.path, w.data, 0o600); err != nil {
			return TLSFiles{}, fmt.Errorf("write %s: %w", w.path, err)
		}
	}
	return f, nil
}
