# The system-call helpers' shared types and C verbs: Statx, whose fields fastvfs/fs/_tables.pyx
# reads directly to pack a fuse_attr (pack_attr_of), and the one switch of a thread to a guest
# caller's file-system ids and umask (``creds_enter``), for the file system's
# caller_credentials and the hot path's creations alike.

from libc.stdint cimport int64_t, uint32_t, uint64_t


cdef class Statx:
    cdef readonly uint64_t st_ino, st_size, st_blocks, st_dev, st_rdev, st_mnt_id
    cdef readonly uint32_t st_mode, st_nlink, st_uid, st_gid, st_blksize
    cdef readonly int64_t st_atime_ns, st_mtime_ns, st_ctime_ns


# A thread's file-system ids and umask: the caller's to take on (``umask`` -1 leaves the
# thread's umask as it is), or what ``creds_enter`` saved to restore.
cdef struct FsCreds:
    uint32_t uid
    uint32_t gid
    int umask
    bint switched           # saved: the ids were others than the caller's (restore them)

cdef int own_fs() noexcept nogil
cdef int creds_enter(const FsCreds *caller, FsCreds *saved) noexcept nogil
cdef void creds_leave(const FsCreds *saved) noexcept nogil
