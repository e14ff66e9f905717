"""libFuzzer target: FUSE request decoding and dispatch in Python (``FuseEngine.handle``) over a
passthrough file system on a temporary directory, after INIT.

Each input is a short sequence of requests (see fuzz/fuse_tree.py) sent to a fresh engine, so
node ids and file handles a seed learned (LOOKUP, OPEN) mean the same in every run.  Contract
checked for every request: ``handle`` returns None, ``(errno <= 0, bytes-like)`` or a callable,
never raises; nothing outside the shared directory changes (a file next to it is the target of
two symbolic links inside it); once the engine is reset, every descriptor the session opened is
closed.

    python fuzz/fuzz_fuse_engine.py -max_total_time=60 fuzz/corpus/fuse_engine
"""

import errno
import os
import shutil
import sys
import tempfile

import atheris

import _common
import fuse_tree

with atheris.instrument_imports(include=["fastvfs"]):
    from fastvfs.fs._tables import HandleTable, NodeTable
    from fastvfs.fs.passthrough import PassthroughFs
    from fastvfs.fuse import abi
    from fastvfs.fuse.abi import Opcode
    from fastvfs.fuse.engine import FuseEngine
from fastvfs_testing.fuse_client import LINUX_6_1_INIT_FLAGS

INIT = abi.in_header.pack(abi.IN_HEADER_SIZE + abi.init_in.size, Opcode.INIT, 2, 0, 0, 0, 0, 0,
                          0) + abi.init_in.pack(7, abi.FUSE_KERNEL_MINOR_VERSION, 1 << 17,
                                                LINUX_6_1_INIT_FLAGS & 0xFFFFFFFF,
                                                LINUX_6_1_INIT_FLAGS >> 32)


class Pending:
    """Stands in for the ring's PendingReply when the engine answers later."""

    def complete(self, error, payload=b""):
        assert error <= 0, error


class Env:
    def __init__(self):
        self.outer = tempfile.mkdtemp(prefix="fastvfs-fuzz-")
        self.runs = 0
        self.build()

    def build(self):
        shutil.rmtree(os.path.join(self.outer, "share"), ignore_errors=True)
        for name in os.listdir(self.outer):
            os.unlink(os.path.join(self.outer, name))
        self.root = fuse_tree.make_tree(self.outer)
        self.outside = self.snapshot_outside()
        self.listing = self.snapshot_share()

    def snapshot_outside(self):
        st = os.lstat(os.path.join(self.outer, "outside"))
        return sorted(os.listdir(self.outer)), st.st_mode, st.st_size, st.st_mtime_ns, \
            st.st_uid, st.st_nlink

    def snapshot_share(self):
        return sorted(os.listdir(self.root)), sorted(os.listdir(os.path.join(self.root, "sub")))

    def check(self):
        assert self.snapshot_outside() == self.outside, "something outside the share changed"
        self.runs += 1
        # A fuzzed CREATE/MKDIR/UNLINK changed the tree: start the next input from a clean one.
        if self.runs % 512 == 0 or self.snapshot_share() != self.listing:
            self.build()


ENV = Env()


def check_result(result, out_size):
    if result is None or callable(result):
        if callable(result):
            result(Pending())
        return
    assert isinstance(result, tuple) and len(result) == 2, result
    error, payload = result
    assert isinstance(error, int) and error <= 0, result
    assert error == 0 or -error in errno.errorcode, result
    assert isinstance(payload, (bytes, bytearray, memoryview)), type(payload)


def test_one_input(data):
    fds_before = len(os.listdir("/proc/self/fd"))
    fs = PassthroughFs(ENV.root, HandleTable(256), inodes=NodeTable(256))
    engine = FuseEngine(fs, "never", xattr=True)
    try:
        assert engine.handle(INIT, 4096)[0] == 0
        for request, out_size in fuse_tree.unframe(data):
            check_result(engine.handle(request, out_size), out_size)
    finally:
        engine.reset()
        _common.drop_fs(fs)
    ENV.check()
    assert len(os.listdir("/proc/self/fd")) == fds_before, "the session's descriptors outlived it"


def main():
    _common.fuzz(test_one_input)


if __name__ == "__main__":
    main()
