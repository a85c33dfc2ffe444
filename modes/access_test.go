package modes

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/replmesh/replmesh/internal/testutil"
)

const exampleAccessPolicy = `version: 1
tables:
  stores/stores: {readers: [products]}
  stores/store_managers:
    readers: [products, billing]
  audit/*:
    readers: [ops]
limits:
  products:
    registrations: 16
    subscriptions: 512
`

func TestParseAccessPolicy_MayRead(t *testing.T) {
	p, err := ParseAccessPolicy([]byte(exampleAccessPolicy))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		owner, table, reader string
		want                 bool
	}{
		{"stores", "stores", "products", true},
		{"stores", "stores", "billing", false},
		{"stores", "store_managers", "billing", true},
		{"stores", "other", "products", false},
		{"stores", "anything", "stores", true}, // the owner itself
		{"audit", "log", "ops", true},          // SERVICE/*
		{"audit", "log", "products", false},
		{"products", "products", "stores", false}, // default deny
	}
	for _, tc := range tests {
		t.Run(tc.owner+"/"+tc.table+" by "+tc.reader, func(t *testing.T) {
			if got := p.MayRead(tc.owner, tc.table, tc.reader); got != tc.want {
				t.Fatalf("MayRead = %v, want %v", got, tc.want)
			}
		})
	}
	svc := []struct {
		owner, reader string
		want          bool
	}{
		{"stores", "products", true},
		{"stores", "billing", true},
		{"stores", "ops", false},
		{"audit", "ops", true},
		{"products", "products", true},
		{"products", "stores", false},
	}
	for _, tc := range svc {
		t.Run("service "+tc.owner+" by "+tc.reader, func(t *testing.T) {
			if got := p.MayReadService(tc.owner, tc.reader); got != tc.want {
				t.Fatalf("MayReadService = %v, want %v", got, tc.want)
			}
		})
	}
	if got, want := p.Readers("stores", "store_managers"), []string{"billing", "products"}; !slices.Equal(got, want) {
		t.Fatalf("Readers = %v, want %v", got, want)
	}
	if l, ok := p.Limits("products"); !ok || l != (Limits{Registrations: 16, Subscriptions: 512}) {
		t.Fatalf("Limits(products) = %+v, %v", l, ok)
	}
	if _, ok := p.Limits("stores"); ok {
		t.Fatal("Limits(stores) set")
	}
}

func TestAccessPolicy_Nil(t *testing.T) {
	var p *AccessPolicy
	if !p.MayRead("stores", "t", "stores") || p.MayRead("stores", "t", "products") {
		t.Fatal("a nil policy must allow the owner only")
	}
	if p.MayReadService("stores", "products") || !p.MayReadService("stores", "stores") {
		t.Fatal("a nil policy must allow the owner only")
	}
	if _, ok := p.Limits("stores"); ok {
		t.Fatal("a nil policy sets no limits")
	}
}

