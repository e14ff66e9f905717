# The file system's C face, cimported by the hot path (fastvfs.ring): the two tables both sides
# share (HandleTable: the guest's open files and directories; NodeTable: its node ids) and the
# helpers of every operation the hot path serves itself (attribute packing, known-entry lookup,
# kill-suid/sgid, the mapped capability, FLUSH, opening a node, the rule for names and their
# removal and renaming, reading a node's extended attributes, changing its mode, owner and
# size).  Each exists once, here;
# fs/passthrough.py calls the same code through the Python methods and wrappers of
# fastvfs/fs/_tables.pyx, whose fragments (fastvfs/fs/tables/*.pxi) hold the bodies.

cimport cython
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from fastvfs.includes.fcntl cimport fastvfs_file_handle
from fastvfs.includes.fuse_kernel cimport fuse_attr, fuse_entry_out, fuse_file_lock
from fastvfs.includes.pthread cimport pthread_mutex_t
from fastvfs.includes.statx cimport statx

cdef enum:
    INDEX_BUCKETS_MIN = 1024  # the node id table's key index when it is made
    CLOCK_SIZE_MIN = 16       # the descriptor cache's clock ring, at least (and 2 x its bound)
    LOOKUP_NAME_MAX = 255
    XATTR_NAME_MAX = 255  # the longest attribute name (linux/limits.h); longer is ERANGE
    TARGET_MAX = 4095     # the longest symlink target (PATH_MAX with its NUL); longer is EINVAL


# -- slots: what every table's entry starts with (tables/slots.pxi) ----------------------------

cdef struct Slot:
    uint64_t state        # atomic: generation << 32 | LIVE | BUSY | refs (includes/handle_state)
    int fd                # -1 for a node held by file handle whose descriptor is not cached
    bint in_use           # guarded by the table mutex, as is the rest of an entry


cdef class SlotTable:
    """The slot machinery both tables share: entries named generation << 32 | slot + 1, taken
    and dropped under a leaf mutex, referenced and released without a lock.  ``mem`` holds
    ``capacity`` entries of ``stride`` bytes, each a leaf table's struct starting with a
    ``Slot``."""
    cdef char *mem
    cdef size_t stride
    cdef uint32_t capacity
    cdef uint32_t free_hint
    cdef pthread_mutex_t lock
    cdef readonly uint32_t count
    # Descriptors the file system holds besides this table's slots, counted against the
    # guest's descriptor budget (PassthroughFs.fds_held): on the handle table its directory
    # handles' records, on the node id table the descriptors of mounts it opens handles on.
    cdef readonly uint32_t fds_other

    cdef int _alloc(self, uint32_t capacity, size_t stride) except -1
    # Mutex held.
    cdef int64_t _take_slot(self, int fd) noexcept nogil
    cdef int _reclaim_locked(self, uint64_t idx) noexcept nogil
    cdef int _kill(self, uint64_t fh) noexcept nogil
    cdef int _drop_locked(self, uint64_t fh) noexcept nogil
    cdef int64_t _id_of(self, int64_t idx) noexcept nogil
    # No lock, or the leaf mutex taken inside.
    cdef bint _live(self, uint64_t fh) noexcept nogil
    cdef void _reclaim(self, uint64_t idx) noexcept nogil
    cdef void _drop_all(self) noexcept nogil

    # The hot path's verbs: no GIL, no lock but the table's leaf mutex.
    cdef bint _ref(self, uint64_t fh) noexcept nogil
    cdef int acquire(self, uint64_t fh) noexcept nogil
    cdef void release(self, uint64_t fh) noexcept nogil
    cdef int remove_fh(self, uint64_t fh) noexcept nogil


# -- open files and directories (tables/handles.pxi) ------------------------------------------

# A directory's listing as FUSE sends it (tables/dirs.pxi): ``records`` holds one struct
# fuse_dirent per entry (padded to 8 bytes), entry i at records[starts[i]:starts[i + 1]] with
# offset cookie i + 1; "." and ".." come first.  Shared by its handle and the requests reading
# it, freed with the last (``refs``), after the handle table's mutex is let go.  While a handle
# holds it, it is in the table's list of held listings, least recently read first (``older``,
# ``newer``; ``slot`` names the handle's entry); once unreferenced, ``older`` chains it to the
# listings waiting to be freed.  All of it but the records is guarded by the mutex.
cdef struct DirListing:
    uint8_t *records
    size_t used
    size_t cap
    uint32_t *starts
    uint32_t count
    uint32_t starts_cap
    uint32_t refs
    uint32_t slot
    DirListing *older
    DirListing *newer


