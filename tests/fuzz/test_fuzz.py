"""Property-based fuzzing (hypothesis) of every parser that sees guest or frontend input:

- the vhost-user framing (``Connection.recv``) and the device's message dispatch,
- the hot path's descriptor-chain walker (a real ``Virtqueue`` thread over guest memory),
- the FUSE decoder and dispatcher over a real temporary directory.

Each run is bounded (``FASTVFS_FUZZ_EXAMPLES`` examples per target, default 1500) so CI can
afford it; a crash in the C walker would take the whole test process down, which pytest reports
as a failure.  Inputs that once misbehaved are pinned with ``@example`` as regression cases.
"""

import errno
import fcntl
import os
import socket
import struct
import tempfile
import threading
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fastvfs.fs._tables import HandleTable, NodeTable
from fastvfs.ring import _ring
from tests.unit.test_ring import ring_options
from fastvfs.fs.passthrough import PassthroughFs
from fastvfs.fuse import abi
from fastvfs.fuse.abi import Opcode
from fastvfs.fuse.engine import FuseEngine
from fastvfs_testing.fuse_client import LINUX_6_1_INIT_FLAGS
from fastvfs_testing.guestmem import GuestMemory
from fastvfs_testing.virtq import (VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
                                   DriverVirtqueue)
from fastvfs.vhost_user import protocol
from fastvfs.vhost_user.connection import Connection, Message, ProtocolError
from fastvfs.vhost_user.device import VhostUserFsDevice
from fastvfs.vhost_user.protocol import Request

