// Command replctl inspects and steers a replmesh deployment: it asks a
// broker for the registry (who owns which tables, where, at which epoch and
// seq, and how far behind every replica is), reads and follows tables live
// on their owners, proves that owner instances hold equal tables, and sets
// the run-time mode override of a table.
//
// Usage:
//
//	replctl [flags] COMMAND [flags] [ARGS]
//
// Commands:
//
//	status                      brokers, services (primary, epoch, standbys),
//	                            instances (role, broker, last seen), tables
//	                            (owner, epoch, head seq) and mode overrides
//	tables                      the tables section of status
//	consumers                   every subscription: consumer, table, mode,
//	                            applied seq, lag in seqs and seconds, state
//	get SERVICE/TABLE KEY...    live read on the primary: the values and the
//	                            seq they were read at (-hex, -raw, -key-hex)
//	keys SERVICE/TABLE [PREFIX] the table's keys on the primary, in key
//	                            order (-limit N, default 1000; 0: all)
//	tail SERVICE/TABLE          follow the table's changes live (-n N stops
//	                            after N changes, -from SEQ starts after SEQ)
//	verify SERVICE/TABLE        Digest on the primary and on every standby,
//	                            compared at equal seqs; consumers' positions
//	                            checked against the primary's seq (-wait D)
//	restore SERVICE/TABLE       restore the table on its primary (which lost
//	                            its data and every standby) from a
//	                            consumer's replica: lists the replicas the
//	                            brokers know with their log id, epoch and
//	                            seq as the owner finds them, picks the most
//	                            advanced of the expected history (-from
//	                            INSTANCE, SERVICE/INSTANCE or ADDR names
//	                            one), asks y/N on stdin (-yes does not),
//	                            then shows the progress (rows, percent,
//	                            ETA) until the table takes writes again;
//	                            -dry-run shows the plan only, -watch follows
//	                            the running or last restore (an automatic
//	                            one too) and starts nothing; a source of
//	                            another history is refused unless
//	                            -override-log-id names its log id. An
//	                            interrupt cancels it: the table is left
//	                            empty, never partial, and can be restored
//	                            again. Needs an admin certificate when the
//	                            owner checks identities
//	mode set SERVICE/TABLE MODE set the broker override (push, pull or auto;
//	                            "clear" removes it)
//	mode list                   the overrides in force
//	tls ca create               write a development CA (ca.pem, ca-key.pem;
//	                            -dir, -trust-domain, -days, -force)
//	tls cert create             write a certificate and key signed by it,
//	                            with the SPIFFE ID of -service S -instance I,
//	                            -admin NAME, -operator NAME or -broker NAME
//	                            (-ca-dir, -dir, -name, -days, -ip, -dns,
//	                            -force)
//	gossip keys [list | add KEY | use KEY | remove KEY]
//	                            list (by fingerprint) or change the gossip
//	                            encryption keys of every broker in -broker
//	                            (KEY: base64; -token or -token-file: the
//	                            broker's token)
//
// Flags may come before or after the command and among its arguments; "--"
// ends them (for a KEY that begins with "-"):
//
//	-broker ADDRS   broker gRPC address(es), comma-separated, tried in order
//	                (default $REPLMESH_BROKER, else 127.0.0.1:7400, the
//	                address a replbroker started with no flags serves)
//	-o text|json    output format; json is stable for scripts
//	-timeout D      bound on each call (default 10s)
//	-service NAME   the service name presented to owners for their tables'
//	                access lists (default "replctl")
//	-tls, -tls-ca FILE, -tls-cert FILE, -tls-key FILE, -tls-server-name NAME
//	                TLS (mTLS with a client certificate) on every link
//	                (defaults $REPLMESH_TLS_CA, $REPLMESH_TLS_CERT,
//	                $REPLMESH_TLS_KEY); a certificate with a replmesh
//	                identity (replctl tls cert create -admin NAME, or
//	                -operator for status only) is what brokers that
//	                require identities accept, and peers are then verified
//	                by their SPIFFE ID, not their host name
//
// Exit codes: 0 success; 1 a check failed (get: a key is missing; verify:
// an owner instance differs or could not be compared, or a consumer
// diverged); 2 usage error; 3 the command could not be carried out (a broker
// or owner unreachable, permission denied, unknown service or table).
// Errors go to stderr, prefixed "replctl: ".
//
// The JSON forms: status prints transport.StatusResponse as encoding/json
// renders it (the same document as replbroker's /api/status); the other
// commands print the structs documented in this package (tableRow,
// consumerRow, getResult, keysResult, changeLine one per line for tail,
// verifyReport, restoreReport, modeResult, tlsResult, gossipKeysResult). Every key is snake_case. Keys and values
// appear as "key" / "value" when they are valid UTF-8, always as "key_hex"
// / "value_hex", and a value that is msgpack (a typed table's) also as
// "value_msgpack", decoded to JSON.
//
// Values in text: printable text as it is (quoted when it holds blanks),
// a msgpack value as compact JSON, anything else as 0x-hex; -hex shows
// hex only; -raw decodes nothing: get -raw of one key in text writes the
// stored bytes and nothing else, and shows raw hex elsewhere (several
// keys, -o json, tail). Every
// name, address, state, error, key and value printed as text has its
// control and other non-printable characters escaped (\x1b, \a, \u202e),
// so that a registration cannot drive the terminal; JSON escapes them too.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/replmesh/replmesh/transport"
)

