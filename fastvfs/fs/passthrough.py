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
* File handles come from a shared ``HandleTable``, node ids from a shared ``NodeTable``
  (fastvfs/fs/_tables.pxd), so the hot path can serve READ and WRITE on the former and
  GETATTR, LOOKUP and FORGET of the latter without calling back into Python.

Safety: each inode holds an ``O_PATH | O_NOFOLLOW`` descriptor (with ``--inode-file-handles``,
a file handle reopened as one when needed: see ``InodeStore``) and every name is resolved one
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
import threading

from . import _sys, _tables
from .. import procfd

log = logging.getLogger("fastvfs.fs")

FUSE_ROOT_ID = 1
O_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
# Open flags a guest may pass through.  O_CREAT/O_EXCL only reach the host through ``create``;
# O_DIRECT is dropped because guest buffers carry no alignment promise (``allow_direct_io``
# keeps it); O_NOATIME is dropped because the host refuses it with EPERM to an opener that
# neither owns the file nor has CAP_FOWNER, which an unprivileged daemon often is not
# (``preserve_noatime`` keeps it); O_NOFOLLOW and O_CLOEXEC are always added.
OPEN_FLAGS_ALLOWED = (os.O_ACCMODE | os.O_APPEND | os.O_TRUNC | os.O_NONBLOCK | os.O_SYNC |
                      os.O_DSYNC | os.O_LARGEFILE)
RENAME_FLAGS_ALLOWED = _tables.RENAME_FLAGS_ALLOWED  # NOREPLACE | EXCHANGE | WHITEOUT
# Descriptors kept open for inodes held by file handle (--inode-file-handles=prefer or
# mandatory), least recently used closed first: hot inodes keep their O_PATH descriptor (and
# the hot path's GETATTR and LOOKUP), the rest are reopened by handle when next used.
HANDLE_FDS_MAX = 1024
# Bytes of directory listings held across all open directory handles (tables/dirs.pxi).
LISTING_BYTES_MAX = _tables.LISTING_BYTES_MAX
# What a lock description is for (fastvfs/fs/tables/locks.pxi).
LOCK_KINDS = {"posix": _tables.LOCK_KIND_POSIX, "flock": _tables.LOCK_KIND_FLOCK,
              "question": _tables.LOCK_KIND_QUESTION}
LOCK_KIND_NAMES = {v: k for k, v in LOCK_KINDS.items()}


def check_name(name):
    """Validate a single path component from the guest (raises OSError: EINVAL for an empty
    name, one with '/' or NUL, '.' or '..'; ENAMETOOLONG beyond NAME_MAX bytes); returns it.
    The rule is the hot path's own (``_tables.check_name_of``), so both answer alike."""
    _tables.check_name_of(name)
    return name


_named = procfd.named


# One implementation each, in C, shared with the hot path (fastvfs/fs/_tables.pyx): clearing
# setuid/setgid after a write, truncate or chown under HANDLE_KILLPRIV_V2, removing the mapped
# security.capability where the kernel would remove the real one, and FLUSH's close of a
# duplicate descriptor.  Each takes a descriptor or a path and raises OSError.
kill_suidgid_of = _tables.kill_suidgid_of
kill_mapped_capability = _tables.kill_mapped_capability_of


class Inode:
    """A view of one node id, made by :class:`InodeStore` for the request that asks (the store
    keeps no Python object per inode).  ``fd``: the inode's O_PATH descriptor, or None when it
    is held by file handle: then ask the store for a descriptor (:meth:`InodeStore.fd`).
    ``mode``: the st_mode seen when the inode was first looked up; only its file type is
    meaningful."""
    __slots__ = ("nodeid", "fd", "key", "mode")

    def __init__(self, nodeid, fd, key, mode):
        self.nodeid = nodeid
        self.fd = fd
        self.key = key
        self.mode = mode


