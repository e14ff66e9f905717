# io_uring I/O of one queue: requests in flight by chain head, their iovecs in a pool, batched
# submission, completions turned into replies.  The ring itself is set up, restricted and
# registered by the cffi engine (fastvfs.uring) on the worker's thread; this file only drives
# it through the inline helpers of includes/liburing.pxd.

# What a queue's io_uring may do, and nothing else (the kernel enforces it: see
# UringEngine's ``restrict``): the operations prepared here and the registration of guest
# memory for --fixed-buffers; no submission flag.
URING_ALLOWED = (("READ", "READV", "READ_FIXED", "WRITE", "WRITEV", "WRITE_FIXED", "FSYNC",
                  "FALLOCATE"),
                 ("REGISTER_BUFFERS", "UNREGISTER_BUFFERS"),
                 ())


def _open_uring(int index, unsigned num, bint writes):
    """The io_uring a queue worker drives (created on its own thread: SINGLE_ISSUER), or None
    where this kernel or the seccomp filter refuses one; READ/WRITE are then synchronous."""
    try:
        engine = UringEngine(min(max(num, 64), 4096),
                             prefer=("IORING_SETUP_SUBMIT_ALL", "IORING_SETUP_SINGLE_ISSUER"),
                             restrict=URING_ALLOWED)
    except (UringUnavailable, OSError) as exc:
        _log.warning("ring %d: no io_uring (%s); READ and WRITE are synchronous", index, exc)
        return None
    _log.debug("ring %d: %s through io_uring (%d entries)", index,
               "READ and WRITE" if writes else "READ", engine.entries)
    return engine


cdef io_uring_sqe *io_flight_sqe(Virtqueue vq, int need) noexcept nogil:
    """A submission entry for the popped chain with room for ``need`` iovecs in the pool, or
    NULL (the caller then does the work synchronously)."""
    cdef io_uring_sqe *sqe
    if vq.io.flight[vq.req.chain.head].busy or vq.io.pool_used + need > POOL_IOV:
        # A head still in flight (a broken or hostile driver published it again: finish that
        # request first, as the synchronous path would have), or a full pool.
        io_flush(vq)
        if vq.io.pool_used + need > POOL_IOV:
            return NULL
    sqe = io_uring_get_sqe(vq.io.uring)
    if sqe == NULL:
        io_submit(vq)
        sqe = io_uring_get_sqe(vq.io.uring)
    return sqe


cdef Flight *io_flight_begin(Virtqueue vq, int fd, uint64_t fh, int64_t offset, uint32_t size,
                             bint writing, bint kill) noexcept nogil:
    """Record the popped chain as in flight, its writable iovecs kept in the pool for the
    reply; data iovecs, if any, go in the pool from ``data_at``."""
    cdef Request *q = &vq.req
    cdef Flight *f = &vq.io.flight[q.chain.head]
    f.in_at = vq.io.pool_used
    f.in_num = q.chain.in_num
    memcpy(vq.io.pool + vq.io.pool_used, q.iov + q.chain.out_num,
           q.chain.in_num * sizeof(iovec))
    vq.io.pool_used += q.chain.in_num
    f.data_at = vq.io.pool_used
    f.ndata = 0
    f.unique = q.hdr.h.unique
    f.fh = fh
    f.fd = fd
    f.offset = offset
    f.size = size
    f.in_len = q.chain.in_len
    f.writing = writing
    f.kill = kill
    f.opcode = q.opcode
    f.start_ns = q.start_ns
    f.busy = True
    vq.io.nflight += 1
    vq.io.nqueued += 1
    return f


cdef io_uring_sqe *io_nodata_sqe(Virtqueue vq, int fd, uint64_t fh) noexcept nogil:
    """For an operation without data (FSYNC, FALLOCATE) on handle ``fh`` (referenced, its
    ``fd``): a submission entry with the popped chain recorded in flight, or NULL (no ring, or
    no room: the caller does it another way).  Prepare it, then ``io_nodata``."""
    cdef io_uring_sqe *sqe
    if vq.io.uring == NULL:
        return NULL
    sqe = io_flight_sqe(vq, vq.req.chain.in_num)
    if sqe != NULL:
        io_flight_begin(vq, fd, fh, 0, 0, False, False)
    return sqe


