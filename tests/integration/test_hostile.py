"""Malformed vhost-user messages, descriptor chains and FUSE requests sent to the fastvfs daemon
through the frontend driver: each gets an error, and the next valid request is served."""

import fcntl
import os
import select
import struct

import pytest

from fastvfs.fuse import abi
from fastvfs.fuse.abi import Opcode
from fastvfs_testing.virtq import VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE
from fastvfs.vhost_user import protocol
from fastvfs.vhost_user.protocol import Request

from .conftest import BACKENDS, _launcher

ROOT = abi.FUSE_ROOT_ID
NEED_REPLY = protocol.VHOST_USER_VERSION | protocol.VHOST_USER_NEED_REPLY_MASK


@pytest.fixture
def fastvfs(tmp_path):
    yield from _launcher("fastvfs", tmp_path)


def ack(frontend, request, payload=b"", fds=(), flags=NEED_REPLY):
    """Send with NEED_REPLY and return the backend's u64 status (0 = success)."""
    frontend.send(request, payload, fds, flags)
    reply = frontend.recv_reply()
    assert reply.request == request
    return protocol.u64.unpack(reply.payload)[0]


def still_serving(frontend, client):
    assert frontend.get_u64(Request.GET_FEATURES) == frontend.features
    assert client.getattr(ROOT).attr.mode & 0o170000 == 0o040000


