package broker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/replmesh/replmesh/internal/testutil"
	"github.com/replmesh/replmesh/transport"
)

var (
	keyA = []byte("aaaaaaaaaaaaaaaa")
	keyB = []byte("bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb")
	keyC = []byte("cccccccccccccccccccccccc")
)

func TestConfig_GossipKeyRequiredOffLoopback(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
		field  string // "": valid
	}{
		{"loopback IPv4 without a key", func(c *Config) { c.BindAddr = "127.0.0.1:0" }, ""},
		{"loopback IPv6 without a key", func(c *Config) { c.BindAddr = "[::1]:0" }, ""},
		{"localhost without a key", func(c *Config) { c.BindAddr = "localhost:0" }, ""},
		{"every interface without a key", func(c *Config) { c.BindAddr = ":7401" }, "Config.GossipKey"},
		{"wildcard without a key", func(c *Config) { c.BindAddr = "0.0.0.0:7401" }, "Config.GossipKey"},
		{"private address without a key", func(c *Config) { c.BindAddr = "10.0.0.1:7401" }, "Config.GossipKey"},
		{"host name without a key", func(c *Config) { c.BindAddr = "broker-1.internal:7401" }, "Config.GossipKey"},
		{"private address with a key", func(c *Config) { c.BindAddr = "10.0.0.1:7401"; c.GossipKey = keyA }, ""},
		{"private address, insecure", func(c *Config) { c.BindAddr = "10.0.0.1:7401"; c.InsecureGossip = true }, ""},
		{"further keys without a key", func(c *Config) { c.GossipKeys = [][]byte{keyB} }, "Config.GossipKeys"},
		{"a further key too short", func(c *Config) { c.GossipKey = keyA; c.GossipKeys = [][]byte{keyB, []byte("short")} }, "Config.GossipKeys"},
		{"further keys", func(c *Config) { c.GossipKey = keyA; c.GossipKeys = [][]byte{keyB, keyC} }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := LocalConfig("b1")
			tt.mutate(&cfg)
			err := cfg.Validate()
			if tt.field == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tt.field) {
				t.Fatalf("Validate = %v, want ErrInvalidConfig naming %s", err, tt.field)
			}
		})
	}
}

// A broker that gossips in the clear on a non-loopback address says so at
// WARN on every start.
func TestBroker_InsecureGossipWarnsAtStart(t *testing.T) {
	for i := range 2 {
		t.Run(fmt.Sprintf("start %d", i+1), func(t *testing.T) {
			logs, watch := watchLogs(t)
			_, port, err := net.SplitHostPort(testutil.FreeAddr(t))
			if err != nil {
				t.Fatal(err)
			}
			startBroker(t, "b1", nil, func(c *Config) {
				watch(c)
				c.BindAddr = net.JoinHostPort("0.0.0.0", port)
				c.AdvertiseAddr = net.JoinHostPort("127.0.0.1", port)
				c.InsecureGossip = true
			})
			warn := logs.Records(t, testutil.MsgPrefix("gossip is not encrypted"))
			if len(warn) != 1 || warn[0]["level"] != "WARN" {
				t.Fatalf("warnings at start: %v, want one at WARN", warn)
			}
		})
	}
}

func fingerprints(keys [][]byte) []string {
	var out []string
	for _, k := range keys {
		out = append(out, GossipKeyFingerprint(k))
	}
	return out
}

