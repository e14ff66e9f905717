"""FUSE engine: decodes requests, runs them on the file system, encodes replies.

The hot path calls ``FuseEngine.handle(request, out_size)`` for every request it does not serve
itself; ``request`` is the whole request (fuse_in_header included, exactly ``len`` bytes) and
``out_size`` the room for the reply payload after fuse_out_header.  It returns ``None`` when
the opcode takes no reply (FORGET, BATCH_FORGET), ``(error, payload)`` with ``error`` a
negative errno or 0, or, for a request answered later (a SETLKW that must wait), a callable
the hot path calls with a pending reply whose ``complete(error, payload)`` sends the answer.  It never raises: a bad request is an error reply, and the daemon serves on.
"""

import errno
import logging
import os
import stat
import struct
import threading
import time

from .. import dax
from . import abi
from .abi import Opcode
from ..fs import _sys, _tables
from ..fs.idmap import IdTranslation
from ..fs.passthrough import Caller


def preload(thread_pool_size):
    """Import now what an engine with ``thread_pool_size`` pool threads imports when it is
    built, which the daemon does after leaving the host's tree (the sandbox), where the
    interpreter's library is out of reach: the thread pool's executor (the submodule itself,
    as ``concurrent.futures`` loads its executors lazily).  An engine without a pool imports
    nothing more."""
    if thread_pool_size > 0:
        import concurrent.futures.thread  # noqa: F401


log = logging.getLogger("fastvfs.fuse")
trace_log = logging.getLogger("fastvfs.fuse.trace")


def _op_name(opcode):
    try:
        return Opcode(opcode).name
    except ValueError:
        return str(opcode)

MAX_WRITE = 1 << 20
MAX_PAGES = 256
MAX_BACKGROUND = 256
# The most one read, write or copy moves in Linux (INT_MAX rounded down to a page).
MAX_RW_COUNT = 0x7FFFF000
CONGESTION_THRESHOLD = 192
# Capabilities offered at INIT; the reply carries those the guest also offered.
# HANDLE_KILLPRIV_V2: the guest leaves clearing setuid/setgid on write, truncate and
# open(O_TRUNC) by unprivileged callers to us (it cannot do it right for direct I/O itself).
WANTED_FLAGS = (abi.FUSE_ASYNC_READ | abi.FUSE_ATOMIC_O_TRUNC | abi.FUSE_BIG_WRITES |
                abi.FUSE_DO_READDIRPLUS | abi.FUSE_READDIRPLUS_AUTO | abi.FUSE_PARALLEL_DIROPS |
                abi.FUSE_ASYNC_DIO | abi.FUSE_MAX_PAGES | abi.FUSE_INIT_EXT |
                abi.FUSE_HANDLE_KILLPRIV_V2 | abi.FUSE_CREATE_SUPP_GROUP)
FUSE_ATTR_SUBMOUNT = 1 << 0

# What --readonly refuses outright (OPEN and SETUPMAPPING are checked for write access).
MODIFYING_OPS = frozenset({
    Opcode.SETATTR, Opcode.SYMLINK, Opcode.MKNOD, Opcode.MKDIR, Opcode.UNLINK, Opcode.RMDIR,
    Opcode.RENAME, Opcode.RENAME2, Opcode.LINK, Opcode.CREATE, Opcode.TMPFILE, Opcode.WRITE,
    Opcode.SETXATTR, Opcode.REMOVEXATTR, Opcode.FALLOCATE, Opcode.COPY_FILE_RANGE})
# Served on the queue's own thread even with a thread pool: the session, and requests that
# are cheap and order-sensitive (FORGET has no reply at all).
INLINE_OPS = frozenset({Opcode.INIT, Opcode.DESTROY, Opcode.FORGET, Opcode.BATCH_FORGET,
                        Opcode.INTERRUPT})
# Requests queued or running on the thread pool, per pool thread, beyond which the queue thread
# that hands one over waits for a place: each holds its request (up to MAX_WRITE bytes), so
# this bounds what a guest republishing heads can make the daemon hold.
POOL_BACKLOG_PER_THREAD = 8


class CachePolicy:
    """Timeouts and open flags of one cache mode, named as the reference daemons name them.

    never: nothing is cached in the guest (timeouts 0, direct I/O), every change by anyone is
    seen at once.  auto: 1 s metadata timeouts, page cache kept until the next open
    (close-to-open).  metadata: long metadata timeouts, file data not cached (direct I/O).
    always: long timeouts and kept caches: for a single writer.
    """

    # Direct I/O comes with FOPEN_PARALLEL_DIRECT_WRITES: every WRITE is a pwrite at its own
    # offset (no file position, no per-handle state), so a Linux 6.2+ guest may send several
    # direct writes to one file at once, under its inode's shared lock (fs/fuse/file.c,
    # fuse_dio_wr_exclusive_lock: appending and growing writes still take it exclusively).
    # Older guests ignore the flag.
    DIRECT = abi.FOPEN_DIRECT_IO | abi.FOPEN_PARALLEL_DIRECT_WRITES
    MODES = {"never": (0.0, DIRECT, 0),
             "auto": (1.0, 0, 0),
             "metadata": (86400.0, DIRECT, abi.FOPEN_KEEP_CACHE | abi.FOPEN_CACHE_DIR),
             "always": (86400.0, abi.FOPEN_KEEP_CACHE, abi.FOPEN_KEEP_CACHE | abi.FOPEN_CACHE_DIR)}
    ALIASES = {"none": "never"}

    def __init__(self, mode="auto"):
        mode = self.ALIASES.get(mode, mode)
        if mode not in self.MODES:
            raise ValueError(f"unknown cache mode {mode!r}")
        self.mode = mode
        timeout, self.open_flags, self.opendir_flags = self.MODES[mode]
        self.timeout = abi.split_timeout(timeout)
        self.auto_inval = mode == "auto"


