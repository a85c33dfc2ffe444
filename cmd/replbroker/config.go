package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
	"go.yaml.in/yaml/v3"

	"github.com/replmesh/replmesh/broker"
	"github.com/replmesh/replmesh/modes"
	"github.com/replmesh/replmesh/transport"
)

// fileConfig is the YAML config file. Every key is optional; flags given
// on the command line override it.
type fileConfig struct {
	Name            string        `yaml:"name"`
	GRPCAddr        string        `yaml:"grpc_addr"`
	AdvertiseGRPC   string        `yaml:"advertise_grpc"`
	GossipAddr      string        `yaml:"gossip_addr"`
	AdvertiseGossip string        `yaml:"advertise_gossip"`
	HTTPAddr        string        `yaml:"http_addr"`
	Join            []string      `yaml:"join"`
	DataDir         string        `yaml:"data_dir"`    // Raft log and snapshots; "" keeps them in memory
	GossipKey       string        `yaml:"gossip_key"`  // base64 of 16, 24 or 32 bytes
	GossipKeys      []string      `yaml:"gossip_keys"` // base64 keys: the first encrypts, all decrypt (a rotation)
	GossipKeyFile   string        `yaml:"gossip_key_file"`
	InsecureGossip  bool          `yaml:"insecure_gossip"`
	ClusterLabel    string        `yaml:"cluster_label"`
	GossipProfile   string        `yaml:"gossip_profile"` // lan (default), wan, local
	Token           string        `yaml:"token"`
	TokenFile       string        `yaml:"token_file"`
	Lease           time.Duration `yaml:"lease"`
	Heartbeat       time.Duration `yaml:"heartbeat"`
	RehomeWait      time.Duration `yaml:"rehome_wait"`
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	LogLevel        string        `yaml:"log_level"`  // debug, info, warn, error
	LogFormat       string        `yaml:"log_format"` // text, json
	TLS             tlsConfig     `yaml:"tls"`
	Policy          string        `yaml:"policy"`   // policy file: who may read which tables
	Insecure        bool          `yaml:"insecure"` // plaintext gRPC on a non-loopback address

	// present holds the top-level keys the file gives, so that an explicit
	// zero ("lease: 0s") is refused rather than taken for "not set".
	present map[string]bool
}

type tlsConfig struct {
	Cert     string `yaml:"cert"`      // server certificate (PEM)
	Key      string `yaml:"key"`       // its key (PEM)
	CA       string `yaml:"ca"`        // CA bundle: clients need a certificate signed by it (mTLS with identities)
	ClientCA string `yaml:"client_ca"` // the former name of ca
}

// exampleConfig documents every key (printed by -print-config).
const exampleConfig = `# replbroker configuration. Every key is optional; command-line flags override.
name: ""                      # unique in the cluster; default: <hostname>-<gossip port>
grpc_addr: 127.0.0.1:7400     # Broker gRPC service (components, replctl)
advertise_grpc: ""            # gRPC address handed to components; default: grpc_addr
gossip_addr: 127.0.0.1:7401   # memberlist, TCP and UDP
advertise_gossip: ""          # gossip address announced to other brokers
http_addr: 127.0.0.1:7402     # /metrics, /api/status, status page at /; "off" disables
join: []                      # gossip addresses of other brokers; a new broker asks to be a raft voter
data_dir: ""                  # raft log, snapshots, node id; required for a cluster ("" = in memory)
gossip_key: ""                # base64 of a 16, 24 or 32-byte AES key; required unless gossip_addr is loopback
gossip_keys: []               # or several: the first encrypts, the others are accepted too (key rotation; SIGHUP reloads)
gossip_key_file: ""           # or a file holding them, one per line, the first encrypting
insecure_gossip: false        # gossip in the clear on a non-loopback gossip_addr (anyone reaching it can rewrite the registry)
cluster_label: ""             # brokers with another label are ignored
gossip_profile: lan           # memberlist timings: lan, wan or local
token: ""                     # shared token components present in Register
token_file: ""                # or a file holding it
lease: 5s                     # how long an instance may be without a session
heartbeat: 2s                 # broker heartbeats on sessions; at most half the lease
rehome_wait: 10s              # set to the components' peer timeout: how long a standby on an unheard broker may take to re-home before a promotion goes on without its head
shutdown_timeout: 5s          # bound on graceful stop
log_level: info               # debug, info, warn, error
log_format: text              # text or json
tls:
  cert: ""                    # PEM certificate of the gRPC server (with a replmesh SPIFFE ID)
  key: ""
  ca: ""                      # CA bundle: require client certificates signed by it and
                              # authorize every call by the caller's identity
policy: ""                    # policy file: which services may read which tables, limits
insecure: false               # allow plaintext gRPC on a non-loopback address
`

