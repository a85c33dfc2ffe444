package diskguard

import (
	"errors"
	"fmt"
)

// ErrDiskFull is returned (wrapped in a DiskFullError) by a write refused
// because the file system of the guarded data dir has too little free
// space for it to be written safely. Nothing of a refused write is
// written. Package replica re-exports it as replica.ErrDiskFull.
var ErrDiskFull = errors.New("replica: no space left on the data dir's file system")

// DiskFullError says how much space a refused write needed. It wraps
// ErrDiskFull and the cause (syscall.ENOSPC when the free space was below
// the reserve, or the error of a failed preallocation).
type DiskFullError struct {
	Dir  string // the guarded data dir (replica's Config.DataDir)
	Free int64  // bytes free, as last measured, minus what was admitted since
	Need int64  // bytes that must be free: the reserve plus this write
	Err  error  // the cause
}

func (e *DiskFullError) Error() string {
	return fmt.Sprintf("replica: no space left on the file system of %s: %s free, %s needed "+
		"(a reserve for the database's memory-mapped files plus the write); writes resume once space is freed: %v",
		e.Dir, fmtBytes(e.Free), fmtBytes(e.Need), e.Err)
}

// Unwrap returns ErrDiskFull and the cause.
func (e *DiskFullError) Unwrap() []error { return []error{ErrDiskFull, e.Err} }

func fmtBytes(n int64) string {
	if n < 0 {
		n = 0
	}
	const mib = 1 << 20
	if n < mib {
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/mib)
}
