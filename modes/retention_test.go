package modes

import (
	"testing"
	"time"
)

func TestDefaultRetention(t *testing.T) {
	want := Retention{MaxChanges: 1_000_000, MaxBytes: 1 << 30, MaxAge: 24 * time.Hour}
	if got := DefaultRetention(); got != want {
		t.Fatalf("DefaultRetention() = %+v, want %+v", got, want)
	}
	if got := DefaultSettings().Retention; got != want {
		t.Fatalf("DefaultSettings().Retention = %+v, want %+v", got, want)
	}
}

func TestRetentionConfig_Over(t *testing.T) {
	base := Retention{MaxChanges: 100, MaxBytes: 1 << 20, MaxAge: time.Hour}
	tests := []struct {
		name string
		c    RetentionConfig
		want Retention
	}{
		{"nothing set keeps the base", RetentionConfig{}, base},
		{"max changes", RetentionConfig{MaxChanges: new(uint64(7))}, Retention{MaxChanges: 7, MaxBytes: 1 << 20, MaxAge: time.Hour}},
		{"max bytes", RetentionConfig{MaxBytes: new(int64(512))}, Retention{MaxChanges: 100, MaxBytes: 512, MaxAge: time.Hour}},
		{"max age", RetentionConfig{MaxAge: new(time.Minute)}, Retention{MaxChanges: 100, MaxBytes: 1 << 20, MaxAge: time.Minute}},
		{"an explicit zero is unlimited, not unset", RetentionConfig{MaxChanges: new(uint64(0)), MaxBytes: new(int64(0)), MaxAge: new(time.Duration(0))},
			Retention{}},
		{"every field", RetentionConfig{MaxChanges: new(uint64(1)), MaxBytes: new(int64(2)), MaxAge: new(time.Duration(3))},
			Retention{MaxChanges: 1, MaxBytes: 2, MaxAge: 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.c.Over(base); got != tt.want {
				t.Fatalf("Over = %+v, want %+v", got, tt.want)
			}
		})
	}
}
