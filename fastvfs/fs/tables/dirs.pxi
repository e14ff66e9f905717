# Directory handles and their listings (DirListing and the HandleTable fields in _tables.pxd),
# for the hot path's OPENDIR, READDIR, READDIRPLUS and RELEASEDIR and for the file system's
# (PassthroughFs.opendir and readdir, the engine's _readdir): a directory reopened from its
# node's O_PATH descriptor, its listing taken with getdents64(2) as struct fuse_dirent records,
# held by its handle while the guest pages through it and dropped with the handle (RELEASE or
# RELEASEDIR) or, least recently read first, when the listings together grow past
# ``listing_bytes_max``.  The READDIR reply is a run of those records; READDIRPLUS adds a
# fuse_entry_out per entry through ``lookup_entry`` (the hot path's LOOKUP).

from libc.errno cimport ENOMEM, ENOTDIR
from libc.stdlib cimport realloc
from libc.string cimport strlen

from fastvfs.includes.dirent cimport dirent64, getdents64
from fastvfs.includes.fcntl cimport O_DIRECTORY, O_RDONLY
from fastvfs.includes.fuse_kernel cimport FUSE_DIRENT_ALIGN
from fastvfs.includes.posix cimport lseek
from fastvfs.includes.stat cimport fstatat

# Bytes of directory listings held across all open directory handles, by default.
LISTING_BYTES_MAX = 64 << 20

cdef enum:
    # A new listing's first room: records, and their starts.
    DIR_RECORDS_FIRST = 4096
    DIR_STARTS_FIRST = 128


# -- taking a listing ------------------------------------------------------------------------

cdef int _dir_append(DirListing *b, uint64_t ino, uint32_t dtype, const char *name,
                     uint32_t namelen) noexcept nogil:
    """Add one record, its cookie its position + 1; -ENOMEM or 0."""
    cdef size_t reclen = FUSE_DIRENT_ALIGN(FUSE_NAME_OFFSET + namelen)
    cdef uint64_t off = b.count + 1
    cdef void *grown
    cdef fuse_dirent *r
    if b.used + reclen > b.cap:
        grown = realloc(b.records, (b.cap + reclen) * 2)
        if grown == NULL:
            return -ENOMEM
        b.records = <uint8_t *>grown
        b.cap = (b.cap + reclen) * 2
    if b.count + 2 > b.starts_cap:
        grown = realloc(b.starts, (b.starts_cap * 2 + 2) * sizeof(uint32_t))
        if grown == NULL:
            return -ENOMEM
        b.starts = <uint32_t *>grown
        b.starts_cap = b.starts_cap * 2 + 2
    if b.used + reclen > 0xFFFFFFFFUL:
        return -ENOMEM
    # Records start at multiples of 8 in a malloc'ed buffer: aligned for the structure.
    r = <fuse_dirent *>(b.records + b.used)
    r.ino = ino
    r.off = off
    r.namelen = namelen
    r.type = dtype
    memcpy(<uint8_t *>r + FUSE_NAME_OFFSET, name, namelen)
    memset(<uint8_t *>r + FUSE_NAME_OFFSET + namelen, 0, reclen - FUSE_NAME_OFFSET - namelen)
    b.starts[b.count] = <uint32_t>b.used
    b.used += reclen
    b.count += 1
    b.starts[b.count] = <uint32_t>b.used
    return 0


