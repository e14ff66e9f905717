# The slot state word of the file system's tables (SlotTable, fastvfs/fs/_tables.pxd) and its
# lock-free verbs (GCC/Clang __atomic built-ins, GCC 12): one compare-and-swap to take a
# reference, one atomic subtract to drop it.

from libc.stdint cimport uint8_t, uint64_t

cdef extern from *:
    """
    /* A handle slot's state word: generation << 32 | LIVE | BUSY | references (30 bits).
       Taking a reference is one compare-and-swap that also checks the generation and
       liveness, and dropping one is one atomic subtract: the fast path takes no lock.  BUSY
       is set, with no reference held, only while the table (mutex held) takes a cached
       descriptor away from a node held by file handle: references wait for it to clear, so
       nobody can read the descriptor being closed. */
    #define FASTVFS_LIVE (1ULL << 31)
    #define FASTVFS_BUSY (1ULL << 30)
    #define FASTVFS_REFS 0x3fffffffULL
    static inline uint64_t fastvfs_state_load(uint64_t *p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    static inline void fastvfs_state_store(uint64_t *p, uint64_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELEASE);
    }
    static inline int fastvfs_state_cas(uint64_t *p, uint64_t *expected, uint64_t v) {
        return __atomic_compare_exchange_n(p, expected, v, 1, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }
    static inline uint64_t fastvfs_state_dec(uint64_t *p) {
        return __atomic_sub_fetch(p, 1, __ATOMIC_ACQ_REL);
    }
    static inline void fastvfs_flag_set(uint8_t *p) { __atomic_store_n(p, 1, __ATOMIC_RELAXED); }
    static inline uint8_t fastvfs_flag_take(uint8_t *p) { return __atomic_exchange_n(p, 0, __ATOMIC_RELAXED); }
    static inline uint64_t fastvfs_key_hash(uint64_t dev, uint64_t ino, uint64_t mnt) {
        uint64_t h = ino * 0x9E3779B97F4A7C15ULL ^ dev * 0xC2B2AE3D27D4EB4FULL ^ mnt;
        return h ^ (h >> 29);
    }
    """
    uint64_t FASTVFS_LIVE
    uint64_t FASTVFS_BUSY
    uint64_t FASTVFS_REFS
    void fastvfs_flag_set(uint8_t *p) nogil
    uint8_t fastvfs_flag_take(uint8_t *p) nogil
    uint64_t fastvfs_state_load(uint64_t *p) nogil
    void fastvfs_state_store(uint64_t *p, uint64_t v) nogil
    bint fastvfs_state_cas(uint64_t *p, uint64_t *expected, uint64_t v) nogil
    uint64_t fastvfs_state_dec(uint64_t *p) nogil
    uint64_t fastvfs_key_hash(uint64_t dev, uint64_t ino, uint64_t mnt) nogil
