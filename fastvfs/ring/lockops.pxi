# POSIX lock requests served in C: GETLK and SETLK (not waiting) over the lock descriptions of
# the handle table (fastvfs/fs/tables/locks.pxi, the file system's own GETLK and SETLK),
# answering exactly what the engine's do_getlk and do_setlk would, a description opened where
# the owner (or, for GETLK, the inode) has none as the file system opens it
# (``lock_open_node``); flock locks (FUSE_LK_FLOCK) likewise.  What only the file system does
# is declined (0): a node held by file handle that no longer opens, and SETLKW, which may
# wait.

cdef int do_getlk(Virtqueue vq) noexcept nogil:
    """fuse_lk_out: the first lock that would conflict with fuse_lk_in.lk (F_UNLCK if none),
    asked through the owner's description or the inode's question description (opened now
    if there is none), with the guest process holding it."""
    cdef const fuse_lk_in *arg = &vq.req.hdr.arg.lk
    cdef fuse_lk_out out
    cdef bint writable = False
    cdef int rc, fresh = -1
    rc = posix_getlk(vq.handles, vq.req.hdr.h.nodeid, arg.owner, arg.fh, arg.lk.start,
                     arg.lk.end, arg.lk.type, -1, False, &out.lk)
    if rc == 1:
        if vq.inodes is None:
            return 0
        rc = lock_open_node(vq.handles, vq.inodes, vq.req.hdr.h.nodeid, LOCK_QUESTION, F_RDLCK,
                            &fresh, &writable)
        if rc == 1:
            return 0
        if rc == 0:
            rc = posix_getlk(vq.handles, vq.req.hdr.h.nodeid, arg.owner, arg.fh, arg.lk.start,
                             arg.lk.end, arg.lk.type, fresh, writable, &out.lk)
    if rc < 0:
        vq._reply(rc, NULL, 0)
    else:
        vq._reply(0, &out, sizeof(out))
    return 1


cdef int do_setlk(Virtqueue vq) noexcept nogil:
    """SETLK (not waiting) of a POSIX lock through the owner's description, or with
    FUSE_LK_FLOCK of a flock lock through the open file's, opened now with the least access
    the lock needs if there is none (EAGAIN for a conflict)."""
    cdef const fuse_lk_in *arg = &vq.req.hdr.arg.lk
    cdef uint64_t nodeid = vq.req.hdr.h.nodeid
    cdef bint flock = arg.lk_flags & FUSE_LK_FLOCK
    cdef bint writable = False
    cdef int rc, fresh = -1
    while True:
        if flock:
            rc = flock_setlk(vq.handles, nodeid, arg.owner, arg.fh, arg.lk.type, False, fresh,
                             writable)
        else:
            rc = posix_setlk(vq.handles, nodeid, arg.owner, arg.fh, arg.lk.start, arg.lk.end,
                             arg.lk.type, arg.lk.pid, fresh, writable)
        if rc != 1 or fresh >= 0:
            break
        if vq.inodes is None:
            return 0
        rc = lock_open_node(vq.handles, vq.inodes, nodeid, LOCK_FLOCK if flock else LOCK_POSIX,
                            arg.lk.type, &fresh, &writable)
        if rc == 1:
            return 0
        if rc < 0:
            break
    vq._reply(rc, NULL, 0)
    return 1


# Without the node id table (an id translation) only the descriptions already open are used.
_fast_op(FUSE_GETLK, do_getlk, sizeof(fuse_lk_in), 0)
_fast_op(FUSE_SETLK, do_setlk, sizeof(fuse_lk_in), 0)
