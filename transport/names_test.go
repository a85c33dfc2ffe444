package transport

import (
	"strings"
	"testing"
)

func TestValidName(t *testing.T) {
	tests := []struct {
		name string
		s    string
		want bool
	}{
		{"letters", "stores", true},
		{"every allowed character", "AZaz09_.-", true},
		{"one character", "a", true},
		{"a dot alone", ".", true},
		{"128 characters", strings.Repeat("x", 128), true},
		{"empty", "", false},
		{"129 characters", strings.Repeat("x", 129), false},
		{"space", "a b", false},
		{"slash", "stores/t", false},
		{"colon", "host:1", false},
		{"trailing newline", "a\n", false},
		{"leading newline", "\na", false},
		{"non-ASCII letter", "café", false},
		{"NUL", "a\x00", false},
		{"invalid UTF-8", "a\xff", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ValidName(tt.s); got != tt.want {
				t.Fatalf("ValidName(%q) = %v, want %v", tt.s, got, tt.want)
			}
			err := CheckName("Config.Service", tt.s)
			if (err == nil) != tt.want {
				t.Fatalf("CheckName(%q) = %v, want ok=%v", tt.s, err, tt.want)
			}
		})
	}
}

func TestCheckName_Message(t *testing.T) {
	err := CheckName("Register.Instance", "a b")
	want := `Register.Instance "a b" must be 1-128 characters of A-Z a-z 0-9 _ . -`
	if err == nil || err.Error() != want {
		t.Fatalf("CheckName = %v, want %q", err, want)
	}
}