// loadFile reads a config file strictly: an unknown key is an error that
// names the file, its line and the keys that are known.
func loadFile(path string) (*fileConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return &fileConfig{}, nil // empty file
		}
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	var more yaml.Node
	if err := dec.Decode(&more); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("config %s: more than one YAML document", path)
	}
	if err := checkKeys(path, &doc, "", fileConfig{}); err != nil {
		return nil, err
	}
	var fc fileConfig
	if err := doc.Decode(&fc); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	fc.present = map[string]bool{}
	if top := doc.Content[0]; top.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(top.Content); i += 2 {
			if top.Content[i+1].ShortTag() != "!!null" {
				fc.present[top.Content[i].Value] = true
			}
		}
	}
	return &fc, nil
}

// checkKeys reports the first unknown or repeated key of the mapping n
// against the yaml tags of the struct v (recursing into nested structs).
func checkKeys(path string, n *yaml.Node, prefix string, v any) error {
	if n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		n = n.Content[0]
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("config %s:%d: %s must be a mapping of keys", path, n.Line, orTop(prefix))
	}
	known := map[string]any{}
	var names []string
	switch v.(type) {
	case fileConfig:
		for _, f := range []struct {
			k string
			v any
		}{
			{"name", nil}, {"grpc_addr", nil}, {"advertise_grpc", nil}, {"gossip_addr", nil}, {"advertise_gossip", nil},
			{"http_addr", nil}, {"join", nil}, {"gossip_key", nil}, {"gossip_keys", nil}, {"gossip_key_file", nil},
			{"insecure_gossip", nil}, {"cluster_label", nil},
			{"gossip_profile", nil}, {"token", nil}, {"token_file", nil}, {"lease", nil}, {"heartbeat", nil}, {"rehome_wait", nil},
			{"shutdown_timeout", nil}, {"log_level", nil}, {"log_format", nil}, {"tls", tlsConfig{}},
			{"policy", nil}, {"insecure", nil}, {"data_dir", nil},
		} {
			known[f.k] = f.v
			names = append(names, f.k)
		}
	case tlsConfig:
		for _, k := range []string{"cert", "key", "ca", "client_ca"} {
			known[k] = nil
			names = append(names, k)
		}
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		sub, ok := known[k.Value]
		if !ok {
			return fmt.Errorf("config %s:%d: unknown key %q%s (known keys: %s)", path, k.Line, prefix+k.Value,
				suggestIn(prefix), strings.Join(names, ", "))
		}
		if seen[k.Value] {
			return fmt.Errorf("config %s:%d: key %q given twice", path, k.Line, prefix+k.Value)
		}
		seen[k.Value] = true
		if durationKeys[k.Value] && prefix == "" {
			if err := checkDuration(val); err != nil {
				return fmt.Errorf("config %s:%d: %s: %w", path, val.Line, k.Value, err)
			}
		}
		if sub != nil {
			if err := checkKeys(path, val, prefix+k.Value+".", sub); err != nil {
				return err
			}
		}
	}
	return nil
}

// durationKeys are the top-level keys holding a time.Duration.
var durationKeys = map[string]bool{"lease": true, "heartbeat": true, "rehome_wait": true, "shutdown_timeout": true}

// checkDuration refuses a YAML value that is not a Go duration, saying how
// to write one: yaml.v3 would report "cannot unmarshal !!int `5` into
// time.Duration", naming neither the key nor the unit it lacks.
func checkDuration(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return errors.New("is not a duration: write it as a number with a unit, such as \"5s\" or \"500ms\"")
	}
	switch n.ShortTag() {
	case "!!str":
		_, err := parseDuration(n.Value)
		return err
	case "!!null":
		return nil // unset
	}
	return notDuration(n.Value)
}

