package main

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/replmesh/replmesh/broker"
)

// replctl gossip keys lists and rotates the gossip keys of every broker
// given, by fingerprint, with the brokers' token.
func TestGossipKeys(t *testing.T) {
	keyA, keyB := []byte("aaaaaaaaaaaaaaaa"), []byte("bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb")
	a, b := base64.StdEncoding.EncodeToString(keyA), base64.StdEncoding.EncodeToString(keyB)
	fa, fb := broker.GossipKeyFingerprint(keyA), broker.GossipKeyFingerprint(keyB)
	b1 := startBroker(t, "k1", "-gossip-key", a, "-token", "secret")
	b2 := startBroker(t, "k2", "-gossip-key", a, "-token", "secret")
	both := b1 + "," + b2
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	// keys returns each broker's fingerprints, the primary marked "*".
	keys := func(t *testing.T, args ...string) map[string][]string {
		t.Helper()
		var res []gossipKeysResult
		ctlJSON(t, &res, append([]string{"-broker", both, "gossip", "keys", "-token", "secret"}, args...)...)
		out := map[string][]string{}
		for _, r := range res {
			for _, k := range r.Keys {
				fp := k.Fingerprint
				if k.Primary {
					fp += "*"
				}
				out[r.Name] = append(out[r.Name], fp)
			}
		}
		return out
	}
	steps := []struct {
		name string
		args []string
		want []string
	}{
		{"list", nil, []string{fa + "*"}},
		{"add B", []string{"add", b}, []string{fa + "*", fb}},
		{"use B", []string{"use", b}, []string{fb + "*", fa}},
		{"remove A", []string{"remove", a}, []string{fb + "*"}},
		{"list again", []string{"list"}, []string{fb + "*"}},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			got := keys(t, st.args...)
			for _, name := range []string{"k1", "k2"} {
				if !slices.Equal(got[name], st.want) {
					t.Fatalf("keys of %s: %v, want %v", name, got[name], st.want)
				}
			}
		})
	}
	t.Run("text, token from a file", func(t *testing.T) {
		r := ctlOK(t, "-broker", b1, "gossip", "keys", "-token-file", tokenFile)
		if !strings.Contains(r.stdout, fb) || !strings.Contains(r.stdout, "yes") || strings.Contains(r.stdout, fa) {
			t.Fatalf("output:\n%s", r.stdout)
		}
	})
	t.Run("refused", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			args []string
			code int
			says string
		}{
			{"no token", []string{"-broker", b1, "gossip", "keys"}, exitError, "permission"},
			{"wrong token", []string{"-broker", both, "gossip", "keys", "add", a, "-token", "guess"}, exitError, "failed on 2 of 2 brokers"},
			{"the primary", []string{"-broker", b1, "gossip", "keys", "remove", b, "-token", "secret"}, exitError, "primary"},
			{"no subcommand", []string{"gossip"}, exitUsage, "gossip keys"},
			{"add without a key", []string{"gossip", "keys", "add"}, exitUsage, "add KEY"},
			{"a key not base64", []string{"gossip", "keys", "use", "not base64!"}, exitUsage, "not base64"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				r := ctl(t, nil, tc.args...)
				if r.code != tc.code || !strings.Contains(strings.ToLower(r.stdout+r.stderr), strings.ToLower(tc.says)) {
					t.Fatalf("want exit %d saying %q, got %v", tc.code, tc.says, r)
				}
			})
		}
		if got := keys(t); !slices.Equal(got["k1"], []string{fb + "*"}) {
			t.Fatalf("keys changed by refused calls: %v", got)
		}
	})
}
