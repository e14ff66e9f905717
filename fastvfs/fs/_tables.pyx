# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The file system's C face: the table of file handles and node ids that the file system
(fs/passthrough.py, through the Python methods) and the hot path (fastvfs.ring, through the
cdef verbs declared in _tables.pxd) share, and the helpers of the operations both serve.

Lock order: a table's mutex is a leaf lock; nothing is called while holding it but close(2)
of an evicted cache descriptor.
"""

cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.errno cimport errno, EBADF, ENOENT
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memchr, memcpy, memset

from fastvfs.includes.atomics cimport fastvfs_cpu_relax
from fastvfs.includes.fcntl cimport F_GETFL, O_DIRECT, fcntl
from fastvfs.includes.fuse_kernel cimport FUSE_NAME_OFFSET, fuse_attr, fuse_dirent, fuse_entry_out
from fastvfs.includes.handle_state cimport (FASTVFS_BUSY, FASTVFS_LIVE, FASTVFS_REFS,
                                            fastvfs_flag_set, fastvfs_flag_take,
                                            fastvfs_key_hash, fastvfs_state_cas,
                                            fastvfs_state_dec, fastvfs_state_load,
                                            fastvfs_state_store)
from fastvfs.includes.posix cimport c_close, dup
from fastvfs.includes.pthread cimport (pthread_mutex_destroy, pthread_mutex_init,
                                       pthread_mutex_lock, pthread_mutex_unlock)
from fastvfs.includes.stat cimport S_ISGID, S_ISUID, S_IXGRP, c_stat, chmod, fchmod, fstat, stat
from fastvfs.includes.statx cimport (AT_NO_AUTOMOUNT, AT_SYMLINK_NOFOLLOW, FASTVFS_STATX_MASK,
                                     STATX_MNT_ID, c_statx, makedev, statx)
from fastvfs.includes.xattr cimport (ENODATA, EOPNOTSUPP, fgetxattr, fremovexattr, getxattr,
                                     removexattr)


@cython.final
cdef class HandleTable:
    """File handles (``fh``) or node ids the guest holds, visible to the fast path without the
    GIL and without a lock.

    ``fh`` = generation << 32 | slot + 1, so a stale or forged handle never reaches a reused slot.
    A slot's fd is closed when it has been removed and no request is using it any more: a
    hostile guest may RELEASE a handle while its READ is still running on another queue.

    Used as the node id table, slots also carry the inode's key (st_dev, st_ino, mount id) in a
    hash index and the guest's lookup count, so the hot path can answer a LOOKUP of a known
    inode (``lookup_key``) and the file system counts its lookups here (``adopt``, ``forget``).

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
        self.slots = <HandleSlot *>calloc(capacity, sizeof(HandleSlot))
        self.nbuckets = 1
        while self.nbuckets < capacity:
            self.nbuckets <<= 1
        self.buckets = <uint32_t *>calloc(self.nbuckets, sizeof(uint32_t))
        if self.slots == NULL or self.buckets == NULL:
            raise MemoryError()
        # The slots stay as calloc left them, untouched until first taken, so a table sized for
        # a million node ids costs memory only for the entries in use: a zeroed slot is free
        # (not in use, state 0: not LIVE), its fd is never read, and it is given generation 1
        # when first taken (generation 0 is the root's, see add_root).
        self.capacity = capacity
        self.free_hint = 0
        self.count = 0
        pthread_mutex_init(&self.lock, NULL)

    def __dealloc__(self):
        if self.slots != NULL:
            self.clear()
            free(self.slots)
            self.slots = NULL
        free(self.buckets)
        free(self.clock)
        pthread_mutex_destroy(&self.lock)

    # -- slots (mutex held) --------------------------------------------------------------------

    cdef int64_t _take_slot(self, int fd) noexcept nogil:
        """A free slot made live for ``fd``; its handle, or -1 when the table is full."""
        cdef uint32_t i, idx
        cdef uint64_t gen
        for i in range(self.capacity):
            idx = (self.free_hint + i) % self.capacity
            if not self.slots[idx].in_use:
                self.slots[idx].in_use = True
                self.slots[idx].keyed = False
                self.slots[idx].direct = False
                self.slots[idx].directory = False
                self.slots[idx].nlookup = 0
                self.slots[idx].fd = fd
                gen = fastvfs_state_load(&self.slots[idx].state) >> 32
                if gen == 0:
                    gen = 1       # a slot never taken before (the root is placed by add_root)
                fastvfs_state_store(&self.slots[idx].state, (gen << 32) | FASTVFS_LIVE)
                self.free_hint = idx + 1
                self.count += 1
                return <int64_t>((gen << 32) | (idx + 1))
        return -1

    cdef int _reclaim_locked(self, uint64_t idx) noexcept nogil:
        """Free a slot that is neither live nor referenced; returns its fd to close."""
        cdef int fd = self.slots[idx].fd
        cdef uint64_t gen = (fastvfs_state_load(&self.slots[idx].state) >> 32) + 1
        if gen > 0xffffffffULL:
            gen = 1
        if self.slots[idx].by_handle:
            self.handle_nodes -= 1
            if fd >= 0:
                self.handle_fds -= 1
            self.slots[idx].by_handle = False
        self.slots[idx].fd = -1
        self.slots[idx].in_use = False
        fastvfs_state_store(&self.slots[idx].state, gen << 32)
        self.count -= 1
        return fd

    cdef void _reclaim(self, uint64_t idx) noexcept nogil:
        pthread_mutex_lock(&self.lock)
        cdef int fd = self._reclaim_locked(idx)
        pthread_mutex_unlock(&self.lock)
        if fd >= 0:
            c_close(fd)

    cdef int _kill(self, uint64_t fh) noexcept nogil:
        """Clear LIVE on ``fh``'s slot: 1 and the slot is now unreferenced (the caller reclaims
        it), 0 still referenced (the last release reclaims it), -1 not a live handle."""
        cdef uint64_t idx = (fh & 0xffffffffUL) - 1
        cdef uint64_t w
        if idx >= self.capacity:
            return -1
        w = fastvfs_state_load(&self.slots[idx].state)
        while True:
            if (w >> 32) != (fh >> 32) or not (w & FASTVFS_LIVE):
                return -1
            if w & FASTVFS_BUSY:
                fastvfs_cpu_relax()
                w = fastvfs_state_load(&self.slots[idx].state)
                continue
            if fastvfs_state_cas(&self.slots[idx].state, &w, w & ~FASTVFS_LIVE):
                return 1 if (w & FASTVFS_REFS) == 0 else 0

    cdef void _unlink_key(self, uint64_t idx) noexcept nogil:
        cdef HandleSlot *sl = &self.slots[idx]
        cdef uint32_t *link = &self.buckets[fastvfs_key_hash(sl.dev, sl.ino, sl.mnt) &
                                            (self.nbuckets - 1)]
        while link[0]:
            if link[0] == idx + 1:
                link[0] = sl.hnext
                break
            link = &self.slots[link[0] - 1].hnext
        sl.keyed = False
        sl.hnext = 0

    cdef int64_t _find_key(self, uint64_t dev, uint64_t ino, uint64_t mnt) noexcept nogil:
        """The live slot index with this key, or -1 (mutex held)."""
        cdef uint32_t at = self.buckets[fastvfs_key_hash(dev, ino, mnt) & (self.nbuckets - 1)]
        cdef HandleSlot *sl
        while at:
            sl = &self.slots[at - 1]
            if (sl.ino == ino and sl.dev == dev and sl.mnt == mnt and
                    fastvfs_state_load(&sl.state) & FASTVFS_LIVE):
                return at - 1
            at = sl.hnext
        return -1

    cdef void _link_key(self, uint64_t idx, uint64_t dev, uint64_t ino, uint64_t mnt) noexcept nogil:
        cdef HandleSlot *sl = &self.slots[idx]
        cdef uint32_t *bucket = &self.buckets[fastvfs_key_hash(dev, ino, mnt) & (self.nbuckets - 1)]
        sl.dev = dev
        sl.ino = ino
        sl.mnt = mnt
        sl.keyed = True
        sl.hnext = bucket[0]
        bucket[0] = <uint32_t>(idx + 1)

    # -- the fast path -------------------------------------------------------------------------

    cdef bint _ref(self, uint64_t fh) noexcept nogil:
        """Take a reference on live ``fh``; False if it is not live."""
        cdef uint64_t idx = (fh & 0xffffffffUL) - 1
        cdef uint64_t w
        if idx >= self.capacity:
            return False
        w = fastvfs_state_load(&self.slots[idx].state)
        while True:
            if (w >> 32) != (fh >> 32) or not (w & FASTVFS_LIVE) or \
                    (w & FASTVFS_REFS) == FASTVFS_REFS:
                return False
            if w & FASTVFS_BUSY:
                fastvfs_cpu_relax()
                w = fastvfs_state_load(&self.slots[idx].state)
                continue
            if fastvfs_state_cas(&self.slots[idx].state, &w, w + 1):
                return True

    cdef int acquire(self, uint64_t fh) noexcept nogil:
        """The fd behind ``fh`` with a reference held, or -1 if ``fh`` is not a live handle;
        -2 (no reference held) for a node held by file handle without a cached descriptor."""
        cdef uint64_t idx = (fh & 0xffffffffUL) - 1
        cdef int fd
        if not self._ref(fh):
            return -1
        fd = self.slots[idx].fd
        if fd < 0:
            self.release(fh)
            return -2
        if self.slots[idx].by_handle:
            fastvfs_flag_set(&self.slots[idx].recent)
        return fd

    cdef void release(self, uint64_t fh) noexcept nogil:
        cdef uint64_t idx = (fh & 0xffffffffUL) - 1
        cdef uint64_t w = fastvfs_state_dec(&self.slots[idx].state)
        if (w & FASTVFS_REFS) == 0 and not (w & FASTVFS_LIVE):
            self._reclaim(idx)

    cdef int64_t lookup_key(self, uint64_t dev, uint64_t ino, uint64_t mnt) noexcept nogil:
        """Count one more lookup of the live inode with this key; its node id, or 0."""
        cdef int64_t idx
        cdef int64_t nodeid = 0
        pthread_mutex_lock(&self.lock)
        idx = self._find_key(dev, ino, mnt)
        if idx >= 0 and self.slots[idx].fd >= 0:
            self.slots[idx].nlookup += 1
            nodeid = self._id_of(idx)
        pthread_mutex_unlock(&self.lock)
        return nodeid

    # -- the descriptor cache of nodes held by file handle (mutex held) -----------------------

    cdef void _clock_push(self, uint32_t idx) noexcept nogil:
        self.clock[(self.clock_head + self.clock_len) % self.capacity] = idx
        self.clock_len += 1

    cdef void _cache_locked(self, uint32_t idx) noexcept nogil:
        """Slot ``idx`` (held by file handle) has just been given a descriptor."""
        self.handle_fds += 1
        fastvfs_flag_set(&self.slots[idx].recent)
        if not self.slots[idx].queued:
            self.slots[idx].queued = True
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
        cdef HandleSlot *sl
        while self.handle_fds > self.fds_max and self.clock_len and tries:
            tries -= 1
            idx = self.clock[self.clock_head]
            self.clock_head = (self.clock_head + 1) % self.capacity
            self.clock_len -= 1
            sl = &self.slots[idx]
            if not sl.in_use or not sl.by_handle or sl.fd < 0:
                sl.queued = False
                continue
            w = fastvfs_state_load(&sl.state)
            if fastvfs_flag_take(&sl.recent) or (w & FASTVFS_REFS) or \
                    not (w & FASTVFS_LIVE) or \
                    not fastvfs_state_cas(&sl.state, &w, w | FASTVFS_BUSY):
                self._clock_push(idx)
                continue
            fd = sl.fd
            sl.fd = -1
            fastvfs_state_store(&sl.state, w)
            sl.queued = False
            self.handle_fds -= 1
            c_close(fd)

    cdef bint direct(self, uint64_t fh) noexcept nogil:
        """Whether the acquired handle ``fh`` was opened O_DIRECT."""
        return self.slots[(fh & 0xffffffffUL) - 1].direct

    cdef bint is_directory(self, uint64_t fh) noexcept nogil:
        """Whether ``fh`` is a live directory handle (False for a stale or forged one)."""
        cdef bint directory
        if self.acquire(fh) < 0:
            return False
        directory = self.slots[(fh & 0xffffffffUL) - 1].directory
        self.release(fh)
        return directory

    cdef uint64_t mount_of(self, uint64_t fh) noexcept nogil:
        """The mount id of a node id the caller holds a reference on (0 if not keyed)."""
        cdef uint64_t idx = (fh & 0xffffffffUL) - 1
        return self.slots[idx].mnt if self.slots[idx].keyed else 0

    cdef int64_t _id_of(self, int64_t idx) noexcept nogil:
        """The handle naming slot ``idx`` in its current generation."""
        return <int64_t>((fastvfs_state_load(&self.slots[idx].state) >> 32) << 32 |
                         <uint64_t>(idx + 1))

    cdef int _drop_locked(self, uint64_t fh) noexcept nogil:
        """``_kill`` ``fh`` and take its key out of the index (mutex held)."""
        cdef int rc = self._kill(fh)
        cdef uint64_t idx = (fh & 0xffffffffUL) - 1
        if rc >= 0 and self.slots[idx].keyed:
            self._unlink_key(idx)
        return rc

    cdef int remove_fh(self, uint64_t fh) noexcept nogil:
        """Drop ``fh`` (0) or -EBADF; its fd is closed once no request uses it."""
        cdef int rc
        pthread_mutex_lock(&self.lock)
        rc = self._drop_locked(fh)
        pthread_mutex_unlock(&self.lock)
        if rc == 1:
            self._reclaim((fh & 0xffffffffUL) - 1)
        return -EBADF if rc < 0 else 0

    cdef int remove_fh_unless_locks(self, uint64_t fh) noexcept nogil:
        """``remove_fh`` while no lock descriptor exists; 1 (nothing done) when one does.

        The test and the removal are one step under the mutex, as ``set_lock_fds`` is: a lock
        tied to ``fh`` on another queue is either registered first (and this RELEASE goes to
        the engine, which drops it) or finds ``fh`` already gone (EBADF, nothing held)."""
        cdef int rc
        pthread_mutex_lock(&self.lock)
        if self.lock_fds_open:
            pthread_mutex_unlock(&self.lock)
            return 1
        rc = self._drop_locked(fh)
        pthread_mutex_unlock(&self.lock)
        if rc == 1:
            self._reclaim((fh & 0xffffffffUL) - 1)
        return -EBADF if rc < 0 else 0

    cdef bint dropped_room(self, uint32_t n) noexcept nogil:
        return self.ndropped + n <= DROPPED_MAX

    cdef bint forget_c(self, uint64_t nodeid, uint64_t count, bint note) noexcept nogil:
        """Take ``count`` lookups away (never below zero: a hostile guest may forget more than
        it looked up); at zero the node id is dropped and its fd closed once unused.  Returns
        whether it was dropped; with ``note`` (the hot path, which checked ``dropped_room``) a
        dropped id is also noted for the file system.  The root is never dropped."""
        cdef uint64_t idx = (nodeid & 0xffffffffUL) - 1
        cdef int rc = -1
        cdef uint64_t w
        if idx >= self.capacity or idx == 0:
            return False
        pthread_mutex_lock(&self.lock)
        w = fastvfs_state_load(&self.slots[idx].state)
        if w >> 32 == nodeid >> 32 and w & FASTVFS_LIVE:
            self.slots[idx].nlookup -= count if count < self.slots[idx].nlookup \
                else self.slots[idx].nlookup
            if self.slots[idx].nlookup == 0:
                rc = self._drop_locked(nodeid)
                if rc >= 0 and note and self.ndropped < DROPPED_MAX:
                    self.dropped[self.ndropped] = nodeid
                    self.ndropped += 1
        pthread_mutex_unlock(&self.lock)
        if rc == 1:
            self._reclaim(idx)
        return rc >= 0

    def take_dropped(self):
        """Node ids the hot path dropped since the last call."""
        cdef uint32_t i
        with nogil:
            pthread_mutex_lock(&self.lock)
        out = [self.dropped[i] for i in range(self.ndropped)]
        self.ndropped = 0
        pthread_mutex_unlock(&self.lock)
        return out

    # -- handles -------------------------------------------------------------------------------

    def add(self, int fd, bint directory=False):
        """Take ownership of ``fd`` and return its new handle; raises OSError(EMFILE) when full.
        A ``directory`` handle is never released by the hot path (``is_directory``)."""
        cdef int64_t fh
        with nogil:
            fh = _add_fd(self, fd, directory)
        if fh < 0:
            raise OSError(24, "handle table full")
        return fh

    def hold(self, uint64_t fh):
        """Take a reference on ``fh`` (its fd stays open until :meth:`unhold`, even if it is
        removed meanwhile); returns the fd or raises OSError(EBADF)."""
        cdef int fd = self.acquire(fh)
        if fd < 0:
            raise OSError(EBADF, "bad file handle")
        return fd

    def unhold(self, uint64_t fh):
        self.release(fh)

    def set_cap_xattr(self, bytes name):
        """Set the host name of security.capability to remove on WRITE and FALLOCATE (b"" for
        none)."""
        if len(name) > 255 or b"\0" in name:
            raise ValueError("not an xattr name")
        memcpy(self.cap_xattr, <const char *>name, len(name))
        self.cap_xattr[len(name)] = 0

    def set_lock_fds(self, int count, uint64_t fh=0):
        """Record how many lock descriptors the file system holds.  With ``fh``, the count
        is set only if ``fh`` is a live handle, checked under the same mutex as the hot path's
        ``remove_fh_unless_locks``; returns whether it was set."""
        cdef uint64_t idx = (fh & 0xffffffffUL) - 1
        cdef uint64_t w
        cdef bint ok = True
        with nogil:
            pthread_mutex_lock(&self.lock)
            if fh:
                ok = idx < self.capacity
                if ok:
                    w = fastvfs_state_load(&self.slots[idx].state)
                    ok = (w >> 32) == (fh >> 32) and (w & FASTVFS_LIVE) != 0
            if ok:
                self.lock_fds_open = count
            pthread_mutex_unlock(&self.lock)
        return ok

    def add_root(self, int fd, uint64_t dev=0, uint64_t ino=0, uint64_t mnt=0, bint keyed=False,
                 uint32_t mode=0):
        """Put ``fd`` in slot 0 with generation 0: id 1, FUSE_ROOT_ID, when the table holds node
        ids (with its inode key when ``keyed``).  Must be the first entry; it is never removed."""
        if self.count or self.slots[0].in_use:
            raise ValueError("the root goes into an empty table")
        self.slots[0].in_use = True
        self.slots[0].fd = fd
        self.slots[0].nlookup = 1
        self.slots[0].mode = mode
        fastvfs_state_store(&self.slots[0].state, FASTVFS_LIVE)
        if keyed:
            self._link_key(0, dev, ino, mnt)
        self.free_hint = 1
        self.count = 1
        return 1

    def get(self, uint64_t fh):
        """The fd behind ``fh`` for a request served with the GIL held; raises OSError(EBADF).

        Use ``borrow`` when the fd is used by a call that could race with a RELEASE.
        """
        cdef int fd = self.acquire(fh)
        if fd < 0:
            raise OSError(EBADF, "bad file handle")
        self.release(fh)
        return fd

    def borrow(self, uint64_t fh):
        """Context manager holding a reference to the fd behind ``fh`` while it is used."""
        return _Borrow(self, fh)

    def remove(self, uint64_t fh):
        """Drop ``fh``; its fd is closed now or when the last request using it finishes."""
        cdef int rc
        with nogil:
            rc = self.remove_fh(fh)
        if rc < 0:
            raise OSError(EBADF, "bad file handle")

    def clear(self):
        """Drop every handle but the root (session end)."""
        cdef uint32_t i
        cdef uint64_t w
        for i in range(1 if self.slots[0].in_use and
                       (fastvfs_state_load(&self.slots[0].state) >> 32) == 0 else 0,
                       self.capacity):
            w = fastvfs_state_load(&self.slots[i].state)
            if self.slots[i].in_use and w & FASTVFS_LIVE:
                try:
                    self.remove(((w >> 32) << 32) | (i + 1))
                except OSError:
                    pass

    # -- node ids: lookup counts ---------------------------------------------------------------

    def adopt(self, int fd, uint64_t dev, uint64_t ino, uint64_t mnt, bint by_handle=False,
              uint32_t mode=0):
        """Count one lookup of the inode with this key: ``(node id, created, taken)``,
        ``created`` for a new entry, ``taken`` when the table now owns ``fd`` (else the
        caller closes it): a new entry takes it, and so does a known node held by file handle
        without a cached descriptor.  ``by_handle``: a new entry is held by file handle (its
        descriptor is a cache entry; the caller compared the handle of a known node with
        this key first, ``find_key``); ``mode``: its st_mode, kept for :meth:`node`.  Raises
        OSError(EMFILE) when full."""
        cdef int64_t idx, nodeid
        cdef bint created = False, taken = False
        if by_handle and self.clock == NULL:
            raise ValueError("set_fds_max first")
        with nogil:
            pthread_mutex_lock(&self.lock)
            idx = self._find_key(dev, ino, mnt)
            if idx >= 0:
                self.slots[idx].nlookup += 1
                nodeid = self._id_of(idx)
                if self.slots[idx].fd < 0:
                    self.slots[idx].fd = fd
                    taken = True
                    self._cache_locked(idx)
            else:
                nodeid = self._take_slot(fd)
                if nodeid > 0:
                    created = taken = True
                    idx = (nodeid & <int64_t>0xffffffffLL) - 1
                    self.slots[idx].nlookup = 1
                    self.slots[idx].mode = mode
                    self._link_key(idx, dev, ino, mnt)
                    if by_handle:
                        self.slots[idx].by_handle = True
                        self.handle_nodes += 1
                        self._cache_locked(idx)
            pthread_mutex_unlock(&self.lock)
        if nodeid < 0:
            raise OSError(24, "node id table full")
        return nodeid, created, taken

    def set_fds_max(self, uint32_t fds_max):
        """Allow nodes held by file handle, with at most ``fds_max`` cached descriptors."""
        if self.clock == NULL:
            self.clock = <uint32_t *>calloc(self.capacity, sizeof(uint32_t))
            if self.clock == NULL:
                raise MemoryError()
        self.fds_max = fds_max

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
        cdef uint64_t idx = (nodeid & 0xffffffffUL) - 1
        cdef uint64_t w
        if idx >= self.capacity:
            return
        with nogil:
            pthread_mutex_lock(&self.lock)
            w = fastvfs_state_load(&self.slots[idx].state)
            if w >> 32 == nodeid >> 32 and w & FASTVFS_LIVE and self.slots[idx].keyed:
                self._unlink_key(idx)
            pthread_mutex_unlock(&self.lock)

    def hold_node(self, uint64_t nodeid):
        """Take a reference on live ``nodeid`` (until :meth:`unhold`): its descriptor, or -1
        for a node held by file handle without one (then :meth:`install` one).  Raises
        OSError(EBADF)."""
        if not self._ref(nodeid):
            raise OSError(EBADF, "bad node id")
        return self.slots[(nodeid & 0xffffffffUL) - 1].fd

    def node(self, uint64_t nodeid, bint hold=False):
        """What the table knows of live ``nodeid``: ``(fd, dev, ino, mnt, mode, by_handle)``,
        ``fd`` -1 for a node held by file handle without a cached descriptor.  With ``hold``
        a reference is taken (until :meth:`unhold`), so the descriptor stays open; without,
        it is valid only while nothing can forget the node.  Raises OSError(ENOENT)."""
        cdef uint64_t idx = (nodeid & 0xffffffffUL) - 1
        cdef uint64_t w
        cdef bint ok = False
        cdef HandleSlot sl
        if idx >= self.capacity:
            raise OSError(ENOENT, "unknown node id")
        with nogil:
            if not hold or self._ref(nodeid):
                pthread_mutex_lock(&self.lock)
                w = fastvfs_state_load(&self.slots[idx].state)
                ok = w >> 32 == nodeid >> 32 and (hold or w & FASTVFS_LIVE)
                sl = self.slots[idx]
                pthread_mutex_unlock(&self.lock)
        if not ok:
            raise OSError(ENOENT, "unknown node id")
        return sl.fd, sl.dev, sl.ino, sl.mnt, sl.mode, sl.by_handle

    def install(self, uint64_t nodeid, int fd):
        """Give ``fd`` to ``nodeid`` (held by file handle, referenced by the caller) as its
        cached descriptor; returns the descriptor it now has: ``fd``, or the one another
        request installed first (the caller then closes ``fd``)."""
        cdef uint64_t idx = (nodeid & 0xffffffffUL) - 1
        cdef int have
        with nogil:
            pthread_mutex_lock(&self.lock)
            have = self.slots[idx].fd
            if have < 0:
                self.slots[idx].fd = have = fd
                fastvfs_flag_set(&self.slots[idx].recent)
                self._cache_locked(<uint32_t>idx)
            pthread_mutex_unlock(&self.lock)
        return have

    def relookup(self, uint64_t nodeid):
        """Count one more lookup of a live node id; raises OSError(ENOENT)."""
        cdef uint64_t idx = (nodeid & 0xffffffffUL) - 1
        cdef bint ok = False
        cdef uint64_t w
        if idx < self.capacity:
            with nogil:
                pthread_mutex_lock(&self.lock)
                w = fastvfs_state_load(&self.slots[idx].state)
                if w >> 32 == nodeid >> 32 and w & FASTVFS_LIVE:
                    self.slots[idx].nlookup += 1
                    ok = True
                pthread_mutex_unlock(&self.lock)
        if not ok:
            raise OSError(ENOENT, "unknown node id")

    def forget(self, uint64_t nodeid, uint64_t count):
        """``forget_c`` for the file system: True when the node id was dropped."""
        cdef bint dropped
        with nogil:
            dropped = self.forget_c(nodeid, count, False)
        return dropped

    def known_entries(self, uint64_t parent, bytes records, const uint32_t[::1] starts,
                      uint32_t index, uint32_t size, uint64_t sec, uint32_t nsec):
        """READDIRPLUS from a directory snapshot (``records`` and ``starts`` as ``pack_dirents``
        gives them), in C: from entry ``index`` on, each entry whose inode this table already
        holds becomes a fuse_direntplus (one more lookup counted, as the hot path's LOOKUP
        does), "." and ".." get an empty entry (the kernel counts no lookup for them), and
        entries gone since the snapshot are left out; until ``size`` bytes are full or an entry
        needs the file system's lookup.  Returns ``(direntplus bytes, next index, whether entry next index
        needs the lookup)``."""
        cdef Py_ssize_t total = len(records)
        cdef const uint8_t *recs = records
        cdef uint32_t count = <uint32_t>(starts.shape[0] - 1) if starts.shape[0] else 0
        cdef uint32_t i = index, start, end, namelen, used = 0
        cdef bint need = False
        cdef int64_t rc
        cdef char name[LOOKUP_NAME_MAX + 1]
        cdef uint8_t *buf = <uint8_t *>malloc(size if size else 1)
        if buf == NULL:
            raise MemoryError()
        try:
            with nogil:
                while i < count:
                    start = starts[i]
                    end = starts[i + 1]
                    if end > total or end < start + FUSE_NAME_OFFSET:
                        break                       # not a snapshot this table made
                    if used + sizeof(fuse_entry_out) + (end - start) > size:
                        break
                    namelen = (<const fuse_dirent *>(recs + start)).namelen
                    if namelen > end - start - FUSE_NAME_OFFSET:
                        break
                    if _dot_name(<const char *>recs + start + FUSE_NAME_OFFSET, namelen):
                        memset(buf + used, 0, sizeof(fuse_entry_out))
                    else:
                        if namelen > LOOKUP_NAME_MAX:
                            need = True
                            break
                        memcpy(name, recs + start + FUSE_NAME_OFFSET, namelen)
                        name[namelen] = 0
                        rc = known_entry(self, parent, name, namelen, sec, nsec,
                                         <fuse_entry_out *>(buf + used))
                        if rc == -ENOENT:
                            i += 1                  # removed since the snapshot
                            continue
                        if rc <= 0:
                            need = True
                            break
                    memcpy(buf + used + sizeof(fuse_entry_out), recs + start, end - start)
                    used += sizeof(fuse_entry_out) + (end - start)
                    i += 1
            return PyBytes_FromStringAndSize(<char *>buf, used), i, need
        finally:
            free(buf)

    def nlookup(self, uint64_t nodeid):
        """The lookup count of a live node id (0 if it is not one)."""
        cdef uint64_t idx = (nodeid & 0xffffffffUL) - 1
        if idx >= self.capacity:
            return 0
        w = fastvfs_state_load(&self.slots[idx].state)
        if w >> 32 != nodeid >> 32 or not w & FASTVFS_LIVE:
            return 0
        return self.slots[idx].nlookup


