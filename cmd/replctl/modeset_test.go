package main

import (
	"strings"
	"testing"
	"time"
)

// mode set on a table the broker does not know warns on stderr and sets
// the override (its owner may register later); with -strict it refuses
// with exit 1 and sets nothing. A known table, and clear, say nothing.
func TestModeSet_UnknownTable(t *testing.T) {
	broker := startBroker(t, "b1")
	owner := component(t, broker, "stores", "s1", true)
	if _, err := owner.Own("managers"); err != nil {
		t.Fatal(err)
	}
	component(t, broker, "products", "p1", false)
	waitUntil(t, 20*time.Second, "stores/managers and products registered", func() bool {
		st := registry(t, broker)
		products, managers := false, false
		for _, in := range st.Instances {
			products = products || in.Service == "products"
			for _, tb := range in.Tables {
				managers = managers || (in.Service == "stores" && tb.Table == "managers")
			}
		}
		return products && managers
	})
	br := "-broker=" + broker

	for _, tc := range []struct {
		name    string
		args    []string
		code    int
		stderr  string // "" : stderr must be empty
		setMode string // the override afterwards ("": none)
	}{
		{"known table", []string{"mode", "set", "stores/managers", "pull"}, 0, "", "pull"},
		{"known table, strict", []string{"mode", "set", "-strict", "stores/managers", "push"}, 0, "", "push"},
		{"unknown service", []string{"mode", "set", "nosvc/nope", "pull"}, 0,
			`replctl: warning: the broker knows no service "nosvc"; the override is set anyway`, "pull"},
		{"unknown table of a known service", []string{"mode", "set", "stores/nope", "auto"}, 0,
			`replctl: warning: service "stores" has no table "nope" (its tables: managers)`, "auto"},
		{"service that owns no table", []string{"mode", "set", "products/orders", "pull"}, 0,
			`replctl: warning: service "products" owns no table known to the broker, so not "orders"`, "pull"},
		{"unknown service, strict", []string{"mode", "set", "nosvc2/nope", "pull", "-strict"}, 1,
			`replctl: mode set: the broker knows no service "nosvc2"; override not set (-strict)`, ""},
		{"strict is a flag of mode set", []string{"-strict", "mode", "set", "stores/nope2", "pull"}, 2, "flag provided but not defined: -strict", ""},
		{"clear of an unknown table", []string{"mode", "set", "-strict", "nosvc/nope", "clear"}, 0, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := ctl(t, nil, append([]string{br}, tc.args...)...)
			if r.code != tc.code {
				t.Fatalf("exit %d, want %d: %v", r.code, tc.code, r)
			}
			if tc.stderr == "" && r.stderr != "" || !strings.Contains(r.stderr, tc.stderr) {
				t.Fatalf("stderr %q, want %q", r.stderr, tc.stderr)
			}
			table := tc.args[len(tc.args)-2]
			if tc.args[len(tc.args)-1] == "-strict" {
				table = tc.args[len(tc.args)-3]
			}
			if got := registry(t, broker).Overrides[table]; got != tc.setMode {
				t.Fatalf("override of %s = %q, want %q", table, got, tc.setMode)
			}
		})
	}
}
