"""The backend-request channel (vhost-user.rst "Back-end communication"): the socket the frontend
hands over with SET_BACKEND_REQ_FD, on which the back-end asks the frontend to act.

fastvfs uses it for the DAX cache window: SHMEM_MAP with the file's descriptor attached and
SHMEM_UNMAP, each sent with NEED_REPLY and answered by the frontend's u64 ack once the mapping is
in place.  The channel implements :class:`fastvfs.dax.MapChannel`, so the window's bookkeeping
never sees vhost-user.
"""

import array
import contextlib
import errno
import logging
import os
import select
import socket
import threading

from ..dax import MapChannel
from . import protocol
from .protocol import BackendRequest

log = logging.getLogger("fastvfs.vhost_user")

# A frontend acknowledges a map within milliseconds; one that does not answer at all must not
# hold a queue thread forever.
DEFAULT_TIMEOUT = 10.0


class BackendChannel(MapChannel):
    """Backend requests on one frontend's channel socket, one exchange at a time.

    While the control plane changes the device (a memory table, a ring stop) the channel is
    quiet (:meth:`quiet`): a frontend such as QEMU handles its back-end channel on the same
    thread that now waits for the control plane's reply, so a map request sent or waiting then
    could only be answered after that reply, which itself waits for the queue thread making the
    request.  A request is therefore refused (EAGAIN) while the channel is quiet, and one
    already waiting gives up at once; the answer it was owed is read, and dropped, before the
    next request is sent, so requests and answers stay paired."""

    def __init__(self, shmid=protocol.VIRTIO_FS_SHMCAP_ID_CACHE, timeout=DEFAULT_TIMEOUT):
        self.shmid = shmid
        self.timeout = timeout
        self._sock = None
        self._lock = threading.Lock()
        self.shmem = False        # SHMEM and REPLY_ACK negotiated: maps can be acknowledged
        # Quiet periods: their count (guarded by _quiet_lock, a leaf lock) and an eventfd that
        # is readable while any is open, which a waiting request polls beside the socket.
        self._quiet = 0
        self._quiet_lock = threading.Lock()
        self._quiet_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        # Abandoned requests whose answers are still to come, (request, payload), under _lock.
        self._owed = []

    @contextlib.contextmanager
    def quiet(self):
        """No back-end request waits for the frontend inside the ``with`` block."""
        with self._quiet_lock:
            self._quiet += 1
            if self._quiet == 1:
                os.eventfd_write(self._quiet_fd, 1)
        try:
            yield
        finally:
            with self._quiet_lock:
                self._quiet -= 1
                if self._quiet == 0:
                    try:
                        os.eventfd_read(self._quiet_fd)
                    except BlockingIOError:
                        pass

    @property
    def available(self):
        return self._sock is not None and self.shmem

    def attach(self, sock):
        """Use ``sock`` (SET_BACKEND_REQ_FD); a previous channel socket is closed."""
        sock.settimeout(self.timeout)
        with self._lock:
            old, self._sock = self._sock, sock
        if old is not None:
            old.close()

    def detach(self):
        """The frontend went away: close the channel."""
        with self._lock:
            old, self._sock = self._sock, None
        if old is not None:
            old.close()

    def map(self, fd, fd_offset, window_offset, length, writable):
        flags = protocol.VHOST_USER_FLAG_MAP_RW if writable else 0
        self._request(BackendRequest.SHMEM_MAP, protocol.shmem_map.pack(
            self.shmid, fd_offset, window_offset, length, flags), [fd])

    def unmap(self, window_offset, length):
        self._request(BackendRequest.SHMEM_UNMAP, protocol.shmem_map.pack(
            self.shmid, 0, window_offset, length, 0))

    def _request(self, request, payload, fds=()):
        with self._lock:
            sock = self._sock
            if sock is None or not self.shmem:
                raise OSError(errno.ENOTCONN, "no backend channel with shared memory")
            if self._quiet:
                raise OSError(errno.EAGAIN, "the device is being changed")
            head = protocol.header.pack(request, protocol.VHOST_USER_VERSION |
                                        protocol.VHOST_USER_NEED_REPLY_MASK, len(payload))
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
            sent = False
            try:
                self._settle_owed(sock)
                sock.sendmsg([head + payload], anc)
                sent = True
                reply = _recv_exact(sock, REPLY_SIZE, self._quiet_fd)
            except _Quieted:
                if sent:
                    self._owed.append((request, payload))
                raise OSError(errno.EAGAIN, "the device is being changed") from None
            except OSError as exc:
                # A lost or late reply would pair the next request with this one's answer:
                # the channel cannot be trusted any more.
                log.error("backend channel failed (%s): DAX mappings are off from now on", exc)
                self._sock = None
                sock.close()
                raise OSError(errno.EIO, f"backend channel: {exc}") from None
            self._check_reply(reply, request)
        (status,) = protocol.u64.unpack_from(reply, protocol.HEADER_SIZE)
        if status:
            raise OSError(errno.EIO, f"the frontend refused {request.name} ({status})")

    def _settle_owed(self, sock):
        """Read the answers owed to abandoned requests (lock held); a map that was made after
        all is undone, since the guest was told it failed and its range may be given again."""
        while self._owed:
            request, payload = self._owed[0]
            reply = _recv_exact(sock, REPLY_SIZE, self._quiet_fd)
            self._check_reply(reply, request)
            del self._owed[0]
            (status,) = protocol.u64.unpack_from(reply, protocol.HEADER_SIZE)
            if request == BackendRequest.SHMEM_MAP and status == 0:
                shmid, _, offset, length, _ = protocol.shmem_map.unpack(payload)
                undo = protocol.shmem_map.pack(shmid, 0, offset, length, 0)
                sock.sendall(protocol.header.pack(
                    BackendRequest.SHMEM_UNMAP, protocol.VHOST_USER_VERSION |
                    protocol.VHOST_USER_NEED_REPLY_MASK, len(undo)) + undo)
                self._owed.insert(0, (BackendRequest.SHMEM_UNMAP, undo))

    def _check_reply(self, reply, request):
        """An acknowledgement of ``request``; else the channel is closed (lock held)."""
        code, flags, size = protocol.header.unpack_from(reply)
        if (code != request or not flags & protocol.VHOST_USER_REPLY_MASK or
                size != protocol.u64.size):
            log.error("backend channel: malformed reply to %s", request.name)
            old, self._sock = self._sock, None
            if old is not None:
                old.close()
            raise OSError(errno.EIO, "malformed reply on the backend channel")


REPLY_SIZE = protocol.HEADER_SIZE + protocol.u64.size


class _Quieted(Exception):
    """The wait for an answer was given up: the channel became quiet."""


def _recv_exact(sock, n, quiet_fd):
    """``n`` bytes from ``sock`` within its timeout; _Quieted if ``quiet_fd`` becomes readable
    first (nothing of the answer read yet: a partial answer is always read to its end)."""
    buf = b""
    while len(buf) < n:
        if not buf:
            ready, _, _ = select.select([sock, quiet_fd], [], [], sock.gettimeout())
            if not ready:
                raise TimeoutError("no answer from the frontend")
            if sock not in ready:
                raise _Quieted()
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionResetError("the frontend closed the backend channel")
        buf += chunk
    return buf
