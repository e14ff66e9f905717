# FUSE requests served in C: the request header decoded through fuse_kernel.pxd, a table by
# opcode (in the shape of libfuse's fuse_ll_ops[]) saying which the hot path may serve and
# under what conditions, and the metadata operations themselves (READ and WRITE are in
# dataops.pxi).  Whatever the table does not cover, or an operation declines (returns 0), the
# worker hands to the Python engine with the request untouched.

cdef enum:
    # Conditions of a table entry.
    NEEDS_INODES = 1        # the node id table is shared with the file system
    NEEDS_WRITABLE = 2      # the share is writable (a read-only one refuses in the engine)
    NEEDS_URING = 8         # the queue has its io_uring
    FAST_OPS_MAX = FUSE_SYNCFS + 1

cdef FastOp FAST_OPS[FAST_OPS_MAX]


cdef int serve_fast(Virtqueue vq) noexcept nogil:
    """Serve the popped chain if C can: 1 done (or in flight), 0 it needs the Python engine."""
    cdef Request *q = &vq.req
    cdef const FastOp *op
    cdef int rc = ring_walk(&vq.ring, vq.mem, q.chain.head, &q.chain, q.iov)
    cdef uint64_t got = _gather(q.iov, q.chain.out_num, 0, <uint8_t *>&q.hdr, sizeof(InHeaders))
    # The error reply of a malformed chain carries the request's unique whenever the readable
    # part held it, even if the rest is missing.
    if got < FASTVFS_FUSE_UNIQUE_END:
        q.hdr.h.unique = 0
    if rc < 0 or got < sizeof(fuse_in_header):
        # A buffer outside guest RAM (such as a DAX window address: the window is not in the
        # memory table) gets EFAULT, any other malformed chain EINVAL.
        vq._bad_chains += 1
        vq._reply(rc if rc < 0 else -EINVAL, NULL, 0)
        return 1
    q.opcode = q.hdr.h.opcode
    # Never trust fuse_in_header.len over the buffers really given.
    if q.hdr.h.len < sizeof(fuse_in_header) or q.hdr.h.len > q.chain.out_len:
        vq._bad_chains += 1
        vq._reply(-EINVAL, NULL, 0)
        return 1
    if not vq.fast_io or q.opcode >= FAST_OPS_MAX:
        return 0
    # The engine's, whatever the opcode: a request with extensions (the engine reads and
    # checks them before anything else, and no operation here takes one: Linux sends them
    # with requests that create, fs/fuse/dir.c), and one longer than the engine copies out
    # (SLOW_REQUEST_MAX: its EINVAL, ask_engine) but a WRITE, which its data makes longer.
    if q.hdr.h.total_extlen or q.hdr.h.len > SLOW_REQUEST_MAX and q.opcode != FUSE_WRITE:
        return 0
    op = &FAST_OPS[q.opcode]
    if op.serve == NULL or q.hdr.h.len < sizeof(fuse_in_header) + op.arg_size:
        return 0
    if (op.needs & NEEDS_INODES and vq.inodes is None or
            op.needs & NEEDS_WRITABLE and vq.cfg.read_only or
            op.needs & NEEDS_URING and vq.io.uring == NULL):
        return 0
    return op.serve(vq)


cdef int do_getattr(Virtqueue vq) noexcept nogil:
    """fuse_attr_out from statx of the node's O_PATH descriptor; the same bytes the Python
    engine would send.  A node held by file handle that no longer opens is left to the
    engine."""
    cdef uint64_t nodeid = vq.req.hdr.h.nodeid
    cdef statx st
    cdef fuse_attr_out out
    cdef int rc
    cdef int fd = vq.inodes.acquire(nodeid)
    if fd == -2:
        return 0
    if fd < 0:
        vq._reply(-ENOENT, NULL, 0)
        return 1
    rc = c_statx(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, &st)
    if rc < 0:
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


