# cython: language_level=3, boundscheck=False, wraparound=False
"""System calls the passthrough filesystem needs and Python's ``os`` module does not offer.

Each wrapper raises ``OSError`` with the call's errno, like ``os`` does, and releases the GIL
around the call.  Everything here takes ``bytes`` names (the FUSE wire gives raw bytes).
"""

from fastvfs.includes.statx cimport (AT_EMPTY_PATH, AT_SYMLINK_NOFOLLOW, c_statx, makedev,
                                     statx, statx_timestamp)
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.errno cimport errno, EPERM
from libc.stdint cimport uint32_t, uint64_t, int64_t
from libc.string cimport memcpy

from fastvfs.includes.fcntl cimport (MAX_HANDLE_SZ, fallocate, fastvfs_file_handle,
                                     name_to_handle_at, renameat2)
from fastvfs.includes.posix cimport (CLONE_FS, SYS_setfsgid, SYS_setfsuid, SYS_setgroups,
                                     fchownat, syscall, timespec, unshare)
from fastvfs.includes.fs_ids cimport fastvfs_fs_ids_known, fastvfs_fsgid, fastvfs_fsuid
from fastvfs.includes.own_fs cimport fastvfs_own_fs
from fastvfs.includes.stat cimport UTIME_NOW, UTIME_OMIT, c_umask, utimensat
from fastvfs.includes.statx cimport FASTVFS_STATX_MASK, STATX_MNT_ID

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
    file system show the same st_dev and st_ino but are different places in the tree.  The
    fields are declared in _sys.pxd.
    """

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


cdef int _fs_ids(uint32_t uid, uint32_t gid, uint32_t *old_uid,
                 uint32_t *old_gid) noexcept nogil:
    """Switch this thread's fsuid/fsgid to ``uid``/``gid``, the previous pair saved: 0, or
    -EPERM with nothing changed.

    The raw system calls affect only the calling thread (the glibc wrappers of setresuid and
    friends would broadcast to every thread of the process); file system permission checks
    and the owner of new files follow fsuid/fsgid.

    setfsuid(2) and setfsgid(2) report no error: they return the previous id whether or not
    they changed it, and refuse an id the daemon's user namespace does not map or one it lacks
    CAP_SETUID/CAP_SETGID for.  A refusal would leave the daemon's own ids in force, so that a
    file would be created with the wrong owner: the ids are read back (an id of -1 is never
    valid, so the call only returns the current one) and a refusal restores the previous pair.
    Ids already in force (the previous pair is the one asked for) need no reading back, and
    ids this thread is known to hold (includes/fs_ids.pxd) no system call at all.
    """
    global fastvfs_fs_ids_known, fastvfs_fsuid, fastvfs_fsgid
    cdef long now_gid, now_uid
    if fastvfs_fs_ids_known and fastvfs_fsuid == uid and fastvfs_fsgid == gid:
        old_uid[0] = uid
        old_gid[0] = gid
        return 0
    old_gid[0] = <uint32_t>syscall(SYS_setfsgid, gid)
    old_uid[0] = <uint32_t>syscall(SYS_setfsuid, uid)
    if old_gid[0] != gid or old_uid[0] != uid:
        now_gid = syscall(SYS_setfsgid, <unsigned int>-1)
        now_uid = syscall(SYS_setfsuid, <unsigned int>-1)
        if <unsigned int>now_uid != uid or <unsigned int>now_gid != gid:
            syscall(SYS_setfsgid, old_gid[0])
            syscall(SYS_setfsuid, old_uid[0])
            fastvfs_fsuid = old_uid[0]
            fastvfs_fsgid = old_gid[0]
            fastvfs_fs_ids_known = 1
            return -EPERM
    fastvfs_fsuid = uid
    fastvfs_fsgid = gid
    fastvfs_fs_ids_known = 1
    return 0


cdef int own_fs() noexcept nogil:
    """Give the calling thread a working directory and umask of its own (unshare(2) with
    CLONE_FS), the first time it asks: a thread that moves its working directory or sets its
    umask must own them, or it changes every thread's.  0 or -errno.  (fastvfs.procfd does
    the same for the engine's threads in Python.)"""
    global fastvfs_own_fs
    if not fastvfs_own_fs:
        if unshare(CLONE_FS) < 0:
            return -errno
        fastvfs_own_fs = 1
    return 0