cdef int _dir_fill(DirListing *b, int fd, uint64_t dot_ino, uint64_t dotdot_ino) noexcept nogil:
    """The listing of open directory ``fd``: "." and ".." first with the given inode numbers,
    then every other entry as the host lists it (a d_type the file system leaves unknown is
    looked up; an entry gone meanwhile is left out).  The directory is rewound first."""
    cdef uint64_t chunk_words[4096]      # 32 KiB, 8-byte aligned
    cdef uint8_t *chunk = <uint8_t *>chunk_words
    cdef const dirent64 *ent
    cdef ssize_t n, pos
    cdef uint8_t dtype
    cdef const char *name
    cdef size_t namelen
    cdef stat st
    cdef int rc
    rc = _dir_append(b, dot_ino, 4, ".", 1)
    if rc == 0:
        rc = _dir_append(b, dotdot_ino, 4, "..", 2)
    if rc < 0:
        return rc
    if lseek(fd, 0, 0) < 0:
        return -errno
    while True:
        n = getdents64(fd, chunk, sizeof(chunk_words))
        if n < 0:
            if errno == EINTR:
                continue
            return -errno
        if n == 0:
            return 0
        pos = 0
        while pos < n:
            # The kernel aligns each record to 8 bytes (fs/readdir.c), as is the chunk.
            ent = <const dirent64 *>(chunk + pos)
            pos += ent.d_reclen
            name = ent.d_name
            namelen = strlen(name)
            if _dot_name(name, namelen):
                continue
            dtype = ent.d_type
            if dtype == 0:      # DT_UNKNOWN: the file system does not say; ask it
                if fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0:
                    continue    # gone meanwhile
                dtype = (st.st_mode >> 12) & 15
            rc = _dir_append(b, ent.d_ino, dtype, name, <uint32_t>namelen)
            if rc < 0:
                return rc


cdef DirListing *_dir_take(int fd, uint64_t dot_ino, uint64_t dotdot_ino,
                           int *rc) noexcept nogil:
    """A new listing of ``fd`` (one reference), or NULL with ``rc`` set to -errno."""
    cdef DirListing *b = <DirListing *>calloc(1, sizeof(DirListing))
    if b == NULL:
        rc[0] = -ENOMEM
        return NULL
    # Room for a small directory at once (it grows by doubling).
    b.records = <uint8_t *>malloc(DIR_RECORDS_FIRST)
    b.starts = <uint32_t *>malloc(DIR_STARTS_FIRST * sizeof(uint32_t))
    if b.records != NULL and b.starts != NULL:
        b.cap = DIR_RECORDS_FIRST
        b.starts_cap = DIR_STARTS_FIRST
    rc[0] = _dir_fill(b, fd, dot_ino, dotdot_ino)
    if rc[0] < 0:
        _dir_free(b)
        return NULL
    # Hold what the records and their starts take, no more: what ``_dir_bytes`` counts.
    _dir_fit(<void **>&b.records, b.used)
    b.cap = b.used
    _dir_fit(<void **>&b.starts, (<size_t>b.count + 1) * sizeof(uint32_t))
    b.starts_cap = b.count + 1
    b.refs = 1
    return b


cdef inline void _dir_fit(void **buf, size_t size) noexcept nogil:
    """Shrink ``buf`` to ``size`` bytes (kept as it is if realloc(3) fails)."""
    cdef void *fitted = realloc(buf[0], size)
    if fitted != NULL:
        buf[0] = fitted


cdef void _dir_free(DirListing *b) noexcept nogil:
    free(b.records)
    free(b.starts)
    free(b)


cdef inline uint64_t _dir_bytes(const DirListing *b) noexcept nogil:
    """What a listing counts against ``listing_bytes_max``: its records and their starts (all
    it allocates once taken)."""
    return b.used + (<uint64_t>b.count + 1) * sizeof(uint32_t)


# -- listings held by handles (HandleTable state, mutex held unless said) --------------------

cdef void _listed_now(HandleTable t, DirListing *b) noexcept nogil:
    """Put held listing ``b`` last in the table's list: the most recently read."""
    if t.listings_newest == b:
        return
    _unlink_held(t, b)
    b.older = t.listings_newest
    if b.older != NULL:
        b.older.newer = b
    else:
        t.listings_oldest = b
    t.listings_newest = b


cdef void _unlink_held(HandleTable t, DirListing *b) noexcept nogil:
    """Take ``b`` out of the list of held listings (a no-op for one not in it)."""
    if b.older != NULL:
        b.older.newer = b.newer
    elif t.listings_oldest == b:
        t.listings_oldest = b.newer
    if b.newer != NULL:
        b.newer.older = b.older
    elif t.listings_newest == b:
        t.listings_newest = b.older
    b.older = b.newer = NULL


