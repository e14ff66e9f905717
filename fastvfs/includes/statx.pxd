# C declarations of <sys/stat.h> statx(2) and <sys/sysmacros.h> makedev, major and minor
# (glibc 2.36), shared by the hot path and the file system's system-call helpers.

from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t

cdef extern from "<fcntl.h>" nogil:
    enum:
        AT_EMPTY_PATH
        AT_NO_AUTOMOUNT
        AT_SYMLINK_NOFOLLOW

cdef extern from "<sys/stat.h>" nogil:
    struct statx_timestamp:
        int64_t tv_sec
        uint32_t tv_nsec
    struct statx:
        uint32_t stx_mask
        uint32_t stx_blksize
        uint64_t stx_attributes
        uint32_t stx_nlink
        uint32_t stx_uid
        uint32_t stx_gid
        uint16_t stx_mode
        uint64_t stx_ino
        uint64_t stx_size
        uint64_t stx_blocks
        statx_timestamp stx_atime
        statx_timestamp stx_btime
        statx_timestamp stx_ctime
        statx_timestamp stx_mtime
        uint32_t stx_rdev_major
        uint32_t stx_rdev_minor
        uint32_t stx_dev_major
        uint32_t stx_dev_minor
        uint64_t stx_mnt_id
    int c_statx "statx"(int dirfd, const char *path, int flags, unsigned int mask, statx *buf)
    unsigned int STATX_BASIC_STATS

cdef extern from "<sys/sysmacros.h>" nogil:
    uint64_t makedev(unsigned int major, unsigned int minor)
    # major() and minor(): with makedev, a one-to-one mapping of the 64-bit dev_t.
    unsigned int dev_major "major"(uint64_t dev)
    unsigned int dev_minor "minor"(uint64_t dev)

cdef extern from *:
    """
    #include <fcntl.h>
    #include <sys/stat.h>
    /* STATX_MNT_ID (Linux 5.8) is missing from older headers; the kernel ignores a bit it does
       not know, and stx_mask says whether stx_mnt_id was filled. */
    #ifndef STATX_MNT_ID
    #define STATX_MNT_ID 0x00001000U
    #endif
    #define FASTVFS_STATX_MASK (STATX_BASIC_STATS | STATX_MNT_ID)
    """
    unsigned int STATX_MNT_ID
    unsigned int FASTVFS_STATX_MASK
