# The helpers of the operations both the hot path and the file system serve, in C (declared in
# _tables.pxd): the lookup of a known entry (LOOKUP, and READDIRPLUS through
# tables/dirs.pxi), attribute packing, kill-suid/sgid, the mapped capability, FLUSH and
# SYNCFS; then their Python wrappers, attribute packing for the engine among them.

from fastvfs.includes.fcntl cimport O_DIRECTORY, O_RDONLY, openat
from fastvfs.includes.posix cimport syncfs


cdef inline bint _dot_name(const char *name, size_t length) noexcept nogil:
    """"." or ".."."""
    return length and name[0] == 46 and (length == 1 or (length == 2 and name[1] == 46))


cdef inline bint _plain_name(const char *name, size_t length) noexcept nogil:
    """A name the hot path looks up itself: 1 to NAME_MAX bytes, no slash or NUL, neither "."
    nor ".." (anything else is the engine's to refuse or resolve)."""
    if length == 0 or length > LOOKUP_NAME_MAX or memchr(name, 47, length) != NULL or \
            memchr(name, 0, length) != NULL:
        return False
    return not _dot_name(name, length)


cdef inline uint64_t _mount_id(const statx *st) noexcept nogil:
    """The mount id statx gave, or 0 where the kernel gave none (the node table's key part)."""
    return st.stx_mnt_id if st.stx_mask & STATX_MNT_ID else 0


# ``_known``'s answer for what the table is not asked about: a directory on another mount (a
# submount, whose entry is the engine's), or a name it could not ask about.
cdef enum:
    KNOWN_ELSEWHERE = -(1 << 30)


cdef int64_t _known(NodeTable inodes, uint64_t parent, const statx *st) noexcept nogil:
    """The node id of the inode ``st`` describes (a name's, in directory ``parent``), counted
    once more, where the table holds it; 0 where it does not; KNOWN_ELSEWHERE for a directory
    on a mount other than the parent's."""
    cdef uint64_t mnt = _mount_id(st)
    if (st.stx_mode & 0o170000) == 0o040000 and mnt != inodes.mount_of(parent):
        return KNOWN_ELSEWHERE
    return inodes.lookup_key(makedev(st.stx_dev_major, st.stx_dev_minor), st.stx_ino, mnt)


cdef int64_t lookup_entry(HandleTable handles, NodeTable inodes, uint64_t parent,
                          const char *name, size_t length, uint64_t listed_ino, uint64_t valid,
                          uint32_t valid_nsec, fuse_entry_out *out) noexcept nogil:
    """LOOKUP of ``name`` (``length`` bytes, NUL-terminated) in directory ``parent`` as
    PassthroughFs.lookup finds a plain name: an inode the node id table holds (with a
    descriptor) counted once more; else the name entered (``_new_entry``, the file system's
    ``_entry_at``: a new inode, or a known one held by file handle).  Fills ``out`` with
    fuse_entry_out (both timeouts ``valid``) and returns the node id; -ENOENT when there is
    no such name, another -errno where the file system's lookup fails the same way (EMFILE
    with the descriptor budget used up); 0 when the engine must look it up (another name, a
    directory on another mount, a failure to ask about the name).  ``listed_ino``: the
    inode number a directory listing gave the name (READDIRPLUS), or 0: where the table
    holds no inode of that number on the parent's device and mount, the name is entered
    straight away (its own statx taken on the new descriptor) without asking about it
    first; the number only chooses the way, the entry is always the name's own inode."""
    cdef int64_t nodeid = 0
    cdef statx st
    cdef int pfd, rc, fd, streak = 0, after
    # Plain LOOKUPs keep the streak of new inodes, where a key match is always trusted (no
    # file handles: every node holds its descriptor).
    cdef bint streaks = not listed_ino and inodes.fhs == NULL
    if not _plain_name(name, length):
        return 0
    pfd = inodes.acquire(parent)
    if pfd < 0:
        return 0
    if streaks:
        streak = fastvfs_load_int(&inodes.new_lookups)
    if streak >= LOOKUP_OPEN_FIRST:
        # The last lookups all found new inodes: open the name first, as a new inode's entry
        # needs (``_open_entry``), and count a known one once more by the descriptor's key.
        rc = _open_entry(handles, inodes, pfd, name, 0, &st, &fd)
        if rc < 0:
            nodeid = -ENOENT if rc == -ENOENT else 0
        else:
            nodeid = _known(inodes, parent, &st)
            if nodeid != 0:
                c_close(fd)
                if nodeid > 0:
                    fastvfs_store_int(&inodes.new_lookups, 0)
            else:
                nodeid = _enter_opened(handles, inodes, fd, &st)
    elif not listed_ino or inodes.may_hold(parent, listed_ino):
        # One statx of the name, as an O_PATH open of it would see it (the link itself, no
        # automount, mounts crossed), without the open and close: a known inode needs no fd.
        if c_statx(pfd, name, AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT, FASTVFS_STATX_MASK,
                   &st) < 0:
            nodeid = -ENOENT if errno == ENOENT else KNOWN_ELSEWHERE
        else:
            nodeid = _known(inodes, parent, &st)
            if streaks and nodeid != KNOWN_ELSEWHERE:
                # Written only when it changes: every queue's lookups read the same line.
                after = 0 if nodeid > 0 else streak + 1   # at most LOOKUP_OPEN_FIRST here
                if after != streak:
                    fastvfs_store_int(&inodes.new_lookups, after)
        if nodeid == 0:
            nodeid = _new_entry(handles, inodes, pfd, name, inodes.mount_of(parent), &st)
    else:
        nodeid = _new_entry(handles, inodes, pfd, name, inodes.mount_of(parent), &st)
    inodes.release(parent)
    if nodeid == KNOWN_ELSEWHERE:
        return 0
    if nodeid <= 0:
        return nodeid
    pack_entry(<uint64_t>nodeid, &st, valid, valid_nsec, out)
    return nodeid


