# The guest's open files and directories (HandleTable in _tables.pxd): the ``fh`` of OPEN,
# CREATE and OPENDIR, read by the hot path's requests on open files (READ, WRITE, FLUSH,
# RELEASE, FSYNC, FALLOCATE, COPY_FILE_RANGE) and on open directories (READDIR, READDIRPLUS,
# RELEASEDIR).


@cython.final
cdef class HandleTable(SlotTable):
    """File handles (``fh``) the guest holds, visible to the fast path without the GIL and
    without a lock.

    ``fh`` = generation << 32 | slot + 1, so a stale or forged handle never reaches a reused
    slot.  A handle's fd is closed when it has been removed and no request is using it any
    more: a hostile guest may RELEASE a handle while its READ is still running on another
    queue.  A handle remembers whether it was opened O_DIRECT (``direct``) and whether it is a
    directory's (``is_directory``): a directory handle holds the listing the guest pages
    through (tables/dirs.pxi), dropped with the handle, and counts once more against the
    descriptor budget (``fds_other``, as PassthroughFs.fds_held counts it).

    The descriptions holding POSIX and flock locks are kept here too (tables/locks.pxi); the
    messages that end locks (FLUSH, RELEASE, FORGET) drop them through ``locks_flushed`` and
    its siblings, in the hot path as in the file system.
    """
    def __cinit__(self, uint32_t capacity=65536):
        self._alloc(capacity, sizeof(HandleSlot))
        self.files = <HandleSlot *>self.mem
        self.listing_bytes_max = LISTING_BYTES_MAX
        pthread_mutex_init(&self.locks_mutex, NULL)

    def __dealloc__(self):
        _lock_drop(self, 0, 0, 0, False, True, 0)
        pthread_mutex_destroy(&self.locks_mutex)
        self._drop_all()

    # -- the hot path ------------------------------------------------------------------------

    cdef bint direct(self, uint64_t fh) noexcept nogil:
        """Whether the acquired handle ``fh`` was opened O_DIRECT."""
        return self.files[_index(fh)].direct

    cdef bint is_directory(self, uint64_t fh) noexcept nogil:
        """Whether ``fh`` is a live directory handle (False for a stale or forged one)."""
        cdef bint directory
        if self.acquire(fh) < 0:
            return False
        directory = self.files[_index(fh)].directory
        self.release(fh)
        return directory

    cdef int remove_fh(self, uint64_t fh) noexcept nogil:
        """Drop ``fh`` (0) or -EBADF; its fd is closed once no request uses it, and a
        directory handle's listing is freed once no request reads it; the lock descriptions
        no handle is left to go with it (``locks_released``, after the removal under the
        mutex: the order a lock's tie to a handle relies on)."""
        cdef DirListing *unfreed
        cdef int rc
        pthread_mutex_lock(&self.lock)
        rc = self._drop_locked(fh)
        unfreed = _take_unfreed(self)
        pthread_mutex_unlock(&self.lock)
        _free_listings(unfreed)
        if rc == 1:
            self._reclaim(_index(fh))
        if rc >= 0:
            locks_released(self, fh)
        return -EBADF if rc < 0 else 0

    cdef int64_t _add_fd(self, int fd, bint directory, bint direct) noexcept nogil:
        """A new handle owning ``fd`` (``add``, ``open_node``, ``make_node``, ``dir_open``),
        or -1 when the table is full.  ``direct``: the description was opened with O_DIRECT
        (its reads then never take the lone path); False for a directory, which is never read
        as a file."""
        cdef int64_t fh
        pthread_mutex_lock(&self.lock)
        fh = self._take_slot(fd)
        if fh >= 0:
            self.files[_index(fh)].direct = direct
            self.files[_index(fh)].directory = directory
            if directory:
                self.fds_other += 1
        pthread_mutex_unlock(&self.lock)
        return fh

    cdef int _drop_locked(self, uint64_t fh) noexcept nogil:
        """``_kill`` ``fh``; a directory handle's listing goes with it (a request reading it
        keeps its own reference; the caller frees an unreferenced one after the mutex)."""
        cdef int rc = self._kill(fh)
        cdef HandleSlot *sl
        if rc >= 0:
            sl = &self.files[_index(fh)]
            if sl.directory:
                sl.directory = False
                self.fds_other -= 1
                _unlist(self, sl)
        return rc

    # -- the file system's -------------------------------------------------------------------

    def add(self, int fd, bint directory=False):
        """Take ownership of ``fd`` and return its new handle; raises OSError(EMFILE) when full.
        A ``directory`` handle (``is_directory``) counts once more against the descriptor
        budget and holds its listing (tables/dirs.pxi)."""
        cdef int64_t fh
        with nogil:
            fh = self._add_fd(fd, directory,
                             not directory and fcntl(fd, F_GETFL) & O_DIRECT != 0)
        if fh < 0:
            raise OSError(24, "handle table full")
        return fh

    def direct_of(self, uint64_t fh):
        """Whether handle ``fh`` was opened O_DIRECT (``direct``); raises OSError(EBADF)."""
        cdef bint direct
        if self.acquire(fh) < 0:
            raise OSError(EBADF, "bad file handle")
        direct = self.direct(fh)
        self.release(fh)
        return direct

    def get(self, uint64_t fh):
        """The fd behind ``fh`` for a request served with the GIL held; raises OSError(EBADF).

        Use ``borrow`` when the fd is used by a call that could race with a RELEASE.
        """
        cdef int fd = self.acquire(fh)
        if fd < 0:
            raise OSError(EBADF, "bad file handle")
        self.release(fh)
        return fd

    def hold(self, uint64_t fh):
        """Take a reference on ``fh`` (its fd stays open until :meth:`unhold`, even if it is
        removed meanwhile); returns the fd or raises OSError(EBADF)."""
        cdef int fd = self.acquire(fh)
        if fd < 0:
            raise OSError(EBADF, "bad file handle")
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

    def set_cap_xattr(self, bytes name):
        """Set the host name of security.capability to remove on WRITE and FALLOCATE (b"" for
        none)."""
        if len(name) > 255 or b"\0" in name:
            raise ValueError("not an xattr name")
        memcpy(self.cap_xattr, <const char *>name, len(name))
        self.cap_xattr[len(name)] = 0


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
