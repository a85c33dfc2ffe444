package modes_test

import (
	"strings"
	"testing"

	"github.com/replmesh/replmesh/modes"
	"github.com/replmesh/replmesh/transport"
)

// The table names of a modes file follow transport.ValidName, the one
// name rule, in both halves of SERVICE/TABLE.
func TestTableNames_AgreeWithTransport(t *testing.T) {
	names := []string{"stores", "AZaz09_.-", "a", ".", strings.Repeat("x", 128), strings.Repeat("x", 129),
		"", "a b", "host:1", "a\n", "\na", "café", "a\x00", "a\xff", "a*", "a+b"}
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			for _, key := range []string{"svc/" + name, name + "/tbl"} {
				c := &modes.Config{Tables: map[string]modes.TableConfig{key: {}}}
				err := c.Validate()
				if got, want := err == nil, transport.ValidName(name); got != want {
					t.Fatalf("modes accepts %q: %v (err %v); transport.ValidName(%q) = %v", key, got, err, name, want)
				}
			}
		})
	}
}