cdef inline bint _dot_name(const char *name, size_t length) noexcept nogil:
    """"." or ".."."""
    return length and name[0] == 46 and (length == 1 or (length == 2 and name[1] == 46))


cdef inline bint _plain_name(const char *name, size_t length) noexcept nogil:
    """A name the hot path looks up itself: 1 to NAME_MAX bytes, no slash or NUL, neither "."
    nor ".." (anything else is the engine's to refuse or resolve)."""
    if length == 0 or length > LOOKUP_NAME_MAX or memchr(name, 47, length) != NULL or \
            memchr(name, 0, length) != NULL:
        return False
    return not _dot_name(name, length)


cdef int64_t known_entry(HandleTable inodes, uint64_t parent, const char *name, size_t length,
                          uint64_t valid, uint32_t valid_nsec, fuse_entry_out *out) noexcept nogil:
    """``name`` (``length`` bytes, NUL-terminated) in directory ``parent`` when it is a plain
    name and the node id table already holds its inode: fills ``out`` with fuse_entry_out
    (both timeouts ``valid``) with one more lookup counted, and returns the node id.  -ENOENT
    when there is no such name; 0 when the engine must look it up (another name, a new inode,
    a directory on another mount, any other failure)."""
    cdef uint64_t mnt
    cdef int64_t nodeid
    cdef statx st
    cdef int pfd, rc, err
    if not _plain_name(name, length):
        return 0
    pfd = inodes.acquire(parent)
    if pfd < 0:
        return 0
    # One statx of the name, as an O_PATH open of it would see it (the link itself, no
    # automount, mounts crossed), without the open and close: a known inode needs no new fd.
    rc = c_statx(pfd, name, AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT, FASTVFS_STATX_MASK, &st)
    if rc < 0:
        err = errno
        inodes.release(parent)
        return -ENOENT if err == ENOENT else 0
    mnt = st.stx_mnt_id if st.stx_mask & STATX_MNT_ID else 0
    if (st.stx_mode & 0o170000) == 0o040000 and mnt != inodes.mount_of(parent):
        inodes.release(parent)
        return 0
    nodeid = inodes.lookup_key(makedev(st.stx_dev_major, st.stx_dev_minor), st.stx_ino, mnt)
    inodes.release(parent)
    if nodeid <= 0:
        return 0
    out.nodeid = <uint64_t>nodeid
    out.generation = 0
    out.entry_valid = valid                     # the same timeout for the name and attributes
    out.attr_valid = valid
    out.entry_valid_nsec = valid_nsec
    out.attr_valid_nsec = valid_nsec
    pack_attr(&st, &out.attr)
    return nodeid


