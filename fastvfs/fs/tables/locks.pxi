# Lock descriptions (the lock fields of HandleTable in _tables.pxd): the open file descriptions
# on the host that hold the guest's POSIX and flock locks, and GETLK and SETLK (not waiting)
# over them, for the hot path's GETLK and SETLK and for PassthroughFs, which opens the
# descriptions, waits (SETLKW) and takes flock locks through the same table.
#
# POSIX record locks are per (process, file) in the guest; the guest names the process by an
# opaque lock owner.  Each owner gets its own open file description on the host, and its locks
# are taken there as OFD locks (F_OFD_*), which conflict between descriptions exactly as POSIX
# locks conflict between processes; flock() locks belong to an open file of the guest and get
# a description of their own, keyed the same way.  An owner without a description asks
# F_GETLK through the inode's question description, which never holds a lock and so sees
# every other one.
#
# When a lock goes away (linux fs/fuse/file.c, fuse_flush, fuse_release_common, fuse_setlk):
# a POSIX lock at FLUSH with its owner in fuse_flush_in.lock_owner; a flock lock at RELEASE
# with FUSE_RELEASE_FLOCK_UNLOCK and the file as lock_owner; an OFD lock (the guest's F_OFD_*,
# whose owner is the guest's open file) at no message of its own: fuse_setlk ignores the
# close-time unlock and FLUSH names the process, not the file.  So every description also
# records the guest handles (fuse_lk_in.fh) its locks were taken through, and goes when the
# last of them is released: by then every process that used such a handle has closed it, and
# so flushed its POSIX locks too.  The question description goes at a FLUSH of the inode too.
#
# Lock order: a description's ``mutex``, then ``locks_mutex``, then the table's mutex.  No
# thread holding any of them waits for the GIL; a description's mutex is held over its
# fcntl(2) calls (F_OFD_SETLK and F_OFD_GETLK do not wait) and a write upgrade's open.

from libc.errno cimport EACCES, EBADF, ENOLCK, ENOMEM, EPERM
from libc.stdlib cimport realloc

from fastvfs.includes.fcntl cimport (F_OFD_GETLK, F_OFD_SETLK, F_OFD_SETLKW, F_RDLCK,
                                     F_UNLCK, F_WRLCK, O_ACCMODE, O_CLOEXEC, O_DIRECTORY,
                                     O_RDONLY, O_RDWR, O_WRONLY, flock, openat)
from fastvfs.includes.file cimport LOCK_EX, LOCK_NB, LOCK_SH, LOCK_UN, c_flock
from fastvfs.includes.posix cimport SEEK_SET

cdef uint64_t LOCK_OFFSET_MAX = 0x7FFFFFFFFFFFFFFF
# The kinds of description (LOCK_POSIX, LOCK_FLOCK, LOCK_QUESTION), for the file system.
LOCK_KIND_POSIX = <int>LOCK_POSIX
LOCK_KIND_FLOCK = <int>LOCK_FLOCK
LOCK_KIND_QUESTION = <int>LOCK_QUESTION


cdef inline uint32_t _lock_bucket(uint64_t nodeid) noexcept nogil:
    return <uint32_t>((nodeid * <uint64_t>0x9E3779B97F4A7C15) >> 56) % LOCK_BUCKETS


cdef inline bint _lock_valid(uint64_t start, uint64_t end, uint32_t lock_type) noexcept nogil:
    """A lock the guest may ask for: F_RDLCK, F_WRLCK or F_UNLCK of a range within off_t."""
    return ((lock_type == F_RDLCK or lock_type == F_WRLCK or lock_type == F_UNLCK) and
            start <= LOCK_OFFSET_MAX and end <= LOCK_OFFSET_MAX and start <= end)


cdef inline void _lock_flock(flock *fl, uint64_t start, uint64_t end,
                             uint32_t lock_type) noexcept nogil:
    memset(fl, 0, sizeof(flock))
    fl.l_type = <short>lock_type
    fl.l_whence = SEEK_SET
    fl.l_start = <int64_t>start
    fl.l_len = 0 if end == LOCK_OFFSET_MAX else <int64_t>(end - start + 1)