def _errno(exc):
    return -(exc.errno or errno.EIO)


class FuseEngine:
    """One FUSE session over a file system; safe to call from several queue threads."""

    def __init__(self, fs, cache="auto", on_session=None, *, xattr=False, writeback=False,
                 readdirplus=True, posix_locks=True, flock=True, posix_acl=False,
                 max_lock_waiters=128, dax=None, readonly=False, announce_submounts=False,
                 killpriv_v2=True, thread_pool_size=0, trace=False, idmap=None,
                 security_label=False, allow_mmap=False):
        self.fs = fs
        # Guest <-> host id translation (fastvfs.fs.idmap.IdTranslation), None for identity.
        # The hot path's LOOKUP and GETATTR do not translate: with one, the daemon leaves them
        # to this engine (the queues are not given the node id table).
        self.idmap = idmap or None
        self.trace = trace
        self.readonly = readonly
        self.announce_submounts = announce_submounts
        # Requests that may block are run on this pool when one is asked for, so a slow one
        # (a huge READDIR, an fsync on a slow disk) never holds up its queue.
        self.pool = None
        if thread_pool_size > 0:
            import concurrent.futures.thread   # loaded before any sandbox: see ``preload``
            self.pool = concurrent.futures.thread.ThreadPoolExecutor(
                thread_pool_size, thread_name_prefix="fastvfs-pool")
        # Backpressure: at most this many requests wait or run on the pool at once; the queue
        # thread handing over one more blocks (not reading its ring) until one finishes.
        self.pool_slots = threading.BoundedSemaphore(
            max(1, thread_pool_size) * POOL_BACKLOG_PER_THREAD)
        # The DAX cache window (fastvfs.dax.DaxWindow) when one is configured.
        self.dax = dax
        self.cache = cache if isinstance(cache, CachePolicy) else CachePolicy(cache)
        self.on_session = on_session
        self.xattr = xattr
        self.wanted_flags = WANTED_FLAGS
        if writeback:
            self.wanted_flags |= abi.FUSE_WRITEBACK_CACHE
        if not readdirplus or self.cache.mode == "never":
            # With cache never the entries of a READDIRPLUS expire at once: the guest looks each
            # name up again anyway, so listing attributes is wasted work (and lookup counts to
            # forget), as the reference daemons judge too.
            self.wanted_flags &= ~(abi.FUSE_DO_READDIRPLUS | abi.FUSE_READDIRPLUS_AUTO)
        if self.cache.auto_inval:
            self.wanted_flags |= abi.FUSE_AUTO_INVAL_DATA
        if posix_locks:
            self.wanted_flags |= abi.FUSE_POSIX_LOCKS
        if flock:
            self.wanted_flags |= abi.FUSE_FLOCK_LOCKS
        if not killpriv_v2:
            self.wanted_flags &= ~abi.FUSE_HANDLE_KILLPRIV_V2
        if announce_submounts:
            self.wanted_flags |= abi.FUSE_SUBMOUNTS
        if posix_acl:
            # The guest checks ACLs itself and leaves the umask to us (applied by the host only
            # where no default ACL applies); ACL changes may ask us to drop setgid.
            self.wanted_flags |= (abi.FUSE_POSIX_ACL | abi.FUSE_DONT_MASK |
                                  abi.FUSE_SETXATTR_EXT)
        if security_label:
            # The guest sends the LSM label of every object it creates; the file system gives
            # the object that label at creation (see ``_labels``).
            self.wanted_flags |= abi.FUSE_SECURITY_CTX
        if allow_mmap:
            # The guest may mmap(MAP_SHARED) files opened with FOPEN_DIRECT_IO (--cache never
            # and metadata), mapping them through its page cache.
            self.wanted_flags |= abi.FUSE_DIRECT_IO_ALLOW_MMAP
        self.session_flags = 0
        # Each SETLKW that has to wait holds a thread until the lock is granted.
        self.lock_waiters = threading.BoundedSemaphore(max_lock_waiters)
        self.initialized = False
        self.minor = abi.FUSE_KERNEL_MINOR_VERSION
        self.init_lock = threading.Lock()
        self.table = {}
        for op in Opcode:
            method = getattr(self, f"do_{op.name.lower()}", None)
            if method is not None:
                self.table[int(op)] = method

    @classmethod
    def from_share(cls, fs, share, *, dax=None):
        """The FUSE session ``share`` (a ``fastvfs.config.ShareOptions``) describes, over
        ``fs``, with the DAX window ``dax`` if any."""
        return cls(fs, share.cache, xattr=share.xattr, writeback=share.writeback,
                   readdirplus=share.readdirplus, posix_locks=share.posix_lock,
                   flock=share.flock, posix_acl=share.posix_acl, dax=dax,
                   readonly=share.readonly, announce_submounts=share.announce_submounts,
                   killpriv_v2=share.killpriv_v2, thread_pool_size=share.thread_pool_size,
                   trace=share.trace, security_label=share.security_label,
                   allow_mmap=share.allow_mmap,
                   idmap=IdTranslation(share.translate_uid, share.translate_gid))

    # -- entry point -------------------------------------------------------------------------

    def handle(self, request, out_size):
        if self.trace:
            return self._traced(request, out_size)
        return self._dispatch(request, out_size)

    def _dispatch(self, request, out_size):
        if self.pool is not None and len(request) >= abi.IN_HEADER_SIZE:
            opcode = abi.in_header.unpack_from(request)[1]
            if opcode not in INLINE_OPS:
                def run(pending):
                    self.pool_slots.acquire()
                    try:
                        self.pool.submit(self._run_pooled, pending, request, out_size)
                    except BaseException:
                        self.pool_slots.release()
                        raise
                return run
        return self._handle(request, out_size)

    def _traced(self, request, out_size):
        """``--log-level trace``: one structured line per request (the daemon then sends every
        request through here, the C fast path included)."""
        start = time.perf_counter_ns()
        if len(request) >= abi.IN_HEADER_SIZE:
            _, opcode, unique, nodeid, uid, gid, pid, _, _ = abi.in_header.unpack_from(request)
        else:
            opcode = unique = nodeid = uid = gid = pid = -1
        result = self._dispatch(request, out_size)
        error = result[0] if isinstance(result, tuple) else 0
        trace_log.debug("request unique=%d op=%s nodeid=%d uid=%d gid=%d pid=%d len=%d "
                        "error=%d reply=%s us=%.1f", unique, _op_name(opcode), nodeid, uid, gid,
                        pid, len(request), error,
                        "none" if result is None else "deferred" if callable(result)
                        else len(result[1]), (time.perf_counter_ns() - start) / 1000)
        return result

    def _run_pooled(self, pending, request, out_size):
        try:
            self._answer_pooled(pending, request, out_size)
        finally:
            self.pool_slots.release()

    def _answer_pooled(self, pending, request, out_size):
        try:
            result = self._handle(request, out_size)
            if result is None:
                pending.complete(0)   # cannot happen: no-reply opcodes run inline
            elif callable(result):
                result(pending)
            else:
                pending.complete(result[0], result[1])
        except Exception:
            log.exception("pooled request failed")
            pending.complete(-errno.EIO)

    def _handle(self, request, out_size):
        if len(request) < abi.IN_HEADER_SIZE:
            return -errno.EINVAL, b""
        _, opcode, _, nodeid, uid, gid, pid, extlen, _ = abi.in_header.unpack_from(request)
        body = memoryview(request)[abi.IN_HEADER_SIZE:]
        groups = ()
        labels = None
        if extlen:
            try:
                body, groups, labels = self._extensions(body, extlen)
            except (OSError, struct.error):
                return -errno.EINVAL, b""
        method = self.table.get(opcode)
        if method is None:
            return -errno.ENOSYS, b""
        if not self.initialized and opcode != Opcode.INIT:
            return -errno.EIO, b""
        if self.readonly and opcode in MODIFYING_OPS:
            return -errno.EROFS, b""
        try:
            with self.fs.request_scope():
                result = method(nodeid, body, out_size, (uid, gid, pid, groups, labels))
        except OSError as exc:
            return _errno(exc), b""
        except (struct.error, ValueError, OverflowError, UnicodeError):
            return -errno.EINVAL, b""
        except Exception:
            log.exception("opcode %d failed", opcode)
            return -errno.EIO, b""
        if result is None or callable(result):
            return result  # no reply at all, or a reply the engine sends later
        return 0, result

    def _extensions(self, body, extlen):
        """Split request extensions off the body; returns (body, supplementary groups, security
        contexts or None).  Only negotiated extensions are taken: the group extension
        (FUSE_CREATE_SUPP_GROUP) and one security context block (FUSE_SECURITY_CTX)."""
        size = extlen * 8
        if size > len(body):
            raise OSError(errno.EINVAL, "request extension longer than the request")
        ext, body = body[len(body) - size:], body[:len(body) - size]
        groups = ()
        labels = None
        pos = 0
        while pos < size:
            ext_size, ext_type = abi.ext_header.unpack_from(ext, pos)
            if ext_size < abi.ext_header.size or ext_size % 8 or pos + ext_size > size:
                raise OSError(errno.EINVAL, "malformed request extension")
            if (ext_type == abi.FUSE_EXT_GROUPS and
                    self.session_flags & abi.FUSE_CREATE_SUPP_GROUP):
                (count,) = struct.unpack_from("<I", ext, pos + abi.ext_header.size)
                if abi.ext_header.size + 4 + 4 * count > ext_size or count > 16:
                    raise OSError(errno.EINVAL, "malformed group extension")
                groups = struct.unpack_from(f"<{count}I", ext, pos + abi.ext_header.size + 4)
            elif (ext_type <= abi.FUSE_MAX_NR_SECCTX and labels is None and
                    self.session_flags & abi.FUSE_SECURITY_CTX):
                labels = self._security_contexts(ext[pos:pos + ext_size])
            else:
                raise OSError(errno.EINVAL, "request extension not negotiated")
            pos += ext_size
        return body, groups, labels

    @staticmethod
    def _security_contexts(block):
        """The (xattr name, value) pairs of a fuse_secctx_header block (``block`` starts at the
        header; its ``size`` field bounds what is read).  Each fuse_secctx record, with its
        name and value, is 8-aligned as the kernel lays them out (fs/fuse/dir.c)."""
        size, count = abi.ext_header.unpack_from(block)
        if size < abi.ext_header.size or size > len(block) or count > abi.FUSE_MAX_NR_SECCTX:
            raise OSError(errno.EINVAL, "malformed security context")
        block = block[:size]
        labels = []
        pos = abi.ext_header.size
        for _ in range(count):
            value_size, _ = abi.secctx.unpack_from(block, pos)
            name, end = FuseEngine._name(block, pos + abi.secctx.size)
            if not name or end + value_size > size:
                raise OSError(errno.EINVAL, "malformed security context")
            labels.append((name, bytes(block[end:end + value_size])))
            pos += abi.rec_align(abi.secctx.size + len(name) + 1 + value_size)
        return tuple(labels)

    def _labels(self, ctx, body, end):
        """The security contexts a CREATE, MKDIR, MKNOD, SYMLINK or TMPFILE carries under
        FUSE_SECURITY_CTX: the request extension (7.38 on), or else the fuse_secctx_header block
        a 7.36/7.37 client appends to the arguments (which end at ``end``) with no total_extlen.
        Empty without the capability or when the guest has no label to give."""
        if not self.session_flags & abi.FUSE_SECURITY_CTX:
            return ()
        if ctx[4] is not None:
            return ctx[4]
        if len(body) > end:
            return self._security_contexts(body[end:])
        return ()

    def _caller(self, ctx, umask=None, labels=()):
        """The creator of a new object, with the umask when the client left it to us and the
        security contexts the new object is to carry."""
        uid, gid, groups = ctx[0], ctx[1], ctx[3]
        if self.idmap is not None:
            uid, gid = self.idmap.host_uid(uid), self.idmap.host_gid(gid)
            groups = [self.idmap.host_gid(g) for g in groups]
        return Caller(uid, gid, groups, None if umask is None else self._umask(umask), labels)

    # -- encoding helpers ----------------------------------------------------------------------

    def _entry(self, nodeid, st, parent=None):
        sec, nsec = self.cache.timeout
        flags = 0
        if (parent is not None and self.announce_submounts and stat.S_ISDIR(st.st_mode) and
                st.st_mnt_id != self.fs.mount_id(parent)):
            # A mount point on the host: the guest gives it a device number of its own.
            flags = FUSE_ATTR_SUBMOUNT
        return (abi.entry_out_head.pack(nodeid, 0, sec, sec, nsec, nsec) +
                _tables.pack_attr_of(st, flags=flags, **self._owner(st)))

    def _attr(self, st):
        sec, nsec = self.cache.timeout
        return abi.attr_out_head.pack(sec, nsec, 0) + _tables.pack_attr_of(st, **self._owner(st))

    def _owner(self, st):
        """The owner the guest is shown (``pack_attr_of`` keywords): translated, if configured."""
        if self.idmap is None:
            return {}
        return {"uid": self.idmap.guest_uid(st.st_uid), "gid": self.idmap.guest_gid(st.st_gid)}

    def _translate_direntplus(self, chunk):
        """Owners in fuse_direntplus records the hot path packed with host ids, translated."""
        if self.idmap is None or not chunk:
            return chunk
        out = bytearray(chunk)
        pos = 0
        while pos + abi.ENTRY_OUT_SIZE + 24 <= len(out):
            (nodeid,) = struct.unpack_from("<Q", out, pos)
            if nodeid:   # "." and ".." carry an empty entry
                uid, gid = struct.unpack_from("<II", out, pos + abi.DIRENTPLUS_UID)
                struct.pack_into("<II", out, pos + abi.DIRENTPLUS_UID,
                                 self.idmap.guest_uid(uid), self.idmap.guest_gid(gid))
            (namelen,) = struct.unpack_from("<I", out, pos + abi.DIRENTPLUS_NAMELEN)
            pos += abi.ENTRY_OUT_SIZE + abi.rec_align(24 + namelen)
        return bytes(out)

    @staticmethod
    def _name(body, offset=0):
        """A NUL-terminated name at ``offset`` of the body; returns (name, end offset)."""
        end = bytes(body[offset:]).find(b"\0")
        if end < 0:
            raise OSError(errno.EINVAL, "name without NUL")
        return bytes(body[offset:offset + end]), offset + end + 1

    # -- session -------------------------------------------------------------------------------

    def do_init(self, nodeid, body, out_size, ctx):
        major, minor, max_readahead, flags = struct.unpack_from("<IIII", body)
        if major < abi.FUSE_KERNEL_VERSION:
            raise OSError(errno.EPROTO, "protocol too old")
        if major > abi.FUSE_KERNEL_VERSION:
            # The kernel retries with our major when the reply carries only the version.
            return abi.init_out.pack(abi.FUSE_KERNEL_VERSION, abi.FUSE_KERNEL_MINOR_VERSION,
                                     *([0] * 9))
        if minor < abi.FUSE_MIN_MINOR_VERSION:
            raise OSError(errno.EPROTO, "protocol too old")
        if flags & abi.FUSE_INIT_EXT and len(body) >= abi.init_in.size:
            flags |= abi.init_in.unpack_from(body)[4] << 32
        with self.init_lock:
            if self.initialized:
                # A new INIT without DESTROY: the guest rebooted or the driver reloaded.
                self._end_session()
            reply_flags = flags & self.wanted_flags
            map_alignment = 0
            if self.dax is not None and self.dax.available and flags & abi.FUSE_MAP_ALIGNMENT:
                # The guest uses its window only if we state the alignment we need.
                reply_flags |= abi.FUSE_MAP_ALIGNMENT
                map_alignment = dax.MAP_ALIGNMENT_SHIFT
            self.session_flags = reply_flags
            self.minor = min(minor, abi.FUSE_KERNEL_MINOR_VERSION)
            self.fs.init(setxattr_ext=bool(reply_flags & abi.FUSE_SETXATTR_EXT),
                         security_ctx=bool(reply_flags & abi.FUSE_SECURITY_CTX),
                         dont_mask=bool(reply_flags & abi.FUSE_DONT_MASK))
            self.initialized = True
            if self.on_session:
                self.on_session(True)
        log.info("FUSE session started: protocol 7.%d, flags %#x", self.minor, reply_flags)
        return abi.init_out.pack(
            abi.FUSE_KERNEL_VERSION, self.minor, max_readahead, reply_flags & 0xFFFFFFFF,
            MAX_BACKGROUND, CONGESTION_THRESHOLD, MAX_WRITE, 1, MAX_PAGES, map_alignment,
            reply_flags >> 32)

    def _end_session(self, frontend_gone=False):
        self.initialized = False
        if self.on_session:
            self.on_session(False)
        if self.dax is not None:
            # Mappings of the old session must not outlive its handles and inodes; after a
            # device reset the frontend has dropped its window already.
            self.dax.forget() if frontend_gone else self.dax.clear()
        self.fs.destroy()

    def do_destroy(self, nodeid, body, out_size, ctx):
        with self.init_lock:
            self._end_session()
        log.info("FUSE session destroyed")
        return b""

    def reset(self):
        """The device was reset or the frontend went away: forget the session."""
        with self.init_lock:
            if self.initialized:
                self._end_session(frontend_gone=True)
            elif self.dax is not None:
                self.dax.forget()

    # -- inodes --------------------------------------------------------------------------------

    def do_lookup(self, nodeid, body, out_size, ctx):
        name, _ = self._name(body)
        return self._entry(*self.fs.lookup(nodeid, name), parent=nodeid)

    def do_forget(self, nodeid, body, out_size, ctx):
        (nlookup,) = abi.forget_in.unpack_from(body)
        self.fs.forget(nodeid, nlookup)
        return None

    def do_batch_forget(self, nodeid, body, out_size, ctx):
        count, _ = abi.batch_forget_in.unpack_from(body)
        # The count is the guest's word: only entries really present are read.
        count = min(count, (len(body) - abi.batch_forget_in.size) // abi.forget_one.size)
        for i in range(count):
            fnode, nlookup = abi.forget_one.unpack_from(
                body, abi.batch_forget_in.size + i * abi.forget_one.size)
            self.fs.forget(fnode, nlookup)
        return None

    def do_getattr(self, nodeid, body, out_size, ctx):
        return self._attr(self.fs.getattr(nodeid))

    def do_setattr(self, nodeid, body, out_size, ctx):
        (valid, _, fh, size, _, atime, mtime, _, atimensec, mtimensec, _, mode, _, uid, gid,
         _) = abi.setattr_in.unpack_from(body)
        kw = {}
        if valid & abi.FATTR_FH:
            kw["fh"] = fh
        if valid & abi.FATTR_MODE:
            kw["mode"] = mode & 0o7777
        if valid & abi.FATTR_UID:
            kw["uid"] = uid if self.idmap is None else self.idmap.host_uid(uid)
        if valid & abi.FATTR_GID:
            kw["gid"] = gid if self.idmap is None else self.idmap.host_gid(gid)
        if valid & abi.FATTR_SIZE:
            if size > 0x7FFFFFFFFFFFFFFF:
                raise OSError(errno.EINVAL, "size out of range")
            kw["size"] = size
        kw["kill_suidgid"] = bool(valid & abi.FATTR_KILL_SUIDGID)
        kw["atime_ns"] = _time_arg(valid, abi.FATTR_ATIME, abi.FATTR_ATIME_NOW, atime, atimensec)
        kw["mtime_ns"] = _time_arg(valid, abi.FATTR_MTIME, abi.FATTR_MTIME_NOW, mtime, mtimensec)
        return self._attr(self.fs.setattr(nodeid, **kw))

    def do_readlink(self, nodeid, body, out_size, ctx):
        target = self.fs.readlink(nodeid)
        if len(target) > out_size:
            raise OSError(errno.ERANGE, "link target larger than the reply buffer")
        return target

    def do_symlink(self, nodeid, body, out_size, ctx):
        name, end = self._name(body)
        target, end = self._name(body, end)
        caller = self._caller(ctx, labels=self._labels(ctx, body, end))
        return self._entry(*self.fs.symlink(nodeid, name, target, caller))

    def _umask(self, umask):
        """The caller's umask when the guest left applying it to us (FUSE_DONT_MASK)."""
        return umask if self.session_flags & abi.FUSE_DONT_MASK else None

    def do_mknod(self, nodeid, body, out_size, ctx):
        mode, rdev, umask, _ = abi.mknod_in.unpack_from(body)
        name, end = self._name(body, abi.mknod_in.size)
        caller = self._caller(ctx, umask, self._labels(ctx, body, end))
        return self._entry(*self.fs.mknod(nodeid, name, mode, rdev, caller))

    def do_mkdir(self, nodeid, body, out_size, ctx):
        mode, umask = abi.mkdir_in.unpack_from(body)
        name, end = self._name(body, abi.mkdir_in.size)
        caller = self._caller(ctx, umask, self._labels(ctx, body, end))
        return self._entry(*self.fs.mkdir(nodeid, name, mode, caller))

    def do_unlink(self, nodeid, body, out_size, ctx):
        self.fs.unlink(nodeid, self._name(body)[0])
        return b""

    def do_rmdir(self, nodeid, body, out_size, ctx):
        self.fs.rmdir(nodeid, self._name(body)[0])
        return b""

    def do_rename(self, nodeid, body, out_size, ctx):
        (newdir,) = abi.rename_in.unpack_from(body)
        name, end = self._name(body, abi.rename_in.size)
        newname, _ = self._name(body, end)
        self.fs.rename(nodeid, name, newdir, newname, 0)
        return b""

    def do_rename2(self, nodeid, body, out_size, ctx):
        newdir, flags, _ = abi.rename2_in.unpack_from(body)
        name, end = self._name(body, abi.rename2_in.size)
        newname, _ = self._name(body, end)
        self.fs.rename(nodeid, name, newdir, newname, flags)
        return b""

    def do_link(self, nodeid, body, out_size, ctx):
        (oldnodeid,) = abi.link_in.unpack_from(body)
        newname, _ = self._name(body, abi.link_in.size)
        return self._entry(*self.fs.link(oldnodeid, nodeid, newname))

    # -- files ---------------------------------------------------------------------------------

    def do_open(self, nodeid, body, out_size, ctx):
        flags, open_flags = abi.open_in.unpack_from(body)
        if self.readonly and (flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC):
            raise OSError(errno.EROFS, "read-only share")
        fh = self.fs.open(nodeid, flags,
                          kill_suidgid=bool(open_flags & abi.FUSE_OPEN_KILL_SUIDGID))
        return abi.open_out.pack(fh, self.cache.open_flags, 0)

    def do_create(self, nodeid, body, out_size, ctx):
        flags, mode, umask, open_flags = abi.create_in.unpack_from(body)
        name, end = self._name(body, abi.create_in.size)
        child, st, fh = self.fs.create(
            nodeid, name, mode, flags, self._caller(ctx, umask, self._labels(ctx, body, end)),
            kill_suidgid=bool(open_flags & abi.FUSE_OPEN_KILL_SUIDGID))
        return self._entry(child, st) + abi.open_out.pack(fh, self.cache.open_flags, 0)

    def do_tmpfile(self, nodeid, body, out_size, ctx):
        flags, mode, umask, _ = abi.create_in.unpack_from(body)
        caller = self._caller(ctx, umask, self._labels(ctx, body, abi.create_in.size))
        child, st, fh = self.fs.tmpfile(nodeid, mode, flags, caller)
        return self._entry(child, st) + abi.open_out.pack(fh, self.cache.open_flags, 0)

    def do_read(self, nodeid, body, out_size, ctx):
        fh, offset, size, _, _, _, _ = abi.read_in.unpack_from(body)
        return self.fs.read(fh, offset, min(size, out_size, MAX_WRITE))

    def do_write(self, nodeid, body, out_size, ctx):
        fh, offset, size, write_flags, _, _, _ = abi.write_in.unpack_from(body)
        data = body[abi.write_in.size:]
        if size != len(data) or size > MAX_WRITE:
            raise OSError(errno.EINVAL, "write size disagrees with the request")
        written = self.fs.write(fh, offset, data,
                                kill_suidgid=bool(write_flags & abi.FUSE_WRITE_KILL_SUIDGID))
        return abi.write_out.pack(written, 0)

    # -- DAX window ----------------------------------------------------------------------------

    def _window(self):
        if self.dax is None or not self.dax.available:
            raise OSError(errno.ENOSYS, "no DAX window")
        return self.dax

    def do_setupmapping(self, nodeid, body, out_size, ctx):
        window = self._window()
        fh, foffset, length, flags, moffset = abi.setupmapping_in.unpack_from(body)
        if flags & ~(abi.FUSE_SETUPMAPPING_FLAG_WRITE | abi.FUSE_SETUPMAPPING_FLAG_READ):
            raise OSError(errno.EINVAL, "unknown mapping flags")
        writable = bool(flags & abi.FUSE_SETUPMAPPING_FLAG_WRITE)
        if writable and self.readonly:
            raise OSError(errno.EROFS, "read-only share")
        window.check_range(moffset, length)
        # Linux maps per inode and sends fh = -1; another value must be a handle of this inode.
        with self.fs.mapping_fd(nodeid, None if fh == abi.NO_FH else fh, writable) as fd:
            window.setup(fd, foffset, moffset, length, writable, key=nodeid)
        return b""

    def do_removemapping(self, nodeid, body, out_size, ctx):
        window = self._window()
        (count,) = abi.removemapping_in.unpack_from(body)
        one = abi.removemapping_one
        if not 0 < count <= abi.FUSE_REMOVEMAPPING_MAX_ENTRY:
            raise OSError(errno.EINVAL, "removemapping count out of range")
        if len(body) < abi.removemapping_in.size + count * one.size:
            raise OSError(errno.EINVAL, "removemapping body shorter than its count")
        window.remove([one.unpack_from(body, abi.removemapping_in.size + i * one.size)
                       for i in range(count)])
        return b""

    def do_statfs(self, nodeid, body, out_size, ctx):
        s = self.fs.statfs(nodeid)
        return abi.kstatfs.pack(s.f_blocks, s.f_bfree, s.f_bavail, s.f_files, s.f_ffree,
                                s.f_bsize, s.f_namemax, s.f_frsize, 0)

    def do_release(self, nodeid, body, out_size, ctx):
        fh, _, release_flags, lock_owner = abi.release_in.unpack_from(body)
        if release_flags & abi.FUSE_RELEASE_FLOCK_UNLOCK:
            self.fs.release_locks(nodeid, lock_owner, "flock")
        self.fs.release(fh)
        return b""

    def do_fsync(self, nodeid, body, out_size, ctx):
        fh, flags, _ = abi.fsync_in.unpack_from(body)
        self.fs.fsync(fh, bool(flags & abi.FUSE_FSYNC_FDATASYNC))
        return b""

    def do_flush(self, nodeid, body, out_size, ctx):
        fh, _, _, lock_owner = abi.flush_in.unpack_from(body)
        self.fs.flush(fh)
        # POSIX: closing any descriptor of a file drops the process's locks on it.
        self.fs.release_locks(nodeid, lock_owner, "posix")
        return b""

    def do_fallocate(self, nodeid, body, out_size, ctx):
        fh, offset, length, mode, _ = abi.fallocate_in.unpack_from(body)
        if offset > 0x7FFFFFFFFFFFFFFF or length > 0x7FFFFFFFFFFFFFFF:
            raise OSError(errno.EINVAL, "range out of bounds")
        self.fs.fallocate(fh, mode, offset, length)
        return b""

    def do_lseek(self, nodeid, body, out_size, ctx):
        fh, offset, whence, _ = abi.lseek_in.unpack_from(body)
        if offset > 0x7FFFFFFFFFFFFFFF:
            raise OSError(errno.EINVAL, "offset out of range")
        return abi.lseek_out.pack(self.fs.lseek(fh, offset, whence))

    def do_copy_file_range(self, nodeid, body, out_size, ctx):
        """copy_file_range(2) between two open handles, answered with the bytes copied as a
        WRITE is (fuse_write_out).  No flags are defined (EINVAL, as the call answers); at most
        MAX_RW_COUNT bytes are copied at once, as the host kernel does, so the count fits the
        reply's 32 bits; the guest asks again for the rest."""
        fh_in, off_in, _, fh_out, off_out, length, flags = \
            abi.copy_file_range_in.unpack_from(body)
        if flags:
            raise OSError(errno.EINVAL, "copy_file_range takes no flags")
        if off_in > 0x7FFFFFFFFFFFFFFF or off_out > 0x7FFFFFFFFFFFFFFF:
            raise OSError(errno.EINVAL, "offset out of range")
        copied = self.fs.copy_file_range(fh_in, off_in, fh_out, off_out,
                                         min(length, MAX_RW_COUNT))
        return abi.write_out.pack(copied, 0)

    def do_access(self, nodeid, body, out_size, ctx):
        mask, _ = abi.access_in.unpack_from(body)
        self.fs.access(nodeid, mask, self._caller(ctx))
        return b""

    # -- locks ---------------------------------------------------------------------------------

    def do_getlk(self, nodeid, body, out_size, ctx):
        fh, owner, start, end, lock_type, _, _, _ = abi.lk_in.unpack_from(body)
        return abi.lk_out.pack(*self.fs.getlk(nodeid, owner, start, end, lock_type, fh))

    def do_setlk(self, nodeid, body, out_size, ctx):
        fh, owner, start, end, lock_type, pid, lk_flags, _ = abi.lk_in.unpack_from(body)
        self.fs.setlk(nodeid, fh, owner, start, end, lock_type,
                      flock=bool(lk_flags & abi.FUSE_LK_FLOCK), pid=pid)
        return b""

    def do_setlkw(self, nodeid, body, out_size, ctx):
        """Try at once; if the lock is taken, wait on a thread of its own and answer then, so
        the queue goes on serving other requests meanwhile."""
        fh, owner, start, end, lock_type, pid, lk_flags, _ = abi.lk_in.unpack_from(body)
        flock = bool(lk_flags & abi.FUSE_LK_FLOCK)
        try:
            self.fs.setlk(nodeid, fh, owner, start, end, lock_type, flock=flock, pid=pid)
            return b""
        except BlockingIOError:
            pass
        if not self.lock_waiters.acquire(blocking=False):
            raise OSError(errno.ENOLCK, "too many lock waiters")

        def wait(pending):
            threading.Thread(target=self._wait_for_lock, name="fastvfs-lockwait", daemon=True,
                             args=(pending, nodeid, fh, owner, start, end, lock_type,
                                   flock, pid)).start()
        return wait

    def _wait_for_lock(self, pending, nodeid, fh, owner, start, end, lock_type, flock, pid):
        try:
            # A request of its own: the descriptors it uses stay open until it is answered
            # (a node held by file handle may have its cached descriptor closed meanwhile).
            with self.fs.request_scope():
                self.fs.setlk(nodeid, fh, owner, start, end, lock_type, flock=flock,
                              wait=True, pid=pid)
            error = 0
        except OSError as exc:
            error = _errno(exc)
        except Exception:
            log.exception("lock wait failed")
            error = -errno.EIO
        finally:
            self.lock_waiters.release()
        pending.complete(error)

    # -- extended attributes -------------------------------------------------------------------
    # Off unless asked for (--xattr), as in the reference daemons: ENOSYS tells the guest kernel
    # to stop asking, and applications then see EOPNOTSUPP.

    def _sized_reply(self, value, size, out_size):
        """GETXATTR/LISTXATTR: size 0 asks for the length; too small a size is ERANGE."""
        if size == 0:
            return abi.getxattr_out.pack(len(value), 0)
        if len(value) > size or len(value) > out_size:
            raise OSError(errno.ERANGE, "value larger than the buffer")
        return value

    def _require_xattr(self):
        if not self.xattr:
            raise OSError(errno.ENOSYS, "extended attributes are off (--xattr)")

    def do_getxattr(self, nodeid, body, out_size, ctx):
        self._require_xattr()
        size, _ = abi.getxattr_in.unpack_from(body)
        name, _ = self._name(body, abi.getxattr_in.size)
        return self._sized_reply(self.fs.getxattr(nodeid, name), size, out_size)

    def do_listxattr(self, nodeid, body, out_size, ctx):
        self._require_xattr()
        size, _ = abi.getxattr_in.unpack_from(body)
        return self._sized_reply(self.fs.listxattr(nodeid), size, out_size)

    def do_setxattr(self, nodeid, body, out_size, ctx):
        self._require_xattr()
        setxattr_flags = 0
        if self.session_flags & abi.FUSE_SETXATTR_EXT:
            size, flags, setxattr_flags, _ = abi.setxattr_in_ext.unpack_from(body)
            head = abi.setxattr_in_ext.size
        else:
            size, flags = abi.setxattr_in.unpack_from(body)
            head = abi.setxattr_in.size
        name, end = self._name(body, head)
        value = bytes(body[end:end + size])
        if len(value) != size:
            raise OSError(errno.EINVAL, "value shorter than its size")
        self.fs.setxattr(nodeid, name, value, flags,
                         kill_sgid=bool(setxattr_flags & abi.FUSE_SETXATTR_ACL_KILL_SGID))
        return b""

    def do_removexattr(self, nodeid, body, out_size, ctx):
        self._require_xattr()
        self.fs.removexattr(nodeid, self._name(body)[0])
        return b""

    # -- directories ---------------------------------------------------------------------------

    def do_opendir(self, nodeid, body, out_size, ctx):
        fh = self.fs.opendir(nodeid)
        return abi.open_out.pack(fh, self.cache.opendir_flags, 0)

    def do_readdir(self, nodeid, body, out_size, ctx):
        return self._readdir(nodeid, body, out_size, plus=False)

    def do_readdirplus(self, nodeid, body, out_size, ctx):
        return self._readdir(nodeid, body, out_size, plus=True)

    def _readdir(self, nodeid, body, out_size, plus):
        fh, offset, size, _, _, _, _ = abi.read_in.unpack_from(body)
        size = min(size, out_size)
        listing = self.fs.readdir(nodeid, fh, offset)
        if not plus:
            # The records are already fuse_dirents: the reply is the run that fits (the hot
            # path's own code).
            return listing.run(offset, size)
        out = bytearray()
        sec, nsec = self.cache.timeout
        count = len(listing)
        i = offset
        error = 0
        while i < count:
            # Entries are looked up in C (and "." and "..", which the kernel counts no lookup
            # for, answered), up to the first that needs the file system's lookup.
            chunk, i, status = self.fs.plus_entries(nodeid, listing, i, size - len(out), sec,
                                                    nsec)
            out += self._translate_direntplus(chunk)
            if status < 0:
                error = -status
                break
            if not status:
                break
            record = listing.record(i)
            if len(out) + abi.ENTRY_OUT_SIZE + len(record) > size:
                break
            try:
                out += self._entry(*self.fs.lookup(nodeid, listing.name(i)), parent=nodeid)
                out += record
            except OSError as exc:
                if exc.errno != errno.ENOENT:   # else removed since the listing was taken
                    error = exc.errno
                    break
            i += 1
        if error and not out:
            # An entry that exists is never left out: its failed lookup (EMFILE) ends the
            # reply before it, or is the reply when it comes first.  The lookups counted for
            # the entries already sent stand, so an error can only be the whole reply.
            raise OSError(error, os.strerror(error))
        return bytes(out)

    def do_releasedir(self, nodeid, body, out_size, ctx):
        fh, _, _, _ = abi.release_in.unpack_from(body)
        self.fs.releasedir(fh)
        return b""

    def do_fsyncdir(self, nodeid, body, out_size, ctx):
        fh, flags, _ = abi.fsync_in.unpack_from(body)
        self.fs.fsyncdir(fh, bool(flags & abi.FUSE_FSYNC_FDATASYNC))
        return b""

    def do_syncfs(self, nodeid, body, out_size, ctx):
        self.fs.syncfs(nodeid)
        return b""

    def do_interrupt(self, nodeid, body, out_size, ctx):
        # No reply, and nothing is interrupted: Linux's virtiofs driver never sends
        # FUSE_INTERRUPT (fs/fuse/virtio_fs.c), and a request waiting here (a SETLKW, one on
        # the thread pool) is answered when it completes.
        return None


def _time_arg(valid, set_bit, now_bit, sec, nsec):
    if valid & now_bit:
        return _sys.NOW
    if valid & set_bit:
        if nsec >= 1_000_000_000:
            raise OSError(errno.EINVAL, "nanoseconds out of range")
        if sec >= 1 << 63:
            sec -= 1 << 64
        return sec * 1_000_000_000 + nsec
    return _sys.OMIT
