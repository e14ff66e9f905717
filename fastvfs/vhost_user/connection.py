"""One vhost-user connection: framed messages over a Unix stream socket, fds via SCM_RIGHTS."""

import array
import os
import socket

from . import protocol
from .protocol import HEADER_SIZE


class ProtocolError(Exception):
    """The byte stream cannot be trusted any more (bad framing); the connection must close."""


class Disconnected(Exception):
    """The socket itself failed (ECONNRESET when the frontend was killed with data unread,
    EPIPE): the frontend is gone, as at end of file."""


class Message:
    __slots__ = ("request", "flags", "payload", "fds")

    def __init__(self, request, flags, payload, fds):
        self.request = request
        self.flags = flags
        self.payload = payload
        self.fds = fds

    @property
    def version_ok(self):
        return self.flags & protocol.VHOST_USER_VERSION_MASK == protocol.VHOST_USER_VERSION

    @property
    def need_reply(self):
        return bool(self.flags & protocol.VHOST_USER_NEED_REPLY_MASK)

    def take_fd(self):
        """Hand over the first fd (the caller owns it now), or None."""
        return self.fds.pop(0) if self.fds else None

    def close_fds(self):
        for fd in self.fds:
            os.close(fd)
        self.fds = []


class Connection:
    def __init__(self, sock):
        self.sock = sock

    def fileno(self):
        return self.sock.fileno()

    def recv(self):
        """The next message, or None when the frontend has closed the connection; raises
        ProtocolError for bad framing and Disconnected when the socket fails."""
        fd_space = socket.CMSG_SPACE(protocol.MAX_FDS * 4)
        try:
            data, ancdata, msg_flags, _ = self.sock.recvmsg(HEADER_SIZE, fd_space,
                                                            socket.MSG_CMSG_CLOEXEC)
        except OSError as exc:
            raise Disconnected(exc.strerror or str(exc)) from None
        fds = _fds_from(ancdata)
        if not data:
            _close_all(fds)
            return None
        try:
            if msg_flags & socket.MSG_CTRUNC:
                raise ProtocolError("more file descriptors than any request carries")
            data += self._recv_exact(HEADER_SIZE - len(data))
            request, flags, size = protocol.header.unpack(data)
            if size > protocol.MAX_PAYLOAD:
                raise ProtocolError(f"payload of {size} bytes is larger than any request")
            payload = self._recv_exact(size)
        except BaseException:
            _close_all(fds)
            raise
        return Message(request, flags, payload, fds)

    def _recv_exact(self, n):
        buf = b""
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except OSError as exc:
                raise Disconnected(exc.strerror or str(exc)) from None
            if not chunk:
                raise ProtocolError("connection closed inside a message")
            buf += chunk
        return buf

    def send(self, request, payload=b"", fds=()):
        """Send a reply (the REPLY flag set) or, with ``fds``, a backend request; raises
        Disconnected when the socket fails."""
        head = protocol.header.pack(request, protocol.VHOST_USER_VERSION |
                                    protocol.VHOST_USER_REPLY_MASK, len(payload))
        anc = []
        if fds:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        try:
            self.sock.sendmsg([head + payload], anc)
        except OSError as exc:
            raise Disconnected(exc.strerror or str(exc)) from None

    def close(self):
        self.sock.close()


def _fds_from(ancdata):
    fds = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[:len(data) - len(data) % arr.itemsize])
            fds.extend(arr)
    return fds


def _close_all(fds):
    for fd in fds:
        os.close(fd)
