# C declarations of <linux/fuse.h>, the FUSE wire ABI (protocol 7.38, Linux 6.1; every member
# used here is in the ABI since 7.31, the oldest protocol fastvfs speaks).  Only the structures
# and constants the C paths read or write are declared; the compiler takes their layout from
# the header, so no offset into a FUSE message is written anywhere else.

from libc.stdint cimport int32_t, uint16_t, uint32_t, uint64_t

cdef extern from "<linux/fuse.h>" nogil:
    enum fuse_opcode:
        FUSE_LOOKUP
        FUSE_FORGET
        FUSE_GETATTR
        FUSE_SETATTR
        FUSE_OPEN
        FUSE_READ
        FUSE_WRITE
        FUSE_RELEASE
        FUSE_STATFS
        FUSE_FSYNC
        FUSE_SETXATTR
        FUSE_GETXATTR
        FUSE_LISTXATTR
        FUSE_REMOVEXATTR
        FUSE_FLUSH
        FUSE_BATCH_FORGET
        FUSE_FALLOCATE
        FUSE_COPY_FILE_RANGE
        FUSE_UNLINK
        FUSE_RMDIR
        FUSE_RENAME
        FUSE_RENAME2
        FUSE_OPENDIR
        FUSE_READDIR
        FUSE_RELEASEDIR
        FUSE_READDIRPLUS
        FUSE_READLINK
        FUSE_LSEEK
        FUSE_GETLK
        FUSE_SETLK
        FUSE_MKNOD
        FUSE_MKDIR
        FUSE_SYMLINK
        FUSE_CREATE
        FUSE_LINK
        FUSE_IOCTL
        FUSE_FSYNCDIR
        FUSE_SYNCFS

    enum:
        FUSE_ROOT_ID
        FUSE_WRITE_KILL_SUIDGID
        FUSE_FSYNC_FDATASYNC
        FUSE_RELEASE_FLOCK_UNLOCK
        FUSE_LK_FLOCK
        FUSE_OPEN_KILL_SUIDGID
        FATTR_MODE
        FATTR_UID
        FATTR_GID
        FATTR_SIZE
        FATTR_FH
        FATTR_KILL_SUIDGID
        FATTR_ATIME
        FATTR_MTIME
        FATTR_ATIME_NOW
        FATTR_MTIME_NOW
        FATTR_LOCKOWNER
        FATTR_CTIME
        FUSE_COMPAT_SETXATTR_IN_SIZE    # fuse_setxattr_in as sent without FUSE_SETXATTR_EXT

    struct fuse_in_header:
        uint32_t len
        uint32_t opcode
        uint64_t unique
        uint64_t nodeid
        uint32_t uid
        uint32_t gid
        uint32_t pid
        uint16_t total_extlen   # request extensions, in 8-byte units

    struct fuse_out_header:
        uint32_t len
        int32_t error
        uint64_t unique

    struct fuse_attr:
        uint64_t ino
        uint64_t size
        uint64_t blocks
        uint64_t atime
        uint64_t mtime
        uint64_t ctime
        uint32_t atimensec
        uint32_t mtimensec
        uint32_t ctimensec
        uint32_t mode
        uint32_t nlink
        uint32_t uid
        uint32_t gid
        uint32_t rdev
        uint32_t blksize
        uint32_t flags

    struct fuse_entry_out:
        uint64_t nodeid
        uint64_t generation
        uint64_t entry_valid
        uint64_t attr_valid
        uint32_t entry_valid_nsec
        uint32_t attr_valid_nsec
        fuse_attr attr

    struct fuse_attr_out:
        uint64_t attr_valid
        uint32_t attr_valid_nsec
        uint32_t dummy
        fuse_attr attr

    struct fuse_setattr_in:
        uint32_t valid          # FATTR_*
        uint64_t fh
        uint64_t size
        uint64_t lock_owner
        uint64_t atime
        uint64_t mtime
        uint64_t ctime
        uint32_t atimensec
        uint32_t mtimensec
        uint32_t ctimensec
        uint32_t mode
        uint32_t uid
        uint32_t gid

    struct fuse_lseek_in:
        uint64_t fh
        uint64_t offset
        uint32_t whence

    struct fuse_lseek_out:
        uint64_t offset

    struct fuse_forget_in:
        uint64_t nlookup

    struct fuse_forget_one:
        uint64_t nodeid
        uint64_t nlookup

    struct fuse_batch_forget_in:
        uint32_t count
        uint32_t dummy

    struct fuse_open_in:
        uint32_t flags
        uint32_t open_flags     # FUSE_OPEN_KILL_SUIDGID

    struct fuse_mknod_in:       # followed by the name, NUL-terminated
        uint32_t mode
        uint32_t rdev
        uint32_t umask

    struct fuse_mkdir_in:       # followed by the name
        uint32_t mode
        uint32_t umask

    struct fuse_create_in:      # followed by the name
        uint32_t flags
        uint32_t mode
        uint32_t umask
        uint32_t open_flags     # FUSE_OPEN_KILL_SUIDGID

    struct fuse_link_in:        # followed by the new name
        uint64_t oldnodeid

    struct fuse_rename_in:      # followed by the old name and the new, each NUL-terminated
        uint64_t newdir

    struct fuse_rename2_in:     # the same names follow
        uint64_t newdir
        uint32_t flags          # renameat2(2)'s RENAME_*
        uint32_t padding

    struct fuse_open_out:       # the rest (padding, or backing_id since 7.40) is zero
        uint64_t fh
        uint32_t open_flags

    struct fuse_kstatfs:        # the rest (padding, spare) is zero
        uint64_t blocks
        uint64_t bfree
        uint64_t bavail
        uint64_t files
        uint64_t ffree
        uint32_t bsize
        uint32_t namelen
        uint32_t frsize

    struct fuse_statfs_out:
        fuse_kstatfs st

    struct fuse_setxattr_in:    # SETXATTR (the name, NUL-terminated, then the value follow)
        uint32_t size           # the value's length
        uint32_t flags          # XATTR_CREATE, XATTR_REPLACE
        uint32_t setxattr_flags # with FUSE_SETXATTR_EXT only: without it, the first
        uint32_t padding        # FUSE_COMPAT_SETXATTR_IN_SIZE bytes are sent

    struct fuse_getxattr_in:    # GETXATTR (the name follows, NUL-terminated) and LISTXATTR
        uint32_t size           # the caller's buffer; 0 asks for the length alone
        uint32_t padding

    struct fuse_getxattr_out:   # the reply to a size-0 GETXATTR or LISTXATTR
        uint32_t size
        uint32_t padding

    struct fuse_read_in:
        uint64_t fh
        uint64_t offset
        uint32_t size
        uint32_t read_flags

    struct fuse_write_in:
        uint64_t fh
        uint64_t offset
        uint32_t size
        uint32_t write_flags

    struct fuse_write_out:
        uint32_t size
        uint32_t padding

    struct fuse_release_in:
        uint64_t fh
        uint32_t flags
        uint32_t release_flags
        uint64_t lock_owner

    struct fuse_flush_in:
        uint64_t fh
        uint64_t lock_owner

    struct fuse_file_lock:
        uint64_t start
        uint64_t end
        uint32_t type
        uint32_t pid

    struct fuse_lk_in:          # GETLK, SETLK, SETLKW
        uint64_t fh
        uint64_t owner
        fuse_file_lock lk
        uint32_t lk_flags

    struct fuse_lk_out:
        fuse_file_lock lk

    struct fuse_fsync_in:
        uint64_t fh
        uint32_t fsync_flags

    struct fuse_fallocate_in:
        uint64_t fh
        uint64_t offset
        uint64_t length
        uint32_t mode

    struct fuse_copy_file_range_in:   # answered with fuse_write_out (the bytes copied)
        uint64_t fh_in
        uint64_t off_in
        uint64_t nodeid_out
        uint64_t fh_out
        uint64_t off_out
        uint64_t len
        uint64_t flags          # none defined: EINVAL

    struct fuse_dirent:
        uint64_t ino
        uint64_t off
        uint32_t namelen
        uint32_t type
        char name[1]        # flexible: ``namelen`` bytes

    struct fuse_direntplus:
        fuse_entry_out entry_out
        fuse_dirent dirent

    # Where a dirent's name starts, and a record's length rounded up to the 8 bytes records
    # are padded to.
    size_t FUSE_NAME_OFFSET
    size_t FUSE_DIRENT_ALIGN(size_t length)

cdef extern from *:
    """
    #include <stddef.h>
    #include <linux/fuse.h>
    /* Where fuse_in_header.unique ends: a chain that holds this much of the header gets its
       error reply with the right unique. */
    #define FASTVFS_FUSE_UNIQUE_END (offsetof(struct fuse_in_header, unique) + sizeof(uint64_t))
    """
    size_t FASTVFS_FUSE_UNIQUE_END
