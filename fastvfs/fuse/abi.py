"""FUSE wire format: opcodes, flags and the fixed-size structs of ``include/uapi/linux/fuse.h``.

Mirrors protocol 7.38 (the header shipped with Linux 6.1, the guest kernel of these machines).
Everything is little-endian on virtio-fs (the virtio spec makes the FUSE structs little-endian on the
wire); the host kernel's /dev/fuse speaks native order, which on x86-64 is the same.
Both the daemon and the project's frontend driver encode and decode through this module.
"""

import enum
import struct

FUSE_KERNEL_VERSION = 7
FUSE_KERNEL_MINOR_VERSION = 38
# Oldest minor the engine accepts: 7.27 is where FUSE_INIT_EXT-less clients with the modern
# fuse_init_out layout start; the reference daemons draw the same line.
FUSE_MIN_MINOR_VERSION = 27
FUSE_ROOT_ID = 1
FUSE_MIN_READ_BUFFER = 8192


class Opcode(enum.IntEnum):
    LOOKUP = 1
    FORGET = 2
    GETATTR = 3
    SETATTR = 4
    READLINK = 5
    SYMLINK = 6
    MKNOD = 8
    MKDIR = 9
    UNLINK = 10
    RMDIR = 11
    RENAME = 12
    LINK = 13
    OPEN = 14
    READ = 15
    WRITE = 16
    STATFS = 17
    RELEASE = 18
    FSYNC = 20
    SETXATTR = 21
    GETXATTR = 22
    LISTXATTR = 23
    REMOVEXATTR = 24
    FLUSH = 25
    INIT = 26
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    FSYNCDIR = 30
    GETLK = 31
    SETLK = 32
    SETLKW = 33
    ACCESS = 34
    CREATE = 35
    INTERRUPT = 36
    BMAP = 37
    DESTROY = 38
    IOCTL = 39
    POLL = 40
    NOTIFY_REPLY = 41
    BATCH_FORGET = 42
    FALLOCATE = 43
    READDIRPLUS = 44
    RENAME2 = 45
    LSEEK = 46
    COPY_FILE_RANGE = 47
    SETUPMAPPING = 48
    REMOVEMAPPING = 49
    SYNCFS = 50
    TMPFILE = 51


# fuse_setattr_in.valid
FATTR_MODE = 1 << 0
FATTR_UID = 1 << 1
FATTR_GID = 1 << 2
FATTR_SIZE = 1 << 3
FATTR_ATIME = 1 << 4
FATTR_MTIME = 1 << 5
FATTR_FH = 1 << 6
FATTR_ATIME_NOW = 1 << 7
FATTR_MTIME_NOW = 1 << 8
FATTR_LOCKOWNER = 1 << 9
FATTR_CTIME = 1 << 10
FATTR_KILL_SUIDGID = 1 << 11

# fuse_open_out.open_flags
FOPEN_DIRECT_IO = 1 << 0
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_NONSEEKABLE = 1 << 2
FOPEN_CACHE_DIR = 1 << 3
FOPEN_STREAM = 1 << 4
FOPEN_NOFLUSH = 1 << 5
FOPEN_PARALLEL_DIRECT_WRITES = 1 << 6

