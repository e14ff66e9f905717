"""The FUSE client's request layout and its strict reply checks, against a scripted device."""

import contextlib
import errno
import os
import stat
import threading
import time

import pytest

from fastvfs.fuse import abi
from fastvfs.fuse.abi import Opcode
from fastvfs_testing.fuse_client import (
    FuseClient, FuseProtocolError, parse_direntplus, parse_dirents)
from fastvfs_testing.guestmem import GuestMemory
from fastvfs_testing.virtq import VRING_DESC_F_WRITE, DriverVirtqueue
from tests.unit.fake_device import FakeDevice

ATTR = abi.attr.pack(7, 100, 1, 10, 20, 30, 1, 2, 3, stat.S_IFREG | 0o644, 1, 0, 0, 0, 4096, 0)


class FakeFrontend:
    """What FuseClient needs of a frontend: started queues (hiprio + two request queues)."""

    def __init__(self, indirect_desc=False):
        self.memory = GuestMemory([(0, 4 << 20)])
        self.queues = [DriverVirtqueue(self.memory, i, 64, indirect_desc=indirect_desc)
                       for i in range(3)]


@pytest.fixture
def frontend():
    fe = FakeFrontend()
    yield fe
    for queue in fe.queues:
        queue.close()
    fe.memory.close()


def reply(request, payload=b"", error=0, length=None, unique=None):
    """A fuse_out_header + payload answering ``request``."""
    _, _, req_unique, *_ = abi.in_header.unpack_from(request)
    size = abi.OUT_HEADER_SIZE + len(payload) if length is None else length
    return abi.out_header.pack(size, error, req_unique if unique is None else unique) + payload


@contextlib.contextmanager
def answering(frontend, respond, queue=1):
    """A device thread answering ``queue`` with ``respond(request)`` and signalling call_fd,
    for the blocking parts of the client."""
    device = FakeDevice(frontend.queues[queue])
    stop = threading.Event()

    def run():
        while not stop.is_set():
            if device.process(lambda request, _: respond(request)):
                os.eventfd_write(frontend.queues[queue].call_fd, 1)
            time.sleep(0.001)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield device
    finally:
        stop.set()
        thread.join()


def serve(frontend, respond, queue=1):
    """Answer what is pending on ``queue``; returns the chains seen, as lists of
    (length, is_writable)."""
    device = FakeDevice(frontend.queues[queue])
    device.last_avail = device.used_idx = frontend.queues[queue].last_used_idx
    seen = []

    def record(request, entries):
        seen.append([(length, bool(flags & VRING_DESC_F_WRITE)) for _, length, flags in entries])
        return respond(request)
    device.process(record)
    return seen


def test_request_layout_like_linux(frontend):
    client = FuseClient(frontend, data_desc_size=4096)
    with client.as_user(1000, 100, 42):
        ticket = client.submit(Opcode.WRITE, 5, abi.write_in.pack(9, 0, 5000, 0, 0, 0, 0),
                               data=b"w" * 5000, reply_len=abi.write_out.size)
    requests = []

    def respond(request):
        requests.append(request)
        return reply(request, abi.write_out.pack(5000, 0))
    chains = serve(frontend, respond)
    # Header, in-args, then the data in page-sized pieces; out header, then the out-args.
    assert chains == [[(40, False), (40, False), (4096, False), (904, False),
                       (16, True), (8, True)]]
    length, opcode, unique, nodeid, *creds, _, _ = abi.in_header.unpack_from(requests[0])
    assert (length, opcode, nodeid) == (40 + 40 + 5000, Opcode.WRITE, 5)
    assert creds == [1000, 100, 42]
    assert unique == ticket and unique % 2 == 0
    assert client.wait(ticket).payload == abi.write_out.pack(5000, 0)


def test_read_data_lands_in_its_own_descriptors(frontend):
    client = FuseClient(frontend)
    ticket = client.submit(Opcode.READ, 5, abi.read_in.pack(9, 0, 10000, 0, 0, 0, 0),
                           data_len=10000)
    chains = serve(frontend, lambda request: reply(request, b"r" * 6000))
    assert chains == [[(40, False), (40, False), (16, True), (10000, True)]]
    result = client.wait(ticket)
    assert (result.payload, result.data) == (b"", b"r" * 6000)


def test_forget_goes_to_hiprio_as_one_buffer(frontend):
    client = FuseClient(frontend)
    ticket = client.submit(Opcode.FORGET, 5, abi.forget_in.pack(3), noreply=True)
    chains = serve(frontend, lambda request: b"", queue=0)
    assert chains == [[(40 + 8, False)]]
    assert client.wait(ticket).error == 0


def test_request_queues_in_turn(frontend):
    client = FuseClient(frontend)
    for _ in range(4):
        client.submit(Opcode.STATFS, 1, reply_len=abi.kstatfs.size)
    assert [q.in_flight for q in frontend.queues] == [0, 2, 2]


