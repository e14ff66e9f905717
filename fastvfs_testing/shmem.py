"""The frontend's side of a VIRTIO shared memory region: the DAX cache window.

A VMM reserves the window in its address space (and exposes it to the guest as a PCI BAR); a
back-end's SHMEM_MAP puts a file range at an offset of it with MAP_FIXED, SHMEM_UNMAP puts an
inaccessible anonymous range back.  :class:`SharedMemoryWindow` does exactly that in this process,
so tests and benchmarks see what a guest would: reading the window reads the host file's page
cache, with no request to the daemon.

:class:`BackendChannelServer` answers the back-end requests arriving on the socket handed over
with SET_BACKEND_REQ_FD, in a thread of its own (a back-end waits for each acknowledgement while
the frontend may be waiting on it in the other direction).
"""

import array
import ctypes
import ctypes.util
import errno
import mmap
import os
import socket
import threading

from fastvfs.vhost_user import protocol
from fastvfs.vhost_user.protocol import BackendRequest

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_long)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_MAP_FAILED = ctypes.c_void_p(-1).value
_MAP_FIXED = 0x10
_MAP_NORESERVE = 0x4000
_PAGE = mmap.PAGESIZE
_PROT_NONE = 0


def _mmap(addr, length, prot, flags, fd, offset):
    result = _libc.mmap(addr, length, prot, flags, fd, offset)
    if result in (None, _MAP_FAILED):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