cdef int _lock_ofd(int fd, int cmd, uint64_t start, uint64_t end,
                   uint32_t lock_type) noexcept nogil:
    cdef flock fl
    _lock_flock(&fl, start, end, lock_type)
    return -errno if fcntl(fd, cmd, &fl) < 0 else 0


cdef LockDesc *_lock_find(HandleTable h, uint64_t nodeid, uint64_t owner,
                          int kind) noexcept nogil:
    """The description of (``nodeid``, ``owner``, ``kind``) or NULL (locks_mutex held)."""
    cdef LockDesc *d = h.lock_buckets[_lock_bucket(nodeid)]
    while d != NULL:
        if d.nodeid == nodeid and d.owner == owner and d.kind == kind:
            return d
        d = d.next
    return NULL


cdef void _lock_counted(HandleTable h) noexcept nogil:
    """Publish the count of descriptions for ``locks_flushed`` and its siblings and for the
    descriptor budget (locks_mutex held)."""
    pthread_mutex_lock(&h.lock)
    h.lock_fds_open = h.lock_count
    pthread_mutex_unlock(&h.lock)


cdef LockDesc *_lock_pop(HandleTable h, LockDesc *d, LockDesc *freed) noexcept nogil:
    """Take ``d`` out of the table (locks_mutex held); returns ``freed`` with ``d`` put in
    front when no request uses it, for ``_lock_free`` once the mutex is let go (closing the
    description releases every lock it holds)."""
    cdef LockDesc **at = &h.lock_buckets[_lock_bucket(d.nodeid)]
    while at[0] != d:
        at = &at[0].next
    at[0] = d.next
    d.dropped = True
    d.nfhs = 0
    h.lock_count -= 1
    _lock_counted(h)
    if d.refs:
        return freed
    d.next = freed
    return d


cdef void _lock_free(LockDesc *d) noexcept nogil:
    cdef LockDesc *following
    while d != NULL:
        following = d.next
        c_close(d.fd)
        pthread_mutex_destroy(&d.mutex)
        free(d.ranges)
        free(d.fhs)
        free(d)
        d = following


cdef void _lock_put(HandleTable h, LockDesc *d) noexcept nogil:
    """Give back a description a request used; the last user of a dropped one closes it."""
    cdef bint gone
    pthread_mutex_lock(&h.locks_mutex)
    d.refs -= 1
    gone = d.refs == 0 and d.dropped
    pthread_mutex_unlock(&h.locks_mutex)
    if gone:
        d.next = NULL
        _lock_free(d)


cdef LockDesc *_lock_get(HandleTable h, uint64_t nodeid, uint64_t owner, int kind,
                         uint64_t fh, int fresh, bint writable, int *rc) noexcept nogil:
    """The description of (``nodeid``, ``owner``, ``kind``), referenced (give it back with
    ``_lock_put``), with ``fh`` recorded in it; made of ``fresh`` (a new description, or -1)
    when there is none, and ``fresh`` closed if not used.  NULL with ``rc`` 0 when there is
    none and no ``fresh``; NULL with ``rc`` -EBADF when ``fh`` is not a live handle (checked
    under the table's mutex: a RELEASE of ``fh`` in the hot path either comes first or sees
    this description and goes to the engine), -ENOMEM."""
    cdef LockDesc *d
    cdef LockDesc *freed = NULL
    cdef uint64_t *fhs
    cdef uint32_t i
    cdef bint added = True, live
    rc[0] = 0
    pthread_mutex_lock(&h.locks_mutex)
    d = _lock_find(h, nodeid, owner, kind)
    if d == NULL and fresh >= 0:
        d = <LockDesc *>calloc(1, sizeof(LockDesc))
        if d == NULL:
            pthread_mutex_unlock(&h.locks_mutex)
            c_close(fresh)
            rc[0] = -ENOMEM
            return NULL
        pthread_mutex_init(&d.mutex, NULL)
        d.nodeid, d.owner, d.kind, d.fd, d.writable = nodeid, owner, kind, fresh, writable
        d.next = h.lock_buckets[_lock_bucket(nodeid)]
        h.lock_buckets[_lock_bucket(nodeid)] = d
        h.lock_count += 1
        fresh = -1
    if d == NULL:
        pthread_mutex_unlock(&h.locks_mutex)
        return NULL
    d.refs += 1
    for i in range(d.nfhs):
        if d.fhs[i] == fh:
            added = False
            break
    if added and d.nfhs == d.fhs_cap:
        fhs = <uint64_t *>realloc(d.fhs, (d.fhs_cap * 2 + 2) * sizeof(uint64_t))
        if fhs == NULL:
            rc[0] = -ENOMEM
        else:
            d.fhs = fhs
            d.fhs_cap = d.fhs_cap * 2 + 2
    if rc[0] == 0:
        if added:
            d.fhs[d.nfhs] = fh
            d.nfhs += 1
        pthread_mutex_lock(&h.lock)
        live = h._live(fh)
        if live:
            h.lock_fds_open = h.lock_count
        pthread_mutex_unlock(&h.lock)
        if not live:
            rc[0] = -EBADF
            if added:
                d.nfhs -= 1
    if rc[0] < 0:
        d.refs -= 1
        if d.nfhs == 0:
            freed = _lock_pop(h, d, NULL)
        d = NULL
    pthread_mutex_unlock(&h.locks_mutex)
    _lock_free(freed)
    if fresh >= 0:
        c_close(fresh)
    return d


