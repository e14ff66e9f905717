# A node's attributes changed as the file system changes them (PassthroughFs.setattr): its
# mode, owner and size, with the mapped capability and set-user-ID removed where the kernel
# would remove them; for the hot path's SETATTR and for the file system itself, which calls
# ``change_node_of`` (the times and the attributes answered are the caller's).  A node is
# changed through the guest's open file when SETATTR names one (FATTR_FH), else through its
# O_PATH descriptor and that descriptor's /proc/self/fd name (fastvfs.procfd).

from fastvfs.includes.posix cimport fchownat, ftruncate, truncate
from fastvfs.includes.stat cimport fastvfs_fchmodat2
from fastvfs.includes.statx cimport AT_EMPTY_PATH


cdef bint _probe_fchmodat2() noexcept nogil:
    """Whether this kernel has fchmodat2(2) and nothing outside the daemon refuses it: asked
    of no descriptor, it answers EBADF (before Linux 6.6, ENOSYS; a container's filter, EPERM
    or ENOSYS)."""
    return fastvfs_fchmodat2(-1, "", 0, AT_EMPTY_PATH) < 0 and errno == EBADF


# fchmodat2(2) with AT_EMPTY_PATH changes a mode through the O_PATH descriptor itself, without
# the lookup of its /proc/self/fd name (a chmod costs about half as much).  Probed when the
# module is loaded, before any filter of the daemon's own; ``use_fchmodat2(False)`` where the
# daemon's seccomp filter cannot name the call.
cdef bint _fchmodat2 = _probe_fchmodat2()


def use_fchmodat2(bint use):
    """Change modes with fchmodat2(2) (where the kernel has it: ``use`` True probes again, so
    never call it with True under a filter that lacks the call), or never (``use`` False: a
    seccomp filter that lacks the call).  Returns whether it is used."""
    global _fchmodat2
    _fchmodat2 = use and _probe_fchmodat2()
    return _fchmodat2


cdef int _chmod_node(HandleTable handles, int ifd, uint32_t mode) noexcept nogil:
    """chmod(2) of the inode behind O_PATH descriptor ``ifd`` (not a symlink): fchmodat2(2) of
    the descriptor with AT_EMPTY_PATH, else fchmodat(2) of its /proc/self/fd name, which
    resolves to the same inode.  0 or -errno."""
    cdef char path[48]
    if _fchmodat2:
        return 0 if fastvfs_fchmodat2(ifd, "", mode, AT_EMPTY_PATH) == 0 else -errno
    _proc_name(&handles.open_policy, ifd, path)
    return 0 if fchmodat(handles.open_policy.proc_dir, path, mode, 0) == 0 else -errno


cdef int _named_call(HandleTable handles, int ifd, char *path, int *entered) noexcept nogil:
    """Name ``ifd`` in ``path`` for a call that takes no directory descriptor, moving this
    thread's working directory the first time (``_enter_named``; ``entered`` says whether it
    moved): 0, or -errno when the move was refused (fastvfs.procfd.named raises the same)."""
    if entered[0] == 0:
        entered[0] = _enter_named(handles, ifd, path)
        if entered[0] < 0:
            entered[0] = 0
            return -errno if errno else -EINVAL
        if entered[0] == 0:
            entered[0] = 2          # named, nothing moved
    return 0


cdef int change_node(HandleTable handles, int ifd, uint32_t kind, int fd, uint32_t what,
                     uint32_t mode, uint32_t uid, uint32_t gid, int64_t size) noexcept nogil:
    """Change what ``what`` (CHANGE_*) names of the inode behind O_PATH descriptor ``ifd``
    (file type ``kind``), through ``fd`` (the guest's open file, -1 for none), in the order
    of PassthroughFs.setattr, stopping at the first failure:

    * the mode (CHANGE_MODE): EOPNOTSUPP for a symlink, which has none of its own; fchmod(2)
      of ``fd``, else ``_chmod_node`` of ``ifd``;
    * of a regular file whose owner or size changes, the mapped capability
      (``kill_mapped_capability``), as the kernel removes security.capability there;
    * the owner (CHANGE_OWNER): fchownat(2) of ``ifd`` itself, ``uid``/``gid`` 0xFFFFFFFF
      for one left as it is (the ids are the host's: an id-mapped share translates them
      first);
    * the size (CHANGE_SIZE): ftruncate(2) of ``fd``, else truncate(2) of the /proc/self/fd
      name of a regular file (EISDIR for a directory, EINVAL for any other type);
    * with CHANGE_KILL_SUIDGID and no mode given, of a regular file, ``kill_suidgid``.

    0, -errno, or 1 when no open policy is set (the names are the file system's then)."""
    cdef char path[48]
    cdef int rc = 0, entered = 0
    if not handles.open_policy.enabled:
        return 1
    path[0] = 0
    if what & CHANGE_MODE:
        if S_ISLNK(kind):
            return -EOPNOTSUPP
        if fd >= 0:
            rc = -errno if fchmod(fd, mode) < 0 else 0
        else:
            rc = _chmod_node(handles, ifd, mode)
        if rc < 0:
            return rc
    if handles.cap_xattr[0] and S_ISREG(kind) and what & (CHANGE_OWNER | CHANGE_SIZE):
        if fd >= 0:
            rc = kill_mapped_capability(fd, handles.cap_xattr)
        else:
            rc = _named_call(handles, ifd, path, &entered)
            if rc == 0:
                rc = _kill_mapped_capability_at(-1, path, handles.cap_xattr)
    if rc == 0 and what & CHANGE_OWNER:
        if fchownat(ifd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0:
            rc = -errno
    if rc == 0 and what & CHANGE_SIZE:
        if fd >= 0:
            while ftruncate(fd, size) < 0:
                if errno != EINTR:
                    rc = -errno
                    break
        elif not S_ISREG(kind):
            rc = -EISDIR if S_ISDIR(kind) else -EINVAL
        else:
            rc = _named_call(handles, ifd, path, &entered)
            while rc == 0 and truncate(path, size) < 0:
                if errno != EINTR:
                    rc = -errno
    if rc == 0 and what & CHANGE_KILL_SUIDGID and not what & CHANGE_MODE and S_ISREG(kind):
        if fd >= 0:
            rc = kill_suidgid(fd)
        else:
            rc = _named_call(handles, ifd, path, &entered)
            if rc == 0:
                rc = _kill_suidgid_at(-1, path)
    _leave_named(entered)
    return rc


def change_node_of(HandleTable handles, int ifd, uint32_t kind, int fd=-1, mode=None,
                   uid=None, gid=None, size=None, bint kill_suidgid=False):
    """``change_node`` for the file system: ``mode``, ``uid``, ``gid``, ``size`` None for
    what stays as it is; ``fd`` -1 for no open file.  Raises OSError."""
    cdef uint32_t what = 0, c_mode = 0, c_uid = 0xFFFFFFFF, c_gid = 0xFFFFFFFF
    cdef int64_t c_size = 0
    cdef int rc
    if mode is not None:
        what |= CHANGE_MODE
        c_mode = mode
    if uid is not None or gid is not None:
        what |= CHANGE_OWNER
        if uid is not None:
            c_uid = uid
        if gid is not None:
            c_gid = gid
    if size is not None:
        what |= CHANGE_SIZE
        c_size = size
    if kill_suidgid:
        what |= CHANGE_KILL_SUIDGID
    with nogil:
        rc = change_node(handles, ifd, kind, fd, what, c_mode, c_uid, c_gid, c_size)
    if rc == 1:
        raise ValueError("no open policy set on the handle table")
    _check(rc)