cdef class _Borrow:
    cdef HandleTable table
    cdef uint64_t fh
    cdef int fd

    def __cinit__(self, HandleTable table, uint64_t fh):
        self.table = table
        self.fh = fh
        self.fd = -1

    def __enter__(self):
        self.fd = self.table.acquire(self.fh)
        if self.fd < 0:
            raise OSError(EBADF, "bad file handle")
        return self.fd

    def __exit__(self, *exc):
        self.table.release(self.fh)
        return False


cdef void pack_attr(const statx *st, fuse_attr *a) noexcept nogil:
    """struct fuse_attr from statx, as fastvfs.fuse.abi.pack_attr packs an os.stat_result
    (the parity tests hold the two to the same bytes)."""
    a.ino = st.stx_ino
    a.size = st.stx_size
    a.blocks = st.stx_blocks
    a.atime = <uint64_t>st.stx_atime.tv_sec
    a.mtime = <uint64_t>st.stx_mtime.tv_sec
    a.ctime = <uint64_t>st.stx_ctime.tv_sec
    a.atimensec = st.stx_atime.tv_nsec
    a.mtimensec = st.stx_mtime.tv_nsec
    a.ctimensec = st.stx_ctime.tv_nsec
    a.mode = st.stx_mode
    a.nlink = st.stx_nlink
    a.uid = st.stx_uid
    a.gid = st.stx_gid
    a.rdev = <uint32_t>(makedev(st.stx_rdev_major, st.stx_rdev_minor) & 0xffffffffUL)
    a.blksize = st.stx_blksize
    a.flags = 0


