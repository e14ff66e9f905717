# READ and WRITE, straight between guest memory and the file: through the queue's io_uring
# when it has one (uring_io.pxi), else (or when the ring has no room) with preadv/pwritev here;
# COPY_FILE_RANGE, between two files in the host kernel.

cdef inline bint io_alone(Virtqueue vq) noexcept nogil:
    """The popped request is the only work there is: nothing in flight or prepared, and no
    other request published."""
    return vq.io.nflight == 0 and vq.io.nqueued == 0 and not ring_avail_pending(&vq.ring)


cdef inline bint sync_here(Virtqueue vq) noexcept nogil:
    """A request that may block for long (a sync, an allocation) may run on the queue's
    thread: it is the only work there is (``io_alone``: nothing waits behind it, and handing
    it over would cost more than the call) and the engine has no thread pool (a user who gave
    one asked that nothing hold this thread)."""
    return not vq.cfg.engine_pool and io_alone(vq)


cdef inline void settle(Virtqueue vq) noexcept nogil:
    """Before the queue's thread blocks in a call that may take long (a sync, a large
    allocation) or hands a request to the engine (``_drain_fast``): the I/O in flight is
    answered and every reply published, so that none waits behind it."""
    if vq.io.nflight:
        io_flush(vq)
    used_flush(vq)


cdef inline bint _lone(Virtqueue vq) noexcept nogil:
    """``io_alone``, and no recent lone READ that would have blocked."""
    if vq.io.lone_skip:
        vq.io.lone_skip -= 1
        return False
    return io_alone(vq)


cdef int do_read(Virtqueue vq) noexcept nogil:
    cdef Request *q = &vq.req
    cdef uint64_t fh = q.hdr.arg.read.fh
    cdef uint64_t offset = q.hdr.arg.read.offset
    cdef uint32_t size = q.hdr.arg.read.size
    cdef const iovec *reply = q.iov + q.chain.out_num
    cdef int fd, n
    cdef int64_t done = -EAGAIN
    if offset > <uint64_t>INT64_MAX:
        vq._reply(-EINVAL, NULL, 0)
        return 1
    if q.chain.in_len < sizeof(fuse_out_header):
        used_push(vq, q.chain.head, 0)
        vq._account(-EINVAL)
        return 1
    if size > vq.cfg.max_io:
        size = vq.cfg.max_io
    if size > q.chain.in_len - sizeof(fuse_out_header):
        size = <uint32_t>(q.chain.in_len - sizeof(fuse_out_header))
    fd = vq.handles.acquire(fh)
    if fd < 0:
        vq._reply(-EBADF, NULL, 0)
        return 1
    n = _slice(reply, q.chain.in_num, sizeof(fuse_out_header), size, q.scratch)
    if vq.io.uring != NULL and _lone(vq) and not vq.handles.direct(fh):
        # Nothing else to overlap it with: a read the page cache can answer is cheaper as a
        # preadv2 than through the ring.  One that would block, or a file that does not take
        # preadv2 (a pipe: ESPIPE), goes there, and so do the next LONE_SKIP.
        done = _full_io(fd, q.scratch, n, <int64_t>offset, size, False, RWF_NOWAIT)
        if done < 0:
            vq.io.lone_skip = LONE_SKIP
        else:
            vq.io.lone_reads += 1
    if done < 0:
        if vq.io.uring != NULL and io_queue(vq, fd, fh, <int64_t>offset, size, False, False):
            return 1
        done = _full_io(fd, q.scratch, n, <int64_t>offset, size, False, 0)
    vq.handles.release(fh)
    if done < 0:
        vq._reply(<int32_t>done, NULL, 0)
        return 1
    write_out_header(reply, q.chain.in_num, q.hdr.h.unique, <uint32_t>done)
    used_push(vq, q.chain.head, <uint32_t>(sizeof(fuse_out_header) + done))
    vq._account(0)
    return 1


cdef int do_write(Virtqueue vq) noexcept nogil:
    cdef Request *q = &vq.req
    cdef uint64_t fh = q.hdr.arg.write.fh
    cdef uint64_t offset = q.hdr.arg.write.offset
    cdef uint32_t size = q.hdr.arg.write.size
    cdef bint kill = q.hdr.arg.write.write_flags & FUSE_WRITE_KILL_SUIDGID != 0
    cdef uint64_t data_at = sizeof(fuse_in_header) + sizeof(fuse_write_in)
    cdef int fd, rc, n
    cdef int64_t done
    cdef fuse_write_out out
    if offset > <uint64_t>INT64_MAX or size > vq.cfg.max_io or size != q.hdr.h.len - data_at:
        vq._reply(-EINVAL, NULL, 0)
        return 1
    fd = vq.handles.acquire(fh)
    if fd < 0:
        vq._reply(-EBADF, NULL, 0)
        return 1
    if size and vq.handles.cap_xattr[0]:
        rc = kill_mapped_capability(fd, vq.handles.cap_xattr)
        if rc < 0:
            vq.handles.release(fh)
            vq._reply(rc, NULL, 0)
            return 1
    if vq.io.uring != NULL and vq.cfg.uring_writes and \
            io_queue(vq, fd, fh, <int64_t>offset, size, True, kill):
        return 1
    n = _slice(q.iov, q.chain.out_num, data_at, size, q.scratch)
    done = _full_io(fd, q.scratch, n, <int64_t>offset, size, True, 0)
    if done > 0 and kill:
        kill_suidgid(fd)
    vq.handles.release(fh)
    if done < 0:
        vq._reply(<int32_t>done, NULL, 0)
        return 1
    out.size = <uint32_t>done
    out.padding = 0
    vq._reply(0, &out, sizeof(out))
    return 1


cdef int do_copy_file_range(Virtqueue vq) noexcept nogil:
    """COPY_FILE_RANGE as the engine's do_copy_file_range over PassthroughFs.copy_file_range
    (``copy_range``, one body): flags or offsets past off_t are EINVAL, then each handle must
    be live (EBADF); answered with the bytes copied.  The copy runs on the queue's thread, so
    only up to COPY_FAST_MAX bytes: larger ones, and request extensions, are left to the
    engine."""
    cdef const fuse_copy_file_range_in *arg = &vq.req.hdr.arg.copy_file_range
    cdef fuse_write_out out
    cdef int fd_in, fd_out
    cdef ssize_t n
    if arg.len > COPY_FAST_MAX:
        return 0
    if arg.flags or arg.off_in > <uint64_t>INT64_MAX or arg.off_out > <uint64_t>INT64_MAX:
        vq._reply(-EINVAL, NULL, 0)
        return 1
    fd_in = vq.handles.acquire(arg.fh_in)
    if fd_in < 0:
        vq._reply(-EBADF, NULL, 0)
        return 1
    fd_out = vq.handles.acquire(arg.fh_out)
    if fd_out < 0:
        vq.handles.release(arg.fh_in)
        vq._reply(-EBADF, NULL, 0)
        return 1
    n = copy_range(vq.handles, fd_in, <int64_t>arg.off_in, fd_out, <int64_t>arg.off_out,
                   arg.len)
    vq.handles.release(arg.fh_out)
    vq.handles.release(arg.fh_in)
    if n < 0:
        vq._reply(<int32_t>n, NULL, 0)
        return 1
    out.size = <uint32_t>n
    out.padding = 0
    vq._reply(0, &out, sizeof(out))
    return 1