func TestAccessPolicy_Code(t *testing.T) {
	p := NewAccessPolicy()
	if err := p.Allow("stores", "stores", "products"); err != nil {
		t.Fatal(err)
	}
	if err := p.Allow("stores", "stores", "billing", "products"); err != nil {
		t.Fatal(err)
	}
	if got := p.Readers("stores", "stores"); !slices.Equal(got, []string{"billing", "products"}) {
		t.Fatalf("Readers = %v", got)
	}
	bad := []struct {
		name string
		call func() error
	}{
		{"bad owner", func() error { return p.Allow("a b", "t", "x") }},
		{"bad table", func() error { return p.Allow("a", "t/u", "x") }},
		{"bad reader", func() error { return p.Allow("a", "t", "") }},
		{"negative limit", func() error { return p.SetLimits("a", Limits{Tables: -1}) }},
		{"bad limit service", func() error { return p.SetLimits("..", Limits{}) }},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			if tc.call() == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func TestParseAccessPolicy_Errors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		line int
		want string
	}{
		{"empty", "", 0, "empty policy (want at least `version: 1`)"},
		{"too large", "version: 1\n" + strings.Repeat("#", maxPolicySize), 0, "the file is 4194315 bytes, at most 4194304"},
		{"no version", "tables: {}\n", 1, "version: missing"},
		{"bad version", "version: 2\n", 1, "unsupported version 2"},
		{"version not int", "version: one\n", 1, `version: want an integer, got "one"`},
		{"version empty", "version:\n", 1, "version: want a value, got nothing"},
		{"anchored version", "version: &v 1\n", 1, "version: anchors and aliases are not allowed in a policy file"},
		{"unknown top key", "version: 1\nrules: {}\n", 2, `unknown key "rules"`},
		{"duplicate top key", "version: 1\ntables: {}\ntables: {}\n", 3, `duplicate key "tables" (first at line 2)`},
		{"duplicate table", "version: 1\ntables:\n  s/t: {readers: []}\n  s/t: {readers: []}\n", 4, `tables[s/t]: duplicate key "s/t" (first at line 3)`},
		{"duplicate limit", "version: 1\nlimits:\n  s: {tables: 1}\n  s: {tables: 2}\n", 4, `limits[s]: duplicate key "s" (first at line 3)`},
		{"duplicate limit key", "version: 1\nlimits:\n  s:\n    tables: 1\n    tables: 2\n", 5, `limits[s].tables: duplicate key "tables" (first at line 4)`},
		{"no slash", "version: 1\ntables:\n  stores: {readers: [a]}\n", 3, "want SERVICE/TABLE"},
		{"bad service", "version: 1\ntables:\n  st ores/t: {readers: [a]}\n", 3, `service "st ores"`},
		{"bad table", "version: 1\ntables:\n  s/t/u: {readers: [a]}\n", 3, `table "t/u"`},
		{"unknown table key", "version: 1\ntables:\n  s/t:\n    readers: [a]\n    writers: [b]\n", 5, `unknown key "writers"`},
		{"no readers", "version: 1\ntables:\n  s/t: {}\n", 3, "no readers"},
		{"readers not list", "version: 1\ntables:\n  s/t: {readers: a}\n", 3, "want a list of service names"},
		{"bad reader", "version: 1\ntables:\n  s/t:\n    readers: [ok, \"x y\"]\n", 4, `service "x y"`},
		{"reader twice", "version: 1\ntables:\n  s/t:\n    readers:\n      - a\n      - a\n", 6, `"a" listed twice (first at line 5)`},
		{"reader not string", "version: 1\ntables:\n  s/t: {readers: [[a]]}\n", 3, "want a service name"},
		{"alias", "version: 1\ntables: &r {}\n", 2, "anchors and aliases"},
		{"alias in readers", "version: 1\ntables:\n  s/t: {readers: &x [a]}\n  s/u: {readers: *x}\n", 3, "anchors and aliases"},
		{"merge key", "version: 1\ntables:\n  s/t:\n    readers: []\n    <<: {readers: [a]}\n", 5, "keys must be strings"},
		{"alias in limits", "version: 1\ntables:\n  s/t: {readers: [a]}\nlimits:\n  s: {tables: &n 1, subscriptions: *n}\n", 5, "limits[s].tables: anchors and aliases"},
		{"unknown limit", "version: 1\nlimits:\n  s:\n    streams: 3\n", 4, `unknown key "streams"`},
		{"negative limit", "version: 1\nlimits:\n  s: {tables: -1}\n", 3, "must be 0"},
		{"limit not int", "version: 1\nlimits:\n  s: {tables: many}\n", 3, "want an integer"},
		{"bad limit service", "version: 1\nlimits:\n  \"a b\": {tables: 1}\n", 3, `service "a b"`},
		{"syntax", "version: 1\ntables: [\n", 2, "YAML syntax"},
		{"two documents", "version: 1\n---\nversion: 1\n", 2, "more than one YAML document"},
		{"not a mapping", "- a\n", 1, "want a mapping with version"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseAccessPolicy([]byte(tc.in))
			if err == nil {
				t.Fatal("accepted")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("%v does not wrap ErrInvalid", err)
			}
			var pe *Error
			if !errors.As(err, &pe) {
				t.Fatalf("%v is not a *Error", err)
			}
			if pe.Line != tc.line || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %q (line %d), want line %d and %q", err, pe.Line, tc.line, tc.want)
			}
		})
	}
}

func TestParseAccessPolicy_AllErrors(t *testing.T) {
	_, err := ParseAccessPolicy([]byte("version: 1\ntables:\n  s: {readers: [a]}\n  t/u: {readers: [\"b c\"]}\nfoo: 1\n"))
	msg := err.Error()
	for _, want := range []string{"line 3: tables[s]", "line 4: tables[t/u].readers", "line 5: foo"} {
		if !strings.Contains(msg, want) {
			t.Errorf("%q does not contain %q", msg, want)
		}
	}
}

func TestLoadAccessPolicy(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, []byte("version: 1\ntables:\n  s/t: {readers: [a]}\n  s/t: {readers: [a]}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := LoadAccessPolicy(path)
	if err == nil || !strings.HasPrefix(err.Error(), path+": line 4: ") {
		t.Fatalf("LoadAccessPolicy: %v, want an error starting with the file and line", err)
	}
	if _, err := LoadAccessPolicy(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Fatal("LoadAccessPolicy of a missing file succeeded")
	}
}

// FuzzParseAccessPolicy: parsing arbitrary bytes never panics; it either
// fails with *Error values wrapping ErrInvalid, or returns a policy whose
// entries are valid names (Allow accepts them again), allocating a bounded
// amount per input byte.
func FuzzParseAccessPolicy(f *testing.F) {
	f.Add([]byte(exampleAccessPolicy))
	f.Add([]byte("version: 1\n"))
	f.Add([]byte("version: 1\ntables:\n  s/*: {readers: [a, b]}\n"))
	f.Add([]byte("version: 1\nr: &r [a]\ns: *r\n"))
	f.Add([]byte("version: 1\nlimits: {a: {registrations: 1, tables: 2, subscriptions: 3}}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		before := testutil.HeapAllocated()
		p, err := ParseAccessPolicy(b)
		if alloc := testutil.HeapAllocated() - before; alloc > uint64(len(b))*4096+1<<20 {
			t.Fatalf("parsing %d bytes allocated %d", len(b), alloc)
		}
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		q := NewAccessPolicy()
		for k, rs := range p.readers {
			owner, table, _ := strings.Cut(k, "/")
			if err := q.Allow(owner, table, rs...); err != nil {
				t.Fatalf("parsed entry %s %v is not valid: %v", k, rs, err)
			}
			for _, r := range rs {
				if !p.MayRead(owner, table, r) {
					t.Fatalf("%s listed as a reader of %s but may not read it", r, k)
				}
			}
		}
		for s, l := range p.limits {
			if err := q.SetLimits(s, l); err != nil {
				t.Fatalf("parsed limits %s %+v are not valid: %v", s, l, err)
			}
		}
	})
}
