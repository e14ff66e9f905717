# Requests that create a name, served in C: MKNOD, MKDIR, SYMLINK, CREATE and LINK, each
# answering exactly what the engine's do_<op> would (fastvfs/fuse/engine.py over
# PassthroughFs, through the same C: fastvfs.fs._tables.make_node and link_node) and
# declining (0) whatever it could not decide the same way.  Common to all: request
# extensions (supplementary groups, security contexts: total_extlen) are the engine's
# (``serve_fast`` leaves every request with one to it), and so is a read-only share (EROFS
# there: NEEDS_WRITABLE) and a share with an id translation (the queues then have no node id
# table: NEEDS_INODES).  The caller is fuse_in_header's uid and gid; the umask the request's
# where the session has FUSE_DONT_MASK.  Their table entries are at the end.

cdef struct CreateOut:
    fuse_entry_out entry
    fuse_open_out open


cdef int _entry_reply(Virtqueue vq, int64_t nodeid, const statx *st) noexcept nogil:
    """fuse_entry_out of a new name as the engine's _entry packs it (no parent given, so no
    submount flag), or the error; 0 when ``nodeid`` is 0 (declined)."""
    cdef fuse_entry_out out
    if nodeid == 0:
        return 0
    if nodeid < 0:
        vq._reply(<int>nodeid, NULL, 0)
        return 1
    pack_entry(<uint64_t>nodeid, st, vq.cfg.attr_valid, vq.cfg.attr_valid_nsec, &out)
    vq._reply(0, &out, sizeof(out))
    return 1


cdef int _make(Virtqueue vq, uint32_t at, int kind, uint32_t mode, uint32_t rdev,
               uint32_t umask) noexcept nogil:
    """MKNOD, MKDIR and SYMLINK, their name ``at`` bytes into the request (SYMLINK's target
    after it, at most TARGET_MAX bytes and its NUL, else the engine's)."""
    cdef char name[LOOKUP_NAME_MAX + 1]
    cdef char target[TARGET_MAX + 1]
    cdef size_t length, target_length = 0
    cdef statx st
    cdef uint64_t fh
    if not _names(vq, at, name, 1, &length):
        return 0
    target[0] = 0
    if kind == MAKE_SYMLINK and _string(vq, at + <uint32_t>length + 1, target, TARGET_MAX,
                                        &target_length) <= 0:
        return 0
    return _entry_reply(vq, make_node(vq.handles, vq.inodes, vq.req.hdr.h.nodeid, name, length,
                                      kind, mode, rdev, target, target_length, 0,
                                      vq.req.hdr.h.uid, vq.req.hdr.h.gid, umask, &st, &fh),
                        &st)


cdef int do_mknod(Virtqueue vq) noexcept nogil:
    cdef const fuse_mknod_in *arg = &vq.req.hdr.arg.mknod
    return _make(vq, sizeof(fuse_in_header) + sizeof(fuse_mknod_in), MAKE_MKNOD, arg.mode,
                 arg.rdev, arg.umask)


cdef int do_mkdir(Virtqueue vq) noexcept nogil:
    cdef const fuse_mkdir_in *arg = &vq.req.hdr.arg.mkdir
    return _make(vq, sizeof(fuse_in_header) + sizeof(fuse_mkdir_in), MAKE_MKDIR, arg.mode, 0,
                 arg.umask)


cdef int do_symlink(Virtqueue vq) noexcept nogil:
    return _make(vq, sizeof(fuse_in_header), MAKE_SYMLINK, 0, 0, 0)


cdef int do_create(Virtqueue vq) noexcept nogil:
    """CREATE: the new file's entry and an open handle of it, with the cache mode's open
    flags, as the engine's do_create answers; an existing name without O_EXCL (opened as OPEN
    opens it, FUSE_OPEN_KILL_SUIDGID included) is left to the engine."""
    cdef const fuse_create_in *arg = &vq.req.hdr.arg.create
    cdef char name[LOOKUP_NAME_MAX + 1]
    cdef size_t length
    cdef statx st
    cdef uint64_t fh = 0
    cdef int64_t nodeid
    cdef CreateOut out
    if not _names(vq, sizeof(fuse_in_header) + sizeof(fuse_create_in), name, 1, &length):
        return 0
    nodeid = make_node(vq.handles, vq.inodes, vq.req.hdr.h.nodeid, name, length, MAKE_CREATE,
                       arg.mode, 0, "", 0, <int>arg.flags, vq.req.hdr.h.uid,
                       vq.req.hdr.h.gid, arg.umask, &st, &fh)
    if nodeid <= 0:
        return _entry_reply(vq, nodeid, &st)
    memset(&out, 0, sizeof(out))
    pack_entry(<uint64_t>nodeid, &st, vq.cfg.attr_valid, vq.cfg.attr_valid_nsec, &out.entry)
    out.open.fh = fh
    out.open.open_flags = vq.cfg.open_flags
    vq._reply(0, &out, sizeof(out))
    return 1


cdef int do_link(Virtqueue vq) noexcept nogil:
    """LINK: the entry of the node under its new name (one more lookup of it counted)."""
    cdef char name[LOOKUP_NAME_MAX + 1]
    cdef size_t length
    cdef statx st
    if not _names(vq, sizeof(fuse_in_header) + sizeof(fuse_link_in), name, 1, &length):
        return 0
    return _entry_reply(vq, link_node(vq.handles, vq.inodes, vq.req.hdr.arg.link.oldnodeid,
                                      vq.req.hdr.h.nodeid, name, length, &st), &st)


_fast_op(FUSE_MKNOD, do_mknod, sizeof(fuse_mknod_in), NEEDS_INODES | NEEDS_WRITABLE)
_fast_op(FUSE_MKDIR, do_mkdir, sizeof(fuse_mkdir_in), NEEDS_INODES | NEEDS_WRITABLE)
_fast_op(FUSE_SYMLINK, do_symlink, 0, NEEDS_INODES | NEEDS_WRITABLE)
_fast_op(FUSE_CREATE, do_create, sizeof(fuse_create_in), NEEDS_INODES | NEEDS_WRITABLE)
_fast_op(FUSE_LINK, do_link, sizeof(fuse_link_in), NEEDS_INODES | NEEDS_WRITABLE)
