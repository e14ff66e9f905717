# Publishing replies: used elements queued and published in batches, and the decision to
# wake the guest (how often, from what the wake-ups cost the worker).  The used ring itself is
# splitq.pxi's; these run on the worker, taking the ring lock to publish.

cdef void used_push(Virtqueue vq, uint16_t head, uint32_t length) noexcept nogil:
    """Queue one used element.  READ and WRITE replies are published (with one
    notification check) every PUBLISH_BATCH replies and whenever the worker is about to
    wait or take the GIL.  Any other reply is published at once (a quick op finishes
    sooner than a guest wakes up: holding it back starves the guest's ring, which takes
    what it finds there).  The guest is woken for it at once, or, while its wake-ups
    keep taking the worker's CPU (``used_adapt_notify``), every PUBLISH_BATCH replies and
    when the worker is about to wait: there a wake-up per reply costs more than the
    reply."""
    cdef bint data = vq.req.opcode == FUSE_READ or vq.req.opcode == FUSE_WRITE
    if not data and vq.pub.n == 0:
        pthread_mutex_lock(&vq.lock.m)
        ring_push_used(&vq.ring, head, length)
        vq.pub.unsignalled += 1
        if vq.pub.unsignalled >= vq.pub.notify_every:
            used_notify_locked(vq)
        pthread_mutex_unlock(&vq.lock.m)
        return
    vq.pub.heads[vq.pub.n] = head
    vq.pub.lens[vq.pub.n] = length
    vq.pub.n += 1
    if vq.pub.n == PUBLISH_BATCH or not data:
        used_flush(vq)

cdef void used_flush(Virtqueue vq) noexcept nogil:
    """Publish the queued used elements and check, once, whether the guest wants to be
    woken for what was published since the last check."""
    cdef uint32_t i
    if vq.pub.n == 0 and vq.pub.unsignalled == 0:
        return
    pthread_mutex_lock(&vq.lock.m)
    for i in range(vq.pub.n):
        ring_push_used(&vq.ring, vq.pub.heads[i], vq.pub.lens[i])
    used_notify_locked(vq)
    pthread_mutex_unlock(&vq.lock.m)
    vq.pub.n = 0

cdef void used_notify_locked(Virtqueue vq, bint by_worker=True) noexcept nogil:
    """Signal the call eventfd unless the driver suppressed it.  Ring lock held."""
    cdef uint64_t one = 1
    vq.pub.unsignalled = 0
    if ring_need_notify(&vq.ring) and vq.fds.call >= 0:
        c_write(vq.fds.call, &one, 8)
        if by_worker:               # the worker's own wake-ups steer used_adapt_notify
            vq.pub.wakes += 1
            if vq.pub.wakes == WAKE_SAMPLE:
                used_adapt_notify(vq)

cdef void used_adapt_notify(Virtqueue vq) noexcept nogil:
    """Every WAKE_SAMPLE wake-ups of the guest: when a quarter or more of them took this
    worker's CPU away (the guest's thread runs where the worker does, as on a host
    with more busy threads than CPUs), wake the guest only every PUBLISH_BATCH replies;
    otherwise at the first (it wakes elsewhere, and the sooner it refills the ring the
    less the worker waits)."""
    cdef rusage ru
    vq.pub.wakes = 0
    if getrusage(RUSAGE_THREAD, &ru) < 0:
        return
    vq.pub.notify_every = PUBLISH_BATCH \
        if (ru.ru_nivcsw - vq.pub.nivcsw) * 4 >= WAKE_SAMPLE else 1
    vq.pub.nivcsw = ru.ru_nivcsw
