package depcheck

import (
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// graph lists every package of the module with go list.
func graph(t *testing.T) (string, []Package) {
	t.Helper()
	out, err := exec.Command("go", "list", "-m").Output()
	if err != nil {
		t.Fatalf("go list -m: %v", err)
	}
	mod := strings.TrimSpace(string(out))
	cmd := exec.Command("go", "list", "-json", mod+"/...")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var pkgs []Package
	dec := json.NewDecoder(stdout)
	for {
		var p struct {
			ImportPath                         string
			Imports, TestImports, XTestImports []string
			Deps                               []string
		}
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("go list -json: %v", err)
		}
		pkgs = append(pkgs, Package{
			Path:    p.ImportPath,
			Imports: slices.Concat(p.Imports, p.TestImports, p.XTestImports),
			Deps:    p.Deps,
		})
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("go list -json: %v\n%s", err, stderr.String())
	}
	return mod, pkgs
}

// TestImportRules checks the import graph of the whole module (see the
// package comment and docs/design.md).
func TestImportRules(t *testing.T) {
	mod, pkgs := graph(t)
	for _, want := range []string{"transport", "modes", "replica", "broker", "cmd/replctl", "internal/testutil"} {
		if !slices.ContainsFunc(pkgs, func(p Package) bool { return p.Path == mod+"/"+want }) {
			t.Fatalf("go list found no package %s among %d: the graph is not the module's", want, len(pkgs))
		}
	}
	for _, v := range Check(mod, pkgs) {
		t.Error(v)
	}
}

func TestPlace(t *testing.T) {
	tests := []struct {
		rel   string
		layer Layer
		tree  string
	}{
		{"transport", Bottom, "transport"},
		{"transport/transporttest", Bottom, "transport"},
		{"modes", Bottom, "modes"},
		{"replica", Middle, "replica"},
		{"replica/internal/x", Middle, "replica"},
		{"broker", Middle, "broker"},
		{"cmd/replctl", Top, "cmd/replctl"},
		{"examples/marketplace/cmd/internal/svc", Top, "examples/marketplace"},
		{"chaos/cmd/chaosnode", Top, "chaos"},
		{"internal/integration", Top, "internal/integration"},
		{"internal/depcheck", Top, "internal/depcheck"},
		{"internal/benchkit", Top, "internal/benchkit"},
		{"internal/testutil", Helper, "internal/testutil"},
		{"internal/freeport", Helper, "internal/freeport"},
		{"", NoLayer, ""},
		{"cmd", NoLayer, "cmd"},
		{"internal", NoLayer, "internal"},
		{"tools/gen", NoLayer, "tools/gen"},
	}
	for _, tt := range tests {
		t.Run(tt.rel, func(t *testing.T) {
			l, tree := Place(tt.rel)
			if l != tt.layer || tree != tt.tree {
				t.Errorf("Place(%q) = %s, %q; want %s, %q", tt.rel, l, tree, tt.layer, tt.tree)
			}
		})
	}
}