cdef inline void io_nodata(Virtqueue vq, io_uring_sqe *sqe) noexcept nogil:
    """Finish a prepared ``io_nodata_sqe`` entry.  It runs beside whatever else is in flight,
    not after it: requests in flight together are unordered in FUSE, as a guest waits for a
    reply before anything it sends depends on it (its fsync waits for the replies of the
    writes it covers, fs/fuse/file.c fuse_fsync), so no IOSQE_IO_DRAIN (which serialized
    every sync behind the one before it)."""
    io_uring_sqe_set_data64(sqe, vq.req.chain.head)


cdef inline int io_fixed_index(IoBatch *io, uintptr_t start, uint64_t length) noexcept nogil:
    """The registered piece holding [start, start + length), or -1."""
    cdef uint32_t i
    for i in range(io.nfixed):
        if start >= io.fixed[i].start and start - io.fixed[i].start <= io.fixed[i].length and \
                length <= io.fixed[i].length - (start - io.fixed[i].start):
            return <int>i
    return -1


cdef int io_queue(Virtqueue vq, int fd, uint64_t fh, int64_t offset, uint32_t size,
                  bint writing, bint kill) noexcept nogil:
    """Prepare the popped READ/WRITE as an io_uring read(v)/write(v) straight into or out of
    the chain's buffers; 1 when queued (the reply follows its completion), 0 when the caller
    must do it synchronously (no room)."""
    cdef Request *q = &vq.req
    cdef int out_num = q.chain.out_num, in_num = q.chain.in_num
    cdef io_uring_sqe *sqe = io_flight_sqe(vq, in_num + (out_num if writing else in_num))
    cdef Flight *f
    cdef iovec *data
    cdef int buf_index = -1
    if sqe == NULL:
        return 0
    f = io_flight_begin(vq, fd, fh, offset, size, writing, kill)
    data = vq.io.pool + f.data_at
    if writing:
        f.ndata = _slice(q.iov, out_num, sizeof(fuse_in_header) + sizeof(fuse_write_in), size,
                         data)
    else:
        f.ndata = _slice(q.iov + out_num, in_num, sizeof(fuse_out_header), size, data)
    vq.io.pool_used += f.ndata
    # One buffer: the plain opcodes skip importing an iovec; in registered guest memory, the
    # fixed ones skip pinning its pages too.
    if f.ndata == 1 and vq.io.nfixed:
        buf_index = io_fixed_index(&vq.io, <uintptr_t>data.iov_base, data.iov_len)
    if buf_index >= 0:
        vq.io.fixed_ios += 1
    if buf_index >= 0 and writing:
        io_uring_prep_write_fixed(sqe, fd, data.iov_base, <unsigned>data.iov_len,
                                  <uint64_t>offset, buf_index)
    elif buf_index >= 0:
        io_uring_prep_read_fixed(sqe, fd, data.iov_base, <unsigned>data.iov_len,
                                 <uint64_t>offset, buf_index)
    elif writing and f.ndata == 1:
        io_uring_prep_write(sqe, fd, data.iov_base, <unsigned>data.iov_len, <uint64_t>offset)
    elif writing:
        io_uring_prep_writev(sqe, fd, data, f.ndata, <uint64_t>offset)
    elif f.ndata == 1:
        io_uring_prep_read(sqe, fd, data.iov_base, <unsigned>data.iov_len, <uint64_t>offset)
    else:
        io_uring_prep_readv(sqe, fd, data, f.ndata, <uint64_t>offset)
    io_uring_sqe_set_data64(sqe, q.chain.head)
    if vq.io.nqueued >= SUBMIT_BATCH:
        io_submit(vq)
        io_reap(vq)
    return 1


cdef void io_submit(Virtqueue vq) noexcept nogil:
    """Hand the prepared operations to the kernel (one system call for the batch)."""
    cdef int rc
    while vq.io.nqueued:
        rc = io_uring_submit(vq.io.uring)
        if rc >= 0:
            vq.io.nqueued -= rc if <uint32_t>rc <= vq.io.nqueued else vq.io.nqueued
            if rc == 0:
                break
        elif rc == -EINTR:
            continue
        else:
            # EBUSY/EAGAIN: completions must be reaped before more can be submitted.
            if io_reap(vq) == 0:
                break