cdef int _lock_note(LockDesc *d, uint64_t start, uint64_t end, uint32_t lock_type) noexcept nogil:
    """Record a lock granted or removed in ``d.ranges`` (POSIX rules: the range replaces what
    the owner held there; adjacent ranges of one type merge), ``mutex`` and locks_mutex held:
    0, or -ENOMEM."""
    cdef LockRange *kept = <LockRange *>malloc((d.nranges + 2) * sizeof(LockRange))
    cdef uint32_t i, n = 0, m = 0
    cdef LockRange r
    cdef bint placed = lock_type == F_UNLCK
    if kept == NULL:
        return -ENOMEM
    for i in range(d.nranges):
        r = d.ranges[i]
        if not placed and r.start > start:
            kept[n].start, kept[n].end, kept[n].type = start, end, <int>lock_type
            n += 1
            placed = True
        if r.end < start or r.start > end:
            kept[n] = r
            n += 1
            continue
        if r.start < start:
            kept[n].start, kept[n].end, kept[n].type = r.start, start - 1, r.type
            n += 1
            if not placed:
                kept[n].start, kept[n].end, kept[n].type = start, end, <int>lock_type
                n += 1
                placed = True
        if r.end > end:
            if not placed:
                kept[n].start, kept[n].end, kept[n].type = start, end, <int>lock_type
                n += 1
                placed = True
            kept[n].start, kept[n].end, kept[n].type = end + 1, r.end, r.type
            n += 1
    if not placed:
        kept[n].start, kept[n].end, kept[n].type = start, end, <int>lock_type
        n += 1
    for i in range(n):
        if m and kept[m - 1].type == kept[i].type and kept[i].start <= kept[m - 1].end + 1:
            if kept[i].end > kept[m - 1].end:
                kept[m - 1].end = kept[i].end
        else:
            kept[m] = kept[i]
            m += 1
    free(d.ranges)
    d.ranges = kept
    d.nranges = m
    return 0


cdef int lock_open(HandleTable h, int nfd, uint32_t mode, int kind, uint32_t lock_type,
                   bint *writable) noexcept nogil:
    """A new description for a lock of ``kind`` on the node of descriptor ``nfd`` (its file
    type ``mode``), with the least access the lock needs: fcntl(2) wants read access for
    F_RDLCK and write access for F_WRLCK, flock(2) none (and takes a directory too).  Write
    access, which makes host watchers see a writer and a host execve of the file ETXTBSY, is
    taken only for a POSIX write lock; each access that is refused (EACCES, EPERM) is
    followed by the next that would do.  The descriptor, with ``writable`` set, or -errno
    (EINVAL for what is neither a regular file nor, for flock, a directory).  The caller
    checked the descriptor budget; the open policy is set."""
    cdef int choices[3]
    cdef int n, i, fd = -EACCES
    cdef bint directory = kind == LOCK_FLOCK and S_ISDIR(mode)
    if directory:
        choices[0], n = O_RDONLY | O_DIRECTORY, 1
    elif not S_ISREG(mode):
        return -EINVAL
    elif kind == LOCK_POSIX and lock_type == F_WRLCK:
        choices[0], choices[1], n = O_RDWR, O_WRONLY, 2
    else:
        choices[0], choices[1], choices[2], n = O_RDONLY, O_RDWR, O_WRONLY, 3
    for i in range(n):
        fd = reopen_fd(&h.open_policy, nfd, choices[i])
        if fd >= 0:
            writable[0] = (choices[i] & O_ACCMODE) != O_RDONLY
            return fd
        if fd != -EACCES and fd != -EPERM:
            return fd
    return -EACCES


