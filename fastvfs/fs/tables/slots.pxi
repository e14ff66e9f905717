# The slot machinery both tables share (SlotTable in _tables.pxd): an array of entries, each a
# leaf table's struct that starts with a Slot, named by generation << 32 | slot + 1 so a stale
# or forged id never reaches a reused slot.  The state word (includes/handle_state.pxd) makes
# taking a reference one compare-and-swap and dropping one an atomic subtract; an entry's
# descriptor is closed once it has been removed and no request uses it any more (a hostile
# guest may RELEASE a handle while its READ still runs on another queue).


cdef inline Slot *_slot(SlotTable t, uint64_t idx) noexcept nogil:
    """Entry ``idx``'s Slot (the head of the leaf table's struct)."""
    return <Slot *>(t.mem + idx * t.stride)


cdef inline uint64_t _index(uint64_t fh) noexcept nogil:
    """The slot an id names (huge, so out of range, for id 0)."""
    return (fh & 0xffffffffUL) - 1


cdef class SlotTable:
    """Entries visible to the hot path without the GIL and without a lock; the base of
    :class:`HandleTable` and :class:`NodeTable`, never used alone.

    Lock order: the table mutex is a leaf lock; nothing is called while holding it but
    close(2) of an evicted cache descriptor and the key index's and handles' allocations
    (NodeTable).
    """
    def __cinit__(self, *args, **kwargs):
        if type(self) is SlotTable:
            raise TypeError("SlotTable is the base of HandleTable and NodeTable")
        pthread_mutex_init(&self.lock, NULL)

    def __dealloc__(self):
        # The leaf's __dealloc__ (run first) dropped the entries.
        free(self.mem)
        self.mem = NULL
        pthread_mutex_destroy(&self.lock)

    cdef int _alloc(self, uint32_t capacity, size_t stride) except -1:
        """``capacity`` zeroed entries of ``stride`` bytes.  They stay as calloc left them,
        untouched until first taken, so a table sized for a million node ids costs memory only
        for the entries in use: a zeroed entry is free (not in use, state 0: not LIVE), its fd
        is never read, and it is given generation 1 when first taken (generation 0 is the
        root's, NodeTable.add_root)."""
        self.mem = <char *>calloc(capacity, stride)
        if self.mem == NULL:
            raise MemoryError()
        self.stride = stride
        self.capacity = capacity
        self.free_hint = 0
        self.count = 0
        return 0

    # -- entries (mutex held) ---------------------------------------------------------------

    cdef int64_t _take_slot(self, int fd) noexcept nogil:
        """A free entry made live for ``fd``; its id, or -1 when the table is full.  The
        leaf's own fields are the caller's to set, under the same mutex."""
        cdef uint32_t i, idx
        cdef uint64_t gen
        cdef Slot *sl
        for i in range(self.capacity):
            idx = (self.free_hint + i) % self.capacity
            sl = _slot(self, idx)
            if not sl.in_use:
                sl.in_use = True
                sl.fd = fd
                gen = fastvfs_state_load(&sl.state) >> 32
                if gen == 0:
                    gen = 1       # an entry never taken before (the root is placed by add_root)
                fastvfs_state_store(&sl.state, (gen << 32) | FASTVFS_LIVE)
                self.free_hint = idx + 1
                self.count += 1
                return <int64_t>((gen << 32) | (idx + 1))
        return -1

    cdef int _reclaim_locked(self, uint64_t idx) noexcept nogil:
        """Free an entry that is neither live nor referenced, its generation advanced; returns
        its fd to close."""
        cdef Slot *sl = _slot(self, idx)
        cdef int fd = sl.fd
        cdef uint64_t gen = (fastvfs_state_load(&sl.state) >> 32) + 1
        if gen > 0x7fffffffULL:
            gen = 1       # an id stays a positive int64 (_take_slot's -1 is "full")
        sl.fd = -1
        sl.in_use = False
        fastvfs_state_store(&sl.state, gen << 32)
        self.count -= 1
        return fd

    cdef int _kill(self, uint64_t fh) noexcept nogil:
        """Clear LIVE on ``fh``'s entry: 1 and it is now unreferenced (the caller reclaims
        it), 0 still referenced (the last release reclaims it), -1 not a live id."""
        cdef uint64_t idx = _index(fh)
        cdef uint64_t w
        cdef Slot *sl
        if idx >= self.capacity:
            return -1
        sl = _slot(self, idx)
        w = fastvfs_state_load(&sl.state)
        while True:
            if (w >> 32) != (fh >> 32) or not (w & FASTVFS_LIVE):
                return -1
            if w & FASTVFS_BUSY:
                fastvfs_cpu_relax()
                w = fastvfs_state_load(&sl.state)
                continue
            if fastvfs_state_cas(&sl.state, &w, w & ~FASTVFS_LIVE):
                return 1 if (w & FASTVFS_REFS) == 0 else 0

    cdef int _drop_locked(self, uint64_t fh) noexcept nogil:
        """``_kill`` ``fh``, with whatever the leaf indexes it by (NodeTable: its key)."""
        return self._kill(fh)

    cdef int64_t _id_of(self, int64_t idx) noexcept nogil:
        """The id naming entry ``idx`` in its current generation."""
        return <int64_t>((fastvfs_state_load(&_slot(self, idx).state) >> 32) << 32 |
                         <uint64_t>(idx + 1))

    # -- without the mutex, or taking it -----------------------------------------------------

    cdef bint _live(self, uint64_t fh) noexcept nogil:
        """Whether ``fh`` names a live entry (its generation, LIVE set)."""
        cdef uint64_t idx = _index(fh)
        cdef uint64_t w
        if idx >= self.capacity:
            return False
        w = fastvfs_state_load(&_slot(self, idx).state)
        return (w >> 32) == (fh >> 32) and (w & FASTVFS_LIVE) != 0

    cdef void _reclaim(self, uint64_t idx) noexcept nogil:
        pthread_mutex_lock(&self.lock)
        cdef int fd = self._reclaim_locked(idx)
        pthread_mutex_unlock(&self.lock)
        if fd >= 0:
            c_close(fd)

    cdef void _drop_all(self) noexcept nogil:
        """Drop every entry but NodeTable's root (generation 0 in entry 0)."""
        cdef uint32_t i
        cdef uint64_t w
        cdef Slot *sl
        if self.mem == NULL:
            return
        for i in range(1 if _slot(self, 0).in_use and
                       (fastvfs_state_load(&_slot(self, 0).state) >> 32) == 0 else 0,
                       self.capacity):
            sl = _slot(self, i)
            w = fastvfs_state_load(&sl.state)
            if sl.in_use and w & FASTVFS_LIVE:
                self.remove_fh(((w >> 32) << 32) | (i + 1))

    # -- the hot path ------------------------------------------------------------------------

    cdef bint _ref(self, uint64_t fh) noexcept nogil:
        """Take a reference on live ``fh``; False if it is not live."""
        cdef uint64_t idx = _index(fh)
        cdef uint64_t w
        cdef Slot *sl
        if idx >= self.capacity:
            return False
        sl = _slot(self, idx)
        w = fastvfs_state_load(&sl.state)
        while True:
            if (w >> 32) != (fh >> 32) or not (w & FASTVFS_LIVE) or \
                    (w & FASTVFS_REFS) == FASTVFS_REFS:
                return False
            if w & FASTVFS_BUSY:
                fastvfs_cpu_relax()
                w = fastvfs_state_load(&sl.state)
                continue
            if fastvfs_state_cas(&sl.state, &w, w + 1):
                return True

    cdef int acquire(self, uint64_t fh) noexcept nogil:
        """The fd behind ``fh`` with a reference held, or -1 if ``fh`` is not a live id; -2
        (no reference held) for an entry without a descriptor (NodeTable's own reopens a
        node held by file handle first, and answers -2 only where that fails)."""
        cdef int fd
        if not self._ref(fh):
            return -1
        fd = _slot(self, _index(fh)).fd
        if fd < 0:
            self.release(fh)
            return -2
        return fd

    cdef void release(self, uint64_t fh) noexcept nogil:
        """Drop a reference ``acquire`` (or ``_ref``) took; the last one of a removed entry
        reclaims it and closes its fd."""
        cdef uint64_t idx = _index(fh)
        cdef uint64_t w = fastvfs_state_dec(&_slot(self, idx).state)
        if (w & FASTVFS_REFS) == 0 and not (w & FASTVFS_LIVE):
            self._reclaim(idx)

    cdef int remove_fh(self, uint64_t fh) noexcept nogil:
        """Drop ``fh`` (0) or -EBADF; its fd is closed once no request uses it."""
        cdef int rc
        pthread_mutex_lock(&self.lock)
        rc = self._drop_locked(fh)
        pthread_mutex_unlock(&self.lock)
        if rc == 1:
            self._reclaim(_index(fh))
        return -EBADF if rc < 0 else 0

    # -- the file system's -------------------------------------------------------------------

    def unhold(self, uint64_t fh):
        """Drop the reference a ``hold`` or ``hold_node`` (or ``node(hold=True)``) took."""
        self.release(fh)

    def clear(self):
        """Drop every entry but the root of a node id table (session end); each fd is closed
        now or when the last request using it finishes."""
        with nogil:
            self._drop_all()
