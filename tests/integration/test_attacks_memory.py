"""Guest memory changes from the frontend while requests still point into it: the daemon (with
its defaults: namespace sandbox, seccomp) never touches memory it has unmapped, and ADD_MEM_REG /
REM_MEM_REG are only taken with CONFIGURE_MEM_SLOTS negotiated."""

import fcntl
import os
import time

import pytest

from fastvfs.fuse import abi
from fastvfs.fuse.abi import Opcode
from fastvfs_testing.frontend import DEFAULT_PROTOCOL_FEATURES
from fastvfs_testing.guestmem import GuestMemory
from fastvfs_testing.virtq import VRING_DESC_F_NEXT, VRING_DESC_F_WRITE
from fastvfs.vhost_user import protocol
from fastvfs.vhost_user.protocol import ProtocolFeature, Request

from .conftest import _launcher

ROOT = abi.FUSE_ROOT_ID
NEED_REPLY = protocol.VHOST_USER_VERSION | protocol.VHOST_USER_NEED_REPLY_MASK
MEM_SLOTS = DEFAULT_PROTOCOL_FEATURES | 1 << ProtocolFeature.CONFIGURE_MEM_SLOTS


@pytest.fixture
def fastvfs(tmp_path):
    yield from _launcher("fastvfs", tmp_path)


def ack(frontend, request, payload=b"", fds=()):
    frontend.send(request, payload, fds, NEED_REPLY)
    reply = frontend.recv_reply()
    assert reply.request == request
    return protocol.u64.unpack(reply.payload)[0]


def wait_used(queue, head, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(h == head for h, _ in queue.get_used()):
            return True
        queue.wait_call(0.05)
    return False


def test_region_removed_under_a_waiting_setlkw(fastvfs):
    memory = GuestMemory([(0, 64 << 20), (1 << 30, 16 << 20)])
    frontend, client, shared = fastvfs(memory=memory, ring_region=0,
                                       protocol_features=MEM_SLOTS)
    assert frontend.has_protocol_feature(ProtocolFeature.CONFIGURE_MEM_SLOTS)
    path = os.path.join(shared, "locked")
    with open(path, "w") as f:
        f.write("x")
    nodeid = client.lookup(ROOT, b"locked").nodeid
    fh = client.open(nodeid, os.O_RDWR).fh
    host = os.open(path, os.O_RDWR)
    try:
        fcntl.lockf(host, fcntl.LOCK_EX)   # a host process holds the lock the guest waits for
        # SETLKW with every buffer in region 1, the one about to go.
        queue = frontend.queues[1]
        body = abi.lk_in.pack(fh, 42, 0, 0x7FFFFFFFFFFFFFFF, fcntl.F_WRLCK, 1, 0, 0)
        request = abi.in_header.pack(abi.IN_HEADER_SIZE + len(body), Opcode.SETLKW, 4242,
                                     nodeid, 0, 0, 1, 0, 0) + body
        req_gpa = memory.alloc(len(request), region=1)
        memory.write(req_gpa, request)
        reply_gpa = memory.alloc(64, region=1)
        slots = queue.alloc_desc(2)
        queue.write_desc(slots[0], req_gpa, len(request), VRING_DESC_F_NEXT, slots[1])
        queue.write_desc(slots[1], reply_gpa, 64, VRING_DESC_F_WRITE)
        queue.publish_raw([slots[0]])
        assert not wait_used(queue, slots[0], 0.5), "SETLKW answered while the lock is held"
        region = memory.regions[1]
        assert ack(frontend, Request.REM_MEM_REG,
                   protocol.single_memory_region.pack(0) + region.packed(), [region.fd]) == 0
        # The lock is given up: the waiting SETLKW is answered into the removed region.
        os.close(host)
        host = None
        assert wait_used(queue, slots[0]), "the SETLKW was never answered"
        assert fastvfs.process.poll() is None
        assert abi.out_header.unpack(memory.read(reply_gpa, 16)) == (16, 0, 4242)
    finally:
        if host is not None:
            os.close(host)
    assert client.getattr(ROOT).attr.mode & 0o170000 == 0o040000
    assert fastvfs.process.poll() is None


@pytest.mark.parametrize("request_", [Request.ADD_MEM_REG, Request.REM_MEM_REG])
def test_mem_reg_requests_need_configure_mem_slots(fastvfs, request_):
    frontend, client, _ = fastvfs()   # CONFIGURE_MEM_SLOTS offered, not negotiated
    assert not frontend.has_protocol_feature(ProtocolFeature.CONFIGURE_MEM_SLOTS)
    fd = os.memfd_create("extra", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, 1 << 20)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
        region = (protocol.memory_region.pack(1 << 32, 1 << 20, 0x7000_0000_0000, 0)
                  if request_ == Request.ADD_MEM_REG else frontend.memory.regions[0].packed())
        assert ack(frontend, request_, protocol.single_memory_region.pack(0) + region,
                   [fd]) != 0
    finally:
        os.close(fd)
    # Nothing changed: the guest's memory is still all there.
    assert client.getattr(ROOT).attr.mode & 0o170000 == 0o040000
    assert client.statfs().bsize > 0
    assert fastvfs.process.poll() is None
