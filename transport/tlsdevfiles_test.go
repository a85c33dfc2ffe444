package transport

import (
	"os"
	"testing"
	"time"
)

func TestDevCA_IssueFiles(t *testing.T) {
	ca, err := NewDevCA("replmesh.test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	id := Identity{Role: RoleService, Service: "stores", Instance: "stores-1"}
	f, err := ca.IssueFiles(dir, LeafRequest{Identity: id, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	src, err := NewTLSSource(f, nil)
	if err != nil {
		t.Fatal(err)
	}
	id.TrustDomain = "replmesh.test"
	if got := src.Identity(); got != id {
		t.Fatalf("identity %s, want %s", got, id)
	}
	before := src.NotAfter()
	// Issuing again rotates: the source loads the new leaf.
	if _, err := ca.IssueFiles(dir, LeafRequest{Identity: id, Validity: 30 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	if err := src.Reload(); err != nil {
		t.Fatal(err)
	}
	if !src.NotAfter().Before(before) {
		t.Fatalf("not after %v, want before %v (the rotated leaf)", src.NotAfter(), before)
	}
	if st, err := os.Stat(f.Key); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", st.Mode(), err)
	}
}
