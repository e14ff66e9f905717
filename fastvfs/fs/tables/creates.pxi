# Names created as the file system creates them (PassthroughFs.mknod, mkdir, symlink, create
# and link): the system call that makes each (``make_name`` and ``link_name``, which
# fs/passthrough.py calls too, through ``make_name_of`` and ``link_name_of``), the rule for a
# symlink's target, and for the hot path the whole request (``make_node``, ``link_node``): the
# parent held through the node id table, the caller's ids and umask taken on with
# _sys.creds_enter (the switch the file system's caller_credentials makes), then the new name
# entered in the node id table as PassthroughFs._entry_at enters it.  The session's part is
# given at each FUSE_INIT through ``set_create_session`` (PassthroughFs.init).

from libc.errno cimport EEXIST, ENOMEM, EPERM

from fastvfs.fs._sys cimport FsCreds, creds_enter, creds_leave
from fastvfs.includes.fcntl cimport (AT_SYMLINK_FOLLOW, O_CREAT, O_DIRECT, O_DIRECTORY, O_EXCL,
                                     O_RDONLY)
from fastvfs.includes.posix cimport linkat, symlinkat
from fastvfs.includes.stat cimport mkdirat, mknodat
from fastvfs.includes.statx cimport AT_EMPTY_PATH

# Host mounts whose inodes may be held by file handle (_tables.pxd), for the tests.
MOUNTS_WITH_HANDLES_MAX = HANDLE_MOUNTS_MAX

# What ``make_name_of`` creates, for the file system.
KIND_MKNOD = MAKE_MKNOD
KIND_MKDIR = MAKE_MKDIR
KIND_SYMLINK = MAKE_SYMLINK
KIND_CREATE = MAKE_CREATE


def set_create_session(HandleTable handles, bint labels, bint dont_mask):
    """The session just negotiated (FUSE_INIT, PassthroughFs.init): whether its creations
    carry security contexts (FUSE_SECURITY_CTX: then the hot path leaves them to the file
    system, which sets them) and whether the host applies the request's umask
    (FUSE_DONT_MASK)."""
    handles.create_policy.dont_mask = dont_mask
    handles.create_policy.enabled = not labels


cdef int check_target(const char *target, size_t length) noexcept nogil:
    """0 for a symlink target the file system takes: 1 to TARGET_MAX bytes without NUL;
    -EINVAL otherwise."""
    if length == 0 or length > TARGET_MAX or memchr(target, 0, length) != NULL:
        return -EINVAL
    return 0


def check_target_of(bytes target not None):
    """``check_target`` for the file system: raises OSError(EINVAL)."""
    if check_target(target, len(target)) < 0:
        raise OSError(EINVAL, "invalid symlink target")


cdef int make_name(int dirfd, const char *name, int kind, uint32_t mode, uint32_t rdev,
                   const char *target, int flags) noexcept nogil:
    """The system call that creates ``name`` in directory ``dirfd`` with the thread's
    credentials: mknodat(2) (``mode`` with its file type, ``rdev``), mkdirat(2), symlinkat(2)
    of ``target``, or for MAKE_CREATE openat(2) with ``flags`` (already filtered as
    PassthroughFs._open_flags filters them) and O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC
    added, retried on EINTR as Python's os.open retries.  0 (the new descriptor for
    MAKE_CREATE) or -errno."""
    cdef int rc
    if kind == MAKE_MKNOD:
        rc = mknodat(dirfd, name, mode, rdev)
    elif kind == MAKE_MKDIR:
        rc = mkdirat(dirfd, name, mode)
    elif kind == MAKE_SYMLINK:
        rc = symlinkat(target, dirfd, name)
    else:
        flags |= O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC
        rc = openat(dirfd, name, flags, mode)
        while rc < 0 and errno == EINTR:
            rc = openat(dirfd, name, flags, mode)
    return -errno if rc < 0 else rc


def make_name_of(int dirfd, bytes name not None, int kind, uint32_t mode=0, uint32_t rdev=0,
                 bytes target=b"", int flags=0):
    """``make_name`` for the file system (its caller's credentials already taken on): the
    new descriptor for MAKE_CREATE, else 0; raises OSError."""
    cdef const char *n = name
    cdef const char *t = target
    cdef int rc
    with nogil:
        rc = make_name(dirfd, n, kind, mode, rdev, t, flags)
    _check(rc)
    return rc


