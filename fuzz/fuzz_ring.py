"""libFuzzer target: the hot path's split virtqueue walker and C FUSE fast path
(``fastvfs.ring.Virtqueue``): descriptor tables, indirect tables, the avail index and heads,
``fuse_in_header`` and the fast ops (READ, WRITE, GETATTR, LOOKUP, FLUSH, RELEASE, FORGET,
BATCH_FORGET, FSYNC, FALLOCATE) over a real file and directory.

Each input lays out guest memory (see fuzz/ring_layout.py) and runs a fresh ``Virtqueue`` worker
for one kick: the worker thread serves until every published head has been popped, then is
stopped.  Contract checked: the process survives (no crash, no hang: a bounded wait), and every
popped chain came back in the used ring but the avail entries naming no descriptor (skipped and
counted); an avail index out of reach stops the taking (the device-needs-reset state).

With ``FASTVFS_FUZZ_NATIVE`` (``make fuzz-build``) the extension is the clang build with
SanitizerCoverage, so libFuzzer is guided by the C code's edges and comparisons; without it only
the Python side (the slow-path handler) gives coverage, and the run still finds crashes and hangs.

    python fuzz/fuzz_ring.py -max_total_time=60 fuzz/corpus/ring
"""

import os
import stat
import struct
import sys
import tempfile
import threading
import time

import atheris

import _common
import ring_layout as L
from fastvfs.config import IoEngine, RingOptions  # noqa: E402 (no extension: loads nothing)

HANG_S = 5.0
ring = tables = None   # fastvfs.ring._ring and fastvfs.fs._tables, imported inside the first
                      # input (see _common.load_hot_path)
ENV = None


class Env:
    def __init__(self):
        with atheris.instrument_imports(include=["fastvfs"]):
            from fastvfs.fs.passthrough import PassthroughFs
        self.PassthroughFs = PassthroughFs
        self.mem, self.dq = L.make()
        self.table = ring.MemoryTable()
        for r in self.mem.regions:
            self.table.add_region(r.guest_phys_addr, r.memory_size, r.userspace_addr,
                                  r.mmap_offset, r.fd)
        self.dir = tempfile.mkdtemp(prefix="fastvfs-fuzz-ring-")
        self.root = os.path.join(self.dir, "share")
        os.mkdir(self.root)
        self.data_path = os.path.join(self.root, "f")
        self.restore_data()
        self.stop_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.handler_mode = 0
        self.violations = []

    def restore_data(self):
        """The data file every input opens, made again when an input's UNLINK, RMDIR or
        RENAME served in C took it away or left something else under its name (a whiteout)."""
        try:
            mode = os.lstat(self.data_path).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None and stat.S_ISREG(mode):
            return
        if mode is not None:
            (os.rmdir if stat.S_ISDIR(mode) else os.unlink)(self.data_path)
        with open(self.data_path, "wb") as f:
            f.write(b"0123456789" * 500)

    def handler(self, request, out_size):
        # The Python engine's side of the contract: it gets the whole request, and no more
        # reply room than the chain's writable bytes after fuse_out_header.  (The worker turns
        # an exception here into EIO, so a violation is recorded and raised by run_once.)
        hlen = struct.unpack_from("<I", request)[0] if len(request) >= 4 else -1
        if len(request) != hlen or not 0 <= out_size <= 1 << 24:
            self.violations.append(f"handler got {len(request)} bytes (len {hlen}), "
                                   f"out_size {out_size}")
        mode = self.handler_mode
        if mode == 0:
            return 0, b"x" * min(out_size, 24)
        if mode == 1:
            return None
        if mode == 2:
            return lambda pending: pending.complete(-5, b"")
        raise RuntimeError("the engine failed")


def avail_index(env):
    return struct.unpack("<H", env.mem.read(env.dq.avail_addr + 2, 2))[0]


def run_once(data):
    config, window = data[0], data[1:1 + L.WINDOW]
    env = ENV
    env.mem.write(L.WINDOW_GPA, window.ljust(L.WINDOW, b"\0"))
    env.handler_mode = (config >> L.HANDLER_SHIFT) & 3
    handles = tables.HandleTable(64)
    inodes = tables.NodeTable(64)
    # Extended attributes served, so GETXATTR and LISTXATTR reach their C path too.
    fs = env.PassthroughFs(env.root, handles, inodes=inodes, xattr=True)
    env.restore_data()
    handles.add(os.open(env.data_path, os.O_RDWR))
    u = env.mem.userspace_addr
    dq = env.dq
    uring = bool(config & L.URING)
    vq = ring.Virtqueue(1, env.table, handles, L.QUEUE_SIZE, u(dq.desc_addr), u(dq.avail_addr),
                        u(dq.used_addr), 0, dq.kick_fd, dq.call_fd, env.stop_fd,
                        bool(config & L.EVENT_IDX), bool(config & L.INDIRECT),
                        RingOptions(max_io=1 << 16, attr_timeout=1.0,
                                    io_engine=IoEngine.URING_RW if uring else IoEngine.SYNC,
                                    read_only=bool(config & L.READ_ONLY)),
                        ring.RingLock(), inodes=inodes)
    vq.set_fast_io(bool(config & L.FAST_IO))
    used_base = vq.used_idx     # taken from guest memory, where the input put it
    os.eventfd_write(dq.kick_fd, 1)
    thread = threading.Thread(target=vq.run, args=(env.handler,), daemon=True)
    thread.start()
    deadline = time.monotonic() + HANG_S
    # The avail index is read afresh: a chain's writable buffer may overlap the rings, so
    # the worker's own replies can move it (the guest's business, as long as the worker
    # neither crashes nor spins).
    while vq.last_avail_idx != avail_index(env) and not vq.bad_avail and thread.is_alive():
        if time.monotonic() > deadline:
            raise AssertionError(f"worker stuck: popped up to {vq.last_avail_idx}, "
                                 f"avail index {avail_index(env)}")
        time.sleep(0.00002)
    vq.stop()
    thread.join(HANG_S)
    if thread.is_alive():
        raise AssertionError("worker did not stop")
    os.eventfd_read(env.stop_fd)
    for fd in (dq.kick_fd, dq.call_fd):
        try:
            os.eventfd_read(fd)
        except BlockingIOError:
            pass
    # Counted by the worker, not read back from the used ring (which a reply may overwrite).
    returned = (vq.used_idx - used_base) & 0xFFFF
    assert (returned + vq.bad_heads) & 0xFFFF == vq.last_avail_idx, \
        f"{vq.last_avail_idx} avail entries taken, {returned} chains returned, " \
        f"{vq.bad_heads} skipped"
    vq.retire(None)
    _common.drop_fs(fs)
    if env.violations:
        violations, env.violations = env.violations, []
        raise AssertionError("; ".join(violations))


def test_one_input(data):
    global ring, tables, ENV
    if ring is None:
        ring, tables = _common.load_hot_path()
        ENV = Env()
    if not data:
        return
    run_once(data)


def main():
    _common.fuzz(test_one_input)


if __name__ == "__main__":
    main()