def memfd(size, sealed=True):
    """A memfd of ``size`` bytes, sealed against resizing as QEMU seals guest RAM unless not
    ``sealed``."""
    fd = os.memfd_create("hostile", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if sealed:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    return fd


def eventfd():
    return os.eventfd(0, os.EFD_CLOEXEC)


BAD_MESSAGES = {
    "unknown request": lambda f: (99, b"", ()),
    "short SET_FEATURES": lambda f: (Request.SET_FEATURES, b"\x01", ()),
    "features never offered": lambda f: (Request.SET_FEATURES, protocol.u64.pack(1 << 63), ()),
    "SET_MEM_TABLE without fds": lambda f: (
        Request.SET_MEM_TABLE, protocol.memory_header.pack(1, 0) +
        protocol.memory_region.pack(0, 1 << 20, 0x1000000, 0), ()),
    "SET_MEM_TABLE count disagrees with size": lambda f: (
        Request.SET_MEM_TABLE, protocol.memory_header.pack(3, 0) +
        protocol.memory_region.pack(0, 1 << 20, 0x1000000, 0), (memfd(1 << 20),)),
    "SET_MEM_TABLE region larger than its file": lambda f: (
        Request.SET_MEM_TABLE, protocol.memory_header.pack(1, 0) +
        protocol.memory_region.pack(0, 1 << 30, 0x1000000, 0), (memfd(1 << 20),)),
    "SET_MEM_TABLE memfd not sealed against shrinking": lambda f: (
        Request.SET_MEM_TABLE, protocol.memory_header.pack(1, 0) +
        protocol.memory_region.pack(0, 1 << 20, 0x1000000, 0), (memfd(1 << 20, sealed=False),)),
    "SET_MEM_TABLE wrapping region": lambda f: (
        Request.SET_MEM_TABLE, protocol.memory_header.pack(1, 0) +
        protocol.memory_region.pack(2 ** 64 - 4096, 8192, 0x1000000, 0), (memfd(8192),)),
    "SET_MEM_TABLE overlapping regions": lambda f: (
        Request.SET_MEM_TABLE, protocol.memory_header.pack(2, 0) +
        protocol.memory_region.pack(0, 1 << 20, 0x1000000, 0) +
        protocol.memory_region.pack(4096, 1 << 20, 0x9000000, 0), (memfd(1 << 20), memfd(1 << 20))),
    "SET_MEM_TABLE 9 regions": lambda f: (
        Request.SET_MEM_TABLE, protocol.memory_header.pack(9, 0) +
        protocol.memory_region.pack(0, 1 << 20, 0x1000000, 0) * 9, ()),
    "ring index out of range": lambda f: (Request.SET_VRING_NUM, protocol.vring_state.pack(200, 64), ()),
    "queue size not a power of two": lambda f: (Request.SET_VRING_NUM, protocol.vring_state.pack(1, 100), ()),
    "kick fd that is not an eventfd": lambda f: (
        Request.SET_VRING_KICK, protocol.u64.pack(1), (memfd(4096),)),
    "kick without fd": lambda f: (Request.SET_VRING_KICK, protocol.u64.pack(1), ()),
    "dirty log": lambda f: (Request.SET_LOG_BASE, bytes(16), ()),
    "SET_VRING_ENABLE 7": lambda f: (Request.SET_VRING_ENABLE, protocol.vring_state.pack(1, 7), ()),
    "bad version flags": lambda f: (Request.SET_OWNER, b"", ()),
    "REM_MEM_REG of no region": lambda f: (
        Request.REM_MEM_REG, bytes(8) + protocol.memory_region.pack(1 << 40, 4096, 0x5000, 0), ()),
}


def send_bad_message(frontend, case):
    """Send BAD_MESSAGES[case] with NEED_REPLY; returns the backend's u64 status."""
    request, payload, fds = BAD_MESSAGES[case](frontend)
    flags = NEED_REPLY if case != "bad version flags" else (2 | protocol.VHOST_USER_NEED_REPLY_MASK)
    try:
        return ack(frontend, request, payload, fds, flags)
    finally:
        for fd in fds:
            os.close(fd)


@pytest.mark.parametrize("case", sorted(BAD_MESSAGES))
def test_bad_messages_are_refused_and_service_continues(fastvfs, case):
    frontend, client, _ = fastvfs()
    assert send_bad_message(frontend, case) != 0
    still_serving(frontend, client)
    assert fastvfs.process.poll() is None


def test_get_requests_always_get_a_reply(fastvfs):
    frontend, client, _ = fastvfs()
    frontend.send(Request.GET_VRING_BASE, b"\x00")  # too short
    reply = frontend.recv_reply()
    assert reply.request == Request.GET_VRING_BASE and reply.payload == b""
    frontend.send(Request.GET_CONFIG, bytes(12))
    assert frontend.recv_reply().payload == b""
    still_serving(frontend, client)


def test_ring_outside_memory_is_refused(fastvfs):
    frontend, client, _ = fastvfs()
    frontend.stop_queue(1)
    bad = protocol.vring_addr.pack(1, 0, 1 << 50, 1 << 50, 1 << 50, 0)
    assert ack(frontend, Request.SET_VRING_ADDR, bad) == 0  # stored; checked when it starts
    kick = eventfd()
    assert ack(frontend, Request.SET_VRING_KICK, protocol.u64.pack(1), (kick,)) == 0
    os.close(kick)
    # The ring starts at SET_VRING_ENABLE: that is where its addresses are translated.
    assert ack(frontend, Request.SET_VRING_ENABLE, protocol.vring_state.pack(1, 1)) != 0
    assert frontend.get_u64(Request.GET_FEATURES) == frontend.features


def test_oversized_message_closes_only_this_connection_cleanly(fastvfs):
    frontend, client, _ = fastvfs()
    frontend.send_raw(protocol.header.pack(Request.SET_OWNER, 1, 1 << 30))
    assert frontend.wait_closed(5)
    assert fastvfs.process.wait(5) == 0


def _raw_chain(queue, descs):
    """Write ``descs`` [(addr, len, flags, index of next or None)] into fresh table slots."""
    slots = queue.alloc_desc(len(descs))
    for slot, (addr, length, flags, nxt) in zip(slots, descs):
        queue.write_desc(slot, addr, length, flags, 0 if nxt is None else slots[nxt])
    return slots[0]


BAD_CHAIN_SHAPES = ["outside_memory", "loop", "next_out_of_range", "readable_after_writable",
                    "nested_indirect", "huge_length", "short_header", "short_header_with_unique",
                    "len_beyond_buffers", "longer_than_the_limit"]
# The shapes whose reply area is valid: an error header lands there.
BAD_CHAIN_SHAPES_WITH_REPLY = ("short_header", "short_header_with_unique", "len_beyond_buffers",
                               "longer_than_the_limit")


def publish_bad_chain(frontend, shape):
    """Publish a STATFS chain of the given malformed shape on queue 1; returns (head, address
    of its reply area)."""
    queue, mem = frontend.queues[1], frontend.memory
    header = mem.alloc(64)
    mem.write(header, abi.in_header.pack(abi.IN_HEADER_SIZE, Opcode.STATFS, 1000, ROOT,
                                         0, 0, 0, 0, 0))
    reply = mem.alloc(128)
    N, W, I = VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_DESC_F_INDIRECT
    if shape == "outside_memory":
        head = _raw_chain(queue, [(1 << 50, 40, N, 1), (reply, 96, W, None)])
    elif shape == "loop":
        head = _raw_chain(queue, [(header, 40, N, 1), (reply, 96, W | N, 0)])
    elif shape == "next_out_of_range":
        (head,) = queue.alloc_desc(1)
        queue.write_desc(head, header, 40, N, queue.size + 7)
    elif shape == "readable_after_writable":
        head = _raw_chain(queue, [(reply, 96, W | N, 1), (header, 40, 0, None)])
    elif shape == "nested_indirect":
        inner, outer = mem.alloc(16, 16), mem.alloc(16, 16)
        queue.write_desc(0, header, 40, 0, table=inner)
        queue.write_desc(0, inner, 16, I, table=outer)
        (head,) = queue.alloc_desc(1)
        queue.write_desc(head, outer, 16, I)
    elif shape == "huge_length":
        head = _raw_chain(queue, [(header, 0xFFFFFFF0, N, 1), (reply, 96, W, None)])
    elif shape == "short_header":
        head = _raw_chain(queue, [(header, 12, N, 1), (reply, 96, W, None)])
    elif shape == "short_header_with_unique":
        head = _raw_chain(queue, [(header, 24, N, 1), (reply, 96, W, None)])
    elif shape == "longer_than_the_limit":
        # One indirect table of one descriptor more than a chain may have (the queue size or
        # 512, whichever is larger): header, reply, empty buffers.
        count = max(queue.size, 512) + 1
        table = mem.alloc(16 * count, 16)
        queue.write_desc(0, header, 40, N, 1, table=table)
        queue.write_desc(1, reply, 96, W | N, 2, table=table)
        for i in range(2, count):
            queue.write_desc(i, reply, 0, W | (N if i < count - 1 else 0), i + 1, table=table)
        (head,) = queue.alloc_desc(1)
        queue.write_desc(head, table, 16 * count, I)
    elif shape == "len_beyond_buffers":
        mem.write(header, abi.in_header.pack(1 << 20, Opcode.STATFS, 1000, ROOT, 0, 0, 0, 0, 0))
        head = _raw_chain(queue, [(header, 40, N, 1), (reply, 96, W, None)])
    queue.publish_raw([head])
    return head, reply


def chain_returned(queue, head, timeout=5.0):
    """Whether the backend puts ``head`` in the used ring within ``timeout`` seconds."""
    for _ in range(int(timeout / 0.05)):
        if any(h == head for h, _ in queue.get_used()):
            return True
        queue.wait_call(0.05)
    return False


@pytest.mark.parametrize("shape", BAD_CHAIN_SHAPES)
def test_bad_chains_get_errors_and_service_continues(fastvfs, shape):
    frontend, client, _ = fastvfs()
    head, reply = publish_bad_chain(frontend, shape)
    if not chain_returned(frontend.queues[1], head):
        pytest.fail("the malformed chain was never returned")
    if shape in BAD_CHAIN_SHAPES_WITH_REPLY:
        # An error header lands there, with the request's unique whenever the chain held it.
        length, error, unique = abi.out_header.unpack(frontend.memory.read(reply, 16))
        assert (length, error, unique) == (16, -22, 0 if shape == "short_header" else 1000)
    still_serving(frontend, client)


BAD_FUSE_REQUESTS = {
    "short body": lambda: (Opcode.SETATTR, b"\x01\x02"),
    "name without NUL": lambda: (Opcode.LOOKUP, b"abc"),
    "name with slash": lambda: (Opcode.MKDIR, abi.mkdir_in.pack(0o755, 0) + b"../x\0"),
    "dot-dot creation": lambda: (Opcode.MKDIR, abi.mkdir_in.pack(0o755, 0) + b"..\0"),
    "name too long": lambda: (Opcode.CREATE, abi.create_in.pack(0, 0o644, 0, 0) + b"x" * 300 + b"\0"),
    "unknown node": lambda: (Opcode.GETATTR, bytes(16)),
    "unknown handle": lambda: (Opcode.READ, abi.read_in.pack(12345, 0, 10, 0, 0, 0, 0)),
    "unknown opcode": lambda: (999, b""),
}


def send_bad_fuse_request(client, name):
    """Send BAD_FUSE_REQUESTS[name] on the root (or on a node never given out) and return the
    :class:`Reply`."""
    opcode, payload = BAD_FUSE_REQUESTS[name]()
    nodeid = 987654 if name == "unknown node" else ROOT
    return client.wait(client.submit(opcode, nodeid, payload, reply_len=256, data_len=64))


@pytest.mark.parametrize("name", list(BAD_FUSE_REQUESTS))
def test_bad_fuse_requests_get_errors(fastvfs, name):
    frontend, client, shared = fastvfs()
    reply = send_bad_fuse_request(client, name)
    assert reply.error > 0
    assert os.listdir(shared) == []
    assert not os.path.exists(os.path.join(os.path.dirname(shared), "x"))
    still_serving(frontend, client)


def test_bad_avail_entries_are_signalled_and_serving_continues(fastvfs):
    frontend, client, _ = fastvfs()
    queue = frontend.queues[1]
    err = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    try:
        frontend.set_vring_fd(Request.SET_VRING_ERR, 1, err)
        # An avail index 5000 ahead of a 128-entry ring: the device error state (virtio 1.2
        # section 2.1.2), reported on the error eventfd; nothing is taken meanwhile.
        struct.pack_into("<H", queue._avail_map, queue._avail_off + 2,
                         (queue.published_idx + 5000) & 0xFFFF)
        queue.kick()
        assert select.select([err], [], [], 5)[0], "the error eventfd was never signalled"
        os.eventfd_read(err)
        # The index back in reach: the same ring serves again, without a restart.
        struct.pack_into("<H", queue._avail_map, queue._avail_off + 2, queue.published_idx)
        still_serving(frontend, client)
        # An entry naming no descriptor is skipped, signalled, and the request behind it served.
        queue.publish_raw([queue.size + 3])
        assert client.getattr(ROOT).attr.mode & 0o170000 == 0o040000
        assert select.select([err], [], [], 5)[0]
        assert os.eventfd_read(err) == 1
        still_serving(frontend, client)
    finally:
        os.close(err)
    assert fastvfs.process.poll() is None
