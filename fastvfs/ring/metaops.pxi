# Metadata requests served in C beyond those of fastops.pxi: STATFS, SYNCFS, READLINK, OPEN,
# LSEEK, SETATTR, UNLINK, RMDIR, RENAME, RENAME2 and IOCTL, each answering
# exactly what the engine's do_<op> would (fastvfs/fuse/engine.py over PassthroughFs) and
# declining (0) whatever it could not decide the same way.  Their table entries are at the end.

cdef int do_statfs(Virtqueue vq) noexcept nogil:
    """fuse_statfs_out from fstatvfs(3) of the node's O_PATH descriptor, packed as the engine
    packs os.fstatvfs (PassthroughFs.statfs): frsize and namelen as the host gives them.  A
    node held by file handle that no longer opens is left to the engine."""
    cdef uint64_t nodeid = vq.req.hdr.h.nodeid
    cdef statvfs st
    cdef fuse_statfs_out out
    cdef int rc = 0
    cdef int fd
    fd = vq.inodes.acquire(nodeid)
    if fd == -2:
        return 0
    if fd < 0:
        vq._reply(-ENOENT, NULL, 0)
        return 1
    while fstatvfs(fd, &st) < 0:
        rc = -errno
        if rc != -EINTR:
            break
        rc = 0
    vq.inodes.release(nodeid)
    if rc < 0:
        vq._reply(rc, NULL, 0)
        return 1
    memset(&out, 0, sizeof(out))
    out.st.blocks = st.f_blocks
    out.st.bfree = st.f_bfree
    out.st.bavail = st.f_bavail
    out.st.files = st.f_files
    out.st.ffree = st.f_ffree
    out.st.bsize = <uint32_t>st.f_bsize
    out.st.namelen = <uint32_t>st.f_namemax
    out.st.frsize = <uint32_t>st.f_frsize
    vq._reply(0, &out, sizeof(out))
    return 1


cdef int do_syncfs(Virtqueue vq) noexcept nogil:
    """SYNCFS as the engine's (PassthroughFs.syncfs): the host file system of the node when
    it is a directory (with announced submounts a submount's root is a superblock of its own
    in the guest), else of the share's root, synced by ``sync_dir_fs``.  A sync may hold the
    queue's thread for long: with a thread pool it is the engine's (its pool runs it); without
    one the engine would hold this thread as well, so it is served here, after what is in
    flight is answered and every reply published (``settle``), as before the engine is asked.
    Left to the engine too: a directory held by file handle that no longer opens."""
    cdef uint64_t nodeid = vq.req.hdr.h.nodeid
    cdef int rc
    cdef int fd
    cdef bint directory
    if vq.cfg.engine_pool:
        return 0
    # The node's type first (a reference, no reopen of a node held by file handle).
    if not vq.inodes._ref(nodeid):
        vq._reply(-ENOENT, NULL, 0)
        return 1
    directory = S_ISDIR(vq.inodes.mode_of(nodeid))
    vq.inodes.release(nodeid)
    if not directory:
        nodeid = FUSE_ROOT_ID
    fd = vq.inodes.acquire(nodeid)
    if fd == -2:
        return 0
    if fd < 0:
        vq._reply(-ENOENT, NULL, 0)  # forgotten meanwhile
        return 1
    settle(vq)
    rc = sync_dir_fs(fd)
    vq.inodes.release(nodeid)
    vq._reply(rc, NULL, 0)
    return 1


cdef int do_open(Virtqueue vq) noexcept nogil:
    """OPEN of a regular file, as the engine's do_open over PassthroughFs.open
    (fastvfs.fs._tables.open_node: the same checks, flags, budget and handle), answered with
    the cache mode's open flags.  Left to the engine: request extensions, O_CREAT or O_EXCL,
    O_TRUNC asking to kill set-user-ID (FUSE_OPEN_KILL_SUIDGID), writing or truncating on a
    read-only share (EROFS there), and whatever ``open_node`` declines."""
    cdef const fuse_open_in *arg = &vq.req.hdr.arg.open
    cdef int flags = <int>arg.flags
    cdef fuse_open_out out
    cdef uint64_t fh = 0
    cdef int rc
    if flags & (O_CREAT | O_EXCL):
        return 0
    if flags & O_TRUNC and arg.open_flags & FUSE_OPEN_KILL_SUIDGID:
        return 0
    if vq.cfg.read_only and (flags & O_ACCMODE != O_RDONLY or flags & O_TRUNC):
        return 0
    rc = open_node(vq.handles, vq.inodes, vq.req.hdr.h.nodeid, flags, &fh)
    if rc == 1:
        return 0
    if rc < 0:
        vq._reply(rc, NULL, 0)
        return 1
    memset(&out, 0, sizeof(out))
    out.fh = fh
    out.open_flags = vq.cfg.open_flags
    vq._reply(0, &out, sizeof(out))
    return 1


