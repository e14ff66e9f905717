"""A FUSE client over virtio-fs queues: the guest kernel's ``fs/fuse`` + ``virtio_fs.c``, in Python.

Requests are laid out the way Linux's ``virtio_fs_enqueue_req`` does it, so a backend sees the
descriptor shapes a real guest produces:

* device-readable: ``fuse_in_header`` | the op's in-args (op struct + names), copied into one
  buffer | the data pages of WRITE, each in its own descriptor;
* device-writable: ``fuse_out_header`` | the reply's fixed out-args in one buffer | the data pages
  of READ / READDIR / READDIRPLUS / READLINK, each in its own descriptor.

FORGET and BATCH_FORGET take no reply and go over the hiprio queue 0 as one readable buffer
holding header and body (``virtio_fs_send_forget``).  Like Linux (``virtqueue_use_indirect``) the
client puts every multi-descriptor chain in an indirect table when VIRTIO_RING_F_INDIRECT_DESC was
negotiated, unless told otherwise.

Two layers:

* asynchronous: :meth:`FuseClient.submit` queues a request and returns its ticket (the FUSE
  ``unique``); :meth:`~FuseClient.wait` / :meth:`~FuseClient.wait_all` collect :class:`Reply`
  objects.  Any number of requests may be in flight; when a ring or guest memory is full, submit
  reaps completions first.
* synchronous helpers named after the opcodes (``lookup``, ``read``, ...), which raise
  ``OSError(errno)`` for error replies and return small named tuples.

Replies are checked strictly: ``fuse_out_header.len`` must equal the used length the device
reported, ``unique`` must match, ``error`` must be 0 or a negated errno with no payload, and fixed
reply structs must have their full size.  Violations raise :class:`FuseProtocolError`.
"""

import contextlib
import os
import select
import socket
import time
from dataclasses import dataclass
from typing import NamedTuple

from fastvfs.fuse import abi
from fastvfs.fuse.abi import Opcode

# The INIT flags a Linux 6.1 guest sends over virtio-fs (fs/fuse/inode.c ``fuse_send_init``; no DAX,
# virtio_fs_fill_super turns on auto_submounts and thereby FUSE_SUBMOUNTS).
LINUX_6_1_INIT_FLAGS = (
    abi.FUSE_ASYNC_READ | abi.FUSE_POSIX_LOCKS | abi.FUSE_ATOMIC_O_TRUNC | abi.FUSE_EXPORT_SUPPORT
    | abi.FUSE_BIG_WRITES | abi.FUSE_DONT_MASK | abi.FUSE_SPLICE_WRITE | abi.FUSE_SPLICE_MOVE
    | abi.FUSE_SPLICE_READ | abi.FUSE_FLOCK_LOCKS | abi.FUSE_HAS_IOCTL_DIR
    | abi.FUSE_AUTO_INVAL_DATA | abi.FUSE_DO_READDIRPLUS | abi.FUSE_READDIRPLUS_AUTO
    | abi.FUSE_ASYNC_DIO | abi.FUSE_WRITEBACK_CACHE | abi.FUSE_NO_OPEN_SUPPORT
    | abi.FUSE_PARALLEL_DIROPS | abi.FUSE_HANDLE_KILLPRIV | abi.FUSE_POSIX_ACL
    | abi.FUSE_ABORT_ERROR | abi.FUSE_MAX_PAGES | abi.FUSE_CACHE_SYMLINKS
    | abi.FUSE_NO_OPENDIR_SUPPORT | abi.FUSE_EXPLICIT_INVAL_DATA | abi.FUSE_HANDLE_KILLPRIV_V2
    | abi.FUSE_SETXATTR_EXT | abi.FUSE_INIT_EXT | abi.FUSE_SECURITY_CTX | abi.FUSE_SUBMOUNTS)
