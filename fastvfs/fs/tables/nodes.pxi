# The guest's node ids (NodeTable in _tables.pxd): the inodes it looked up, with their key and
# lookup count, read by the hot path's GETATTR, LOOKUP, FORGET and BATCH_FORGET and by
# READDIRPLUS (tables/dirs.pxi).


cdef inline uint8_t *_handle_bytes(NodeHandle *h) noexcept nogil:
    """Where ``h``'s bytes are: apart for a long handle, else in the slot's own."""
    return h.heap if h.heap != NULL else h.data


@cython.final
cdef class NodeTable(SlotTable):
    """Node ids the guest holds, visible to the fast path without the GIL, a known node's
    descriptor without a lock.

    A node id = generation << 32 | slot + 1, so a forgotten id is never mistaken for a newer
    inode; id 1 (FUSE_ROOT_ID) is the share's root (``add_root``), never dropped.  Entries
    carry the inode's key (st_dev, st_ino, mount id) in a hash index and the guest's lookup
    count, so the hot path can answer a LOOKUP of a known inode (``lookup_key``) and the file
    system counts its lookups here (``enter_inode``, ``relookup``, ``forget``).  A node's fd is its
    O_PATH descriptor, closed once the node is dropped and no request uses it.

    A node held by file handle (entered with one: ``adopt_c``, tables/creates.pxi's
    ``enter_inode``) keeps its handle here (``fhs``) and may have no descriptor: its fd is a
    cache entry, at most ``fds_max`` of them open (beyond, the least recently used
    unreferenced ones are closed: a clock with second chance).  ``acquire`` of such a node
    without a descriptor reopens it by its handle (``_reopen``: open_by_handle_at on its
    mount's descriptor), for the hot path and the file system alike; -2 only when that fails
    (ESTALE once the inode is gone, or another error), and the request goes to the engine
    for its error.  A key
    match (``lookup_key``) is trusted only while the node holds a descriptor: the open
    descriptor pins the inode, so its inode number cannot have been reused for another file;
    without one ``adopt_c`` compares file handles first.

    Lock order: the table mutex is a leaf lock; nothing is called while holding it but
    close(2) of an evicted cache descriptor, the allocation of a grown key index or clock
    ring and free(3) of the old one or of a dropped node's long handle.
    """
    def __cinit__(self, uint32_t capacity=65536):
        self._alloc(capacity, sizeof(NodeSlot))
        self.nodes = <NodeSlot *>self.mem
        self.nbuckets_max = 1
        while self.nbuckets_max < capacity:
            self.nbuckets_max <<= 1
        self.nbuckets = min(<uint32_t>INDEX_BUCKETS_MIN, self.nbuckets_max)
        self.buckets = <uint32_t *>calloc(self.nbuckets, sizeof(uint32_t))
        if self.buckets == NULL:
            raise MemoryError()

    def __dealloc__(self):
        cdef uint32_t i
        if self.buckets != NULL:
            self._drop_all()
        free(self.buckets)
        self.buckets = NULL
        free(self.clock)
        self.clock = NULL
        free(self.fhs)
        self.fhs = NULL
        for i in range(self.nmounts):
            c_close(self.mount_fds[i])
        self.nmounts = 0

    # -- entries (mutex held) -----------------------------------------------------------------

    cdef int _reclaim_locked(self, uint64_t idx) noexcept nogil:
        cdef NodeSlot *sl = &self.nodes[idx]
        if sl.by_handle:
            self.handle_nodes -= 1
            if sl.s.fd >= 0:
                self.handle_fds -= 1
            sl.by_handle = False
            self._forget_handle_locked(idx)
        return SlotTable._reclaim_locked(self, idx)

    cdef void _forget_handle_locked(self, uint64_t idx) noexcept nogil:
        """Free slot ``idx``'s handle."""
        free(self.fhs[idx].heap)
        memset(&self.fhs[idx], 0, sizeof(NodeHandle))

    cdef bint _same_handle_locked(self, uint64_t idx, const fastvfs_file_handle *fh,
                                  uint32_t mount) noexcept nogil:
        """Whether slot ``idx`` (held by file handle) holds handle ``fh`` of mount ``mount``."""
        cdef NodeHandle *h = &self.fhs[idx]
        return (h.mount == mount and h.type == fh.handle_type and h.size == fh.handle_bytes and
                memcmp(_handle_bytes(h), fh.f_handle, h.size) == 0)

    cdef int64_t _mount_index_locked(self, int mount_id) noexcept nogil:
        """The index of ``mount_id`` in ``mount_fds``, or -1."""
        cdef uint32_t i
        for i in range(self.nmounts):
            if self.mount_ids[i] == mount_id:
                return i
        return -1

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
        if self.count > self.nbuckets and self.nbuckets < self.nbuckets_max:
            self._grow_index()

    cdef void _grow_index(self) noexcept nogil:
        """Double the key index, every chain rehashed into the new buckets (mutex held, as
        every use of the index is).  Without memory for it the chains just grow longer."""
        cdef uint32_t n = self.nbuckets * 2
        cdef uint32_t *grown = <uint32_t *>calloc(n, sizeof(uint32_t))
        cdef uint32_t i, at, after
        cdef uint32_t *bucket
        cdef NodeSlot *sl
        if grown == NULL:
            return
        for i in range(self.nbuckets):
            at = self.buckets[i]
            while at:
                sl = &self.nodes[at - 1]
                after = sl.hnext
                bucket = &grown[fastvfs_key_hash(sl.dev, sl.ino, sl.mnt) & (n - 1)]
                sl.hnext = bucket[0]
                bucket[0] = at
                at = after
        free(self.buckets)
        self.buckets = grown
        self.nbuckets = n

    # -- the descriptor cache of nodes held by file handle (mutex held) -----------------------

    cdef int _clock_resize(self, uint32_t n) noexcept nogil:
        """Move the ring's entries, in order, into a ring of ``n`` (a power of two, at least
        ``clock_len``): 0, or -1 when it cannot be had (the ring stays as it was)."""
        cdef uint32_t i, mask = self.clock_size - 1
        cdef uint32_t *grown = <uint32_t *>malloc(n * sizeof(uint32_t)) if n else NULL
        if grown == NULL:
            return -1
        for i in range(self.clock_len):
            grown[i] = self.clock[(self.clock_head + i) & mask]
        free(self.clock)
        self.clock = grown
        self.clock_size = n
        self.clock_head = 0
        return 0

    cdef void _clock_push(self, uint32_t idx) noexcept nogil:
        """Queue slot ``idx`` (``queued`` set by the caller).  A full ring first drops the
        entries of slots that hold no cached descriptor any more (forgotten, or closed since
        they were queued), then doubles if that left it more than half full; so it stays near
        the bound (``fds_max`` and the descriptors requests hold beyond it) however many
        inodes pass through the cache, and a push costs O(1) amortised.  Where a full ring
        cannot grow the slot stays unqueued: its descriptor is not evicted, only closed when
        its node goes."""
        cdef uint32_t mask = self.clock_size - 1
        cdef uint32_t i, kept = 0, at
        cdef NodeSlot *sl
        if self.clock_len == self.clock_size:
            for i in range(self.clock_len):
                at = self.clock[(self.clock_head + i) & mask]
                sl = &self.nodes[at]
                if sl.s.in_use and sl.by_handle and sl.s.fd >= 0:
                    # In place, in order: the write index never passes the read index.
                    self.clock[(self.clock_head + kept) & mask] = at
                    kept += 1
                else:
                    sl.queued = False
            self.clock_len = kept
            # A ring as large as the table holds every slot: it never needs more.
            if kept > self.clock_size / 2 and self.clock_size < self.capacity and \
                    self._clock_resize(self.clock_size * 2) == 0:
                mask = self.clock_size - 1
        if self.clock_len == self.clock_size:
            self.nodes[idx].queued = False
            return
        self.clock[(self.clock_head + self.clock_len) & mask] = idx
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
            self.clock_head = (self.clock_head + 1) & (self.clock_size - 1)
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
        """``SlotTable.acquire``, marking a node held by file handle as recently used and
        reopening it by its handle when its descriptor is not cached (-2 when that fails)."""
        cdef uint64_t idx = _index(nodeid)
        cdef int fd
        if not self._ref(nodeid):
            return -1
        fd = self.nodes[idx].s.fd
        if fd < 0:
            fd = self._reopen(nodeid)
            if fd < 0:
                self.release(nodeid)
                return -2
            return fd
        if self.nodes[idx].by_handle:
            fastvfs_flag_set(&self.nodes[idx].recent)
        return fd

    cdef int _reopen(self, uint64_t nodeid) noexcept nogil:
        """The descriptor of ``nodeid`` (referenced by the caller), held by file handle: the
        cached one, else one opened by its handle (open_by_handle_at(2) on its mount's
        descriptor, O_PATH | O_NOFOLLOW as every node's) and cached; -errno when that fails
        (ESTALE once the inode is gone)."""
        cdef uint64_t idx = _index(nodeid)
        cdef NodeSlot *sl = &self.nodes[idx]
        cdef NodeHandle *h
        cdef fastvfs_file_handle fh
        cdef int fd, have, mount_fd
        pthread_mutex_lock(&self.lock)
        have = sl.s.fd
        if have < 0:
            if not sl.by_handle:
                pthread_mutex_unlock(&self.lock)
                return -ENOENT
            h = &self.fhs[idx]
            fh.handle_type = h.type
            fh.handle_bytes = h.size
            memcpy(fh.f_handle, _handle_bytes(h), h.size)
            mount_fd = self.mount_fds[h.mount]
        pthread_mutex_unlock(&self.lock)
        if have >= 0:
            return have
        fd = open_by_handle_at(mount_fd, &fh, O_PATH | O_NOFOLLOW | O_CLOEXEC)
        if fd < 0:
            return -errno
        pthread_mutex_lock(&self.lock)
        have = sl.s.fd
        if have < 0:
            sl.s.fd = have = fd
            fastvfs_flag_set(&sl.recent)
            self._cache_locked(<uint32_t>idx)
        pthread_mutex_unlock(&self.lock)
        if have != fd:
            c_close(fd)
        return have

    cdef int64_t adopt_c(self, int fd, uint64_t dev, uint64_t ino, uint64_t mnt,
                         const fastvfs_file_handle *fh, uint32_t mount, uint32_t mode,
                         bint *created, bint *taken) noexcept nogil:
        """One more lookup of the inode ``fd`` refers to, its key (``dev``, ``ino``, ``mnt``)
        and file type ``mode``, held by file handle ``fh`` on mount index ``mount`` (only
        once handles are allowed, ``set_handle_mode``), or by the descriptor where ``fh`` is
        NULL.  The node id, -1 when the table is full, -2 without memory for a long handle;
        ``created`` for a new entry, ``taken`` when the table now owns ``fd`` (else the
        caller closes it): a new entry takes it, and so does a known node held by file handle
        without a cached descriptor.  A known node held by file handle is that inode only if
        its handle is ``fh``: else its inode is gone and its number reused (or two inodes
        share the key), so it leaves the key index and a new entry is made.  Where ``fh`` is
        NULL nothing can be compared: a known node held by file handle is trusted only with
        a cached descriptor, which pins its inode, and else leaves the index too (the inode
        then has two node ids rather than an old node id naming another inode)."""
        cdef int64_t idx, nodeid
        cdef uint8_t *heap = NULL
        cdef NodeHandle *h
        created[0] = taken[0] = False
        if fh != NULL and fh.handle_bytes > NODE_HANDLE_INLINE:
            heap = <uint8_t *>malloc(fh.handle_bytes)
            if heap == NULL:
                return -2
        pthread_mutex_lock(&self.lock)
        idx = self._find_key(dev, ino, mnt)
        if idx >= 0 and self.nodes[idx].by_handle and (
                not self._same_handle_locked(idx, fh, mount) if fh != NULL
                else self.nodes[idx].s.fd < 0):
            self._unlink_key(idx)
            idx = -1
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
                if fh != NULL:
                    h = &self.fhs[idx]
                    h.type = fh.handle_type
                    h.size = <uint16_t>fh.handle_bytes
                    h.mount = <uint16_t>mount
                    h.heap = heap
                    heap = NULL
                    memcpy(_handle_bytes(h), fh.f_handle, h.size)
                    self.nodes[idx].by_handle = True
                    self.handle_nodes += 1
                    self._cache_locked(idx)
        pthread_mutex_unlock(&self.lock)
        free(heap)
        return nodeid

    cdef int64_t add_mount(self, int mount_id, int mount_fd) noexcept nogil:
        """Keep ``mount_fd``, a descriptor to open handles of mount ``mount_id`` on, taking
        it: the mount's index, or -1 when HANDLE_MOUNTS_MAX are kept.  ``mount_fd`` is
        closed unless kept (another thread may have kept one first: its index)."""
        cdef int64_t i
        pthread_mutex_lock(&self.lock)
        i = self._mount_index_locked(mount_id)
        if i < 0 and self.nmounts < HANDLE_MOUNTS_MAX:
            i = self.nmounts
            self.mount_ids[i] = mount_id
            self.mount_fds[i] = mount_fd
            self.nmounts += 1
            self.fds_other = self.nmounts
            mount_fd = -1
        pthread_mutex_unlock(&self.lock)
        if mount_fd >= 0:
            c_close(mount_fd)
        return i

    cdef int64_t mount_index(self, int mount_id) noexcept nogil:
        """The index of the kept descriptor of mount ``mount_id``, or -1."""
        cdef int64_t i
        pthread_mutex_lock(&self.lock)
        i = self._mount_index_locked(mount_id)
        pthread_mutex_unlock(&self.lock)
        return i

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

    cdef bint may_hold(self, uint64_t parent, uint64_t ino) noexcept nogil:
        """Whether a live inode numbered ``ino`` on the device and mount of ``parent`` (a node
        id the caller holds a reference on) may be in the table: True for an unkeyed parent
        (nothing to ask by)."""
        cdef NodeSlot *sl = &self.nodes[_index(parent)]
        cdef bint found
        pthread_mutex_lock(&self.lock)
        found = not sl.keyed or self._find_key(sl.dev, ino, sl.mnt) >= 0
        pthread_mutex_unlock(&self.lock)
        return found

    cdef uint64_t mount_of(self, uint64_t nodeid) noexcept nogil:
        """The mount id of a node id the caller holds a reference on (0 if not keyed)."""
        cdef NodeSlot *sl = &self.nodes[_index(nodeid)]
        return sl.mnt if sl.keyed else 0

    cdef bint forget_c(self, uint64_t nodeid, uint64_t count) noexcept nogil:
        """Take ``count`` lookups away (never below zero: a hostile guest may forget more than
        it looked up); at zero the node id is dropped and its fd closed once unused.  Returns
        whether it was dropped.  The root is never dropped."""
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

    def set_handle_mode(self, uint32_t fds_max, bint mandatory=False):
        """Allow nodes held by file handle, with at most ``fds_max`` cached descriptors;
        ``mandatory``: an inode without a handle is refused, not held by descriptor."""
        cdef uint32_t size = CLOCK_SIZE_MIN
        cdef int rc = 0
        while size < 2 * <uint64_t>fds_max and size < self.capacity:
            size *= 2
        if self.clock == NULL:
            self.clock = <uint32_t *>malloc(size * sizeof(uint32_t))
            if self.clock == NULL:
                raise MemoryError()
            self.clock_size = size
        elif size > self.clock_size:
            with nogil:
                pthread_mutex_lock(&self.lock)
                rc = self._clock_resize(size)
                pthread_mutex_unlock(&self.lock)
            if rc < 0:
                raise MemoryError()
        if self.fhs == NULL:
            # Untouched until a slot is entered by handle, as the slots themselves.
            self.fhs = <NodeHandle *>calloc(self.capacity, sizeof(NodeHandle))
            if self.fhs == NULL:
                raise MemoryError()
        self.fds_max = fds_max
        self.handles_mandatory = mandatory

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
            dropped = self.forget_c(nodeid, count)
        return dropped

    def nlookup(self, uint64_t nodeid):
        """The lookup count of a live node id (0 if it is not one)."""
        if not self._live(nodeid):
            return 0
        return self.nodes[_index(nodeid)].nlookup

    def hold_node(self, uint64_t nodeid):
        """Take a reference on live ``nodeid`` (until :meth:`unhold`): its descriptor, for a
        node held by file handle the cached one or one reopened by its handle (then cached).
        Raises OSError: EBADF for a node id not live, the reopening's errno (ESTALE once the
        inode is gone)."""
        cdef int fd
        if not self._ref(nodeid):
            raise OSError(EBADF, "bad node id")
        fd = self.nodes[_index(nodeid)].s.fd
        if fd < 0:
            with nogil:
                fd = self._reopen(nodeid)
            if fd < 0:
                self.unhold(nodeid)
                raise OSError(-fd, "cannot reopen the node by its handle")
        return fd

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