func TestCheck(t *testing.T) {
	const mod = "example.com/m"
	m := func(rel string) string { return mod + "/" + rel }
	const (
		badger     = "github.com/dgraph-io/badger/v4"
		memberlist = "github.com/hashicorp/memberlist"
		grpc       = "google.golang.org/grpc"
	)
	tests := []struct {
		name string
		pkg  Package
		want []string // the violations, in order
	}{
		// Allowed.
		{"bottom imports a helper and third-party", Package{Path: m("transport"), Imports: []string{m("internal/testutil"), grpc}}, nil},
		{"bottom test imports itself", Package{Path: m("modes"), Imports: []string{m("modes")}}, nil},
		{"modes sits on transport", Package{Path: m("modes"), Imports: []string{m("transport")}}, nil},
		{"helper imports a helper", Package{Path: m("internal/testutil"), Imports: []string{m("internal/freeport")}}, nil},
		{"middle imports the bottom", Package{Path: m("replica"), Imports: []string{m("transport"), m("modes"), m("internal/faultproxy")}}, nil},
		{"middle subpackage imports its parent", Package{Path: m("replica/sink"), Imports: []string{m("replica")}}, nil},
		{"replica uses badger", Package{Path: m("replica"), Imports: []string{badger}, Deps: []string{badger, badger + "/y"}}, nil},
		{"broker uses memberlist", Package{Path: m("broker"), Imports: []string{memberlist}, Deps: []string{memberlist}}, nil},
		{"top imports everything below", Package{Path: m("cmd/replctl"), Imports: []string{m("broker"), m("replica"), m("transport"), m("internal/testutil")}}, nil},
		{"top uses memberlist", Package{Path: m("cmd/replbroker"), Imports: []string{memberlist}, Deps: []string{memberlist, badger}}, nil},
		{"top imports its own tree", Package{Path: m("chaos/cmd/chaosnode"), Imports: []string{m("chaos")}}, nil},
		{"examples import their own tree", Package{Path: m("examples/marketplace/cmd/products"), Imports: []string{m("examples/marketplace/cmd/internal/svc"), m("examples/marketplace/stores")}}, nil},
		{"a suite imports both middles", Package{Path: m("internal/integration"), Imports: []string{m("broker"), m("replica")}}, nil},
		{"outside imports a public package", Package{Path: "example.com/other", Imports: []string{m("replica")}}, nil},
		{"a shared library of the top uses replica", Package{Path: m("internal/benchkit"), Imports: []string{m("replica")}, Deps: []string{badger}}, nil},
		{"a top tree imports a shared library", Package{Path: m("cmd/replbench"), Imports: []string{m("internal/benchkit")}}, nil},

		// Violations.
		{"replica imports broker", Package{Path: m("replica"), Imports: []string{m("broker")}},
			[]string{"replica imports broker: replica and broker never import each other"}},
		{"broker test imports replica", Package{Path: m("broker"), Imports: []string{m("replica/sink")}},
			[]string{"broker imports replica/sink: replica and broker never import each other"}},
		{"bottom imports bottom", Package{Path: m("transport"), Imports: []string{m("modes")}},
			[]string{"transport imports modes: the bottom packages import nothing of ours but helpers"}},
		{"bottom imports middle", Package{Path: m("modes"), Imports: []string{m("replica")}},
			[]string{"modes (bottom) imports replica (middle): imports run down, never up"}},
		{"helper imports bottom", Package{Path: m("internal/testutil"), Imports: []string{m("transport")}},
			[]string{"internal/testutil (helper) imports transport (bottom): imports run down, never up"}},
		{"middle imports cmd", Package{Path: m("broker"), Imports: []string{m("cmd/replctl")}},
			[]string{"broker (middle) imports cmd/replctl (top): imports run down, never up"}},
		{"cmd imports another cmd", Package{Path: m("cmd/replctl"), Imports: []string{m("cmd/replbroker")}},
			[]string{"cmd/replctl imports cmd/replbroker: nothing imports another tree of cmd, examples or chaos"}},
		{"chaos imports examples", Package{Path: m("chaos"), Imports: []string{m("examples/marketplace")}},
			[]string{"chaos imports examples/marketplace: nothing imports another tree of cmd, examples or chaos"}},
		{"cmd imports examples", Package{Path: m("cmd/replbench"), Imports: []string{m("examples/marketplace/stores")}},
			[]string{"cmd/replbench imports examples/marketplace/stores: nothing imports another tree of cmd, examples or chaos"}},
		{"examples import cmd", Package{Path: m("examples/marketplace"), Imports: []string{m("cmd/replbench")}},
			[]string{"examples/marketplace imports cmd/replbench: nothing imports another tree of cmd, examples or chaos"}},
		{"a shared library imports a top tree", Package{Path: m("internal/benchkit"), Imports: []string{m("cmd/replbench")}},
			[]string{"internal/benchkit imports cmd/replbench: nothing imports another tree of cmd, examples or chaos"}},
		{"a helper imports a shared library of the top", Package{Path: m("internal/testutil"), Imports: []string{m("internal/benchkit")}},
			[]string{"internal/testutil (helper) imports internal/benchkit (top): imports run down, never up"}},
		{"a package that fits no layer", Package{Path: m("tools/gen"), Imports: []string{m("transport")}},
			[]string{mod + "/tools/gen fits no layer: place it in depcheck.Place and docs/design.md"}},
		{"an import of a package that fits no layer", Package{Path: m("cmd/replctl"), Imports: []string{m("util")}},
			[]string{"cmd/replctl imports util, which fits no layer"}},
		{"outside imports internal", Package{Path: "example.com/other", Imports: []string{m("internal/testutil")}},
			[]string{"example.com/other imports " + mod + "/internal/testutil: internal packages are for the module only"}},
		{"broker uses badger (its raft log)", Package{Path: m("broker"), Imports: []string{badger}, Deps: []string{badger}}, nil},
		{"modes imports badger", Package{Path: m("modes"), Imports: []string{badger}, Deps: []string{badger}},
			[]string{
				"modes depends on " + badger + ": only replica and broker does, below the top",
				"modes imports " + badger + ": only replica and broker does, below the top",
			}},
		{"transport reaches badger through a dependency", Package{Path: m("transport"), Imports: []string{"example.com/kv"}, Deps: []string{"example.com/kv", badger + "/y"}},
			[]string{"transport depends on " + badger + "/y: only replica and broker does, below the top"}},
		{"replica test imports memberlist", Package{Path: m("replica"), Imports: []string{memberlist + "/x"}},
			[]string{"replica imports " + memberlist + "/x: only broker does, below the top"}},
		{"a helper reaches memberlist", Package{Path: m("internal/faultproxy"), Deps: []string{memberlist}},
			[]string{"internal/faultproxy depends on " + memberlist + ": only broker does, below the top"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Check(mod, []Package{tt.pkg})
			if !slices.Equal(got, tt.want) {
				t.Errorf("Check:\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}