class SharedMemoryWindow:
    """``size`` bytes of reserved address space into which file ranges are mapped.

    Accesses through :meth:`read`, :meth:`write` and :meth:`view` are checked against the
    current mappings (touching an unbacked page would crash the test process, as it faults a
    guest); touching a mapped page past the end of its file still raises SIGBUS, as in a VM.
    """

    def __init__(self, size):
        if size <= 0 or size % _PAGE:
            raise ValueError("window size must be a positive multiple of the page size")
        self.size = size
        self.base = _mmap(None, size, _PROT_NONE,
                          mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE, -1, 0)
        self._lock = threading.Lock()
        self._pages = {}     # page index -> writable, for every mapped page

    def close(self):
        if self.base is not None:
            _libc.munmap(self.base, self.size)
            self.base = None
            self._pages = {}

    def _check(self, offset, length):
        if offset % _PAGE or length % _PAGE or length == 0:
            raise OSError(errno.EINVAL, "unaligned window range")
        if offset > self.size or length > self.size - offset:
            raise OSError(errno.EINVAL, "range past the window")

    def map(self, fd, fd_offset, offset, length, writable):
        """SHMEM_MAP: ``fd`` from ``fd_offset`` at ``offset``, replacing what was there."""
        self._check(offset, length)
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        with self._lock:
            _mmap(self.base + offset, length, prot, mmap.MAP_SHARED | _MAP_FIXED, fd, fd_offset)
            for page in range(offset // _PAGE, (offset + length) // _PAGE):
                self._pages[page] = writable

    def unmap(self, offset, length):
        """SHMEM_UNMAP: the range becomes inaccessible again."""
        self._check(offset, length)
        with self._lock:
            _mmap(self.base + offset, length, _PROT_NONE,
                  mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_FIXED | _MAP_NORESERVE, -1, 0)
            for page in range(offset // _PAGE, (offset + length) // _PAGE):
                self._pages.pop(page, None)

    def is_mapped(self, offset, length, writable=False):
        if length <= 0 or offset < 0 or offset + length > self.size:
            return False
        with self._lock:
            for page in range(offset // _PAGE, (offset + length - 1) // _PAGE + 1):
                w = self._pages.get(page)
                if w is None or (writable and not w):
                    return False
        return True

    def _require(self, offset, length, writable=False):
        if not self.is_mapped(offset, length, writable):
            raise OSError(errno.EFAULT, f"window range {offset:#x}+{length:#x} is not mapped"
                                        f"{' writable' if writable else ''}")

    def read(self, offset, length):
        self._require(offset, length)
        return ctypes.string_at(self.base + offset, length)

    def write(self, offset, data):
        self._require(offset, len(data), writable=True)
        ctypes.memmove(self.base + offset, bytes(data), len(data))

    def view(self, offset, length):
        """A memoryview of mapped window bytes (no copy): what a guest's load sees."""
        self._require(offset, length)
        return memoryview((ctypes.c_char * length).from_address(self.base + offset)).cast("B")

    @property
    def mapped_pages(self):
        with self._lock:
            return len(self._pages)


class BackendChannelServer:
    """Serves back-end requests for one connection: SHMEM_MAP/UNMAP into ``windows[shmid]``.

    ``refuse`` makes every request fail (the frontend acks non-zero), for error-path tests;
    ``requests`` records what arrived, as (name, shmid, fd_offset, shm_offset, len, flags).
    """

    def __init__(self, windows):
        self.windows = windows
        self.refuse = False
        # While ``hold`` is set, requests are received (counted in ``received``) but answered
        # only once it is cleared: a frontend busy elsewhere, as QEMU is while it waits for a
        # reply of the back-end.
        self.hold = threading.Event()
        self._released = threading.Condition()
        self.received = 0
        self.requests = []
        self.errors = []
        self.backend_sock, self.sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.thread = threading.Thread(target=self._serve, name="frontend-backend-req",
                                       daemon=True)
        self.thread.start()

    def release(self):
        """Answer the requests held back by ``hold``."""
        with self._released:
            self.hold.clear()
            self._released.notify_all()

    def wait_received(self, count, timeout=10):
        with self._released:
            return self._released.wait_for(lambda: self.received >= count, timeout)

    def close(self):
        self.release()
        for s in (self.sock, self.backend_sock):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self.thread.join(5)

    def _recv(self):
        fds = []
        header = b""
        while len(header) < protocol.HEADER_SIZE:
            data, anc, _, _ = self.sock.recvmsg(protocol.HEADER_SIZE - len(header),
                                                socket.CMSG_SPACE(protocol.MAX_FDS * 4))
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.extend(array.array("i", raw[:len(raw) - len(raw) % 4]))
            if not data:
                for fd in fds:
                    os.close(fd)
                return None
            header += data
        request, flags, size = protocol.header.unpack(header)
        payload = b""
        while len(payload) < size:
            chunk = self.sock.recv(size - len(payload))
            if not chunk:
                return None
            payload += chunk
        return request, flags, payload, fds

    def _serve(self):
        while True:
            try:
                msg = self._recv()
            except OSError:
                return
            if msg is None:
                return
            request, flags, payload, fds = msg
            with self._released:
                self.received += 1
                self._released.notify_all()
                self._released.wait_for(lambda: not self.hold.is_set())
            status = 0
            try:
                status = self._handle(request, payload, fds)
            except (OSError, ValueError, KeyError) as exc:
                self.errors.append(exc)
                status = 1
            finally:
                for fd in fds:
                    os.close(fd)
            if flags & protocol.VHOST_USER_NEED_REPLY_MASK:
                reply = protocol.header.pack(request, protocol.VHOST_USER_VERSION |
                                             protocol.VHOST_USER_REPLY_MASK, 8)
                try:
                    self.sock.sendall(reply + protocol.u64.pack(status))
                except OSError:
                    return

    def _handle(self, request, payload, fds):
        if request not in (BackendRequest.SHMEM_MAP, BackendRequest.SHMEM_UNMAP):
            raise ValueError(f"unexpected back-end request {request}")
        if len(payload) != protocol.shmem_map.size:
            raise ValueError("SHMEM_MAP/UNMAP payload of the wrong size")
        shmid, fd_offset, shm_offset, length, flags = protocol.shmem_map.unpack(payload)
        name = BackendRequest(request).name
        self.requests.append((name, shmid, fd_offset, shm_offset, length, flags))
        if self.refuse:
            return 1
        window = self.windows[shmid]
        if request == BackendRequest.SHMEM_MAP:
            if len(fds) != 1:
                raise ValueError("SHMEM_MAP without exactly one fd")
            window.map(fds[0], fd_offset, shm_offset, length,
                       bool(flags & protocol.VHOST_USER_FLAG_MAP_RW))
        else:
            window.unmap(shm_offset, length)
        return 0