cdef int _string(Virtqueue vq, uint32_t at, char *buf, uint32_t most,
                 size_t *length) noexcept nogil:
    """Copy the NUL-terminated string that starts ``at`` bytes into the request and ends
    within its fuse_in_header.len (the bytes the engine sees) into ``buf`` (``most`` + 1
    bytes), its length into ``length``: 1; -EINVAL when the request ends before a NUL; 0 when
    no NUL comes within ``most`` + 1 bytes though the request goes on, or the buffers end
    first."""
    cdef uint32_t avail, n
    if at > vq.req.hdr.h.len:
        return 0
    avail = vq.req.hdr.h.len - at
    n = avail if avail < most + 1 else most + 1
    if _gather(vq.req.iov, vq.req.chain.out_num, at, <uint8_t *>buf, n) != n:
        return 0
    length[0] = strnlen(buf, n)
    if length[0] == n:
        return 0 if avail > n else -EINVAL
    return 1


cdef bint _names(Virtqueue vq, uint32_t at, char *buf, uint32_t count,
                 size_t *lengths) noexcept nogil:
    """Copy the ``count`` NUL-terminated names that start ``at`` bytes into the request
    (``_string``) into ``buf`` (``count`` times LOOKUP_NAME_MAX + 1 bytes), one after the
    other as the guest sent them, and their lengths into ``lengths``.  False, for the engine
    to answer, when a name has no NUL within NAME_MAX + 1 bytes (EINVAL or ENAMETOOLONG
    there) or the request ends first (EINVAL)."""
    cdef uint32_t pos = 0, i
    for i in range(count):
        if _string(vq, at + pos, buf + pos, LOOKUP_NAME_MAX, &lengths[i]) <= 0:
            return False
        pos += <uint32_t>lengths[i] + 1
    return True


cdef int do_lookup(Virtqueue vq) noexcept nogil:
    """LOOKUP of a plain name as the engine's (``lookup_entry``): fuse_entry_out with one
    lookup counted, of an inode the node id table knows or of a new one it enters, the same
    bytes the engine would send; ENOENT for a name that does not exist, as the engine answers
    it in every cache mode (no negative entry), and the file system's error where its lookup
    fails the same way.  A name it would refuse, a mount point, a new inode held by file
    handle, a used-up descriptor budget or a failure to ask is left to the engine."""
    cdef char name[LOOKUP_NAME_MAX + 1]
    cdef size_t length
    cdef int64_t nodeid
    cdef fuse_entry_out out
    if not _names(vq, sizeof(fuse_in_header), name, 1, &length):
        return 0
    if not within_budget(vq.handles, vq.inodes):
        return 0                    # EMFILE in the file system, before it looks
    nodeid = lookup_entry(vq.handles, vq.inodes, vq.req.hdr.h.nodeid, name, length, 0,
                          vq.cfg.attr_valid, vq.cfg.attr_valid_nsec, &out)
    if nodeid == 0:
        return 0
    if nodeid < 0:
        vq._reply(<int>nodeid, NULL, 0)
        return 1
    vq._reply(0, &out, sizeof(out))
    return 1


# FLUSH, RELEASE and FORGET end the guest's locks as the engine's do (fastvfs/fuse/engine.py,
# through PassthroughFs): the same bodies of the handle table's lock descriptions
# (tables/locks.pxi ``locks_flushed``, ``locks_flock_unlocked``, ``locks_released``,
# ``locks_forgotten``), each nothing while no description exists.

cdef int do_flush(Virtqueue vq) noexcept nogil:
    """FLUSH with the handle left open; once the file is flushed, the lock owner's POSIX locks
    on the node go (a close in the guest), as the engine's do_flush drops them."""
    cdef uint64_t fh = vq.req.hdr.arg.flush.fh
    cdef int rc, fd = vq.handles.acquire(fh)
    if fd < 0:
        vq._reply(-EBADF, NULL, 0)
        return 1
    rc = flush_fd(fd)
    vq.handles.release(fh)
    if rc == 0:
        locks_flushed(vq.handles, vq.req.hdr.h.nodeid, vq.req.hdr.arg.flush.lock_owner)
    vq._reply(rc, NULL, 0)
    return 1


