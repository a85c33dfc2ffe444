package cputime

import (
	"testing"
	"time"
)

func TestParseStatCPU(t *testing.T) {
	tests := []struct {
		line string
		want time.Duration
		ok   bool
	}{
		{"cpu  100 20 30 5000 40 1 2 3 7 8", 156 * 10 * time.Millisecond, true},
		{"cpu  100 20 30 5000 40 1 2", 153 * 10 * time.Millisecond, true},
		{"cpu0 100 20 30 5000 40 1 2 3 0 0", 0, false},
		{"cpu  100 x 30 5000 40 1 2 3 0 0", 0, false},
		{"cpu  100", 0, false},
		{"", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.line, func(t *testing.T) {
			got, ok := parseStatCPU(tt.line)
			if got != tt.want || ok != tt.ok {
				t.Fatalf("parseStatCPU(%q) = %v, %v; want %v, %v", tt.line, got, ok, tt.want, tt.ok)
			}
		})
	}
}