class InodeStore:
    """Node id -> Inode, over the node id table.

    Everything known of an inode lives in ``table``, a ``NodeTable`` in C that the hot path
    reads without the GIL: the node id (with a generation, so a forgotten id is never mistaken
    for a newer inode), the O_PATH descriptor, the inode key (st_dev, st_ino, mount id), the
    file type, the guest's lookup count and, for an inode held by file handle, its handle.  It
    answers GETATTR, and LOOKUP of an inode already known, itself; :meth:`get` builds an
    :class:`Inode` view from it per request.  So a known inode costs one table slot and no
    Python object, whatever the number of inodes a guest makes the daemon hold (SECURITY.md,
    ceilings).

    ``file_handles`` (``--inode-file-handles``): ``"never"`` holds every inode by its O_PATH
    descriptor; ``"prefer"`` holds inodes by file handle (name_to_handle_at) where their file
    system has handles, by descriptor elsewhere; ``"mandatory"`` refuses (the errno of
    name_to_handle_at, EOPNOTSUPP) a lookup where there is none.  An inode held by handle
    costs no descriptor: the table caches at most ``fds_max`` of their descriptors, reopened
    with open_by_handle_at (CAP_DAC_READ_SEARCH) when needed.  Handles come only from
    name_to_handle_at of objects resolved under the shared directory (the guest names nodes
    by id, never by handle), and each is opened on a descriptor the table keeps per host
    mount (the root's, or one of the first inode found there: ``_tables.enter_inode``).  The
    root and O_TMPFILE files (no name yet) are always held by descriptor.
    """

    def __init__(self, root_fd, root_st, table, handles, file_handles="never",
                 fds_max=HANDLE_FDS_MAX):
        self.table = table
        self.handles = handles
        if file_handles != "never":
            table.set_handle_mode(fds_max, file_handles == "mandatory")
            try:
                _tables.keep_mount_of(handles, table, root_fd, root_st.st_mode)
            except OSError:
                if file_handles == "mandatory":
                    raise
        table.add_root(root_fd, *root_st.key, keyed=True, mode=root_st.st_mode)
        self.root = Inode(FUSE_ROOT_ID, root_fd, root_st.key, root_st.st_mode)

    def _view(self, nodeid, hold):
        """The Inode view of live ``nodeid`` (a reference taken with ``hold``); ENOENT."""
        try:
            fd, dev, ino, mnt, mode, by_handle = self.table.node(nodeid, hold)
        except OSError:
            raise OSError(errno.ENOENT, "unknown node id") from None
        return Inode(nodeid, None if by_handle else fd, (dev, ino, mnt), mode)

    def get(self, nodeid):
        """The inode behind ``nodeid``.  Inside a :meth:`PassthroughFs.request_scope` its
        descriptor is also held open until the request ends: a FORGET racing on another queue
        cannot close it, and its number cannot be reused for another file meanwhile."""
        if nodeid == FUSE_ROOT_ID:
            return self.root
        held = getattr(_request_refs, "held", None)
        inode = self._view(nodeid, held is not None)
        if held is not None:
            held.append(nodeid)
        return inode

    def fd(self, inode):
        """An O_PATH descriptor of ``inode`` (from :meth:`get`), valid until the request
        ends: its own, or for an inode held by file handle the cached one, opened by handle
        if none is (ESTALE once the inode is gone).  The reference taken keeps the cache from
        closing it.  Outside a request scope (tests, single-threaded) it is valid only until
        anything may fill the cache: every caller in the daemon runs inside one (the engine's
        requests, its lock waits)."""
        if inode.fd is not None:
            return inode.fd
        nodeid = inode.nodeid
        try:
            fd = self.table.hold_node(nodeid)
        except OSError as exc:
            if exc.errno == errno.EBADF:
                raise OSError(errno.ENOENT, "node id forgotten meanwhile") from None
            raise
        held = getattr(_request_refs, "held", None)
        if held is not None:
            held.append(nodeid)
        else:
            self.table.unhold(nodeid)
        return fd

    def fd_of(self, nodeid):
        return self.fd(self.get(nodeid))

    def adopt(self, fd, st, pin=False):
        """Count one lookup of the inode ``fd`` refers to; takes ownership of ``fd``.
        ``pin``: hold it by descriptor whatever the mode (an O_TMPFILE file, which no handle
        can reopen before it has a name)."""
        nodeid = _tables.enter_inode_of(self.handles, self.table, fd, *st.key, st.st_mode, pin)
        return self._view(nodeid, False)

    def relookup(self, inode):
        """Count one more lookup of a known inode."""
        self.table.relookup(inode.nodeid)

    def nlookup(self, nodeid):
        return self.table.nlookup(nodeid)

    def forget(self, nodeid, count):
        """Take ``count`` lookups away; returns True when the inode was dropped (its fd is
        closed once no request in flight uses it)."""
        return self.table.forget(nodeid, count)

    def clear(self):
        """Drop every inode but the root (a session ended)."""
        self.table.clear()

    def __len__(self):
        return self.table.count


