# The split virtqueue (virtio 1.2 section 2.7) as a device sees it: taking available heads,
# resolving descriptor chains into iovecs, publishing used elements and deciding whether the
# driver wants a notification.  Knows guest memory and nothing of FUSE.  The used-ring
# functions run under the ring lock (Virtqueue, PendingReply); the rest on the worker only.

cdef int ring_init(SplitRing *r, MemoryTable mem, uint16_t num, uint64_t desc_uaddr,
                   uint64_t avail_uaddr, uint64_t used_uaddr, uint16_t last_avail_idx,
                   bint event_idx, bint indirect) except -1:
    """Place the ring's three areas (frontend addresses, SET_VRING_ADDR) in guest memory."""
    if num == 0 or num & (num - 1) or num > 32768:
        raise ValueError(f"queue size {num} is not a power of two up to 32768")
    # Sizes and alignments from section 2.7: the trailing u16 is used_event / avail_event.
    if desc_uaddr % 16 or avail_uaddr % 2 or used_uaddr % 4:
        raise ValueError("misaligned ring address")
    r.desc = <vring_desc *>mem.uaddr_to_host(desc_uaddr, sizeof(vring_desc) * <uint64_t>num)
    r.avail = <vring_avail *>mem.uaddr_to_host(avail_uaddr, 6 + 2 * <uint64_t>num)
    r.used = <vring_used *>mem.uaddr_to_host(used_uaddr, 6 + 8 * <uint64_t>num)
    if r.desc == NULL or r.avail == NULL or r.used == NULL:
        raise ValueError("ring address outside guest memory")
    r.num = num
    r.last_avail_idx = last_avail_idx
    # The used index lives in guest memory and survives a stop/start of the ring; taking it
    # from there (rather than assuming last_avail_idx) keeps both sides in step.
    r.used_idx = fastvfs_load16(&r.used.idx)
    r.event_idx = event_idx
    r.indirect = indirect
    r.signalled_used_valid = False
    return 0


cdef inline uint16_t *ring_used_event(SplitRing *r) noexcept nogil:
    """The driver's used_event (section 2.7.10), after the avail ring's entries."""
    return &r.avail.ring[r.num]


cdef inline uint16_t *ring_avail_event(SplitRing *r) noexcept nogil:
    """The device's avail_event (section 2.7.10), after the used ring's entries."""
    return <uint16_t *>&r.used.ring[r.num]


cdef int ring_pop(SplitRing *r) noexcept nogil:
    """The next available head, or -1 when there is none to take.

    A bad avail ring never stops the queue (the guest's valid requests would then wait
    forever, unanswered and unsignalled); each kind is counted in ``faults`` for the worker to
    signal through the ring's error eventfd and log:

    - an entry naming a head at or beyond the queue size is skipped: no used element can name
      it (section 2.7.8: ``id`` is the head of a chain the driver made available), and the
      entries after it are served;
    - an avail index more than ``num`` ahead of ``last_avail_idx`` cannot be (the driver never
      has more than ``num`` buffers available, section 2.7.6), and which entries behind it are
      real cannot be told.  That is the device error state of section 2.1.2
      (DEVICE_NEEDS_RESET, which a vhost-user backend reports through SET_VRING_ERR's eventfd;
      QEMU then marks the device broken for the guest, which resets it).  Nothing is taken
      while the index stays out of reach, but the worker keeps waiting for kicks and serves
      again as soon as the index is back within ``num`` (a driver that fixed it, or a ring
      restarted with a new base).
    """
    cdef uint16_t avail_idx, head
    while True:
        avail_idx = fastvfs_load16(&r.avail.idx)
        if avail_idx == r.last_avail_idx or <uint16_t>(avail_idx - r.last_avail_idx) > r.num:
            if avail_idx != r.last_avail_idx and not r.avail_bad:
                r.avail_bad = True
                r.bad_avail += 1
                r.faults += 1
            if not r.event_idx:
                return -1
            # Ask for a kick once anything past last_avail_idx is published, then look again
            # so a buffer published meanwhile is not missed (section 2.7.10).
            fastvfs_store16(ring_avail_event(r), r.last_avail_idx)
            fastvfs_full_barrier()
            avail_idx = fastvfs_load16(&r.avail.idx)
            if avail_idx == r.last_avail_idx or \
                    <uint16_t>(avail_idx - r.last_avail_idx) > r.num:
                return -1
        r.avail_bad = False
        fastvfs_acquire()
        head = fastvfs_load16(&r.avail.ring[r.last_avail_idx % r.num])
        r.last_avail_idx += 1
        if head >= r.num:
            r.bad_heads += 1
            r.faults += 1
            continue
        return head