cdef int lock_open_node(HandleTable h, NodeTable inodes, uint64_t nodeid, int kind,
                        uint32_t lock_type, int *fd, bint *writable) noexcept nogil:
    """``lock_open`` for the hot path, which has only the node id, in the file system's order
    (PassthroughFs._open_lock_file): 0 with the descriptor in ``fd``; -EMFILE with the guest's
    descriptor budget used up (PassthroughFs._budget), -ENOENT for a node id the table does
    not hold, another -errno; or 1 for what only the file system can open (no open policy, a
    node held by file handle that no longer opens)."""
    cdef int nfd, got
    if not h.open_policy.enabled:
        return 1
    if not within_budget(h, inodes):
        return -EMFILE
    nfd = inodes.acquire(nodeid)
    if nfd == -2:
        return 1
    if nfd < 0:
        return -ENOENT
    got = lock_open(h, nfd, inodes.mode_of(nodeid), kind, lock_type, writable)
    inodes.release(nodeid)
    if got < 0:
        return got
    fd[0] = got
    return 0


cdef int _lock_writable(HandleTable h, LockDesc *d, uint32_t lock_type) noexcept nogil:
    """Give a read-only description write access for a write lock (``d.mutex`` held): a new
    read-write description (the old one reopened through its /proc/self/fd name, as the open
    policy names it: ``reopen_fd``) takes over the owner's read locks, then the old one
    closes.  Read locks conflict only with write locks, which nobody else can hold where the
    old description holds read locks, so the ranges are never unlocked in between.  One
    description per owner is kept (not one per access mode): two descriptions would be two
    owners to the host and conflict with each other.  ENOLCK while another request uses the
    description."""
    cdef int fd, old, rc = 0
    cdef bint busy
    cdef uint32_t i
    if lock_type != F_WRLCK or d.writable:
        return 0
    pthread_mutex_lock(&h.locks_mutex)
    busy = d.refs > 1
    pthread_mutex_unlock(&h.locks_mutex)
    if busy:
        return -ENOLCK
    fd = reopen_fd(&h.open_policy, d.fd, O_RDWR)
    if fd < 0:
        return fd
    for i in range(d.nranges):
        if d.ranges[i].type == F_RDLCK:
            rc = _lock_ofd(fd, F_OFD_SETLK, d.ranges[i].start, d.ranges[i].end, F_RDLCK)
            if rc < 0:
                c_close(fd)
                return rc
    old = d.fd
    d.fd = fd
    d.writable = True
    c_close(old)
    return 0


cdef int _lock_granted(HandleTable h, LockDesc *d, uint64_t start, uint64_t end,
                       uint32_t lock_type, uint32_t pid) noexcept nogil:
    """Note a lock the host granted (``d.mutex`` held); ``pid`` becomes the holder F_GETLK
    names."""
    cdef int rc
    pthread_mutex_lock(&h.locks_mutex)
    rc = _lock_note(d, start, end, lock_type)
    if rc == 0 and lock_type != F_UNLCK:
        d.pid = pid
    pthread_mutex_unlock(&h.locks_mutex)
    return rc


