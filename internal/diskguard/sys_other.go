//go:build !linux

package diskguard

import (
	"errors"
	"os"
)

// errUnsupported: this system has no statfs or fallocate here. The guard
// is off on such builds: writes are never refused for lack of space, and a
// full disk can still crash the process inside badger (see the package
// comment).
var errUnsupported = errors.New("not supported on this system")

func statfsFree(string) (int64, error) { return 0, errUnsupported }

func fallocate(*os.File, int64, int64) error { return errUnsupported }

func allocated(fi os.FileInfo) int64 { return fi.Size() }
