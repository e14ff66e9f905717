"""The io_uring engine (liburing through cffi) on real files."""

import errno
import mmap
import os

import pytest

from fastvfs.uring import UringEngine, UringUnavailable


@pytest.fixture
def ring():
    try:
        engine = UringEngine(64)
    except UringUnavailable as exc:
        pytest.skip(f"io_uring unavailable here: {exc}")
    yield engine
    engine.close()


@pytest.fixture
def datafile(tmp_path):
    path = tmp_path / "data"
    path.write_bytes(bytes(range(256)) * 256)  # 64 KiB
    fd = os.open(path, os.O_RDWR)
    yield fd, path
    os.close(fd)


def test_setup_and_probe(ring):
    assert ring.entries >= 64
    for op in ("READV", "WRITEV", "FSYNC", "READ_FIXED", "WRITE_FIXED", "FALLOCATE"):
        assert ring.supports(op), op
    assert ring.ring_address > 0


def test_batch_of_reads_in_one_submit(ring, datafile):
    fd, path = datafile
    expected = path.read_bytes()
    buffers = [bytearray(4096) for _ in range(32)]
    for i, buf in enumerate(buffers):
        ring.readv(fd, [buf], i * 1024, user_data=i)
    assert ring.submit(wait=32) == 32
    done = dict(ring.reap())
    assert sorted(done) == list(range(32)) and all(res == 4096 for res in done.values())
    for i, buf in enumerate(buffers):
        assert bytes(buf) == expected[i * 1024:i * 1024 + 4096]


def test_scatter_write_fsync_and_short_read_at_eof(ring, datafile):
    fd, path = datafile
    ring.writev(fd, [b"abc", b"defg"], 10, user_data=1)
    ring.submit(wait=1)
    assert ring.reap() == [(1, 7)]
    ring.fsync(fd, user_data=2, datasync=True)
    ring.submit(wait=1)
    assert ring.reap() == [(2, 0)]
    assert path.read_bytes()[10:17] == b"abcdefg"
    tail = bytearray(100)
    ring.readv(fd, [tail], 65536 - 30, user_data=3)
    ring.submit(wait=1)
    assert ring.reap() == [(3, 30)]


def test_errors_come_back_as_negative_errno(ring):
    ring.readv(987654, [bytearray(10)], 0, user_data=9)
    ring.submit(wait=1)
    assert ring.reap() == [(9, -errno.EBADF)]


def test_registered_buffers_and_files(ring, datafile):
    fd, path = datafile
    # Memory like a guest region: one anonymous shared mapping, registered once.
    region = mmap.mmap(-1, 1 << 20)
    view = (ctypes_address(region), len(region))
    ring.register_buffers([view])
    ring.register_files([fd])
    ring.read_fixed(0, view[0] + 8192, 4096, 0, 0, user_data=5, fixed_file=True)
    ring.submit(wait=1)
    assert ring.reap() == [(5, 4096)]
    assert region[8192:8192 + 4096] == path.read_bytes()[:4096]
    region[0:5] = b"fixed"
    ring.write_fixed(0, view[0], 5, 100, 0, user_data=6, fixed_file=True)
    ring.submit(wait=1)
    assert ring.reap() == [(6, 5)]
    assert path.read_bytes()[100:105] == b"fixed"
    ring.unregister_files()
    ring.unregister_buffers()
    region.close()


def ctypes_address(m):
    import ctypes
    return ctypes.addressof(ctypes.c_char.from_buffer(m))


def test_full_submission_queue_says_so(ring, datafile):
    fd, _ = datafile
    bufs = []
    with pytest.raises(BlockingIOError):
        for i in range(ring.entries + 1):
            bufs.append(bytearray(16))
            ring.readv(fd, [bufs[-1]], 0, user_data=i)
    ring.submit(wait=ring.entries)
    assert len(ring.reap(1024)) == ring.entries


def test_a_restricted_ring_refuses_everything_else():
    """The queues' rings are restricted to what the hot path submits (io_uring operations are
    not system calls: the seccomp filter never sees them)."""
    import errno as errno_mod
    import tempfile
    from fastvfs import _ring
    from fastvfs.uring.engine import ffi, lib
    engine = UringEngine(64, restrict=_ring.URING_ALLOWED)
    try:
        with tempfile.TemporaryFile() as f:
            f.write(b"restricted")
            f.flush()
            buf = bytearray(10)
            engine.readv(f.fileno(), [buf], 0, user_data=1)
            sqe = lib.io_uring_get_sqe(engine._ring)
            lib.io_uring_prep_openat(sqe, -100, ffi.new("char[]", b"/etc/passwd"), 0, 0)
            lib.io_uring_sqe_set_data64(sqe, 2)
            sqe = lib.io_uring_get_sqe(engine._ring)
            lib.io_uring_prep_nop(sqe)
            lib.io_uring_sqe_set_data64(sqe, 3)
            engine.submit()
            results = {}
            while len(results) < 3:
                engine.submit(wait=1)
                results.update(dict(engine.reap()))
            assert results[1] == 10 and bytes(buf) == b"restricted"
            assert results[2] == -errno_mod.EACCES and results[3] == -errno_mod.EACCES
        # Registering anything but buffers is refused too.
        with pytest.raises(OSError) as exc:
            engine.register_files([0])
        assert exc.value.errno == errno_mod.EACCES
    finally:
        engine.close()