def guest_fd_budget(nofile):
    """Descriptors the guest may make the daemon hold under RLIMIT_NOFILE ``nofile``: all but
    a reserve of an eighth, at least 32 and at most 256, for the daemon's own (memory regions,
    eventfds, sockets, io_uring, the descriptors a request opens for a moment)."""
    return nofile - max(32, min(256, nofile // 8))


_request_refs = threading.local()


class Caller:
    """Who asks for a new object: uid/gid, the supplementary groups the client vouches for
    (FUSE_CREATE_SUPP_GROUP: the parent directory's group when the caller is in it), the
    umask when the client left applying it to us (FUSE_DONT_MASK) and the security contexts
    (xattr name, value) the new object is created with (FUSE_SECURITY_CTX)."""
    __slots__ = ("uid", "gid", "groups", "umask", "labels")

    def __init__(self, uid, gid, groups=(), umask=None, labels=()):
        self.uid = uid
        self.gid = gid
        self.groups = tuple(groups)
        self.umask = umask
        self.labels = tuple(labels)


ROOT_CALLER = Caller(0, 0)


@contextlib.contextmanager
def caller_credentials(caller):
    """Run the body with this thread's fsuid/fsgid, supplementary groups and umask set to the
    caller's.  All three are per thread (raw system calls; CLONE_FS unshared once for the
    umask), the ids and umask switched as the hot path switches them for its creations
    (``_sys.set_fs_creds`` and ``_sys.set_umask``, the C of ``_sys.creds_enter``).  The host
    then applies the umask only where the parent directory has no default ACL, exactly as a
    local creation.

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
            old_mask = _sys.set_umask(caller.umask)  # the thread's own umask
        yield
    finally:
        if old_mask is not None:
            _sys.set_umask(old_mask)
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
    ``preserve_noatime``: pass the guest's O_NOATIME on.  ``xattr``: extended attributes are
    served (the engine's ``--xattr``), which lets the hot path read them itself where no
    ``xattrmap`` renames them, and write them too in a session whose SETXATTR is framed as
    fuse_setxattr_in (``init``).
    """

    def __init__(self, root, handles, *, inodes=None, writeback=False, allow_direct_io=False,
                 preserve_noatime=False, xattr=False, xattrmap=None, fd_budget=None,
                 listing_bytes_max=LISTING_BYTES_MAX, file_handles="never",
                 handle_fds_max=HANDLE_FDS_MAX):
        self.writeback = writeback
        # Descriptors the guest may make us hold (inodes, open files and directories, lock
        # holders): the rest of RLIMIT_NOFILE stays for the daemon itself (memory regions,
        # eventfds, sockets), so a guest opening everything cannot starve the control plane.
        if fd_budget is None:
            fd_budget = guest_fd_budget(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        self.fd_budget = fd_budget
        self.xattrmap = xattrmap
        # The host name of the guest's security.capability when the map moves it elsewhere:
        # the host kernel no longer removes it on modification, so we do (the hot path too).
        self.cap_xattr = None
        if xattrmap is not None:
            try:
                mapped = xattrmap.to_host(b"security.capability")
            except OSError:
                mapped = None
            if mapped not in (None, b"security.capability"):
                self.cap_xattr = mapped
        handles.set_cap_xattr(self.cap_xattr or b"")
        self.open_flags_allowed = (OPEN_FLAGS_ALLOWED | (os.O_DIRECT if allow_direct_io else 0) |
                                   (os.O_NOATIME if preserve_noatime else 0))
        # The hot path opens regular files as ``open`` does, with these settings.
        _tables.set_open_policy(handles, self.open_flags_allowed, writeback, fd_budget,
                                *procfd.base())
        # ... and reads extended attributes as ``getxattr`` and ``listxattr`` do, where they
        # are served (``xattr``: the engine's --xattr) under the guest's own names; it writes
        # them as ``setxattr`` and ``removexattr`` do once a session says how SETXATTR comes
        # (``init``).
        self.xattrs_unmapped = xattr and xattrmap is None
        _tables.set_xattr_policy(handles, self.xattrs_unmapped, False)
        self.root_path = os.path.abspath(root)
        root_fd = os.open(self.root_path, O_PATH_FLAGS | os.O_DIRECTORY)
        # ``inodes``: the node id table, a ``_tables.NodeTable`` (the daemon hands the same one
        # to the hot path); by default a fresh one.
        self.inodes = InodeStore(root_fd, _sys.fstatx(root_fd),
                                 inodes if inodes is not None else _tables.NodeTable(1 << 16),
                                 handles, file_handles, handle_fds_max)
        self.handles = handles
        # Directory handles hold their listings in the handle table (tables/dirs.pxi): together
        # at most ``listing_bytes_max`` bytes (beyond it the least recently read are dropped, to
        # be taken again if the guest goes on paging) plus the one just taken, whatever its
        # size: a directory's listing is as large as the host made it.
        _tables.set_listing_bytes_max(handles, listing_bytes_max)

    @classmethod
    def from_share(cls, share, handles, *, inodes=None, root=None):
        """The file system ``share`` (a ``fastvfs.config.ShareOptions``) describes, served from
        ``root`` (default: its shared directory; a sandbox sees it elsewhere)."""
        return cls(root or share.shared_dir, handles, inodes=inodes, writeback=share.writeback,
                   allow_direct_io=share.allow_direct_io,
                   preserve_noatime=share.preserve_noatime, xattr=share.xattr,
                   xattrmap=share.xattrmap,
                   file_handles=share.inode_file_handles.fs_mode)

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
        """Descriptors the guest makes us hold (the hot path's OPEN sums the same counts): a
        directory handle counts twice (the handle table's ``fds_other``)."""
        table = self.inodes.table
        return (self.handles.count + table.count - table.handle_nodes + table.handle_fds +
                table.fds_other + self.handles.fds_other + self.handles.lock_fds_open)

    def _budget(self):
        """EMFILE for the guest once its share of descriptors is used up."""
        if self.fds_held() >= self.fd_budget:
            raise OSError(errno.EMFILE, "the guest's descriptor budget is used up")

    def _entry_at(self, parent, name):
        self._budget()
        fd = os.open(name, O_PATH_FLAGS, dir_fd=self.inodes.fd(parent))
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

    def plus_entries(self, parent_id, listing, index, size, sec, nsec):
        """READDIRPLUS records of ``listing`` (from :meth:`readdir` of ``parent_id``) from
        entry ``index`` on, each entry looked up in C (the hot path's own code, a known inode
        or a new one), up to one that needs :meth:`lookup` (a submount) or whose lookup
        fails (EMFILE; one gone since the listing was taken is left out): ``(bytes, next
        index, status)``, status 0 (full, or the end), 1 (that entry needs :meth:`lookup`)
        or -errno (that entry's lookup failed so)."""
        return listing.plus_entries(self.inodes.table, parent_id, index, size, sec, nsec)

    def _relookup(self, inode):
        st = _sys.fstatx(self.inodes.fd(inode))
        self.inodes.relookup(inode)
        return inode.nodeid, st

    def _lookup_dotdot(self, parent):
        # The root's parent is the root: the guest must not see above the shared directory.
        if parent is self.inodes.root:
            return self._relookup(parent)
        fd = os.open("..", O_PATH_FLAGS | os.O_DIRECTORY, dir_fd=self.inodes.fd(parent))
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
        directory moved out of the share by the host must not be a way out.  Each level's
        descriptor is closed once the next is open, so however deep the directory, the walk
        holds at most two descriptors besides ``fd``."""
        root_key = self.inodes.root.key
        held = None  # the walk's own descriptor of the directory it stands in
        try:
            while st.key != root_key:
                up = os.open("..", O_PATH_FLAGS | os.O_DIRECTORY, dir_fd=fd)
                if held is not None:
                    os.close(held)
                held = fd = up
                up_st = _sys.fstatx(up)
                if up_st.key == st.key:
                    return False
                st = up_st
            return True
        finally:
            if held is not None:
                os.close(held)

    def forget(self, nodeid, count):
        if self.inodes.forget(nodeid, count):
            _tables.lock_forgotten(self.handles, nodeid)

    def mount_id(self, nodeid):
        """The host mount the inode lives on (statx STATX_MNT_ID)."""
        return self.inodes.get(nodeid).key[2]

    def getattr(self, nodeid):
        return _sys.fstatx(self.inodes.fd_of(nodeid))

    # -- attributes -------------------------------------------------------------------------

    def setattr(self, nodeid, *, fh=None, mode=None, uid=None, gid=None, size=None,
                atime_ns=_sys.OMIT, mtime_ns=_sys.OMIT, kill_suidgid=False):
        """Change what is given, in the order chmod, chown, truncate, utimes.

        ``atime_ns``/``mtime_ns`` take nanoseconds since the epoch, ``_sys.NOW`` or
        ``_sys.OMIT``; ``kill_suidgid`` clears setuid/setgid after a size change made for an
        unprivileged caller (FATTR_KILL_SUIDGID).  Returns the new attributes.
        """
        inode = self.inodes.get(nodeid)
        ifd = self.inodes.fd(inode)
        with contextlib.ExitStack() as stack:
            fd = stack.enter_context(self.handles.borrow(fh)) if fh is not None else -1
            # Mode, owner and size: the hot path's SETATTR changes them through the same code.
            if mode is not None or uid is not None or gid is not None or size is not None or \
                    kill_suidgid:
                _tables.change_node_of(self.handles, ifd, inode.mode, fd, mode, uid, gid, size,
                                       kill_suidgid)
            if atime_ns != _sys.OMIT or mtime_ns != _sys.OMIT:
                _sys.utimens(ifd, b"", atime_ns, mtime_ns, _sys.EMPTY_PATH)
        return _sys.fstatx(ifd)

    def readlink(self, nodeid):
        inode = self.inodes.get(nodeid)
        if not stat.S_ISLNK(inode.mode):
            raise OSError(errno.EINVAL, "not a symlink")
        return os.readlink(b"", dir_fd=self.inodes.fd(inode))

    def statfs(self, nodeid):
        return os.fstatvfs(self.inodes.fd_of(nodeid))

    def access(self, nodeid, mask, caller):
        inode = self.inodes.get(nodeid)
        with _named(self.inodes.fd(inode)) as path, caller_credentials(caller):
            ok = os.access(path, mask, effective_ids=True)
        if not ok:
            raise OSError(errno.EACCES, "access denied")

    # -- creating and removing names --------------------------------------------------------

    # The creations below run the system call of the hot path's own (``_tables.make_name_of``,
    # tables/creates.pxi), with the same credentials switch (``caller_credentials``).

    def mknod(self, parent_id, name, mode, rdev, caller):
        parent = self.inodes.get(parent_id)
        check_name(name)
        with caller_credentials(caller):
            _tables.make_name_of(self.inodes.fd(parent), name, _tables.KIND_MKNOD, mode, rdev)
        return self._created(parent, name, caller)

    def mkdir(self, parent_id, name, mode, caller):
        parent = self.inodes.get(parent_id)
        check_name(name)
        with caller_credentials(caller):
            _tables.make_name_of(self.inodes.fd(parent), name, _tables.KIND_MKDIR, mode)
        return self._created(parent, name, caller)

    def symlink(self, parent_id, name, target, caller):
        parent = self.inodes.get(parent_id)
        check_name(name)
        _tables.check_target_of(target)
        with caller_credentials(caller):
            _tables.make_name_of(self.inodes.fd(parent), name, _tables.KIND_SYMLINK,
                                 target=target)
        return self._created(parent, name, caller)

    def link(self, nodeid, newparent_id, newname):
        inode = self.inodes.get(nodeid)
        newparent = self.inodes.get(newparent_id)
        check_name(newname)
        if stat.S_ISDIR(inode.mode):
            raise OSError(errno.EPERM, "hard links to directories are not allowed")
        # The hot path's link (``_tables.link_name_of``): the very inode the O_PATH
        # descriptor holds, through its /proc/self/fd name.
        _tables.link_name_of(self.handles, self.inodes.fd(inode), self.inodes.fd(newparent),
                             newname)
        return self._created(newparent, newname)

    def _created(self, parent, name, caller=None):
        """The entry of an object just created as ``name``, given the caller's security
        contexts; when one cannot be set the object is removed again and the error stands."""
        inode, st = self._entry_at(parent, name)
        if caller is not None and caller.labels:
            try:
                self._label(self.inodes.fd(inode), caller.labels)
            except BaseException:
                self.forget(inode.nodeid, 1)
                try:
                    (os.rmdir if stat.S_ISDIR(st.st_mode) else os.unlink)(
                        name, dir_fd=self.inodes.fd(parent))
                except OSError:
                    pass
                raise
        return inode.nodeid, st

    def _label(self, fd, labels):
        """Set the security contexts (FUSE_SECURITY_CTX) on the new object ``fd`` names, through
        the xattr map, with the daemon's credentials as the reference daemons do: whether a
        ``security.*`` attribute may be set is the host LSM's decision (without one, commoncap
        asks for CAP_SYS_ADMIN).  Only LSM labels are taken: names in ``security.``, not
        ``security.capability``, which grants privileges rather than labels."""
        for name, value in labels:
            if not name.startswith(b"security.") or name == b"security.capability":
                raise OSError(errno.EINVAL, "not a security label")
            with _named(fd) as path:
                os.setxattr(path, self._host_xattr(name), value)

    def unlink(self, parent_id, name):
        parent = self.inodes.get(parent_id)
        os.unlink(check_name(name), dir_fd=self.inodes.fd(parent))

    def rmdir(self, parent_id, name):
        parent = self.inodes.get(parent_id)
        os.rmdir(check_name(name), dir_fd=self.inodes.fd(parent))

    def rename(self, parent_id, name, newparent_id, newname, flags=0):
        parent = self.inodes.get(parent_id)
        newparent = self.inodes.get(newparent_id)
        check_name(name)
        check_name(newname)
        if flags & ~RENAME_FLAGS_ALLOWED:
            raise OSError(errno.EINVAL, "unknown rename flags")
        if flags:
            _sys.rename2(self.inodes.fd(parent), name, self.inodes.fd(newparent), newname, flags)
        else:
            os.rename(name, newname, src_dir_fd=self.inodes.fd(parent), dst_dir_fd=self.inodes.fd(newparent))

    # -- files ------------------------------------------------------------------------------

    def open(self, nodeid, flags, kill_suidgid=False):
        """Open a regular file for I/O; returns a handle.  ``kill_suidgid``: the open truncates
        on behalf of a caller without CAP_FSETID (FUSE_OPEN_KILL_SUIDGID)."""
        self._budget()
        fd = self._reopen(self.inodes.get(nodeid), self._open_flags(flags))
        if flags & os.O_TRUNC and (kill_suidgid or self.cap_xattr is not None):
            try:
                if self.cap_xattr is not None:
                    kill_mapped_capability(fd, self.cap_xattr)
                if kill_suidgid:
                    kill_suidgid_of(fd)
            except BaseException:
                os.close(fd)
                raise
        return self._add_handle(fd)

    def _reopen(self, inode, flags):
        """Open ``inode`` for I/O through ``/proc/self/fd`` with ``flags``, in C as the hot
        path's ``open_node`` and a lock's ``lock_open`` open it (``_tables.reopen``).  Only
        regular files are opened, checked before the open, since opening a FIFO blocks until a
        peer comes and opening a device reaches a host driver (the check is final: the
        /proc/self/fd name opens the very inode checked, whose type never changes)."""
        return _tables.reopen(self.handles, self.inodes.fd(inode), inode.mode, flags)

    def _open_flags(self, flags):
        flags &= self.open_flags_allowed
        if self.writeback:
            if flags & os.O_ACCMODE == os.O_WRONLY:
                flags = (flags & ~os.O_ACCMODE) | os.O_RDWR
            flags &= ~os.O_APPEND
        return flags

    def create(self, parent_id, name, mode, flags, caller, kill_suidgid=False):
        """Create and open ``name``; returns (nodeid, Statx, fh).

        The file is created with O_EXCL whatever the guest asked.  When the name exists and
        the guest did not ask for O_EXCL, the existing entry is looked up (O_PATH, O_NOFOLLOW)
        and opened exactly as OPEN opens it (``kill_suidgid`` as there): an existing FIFO,
        device node, socket or symlink is never opened for I/O."""
        self._budget()
        parent = self.inodes.get(parent_id)
        check_name(name)
        open_flags = self._open_flags(flags)
        try:
            with caller_credentials(caller):
                fd = _tables.make_name_of(self.inodes.fd(parent), name, _tables.KIND_CREATE,
                                          mode, flags=open_flags)
        except FileExistsError:
            if flags & os.O_EXCL:
                raise
            inode, st = self._entry_at(parent, name)
            try:
                return inode.nodeid, st, self.open(inode.nodeid, flags, kill_suidgid)
            except BaseException:
                self.forget(inode.nodeid, 1)
                raise
        try:
            if flags & os.O_TRUNC and self.cap_xattr is not None:  # an existing file truncated
                kill_mapped_capability(fd, self.cap_xattr)
            nodeid, st = self._created(parent, name, caller)
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
            fd = os.open(".", flags, mode, dir_fd=self.inodes.fd(parent))
        try:
            with _named(fd) as path:
                path_fd = os.open(path, O_PATH_FLAGS & ~os.O_NOFOLLOW)
        except BaseException:
            os.close(fd)
            raise
        try:
            st = _sys.fstatx(path_fd)
        except BaseException:
            os.close(path_fd)
            os.close(fd)
            raise
        inode = self.inodes.adopt(path_fd, st, pin=True)
        nodeid = inode.nodeid
        if caller.labels:
            try:
                self._label(self.inodes.fd(inode), caller.labels)
            except BaseException:
                self.forget(nodeid, 1)
                os.close(fd)
                raise
        return nodeid, st, self._add_handle(fd)

    def _add_handle(self, fd, directory=False):
        try:
            return self.handles.add(fd, directory)
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
            fd = self._reopen(inode, os.O_RDWR if writable else os.O_RDONLY)
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
            if self.cap_xattr is not None and data:
                kill_mapped_capability(fd, self.cap_xattr)
            written = os.pwrite(fd, data, offset)
            if kill_suidgid and written:
                kill_suidgid_of(fd)
            return written

    def flush(self, fh):
        with self.handles.borrow(fh) as fd:
            _tables.flush(fd)

    def release(self, fh):
        """Close a handle: a file's, or a directory's (the guest may close one with RELEASE as
        well as RELEASEDIR), then with its listing (the handle table drops it)."""
        self.handles.remove(fh)     # and the lock descriptions only ``fh`` was left to

    def fsync(self, fh, datasync):
        with self.handles.borrow(fh) as fd:
            (os.fdatasync if datasync else os.fsync)(fd)

    def fallocate(self, fh, mode, offset, length):
        with self.handles.borrow(fh) as fd:
            if self.cap_xattr is not None:  # ext4 and xfs: file_modified, as for a write
                kill_mapped_capability(fd, self.cap_xattr)
            _sys.fallocate_range(fd, mode, offset, length)

    def copy_file_range(self, fh_in, off_in, fh_out, off_out, length):
        """Copy ``length`` bytes between two handles' files in the host kernel (no data
        through the daemon; ``_tables.copy_range``, the hot path's too); returns the bytes
        copied, short at end of file.  The output is modified as a write modifies it (the
        mapped capability dropped)."""
        with self.handles.borrow(fh_in) as fd_in, self.handles.borrow(fh_out) as fd_out:
            return _tables.copy_file_range(self.handles, fd_in, off_in, fd_out, off_out, length)

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
        with _named(self.inodes.fd_of(nodeid)) as path:
            return os.getxattr(path, self._host_xattr(name, True))

    def listxattr(self, nodeid):
        with _named(self.inodes.fd_of(nodeid)) as path:
            names = [os.fsencode(n) for n in os.listxattr(path)]
        if self.xattrmap is not None:
            names = filter(None, map(self.xattrmap.to_guest, names))
        return b"".join(n + b"\0" for n in names)

    def setxattr(self, nodeid, name, value, flags, kill_sgid=False):
        """``kill_sgid``: the guest set an access ACL on behalf of a caller outside the file's
        group (FUSE_SETXATTR_ACL_KILL_SGID): clear setgid afterwards, as chmod would."""
        if flags & ~(os.XATTR_CREATE | os.XATTR_REPLACE):
            raise OSError(errno.EINVAL, "unknown setxattr flags")
        with _named(self.inodes.fd_of(nodeid)) as path:
            os.setxattr(path, self._host_xattr(name), value, flags)
            if kill_sgid:
                mode = os.stat(path).st_mode
                if mode & stat.S_ISGID:
                    os.chmod(path, stat.S_IMODE(mode) & ~stat.S_ISGID)

    def removexattr(self, nodeid, name):
        with _named(self.inodes.fd_of(nodeid)) as path:
            os.removexattr(path, self._host_xattr(name))

    def _host_xattr(self, name, getting=False):
        _xattr_name(name)
        if self.xattrmap is None:
            return name
        return _xattr_name(self.xattrmap.to_host(name, getting))

    # -- locks ------------------------------------------------------------------------------
    # The descriptions holding the guest's POSIX and flock locks are the handle table's
    # (fastvfs/fs/tables/locks.pxi, which says how locks map onto them and when they go):
    # GETLK and SETLK are answered there as the hot path answers them; the file system opens
    # a description when the table has none, waits (SETLKW) and takes flock locks.

    @property
    def lock_fds(self):
        """The descriptions held, as {(nodeid, owner, kind): None} (owner None for the
        inode's question description)."""
        return {(n, None if k == _tables.LOCK_KIND_QUESTION else o, LOCK_KIND_NAMES[k]): None
                for n, o, k in _tables.lock_keys(self.handles)}

    def _open_lock_file(self, nodeid, kind, lock_type):
        """A new description (fd, writable) with the least access the lock needs, opened in C
        as the hot path opens it (``_tables.lock_open_fd``), here where a node may be held by
        file handle."""
        self._budget()
        inode = self.inodes.get(nodeid)
        return _tables.lock_open_fd(self.handles, self.inodes.fd(inode), inode.mode,
                                    LOCK_KINDS[kind], lock_type)

    def _lock_ref(self, nodeid, owner, kind, fh, lock_type):
        """The owner's description (a ``_tables.LockRef``: ``put`` it back) with ``fh``
        recorded in it, opened now if needed; None for an unlock when the owner holds none.
        EBADF if ``fh`` is not a live handle."""
        ref = _tables.lock_ref(self.handles, nodeid, owner, LOCK_KINDS[kind], fh)
        if ref is None and lock_type != fcntl.F_UNLCK:
            fd, writable = self._open_lock_file(nodeid, kind, lock_type)
            ref = _tables.lock_ref(self.handles, nodeid, owner, LOCK_KINDS[kind], fh, fd,
                                   writable)
        return ref

    def getlk(self, nodeid, owner, start, end, lock_type, fh=0):
        """The first lock that would conflict: (start, end, type, pid), type F_UNLCK if none
        (``_tables.lock_getlk``: the owner's own description, or the inode's question
        description, kept while ``fh`` is open and until a FLUSH of the inode)."""
        got = _tables.lock_getlk(self.handles, nodeid, owner, fh, start, end, lock_type)
        if got is None:
            fd, writable = self._open_lock_file(nodeid, "question", fcntl.F_RDLCK)
            got = _tables.lock_getlk(self.handles, nodeid, owner, fh, start, end, lock_type,
                                     fd, writable)
        return got

    def setlk(self, nodeid, fh, owner, start, end, lock_type, *, flock=False, wait=False,
              pid=0):
        """Take or release a lock through the guest's handle ``fh``; without ``wait`` a
        conflict raises EAGAIN.  ``pid``: the guest process asking (fuse_lk_in.lk.pid)."""
        if flock:
            # The hot path's body (``_tables.lock_flock``), waiting without the GIL.
            if not _tables.lock_flock(self.handles, nodeid, owner, fh, lock_type, wait):
                fd, writable = self._open_lock_file(nodeid, "flock", lock_type)
                _tables.lock_flock(self.handles, nodeid, owner, fh, lock_type, wait, fd,
                                   writable)
            return
        if not wait:
            if not _tables.lock_setlk(self.handles, nodeid, owner, fh, start, end, lock_type,
                                      pid):
                fd, writable = self._open_lock_file(nodeid, "posix", lock_type)
                _tables.lock_setlk(self.handles, nodeid, owner, fh, start, end, lock_type,
                                   pid, fd, writable)
            return
        _tables.lock_check(start, end, lock_type)
        ref = self._lock_ref(nodeid, owner, "posix", fh, lock_type)
        if ref is None:
            return
        try:
            ref.wait(start, end, lock_type, pid)    # holds the description, not its mutex
        finally:
            ref.put()

    def release_locks(self, nodeid, owner, kind):
        """Drop all of ``owner``'s locks of one kind on an inode (a close in the guest); a
        FLUSH (``kind`` "posix") drops the inode's question description too."""
        if kind == "posix":
            _tables.lock_flushed(self.handles, nodeid, owner)
        elif kind == "flock":
            _tables.lock_flock_unlocked(self.handles, nodeid, owner)
        else:
            raise ValueError(kind)

    # -- directories ------------------------------------------------------------------------

    def opendir(self, nodeid):
        """A directory handle of ``nodeid``, opened in C as the hot path's OPENDIR opens it
        (``_tables.opendir``), here where only the file system can: no open policy, the
        descriptor budget used up, a node held by file handle without a descriptor."""
        fh = _tables.opendir(self.handles, self.inodes.table, nodeid)
        if fh is not None:
            return fh
        self._budget()
        inode = self.inodes.get(nodeid)
        if not stat.S_ISDIR(inode.mode):
            raise OSError(errno.ENOTDIR, "not a directory")
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.inodes.fd(inode))
        return self._add_handle(fd, directory=True)

    def readdir(self, nodeid, fh, offset):
        """The listing of directory handle ``fh`` (a ``_tables.Listing``, the hot path's own),
        from which the caller sends the entries after cookie ``offset``.  Offset 0 takes a
        fresh one (rewinddir); later offsets page through the same one."""
        listing = _tables.listing(self.handles, self.inodes.table, nodeid, fh, offset)
        if listing is None:
            listing = _tables.listing_of(self.handles, fh, offset, lambda: self._inos(nodeid))
        return listing

    def _inos(self, nodeid):
        """The inode numbers of directory ``nodeid`` and of its parent (its own for the root,
        and where the parent cannot be asked)."""
        inode = self.inodes.get(nodeid)
        dot = dotdot = inode.key[1]
        if inode is not self.inodes.root:
            with contextlib.suppress(OSError):
                dotdot = _sys.fstatx(self.inodes.fd(inode), b"..", _sys.SYMLINK_NOFOLLOW).st_ino
        return dot, dotdot

    def releasedir(self, fh):
        self.release(fh)

    def fsyncdir(self, fh, datasync):
        if not _tables.is_directory_handle(self.handles, fh):
            raise OSError(errno.EBADF, "bad directory handle")
        self.fsync(fh, datasync)

    # -- whole file system ------------------------------------------------------------------

    def syncfs(self, nodeid):
        """Sync the host file system that holds ``nodeid``: the guest sends SYNCFS for each of
        its superblocks, and with announced submounts a submount's root is its own superblock
        there; for any other inode the file system of the share's root is synced
        (``_tables.sync_fs``, the hot path's too)."""
        inode = self.inodes.get(nodeid)
        if not stat.S_ISDIR(inode.mode):
            inode = self.inodes.root
        _tables.sync_fs(self.inodes.fd(inode))

    def init(self, *, setxattr_ext, security_ctx=False, dont_mask=False):
        """Start of a session, before its first request but INIT: ``setxattr_ext`` when the
        session frames SETXATTR as fuse_setxattr_in with FUSE_SETXATTR_EXT's fields, which
        only the engine reads (the hot path then leaves SETXATTR and REMOVEXATTR to it);
        ``security_ctx`` when its creations carry security contexts (FUSE_SECURITY_CTX: the
        hot path then leaves MKNOD, MKDIR, SYMLINK, CREATE and LINK to it); ``dont_mask`` when
        the caller's umask is ours to apply (FUSE_DONT_MASK)."""
        _tables.set_xattr_policy(self.handles, self.xattrs_unmapped, not setxattr_ext)
        _tables.set_create_session(self.handles, security_ctx, dont_mask)

    def destroy(self):
        """End of a session: every inode but the root and every handle is dropped."""
        _tables.lock_drop_all(self.handles)
        self.handles.clear()
        self.inodes.clear()


def _xattr_name(name):
    if not name or b"\0" in name or len(name) > 255:
        raise OSError(errno.ERANGE if len(name) > 255 else errno.EINVAL, "invalid xattr name")
    return name
