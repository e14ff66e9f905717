# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The hot path: guest memory translation, split virtqueues, FUSE request framing and the
READ/WRITE fast path.

One ``Virtqueue`` is served by one thread.  The thread sleeps on the queue's kick eventfd (epoll,
edge-triggered) with the GIL released, walks descriptor chains and performs READ and WRITE
(preadv/pwritev or io_uring, straight into and out of guest memory) without touching a Python
object; every other opcode is handed to the Python FUSE engine with the GIL held, and its reply is
scattered back into the chain's writable buffers.  Every address the guest gives is translated
through ``MemoryTable`` with bounds checks.

Spec references: virtio 1.2 section 2.7 (split virtqueues), include/uapi/linux/virtio_ring.h,
include/uapi/linux/fuse.h.
"""

import logging
import sys

_log = logging.getLogger("fastvfs.ring")

# Imported now, before the daemon confines itself: the sandbox's root holds no Python modules.
from fastvfs.uring.engine import UringEngine, UringUnavailable

cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t, INT64_MAX, uintptr_t
from libc.string cimport memchr, memcpy, memset
from libc.stdlib cimport malloc, calloc, free
from fastvfs.includes.posix cimport (CLOCK_MONOTONIC, c_close, c_read, c_write,
                                     clock_gettime, dup, timespec)
from fastvfs.includes.statx cimport (AT_EMPTY_PATH, AT_NO_AUTOMOUNT, AT_SYMLINK_NOFOLLOW,
                                     STATX_BASIC_STATS, c_statx, makedev, statx)
from libc.errno cimport errno, EINTR, EAGAIN, EBADF, EFAULT, EINVAL, EIO, ENOMEM, ENOENT, ERANGE

if sys.byteorder != "little":
    raise ImportError("fastvfs assumes a little-endian host (virtio 1.x rings are little-endian)")

from fastvfs.includes.atomics cimport (fastvfs_acquire, fastvfs_add64, fastvfs_cpu_relax,
                                       fastvfs_full_barrier, fastvfs_inc64, fastvfs_load16,
                                       fastvfs_load64, fastvfs_log2, fastvfs_release,
                                       fastvfs_store16)
from fastvfs.includes.epoll cimport (EPOLL_CLOEXEC, EPOLL_CTL_ADD, EPOLLET, EPOLLIN, epoll_create1,
                                     epoll_ctl, epoll_event, epoll_wait)
from fastvfs.includes.fcntl cimport F_GETFL, O_DIRECT, fallocate, fcntl
from fastvfs.includes.handle_state cimport (FASTVFS_BUSY, FASTVFS_LIVE, FASTVFS_REFS,
                                            fastvfs_flag_set, fastvfs_flag_take,
                                            fastvfs_key_hash, fastvfs_state_cas,
                                            fastvfs_state_dec, fastvfs_state_load,
                                            fastvfs_state_store)
from fastvfs.includes.liburing cimport (IORING_FSYNC_DATASYNC, IOSQE_IO_DRAIN, io_uring,
                                        io_uring_cq_advance, io_uring_cq_ready, io_uring_cqe,
                                        io_uring_get_sqe, io_uring_peek_batch_cqe,
                                        io_uring_prep_fallocate, io_uring_prep_fsync,
                                        io_uring_prep_read, io_uring_prep_read_fixed,
                                        io_uring_prep_readv, io_uring_prep_write,
                                        io_uring_prep_write_fixed, io_uring_prep_writev,
                                        io_uring_sqe, io_uring_sqe_set_data64,
                                        io_uring_sqe_set_flags, io_uring_submit,
                                        io_uring_wait_cqe)
from fastvfs.includes.mman cimport MAP_FAILED, MAP_SHARED, PROT_READ, PROT_WRITE, mmap, munmap
from fastvfs.includes.posix cimport strnlen
from fastvfs.includes.pthread cimport (pthread_mutex_destroy, pthread_mutex_init,
                                       pthread_mutex_lock, pthread_mutex_t,
                                       pthread_mutex_unlock)
from fastvfs.includes.resource cimport RUSAGE_THREAD, getrusage, rusage
from fastvfs.includes.stat cimport S_ISGID, S_ISUID, S_IXGRP, fchmod, fstat, stat
from fastvfs.includes.statx cimport FASTVFS_STATX_MASK, STATX_MNT_ID
from fastvfs.includes.uio cimport RWF_NOWAIT, iovec, preadv, preadv2, pwritev
from fastvfs.includes.xattr cimport ENODATA, EOPNOTSUPP, fgetxattr, fremovexattr

cdef enum:
    MAX_REGIONS = 64
    # A chain may name every descriptor of a 32768-entry ring, and a buffer may split where
    # guest memory regions meet; beyond this many pieces the request is refused.
    MAX_IOV = 2048
    # The fewest descriptors a chain may have before it is refused (see _walk): a FUSE request
    # of MAX_PAGES (256) data pages with its headers, with room to spare.
    CHAIN_DESCS_FLOOR = 512
    VRING_DESC_F_NEXT = 1
    VRING_DESC_F_WRITE = 2
    VRING_DESC_F_INDIRECT = 4
    VRING_AVAIL_F_NO_INTERRUPT = 1
    IN_HEADER_SIZE = 40
    OUT_HEADER_SIZE = 16
    UNIQUE_END = 16         # fuse_in_header.unique ends 16 bytes into the header
    FUSE_LOOKUP = 1
    FUSE_GETATTR = 3
    ENTRY_OUT_SIZE = 128
    LOOKUP_NAME_MAX = 255
    FUSE_READ = 15
    FUSE_WRITE = 16
    ATTR_OUT_SIZE = 104
    FUSE_WRITE_KILL_SUIDGID = 1 << 2
    READ_IN_SIZE = 40
    WRITE_IN_SIZE = 40
    # Largest request body the Python engine copies out of guest memory (SETXATTR values are
    # bounded by 64 KiB, names by PATH_MAX); WRITE data never takes this path.
    SLOW_REQUEST_MAX = 1 << 20
    # io_uring: iovecs of the requests in flight on one queue, submissions per system call,
    # completions reaped per peek.
    POOL_IOV = 8192
    SUBMIT_BATCH = 8
    # Lone READs sent straight to the ring after one that the page cache could not answer.
    LONE_SKIP = 64
    PUBLISH_BATCH = 8
    WAKE_SAMPLE = 64
    REAP_BATCH = 64
    # Guest memory registered with a queue's io_uring (--fixed-buffers): the kernel takes
    # buffers of at most 1 GiB each, so a region is registered in pieces of that size.
    FIXED_PIECE = 1 << 30
    MAX_FIXED = 1024
    # Request statistics: opcodes below STATS_OPS (FUSE's are), latency buckets by log2(ns).
    STATS_OPS = 64
    STATS_BUCKETS = 40
    DROPPED_MAX = 1024
    FUSE_FORGET = 2
    FUSE_RELEASE = 18
    FUSE_FLUSH = 25
    FUSE_FSYNC = 20
    FUSE_FSYNC_FDATASYNC = 1
    FUSE_BATCH_FORGET = 42
    FUSE_FALLOCATE = 43
    FALLOCATE_IN_SIZE = 32
    FUSE_RELEASE_FLOCK_UNLOCK = 2

# What a queue's io_uring may do, and nothing else (the kernel enforces it: see
# UringEngine's ``restrict``): the operations the hot path prepares, the registration of guest
# memory for --fixed-buffers, and the drain flag FSYNC and FALLOCATE are submitted with.
URING_ALLOWED = (("READ", "READV", "READ_FIXED", "WRITE", "WRITEV", "WRITE_FIXED", "FSYNC",
                  "FALLOCATE"),
                 ("REGISTER_BUFFERS", "UNREGISTER_BUFFERS"),
                 ("IO_DRAIN",))


def _open_uring(int index, unsigned num, bint writes):
    """The io_uring a queue worker drives (created on its own thread: SINGLE_ISSUER), or None
    where this kernel or the seccomp filter refuses one; READ/WRITE are then synchronous."""
    try:
        engine = UringEngine(min(max(num, 64), 4096),
                             prefer=("IORING_SETUP_SUBMIT_ALL", "IORING_SETUP_SINGLE_ISSUER"),
                             restrict=URING_ALLOWED)
    except (UringUnavailable, OSError) as exc:
        _log.warning("ring %d: no io_uring (%s); READ and WRITE are synchronous", index, exc)
        return None
    _log.debug("ring %d: %s through io_uring (%d entries)", index,
               "READ and WRITE" if writes else "READ", engine.entries)
    return engine



# Engine-level constants the Python side needs to agree with.
MAX_CHAIN_IOV = MAX_IOV


# --------------------------------------------------------------------------- guest memory

# Avail ring faults are logged at most this often (a 64-bit constant: an enum is a C int).
cdef uint64_t REPORT_INTERVAL_NS = 10 * 1000 * 1000 * 1000ULL


cdef struct Region:
    uint64_t gpa
    uint64_t size
    uint64_t uaddr
    uint8_t *host


@cython.final
cdef class _Mapping:
    """One region's file mapped into this process; unmapped when the last memory table (and so
    the last request in flight holding one, see ``PendingReply``) that uses it is gone."""
    cdef void *base
    cdef size_t length

    def __dealloc__(self):
        if self.base != NULL:
            munmap(self.base, self.length)


cdef class MemoryTable:
    """The frontend's memory regions (SET_MEM_TABLE / ADD_MEM_REG), mapped into this process.

    Translation works on two address spaces: guest-physical addresses (descriptor buffers) and
    the frontend's own virtual addresses (``userspace_addr``, used by SET_VRING_ADDR).

    A table in use by a ring or a deferred reply is never changed: a change of the frontend's
    memory is a new table (``copy`` then ``add_region``/``remove_region``) sharing the
    mappings it keeps, so a request still pointing into a removed region writes into memory
    that stays mapped until that request is answered.
    """
    cdef Region regions[MAX_REGIONS]
    cdef int nregions
    cdef list maps          # the _Mapping of regions[i] at maps[i]

    def __cinit__(self):
        self.maps = []

    def copy(self):
        """A new table with the same regions, sharing their mappings."""
        cdef MemoryTable table = MemoryTable()
        table.regions = self.regions
        table.nregions = self.nregions
        table.maps = list(self.maps)
        return table

    def add_region(self, uint64_t gpa, uint64_t size, uint64_t uaddr, uint64_t mmap_offset, int fd):
        """Map ``size`` bytes of ``fd`` from ``mmap_offset``; the caller checked the file is large
        enough (touching past its end would raise SIGBUS in this process)."""
        cdef int i
        cdef Region *r
        if self.nregions >= MAX_REGIONS:
            raise ValueError("too many memory regions")
        if size == 0 or gpa + size < gpa or uaddr + size < uaddr or mmap_offset + size < mmap_offset:
            raise ValueError("memory region wraps around")
        if mmap_offset + size > <uint64_t>INT64_MAX:
            raise ValueError("memory region too large")
        for i in range(self.nregions):
            r = &self.regions[i]
            if gpa < r.gpa + r.size and r.gpa < gpa + size:
                raise ValueError("memory regions overlap in guest-physical space")
            if uaddr < r.uaddr + r.size and r.uaddr < uaddr + size:
                raise ValueError("memory regions overlap in frontend address space")
        cdef size_t map_len = mmap_offset + size
        cdef void *base
        with nogil:
            base = mmap(NULL, map_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        if base == MAP_FAILED:
            raise OSError(errno, "mmap of guest memory failed")
        cdef _Mapping mapping = _Mapping()
        mapping.base = base
        mapping.length = map_len
        self.maps.append(mapping)
        r = &self.regions[self.nregions]
        r.gpa = gpa
        r.size = size
        r.uaddr = uaddr
        r.host = <uint8_t *>base + mmap_offset
        self.nregions += 1

    def remove_region(self, uint64_t gpa, uint64_t size, uint64_t uaddr):
        """Take out the region that matches exactly; returns whether one did.  Its mapping goes
        when no other table uses it."""
        cdef int i
        for i in range(self.nregions):
            r = &self.regions[i]
            if r.gpa == gpa and r.size == size and r.uaddr == uaddr:
                self.regions[i] = self.regions[self.nregions - 1]
                self.maps[i] = self.maps[self.nregions - 1]
                self.maps.pop()
                self.nregions -= 1
                return True
        return False

    def host_ranges(self):
        """(host address, length) of every region's mapping in this process, in pieces of at
        most 1 GiB: what a queue registers with its io_uring for READ_FIXED/WRITE_FIXED."""
        cdef int i
        cdef uint64_t at, piece
        pieces = []
        for i in range(self.nregions):
            at = 0
            while at < self.regions[i].size:
                piece = min(<uint64_t>FIXED_PIECE, self.regions[i].size - at)
                pieces.append((<uintptr_t>(self.regions[i].host + at), piece))
                at += piece
        return pieces

    def describe(self):
        """(gpa, size, uaddr) of every region, for logs and tests."""
        return [(self.regions[i].gpa, self.regions[i].size, self.regions[i].uaddr)
                for i in range(self.nregions)]

    def __len__(self):
        return self.nregions

    cdef uint8_t *_to_host(self, uint64_t addr, uint64_t length, bint frontend) noexcept nogil:
        cdef int i
        cdef Region *r
        cdef uint64_t base
        for i in range(self.nregions):
            r = &self.regions[i]
            base = r.uaddr if frontend else r.gpa
            if addr >= base and addr - base <= r.size and length <= r.size - (addr - base):
                return r.host + (addr - base)
        return NULL

    cdef uint8_t *uaddr_to_host(self, uint64_t uaddr, uint64_t length) noexcept nogil:
        """A pointer to ``length`` contiguous bytes at frontend address ``uaddr``, or NULL."""
        return self._to_host(uaddr, length, True)

    cdef uint8_t *gpa_to_host(self, uint64_t gpa, uint64_t length) noexcept nogil:
        """A pointer to ``length`` contiguous bytes at guest-physical ``gpa``, or NULL."""
        return self._to_host(gpa, length, False)

    cdef int gpa_to_iov(self, uint64_t gpa, uint64_t length, iovec *iov, int room) noexcept nogil:
        """Translate a guest buffer into iovecs, splitting where regions meet.

        Returns the number of iovecs written, -EFAULT when any byte lies outside guest memory
        (a DAX window address, or garbage) or -EINVAL when ``room`` is too small.
        """
        cdef int i, n = 0
        cdef Region *r
        cdef uint64_t chunk
        cdef bint found
        if gpa + length < gpa:
            return -EFAULT
        while length > 0:
            found = False
            for i in range(self.nregions):
                r = &self.regions[i]
                if gpa >= r.gpa and gpa - r.gpa < r.size:
                    if n >= room:
                        return -EINVAL
                    chunk = r.size - (gpa - r.gpa)
                    if chunk > length:
                        chunk = length
                    iov[n].iov_base = r.host + (gpa - r.gpa)
                    iov[n].iov_len = chunk
                    n += 1
                    gpa += chunk
                    length -= chunk
                    found = True
                    break
            if not found:
                return -EFAULT
        return n


# --------------------------------------------------------------------------- file handles

cdef struct HandleSlot:
    uint64_t state        # atomic: generation << 32 | LIVE | BUSY | refs
    int fd                # -1 for a node held by file handle whose descriptor is not cached
    uint8_t recent        # atomic: a node held by file handle was used since the clock passed
    bint in_use           # the rest is guarded by the table mutex
    bint keyed
    bint direct           # opened O_DIRECT (a read of it is never a page-cache copy)
    bint directory        # an OPENDIR handle: the file system holds a listing for it
    uint64_t dev
    uint64_t ino
    uint64_t mnt
    uint64_t nlookup
    uint32_t hnext        # next slot + 1 in the key's hash chain, 0 at the end
    bint by_handle        # a node held by file handle: ``fd`` is a cache entry (``fds_max``)
    bint queued           # the slot is in the cache's clock queue (kept across reuse)
    uint32_t mode         # a node id's st_mode when adopted (its file type never changes)


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
    cdef HandleSlot *slots
    cdef uint32_t *buckets
    cdef uint32_t nbuckets
    cdef uint32_t capacity
    cdef uint32_t free_hint
    cdef pthread_mutex_t lock
    cdef readonly uint32_t count
    # Descriptors the file system holds for POSIX/flock locks (kept up to date by it through
    # ``set_lock_fds``, under the mutex): while there are any, FLUSH, RELEASE and FORGET go to
    # the engine, which drops them.
    cdef readonly int lock_fds_open
    # The host name of the guest's security.capability when --xattrmap moves it (empty when
    # not): removed before a WRITE or FALLOCATE, as the kernel removes the real one
    # (PassthroughFs.cap_xattr, kill_mapped_capability).  Set once, before any queue runs.
    cdef char cap_xattr[256]
    # Node ids the hot path dropped (FORGET), for the file system to prune its own records.
    cdef uint64_t dropped[DROPPED_MAX]
    cdef uint32_t ndropped
    # Nodes held by file handle, those of them with a cached descriptor, and the bound on the
    # latter; the clock queue of cached slots (a ring of slot indexes, each at most once).
    cdef readonly uint32_t handle_nodes
    cdef readonly uint32_t handle_fds
    cdef readonly uint32_t fds_max
    cdef uint32_t *clock
    cdef uint32_t clock_head
    cdef uint32_t clock_len

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

    cdef inline bint direct(self, uint64_t fh) noexcept nogil:
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

    cdef inline int64_t _id_of(self, int64_t idx) noexcept nogil:
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
        cdef bint direct
        with nogil:
            direct = fcntl(fd, F_GETFL) & O_DIRECT != 0
            pthread_mutex_lock(&self.lock)
            fh = self._take_slot(fd)
            if fh >= 0:
                self.slots[(fh & 0xffffffffUL) - 1].direct = direct
                self.slots[(fh & 0xffffffffUL) - 1].directory = directory
            pthread_mutex_unlock(&self.lock)
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
                    if end > total or end < start + 24:
                        break                       # not a snapshot this table made
                    if used + ENTRY_OUT_SIZE + (end - start) > size:
                        break
                    memcpy(&namelen, recs + start + 16, 4)
                    if namelen > end - start - 24:
                        break
                    if _dot_name(<const char *>recs + start + 24, namelen):
                        memset(buf + used, 0, ENTRY_OUT_SIZE)
                    else:
                        if namelen > LOOKUP_NAME_MAX:
                            need = True
                            break
                        memcpy(name, recs + start + 24, namelen)
                        name[namelen] = 0
                        rc = _known_entry(self, parent, name, namelen, sec, nsec, buf + used)
                        if rc == -ENOENT:
                            i += 1                  # removed since the snapshot
                            continue
                        if rc <= 0:
                            need = True
                            break
                    memcpy(buf + used + ENTRY_OUT_SIZE, recs + start, end - start)
                    used += ENTRY_OUT_SIZE + (end - start)
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


cdef int64_t _known_entry(HandleTable inodes, uint64_t parent, const char *name, size_t length,
                          uint64_t valid, uint32_t valid_nsec, uint8_t *out) noexcept nogil:
    """``name`` (``length`` bytes, NUL-terminated) in directory ``parent`` when it is a plain
    name and the node id table already holds its inode: fills ``out`` with fuse_entry_out
    (both timeouts ``valid``) with one more lookup counted, and returns the node id.  -ENOENT
    when there is no such name; 0 when the engine must look it up (another name, a new inode,
    a directory on another mount, any other failure)."""
    cdef uint64_t mnt, zero64 = 0
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
    memcpy(out, &nodeid, 8)
    memcpy(out + 8, &zero64, 8)                 # generation
    memcpy(out + 16, &valid, 8)                 # entry_valid: the same timeout
    memcpy(out + 24, &valid, 8)
    memcpy(out + 32, &valid_nsec, 4)
    memcpy(out + 36, &valid_nsec, 4)
    _pack_attr(&st, out + 40)
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


# --------------------------------------------------------------------------- split virtqueue

cdef struct vring_desc:
    uint64_t addr
    uint32_t len
    uint16_t flags
    uint16_t next


cdef struct Chain:
    uint16_t head
    int nin            # device-readable iovecs: iov[0:nin]
    int nout           # device-writable iovecs: iov[nin:nin+nout]
    uint64_t in_len
    uint64_t out_len


cdef inline uint64_t _copy_iov(const iovec *iov, int cnt, uint64_t skip, uint8_t *buf,
                               uint64_t length, bint into_iov) noexcept nogil:
    """Copy ``length`` bytes between ``buf`` and an iovec list, starting ``skip`` bytes into the
    list (towards the iovecs when ``into_iov``); returns the bytes copied."""
    cdef int i
    cdef uint64_t done = 0, take, avail
    cdef uint8_t *p
    for i in range(cnt):
        if done == length:
            break
        if skip >= iov[i].iov_len:
            skip -= iov[i].iov_len
            continue
        avail = iov[i].iov_len - skip
        take = length - done if length - done < avail else avail
        p = <uint8_t *>iov[i].iov_base + skip
        if into_iov:
            memcpy(p, buf + done, take)
        else:
            memcpy(buf + done, p, take)
        done += take
        skip = 0
    return done


cdef inline uint64_t _gather(const iovec *iov, int cnt, uint64_t skip, uint8_t *dst,
                             uint64_t length) noexcept nogil:
    return _copy_iov(iov, cnt, skip, dst, length, False)


cdef inline uint64_t _scatter(const iovec *iov, int cnt, uint64_t skip, const uint8_t *src,
                              uint64_t length) noexcept nogil:
    return _copy_iov(iov, cnt, skip, <uint8_t *>src, length, True)


cdef inline int _slice(const iovec *iov, int cnt, uint64_t skip, uint64_t length,
                       iovec *out) noexcept nogil:
    """The iovecs covering ``length`` bytes from ``skip``; returns their count."""
    cdef int i, n = 0
    cdef uint64_t avail
    for i in range(cnt):
        if length == 0:
            break
        if skip >= iov[i].iov_len:
            skip -= iov[i].iov_len
            continue
        avail = iov[i].iov_len - skip
        out[n].iov_base = <uint8_t *>iov[i].iov_base + skip
        out[n].iov_len = length if length < avail else avail
        length -= out[n].iov_len
        n += 1
        skip = 0
    return n


cdef class RingLock:
    """Serializes used-ring updates of one ring: its worker thread and the threads completing
    deferred requests (see ``PendingReply``) both publish used elements.  One lock lives as long
    as the ring index, across the Virtqueue objects a restarted ring goes through.  Leaf lock."""
    cdef pthread_mutex_t m

    def __cinit__(self):
        pthread_mutex_init(&self.m, NULL)

    def __dealloc__(self):
        pthread_mutex_destroy(&self.m)


cdef uint32_t _write_reply(const iovec *w, int nout, uint64_t out_len, uint64_t unique,
                           int32_t error, const uint8_t *payload, uint32_t length) noexcept nogil:
    """Write fuse_out_header (+ payload) into writable buffers; returns the used length (0 when
    not even the header fits).  A payload that does not fit becomes an ERANGE error."""
    cdef uint8_t out[OUT_HEADER_SIZE]
    cdef uint32_t total = OUT_HEADER_SIZE + length
    if out_len < total:
        if out_len < OUT_HEADER_SIZE:
            return 0
        error = -ERANGE
        length = 0
        total = OUT_HEADER_SIZE
    memcpy(out, &total, 4)
    memcpy(out + 4, &error, 4)
    memcpy(out + 8, &unique, 8)
    _scatter(w, nout, 0, out, OUT_HEADER_SIZE)
    if length:
        _scatter(w, nout, OUT_HEADER_SIZE, payload, length)
    return total


cdef class PendingReply:
    """A request the engine answers later, from any thread (a blocking lock wait, say).

    It keeps its own copy of the chain's writable buffers and a reference to the memory they
    lie in.  ``complete`` publishes the reply on the ring that is live at that moment: a ring
    paused and restarted by the backend (new memory table, new eventfds) hands its pending
    replies over; a ring stopped by the frontend (GET_VRING_BASE, reset) drops them, since the
    guest's memory may already hold something else.
    """
    cdef Virtqueue vq
    cdef MemoryTable mem
    cdef iovec *out
    cdef int nout
    cdef uint64_t out_len
    cdef uint16_t head
    cdef readonly uint64_t unique
    cdef readonly bint done

    def __dealloc__(self):
        free(self.out)

    def complete(self, int error, payload=b""):
        """Send the reply (``error`` 0 or -errno); returns False if the ring is gone."""
        cdef const uint8_t[::1] view
        cdef const uint8_t *data = NULL
        cdef uint32_t length = 0, total
        cdef Virtqueue vq
        if payload:
            view = payload
            data = &view[0]
            length = <uint32_t>view.shape[0]
        # Lock rule: the ring lock is held only by code that never waits for the GIL (the
        # section below runs no Python code), so taking it with the GIL held cannot deadlock.
        pthread_mutex_lock(&self.vq.lock.m)
        vq = self.vq
        while vq.retired and vq.successor is not None:
            vq = vq.successor
        if self.done or vq.retired:
            pthread_mutex_unlock(&self.vq.lock.m)
            return False
        self.done = True
        total = _write_reply(self.out, self.nout, self.out_len, self.unique, error, data, length)
        vq._push_used_locked(self.head, total)
        vq._notify_locked(False)
        pthread_mutex_unlock(&self.vq.lock.m)
        return True


cdef struct StatsBlock:
    uint64_t count[STATS_OPS]
    uint64_t errors[STATS_OPS]
    uint64_t total_ns[STATS_OPS]
    uint64_t hist[STATS_OPS][STATS_BUCKETS]


cdef inline uint64_t _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec


cdef inline void _bump(uint64_t *counter, uint64_t amount, bint shared) noexcept nogil:
    if shared:
        fastvfs_add64(counter, amount)
    else:
        fastvfs_inc64(counter, amount)


cdef inline void _stats_record(StatsBlock *b, uint32_t opcode, int32_t error, uint64_t ns,
                               bint shared=False) noexcept nogil:
    """Count a request: in a block only the calling thread writes (a queue's own: no locked
    instructions), or with atomic adds in a ``shared`` one."""
    if opcode >= STATS_OPS:
        opcode = 0   # unknown opcodes and malformed chains share slot 0
    _bump(&b.count[opcode], 1, shared)
    if error:
        _bump(&b.errors[opcode], 1, shared)
    _bump(&b.total_ns[opcode], ns, shared)
    cdef unsigned bucket = fastvfs_log2(ns)
    if bucket >= STATS_BUCKETS:
        bucket = STATS_BUCKETS - 1
    _bump(&b.hist[opcode][bucket], 1, shared)


cdef enum:
    STATS_RINGS = 256


cdef class RequestStats:
    """Per-opcode request counts, errors and latency histograms (bucket ``b`` holds latencies
    in [2**b, 2**(b+1)) ns), for every queue of a device and the /dev/fuse transport.

    Each ring index has a block of its own, written only by the thread serving that ring (no
    locked instructions on the hot path); requests counted from elsewhere go to a shared block
    with atomic adds.  :meth:`snapshot` sums them (each counter read atomically)."""

    cdef StatsBlock *block
    cdef StatsBlock *rings[STATS_RINGS]

    def __cinit__(self):
        self.block = <StatsBlock *>calloc(1, sizeof(StatsBlock))
        if self.block == NULL:
            raise MemoryError()

    def __dealloc__(self):
        cdef int i
        free(self.block)
        for i in range(STATS_RINGS):
            free(self.rings[i])

    buckets = STATS_BUCKETS
    ops = STATS_OPS

    cdef StatsBlock *ring_block(self, int index) except NULL:
        """The block of ring ``index`` (one serving thread at a time, across restarts)."""
        if index < 0 or index >= STATS_RINGS:
            return _no_block()
        if self.rings[index] == NULL:
            self.rings[index] = <StatsBlock *>calloc(1, sizeof(StatsBlock))
            if self.rings[index] == NULL:
                raise MemoryError()
        return self.rings[index]

    def record(self, uint32_t opcode, int32_t error, uint64_t ns):
        """Count one request served outside the rings (the /dev/fuse transport)."""
        _stats_record(self.block, opcode, error, ns, True)

    def snapshot(self):
        """``{opcode: (count, errors, total_ns, [bucket counts])}`` for opcodes seen."""
        cdef int op, b, i
        cdef StatsBlock *blk
        out = {}
        blocks = [<uintptr_t>self.block] + [<uintptr_t>self.rings[i] for i in range(STATS_RINGS)
                                             if self.rings[i] != NULL]
        for op in range(STATS_OPS):
            n = errors = total = 0
            hist = [0] * STATS_BUCKETS
            for addr in blocks:
                blk = <StatsBlock *><uintptr_t>addr
                n += fastvfs_load64(&blk.count[op])
                errors += fastvfs_load64(&blk.errors[op])
                total += fastvfs_load64(&blk.total_ns[op])
                for b in range(STATS_BUCKETS):
                    hist[b] += fastvfs_load64(&blk.hist[op][b])
            if n:
                out[op] = (n, errors, total, hist)
        return out


cdef StatsBlock *_no_block() except NULL:
    raise ValueError("ring index out of range for statistics")


# A piece of guest memory registered with the queue's io_uring, buffer index = its position.
cdef struct FixedBuf:
    uintptr_t start
    uint64_t length


# A READ or WRITE handed to io_uring, indexed by its chain head (unique while in flight).
cdef struct Flight:
    uint64_t unique
    uint64_t fh
    uint64_t start_ns
    uint64_t out_len
    int64_t offset
    uint32_t size
    uint32_t opcode
    uint32_t out_at        # the chain's writable iovecs: pool[out_at:out_at + nout]
    uint32_t data_at       # the data iovecs: pool[data_at:data_at + ndata]
    int nout
    int ndata
    int fd
    bint writing
    bint kill
    bint busy              # in flight: a head published again meanwhile waits for it


@cython.final   # no subclasses: the hot path's method calls are direct, not through a vtable
cdef class Virtqueue:
    """Device side of one split virtqueue (virtio 1.2 section 2.7).

    Built by the control plane once the ring's size, addresses and eventfds are known; ``run``
    serves it until ``stop``.  ``last_avail_idx`` is what GET_VRING_BASE reports.
    """
    cdef readonly int index
    cdef readonly uint16_t num
    cdef readonly uint16_t last_avail_idx
    cdef readonly uint16_t used_idx
    cdef readonly uint64_t requests
    cdef readonly uint64_t bad_chains
    cdef readonly uint64_t bad_heads      # avail entries naming no descriptor, skipped
    cdef readonly uint64_t bad_avail      # times the avail index ran more than ``num`` ahead
    cdef bint avail_bad                   # the avail index is out of reach right now
    cdef uint64_t reported                # bad_heads + bad_avail when last logged
    cdef uint64_t reported_ns
    cdef readonly bint retired
    cdef readonly Virtqueue successor
    cdef RingLock lock
    cdef MemoryTable mem
    cdef HandleTable handles
    cdef HandleTable inodes
    cdef uint64_t attr_valid
    cdef uint32_t attr_valid_nsec
    cdef vring_desc *desc
    cdef uint8_t *avail
    cdef uint8_t *used
    cdef bint event_idx
    cdef bint indirect
    cdef bint fast_io
    cdef uint16_t signalled_used
    cdef bint signalled_used_valid
    cdef int kick_fd
    cdef int call_fd
    cdef int err_fd
    cdef int stop_fd
    cdef volatile int stopping
    cdef uint32_t max_io
    cdef iovec *iov
    cdef iovec *scratch_iov
    cdef Chain chain
    cdef uint8_t hdr[IN_HEADER_SIZE + WRITE_IN_SIZE]
    cdef RequestStats stats_owner
    cdef StatsBlock *stats          # NULL: no statistics
    cdef uint32_t cur_opcode        # the popped request's opcode and arrival time, for stats
    cdef uint64_t cur_start
    cdef bint want_uring            # READ through io_uring when the kernel allows
    cdef bint uring_writes          # WRITE too
    cdef bint read_only             # WRITE and FALLOCATE are the engine's (it refuses them)
    cdef bint want_fixed            # register guest memory with the ring (--fixed-buffers)
    cdef FixedBuf *fixed            # the registered pieces while ``run`` serves with them
    cdef uint32_t nfixed
    cdef readonly uint64_t fixed_ios  # READ_FIXED/WRITE_FIXED submitted
    cdef readonly uint64_t lone_reads  # READs answered from the page cache without the ring
    cdef uint32_t lone_skip         # lone READs left to send to the ring after one would block
    cdef io_uring *uring            # set while ``run`` serves with a ring
    cdef Flight *flight
    cdef iovec *pool
    cdef uint32_t pool_used
    cdef uint32_t nflight
    cdef uint32_t nqueued           # prepared, not yet submitted
    cdef uint16_t pend_heads[PUBLISH_BATCH]   # replies written, not yet in the used ring
    cdef uint32_t pend_lens[PUBLISH_BATCH]
    cdef uint32_t npend
    cdef uint32_t unsignalled       # published without a notification check (lock held)
    cdef readonly uint32_t notify_every   # metadata replies per notification check
    cdef uint32_t _wakes            # guest wake-ups by the worker since the last sample
    cdef long _nivcsw
    cdef uint32_t poll_us             # busy-poll window ceiling (0: never poll)
    cdef uint32_t poll_window         # current window, adapted between poll_us/8 and poll_us

    def __cinit__(self):
        self.iov = <iovec *>malloc(MAX_IOV * sizeof(iovec))
        self.scratch_iov = <iovec *>malloc(MAX_IOV * sizeof(iovec))
        self.pool = NULL
        self.flight = NULL
        self.uring = NULL
        if self.iov == NULL or self.scratch_iov == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.iov)
        free(self.scratch_iov)
        free(self.pool)
        free(self.flight)

    def __init__(self, int index, MemoryTable mem, HandleTable handles, uint16_t num,
                 uint64_t desc_uaddr, uint64_t avail_uaddr, uint64_t used_uaddr,
                 uint16_t last_avail_idx, int kick_fd, int call_fd, int stop_fd,
                 bint event_idx, bint indirect, uint32_t max_io=1 << 20, RingLock lock=None,
                 HandleTable inodes=None, double attr_timeout=0.0, RequestStats stats=None,
                 bint io_uring=False, uint32_t poll_us=0, bint uring_writes=False,
                 bint read_only=False, bint fixed_buffers=False, int err_fd=-1):
        if num == 0 or num & (num - 1) or num > 32768:
            raise ValueError(f"queue size {num} is not a power of two up to 32768")
        # Sizes from virtio 1.2 section 2.7: the trailing u16 is used_event / avail_event.
        if desc_uaddr % 16 or avail_uaddr % 2 or used_uaddr % 4:
            raise ValueError("misaligned ring address")
        self.desc = <vring_desc *>mem.uaddr_to_host(desc_uaddr, 16 * <uint64_t>num)
        self.avail = mem.uaddr_to_host(avail_uaddr, 6 + 2 * <uint64_t>num)
        self.used = mem.uaddr_to_host(used_uaddr, 6 + 8 * <uint64_t>num)
        if self.desc == NULL or self.avail == NULL or self.used == NULL:
            raise ValueError("ring address outside guest memory")
        self.index = index
        self.mem = mem
        self.handles = handles
        self.num = num
        self.last_avail_idx = last_avail_idx
        # The used index lives in guest memory and survives a stop/start of the ring; taking it
        # from there (rather than assuming last_avail_idx) keeps both sides in step.
        self.used_idx = fastvfs_load16(self.used + 2)
        self.kick_fd = kick_fd
        self.call_fd = call_fd
        self.err_fd = err_fd
        self.stop_fd = stop_fd
        self.event_idx = event_idx
        self.indirect = indirect
        self.max_io = max_io
        self.fast_io = False
        self.signalled_used_valid = False
        self.stopping = 0
        self.lock = lock if lock is not None else RingLock()
        # GETATTR is answered here when the node id table is shared with the file system.
        self.inodes = inodes
        self.attr_valid = <uint64_t>attr_timeout
        self.attr_valid_nsec = <uint32_t>((attr_timeout - <uint64_t>attr_timeout) * 1e9)
        self.stats_owner = stats
        self.stats = stats.ring_block(index) if stats is not None else NULL
        self.want_uring = io_uring
        self.uring_writes = uring_writes
        self.read_only = read_only
        self.notify_every = 1
        self.want_fixed = fixed_buffers
        self.poll_us = poll_us
        self.poll_window = poll_us
        if io_uring:
            # What a queue with I/O in flight needs: nothing for a synchronous one.
            self.pool = <iovec *>malloc(POOL_IOV * sizeof(iovec))
            self.flight = <Flight *>calloc(num, sizeof(Flight))
            if self.pool == NULL or self.flight == NULL:
                raise MemoryError()

    @property
    def io_engine(self):
        """"uring" while READ/WRITE go through io_uring, else "sync"."""
        return "uring" if self.uring != NULL else "sync"

    def set_fast_io(self, bint enabled):
        """READ/WRITE are served in C only between FUSE_INIT and the session's end."""
        self.fast_io = enabled

    def set_call_fd(self, int fd):
        """Swap the call eventfd; once this returns the old one is no longer written to."""
        with nogil:
            pthread_mutex_lock(&self.lock.m)
            self.call_fd = fd
            pthread_mutex_unlock(&self.lock.m)

    def set_err_fd(self, int fd):
        """Swap the error eventfd (SET_VRING_ERR); as ``set_call_fd``."""
        with nogil:
            pthread_mutex_lock(&self.lock.m)
            self.err_fd = fd
            pthread_mutex_unlock(&self.lock.m)

    def retire(self, Virtqueue successor=None):
        """After ``stop``: pending replies go to ``successor`` (a restart of the same ring by
        the backend) or are dropped (the frontend stopped the ring)."""
        if successor is not None and successor.lock is not self.lock:
            raise ValueError("a successor must share the ring lock")
        pthread_mutex_lock(&self.lock.m)  # see the lock rule in PendingReply.complete
        if successor is not None:
            # Replies completed since this queue stopped moved the used index on.
            successor.used_idx = fastvfs_load16(successor.used + 2)
        self.retired = True
        self.successor = successor
        pthread_mutex_unlock(&self.lock.m)

    # -- ring access (no GIL) ----------------------------------------------------------------

    cdef int _pop(self) noexcept nogil:
        """Take the next available head into ``self.chain.head``: 1 taken, 0 nothing to take.

        A bad avail ring never stops the queue (the guest's valid requests would then wait
        forever, unanswered and unsignalled); each kind is counted, the frontend is told
        through the ring's error eventfd (``_signal_error``) and the worker logs it
        (``_report``):

        - an entry naming a head at or beyond the queue size is skipped: no used element can
          name it (virtio 1.2 section 2.7.8: ``id`` is the head of a chain the driver made
          available), and the entries after it are served;
        - an avail index more than ``num`` ahead of ``last_avail_idx`` cannot be (the driver
          never has more than ``num`` buffers available, section 2.7.6), and which entries
          behind it are real cannot be told.  That is the device error state of section
          2.1.2 (DEVICE_NEEDS_RESET, which a vhost-user backend reports through SET_VRING_ERR's
          eventfd; QEMU then marks the device broken for the guest, which resets it).  Nothing
          is taken while the index stays out of reach, but the worker keeps waiting for kicks
          and serves again as soon as the index is back within ``num`` (a driver that fixed
          it, or a ring restarted with a new base).
        """
        cdef uint16_t avail_idx
        while True:
            avail_idx = fastvfs_load16(self.avail + 2)
            if avail_idx == self.last_avail_idx or \
                    <uint16_t>(avail_idx - self.last_avail_idx) > self.num:
                if avail_idx != self.last_avail_idx and not self.avail_bad:
                    self.avail_bad = True
                    self.bad_avail += 1
                    self._signal_error()
                if not self.event_idx:
                    return 0
                # Ask for a kick once anything past last_avail_idx is published, then look
                # again so a buffer published meanwhile is not missed (section 2.7.10).
                fastvfs_store16(self.used + 4 + 8 * <uint32_t>self.num, self.last_avail_idx)
                fastvfs_full_barrier()
                avail_idx = fastvfs_load16(self.avail + 2)
                if avail_idx == self.last_avail_idx or \
                        <uint16_t>(avail_idx - self.last_avail_idx) > self.num:
                    return 0
            self.avail_bad = False
            fastvfs_acquire()
            self.chain.head = fastvfs_load16(self.avail + 4 + 2 * (self.last_avail_idx % self.num))
            self.last_avail_idx += 1
            if self.chain.head >= self.num:
                self.bad_heads += 1
                self._signal_error()
                continue
            self.cur_opcode = 0
            if self.stats != NULL:
                self.cur_start = _now_ns()
            return 1

    cdef inline bint _avail_pending(self) noexcept nogil:
        """Whether the avail index shows buffers ``_pop`` would look at (1 to ``num``)."""
        return <uint16_t>(<uint16_t>(fastvfs_load16(self.avail + 2) - self.last_avail_idx) - 1) \
            < self.num

    cdef void _signal_error(self) noexcept nogil:
        """Signal the error eventfd the frontend gave (SET_VRING_ERR), if any."""
        cdef uint64_t one = 1
        pthread_mutex_lock(&self.lock.m)
        if self.err_fd >= 0:
            c_write(self.err_fd, &one, 8)
        pthread_mutex_unlock(&self.lock.m)

    cdef void _report(self):
        """Log the avail ring faults counted since the last report (called with the GIL, at
        most every REPORT_INTERVAL_NS so a guest cannot flood the log)."""
        self.reported = self.bad_heads + self.bad_avail
        self.reported_ns = _now_ns()
        _log.error("ring %d: the driver published %d avail entries naming no descriptor "
                   "(skipped) and ran the avail index more than the queue size ahead %d times "
                   "(nothing taken until it is back in reach); error eventfd %s",
                   self.index, self.bad_heads, self.bad_avail,
                   "signalled" if self.err_fd >= 0 else "not set")

    cdef int _walk(self) noexcept nogil:
        """Resolve the chain at ``self.chain.head`` into iovecs; 0 or -errno if malformed."""
        cdef vring_desc d
        cdef vring_desc *table = self.desc
        cdef uint32_t table_len = self.num
        cdef uint32_t idx = self.chain.head
        cdef uint32_t seen = 0
        cdef uint32_t total = 0
        cdef bint in_indirect = False
        cdef int n
        cdef iovec *iov = self.iov
        self.chain.nin = 0
        self.chain.nout = 0
        self.chain.in_len = 0
        self.chain.out_len = 0
        while True:
            if idx >= table_len:
                return -EINVAL
            seen += 1
            if seen > table_len:   # a loop: more descriptors than the table holds
                return -EINVAL
            # Copy the descriptor once: the guest may rewrite it while we look at it.
            memcpy(&d, &table[idx], sizeof(vring_desc))
            if d.flags & VRING_DESC_F_INDIRECT:
                # Section 2.7.5.3: indirect only if negotiated, never nested, never with NEXT,
                # a whole number of descriptors.
                if not self.indirect or in_indirect or d.flags & VRING_DESC_F_NEXT:
                    return -EINVAL
                if d.len == 0 or d.len % sizeof(vring_desc):
                    return -EINVAL
                table = <vring_desc *>self.mem.gpa_to_host(d.addr, d.len)
                if table == NULL:
                    return -EINVAL
                table_len = d.len // sizeof(vring_desc)
                idx = 0
                seen = 0
                in_indirect = True
                continue
            # Section 2.7.5.3.1 forbids drivers chains longer than the queue size, and an
            # indirect table may hold 2^28 entries: a chain is bounded here, but at the queue
            # size or CHAIN_DESCS_FLOOR, whichever is larger, because Linux's virtio core
            # (virtio_ring.c) lays requests longer than a small queue into one indirect table
            # (a 1 MiB FUSE WRITE is 258 descriptors, and QEMU's queue size defaults to 128).
            total += 1
            if total > self.num and total > CHAIN_DESCS_FLOOR:
                return -EINVAL
            if d.len:
                n = self.chain.nin + self.chain.nout
                if d.flags & VRING_DESC_F_WRITE:
                    n = self.mem.gpa_to_iov(d.addr, d.len, iov + n, MAX_IOV - n)
                    if n < 0:
                        return n
                    self.chain.nout += n
                    self.chain.out_len += d.len
                else:
                    # Section 2.7.4.2: readable descriptors come before writable ones.
                    if self.chain.nout:
                        return -EINVAL
                    n = self.mem.gpa_to_iov(d.addr, d.len, iov + n, MAX_IOV - n)
                    if n < 0:
                        return n
                    self.chain.nin += n
                    self.chain.in_len += d.len
            if not d.flags & VRING_DESC_F_NEXT:
                return 0
            idx = d.next

    cdef void _push_used(self, uint16_t head, uint32_t length) noexcept nogil:
        """Queue one used element.  READ and WRITE replies are published (with one
        notification check) every PUBLISH_BATCH replies and whenever the worker is about to
        wait or take the GIL.  Any other reply is published at once (a quick op finishes
        sooner than a guest wakes up: holding it back starves the guest's ring, which takes
        what it finds there).  The guest is woken for it at once, or, while its wake-ups
        keep taking the worker's CPU (``_adapt_notify``), every PUBLISH_BATCH replies and
        when the worker is about to wait: there a wake-up per reply costs more than the
        reply."""
        cdef bint data = self.cur_opcode == FUSE_READ or self.cur_opcode == FUSE_WRITE
        if not data and self.npend == 0:
            pthread_mutex_lock(&self.lock.m)
            self._push_used_locked(head, length)
            self.unsignalled += 1
            if self.unsignalled >= self.notify_every:
                self._notify_locked()
            pthread_mutex_unlock(&self.lock.m)
            return
        self.pend_heads[self.npend] = head
        self.pend_lens[self.npend] = length
        self.npend += 1
        if self.npend == PUBLISH_BATCH or not data:
            self._flush_used()

    cdef void _flush_used(self) noexcept nogil:
        """Publish the queued used elements and check, once, whether the guest wants to be
        woken for what was published since the last check."""
        cdef uint32_t i
        if self.npend == 0 and self.unsignalled == 0:
            return
        pthread_mutex_lock(&self.lock.m)
        for i in range(self.npend):
            self._push_used_locked(self.pend_heads[i], self.pend_lens[i])
        self._notify_locked()
        pthread_mutex_unlock(&self.lock.m)
        self.npend = 0

    cdef void _push_used_locked(self, uint16_t head, uint32_t length) noexcept nogil:
        cdef uint8_t *elem = self.used + 4 + 8 * <uint32_t>(self.used_idx % self.num)
        cdef uint32_t id32 = head
        memcpy(elem, &id32, 4)
        memcpy(elem + 4, &length, 4)
        fastvfs_release()
        self.used_idx += 1
        fastvfs_store16(self.used + 2, self.used_idx)
        self.requests += 1

    cdef void _notify_locked(self, bint by_worker=True) noexcept nogil:
        """Signal the call eventfd unless the driver suppressed it (section 2.7.7/2.7.10)."""
        cdef uint16_t used_event, old, new = self.used_idx
        cdef bint need
        cdef uint64_t one = 1
        self.unsignalled = 0
        fastvfs_full_barrier()
        if self.event_idx:
            old = self.signalled_used
            if self.signalled_used_valid and old == new:
                return
            used_event = fastvfs_load16(self.avail + 4 + 2 * <uint32_t>self.num)
            need = (not self.signalled_used_valid or
                    <uint16_t>(new - used_event - 1) < <uint16_t>(new - old))
            self.signalled_used = new
            self.signalled_used_valid = True
        else:
            need = not (fastvfs_load16(self.avail) & VRING_AVAIL_F_NO_INTERRUPT)
        if need and self.call_fd >= 0:
            c_write(self.call_fd, &one, 8)
            if by_worker:               # the worker's own wake-ups steer _adapt_notify
                self._wakes += 1
                if self._wakes == WAKE_SAMPLE:
                    self._adapt_notify()

    cdef void _adapt_notify(self) noexcept nogil:
        """Every WAKE_SAMPLE wake-ups of the guest: when a quarter or more of them took this
        worker's CPU away (the guest's thread runs where the worker does, as on a host
        with more busy threads than CPUs), wake the guest only every PUBLISH_BATCH replies;
        otherwise at the first (it wakes elsewhere, and the sooner it refills the ring the
        less the worker waits)."""
        cdef rusage ru
        self._wakes = 0
        if getrusage(RUSAGE_THREAD, &ru) < 0:
            return
        self.notify_every = PUBLISH_BATCH if (ru.ru_nivcsw - self._nivcsw) * 4 >= WAKE_SAMPLE \
            else 1
        self._nivcsw = ru.ru_nivcsw

    # -- replies -------------------------------------------------------------------------------

    cdef void _reply(self, uint64_t unique, int32_t error, const uint8_t *payload,
                     uint32_t length) noexcept nogil:
        """Write the reply into the popped chain's writable buffers and return the chain."""
        self._push_used(self.chain.head,
                        _write_reply(self.iov + self.chain.nin, self.chain.nout,
                                     self.chain.out_len, unique, error, payload, length))
        self._account(error)

    cdef inline void _account(self, int32_t error) noexcept nogil:
        if self.stats != NULL:
            _stats_record(self.stats, self.cur_opcode, error, _now_ns() - self.cur_start)

    # -- request handling ----------------------------------------------------------------------

    cdef int _serve_fast(self) noexcept nogil:
        """Serve the popped chain if C can: 1 done, 0 it needs the Python engine."""
        cdef uint32_t hlen, opcode
        cdef uint64_t unique
        cdef uint64_t got
        cdef int rc = self._walk()
        got = _gather(self.iov, self.chain.nin, 0, self.hdr, IN_HEADER_SIZE + WRITE_IN_SIZE)
        # The error reply of a malformed chain carries the request's unique whenever the
        # readable part held it (fuse_in_header bytes 8 to 15), even if the rest is missing.
        unique = 0
        if got >= UNIQUE_END:
            memcpy(&unique, self.hdr + 8, 8)
        if rc < 0 or got < IN_HEADER_SIZE:
            # A buffer outside guest RAM (such as a DAX window address: the window is not in
            # the memory table) gets EFAULT, any other malformed chain EINVAL.
            self.bad_chains += 1
            self._reply(unique, rc if rc < 0 else -EINVAL, NULL, 0)
            return 1
        memcpy(&hlen, self.hdr, 4)
        memcpy(&opcode, self.hdr + 4, 4)
        self.cur_opcode = opcode
        # Never trust fuse_in_header.len over the buffers really given.
        if hlen < IN_HEADER_SIZE or hlen > self.chain.in_len:
            self.bad_chains += 1
            self._reply(unique, -EINVAL, NULL, 0)
            return 1
        if self.fast_io:
            if opcode == FUSE_READ and hlen >= IN_HEADER_SIZE + READ_IN_SIZE:
                self._do_read(unique)
                return 1
            if opcode == FUSE_WRITE and hlen >= IN_HEADER_SIZE + WRITE_IN_SIZE and \
                    not self.read_only:
                self._do_write(unique, hlen)
                return 1
            if opcode == FUSE_GETATTR and self.inodes is not None:
                return self._do_getattr(unique)
            if opcode == FUSE_LOOKUP and self.inodes is not None:
                return self._do_lookup(unique, hlen)
            if opcode == FUSE_FSYNC and self.uring != NULL and hlen >= IN_HEADER_SIZE + 16:
                # Handed to the kernel's workers through the ring: the queue goes on serving
                # while the file system syncs.
                return self._do_fsync(unique)
            if opcode == FUSE_FALLOCATE and hlen >= IN_HEADER_SIZE + FALLOCATE_IN_SIZE and \
                    not self.read_only:
                return self._do_fallocate(unique)
            if opcode == FUSE_RELEASE and hlen >= IN_HEADER_SIZE + 24:
                return self._do_release(unique)
            if self.handles.lock_fds_open == 0:
                # With no lock descriptors held, closing and forgetting need nothing of the
                # engine's (a lock taken meanwhile on another queue is tied to its handle and
                # goes at that handle's RELEASE).
                if opcode == FUSE_FLUSH and hlen >= IN_HEADER_SIZE + 24:
                    self._do_flush(unique)
                    return 1
                if opcode == FUSE_FORGET and hlen >= IN_HEADER_SIZE + 8 and \
                        self.inodes is not None:
                    return self._do_forget(hlen)
                if opcode == FUSE_BATCH_FORGET and hlen >= IN_HEADER_SIZE + 8 and \
                        self.inodes is not None:
                    return self._do_batch_forget(hlen)
        return 0

    cdef int _do_getattr(self, uint64_t unique) noexcept nogil:
        """fuse_attr_out from statx of the node's O_PATH descriptor; the same bytes the Python
        engine would send (fastvfs.fuse.abi.pack_attr).  A node held by file handle without a
        cached descriptor is left to the engine (returns 0)."""
        cdef uint64_t nodeid
        cdef statx st
        cdef uint8_t out[ATTR_OUT_SIZE]
        cdef int rc
        cdef uint32_t zero = 0
        memcpy(&nodeid, self.hdr + 16, 8)
        cdef int fd = self.inodes.acquire(nodeid)
        if fd == -2:
            return 0
        if fd < 0:
            self._reply(unique, -ENOENT, NULL, 0)
            return 1
        rc = c_statx(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, &st)
        if rc < 0:
            rc = -errno
        self.inodes.release(nodeid)
        if rc < 0:
            self._reply(unique, rc, NULL, 0)
            return 1
        memcpy(out, &self.attr_valid, 8)
        memcpy(out + 8, &self.attr_valid_nsec, 4)
        memcpy(out + 12, &zero, 4)
        _pack_attr(&st, out + 16)
        self._reply(unique, 0, out, ATTR_OUT_SIZE)
        return 1

    cdef int _do_lookup(self, uint64_t unique, uint32_t hlen) noexcept nogil:
        """LOOKUP of an inode the node id table already knows: fuse_entry_out with one more
        lookup counted, the same bytes the engine would send.  A name it would refuse, a new
        inode, a mount point or any failure but ENOENT is left to the engine (returns 0)."""
        cdef char name[LOOKUP_NAME_MAX + 1]
        cdef uint32_t nlen = hlen - IN_HEADER_SIZE
        cdef size_t length
        cdef uint64_t parent
        cdef int64_t nodeid
        cdef uint8_t out[ENTRY_OUT_SIZE]
        if nlen > LOOKUP_NAME_MAX + 1:
            nlen = LOOKUP_NAME_MAX + 1
        if _gather(self.iov, self.chain.nin, IN_HEADER_SIZE, <uint8_t *>name, nlen) != nlen:
            return 0
        length = strnlen(name, nlen)
        if length == nlen:
            return 0                    # no NUL within NAME_MAX + 1 bytes
        memcpy(&parent, self.hdr + 16, 8)
        nodeid = _known_entry(self.inodes, parent, name, length, self.attr_valid,
                              self.attr_valid_nsec, out)
        if nodeid == -ENOENT:
            self._reply(unique, -ENOENT, NULL, 0)
            return 1
        if nodeid <= 0:
            return 0
        self._reply(unique, 0, out, ENTRY_OUT_SIZE)
        return 1

    cdef void _do_flush(self, uint64_t unique) noexcept nogil:
        """Close a duplicate of the handle's fd: the host file system's close-time hook, with
        the handle left open (what the engine does when no lock needs dropping)."""
        cdef uint64_t fh
        cdef int fd, dupfd, rc = 0
        memcpy(&fh, self.hdr + IN_HEADER_SIZE, 8)
        fd = self.handles.acquire(fh)
        if fd < 0:
            self._reply(unique, -EBADF, NULL, 0)
            return
        dupfd = dup(fd)
        if dupfd < 0 or c_close(dupfd) < 0:
            rc = -errno
        self.handles.release(fh)
        self._reply(unique, rc, NULL, 0)

    cdef int _do_fsync(self, uint64_t unique) noexcept nogil:
        cdef uint64_t fh
        cdef uint32_t flags
        cdef io_uring_sqe *sqe
        cdef int fd
        memcpy(&fh, self.hdr + IN_HEADER_SIZE, 8)
        memcpy(&flags, self.hdr + IN_HEADER_SIZE + 8, 4)
        fd = self.handles.acquire(fh)
        if fd < 0:
            self._reply(unique, -EBADF, NULL, 0)
            return 1
        sqe = self._drained_sqe(unique, fd, fh)
        if sqe == NULL:
            self.handles.release(fh)
            return 0
        io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC if flags & FUSE_FSYNC_FDATASYNC
                            else 0)
        self._drained(sqe)
        return 1

    cdef int _do_fallocate(self, uint64_t unique) noexcept nogil:
        """FALLOCATE (fuse_fallocate_in: fh, offset, length, mode): through the ring, after
        what was submitted before it, so the queue goes on serving while the file system
        allocates; fallocate(2) here when the queue has no ring or no room in it."""
        cdef uint64_t fh, offset, length
        cdef uint32_t mode
        cdef const uint8_t *body = self.hdr + IN_HEADER_SIZE
        cdef io_uring_sqe *sqe
        cdef int fd, rc = 0
        memcpy(&fh, body, 8)
        memcpy(&offset, body + 8, 8)
        memcpy(&length, body + 16, 8)
        memcpy(&mode, body + 24, 4)
        if offset > <uint64_t>INT64_MAX or length > <uint64_t>INT64_MAX:
            self._reply(unique, -EINVAL, NULL, 0)
            return 1
        fd = self.handles.acquire(fh)
        if fd < 0:
            self._reply(unique, -EBADF, NULL, 0)
            return 1
        if self.handles.cap_xattr[0]:
            rc = kill_mapped_capability(fd, self.handles.cap_xattr)
            if rc < 0:
                self.handles.release(fh)
                self._reply(unique, rc, NULL, 0)
                return 1
        sqe = self._drained_sqe(unique, fd, fh)
        if sqe != NULL:
            io_uring_prep_fallocate(sqe, fd, <int>mode, <int64_t>offset, <int64_t>length)
            self._drained(sqe)
            return 1
        if fallocate(fd, <int>mode, <int64_t>offset, <int64_t>length) < 0:
            rc = -errno
        self.handles.release(fh)
        self._reply(unique, rc, NULL, 0)
        return 1

    cdef int _do_release(self, uint64_t unique) noexcept nogil:
        """RELEASE in C of a file handle while no lock descriptors exist (an OFD or flock lock
        belongs to the guest's open file and goes with its RELEASE, which the engine handles);
        a directory handle (released by RELEASE as well as by RELEASEDIR, whatever the guest
        sends) goes to the engine too, whose file system frees its listing with it."""
        cdef uint64_t fh
        cdef int rc
        memcpy(&fh, self.hdr + IN_HEADER_SIZE, 8)
        if self.handles.is_directory(fh):
            return 0
        rc = self.handles.remove_fh_unless_locks(fh)
        if rc == 1:
            return 0
        self._reply(unique, rc, NULL, 0)
        return 1

    cdef int _do_forget(self, uint32_t hlen) noexcept nogil:
        cdef uint64_t nodeid, count
        if not self.inodes.dropped_room(1):
            return 0
        memcpy(&nodeid, self.hdr + 16, 8)
        memcpy(&count, self.hdr + IN_HEADER_SIZE, 8)
        self.inodes.forget_c(nodeid, count, True)
        self._push_used(self.chain.head, 0)   # FORGET has no reply
        self._account(0)
        return 1

    cdef int _do_batch_forget(self, uint32_t hlen) noexcept nogil:
        """BATCH_FORGET: only the entries really present are read (the count is the
        guest's word)."""
        cdef uint32_t count, i, room
        cdef uint64_t entry[2]
        memcpy(&count, self.hdr + IN_HEADER_SIZE, 4)
        room = (hlen - IN_HEADER_SIZE - 8) // 16
        if count > room:
            count = room
        if not self.inodes.dropped_room(count):
            return 0
        for i in range(count):
            if _gather(self.iov, self.chain.nin, IN_HEADER_SIZE + 8 + 16 * i,
                       <uint8_t *>entry, 16) != 16:
                break
            self.inodes.forget_c(entry[0], entry[1], True)
        self._push_used(self.chain.head, 0)
        self._account(0)
        return 1

    cdef void _do_read(self, uint64_t unique) noexcept nogil:
        cdef uint64_t fh, offset
        cdef uint32_t size
        cdef const uint8_t *body = self.hdr + IN_HEADER_SIZE
        memcpy(&fh, body, 8)
        memcpy(&offset, body + 8, 8)
        memcpy(&size, body + 16, 4)
        if offset > <uint64_t>INT64_MAX:
            self._reply(unique, -EINVAL, NULL, 0)
            return
        if self.chain.out_len < OUT_HEADER_SIZE:
            self._push_used(self.chain.head, 0)
            self._account(-EINVAL)
            return
        if size > self.max_io:
            size = self.max_io
        if size > self.chain.out_len - OUT_HEADER_SIZE:
            size = <uint32_t>(self.chain.out_len - OUT_HEADER_SIZE)
        cdef int fd = self.handles.acquire(fh)
        if fd < 0:
            self._reply(unique, -EBADF, NULL, 0)
            return
        cdef int n = _slice(self.iov + self.chain.nin, self.chain.nout, OUT_HEADER_SIZE, size,
                            self.scratch_iov)
        cdef int64_t done = -EAGAIN
        if self.uring != NULL and self._lone() and not self.handles.direct(fh):
            # Nothing else to overlap it with: a read the page cache can answer is cheaper
            # as a preadv2 than through the ring.  One that would block, or a file that does
            # not take preadv2 (a pipe: ESPIPE), goes there, and so do the next LONE_SKIP.
            done = _full_io(fd, self.scratch_iov, n, <int64_t>offset, size, False, RWF_NOWAIT)
            if done < 0:
                self.lone_skip = LONE_SKIP
            else:
                self.lone_reads += 1
        if done < 0:
            if self.uring != NULL and self._queue_io(unique, fd, fh, <int64_t>offset, size,
                                                     False, False):
                return
            done = _full_io(fd, self.scratch_iov, n, <int64_t>offset, size, False, 0)
        self.handles.release(fh)
        if done < 0:
            self._reply(unique, <int32_t>done, NULL, 0)
            return
        cdef uint8_t out[OUT_HEADER_SIZE]
        cdef uint32_t total = OUT_HEADER_SIZE + <uint32_t>done
        cdef int32_t zero = 0
        memcpy(out, &total, 4)
        memcpy(out + 4, &zero, 4)
        memcpy(out + 8, &unique, 8)
        _scatter(self.iov + self.chain.nin, self.chain.nout, 0, out, OUT_HEADER_SIZE)
        self._push_used(self.chain.head, total)
        self._account(0)

    cdef inline bint _lone(self) noexcept nogil:
        """The popped request is the only work there is: nothing in flight or prepared, no
        other request published, and no recent lone READ that would have blocked."""
        if self.lone_skip:
            self.lone_skip -= 1
            return False
        return self.nflight == 0 and self.nqueued == 0 and \
            fastvfs_load16(self.avail + 2) == self.last_avail_idx

    cdef void _do_write(self, uint64_t unique, uint32_t hlen) noexcept nogil:
        cdef uint64_t fh, offset
        cdef uint32_t size, write_flags
        cdef const uint8_t *body = self.hdr + IN_HEADER_SIZE
        memcpy(&fh, body, 8)
        memcpy(&offset, body + 8, 8)
        memcpy(&size, body + 16, 4)
        memcpy(&write_flags, body + 20, 4)
        if (offset > <uint64_t>INT64_MAX or size > self.max_io or
                size != hlen - IN_HEADER_SIZE - WRITE_IN_SIZE):
            self._reply(unique, -EINVAL, NULL, 0)
            return
        cdef int fd = self.handles.acquire(fh)
        cdef int rc
        if fd < 0:
            self._reply(unique, -EBADF, NULL, 0)
            return
        if size and self.handles.cap_xattr[0]:
            rc = kill_mapped_capability(fd, self.handles.cap_xattr)
            if rc < 0:
                self.handles.release(fh)
                self._reply(unique, rc, NULL, 0)
                return
        if self.uring != NULL and self.uring_writes and self._queue_io(
                unique, fd, fh, <int64_t>offset, size, True, write_flags & FUSE_WRITE_KILL_SUIDGID):
            return
        cdef int n = _slice(self.iov, self.chain.nin, IN_HEADER_SIZE + WRITE_IN_SIZE, size,
                            self.scratch_iov)
        cdef int64_t done = _full_io(fd, self.scratch_iov, n, <int64_t>offset, size, True, 0)
        if done > 0 and write_flags & FUSE_WRITE_KILL_SUIDGID:
            kill_suidgid(fd)
        self.handles.release(fh)
        if done < 0:
            self._reply(unique, <int32_t>done, NULL, 0)
            return
        cdef uint32_t out[2]
        out[0] = <uint32_t>done
        out[1] = 0
        self._reply(unique, 0, <uint8_t *>out, 8)

    # -- io_uring data path ----------------------------------------------------------------------

    cdef io_uring_sqe *_flight_sqe(self, int need) noexcept nogil:
        """A submission entry for the popped chain with room for ``need`` iovecs in the pool,
        or NULL (the caller then does the work synchronously)."""
        cdef io_uring_sqe *sqe
        if self.flight[self.chain.head].busy or self.pool_used + need > POOL_IOV:
            # A head still in flight (a broken or hostile driver published it again: finish
            # that request first, as the synchronous path would have), or a full pool.
            self._uring_flush()
            if self.pool_used + need > POOL_IOV:
                return NULL
        sqe = io_uring_get_sqe(self.uring)
        if sqe == NULL:
            self._uring_submit()
            sqe = io_uring_get_sqe(self.uring)
        return sqe

    cdef Flight *_flight_begin(self, uint64_t unique, int fd, uint64_t fh, int64_t offset,
                               uint32_t size, bint writing, bint kill) noexcept nogil:
        """Record the popped chain as in flight, its writable iovecs kept in the pool for the
        reply; data iovecs, if any, go in the pool from ``data_at``."""
        cdef Flight *f = &self.flight[self.chain.head]
        f.out_at = self.pool_used
        f.nout = self.chain.nout
        memcpy(self.pool + self.pool_used, self.iov + self.chain.nin,
               self.chain.nout * sizeof(iovec))
        self.pool_used += self.chain.nout
        f.data_at = self.pool_used
        f.ndata = 0
        f.unique = unique
        f.fh = fh
        f.fd = fd
        f.offset = offset
        f.size = size
        f.out_len = self.chain.out_len
        f.writing = writing
        f.kill = kill
        f.opcode = self.cur_opcode
        f.start_ns = self.cur_start
        f.busy = True
        self.nflight += 1
        self.nqueued += 1
        return f

    cdef io_uring_sqe *_drained_sqe(self, uint64_t unique, int fd, uint64_t fh) noexcept nogil:
        """For an operation without data (FSYNC, FALLOCATE) on handle ``fh`` (referenced, its
        ``fd``): a submission entry with the popped chain recorded in flight, or NULL (no
        ring, or no room: the caller does it another way).  Prepare it, then ``_drained``."""
        cdef io_uring_sqe *sqe
        if self.uring == NULL:
            return NULL
        sqe = self._flight_sqe(self.chain.nout)
        if sqe != NULL:
            self._flight_begin(unique, fd, fh, 0, 0, False, False)
        return sqe

    cdef inline void _drained(self, io_uring_sqe *sqe) noexcept nogil:
        """Finish a prepared ``_drained_sqe`` entry: it runs after everything submitted before
        it (the writes of the same burst included)."""
        io_uring_sqe_set_flags(sqe, IOSQE_IO_DRAIN)
        io_uring_sqe_set_data64(sqe, self.chain.head)

    cdef int _queue_io(self, uint64_t unique, int fd, uint64_t fh, int64_t offset, uint32_t size,
                       bint writing, bint kill) noexcept nogil:
        """Prepare the popped READ/WRITE as an io_uring read(v)/write(v) straight into or out
        of the chain's buffers; 1 when queued (the reply follows its completion), 0 when the
        caller must do it synchronously (no room)."""
        cdef int nin = self.chain.nin, nout = self.chain.nout
        cdef io_uring_sqe *sqe = self._flight_sqe(nout + (nin if writing else nout))
        cdef Flight *f
        cdef iovec *data
        if sqe == NULL:
            return 0
        f = self._flight_begin(unique, fd, fh, offset, size, writing, kill)
        data = self.pool + f.data_at
        if writing:
            f.ndata = _slice(self.iov, nin, IN_HEADER_SIZE + WRITE_IN_SIZE, size, data)
        else:
            f.ndata = _slice(self.iov + nin, nout, OUT_HEADER_SIZE, size, data)
        self.pool_used += f.ndata
        # One buffer: the plain opcodes skip importing an iovec; in registered guest memory,
        # the fixed ones skip pinning its pages too.
        cdef int buf_index = -1
        if f.ndata == 1 and self.nfixed:
            buf_index = self._fixed_index(<uintptr_t>data.iov_base, data.iov_len)
        if buf_index >= 0:
            self.fixed_ios += 1
        if buf_index >= 0 and writing:
            io_uring_prep_write_fixed(sqe, fd, data.iov_base, <unsigned>data.iov_len,
                                      <uint64_t>offset, buf_index)
        elif buf_index >= 0:
            io_uring_prep_read_fixed(sqe, fd, data.iov_base, <unsigned>data.iov_len,
                                     <uint64_t>offset, buf_index)
        elif writing and f.ndata == 1:
            io_uring_prep_write(sqe, fd, data.iov_base, <unsigned>data.iov_len, <uint64_t>offset)
        elif writing:
            io_uring_prep_writev(sqe, fd, data, f.ndata, <uint64_t>offset)
        elif f.ndata == 1:
            io_uring_prep_read(sqe, fd, data.iov_base, <unsigned>data.iov_len, <uint64_t>offset)
        else:
            io_uring_prep_readv(sqe, fd, data, f.ndata, <uint64_t>offset)
        io_uring_sqe_set_data64(sqe, self.chain.head)
        if self.nqueued >= SUBMIT_BATCH:
            self._uring_submit()
            self._uring_reap()
        return 1

    cdef inline int _fixed_index(self, uintptr_t start, uint64_t length) noexcept nogil:
        """The registered piece holding [start, start + length), or -1."""
        cdef uint32_t i
        for i in range(self.nfixed):
            if start >= self.fixed[i].start and start - self.fixed[i].start <= \
                    self.fixed[i].length and length <= self.fixed[i].length - (
                        start - self.fixed[i].start):
                return <int>i
        return -1

    cdef void _uring_submit(self) noexcept nogil:
        """Hand the prepared operations to the kernel (one system call for the batch)."""
        cdef int rc
        while self.nqueued:
            rc = io_uring_submit(self.uring)
            if rc >= 0:
                self.nqueued -= rc if <uint32_t>rc <= self.nqueued else self.nqueued
                if rc == 0:
                    break
            elif rc == -EINTR:
                continue
            else:
                # EBUSY/EAGAIN: completions must be reaped before more can be submitted.
                if self._uring_reap() == 0:
                    break

    cdef int _uring_reap(self) noexcept nogil:
        """Turn every available completion into its reply; returns how many.  Each batch's
        used elements are published under one lock, with one notification check."""
        cdef io_uring_cqe *cqes[REAP_BATCH]
        cdef uint32_t lengths[REAP_BATCH]
        cdef uint16_t heads[REAP_BATCH]
        cdef unsigned n, i, total = 0
        cdef uint64_t now = 0
        while True:
            n = io_uring_peek_batch_cqe(self.uring, cqes, REAP_BATCH)
            if n == 0:
                break
            if self.stats != NULL:
                now = _now_ns()
            for i in range(n):
                heads[i] = <uint16_t>cqes[i].user_data
                lengths[i] = self._complete_io(heads[i], cqes[i].res, now)
            io_uring_cq_advance(self.uring, n)
            pthread_mutex_lock(&self.lock.m)
            for i in range(n):
                self._push_used_locked(heads[i], lengths[i])
            self._notify_locked()
            pthread_mutex_unlock(&self.lock.m)
            total += n
        if self.nflight == 0:
            self.pool_used = 0
        return total

    cdef void _uring_flush(self) noexcept nogil:
        """Submit what is prepared and wait until nothing is in flight."""
        cdef io_uring_cqe *cqe
        cdef int rc
        self._uring_submit()
        self._uring_reap()
        self._flush_used()
        while self.nflight:
            if self.nqueued:
                self._uring_submit()
            rc = io_uring_wait_cqe(self.uring, &cqe)
            if rc < 0 and rc != -EINTR and rc != -EAGAIN:
                break
            self._uring_reap()

    cdef uint32_t _complete_io(self, uint16_t head, int32_t res, uint64_t now) noexcept nogil:
        """Write the reply of a finished READ/WRITE; returns its used length (the caller
        publishes it)."""
        cdef Flight *f = &self.flight[head]
        cdef int64_t done = res, more
        f.busy = False
        cdef int n
        cdef uint8_t out[OUT_HEADER_SIZE]
        cdef uint32_t total, wout[2]
        cdef int32_t zero = 0
        if res >= 0 and <uint32_t>res < f.size:
            # A short transfer: finish it as the synchronous path would (a read stops at EOF).
            if res > 0 or f.writing:
                n = _slice(self.pool + f.data_at, f.ndata, <uint64_t>res, f.size - <uint32_t>res,
                           self.scratch_iov)
                more = _full_io(f.fd, self.scratch_iov, n, f.offset + res, f.size - <uint32_t>res,
                                f.writing, 0)
                if more > 0:
                    done += more
                elif more < 0 and done == 0:
                    done = more
        if f.writing and done > 0 and f.kill:
            kill_suidgid(f.fd)
        self.handles.release(f.fh)
        if done < 0:
            total = _write_reply(self.pool + f.out_at, f.nout, f.out_len, f.unique,
                                 <int32_t>done, NULL, 0)
        elif f.writing:
            wout[0] = <uint32_t>done
            wout[1] = 0
            total = _write_reply(self.pool + f.out_at, f.nout, f.out_len, f.unique, 0,
                                 <uint8_t *>wout, 8)
        else:
            total = OUT_HEADER_SIZE + <uint32_t>done
            memcpy(out, &total, 4)
            memcpy(out + 4, &zero, 4)
            memcpy(out + 8, &f.unique, 8)
            _scatter(self.pool + f.out_at, f.nout, 0, out, OUT_HEADER_SIZE)
        if self.stats != NULL:
            _stats_record(self.stats, f.opcode, <int32_t>done if done < 0 else 0,
                          now - f.start_ns)
        self.nflight -= 1
        return total

    cdef int _serve_slow(self, handler) except -1:
        """Hand the request to the Python engine: ``handler(request, out_size)`` returns None
        (no reply, e.g. FORGET) or ``(error, payload)``; it must not raise."""
        cdef uint32_t hlen
        cdef uint64_t unique
        memcpy(&hlen, self.hdr, 4)
        memcpy(&unique, self.hdr + 8, 8)
        if hlen > SLOW_REQUEST_MAX:
            self._reply(unique, -EINVAL, NULL, 0)
            return 0
        request = PyBytes_FromStringAndSize(NULL, hlen)
        _gather(self.iov, self.chain.nin, 0, <uint8_t *>PyBytes_AS_STRING(request), hlen)
        out_size = self.chain.out_len - OUT_HEADER_SIZE if self.chain.out_len >= OUT_HEADER_SIZE else 0
        try:
            result = handler(request, out_size)
        except BaseException:
            result = (-EIO, b"")
        if result is None:
            self._push_used(self.chain.head, 0)
            self._account(0)
            return 0
        if type(result) is not tuple:
            # The engine answers later: ``result(pending)`` arranges for pending.complete().
            # Its latency is counted up to the hand-over (SETLKW waits can last forever).
            self._account(0)
            pending = self._defer(unique)
            try:
                result(pending)
            except BaseException:
                pending.complete(-EIO)
            return 0
        cdef int32_t error = result[0]
        payload = result[1]
        cdef const uint8_t[::1] view
        if not payload:
            with nogil:
                self._reply(unique, error, NULL, 0)
            return 0
        view = payload
        with nogil:
            self._reply(unique, error, &view[0], <uint32_t>view.shape[0])
        return 0

    cdef PendingReply _defer(self, uint64_t unique):
        cdef PendingReply pending = PendingReply.__new__(PendingReply)
        pending.out = <iovec *>malloc((self.chain.nout + 1) * sizeof(iovec))
        if pending.out == NULL:
            raise MemoryError()
        memcpy(pending.out, self.iov + self.chain.nin, self.chain.nout * sizeof(iovec))
        pending.nout = self.chain.nout
        pending.out_len = self.chain.out_len
        pending.head = self.chain.head
        pending.unique = unique
        pending.vq = self
        pending.mem = self.mem
        return pending

    # -- the loop ------------------------------------------------------------------------------

    def run(self, handler):
        """Serve the queue until ``stop``: sleep on the kick eventfd (and, with I/O in flight,
        on the io_uring) with the GIL released, drain the ring, notify.  Returns when the stop
        eventfd fires, once every I/O in flight has been answered."""
        engine = None
        if self.want_uring:
            engine = _open_uring(self.index, self.num, self.uring_writes)
            if engine is not None:
                self.uring = <io_uring *><uintptr_t>engine.ring_address
                if self.want_fixed:
                    self._register_memory(engine)
        try:
            self._run(handler)
        finally:
            with nogil:
                if self.uring != NULL:
                    self._uring_flush()
                self._flush_used()
            self.uring = NULL
            free(self.fixed)
            self.fixed = NULL
            self.nfixed = 0
            if engine is not None:
                engine.close()

    cdef _register_memory(self, engine):
        """Register guest memory with the ring, so a READ or WRITE whose data is one buffer
        goes as READ_FIXED/WRITE_FIXED: the kernel pinned its pages once, here, instead of
        per I/O.  Registering pins (and so populates) the whole of guest memory; where the
        kernel refuses (RLIMIT_MEMLOCK, too many pieces) the queue uses plain buffers."""
        cdef Py_ssize_t i
        pieces = self.mem.host_ranges()
        if not pieces or len(pieces) > MAX_FIXED:
            _log.warning("ring %d: %d pieces of guest memory, not registered with io_uring",
                         self.index, len(pieces))
            return
        try:
            engine.register_buffers(pieces)
        except OSError as exc:
            _log.warning("ring %d: guest memory not registered with io_uring (%s)",
                         self.index, exc)
            return
        self.fixed = <FixedBuf *>malloc(len(pieces) * sizeof(FixedBuf))
        if self.fixed == NULL:
            raise MemoryError()
        for i, (start, length) in enumerate(pieces):
            self.fixed[i].start = start
            self.fixed[i].length = length
        self.nfixed = <uint32_t>len(pieces)
        _log.debug("ring %d: %d pieces of guest memory registered with io_uring", self.index,
                   self.nfixed)

    @property
    def fixed_buffers(self):
        """How many pieces of guest memory the running queue has registered with its ring."""
        return self.nfixed

    cdef int _run(self, handler) except -1:
        """The worker loop.  It runs without the GIL and takes it only to hand a request to
        the Python engine: the fast path costs no interpreter work, however many requests.

        It sleeps in ``epoll_wait`` on the kick eventfd (edge-triggered: each kick is an event,
        so the counter is never read back, one system call less per wake-up), the stop eventfd
        and the io_uring's completion queue."""
        cdef epoll_event ev, events[3]
        cdef int rc, epfd, got, err = 0
        epfd = epoll_create1(EPOLL_CLOEXEC)
        if epfd < 0:
            raise OSError(errno, "epoll_create1")
        try:
            ev.data.u64 = 0
            ev.events = EPOLLIN | EPOLLET
            rc = epoll_ctl(epfd, EPOLL_CTL_ADD, self.kick_fd, &ev)
            if rc == 0:
                ev.events = EPOLLIN
                rc = epoll_ctl(epfd, EPOLL_CTL_ADD, self.stop_fd, &ev)
            if rc == 0 and self.uring != NULL:
                # Readable while completions wait, which only happens with I/O in flight.
                rc = epoll_ctl(epfd, EPOLL_CTL_ADD, self.uring.ring_fd, &ev)
            if rc < 0:
                raise OSError(errno, "epoll_ctl")
            with nogil:
                # Buffers may already be waiting (a ring restarted after GET_VRING_BASE).
                got = self._drain_fast()
                while True:
                    if got:
                        with gil:
                            self._serve_slow(handler)
                        self._flush_used()
                        got = self._drain_fast()
                        continue
                    if self.stopping:
                        break
                    if self.bad_heads + self.bad_avail != self.reported and \
                            _now_ns() - self.reported_ns >= REPORT_INTERVAL_NS:
                        with gil:
                            self._report()
                    if self.poll_us and self._busy_poll():
                        got = self._drain_fast()
                        continue
                    # Whatever woke it (a kick, completions, ``stop``, which sets ``stopping``
                    # before writing the stop eventfd), draining and the checks above follow.
                    if epoll_wait(epfd, events, 3, -1) < 0 and errno != EINTR:
                        err = errno
                        break
                    got = self._drain_fast()
        finally:
            c_close(epfd)
        if err:
            raise OSError(err, "epoll_wait on the kick eventfd failed")
        return 0

    cdef int _busy_poll(self) noexcept nogil:
        """Watch the avail index (and the io_uring's completions) for up to the poll window
        with guest notifications off, as vhost's busy polling does; 1 when work turned up.
        The window doubles (up to ``poll_us``) when polling pays and halves (down to an
        eighth) when it does not, so a queue that goes quiet wastes little."""
        cdef uint8_t *avail_event = self.used + 4 + 8 * <uint32_t>self.num
        cdef uint64_t deadline = _now_ns() + <uint64_t>self.poll_window * 1000
        cdef int found = 0
        if self.event_idx:
            # An event index just behind us: no kick is needed for anything published.
            fastvfs_store16(avail_event, <uint16_t>(self.last_avail_idx - 1))
        while not self.stopping:
            if self._avail_pending():
                found = 1
                break
            if self.nflight and io_uring_cq_ready(self.uring):
                found = 1
                break
            if _now_ns() >= deadline:
                break
            fastvfs_cpu_relax()
        if not found and self.event_idx:
            # Notifications back on, then one more look (section 2.7.10).
            fastvfs_store16(avail_event, self.last_avail_idx)
            fastvfs_full_barrier()
            found = self._avail_pending()
        if found:
            self.poll_window = self.poll_window * 2 if self.poll_window * 2 < self.poll_us \
                else self.poll_us
        else:
            self.poll_window = self.poll_window // 2 if self.poll_window // 2 > self.poll_us // 8 \
                else (self.poll_us // 8 if self.poll_us >= 8 else 1)
        return found

    cdef int _drain_fast(self) noexcept nogil:
        """Serve what the fast path can, until the ring is empty (returns 0, everything
        published and the guest notified) or a request needs the Python engine (returns 1 with
        it popped; the I/O the guest sent before it has been answered first)."""
        while not self.stopping:
            if self._pop() <= 0:
                break
            if not self._serve_fast():
                if self.nflight:
                    self._uring_flush()
                self._flush_used()
                return 1
        if self.uring != NULL:
            self._uring_submit()
            self._uring_reap()
        self._flush_used()
        return 0

    def stop(self):
        """Ask ``run`` to return; the caller joins the thread and then reads last_avail_idx."""
        cdef uint64_t one = 1
        self.stopping = 1
        c_write(self.stop_fd, &one, 8)


cdef void _pack_attr(const statx *st, uint8_t *a) noexcept nogil:
    """struct fuse_attr (88 bytes) from statx, as fastvfs.fuse.abi.pack_attr packs it."""
    cdef uint32_t u32, flags = 0
    cdef uint64_t rdev, sec
    memcpy(a, &st.stx_ino, 8)
    memcpy(a + 8, &st.stx_size, 8)
    memcpy(a + 16, &st.stx_blocks, 8)
    sec = <uint64_t>st.stx_atime.tv_sec
    memcpy(a + 24, &sec, 8)
    sec = <uint64_t>st.stx_mtime.tv_sec
    memcpy(a + 32, &sec, 8)
    sec = <uint64_t>st.stx_ctime.tv_sec
    memcpy(a + 40, &sec, 8)
    memcpy(a + 48, &st.stx_atime.tv_nsec, 4)
    memcpy(a + 52, &st.stx_mtime.tv_nsec, 4)
    memcpy(a + 56, &st.stx_ctime.tv_nsec, 4)
    u32 = st.stx_mode
    memcpy(a + 60, &u32, 4)
    memcpy(a + 64, &st.stx_nlink, 4)
    memcpy(a + 68, &st.stx_uid, 4)
    memcpy(a + 72, &st.stx_gid, 4)
    rdev = makedev(st.stx_rdev_major, st.stx_rdev_minor)
    u32 = <uint32_t>(rdev & 0xffffffffUL)
    memcpy(a + 76, &u32, 4)
    memcpy(a + 80, &st.stx_blksize, 4)
    memcpy(a + 84, &flags, 4)


cdef int kill_mapped_capability(int fd, const char *name) noexcept nogil:
    """Remove the mapped security.capability ``name`` of ``fd``'s file, as
    fastvfs.fs.passthrough.kill_mapped_capability does: 0 when gone or never there, else
    -errno.  Asked first, as the kernel asks (security_inode_need_killpriv), so a file without
    it costs one fgetxattr and never takes the inode lock a removal takes."""
    if fgetxattr(fd, name, NULL, 0) < 0:
        return 0 if errno == ENODATA or errno == EOPNOTSUPP else -errno
    if fremovexattr(fd, name) < 0 and errno != ENODATA:
        return -errno
    return 0


cdef int kill_suidgid(int fd) noexcept nogil:
    """Clear setuid, and setgid where group-execute makes it one, as the kernel does when a
    caller without CAP_FSETID writes (HANDLE_KILLPRIV_V2: the guest leaves it to us; our own
    writes, made with CAP_FSETID, would keep the bits)."""
    cdef stat st
    cdef unsigned int mode
    if fstat(fd, &st) < 0:
        return -errno
    mode = st.st_mode & 0o7777
    if mode & S_ISUID:
        mode &= ~S_ISUID
    if mode & S_ISGID and mode & S_IXGRP:
        mode &= ~S_ISGID
    if mode != st.st_mode & 0o7777 and fchmod(fd, mode) < 0:
        return -errno
    return 0


cdef int64_t _full_io(int fd, iovec *iov, int cnt, int64_t offset, uint64_t size,
                      bint writing, int first_flags) noexcept nogil:
    """preadv/pwritev until ``size`` bytes moved, EOF, or an error (-errno).  A read's
    ``first_flags`` (RWF_NOWAIT) go with its first call only, and that call's failure is
    returned at once; the rest of a short first read is read without them."""
    cdef uint64_t done = 0
    cdef ssize_t n
    cdef int i = 0
    while done < size and i < cnt:
        if writing:
            n = pwritev(fd, iov + i, cnt - i, offset + done)
        elif first_flags:
            n = preadv2(fd, iov + i, cnt - i, offset + done, first_flags)
        else:
            n = preadv(fd, iov + i, cnt - i, offset + done)
        if n < 0:
            if (errno == EINTR or errno == EAGAIN) and not first_flags:
                continue
            if done:
                break
            return -errno
        first_flags = 0
        if n == 0:
            break
        done += n
        # Step past what moved; a short transfer leaves us inside one iovec.
        while i < cnt and <size_t>n >= iov[i].iov_len:
            n -= iov[i].iov_len
            i += 1
        if i < cnt and n:
            iov[i].iov_base = <uint8_t *>iov[i].iov_base + n
            iov[i].iov_len -= n
    return done
