//go:build race

package main

// Under -race the replctl binary the tests run is built with -race too.
func init() { raceBuild = true }