cdef int do_release(Virtqueue vq) noexcept nogil:
    """RELEASE of a handle: with FUSE_RELEASE_FLOCK_UNLOCK the open file's flock lock first;
    then the handle, a directory handle too (released by RELEASE as well as by RELEASEDIR,
    whatever the guest sends) with its listing, and the lock descriptions no handle is left to
    (an OFD lock belongs to the guest's open file and has no other end)."""
    cdef uint64_t fh = vq.req.hdr.arg.release.fh
    cdef int rc
    if vq.req.hdr.arg.release.release_flags & FUSE_RELEASE_FLOCK_UNLOCK:
        locks_flock_unlocked(vq.handles, vq.req.hdr.h.nodeid,
                             vq.req.hdr.arg.release.lock_owner)
    rc = vq.handles.remove_fh(fh)
    vq._reply(rc, NULL, 0)
    return 1


cdef int do_forget(Virtqueue vq) noexcept nogil:
    if vq.inodes.forget_c(vq.req.hdr.h.nodeid, vq.req.hdr.arg.forget.nlookup):
        locks_forgotten(vq.handles, vq.req.hdr.h.nodeid)
    used_push(vq, vq.req.chain.head, 0)   # FORGET has no reply
    vq._account(0)
    return 1


cdef int do_batch_forget(Virtqueue vq) noexcept nogil:
    """BATCH_FORGET: only the entries really present are read (the count is the guest's
    word)."""
    cdef uint32_t count = vq.req.hdr.arg.batch_forget.count, i, room
    cdef fuse_forget_one entry
    cdef uint64_t at = sizeof(fuse_in_header) + sizeof(fuse_batch_forget_in)
    room = (vq.req.hdr.h.len - <uint32_t>at) // sizeof(fuse_forget_one)
    if count > room:
        count = room
    for i in range(count):
        if _gather(vq.req.iov, vq.req.chain.out_num, at + i * sizeof(fuse_forget_one),
                   <uint8_t *>&entry, sizeof(entry)) != sizeof(entry):
            break
        if vq.inodes.forget_c(entry.nodeid, entry.nlookup):
            locks_forgotten(vq.handles, entry.nodeid)
    used_push(vq, vq.req.chain.head, 0)
    vq._account(0)
    return 1


cdef int do_fsync(Virtqueue vq) noexcept nogil:
    """FSYNC of a queue with io_uring (NEEDS_URING; a synchronous queue leaves it to the
    engine, which may run it on its thread pool): handed to the kernel's workers through the
    ring, beside what is in flight (``io_nodata``), so the queue goes on serving while the
    file system syncs; fsync(2) or fdatasync(2) here where ``sync_here`` allows (alone, and
    no thread pool); the engine's when the ring has no room."""
    cdef uint64_t fh = vq.req.hdr.arg.fsync.fh
    cdef bint datasync = vq.req.hdr.arg.fsync.fsync_flags & FUSE_FSYNC_FDATASYNC
    cdef io_uring_sqe *sqe
    cdef int rc = 0
    cdef int fd = vq.handles.acquire(fh)
    if fd < 0:
        vq._reply(-EBADF, NULL, 0)
        return 1
    if not sync_here(vq):
        sqe = io_nodata_sqe(vq, fd, fh)
        if sqe == NULL:
            vq.handles.release(fh)
            return 0
        io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC if datasync else 0)
        io_nodata(vq, sqe)
        return 1
    vq.io.inline_syncs += 1
    settle(vq)
    if (fdatasync(fd) if datasync else fsync(fd)) < 0:
        rc = -errno
    vq.handles.release(fh)
    vq._reply(rc, NULL, 0)
    return 1


cdef int do_fsyncdir(Virtqueue vq) noexcept nogil:
    """FSYNCDIR: FSYNC of a directory handle (``do_fsync``), EBADF for any other handle, as
    the engine's (PassthroughFs.fsyncdir)."""
    if not vq.handles.is_directory(vq.req.hdr.arg.fsync.fh):
        vq._reply(-EBADF, NULL, 0)
        return 1
    return do_fsync(vq)


cdef inline bint fallocate_small(const fuse_fallocate_in *arg) noexcept nogil:
    """The FALLOCATE only allocates (mode 0 or FALLOC_FL_KEEP_SIZE) at most FALLOCATE_FAST_MAX
    (consts.pxi): no data written, nothing written back, a cost below the hand-over to
    io-wq."""
    return (arg.mode & ~(<uint32_t>FALLOC_FL_KEEP_SIZE)) == 0 and \
        arg.length <= FALLOCATE_FAST_MAX