cdef enum:
    # SETATTR's attributes served here (LOCKOWNER and CTIME change nothing, in the engine
    # either); with any other the engine serves the request.
    SETATTR_FAST = (FATTR_MODE | FATTR_UID | FATTR_GID | FATTR_SIZE | FATTR_FH | FATTR_ATIME |
                    FATTR_MTIME | FATTR_ATIME_NOW | FATTR_MTIME_NOW | FATTR_LOCKOWNER |
                    FATTR_CTIME | FATTR_KILL_SUIDGID)
    # Times from the guest served here: seconds below 2**SETATTR_SEC_BITS (the year 2242),
    # never negative, nanoseconds below a second; the rest (EINVAL, or times the engine reads
    # as signed) goes to the engine.
    SETATTR_SEC_BITS = 33


cdef bint _set_time(timespec *t, uint32_t valid, uint32_t set_bit, uint32_t now_bit,
                    uint64_t sec, uint32_t nsec) noexcept nogil:
    """The utimensat(2) time of one FATTR pair, as the engine's _time_arg and _sys.utimens
    make it; False when the engine must decide."""
    t.tv_sec = 0
    if valid & now_bit:
        t.tv_nsec = UTIME_NOW
    elif valid & set_bit:
        if sec >> SETATTR_SEC_BITS or nsec >= 1000000000:
            return False
        t.tv_sec = <long>sec
        t.tv_nsec = nsec
    else:
        t.tv_nsec = UTIME_OMIT
    return True


cdef int do_setattr(Virtqueue vq) noexcept nogil:
    """SETATTR as the engine's do_setattr over PassthroughFs.setattr: a size beyond INT64_MAX
    is EINVAL before anything; ENOENT for an unknown node, then EBADF for an unknown handle
    (FATTR_FH); mode, owner, size and kill-suid/sgid through ``change_node`` (the file
    system's own code, through the handle's descriptor when one is named), then utimensat
    of the node's O_PATH descriptor, then fuse_attr_out from statx as GETATTR answers.  The
    owner is the guest's ids as they are: an id-mapped share has no node table here
    (NEEDS_INODES), so its SETATTR is the engine's.  Left to the engine: request extensions,
    an attribute FUSE adds later, an unusual time, a node held by file handle that no longer
    opens."""
    cdef const fuse_setattr_in *arg = &vq.req.hdr.arg.setattr
    cdef uint64_t nodeid = vq.req.hdr.h.nodeid
    cdef uint32_t valid = arg.valid
    cdef uint32_t what = 0
    cdef timespec times[2]
    cdef statx st
    cdef fuse_attr_out out
    cdef int rc = 0
    cdef int fd, hfd = -1
    if valid & ~SETATTR_FAST:
        return 0
    if not _set_time(&times[0], valid, FATTR_ATIME, FATTR_ATIME_NOW, arg.atime, arg.atimensec):
        return 0
    if not _set_time(&times[1], valid, FATTR_MTIME, FATTR_MTIME_NOW, arg.mtime, arg.mtimensec):
        return 0
    if valid & FATTR_SIZE and arg.size > <uint64_t>INT64_MAX:
        vq._reply(-EINVAL, NULL, 0)
        return 1
    fd = vq.inodes.acquire(nodeid)
    if fd == -2:
        return 0
    if fd < 0:
        vq._reply(-ENOENT, NULL, 0)
        return 1
    if valid & FATTR_FH:
        hfd = vq.handles.acquire(arg.fh)
        if hfd < 0:
            vq.inodes.release(nodeid)
            vq._reply(-EBADF, NULL, 0)
            return 1
    if valid & FATTR_MODE:
        what |= CHANGE_MODE
    if valid & (FATTR_UID | FATTR_GID):
        what |= CHANGE_OWNER
    if valid & FATTR_SIZE:
        what |= CHANGE_SIZE
    if valid & FATTR_KILL_SUIDGID:
        what |= CHANGE_KILL_SUIDGID
    if what:
        rc = change_node(vq.handles, fd, vq.inodes.mode_of(nodeid), hfd, what,
                         arg.mode & 0o7777, arg.uid if valid & FATTR_UID else 0xFFFFFFFF,
                         arg.gid if valid & FATTR_GID else 0xFFFFFFFF, <int64_t>arg.size)
        if rc == 1:
            if hfd >= 0:
                vq.handles.release(arg.fh)
            vq.inodes.release(nodeid)
            return 0
    if hfd >= 0:
        vq.handles.release(arg.fh)
    if rc == 0 and (times[0].tv_nsec != UTIME_OMIT or times[1].tv_nsec != UTIME_OMIT):
        if utimensat(fd, "", times, AT_EMPTY_PATH) < 0:
            rc = -errno
    if rc == 0 and c_statx(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS,
                           &st) < 0:
        rc = -errno
    vq.inodes.release(nodeid)
    if rc < 0:
        vq._reply(rc, NULL, 0)
        return 1
    out.attr_valid = vq.cfg.attr_valid
    out.attr_valid_nsec = vq.cfg.attr_valid_nsec
    out.dummy = 0
    pack_attr(&st, &out.attr)
    vq._reply(0, &out, sizeof(out))
    return 1