cdef void _unref_locked(HandleTable t, DirListing *b) noexcept nogil:
    """Drop one reference; the last one chains ``b`` to the listings to free
    (``_take_unfreed``)."""
    b.refs -= 1
    if b.refs == 0:
        b.older = t.listings_unfreed
        t.listings_unfreed = b


cdef DirListing *_take_unfreed(HandleTable t) noexcept nogil:
    """The listings no longer referenced, for ``_free_listings`` once the mutex is let go."""
    cdef DirListing *b = t.listings_unfreed
    t.listings_unfreed = NULL
    return b


cdef void _free_listings(DirListing *b) noexcept nogil:
    """Free the chain ``_take_unfreed`` gave (without the mutex)."""
    cdef DirListing *older
    while b != NULL:
        older = b.older
        _dir_free(b)
        b = older


cdef void _unlist(HandleTable t, HandleSlot *sl) noexcept nogil:
    """Drop the listing ``sl`` holds, if any."""
    if sl.listing != NULL:
        t.listing_bytes -= _dir_bytes(sl.listing)
        _unlink_held(t, sl.listing)
        _unref_locked(t, sl.listing)
        sl.listing = NULL


cdef void _keep_listing(HandleTable t, uint64_t fh, DirListing *b) noexcept nogil:
    """Hold ``b`` (one more reference) as live directory handle ``fh``'s listing in place of
    the one it held, the most recently read, then drop the least recently read listings of
    other handles while the total is over ``listing_bytes_max``.  A handle removed meanwhile
    keeps nothing."""
    cdef HandleSlot *sl = &t.files[_index(fh)]
    if not t._live(fh):
        return
    _unlist(t, sl)
    b.refs += 1
    b.slot = <uint32_t>_index(fh)
    sl.listing = b
    _listed_now(t, b)
    t.listing_bytes += _dir_bytes(b)
    while t.listing_bytes > t.listing_bytes_max and t.listings_oldest != b:
        _unlist(t, &t.files[t.listings_oldest.slot])


# -- OPENDIR and the listing READDIR and READDIRPLUS read ---------------------------------------

cdef int dir_open(HandleTable handles, NodeTable inodes, uint64_t nodeid,
                  uint64_t *fh) noexcept nogil:
    """OPENDIR of ``nodeid`` as PassthroughFs.opendir: the node's O_PATH descriptor reopened
    as a directory (read-only, O_CLOEXEC), a directory handle in the handle table.  0 with
    ``fh`` set, -errno (ENOENT: no such node; ENOTDIR; EMFILE: the table full), or 1 for what
    only the file system decides (no policy set, the descriptor budget used up: EMFILE there,
    a node held by file handle that no longer opens)."""
    cdef int fd, nfd = -1, rc = 0
    cdef int64_t got
    if not handles.open_policy.enabled or not within_budget(handles, inodes):
        return 1
    fd = inodes.acquire(nodeid)
    if fd == -2:
        return 1
    if fd < 0:
        return -ENOENT
    if not S_ISDIR(inodes.mode_of(nodeid)):
        rc = -ENOTDIR
    else:
        nfd = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        while nfd < 0 and errno == EINTR:
            nfd = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if nfd < 0:
            rc = -errno
    inodes.release(nodeid)
    if rc < 0:
        return rc
    got = handles._add_fd(nfd, True, False)
    if got < 0:
        c_close(nfd)
        return -EMFILE
    fh[0] = <uint64_t>got
    return 0


cdef int _dir_directory(HandleTable handles, uint64_t fh) noexcept nogil:
    """The descriptor of live directory handle ``fh`` with a reference held, or -EBADF."""
    cdef int dfd = handles.acquire(fh)
    if dfd < 0:
        return -EBADF
    if not handles.files[_index(fh)].directory:
        handles.release(fh)
        return -EBADF
    return dfd