// DefaultBroker is the broker address used when neither -broker nor
// REPLMESH_BROKER is given: replbroker's default gRPC address.
const DefaultBroker = "127.0.0.1:7400"

// EnvBroker names the environment variable holding the default -broker.
const EnvBroker = "REPLMESH_BROKER"

// Environment variables holding the defaults of -tls-ca, -tls-cert and
// -tls-key: the CA bundle and the admin (or operator) certificate replctl
// presents.
const (
	EnvTLSCA   = "REPLMESH_TLS_CA"
	EnvTLSCert = "REPLMESH_TLS_CERT"
	EnvTLSKey  = "REPLMESH_TLS_KEY"
)

// Exit codes.
const (
	exitOK     = 0
	exitFailed = 1 // a check failed
	exitUsage  = 2
	exitError  = 3 // the command could not be carried out
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := runIn(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

// exitError carries an exit code; a nil err means the message was already
// printed.
type exitErr struct {
	code int
	err  error
}

func (e *exitErr) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit %d", e.code)
	}
	return e.err.Error()
}

func (e *exitErr) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return &exitErr{code: exitUsage, err: fmt.Errorf(format, args...)}
}

// checkFailed reports a failed check (exit 1); err may be nil when the
// output already says what failed.
func checkFailed(err error) error { return &exitErr{code: exitFailed, err: err} }

// command is one replctl command.
type command struct {
	name    string
	args    string
	summary string
	run     func(c *cli, ctx context.Context, args []string) error
}

var commands []command

func init() {
	commands = []command{
		{"status", "", "brokers, services, instances, tables and mode overrides", (*cli).status},
		{"tables", "", "tables with owner, epoch, head seq and standbys' heads", (*cli).tables},
		{"consumers", "", "every subscription with its mode, applied seq, lag and state", (*cli).consumers},
		{"get", "SERVICE/TABLE KEY...", "live read of keys on the table's primary", (*cli).get},
		{"keys", "SERVICE/TABLE [PREFIX]", "list the table's keys (with PREFIX) on its primary, in order", (*cli).keys},
		{"tail", "SERVICE/TABLE", "follow the table's changes live", (*cli).tail},
		{"verify", "SERVICE/TABLE", "compare digests of the owner instances; check consumers' positions", (*cli).verify},
		{"restore", "SERVICE/TABLE", "restore the table on its primary from a consumer's replica (admin)", (*cli).restore},
		{"mode", "set SERVICE/TABLE MODE | list", "set (push, pull, auto, clear) or list the broker's mode overrides", (*cli).mode},
		{"tls", "ca create | cert create", "write a development CA, or a certificate with a replmesh identity", (*cli).tls},
		{"gossip", "keys [list|add|use|remove KEY]", "list or change the brokers' gossip keys (rotation)", (*cli).gossip},
		{"broker", "remove NAME", "remove a broker from the brokers' raft group for good (admin)", (*cli).brokerCmd},
	}
}

// cli holds the common flags and the open connections of one invocation.
type cli struct {
	stdin          io.Reader // restore's confirmation
	stdout, stderr io.Writer

	brokerFlag    string
	output        string
	timeout       time.Duration
	service       string
	useTLS        bool
	tlsCA         string
	tlsCert       string
	tlsKey        string
	tlsServerName string
	// instance is the Instance replctl presents in a Subscribe (tail):
	// its certificate's when it carries a service identity.
	instance string

	topts transport.Options
	conns map[string]*conn
}

