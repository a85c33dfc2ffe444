package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/replmesh/replmesh/transport"
)

// Files of the development CA in its directory.
const (
	caCertFile = "ca.pem"
	caKeyFile  = "ca-key.pem"
)

// tlsResult is what `tls ca create` and `tls cert create` print with -o
// json: the files written and what the certificate is.
type tlsResult struct {
	CertFile    string    `json:"cert_file"`
	KeyFile     string    `json:"key_file"`
	ID          string    `json:"id"` // the SPIFFE ID in the URI SAN
	TrustDomain string    `json:"trust_domain"`
	NotAfter    time.Time `json:"not_after"`
}

// tls runs `tls ca create` and `tls cert create`: a development PKI, like
// Consul's `consul tls ca create` / `consul tls cert create`.
func (c *cli) tls(_ context.Context, args []string) error {
	if len(args) < 2 || args[1] != "create" || (args[0] != "ca" && args[0] != "cert") {
		return usagef("tls: want 'tls ca create [flags]' or 'tls cert create [flags]'")
	}
	if args[0] == "ca" {
		return c.tlsCACreate(args[2:])
	}
	return c.tlsCertCreate(args[2:])
}

// tlsFlags are the flags both tls subcommands have, in a flag set of
// their own: the connection flags do not apply, and -service in `tls
// cert create` names the certificate's service.
type tlsFlags struct {
	fs    *flag.FlagSet
	name  string
	dir   *string
	days  *int
	force *bool
}