cdef DirListing *_dir_held(HandleTable handles, uint64_t fh) noexcept nogil:
    """The listing acquired directory handle ``fh`` holds, referenced and marked read now, or
    NULL."""
    cdef DirListing *b
    pthread_mutex_lock(&handles.lock)
    b = handles.files[_index(fh)].listing
    if b != NULL:
        b.refs += 1
        _listed_now(handles, b)
    pthread_mutex_unlock(&handles.lock)
    return b


cdef DirListing *_dir_fresh(HandleTable handles, uint64_t fh, int dfd, uint64_t dot,
                            uint64_t dotdot, int *rc) noexcept nogil:
    """A fresh listing of acquired directory handle ``fh`` (descriptor ``dfd``), kept as its
    listing and referenced, or NULL with ``rc`` set."""
    cdef DirListing *b = _dir_take(dfd, dot, dotdot, rc)
    cdef DirListing *unfreed
    if b != NULL:
        pthread_mutex_lock(&handles.lock)
        _keep_listing(handles, fh, b)
        unfreed = _take_unfreed(handles)
        pthread_mutex_unlock(&handles.lock)
        _free_listings(unfreed)
    return b


cdef int dir_listing(HandleTable handles, NodeTable inodes, uint64_t nodeid, uint64_t fh,
                     uint64_t offset, DirListing **listing) noexcept nogil:
    """The listing directory handle ``fh`` pages through, for a READDIR(PLUS) of ``nodeid``
    from cookie ``offset``, referenced (``dir_unref``): at offset 0 (rewinddir), or when the
    handle holds none (never listed, or dropped for room), a fresh one, "." and ".." with the
    inode numbers of ``nodeid`` and of its parent (the root's own for the root, and where the
    parent cannot be asked); else the one held.  0, -EBADF (not a live directory handle),
    -ENOENT (no such node), another -errno, or 1 for a node held by file handle that no
    longer opens (the file system answers it)."""
    cdef DirListing *b = NULL
    cdef statx st
    cdef uint64_t dot, dotdot
    cdef int nfd, rc = 0
    cdef int dfd = _dir_directory(handles, fh)
    if dfd < 0:
        return dfd
    if offset != 0:
        b = _dir_held(handles, fh)
        if b != NULL:
            handles.release(fh)
            listing[0] = b
            return 0
    nfd = inodes.acquire(nodeid)
    if nfd < 0:
        handles.release(fh)
        return 1 if nfd == -2 else -ENOENT
    # The node's inode number is its key's (a node's inode never changes).
    dot = dotdot = inodes.ino_of(nodeid)
    if nodeid != 1 and c_statx(nfd, "..", AT_SYMLINK_NOFOLLOW, FASTVFS_STATX_MASK, &st) == 0:
        dotdot = st.stx_ino
    inodes.release(nodeid)
    b = _dir_fresh(handles, fh, dfd, dot, dotdot, &rc)
    handles.release(fh)
    listing[0] = b
    return rc


cdef void dir_unref(HandleTable handles, DirListing *listing) noexcept nogil:
    """Drop the reference ``dir_listing`` gave."""
    cdef DirListing *unfreed
    pthread_mutex_lock(&handles.lock)
    _unref_locked(handles, listing)
    unfreed = _take_unfreed(handles)
    pthread_mutex_unlock(&handles.lock)
    _free_listings(unfreed)


cdef uint32_t dir_run(const DirListing *listing, uint64_t index, uint32_t size) noexcept nogil:
    """READDIR: the bytes of the records from entry ``index`` on that fit ``size`` whole
    (they start at records + starts[index]); 0 past the end."""
    cdef uint64_t i = index
    cdef uint32_t start
    if index >= listing.count:
        return 0
    start = listing.starts[index]
    while i < listing.count and listing.starts[i + 1] - start <= size:
        i += 1
    return listing.starts[i] - start