// conn is one gRPC connection.
type conn struct {
	closer  interface{ Close() error }
	broker  *transport.BrokerClient
	repl    *transport.ReplicationClient
	restore *transport.RestoreClient
}

// run executes one replctl invocation with an empty stdin (a restore
// that asks for confirmation is not confirmed) and returns its exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	return runIn(ctx, args, strings.NewReader(""), stdout, stderr, getenv)
}

// runIn executes one replctl invocation reading stdin (restore's
// confirmation) and returns its exit code.
func runIn(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	c := &cli{stdin: stdin, stdout: stdout, stderr: stderr, conns: map[string]*conn{}}
	defer c.close()
	err := c.main(ctx, args, getenv)
	if err == nil {
		return exitOK
	}
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		textf(stderr, "replctl: interrupted\n")
		return exitError
	}
	code := exitError
	var ee *exitErr
	if errors.As(err, &ee) {
		code = ee.code
		err = ee.err
	}
	if err != nil {
		textf(stderr, "replctl: %v\n", err)
		if code == exitUsage {
			textf(stderr, "run 'replctl -h' for usage\n")
		}
	}
	return code
}

func (c *cli) main(ctx context.Context, args []string, getenv func(string) string) error {
	c.brokerFlag = DefaultBroker
	if env := strings.TrimSpace(getenv(EnvBroker)); env != "" {
		c.brokerFlag = env
	}
	c.tlsCA = strings.TrimSpace(getenv(EnvTLSCA))
	c.tlsCert = strings.TrimSpace(getenv(EnvTLSCert))
	c.tlsKey = strings.TrimSpace(getenv(EnvTLSKey))
	c.output = "text"
	c.timeout = 10 * time.Second
	c.service = "replctl"

	fs := c.flagSet("replctl")
	fs.Usage = func() { c.usage(fs) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &exitErr{code: exitUsage}
	}
	if fs.NArg() == 0 {
		c.usage(fs)
		return &exitErr{code: exitUsage}
	}
	name, rest := fs.Arg(0), fs.Args()[1:]
	if name == "help" {
		c.usage(fs)
		return nil
	}
	for _, cmd := range commands {
		if cmd.name == name {
			return cmd.run(c, ctx, rest)
		}
	}
	return usagef("unknown command %q (commands: %s)", name, commandNames())
}

func commandNames() string {
	names := make([]string, len(commands))
	for i, c := range commands {
		names[i] = c.name
	}
	return strings.Join(names, ", ")
}

func (c *cli) usage(fs *flag.FlagSet) {
	w := c.stderr
	textf(w, "usage: replctl [flags] COMMAND [flags] [ARGS]\n\ncommands:\n")
	for _, cmd := range commands {
		textf(w, "  %-10s %-30s %s\n", cmd.name, cmd.args, cmd.summary)
	}
	textf(w, "\nexit codes: 0 ok, 1 check failed, 2 usage error, 3 could not be carried out\n\nflags (before or after the command):\n")
	fs.PrintDefaults()
}

// flagSet returns a flag set holding the common flags (bound to c, with
// their current values as defaults, so flags given before the command
// stay in force).
func (c *cli) flagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	fs.StringVar(&c.brokerFlag, "broker", c.brokerFlag, "broker gRPC `addresses`, comma-separated, tried in order ($"+EnvBroker+")")
	fs.StringVar(&c.output, "o", c.output, "output `format`: text or json")
	fs.DurationVar(&c.timeout, "timeout", c.timeout, "bound on each call")
	fs.StringVar(&c.service, "service", c.service, "service `name` presented to owners (for tables restricted to some services)")
	fs.BoolVar(&c.useTLS, "tls", c.useTLS, "use TLS (implied by the other -tls flags)")
	fs.StringVar(&c.tlsCA, "tls-ca", c.tlsCA, "PEM CA `file` to verify brokers and owners (default: system roots; $"+EnvTLSCA+")")
	fs.StringVar(&c.tlsCert, "tls-cert", c.tlsCert, "PEM client certificate `file` (mTLS): an admin or operator certificate for brokers that require identities ($"+EnvTLSCert+")")
	fs.StringVar(&c.tlsKey, "tls-key", c.tlsKey, "PEM key `file` of the client certificate ($"+EnvTLSKey+")")
	fs.StringVar(&c.tlsServerName, "tls-server-name", c.tlsServerName, "server `name` to verify instead of the dialed host")
	return fs
}

