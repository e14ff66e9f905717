"""The framing of a vhost-user fuzz input (fuzz/fuzz_vhost_user.py, fuzz/make_seeds.py).

An input is a sequence of records ``[u8 fds][12-byte header][payload]``: the header is
vhost-user's (request, flags, size, native endian), the payload is the next ``size`` bytes (fewer
when the input ends first: the frontend then hangs up inside the message).  ``fds`` says what
travels as SCM_RIGHTS with the message: ``fds & 7`` the kind (0 none, 1 eventfd, 2 memfd of
MEMFD_SIZE bytes, 3 Unix stream socket, 4 pipe), ``(fds >> 3 & 7) + 1`` how many.
"""

import os
import socket

from fastvfs.vhost_user import protocol

MAX_MESSAGES = 24
MEMFD_SIZE = 2 << 20
NONE, EVENTFD, MEMFD, SOCKET, PIPE = range(5)


def fd_byte(kind, count=1):
    return kind | (count - 1) << 3 if kind else 0


def make_fds(code):
    """Fresh descriptors for one message (the caller closes them after sending)."""
    kind, count = code & 7, (code >> 3 & 7) + 1
    fds = []
    for _ in range(count if kind else 0):
        if kind == EVENTFD:
            fds.append(os.eventfd(0, os.EFD_CLOEXEC))
        elif kind == MEMFD:
            fd = os.memfd_create("fuzz-guest-ram", os.MFD_CLOEXEC)
            os.ftruncate(fd, MEMFD_SIZE)
            fds.append(fd)
        elif kind == SOCKET:
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            fds.append(a.detach())
            b.close()
        elif kind == PIPE:
            r, w = os.pipe()
            os.close(w)
            fds.append(r)
    return fds


def frame(messages):
    """Encode ``[(fd byte, request, flags, payload)]``."""
    return b"".join(bytes([code]) + protocol.header.pack(request, flags, len(payload)) + payload
                    for code, request, flags, payload in messages)


def unframe(data):
    """Split an input into at most MAX_MESSAGES ``(fd byte, wire bytes)``."""
    out, pos = [], 0
    while pos < len(data) and len(out) < MAX_MESSAGES:
        code = data[pos]
        head = data[pos + 1:pos + 1 + protocol.HEADER_SIZE]
        pos += 1 + len(head)
        size = protocol.header.unpack(head)[2] if len(head) == protocol.HEADER_SIZE else 0
        payload = data[pos:pos + min(size, protocol.MAX_PAYLOAD + 1)]
        pos += len(payload)
        out.append((code, head + payload))
    return out
