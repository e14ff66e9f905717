# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The hot path, one extension module built from the fragments below (structures and fields
in _ring.pxd, tuning knobs in consts.pxi).

One ``Virtqueue`` is served by one thread.  The thread sleeps on the queue's kick eventfd (epoll,
edge-triggered) with the GIL released, walks descriptor chains and serves the requests the fast
operations cover (READ and WRITE through io_uring or preadv/pwritev straight into and out of
guest memory, and the metadata table of fastops.pxi) without touching a Python object; every
other request is handed to the Python FUSE engine with the GIL held, and its reply is scattered
back into the chain's writable buffers.  Every address the guest gives is translated through
``MemoryTable`` with bounds checks.

Fragments, each knowing only those above it:
  guestmem.pxi  guest memory regions and address translation
  iov.pxi       iovec copies, slices and the synchronous transfer loop
  splitq.pxi    the split virtqueue (virtio 1.2 section 2.7), no FUSE
  stats.pxi     per-opcode request statistics
  reply.pxi     FUSE replies into a chain, and replies sent later (PendingReply)
  used.pxi      publishing replies in batches; when to wake the guest
  uring_io.pxi  io_uring I/O: requests in flight, batched submission, completions
  dataops.pxi   READ and WRITE
  fastops.pxi   the FUSE header, the table of fast operations, the metadata ones
  metaops.pxi   more metadata operations: STATFS, SYNCFS, READLINK, OPEN, LSEEK, SETATTR,
                UNLINK, RMDIR, RENAME, RENAME2, IOCTL
  xattrops.pxi  GETXATTR and LISTXATTR
  lockops.pxi   GETLK and SETLK (not waiting) of POSIX locks
  createops.pxi MKNOD, MKDIR, SYMLINK, CREATE and LINK
  engine.pxi    asking the Python engine for the rest
  worker.pxi    Virtqueue: the worker that owns one ring and its loop