cdef void pack_entry(uint64_t nodeid, const statx *st, uint64_t valid, uint32_t valid_nsec,
                     fuse_entry_out *out) noexcept nogil:
    """fuse_entry_out of ``nodeid`` as the engine's _entry packs it without a submount flag:
    generation 0, the same timeout ``valid`` for the name and the attributes."""
    out.nodeid = nodeid
    out.generation = 0
    out.entry_valid = valid
    out.attr_valid = valid
    out.entry_valid_nsec = valid_nsec
    out.attr_valid_nsec = valid_nsec
    pack_attr(st, &out.attr)


cdef void pack_attr(const statx *st, fuse_attr *a) noexcept nogil:
    """struct fuse_attr from statx: the one packing of it, for the hot path's replies and,
    through ``pack_attr_of``, the engine's (flags 0: the caller sets them)."""
    a.ino = st.stx_ino
    a.size = st.stx_size
    a.blocks = st.stx_blocks
    a.atime = <uint64_t>st.stx_atime.tv_sec
    a.mtime = <uint64_t>st.stx_mtime.tv_sec
    a.ctime = <uint64_t>st.stx_ctime.tv_sec
    a.atimensec = st.stx_atime.tv_nsec
    a.mtimensec = st.stx_mtime.tv_nsec
    a.ctimensec = st.stx_ctime.tv_nsec
    a.mode = st.stx_mode
    a.nlink = st.stx_nlink
    a.uid = st.stx_uid
    a.gid = st.stx_gid
    a.rdev = <uint32_t>(makedev(st.stx_rdev_major, st.stx_rdev_minor) & 0xffffffffUL)
    a.blksize = st.stx_blksize
    a.flags = 0


cdef int kill_mapped_capability(int fd, const char *name) noexcept nogil:
    """Remove ``name``, the host name a ``--xattrmap`` gives the guest's security.capability,
    from ``fd``'s file, where the kernel would remove security.capability itself: a write or
    fallocate of the file (fs/inode.c, file_remove_privs, for any writer:
    security_inode_need_killpriv), a truncate or a chown (fs/attr.c, setattr_prepare with
    ATTR_KILL_PRIV).  Under another name the host kernel keeps it, so a guest file capability
    would survive a change of content or owner.  0 when gone or never there (ENODATA; ENOTSUP:
    no xattrs at all), else -errno: any other failure fails the change, as the kernel's does.
    Asked first, as the kernel asks, so a file without it costs one fgetxattr and never takes
    the inode lock a removal takes."""
    return _kill_mapped_capability_at(fd, NULL, name)


cdef int _kill_mapped_capability_at(int fd, const char *path, const char *name) noexcept nogil:
    """``kill_mapped_capability`` of the file at ``path`` (an inode's /proc/self/fd name), or
    of ``fd``'s when ``path`` is NULL."""
    cdef ssize_t got = getxattr(path, name, NULL, 0) if path != NULL else \
        fgetxattr(fd, name, NULL, 0)
    if got < 0:
        return 0 if errno == ENODATA or errno == EOPNOTSUPP else -errno
    got = removexattr(path, name) if path != NULL else fremovexattr(fd, name)
    if got < 0 and errno != ENODATA:
        return -errno
    return 0


