# Naming a node through /proc/self/fd in C as the file system does (fastvfs.procfd): for the
# hot path's OPEN, as PassthroughFs.open does it in Python (the descriptor budget, the node's
# file type checked before the open, the guest's flags
# filtered as ``_open_flags`` filters them, the reopen with O_CLOEXEC, a handle in the handle
# table); the names are SETATTR's too (tables/attrs.pxi).  The settings are the file system's
# own, given once through ``set_open_policy``.

from libc.errno cimport EACCES, EINTR, EISDIR, ELOOP, EMFILE
from libc.string cimport strlen

from fastvfs.includes.fcntl cimport (AT_FDCWD, O_ACCMODE, O_APPEND, O_CLOEXEC, O_DIRECT,
                                     O_RDWR, O_TRUNC, O_WRONLY, openat)
from fastvfs.includes.stat cimport S_ISDIR, S_ISLNK, S_ISREG, fchmodat


def set_open_policy(HandleTable handles, int flags_allowed, bint writeback, uint64_t fd_budget,
                    proc_dir, str proc_prefix):
    """Let the hot path open nodes as the file system does (``open_node``): ``flags_allowed``,
    ``writeback`` and ``fd_budget`` as PassthroughFs has them, and how a descriptor is named
    (fastvfs.procfd: ``proc_prefix`` + "N" relative to ``proc_dir``, None for the working
    directory).  Called once, before any queue runs."""
    cdef bytes prefix = proc_prefix.encode()
    if len(prefix) >= sizeof(handles.open_policy.proc_prefix) or b"\0" in prefix:
        raise ValueError("not a descriptor path prefix")
    handles.open_policy.flags_allowed = flags_allowed
    handles.open_policy.writeback = writeback
    handles.open_policy.fd_budget = fd_budget
    handles.open_policy.proc_dir = AT_FDCWD if proc_dir is None else <int>proc_dir
    memcpy(handles.open_policy.proc_prefix, <const char *>prefix, len(prefix))
    handles.open_policy.proc_prefix[len(prefix)] = 0
    handles.open_policy.enabled = True


cdef int _openable(uint32_t mode) noexcept nogil:
    """0 for a regular file, else the errno OPEN answers (for the file system
    too: ``reopen``)."""
    if S_ISREG(mode):
        return 0
    return -ELOOP if S_ISLNK(mode) else -EISDIR if S_ISDIR(mode) else -EACCES


cdef bint within_budget(HandleTable handles, NodeTable inodes) noexcept nogil:
    """False when the file system would refuse a new descriptor (EMFILE, PassthroughFs._budget):
    the same sum as its ``fds_held``, read without the mutexes as the file system reads it.
    LOOKUP of a plain name, known or missing, and OPEN are then the engine's to refuse.  True
    with no policy set (no file system has a budget to keep)."""
    cdef uint64_t held = (<uint64_t>handles.count + inodes.count - inodes.handle_nodes +
                          inodes.handle_fds + inodes.fds_other + handles.fds_other +
                          <uint32_t>handles.lock_fds_open)
    return not handles.open_policy.enabled or held < handles.open_policy.fd_budget


cdef inline int _open_flags(const OpenPolicy *policy, int flags) noexcept nogil:
    """The guest's open flags as PassthroughFs._open_flags passes them on."""
    flags &= policy.flags_allowed
    if policy.writeback:
        if flags & O_ACCMODE == O_WRONLY:
            flags = (flags & ~O_ACCMODE) | O_RDWR
        flags &= ~O_APPEND
    return flags


cdef inline void _proc_name(const OpenPolicy *policy, int fd, char *path) noexcept nogil:
    """The name of descriptor ``fd`` (>= 0) relative to ``policy.proc_dir``, as
    fastvfs.procfd makes it: ``proc_prefix`` + "N" in decimal.  ``path`` has room for the
    longest prefix (15 bytes), ten digits and the NUL (every caller's holds 48)."""
    cdef char digits[10]
    cdef size_t n = 0, at = strlen(policy.proc_prefix)
    cdef unsigned int v = <unsigned int>fd
    memcpy(path, policy.proc_prefix, at)
    while True:
        digits[n] = <char>(48 + v % 10)
        n += 1
        v //= 10
        if v == 0:
            break
    while n:
        n -= 1
        path[at] = digits[n]
        at += 1
    path[at] = 0


cdef int reopen_fd(const OpenPolicy *policy, int nfd, int flags) noexcept nogil:
    """A new open file description of node descriptor ``nfd`` with ``flags`` through its
    /proc/self/fd name (as the open policy names it, PassthroughFs._reopen): the descriptor
    or -errno.  The caller checked the node's type first (a regular file, or a directory
    opened with O_DIRECTORY), since opening a FIFO blocks and opening a device reaches a host
    driver.  That check is the whole check: the name is a magic link to the very inode
    ``nfd`` holds (proc(5); no path walk the guest controls), and an inode's file type never
    changes, so the new descriptor is of the type checked."""
    cdef char path[48]
    cdef int fd
    _proc_name(policy, nfd, path)
    fd = openat(policy.proc_dir, path, flags | O_CLOEXEC)
    while fd < 0 and errno == EINTR:
        fd = openat(policy.proc_dir, path, flags | O_CLOEXEC)
    return -errno if fd < 0 else fd


def reopen(HandleTable handles, int nfd, uint32_t mode, int flags):
    """``reopen_fd`` for the file system (PassthroughFs._reopen): a regular file of type
    ``mode`` reopened with ``flags``, its descriptor; OSError (ELOOP, EISDIR, EACCES for what
    is no regular file, checked before the open, or the open's error)."""
    cdef int fd = _openable(mode)
    if fd == 0:
        with nogil:
            fd = reopen_fd(&handles.open_policy, nfd, flags)
    _check(fd)
    return fd


cdef int open_node(HandleTable handles, NodeTable inodes, uint64_t nodeid, int flags,
                   uint64_t *fh) noexcept nogil:
    """OPEN of ``nodeid`` with the guest's ``flags`` as PassthroughFs.open (without its
    kill-suid/sgid on O_TRUNC, which the caller leaves to the engine): 0 with ``fh`` set,
    -errno, or 1 for what only the file system decides (no policy set, the budget used up:
    EMFILE there, a node held by file handle that no longer opens, O_TRUNC with a mapped
    capability to remove).  Only a regular file is opened: its type is checked before the
    open (``reopen_fd``), since opening a FIFO blocks and opening a device reaches a host
    driver."""
    cdef OpenPolicy *policy = &handles.open_policy
    cdef int rc, nfd = -1
    cdef int fd
    cdef int64_t got
    if not policy.enabled or not within_budget(handles, inodes):
        return 1
    if flags & O_TRUNC and handles.cap_xattr[0]:
        return 1
    fd = inodes.acquire(nodeid)
    if fd == -2:
        return 1
    if fd < 0:
        return -ENOENT
    flags = _open_flags(policy, flags)
    rc = _openable(inodes.mode_of(nodeid))
    if rc == 0:
        nfd = rc = reopen_fd(policy, fd, flags)
    inodes.release(nodeid)
    if rc < 0:
        return rc
    got = handles._add_fd(nfd, False, flags & O_DIRECT != 0)
    if got < 0:
        c_close(nfd)
        return -EMFILE
    fh[0] = <uint64_t>got
    return 0

