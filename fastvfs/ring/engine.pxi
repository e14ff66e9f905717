# Requests the fast path leaves to the Python FUSE engine (fastvfs.fuse), asked with the GIL
# held: the request copied out of guest memory, the reply written back, now or later.

cdef int ask_engine(Virtqueue vq, handler) except -1:
    """Hand the popped request to the Python engine: ``handler(request, out_size)`` returns
    None (no reply, e.g. FORGET), ``(error, payload)``, or a callable that arranges for a
    ``PendingReply`` to be completed later (a waiting SETLKW); it must not raise."""
    cdef uint32_t hlen = vq.req.hdr.h.len
    cdef const uint8_t[::1] view
    cdef int32_t error
    if hlen > SLOW_REQUEST_MAX:
        vq._reply(-EINVAL, NULL, 0)
        _engine_answered(vq)
        return 0
    request = PyBytes_FromStringAndSize(NULL, hlen)
    _gather(vq.req.iov, vq.req.chain.out_num, 0,
            <uint8_t *>PyBytes_AS_STRING(request), hlen)
    out_size = reply_room(&vq.req.chain)
    try:
        result = handler(request, out_size)
    except BaseException:
        result = (-EIO, b"")
    if result is None:
        used_push(vq, vq.req.chain.head, 0)
        vq._account(0)
        _engine_answered(vq)
        return 0
    if type(result) is not tuple:
        # Its latency is counted up to the hand-over (SETLKW waits can last forever).
        vq._account(0)
        _engine_answered(vq)
        pending = defer(vq)
        try:
            result(pending)
        except BaseException:
            pending.complete(-EIO)
        return 0
    error = result[0]
    payload = result[1]
    if not payload:
        with nogil:
            vq._reply(error, NULL, 0)
    else:
        view = payload
        with nogil:
            vq._reply(error, &view[0], <uint32_t>view.shape[0])
    _engine_answered(vq)
    return 0


cdef inline void _engine_answered(Virtqueue vq) noexcept nogil:
    """Count the request just accounted as the engine's, in the worker's own block (after its
    count: a snapshot never sees more engine answers than requests)."""
    if vq.stats != NULL:
        _bump(&vq.stats.engine[vq.req.opcode if vq.req.opcode < STATS_OPS else 0], 1, False)

cdef PendingReply defer(Virtqueue vq):
    cdef PendingReply pending = PendingReply.__new__(PendingReply)
    pending.reply_iov = <iovec *>malloc((vq.req.chain.in_num + 1) * sizeof(iovec))
    if pending.reply_iov == NULL:
        raise MemoryError()
    memcpy(pending.reply_iov, vq.req.iov + vq.req.chain.out_num,
           vq.req.chain.in_num * sizeof(iovec))
    pending.in_num = vq.req.chain.in_num
    pending.in_len = vq.req.chain.in_len
    pending.head = vq.req.chain.head
    pending.unique = vq.req.hdr.h.unique
    pending.vq = vq
    pending.mem = vq.mem
    return pending
