# cython: language_level=3, boundscheck=False, wraparound=False
"""System calls the passthrough filesystem needs and Python's ``os`` module does not offer.

Each wrapper raises ``OSError`` with the call's errno, like ``os`` does, and releases the GIL
around the call.  Everything here takes ``bytes`` names (the FUSE wire gives raw bytes).
"""

from fastvfs.includes.statx cimport (AT_EMPTY_PATH, AT_SYMLINK_NOFOLLOW, c_statx, makedev,
                                     statx, statx_timestamp)
from libc.errno cimport errno
from libc.stdint cimport uint16_t, uint32_t, uint64_t, int64_t

cdef extern from "<fcntl.h>" nogil:
    int renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath,
                  unsigned int flags)
    int fallocate(int fd, int mode, long offset, long len)

cdef extern from "<sys/stat.h>" nogil:
    struct timespec:
        long tv_sec
        long tv_nsec
    int utimensat(int dirfd, const char *path, const timespec *times, int flags)
    long UTIME_NOW
    long UTIME_OMIT

cdef extern from "<unistd.h>" nogil:
    int fchownat(int dirfd, const char *path, unsigned int owner, unsigned int group, int flags)
    int syncfs(int fd)
    long syscall(long number, ...)

cdef extern from "<sched.h>" nogil:
    int unshare(int flags)
    int CLONE_FS

cdef extern from "<sys/syscall.h>" nogil:
    long SYS_setfsuid
    long SYS_setfsgid
    long SYS_setgroups

cdef extern from *:
    """
    #ifndef STATX_MNT_ID
    #define STATX_MNT_ID 0x00001000U
    #endif
    #define FASTVFS_STATX_MASK (STATX_BASIC_STATS | STATX_MNT_ID)
    """
    unsigned int FASTVFS_STATX_MASK
    unsigned int STATX_MNT_ID

EMPTY_PATH = AT_EMPTY_PATH
SYMLINK_NOFOLLOW = AT_SYMLINK_NOFOLLOW
# Sentinels for utimens(): set to the current time, or leave unchanged.
NOW = -1
OMIT = -2


cdef inline int _raise() except -1:
    import os
    cdef int e = errno
    raise OSError(e, os.strerror(e))


cdef class Statx:
    """The fields of ``struct statx`` the filesystem uses, named as ``os.stat_result`` names them.

    ``st_mnt_id`` completes the inode key (st_dev, st_ino, mount id): two bind mounts of one
    file system show the same st_dev and st_ino but are different places in the tree.
    """
    cdef readonly uint64_t st_ino, st_size, st_blocks, st_dev, st_rdev, st_mnt_id
    cdef readonly uint32_t st_mode, st_nlink, st_uid, st_gid, st_blksize
    cdef readonly int64_t st_atime_ns, st_mtime_ns, st_ctime_ns

    @property
    def key(self):
        return (self.st_dev, self.st_ino, self.st_mnt_id)


cdef inline int64_t _ns(statx_timestamp t) noexcept nogil:
    return t.tv_sec * 1000000000 + t.tv_nsec


def fstatx(int dirfd, bytes name=b"", int flags=AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW):
    """statx(2) of ``name`` under ``dirfd`` (by default the object ``dirfd`` itself)."""
    cdef statx buf
    cdef const char *path = name
    cdef int rc
    with nogil:
        rc = c_statx(dirfd, path, flags, FASTVFS_STATX_MASK, &buf)
    if rc < 0:
        _raise()
    cdef Statx st = Statx.__new__(Statx)
    st.st_ino = buf.stx_ino
    st.st_size = buf.stx_size
    st.st_blocks = buf.stx_blocks
    st.st_dev = makedev(buf.stx_dev_major, buf.stx_dev_minor)
    st.st_rdev = makedev(buf.stx_rdev_major, buf.stx_rdev_minor)
    st.st_mnt_id = buf.stx_mnt_id if buf.stx_mask & STATX_MNT_ID else 0
    st.st_mode = buf.stx_mode
    st.st_nlink = buf.stx_nlink
    st.st_uid = buf.stx_uid
    st.st_gid = buf.stx_gid
    st.st_blksize = buf.stx_blksize
    st.st_atime_ns = _ns(buf.stx_atime)
    st.st_mtime_ns = _ns(buf.stx_mtime)
    st.st_ctime_ns = _ns(buf.stx_ctime)
    return st


def set_fs_creds(unsigned int uid, unsigned int gid):
    """Switch this thread's fsuid/fsgid and return the previous pair.

    The raw system calls affect only the calling thread (the glibc wrappers of setresuid and
    friends would broadcast to every thread of the process); file system permission checks
    and the owner of new files follow fsuid/fsgid.
    """
    cdef long old_gid, old_uid
    with nogil:
        old_gid = syscall(SYS_setfsgid, gid)
        old_uid = syscall(SYS_setfsuid, uid)
    return old_uid, old_gid


def rename2(int olddirfd, bytes oldname, int newdirfd, bytes newname, unsigned int flags):
    cdef const char *o = oldname
    cdef const char *n = newname
    cdef int rc
    with nogil:
        rc = renameat2(olddirfd, o, newdirfd, n, flags)
    if rc < 0:
        _raise()


def chown(int fd, bytes name, unsigned int uid, unsigned int gid, int flags):
    """fchownat(2); (unsigned)-1 leaves a field unchanged, as the call defines."""
    cdef const char *p = name
    cdef int rc
    with nogil:
        rc = fchownat(fd, p, uid, gid, flags)
    if rc < 0:
        _raise()


cdef inline void _ts(timespec *t, long long ns):
    if ns == NOW:
        t.tv_sec = 0
        t.tv_nsec = UTIME_NOW
    elif ns == OMIT:
        t.tv_sec = 0
        t.tv_nsec = UTIME_OMIT
    else:
        t.tv_sec = ns // 1000000000
        t.tv_nsec = ns % 1000000000


def utimens(int fd, bytes name, long long atime_ns, long long mtime_ns, int flags):
    """utimensat(2) with nanosecond times, ``NOW`` or ``OMIT`` for each."""
    cdef timespec times[2]
    cdef const char *p = name
    cdef int rc
    _ts(&times[0], atime_ns)
    _ts(&times[1], mtime_ns)
    with nogil:
        rc = utimensat(fd, p, times, flags)
    if rc < 0:
        _raise()


def fallocate_range(int fd, int mode, long offset, long length):
    cdef int rc
    with nogil:
        rc = fallocate(fd, mode, offset, length)
    if rc < 0:
        _raise()


def sync_fs(int fd):
    cdef int rc
    with nogil:
        rc = syncfs(fd)
    if rc < 0:
        _raise()


def unshare_fs():
    """Give the calling thread its own umask, cwd and root (unshare CLONE_FS), so it can set a
    guest caller's umask without touching other threads."""
    if unshare(CLONE_FS) < 0:
        _raise()


def set_thread_groups(groups):
    """Set this thread's supplementary groups (the raw system call: glibc's setgroups would
    change every thread of the process)."""
    cdef unsigned int buf[64]
    cdef long n = len(groups), rc
    if n > 64:
        raise OSError(22, "too many groups")
    for i in range(n):
        buf[i] = groups[i]
    with nogil:
        rc = syscall(SYS_setgroups, n, buf)
    if rc < 0:
        _raise()