def test_indirect_like_linux():
    frontend = FakeFrontend(indirect_desc=True)
    client = FuseClient(frontend)
    client.submit(Opcode.GETATTR, 1, abi.getattr_in.pack(0, 0, 0), reply_len=abi.ATTR_OUT_SIZE)
    client.submit(Opcode.FORGET, 5, abi.forget_in.pack(1), noreply=True)
    assert frontend.queues[1].num_free == 63  # one slot: the chain sits in an indirect table
    assert frontend.queues[0].num_free == 63  # single descriptor, never indirect


def test_error_reply_raises_oserror(frontend):
    client = FuseClient(frontend)
    ticket = client.submit(Opcode.LOOKUP, 1, b"x\0", reply_len=abi.ENTRY_OUT_SIZE)
    serve(frontend, lambda request: reply(request, error=-errno.ENOENT))
    result = client.wait(ticket)
    assert result.error == errno.ENOENT
    with pytest.raises(FileNotFoundError):
        result.check()


@pytest.mark.parametrize("bad_reply, message", [
    (lambda r: reply(r, b"x" * 8, length=16), "fuse_out_header.len"),
    (lambda r: reply(r, b"x" * 8, unique=12345), "unique"),
    (lambda r: reply(r, error=5), "invalid error"),
    (lambda r: reply(r, b"x" * 8, error=-errno.EIO), "error reply carries"),
    (lambda r: b"\0" * 8, "no fuse_out_header"),
])
def test_malformed_replies(frontend, bad_reply, message):
    client = FuseClient(frontend)
    ticket = client.submit(Opcode.STATFS, 1, reply_len=abi.kstatfs.size)
    serve(frontend, bad_reply)
    with pytest.raises(FuseProtocolError, match=message):
        client.wait(ticket)


def test_short_fixed_reply(frontend):
    client = FuseClient(frontend)
    with answering(frontend, lambda request: reply(request, abi.attr_out_head.pack(1, 0, 0))):
        with pytest.raises(FuseProtocolError, match="GETATTR reply has 16 bytes"):
            client.getattr(1)


def test_sync_helpers_parse_replies(frontend):
    client = FuseClient(frontend)
    entry = abi.entry_out_head.pack(42, 3, 1, 2, 0, 0) + ATTR
    with answering(frontend, lambda request: reply(request, entry)):
        result = client.lookup(1, "name")
    assert result[:4] == (42, 3, 1, 2)  # nodeid, generation, entry_valid, attr_valid
    assert (result.attr.ino, result.attr.mtime_ns) == (7, 20_000_000_002)


def test_noreply_must_stay_unwritten(frontend):
    client = FuseClient(frontend)
    ticket = client.submit(Opcode.FORGET, 5, abi.forget_in.pack(1), noreply=True)
    device = FakeDevice(frontend.queues[0])
    device.push(device.pop(), 0)
    assert client.wait(ticket).error == 0


def test_timeout(frontend):
    client = FuseClient(frontend)
    ticket = client.submit(Opcode.STATFS, 1, reply_len=abi.kstatfs.size)
    with pytest.raises(TimeoutError):
        client.wait(ticket, timeout=0.05)


def test_more_requests_than_ring_slots(frontend):
    """submit() reaps completions when the ring is full instead of failing."""
    client = FuseClient(frontend)
    with answering(frontend, lambda request: reply(request, bytes(abi.kstatfs.size))):
        # 4 descriptors per STATFS chain: 16 fit in a 64-entry ring.
        tickets = [client.submit(Opcode.STATFS, 1, reply_len=abi.kstatfs.size, queue=1)
                   for _ in range(40)]
        replies = client.wait_all()
    assert sorted(replies) == sorted(tickets)
    assert frontend.queues[1].num_free == 64


def test_parse_dirents():
    def dirent(ino, off, name, kind):
        raw = abi.dirent_head.pack(ino, off, len(name), kind) + name
        return raw + bytes(abi.rec_align(len(raw)) - len(raw))
    buf = dirent(10, 1, b"a", 8) + dirent(11, 2, b"longer_name", 4)
    assert [(e.ino, e.off, e.type, e.name) for e in parse_dirents(buf)] == [
        (10, 1, 8, b"a"), (11, 2, 4, b"longer_name")]
    with pytest.raises(FuseProtocolError):
        parse_dirents(buf[:-9])
    entry = abi.entry_out_head.pack(99, 0, 0, 0, 0, 0) + ATTR
    plus = entry + dirent(7, 3, b"f", 8)
    (parsed,) = parse_direntplus(plus)
    assert (parsed.entry.nodeid, parsed.entry.attr.size, parsed.name) == (99, 100, b"f")
