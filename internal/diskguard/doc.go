// Package diskguard keeps a badger database from faulting on a full disk:
// a full disk must be an error, not a crash. It knows nothing of what is
// stored (no badger, no transport; only the standard library): a write is
// its keys' and values' sizes and how many copies of each are written
// (Cost), and the guarded directory is the database's data dir. Package
// replica opens one Guard per on-disk component.
//
// badger writes its memtable write-ahead logs (*.mem), its value log
// (*.vlog), its discard stats and its tables through memory maps of sparse
// files (ristretto's z.OpenMmapFile truncates a new file to its maximum
// size instead of allocating it). Touching a page the file system cannot
// allocate raises SIGBUS, which Go cannot turn into an error: the process
// dies. So the guard keeps badger from ever touching an unallocated page
// when the space for it may be missing:
//
//   - The Guard measures the data dir's free space (statfs) and refuses
//     every write while it is below a reserve that covers what badger may
//     still write through its maps on its own: the next memtable's log, the
//     flush of the full one, a window of the value log and metadata (policy;
//     the ballast below adds room for a flush at Close and compaction
//     output). The owner's committer asks before each group commit, a
//     replica before each apply and each chunk of a full transfer
//     (Guard.Admit). A refused write writes nothing and fails with a
//     DiskFullError (ErrDiskFull); a replica stops applying, keeps serving
//     reads, reports the error in its Status, retries with backoff and
//     resumes from its seq once space is back (Guard.Wait).
//   - The guard preallocates (fallocate, FALLOC_FL_KEEP_SIZE) the part of
//     the active memtable log that badger can write, a window of the active
//     value log ahead of what was written, and the discard stats file, so
//     that the writes admitted while space ran out (by someone else) land
//     in allocated blocks. A preallocation that fails for lack of space
//     trips the guard too.
//   - Part of the headroom is held as a preallocated file in the data dir
//     (ballastName): free space can be taken by another process, this
//     cannot. It is the room for what badger does on its own once writes
//     stop: the flush of the memtable in Close (released there when short
//     of space, Guard.Closing), and flushes or compactions that start while
//     the disk is full (released once nothing has been free for a whole
//     interval). It is made again once there is room for it and the
//     reserve.
//
// The measurement is cached: refreshed every checkInterval (Guard.Run)
// and, on the write path, whenever more than policy.refreshBytes were
// admitted since the last one.
//
// What remains (honestly): when this component is what fills the disk,
// its writes stop at the reserve and badger's own work after that fits in
// the reserve and the ballast. When another process takes the last free
// blocks, the guard narrows the window but cannot close it: until its next
// measurement (up to checkInterval, or refreshBytes of writes), badger
// faults if it (a) starts a new memtable (the new log is written before
// the guard preallocates it), (b) writes a table (a flush or compaction in
// progress: the ballast is released only once the disk has stayed full
// for an interval), or (c) writes into the value log past the
// preallocated window (one oversized batch). Later, table writes needing
// more than the ballast fault too, and a process that keeps taking space
// takes the released ballast as well. The value log window follows what
// was admitted, which is approximate across a value log rotation (writes
// in flight at the rotation are not counted). On file systems without
// fallocate (EOPNOTSUPP) nothing is preallocated and the reserve grows by
// what would have been. Builds for other systems than Linux have no statfs
// here: the guard is off there (see sys_other.go).
package diskguard