cdef struct HandleSlot:
    Slot s
    bint direct           # opened O_DIRECT (a read of it is never a page-cache copy)
    bint directory        # an OPENDIR handle, counted in ``fds_other`` while live
    DirListing *listing   # a directory handle's listing being paged through, or NULL


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


# -- lock descriptions (tables/locks.pxi) --------------------------------------------------------

cdef enum:
    LOCK_BUCKETS = 256
    # What a lock description is for (its key is node id, lock owner, kind).
    LOCK_POSIX = 1          # an owner's POSIX record locks, taken as OFD locks
    LOCK_FLOCK = 2          # an open file's flock(2) locks
    LOCK_QUESTION = 3       # the inode's F_GETLK questions by owners without locks; holds none

cdef struct LockRange:      # a POSIX lock a description holds, start and end inclusive
    uint64_t start
    uint64_t end
    int type

cdef struct LockDesc:
    LockDesc *next          # the bucket's chain, then the list of those to free
    uint64_t nodeid
    uint64_t owner
    int kind
    int fd                  # replaced by a write upgrade, under ``mutex``
    bint writable
    int refs                # requests using ``fd`` (locks_mutex)
    bint dropped            # out of the table: closed by its last user (locks_mutex)
    uint32_t pid            # the guest process of the owner's last lock (locks_mutex)
    LockRange *ranges       # sorted, merged (written under ``mutex`` and locks_mutex)
    uint32_t nranges
    uint64_t *fhs           # the guest handles its locks went through (locks_mutex)
    uint32_t nfhs
    uint32_t fhs_cap
    pthread_mutex_t mutex   # orders the owner's lock calls (fcntl, ``ranges``, ``fd``)


# How the session lets the hot path create names as the file system does (tables/creates.pxi),
# set by the file system at each FUSE_INIT (``set_create_session``): until then, and in a
# session whose creations carry security contexts (FUSE_SECURITY_CTX), ``enabled`` is False
# and MKDIR, MKNOD, SYMLINK and CREATE are the engine's.
cdef struct CreatePolicy:
    bint enabled
    bint dont_mask          # FUSE_DONT_MASK: the request's umask is applied by the host


@cython.final
cdef class HandleTable(SlotTable):
    cdef HandleSlot *files            # mem, typed
    # Descriptors held for POSIX and flock locks (tables/locks.pxi): their count, set under
    # the mutex whenever it changes; read without it by ``locks_flushed`` and the others.
    cdef readonly int lock_fds_open
    # The lock descriptions by node id, and their count (``lock_fds_open`` follows it under
    # the mutex).  locks_mutex is taken before the table's mutex, after a description's own.
    cdef pthread_mutex_t locks_mutex
    cdef LockDesc *lock_buckets[LOCK_BUCKETS]
    cdef int lock_count
    # The host name of the guest's security.capability when --xattrmap moves it (empty when
    # not): removed before a WRITE or FALLOCATE, as the kernel removes the real one
    # (PassthroughFs.cap_xattr, kill_mapped_capability).  Set once, before any queue runs.
    cdef char cap_xattr[256]
    cdef OpenPolicy open_policy       # set_open_policy
    cdef CreatePolicy create_policy   # set_create_session
    # The file system serves extended attributes under their own names (--xattr without
    # --xattrmap), each read through the node's /proc/self/fd name as the open policy names
    # it (fastvfs.procfd): the hot path may then answer GETXATTR and LISTXATTR
    # (``getxattr_node``).  Set once by the file system (``set_xattr_policy``) before any
    # queue runs.
    cdef bint xattrs_unmapped
    # ... and the session frames SETXATTR as fuse_setxattr_in without FUSE_SETXATTR_EXT, so
    # the hot path may answer SETXATTR and REMOVEXATTR (``setxattr_node``,
    # ``removexattr_node``).  Set with ``xattrs_unmapped``, and again at each INIT.
    cdef bint xattrs_settable
    # The listings directory handles hold (tables/dirs.pxi): their bytes together, the most
    # kept (beyond it the least recently read ones of other handles are dropped, taken again
    # if the guest pages on), the list of them from the least recently read to the most, and
    # the unreferenced ones to free once the mutex is let go.  Guarded by the mutex.
    cdef readonly uint64_t listing_bytes
    cdef uint64_t listing_bytes_max
    cdef DirListing *listings_oldest
    cdef DirListing *listings_newest
    cdef DirListing *listings_unfreed

    cdef bint direct(self, uint64_t fh) noexcept nogil
    cdef bint is_directory(self, uint64_t fh) noexcept nogil
    cdef int64_t _add_fd(self, int fd, bint directory, bint direct) noexcept nogil


