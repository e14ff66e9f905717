# The system-call helpers' one shared type: Statx, whose fields fastvfs/fs/_tables.pyx reads
# directly to pack a fuse_attr (pack_attr_of).

from libc.stdint cimport int64_t, uint32_t, uint64_t


cdef class Statx:
    cdef readonly uint64_t st_ino, st_size, st_blocks, st_dev, st_rdev, st_mnt_id
    cdef readonly uint32_t st_mode, st_nlink, st_uid, st_gid, st_blksize
    cdef readonly int64_t st_atime_ns, st_mtime_ns, st_ctime_ns
