"""The io_uring control plane (liburing through cffi): set-up, probing, restriction and the
registration of guest memory.  The data path on the same rings (READ/WRITE, fixed buffers,
FSYNC, FALLOCATE) is the hot path's and is tested through it (``tests/unit/test_ring.py``,
``TestFastPath``)."""

import ctypes
import errno
import mmap

import pytest

from fastvfs.ring import _ring
from fastvfs.uring import UringEngine, UringUnavailable
from fastvfs.uring.engine import ffi, lib


@pytest.fixture
def ring():
    try:
        engine = UringEngine(64)
    except UringUnavailable as exc:
        pytest.skip(f"io_uring unavailable here: {exc}")
    yield engine
    engine.close()


def test_setup_and_probe(ring):
    assert ring.entries >= 64
    for op in ("READV", "WRITEV", "FSYNC", "READ_FIXED", "WRITE_FIXED", "FALLOCATE"):
        assert ring.supports(op), op
    assert ring.ring_address == int(ffi.cast("uintptr_t", ring._ring)) > 0


def test_registered_buffers(ring):
    """Memory like a guest region: one shared mapping, registered and unregistered."""
    region = mmap.mmap(-1, 1 << 20)
    address = ctypes.addressof(ctypes.c_char.from_buffer(region))
    ring.register_buffers([(address, len(region))])
    with pytest.raises(OSError) as exc:
        ring.register_buffers([(address, len(region))])  # one registration at a time
    assert exc.value.errno == errno.EBUSY
    ring.unregister_buffers()
    with pytest.raises(OSError) as exc:
        ring.unregister_buffers()
    assert exc.value.errno == errno.ENXIO
    del address
    region.close()


def test_a_restricted_ring_refuses_everything_else():
    """The queues' rings are restricted to what the hot path submits (io_uring operations are
    not system calls: the seccomp filter never sees them).  The engine checks at set-up that
    the kernel refuses an operation outside the list; registrations outside it are refused."""
    engine = UringEngine(64, restrict=_ring.URING_ALLOWED)
    try:
        assert lib.io_uring_get_probe_ring(engine._ring) == ffi.NULL  # REGISTER_PROBE: EACCES
        region = mmap.mmap(-1, 1 << 16)
        address = ctypes.addressof(ctypes.c_char.from_buffer(region))
        engine.register_buffers([(address, len(region))])  # on the list
        engine.unregister_buffers()
        del address
        region.close()
    finally:
        engine.close()


def test_an_allow_list_the_check_cannot_verify_still_sets_up():
    """With NOP on the list there is nothing to check with; the ring is set up all the same."""
    ops, registers, flags = _ring.URING_ALLOWED
    engine = UringEngine(64, restrict=(ops + ("NOP",), registers, flags))
    engine.close()


def test_an_unenforced_restriction_is_refused(monkeypatch):
    """A kernel that takes IORING_REGISTER_RESTRICTIONS but lets a NOP outside the list run
    gives no ring at all (the queue then serves synchronously)."""
    real = lib.io_uring_register

    class Unenforcing:
        def __getattr__(self, name):
            return getattr(lib, name)

        @staticmethod
        def io_uring_register(fd, opcode, arg, nr):
            if opcode == lib.IORING_REGISTER_RESTRICTIONS:
                return 0  # accepted, and ignored
            return real(fd, opcode, arg, nr)

    from fastvfs.uring import engine as engine_mod
    monkeypatch.setattr(engine_mod, "lib", Unenforcing())
    with pytest.raises(UringUnavailable, match="NOP outside the allow-list"):
        UringEngine(64, restrict=_ring.URING_ALLOWED)
