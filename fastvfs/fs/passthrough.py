"""Passthrough file system: every FUSE node is an inode of the shared directory on the host.

Contract with the FUSE engine (``fastvfs.fuse.engine``):

* Node ids are opaque integers; ``FUSE_ROOT_ID`` (1) is the shared directory.  Every method that
  returns an entry (``lookup``, ``mknod``, ``mkdir``, ``symlink``, ``link``, ``create``) adds one
  to that inode's lookup count; ``forget`` takes counts away and the inode is dropped at zero.
  The root is never dropped.
* Names arrive as ``bytes`` straight from the guest and are validated here: no ``/``, no NUL,
  at most NAME_MAX bytes; ``.`` and ``..`` are never created, removed or renamed.
* Errors are raised as ``OSError`` with the errno the guest should see.
* Objects are created with the caller's fsuid/fsgid (per-thread credentials), so new files
  belong to the guest user who made them; everything else runs as the daemon.
* File handles come from a shared ``HandleTable`` so the hot path can serve READ and WRITE on
  them without calling back into Python.

Safety: each inode holds an ``O_PATH | O_NOFOLLOW`` descriptor and every name is resolved one
component at a time relative to its parent's descriptor with ``O_NOFOLLOW``, so no guest-chosen
name or planted symlink can lead outside the shared directory.  Files are reopened for I/O
through ``/proc/self/fd`` only after checking they are regular files or directories: FIFOs,
devices and sockets are never opened.
"""

import contextlib
import errno
import fcntl
import logging
import os
import resource
import stat
import struct
import threading

from . import _sys
from .. import procfd

log = logging.getLogger("fastvfs.fs")

NAME_MAX = 255
FUSE_ROOT_ID = 1
O_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
# Open flags a guest may pass through.  O_CREAT/O_EXCL only reach the host through ``create``;
# O_DIRECT is dropped because guest buffers carry no alignment promise; O_NOFOLLOW and
# O_CLOEXEC are always added.
OPEN_FLAGS_ALLOWED = (os.O_ACCMODE | os.O_APPEND | os.O_TRUNC | os.O_NONBLOCK | os.O_SYNC |
                      os.O_DSYNC | os.O_NOATIME | os.O_LARGEFILE)
RENAME_FLAGS_ALLOWED = 0x7  # NOREPLACE | EXCHANGE | WHITEOUT
OFFSET_MAX = 0x7FFFFFFFFFFFFFFF
# struct flock on x86-64: l_type, l_whence, (pad), l_start, l_len, l_pid, (pad).
FLOCK = struct.Struct("hh4xqqi4x")
LOCK_TYPES = (fcntl.F_RDLCK, fcntl.F_WRLCK, fcntl.F_UNLCK)


def check_name(name):
    """Validate a single path component from the guest (raises OSError)."""
    if not name or b"/" in name or b"\0" in name:
        raise OSError(errno.EINVAL, "invalid name")
    if len(name) > NAME_MAX:
        raise OSError(errno.ENAMETOOLONG, "name too long")
    if name in (b".", b".."):
        raise OSError(errno.EINVAL, "'.' and '..' cannot be created, removed or renamed")
    return name


_proc_path = procfd.path


def kill_suidgid_of(fd_or_path):
    """Clear setuid, and setgid where group-execute makes it one: what the kernel does when a
    caller without CAP_FSETID writes, truncates or chowns.  Under HANDLE_KILLPRIV_V2 the guest
    leaves it to us, and our own calls (made with CAP_FSETID) would keep the bits."""
    mode = stat.S_IMODE(os.stat(fd_or_path).st_mode)
    new = mode & ~stat.S_ISUID
    if new & stat.S_ISGID and new & stat.S_IXGRP:
        new &= ~stat.S_ISGID
    if new != mode:
        os.chmod(fd_or_path, new)


class Inode:
    __slots__ = ("nodeid", "fd", "key", "mode")

    def __init__(self, nodeid, fd, key, mode):
        self.nodeid = nodeid
        self.fd = fd
        self.key = key
        self.mode = mode