# A guest mounted with -o dax also asks for the window's alignment.
LINUX_DAX_INIT_FLAGS = LINUX_6_1_INIT_FLAGS | abi.FUSE_MAP_ALIGNMENT
# The bdi default readahead, VM_READAHEAD_PAGES pages.
LINUX_MAX_READAHEAD = 128 << 10
PAGE_SIZE = 4096
# READLINK asks for one page less the NUL the kernel appends (fs/fuse/dir.c fuse_readlink_page).
READLINK_SIZE = PAGE_SIZE - 1
# First unique and step: Linux's FUSE_REQ_ID_STEP keeps the low bit free for FUSE_INTERRUPT.
UNIQUE_STEP = 2
# Shortest INIT reply a server may send (fuse.h FUSE_COMPAT_22_INIT_OUT_SIZE: up to max_write).
FUSE_COMPAT_22_INIT_OUT_SIZE = 24
HIPRIO_OPCODES = frozenset({Opcode.FORGET, Opcode.BATCH_FORGET, Opcode.INTERRUPT})
MAX_ERRNO = 4095


class FuseProtocolError(Exception):
    """The backend's reply breaks the FUSE-over-virtio contract."""


class Attr(NamedTuple):
    """``struct fuse_attr``."""

    ino: int
    size: int
    blocks: int
    atime: int
    mtime: int
    ctime: int
    atimensec: int
    mtimensec: int
    ctimensec: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    blksize: int
    flags: int

    @property
    def atime_ns(self):
        return self.atime * 1_000_000_000 + self.atimensec

    @property
    def mtime_ns(self):
        return self.mtime * 1_000_000_000 + self.mtimensec

    @property
    def ctime_ns(self):
        return self.ctime * 1_000_000_000 + self.ctimensec


class Entry(NamedTuple):
    """``struct fuse_entry_out``."""

    nodeid: int
    generation: int
    entry_valid: int
    attr_valid: int
    entry_valid_nsec: int
    attr_valid_nsec: int
    attr: Attr


class AttrOut(NamedTuple):
    """``struct fuse_attr_out``."""

    attr_valid: int
    attr_valid_nsec: int
    attr: Attr


class Open(NamedTuple):
    """``struct fuse_open_out``."""

    fh: int
    open_flags: int


class StatFs(NamedTuple):
    """``struct fuse_kstatfs``."""

    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    bsize: int
    namelen: int
    frsize: int


class InitOut(NamedTuple):
    """``struct fuse_init_out`` (short replies of older servers are zero-extended)."""

    major: int
    minor: int
    max_readahead: int
    flags: int
    max_background: int
    congestion_threshold: int
    max_write: int
    time_gran: int
    max_pages: int
    map_alignment: int
    flags2: int

    @property
    def all_flags(self):
        """flags with flags2 as bits 32..63 (meaningful when FUSE_INIT_EXT is set)."""
        return self.flags | self.flags2 << 32


class DirEntry(NamedTuple):
    """``struct fuse_dirent``; ``off`` is the cookie to continue reading after this entry."""

    ino: int
    off: int
    type: int
    name: bytes


class DirEntryPlus(NamedTuple):
    """``struct fuse_direntplus``: the dirent plus the entry a LOOKUP would have returned."""

    entry: Entry
    ino: int
    off: int
    type: int
    name: bytes


@dataclass(frozen=True)
class Reply:
    """A completed request: ``error`` is 0 or a positive errno; ``payload`` holds the fixed
    out-args, ``data`` the contents of the separate data buffers (READ, READDIR, READLINK)."""

    unique: int
    error: int
    payload: bytes = b""
    data: bytes = b""

    def check(self):
        """Raise ``OSError(error)`` for an error reply; return self otherwise."""
        if self.error:
            raise OSError(self.error, os.strerror(self.error))
        return self


@dataclass(eq=False)
class _Pending:
    queue: int
    opcode: int
    noreply: bool
    has_payload: bool


def _opname(opcode):
    try:
        return Opcode(opcode).name
    except ValueError:
        return f"opcode {opcode}"