// parse parses a command's flags, which may be mixed with its positional
// arguments ("--" ends the flags), and checks the common ones. It returns
// the positional arguments.
func (c *cli) parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, &exitErr{code: exitUsage}
		}
		rest := fs.Args()
		consumed := len(args) - len(rest)
		if consumed > 0 && args[consumed-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		if len(rest) == 0 {
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	switch c.output {
	case "text", "json":
	default:
		return nil, usagef("-o %q: want text or json", c.output)
	}
	if c.timeout <= 0 {
		return nil, usagef("-timeout must be positive")
	}
	if c.service == "" {
		return nil, usagef("-service must not be empty")
	}
	serviceGiven := false
	fs.Visit(func(f *flag.Flag) { serviceGiven = serviceGiven || f.Name == "service" })
	if err := c.setupTLS(serviceGiven); err != nil {
		return nil, &exitErr{code: exitUsage, err: err}
	}
	return pos, nil
}

// setupTLS builds the TLS options from the -tls flags. With a certificate
// of a service identity, the service replctl presents to owners (get,
// keys, tail, verify) is the certificate's: owners check the name against
// it, so a -service naming another is a usage error.
func (c *cli) setupTLS(serviceGiven bool) error {
	if !c.useTLS && c.tlsCA == "" && c.tlsCert == "" && c.tlsKey == "" && c.tlsServerName == "" {
		return nil
	}
	if c.tlsCA != "" && c.tlsCert != "" && c.tlsKey != "" && c.tlsServerName == "" && hasSPIFFEID(c.tlsCert) {
		// A replmesh identity (replctl tls cert create -admin NAME): mTLS
		// as the components speak it, peers verified by their SPIFFE ID
		// against the bundle (not by host name), files re-read when they
		// change.
		src, err := transport.NewTLSSource(transport.TLSFiles{CA: c.tlsCA, Cert: c.tlsCert, Key: c.tlsKey}, slog.New(slog.NewTextHandler(c.stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
		if err != nil {
			return fmt.Errorf("-tls-ca/-tls-cert/-tls-key: %w", err)
		}
		c.topts.TLS = src.ClientConfig(nil)
		if id := src.Identity(); id.Role == transport.RoleService {
			if serviceGiven && c.service != id.Service {
				return fmt.Errorf("-service %q: the certificate %s is of service %q, the one owners accept", c.service, id, id.Service)
			}
			c.service, c.instance = id.Service, id.Instance
		}
		return nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.tlsServerName}
	if c.tlsCA != "" {
		pem, err := os.ReadFile(c.tlsCA)
		if err != nil {
			return fmt.Errorf("-tls-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("-tls-ca %s: no PEM certificate in it", c.tlsCA)
		}
		cfg.RootCAs = pool
	}
	if (c.tlsCert == "") != (c.tlsKey == "") {
		return errors.New("-tls-cert and -tls-key go together")
	}
	if c.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(c.tlsCert, c.tlsKey)
		if err != nil {
			return fmt.Errorf("-tls-cert/-tls-key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	c.topts.TLS = cfg
	return nil
}

func (c *cli) brokers() []string {
	var out []string
	for _, a := range strings.Split(c.brokerFlag, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

func (c *cli) dial(addr string) (*conn, error) {
	if cn := c.conns[addr]; cn != nil {
		return cn, nil
	}
	cc, err := transport.Dial(addr, c.topts)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	cn := &conn{closer: cc, broker: transport.NewBrokerClient(cc), repl: transport.NewReplicationClient(cc), restore: transport.NewRestoreClient(cc)}
	c.conns[addr] = cn
	return cn, nil
}

func (c *cli) close() {
	for _, cn := range c.conns {
		cn.closer.Close()
	}
	clear(c.conns)
}

// callBroker runs call against the brokers in order until one answers
// (a broker that cannot be reached is skipped; any answer, even an error,
// ends the search).
func (c *cli) callBroker(ctx context.Context, what string, call func(context.Context, *transport.BrokerClient) error) error {
	addrs := c.brokers()
	if len(addrs) == 0 {
		return usagef("-broker is empty")
	}
	var errs []string
	hint := ""
	for _, addr := range addrs {
		cn, err := c.dial(addr)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, c.timeout)
		err = call(cctx, cn.broker)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		switch {
		case errors.Is(err, transport.ErrUnavailable):
			msg := shortError(err)
			errs = append(errs, fmt.Sprintf("cannot reach broker %s: %s", addr, msg))
			hint = brokerHint(msg)
			continue
		case errors.Is(err, context.DeadlineExceeded):
			errs = append(errs, fmt.Sprintf("broker %s did not answer within %s", addr, c.timeout))
			hint = brokerHint("")
			continue
		}
		return fmt.Errorf("%s: broker %s: %w", what, addr, err)
	}
	if hint == "" {
		hint = brokerHint("")
	}
	return fmt.Errorf("%s%s", strings.Join(errs, "; "), hint)
}

// hasSPIFFEID reports whether the PEM certificate file carries a URI SAN
// (a SPIFFE ID); certificates without one keep the host-name TLS of old.
func hasSPIFFEID(path string) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return false
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	return err == nil && len(cert.URIs) > 0
}

// maxStatusPages bounds the pages of one status: a broker that never ends
// them is broken.
const maxStatusPages = 100000

// brokerStatus reads the whole status from one broker, following its pages
// (a large registry does not fit in one message).
func (c *cli) brokerStatus(ctx context.Context) (*transport.StatusResponse, error) {
	var st *transport.StatusResponse
	err := c.callBroker(ctx, "status", func(ctx context.Context, b *transport.BrokerClient) error {
		st = nil
		token := ""
		for pages := 1; ; pages++ {
			pg, err := b.Status(ctx, &transport.StatusRequest{Version: transport.ProtocolVersion, PageToken: token})
			if err != nil {
				return err
			}
			if st == nil {
				st = pg
			} else {
				st.Owners = append(st.Owners, pg.Owners...)
				st.Instances = append(st.Instances, pg.Instances...)
			}
			if pg.NextPageToken == "" {
				st.NextPageToken = ""
				return nil
			}
			if pg.NextPageToken == token || pages >= maxStatusPages {
				return fmt.Errorf("the broker's status pages do not end (page %d, token %q)", pages, pg.NextPageToken)
			}
			token = pg.NextPageToken
		}
	})
	if err != nil {
		return nil, err
	}
	sortStatus(st)
	return st, nil
}

// sortStatus puts every list of st in a stable order.
func sortStatus(st *transport.StatusResponse) {
	sort.SliceStable(st.Owners, func(i, j int) bool { return st.Owners[i].Service < st.Owners[j].Service })
	for i := range st.Owners {
		o := &st.Owners[i]
		sort.SliceStable(o.Standbys, func(a, b int) bool { return o.Standbys[a].Instance < o.Standbys[b].Instance })
		sort.SliceStable(o.Tables, func(a, b int) bool { return o.Tables[a].Table < o.Tables[b].Table })
	}
	sort.SliceStable(st.Instances, func(i, j int) bool {
		a, b := st.Instances[i], st.Instances[j]
		if a.Service != b.Service {
			return a.Service < b.Service
		}
		return a.Instance < b.Instance
	})
}

// lookup asks the brokers where service's tables are served.
func (c *cli) lookup(ctx context.Context, service string) (transport.ServiceOwner, error) {
	var owner transport.ServiceOwner
	err := c.callBroker(ctx, "lookup", func(ctx context.Context, b *transport.BrokerClient) error {
		r, err := b.Lookup(ctx, &transport.LookupRequest{Version: transport.ProtocolVersion, Service: service})
		if err != nil {
			return err
		}
		owner = r.Owner
		return nil
	})
	if errors.Is(err, transport.ErrUnknownTable) {
		return owner, fmt.Errorf("the broker knows no service %q (see replctl status)", service)
	}
	return owner, err
}

// primaryOf looks up service and returns its primary, or an error saying
// that there is none.
func (c *cli) primaryOf(ctx context.Context, service string) (transport.ServiceOwner, error) {
	owner, err := c.lookup(ctx, service)
	if err != nil {
		return owner, err
	}
	if owner.Primary.Instance == "" {
		sb := "none"
		if len(owner.Standbys) > 0 {
			var names []string
			for _, s := range owner.Standbys {
				names = append(names, s.Instance)
			}
			sb = strings.Join(names, ", ")
		}
		return owner, fmt.Errorf("service %q has no live primary (standbys: %s); retry once one is promoted", service, sb)
	}
	if owner.Primary.Addr == "" {
		return owner, fmt.Errorf("primary %s of service %q registered no replication address", owner.Primary.Instance, service)
	}
	return owner, nil
}

// primaryConn looks up service's primary and returns it with a connection
// to it.
func (c *cli) primaryConn(ctx context.Context, service string) (transport.ServiceOwner, *conn, error) {
	owner, err := c.primaryOf(ctx, service)
	if err != nil {
		return owner, nil, err
	}
	cn, err := c.dial(owner.Primary.Addr)
	return owner, cn, err
}

// keyArg returns a KEY (or PREFIX) argument's bytes: the argument itself,
// or with asHex the bytes it spells in hex (an optional 0x before).
func keyArg(cmd, arg string, asHex bool) ([]byte, error) {
	if !asHex {
		return []byte(arg), nil
	}
	b, err := hex.DecodeString(strings.TrimPrefix(arg, "0x"))
	if err != nil {
		return nil, usagef("%s -key-hex: %q: %v", cmd, arg, err)
	}
	return b, nil
}

// ownerError words an error returned by an owner instance. The result
// still wraps err (errors.Is works on it).
func (c *cli) ownerError(service, table string, ep transport.Endpoint, err error) error {
	where := fmt.Sprintf("%s (%s at %s)", service+"/"+table, ep.Instance, ep.Addr)
	var re *transport.RemoteError
	msg := shortError(err)
	if errors.As(err, &re) {
		msg = re.Msg // the owner's own words
	}
	switch {
	case errors.Is(err, transport.ErrPermission):
		msg = fmt.Sprintf("permission denied: %s (the table is restricted to some services; pass -service NAME to act as one of them)", msg)
	case errors.Is(err, transport.ErrUnknownTable):
		msg = fmt.Sprintf("no such table: %s", msg)
	case errors.Is(err, transport.ErrUnavailable):
		for strings.HasPrefix(msg, "unavailable: ") {
			msg = strings.TrimPrefix(msg, "unavailable: ")
		}
		msg = fmt.Sprintf("owner unavailable: %s", msg)
	case errors.Is(err, context.DeadlineExceeded):
		msg = fmt.Sprintf("the owner did not answer within %s", c.timeout)
	case errors.Is(err, transport.ErrNotPrimary):
		msg = fmt.Sprintf("not the primary (a failover under way?): %s", msg)
	case errors.Is(err, transport.ErrUnimplemented):
		msg = fmt.Sprintf("the owner does not serve this call (an older build?): %s", msg)
	}
	return &wordedError{msg: where + ": " + msg, err: err}
}

// wordedError is an error with a message of its own, wrapping the error it
// explains.
type wordedError struct {
	msg string
	err error
}

func (e *wordedError) Error() string { return e.msg }
func (e *wordedError) Unwrap() error { return e.err }

// shortError drops the gRPC plumbing from a connection error's message:
// "unavailable: connection error: desc = \"transport: Error while
// dialing: dial tcp ...: connection refused\"" becomes "dial tcp ...:
// connection refused".
func shortError(err error) string {
	msg := err.Error()
	if _, after, ok := strings.Cut(msg, "Error while dialing: "); ok {
		return strings.TrimSuffix(after, `"`)
	}
	if _, after, ok := strings.Cut(msg, `connection error: desc = "`); ok {
		return strings.TrimPrefix(strings.TrimSuffix(after, `"`), "transport: ")
	}
	return msg
}

// brokerHint guesses what to do about a broker that cannot be reached.
func brokerHint(msg string) string {
	switch {
	case strings.Contains(msg, "server preface"):
		return " (does the broker serve TLS? pass -tls-ca FILE, or -tls)"
	case strings.Contains(msg, "certificate"):
		return " (pass -tls-ca with the CA that signed the broker's certificate, or -tls-server-name)"
	}
	return " (is replbroker running? set -broker or $" + EnvBroker + ")"
}

// parseTableRef splits SERVICE/TABLE.
func parseTableRef(s string) (service, table string, err error) {
	service, table, ok := strings.Cut(s, "/")
	if !ok || service == "" || table == "" || strings.Contains(table, "/") {
		return "", "", usagef("%q: want SERVICE/TABLE", s)
	}
	return service, table, nil
}