// parseDuration is time.ParseDuration with an error that says how to write
// a duration.
func parseDuration(v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, notDuration(v)
	}
	return d, nil
}

func notDuration(v string) error {
	if _, err := strconv.ParseFloat(v, 64); err == nil {
		return fmt.Errorf("%s is not a duration: write %q (seconds) or give another unit (ms, m, h)", v, v+"s")
	}
	return fmt.Errorf("%q is not a duration: write it as a number with a unit, such as \"5s\" or \"500ms\"", v)
}

// durationFlag is a duration flag whose parse error says how to write one.
type durationFlag struct{ d *time.Duration }

func (f durationFlag) String() string {
	if f.d == nil {
		return ""
	}
	return f.d.String()
}

func (f durationFlag) Set(v string) error {
	d, err := parseDuration(v)
	if err != nil {
		return err
	}
	*f.d = d
	return nil
}

func durationVar(fs *flag.FlagSet, name string, value time.Duration, usage string) *time.Duration {
	d := new(time.Duration)
	*d = value
	fs.Var(durationFlag{d}, name, usage)
	return d
}

// settingNames maps the broker.Config fields a user sets to the flag and
// the config-file key that set them, for errors from broker.Config.Validate.
var settingNames = map[string]struct{ flag, key string }{
	"Config.Name":            {"-name", "name"},
	"Config.GRPCAddr":        {"-grpc", "grpc_addr"},
	"Config.AdvertiseGRPC":   {"-advertise-grpc", "advertise_grpc"},
	"Config.BindAddr":        {"-gossip", "gossip_addr"},
	"Config.AdvertiseAddr":   {"-advertise-gossip", "advertise_gossip"},
	"Config.Join":            {"-join", "join"},
	"Config.DataDir":         {"-data-dir", "data_dir"},
	"Config.GossipKey":       {"-gossip-key", "gossip_key"},
	"Config.GossipKeys":      {"-gossip-key-file", "gossip_keys"},
	"Config.InsecureGossip":  {"-insecure-gossip", "insecure_gossip"},
	"Config.ClusterLabel":    {"-cluster-label", "cluster_label"},
	"Config.Lease":           {"-lease", "lease"},
	"Config.Heartbeat":       {"-heartbeat", "heartbeat"},
	"Config.RehomeWait":      {"-rehome-wait", "rehome_wait"},
	"Config.ShutdownTimeout": {"-shutdown-timeout", "shutdown_timeout"},
}

// settingError restates a broker.ConfigError in the words of the command
// line: "heartbeat (flag -heartbeat, config key heartbeat) is 10s; it must
// be more than 0 and at most half of lease (1s): 500ms or less".
func settingError(err error) error {
	var ce *broker.ConfigError
	if !errors.As(err, &ce) {
		return err
	}
	field, problem := ce.Field, ce.Problem
	for f, n := range settingNames {
		problem = strings.ReplaceAll(problem, f+" ", n.key+" ")
	}
	if n, ok := settingNames[field]; ok {
		field = fmt.Sprintf("%s (flag %s, config key %s)", n.key, n.flag, n.key)
	}
	return fmt.Errorf("invalid config: %s %s", field, problem)
}

func orTop(prefix string) string {
	if prefix == "" {
		return "the file"
	}
	return strings.TrimSuffix(prefix, ".")
}

func suggestIn(prefix string) string {
	if prefix == "" {
		return ""
	}
	return " in " + strings.TrimSuffix(prefix, ".")
}

// parseArgs parses the command line and the config file it names, flags
// overriding the file, and returns the broker config and the HTTP address
// ("" when disabled).
func parseArgs(args []string, stderr io.Writer) (broker.Config, string, *slog.Logger, error) {
	cfg, httpA, log, _, err := parseArgsModes(args, stderr)
	return cfg, httpA, log, err
}

// modeFile is the -modes file: where it is and the table modes it gives.
type modeFile struct {
	path  string
	modes map[string]modes.Mode // "service/table" -> mode; tables that set no mode are left out
}

