# FUSE replies: fuse_out_header and payload written into a chain's device-writable buffers, and
# replies sent later, from any thread, by the Python engine (PendingReply).

cdef class RingLock:
    """Serializes used-ring updates of one ring: its worker thread and the threads completing
    deferred requests (see ``PendingReply``) both publish used elements.  One lock lives as long
    as the ring index, across the Virtqueue objects a restarted ring goes through.  Leaf lock."""

    def __cinit__(self):
        pthread_mutex_init(&self.m, NULL)

    def __dealloc__(self):
        pthread_mutex_destroy(&self.m)


cdef inline uint64_t reply_room(const Chain *c) noexcept nogil:
    """The reply bytes the chain's writable buffers hold after fuse_out_header (what the
    engine is told as ``out_size``)."""
    return c.in_len - sizeof(fuse_out_header) if c.in_len >= sizeof(fuse_out_header) else 0


cdef uint32_t write_reply(const iovec *w, int in_num, uint64_t in_len, uint64_t unique,
                          int32_t error, const void *payload, uint32_t length) noexcept nogil:
    """Write fuse_out_header (+ payload) into writable buffers; returns the used length (0 when
    not even the header fits).  A payload that does not fit becomes an ERANGE error."""
    cdef fuse_out_header out
    if in_len < sizeof(fuse_out_header) + length:
        if in_len < sizeof(fuse_out_header):
            return 0
        error = -ERANGE
        length = 0
    out.len = <uint32_t>sizeof(fuse_out_header) + length
    out.error = error
    out.unique = unique
    _scatter(w, in_num, 0, <const uint8_t *>&out, sizeof(fuse_out_header))
    if length:
        _scatter(w, in_num, sizeof(fuse_out_header), <const uint8_t *>payload, length)
    return out.len


cdef inline void write_out_header(const iovec *w, int in_num, uint64_t unique,
                                  uint32_t data_length) noexcept nogil:
    """The header of a successful reply whose ``data_length`` bytes of payload are already in
    place (a READ's data, read straight into the buffers after the header)."""
    cdef fuse_out_header out
    out.len = <uint32_t>sizeof(fuse_out_header) + data_length
    out.error = 0
    out.unique = unique
    _scatter(w, in_num, 0, <const uint8_t *>&out, sizeof(fuse_out_header))


cdef class PendingReply:
    """A request the engine answers later, from any thread (a blocking lock wait, say).

    It keeps its own copy of the chain's writable buffers and a reference to the memory they
    lie in.  ``complete`` publishes the reply on the ring that is live at that moment: a ring
    paused and restarted by the backend (new memory table, new eventfds) hands its pending
    replies over; a ring stopped by the frontend (GET_VRING_BASE, reset) drops them, since the
    guest's memory may already hold something else.
    """

    def __dealloc__(self):
        free(self.reply_iov)

    def complete(self, int error, payload=b""):
        """Send the reply (``error`` 0 or -errno); returns False if the ring is gone."""
        cdef const uint8_t[::1] view
        cdef const uint8_t *data = NULL
        cdef uint32_t length = 0, total
        cdef Virtqueue vq
        if payload:
            view = payload
            data = &view[0]
            length = <uint32_t>view.shape[0]
        # Lock rule: the ring lock is held only by code that never waits for the GIL (the
        # section below runs no Python code), so taking it with the GIL held cannot deadlock.
        pthread_mutex_lock(&self.vq.lock.m)
        vq = self.vq
        while vq._retired and vq._successor is not None:
            vq = vq._successor
        if self.done or vq._retired:
            pthread_mutex_unlock(&self.vq.lock.m)
            return False
        self.done = True
        total = write_reply(self.reply_iov, self.in_num, self.in_len, self.unique, error, data,
                            length)
        ring_push_used(&vq.ring, self.head, total)
        used_notify_locked(vq)
        pthread_mutex_unlock(&self.vq.lock.m)
        return True