def _name(name):
    """A NUL-terminated name argument."""
    return os.fsencode(name) + b"\0"


def _fsync_in(fh, datasync):
    return abi.fsync_in.pack(fh, abi.FUSE_FSYNC_FDATASYNC if datasync else 0, 0)


def _attr(buf, offset=0):
    return Attr._make(abi.attr.unpack_from(buf, offset))


def _entry(buf, offset=0):
    head = abi.entry_out_head.unpack_from(buf, offset)
    return Entry(*head, _attr(buf, offset + abi.entry_out_head.size))


def _attr_out(buf):
    attr_valid, attr_valid_nsec, _ = abi.attr_out_head.unpack_from(buf)
    return AttrOut(attr_valid, attr_valid_nsec, _attr(buf, abi.attr_out_head.size))


def parse_dirents(buf):
    """Decode a READDIR reply into :class:`DirEntry` objects."""
    return [DirEntry(*fields) for _, fields in _walk_dirents(buf, 0)]


def parse_direntplus(buf):
    """Decode a READDIRPLUS reply into :class:`DirEntryPlus` objects."""
    return [DirEntryPlus(_entry(buf, start), *fields)
            for start, fields in _walk_dirents(buf, abi.ENTRY_OUT_SIZE)]


def _walk_dirents(buf, prefix):
    """Yield ``(record start, (ino, off, type, name))``; each record is ``prefix`` bytes, a
    ``fuse_dirent`` and the name, padded to 8 bytes (FUSE_DIRENT_ALIGN)."""
    pos = 0
    while pos < len(buf):
        head = pos + prefix
        if head + abi.dirent_head.size > len(buf):
            raise FuseProtocolError(f"truncated dirent at offset {pos}")
        ino, off, namelen, kind = abi.dirent_head.unpack_from(buf, head)
        name_start = head + abi.dirent_head.size
        if namelen == 0 or name_start + namelen > len(buf):
            raise FuseProtocolError(f"dirent at offset {pos} has bad namelen {namelen}")
        yield pos, (ino, off, kind, bytes(buf[name_start:name_start + namelen]))
        pos += abi.rec_align(prefix + abi.dirent_head.size + namelen)


def _fixed(reply, struct_size, what):
    if len(reply.payload) != struct_size:
        raise FuseProtocolError(
            f"{what} reply has {len(reply.payload)} bytes, {struct_size} expected")
    return reply.payload