# -- node ids (tables/nodes.pxi) ----------------------------------------------------------------

# The file handle a node held by file handle is reopened by (``NodeTable.fhs``, one per slot):
# struct file_handle's handle_type and handle_bytes, the bytes themselves in ``data`` when they
# fit (ext4, xfs, tmpfs: 8 to 16) or else in ``heap`` (malloc'd, up to MAX_HANDLE_SZ), and the
# index of its mount's descriptor in ``NodeTable.mount_fds``.
cdef enum:
    # LOOKUP of a plain name (``lookup_entry``) asks about the name with a statx first, so a
    # known inode needs no descriptor; after this many lookups in a row found new inodes it
    # opens the name first instead (the statx of a new inode's descriptor is needed anyway),
    # until one finds a known inode.  Not with file handles, whose nodes may have no
    # descriptor to trust a key match by.
    LOOKUP_OPEN_FIRST = 4
    NODE_HANDLE_INLINE = 24
    # Host mounts whose inodes may be held by file handle, each with a descriptor to open
    # handles on; inodes of mounts beyond are held by descriptor ("prefer") or refused
    # (EOPNOTSUPP, "mandatory").
    HANDLE_MOUNTS_MAX = 64

cdef struct NodeHandle:
    uint8_t *heap
    int type
    uint16_t size
    uint16_t mount
    uint8_t data[NODE_HANDLE_INLINE]


cdef struct NodeSlot:
    Slot s
    uint8_t recent        # atomic: a node held by file handle was used since the clock passed
    bint keyed            # in the key index
    bint by_handle        # held by file handle: ``fd`` is a cache entry (``fds_max``)
    bint queued           # in the cache's clock queue (kept across reuse)
    uint32_t hnext        # next slot + 1 in the key's hash chain, 0 at the end
    uint32_t mode         # st_mode when adopted (a node's file type never changes)
    uint64_t dev
    uint64_t ino
    uint64_t mnt
    uint64_t nlookup