class InodeStore:
    """Node id -> Inode, over the node id table.

    Node ids, the O_PATH descriptors behind them, the inode keys (st_dev, st_ino, mount id) and
    the guest's lookup counts live in ``table``, a handle table the hot path reads without the
    GIL: it answers GETATTR, and LOOKUP of an inode already known, itself.  Its ids carry a
    generation, so a forgotten node id is never mistaken for a newer inode.  ``lock`` guards
    ``by_id`` and orders it with the table's entries: an id the table hands out is in ``by_id``
    once the adopting call returns (the table's own mutex is a leaf lock below it).
    """

    def __init__(self, root_fd, root_st, table):
        self.lock = threading.Lock()
        self.table = table
        table.add_root(root_fd, *root_st.key, keyed=True)
        self.root = Inode(FUSE_ROOT_ID, root_fd, root_st.key, root_st.st_mode)
        self.by_id = {FUSE_ROOT_ID: self.root}

    def get(self, nodeid):
        """The inode behind ``nodeid``.  Inside a :meth:`PassthroughFs.request_scope` its
        descriptor is also held open until the request ends: a FORGET racing on another queue
        cannot close it, and its number cannot be reused for another file meanwhile."""
        inode = self.by_id.get(nodeid)
        if inode is None:
            # The hot path may have answered a LOOKUP with an id whose adoption is finishing.
            with self.lock:
                inode = self.by_id.get(nodeid)
            if inode is None:
                raise OSError(errno.ENOENT, "unknown node id")
        held = getattr(_request_refs, "held", None)
        if held is not None and inode is not self.root:
            try:
                self.table.hold(nodeid)
            except OSError:
                raise OSError(errno.ENOENT, "node id forgotten meanwhile") from None
            held.append(nodeid)
        return inode

    def _prune(self):
        """Forget the records of node ids the hot path dropped (lock held)."""
        for nodeid in self.table.take_dropped():
            self.by_id.pop(nodeid, None)

    def adopt(self, fd, st):
        """Count one lookup of the inode ``fd`` refers to; takes ownership of ``fd``."""
        with self.lock:
            self._prune()
            try:
                nodeid, created = self.table.adopt(fd, *st.key)
            except BaseException:
                os.close(fd)
                raise
            if created:
                inode = self.by_id[nodeid] = Inode(nodeid, fd, st.key, st.st_mode)
            else:
                inode = self.by_id[nodeid]
        if not created:
            os.close(fd)
        return inode

    def relookup(self, inode):
        """Count one more lookup of a known inode."""
        self.table.relookup(inode.nodeid)

    def nlookup(self, nodeid):
        return self.table.nlookup(nodeid)

    def forget(self, nodeid, count):
        """Take ``count`` lookups away; returns True when the inode was dropped (its fd is
        closed once no request in flight uses it)."""
        with self.lock:
            self._prune()
            if not self.table.forget(nodeid, count):
                return False
            self.by_id.pop(nodeid, None)
        return True

    def clear(self):
        """Drop every inode but the root (a session ended)."""
        with self.lock:
            self.table.clear()
            self.table.take_dropped()
            self.by_id = {FUSE_ROOT_ID: self.root}

    def __len__(self):
        with self.lock:
            self._prune()
            return len(self.by_id)


class DirHandle:
    __slots__ = ("fd", "entries")

    def __init__(self, fd):
        self.fd = fd
        self.entries = None


class DirSnapshot:
    """A directory listing as FUSE sends it: ``records`` holds one ``struct fuse_dirent``
    per entry (padded to 8 bytes), entry i at ``records[starts[i]:starts[i + 1]]`` with
    offset cookie i + 1; "." and ".." come first."""
    __slots__ = ("records", "starts")

    def __init__(self, records, starts):
        self.records = records
        self.starts = memoryview(starts).cast("I")

    def __len__(self):
        return len(self.starts) - 1

    def name(self, i):
        start = self.starts[i]
        (namelen,) = struct.unpack_from("<I", self.records, start + 16)
        return self.records[start + 24:start + 24 + namelen]


_thread_state = threading.local()
_request_refs = threading.local()


class Caller:
    """Who asks for a new object: uid/gid, the supplementary groups the client vouches for
    (FUSE_CREATE_SUPP_GROUP: the parent directory's group when the caller is in it) and the
    umask when the client left applying it to us (FUSE_DONT_MASK)."""
    __slots__ = ("uid", "gid", "groups", "umask")

    def __init__(self, uid, gid, groups=(), umask=None):
        self.uid = uid
        self.gid = gid
        self.groups = tuple(groups)
        self.umask = umask


ROOT_CALLER = Caller(0, 0)


