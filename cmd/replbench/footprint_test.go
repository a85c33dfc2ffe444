package main

import (
	"maps"
	"testing"
)

func TestRSSKinds(t *testing.T) {
	byName := map[string]int64{
		"[anon]":      10,
		"[heap]":      1,
		"[stack]":     2,
		"replbench":   100,
		"libc.so.6":   3,
		"00001.mem":   20,
		"00002.mem":   5,
		"000001.sst":  30,
		"000001.vlog": 4,
	}
	got := rssKinds(byName)
	want := map[string]int64{
		kindAnon:                   13,
		kindFiles:                  103,
		"badger WAL (.mem)":        25,
		"badger tables (.sst)":     30,
		"badger value log (.vlog)": 4,
	}
	if !maps.Equal(got, want) {
		t.Errorf("rssKinds = %v, want %v", got, want)
	}
}

func TestKindsAbove(t *testing.T) {
	kinds := map[string]int64{kindAnon: 5e6, "badger WAL (.mem)": 2e6, kindFiles: 18e6}
	floor := map[string]int64{kindAnon: 3e6, kindFiles: 16e6}
	got := kindsAbove(kinds, floor)
	want := "anonymous +2.0 MB, badger WAL (.mem) +2.0 MB, badger tables (.sst) +0.0 MB, badger value log (.vlog) +0.0 MB, code and other files +2.0 MB"
	if got != want {
		t.Errorf("kindsAbove = %q, want %q", got, want)
	}
}