func (c *cli) tlsFlags(name, dirUsage string, days int, daysUsage string) *tlsFlags {
	fs := flag.NewFlagSet("replctl "+name, flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	fs.StringVar(&c.output, "o", c.output, "output `format`: text or json")
	return &tlsFlags{
		fs:    fs,
		name:  name,
		dir:   fs.String("dir", ".", dirUsage),
		days:  fs.Int("days", days, daysUsage),
		force: fs.Bool("force", false, "overwrite existing files"),
	}
}

// parse parses args (flags only) and returns the validity -days asks for.
func (f *tlsFlags) parse(c *cli, args []string) (time.Duration, error) {
	pos, err := c.parse(f.fs, args)
	if err != nil {
		return 0, err
	}
	if len(pos) > 0 {
		return 0, usagef("%s takes no arguments (got %q)", f.name, pos)
	}
	if *f.days <= 0 {
		return 0, usagef("%s: -days must be positive", f.name)
	}
	return time.Duration(*f.days) * 24 * time.Hour, nil
}

func (c *cli) tlsCACreate(args []string) error {
	f := c.tlsFlags("tls ca create", "`directory` to write "+caCertFile+" and "+caKeyFile+" in (created if missing)",
		1825, "validity in `N` days")
	td := f.fs.String("trust-domain", transport.DefaultTrustDomain, "SPIFFE trust `domain` of the CA and of every certificate it signs")
	validity, err := f.parse(c, args)
	if err != nil {
		return err
	}
	ca, err := transport.NewDevCA(*td, validity)
	if err != nil {
		return usagef("tls ca create: %v", err)
	}
	keyPEM, err := ca.KeyPEM()
	if err != nil {
		return err
	}
	certPath, keyPath := filepath.Join(*f.dir, caCertFile), filepath.Join(*f.dir, caKeyFile)
	if err := writeKeyPair(*f.dir, certPath, ca.CertPEM(), keyPath, keyPEM, *f.force); err != nil {
		return err
	}
	return c.printTLS(tlsResult{CertFile: certPath, KeyFile: keyPath, ID: "spiffe://" + ca.TrustDomain, TrustDomain: ca.TrustDomain, NotAfter: ca.Cert.NotAfter.UTC()},
		"CA of trust domain "+ca.TrustDomain)
}

func (c *cli) tlsCertCreate(args []string) error {
	f := c.tlsFlags("tls cert create", "`directory` to write the certificate and key in (created if missing)",
		365, "validity in `N` days (at most the CA's)")
	fs := f.fs
	service := fs.String("service", "", "the certificate is for an instance of service `NAME` (with -instance)")
	instance := fs.String("instance", "", "the instance `NAME` (with -service)")
	admin := fs.String("admin", "", "the certificate is for admin `NAME` (replctl, every broker call)")
	operator := fs.String("operator", "", "the certificate is for read-only operator `NAME`")
	brokerName := fs.String("broker", "", "the certificate is for broker `NAME`")
	caDir := fs.String("ca-dir", ".", "`directory` holding "+caCertFile+" and "+caKeyFile)
	name := fs.String("name", "", "base `NAME` of the files (default SERVICE-INSTANCE, admin-NAME, operator-NAME or broker-NAME)")
	ips := fs.String("ip", "127.0.0.1,::1", "IP SANs, comma-separated `list` (\"\": none), for clients that verify host names")
	dns := fs.String("dns", "localhost", "DNS SANs, comma-separated `list` (\"\": none)")
	validity, err := f.parse(c, args)
	if err != nil {
		return err
	}

	var id transport.Identity
	var base string
	n := 0
	if *service != "" || *instance != "" {
		n++
		id = transport.Identity{Role: transport.RoleService, Service: *service, Instance: *instance}
		base = *service + "-" + *instance
		if *service == "" || *instance == "" {
			return usagef("tls cert create: -service and -instance go together")
		}
	}
	for _, r := range []struct {
		role transport.Role
		name string
	}{{transport.RoleAdmin, *admin}, {transport.RoleOperator, *operator}, {transport.RoleBroker, *brokerName}} {
		if r.name != "" {
			n++
			id = transport.Identity{Role: r.role, Name: r.name}
			base = r.role.String() + "-" + r.name
		}
	}
	if n != 1 {
		return usagef("tls cert create: give exactly one of -service S -instance I, -admin NAME, -operator NAME, -broker NAME")
	}
	if *name != "" {
		if strings.ContainsAny(*name, `/\`) || *name == "." || *name == ".." {
			return usagef("tls cert create: -name %q must be a file name, not a path (see -dir)", *name)
		}
		base = *name
	}
	var req transport.LeafRequest
	for _, s := range splitList(*ips) {
		ip := net.ParseIP(s)
		if ip == nil {
			return usagef("tls cert create: -ip %q is not an IP address", s)
		}
		req.IPs = append(req.IPs, ip)
	}
	req.DNSNames = splitList(*dns)

	caCert, err := os.ReadFile(filepath.Join(*caDir, caCertFile))
	if err != nil {
		return fmt.Errorf("tls cert create: read the CA (make one with 'replctl tls ca create'): %w", err)
	}
	caKey, err := os.ReadFile(filepath.Join(*caDir, caKeyFile))
	if err != nil {
		return fmt.Errorf("tls cert create: read the CA key: %w", err)
	}
	ca, err := transport.ParseDevCA(caCert, caKey)
	if err != nil {
		return fmt.Errorf("tls cert create: the CA in %s: %w", *caDir, err)
	}
	id.TrustDomain = ca.TrustDomain
	if err := id.Validate(); err != nil {
		return usagef("tls cert create: %v", err)
	}
	req.Identity = id
	req.Validity = validity
	certPEM, keyPEM, err := ca.Issue(req)
	if err != nil {
		return fmt.Errorf("tls cert create: %w", err)
	}
	certPath, keyPath := filepath.Join(*f.dir, base+".pem"), filepath.Join(*f.dir, base+"-key.pem")
	if err := writeKeyPair(*f.dir, certPath, certPEM, keyPath, keyPEM, *f.force); err != nil {
		return err
	}
	leaf, err := parseCertPEM(certPEM)
	if err != nil {
		return err
	}
	return c.printTLS(tlsResult{CertFile: certPath, KeyFile: keyPath, ID: id.String(), TrustDomain: id.TrustDomain, NotAfter: leaf.NotAfter.UTC()},
		id.String())
}

func parseCertPEM(certPEM []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(certPEM)
	if b == nil {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(b.Bytes)
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func (c *cli) printTLS(r tlsResult, what string) error {
	if c.output == "json" {
		return writeJSON(c.stdout, r)
	}
	textf(c.stdout, "wrote %s and %s: %s, valid until %s\n", r.CertFile, r.KeyFile, what, r.NotAfter.UTC().Format(time.RFC3339))
	return nil
}

// writeKeyPair writes a certificate (mode 0644) and its key (0600) in dir,
// creating dir (0700) if needed. Without force it refuses, before writing
// anything, when either file exists. Each file is written whole under a
// temporary name and renamed into place, so that a peer reloading its
// files never reads half of one.
func writeKeyPair(dir, certPath string, certPEM []byte, keyPath string, keyPEM []byte, force bool) error {
	if !force {
		for _, p := range []string{certPath, keyPath} {
			if _, err := os.Lstat(p); err == nil {
				return fmt.Errorf("%s exists (pass -force to overwrite it)", p)
			} else if !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	// The key first: a peer that reloads between the two renames sees a
	// new key with the old certificate, refuses the pair and keeps its
	// material until the certificate follows.
	if err := writeFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return err
	}
	return writeFileAtomic(certPath, certPEM, 0o644)
}

func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