@contextlib.contextmanager
def caller_credentials(caller):
    """Run the body with this thread's fsuid/fsgid, supplementary groups and umask set to the
    caller's.  All three are per thread (raw system calls; CLONE_FS unshared once for the
    umask).  The host then applies the umask only where the parent directory has no default
    ACL, exactly as a local creation.

    An id the daemon cannot take on (outside its user namespace's map, see
    :mod:`fastvfs.sandbox`) fails the request with EPERM rather than let the daemon's own ids
    own the result; it is logged once per id pair.  Where setgroups(2) is denied (a user
    namespace with the one-id map) the supplementary group is not added: permission checks
    are then only stricter."""
    try:
        old_uid, old_gid = _sys.set_fs_creds(caller.uid, caller.gid)
    except OSError as exc:
        if (caller.uid, caller.gid) not in _refused_ids:
            _refused_ids.add((caller.uid, caller.gid))
            log.warning("%s: requests of that guest user fail with EPERM", exc.strerror)
        raise
    old_mask = None
    groups_set = False
    try:
        if caller.groups:
            try:
                _sys.set_thread_groups(caller.groups)
                groups_set = True
            except PermissionError:
                pass
        if caller.umask is not None:
            if not getattr(_thread_state, "own_fs", False):
                _sys.unshare_fs()  # the umask is per process otherwise
                _thread_state.own_fs = True
            old_mask = os.umask(caller.umask & 0o777)
        yield
    finally:
        if old_mask is not None:
            os.umask(old_mask)
        if groups_set:
            _sys.set_thread_groups(())
        _sys.set_fs_creds(old_uid, old_gid)


# (uid, gid) pairs set_fs_creds refused, each logged once.
_refused_ids = set()


