# The hot path's structures and fields: the first file to read.  The extension is one module,
# fastvfs/ring/_ring.pyx, built from the fragments it includes (see there); this file declares
# every structure they share and every field of its classes.

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t

from fastvfs.fs._tables cimport HandleTable, NodeTable
from fastvfs.includes.fuse_kernel cimport (fuse_batch_forget_in, fuse_copy_file_range_in,
                                           fuse_fallocate_in,
                                           fuse_flush_in, fuse_forget_in, fuse_fsync_in,
                                           fuse_getxattr_in, fuse_lseek_in, fuse_setxattr_in,
                                           fuse_in_header, fuse_open_in, fuse_read_in,
                                           fuse_release_in, fuse_rename_in, fuse_rename2_in,
                                           fuse_setattr_in, fuse_write_in, fuse_lk_in,
                                           fuse_mknod_in, fuse_mkdir_in, fuse_create_in,
                                           fuse_link_in)
from fastvfs.includes.liburing cimport io_uring, io_uring_sqe
from fastvfs.includes.pthread cimport pthread_mutex_t
from fastvfs.includes.uio cimport iovec
from fastvfs.includes.virtio_ring cimport vring_avail, vring_desc, vring_used

include "consts.pxi"


# -- guest memory (guestmem.pxi) ------------------------------------------------------------

cdef struct Region:
    uint64_t gpa
    uint64_t size
    uint64_t uaddr
    uint8_t *host


cdef class MemoryTable:
    cdef Region regions[MAX_REGIONS]
    cdef int nregions
    cdef list maps          # the _Mapping of regions[i] at maps[i]

    cdef uint8_t *_to_host(self, uint64_t addr, uint64_t length, bint frontend) noexcept nogil
    cdef uint8_t *uaddr_to_host(self, uint64_t uaddr, uint64_t length) noexcept nogil
    cdef uint8_t *gpa_to_host(self, uint64_t gpa, uint64_t length) noexcept nogil
    cdef int gpa_to_iov(self, uint64_t gpa, uint64_t length, iovec *iov, int room) noexcept nogil


# -- the split ring (splitq.pxi): virtio 1.2 section 2.7, no FUSE ---------------------------

cdef struct SplitRing:
    vring_desc *desc
    vring_avail *avail
    vring_used *used
    uint16_t num
    uint16_t last_avail_idx         # GET_VRING_BASE reports it
    uint16_t used_idx
    uint16_t signalled_used         # used index at the last notification check (EVENT_IDX)
    bint signalled_used_valid
    bint event_idx                  # VIRTIO_RING_F_EVENT_IDX negotiated
    bint indirect                   # VIRTIO_RING_F_INDIRECT_DESC negotiated
    bint avail_bad                  # the avail index is out of reach right now
    uint64_t bad_heads              # avail entries naming no descriptor, skipped
    uint64_t bad_avail              # times the avail index ran more than ``num`` ahead
    uint32_t faults                 # faults found since the worker last signalled them
    uint64_t reported               # bad_heads + bad_avail when last logged
    uint64_t reported_ns


# One descriptor chain resolved into iovecs.  Directions as virtio names them (and QEMU's
# VirtQueueElement): "out" is driver to device (the request, device-readable), "in" device to
# driver (the reply, device-writable); section 2.7.4.2 puts every out buffer first.
cdef struct Chain:
    uint16_t head
    int out_num        # device-readable iovecs: iov[0:out_num]
    int in_num         # device-writable iovecs: iov[out_num:out_num + in_num]
    uint64_t out_len
    uint64_t in_len


# Replies written into guest memory but not yet in the used ring (used.pxi).
cdef struct UsedBatch:
    uint16_t heads[PUBLISH_BATCH]
    uint32_t lens[PUBLISH_BATCH]
    uint32_t n


# -- the popped request (fastops.pxi) -------------------------------------------------------

# The fixed part of a FUSE request, copied once out of guest memory (the guest may rewrite
# it meanwhile): fuse_in_header and the opcode's own header.
cdef union InArg:
    fuse_read_in read
    fuse_write_in write
    fuse_release_in release
    fuse_flush_in flush
    fuse_fsync_in fsync
    fuse_fallocate_in fallocate
    fuse_copy_file_range_in copy_file_range
    fuse_forget_in forget
    fuse_batch_forget_in batch_forget
    fuse_open_in open
    fuse_setattr_in setattr
    fuse_rename_in rename
    fuse_rename2_in rename2
    fuse_getxattr_in getxattr
    fuse_setxattr_in setxattr
    fuse_lseek_in lseek
    fuse_lk_in lk
    fuse_mknod_in mknod
    fuse_mkdir_in mkdir
    fuse_create_in create
    fuse_link_in link

cdef struct InHeaders:
    fuse_in_header h
    InArg arg

cdef struct Request:
    Chain chain
    InHeaders hdr
    uint32_t opcode                 # for statistics; 0 until the header is read
    uint64_t start_ns               # arrival, for statistics
    iovec *iov                      # the chain's iovecs (MAX_IOV)
    iovec *scratch                  # a slice of them, for one system call (MAX_IOV)


