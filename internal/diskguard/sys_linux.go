package diskguard

import (
	"errors"
	"os"
	"syscall"
)

// errUnsupported: this system has no statfs or fallocate here.
var errUnsupported = errors.New("not supported on this system")

// statfsFree returns the bytes an unprivileged user may still allocate on
// the file system holding dir.
func statfsFree(dir string) (int64, error) {
	var st syscall.Statfs_t
	for {
		err := syscall.Statfs(dir, &st)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return 0, &os.PathError{Op: "statfs", Path: dir, Err: err}
		}
		return int64(st.Bavail) * int64(st.Bsize), nil // Bsize is int32 on 32-bit systems
	}
}

// fallocKeepSize is FALLOC_FL_KEEP_SIZE: allocate without changing the
// file's size (badger truncates its files itself; a preallocation racing
// with such a truncation must not grow the file back).
const fallocKeepSize = 0x1

// fallocate allocates the blocks of [off, off+n) of f.
func fallocate(f *os.File, off, n int64) error {
	sc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := sc.Control(func(fd uintptr) {
		for {
			ferr = syscall.Fallocate(int(fd), fallocKeepSize, off, n)
			if ferr != syscall.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	return ferr
}

// allocated is the space a file takes on disk (its blocks, not its size:
// badger's files are sparse).
func allocated(fi os.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}
