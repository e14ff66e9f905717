# Metadata requests served in C beyond those of fastops.pxi: STATFS and OPEN, each answering
# exactly what the engine's do_<op> would (fastvfs/fuse/engine.py over PassthroughFs) and
# declining (0) whatever it could not decide the same way.  Their table entries are at the end.

cdef int do_statfs(Virtqueue vq) noexcept nogil:
    """fuse_statfs_out from fstatvfs(3) of the node's O_PATH descriptor, packed as the engine
    packs os.fstatvfs (PassthroughFs.statfs): frsize and namelen as the host gives them.  A
    node held by file handle without a cached descriptor is left to the engine."""
    cdef uint64_t nodeid = vq.req.hdr.h.nodeid
    cdef statvfs st
    cdef fuse_statfs_out out
    cdef int rc = 0
    cdef int fd
    if vq.req.hdr.h.total_extlen:
        return 0
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
    if vq.req.hdr.h.total_extlen or flags & (O_CREAT | O_EXCL):
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


_fast_op(FUSE_STATFS, do_statfs, 0, NEEDS_INODES)
_fast_op(FUSE_OPEN, do_open, sizeof(fuse_open_in), NEEDS_INODES)