cdef int posix_setlk(HandleTable h, uint64_t nodeid, uint64_t owner, uint64_t fh,
                     uint64_t start, uint64_t end, uint32_t lock_type, uint32_t pid,
                     int fresh, bint writable) noexcept nogil:
    """SETLK (not waiting) of a POSIX lock through the guest's handle ``fh``: 0, -errno
    (EAGAIN for a conflict, EBADF for ``fh`` not open, EINVAL), or 1 when the owner has no
    description and ``fresh`` is -1 (the file system opens one, with the least access the
    lock needs, and asks again with it).  An unlock by an owner without one is done."""
    cdef LockDesc *d
    cdef int rc
    if not _lock_valid(start, end, lock_type):
        if fresh >= 0:
            c_close(fresh)
        return -EINVAL
    d = _lock_get(h, nodeid, owner, LOCK_POSIX, fh, fresh, writable, &rc)
    if d == NULL:
        return rc if rc < 0 or lock_type == F_UNLCK else 1
    pthread_mutex_lock(&d.mutex)
    rc = _lock_writable(h, d, lock_type)
    if rc == 0:
        rc = _lock_ofd(d.fd, F_OFD_SETLK, start, end, lock_type)
    if rc == 0:
        rc = _lock_granted(h, d, start, end, lock_type, pid)
    pthread_mutex_unlock(&d.mutex)
    _lock_put(h, d)
    return rc


cdef int flock_setlk(HandleTable h, uint64_t nodeid, uint64_t owner, uint64_t fh,
                     uint32_t lock_type, bint wait, int fresh, bint writable) noexcept nogil:
    """SETLK (or, ``wait``, SETLKW) of a flock(2) lock of the guest's open file ``owner``
    through its description: 0, -errno (EAGAIN for a conflict, EBADF for ``fh`` not open,
    EINVAL for another lock type), or 1 when the open file has no description and ``fresh``
    is -1 (the caller opens one, ``lock_open``, and asks again with it).  An unlock by an open
    file without one is done.  A wait holds a reference to the description, not its mutex: a
    FLUSH or RELEASE meanwhile drops it from the table and it closes when the wait ends."""
    cdef LockDesc *d
    cdef int op, rc
    if lock_type == F_RDLCK:
        op = LOCK_SH
    elif lock_type == F_WRLCK:
        op = LOCK_EX
    elif lock_type == F_UNLCK:
        op = LOCK_UN
    else:
        if fresh >= 0:
            c_close(fresh)
        return -EINVAL
    d = _lock_get(h, nodeid, owner, LOCK_FLOCK, fh, fresh, writable, &rc)
    if d == NULL:
        return rc if rc < 0 or lock_type == F_UNLCK else 1
    if not wait:
        op |= LOCK_NB
    rc = c_flock(d.fd, op)
    while rc < 0 and errno == EINTR:
        rc = c_flock(d.fd, op)
    rc = -errno if rc < 0 else 0
    _lock_put(h, d)
    return rc


cdef uint32_t _lock_holder(HandleTable h, uint64_t nodeid, uint64_t owner, uint64_t start,
                           uint64_t end, int lock_type) noexcept nogil:
    """The guest process holding the conflicting lock the host reported: the other owner on
    the inode holding exactly that range (the host reports a description's lock as merged,
    and so does ``_lock_note``).  0 (unknown to the guest) if none does: a host process's
    lock, whose pid means nothing in the guest's pid namespace."""
    cdef LockDesc *d
    cdef uint32_t i, pid = 0
    pthread_mutex_lock(&h.locks_mutex)
    d = h.lock_buckets[_lock_bucket(nodeid)]
    while d != NULL and pid == 0:
        if d.nodeid == nodeid and d.kind == LOCK_POSIX and d.owner != owner:
            for i in range(d.nranges):
                if (d.ranges[i].start == start and d.ranges[i].end == end and
                        d.ranges[i].type == lock_type):
                    pid = d.pid
                    break
        d = d.next
    pthread_mutex_unlock(&h.locks_mutex)
    return pid


