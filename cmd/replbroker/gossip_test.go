package main

import (
	"encoding/base64"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/replmesh/replmesh/broker"
	"github.com/replmesh/replmesh/transport"
)

var (
	keyA = []byte("aaaaaaaaaaaaaaaa")
	keyB = []byte("bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb")
)

func b64(k []byte) string { return base64.StdEncoding.EncodeToString(k) }

func TestParseArgs_GossipKeys(t *testing.T) {
	write := fileWriter(t)
	keyFile := write("keys", b64(keyB)+"\n\n"+b64(keyA)+"\n")
	tests := []struct {
		name     string
		args     []string
		key      []byte   // want Config.GossipKey
		more     [][]byte // want Config.GossipKeys
		insecure bool
		err      []string // each in the error; nil: accepted
	}{
		{"gossip_keys", []string{"-config", write("a.yaml", "gossip_keys: ["+b64(keyA)+", "+b64(keyB)+"]\n")}, keyA, [][]byte{keyB}, false, nil},
		{"a key file with two keys", []string{"-gossip-key-file", keyFile}, keyB, [][]byte{keyA}, false, nil},
		{"the flag replaces the file's keys", []string{"-config", write("b.yaml", "gossip_keys: ["+b64(keyA)+"]\n"), "-gossip-key", b64(keyB)}, keyB, nil, false, nil},
		{"gossip_key and gossip_keys", []string{"-config", write("c.yaml", "gossip_key: "+b64(keyA)+"\ngossip_keys: ["+b64(keyB)+"]\n")}, nil, nil, false,
			[]string{"give one of gossip_key, gossip_keys and gossip_key_file"}},
		{"a bad key in the list", []string{"-config", write("d.yaml", "gossip_keys: ["+b64(keyA)+", not-base64]\n")}, nil, nil, false,
			[]string{"gossip key 2 of 2: not base64"}},
		{"a short key in the list", []string{"-config", write("e.yaml", "gossip_keys: ["+b64(keyA)+", c2hvcnQ=]\n")}, nil, nil, false,
			[]string{"gossip_keys (flag -gossip-key-file, config key gossip_keys) [0] is 5 bytes"}},
		{"no key on every interface", []string{"-gossip", "0.0.0.0:7401"}, nil, nil, false,
			[]string{"gossip_key (flag -gossip-key, config key gossip_key) is not set and gossip_addr \"0.0.0.0:7401\" is not a loopback address", "insecure_gossip"}},
		{"no key on every interface, insecure flag", []string{"-gossip", "0.0.0.0:7401", "-insecure-gossip"}, nil, nil, true, nil},
		{"no key on every interface, insecure key", []string{"-config", write("f.yaml", "gossip_addr: 10.0.0.1:7401\ninsecure_gossip: true\n")}, nil, nil, true, nil},
		{"a key on every interface", []string{"-gossip", ":7401", "-gossip-key", b64(keyA)}, keyA, nil, false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, _, _, err := parseArgs(tt.args, io.Discard)
			if tt.err != nil {
				if err == nil {
					t.Fatalf("parseArgs(%q) accepted it", tt.args)
				}
				for _, w := range tt.err {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error does not say %q: %v", w, err)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(cfg.GossipKey) != string(tt.key) || !slices.EqualFunc(cfg.GossipKeys, tt.more, slices.Equal) || cfg.InsecureGossip != tt.insecure {
				t.Fatalf("key %q, more %q, insecure %v; want %q, %q, %v", cfg.GossipKey, cfg.GossipKeys, cfg.InsecureGossip, tt.key, tt.more, tt.insecure)
			}
		})
	}
}

// SIGHUP reads the gossip keys of the config file again: a rotation is
// three reloads. Settings that do not load change nothing.
func TestReplbroker_SIGHUPRotatesGossipKeys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "broker.yaml")
	writeKeys := func(body string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeKeys("gossip_keys: [" + b64(keyA) + "]\n")
	p := start(t, local("keys", "-config", path, "-token", "secret")...)
	cc, ctx := dial(t, p.GRPC)
	client := transport.NewBrokerClient(cc)
	keys := func() []string {
		t.Helper()
		res, err := client.GossipKeys(ctx, &transport.GossipKeysRequest{Version: transport.ProtocolVersion, Token: "secret", Op: transport.GossipKeysList})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, k := range res.Keys {
			s := k.Fingerprint
			if k.Primary {
				s += "*"
			}
			out = append(out, s)
		}
		return out
	}
	fa, fb := broker.GossipKeyFingerprint(keyA), broker.GossipKeyFingerprint(keyB)
	reloaded := func(n int) {
		t.Helper()
		waitUntil(t, "the keys reloaded", func() bool {
			return strings.Count(p.log(), `"msg":"gossip keys reloaded"`) == n
		})
	}
	steps := []struct {
		name, file string
		want       []string
	}{
		{"add B", "gossip_keys: [" + b64(keyA) + ", " + b64(keyB) + "]\n", []string{fa + "*", fb}},
		{"use B", "gossip_keys: [" + b64(keyB) + ", " + b64(keyA) + "]\n", []string{fb + "*", fa}},
		{"remove A", "gossip_keys: [" + b64(keyB) + "]\n", []string{fb + "*"}},
	}
	if got, want := keys(), []string{fa + "*"}; !slices.Equal(got, want) {
		t.Fatalf("keys at start %v, want %v", got, want)
	}
	for i, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			writeKeys(st.file)
			p.signal(syscall.SIGHUP)
			reloaded(i + 1)
			if got := keys(); !slices.Equal(got, st.want) {
				t.Fatalf("keys %v, want %v", got, st.want)
			}
		})
	}
	t.Run("a bad key changes nothing", func(t *testing.T) {
		writeKeys("gossip_keys: [" + b64(keyA) + ", nope]\n")
		p.signal(syscall.SIGHUP)
		p.waitLog(`"msg":"gossip keys not reloaded; the keys in force stay"`)
		if got, want := keys(), []string{fb + "*"}; !slices.Equal(got, want) {
			t.Fatalf("keys %v, want %v", got, want)
		}
	})
	t.Run("no key changes nothing", func(t *testing.T) {
		writeKeys("name: keys\n")
		p.signal(syscall.SIGHUP)
		p.waitLog(`"msg":"gossip keys not reloaded: the settings give no gossip key`)
		if got, want := keys(), []string{fb + "*"}; !slices.Equal(got, want) {
			t.Fatalf("keys %v, want %v", got, want)
		}
	})
	p.stop(15 * time.Second)
}