cdef int kill_suidgid(int fd) noexcept nogil:
    """Clear setuid, and setgid where group-execute makes it one: what the kernel does when a
    caller without CAP_FSETID writes, truncates or chowns.  Under HANDLE_KILLPRIV_V2 the guest
    leaves it to us, and our own calls (made with CAP_FSETID) would keep the bits.  0 or
    -errno."""
    return _kill_suidgid_at(fd, NULL)


cdef int _kill_suidgid_at(int fd, const char *path) noexcept nogil:
    """``kill_suidgid`` of the file at ``path`` (an inode's /proc/self/fd name), or of
    ``fd``'s when ``path`` is NULL."""
    cdef stat st
    cdef unsigned int mode
    if (c_stat(path, &st) if path != NULL else fstat(fd, &st)) < 0:
        return -errno
    mode = st.st_mode & 0o7777
    if mode & S_ISUID:
        mode &= ~S_ISUID
    if mode & S_ISGID and mode & S_IXGRP:
        mode &= ~S_ISGID
    if mode == st.st_mode & 0o7777:
        return 0
    if (chmod(path, mode) if path != NULL else fchmod(fd, mode)) < 0:
        return -errno
    return 0


cdef int flush_fd(int fd) noexcept nogil:
    """FLUSH of an open file: close a duplicate of its descriptor, which gives the host file
    system its close-time hook (and drops POSIX locks the way a close in the guest would)
    while the handle stays open.  0 or -errno."""
    cdef int dupfd = dup(fd)
    if dupfd < 0 or c_close(dupfd) < 0:
        return -errno
    return 0


cdef ssize_t copy_range(HandleTable handles, int fd_in, int64_t off_in, int fd_out,
                        int64_t off_out, size_t length) noexcept nogil:
    """COPY_FILE_RANGE between two open files: copy_file_range(2) in the host kernel (no data
    through the daemon), the output modified as a write modifies it (the mapped capability
    removed first, as PassthroughFs.write does).  The bytes copied (short at the end of the
    input, 0 past it) or -errno."""
    cdef long pos_in = off_in, pos_out = off_out
    cdef ssize_t n
    cdef int rc
    if handles.cap_xattr[0] and length:
        rc = kill_mapped_capability(fd_out, handles.cap_xattr)
        if rc < 0:
            return rc
    while True:
        n = c_copy_file_range(fd_in, &pos_in, fd_out, &pos_out, length, 0)
        if n >= 0:
            return n
        if errno != EINTR:
            return -errno


cdef int sync_dir_fs(int dirfd) noexcept nogil:
    """SYNCFS of the directory ``dirfd`` (an O_PATH descriptor): syncfs(2) of the host file
    system that holds it.  syncfs takes no O_PATH descriptor, so the directory is opened
    read-only for the call.  0 or -errno."""
    cdef int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    cdef int rc = 0
    if fd < 0:
        return -errno
    if syncfs(fd) < 0:
        rc = -errno
    c_close(fd)
    return rc


# -- the same helpers for the Python engine (fs/passthrough.py) ------------------------------

cdef int _check(int rc) except -1:
    if rc < 0:
        import os
        raise OSError(-rc, os.strerror(-rc))
    return 0


cdef bytes _path_of(fd_or_path):
    """None for a descriptor (int), else the path as bytes (from bytes or str)."""
    if isinstance(fd_or_path, int):
        return None
    return fd_or_path.encode() if isinstance(fd_or_path, str) else fd_or_path


def kill_suidgid_of(fd_or_path):
    """``kill_suidgid`` of a descriptor (int) or a path (bytes or str); raises OSError."""
    cdef bytes path = _path_of(fd_or_path)
    cdef const char *p = NULL if path is None else <const char *>path
    cdef int fd = -1
    cdef int rc
    if path is None:
        fd = fd_or_path
    with nogil:
        rc = _kill_suidgid_at(fd, p)
    _check(rc)