cdef int dir_plus(const DirListing *listing, HandleTable handles, NodeTable inodes,
                  uint64_t parent, uint64_t *index, uint32_t size, uint64_t sec, uint32_t nsec,
                  uint8_t *buf, uint32_t *used) noexcept nogil:
    """READDIRPLUS of ``parent``'s listing from entry ``index`` on into ``buf`` after its
    ``used`` bytes, until ``size`` bytes are full: each entry as a fuse_direntplus with one
    lookup counted (``lookup_entry``, the hot path's LOOKUP: a known inode or a new one),
    "." and ".." with an empty entry (the kernel counts no lookup for them), an entry gone
    since the listing was taken (ENOENT) left out as the engine leaves it.  Returns 0 when
    full or at the end; 1 when it stopped at entry ``index`` because that one needs the file
    system's lookup (a submount, a failure to ask), with room
    for it left to check; -errno when it stopped at entry ``index`` because its lookup failed
    otherwise (EMFILE with the descriptor budget used up): the entries before it are the
    reply, or, with none, that error is (an entry that exists is never left out)."""
    cdef uint64_t i = index[0]
    cdef uint32_t start, end, namelen
    cdef int64_t rc
    cdef char name[LOOKUP_NAME_MAX + 1]
    cdef int status = 0
    cdef const fuse_dirent *dirent
    while i < listing.count:
        start = listing.starts[i]
        end = listing.starts[i + 1]
        if used[0] + sizeof(fuse_entry_out) + (end - start) > size:
            break
        dirent = <const fuse_dirent *>(listing.records + start)
        namelen = dirent.namelen
        if _dot_name(<const char *>listing.records + start + FUSE_NAME_OFFSET, namelen):
            memset(buf + used[0], 0, sizeof(fuse_entry_out))
        else:
            if namelen > LOOKUP_NAME_MAX:
                status = 1
                break
            memcpy(name, listing.records + start + FUSE_NAME_OFFSET, namelen)
            name[namelen] = 0
            rc = lookup_entry(handles, inodes, parent, name, namelen, dirent.ino, sec, nsec,
                              <fuse_entry_out *>(buf + used[0]))
            if rc == -ENOENT:
                i += 1                  # removed since the listing was taken
                continue
            if rc < 0:
                status = <int>rc
                break
            if rc == 0:
                status = 1
                break
        memcpy(buf + used[0] + sizeof(fuse_entry_out), listing.records + start, end - start)
        used[0] += <uint32_t>(sizeof(fuse_entry_out) + end - start)
        i += 1
    index[0] = i
    return status


# -- the file system's -------------------------------------------------------------------------

def set_listing_bytes_max(HandleTable handles, uint64_t nbytes):
    """The most bytes of listings ``handles`` keeps (the file system's ``listing_bytes_max``);
    a listing just taken is kept whatever its size."""
    handles.listing_bytes_max = nbytes


@cython.final
cdef class Listing:
    """A directory handle's listing as ``dir_listing`` gives it, for the engine's READDIR and
    READDIRPLUS (PassthroughFs.readdir): the same records and the same C code as the hot
    path's.  Entry i has cookie i + 1."""
    cdef HandleTable handles
    cdef DirListing *b

    def __dealloc__(self):
        if self.b != NULL:
            with nogil:
                dir_unref(self.handles, self.b)
            self.b = NULL

    def __len__(self):
        return self.b.count

    def run(self, uint64_t index, uint32_t size):
        """READDIR's reply: the whole records from entry ``index`` on that fit ``size``."""
        cdef uint32_t n = dir_run(self.b, index, size)
        if n == 0:
            return b""
        return PyBytes_FromStringAndSize(<char *>self.b.records + self.b.starts[index], n)

    def plus_entries(self, NodeTable inodes, uint64_t parent, uint64_t index, uint32_t size,
                     uint64_t sec, uint32_t nsec):
        """``dir_plus`` into ``size`` bytes: ``(direntplus bytes, next index, status)``, the
        status as ``dir_plus`` returns it (1: that entry needs the file system's lookup;
        -errno: its lookup failed so)."""
        cdef uint32_t used = 0
        cdef int status
        cdef uint8_t *buf = <uint8_t *>malloc(size if size else 1)
        if buf == NULL:
            raise MemoryError()
        try:
            with nogil:
                status = dir_plus(self.b, self.handles, inodes, parent, &index, size, sec,
                                  nsec, buf, &used)
            return PyBytes_FromStringAndSize(<char *>buf, used), index, status
        finally:
            free(buf)

    def record(self, uint32_t i):
        """Entry ``i``'s struct fuse_dirent, padded."""
        if i >= self.b.count:
            raise IndexError(i)
        return PyBytes_FromStringAndSize(<char *>self.b.records + self.b.starts[i],
                                         self.b.starts[i + 1] - self.b.starts[i])

    def name(self, uint32_t i):
        if i >= self.b.count:
            raise IndexError(i)
        return PyBytes_FromStringAndSize(
            <char *>self.b.records + self.b.starts[i] + FUSE_NAME_OFFSET,
            (<const fuse_dirent *>(self.b.records + self.b.starts[i])).namelen)

    @property
    def nbytes(self):
        return _dir_bytes(self.b)