@cython.final
cdef class NodeTable(SlotTable):
    cdef NodeSlot *nodes              # mem, typed
    # The key index: ``nbuckets`` chains (a power of two), doubled as the live entries come
    # to outnumber them, up to ``nbuckets_max`` (the capacity's power of two), so it costs
    # memory per inode known rather than per slot.
    cdef uint32_t *buckets
    cdef readonly uint32_t nbuckets
    cdef uint32_t nbuckets_max
    # Nodes held by file handle, those of them with a cached descriptor, and the bound on the
    # latter; the clock queue of cached slots (a ring of ``clock_size`` slot indexes, a power
    # of two, each slot at most once), sized to the bound and grown only when every entry
    # holds a descriptor still (``_clock_push``).  ``clock`` and ``fhs`` (each slot's handle)
    # exist once ``set_handle_mode`` allowed handles; ``handles_mandatory``: an inode without
    # one is refused, not held by descriptor.
    cdef readonly uint32_t handle_nodes
    cdef readonly uint32_t handle_fds
    cdef readonly uint32_t fds_max
    cdef uint32_t *clock
    cdef readonly uint32_t clock_size
    cdef uint32_t clock_head
    cdef uint32_t clock_len
    cdef NodeHandle *fhs
    cdef bint handles_mandatory
    # The host mounts handles are opened on: their mount ids (name_to_handle_at's) and a
    # descriptor of each (``_mount_fd``), appended under the mutex, never removed; the count
    # is also this table's ``fds_other``.
    cdef int mount_ids[HANDLE_MOUNTS_MAX]
    cdef int mount_fds[HANDLE_MOUNTS_MAX]
    cdef uint32_t nmounts
    # How many plain-name lookups in a row found a new inode, up to LOOKUP_OPEN_FIRST (read
    # and written with atomic loads and stores, by every thread that looks up: a hint).
    cdef public int new_lookups

    # Mutex held.
    cdef void _grow_index(self) noexcept nogil
    cdef void _unlink_key(self, uint64_t idx) noexcept nogil
    cdef int64_t _find_key(self, uint64_t dev, uint64_t ino, uint64_t mnt) noexcept nogil
    cdef void _link_key(self, uint64_t idx, uint64_t dev, uint64_t ino, uint64_t mnt) noexcept nogil
    cdef int _clock_resize(self, uint32_t n) noexcept nogil
    cdef void _clock_push(self, uint32_t idx) noexcept nogil
    cdef void _cache_locked(self, uint32_t idx) noexcept nogil
    cdef void _evict_locked(self) noexcept nogil
    cdef void _forget_handle_locked(self, uint64_t idx) noexcept nogil
    cdef bint _same_handle_locked(self, uint64_t idx, const fastvfs_file_handle *fh,
                                  uint32_t mount) noexcept nogil
    cdef int64_t _mount_index_locked(self, int mount_id) noexcept nogil

    cdef int _reopen(self, uint64_t nodeid) noexcept nogil
    cdef int64_t adopt_c(self, int fd, uint64_t dev, uint64_t ino, uint64_t mnt,
                         const fastvfs_file_handle *fh, uint32_t mount, uint32_t mode,
                         bint *created, bint *taken) noexcept nogil
    cdef int64_t lookup_key(self, uint64_t dev, uint64_t ino, uint64_t mnt) noexcept nogil
    cdef bint may_hold(self, uint64_t parent, uint64_t ino) noexcept nogil
    cdef int64_t add_mount(self, int mount_id, int mount_fd) noexcept nogil
    cdef int64_t mount_index(self, int mount_id) noexcept nogil

    cdef inline uint32_t mode_of(self, uint64_t nodeid) noexcept nogil:
        """The st_mode ``nodeid`` had when adopted, its file type for good (a reference held,
        so the slot is the node's)."""
        return self.nodes[(nodeid & 0xffffffffUL) - 1].mode

    cdef inline uint64_t ino_of(self, uint64_t nodeid) noexcept nogil:
        """The inode number ``nodeid`` was adopted with (its key's; a reference held)."""
        return self.nodes[(nodeid & 0xffffffffUL) - 1].ino
    cdef uint64_t mount_of(self, uint64_t nodeid) noexcept nogil
    cdef bint forget_c(self, uint64_t nodeid, uint64_t count) noexcept nogil


# -- helpers (tables/helpers.pxi) ---------------------------------------------------------------

cdef void pack_attr(const statx *st, fuse_attr *a) noexcept nogil
cdef void pack_entry(uint64_t nodeid, const statx *st, uint64_t valid, uint32_t valid_nsec,
                     fuse_entry_out *out) noexcept nogil
cdef int64_t lookup_entry(HandleTable handles, NodeTable inodes, uint64_t parent,
                          const char *name, size_t length, uint64_t listed_ino, uint64_t valid,
                          uint32_t valid_nsec, fuse_entry_out *out) noexcept nogil
cdef int kill_mapped_capability(int fd, const char *name) noexcept nogil
cdef int kill_suidgid(int fd) noexcept nogil
cdef int flush_fd(int fd) noexcept nogil
cdef int sync_dir_fs(int dirfd) noexcept nogil
cdef ssize_t copy_range(HandleTable handles, int fd_in, int64_t off_in, int fd_out,
                        int64_t off_out, size_t length) noexcept nogil


# -- opening and changing a node as the file system does (tables/opens.pxi) ---------------------

cdef int open_node(HandleTable handles, NodeTable inodes, uint64_t nodeid, int flags,
                   uint64_t *fh) noexcept nogil
cdef bint within_budget(HandleTable handles, NodeTable inodes) noexcept nogil


# -- names from the guest: removing and moving them as the file system does (tables/names.pxi) -

cdef int check_name(const char *name, size_t length) noexcept nogil
cdef int unlink_node(NodeTable inodes, uint64_t parent, const char *name, size_t length,
                     int flags) noexcept nogil
cdef int rename_node(NodeTable inodes, uint64_t parent, const char *name, size_t length,
                     uint64_t newparent, const char *newname, size_t newlength,
                     uint32_t flags) noexcept nogil


# -- creating names as the file system does (tables/creates.pxi) -------------------------------

