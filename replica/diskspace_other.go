//go:build !linux

package replica

import (
	"errors"
	"os"
)

// errDiskUnsupported: this system has no statfs or fallocate here. The
// disk guard is off on such builds: writes are never refused for lack of
// space, and a full disk can still crash the process inside badger (see
// diskspace.go).
var errDiskUnsupported = errors.New("not supported on this system")

func statfsFree(string) (int64, error) { return 0, errDiskUnsupported }

func fallocate(*os.File, int64, int64) error { return errDiskUnsupported }

func allocated(fi os.FileInfo) int64 { return fi.Size() }