class FuseClient:
    """FUSE session over a started :class:`~fastvfs_testing.frontend.VhostUserFrontend`.

    ``indirect``: None (default) does what Linux does, indirect tables for every chain of more
    than one descriptor when negotiated; True forces them (must be negotiated); False never uses
    them.  ``data_desc_size``: split READ/WRITE/READDIR data into descriptors of this many bytes
    (PAGE_SIZE imitates the kernel's page vectors); None keeps each data area in one descriptor.
    ``uid``/``gid``/``pid`` fill ``fuse_in_header`` unless a call overrides them (see also
    :meth:`as_user`).  ``timeout`` bounds every wait.  Not thread-safe.
    """

    def __init__(self, frontend, *, indirect=None, data_desc_size=None, uid=0, gid=0, pid=0,
                 timeout=10.0):
        self.frontend = frontend
        self.indirect = indirect
        self.data_desc_size = data_desc_size
        self.uid, self.gid, self.pid = uid, gid, pid
        self.timeout = timeout
        self.init_out = None
        self._next_unique = UNIQUE_STEP
        self._next_queue = 0
        self._pending = {}  # unique -> _Pending
        self._by_head = {}  # (queue index, head) -> unique
        self._done = {}  # unique -> Reply or FuseProtocolError

    # -- asynchronous API -------------------------------------------------------------------

    @property
    def in_flight(self):
        return len(self._pending)

    @contextlib.contextmanager
    def as_user(self, uid, gid, pid=None):
        """Send requests made inside the ``with`` block with these credentials."""
        saved = self.uid, self.gid, self.pid
        self.uid, self.gid = uid, gid
        if pid is not None:
            self.pid = pid
        try:
            yield self
        finally:
            self.uid, self.gid, self.pid = saved

    def submit(self, opcode, nodeid=0, body=b"", *, data=b"", reply_len=0, data_len=0,
               noreply=False, queue=None, publish=True, uid=None, gid=None, pid=None):
        """Queue one request and return its ticket (the request's ``unique``).

        ``body`` is the op's in-args (struct and names), ``data`` the WRITE payload, ``reply_len``
        the size of the fixed out-args and ``data_len`` the size of the data area (READ and
        friends).  ``noreply`` requests (FORGET) carry no writable part.  ``queue`` defaults to
        queue 0 for FORGET/BATCH_FORGET/INTERRUPT and to the request queues in turn otherwise.
        With ``publish=False`` the request waits in the ring until :meth:`publish`.
        """
        index = self._pick_queue(queue, opcode)
        unique = self._next_unique
        self._next_unique += UNIQUE_STEP
        header = abi.in_header.pack(
            abi.IN_HEADER_SIZE + len(body) + len(data), opcode, unique, nodeid,
            self.uid if uid is None else uid, self.gid if gid is None else gid,
            self.pid if pid is None else pid, 0, 0)
        if noreply:
            readable, writable = [header + body], []
        else:
            readable = [header] + ([body] if body else []) + self._split_data(data)
            writable = ([abi.OUT_HEADER_SIZE] + ([reply_len] if reply_len else [])
                        + self._split_len(data_len))
        head = self._add_chain(self.frontend.queues[index], readable, writable)
        self._pending[unique] = _Pending(index, opcode, noreply, bool(reply_len))
        self._by_head[index, head] = unique
        if publish:
            self.frontend.queues[index].publish()
        return unique

    def publish(self):
        """Publish requests queued with ``publish=False`` on every queue."""
        for queue in self.frontend.queues:
            queue.publish()

    def wait(self, ticket, timeout=None):
        """Wait for one request; returns its :class:`Reply` (errors are not raised here)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while ticket not in self._done:
            if ticket not in self._pending:
                raise KeyError(f"unknown or already collected ticket {ticket}")
            self._progress(deadline)
        result = self._done.pop(ticket)
        if isinstance(result, Exception):
            raise result
        return result

    def collect(self, timeout=None):
        """Wait until at least one request completed; return every completed one as
        ``[(ticket, Reply), ...]`` (for closed-loop load at a fixed depth)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self._done:
            if not self._pending:
                return []
            self._progress(deadline)
        done = list(self._done.items())
        self._done.clear()
        return done

    def wait_all(self, timeout=None):
        """Wait for every request in flight; returns ``{ticket: Reply}`` including replies
        completed earlier but not collected yet."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while self._pending:
            self._progress(deadline)
        done, self._done = self._done, {}
        for result in done.values():
            if isinstance(result, Exception):
                raise result
        return done

    def _pick_queue(self, queue, opcode):
        if queue is not None:
            return queue
        if opcode in HIPRIO_OPCODES:
            return 0
        request_queues = len(self.frontend.queues) - 1
        self._next_queue = self._next_queue % request_queues + 1
        return self._next_queue

    def _split_data(self, data):
        step = self.data_desc_size or len(data) or 1
        view = memoryview(data)
        return [view[i:i + step] for i in range(0, len(data), step)]

    def _split_len(self, length):
        step = self.data_desc_size or length or 1
        return [min(step, length - i) for i in range(0, length, step)]

    def _add_chain(self, queue, readable, writable):
        count = len(readable) + len(writable)
        indirect = (queue.indirect_desc and count > 1) if self.indirect is None else self.indirect
        while True:
            try:
                return queue.add_chain(readable, writable, indirect=indirect)
            except MemoryError:
                if not self._pending:
                    raise
            # Ring or guest memory full: make room by collecting completions.
            self.publish()
            self._progress(time.monotonic() + self.timeout)

    def _progress(self, deadline):
        """Reap every queue with requests in flight; if none completed, wait for a call."""
        busy = [self.frontend.queues[index] for index in {p.queue for p in self._pending.values()}]
        completed = 0
        for queue in busy:
            for head, written in queue.get_used():
                self._complete(queue, head, written)
                completed += 1
        if completed:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{len(self._pending)} FUSE requests still in flight")
        readable = self._wait_for_calls([queue.call_fd for queue in busy], remaining)
        for queue in busy:
            if queue.call_fd in readable:
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(queue.call_fd)

    def _wait_for_calls(self, call_fds, timeout):
        """select() on the call eventfds, and on the vhost-user socket too: a backend that died
        closed it and will never answer, so the wait fails with ConnectionResetError at once
        instead of TimeoutError at the deadline."""
        sock = getattr(self.frontend, "sock", None)
        readable, _, _ = select.select(call_fds + ([sock] if sock else []), [], [], timeout)
        if sock is None or sock not in readable:
            return readable
        readable.remove(sock)
        if readable:
            return readable
        try:
            closed = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            closed = False
        except ConnectionResetError:
            closed = True
        if closed:
            raise ConnectionResetError(f"backend closed the vhost-user connection with "
                                       f"{len(self._pending)} FUSE requests in flight")
        # A vhost-user reply the caller has not read yet: wait on the calls alone.
        readable, _, _ = select.select(call_fds, [], [], timeout)
        return readable

    def _complete(self, queue, head, written):
        unique = self._by_head.pop((queue.index, head))
        pending = self._pending.pop(unique)
        buffers = queue.detach(head)
        try:
            self._done[unique] = self._parse(unique, pending, written, buffers)
        except FuseProtocolError as exc:
            self._done[unique] = exc

    @staticmethod
    def _parse(unique, pending, written, buffers):
        name = _opname(pending.opcode)
        if pending.noreply:
            if written:
                raise FuseProtocolError(f"{name} takes no reply but {written} bytes were written")
            return Reply(unique, 0)
        if written < abi.OUT_HEADER_SIZE:
            raise FuseProtocolError(f"{name} reply of {written} bytes has no fuse_out_header")
        length, error, reply_unique = abi.out_header.unpack(buffers[0])
        if length != written:
            raise FuseProtocolError(f"{name} reply: fuse_out_header.len {length}, "
                                    f"used length {written}")
        if reply_unique != unique:
            raise FuseProtocolError(f"{name} reply carries unique {reply_unique}, sent {unique}")
        if error > 0 or error < -MAX_ERRNO:
            raise FuseProtocolError(f"{name} reply has invalid error {error}")
        if error and length != abi.OUT_HEADER_SIZE:
            raise FuseProtocolError(f"{name} error reply carries {length} bytes")
        rest = buffers[1:]
        payload = rest.pop(0) if pending.has_payload else b""
        return Reply(unique, -error, payload, b"".join(rest))

    # -- synchronous API ----------------------------------------------------------------------

    def call(self, opcode, nodeid=0, body=b"", **kwargs):
        """Submit, wait and raise OSError for an error reply; returns the :class:`Reply`."""
        return self.wait(self.submit(opcode, nodeid, body, **kwargs)).check()

    def init(self, *, minor=abi.FUSE_KERNEL_MINOR_VERSION, flags=LINUX_6_1_INIT_FLAGS,
             max_readahead=LINUX_MAX_READAHEAD):
        """FUSE_INIT as a Linux 6.1 guest sends it; returns (and keeps) the :class:`InitOut`."""
        body = abi.init_in.pack(abi.FUSE_KERNEL_VERSION, minor, max_readahead,
                                flags & 0xFFFFFFFF, flags >> 32)
        reply = self.call(Opcode.INIT, 0, body, reply_len=abi.init_out.size)
        if len(reply.payload) < FUSE_COMPAT_22_INIT_OUT_SIZE:
            raise FuseProtocolError(f"INIT reply of {len(reply.payload)} bytes")
        padded = reply.payload + bytes(abi.init_out.size - len(reply.payload))
        self.init_out = InitOut._make(abi.init_out.unpack(padded))
        return self.init_out

    def destroy(self):
        self.call(Opcode.DESTROY)

    def lookup(self, parent, name):
        return _entry(_fixed(self.call(Opcode.LOOKUP, parent, _name(name),
                                       reply_len=abi.ENTRY_OUT_SIZE),
                             abi.ENTRY_OUT_SIZE, "LOOKUP"))

    def forget(self, nodeid, nlookup=1):
        """FORGET over the hiprio queue; waits until the device has consumed it."""
        self.wait(self.submit(Opcode.FORGET, nodeid, abi.forget_in.pack(nlookup), noreply=True))

    def batch_forget(self, items):
        """BATCH_FORGET of ``[(nodeid, nlookup), ...]`` over the hiprio queue."""
        body = abi.batch_forget_in.pack(len(items), 0) + b"".join(
            abi.forget_one.pack(nodeid, nlookup) for nodeid, nlookup in items)
        self.wait(self.submit(Opcode.BATCH_FORGET, 0, body, noreply=True))

    def getattr(self, nodeid, fh=None):
        body = abi.getattr_in.pack(0 if fh is None else abi.FUSE_GETATTR_FH, 0, fh or 0)
        return self._attr_call(Opcode.GETATTR, nodeid, body)

    def setattr(self, nodeid, *, fh=None, mode=None, uid=None, gid=None, size=None, atime=None,
                mtime=None, atime_now=False, mtime_now=False):
        """SETATTR of the given fields; ``atime``/``mtime`` in nanoseconds, ``*_now`` for the
        server's clock (FATTR_ATIME_NOW / FATTR_MTIME_NOW)."""
        valid = 0
        for value, flag in ((fh, abi.FATTR_FH), (mode, abi.FATTR_MODE), (uid, abi.FATTR_UID),
                            (gid, abi.FATTR_GID), (size, abi.FATTR_SIZE),
                            (atime, abi.FATTR_ATIME), (mtime, abi.FATTR_MTIME)):
            if value is not None:
                valid |= flag
        if atime_now:
            valid |= abi.FATTR_ATIME | abi.FATTR_ATIME_NOW
        if mtime_now:
            valid |= abi.FATTR_MTIME | abi.FATTR_MTIME_NOW
        atime_s, atime_ns = divmod(atime or 0, 1_000_000_000)
        mtime_s, mtime_ns = divmod(mtime or 0, 1_000_000_000)
        body = abi.setattr_in.pack(
            valid, 0, fh or 0, size or 0, 0, atime_s, mtime_s, 0, atime_ns, mtime_ns, 0,
            mode or 0, 0, uid or 0, gid or 0, 0)
        return self._attr_call(Opcode.SETATTR, nodeid, body)

    def _attr_call(self, opcode, nodeid, body):
        reply = self.call(opcode, nodeid, body, reply_len=abi.ATTR_OUT_SIZE)
        return _attr_out(_fixed(reply, abi.ATTR_OUT_SIZE, Opcode(opcode).name))

    def readlink(self, nodeid):
        return self.call(Opcode.READLINK, nodeid, data_len=READLINK_SIZE).data

    def _entry_call(self, opcode, parent, body):
        reply = self.call(opcode, parent, body, reply_len=abi.ENTRY_OUT_SIZE)
        return _entry(_fixed(reply, abi.ENTRY_OUT_SIZE, Opcode(opcode).name))

    def symlink(self, parent, name, target):
        return self._entry_call(Opcode.SYMLINK, parent, _name(name) + _name(target))

    def mknod(self, parent, name, mode, rdev=0, umask=0):
        return self._entry_call(Opcode.MKNOD, parent,
                                abi.mknod_in.pack(mode, rdev, umask, 0) + _name(name))

    def mkdir(self, parent, name, mode=0o755, umask=0):
        return self._entry_call(Opcode.MKDIR, parent, abi.mkdir_in.pack(mode, umask) + _name(name))

    def link(self, nodeid, newparent, newname):
        return self._entry_call(Opcode.LINK, newparent, abi.link_in.pack(nodeid) + _name(newname))

    def unlink(self, parent, name):
        self.call(Opcode.UNLINK, parent, _name(name))

    def rmdir(self, parent, name):
        self.call(Opcode.RMDIR, parent, _name(name))

    def rename(self, olddir, oldname, newdir, newname):
        self.call(Opcode.RENAME, olddir,
                  abi.rename_in.pack(newdir) + _name(oldname) + _name(newname))

    def rename2(self, olddir, oldname, newdir, newname, flags=0):
        self.call(Opcode.RENAME2, olddir,
                  abi.rename2_in.pack(newdir, flags, 0) + _name(oldname) + _name(newname))

    def _open_call(self, opcode, nodeid, flags):
        reply = self.call(opcode, nodeid, abi.open_in.pack(flags, 0), reply_len=abi.open_out.size)
        fh, open_flags, _ = abi.open_out.unpack(_fixed(reply, abi.open_out.size,
                                                       Opcode(opcode).name))
        return Open(fh, open_flags)

    def open(self, nodeid, flags=os.O_RDONLY):
        return self._open_call(Opcode.OPEN, nodeid, flags)

    def opendir(self, nodeid, flags=os.O_RDONLY | os.O_DIRECTORY):
        return self._open_call(Opcode.OPENDIR, nodeid, flags)

    def create(self, parent, name, flags=os.O_RDWR, mode=0o644, umask=0):
        """CREATE; returns ``(Entry, Open)``."""
        size = abi.ENTRY_OUT_SIZE + abi.open_out.size
        reply = self.call(Opcode.CREATE, parent,
                          abi.create_in.pack(flags | os.O_CREAT, mode, umask, 0) + _name(name),
                          reply_len=size)
        payload = _fixed(reply, size, "CREATE")
        fh, open_flags, _ = abi.open_out.unpack_from(payload, abi.ENTRY_OUT_SIZE)
        return _entry(payload), Open(fh, open_flags)

    def read(self, nodeid, fh, offset, size, flags=0):
        """READ ``size`` bytes; the data lands in its own writable descriptor(s)."""
        body = abi.read_in.pack(fh, offset, size, 0, 0, flags, 0)
        return self.call(Opcode.READ, nodeid, body, data_len=size).data

    def write(self, nodeid, fh, offset, data, write_flags=0, flags=0):
        """WRITE ``data`` (in its own readable descriptor(s)); returns the count written."""
        body = abi.write_in.pack(fh, offset, len(data), write_flags, 0, flags, 0)
        reply = self.call(Opcode.WRITE, nodeid, body, data=data, reply_len=abi.write_out.size)
        return abi.write_out.unpack(_fixed(reply, abi.write_out.size, "WRITE"))[0]

    def statfs(self, nodeid=abi.FUSE_ROOT_ID):
        reply = self.call(Opcode.STATFS, nodeid, reply_len=abi.kstatfs.size)
        *fields, _ = abi.kstatfs.unpack(_fixed(reply, abi.kstatfs.size, "STATFS"))
        return StatFs._make(fields)

    def release(self, nodeid, fh, flags=0, release_flags=0, lock_owner=0):
        self.call(Opcode.RELEASE, nodeid, abi.release_in.pack(fh, flags, release_flags, lock_owner))

    def releasedir(self, nodeid, fh, flags=0):
        self.call(Opcode.RELEASEDIR, nodeid, abi.release_in.pack(fh, flags, 0, 0))

    def flush(self, nodeid, fh, lock_owner=0):
        self.call(Opcode.FLUSH, nodeid, abi.flush_in.pack(fh, 0, 0, lock_owner))

    def fsync(self, nodeid, fh, datasync=False):
        self.call(Opcode.FSYNC, nodeid, _fsync_in(fh, datasync))

    def fsyncdir(self, nodeid, fh, datasync=False):
        self.call(Opcode.FSYNCDIR, nodeid, _fsync_in(fh, datasync))

    def readdir(self, nodeid, fh, offset=0, size=PAGE_SIZE):
        body = abi.read_in.pack(fh, offset, size, 0, 0, 0, 0)
        return parse_dirents(self.call(Opcode.READDIR, nodeid, body, data_len=size).data)

    def readdirplus(self, nodeid, fh, offset=0, size=PAGE_SIZE):
        body = abi.read_in.pack(fh, offset, size, 0, 0, 0, 0)
        return parse_direntplus(self.call(Opcode.READDIRPLUS, nodeid, body, data_len=size).data)

    def listdir(self, nodeid, plus=False):
        """OPENDIR, READDIR(PLUS) until an empty reply, RELEASEDIR; returns all entries."""
        fh = self.opendir(nodeid).fh
        read = self.readdirplus if plus else self.readdir
        entries, offset = [], 0
        try:
            while batch := read(nodeid, fh, offset):
                entries.extend(batch)
                offset = batch[-1].off
        finally:
            self.releasedir(nodeid, fh)
        return entries

    def access(self, nodeid, mask):
        self.call(Opcode.ACCESS, nodeid, abi.access_in.pack(mask, 0))

    def fallocate(self, nodeid, fh, offset, length, mode=0):
        self.call(Opcode.FALLOCATE, nodeid, abi.fallocate_in.pack(fh, offset, length, mode, 0))

    def lseek(self, nodeid, fh, offset, whence):
        reply = self.call(Opcode.LSEEK, nodeid, abi.lseek_in.pack(fh, offset, whence, 0),
                          reply_len=abi.lseek_out.size)
        return abi.lseek_out.unpack(_fixed(reply, abi.lseek_out.size, "LSEEK"))[0]

    def copy_file_range(self, nodeid_in, fh_in, off_in, nodeid_out, fh_out, off_out, length,
                        flags=0):
        """Bytes copied by the backend from one handle's file to another's."""
        reply = self.call(Opcode.COPY_FILE_RANGE, nodeid_in,
                          abi.copy_file_range_in.pack(fh_in, off_in, nodeid_out, fh_out,
                                                      off_out, length, flags),
                          reply_len=abi.write_out.size)
        return abi.write_out.unpack(_fixed(reply, abi.write_out.size, "COPY_FILE_RANGE"))[0]

    def syncfs(self):
        self.call(Opcode.SYNCFS, abi.FUSE_ROOT_ID, abi.syncfs_in.pack(0))

    def setupmapping(self, nodeid, foffset, length, moffset, *, writable=False, fh=abi.NO_FH,
                     flags=None):
        """FUSE_SETUPMAPPING as fs/fuse/dax.c sends it (fh -1: the mapping is per inode)."""
        if flags is None:
            flags = abi.FUSE_SETUPMAPPING_FLAG_READ | (
                abi.FUSE_SETUPMAPPING_FLAG_WRITE if writable else 0)
        self.call(Opcode.SETUPMAPPING, nodeid,
                  abi.setupmapping_in.pack(fh, foffset, length, flags, moffset))

    def removemapping(self, nodeid, ranges, *, count=None):
        """FUSE_REMOVEMAPPING of ``(moffset, len)`` pairs (``count`` overrides the header)."""
        body = abi.removemapping_in.pack(len(ranges) if count is None else count) + b"".join(
            abi.removemapping_one.pack(offset, length) for offset, length in ranges)
        self.call(Opcode.REMOVEMAPPING, nodeid, body)