# fuse_init_in/out.flags (bits 32..63 travel in flags2)
FUSE_ASYNC_READ = 1 << 0
FUSE_POSIX_LOCKS = 1 << 1
FUSE_FILE_OPS = 1 << 2
FUSE_ATOMIC_O_TRUNC = 1 << 3
FUSE_EXPORT_SUPPORT = 1 << 4
FUSE_BIG_WRITES = 1 << 5
FUSE_DONT_MASK = 1 << 6
FUSE_SPLICE_WRITE = 1 << 7
FUSE_SPLICE_MOVE = 1 << 8
FUSE_SPLICE_READ = 1 << 9
FUSE_FLOCK_LOCKS = 1 << 10
FUSE_HAS_IOCTL_DIR = 1 << 11
FUSE_AUTO_INVAL_DATA = 1 << 12
FUSE_DO_READDIRPLUS = 1 << 13
FUSE_READDIRPLUS_AUTO = 1 << 14
FUSE_ASYNC_DIO = 1 << 15
FUSE_WRITEBACK_CACHE = 1 << 16
FUSE_NO_OPEN_SUPPORT = 1 << 17
FUSE_PARALLEL_DIROPS = 1 << 18
FUSE_HANDLE_KILLPRIV = 1 << 19
FUSE_POSIX_ACL = 1 << 20
FUSE_ABORT_ERROR = 1 << 21
FUSE_MAX_PAGES = 1 << 22
FUSE_CACHE_SYMLINKS = 1 << 23
FUSE_NO_OPENDIR_SUPPORT = 1 << 24
FUSE_EXPLICIT_INVAL_DATA = 1 << 25
FUSE_MAP_ALIGNMENT = 1 << 26
FUSE_SUBMOUNTS = 1 << 27
FUSE_HANDLE_KILLPRIV_V2 = 1 << 28
FUSE_SETXATTR_EXT = 1 << 29
FUSE_INIT_EXT = 1 << 30
FUSE_SECURITY_CTX = 1 << 32
FUSE_HAS_INODE_DAX = 1 << 33
FUSE_CREATE_SUPP_GROUP = 1 << 34  # 7.39: not in the 6.1 guest's header, newer clients send it
FUSE_DIRECT_IO_ALLOW_MMAP = 1 << 36  # 7.39: shared mmap of FOPEN_DIRECT_IO files allowed

# Request extensions (7.38/7.39), after the op's arguments; total_extlen counts 8-byte units.
ext_header = struct.Struct("<II")  # size (whole extension, 8-aligned) type
FUSE_EXT_GROUPS = 32  # struct fuse_supp_groups {u32 nr_groups; u32 groups[]}
# Types 0..FUSE_MAX_NR_SECCTX are a fuse_secctx_header {u32 size; u32 nr_secctx}, the same
# layout as ext_header with nr_secctx as the type (FUSE_SECURITY_CTX, 7.36; before 7.38 the
# block is appended to the arguments of CREATE/MKDIR/MKNOD/SYMLINK with no total_extlen).
# Each context: fuse_secctx {u32 size; u32 padding}, the xattr name (NUL-terminated), then
# ``size`` bytes of value.
FUSE_MAX_NR_SECCTX = 31
secctx = struct.Struct("<II")

FUSE_RELEASE_FLUSH = 1 << 0
FUSE_RELEASE_FLOCK_UNLOCK = 1 << 1
FUSE_GETATTR_FH = 1 << 0
FUSE_WRITE_CACHE = 1 << 0
FUSE_WRITE_LOCKOWNER = 1 << 1
FUSE_WRITE_KILL_SUIDGID = 1 << 2
FUSE_READ_LOCKOWNER = 1 << 1
FUSE_FSYNC_FDATASYNC = 1 << 0
FUSE_OPEN_KILL_SUIDGID = 1 << 0
FUSE_SETXATTR_ACL_KILL_SGID = 1 << 0

# renameat2(2) flags carried by fuse_rename2_in.flags
RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1
RENAME_WHITEOUT = 1 << 2

# Structs.  Names follow fuse.h with the ``fuse_`` prefix dropped.
in_header = struct.Struct("<IIQQIIIHH")  # len opcode unique nodeid uid gid pid total_extlen padding
out_header = struct.Struct("<IiQ")  # len error unique
IN_HEADER_SIZE = in_header.size  # 40
OUT_HEADER_SIZE = out_header.size  # 16

attr = struct.Struct("<QQQQQQIIIIIIIIII")  # ino size blocks atime mtime ctime *nsec mode nlink uid gid rdev blksize flags
# The daemon packs struct fuse_attr in one place, C (fastvfs.fs._tables: pack_attr for the hot
# path, pack_attr_of for the engine); ``attr`` decodes it (the frontend driver, the tests).
entry_out_head = struct.Struct("<QQQQII")  # nodeid generation entry_valid attr_valid *_nsec
ENTRY_OUT_SIZE = entry_out_head.size + attr.size  # 128
attr_out_head = struct.Struct("<QII")  # attr_valid attr_valid_nsec dummy
ATTR_OUT_SIZE = attr_out_head.size + attr.size  # 104