class PassthroughFs:
    """The shared directory, served inode by inode (see the module docstring for the contract).

    ``writeback``: the guest caches writes (FUSE_WRITEBACK_CACHE), so it may read a file it
    opened write-only (to fill partial pages) and it computes append offsets itself: files are
    opened read-write and without O_APPEND.  ``allow_direct_io``: pass the guest's O_DIRECT on.
    """

    def __init__(self, root, handles, *, inodes=None, writeback=False, allow_direct_io=False,
                 xattrmap=None, fd_budget=None):
        self.writeback = writeback
        # Descriptors the guest may make us hold (inodes, open files and directories, lock
        # holders): the rest of RLIMIT_NOFILE stays for the daemon itself (memory regions,
        # eventfds, sockets), so a guest opening everything cannot starve the control plane.
        if fd_budget is None:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            fd_budget = soft - max(32, min(256, soft // 8))
        self.fd_budget = fd_budget
        self.xattrmap = xattrmap
        self.open_flags_allowed = OPEN_FLAGS_ALLOWED | (os.O_DIRECT if allow_direct_io else 0)
        self.root_path = os.path.abspath(root)
        root_fd = os.open(self.root_path, O_PATH_FLAGS | os.O_DIRECTORY)
        # ``inodes``: the node id table, a table of the handle table's kind (the daemon hands
        # the same one to the hot path); by default a fresh one.
        self.inodes = InodeStore(root_fd, _sys.fstatx(root_fd),
                                 inodes if inodes is not None else type(handles)(1 << 16))
        self.handles = handles
        self.dirs = {}
        self.dirs_lock = threading.Lock()
        # (nodeid, lock owner, "posix" | "flock") -> the open file description holding that
        # owner's locks on the inode.  Host OFD locks make the locks visible to host processes
        # and to other daemons sharing the directory.  Guarded by locks_lock (a leaf lock).
        self.lock_fds = {}
        self.locks_lock = threading.Lock()

    # -- lookups ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def request_scope(self):
        """Hold every inode descriptor a request touches until it is answered."""
        outer = getattr(_request_refs, "held", None)
        held = _request_refs.held = []
        try:
            yield
        finally:
            _request_refs.held = outer
            for nodeid in held:
                self.inodes.table.unhold(nodeid)

    def fds_held(self):
        return (self.handles.count + self.inodes.table.count + len(self.dirs) +
                len(self.lock_fds))

    def _budget(self):
        """EMFILE for the guest once its share of descriptors is used up."""
        if self.fds_held() >= self.fd_budget:
            raise OSError(errno.EMFILE, "the guest's descriptor budget is used up")

    def _entry_at(self, parent, name):
        self._budget()
        fd = os.open(name, O_PATH_FLAGS, dir_fd=parent.fd)
        try:
            st = _sys.fstatx(fd)
        except BaseException:
            os.close(fd)
            raise
        return self.inodes.adopt(fd, st), st

    def lookup(self, parent_id, name):
        """Find ``name`` in directory ``parent_id``; returns (nodeid, Statx), counting a lookup."""
        parent = self.inodes.get(parent_id)
        if name == b".":
            return self._relookup(parent)
        if name == b"..":
            return self._lookup_dotdot(parent)
        check_name(name)
        inode, st = self._entry_at(parent, name)
        return inode.nodeid, st

    def known_entries(self, parent_id, listing, index, size, sec, nsec):
        """READDIRPLUS records of ``listing`` (a :class:`DirSnapshot` of ``parent_id``) from
        entry ``index`` on, for as long as their inodes are known, in C: ``(bytes, next
        index, whether that entry needs`` :meth:`lookup` ``)``."""
        return self.inodes.table.known_entries(parent_id, listing.records, listing.starts,
                                               index, size, sec, nsec)

    def _relookup(self, inode):
        st = _sys.fstatx(inode.fd)
        self.inodes.relookup(inode)
        return inode.nodeid, st

    def _lookup_dotdot(self, parent):
        # The root's parent is the root: the guest must not see above the shared directory.
        if parent is self.inodes.root:
            return self._relookup(parent)
        fd = os.open("..", O_PATH_FLAGS | os.O_DIRECTORY, dir_fd=parent.fd)
        try:
            st = _sys.fstatx(fd)
            if not self._is_under_root(fd, st):
                raise OSError(errno.EACCES, "parent lies outside the shared directory")
        except BaseException:
            os.close(fd)
            raise
        return self.inodes.adopt(fd, st).nodeid, st

    def _is_under_root(self, fd, st):
        """Walk up from a directory until the shared root (True) or the host's / (False): a
        directory moved out of the share by the host must not be a way out."""
        root_key = self.inodes.root.key
        fds = []
        try:
            while st.key != root_key:
                up = os.open("..", O_PATH_FLAGS | os.O_DIRECTORY, dir_fd=fd)
                fds.append(up)
                up_st = _sys.fstatx(up)
                if up_st.key == st.key:
                    return False
                fd, st = up, up_st
            return True
        finally:
            for f in fds:
                os.close(f)

    def forget(self, nodeid, count):
        if self.inodes.forget(nodeid, count) and self.lock_fds:
            self._drop_lock_fds(lambda k: k[0] == nodeid)

    def mount_id(self, nodeid):
        """The host mount the inode lives on (statx STATX_MNT_ID)."""
        return self.inodes.get(nodeid).key[2]

    def getattr(self, nodeid):
        return _sys.fstatx(self.inodes.get(nodeid).fd)

    # -- attributes -------------------------------------------------------------------------

    def setattr(self, nodeid, *, fh=None, mode=None, uid=None, gid=None, size=None,
                atime_ns=_sys.OMIT, mtime_ns=_sys.OMIT, kill_suidgid=False):
        """Change what is given, in the order chmod, chown, truncate, utimes.

        ``atime_ns``/``mtime_ns`` take nanoseconds since the epoch, ``_sys.NOW`` or
        ``_sys.OMIT``; ``kill_suidgid`` clears setuid/setgid after a size change made for an
        unprivileged caller (FATTR_KILL_SUIDGID).  Returns the new attributes.
        """
        inode = self.inodes.get(nodeid)
        is_link = stat.S_ISLNK(inode.mode)
        with contextlib.ExitStack() as stack:
            fd = stack.enter_context(self.handles.borrow(fh)) if fh is not None else None
            if mode is not None:
                if is_link:
                    raise OSError(errno.EOPNOTSUPP, "symlinks have no mode of their own")
                if fd is not None:
                    os.fchmod(fd, mode)
                else:
                    os.chmod(_proc_path(inode.fd), mode)
            if uid is not None or gid is not None:
                _sys.chown(inode.fd, b"", 0xFFFFFFFF if uid is None else uid,
                           0xFFFFFFFF if gid is None else gid,
                           _sys.EMPTY_PATH | _sys.SYMLINK_NOFOLLOW)
            if size is not None:
                if fd is not None:
                    os.ftruncate(fd, size)
                elif not stat.S_ISREG(inode.mode):
                    raise OSError(errno.EISDIR if stat.S_ISDIR(inode.mode) else errno.EINVAL,
                                  "only regular files can be truncated")
                else:
                    os.truncate(_proc_path(inode.fd), size)
            if kill_suidgid and mode is None and stat.S_ISREG(inode.mode):
                kill_suidgid_of(fd if fd is not None else _proc_path(inode.fd))
            if atime_ns != _sys.OMIT or mtime_ns != _sys.OMIT:
                _sys.utimens(inode.fd, b"", atime_ns, mtime_ns, _sys.EMPTY_PATH)
        return _sys.fstatx(inode.fd)

    def readlink(self, nodeid):
        inode = self.inodes.get(nodeid)
        if not stat.S_ISLNK(inode.mode):
            raise OSError(errno.EINVAL, "not a symlink")
        return os.readlink(b"", dir_fd=inode.fd)

    def statfs(self, nodeid):
        return os.fstatvfs(self.inodes.get(nodeid).fd)

    def access(self, nodeid, mask, caller):
        inode = self.inodes.get(nodeid)
        with caller_credentials(caller):
            ok = os.access(_proc_path(inode.fd), mask, effective_ids=True)
        if not ok:
            raise OSError(errno.EACCES, "access denied")

    # -- creating and removing names --------------------------------------------------------

    def mknod(self, parent_id, name, mode, rdev, caller):
        parent = self.inodes.get(parent_id)
        check_name(name)
        with caller_credentials(caller):
            os.mknod(name, mode, rdev, dir_fd=parent.fd)
        return self._created(parent, name)

    def mkdir(self, parent_id, name, mode, caller):
        parent = self.inodes.get(parent_id)
        check_name(name)
        with caller_credentials(caller):
            os.mkdir(name, mode, dir_fd=parent.fd)
        return self._created(parent, name)

    def symlink(self, parent_id, name, target, caller):
        parent = self.inodes.get(parent_id)
        check_name(name)
        if not target or b"\0" in target or len(target) >= 4096:
            raise OSError(errno.EINVAL, "invalid symlink target")
        with caller_credentials(caller):
            os.symlink(target, name, dir_fd=parent.fd)
        return self._created(parent, name)

    def link(self, nodeid, newparent_id, newname):
        inode = self.inodes.get(nodeid)
        newparent = self.inodes.get(newparent_id)
        check_name(newname)
        if stat.S_ISDIR(inode.mode):
            raise OSError(errno.EPERM, "hard links to directories are not allowed")
        # linkat(AT_FDCWD, "/proc/self/fd/N", ..., AT_SYMLINK_FOLLOW) links the very inode the
        # O_PATH descriptor holds (symlinks included), with no path lookup the guest controls.
        os.link(_proc_path(inode.fd), newname, dst_dir_fd=newparent.fd, follow_symlinks=True)
        return self._created(newparent, newname)

    def _created(self, parent, name):
        inode, st = self._entry_at(parent, name)
        return inode.nodeid, st

    def unlink(self, parent_id, name):
        parent = self.inodes.get(parent_id)
        os.unlink(check_name(name), dir_fd=parent.fd)

    def rmdir(self, parent_id, name):
        parent = self.inodes.get(parent_id)
        os.rmdir(check_name(name), dir_fd=parent.fd)

    def rename(self, parent_id, name, newparent_id, newname, flags=0):
        parent = self.inodes.get(parent_id)
        newparent = self.inodes.get(newparent_id)
        check_name(name)
        check_name(newname)
        if flags & ~RENAME_FLAGS_ALLOWED:
            raise OSError(errno.EINVAL, "unknown rename flags")
        if flags:
            _sys.rename2(parent.fd, name, newparent.fd, newname, flags)
        else:
            os.rename(name, newname, src_dir_fd=parent.fd, dst_dir_fd=newparent.fd)

    # -- files ------------------------------------------------------------------------------

    def open(self, nodeid, flags, kill_suidgid=False):
        """Open a regular file for I/O; returns a handle.  ``kill_suidgid``: the open truncates
        on behalf of a caller without CAP_FSETID (FUSE_OPEN_KILL_SUIDGID)."""
        self._budget()
        inode = self.inodes.get(nodeid)
        if not stat.S_ISREG(inode.mode):
            raise OSError(errno.ELOOP if stat.S_ISLNK(inode.mode) else
                          errno.EISDIR if stat.S_ISDIR(inode.mode) else errno.EACCES,
                          "only regular files are opened for I/O")
        fd = os.open(_proc_path(inode.fd), self._open_flags(flags) | os.O_CLOEXEC)
        if kill_suidgid and flags & os.O_TRUNC:
            try:
                kill_suidgid_of(fd)
            except BaseException:
                os.close(fd)
                raise
        return self._add_handle(fd)

    def _open_flags(self, flags):
        flags &= self.open_flags_allowed
        if self.writeback:
            if flags & os.O_ACCMODE == os.O_WRONLY:
                flags = (flags & ~os.O_ACCMODE) | os.O_RDWR
            flags &= ~os.O_APPEND
        return flags

    def create(self, parent_id, name, mode, flags, caller):
        """Create and open ``name``; returns (nodeid, Statx, fh)."""
        self._budget()
        parent = self.inodes.get(parent_id)
        check_name(name)
        flags = (self._open_flags(flags) | (flags & os.O_EXCL) | os.O_CREAT | os.O_NOFOLLOW |
                 os.O_CLOEXEC)
        with caller_credentials(caller):
            fd = os.open(name, flags, mode, dir_fd=parent.fd)
        try:
            nodeid, st = self._created(parent, name)
        except BaseException:
            os.close(fd)
            raise
        return nodeid, st, self._add_handle(fd)

    def tmpfile(self, parent_id, mode, flags, caller):
        """An unnamed file in directory ``parent_id`` (O_TMPFILE); returns (nodeid, Statx, fh).
        It can be given a name later with ``link``."""
        self._budget()
        parent = self.inodes.get(parent_id)
        flags = self._open_flags(flags) | os.O_TMPFILE | os.O_CLOEXEC
        if flags & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EINVAL, "O_TMPFILE needs write access")
        with caller_credentials(caller):
            fd = os.open(".", flags, mode, dir_fd=parent.fd)
        try:
            path_fd = os.open(_proc_path(fd), O_PATH_FLAGS & ~os.O_NOFOLLOW)
        except BaseException:
            os.close(fd)
            raise
        try:
            st = _sys.fstatx(path_fd)
        except BaseException:
            os.close(path_fd)
            os.close(fd)
            raise
        return self.inodes.adopt(path_fd, st).nodeid, st, self._add_handle(fd)

    def _add_handle(self, fd):
        try:
            return self.handles.add(fd)
        except BaseException:
            os.close(fd)
            raise

    @contextlib.contextmanager
    def mapping_fd(self, nodeid, fh, writable):
        """A descriptor of ``nodeid``'s file that the frontend can mmap (DAX), valid inside the
        ``with`` block.  ``fh`` is an open handle of that file, or None to open the inode (the
        Linux driver maps per inode and sends no handle).  A writable shared mapping needs a
        read-write, non-append descriptor: anything less is EACCES, as mmap would say."""
        inode = self.inodes.get(nodeid)
        if not stat.S_ISREG(inode.mode):
            raise OSError(errno.EINVAL, "only regular files are mapped")
        if fh is None:
            fd = os.open(_proc_path(inode.fd), (os.O_RDWR if writable else os.O_RDONLY) |
                         os.O_CLOEXEC)
            try:
                yield fd
            finally:
                os.close(fd)
            return
        with self.handles.borrow(fh) as fd:
            if _sys.fstatx(fd).key != inode.key:
                raise OSError(errno.EBADF, "the handle belongs to another inode")
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            access = flags & os.O_ACCMODE
            if access == os.O_WRONLY or (writable and (access != os.O_RDWR or
                                                       flags & os.O_APPEND)):
                raise OSError(errno.EACCES, "the handle's open mode does not allow the mapping")
            yield fd

    def read(self, fh, offset, size):
        with self.handles.borrow(fh) as fd:
            return os.pread(fd, size, offset)

    def write(self, fh, offset, data, kill_suidgid=False):
        with self.handles.borrow(fh) as fd:
            written = os.pwrite(fd, data, offset)
            if kill_suidgid and written:
                kill_suidgid_of(fd)
            return written

    def flush(self, fh):
        # Closing a duplicate gives the host file system its close-time hook (and drops POSIX
        # locks the way a close in the guest would) while the handle stays open.
        with self.handles.borrow(fh) as fd:
            os.close(os.dup(fd))

    def release(self, fh):
        self.handles.remove(fh)

    def fsync(self, fh, datasync):
        with self.handles.borrow(fh) as fd:
            (os.fdatasync if datasync else os.fsync)(fd)

    def fallocate(self, fh, mode, offset, length):
        with self.handles.borrow(fh) as fd:
            _sys.fallocate_range(fd, mode, offset, length)

    def lseek(self, fh, offset, whence):
        if whence not in (os.SEEK_SET, os.SEEK_CUR, os.SEEK_END, os.SEEK_DATA, os.SEEK_HOLE):
            raise OSError(errno.EINVAL, "bad whence")
        with self.handles.borrow(fh) as fd:
            return os.lseek(fd, offset, whence)

    # -- extended attributes ----------------------------------------------------------------
    # The calls name the inode as /proc/self/fd/N of its O_PATH descriptor: the kernel resolves
    # that magic link to the very inode, symlinks included (no second follow), and nothing is
    # opened, so FIFOs and devices are safe too.

    def getxattr(self, nodeid, name):
        return os.getxattr(_proc_path(self.inodes.get(nodeid).fd), self._host_xattr(name, True))

    def listxattr(self, nodeid):
        names = (os.fsencode(n) for n in os.listxattr(_proc_path(self.inodes.get(nodeid).fd)))
        if self.xattrmap is not None:
            names = filter(None, map(self.xattrmap.to_guest, names))
        return b"".join(n + b"\0" for n in names)

    def setxattr(self, nodeid, name, value, flags, kill_sgid=False):
        """``kill_sgid``: the guest set an access ACL on behalf of a caller outside the file's
        group (FUSE_SETXATTR_ACL_KILL_SGID): clear setgid afterwards, as chmod would."""
        if flags & ~(os.XATTR_CREATE | os.XATTR_REPLACE):
            raise OSError(errno.EINVAL, "unknown setxattr flags")
        path = _proc_path(self.inodes.get(nodeid).fd)
        os.setxattr(path, self._host_xattr(name), value, flags)
        if kill_sgid:
            mode = os.stat(path).st_mode
            if mode & stat.S_ISGID:
                os.chmod(path, stat.S_IMODE(mode) & ~stat.S_ISGID)

    def removexattr(self, nodeid, name):
        os.removexattr(_proc_path(self.inodes.get(nodeid).fd), self._host_xattr(name))

    def _host_xattr(self, name, getting=False):
        _xattr_name(name)
        if self.xattrmap is None:
            return name
        return _xattr_name(self.xattrmap.to_host(name, getting))

    # -- locks ------------------------------------------------------------------------------
    # POSIX record locks are per (process, file) in the guest; the guest names the process by
    # an opaque lock owner.  Each owner gets its own open file description on the host, and its
    # locks are taken there as OFD locks (F_OFD_*), which conflict between descriptions exactly
    # as POSIX locks conflict between processes.  flock() locks belong to an open file of the
    # guest; they get a description of their own too, keyed the same way.

    def _lock_fd(self, nodeid, owner, kind):
        key = (nodeid, owner, kind)
        with self.locks_lock:
            fd = self.lock_fds.get(key)
        if fd is not None:
            return fd
        self._budget()
        inode = self.inodes.get(nodeid)
        if stat.S_ISDIR(inode.mode) and kind == "flock":
            choices = (os.O_RDONLY | os.O_DIRECTORY,)
        elif stat.S_ISREG(inode.mode):
            choices = (os.O_RDWR, os.O_RDONLY, os.O_WRONLY)
        else:
            raise OSError(errno.EINVAL, "locks are for regular files")
        for flags in choices:
            try:
                fd = os.open(_proc_path(inode.fd), flags | os.O_CLOEXEC)
                break
            except PermissionError:
                continue
        else:
            raise OSError(errno.EACCES, "cannot open the file to lock it")
        with self.locks_lock:
            existing = self.lock_fds.setdefault(key, fd)
            self._locks_changed()
        if existing != fd:
            os.close(fd)
        return existing

    def _locks_changed(self):
        """Tell the hot path whether lock descriptors exist (locks_lock held): while they do,
        it leaves FLUSH, RELEASE and FORGET to the engine, which drops them."""
        self.handles.lock_fds_open = len(self.lock_fds)

    def _drop_lock_fds(self, match):
        with self.locks_lock:
            keys = [k for k in self.lock_fds if match(k)]
            fds = [self.lock_fds.pop(k) for k in keys]
            self._locks_changed()
        for fd in fds:
            os.close(fd)  # closing the description releases every lock it holds

    @staticmethod
    def _flock_struct(start, end, lock_type):
        if lock_type not in LOCK_TYPES or start > OFFSET_MAX or end > OFFSET_MAX or end < start:
            raise OSError(errno.EINVAL, "invalid lock range or type")
        return FLOCK.pack(lock_type, os.SEEK_SET, start, 0 if end == OFFSET_MAX else end - start + 1, 0)

    def getlk(self, nodeid, owner, start, end, lock_type):
        """The first lock that would conflict: (start, end, type, pid), type F_UNLCK if none."""
        fd = self._lock_fd(nodeid, owner, "posix")
        got = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, self._flock_struct(start, end, lock_type))
        t, _, s, length, pid = FLOCK.unpack(got)
        if t == fcntl.F_UNLCK:
            return 0, 0, fcntl.F_UNLCK, 0
        return s, OFFSET_MAX if length == 0 else s + length - 1, t, max(pid, 0)

    def setlk(self, nodeid, owner, start, end, lock_type, *, flock=False, wait=False):
        """Take or release a lock; without ``wait`` a conflict raises EAGAIN."""
        if flock:
            fd = self._lock_fd(nodeid, owner, "flock")
            if lock_type not in LOCK_TYPES:
                raise OSError(errno.EINVAL, "invalid lock type")
            op = {fcntl.F_RDLCK: fcntl.LOCK_SH, fcntl.F_WRLCK: fcntl.LOCK_EX,
                  fcntl.F_UNLCK: fcntl.LOCK_UN}[lock_type]
            fcntl.flock(fd, op if wait else op | fcntl.LOCK_NB)
            return
        data = self._flock_struct(start, end, lock_type)
        fd = self._lock_fd(nodeid, owner, "posix")
        fcntl.fcntl(fd, fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK, data)

    def release_locks(self, nodeid, owner, kind):
        """Drop all of ``owner``'s locks of one kind on an inode (a close in the guest)."""
        self._drop_lock_fds(lambda k: k == (nodeid, owner, kind))

    # -- directories ------------------------------------------------------------------------

    def opendir(self, nodeid):
        self._budget()
        inode = self.inodes.get(nodeid)
        if not stat.S_ISDIR(inode.mode):
            raise OSError(errno.ENOTDIR, "not a directory")
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=inode.fd)
        fh = self._add_handle(fd)
        with self.dirs_lock:
            self.dirs[fh] = DirHandle(fd)
        return fh

    def _dir(self, fh):
        handle = self.dirs.get(fh)
        if handle is None:
            raise OSError(errno.EBADF, "bad directory handle")
        return handle

    def readdir(self, nodeid, fh, offset):
        """The listing of directory handle ``fh`` (a :class:`DirSnapshot`), from which the
        caller sends the entries after cookie ``offset``.  Offset 0 takes a fresh one
        (rewinddir); later offsets page through the same one."""
        handle = self._dir(fh)
        if offset == 0 or handle.entries is None:
            handle.entries = self._list(nodeid, fh)
        return handle.entries

    def _list(self, nodeid, fh):
        inode = self.inodes.get(nodeid)
        st = _sys.fstatx(inode.fd)
        dotdot = st.st_ino
        if inode is not self.inodes.root:
            with contextlib.suppress(OSError):
                dotdot = _sys.fstatx(inode.fd, b"..", _sys.SYMLINK_NOFOLLOW).st_ino
        with self.handles.borrow(fh) as fd:
            return DirSnapshot(*_sys.pack_dirents(fd, st.st_ino, dotdot))

    def releasedir(self, fh):
        with self.dirs_lock:
            self.dirs.pop(fh, None)
        self.handles.remove(fh)

    def fsyncdir(self, fh, datasync):
        self._dir(fh)
        self.fsync(fh, datasync)

    # -- whole file system ------------------------------------------------------------------

    def syncfs(self):
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.inodes.root.fd)
        try:
            _sys.sync_fs(fd)
        finally:
            os.close(fd)

    def destroy(self):
        """End of a session: every inode but the root and every handle is dropped."""
        with self.dirs_lock:
            self.dirs.clear()
        self._drop_lock_fds(lambda k: True)
        self.handles.clear()
        self.inodes.clear()


def _xattr_name(name):
    if not name or b"\0" in name or len(name) > 255:
        raise OSError(errno.ERANGE if len(name) > 255 else errno.EINVAL, "invalid xattr name")
    return name
