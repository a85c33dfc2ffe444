package transport

import (
	"errors"
	"strings"
	"testing"
)

func TestIsLoopback(t *testing.T) {
	tests := []struct {
		addr string
		want bool
	}{
		{"127.0.0.1:0", true},
		{"127.0.0.1:7400", true},
		{"127.5.6.7:1", true},
		{"127.0.0.1", true},
		{"localhost", true},
		{"localhost:7400", true},
		{"LocalHost.:7400", true},
		{"[::1]:7400", true},
		{"::1", true},
		{"[::1]", true},
		{"[::ffff:127.0.0.1]:1", true},

		{":7400", false},
		{"0.0.0.0:7400", false},
		{"[::]:7400", false},
		{"10.0.0.5:7400", false},
		{"192.168.1.2", false},
		{"broker-1:7400", false},
		{"localhost.example.org:7400", false},
		{"[fe80::1%eth0]:7400", false},
		{"", false},
	}
	for _, tc := range tests {
		t.Run(tc.addr, func(t *testing.T) {
			if got := IsLoopback(tc.addr); got != tc.want {
				t.Fatalf("IsLoopback(%q) = %v, want %v", tc.addr, got, tc.want)
			}
		})
	}
}

func TestCheckTransportSecurity(t *testing.T) {
	tests := []struct {
		name     string
		addrs    []string
		tls      bool
		insecure bool
		wantErr  string // "": allowed
	}{
		{"loopback plaintext", []string{"127.0.0.1:0", "localhost:7400", "[::1]:1"}, false, false, ""},
		{"nothing", nil, false, false, ""},
		{"empty skipped", []string{"", "127.0.0.1:0"}, false, false, ""},
		{"non-loopback with TLS", []string{"0.0.0.0:7400", "10.0.0.5:7400"}, true, false, ""},
		{"non-loopback insecure", []string{":7400"}, false, true, ""},
		{"non-loopback TLS and insecure", []string{":7400"}, true, true, ""},
		{"every interface", []string{"127.0.0.1:0", ":7400"}, false, false, `":7400" is reachable from other hosts and TLS is off`},
		{"two", []string{"10.0.0.5:7400", "127.0.0.1:1", "broker-2:7400"}, false, false, `"10.0.0.5:7400", "broker-2:7400" are reachable`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckTransportSecurity(tc.addrs, tc.tls, tc.insecure)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("CheckTransportSecurity: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("CheckTransportSecurity = %v, want an error with %q", err, tc.wantErr)
			}
			if !errors.Is(err, ErrInsecureTransport) {
				t.Fatalf("%v does not wrap ErrInsecureTransport", err)
			}
			for _, fix := range []string{"configure TLS", "replctl tls ca create", "loopback address", "insecure option"} {
				if !strings.Contains(err.Error(), fix) {
					t.Errorf("the error does not say %q: %v", fix, err)
				}
			}
		})
	}
	if got := NonLoopback([]string{"127.0.0.1:1", "", ":1", "h:2"}); strings.Join(got, " ") != ":1 h:2" {
		t.Fatalf("NonLoopback = %q", got)
	}
}