cdef int kill_mapped_capability(int fd, const char *name) noexcept nogil:
    """Remove ``name``, the host name a ``--xattrmap`` gives the guest's security.capability,
    from ``fd``'s file, where the kernel would remove security.capability itself: a write or
    fallocate of the file (fs/inode.c, file_remove_privs, for any writer:
    security_inode_need_killpriv), a truncate or a chown (fs/attr.c, setattr_prepare with
    ATTR_KILL_PRIV).  Under another name the host kernel keeps it, so a guest file capability
    would survive a change of content or owner.  0 when gone or never there (ENODATA; ENOTSUP:
    no xattrs at all), else -errno: any other failure fails the change, as the kernel's does.
    Asked first, as the kernel asks, so a file without it costs one fgetxattr and never takes
    the inode lock a removal takes."""
    if fgetxattr(fd, name, NULL, 0) < 0:
        return 0 if errno == ENODATA or errno == EOPNOTSUPP else -errno
    if fremovexattr(fd, name) < 0 and errno != ENODATA:
        return -errno
    return 0


cdef int _kill_mapped_capability_path(const char *path, const char *name) noexcept nogil:
    """``kill_mapped_capability`` of the file at ``path`` (an inode's /proc/self/fd name)."""
    if getxattr(path, name, NULL, 0) < 0:
        return 0 if errno == ENODATA or errno == EOPNOTSUPP else -errno
    if removexattr(path, name) < 0 and errno != ENODATA:
        return -errno
    return 0