Spec references: virtio 1.2 section 2.7 (split virtqueues), include/uapi/linux/virtio_ring.h,
include/uapi/linux/fuse.h.
"""

import logging
import sys

_log = logging.getLogger("fastvfs.ring")

if sys.byteorder != "little":
    raise ImportError("fastvfs assumes a little-endian host (virtio 1.x rings are little-endian)")

# Imported now, before the daemon confines itself: the sandbox's root holds no Python modules.
from fastvfs.uring.engine import UringEngine, UringUnavailable

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.errno cimport (EAGAIN, EBADF, EFAULT, EINTR, EINVAL, EIO, ENOENT, ENOSYS, EOPNOTSUPP,
                         ERANGE, errno)
from libc.stdint cimport INT64_MAX
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset

from fastvfs.fs._tables cimport (DirListing, dir_listing, dir_open, dir_plus, dir_run,
                                 dir_unref)
from fastvfs.fs._tables cimport (LOCK_FLOCK, LOCK_POSIX, LOCK_QUESTION, flock_setlk,
                                  lock_open_node,
                                  locks_flock_unlocked, locks_flushed, locks_forgotten,
                                  posix_getlk, posix_setlk)
from fastvfs.fs._tables cimport (MAKE_CREATE, MAKE_MKDIR, MAKE_MKNOD, MAKE_SYMLINK, TARGET_MAX,
                                 link_node, make_node, pack_entry)
from fastvfs.fs._tables cimport (CHANGE_KILL_SUIDGID, CHANGE_MODE, CHANGE_OWNER, CHANGE_SIZE,
                                 LOOKUP_NAME_MAX, XATTR_NAME_MAX, change_node, copy_range, flush_fd,
                                 getxattr_node, kill_mapped_capability, kill_suidgid,
                                 listxattr_node, lookup_entry, open_node, pack_attr,
                                 removexattr_node, rename_node, setxattr_node, sync_dir_fs,
                                 unlink_node, within_budget)
from fastvfs.includes.atomics cimport (fastvfs_acquire, fastvfs_add64, fastvfs_cpu_relax,
                                       fastvfs_full_barrier, fastvfs_inc64, fastvfs_load16,
                                       fastvfs_load64, fastvfs_log2, fastvfs_release,
                                       fastvfs_store16)
from fastvfs.includes.epoll cimport (EPOLL_CLOEXEC, EPOLL_CTL_ADD, EPOLLET, EPOLLIN,
                                     epoll_create1, epoll_ctl, epoll_event, epoll_wait)
from fastvfs.includes.fcntl cimport (AT_REMOVEDIR, F_RDLCK, FALLOC_FL_KEEP_SIZE, O_ACCMODE,
                                     O_CREAT, O_EXCL, O_RDONLY, O_TRUNC, fallocate)
from fastvfs.includes.fuse_kernel cimport (FASTVFS_FUSE_UNIQUE_END, FUSE_BATCH_FORGET,
                                           FUSE_COPY_FILE_RANGE, FUSE_FALLOCATE, FUSE_FLUSH,
                                           FUSE_FORGET, FUSE_RELEASE_FLOCK_UNLOCK,
                                           FUSE_FSYNC, FUSE_FSYNC_FDATASYNC, FUSE_FSYNCDIR,
                                           FUSE_GETATTR, FUSE_ROOT_ID, FUSE_SYNCFS,
                                           FUSE_GETXATTR, FUSE_LISTXATTR,
                                           FUSE_REMOVEXATTR, FUSE_SETXATTR,
                                           FUSE_COMPAT_SETXATTR_IN_SIZE,
                                           FATTR_ATIME, FATTR_ATIME_NOW, FATTR_CTIME,
                                           FATTR_FH, FATTR_GID, FATTR_KILL_SUIDGID,
                                           FATTR_LOCKOWNER, FATTR_MODE, FATTR_MTIME,
                                           FATTR_MTIME_NOW, FATTR_SIZE, FATTR_UID,
                                           FUSE_IOCTL, FUSE_LOOKUP, FUSE_LSEEK, FUSE_OPEN,
                                           FUSE_READLINK,
                                           FUSE_OPEN_KILL_SUIDGID, FUSE_SETATTR,
                                           FUSE_READ, FUSE_RELEASE, FUSE_RENAME, FUSE_RENAME2,
                                           FUSE_RMDIR, FUSE_STATFS, FUSE_UNLINK, FUSE_WRITE,
                                           FUSE_WRITE_KILL_SUIDGID, fuse_attr_out,
                                           fuse_copy_file_range_in, fuse_entry_out,
                                           fuse_forget_one,
                                           fuse_getxattr_in, fuse_getxattr_out, fuse_lseek_out,
                                           fuse_open_in,
                                           fuse_open_out, fuse_out_header, fuse_rename_in,
                                           fuse_rename2_in, fuse_setattr_in,
                                           fuse_setxattr_in, fuse_statfs_out,
                                           fuse_write_out)
from fastvfs.includes.fuse_kernel cimport (FUSE_CREATE, FUSE_LINK, FUSE_MKDIR, FUSE_MKNOD,
                                           FUSE_SYMLINK, fuse_create_in, fuse_link_in,
                                           fuse_mkdir_in, fuse_mknod_in)
from fastvfs.includes.fuse_kernel cimport (FUSE_DIRENT_ALIGN, FUSE_NAME_OFFSET, FUSE_OPENDIR,
                                           FUSE_READDIR, FUSE_READDIRPLUS, FUSE_RELEASEDIR,
                                           fuse_dirent)
from fastvfs.includes.fuse_kernel cimport FUSE_GETLK, FUSE_LK_FLOCK, FUSE_SETLK, fuse_lk_out
from fastvfs.includes.liburing cimport (IORING_FSYNC_DATASYNC,
                                        io_uring_cq_advance, io_uring_cq_ready, io_uring_cqe,
                                        io_uring_get_sqe, io_uring_peek_batch_cqe,
                                        io_uring_prep_fallocate, io_uring_prep_fsync,
                                        io_uring_prep_read, io_uring_prep_read_fixed,
                                        io_uring_prep_readv, io_uring_prep_write,
                                        io_uring_prep_write_fixed, io_uring_prep_writev,
                                        io_uring_sqe_set_data64, io_uring_submit,
                                        io_uring_wait_cqe)
from fastvfs.includes.mman cimport MAP_FAILED, MAP_SHARED, PROT_READ, PROT_WRITE, mmap, munmap
from fastvfs.includes.posix cimport (CLOCK_MONOTONIC, SEEK_CUR, SEEK_DATA, SEEK_END, SEEK_HOLE,
                                     SEEK_SET, c_close, c_write, clock_gettime, fdatasync,
                                     fsync, lseek, readlinkat, strnlen, timespec)
from fastvfs.includes.pthread cimport (pthread_mutex_destroy, pthread_mutex_init,
                                       pthread_mutex_lock, pthread_mutex_unlock)
from fastvfs.includes.stat cimport S_ISDIR, S_ISLNK, UTIME_NOW, UTIME_OMIT, utimensat
from fastvfs.includes.statx cimport (AT_EMPTY_PATH, AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS,
                                     c_statx, statx)
from fastvfs.includes.statvfs cimport fstatvfs, statvfs
from fastvfs.includes.uio cimport RWF_NOWAIT, preadv, preadv2, pwritev
from fastvfs.includes.virtio_ring cimport (VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT,
                                           VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
                                           vring_used_elem)

include "guestmem.pxi"
include "iov.pxi"
include "splitq.pxi"
include "stats.pxi"
include "reply.pxi"
include "used.pxi"
include "uring_io.pxi"
include "dataops.pxi"
include "fastops.pxi"
include "metaops.pxi"
include "xattrops.pxi"
include "dirops.pxi"
include "lockops.pxi"
include "createops.pxi"
include "engine.pxi"
include "worker.pxi"