cdef int posix_getlk(HandleTable h, uint64_t nodeid, uint64_t owner, uint64_t fh,
                     uint64_t start, uint64_t end, uint32_t lock_type, int fresh,
                     bint writable, fuse_file_lock *out) noexcept nogil:
    """GETLK: the first lock that would conflict in ``out`` (type F_UNLCK if none) and 0,
    -errno, or 1 when neither the owner nor the inode has a description and ``fresh`` is -1
    (the file system opens one and asks again with it).  The owner's own description is asked
    (its locks never conflict with themselves); an owner without one asks through the
    inode's question description, made of ``fresh`` and kept while ``fh`` is open, or used
    for this question only when ``fh`` is not a live handle."""
    cdef LockDesc *d
    cdef flock fl
    cdef int rc = 0, kept
    if not _lock_valid(start, end, lock_type):
        if fresh >= 0:
            c_close(fresh)
        return -EINVAL
    _lock_flock(&fl, start, end, lock_type)
    pthread_mutex_lock(&h.locks_mutex)
    d = _lock_find(h, nodeid, owner, LOCK_POSIX)
    if d == NULL:
        d = _lock_find(h, nodeid, 0, LOCK_QUESTION)
    if d != NULL:
        d.refs += 1
    pthread_mutex_unlock(&h.locks_mutex)
    if d != NULL:
        if fresh >= 0:
            c_close(fresh)
        pthread_mutex_lock(&d.mutex)   # d.fd is read under the mutex an upgrade swaps it under
        rc = -errno if fcntl(d.fd, F_OFD_GETLK, &fl) < 0 else 0
        pthread_mutex_unlock(&d.mutex)
        _lock_put(h, d)
    elif fresh < 0:
        return 1
    else:
        # A description that holds no lock answers the same before it is kept.
        rc = -errno if fcntl(fresh, F_OFD_GETLK, &fl) < 0 else 0
        d = _lock_get(h, nodeid, 0, LOCK_QUESTION, fh, fresh, writable, &kept)
        if d != NULL:
            _lock_put(h, d)
    if rc < 0:
        return rc
    if fl.l_type == F_UNLCK:
        out.start = out.end = 0
        out.type = F_UNLCK
        out.pid = 0
        return 0
    out.start = <uint64_t>fl.l_start
    out.end = LOCK_OFFSET_MAX if fl.l_len == 0 else <uint64_t>(fl.l_start + fl.l_len - 1)
    out.type = <uint32_t>fl.l_type
    out.pid = _lock_holder(h, nodeid, owner, out.start, out.end, fl.l_type)
    return 0


cdef void _lock_drop(HandleTable h, uint64_t nodeid, uint64_t owner, int kind,
                     bint whole_node, bint everything, uint64_t fh) noexcept nogil:
    """Drop descriptions: the one of (``nodeid``, ``owner``, ``kind``); every one of
    ``nodeid`` (``whole_node``); all (``everything``); or, with ``fh``, forget that locks went
    through ``fh`` and drop those no handle is left to."""
    cdef LockDesc *freed = NULL
    cdef LockDesc *d
    cdef LockDesc *following
    cdef uint32_t b, i, first = 0, last = LOCK_BUCKETS
    cdef bint match
    pthread_mutex_lock(&h.locks_mutex)
    if not everything and not fh:
        first = _lock_bucket(nodeid)
        last = first + 1
    for b in range(first, last):
        d = h.lock_buckets[b]
        while d != NULL:
            following = d.next
            if fh:
                match = False
                for i in range(d.nfhs):
                    if d.fhs[i] == fh:
                        d.fhs[i] = d.fhs[d.nfhs - 1]
                        d.nfhs -= 1
                        match = d.nfhs == 0
                        break
            else:
                match = everything or d.nodeid == nodeid and (
                    whole_node or d.owner == owner and d.kind == kind)
            if match:
                freed = _lock_pop(h, d, freed)
            d = following
    pthread_mutex_unlock(&h.locks_mutex)
    _lock_free(freed)


# When the guest's messages end locks (the header comment's list), one body each for the hot
# path (ring/fastops.pxi) and the file system (PassthroughFs): nothing to do, and no mutex
# taken, while no description exists.  ``lock_fds_open`` is read without the mutex: a lock
# tied to a handle meanwhile on another queue publishes it under the table's mutex before its
# handle is checked live, and ``locks_released`` is called after the handle was removed under
# that mutex, so either the tie sees the handle gone or this sees the count.

cdef void locks_flushed(HandleTable h, uint64_t nodeid, uint64_t owner) noexcept nogil:
    """FLUSH of ``nodeid`` by lock owner ``owner`` (a close in the guest): the owner's POSIX
    locks on it go, and the inode's question description."""
    if h.lock_fds_open:
        _lock_drop(h, nodeid, owner, LOCK_POSIX, False, False, 0)
        _lock_drop(h, nodeid, 0, LOCK_QUESTION, False, False, 0)


