# GCC/Clang __atomic built-ins (GCC 12) as the hot path uses them: ring memory ordering, the
# guest-shared 16-bit ring indexes, and the statistics counters.

from libc.stdint cimport uint16_t, uint64_t

cdef extern from *:
    """
    /* Ring memory ordering (virtio 1.2 section 2.7.13): read the avail index, then an acquire
       fence before reading ring entries and descriptors; a release fence between writing a used
       element and publishing the used index; a full fence between publishing (used index or
       avail_event) and reading the driver's notification suppression fields. */
    #define fastvfs_acquire() __atomic_thread_fence(__ATOMIC_ACQUIRE)
    #define fastvfs_release() __atomic_thread_fence(__ATOMIC_RELEASE)
    #define fastvfs_full_barrier() __atomic_thread_fence(__ATOMIC_SEQ_CST)
    #define fastvfs_load16(p) (*(volatile uint16_t *)(p))
    #define fastvfs_store16(p, v) (*(volatile uint16_t *)(p) = (uint16_t)(v))
    /* Statistics counters are bumped by several queue threads and read by the stats thread:
       relaxed atomic adds, no ordering needed between them. */
    #define fastvfs_add64(p, v) __atomic_fetch_add((uint64_t *)(p), (uint64_t)(v), __ATOMIC_RELAXED)
    #define fastvfs_load64(p) __atomic_load_n((uint64_t *)(p), __ATOMIC_RELAXED)
    /* A counter with one writer (a queue's own block): no locked instruction, and a reader
       on another thread still sees whole values. */
    #define fastvfs_inc64(p, v) __atomic_store_n((uint64_t *)(p), \
        __atomic_load_n((uint64_t *)(p), __ATOMIC_RELAXED) + (uint64_t)(v), __ATOMIC_RELAXED)
    /* An int flag handed between two threads: release store, acquire load. */
    #define fastvfs_load_int(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
    #define fastvfs_store_int(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
    #define fastvfs_cpu_relax() __builtin_ia32_pause()
    static inline unsigned fastvfs_log2(uint64_t v) { return v ? 63u - (unsigned)__builtin_clzll(v) : 0u; }
    """
    void fastvfs_acquire() nogil
    void fastvfs_release() nogil
    void fastvfs_full_barrier() nogil
    uint16_t fastvfs_load16(const void *p) nogil
    void fastvfs_store16(void *p, uint16_t v) nogil
    void fastvfs_add64(uint64_t *p, uint64_t v) nogil
    void fastvfs_inc64(uint64_t *p, uint64_t v) nogil
    uint64_t fastvfs_load64(const uint64_t *p) nogil
    unsigned fastvfs_log2(uint64_t v) nogil
    void fastvfs_cpu_relax() nogil
    int fastvfs_load_int(const int *p) nogil
    void fastvfs_store_int(int *p, int v) nogil