// loadModeFile reads and checks the -modes file.
func loadModeFile(path string) (*modeFile, error) {
	mc, err := modes.Load(path)
	if err != nil {
		return nil, err
	}
	mf := &modeFile{path: path, modes: map[string]modes.Mode{}}
	for name, tc := range mc.Tables {
		if tc.Mode != modes.Unset {
			mf.modes[name] = tc.Mode
		}
	}
	return mf, nil
}

// parseArgsModes is parseArgs that also returns the -modes file, loaded
// (nil without -modes).
func parseArgsModes(args []string, stderr io.Writer) (broker.Config, string, *slog.Logger, *modeFile, error) {
	st, err := parseSettings(args, stderr)
	if err != nil {
		return broker.Config{}, "", nil, nil, err
	}
	return st.cfg, st.httpAddr, st.log, st.modes, nil
}

// settings are what the command line and the config file give.
type settings struct {
	cfg      broker.Config
	httpAddr string // "" when disabled
	log      *slog.Logger
	modes    *modeFile            // nil without -modes
	tls      *transport.TLSSource // nil unless mTLS with identities
	policy   string               // the -policy file, "" for none
	insecure bool                 // -insecure
	tlsNoID  bool                 // mTLS with a certificate that carries no replmesh identity: no authorization
}

// parseSettings parses the command line and the config file it names.
func parseSettings(args []string, stderr io.Writer) (*settings, error) {
	return parseSettingsWith(args, stderr, nil)
}