cdef void locks_flock_unlocked(HandleTable h, uint64_t nodeid, uint64_t owner) noexcept nogil:
    """RELEASE with FUSE_RELEASE_FLOCK_UNLOCK: the flock lock of open file ``owner`` goes."""
    if h.lock_fds_open:
        _lock_drop(h, nodeid, owner, LOCK_FLOCK, False, False, 0)


cdef void locks_released(HandleTable h, uint64_t fh) noexcept nogil:
    """Handle ``fh`` was removed: descriptions whose every handle is gone go too."""
    if fh and h.lock_fds_open:
        _lock_drop(h, 0, 0, 0, False, False, fh)


cdef void locks_forgotten(HandleTable h, uint64_t nodeid) noexcept nogil:
    """Node id ``nodeid`` was dropped (FORGET): every description of it goes."""
    if h.lock_fds_open:
        _lock_drop(h, nodeid, 0, 0, True, False, 0)


@cython.final
cdef class LockRef:
    """A description a request of the file system uses (``HandleTable.lock_ref``): its
    ``fd``, given back by ``put`` (or when the object goes)."""
    cdef HandleTable h
    cdef LockDesc *d

    def __dealloc__(self):
        if self.d != NULL:
            _lock_put(self.h, self.d)

    cdef LockDesc *_held(self) except NULL:
        if self.d == NULL:
            raise ValueError("the description was given back")
        return self.d

    @property
    def fd(self):
        return self._held().fd

    def wait(self, uint64_t start, uint64_t end, uint32_t lock_type, uint32_t pid):
        """SETLKW of a POSIX lock through this description (``lock_check`` first): the
        description given write access for a write lock, then F_OFD_SETLKW, waiting without
        the GIL and without the description's mutex, so the owner's other threads go on
        locking and unlocking meanwhile (this reference keeps any write upgrade, and so any
        change of ``fd``, away until it is done); the lock then noted with ``pid`` as its
        holder.  Raises OSError."""
        cdef LockDesc *d = self._held()
        cdef flock fl
        cdef int rc, noted = 0
        cdef int fd
        with nogil:
            pthread_mutex_lock(&d.mutex)
            rc = _lock_writable(self.h, d, lock_type)
            fd = d.fd
            pthread_mutex_unlock(&d.mutex)
            if rc == 0:
                _lock_flock(&fl, start, end, lock_type)
                while fcntl(fd, F_OFD_SETLKW, &fl) < 0:
                    if errno != EINTR:
                        rc = -errno
                        break
            if rc == 0:
                pthread_mutex_lock(&d.mutex)
                noted = _lock_granted(self.h, d, start, end, lock_type, pid)
                pthread_mutex_unlock(&d.mutex)
        if rc < 0:
            raise _lock_error(rc)
        if noted < 0:
            raise MemoryError()

    def put(self):
        cdef LockDesc *d = self.d
        self.d = NULL
        if d != NULL:
            with nogil:
                _lock_put(self.h, d)


cdef object _lock_error(int rc):
    import os
    return OSError(-rc, os.strerror(-rc))


def lock_open_fd(HandleTable h, int nfd, uint32_t mode, int kind, uint32_t lock_type):
    """``lock_open`` for the file system: ``(fd, writable)``, or OSError."""
    cdef bint writable = False
    cdef int fd
    with nogil:
        fd = lock_open(h, nfd, mode, kind, lock_type, &writable)
    if fd < 0:
        raise _lock_error(fd)
    return fd, writable


def lock_check(uint64_t start, uint64_t end, uint32_t lock_type):
    """OSError(EINVAL) for a lock the guest may not ask for (``_lock_valid``), as GETLK and
    SETLK answer it."""
    if not _lock_valid(start, end, lock_type):
        raise OSError(EINVAL, "invalid lock range or type")


