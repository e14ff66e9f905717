# The guest's node ids (NodeTable in _tables.pxd): the inodes it looked up, with their key and
# lookup count, read by the hot path's GETATTR, LOOKUP, FORGET and BATCH_FORGET and by
# READDIRPLUS (tables/dirs.pxi).


@cython.final
cdef class NodeTable(SlotTable):
    """Node ids the guest holds, visible to the fast path without the GIL and without a lock.

    A node id = generation << 32 | slot + 1, so a forgotten id is never mistaken for a newer
    inode; id 1 (FUSE_ROOT_ID) is the share's root (``add_root``), never dropped.  Entries
    carry the inode's key (st_dev, st_ino, mount id) in a hash index and the guest's lookup
    count, so the hot path can answer a LOOKUP of a known inode (``lookup_key``) and the file
    system counts its lookups here (``adopt``, ``relookup``, ``forget``).  A node's fd is its
    O_PATH descriptor, closed once the node is dropped and no request uses it.

    A node the file system holds by file handle (``adopt`` with ``by_handle``) may have no
    descriptor: its fd is a cache entry, at most ``fds_max`` of them open (beyond, the least
    recently used unreferenced ones are closed: a clock with second chance).  ``acquire`` of
    such a node without a descriptor answers -2 and the fast path hands the request to the
    engine, which opens the handle and ``install``s the descriptor.  A key match
    (``lookup_key``) is trusted only while the node holds a descriptor: the open descriptor
    pins the inode, so its inode number cannot have been reused for another file; without one
    the engine compares file handles first.

    Lock order: the table mutex is a leaf lock; nothing is called while holding it but
    close(2) of an evicted cache descriptor.
    """
    def __cinit__(self, uint32_t capacity=65536):
        self._alloc(capacity, sizeof(NodeSlot))
        self.nodes = <NodeSlot *>self.mem
        self.nbuckets = 1
        while self.nbuckets < capacity:
            self.nbuckets <<= 1
        self.buckets = <uint32_t *>calloc(self.nbuckets, sizeof(uint32_t))
        if self.buckets == NULL:
            raise MemoryError()

    def __dealloc__(self):
        if self.buckets != NULL:
            self._drop_all()
        free(self.buckets)
        self.buckets = NULL
        free(self.clock)
        self.clock = NULL

    # -- entries (mutex held) -----------------------------------------------------------------

    cdef int _reclaim_locked(self, uint64_t idx) noexcept nogil:
        cdef NodeSlot *sl = &self.nodes[idx]
        if sl.by_handle:
            self.handle_nodes -= 1
            if sl.s.fd >= 0:
                self.handle_fds -= 1
            sl.by_handle = False
        return SlotTable._reclaim_locked(self, idx)

    cdef int _drop_locked(self, uint64_t fh) noexcept nogil:
        """``_kill`` ``fh`` and take its key out of the index."""
        cdef int rc = self._kill(fh)
        cdef uint64_t idx = _index(fh)
        if rc >= 0 and self.nodes[idx].keyed:
            self._unlink_key(idx)
        return rc

    cdef void _unlink_key(self, uint64_t idx) noexcept nogil:
        cdef NodeSlot *sl = &self.nodes[idx]
        cdef uint32_t *link = &self.buckets[fastvfs_key_hash(sl.dev, sl.ino, sl.mnt) &
                                            (self.nbuckets - 1)]
        while link[0]:
            if link[0] == idx + 1:
                link[0] = sl.hnext
                break
            link = &self.nodes[link[0] - 1].hnext
        sl.keyed = False
        sl.hnext = 0

    cdef int64_t _find_key(self, uint64_t dev, uint64_t ino, uint64_t mnt) noexcept nogil:
        """The live slot index with this key, or -1."""
        cdef uint32_t at = self.buckets[fastvfs_key_hash(dev, ino, mnt) & (self.nbuckets - 1)]
        cdef NodeSlot *sl
        while at:
            sl = &self.nodes[at - 1]
            if (sl.ino == ino and sl.dev == dev and sl.mnt == mnt and
                    fastvfs_state_load(&sl.s.state) & FASTVFS_LIVE):
                return at - 1
            at = sl.hnext
        return -1

    cdef void _link_key(self, uint64_t idx, uint64_t dev, uint64_t ino,
                        uint64_t mnt) noexcept nogil:
        cdef NodeSlot *sl = &self.nodes[idx]
        cdef uint32_t *bucket = &self.buckets[fastvfs_key_hash(dev, ino, mnt) &
                                              (self.nbuckets - 1)]
        sl.dev = dev
        sl.ino = ino
        sl.mnt = mnt
        sl.keyed = True
        sl.hnext = bucket[0]
        bucket[0] = <uint32_t>(idx + 1)

    # -- the descriptor cache of nodes held by file handle (mutex held) -----------------------

    cdef void _clock_push(self, uint32_t idx) noexcept nogil:
        self.clock[(self.clock_head + self.clock_len) % self.capacity] = idx
        self.clock_len += 1

    cdef void _cache_locked(self, uint32_t idx) noexcept nogil:
        """Slot ``idx`` (held by file handle) has just been given a descriptor."""
        self.handle_fds += 1
        fastvfs_flag_set(&self.nodes[idx].recent)
        if not self.nodes[idx].queued:
            self.nodes[idx].queued = True
            self._clock_push(idx)
        self._evict_locked()

    cdef void _evict_locked(self) noexcept nogil:
        """Close cached descriptors while more than ``fds_max`` are open: the clock passes
        over the queue, giving a recently used or referenced slot a second chance.  Only a
        slot with no reference is taken (BUSY set across the change, so no reference can be
        taken meanwhile): a descriptor is never closed under a request.  With every cached
        slot in use the bound is exceeded until their requests end."""
        cdef uint32_t tries = 2 * self.clock_len
        cdef uint32_t idx
        cdef uint64_t w
        cdef int fd
        cdef NodeSlot *sl
        while self.handle_fds > self.fds_max and self.clock_len and tries:
            tries -= 1
            idx = self.clock[self.clock_head]
            self.clock_head = (self.clock_head + 1) % self.capacity
            self.clock_len -= 1
            sl = &self.nodes[idx]
            if not sl.s.in_use or not sl.by_handle or sl.s.fd < 0:
                sl.queued = False
                continue
            w = fastvfs_state_load(&sl.s.state)
            if fastvfs_flag_take(&sl.recent) or (w & FASTVFS_REFS) or \
                    not (w & FASTVFS_LIVE) or \
                    not fastvfs_state_cas(&sl.s.state, &w, w | FASTVFS_BUSY):
                self._clock_push(idx)
                continue
            fd = sl.s.fd
            sl.s.fd = -1
            fastvfs_state_store(&sl.s.state, w)
            sl.queued = False
            self.handle_fds -= 1
            c_close(fd)

    # -- the hot path ------------------------------------------------------------------------

    cdef int acquire(self, uint64_t nodeid) noexcept nogil:
        """``SlotTable.acquire``, marking a node held by file handle as recently used."""
        cdef uint64_t idx = _index(nodeid)
        cdef int fd
        if not self._ref(nodeid):
            return -1
        fd = self.nodes[idx].s.fd
        if fd < 0:
            self.release(nodeid)
            return -2
        if self.nodes[idx].by_handle:
            fastvfs_flag_set(&self.nodes[idx].recent)
        return fd

    cdef int64_t adopt_c(self, int fd, uint64_t dev, uint64_t ino, uint64_t mnt, bint by_handle,
                         uint32_t mode, bint *created, bint *taken) noexcept nogil:
        """``adopt``'s body, for the file system and the hot path's creations alike: the node
        id, or -1 when the table is full; ``created`` and ``taken`` as ``adopt`` says.
        ``by_handle`` only after ``set_fds_max``."""
        cdef int64_t idx, nodeid
        created[0] = taken[0] = False
        pthread_mutex_lock(&self.lock)
        idx = self._find_key(dev, ino, mnt)
        if idx >= 0:
            self.nodes[idx].nlookup += 1
            nodeid = self._id_of(idx)
            if self.nodes[idx].s.fd < 0:
                self.nodes[idx].s.fd = fd
                taken[0] = True
                self._cache_locked(idx)
        else:
            nodeid = self._take_slot(fd)
            if nodeid > 0:
                created[0] = taken[0] = True
                idx = _index(nodeid)
                self.nodes[idx].nlookup = 1
                self.nodes[idx].mode = mode
                self._link_key(idx, dev, ino, mnt)
                if by_handle:
                    self.nodes[idx].by_handle = True
                    self.handle_nodes += 1
                    self._cache_locked(idx)
        pthread_mutex_unlock(&self.lock)
        return nodeid

    cdef int64_t lookup_key(self, uint64_t dev, uint64_t ino, uint64_t mnt) noexcept nogil:
        """Count one more lookup of the live inode with this key; its node id, or 0."""
        cdef int64_t idx
        cdef int64_t nodeid = 0
        pthread_mutex_lock(&self.lock)
        idx = self._find_key(dev, ino, mnt)
        if idx >= 0 and self.nodes[idx].s.fd >= 0:
            self.nodes[idx].nlookup += 1
            nodeid = self._id_of(idx)
        pthread_mutex_unlock(&self.lock)
        return nodeid

    cdef uint64_t mount_of(self, uint64_t nodeid) noexcept nogil:
        """The mount id of a node id the caller holds a reference on (0 if not keyed)."""
        cdef NodeSlot *sl = &self.nodes[_index(nodeid)]
        return sl.mnt if sl.keyed else 0

    cdef bint dropped_room(self, uint32_t n) noexcept nogil:
        """Whether ``n`` more dropped ids fit in the list ``take_dropped`` drains."""
        return self.ndropped + n <= DROPPED_MAX

    cdef bint forget_c(self, uint64_t nodeid, uint64_t count, bint note) noexcept nogil:
        """Take ``count`` lookups away (never below zero: a hostile guest may forget more than
        it looked up); at zero the node id is dropped and its fd closed once unused.  Returns
        whether it was dropped; with ``note`` (the hot path, which checked ``dropped_room``) a
        dropped id is also noted for the file system.  The root is never dropped."""
        cdef uint64_t idx = _index(nodeid)
        cdef int rc = -1
        cdef NodeSlot *sl
        if idx >= self.capacity or idx == 0:
            return False
        sl = &self.nodes[idx]
        pthread_mutex_lock(&self.lock)
        if self._live(nodeid):
            sl.nlookup -= count if count < sl.nlookup else sl.nlookup
            if sl.nlookup == 0:
                rc = self._drop_locked(nodeid)
                if rc >= 0 and note and self.ndropped < DROPPED_MAX:
                    self.dropped[self.ndropped] = nodeid
                    self.ndropped += 1
        pthread_mutex_unlock(&self.lock)
        if rc == 1:
            self._reclaim(idx)
        return rc >= 0

    # -- the file system's: the root, lookups counted, the descriptor cache ------------------

    def add_root(self, int fd, uint64_t dev=0, uint64_t ino=0, uint64_t mnt=0, bint keyed=False,
                 uint32_t mode=0):
        """Put ``fd`` in slot 0 with generation 0: id 1, FUSE_ROOT_ID (with its inode key when
        ``keyed``).  Must be the first entry; it is never removed."""
        if self.count or self.nodes[0].s.in_use:
            raise ValueError("the root goes into an empty table")
        self.nodes[0].s.in_use = True
        self.nodes[0].s.fd = fd
        self.nodes[0].nlookup = 1
        self.nodes[0].mode = mode
        fastvfs_state_store(&self.nodes[0].s.state, FASTVFS_LIVE)
        if keyed:
            self._link_key(0, dev, ino, mnt)
        self.free_hint = 1
        self.count = 1
        return 1

    def set_fds_max(self, uint32_t fds_max):
        """Allow nodes held by file handle, with at most ``fds_max`` cached descriptors."""
        if self.clock == NULL:
            self.clock = <uint32_t *>calloc(self.capacity, sizeof(uint32_t))
            if self.clock == NULL:
                raise MemoryError()
        self.fds_max = fds_max

    def adopt(self, int fd, uint64_t dev, uint64_t ino, uint64_t mnt, bint by_handle=False,
              uint32_t mode=0):
        """Count one lookup of the inode with this key: ``(node id, created, taken)``,
        ``created`` for a new entry, ``taken`` when the table now owns ``fd`` (else the
        caller closes it): a new entry takes it, and so does a known node held by file handle
        without a cached descriptor.  ``by_handle``: a new entry is held by file handle (its
        descriptor is a cache entry; the caller compared the handle of a known node with
        this key first, ``find_key``); ``mode``: its st_mode, kept for :meth:`node`.  Raises
        OSError(EMFILE) when full."""
        cdef int64_t nodeid
        cdef bint created = False, taken = False
        if by_handle and self.clock == NULL:
            raise ValueError("set_fds_max first")
        with nogil:
            nodeid = self.adopt_c(fd, dev, ino, mnt, by_handle, mode, &created, &taken)
        if nodeid < 0:
            raise OSError(24, "node id table full")
        return nodeid, created, taken

    def find_key(self, uint64_t dev, uint64_t ino, uint64_t mnt):
        """The live node id with this key, or 0 (no lookup counted)."""
        cdef int64_t idx, nodeid = 0
        with nogil:
            pthread_mutex_lock(&self.lock)
            idx = self._find_key(dev, ino, mnt)
            if idx >= 0:
                nodeid = self._id_of(idx)
            pthread_mutex_unlock(&self.lock)
        return nodeid

    def unkey(self, uint64_t nodeid):
        """Take live ``nodeid`` out of the key index: its inode is gone (a file handle of
        another inode now comes with its key), so no lookup may find it any more."""
        with nogil:
            pthread_mutex_lock(&self.lock)
            if self._live(nodeid) and self.nodes[_index(nodeid)].keyed:
                self._unlink_key(_index(nodeid))
            pthread_mutex_unlock(&self.lock)

    def relookup(self, uint64_t nodeid):
        """Count one more lookup of a live node id; raises OSError(ENOENT)."""
        cdef bint ok
        with nogil:
            pthread_mutex_lock(&self.lock)
            ok = self._live(nodeid)
            if ok:
                self.nodes[_index(nodeid)].nlookup += 1
            pthread_mutex_unlock(&self.lock)
        if not ok:
            raise OSError(ENOENT, "unknown node id")

    def forget(self, uint64_t nodeid, uint64_t count):
        """``forget_c`` for the file system: True when the node id was dropped."""
        cdef bint dropped
        with nogil:
            dropped = self.forget_c(nodeid, count, False)
        return dropped

    def take_dropped(self):
        """Node ids the hot path dropped since the last call."""
        cdef uint32_t i
        with nogil:
            pthread_mutex_lock(&self.lock)
        out = [self.dropped[i] for i in range(self.ndropped)]
        self.ndropped = 0
        pthread_mutex_unlock(&self.lock)
        return out

    def nlookup(self, uint64_t nodeid):
        """The lookup count of a live node id (0 if it is not one)."""
        if not self._live(nodeid):
            return 0
        return self.nodes[_index(nodeid)].nlookup

    def hold_node(self, uint64_t nodeid):
        """Take a reference on live ``nodeid`` (until :meth:`unhold`): its descriptor, or -1
        for a node held by file handle without one (then :meth:`install` one).  Raises
        OSError(EBADF)."""
        if not self._ref(nodeid):
            raise OSError(EBADF, "bad node id")
        return self.nodes[_index(nodeid)].s.fd

    def node(self, uint64_t nodeid, bint hold=False):
        """What the table knows of live ``nodeid``: ``(fd, dev, ino, mnt, mode, by_handle)``,
        ``fd`` -1 for a node held by file handle without a cached descriptor.  With ``hold``
        a reference is taken (until :meth:`unhold`), so the descriptor stays open; without,
        it is valid only while nothing can forget the node.  Raises OSError(ENOENT)."""
        cdef uint64_t idx = _index(nodeid)
        cdef uint64_t w
        cdef bint ok = False
        cdef NodeSlot sl
        if idx >= self.capacity:
            raise OSError(ENOENT, "unknown node id")
        with nogil:
            if not hold or self._ref(nodeid):
                pthread_mutex_lock(&self.lock)
                w = fastvfs_state_load(&self.nodes[idx].s.state)
                ok = w >> 32 == nodeid >> 32 and (hold or w & FASTVFS_LIVE)
                sl = self.nodes[idx]
                pthread_mutex_unlock(&self.lock)
        if not ok:
            raise OSError(ENOENT, "unknown node id")
        return sl.s.fd, sl.dev, sl.ino, sl.mnt, sl.mode, sl.by_handle

    def install(self, uint64_t nodeid, int fd):
        """Give ``fd`` to ``nodeid`` (held by file handle, referenced by the caller) as its
        cached descriptor; returns the descriptor it now has: ``fd``, or the one another
        request installed first (the caller then closes ``fd``)."""
        cdef uint64_t idx = _index(nodeid)
        cdef int have
        with nogil:
            pthread_mutex_lock(&self.lock)
            have = self.nodes[idx].s.fd
            if have < 0:
                self.nodes[idx].s.fd = have = fd
                fastvfs_flag_set(&self.nodes[idx].recent)
                self._cache_locked(<uint32_t>idx)
            pthread_mutex_unlock(&self.lock)
        return have
