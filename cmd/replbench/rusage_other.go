//go:build !linux

package main

import "os"

// maxRSS is unknown here (rusage units differ between systems).
func maxRSS(*os.ProcessState) int64 { return 0 }