def lock_getlk(HandleTable h, uint64_t nodeid, uint64_t owner, uint64_t fh, uint64_t start,
               uint64_t end, uint32_t lock_type, int fresh=-1, bint writable=False):
    """GETLK as the hot path answers it (``posix_getlk``): (start, end, type, pid), or None
    for the file system to open a description (``fresh``, owned by the table from then on)
    and ask again."""
    cdef fuse_file_lock out
    cdef int rc
    with nogil:
        rc = posix_getlk(h, nodeid, owner, fh, start, end, lock_type, fresh, writable, &out)
    if rc == 1:
        return None
    if rc < 0:
        raise _lock_error(rc)
    return out.start, out.end, out.type, out.pid


def lock_setlk(HandleTable h, uint64_t nodeid, uint64_t owner, uint64_t fh, uint64_t start,
               uint64_t end, uint32_t lock_type, uint32_t pid, int fresh=-1,
               bint writable=False):
    """SETLK of a POSIX lock as the hot path does it (``posix_setlk``): True, or False for the
    file system to open a description (``fresh``, owned by the table from then on) and ask
    again; OSError for what the hot path answers with an error."""
    cdef int rc
    with nogil:
        rc = posix_setlk(h, nodeid, owner, fh, start, end, lock_type, pid, fresh, writable)
    if rc < 0:
        raise _lock_error(rc)
    return rc == 0


def lock_flock(HandleTable h, uint64_t nodeid, uint64_t owner, uint64_t fh, uint32_t lock_type,
               bint wait, int fresh=-1, bint writable=False):
    """SETLK or SETLKW of a flock lock as the hot path does it (``flock_setlk``, waiting
    without the GIL): True, or False for the file system to open a description (``fresh``,
    owned by the table from then on) and ask again; OSError for an error."""
    cdef int rc
    with nogil:
        rc = flock_setlk(h, nodeid, owner, fh, lock_type, wait, fresh, writable)
    if rc < 0:
        raise _lock_error(rc)
    return rc == 0


def lock_ref(HandleTable h, uint64_t nodeid, uint64_t owner, int kind, uint64_t fh,
             int fresh=-1, bint writable=False):
    """The description of (``nodeid``, ``owner``, ``kind``) with ``fh`` recorded in it, made
    of ``fresh`` when there is none (``_lock_get``): a ``LockRef``, or None when there is none
    and no ``fresh``.  EBADF if ``fh`` is not a live handle."""
    cdef LockRef ref
    cdef LockDesc *d
    cdef int rc
    with nogil:
        d = _lock_get(h, nodeid, owner, kind, fh, fresh, writable, &rc)
    if rc < 0:
        raise _lock_error(rc)
    if d == NULL:
        return None
    ref = LockRef.__new__(LockRef)
    ref.h = h
    ref.d = d
    return ref


def lock_flushed(HandleTable h, uint64_t nodeid, uint64_t owner):
    """``locks_flushed``, for the file system's FLUSH."""
    with nogil:
        locks_flushed(h, nodeid, owner)


def lock_flock_unlocked(HandleTable h, uint64_t nodeid, uint64_t owner):
    """``locks_flock_unlocked``, for the file system's RELEASE."""
    with nogil:
        locks_flock_unlocked(h, nodeid, owner)


def lock_forgotten(HandleTable h, uint64_t nodeid):
    """``locks_forgotten``, for the file system's FORGET."""
    with nogil:
        locks_forgotten(h, nodeid)


def lock_drop_all(HandleTable h):
    with nogil:
        _lock_drop(h, 0, 0, 0, False, True, 0)


def lock_keys(HandleTable h):
    """The (node id, owner, kind) of every description."""
    cdef LockDesc *d
    cdef uint64_t *keys
    cdef uint32_t b, n = 0, i
    with nogil:
        pthread_mutex_lock(&h.locks_mutex)
        keys = <uint64_t *>malloc((h.lock_count * 3 + 1) * sizeof(uint64_t))
        if keys != NULL:
            for b in range(LOCK_BUCKETS):
                d = h.lock_buckets[b]
                while d != NULL:
                    keys[n], keys[n + 1], keys[n + 2] = d.nodeid, d.owner, <uint64_t>d.kind
                    n += 3
                    d = d.next
        pthread_mutex_unlock(&h.locks_mutex)
    if keys == NULL:
        raise MemoryError()
    try:
        return [(keys[3 * i], keys[3 * i + 1], <int>keys[3 * i + 2]) for i in range(n // 3)]
    finally:
        free(keys)