cdef int _thread_umask(uint32_t mask, uint32_t *old) noexcept nogil:
    """Set this thread's umask (``mask`` & 0o777), the previous one saved, the thread given
    its own first (``own_fs``): 0 or -errno."""
    cdef int rc = own_fs()
    if rc < 0:
        return rc
    old[0] = c_umask(mask & 0o777)
    return 0


cdef int creds_enter(const FsCreds *caller, FsCreds *saved) noexcept nogil:
    """Take on ``caller``'s fsuid/fsgid and, unless its ``umask`` is -1, its umask, as
    PassthroughFs's caller_credentials does (without supplementary groups): what was in force
    goes to ``saved`` for ``creds_leave``.  0, or -errno with nothing changed (-EPERM: ids
    the daemon cannot take on)."""
    cdef uint32_t uid, gid, mask
    cdef int rc = _fs_ids(caller.uid, caller.gid, &uid, &gid)
    if rc < 0:
        return rc
    saved.uid = uid
    saved.gid = gid
    saved.switched = uid != caller.uid or gid != caller.gid
    saved.umask = -1
    if caller.umask >= 0:
        rc = _thread_umask(<uint32_t>caller.umask, &mask)
        if rc < 0:
            _fs_ids(uid, gid, &uid, &gid)
            return rc
        saved.umask = <int>mask
    return 0


cdef void creds_leave(const FsCreds *saved) noexcept nogil:
    """Restore what ``creds_enter`` saved."""
    cdef uint32_t uid, gid, mask
    if saved.umask >= 0:
        _thread_umask(<uint32_t>saved.umask, &mask)
    if saved.switched:
        _fs_ids(saved.uid, saved.gid, &uid, &gid)


def set_fs_creds(unsigned int uid, unsigned int gid):
    """Switch this thread's fsuid/fsgid and return the previous pair (``_fs_ids``, the switch
    the hot path makes too); raises EPERM for ids that cannot be taken on."""
    cdef uint32_t old_uid, old_gid
    cdef int rc
    with nogil:
        rc = _fs_ids(uid, gid, &old_uid, &old_gid)
    if rc < 0:
        import os
        raise OSError(EPERM, f"{os.strerror(EPERM)}: uid {uid} gid {gid} cannot be taken on "
                             f"(not mapped in the daemon's user namespace, or no capability)")
    return old_uid, old_gid


def set_umask(unsigned int mask):
    """Set this thread's umask and return the previous one (``_thread_umask``: the thread
    gets a umask of its own first)."""
    cdef uint32_t old
    cdef int rc
    with nogil:
        rc = _thread_umask(mask, &old)
    if rc < 0:
        errno = -rc
        _raise()
    return old


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


def name_to_handle(int fd):
    """name_to_handle_at(2) of the object ``fd`` refers to: ``(handle, mount id)``, the handle
    as ``struct file_handle`` bytes (handle_bytes, handle_type, f_handle), for asking whether
    a file system has handles (the node id table takes and opens its own, _tables'
    ``enter_inode``).  EOPNOTSUPP where the file system cannot export handles."""
    cdef fastvfs_file_handle fh
    cdef int mount_id = 0, rc
    fh.handle_bytes = MAX_HANDLE_SZ
    with nogil:
        rc = name_to_handle_at(fd, "", &fh, &mount_id, AT_EMPTY_PATH)
    if rc < 0:
        _raise()
    return PyBytes_FromStringAndSize(<char *>&fh, 8 + fh.handle_bytes), mount_id


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