cdef inline unsigned int _without_suidgid(unsigned int mode) noexcept nogil:
    mode &= 0o7777
    if mode & S_ISUID:
        mode &= ~S_ISUID
    if mode & S_ISGID and mode & S_IXGRP:
        mode &= ~S_ISGID
    return mode


cdef int kill_suidgid(int fd) noexcept nogil:
    """Clear setuid, and setgid where group-execute makes it one: what the kernel does when a
    caller without CAP_FSETID writes, truncates or chowns.  Under HANDLE_KILLPRIV_V2 the guest
    leaves it to us, and our own calls (made with CAP_FSETID) would keep the bits.  0 or
    -errno."""
    cdef stat st
    cdef unsigned int mode
    if fstat(fd, &st) < 0:
        return -errno
    mode = _without_suidgid(st.st_mode)
    if mode != st.st_mode & 0o7777 and fchmod(fd, mode) < 0:
        return -errno
    return 0


cdef int _kill_suidgid_path(const char *path) noexcept nogil:
    """``kill_suidgid`` of the file at ``path`` (an inode's /proc/self/fd name)."""
    cdef stat st
    cdef unsigned int mode
    if c_stat(path, &st) < 0:
        return -errno
    mode = _without_suidgid(st.st_mode)
    if mode != st.st_mode & 0o7777 and chmod(path, mode) < 0:
        return -errno
    return 0


