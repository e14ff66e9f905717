"""libFuzzer target: the vhost-user message handler (``VhostUserFsDevice.serve`` over a real
``Connection``): framing, every request's validation, memory tables, ring start and stop.

Each input is a message sequence (see fuzz/vhost_framing.py) written, with its descriptors, into
one end of a socket pair; a fresh device serves the other end until the frontend hangs up.
Contract checked: ``serve`` returns normally (bad framing is a ProtocolError it handles itself);
no request fails other than with the documented refusals (BadRequest, ValueError, OSError: an
unexpected exception is logged with its traceback, which fails the input); every descriptor
received is closed and every ring thread stopped once the device is reset.

    python fuzz/fuzz_vhost_user.py -max_total_time=60 fuzz/corpus/vhost_user
"""

import array
import logging
import os
import socket
import sys
import threading

import atheris

import _common
import vhost_framing

with atheris.instrument_imports(include=["fastvfs"]):
    from fastvfs.fs._tables import HandleTable
    from fastvfs.vhost_user.connection import Connection
    from fastvfs.vhost_user.device import VhostUserFsDevice


class Unexpected(logging.Handler):
    """Collects what the device logs with a traceback: a bug, not a refusal."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.failures = []

    def emit(self, record):
        if record.exc_info:
            self.failures.append(self.format(record))


UNEXPECTED = Unexpected()
UNEXPECTED.setFormatter(logging.Formatter("%(message)s"))
_log = logging.getLogger("fastvfs")
_log.addHandler(UNEXPECTED)
_log.setLevel(logging.ERROR)
_log.propagate = False


def _fd_count():
    return len(os.listdir("/proc/self/fd"))


def test_one_input(data):
    threads, fds_before = threading.active_count(), _fd_count()
    device = VhostUserFsDevice(lambda request, out_size: (0, b""), HandleTable(64),
                               num_queues=3, tag="fuzz")
    frontend, backend = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    frontend.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    try:
        for code, wire in vhost_framing.unframe(data[:64 << 10]):
            fds = vhost_framing.make_fds(code)
            try:
                anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
                frontend.sendmsg([wire], anc)
            finally:
                for fd in fds:
                    os.close(fd)
        frontend.shutdown(socket.SHUT_WR)
        device.serve(Connection(backend))
    finally:
        frontend.close()
        backend.close()
    if UNEXPECTED.failures:
        failures, UNEXPECTED.failures = UNEXPECTED.failures, []
        raise AssertionError("unexpected failure in the device:\n" + "\n".join(failures))
    assert threading.active_count() == threads, "a ring thread outlived the reset"
    assert _fd_count() == fds_before, "a received descriptor was leaked"


def main():
    _common.fuzz(test_one_input)


if __name__ == "__main__":
    main()