cdef inline bint fallocate_here(Virtqueue vq, bint small) noexcept nogil:
    """FALLOCATE may run on the queue's thread: the engine has no pool, and the request is
    alone (``sync_here``) or ``small`` (``fallocate_small``)."""
    return not vq.cfg.engine_pool and (small or sync_here(vq))


cdef int do_fallocate(Virtqueue vq) noexcept nogil:
    """FALLOCATE: fallocate(2) here where ``fallocate_here`` allows (no thread pool, and alone
    or a small allocation), or when the queue has no ring or no room in it and the engine has
    no pool; else through the ring, beside what is in flight (``io_nodata``), so the queue goes
    on serving while the file system allocates (with a pool and no ring or no room in it: the
    engine's)."""
    cdef const fuse_fallocate_in *arg = &vq.req.hdr.arg.fallocate
    cdef bint small = fallocate_small(arg)
    cdef io_uring_sqe *sqe
    cdef int fd, rc = 0
    if vq.cfg.engine_pool and vq.io.uring == NULL:
        return 0
    if arg.offset > <uint64_t>INT64_MAX or arg.length > <uint64_t>INT64_MAX:
        vq._reply(-EINVAL, NULL, 0)
        return 1
    fd = vq.handles.acquire(arg.fh)
    if fd < 0:
        vq._reply(-EBADF, NULL, 0)
        return 1
    if vq.handles.cap_xattr[0]:
        rc = kill_mapped_capability(fd, vq.handles.cap_xattr)
        if rc < 0:
            vq.handles.release(arg.fh)
            vq._reply(rc, NULL, 0)
            return 1
    sqe = io_nodata_sqe(vq, fd, arg.fh) if not fallocate_here(vq, small) else NULL
    if sqe != NULL:
        io_uring_prep_fallocate(sqe, fd, <int>arg.mode, <int64_t>arg.offset,
                                <int64_t>arg.length)
        io_nodata(vq, sqe)
        return 1
    if vq.cfg.engine_pool:
        # The ring is full: the engine's pool (which repeats the capability's removal).
        vq.handles.release(arg.fh)
        return 0
    if vq.io.uring != NULL:
        vq.io.inline_syncs += 1
    if not small:
        settle(vq)
    if fallocate(fd, <int>arg.mode, <int64_t>arg.offset, <int64_t>arg.length) < 0:
        rc = -errno
    vq.handles.release(arg.fh)
    vq._reply(rc, NULL, 0)
    return 1


cdef void _fast_op(uint32_t opcode, fast_op serve, uint32_t arg_size, uint32_t needs):
    FAST_OPS[opcode].serve = serve
    FAST_OPS[opcode].arg_size = arg_size
    FAST_OPS[opcode].needs = needs


_fast_op(FUSE_LOOKUP, do_lookup, 0, NEEDS_INODES)
_fast_op(FUSE_GETATTR, do_getattr, 0, NEEDS_INODES)
_fast_op(FUSE_READ, do_read, sizeof(fuse_read_in), 0)
_fast_op(FUSE_WRITE, do_write, sizeof(fuse_write_in), NEEDS_WRITABLE)
_fast_op(FUSE_FSYNC, do_fsync, sizeof(fuse_fsync_in), NEEDS_URING)
_fast_op(FUSE_FSYNCDIR, do_fsyncdir, sizeof(fuse_fsync_in), NEEDS_URING)
_fast_op(FUSE_FALLOCATE, do_fallocate, sizeof(fuse_fallocate_in), NEEDS_WRITABLE)
_fast_op(FUSE_COPY_FILE_RANGE, do_copy_file_range, sizeof(fuse_copy_file_range_in),
         NEEDS_WRITABLE)
_fast_op(FUSE_RELEASE, do_release, sizeof(fuse_release_in), 0)
_fast_op(FUSE_FLUSH, do_flush, sizeof(fuse_flush_in), 0)
_fast_op(FUSE_FORGET, do_forget, sizeof(fuse_forget_in), NEEDS_INODES)
_fast_op(FUSE_BATCH_FORGET, do_batch_forget, sizeof(fuse_batch_forget_in), NEEDS_INODES)
