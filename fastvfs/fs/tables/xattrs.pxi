# Extended attributes read in C as the file system reads them (PassthroughFs.getxattr and
# listxattr without an xattr map): through the node's /proc/self/fd name (fastvfs.procfd), so
# the kernel resolves the magic link to the very inode (a symlink's own attributes, a FIFO's
# or a device's without opening it).  For the hot path's GETXATTR and LISTXATTR; the setting
# is the file system's own, given once through ``set_xattr_policy``.

from libc.errno cimport ERANGE

from fastvfs.includes.own_fs cimport fastvfs_own_fs
from fastvfs.includes.posix cimport CLONE_FS, chdir, fchdir, unshare
from fastvfs.includes.xattr cimport listxattr


def set_xattr_policy(HandleTable handles, bint unmapped):
    """Let the hot path read extended attributes as the file system does (``getxattr_node``,
    ``listxattr_node``): ``unmapped`` when it serves them (``--xattr``) under the guest's own
    names (no ``--xattrmap``); False leaves GETXATTR and LISTXATTR to the engine.  Called
    once, before any queue runs."""
    handles.xattrs_unmapped = unmapped


cdef int _enter_named(HandleTable handles, int fd, char *path, size_t size) noexcept nogil:
    """Write in ``path`` the name of descriptor ``fd`` as fastvfs.procfd.named makes it, for a
    call that takes no directory descriptor: relative to the working directory, which in the
    chroot sandbox (a /proc descriptor of its own) is this thread's own, moved there for the
    call (``_leave_named`` moves it back to the chroot's /).  0 named, 1 named with the
    working directory moved, -1 when the move was refused (the file system then names it)."""
    global fastvfs_own_fs
    cdef OpenPolicy *policy = &handles.open_policy
    _proc_name(policy, fd, path, size)
    if policy.proc_dir == AT_FDCWD:
        return 0
    if not fastvfs_own_fs:
        if unshare(CLONE_FS) < 0:
            return -1
        fastvfs_own_fs = 1
    return 1 if fchdir(policy.proc_dir) == 0 else -1


cdef inline void _leave_named(int entered) noexcept nogil:
    """Back to the chroot's /, the working directory every thread of that sandbox keeps
    between calls (fastvfs.procfd.named)."""
    if entered == 1:
        chdir("/")


cdef int _read_xattrs(HandleTable handles, NodeTable inodes, uint64_t nodeid, const char *name,
                      char *buf, size_t size, ssize_t *got) noexcept nogil:
    """getxattr(2) of ``name`` of ``nodeid`` into ``buf``, or listxattr(2) when ``name`` is
    NULL, through the node's /proc/self/fd name: 0 with ``got`` set, -errno (ENOENT for an
    unknown node, then EINVAL for an empty name, then the host's error), or 1 for what only
    the file system decides (no policy, a node held by file handle without a descriptor, a
    result larger than ``size``: it reads up to XATTR_SIZE_MAX)."""
    cdef char path[48]
    cdef int fd, entered, err = 0
    if not handles.xattrs_unmapped or not handles.open_policy.enabled:
        return 1
    fd = inodes.acquire(nodeid)
    if fd == -2:
        return 1
    if fd < 0:
        return -ENOENT
    if name != NULL and name[0] == 0:
        inodes.release(nodeid)
        return -EINVAL              # passthrough._xattr_name (the kernel would say ERANGE)
    entered = _enter_named(handles, fd, path, sizeof(path))
    if entered < 0:
        inodes.release(nodeid)
        return 1
    got[0] = getxattr(path, name, buf, size) if name != NULL else listxattr(path, buf, size)
    if got[0] < 0:
        err = errno
    _leave_named(entered)
    inodes.release(nodeid)
    if err:
        return 1 if err == ERANGE else -err
    return 0


cdef int getxattr_node(HandleTable handles, NodeTable inodes, uint64_t nodeid, const char *name,
                       void *value, size_t size, size_t *length) noexcept nogil:
    """The value of attribute ``name`` (NUL-terminated, at most XATTR_NAME_MAX bytes) of
    ``nodeid`` into ``value`` (``size`` bytes), as PassthroughFs.getxattr reads it: 0 with
    ``length`` set, -errno, or 1, as ``_read_xattrs`` answers."""
    cdef ssize_t got
    cdef int rc = _read_xattrs(handles, inodes, nodeid, name, <char *>value, size, &got)
    if rc == 0:
        length[0] = <size_t>got
    return rc


cdef int listxattr_node(HandleTable handles, NodeTable inodes, uint64_t nodeid, char *names,
                        size_t size, size_t *length) noexcept nogil:
    """The attribute names of ``nodeid`` into ``names`` (``size`` bytes), each NUL-terminated,
    as PassthroughFs.listxattr joins what os.listxattr splits (a trailing piece without its
    NUL is dropped there, so here too): 0 with ``length`` set, -errno, or 1, as
    ``_read_xattrs`` answers."""
    cdef ssize_t got
    cdef const char *last
    cdef int rc = _read_xattrs(handles, inodes, nodeid, NULL, names, size, &got)
    if rc:
        return rc
    last = <const char *>memrchr(names, 0, <size_t>got) if got else NULL
    length[0] = <size_t>(last - names + 1) if last != NULL else 0
    return 0