// parseSettingsWith is parseSettings where more, when not nil, first
// declares more flags on the flag set (the HTTP server's, httpauth.go).
func parseSettingsWith(args []string, stderr io.Writer, more func(*flag.FlagSet)) (*settings, error) {
	fs := flag.NewFlagSet("replbroker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	if more != nil {
		more(fs)
	}
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: replbroker [flags]\n\n"+
			"Runs one replmesh broker. With no flags it serves a one-node cluster on\n"+
			"localhost: gRPC %s, gossip %s, HTTP %s.\n\nflags:\n",
			broker.DefaultGRPCAddr, broker.DefaultGossipAddr, broker.DefaultHTTPAddr)
		fs.PrintDefaults()
	}
	var (
		configPath  = fs.String("config", "", "YAML config `file` (unknown keys are an error; flags override it)")
		printConfig = fs.Bool("print-config", false, "print a commented config file with every key and exit")
		name        = fs.String("name", "", "broker `name`, unique in the cluster (default <hostname>-<gossip port>)")
		grpcAddr    = fs.String("grpc", broker.DefaultGRPCAddr, "gRPC listen `address` (components, replctl)")
		advGRPC     = fs.String("advertise-grpc", "", "gRPC `address` handed to components (default: the listen address)")
		gossipAddr  = fs.String("gossip", broker.DefaultGossipAddr, "memberlist (gossip) listen `address`, TCP and UDP")
		advGossip   = fs.String("advertise-gossip", "", "gossip `address` announced to other brokers")
		httpAddr    = fs.String("http", broker.DefaultHTTPAddr, "HTTP `address` for /metrics, /api/status and the status page; \"off\" disables")
		join        = fs.String("join", "", "comma-separated gossip `addresses` of brokers to join; a broker with a new (empty) data dir asks the cluster to add it as a raft voter")
		dataDir     = fs.String("data-dir", "", "`directory` of the broker's raft log, snapshots and node id (required for a cluster of brokers; empty: in memory, for a single development broker)")
		modesPath   = fs.String("modes", "", "per-table mode config `file` (the modes YAML); its modes are set as broker overrides, again on SIGHUP")
		gossipKey   = fs.String("gossip-key", "", "gossip encryption `key`, base64 of 16, 24 or 32 bytes")
		gossipKeyF  = fs.String("gossip-key-file", "", "`file` holding the base64 gossip key (or keys, one per line: the first encrypts, all decrypt; SIGHUP reloads it)")
		insecureG   = fs.Bool("insecure-gossip", false, "gossip in the clear on a non-loopback -gossip address (warned at every start)")
		label       = fs.String("cluster-label", "", "cluster `label`; brokers with another label are ignored")
		profile     = fs.String("gossip-profile", "lan", "memberlist timings: lan, wan or local")
		token       = fs.String("token", "", "shared `token` required in every Register")
		tokenFile   = fs.String("token-file", "", "`file` holding the shared token")
		lease       = durationVar(fs, "lease", broker.DefaultConfig().Lease, "how long an instance may be without a session before it is removed")
		heartbeat   = durationVar(fs, "heartbeat", broker.DefaultConfig().Heartbeat, "interval of broker heartbeats on sessions; at most half the lease")
		rehomeWait  = durationVar(fs, "rehome-wait", broker.DefaultConfig().RehomeWait, "set to the components' peer timeout: a standby whose broker the raft leader does not hear is waited for this long past the lease before a promotion goes on without its head")
		shutdown    = durationVar(fs, "shutdown-timeout", broker.DefaultConfig().ShutdownTimeout, "bound on the graceful stop")
		logLevel    = fs.String("log-level", "info", "log `level`: debug, info, warn, error")
		logFormat   = fs.String("log-format", "text", "log format: text or json")
		tlsCert     = fs.String("tls-cert", "", "PEM certificate `file` of the gRPC server (enables TLS)")
		tlsKey      = fs.String("tls-key", "", "PEM key `file` of the gRPC server")
		tlsCA       = fs.String("tls-ca", "", "PEM CA bundle `file`: require client certificates signed by it (mTLS) and authorize calls by their identity")
		tlsClientCA = fs.String("tls-client-ca", "", "former name of -tls-ca")
		policyPath  = fs.String("policy", "", "policy `file`: which services may read which tables, per-service limits; reloaded on SIGHUP")
		insecure    = fs.Bool("insecure", false, "allow plaintext gRPC on a non-loopback address (a trusted network only)")
	)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if *printConfig {
		fmt.Fprint(os.Stdout, exampleConfig)
		return nil, errPrinted
	}

	// Start from the file, then let every flag given on the command line win.
	fc := fileConfig{}
	if *configPath != "" {
		f, err := loadFile(*configPath)
		if err != nil {
			return nil, err
		}
		fc = *f
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	// A flag given wins; otherwise the file's value, or else the flag's default.
	str := func(flagName string, dst *string, val string) {
		if set[flagName] || *dst == "" {
			*dst = val
		}
	}
	str("name", &fc.Name, *name)
	str("grpc", &fc.GRPCAddr, *grpcAddr)
	str("advertise-grpc", &fc.AdvertiseGRPC, *advGRPC)
	str("gossip", &fc.GossipAddr, *gossipAddr)
	str("advertise-gossip", &fc.AdvertiseGossip, *advGossip)
	str("http", &fc.HTTPAddr, *httpAddr)
	str("gossip-key", &fc.GossipKey, *gossipKey)
	str("gossip-key-file", &fc.GossipKeyFile, *gossipKeyF)
	str("cluster-label", &fc.ClusterLabel, *label)
	str("gossip-profile", &fc.GossipProfile, *profile)
	str("token", &fc.Token, *token)
	str("token-file", &fc.TokenFile, *tokenFile)
	str("log-level", &fc.LogLevel, *logLevel)
	str("log-format", &fc.LogFormat, *logFormat)
	str("tls-cert", &fc.TLS.Cert, *tlsCert)
	str("tls-key", &fc.TLS.Key, *tlsKey)
	str("tls-ca", &fc.TLS.CA, *tlsCA)
	str("tls-client-ca", &fc.TLS.ClientCA, *tlsClientCA)
	str("policy", &fc.Policy, *policyPath)
	str("data-dir", &fc.DataDir, *dataDir)
	if set["insecure"] {
		fc.Insecure = *insecure
	}
	if set["gossip-key"] || set["gossip-key-file"] {
		// A key given on the command line replaces the file's.
		fc.GossipKeys = nil
		if !set["gossip-key"] {
			fc.GossipKey = ""
		}
		if !set["gossip-key-file"] {
			fc.GossipKeyFile = ""
		}
	}
	if set["insecure-gossip"] {
		fc.InsecureGossip = *insecureG
	}
	if set["join"] {
		fc.Join = nil
		for _, j := range strings.Split(*join, ",") {
			if j = strings.TrimSpace(j); j != "" {
				fc.Join = append(fc.Join, j)
			}
		}
	}
	dur := func(flagName, key string, dst *time.Duration, val time.Duration) {
		if set[flagName] || !fc.present[key] {
			*dst = val
		}
	}
	dur("lease", "lease", &fc.Lease, *lease)
	dur("heartbeat", "heartbeat", &fc.Heartbeat, *heartbeat)
	dur("rehome-wait", "rehome_wait", &fc.RehomeWait, *rehomeWait)
	dur("shutdown-timeout", "shutdown_timeout", &fc.ShutdownTimeout, *shutdown)

	log, err := newLogger(fc.LogLevel, fc.LogFormat, stderr)
	if err != nil {
		return nil, err
	}
	st := &settings{log: log, policy: fc.Policy, insecure: fc.Insecure}
	st.cfg, st.tls, st.tlsNoID, err = brokerConfig(&fc, log)
	if err != nil {
		return nil, err
	}
	st.cfg.Logger = log
	if st.policy != "" {
		if st.cfg.Policy, err = modes.LoadAccessPolicy(st.policy); err != nil {
			return nil, err
		}
	}
	st.httpAddr = fc.HTTPAddr
	if st.httpAddr == "off" {
		st.httpAddr = ""
	}
	if *modesPath != "" {
		if st.modes, err = loadModeFile(*modesPath); err != nil {
			return nil, err
		}
	}
	return st, nil
}

