# Extended attributes read and written in C as the file system does it (PassthroughFs.getxattr,
# listxattr, setxattr and removexattr without an xattr map): through the node's /proc/self/fd
# name (fastvfs.procfd), so the kernel resolves the magic link to the very inode (a symlink's
# own attributes, a FIFO's or a device's without opening it).  For the hot path's GETXATTR,
# LISTXATTR, SETXATTR and REMOVEXATTR; the setting is the file system's own, given once
# through ``set_xattr_policy``.

from libc.errno cimport ERANGE

from fastvfs.fs._sys cimport own_fs
from fastvfs.includes.posix cimport chdir, fchdir
from fastvfs.includes.xattr cimport (XATTR_CREATE, XATTR_REPLACE, listxattr, removexattr,
                                     setxattr)


def set_xattr_policy(HandleTable handles, bint unmapped, bint settable=False):
    """Let the hot path read extended attributes as the file system does (``getxattr_node``,
    ``listxattr_node``): ``unmapped`` when it serves them (``--xattr``) under the guest's own
    names (no ``--xattrmap``); False leaves GETXATTR and LISTXATTR to the engine.  With
    ``settable`` too (the session frames SETXATTR as fuse_setxattr_in, without
    FUSE_SETXATTR_EXT), it writes and removes them as well (``setxattr_node``,
    ``removexattr_node``).  Called by the file system when it is made and at the start of each
    session (PassthroughFs.init), before the session's first request but INIT."""
    handles.xattrs_unmapped = unmapped
    handles.xattrs_settable = unmapped and settable


cdef int _enter_named(HandleTable handles, int fd, char *path) noexcept nogil:
    """Write in ``path`` the name of descriptor ``fd`` as fastvfs.procfd.named makes it, for a
    call that takes no directory descriptor: relative to the working directory, which in the
    chroot sandbox (a /proc descriptor of its own) is this thread's own, moved there for the
    call (``_leave_named`` moves it back to the chroot's /).  0 named, 1 named with the
    working directory moved, -1 when the move was refused (the file system then names it)."""
    cdef OpenPolicy *policy = &handles.open_policy
    _proc_name(policy, fd, path)
    if policy.proc_dir == AT_FDCWD:
        return 0
    if own_fs() < 0:
        return -1
    return 1 if fchdir(policy.proc_dir) == 0 else -1


cdef inline void _leave_named(int entered) noexcept nogil:
    """Back to the chroot's /, the working directory every thread of that sandbox keeps
    between calls (fastvfs.procfd.named)."""
    if entered == 1:
        chdir("/")


cdef enum XattrCall:
    XATTR_GET
    XATTR_LIST
    XATTR_SET
    XATTR_REMOVE


cdef int _xattr_call(HandleTable handles, NodeTable inodes, uint64_t nodeid, XattrCall call,
                     const char *name, char *buf, size_t size, int flags,
                     ssize_t *got) noexcept nogil:
    """getxattr(2) of ``name`` of ``nodeid`` into ``buf`` (``size`` bytes), listxattr(2) into
    it, setxattr(2) of ``name`` to ``buf`` with ``flags``, or removexattr(2) of ``name``, as
    ``call`` says, through the node's /proc/self/fd name: 0 (``got`` set for a get or a list),
    -errno (ENOENT for an unknown node, then EINVAL for an empty name, then the host's error),
    or 1 for what only the file system decides (no policy, a node held by file handle that no
    longer opens, a value or list larger than ``size``: it reads up to XATTR_SIZE_MAX)."""
    cdef char path[48]
    cdef int fd, entered, err = 0
    cdef ssize_t rc = 0
    if not handles.xattrs_unmapped or not handles.open_policy.enabled:
        return 1
    if (call == XATTR_SET or call == XATTR_REMOVE) and not handles.xattrs_settable:
        return 1
    fd = inodes.acquire(nodeid)
    if fd == -2:
        return 1
    if fd < 0:
        return -ENOENT
    if name != NULL and name[0] == 0:
        inodes.release(nodeid)
        return -EINVAL              # passthrough._xattr_name (the kernel would say ERANGE)
    entered = _enter_named(handles, fd, path)
    if entered < 0:
        inodes.release(nodeid)
        return 1
    if call == XATTR_GET:
        rc = getxattr(path, name, buf, size)
    elif call == XATTR_LIST:
        rc = listxattr(path, buf, size)
    elif call == XATTR_SET:
        rc = setxattr(path, name, buf, size, flags)
    else:
        rc = removexattr(path, name)
    if rc < 0:
        err = errno
    got[0] = rc
    _leave_named(entered)
    inodes.release(nodeid)
    if err:
        return 1 if err == ERANGE and (call == XATTR_GET or call == XATTR_LIST) else -err
    return 0


cdef int getxattr_node(HandleTable handles, NodeTable inodes, uint64_t nodeid, const char *name,
                       void *value, size_t size, size_t *length) noexcept nogil:
    """The value of attribute ``name`` (NUL-terminated, at most XATTR_NAME_MAX bytes) of
    ``nodeid`` into ``value`` (``size`` bytes), as PassthroughFs.getxattr reads it: 0 with
    ``length`` set, -errno, or 1, as ``_xattr_call`` answers."""
    cdef ssize_t got
    cdef int rc = _xattr_call(handles, inodes, nodeid, XATTR_GET, name, <char *>value, size, 0,
                              &got)
    if rc == 0:
        length[0] = <size_t>got
    return rc


cdef int listxattr_node(HandleTable handles, NodeTable inodes, uint64_t nodeid, char *names,
                        size_t size, size_t *length) noexcept nogil:
    """The attribute names of ``nodeid`` into ``names`` (``size`` bytes), each NUL-terminated,
    as PassthroughFs.listxattr joins what os.listxattr splits (a trailing piece without its
    NUL is dropped there, so here too): 0 with ``length`` set, -errno, or 1, as
    ``_xattr_call`` answers."""
    cdef ssize_t got
    cdef const char *last
    cdef int rc = _xattr_call(handles, inodes, nodeid, XATTR_LIST, NULL, names, size, 0, &got)
    if rc:
        return rc
    last = <const char *>memrchr(names, 0, <size_t>got) if got else NULL
    length[0] = <size_t>(last - names + 1) if last != NULL else 0
    return 0


cdef int setxattr_node(HandleTable handles, NodeTable inodes, uint64_t nodeid, const char *name,
                       const void *value, size_t size, uint32_t flags) noexcept nogil:
    """Set attribute ``name`` (NUL-terminated, at most XATTR_NAME_MAX bytes) of ``nodeid`` to
    ``value`` (``size`` bytes) as PassthroughFs.setxattr does without ``kill_sgid``: flags
    other than XATTR_CREATE and XATTR_REPLACE are EINVAL before the node is looked at; then
    0, -errno, or 1, as ``_xattr_call`` answers."""
    cdef ssize_t got
    if not handles.xattrs_settable or not handles.open_policy.enabled:
        return 1
    if flags & ~<uint32_t>(XATTR_CREATE | XATTR_REPLACE):
        return -EINVAL
    return _xattr_call(handles, inodes, nodeid, XATTR_SET, name, <char *>value, size,
                       <int>flags, &got)


cdef int removexattr_node(HandleTable handles, NodeTable inodes, uint64_t nodeid,
                          const char *name) noexcept nogil:
    """Remove attribute ``name`` of ``nodeid`` as PassthroughFs.removexattr does: 0, -errno,
    or 1, as ``_xattr_call`` answers."""
    cdef ssize_t got
    return _xattr_call(handles, inodes, nodeid, XATTR_REMOVE, name, NULL, 0, 0, &got)
