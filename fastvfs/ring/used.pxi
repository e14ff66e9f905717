# Publishing replies: used elements queued and published in batches, each batch with one
# check of whether to wake the guest.  The used ring itself is splitq.pxi's; these run on the
# worker, taking the ring lock to publish.

# The replies one batch publishes, for the tests.
REPLIES_PER_BATCH = PUBLISH_BATCH


cdef void used_push(Virtqueue vq, uint16_t head, uint32_t length) noexcept nogil:
    """Queue one used element.  Replies, of every opcode, are published (with one
    notification check) every PUBLISH_BATCH replies and whenever the worker is about to wait
    or take the GIL (``used_flush`` in ``_drain_fast`` and before ``ask_engine``), so none
    waits on a sleeping worker and the guest is woken at most once per batch: one ring lock and
    one notification check per batch rather than per reply (reports/micro/2026-12-06T213605.md
    compares the two; reports/micro/2026-12-07-publish-batch.md batches of 16 and 8)."""
    vq.pub.heads[vq.pub.n] = head
    vq.pub.lens[vq.pub.n] = length
    vq.pub.n += 1
    if vq.pub.n == PUBLISH_BATCH:
        used_flush(vq)

cdef void used_flush(Virtqueue vq) noexcept nogil:
    """Publish the queued used elements and check, once, whether the guest wants to be
    woken for them."""
    cdef uint32_t i
    if vq.pub.n == 0:
        return
    pthread_mutex_lock(&vq.lock.m)
    for i in range(vq.pub.n):
        ring_push_used(&vq.ring, vq.pub.heads[i], vq.pub.lens[i])
    used_notify_locked(vq)
    pthread_mutex_unlock(&vq.lock.m)
    vq.pub.n = 0

cdef void used_notify_locked(Virtqueue vq) noexcept nogil:
    """Signal the call eventfd unless the driver suppressed it.  Ring lock held."""
    cdef uint64_t one = 1
    if ring_need_notify(&vq.ring) and vq.fds.call >= 0:
        c_write(vq.fds.call, &one, 8)