def kill_mapped_capability_of(fd_or_path, name):
    """``kill_mapped_capability`` of a descriptor (int) or a path (bytes or str) for the
    attribute ``name`` (bytes or str); raises OSError."""
    cdef bytes path = _path_of(fd_or_path)
    cdef bytes xname = name.encode() if isinstance(name, str) else name
    cdef const char *p = NULL if path is None else <const char *>path
    cdef const char *n = xname
    cdef int fd = -1
    cdef int rc
    if path is None:
        fd = fd_or_path
    with nogil:
        rc = _kill_mapped_capability_at(fd, p, n)
    _check(rc)


def copy_file_range(HandleTable handles, int fd_in, int64_t off_in, int fd_out,
                    int64_t off_out, size_t length):
    """``copy_range``: the bytes copied; raises OSError."""
    cdef ssize_t n
    with nogil:
        n = copy_range(handles, fd_in, off_in, fd_out, off_out, length)
    _check(<int>n if n < 0 else 0)
    return n


def sync_fs(int dirfd):
    """``sync_dir_fs``; raises OSError."""
    cdef int rc
    with nogil:
        rc = sync_dir_fs(dirfd)
    _check(rc)


def flush(int fd):
    """``flush_fd``; raises OSError."""
    cdef int rc
    with nogil:
        rc = flush_fd(fd)
    _check(rc)


cdef inline void _set_time(statx_timestamp *t, int64_t ns) noexcept nogil:
    """Nanoseconds since the epoch as statx gives them: seconds rounded down, nanoseconds
    0 to 999999999 (before 1970 too)."""
    cdef int64_t rem = ns % 1000000000
    t.tv_sec = ns // 1000000000
    if rem < 0:
        rem += 1000000000
        t.tv_sec -= 1
    t.tv_nsec = <uint32_t>rem


cdef void _statx_of(Statx st, statx *buf) noexcept nogil:
    buf.stx_ino = st.st_ino
    buf.stx_size = st.st_size
    buf.stx_blocks = st.st_blocks
    _set_time(&buf.stx_atime, st.st_atime_ns)
    _set_time(&buf.stx_mtime, st.st_mtime_ns)
    _set_time(&buf.stx_ctime, st.st_ctime_ns)
    buf.stx_mode = <uint16_t>st.st_mode
    buf.stx_nlink = st.st_nlink
    buf.stx_uid = st.st_uid
    buf.stx_gid = st.st_gid
    buf.stx_rdev_major = dev_major(st.st_rdev)
    buf.stx_rdev_minor = dev_minor(st.st_rdev)
    buf.stx_blksize = st.st_blksize


def pack_attr_of(st, ino=None, uint32_t flags=0, uid=None, gid=None):
    """``pack_attr`` for the Python engine: struct fuse_attr (88 bytes) of ``st``, a
    ``fastvfs.fs._sys.Statx`` (its fields read directly) or any object with the fields of an
    ``os.stat_result`` (``st_*``, times as ``st_*time_ns``), packed by the same C code as the
    hot path's replies, so both send the same bytes: seconds rounded down with their
    nanoseconds, rdev cut to its low 32 bits, the link count capped at 2^32 - 1.

    ``ino`` overrides st_ino; ``uid``/``gid`` override the owner (ids translated for the
    guest); ``flags`` is fuse_attr.flags (FUSE_ATTR_SUBMOUNT)."""
    cdef statx buf
    cdef fuse_attr a
    memset(&buf, 0, sizeof(buf))
    if isinstance(st, Statx):
        _statx_of(<Statx>st, &buf)
    else:
        buf.stx_ino = st.st_ino
        buf.stx_size = st.st_size
        buf.stx_blocks = st.st_blocks
        _set_time(&buf.stx_atime, st.st_atime_ns)
        _set_time(&buf.stx_mtime, st.st_mtime_ns)
        _set_time(&buf.stx_ctime, st.st_ctime_ns)
        buf.stx_mode = st.st_mode
        buf.stx_nlink = min(st.st_nlink, 0xFFFFFFFF)
        buf.stx_uid = st.st_uid
        buf.stx_gid = st.st_gid
        rdev = st.st_rdev & 0xFFFFFFFF
        buf.stx_rdev_major = dev_major(rdev)
        buf.stx_rdev_minor = dev_minor(rdev)
        buf.stx_blksize = st.st_blksize
    pack_attr(&buf, &a)
    if ino is not None:
        a.ino = ino
    if uid is not None:
        a.uid = uid
    if gid is not None:
        a.gid = gid
    a.flags = flags
    return PyBytes_FromStringAndSize(<char *>&a, sizeof(a))