func TestBroker_GossipKeyCalls(t *testing.T) {
	b := startBroker(t, "b1", nil, func(c *Config) { c.GossipKey = keyA })
	short := errors.New("any error") // a refused key: the error names its size
	steps := []struct {
		name    string
		call    func() error
		wantErr error    // nil: none; short: any
		want    [][]byte // the keys after it, primary first
	}{
		{"add B", func() error { return b.AddGossipKey(keyB) }, nil, [][]byte{keyA, keyB}},
		{"add B again", func() error { return b.AddGossipKey(keyB) }, nil, [][]byte{keyA, keyB}},
		{"add a short key", func() error { return b.AddGossipKey([]byte("short")) }, short, [][]byte{keyA, keyB}},
		{"use C, not installed", func() error { return b.UseGossipKey(keyC) }, ErrUnknownGossipKey, [][]byte{keyA, keyB}},
		{"use B", func() error { return b.UseGossipKey(keyB) }, nil, [][]byte{keyB, keyA}},
		{"remove the primary", func() error { return b.RemoveGossipKey(keyB) }, ErrPrimaryGossipKey, [][]byte{keyB, keyA}},
		{"remove C, not installed", func() error { return b.RemoveGossipKey(keyC) }, ErrUnknownGossipKey, [][]byte{keyB, keyA}},
		{"remove A", func() error { return b.RemoveGossipKey(keyA) }, nil, [][]byte{keyB}},
		{"set C, A", func() error { _, err := b.SetGossipKeys([][]byte{keyC, keyA}); return err }, nil, [][]byte{keyC, keyA}},
		{"set none", func() error { _, err := b.SetGossipKeys(nil); return err }, short, [][]byte{keyC, keyA}},
		{"set with a short key", func() error { _, err := b.SetGossipKeys([][]byte{keyA, []byte("x")}); return err }, short, [][]byte{keyC, keyA}},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			err := st.call()
			switch {
			case st.wantErr == nil && err != nil:
				t.Fatal(err)
			case st.wantErr == short && err == nil:
				t.Fatal("accepted")
			case st.wantErr != nil && st.wantErr != short && !errors.Is(err, st.wantErr):
				t.Fatalf("err = %v, want %v", err, st.wantErr)
			}
			if got, want := fingerprints(b.ListGossipKeys()), fingerprints(st.want); !slices.Equal(got, want) {
				t.Fatalf("keys %v, want %v", got, want)
			}
		})
	}
	plain := startBroker(t, "b2", nil, nil)
	if err := plain.AddGossipKey(keyA); !errors.Is(err, ErrGossipUnencrypted) {
		t.Fatalf("AddGossipKey on a broker without encryption: %v, want ErrGossipUnencrypted", err)
	}
	if keys := plain.ListGossipKeys(); keys != nil {
		t.Fatalf("keys of a broker without encryption: %v", keys)
	}
}

// noneDeparted fails if a broker saw another leave or die.
func noneDeparted(t *testing.T, bs []*Broker) {
	t.Helper()
	for _, b := range bs {
		b.mu.Lock()
		departed, live := len(b.departed), len(b.live)
		b.mu.Unlock()
		if departed != 0 || live != len(bs) {
			t.Fatalf("%s: %d live, %d departed; want %d live, none departed", b.Name(), live, departed, len(bs))
		}
	}
}

// A cluster rotates its gossip key from A to B, one round on every broker
// at a time, without a broker leaving; after each round, registrations
// still spread; afterwards a broker holding only A cannot join.
func TestBroker_GossipKeyRotation(t *testing.T) {
	bs := startCluster(t, 3, func(c *Config) { c.GossipKey = keyA; c.ClusterLabel = "prod" })
	rounds := []struct {
		name string
		call func(*Broker) error
		want [][]byte
	}{
		{"add B everywhere", func(b *Broker) error { return b.AddGossipKey(keyB) }, [][]byte{keyA, keyB}},
		{"use B everywhere", func(b *Broker) error { return b.UseGossipKey(keyB) }, [][]byte{keyB, keyA}},
		{"remove A everywhere", func(b *Broker) error { return b.RemoveGossipKey(keyA) }, [][]byte{keyB}},
	}
	for i, r := range rounds {
		t.Run(r.name, func(t *testing.T) {
			for _, b := range bs {
				if err := r.call(b); err != nil {
					t.Fatalf("%s: %v", b.Name(), err)
				}
				if got, want := fingerprints(b.ListGossipKeys()), fingerprints(r.want); !slices.Equal(got, want) {
					t.Fatalf("%s: keys %v, want %v", b.Name(), got, want)
				}
			}
			// Gossip still flows: an instance registered on one broker
			// reaches the others.
			inst := fmt.Sprintf("p%d", i)
			mustConnect(t, bs[i].GRPCAddr(), consumerReg("products", inst, "stores"))
			waitEverywhere(t, bs, inst, func(st *transport.StatusResponse) bool { return findInstance(st, "products", inst) != nil })
			noneDeparted(t, bs)
		})
	}
	t.Run("a broker with only A cannot join", func(t *testing.T) {
		x := startBroker(t, "x", nil, func(c *Config) { c.GossipKey = keyA; c.ClusterLabel = "prod" })
		if n, err := x.ml.Join([]string{bs[0].GossipAddr()}); err == nil || n != 0 {
			t.Fatalf("joined with the retired key: contacted %d, err %v", n, err)
		}
		noneDeparted(t, bs)
	})
}