EXAMPLES = int(os.environ.get("FASTVFS_FUZZ_EXAMPLES", "1500"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                suppress_health_check=list(HealthCheck))


# -- vhost-user ----------------------------------------------------------------------------------

@FUZZ
@given(st.binary(max_size=600))
@example(protocol.header.pack(1, 1, 1 << 31))
@example(protocol.header.pack(5, 1, 40) + b"\x01" * 10)
def test_connection_framing_never_raises_anything_else(data):
    a, b = socket.socketpair()
    try:
        a.sendall(data)
        a.shutdown(socket.SHUT_WR)
        conn = Connection(b)
        for _ in range(8):
            try:
                msg = conn.recv()
            except ProtocolError:
                break
            if msg is None:
                break
            assert len(msg.payload) <= protocol.MAX_PAYLOAD
            msg.close_fds()
    finally:
        a.close()
        b.close()


class RecordingConnection:
    def __init__(self):
        self.sent = []

    def send(self, request, payload=b"", fds=()):
        self.sent.append((request, payload))


_GET = {Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES, Request.GET_QUEUE_NUM,
        Request.GET_VRING_BASE, Request.GET_CONFIG, Request.GET_MAX_MEM_SLOTS,
        Request.GET_STATUS, Request.GET_SHMEM_CONFIG, Request.GET_INFLIGHT_FD}

message = st.tuples(
    st.one_of(st.sampled_from([int(r) for r in Request]), st.integers(0, 100)),
    st.sampled_from([1, 1 | 8, 0, 2, 1 | 4]),
    st.one_of(st.binary(max_size=80),
              st.builds(lambda n, rest: struct.pack("=II", n, 0) + rest,
                        st.integers(0, 300), st.binary(max_size=64)),
              st.builds(lambda v: struct.pack("=Q", v), st.integers(0, (1 << 64) - 1)),
              st.builds(lambda i, n: struct.pack("=II", i, n), st.integers(0, 300),
                        st.integers(0, 70000))),
    st.sampled_from(["none", "eventfd", "memfd", "pipe", "two"]))


def _fds(kind):
    if kind == "eventfd":
        return [os.eventfd(0)]
    if kind == "memfd":
        fd = os.memfd_create("fuzz", os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, 1 << 16)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
        return [fd]
    if kind == "pipe":
        r, w = os.pipe()
        os.close(w)
        return [r]
    if kind == "two":
        return [os.eventfd(0), os.eventfd(0)]
    return []


@FUZZ
@given(st.lists(message, min_size=1, max_size=12))
def test_device_dispatch_survives_any_message_sequence(messages):
    device = VhostUserFsDevice(lambda req, size: (0, b""), HandleTable(16), num_queues=3)
    conn = RecordingConnection()
    try:
        for request, flags, payload, fds in messages:
            before = len(conn.sent)
            device._dispatch(conn, Message(request, flags, payload, _fds(fds)))
            if request in _GET:
                assert len(conn.sent) == before + 1   # a GET always gets its reply
    finally:
        device.reset()


# -- descriptor chains --------------------------------------------------------------------------

class Ring:
    """A real Virtqueue worker over driver-side memory, as in tests/unit/test_ring.py."""

    def __init__(self, size=16, engine="sync", tmp=None):
        self.mem = GuestMemory()
        self.table = _ring.MemoryTable()
        for r in self.mem.regions:
            self.table.add_region(r.guest_phys_addr, r.memory_size, r.userspace_addr,
                                  r.mmap_offset, r.fd)
        self.dq = DriverVirtqueue(self.mem, 1, size, event_idx=True, indirect_desc=True)
        self.stop_fd = os.eventfd(0, os.EFD_CLOEXEC)
        u = self.mem.userspace_addr
        handles = HandleTable(16)
        # A real open file, so READ and WRITE reach the I/O path (synchronous or io_uring).
        self.fh = handles.add(os.open(os.path.join(tmp, "data"), os.O_RDWR | os.O_CREAT, 0o600))
        self.vq = _ring.Virtqueue(1, self.table, handles, size,
                                  u(self.dq.desc_addr), u(self.dq.avail_addr),
                                  u(self.dq.used_addr), 0, self.dq.kick_fd, self.dq.call_fd,
                                  self.stop_fd, True, True,
                                  ring_options(io_uring=engine != "sync",
                                               uring_writes=engine.startswith("uring-rw"),
                                               fixed_buffers=engine.endswith("fixed")),
                                  _ring.RingLock())
        self.vq.set_fast_io(True)
        self.thread = threading.Thread(target=self.vq.run, args=(self._handler,), daemon=True)
        self.thread.start()
        self.handled = 0

    def _handler(self, req, out_size):
        self.handled += 1
        return (0, b"ok"[:out_size])

    def close(self):
        self.vq.stop()
        self.thread.join(5)
        assert not self.thread.is_alive()
        os.close(self.stop_fd)
        self.dq.close()
        self.mem.close()


@pytest.fixture(scope="module", params=["sync", "uring-rw", "uring-rw-fixed"])
def ring(request, tmp_path_factory):
    r = Ring(engine=request.param, tmp=str(tmp_path_factory.mktemp("ring")))
    yield r
    r.close()


ADDRS = st.sampled_from(["buf", "buf+13", "hdr", "table", "outside", "huge", "zero", "end"])
desc = st.tuples(ADDRS, st.sampled_from([0, 1, 16, 40, 64, 4096, 1 << 20, 0xFFFFFFFF]),
                 st.integers(0, 7), st.integers(0, 20))


@FUZZ
@given(st.lists(desc, min_size=1, max_size=6), st.lists(desc, max_size=4),
       st.sampled_from([Opcode.GETATTR, Opcode.READ, Opcode.WRITE, Opcode.LOOKUP,
                        Opcode.FSYNC, Opcode.FALLOCATE, 999]),
       st.integers(0, 1 << 21))
def test_chain_walker_returns_every_chain(ring, chain, indirect_entries, opcode, hlen):
    mem, q = ring.mem, ring.dq
    hdr = mem.alloc(128)
    mem.write(hdr, abi.in_header.pack(hlen, opcode, 77, 1, 0, 0, 0, 0, 0) +
              abi.read_in.pack(ring.fh, 0, 4096, 0, 0, 0, 0) + bytes(40))
    buf = mem.alloc(8192)
    table = mem.alloc(16 * 4, 16)
    region_end = mem.regions[0].guest_phys_addr + mem.regions[0].memory_size
    where = {"buf": buf, "buf+13": buf + 13, "hdr": hdr, "table": table, "outside": 1 << 40,
             "huge": (1 << 64) - 8, "zero": 0, "end": region_end - 8}
    for i, (a, length, flags, nxt) in enumerate(indirect_entries):
        q.write_desc(i, where[a], length, flags & ~VRING_DESC_F_INDIRECT, nxt, table=table)
    slots = q.alloc_desc(len(chain))
    for i, (a, length, flags, nxt) in enumerate(chain):
        addr = table if flags & VRING_DESC_F_INDIRECT else where[a]
        if flags & VRING_DESC_F_INDIRECT:
            length = 16 * max(1, len(indirect_entries))
        target = slots[nxt] if nxt < len(slots) else nxt
        q.write_desc(slots[i], addr, length, flags, target)
    q.publish_raw([slots[0]])
    deadline = time.monotonic() + 5
    while True:
        used = [h for h, _ in q.get_used()]
        if slots[0] in used:
            break
        assert time.monotonic() < deadline, "chain never returned"
        q.wait_call(0.05)
    q.free_desc(slots)
    mem.free(hdr)
    mem.free(buf)
    mem.free(table)
    assert ring.thread.is_alive()


# -- FUSE ---------------------------------------------------------------------------------------

NAMES = st.sampled_from([b"a", b"..", b".", b"a/b", b"../x", b"", b"x" * 300, b"sub", b"f",
                         b"link", b"fifo", b"\xff\xfe"])
OPS = st.sampled_from([int(o) for o in Opcode] + [0, 99, 4096])


@pytest.fixture(scope="module", params=["never", "prefer"])
def engine_env(request):
    """The engine over a small tree, with inodes held by O_PATH descriptor, then by file handle
    with a descriptor cache of two (every other node reopened by its handle)."""
    outer = tempfile.mkdtemp(prefix="fvfuzz-")
    root = os.path.join(outer, "share")
    os.mkdir(root)
    os.mkdir(os.path.join(root, "sub"))
    with open(os.path.join(root, "f"), "wb") as f:
        f.write(b"data" * 100)
    os.symlink("/etc/passwd", os.path.join(root, "link"))
    os.mkfifo(os.path.join(root, "fifo"))
    handles = {} if request.param == "never" else {"file_handles": "prefer",
                                                    "handle_fds_max": 2}
    fs = PassthroughFs(root, HandleTable(4096), inodes=NodeTable(4096), **handles)
    engine = FuseEngine(fs, "never", xattr=True, security_label=True)
    init = abi.in_header.pack(abi.IN_HEADER_SIZE + 64, Opcode.INIT, 1, 0, 0, 0, 0, 0, 0) + \
        abi.init_in.pack(7, 38, 1 << 17, LINUX_6_1_INIT_FLAGS & 0xFFFFFFFF,
                         LINUX_6_1_INIT_FLAGS >> 32)
    assert engine.handle(init, 4096)[0] == 0
    before = sorted(os.listdir(outer))
    yield engine, outer, root
    engine.reset()
    assert sorted(os.listdir(outer)) == before


@FUZZ
@given(OPS, st.sampled_from([1, 2, 3, 0, 1 << 40, (1 << 64) - 1]),
       st.one_of(st.binary(max_size=120),
                 st.builds(lambda head, name, tail: head + name + b"\0" + tail,
                           st.binary(max_size=48), NAMES, st.binary(max_size=16))),
       st.integers(0, 1 << 20), st.sampled_from([0, 1000, 65534]))
def test_fuse_engine_answers_anything(engine_env, opcode, nodeid, body, out_size, uid):
    engine, outer, root = engine_env
    request = abi.in_header.pack(abi.IN_HEADER_SIZE + len(body), opcode, 5, nodeid, uid, uid,
                                 1, 0, 0) + body
    if opcode in (Opcode.INIT, Opcode.DESTROY):
        return   # the session itself is not the subject here
    result = engine.handle(request, out_size)
    if result is not None and not callable(result):
        error, payload = result
        assert error <= 0 and isinstance(payload, (bytes, bytearray, memoryview))
        assert error == 0 or -error in errno.errorcode
    assert set(os.listdir(outer)) == {"share"}
    getattr_root = abi.in_header.pack(abi.IN_HEADER_SIZE + 16, Opcode.GETATTR, 6, 1, 0, 0, 0,
                                      0, 0) + bytes(16)
    assert engine.handle(getattr_root, 4096)[0] == 0