cdef enum:
    # What ``make_node`` creates.
    MAKE_MKNOD = 0
    MAKE_MKDIR = 1
    MAKE_SYMLINK = 2
    MAKE_CREATE = 3

cdef int64_t make_node(HandleTable handles, NodeTable inodes, uint64_t parent, const char *name,
                       size_t length, int kind, uint32_t mode, uint32_t rdev,
                       const char *target, size_t target_length, int flags, uint32_t uid,
                       uint32_t gid, uint32_t umask, statx *st, uint64_t *fh) noexcept nogil
cdef int64_t link_node(HandleTable handles, NodeTable inodes, uint64_t nodeid,
                       uint64_t newparent, const char *newname, size_t length,
                       statx *st) noexcept nogil


# -- extended attributes as the file system reads them (tables/xattrs.pxi) ----------------------

cdef int getxattr_node(HandleTable handles, NodeTable inodes, uint64_t nodeid, const char *name,
                       void *value, size_t size, size_t *length) noexcept nogil
cdef int listxattr_node(HandleTable handles, NodeTable inodes, uint64_t nodeid, char *names,
                        size_t size, size_t *length) noexcept nogil
cdef int setxattr_node(HandleTable handles, NodeTable inodes, uint64_t nodeid, const char *name,
                       const void *value, size_t size, uint32_t flags) noexcept nogil
cdef int removexattr_node(HandleTable handles, NodeTable inodes, uint64_t nodeid,
                          const char *name) noexcept nogil


# -- a node's attributes changed as the file system changes them (tables/attrs.pxi) ------------

cdef enum:
    # What ``change_node`` changes.
    CHANGE_MODE = 1
    CHANGE_OWNER = 2
    CHANGE_SIZE = 4
    CHANGE_KILL_SUIDGID = 8     # FATTR_KILL_SUIDGID: the caller may not keep the bits

cdef int change_node(HandleTable handles, int ifd, uint32_t kind, int fd, uint32_t what,
                     uint32_t mode, uint32_t uid, uint32_t gid, int64_t size) noexcept nogil


# -- directory handles and their listings as the file system keeps them (tables/dirs.pxi) -----

cdef int dir_open(HandleTable handles, NodeTable inodes, uint64_t nodeid,
                  uint64_t *fh) noexcept nogil
cdef int dir_listing(HandleTable handles, NodeTable inodes, uint64_t nodeid, uint64_t fh,
                     uint64_t offset, DirListing **listing) noexcept nogil
cdef void dir_unref(HandleTable handles, DirListing *listing) noexcept nogil
cdef uint32_t dir_run(const DirListing *listing, uint64_t index, uint32_t size) noexcept nogil
cdef int dir_plus(const DirListing *listing, HandleTable handles, NodeTable inodes,
                   uint64_t parent, uint64_t *index, uint32_t size, uint64_t sec, uint32_t nsec,
                   uint8_t *buf, uint32_t *used) noexcept nogil


# -- the descriptions holding the guest's locks, GETLK and SETLK over them (tables/locks.pxi) ----

cdef int posix_getlk(HandleTable h, uint64_t nodeid, uint64_t owner, uint64_t fh,
                     uint64_t start, uint64_t end, uint32_t lock_type, int fresh,
                     bint writable, fuse_file_lock *out) noexcept nogil
cdef int posix_setlk(HandleTable h, uint64_t nodeid, uint64_t owner, uint64_t fh,
                     uint64_t start, uint64_t end, uint32_t lock_type, uint32_t pid,
                     int fresh, bint writable) noexcept nogil
cdef int flock_setlk(HandleTable h, uint64_t nodeid, uint64_t owner, uint64_t fh,
                     uint32_t lock_type, bint wait, int fresh, bint writable) noexcept nogil
cdef int lock_open_node(HandleTable h, NodeTable inodes, uint64_t nodeid, int kind,
                        uint32_t lock_type, int *fd, bint *writable) noexcept nogil
cdef void locks_flushed(HandleTable h, uint64_t nodeid, uint64_t owner) noexcept nogil
cdef void locks_flock_unlocked(HandleTable h, uint64_t nodeid, uint64_t owner) noexcept nogil
cdef void locks_released(HandleTable h, uint64_t fh) noexcept nogil
cdef void locks_forgotten(HandleTable h, uint64_t nodeid) noexcept nogil
