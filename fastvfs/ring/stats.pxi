# Request statistics: per-opcode counts, errors, latency histograms and how many of them the
# Python engine answered, one block per ring written only by its worker.

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


cdef class RequestStats:
    """Per-opcode request counts, errors and latency histograms (bucket ``b`` holds latencies
    in [2**b, 2**(b+1)) ns), for every queue of a device and the /dev/fuse transport.

    Each ring index has a block of its own, written only by the thread serving that ring (no
    locked instructions on the hot path); requests counted from elsewhere go to a shared block
    with atomic adds.  :meth:`snapshot` sums them (each counter read atomically)."""

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
        """``{opcode: (count, errors, total_ns, [bucket counts], engine)}`` for opcodes seen;
        ``engine``: how many of ``count`` the Python engine answered (the rest, C)."""
        cdef int op, b, i
        cdef StatsBlock *blk
        out = {}
        blocks = [<uintptr_t>self.block] + [<uintptr_t>self.rings[i] for i in range(STATS_RINGS)
                                             if self.rings[i] != NULL]
        for op in range(STATS_OPS):
            n = errors = total = engine = 0
            hist = [0] * STATS_BUCKETS
            for addr in blocks:
                blk = <StatsBlock *><uintptr_t>addr
                n += fastvfs_load64(&blk.count[op])
                errors += fastvfs_load64(&blk.errors[op])
                total += fastvfs_load64(&blk.total_ns[op])
                engine += fastvfs_load64(&blk.engine[op])
                for b in range(STATS_BUCKETS):
                    hist[b] += fastvfs_load64(&blk.hist[op][b])
            if n:
                out[op] = (n, errors, total, hist, engine)
        return out


cdef StatsBlock *_no_block() except NULL:
    raise ValueError("ring index out of range for statistics")