cdef int do_readlink(Virtqueue vq) noexcept nogil:
    """READLINK as the engine's do_readlink over PassthroughFs.readlink: ENOENT for an unknown
    node, EINVAL for one that is no symlink, else readlinkat(2) of its O_PATH descriptor
    with an empty name, the target answered as it is (no NUL), ERANGE when it is larger than
    the reply buffers.  Left to the engine: request extensions, a node held by file handle
    that no longer opens, a target longer than the kernel's (TARGET_MAX: PATH_MAX less its
    NUL), which a host file system may allow."""
    cdef uint64_t nodeid = vq.req.hdr.h.nodeid
    cdef char target[TARGET_MAX + 1]
    cdef ssize_t n
    cdef int fd
    fd = vq.inodes.acquire(nodeid)
    if fd == -2:
        return 0
    if fd < 0:
        vq._reply(-ENOENT, NULL, 0)
        return 1
    if not S_ISLNK(vq.inodes.mode_of(nodeid)):
        vq.inodes.release(nodeid)
        vq._reply(-EINVAL, NULL, 0)
        return 1
    n = readlinkat(fd, "", target, sizeof(target))
    if n < 0:
        n = -errno
    vq.inodes.release(nodeid)
    if n < 0:
        vq._reply(<int>n, NULL, 0)
        return 1
    if n > TARGET_MAX:
        return 0
    if <uint64_t>n > reply_room(&vq.req.chain):
        vq._reply(-ERANGE, NULL, 0)
        return 1
    vq._reply(0, target, <uint32_t>n)
    return 1


cdef int do_lseek(Virtqueue vq) noexcept nogil:
    """LSEEK as the engine's do_lseek over PassthroughFs.lseek: an offset beyond INT64_MAX or
    a whence other than SEEK_SET, SEEK_CUR, SEEK_END, SEEK_DATA and SEEK_HOLE is EINVAL,
    then EBADF for an unknown handle, else lseek(2) of the handle's descriptor (fuse.h:
    FUSE_LSEEK, for SEEK_DATA and SEEK_HOLE) answered as fuse_lseek_out."""
    cdef const fuse_lseek_in *arg = &vq.req.hdr.arg.lseek
    cdef uint32_t whence = arg.whence
    cdef fuse_lseek_out out
    cdef long got
    cdef int rc = 0
    cdef int fd
    if arg.offset > <uint64_t>INT64_MAX or not (
            whence == SEEK_SET or whence == SEEK_CUR or whence == SEEK_END or
            whence == SEEK_DATA or whence == SEEK_HOLE):
        vq._reply(-EINVAL, NULL, 0)
        return 1
    fd = vq.handles.acquire(arg.fh)
    if fd < 0:
        vq._reply(-EBADF, NULL, 0)
        return 1
    got = lseek(fd, <long>arg.offset, <int>whence)
    if got < 0:
        rc = -errno
    vq.handles.release(arg.fh)
    if rc < 0:
        vq._reply(rc, NULL, 0)
        return 1
    out.offset = <uint64_t>got
    vq._reply(0, &out, sizeof(out))
    return 1