def opendir(HandleTable handles, NodeTable inodes, uint64_t nodeid):
    """``dir_open`` for the file system: the new handle; raises OSError.  None where it
    decides itself (``dir_open`` returned 1)."""
    cdef uint64_t fh = 0
    cdef int rc
    with nogil:
        rc = dir_open(handles, inodes, nodeid, &fh)
    if rc == 1:
        return None
    _check(rc)
    return fh


def listing(HandleTable handles, NodeTable inodes, uint64_t nodeid, uint64_t fh,
            uint64_t offset):
    """``dir_listing`` for the file system: a :class:`Listing`; raises OSError.  None where
    it decides itself (a node held by file handle that no longer opens)."""
    cdef DirListing *b = NULL
    cdef Listing out
    cdef int rc
    with nogil:
        rc = dir_listing(handles, inodes, nodeid, fh, offset, &b)
    if rc == 1:
        return None
    _check(rc)
    out = Listing.__new__(Listing)
    out.handles = handles
    out.b = b
    return out


def listing_of(HandleTable handles, uint64_t fh, uint64_t offset, inos):
    """``dir_listing`` where the file system finds the inode numbers of "." and ".." itself
    (a node held by file handle that no longer opens): ``inos()`` gives them, called only
    when a fresh listing is taken.  A :class:`Listing`; raises OSError."""
    cdef DirListing *b = NULL
    cdef Listing out
    cdef uint64_t dot, dotdot
    cdef int rc = 0
    cdef int dfd = _dir_directory(handles, fh)
    _check(dfd)
    try:
        if offset != 0:
            b = _dir_held(handles, fh)
        if b == NULL:
            dot, dotdot = inos()
            with nogil:
                b = _dir_fresh(handles, fh, dfd, dot, dotdot, &rc)
            _check(rc)
    finally:
        handles.release(fh)
    out = Listing.__new__(Listing)
    out.handles = handles
    out.b = b
    return out


def is_directory_handle(HandleTable handles, uint64_t fh):
    """Whether ``fh`` is a live directory handle."""
    return handles.is_directory(fh)


def listing_handles(HandleTable handles):
    """The directory handles holding a listing, least recently read first."""
    cdef DirListing *b
    cdef int64_t *held = NULL
    cdef size_t n = 0, i = 0
    # Copied out under the mutex without the GIL (never wait for the GIL holding it).
    with nogil:
        pthread_mutex_lock(&handles.lock)
        b = handles.listings_oldest
        while b != NULL:
            n += 1
            b = b.newer
        held = <int64_t *>malloc(n * sizeof(int64_t) + 1)
        b = handles.listings_oldest
        while held != NULL and b != NULL:
            held[i] = handles._id_of(b.slot)
            i += 1
            b = b.newer
        pthread_mutex_unlock(&handles.lock)
    if held == NULL:
        raise MemoryError()
    try:
        return [held[i] for i in range(n)]
    finally:
        free(held)
