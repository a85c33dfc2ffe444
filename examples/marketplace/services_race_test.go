//go:build race

package main

// Under -race the stores and products binaries the tests run are built
// with -race too.
func init() { svcRaceBuild = true }