var errPrinted = errors.New("printed")

func newLogger(level, format string, w io.Writer) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log format %q: want text or json", format)
}

// brokerConfig turns the combined settings into a broker.Config. With a
// certificate, its key and a CA bundle it serves mTLS from a TLSSource
// (rotated from the files) and requires identities (Config.RequireIdentity);
// noID reports a certificate without a replmesh identity, served as before
// (mTLS without authorization).
func brokerConfig(fc *fileConfig, log *slog.Logger) (cfg broker.Config, src *transport.TLSSource, noID bool, err error) {
	cfg, err = brokerSettings(fc)
	if err != nil {
		return cfg, nil, false, err
	}
	if cfg, src, noID, err = brokerTLS(fc, cfg, log); err != nil {
		return cfg, nil, false, err
	}
	// The broker refuses it too (Config.Insecure); checked here first to
	// name the flag.
	if err := transport.CheckTransportSecurity([]string{cfg.GRPCAddr, cfg.AdvertiseGRPC}, cfg.Transport.TLS != nil, fc.Insecure); err != nil {
		return cfg, src, noID, fmt.Errorf("grpc: %w (flag -insecure, config key insecure)", err)
	}
	return cfg, src, noID, settingError(cfg.Validate())
}

// gossipKeys returns the gossip keys the settings give, decoded, the one
// gossip is encrypted with first: from gossip_key (flag -gossip-key),
// gossip_keys, or gossip_key_file (one per line), only one of them.
func gossipKeys(fc *fileConfig) ([][]byte, error) {
	var enc []string
	sources := 0
	if fc.GossipKey != "" {
		enc = append(enc, fc.GossipKey)
		sources++
	}
	if len(fc.GossipKeys) > 0 {
		enc = append(enc, fc.GossipKeys...)
		sources++
	}
	if fc.GossipKeyFile != "" {
		b, err := os.ReadFile(fc.GossipKeyFile)
		if err != nil {
			return nil, fmt.Errorf("gossip key: %w", err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if line = strings.TrimSpace(line); line != "" {
				enc = append(enc, line)
			}
		}
		if len(enc) == 0 {
			return nil, fmt.Errorf("gossip key: no key in %s", fc.GossipKeyFile)
		}
		sources++
	}
	if sources > 1 {
		return nil, errors.New("gossip key: give one of gossip_key, gossip_keys and gossip_key_file")
	}
	keys := make([][]byte, 0, len(enc))
	for i, e := range enc {
		k, err := base64.StdEncoding.DecodeString(e)
		if err != nil {
			if len(enc) == 1 {
				return nil, fmt.Errorf("gossip key: not base64: %w", err)
			}
			return nil, fmt.Errorf("gossip key %d of %d: not base64: %w", i+1, len(enc), err)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// brokerSettings turns the combined settings but TLS into a broker.Config.
func brokerSettings(fc *fileConfig) (broker.Config, error) {
	cfg := broker.DefaultConfig()
	cfg.Name = fc.Name
	cfg.GRPCAddr = fc.GRPCAddr
	cfg.AdvertiseGRPC = fc.AdvertiseGRPC
	cfg.BindAddr = fc.GossipAddr
	cfg.AdvertiseAddr = fc.AdvertiseGossip
	cfg.Join = slices.Clone(fc.Join)
	cfg.DataDir = fc.DataDir
	cfg.ClusterLabel = fc.ClusterLabel
	cfg.Lease = fc.Lease
	cfg.Heartbeat = fc.Heartbeat
	cfg.RehomeWait = fc.RehomeWait
	cfg.ShutdownTimeout = fc.ShutdownTimeout
	switch fc.GossipProfile {
	case "", "lan":
		cfg.Gossip = memberlist.DefaultLANConfig()
	case "wan":
		cfg.Gossip = memberlist.DefaultWANConfig()
	case "local":
		local := broker.LocalConfig("")
		cfg.Gossip = local.Gossip
	default:
		return cfg, fmt.Errorf("gossip profile %q: want lan, wan or local", fc.GossipProfile)
	}
	if cfg.CheckInterval > cfg.Lease {
		cfg.CheckInterval = cfg.Lease
	}
	if cfg.TombstoneTTL < cfg.Lease {
		cfg.TombstoneTTL = cfg.Lease
	}

	keys, err := gossipKeys(fc)
	if err != nil {
		return cfg, err
	}
	if len(keys) > 0 {
		cfg.GossipKey, cfg.GossipKeys = keys[0], keys[1:]
	}
	cfg.InsecureGossip = fc.InsecureGossip
	cfg.Insecure = fc.Insecure
	cfg.Token = fc.Token
	if fc.TokenFile != "" {
		if cfg.Token != "" {
			return cfg, errors.New("token: give token or token_file, not both")
		}
		b, err := os.ReadFile(fc.TokenFile)
		if err != nil {
			return cfg, fmt.Errorf("token: %w", err)
		}
		cfg.Token = strings.TrimSpace(string(b))
	}
	return cfg, nil
}

// brokerTLS adds the gRPC server's TLS to cfg (see brokerConfig).
func brokerTLS(fc *fileConfig, cfg broker.Config, log *slog.Logger) (broker.Config, *transport.TLSSource, bool, error) {
	ca := fc.TLS.CA
	if fc.TLS.ClientCA != "" {
		if ca != "" && ca != fc.TLS.ClientCA {
			return cfg, nil, false, errors.New("tls: give ca (-tls-ca) or its former name client_ca (-tls-client-ca), not both")
		}
		ca = fc.TLS.ClientCA
	}
	if fc.TLS.Cert == "" && fc.TLS.Key == "" && ca == "" {
		return cfg, nil, false, nil
	}
	if fc.TLS.Cert == "" || fc.TLS.Key == "" {
		return cfg, nil, false, errors.New("tls: cert and key are both required")
	}
	cert, err := tls.LoadX509KeyPair(fc.TLS.Cert, fc.TLS.Key)
	if err != nil {
		return cfg, nil, false, fmt.Errorf("tls: %w", err)
	}
	if ca != "" && cert.Leaf != nil && len(cert.Leaf.URIs) > 0 {
		src, err := transport.NewTLSSource(transport.TLSFiles{CA: ca, Cert: fc.TLS.Cert, Key: fc.TLS.Key}, log)
		if err != nil {
			return cfg, nil, false, fmt.Errorf("tls: %w", err)
		}
		cfg.Transport.TLS = src.ServerConfig()
		// Brokers dial one another (raft) as brokers, and accept only
		// brokers on that side.
		cfg.PeerTransport.TLS = src.ClientConfig(transport.ExpectRole(transport.RoleBroker))
		cfg.RequireIdentity = true
		return cfg, src, false, nil
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	// Brokers dial one another (raft) with the same certificate, trusting
	// the CA bundle (or the system's roots without one).
	peer := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	cfg.PeerTransport.TLS = peer
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return cfg, nil, false, fmt.Errorf("tls: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return cfg, nil, false, fmt.Errorf("tls: no certificate in %s", ca)
		}
		tc.ClientCAs = pool
		tc.ClientAuth = tls.RequireAndVerifyClientCert
		peer.RootCAs = pool
	}
	cfg.Transport.TLS = tc
	return cfg, nil, ca != "", nil
}