cdef int io_reap(Virtqueue vq) noexcept nogil:
    """Turn every available completion into its reply; returns how many.  Each batch's used
    elements are published under one lock, with one notification check."""
    cdef io_uring_cqe *cqes[REAP_BATCH]
    cdef uint32_t lengths[REAP_BATCH]
    cdef uint16_t heads[REAP_BATCH]
    cdef unsigned n, i, total = 0
    cdef uint64_t now = 0
    while True:
        n = io_uring_peek_batch_cqe(vq.io.uring, cqes, REAP_BATCH)
        if n == 0:
            break
        if vq.stats != NULL:
            now = _now_ns()
        for i in range(n):
            heads[i] = <uint16_t>cqes[i].user_data
            lengths[i] = io_complete(vq, heads[i], cqes[i].res, now)
        io_uring_cq_advance(vq.io.uring, n)
        pthread_mutex_lock(&vq.lock.m)
        for i in range(n):
            ring_push_used(&vq.ring, heads[i], lengths[i])
        used_notify_locked(vq)
        pthread_mutex_unlock(&vq.lock.m)
        total += n
    if vq.io.nflight == 0:
        vq.io.pool_used = 0
    return total


cdef void io_flush(Virtqueue vq) noexcept nogil:
    """Submit what is prepared and wait until nothing is in flight."""
    cdef io_uring_cqe *cqe
    cdef int rc
    io_submit(vq)
    io_reap(vq)
    used_flush(vq)
    while vq.io.nflight:
        if vq.io.nqueued:
            io_submit(vq)
        rc = io_uring_wait_cqe(vq.io.uring, &cqe)
        if rc < 0 and rc != -EINTR and rc != -EAGAIN:
            break
        io_reap(vq)


cdef uint32_t io_complete(Virtqueue vq, uint16_t head, int32_t res, uint64_t now) noexcept nogil:
    """Write the reply of a finished operation; returns its used length (the caller publishes
    it)."""
    cdef Flight *f = &vq.io.flight[head]
    cdef const iovec *reply = vq.io.pool + f.in_at
    cdef int64_t done = res, more
    cdef int n
    cdef uint32_t total
    cdef fuse_write_out wout
    f.busy = False
    if res >= 0 and <uint32_t>res < f.size:
        # A short transfer: finish it as the synchronous path would (a read stops at EOF).
        if res > 0 or f.writing:
            n = _slice(vq.io.pool + f.data_at, f.ndata, <uint64_t>res, f.size - <uint32_t>res,
                       vq.req.scratch)
            more = _full_io(f.fd, vq.req.scratch, n, f.offset + res, f.size - <uint32_t>res,
                            f.writing, 0)
            if more > 0:
                done += more
            elif more < 0 and done == 0:
                done = more
    if f.writing and done > 0 and f.kill:
        kill_suidgid(f.fd)
    vq.handles.release(f.fh)
    if done < 0:
        total = write_reply(reply, f.in_num, f.in_len, f.unique, <int32_t>done, NULL, 0)
    elif f.writing:
        wout.size = <uint32_t>done
        wout.padding = 0
        total = write_reply(reply, f.in_num, f.in_len, f.unique, 0, &wout, sizeof(wout))
    else:
        # A READ's data is in place after the header; FSYNC and FALLOCATE have none (0).
        write_out_header(reply, f.in_num, f.unique, <uint32_t>done)
        total = <uint32_t>(sizeof(fuse_out_header) + done)
    if vq.stats != NULL:
        _stats_record(vq.stats, f.opcode, <int32_t>done if done < 0 else 0, now - f.start_ns)
    vq.io.nflight -= 1
    return total


cdef io_register_memory(Virtqueue vq, engine):
    """Register guest memory with the ring, so a READ or WRITE whose data is one buffer
    goes as READ_FIXED/WRITE_FIXED: the kernel pinned its pages once, here, instead of
    per I/O.  Registering pins (and so populates) the whole of guest memory; where the
    kernel refuses (RLIMIT_MEMLOCK, too many pieces) the queue uses plain buffers."""
    cdef Py_ssize_t i
    pieces = vq.mem.host_ranges()
    if not pieces or len(pieces) > MAX_FIXED:
        _log.warning("ring %d: %d pieces of guest memory, not registered with io_uring",
                     vq.cfg.index, len(pieces))
        return
    try:
        engine.register_buffers(pieces)
    except OSError as exc:
        _log.warning("ring %d: guest memory not registered with io_uring (%s)",
                     vq.cfg.index, exc)
        return
    vq.io.fixed = <FixedBuf *>malloc(len(pieces) * sizeof(FixedBuf))
    if vq.io.fixed == NULL:
        raise MemoryError()
    for i, (start, length) in enumerate(pieces):
        vq.io.fixed[i].start = start
        vq.io.fixed[i].length = length
    vq.io.nfixed = <uint32_t>len(pieces)
    _log.debug("ring %d: %d pieces of guest memory registered with io_uring",
               vq.cfg.index, vq.io.nfixed)