kstatfs = struct.Struct("<QQQQQIIII24x")  # blocks bfree bavail files ffree bsize namelen frsize padding spare
forget_in = struct.Struct("<Q")
forget_one = struct.Struct("<QQ")
batch_forget_in = struct.Struct("<II")
getattr_in = struct.Struct("<IIQ")  # getattr_flags dummy fh
mknod_in = struct.Struct("<IIII")  # mode rdev umask padding
mkdir_in = struct.Struct("<II")  # mode umask
rename_in = struct.Struct("<Q")
rename2_in = struct.Struct("<QII")  # newdir flags padding
link_in = struct.Struct("<Q")
setattr_in = struct.Struct("<IIQQQQQQIIIIIIII")  # valid pad fh size lock_owner atime mtime ctime *nsec mode unused4 uid gid unused5
open_in = struct.Struct("<II")  # flags open_flags
create_in = struct.Struct("<IIII")  # flags mode umask open_flags
open_out = struct.Struct("<QII")  # fh open_flags padding
release_in = struct.Struct("<QIIQ")  # fh flags release_flags lock_owner
flush_in = struct.Struct("<QIIQ")  # fh unused padding lock_owner
read_in = struct.Struct("<QQIIQII")  # fh offset size read_flags lock_owner flags padding
write_in = struct.Struct("<QQIIQII")  # fh offset size write_flags lock_owner flags padding
write_out = struct.Struct("<II")  # size padding
fsync_in = struct.Struct("<QII")  # fh fsync_flags padding
access_in = struct.Struct("<II")  # mask padding
init_in = struct.Struct("<IIIII44x")  # major minor max_readahead flags flags2 unused[11]
INIT_IN_COMPAT_SIZE = 16  # before 7.36 there was no flags2
init_out = struct.Struct("<IIIIHHIIHHI28x")  # major minor max_readahead flags max_background congestion_threshold max_write time_gran max_pages map_alignment flags2 unused[7]
interrupt_in = struct.Struct("<Q")
lk_in = struct.Struct("<QQQQIIII")  # fh owner lk.start lk.end lk.type lk.pid lk_flags padding
lk_out = struct.Struct("<QQII")  # lk.start lk.end lk.type lk.pid
FUSE_LK_FLOCK = 1 << 0
OFFSET_MAX = 0x7FFFFFFFFFFFFFFF
setxattr_in = struct.Struct("<II")  # size flags (FUSE_COMPAT_SETXATTR_IN_SIZE: no SETXATTR_EXT)
setxattr_in_ext = struct.Struct("<IIII")  # size flags setxattr_flags padding
getxattr_in = struct.Struct("<II")  # size padding
getxattr_out = struct.Struct("<II")  # size padding
fallocate_in = struct.Struct("<QQQII")  # fh offset length mode padding
lseek_in = struct.Struct("<QQII")  # fh offset whence padding
copy_file_range_in = struct.Struct("<QQQQQQQ")  # fh_in off_in nodeid_out fh_out off_out len flags
lseek_out = struct.Struct("<Q")
dirent_head = struct.Struct("<QQII")  # ino off namelen type
syncfs_in = struct.Struct("<Q")
setupmapping_in = struct.Struct("<QQQQQ")  # fh foffset len flags moffset
removemapping_in = struct.Struct("<I")
removemapping_one = struct.Struct("<QQ")  # moffset len
FUSE_SETUPMAPPING_FLAG_WRITE = 1 << 0
FUSE_SETUPMAPPING_FLAG_READ = 1 << 1
FUSE_REMOVEMAPPING_MAX_ENTRY = 4096 // removemapping_one.size  # PAGE_SIZE / sizeof(one)
NO_FH = (1 << 64) - 1  # "fh = -1": the request names an inode, not an open file

# Body sizes older clients may send (fuse.h's *_COMPAT_* sizes).
MKNOD_IN_COMPAT_SIZE = 8
WRITE_IN_COMPAT_SIZE = 24


def rec_align(n):
    """FUSE_REC_ALIGN: dirents are padded to 8 bytes."""
    return (n + 7) & ~7


# Offsets in a fuse_direntplus (fuse_entry_out, then fuse_dirent): the attribute's owner and
# the dirent's name length.
DIRENTPLUS_UID, DIRENTPLUS_GID, DIRENTPLUS_NAMELEN = 40 + 68, 40 + 72, ENTRY_OUT_SIZE + 16


def split_timeout(seconds):
    """Seconds (float) -> (whole seconds, nanoseconds) as fuse_entry_out wants them."""
    whole = int(seconds)
    return whole, int(round((seconds - whole) * 1e9))
