"""Stopping rings whose worker is stuck in a request (a host file system that hangs): the
in-process device (fastvfs.vhost_user.device) driven by the frontend driver over a socket."""

import logging
import os
import socket
import threading
import time

import pytest

from fastvfs.fs._tables import HandleTable
from fastvfs.ring import _ring
from fastvfs.fuse import abi
from fastvfs.fuse.abi import Opcode
from fastvfs_testing.frontend import VhostUserFrontend
from fastvfs_testing.fuse_client import FuseClient
from fastvfs.vhost_user.connection import Connection
from fastvfs.vhost_user.device import VhostUserFsDevice
from fastvfs.vhost_user.protocol import Request

STOP_WAIT = 0.5


class StuckDevice:
    """A device whose engine blocks in every request until ``release`` is set."""

    def __init__(self, tmp_path):
        self.entered = threading.Event()
        self.release = threading.Event()
        self.device = VhostUserFsDevice(self._handler, HandleTable(16), num_queues=2,
                                        stop_wait=STOP_WAIT)
        path = str(tmp_path / "vhost.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)
        self.server = threading.Thread(target=self._serve, daemon=True)
        self.server.start()
        self.frontend = VhostUserFrontend(path, timeout=5).start()
        self.client = FuseClient(self.frontend, timeout=5)

    def _handler(self, request, out_size):
        self.entered.set()
        self.release.wait(30)
        return (0, b"")

    def _serve(self):
        conn, _ = self.listener.accept()
        self.device.serve(Connection(conn))
        conn.close()

    def close(self):
        self.release.set()
        self.frontend.close()
        self.server.join(10)
        self.listener.close()


def test_get_vring_base_is_answered_while_a_worker_is_stuck(tmp_path, caplog):
    caplog.set_level(logging.ERROR, "fastvfs")
    stuck = StuckDevice(tmp_path)
    try:
        stuck.client.submit(Opcode.STATFS, abi.FUSE_ROOT_ID)
        stuck.client.publish()
        assert stuck.entered.wait(5)
        start = time.monotonic()
        base = stuck.frontend.stop_queue(1)
        assert time.monotonic() - start < STOP_WAIT + 1.5
        assert base == 1  # the request the worker took
        assert "ring 1: the worker is still in a request" in caplog.text
        # The frontend is still served, but guest memory does not change under the worker.
        assert stuck.frontend.get_u64(Request.GET_FEATURES) == stuck.frontend.features
        assert stuck.device.stuck and stuck.device.stuck[0][0] == 1
        # Started again while its worker is stuck: not served, and the frontend told so.
        err_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            stuck.frontend.set_vring_fd(Request.SET_VRING_ERR, 1, err_fd)
            stuck.frontend.start_queue(1)
            stuck.frontend.enable_queue(1)
            assert stuck.frontend.get_u64(Request.GET_FEATURES) == stuck.frontend.features
            assert not stuck.device.vrings[1].running
            assert "ring 1 not started: its previous worker is still stuck" in caplog.text
            assert os.eventfd_read(err_fd) == 1
        finally:
            os.close(err_fd)
        stuck.release.set()
        stuck.device.stuck[0][1].join(5)
        assert not stuck.device._stuck_workers()
    finally:
        stuck.close()


def test_a_hang_up_with_a_worker_stuck_ends_serving_within_the_wait(tmp_path, caplog):
    stuck = StuckDevice(tmp_path)
    try:
        stuck.client.submit(Opcode.STATFS, abi.FUSE_ROOT_ID)
        stuck.client.publish()
        assert stuck.entered.wait(5)
        start = time.monotonic()
        stuck.frontend.sock.close()
        stuck.frontend.sock = None
        stuck.server.join(STOP_WAIT + 3)
        assert not stuck.server.is_alive()
        assert time.monotonic() - start < STOP_WAIT + 1.5
    finally:
        stuck.close()


def test_a_ring_that_cannot_restart_after_a_memory_change_leaves_the_others_served(
        tmp_path, caplog, monkeypatch):
    """A memory table change pauses every running ring and restarts each on the new table: a
    ring whose restart fails in any way is stopped, logged and its error eventfd signalled,
    and the others still restart."""
    caplog.set_level(logging.ERROR, "fastvfs")
    stuck = StuckDevice(tmp_path)
    stuck.release.set()           # the engine answers at once
    err_fds = [os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) for _ in range(2)]
    try:
        for index, fd in enumerate(err_fds):
            stuck.frontend.set_vring_fd(Request.SET_VRING_ERR, index, fd)
        stuck.client.wait(stuck.client.submit(Opcode.STATFS, abi.FUSE_ROOT_ID))  # ring 1 runs
        device = stuck.device
        real_start = device._start

        def failing_start(vring):
            if vring.index == 1:
                raise RuntimeError("cannot start a thread")
            real_start(vring)
        monkeypatch.setattr(device, "_start", failing_start)
        running = [v.index for v in device.vrings if v.running]
        stuck.frontend.set_mem_table()
        assert "ring 1 cannot restart: cannot start a thread" in caplog.text
        assert not device.vrings[1].running and device.vrings[1].thread is None
        assert [v.index for v in device.vrings if v.running] == [i for i in running if i != 1]
        assert stuck.frontend.get_u64(Request.GET_FEATURES) == stuck.frontend.features
        assert os.eventfd_read(err_fds[1]) == 1
        with pytest.raises(BlockingIOError):
            os.eventfd_read(err_fds[0])
    finally:
        stuck.close()
        for fd in err_fds:
            os.close(fd)


