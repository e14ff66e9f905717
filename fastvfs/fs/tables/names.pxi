# Names from the guest and the requests that remove or move them, as the file system serves
# them (PassthroughFs.unlink, rmdir and rename): the one rule for a path component the guest
# names (``check_name``, which fs/passthrough.py calls too, through ``check_name_of``), and
# the system calls relative to the parents' O_PATH descriptors, each parent held through the
# node id table while it is used.

from libc.errno cimport EINVAL, ENAMETOOLONG

from fastvfs.includes.fcntl cimport (RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT,
                                     renameat2)
from fastvfs.includes.posix cimport unlinkat

# renameat2(2) flags a guest may pass (RENAME2): anything else is EINVAL.
cdef uint32_t RENAME_FLAGS = RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT
RENAME_FLAGS_ALLOWED = RENAME_FLAGS


cdef int check_name(const char *name, size_t length) noexcept nogil:
    """0 when the ``length`` bytes at ``name`` are one path component the guest may create,
    remove or rename: -EINVAL for an empty name or one holding '/' or NUL, then -ENAMETOOLONG
    beyond NAME_MAX bytes, then -EINVAL for '.' and '..' (which name no entry of their own:
    they are never created, removed or renamed)."""
    if length == 0 or memchr(name, 0x2f, length) != NULL or memchr(name, 0, length) != NULL:
        return -EINVAL
    if length > LOOKUP_NAME_MAX:
        return -ENAMETOOLONG
    if name[0] == 0x2e and (length == 1 or length == 2 and name[1] == 0x2e):
        return -EINVAL
    return 0


def check_name_of(bytes name not None):
    """``check_name`` for the file system: raises OSError(EINVAL or ENAMETOOLONG)."""
    cdef int rc = check_name(name, len(name))
    if rc == -EINVAL:
        raise OSError(EINVAL, "invalid name")
    if rc < 0:
        raise OSError(-rc, "name too long")


cdef int unlink_node(NodeTable inodes, uint64_t parent, const char *name, size_t length,
                     int flags) noexcept nogil:
    """unlinkat(2) of ``name`` (NUL-terminated, ``length`` bytes) in node ``parent``, as
    PassthroughFs.unlink (``flags`` 0) and rmdir (AT_REMOVEDIR) do it: ENOENT for a node id
    the table does not know, the name checked, then the call on the parent's descriptor (a
    parent that is not a directory: ENOTDIR from the kernel).  0, -errno, or 1 for a parent
    held by file handle that no longer opens, which only the file system answers."""
    cdef int rc
    cdef int fd = inodes.acquire(parent)
    if fd == -2:
        return 1
    if fd < 0:
        return -ENOENT
    rc = check_name(name, length)
    if rc == 0 and unlinkat(fd, name, flags) < 0:
        rc = -errno
    inodes.release(parent)
    return rc


cdef int rename_node(NodeTable inodes, uint64_t parent, const char *name, size_t length,
                     uint64_t newparent, const char *newname, size_t newlength,
                     uint32_t flags) noexcept nogil:
    """renameat2(2) of ``name`` in node ``parent`` to ``newname`` in ``newparent`` (both
    names NUL-terminated), as PassthroughFs.rename does it, in its order: ENOENT for either
    node id the table does not know, each name checked, EINVAL for flags beyond
    RENAME_FLAGS_ALLOWED, then the call (with flags 0, a plain rename).  0, -errno, or 1
    for a parent held by file handle that no longer opens."""
    cdef int rc = 0
    cdef int newfd
    cdef int fd = inodes.acquire(parent)
    if fd == -2:
        return 1
    if fd < 0:
        return -ENOENT
    newfd = inodes.acquire(newparent)
    if newfd == -2:
        inodes.release(parent)
        return 1
    if newfd < 0:
        rc = -ENOENT
    else:
        rc = check_name(name, length)
        if rc == 0:
            rc = check_name(newname, newlength)
        if rc == 0 and flags & ~RENAME_FLAGS:
            rc = -EINVAL
        if rc == 0 and renameat2(fd, name, newfd, newname, flags) < 0:
            rc = -errno
        inodes.release(newparent)
    inodes.release(parent)
    return rc