# -- statistics (stats.pxi) -----------------------------------------------------------------

cdef struct StatsBlock:
    uint64_t count[STATS_OPS]
    uint64_t errors[STATS_OPS]
    uint64_t total_ns[STATS_OPS]
    uint64_t hist[STATS_OPS][STATS_BUCKETS]
    uint64_t engine[STATS_OPS]    # of ``count``: those the Python engine answered


cdef class RequestStats:
    cdef StatsBlock *block
    cdef StatsBlock *rings[STATS_RINGS]

    cdef StatsBlock *ring_block(self, int index) except NULL


# -- io_uring I/O (uring_io.pxi) ------------------------------------------------------------

# A piece of guest memory registered with the queue's io_uring, buffer index = its position.
cdef struct FixedBuf:
    uintptr_t start
    uint64_t length


# A request handed to io_uring, indexed by its chain head (unique while in flight).
cdef struct Flight:
    uint64_t unique
    uint64_t fh
    uint64_t start_ns
    uint64_t in_len
    int64_t offset
    uint32_t size
    uint32_t opcode
    uint32_t in_at         # the chain's writable iovecs: pool[in_at:in_at + in_num]
    uint32_t data_at       # the data iovecs: pool[data_at:data_at + ndata]
    int in_num
    int ndata
    int fd
    bint writing
    bint kill
    bint busy              # in flight: a head published again meanwhile waits for it


cdef struct IoBatch:
    io_uring *uring                 # set while ``run`` serves with a ring
    Flight *flight                  # by chain head
    iovec *pool                     # the iovecs of the requests in flight (POOL_IOV)
    uint32_t pool_used
    uint32_t nflight
    uint32_t nqueued                # prepared, not yet submitted
    FixedBuf *fixed                 # the registered pieces while ``run`` serves with them
    uint32_t nfixed
    uint32_t lone_skip              # lone READs left to send to the ring after one would block
    uint64_t fixed_ios              # READ_FIXED/WRITE_FIXED submitted
    uint64_t lone_reads             # READs answered from the page cache without the ring
    uint64_t inline_syncs           # FSYNCs and FALLOCATEs done here, not through the ring


# -- the worker (worker.pxi) ----------------------------------------------------------------

# What the control plane decided for a ring (fixed while it runs).
cdef struct RingConfig:
    int index
    uint32_t max_io                 # largest READ/WRITE (FUSE_INIT's max_write/max_pages)
    uint64_t attr_valid             # attribute and entry timeout of C replies
    uint32_t attr_valid_nsec
    uint32_t poll_us                # busy-poll window ceiling (0: never poll)
    bint want_uring                 # READ through io_uring when the kernel allows
    bint uring_writes               # WRITE too
    bint read_only                  # WRITE and FALLOCATE are the engine's (it refuses them)
    bint want_fixed                 # register guest memory with the ring (--fixed-buffers)
    uint32_t open_flags             # fuse_open_out.open_flags of C replies (the cache mode's)
    uint32_t opendir_flags          # the same of OPENDIR's
    bint engine_pool                # the engine has a thread pool: no sync on this thread


cdef struct RingFds:
    int kick
    int call                        # swapped under the ring lock (SET_VRING_CALL)
    int err                         # likewise (SET_VRING_ERR)
    int stop


cdef class RingLock:
    cdef pthread_mutex_t m


cdef class PendingReply:
    cdef Virtqueue vq
    cdef MemoryTable mem
    cdef iovec *reply_iov
    cdef int in_num
    cdef uint64_t in_len
    cdef uint16_t head
    cdef readonly uint64_t unique
    cdef readonly bint done


cdef class Virtqueue:
    cdef RingConfig cfg
    cdef SplitRing ring
    cdef Request req
    cdef UsedBatch pub
    cdef IoBatch io
    cdef RingFds fds
    cdef RingLock lock
    cdef MemoryTable mem
    cdef HandleTable handles
    cdef NodeTable inodes           # None: GETATTR, LOOKUP and FORGET are the engine's
    cdef RequestStats stats_owner
    cdef StatsBlock *stats          # NULL: no statistics
    cdef volatile int stopping
    cdef bint fast_io               # between FUSE_INIT and the session's end
    cdef uint32_t poll_window       # current busy-poll window, between poll_us/8 and poll_us
    cdef uint64_t _bad_chains
    cdef bint _retired
    cdef Virtqueue _successor

    cdef void _signal_error(self) noexcept nogil
    cdef void _report(self)
    cdef void _reply(self, int32_t error, const void *payload, uint32_t length) noexcept nogil
    cdef void _account(self, int32_t error) noexcept nogil
    cdef int _pop(self) noexcept nogil
    cdef int _run(self, handler) except -1
    cdef int _drain_fast(self) noexcept nogil


# How a fast operation is served (fastops.pxi): 1 answered (or in flight), 0 for the engine.
ctypedef int (*fast_op)(Virtqueue vq) noexcept nogil

cdef struct FastOp:
    fast_op serve
    uint32_t arg_size               # the opcode's header must be there in full
    uint32_t needs                  # NEEDS_* (fastops.pxi)
