# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The file system's C face: the tables that the file system (fs/passthrough.py, through the
Python methods) and the hot path (fastvfs.ring, through the cdef verbs declared in
_tables.pxd) share, and the helpers of the operations both serve.  One extension module built
from the fragments below (fields and cdef declarations in _tables.pxd).

Fragments, each knowing only those above it:
  tables/slots.pxi    SlotTable: entries named by generation and slot, references without a
                      lock, removal and reclaim under a leaf mutex
  tables/handles.pxi  HandleTable: the guest's open files and directories (``fh``), the
                      lock-descriptor contract, the mapped capability's name
  tables/nodes.pxi    NodeTable: the guest's node ids, their inode keys and lookup counts, the
                      descriptor cache of nodes held by file handle
  tables/helpers.pxi  attribute packing, known-entry lookup, kill-suid/sgid, the mapped
                      capability, FLUSH, COPY_FILE_RANGE; their Python wrappers
  tables/opens.pxi    a node opened for I/O as the file system does it (the open policy it
                      sets, the descriptor budget), for OPEN
  tables/names.pxi    the rule for a name from the guest, and UNLINK, RMDIR and RENAME(2)
                      as the file system does them
  tables/creates.pxi  MKNOD, MKDIR, SYMLINK, CREATE and LINK as the file system does them
                      (the caller's credentials through _sys, the session's part it sets)
  tables/xattrs.pxi   extended attributes read and written as the file system does it (the
                      xattr policy it sets), for GETXATTR, LISTXATTR, SETXATTR and
                      REMOVEXATTR
  tables/attrs.pxi    a node's mode, owner and size changed as the file system does it, for
                      SETATTR
  tables/dirs.pxi     directory handles and their listings, for OPENDIR, READDIR,
                      READDIRPLUS and RELEASEDIR
  tables/locks.pxi    the descriptions holding the guest's POSIX and flock locks, for GETLK
                      and SETLK

Lock order: a table's mutex is a leaf lock (the lock descriptions' mutexes come before it,
tables/locks.pxi).  Nothing is called while holding it but close(2) of an evicted cache
descriptor, malloc(3) of a copy, the allocation of a grown key index and free(3) of the old
one or of a node's long handle; no thread holding it waits for the GIL (the Python methods
take it inside ``with nogil``), so a thread holding the GIL may take it.  Directory listings
are freed after it is let go.
"""

cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.errno cimport errno, EBADF, EINTR, EINVAL, ENOENT
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memchr, memcmp, memcpy, memset

from fastvfs.fs._sys cimport Statx
from fastvfs.includes.atomics cimport fastvfs_cpu_relax, fastvfs_load_int, fastvfs_store_int
from fastvfs.includes.fcntl cimport (F_GETFL, MAX_HANDLE_SZ, O_CLOEXEC, O_DIRECT, O_NOFOLLOW,
                                     O_PATH, fastvfs_file_handle, fcntl, name_to_handle_at,
                                     open_by_handle_at)
from fastvfs.includes.fuse_kernel cimport FUSE_NAME_OFFSET, fuse_attr, fuse_dirent, fuse_entry_out
from fastvfs.includes.handle_state cimport (FASTVFS_BUSY, FASTVFS_LIVE, FASTVFS_REFS,
                                            fastvfs_flag_set, fastvfs_flag_take,
                                            fastvfs_key_hash, fastvfs_state_cas,
                                            fastvfs_state_dec, fastvfs_state_load,
                                            fastvfs_state_store)
from fastvfs.includes.posix cimport c_close, c_copy_file_range, dup, memrchr
from fastvfs.includes.pthread cimport (pthread_mutex_destroy, pthread_mutex_init,
                                       pthread_mutex_lock, pthread_mutex_unlock)
from fastvfs.includes.stat cimport S_ISGID, S_ISUID, S_IXGRP, c_stat, chmod, fchmod, fstat, stat
from fastvfs.includes.statx cimport (AT_NO_AUTOMOUNT, AT_SYMLINK_NOFOLLOW, FASTVFS_STATX_MASK,
                                     STATX_MNT_ID, c_statx, dev_major, dev_minor, makedev,
                                     statx, statx_timestamp)
from fastvfs.includes.xattr cimport (ENODATA, EOPNOTSUPP, fgetxattr, fremovexattr, getxattr,
                                     removexattr)

include "tables/slots.pxi"
include "tables/handles.pxi"
include "tables/nodes.pxi"
include "tables/helpers.pxi"
include "tables/opens.pxi"
include "tables/names.pxi"
include "tables/creates.pxi"
include "tables/xattrs.pxi"
include "tables/attrs.pxi"
include "tables/dirs.pxi"
include "tables/locks.pxi"
