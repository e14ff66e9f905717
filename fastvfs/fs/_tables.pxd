# The file system's C face, cimported by the hot path (fastvfs.ring): the table of file
# handles and node ids both sides share, and the helpers of every operation the hot path
# serves itself (attribute packing, known-entry lookup, kill-suid/sgid, the mapped capability).
# Each exists once, here; fs/passthrough.py calls the same code through the Python wrappers of
# fastvfs/fs/_tables.pyx.

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

from fastvfs.includes.fuse_kernel cimport fuse_attr, fuse_entry_out
from fastvfs.includes.pthread cimport pthread_mutex_t
from fastvfs.includes.statx cimport statx

cdef enum:
    # Node ids the hot path may drop (FORGET) before the file system has pruned its records.
    DROPPED_MAX = 1024
    LOOKUP_NAME_MAX = 255


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


# How the file system opens an existing node for I/O (PassthroughFs.open, _open_flags,
# _reopen), for the hot path to open one the same way (``open_node``).  Set once by the file
# system on its handle table (``set_open_policy``) before any queue runs; until then
# ``enabled`` is False and OPEN is the engine's.
cdef struct OpenPolicy:
    bint enabled
    int flags_allowed       # PassthroughFs.open_flags_allowed: the guest flags passed on
    bint writeback          # write-only opened read-write, O_APPEND dropped (``_open_flags``)
    uint64_t fd_budget      # PassthroughFs.fd_budget: beyond it, the engine answers EMFILE
    int proc_dir            # names ``proc_prefix`` + "N" relative to it (fastvfs.procfd):
    char proc_prefix[16]    #   AT_FDCWD and "/proc/self/fd/" or "", or a chroot's proc fd


cdef class HandleTable:
    cdef HandleSlot *slots
    cdef uint32_t *buckets
    cdef uint32_t nbuckets
    cdef uint32_t capacity
    cdef uint32_t free_hint
    cdef pthread_mutex_t lock
    cdef readonly uint32_t count
    # Descriptors the file system holds for POSIX/flock locks (kept up to date by it through
    # ``set_lock_fds``, under the mutex): while there are any, FLUSH, RELEASE and FORGET go to
    # the engine, which drops them.  The hot path reads it through ``lock_fds``.
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
    # Descriptors the file system holds besides this table's slots, counted against the
    # guest's descriptor budget (PassthroughFs.fds_held): on the handle table its directory
    # handles' records, on the node id table its mount descriptors (``set_fds_other``).
    cdef readonly uint32_t fds_other
    # Set on the handle table only (``set_open_policy``).
    cdef OpenPolicy open_policy

    # Slots (mutex held).
    cdef int64_t _take_slot(self, int fd) noexcept nogil
    cdef int _reclaim_locked(self, uint64_t idx) noexcept nogil
    cdef void _reclaim(self, uint64_t idx) noexcept nogil
    cdef int _kill(self, uint64_t fh) noexcept nogil
    cdef void _unlink_key(self, uint64_t idx) noexcept nogil
    cdef int64_t _find_key(self, uint64_t dev, uint64_t ino, uint64_t mnt) noexcept nogil
    cdef void _link_key(self, uint64_t idx, uint64_t dev, uint64_t ino, uint64_t mnt) noexcept nogil
    cdef void _clock_push(self, uint32_t idx) noexcept nogil
    cdef void _cache_locked(self, uint32_t idx) noexcept nogil
    cdef void _evict_locked(self) noexcept nogil
    cdef int64_t _id_of(self, int64_t idx) noexcept nogil
    cdef int _drop_locked(self, uint64_t fh) noexcept nogil
    cdef bint _ref(self, uint64_t fh) noexcept nogil

    # The hot path's verbs: no GIL, no lock but the table's leaf mutex.
    cdef int acquire(self, uint64_t fh) noexcept nogil
    cdef void release(self, uint64_t fh) noexcept nogil
    cdef int64_t lookup_key(self, uint64_t dev, uint64_t ino, uint64_t mnt) noexcept nogil
    cdef bint direct(self, uint64_t fh) noexcept nogil
    cdef bint is_directory(self, uint64_t fh) noexcept nogil
    cdef uint64_t mount_of(self, uint64_t fh) noexcept nogil
    cdef int remove_fh(self, uint64_t fh) noexcept nogil
    cdef int remove_fh_unless_locks(self, uint64_t fh) noexcept nogil
    cdef bint dropped_room(self, uint32_t n) noexcept nogil
    cdef bint forget_c(self, uint64_t nodeid, uint64_t count, bint note) noexcept nogil


cdef void pack_attr(const statx *st, fuse_attr *a) noexcept nogil
cdef int64_t known_entry(HandleTable inodes, uint64_t parent, const char *name, size_t length,
                         uint64_t valid, uint32_t valid_nsec, fuse_entry_out *out) noexcept nogil
cdef int kill_mapped_capability(int fd, const char *name) noexcept nogil
cdef int kill_suidgid(int fd) noexcept nogil
cdef int flush_fd(int fd) noexcept nogil
cdef int open_node(HandleTable handles, HandleTable inodes, uint64_t nodeid, int flags,
                   uint64_t *fh) noexcept nogil
cdef int chmod_node(HandleTable handles, int fd, uint32_t mode) noexcept nogil