// The GossipKeys RPC lists and changes the keys of the broker it reaches,
// for a caller with the broker's token only.
func TestBroker_GossipKeysRPC(t *testing.T) {
	b := startBroker(t, "b1", nil, func(c *Config) { c.GossipKey = keyA; c.Token = "secret" })
	cl := transport.NewBrokerClient(dial(t, b.GRPCAddr()))
	call := func(token, op string, key []byte) (*transport.GossipKeysResponse, error) {
		return cl.GossipKeys(context.Background(), &transport.GossipKeysRequest{Version: transport.ProtocolVersion, Token: token, Op: op, Key: key})
	}
	info := func(keys ...[]byte) []transport.GossipKeyInfo {
		var out []transport.GossipKeyInfo
		for i, k := range keys {
			out = append(out, transport.GossipKeyInfo{Fingerprint: GossipKeyFingerprint(k), Primary: i == 0})
		}
		return out
	}
	steps := []struct {
		name    string
		token   string
		op      string
		key     []byte
		wantErr error
		want    []transport.GossipKeyInfo
	}{
		{"list without the token", "", transport.GossipKeysList, nil, transport.ErrPermission, nil},
		{"add with a wrong token", "guess", transport.GossipKeysAdd, keyB, transport.ErrPermission, nil},
		{"list", "secret", transport.GossipKeysList, nil, nil, info(keyA)},
		{"add B", "secret", transport.GossipKeysAdd, keyB, nil, info(keyA, keyB)},
		{"use B", "secret", transport.GossipKeysUse, keyB, nil, info(keyB, keyA)},
		{"remove the primary", "secret", transport.GossipKeysRemove, keyB, transport.ErrBadRequest, nil},
		{"remove A", "secret", transport.GossipKeysRemove, keyA, nil, info(keyB)},
		{"an unknown operation", "secret", "rotate", keyA, transport.ErrBadRequest, nil},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			res, err := call(st.token, st.op, st.key)
			if st.wantErr != nil {
				if !errors.Is(err, st.wantErr) {
					t.Fatalf("err = %v, want %v", err, st.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if res.Broker != "b1" || !slices.Equal(res.Keys, st.want) {
				t.Fatalf("response %+v, want keys %+v", res, st.want)
			}
		})
	}
	if got := fingerprints(b.ListGossipKeys()); !slices.Equal(got, fingerprints([][]byte{keyB})) {
		t.Fatalf("keys after the calls: %v", got)
	}
	t.Run("a broker without a token refuses", func(t *testing.T) {
		open := startBroker(t, "b2", nil, func(c *Config) { c.GossipKey = keyA })
		_, err := transport.NewBrokerClient(dial(t, open.GRPCAddr())).GossipKeys(context.Background(),
			&transport.GossipKeysRequest{Version: transport.ProtocolVersion, Op: transport.GossipKeysList})
		if !errors.Is(err, transport.ErrPermission) {
			t.Fatalf("err = %v, want ErrPermission", err)
		}
	})
}
