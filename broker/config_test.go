package broker

import (
	"crypto/tls"
	"errors"
	"strings"
	"testing"
	"time"
)

// Every out-of-range duration is refused with a message that names the
// field and the values it accepts, and as a *ConfigError carrying the
// field, so that a command line can name its own flag.
func TestConfig_ValidateNamesFieldAndRange(t *testing.T) {
	tests := []struct {
		field  string
		mutate func(*Config)
		want   string // the accepted range, as the message says it
	}{
		{"Config.Lease", func(c *Config) { c.Lease = 0 }, "is 0s; it must be more than 0"},
		{"Config.Lease", func(c *Config) { c.Lease = -time.Second }, "is -1s; it must be more than 0"},
		{"Config.Heartbeat", func(c *Config) { c.Heartbeat = 0 }, "at most half of Config.Lease (1s): 500ms or less"},
		{"Config.Heartbeat", func(c *Config) { c.Heartbeat = 10 * time.Second }, "is 10s; it must be more than 0 and at most half of Config.Lease (1s)"},
		{"Config.Heartbeat", func(c *Config) { c.Heartbeat = 501 * time.Millisecond }, "500ms or less"},
		{"Config.RegisterTimeout", func(c *Config) { c.RegisterTimeout = 0 }, "it must be more than 0"},
		{"Config.CheckInterval", func(c *Config) { c.CheckInterval = 2 * time.Second }, "is 2s; it must be more than 0 and at most Config.Lease (1s)"},
		{"Config.UpdateInterval", func(c *Config) { c.UpdateInterval = -1 }, "it must be more than 0"},
		{"Config.TombstoneTTL", func(c *Config) { c.TombstoneTTL = time.Millisecond }, "is 1ms; it must be at least Config.Lease (1s)"},
		{"Config.RejoinInterval", func(c *Config) { c.RejoinInterval = 0 }, "it must be more than 0"},
		{"Config.ShutdownTimeout", func(c *Config) { c.ShutdownTimeout = 0 }, "it must be more than 0"},
	}
	for _, tt := range tests {
		t.Run(tt.field+"/"+tt.want, func(t *testing.T) {
			cfg := LocalConfig("b1")
			tt.mutate(&cfg)
			err := cfg.Validate()
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("got %v, want ErrInvalidConfig", err)
			}
			if got := err.Error(); !strings.Contains(got, tt.field+" ") || !strings.Contains(got, tt.want) {
				t.Fatalf("got %q, want it to name %s and say %q", got, tt.field, tt.want)
			}
			var ce *ConfigError
			if !errors.As(err, &ce) || ce.Field != tt.field {
				t.Fatalf("got %#v, want a *ConfigError for %s", err, tt.field)
			}
		})
	}
	// The boundary itself is accepted.
	cfg := LocalConfig("b1")
	cfg.Heartbeat = cfg.Lease / 2
	if err := cfg.Validate(); err != nil {
		t.Fatalf("heartbeat of half the lease: %v", err)
	}
}

// A gRPC address other hosts can reach needs TLS, or Insecure (which New
// then warns about); loopback needs neither.
func TestConfig_PlaintextGRPCOffLoopback(t *testing.T) {
	tests := []struct {
		name     string
		grpc     string
		insecure bool
		wantErr  bool
	}{
		{"loopback", "127.0.0.1:0", false, false},
		{"all interfaces", "0.0.0.0:7400", false, true},
		{"all interfaces, insecure", "0.0.0.0:7400", true, false},
		{"other host", "10.1.2.3:7400", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := LocalConfig("b1")
			c.GRPCAddr, c.Insecure = tt.grpc, tt.insecure
			err := c.Validate()
			if (err != nil) != tt.wantErr {
				t.Fatalf("Validate: %v, want error %v", err, tt.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), "Config.Insecure") {
				t.Fatalf("error %q does not name Config.Insecure", err)
			}
		})
	}
}

// A broker that serves TLS and joins others must dial them with TLS too
// (Config.PeerTransport): in plaintext its raft messages and its join
// would never reach a TLS server.
func TestConfig_ValidatePeerTransport(t *testing.T) {
	server := &tls.Config{MinVersion: tls.VersionTLS12}
	client := &tls.Config{MinVersion: tls.VersionTLS12}
	tests := []struct {
		name   string
		mutate func(*Config)
		ok     bool
	}{
		{"plaintext cluster", func(c *Config) { c.Join = []string{"127.0.0.1:7946"} }, true},
		{"TLS alone", func(c *Config) { c.Transport.TLS = server }, true},
		{"TLS joining with peer TLS", func(c *Config) {
			c.Transport.TLS, c.PeerTransport.TLS, c.Join = server, client, []string{"127.0.0.1:7946"}
		}, true},
		{"TLS joining without peer TLS", func(c *Config) {
			c.Transport.TLS, c.Join = server, []string{"127.0.0.1:7946"}
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := LocalConfig("b1")
			tt.mutate(&cfg)
			err := cfg.Validate()
			if tt.ok {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var ce *ConfigError
			if !errors.As(err, &ce) || ce.Field != "Config.PeerTransport" {
				t.Fatalf("got %v, want a *ConfigError for Config.PeerTransport", err)
			}
		})
	}
}