cdef int _remove(Virtqueue vq, int flags) noexcept nogil:
    """UNLINK (``flags`` 0) and RMDIR (AT_REMOVEDIR), as the engine's do_unlink and do_rmdir
    over PassthroughFs (fastvfs.fs._tables.unlink_node).  Left to the engine: request
    extensions, a name it must refuse for how it is framed, a parent held by file handle
    that no longer opens."""
    cdef char name[LOOKUP_NAME_MAX + 1]
    cdef size_t length
    cdef int rc
    if not _names(vq, sizeof(fuse_in_header), name, 1, &length):
        return 0
    rc = unlink_node(vq.inodes, vq.req.hdr.h.nodeid, name, length, flags)
    if rc == 1:
        return 0
    vq._reply(rc, NULL, 0)
    return 1


cdef int do_unlink(Virtqueue vq) noexcept nogil:
    return _remove(vq, 0)


cdef int do_rmdir(Virtqueue vq) noexcept nogil:
    return _remove(vq, AT_REMOVEDIR)


cdef int _rename(Virtqueue vq, uint32_t at, uint64_t newdir, uint32_t flags) noexcept nogil:
    """RENAME and RENAME2 (their names ``at`` bytes into the request), as the engine's
    do_rename and do_rename2 over PassthroughFs.rename (fastvfs.fs._tables.rename_node: its
    flag rule too).  Left to the engine: what ``_remove`` leaves it."""
    cdef char names[2 * (LOOKUP_NAME_MAX + 1)]
    cdef size_t lengths[2]
    cdef int rc
    if not _names(vq, at, names, 2, lengths):
        return 0
    rc = rename_node(vq.inodes, vq.req.hdr.h.nodeid, names, lengths[0], newdir,
                     names + lengths[0] + 1, lengths[1], flags)
    if rc == 1:
        return 0
    vq._reply(rc, NULL, 0)
    return 1


cdef int do_rename(Virtqueue vq) noexcept nogil:
    return _rename(vq, sizeof(fuse_in_header) + sizeof(fuse_rename_in),
                   vq.req.hdr.arg.rename.newdir, 0)


cdef int do_rename2(Virtqueue vq) noexcept nogil:
    return _rename(vq, sizeof(fuse_in_header) + sizeof(fuse_rename2_in),
                   vq.req.hdr.arg.rename2.newdir, vq.req.hdr.arg.rename2.flags)


cdef int do_ioctl(Virtqueue vq) noexcept nogil:
    """IOCTL as the engine answers it: ENOSYS, no ioctl of the guest's reaching the host.
    The guest kernel turns it into ENOTTY (fs/fuse/ioctl.c) and asks again next time, so
    every isatty(3) of a file on the share (Python's open() asks it of every file it opens)
    is an IOCTL of TCGETS.  Request extensions are left to the engine, which reads them
    before it looks for the opcode."""
    vq._reply(-ENOSYS, NULL, 0)
    return 1


_fast_op(FUSE_IOCTL, do_ioctl, 0, 0)
_fast_op(FUSE_STATFS, do_statfs, 0, NEEDS_INODES)
_fast_op(FUSE_SYNCFS, do_syncfs, 0, NEEDS_INODES)
_fast_op(FUSE_READLINK, do_readlink, 0, NEEDS_INODES)
_fast_op(FUSE_OPEN, do_open, sizeof(fuse_open_in), NEEDS_INODES)
_fast_op(FUSE_LSEEK, do_lseek, sizeof(fuse_lseek_in), 0)
_fast_op(FUSE_SETATTR, do_setattr, sizeof(fuse_setattr_in), NEEDS_INODES | NEEDS_WRITABLE)
_fast_op(FUSE_UNLINK, do_unlink, 0, NEEDS_INODES | NEEDS_WRITABLE)
_fast_op(FUSE_RMDIR, do_rmdir, 0, NEEDS_INODES | NEEDS_WRITABLE)
_fast_op(FUSE_RENAME, do_rename, sizeof(fuse_rename_in), NEEDS_INODES | NEEDS_WRITABLE)
_fast_op(FUSE_RENAME2, do_rename2, sizeof(fuse_rename2_in), NEEDS_INODES | NEEDS_WRITABLE)