class _RecordingQueue:
    """A real queue whose set_fast_io records each value and, the first time it is called
    (by the control thread starting the ring), lets ``on_first`` run in between."""

    def __init__(self, queue, on_first):
        self._queue = queue
        self._on_first = on_first
        self.values = []

    def set_fast_io(self, enabled):
        if self._on_first is not None:
            on_first, self._on_first = self._on_first, None
            on_first()
        self._queue.set_fast_io(enabled)
        self.values.append(enabled)

    def __getattr__(self, name):
        return getattr(self._queue, name)


def test_a_session_starting_while_a_ring_starts_reaches_the_new_ring(tmp_path, monkeypatch):
    """The FUSE engine turns the fast path on (set_fast_io, from a worker) while the control
    thread is starting a ring: the new ring must end with the value set last, never with the
    one read before the change (fastvfs.vhost_user.device, _fast_io_lock)."""
    from fastvfs.vhost_user import device as device_module
    stuck = StuckDevice.__new__(StuckDevice)
    queues, flips = [], []

    def flip_meanwhile():
        # A worker's session start, concurrent with the ring start: given a moment to run.
        flip = threading.Thread(target=stuck.device.set_fast_io, args=(True,), daemon=True)
        flips.append(flip)
        flip.start()
        flip.join(0.3)

    class RingModule:
        def __getattr__(self, name):
            return getattr(_ring, name)

        @staticmethod
        def Virtqueue(*args):
            queue = _RecordingQueue(_ring.Virtqueue(*args),
                                    flip_meanwhile if args[0] == 1 else None)
            queues.append(queue)
            return queue

    monkeypatch.setattr(device_module, "ring", RingModule())
    StuckDevice.__init__(stuck, tmp_path)
    stuck.release.set()
    try:
        stuck.client.wait(stuck.client.submit(Opcode.STATFS, abi.FUSE_ROOT_ID))  # ring 1 runs
        for flip in flips:
            flip.join(5)
            assert not flip.is_alive()
        assert flips and stuck.device.fast_io is True
        ring1 = [q for q in queues if q.index == 1]
        assert ring1 and ring1[-1].values[-1] is True, ring1[-1].values
    finally:
        stuck.close()