cdef inline bint ring_avail_pending(SplitRing *r) noexcept nogil:
    """Whether the avail index shows buffers ``ring_pop`` would look at (1 to ``num``)."""
    return <uint16_t>(<uint16_t>(fastvfs_load16(&r.avail.idx) - r.last_avail_idx) - 1) < r.num


cdef void ring_kicks(SplitRing *r, bint wanted) noexcept nogil:
    """With EVENT_IDX, ask the driver for a kick at the next buffer (``wanted``) or for none
    (an event index just behind us: what busy polling does while it watches the ring)."""
    if r.event_idx:
        fastvfs_store16(ring_avail_event(r),
                        r.last_avail_idx if wanted else <uint16_t>(r.last_avail_idx - 1))


cdef int ring_walk(SplitRing *r, MemoryTable mem, uint16_t head, Chain *c,
                   iovec *iov) noexcept nogil:
    """Resolve the chain at ``head`` into ``iov`` (room for MAX_IOV); 0, or -errno if it is
    malformed (-EFAULT: a buffer outside guest memory)."""
    cdef vring_desc d
    cdef vring_desc *table = r.desc
    cdef uint32_t table_len = r.num
    cdef uint32_t idx = head
    cdef uint32_t seen = 0
    cdef uint32_t total = 0
    cdef bint in_indirect = False
    cdef int n
    c.head = head
    c.out_num = 0
    c.in_num = 0
    c.out_len = 0
    c.in_len = 0
    while True:
        if idx >= table_len:
            return -EINVAL
        seen += 1
        if seen > table_len:   # a loop: more descriptors than the table holds
            return -EINVAL
        # Copy the descriptor once: the guest may rewrite it while we look at it.
        memcpy(&d, &table[idx], sizeof(vring_desc))
        if d.flags & VRING_DESC_F_INDIRECT:
            # Section 2.7.5.3: indirect only if negotiated, never nested, never with NEXT, a
            # whole number of descriptors.
            if not r.indirect or in_indirect or d.flags & VRING_DESC_F_NEXT:
                return -EINVAL
            if d.len == 0 or d.len % sizeof(vring_desc):
                return -EINVAL
            table = <vring_desc *>mem.gpa_to_host(d.addr, d.len)
            if table == NULL:
                return -EINVAL
            table_len = d.len // sizeof(vring_desc)
            idx = 0
            seen = 0
            in_indirect = True
            continue
        # Section 2.7.5.3.1 forbids drivers chains longer than the queue size, and an indirect
        # table may hold 2^28 entries: a chain is bounded here, but at the queue size or
        # CHAIN_DESCS_FLOOR, whichever is larger, because Linux's virtio core (virtio_ring.c)
        # lays requests longer than a small queue into one indirect table (a 1 MiB FUSE WRITE
        # is 258 descriptors, and QEMU's queue size defaults to 128).
        total += 1
        if total > r.num and total > CHAIN_DESCS_FLOOR:
            return -EINVAL
        if d.len:
            n = c.out_num + c.in_num
            if d.flags & VRING_DESC_F_WRITE:
                n = mem.gpa_to_iov(d.addr, d.len, iov + n, MAX_IOV - n)
                if n < 0:
                    return n
                c.in_num += n
                c.in_len += d.len
            else:
                # Section 2.7.4.2: readable descriptors come before writable ones.
                if c.in_num:
                    return -EINVAL
                n = mem.gpa_to_iov(d.addr, d.len, iov + n, MAX_IOV - n)
                if n < 0:
                    return n
                c.out_num += n
                c.out_len += d.len
        if not d.flags & VRING_DESC_F_NEXT:
            return 0
        idx = d.next


cdef void ring_push_used(SplitRing *r, uint16_t head, uint32_t length) noexcept nogil:
    """Publish one used element (section 2.7.8): the element, a release fence, the index.
    Ring lock held."""
    cdef vring_used_elem *elem = &r.used.ring[r.used_idx % r.num]
    elem.id = head
    elem.len = length
    fastvfs_release()
    r.used_idx += 1
    fastvfs_store16(&r.used.idx, r.used_idx)


cdef bint ring_need_notify(SplitRing *r) noexcept nogil:
    """Whether the driver wants a notification for what was published since the last check
    (section 2.7.7 without EVENT_IDX, 2.7.10 with it).  Ring lock held."""
    cdef uint16_t used_event, old, new = r.used_idx
    fastvfs_full_barrier()
    if not r.event_idx:
        return not (fastvfs_load16(&r.avail.flags) & VRING_AVAIL_F_NO_INTERRUPT)
    old = r.signalled_used
    if r.signalled_used_valid and old == new:
        return False
    used_event = fastvfs_load16(ring_used_event(r))
    r.signalled_used = new
    if not r.signalled_used_valid:
        r.signalled_used_valid = True
        return True
    return <uint16_t>(new - used_event - 1) < <uint16_t>(new - old)