cdef int link_name(HandleTable handles, int fd, int newdirfd,
                   const char *newname) noexcept nogil:
    """linkat(2) of the inode behind O_PATH descriptor ``fd`` as ``newname`` in directory
    ``newdirfd``, through the descriptor's /proc/self/fd name with AT_SYMLINK_FOLLOW: the very
    inode the descriptor holds (a symlink's own too), with no path lookup the guest controls.
    0 or -errno."""
    cdef OpenPolicy *policy = &handles.open_policy
    cdef char path[48]
    _proc_name(policy, fd, path)
    if linkat(policy.proc_dir, path, newdirfd, newname, AT_SYMLINK_FOLLOW) < 0:
        return -errno
    return 0


def link_name_of(HandleTable handles, int fd, int newdirfd, bytes newname not None):
    """``link_name`` for the file system; raises OSError."""
    cdef const char *n = newname
    cdef int rc
    with nogil:
        rc = link_name(handles, fd, newdirfd, n)
    _check(rc)


cdef int _open_entry(HandleTable handles, NodeTable inodes, int dirfd, const char *name,
                     uint64_t dir_mount, statx *st, int *fd) noexcept nogil:
    """PassthroughFs._entry_at up to the entry: the descriptor budget (EMFILE), an O_PATH
    descriptor of ``name`` in ``dirfd`` in ``fd``, its statx in ``st``: 1.  0, nothing kept
    open, for a directory on a mount other than ``dir_mount`` (unless 0: what the caller
    created is on its parent's mount), whose entry is the engine's (a submount); or -errno."""
    cdef uint64_t mnt
    cdef int rc
    if not within_budget(handles, inodes):
        return -EMFILE
    fd[0] = openat(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC)
    while fd[0] < 0 and errno == EINTR:
        fd[0] = openat(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC)
    if fd[0] < 0:
        return -errno
    if c_statx(fd[0], "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, FASTVFS_STATX_MASK, st) < 0:
        rc = -errno
        c_close(fd[0])
        return rc
    mnt = _mount_id(st)
    if dir_mount and (st.stx_mode & 0o170000) == 0o040000 and mnt != dir_mount:
        c_close(fd[0])
        return 0
    return 1


cdef int64_t _enter_opened(HandleTable handles, NodeTable inodes, int fd,
                           const statx *st) noexcept nogil:
    """One lookup counted in the table of the inode ``_open_entry`` opened as ``fd`` (taken)
    with its statx ``st`` (``enter_inode``: by file handle where the table allows it)."""
    return enter_inode(handles, inodes, fd, makedev(st.stx_dev_major, st.stx_dev_minor),
                       st.stx_ino, _mount_id(st), st.stx_mode, False)


cdef int64_t _new_entry(HandleTable handles, NodeTable inodes, int dirfd, const char *name,
                        uint64_t dir_mount, statx *st) noexcept nogil:
    """``_open_entry``, then ``_enter_opened``.  The node id, 0 or -errno as
    ``_open_entry`` answers."""
    cdef int fd
    cdef int rc = _open_entry(handles, inodes, dirfd, name, dir_mount, st, &fd)
    if rc <= 0:
        return rc
    return _enter_opened(handles, inodes, fd, st)


cdef int _mount_fd(HandleTable handles, int fd, uint32_t mode) noexcept nogil:
    """A descriptor on the mount of node descriptor ``fd`` (file type ``mode``) for
    open_by_handle_at, which takes no O_PATH descriptor: the directory opened read-only, or a
    regular file (a bind-mounted file's only object) through its /proc/self/fd name.  -errno;
    anything else is never opened (-EOPNOTSUPP)."""
    cdef int mfd
    if (mode & 0o170000) == 0o040000:
        mfd = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        return -errno if mfd < 0 else mfd
    if (mode & 0o170000) == 0o100000 and handles.open_policy.enabled:
        return reopen_fd(&handles.open_policy, fd, O_RDONLY)
    return -EOPNOTSUPP


cdef int64_t _handle_of(HandleTable handles, NodeTable inodes, int fd, uint32_t mode,
                        fastvfs_file_handle *fh) noexcept nogil:
    """name_to_handle_at(2) of node descriptor ``fd`` (file type ``mode``) into ``fh``, and
    the index of the descriptor kept for its mount (one kept now, ``_mount_fd``, for a mount
    first seen); -errno where there is no handle: the file system's errno, the mount
    descriptor's, EOPNOTSUPP with HANDLE_MOUNTS_MAX kept."""
    cdef int mount_id = 0, mfd
    cdef int64_t mount
    fh.handle_bytes = MAX_HANDLE_SZ
    if name_to_handle_at(fd, "", fh, &mount_id, AT_EMPTY_PATH) < 0:
        return -errno
    mount = inodes.mount_index(mount_id)
    if mount >= 0:
        return mount
    mfd = _mount_fd(handles, fd, mode)
    if mfd < 0:
        return mfd
    mount = inodes.add_mount(mount_id, mfd)
    return mount if mount >= 0 else -EOPNOTSUPP


cdef int64_t enter_inode(HandleTable handles, NodeTable inodes, int fd, uint64_t dev,
                         uint64_t ino, uint64_t mnt, uint32_t mode, bint pin) noexcept nogil:
    """One more lookup counted of the inode O_PATH descriptor ``fd`` refers to (its key
    ``dev``, ``ino``, ``mnt`` and file type ``mode``), which this takes (closed unless the
    table keeps it): by file handle where the table allows handles (``set_handle_mode``),
    else, or with ``pin`` (an O_TMPFILE file, which no handle reopens before it has a name),
    by the descriptor.  The handle is name_to_handle_at(2)'s, opened later on a descriptor
    kept per host mount (``_mount_fd``, the first inode seen there).  Where there is no
    handle (the file system has none, no descriptor of its mount can be had, or
    HANDLE_MOUNTS_MAX are kept) the inode is held by descriptor, or with mandatory handles
    refused with that errno (EOPNOTSUPP for the mount).  The node id, or -errno: EMFILE with
    the table full, ENOMEM without memory for a long handle."""
    cdef fastvfs_file_handle fh
    cdef const fastvfs_file_handle *by = NULL
    cdef int64_t mount = 0, nodeid
    cdef bint created, taken
    if inodes.fhs != NULL and not pin:
        mount = _handle_of(handles, inodes, fd, mode, &fh)
        if mount >= 0:
            by = &fh
        elif inodes.handles_mandatory:
            c_close(fd)
            return mount
    nodeid = inodes.adopt_c(fd, dev, ino, mnt, by, <uint32_t>mount if by != NULL else 0, mode,
                            &created, &taken)
    if nodeid < 0:
        c_close(fd)
        return -ENOMEM if nodeid == -2 else -EMFILE
    if not taken:
        c_close(fd)
    return nodeid


def enter_inode_of(HandleTable handles, NodeTable inodes, int fd, uint64_t dev, uint64_t ino,
                   uint64_t mnt, uint32_t mode, bint pin=False):
    """``enter_inode`` for the file system (InodeStore.adopt): the node id; raises OSError
    (``fd`` closed)."""
    cdef int64_t nodeid
    with nogil:
        nodeid = enter_inode(handles, inodes, fd, dev, ino, mnt, mode, pin)
    _check(<int>nodeid if nodeid < 0 else 0)
    return nodeid


def keep_mount_of(HandleTable handles, NodeTable inodes, int fd, uint32_t mode):
    """Keep a descriptor of the mount of node descriptor ``fd`` (the share's root, file type
    ``mode``) to open handles on, as ``enter_inode`` keeps one for the first inode of each
    mount; raises OSError (name_to_handle_at's errno where the file system has no handles)."""
    cdef fastvfs_file_handle fh
    cdef int64_t kept
    with nogil:
        kept = _handle_of(handles, inodes, fd, mode, &fh)
    _check(<int>kept if kept < 0 else 0)


cdef inline bint _creatable(HandleTable handles, NodeTable inodes) noexcept nogil:
    """Whether the hot path may create a name at all: a session without security contexts,
    the file system's open policy set, and the descriptor budget not used up (where the file
    system answers EMFILE only once the name exists)."""
    return (handles.create_policy.enabled and handles.open_policy.enabled and
            within_budget(handles, inodes))


cdef int64_t make_node(HandleTable handles, NodeTable inodes, uint64_t parent, const char *name,
                       size_t length, int kind, uint32_t mode, uint32_t rdev,
                       const char *target, size_t target_length, int flags, uint32_t uid,
                       uint32_t gid, uint32_t umask, statx *st, uint64_t *fh) noexcept nogil:
    """MKNOD, MKDIR, SYMLINK (``target``, NUL-terminated) or CREATE (``flags``, the guest's)
    of ``name`` (NUL-terminated, ``length`` bytes) in node ``parent`` for caller
    ``uid``/``gid`` (``umask`` applied where the session has FUSE_DONT_MASK), as
    PassthroughFs.mknod, mkdir, symlink and create do it, in their order: ENOENT for a node id
    the table does not know, the name checked, the target checked, the object created with
    the caller's ids and umask, then its entry (``_new_entry``) and for CREATE a handle of the
    new descriptor in ``fh``.  The node id with ``st`` filled, -errno, or 0 for what only the
    file system decides: ``_creatable`` false, a parent held by file handle that no longer
    opens, ids the daemon cannot take on (EPERM, logged there), CREATE of an existing name
    without O_EXCL (opened as OPEN opens it) or truncating where a mapped capability
    may have to go."""
    cdef FsCreds caller, saved
    cdef int64_t nodeid
    cdef int64_t got
    cdef int rc, fd, pfd, oflags
    if not _creatable(handles, inodes):
        return 0
    if kind == MAKE_CREATE and flags & O_TRUNC and handles.cap_xattr[0]:
        return 0
    pfd = inodes.acquire(parent)
    if pfd == -2:
        return 0
    if pfd < 0:
        return -ENOENT
    rc = check_name(name, length)
    if rc == 0 and kind == MAKE_SYMLINK:
        rc = check_target(target, target_length)
    if rc < 0:
        inodes.release(parent)
        return rc
    caller.uid = uid
    caller.gid = gid
    caller.umask = <int>(umask & 0o777) if handles.create_policy.dont_mask else -1
    if creds_enter(&caller, &saved) < 0:
        inodes.release(parent)
        return 0
    oflags = _open_flags(&handles.open_policy, flags) if kind == MAKE_CREATE else 0
    fd = make_name(pfd, name, kind, mode, rdev, target, oflags)
    creds_leave(&saved)
    if fd == -EEXIST and kind == MAKE_CREATE and not flags & O_EXCL:
        inodes.release(parent)
        return 0
    if fd < 0:
        inodes.release(parent)
        return fd
    nodeid = _new_entry(handles, inodes, pfd, name, 0, st)
    inodes.release(parent)
    if kind != MAKE_CREATE:
        return nodeid
    if nodeid < 0:
        c_close(fd)
        return nodeid
    got = handles._add_fd(fd, False, oflags & O_DIRECT != 0)
    if got < 0:
        c_close(fd)
        return -EMFILE
    fh[0] = <uint64_t>got
    return nodeid


cdef int64_t link_node(HandleTable handles, NodeTable inodes, uint64_t nodeid,
                       uint64_t newparent, const char *newname, size_t length,
                       statx *st) noexcept nogil:
    """LINK of node ``nodeid`` as ``newname`` in ``newparent``, as PassthroughFs.link does
    it, in its order: ENOENT for either node id the table does not know, the name checked,
    EPERM for a directory, then ``link_name``, then its entry
    (``_new_entry``).  The node id with ``st`` filled, -errno, or 0 for what only the file
    system decides (``_creatable`` false, a node held by file handle that no longer opens)."""
    cdef int64_t rc = 0
    cdef int fd, newfd
    if not _creatable(handles, inodes):
        return 0
    fd = inodes.acquire(nodeid)
    if fd == -2:
        return 0
    if fd < 0:
        return -ENOENT
    newfd = inodes.acquire(newparent)
    if newfd == -2:
        inodes.release(nodeid)
        return 0
    if newfd < 0:
        inodes.release(nodeid)
        return -ENOENT
    rc = check_name(newname, length)
    if rc == 0 and S_ISDIR(inodes.mode_of(nodeid)):
        rc = -EPERM
    if rc == 0:
        rc = link_name(handles, fd, newfd, newname)
    if rc == 0:
        rc = _new_entry(handles, inodes, newfd, newname, 0, st)
    inodes.release(newparent)
    inodes.release(nodeid)
    return rc