cdef int flush_fd(int fd) noexcept nogil:
    """FLUSH of an open file: close a duplicate of its descriptor, which gives the host file
    system its close-time hook (and drops POSIX locks the way a close in the guest would)
    while the handle stays open.  0 or -errno."""
    cdef int dupfd = dup(fd)
    if dupfd < 0 or c_close(dupfd) < 0:
        return -errno
    return 0


# -- the same helpers for the Python engine (fs/passthrough.py) ------------------------------

cdef int _check(int rc) except -1:
    if rc < 0:
        import os
        raise OSError(-rc, os.strerror(-rc))
    return 0


def kill_suidgid_of(fd_or_path):
    """``kill_suidgid`` of a descriptor (int) or a path (bytes or str); raises OSError."""
    cdef int rc, fd
    cdef bytes path
    cdef const char *p
    if isinstance(fd_or_path, int):
        fd = fd_or_path
        with nogil:
            rc = kill_suidgid(fd)
    else:
        path = fd_or_path.encode() if isinstance(fd_or_path, str) else fd_or_path
        p = path
        with nogil:
            rc = _kill_suidgid_path(p)
    _check(rc)


def kill_mapped_capability_of(fd_or_path, name):
    """``kill_mapped_capability`` of a descriptor (int) or a path (bytes or str) for the
    attribute ``name`` (bytes or str); raises OSError."""
    cdef int rc, fd
    cdef bytes path, xname = name.encode() if isinstance(name, str) else name
    cdef const char *p
    cdef const char *n = xname
    if isinstance(fd_or_path, int):
        fd = fd_or_path
        with nogil:
            rc = kill_mapped_capability(fd, n)
    else:
        path = fd_or_path.encode() if isinstance(fd_or_path, str) else fd_or_path
        p = path
        with nogil:
            rc = _kill_mapped_capability_path(p, n)
    _check(rc)


def flush(int fd):
    """``flush_fd``; raises OSError."""
    cdef int rc
    with nogil:
        rc = flush_fd(fd)
    _check(rc)


include "opens.pxi"
