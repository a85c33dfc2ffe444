// Package depcheck holds the test that keeps the import rules of docs/design.md
// checkable: transport and modes import nothing of ours, replica and broker
// never import each other, only replica imports badger and only broker
// imports memberlist.
package depcheck

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

const mod = "github.com/replmesh/replmesh/"

func deps(t *testing.T, pkg string) []string {
	t.Helper()
	if _, err := os.Stat("../../" + pkg); os.IsNotExist(err) {
		t.Skipf("package %s does not exist yet", pkg)
	}
	out, err := exec.Command("go", "list", "-deps", mod+pkg).Output()
	if err != nil {
		t.Fatalf("go list %s: %v", pkg, err)
	}
	return strings.Fields(string(out))
}

func TestImportRules(t *testing.T) {
	tests := []struct {
		pkg       string
		forbidden []string // prefixes
	}{
		{"transport", []string{mod, "github.com/dgraph-io/badger", "github.com/hashicorp/memberlist"}},
		{"modes", []string{mod, "github.com/dgraph-io/badger", "github.com/hashicorp/memberlist"}},
		{"replica", []string{mod + "broker", mod + "cmd", "github.com/hashicorp/memberlist"}},
		{"broker", []string{mod + "replica", mod + "cmd", "github.com/dgraph-io/badger"}},
	}
	for _, tt := range tests {
		t.Run(tt.pkg, func(t *testing.T) {
			for _, d := range deps(t, tt.pkg) {
				if d == mod+tt.pkg || strings.HasPrefix(d, mod+tt.pkg+"/") {
					continue
				}
				for _, f := range tt.forbidden {
					if strings.HasPrefix(d, f) {
						t.Errorf("%s imports %s, which docs/design.md forbids", tt.pkg, d)
					}
				}
			}
		})
	}
}
