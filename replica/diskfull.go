package replica

import (
	"github.com/replmesh/replmesh/internal/diskguard"
	"github.com/replmesh/replmesh/transport"
)

// The disk guard (package internal/diskguard) keeps badger from faulting
// on a full disk: a component with a data dir asks it before every write
// (the committer before a group commit, a replica before an apply and each
// chunk of a full transfer, the dropper before deleting a generation) and
// writes nothing when it refuses. Its package comment says how, and what
// it cannot prevent.

// ErrDiskFull is returned (wrapped in a DiskFullError) by a write refused
// because the file system of Config.DataDir has too little free space for
// it to be written safely. Nothing of a refused write is written. A
// replica that cannot apply for that reason reports it in Status.LastErr
// and resumes by itself once space is freed.
var ErrDiskFull = diskguard.ErrDiskFull

// DiskFullError says how much space a refused write needed. It wraps
// ErrDiskFull and the cause (syscall.ENOSPC when the free space was below
// the reserve, or the error of a failed preallocation).
type DiskFullError = diskguard.DiskFullError

// changesCost is what writing chs adds to badger's files, each change
// written copies times (an owner writes a row and a log entry, a replica a
// row).
func changesCost(chs []transport.Change, copies int) diskguard.Cost {
	var w diskguard.Cost
	for i := range chs {
		w.Add(len(chs[i].Key), len(chs[i].Value), copies)
	}
	return w
}

// rowsCost is what writing a full transfer's rows adds to badger's files.
func rowsCost(rows []transport.Row) diskguard.Cost {
	var w diskguard.Cost
	for i := range rows {
		w.Add(len(rows[i].Key), len(rows[i].Value), 1)
	}
	return w
}
