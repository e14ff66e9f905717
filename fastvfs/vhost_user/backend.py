"""The backend-request channel (vhost-user.rst "Back-end communication"): the socket the frontend
hands over with SET_BACKEND_REQ_FD, on which the back-end asks the frontend to act.

fastvfs uses it for the DAX cache window: SHMEM_MAP with the file's descriptor attached and
SHMEM_UNMAP, each sent with NEED_REPLY and answered by the frontend's u64 ack once the mapping is
in place.  The channel implements :class:`fastvfs.dax.MapChannel`, so the window's bookkeeping
never sees vhost-user.
"""

import array
import errno
import logging
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
    """Backend requests on one frontend's channel socket, one exchange at a time."""

    def __init__(self, shmid=protocol.VIRTIO_FS_SHMCAP_ID_CACHE, timeout=DEFAULT_TIMEOUT):
        self.shmid = shmid
        self.timeout = timeout
        self._sock = None
        self._lock = threading.Lock()
        self.shmem = False        # SHMEM and REPLY_ACK negotiated: maps can be acknowledged

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
            head = protocol.header.pack(request, protocol.VHOST_USER_VERSION |
                                        protocol.VHOST_USER_NEED_REPLY_MASK, len(payload))
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
            try:
                sock.sendmsg([head + payload], anc)
                reply = _recv_exact(sock, protocol.HEADER_SIZE + protocol.u64.size)
            except OSError as exc:
                # A lost or late reply would pair the next request with this one's answer:
                # the channel cannot be trusted any more.
                log.error("backend channel failed (%s): DAX mappings are off from now on", exc)
                self._sock = None
                sock.close()
                raise OSError(errno.EIO, f"backend channel: {exc}") from None
        code, flags, size = protocol.header.unpack_from(reply)
        if (code != request or not flags & protocol.VHOST_USER_REPLY_MASK or
                size != protocol.u64.size):
            log.error("backend channel: malformed reply to %s", request.name)
            self.detach()
            raise OSError(errno.EIO, "malformed reply on the backend channel")
        (status,) = protocol.u64.unpack_from(reply, protocol.HEADER_SIZE)
        if status:
            raise OSError(errno.EIO, f"the frontend refused {request.name} ({status})")


def _recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionResetError("the frontend closed the backend channel")
        buf += chunk
    return buf
