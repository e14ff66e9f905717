"""The hot path's split virtqueue, driven in-process by the driver-side virtqueue.

No vhost-user here: the test maps the driver's memfd regions into a ``MemoryTable`` and runs a
``Virtqueue`` worker thread on them, with a stub engine that records what it was handed.
"""

import errno
import os
import struct
import threading
import time

import pytest

from fastvfs.config import IoEngine, RingOptions
from fastvfs.fs._tables import HandleTable, NodeTable
from fastvfs.ring import _ring
from fastvfs.fuse import abi
from fastvfs_testing.guestmem import GuestMemory
from fastvfs_testing.virtq import (Chain, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT,
                                   VRING_DESC_F_WRITE, DriverVirtqueue)

TIMEOUT = 5.0


def ring_options(io_uring=False, uring_writes=False, **settings):
    """The ring's options (``Virtqueue``'s ``options``) with the engine as two switches."""
    engine = IoEngine.URING_RW if uring_writes else IoEngine.URING if io_uring else IoEngine.SYNC
    return RingOptions(**{"attr_timeout": 1.0, "io_engine": engine, **settings})


def request(opcode, body=b"", unique=7, nodeid=1, length=None):
    total = abi.IN_HEADER_SIZE + len(body)
    return abi.in_header.pack(total if length is None else length, opcode, unique, nodeid,
                              1000, 1000, 42, 0, 0) + body


class Harness:
    """A device-side Virtqueue served by a thread, and the driver-side queue feeding it."""

    def __init__(self, *, size=16, base=0, event_idx=True, indirect=True, regions=None,
                 reply=None, engine="sync", inodes=None, read_only=False,
                 fixed_buffers=False, open_flags=0, opendir_flags=0, engine_pool=False):
        self.size, self.event_idx, self.indirect = size, event_idx, indirect
        self.engine_pool = engine_pool  # the engine has a thread pool (see restart)
        self.open_flags = open_flags  # fuse_open_out.open_flags of OPEN served in C
        self.opendir_flags = opendir_flags  # and of OPENDIR
        self.engine = engine
        self.read_only = read_only
        self.fixed_buffers = fixed_buffers
        self.inodes = inodes  # a node id table: GETATTR and friends served in C
        self.mem = GuestMemory(regions) if regions else GuestMemory()
        self.table = _ring.MemoryTable()
        for r in self.mem.regions:
            self.table.add_region(r.guest_phys_addr, r.memory_size, r.userspace_addr,
                                  r.mmap_offset, r.fd)
        self.dq = DriverVirtqueue(self.mem, 1, size, event_idx=event_idx, indirect_desc=indirect,
                                  base=base)
        self.handles = HandleTable(64)
        self.stop_fd = os.eventfd(0, os.EFD_CLOEXEC)
        self.err_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.seen = []
        self.done = set()
        self.reply = reply or (lambda req, out_size: (0, b"R" * min(8, out_size)))
        self.lock = _ring.RingLock()
        self.start(base)

    def start(self, base):
        u = self.mem.userspace_addr
        self.vq = _ring.Virtqueue(1, self.table, self.handles, self.size, u(self.dq.desc_addr),
                                  u(self.dq.avail_addr), u(self.dq.used_addr), base,
                                  self.dq.kick_fd, self.dq.call_fd, self.stop_fd,
                                  self.event_idx, self.indirect,
                                  ring_options(io_uring=self.engine != "sync",
                                               uring_writes=self.engine == "uring-rw",
                                               read_only=self.read_only,
                                               fixed_buffers=self.fixed_buffers,
                                               open_flags=self.open_flags,
                                               opendir_flags=self.opendir_flags,
                                               engine_pool=self.engine_pool),
                                  self.lock, inodes=self.inodes, err_fd=self.err_fd)
        self.thread = threading.Thread(target=self.vq.run, args=(self._handler,), daemon=True)
        self.thread.start()

    def restart(self):
        """Stop the worker and serve the ring with a new Virtqueue, as a backend pause does."""
        old = self.vq
        old.stop()
        self.thread.join(TIMEOUT)
        os.eventfd_read(self.stop_fd)
        self.start(old.last_avail_idx)
        return old

    def _handler(self, req, out_size):
        self.seen.append((bytes(req), out_size))
        return self.reply(req, out_size)

    def roundtrip(self, readable, writable_lens, indirect=False):
        head = self.dq.add_chain(readable, writable_lens, indirect=indirect)
        self.dq.publish()
        return self.wait_for(head)

    def roundtrip_many(self, chains):
        """Publish several ``(readable, writable_lens)`` chains at once (so that none is a lone
        request) and return each one's writable contents."""
        heads = [self.dq.add_chain(readable, lens) for readable, lens in chains]
        self.dq.publish()
        return [self.wait_for(head) for head in heads]

    def wait_for(self, head):
        while head not in self.done:
            for h, _ in self.dq.get_used():
                self.done.add(h)
            if head not in self.done:
                assert self.dq.wait_call(TIMEOUT), "no completion signalled"
        self.done.discard(head)
        contents = self.dq.detach(head)
        return b"".join(contents)

    def close(self):
        self.vq.stop()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive()
        os.close(self.stop_fd)
        os.close(self.err_fd)
        self.dq.close()

    def errors_signalled(self):
        """How often the error eventfd was written since the last call."""
        try:
            return os.eventfd_read(self.err_fd)
        except BlockingIOError:
            return 0


@pytest.fixture
def harness():
    made = []

    def make(**kw):
        h = Harness(**kw)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def out_header(data):
    return abi.out_header.unpack_from(data)


def test_request_reaches_engine_and_reply_comes_back(harness):
    h = harness()
    req = request(abi.Opcode.GETATTR, bytes(16))
    data = h.roundtrip([req], [16, 200])
    length, error, unique = out_header(data)
    assert (length, error, unique) == (24, 0, 7)
    assert data[16:24] == b"R" * 8
    assert h.seen == [(req, 200)]


def test_request_split_over_many_descriptors(harness):
    h = harness(size=64)
    req = request(abi.Opcode.LOOKUP, b"some-name\0")
    pieces = [req[i:i + 3] for i in range(0, len(req), 3)]
    data = h.roundtrip(pieces, [5, 5, 6, 64])
    assert out_header(data) == (24, 0, 7)
    assert h.seen[0][0] == req


@pytest.mark.parametrize("event_idx", [True, False])
def test_many_requests_in_flight_and_index_wraparound(harness, event_idx):
    h = harness(size=16, base=0xFFF0, event_idx=event_idx)
    for round_ in range(6):
        heads = [h.dq.add_chain([request(abi.Opcode.GETATTR, bytes(16), unique=round_ * 10 + i)],
                                [64]) for i in range(8)]
        h.dq.publish()
        uniques = {out_header(h.wait_for(head))[2] for head in heads}
        assert uniques == {round_ * 10 + i for i in range(8)}
    # 48 requests from 0xFFF0 crossed 0xFFFF -> 0.
    assert h.vq.last_avail_idx == (0xFFF0 + 48) & 0xFFFF
    assert h.vq.used_idx == h.vq.last_avail_idx


def test_event_idx_suppresses_kicks_while_busy_and_rearms(harness):
    h = harness(event_idx=True)
    h.roundtrip([request(abi.Opcode.GETATTR, bytes(16))], [64])
    # The reply is published before the worker looks at the ring again: until it does, a
    # buffer published without a kick is still found by that look, so the driver may skip
    # the kick (2.7.10).  Once the ring is drained, the device asks to be kicked for the next
    # entry (avail_event = idx) before it sleeps.
    deadline = time.monotonic() + 5
    while h.dq.avail_event != h.dq.published_idx:
        assert time.monotonic() < deadline, "the device never asked for the next kick"
        time.sleep(0.001)
    head = h.dq.add_chain([request(abi.Opcode.GETATTR, bytes(16))], [64])
    assert head is not None
    assert h.dq.publish() is True
    assert out_header(h.wait_for(head))[0] == 24


def test_indirect_descriptors(harness):
    h = harness(indirect=True)
    req = request(abi.Opcode.GETATTR, bytes(16))
    data = h.roundtrip([req[:20], req[20:]], [16, 100], indirect=True)
    assert out_header(data) == (24, 0, 7)


def test_indirect_refused_when_not_negotiated(harness):
    h = harness(indirect=False)
    # The driver may still build one by hand: the device must refuse it, not follow it.
    table = h.mem.alloc(32, 16)
    req = request(abi.Opcode.GETATTR, bytes(16))
    buf = h.mem.alloc(len(req))
    h.mem.write(buf, req)
    out = h.mem.alloc(64)
    h.dq.write_desc(0, buf, len(req), VRING_DESC_F_NEXT, 1, table=table)
    h.dq.write_desc(1, out, 64, VRING_DESC_F_WRITE, table=table)
    (slot,) = h.dq.alloc_desc(1)
    h.dq.write_desc(slot, table, 32, VRING_DESC_F_INDIRECT)
    h.dq.publish_raw([slot])
    _wait_raw(h, slot)
    assert h.seen == []
    assert h.vq.bad_chains == 1


def _wait_raw(h, head):
    for _ in range(50):
        if any(hh == head for hh, _ in h.dq.get_used()):
            return
        h.dq.wait_call(0.1)
    raise AssertionError("malformed chain was never returned")


def _raw_chain(h, descs):
    """Write ``descs`` [(addr, len, flags, next)] into fresh table slots; returns the head."""
    slots = h.dq.alloc_desc(len(descs))
    for slot, (addr, length, flags, nxt) in zip(slots, descs):
        h.dq.write_desc(slot, addr, length, flags, slots[nxt] if nxt is not None else 0)
    return slots[0]


@pytest.mark.parametrize("shape", ["loop", "next_out_of_range", "address_outside_memory",
                                   "readable_after_writable", "length_overflows_memory",
                                   "short_header", "header_len_too_big", "nested_indirect"])
def test_malformed_chains_are_returned_and_service_continues(harness, shape):
    h = harness()
    req = request(abi.Opcode.GETATTR, bytes(16))
    buf = h.mem.alloc(len(req))
    h.mem.write(buf, req)
    out = h.mem.alloc(64)
    N, W, I = VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_DESC_F_INDIRECT
    if shape == "loop":
        head = _raw_chain(h, [(buf, len(req), N, 1), (out, 64, W | N, 0)])
    elif shape == "next_out_of_range":
        (head,) = h.dq.alloc_desc(1)
        h.dq.write_desc(head, buf, len(req), N, 999)
    elif shape == "address_outside_memory":
        head = _raw_chain(h, [(1 << 50, len(req), N, 1), (out, 64, W, None)])
    elif shape == "readable_after_writable":
        head = _raw_chain(h, [(out, 64, W | N, 1), (buf, len(req), 0, None)])
    elif shape == "length_overflows_memory":
        head = _raw_chain(h, [(buf, 0xFFFFFFFF, N, 1), (out, 64, W, None)])
    elif shape == "short_header":
        head = _raw_chain(h, [(buf, 20, N, 1), (out, 64, W, None)])
    elif shape == "header_len_too_big":
        h.mem.write(buf, request(abi.Opcode.GETATTR, bytes(16), length=4096))
        head = _raw_chain(h, [(buf, len(req), N, 1), (out, 64, W, None)])
    elif shape == "nested_indirect":
        inner = h.mem.alloc(16, 16)
        outer = h.mem.alloc(16, 16)
        h.dq.write_desc(0, buf, len(req), 0, table=inner)
        h.dq.write_desc(0, inner, 16, I, table=outer)
        (head,) = h.dq.alloc_desc(1)
        h.dq.write_desc(head, outer, 16, I)
    h.dq.publish_raw([head])
    _wait_raw(h, head)
    assert h.seen == []
    assert h.vq.bad_chains == 1
    # The next well-formed request is served normally.
    data = h.roundtrip([req], [64])
    assert out_header(data) == (24, 0, 7)


@pytest.mark.parametrize("readable,unique", [(12, 0), (16, 0x1122334455667788),
                                              (39, 0x1122334455667788)])
def test_short_header_reply_echoes_the_unique_when_it_was_readable(harness, readable, unique):
    h = harness()
    req = request(abi.Opcode.GETATTR, bytes(16), unique=0x1122334455667788)
    buf = h.mem.alloc(len(req))
    h.mem.write(buf, req)
    out = h.mem.alloc(64)
    head = _raw_chain(h, [(buf, readable, VRING_DESC_F_NEXT, 1),
                          (out, 64, VRING_DESC_F_WRITE, None)])
    h.dq.publish_raw([head])
    _wait_raw(h, head)
    assert out_header(h.mem.read(out, 16)) == (16, -errno.EINVAL, unique)
    assert h.seen == []


def test_error_reply_when_chain_is_malformed_but_header_readable(harness):
    h = harness()
    h.reply = lambda req, out: (0, b"")
    req = request(abi.Opcode.GETATTR, bytes(16), length=4096)
    data = h.roundtrip([req], [64])
    assert out_header(data) == (16, -22, 7)


def test_avail_index_out_of_reach_signals_the_error_and_serving_resumes(harness):
    h = harness(size=8)
    published = h.dq.published_idx
    # Claim 100 new buffers in an 8-entry ring.
    struct.pack_into("<H", h.dq._avail_map, h.dq._avail_off + 2, published + 100)
    h.dq.kick()
    deadline = time.monotonic() + TIMEOUT
    while not h.vq.bad_avail:
        assert time.monotonic() < deadline, "the impossible avail index went unnoticed"
        time.sleep(0.01)
    assert h.errors_signalled() == 1
    assert h.thread.is_alive() and h.vq.last_avail_idx == published and h.seen == []
    # Kicks while it stays out of reach take nothing and signal nothing more.
    h.dq.kick()
    time.sleep(0.1)
    assert h.vq.last_avail_idx == published and h.errors_signalled() == 0
    # Back within reach: the same queue serves again, no restart.
    struct.pack_into("<H", h.dq._avail_map, h.dq._avail_off + 2, published)
    assert out_header(h.roundtrip([request(abi.Opcode.GETATTR, bytes(16))], [64])) == (24, 0, 7)
    assert h.vq.bad_avail == 1


@pytest.mark.parametrize("bad_head", [8, 0xFFFF])
def test_avail_entry_naming_no_descriptor_is_skipped(harness, bad_head):
    h = harness(size=8)
    req = request(abi.Opcode.GETATTR, bytes(16), unique=9)
    # The bad entry first, the valid head right behind it, both in the ring before one kick.
    h.dq.publish_raw([bad_head], notify=False)
    good = h.dq.add_chain([req], [64])
    h.dq.publish()
    h.dq.kick()   # publish() leaves it out when the device asked for one at the bad entry
    data = h.wait_for(good)
    assert out_header(data) == (24, 0, 9)
    assert h.vq.bad_heads == 1 and h.errors_signalled() == 1
    assert out_header(h.roundtrip([request(abi.Opcode.GETATTR, bytes(16))], [64])) == (24, 0, 7)


@pytest.mark.parametrize("size", [8, 1024])
def test_chain_longer_than_the_limit_is_an_error_reply(harness, size):
    """A chain may have up to the queue size or 512 descriptors, whichever is larger (a Linux
    guest puts a 1 MiB request of a small queue into one indirect table); one more is an error
    reply, and an indirect table as long as it likes costs no more than that."""
    limit = max(size, 512)
    h = harness(size=size)
    req = request(abi.Opcode.GETATTR, bytes(16), unique=11)
    buf = h.mem.alloc(len(req))
    h.mem.write(buf, req)
    out = h.mem.alloc(64)
    N, W = VRING_DESC_F_NEXT, VRING_DESC_F_WRITE
    # An indirect table of limit + 1 descriptors behind one head: the header, the reply buffer
    # and empty writable buffers (the walk stops at the one past the limit, after the reply
    # buffer, which takes the error).
    count = limit + 1
    table = h.mem.alloc(16 * count, 16)
    h.dq.write_desc(0, buf, len(req), N, 1, table=table)
    h.dq.write_desc(1, out, 64, W | N, 2, table=table)
    for i in range(2, count - 1):
        h.dq.write_desc(i, out, 0, W | N, i + 1, table=table)
    h.dq.write_desc(count - 1, out, 0, W, 0, table=table)
    (head,) = h.dq.alloc_desc(1)
    h.dq.write_desc(head, table, 16 * count, VRING_DESC_F_INDIRECT)
    h.dq.publish_raw([head])
    _wait_raw(h, head)
    assert out_header(h.mem.read(out, 16)) == (16, -errno.EINVAL, 11)
    assert h.seen == [] and h.vq.bad_chains == 1
    # One descriptor less is a chain at the limit: served.
    h.dq.write_desc(count - 2, out, 0, W, 0, table=table)
    h.dq.write_desc(head, table, 16 * (count - 1), VRING_DESC_F_INDIRECT)
    h.dq.publish_raw([head])
    _wait_raw(h, head)
    assert out_header(h.mem.read(out, 16)) == (24, 0, 11)


def test_reply_larger_than_writable_space_becomes_erange(harness):
    h = harness(reply=lambda req, out: (0, b"x" * 100))
    data = h.roundtrip([request(abi.Opcode.GETATTR, bytes(16))], [40])
    assert out_header(data) == (16, -34, 7)


def test_no_reply_opcodes_return_the_chain_empty(harness):
    h = harness(reply=lambda req, out: None)
    head = h.dq.add_chain([request(abi.Opcode.FORGET, struct.pack("<Q", 1))], [])
    h.dq.publish()
    assert h.wait_for(head) == b""


def test_multi_region_memory_and_buffers_across_regions(harness):
    h = harness(regions=[(0, 16 << 20), (4 << 30, 16 << 20, 2 << 20)])
    high = 4 << 30
    req = request(abi.Opcode.GETATTR, bytes(16))
    h.mem.write(high + 4096, req)
    data = h.roundtrip([(high + 4096, len(req))], [64])
    assert out_header(data) == (24, 0, 7)
    assert h.seen[0][0] == req


class TestDeferredReplies:
    """Replies the engine sends later from another thread (a lock wait, say)."""

    def deferring(self, h):
        parked = []

        def reply(req, out_size):
            if abi.in_header.unpack_from(req)[1] == abi.Opcode.SETLKW:
                return parked.append
            return (0, b"now")
        h.reply = reply
        return parked

    def submit(self, h, opcode, unique):
        head = h.dq.add_chain([request(opcode, bytes(48), unique=unique)], [64])
        h.dq.publish()
        return head

    def test_later_reply_does_not_hold_up_others(self, harness):
        h = harness()
        parked = self.deferring(h)
        waiting = self.submit(h, abi.Opcode.SETLKW, 1)
        quick = self.submit(h, abi.Opcode.GETATTR, 2)
        assert out_header(h.wait_for(quick))[2] == 2
        assert len(parked) == 1 and waiting not in h.done
        completer = threading.Thread(target=parked[0].complete, args=(-11,))
        completer.start()
        completer.join()
        assert out_header(h.wait_for(waiting)) == (16, -11, 1)
        assert parked[0].complete(0) is False  # only once

    def test_pending_reply_follows_a_restarted_ring(self, harness):
        h = harness()
        parked = self.deferring(h)
        waiting = self.submit(h, abi.Opcode.SETLKW, 1)
        quick = self.submit(h, abi.Opcode.GETATTR, 2)
        h.wait_for(quick)
        old = h.restart()
        old.retire(h.vq)
        assert parked[0].complete(0, b"late")
        data = h.wait_for(waiting)
        assert out_header(data) == (20, 0, 1) and data[16:] == b"late"
        # The new queue's used index moved past the late reply.
        assert out_header(h.wait_for(self.submit(h, abi.Opcode.GETATTR, 3)))[2] == 3

    def test_pending_reply_dropped_when_the_frontend_stopped_the_ring(self, harness):
        h = harness()
        parked = self.deferring(h)
        self.submit(h, abi.Opcode.SETLKW, 1)
        for _ in range(100):
            if parked:
                break
            h.dq.wait_call(0.02)
        used = h.dq.used_idx()
        h.vq.stop()
        h.thread.join(TIMEOUT)
        h.vq.retire(None)
        assert parked[0].complete(0) is False
        assert h.dq.used_idx() == used
        h.start(h.vq.last_avail_idx)  # so the fixture can stop something

    def test_a_successor_must_share_the_lock(self, harness):
        h = harness()
        other = harness()
        with pytest.raises(ValueError):
            h.vq.retire(other.vq)


class TestGetattrInC:
    """GETATTR answered from the shared node id table, byte for byte what the engine sends."""

    def test_same_reply_as_the_engine(self, harness, tmp_path):
        from fastvfs.fs.passthrough import PassthroughFs
        from fastvfs.fuse.engine import FuseEngine
        (tmp_path / "f").write_bytes(b"x" * 12345)
        os.utime(tmp_path / "f", ns=(-1_500_000_001, 1_700_000_000_123_456_789))
        inodes = NodeTable(64)
        engine = FuseEngine(PassthroughFs(tmp_path, HandleTable(8), inodes=inodes),
                            "auto")
        init = request(abi.Opcode.INIT, abi.init_in.pack(7, 38, 0, 0, 0))
        assert engine.handle(init, 4096)[0] == 0
        nodeid = abi.entry_out_head.unpack_from(
            engine.handle(request(abi.Opcode.LOOKUP, b"f\0"), 4096)[1])[0]
        h = harness(reply=lambda req, out: engine.handle(req, out), inodes=inodes)
        h.vq.set_fast_io(True)
        getattr_req = request(abi.Opcode.GETATTR, bytes(16), nodeid=nodeid)
        in_c = h.roundtrip([getattr_req], [16, 200])
        assert h.seen == []  # no Python involved
        in_python = engine.handle(getattr_req, 200)
        assert in_c[16:] == in_python[1]
        assert out_header(h.roundtrip([request(abi.Opcode.GETATTR, bytes(16),
                                               nodeid=nodeid + 1)], [200]))[1] == -2
        engine.handle(request(abi.Opcode.FORGET, struct.pack("<Q", 1), nodeid=nodeid), 0)
        stale = request(abi.Opcode.GETATTR, bytes(16), nodeid=nodeid)
        assert out_header(h.roundtrip([stale], [200]))[1] == -2


class TestMetadataInC:
    """LOOKUP of a plain name is answered in C, byte for byte what the engine sends, with the
    lookup counted in the same table (a new inode entered there); ".", "..", and names the
    file system refuses go to the engine.  FLUSH, RELEASE, FORGET and BATCH_FORGET are
    served in C."""

    def test_plain_names_in_c_everything_else_in_python(self, harness, tmp_path):
        from fastvfs.fs.passthrough import PassthroughFs
        from fastvfs.fuse.engine import FuseEngine
        (tmp_path / "f").write_bytes(b"x" * 100)
        (tmp_path / "g").write_bytes(b"y")
        (tmp_path / "d").mkdir()
        inodes = NodeTable(64)
        h = harness(reply=lambda req, out: engine.handle(req, out), inodes=inodes)
        h.vq.set_fast_io(True)
        fs = PassthroughFs(tmp_path, h.handles, inodes=inodes)
        engine = FuseEngine(fs, "auto")
        assert engine.handle(request(abi.Opcode.INIT, abi.init_in.pack(7, 38, 0, 0, 0)),
                             4096)[0] == 0
        nodeid = abi.entry_out_head.unpack_from(
            engine.handle(request(abi.Opcode.LOOKUP, b"f\0"), 4096)[1])[0]
        lookup_f = request(abi.Opcode.LOOKUP, b"f\0")
        in_c = h.roundtrip([lookup_f], [16, 200])
        assert h.seen == []  # no Python involved
        assert fs.inodes.nlookup(nodeid) == 2
        in_python = engine.handle(lookup_f, 200)
        assert in_c[16:] == in_python[1]
        assert fs.inodes.nlookup(nodeid) == 3
        # A name that does not exist: ENOENT from C.
        assert out_header(h.roundtrip([request(abi.Opcode.LOOKUP, b"nope\0")], [16, 200])
                          )[1] == -2
        assert h.seen == []
        # ".", "..", a slash, no NUL: the engine's.
        for name in (b".\0", b"..\0", b"d/x\0", b"f"):
            h.roundtrip([request(abi.Opcode.LOOKUP, name)], [16, 200])
        assert [abi.in_header.unpack_from(req)[1] for req, _ in h.seen] == [1] * 4
        h.seen.clear()
        # A new inode: entered in C, what the engine then answers with one more lookup.
        g = h.roundtrip([request(abi.Opcode.LOOKUP, b"g\0")], [16, 200])
        g_id = abi.entry_out_head.unpack_from(g, 16)[0]
        assert h.seen == [] and g_id not in (0, nodeid) and fs.inodes.nlookup(g_id) == 1
        assert engine.handle(request(abi.Opcode.LOOKUP, b"g\0"), 200)[1] == g[16:]
        assert fs.inodes.nlookup(g_id) == 2
        engine.handle(request(abi.Opcode.FORGET, struct.pack("<Q", 2), nodeid=g_id), 0)
        # Forgotten: the next LOOKUP makes a new node id, in C.
        engine.handle(request(abi.Opcode.FORGET, struct.pack("<Q", 3), nodeid=nodeid), 0)
        assert fs.inodes.nlookup(nodeid) == 0
        again = h.roundtrip([lookup_f], [16, 200])
        assert h.seen == []
        new_id = abi.entry_out_head.unpack_from(again, 16)[0]
        assert new_id != nodeid and fs.inodes.nlookup(new_id) == 1
        h.seen.clear()
        h.roundtrip([lookup_f], [16, 200])
        assert h.seen == [] and fs.inodes.nlookup(new_id) == 2

        # FLUSH and RELEASE of an open file, in C.
        fh = abi.open_out.unpack_from(engine.handle(
            request(abi.Opcode.OPEN, abi.open_in.pack(os.O_RDWR, 0), nodeid=new_id),
            4096)[1])[0]
        flush = request(abi.Opcode.FLUSH, abi.flush_in.pack(fh, 0, 0, 99), nodeid=new_id)
        assert out_header(h.roundtrip([flush], [16])) == (16, 0, 7)
        assert h.seen == []
        # A lock held: FLUSH by another owner leaves it; by its owner, in C too, drops it.
        lock = abi.lk_in.pack(fh, 99, 0, 10, 1, 0, 0, 0)  # F_WRLCK
        assert engine.handle(request(abi.Opcode.SETLK, lock, nodeid=new_id), 0)[0] == 0
        assert h.handles.lock_fds_open == 1
        other = request(abi.Opcode.FLUSH, abi.flush_in.pack(fh, 0, 0, 98), nodeid=new_id)
        assert out_header(h.roundtrip([other], [16]))[1] == 0
        assert h.seen == [] and h.handles.lock_fds_open == 1
        assert out_header(h.roundtrip([flush], [16]))[1] == 0
        assert h.seen == [] and h.handles.lock_fds_open == 0
        release = request(abi.Opcode.RELEASE, abi.release_in.pack(fh, 0, 0, 99),
                          nodeid=new_id)
        assert out_header(h.roundtrip([release], [16])) == (16, 0, 7)
        assert out_header(h.roundtrip([release], [16]))[1] == -9  # released already
        assert h.seen == [] and h.handles.count == 0

        # FORGET and BATCH_FORGET in C; a node dropped leaves the table.
        h.roundtrip([request(abi.Opcode.FORGET, abi.forget_in.pack(1), nodeid=new_id)], [])
        assert fs.inodes.nlookup(new_id) == 1 and h.seen == []
        g_id = abi.entry_out_head.unpack_from(
            engine.handle(request(abi.Opcode.LOOKUP, b"g\0"), 4096)[1])[0]
        batch = (abi.batch_forget_in.pack(3, 0) + abi.forget_one.pack(new_id, 5) +
                 abi.forget_one.pack(g_id, 2) + abi.forget_one.pack(12345, 1))
        assert len(fs.inodes) == 3
        h.roundtrip([request(abi.Opcode.BATCH_FORGET, batch, nodeid=0)], [])
        assert h.seen == []
        assert fs.inodes.nlookup(new_id) == 0 and fs.inodes.nlookup(g_id) == 0
        assert len(fs.inodes) == 1  # the root only
        assert out_header(h.roundtrip([request(abi.Opcode.GETATTR, bytes(16),
                                               nodeid=g_id)], [200]))[1] == -2


    def test_a_lock_goes_with_the_handle_it_was_taken_through(self, harness, tmp_path):
        """A RELEASE in C drops the locks taken through that handle (an OFD lock has no other
        end), as the engine's would; a handle released first cannot take a lock afterwards
        (EBADF), so none is left without its handle."""
        import fcntl
        from fastvfs.fs.passthrough import PassthroughFs
        from fastvfs.fuse.engine import FuseEngine
        (tmp_path / "f").write_bytes(b"x" * 100)
        inodes = NodeTable(64)
        h = harness(reply=lambda req, out: engine.handle(req, out), inodes=inodes)
        h.vq.set_fast_io(True)
        fs = PassthroughFs(tmp_path, h.handles, inodes=inodes)
        engine = FuseEngine(fs, "auto")
        assert engine.handle(request(abi.Opcode.INIT, abi.init_in.pack(7, 38, 0, 0, 0)),
                             4096)[0] == 0
        nodeid = abi.entry_out_head.unpack_from(
            engine.handle(request(abi.Opcode.LOOKUP, b"f\0"), 4096)[1])[0]

        def opened():
            return abi.open_out.unpack_from(engine.handle(
                request(abi.Opcode.OPEN, abi.open_in.pack(os.O_RDWR, 0), nodeid=nodeid),
                4096)[1])[0]

        def host_free():
            with open(tmp_path / "f") as f:
                got = fcntl.fcntl(f, fcntl.F_OFD_GETLK,
                                  struct.pack("hhxxxxqqixxxx", fcntl.F_WRLCK, 0, 0, 0, 0))
            return struct.unpack("hhxxxxqqixxxx", got)[0] == fcntl.F_UNLCK

        fh = opened()
        lock = abi.lk_in.pack(fh, 0xf11e, 0, 10, fcntl.F_WRLCK, 0, 0, 0)
        assert engine.handle(request(abi.Opcode.SETLK, lock, nodeid=nodeid), 0)[0] == 0
        assert h.handles.lock_fds_open == 1 and not host_free()
        release = request(abi.Opcode.RELEASE, abi.release_in.pack(fh, 0, 0, 0), nodeid=nodeid)
        assert out_header(h.roundtrip([release], [16]))[1] == 0
        assert h.seen == [] and h.handles.lock_fds_open == 0 and host_free()
        fh = opened()
        release = request(abi.Opcode.RELEASE, abi.release_in.pack(fh, 0, 0, 0), nodeid=nodeid)
        assert out_header(h.roundtrip([release], [16]))[1] == 0 and h.seen == []
        lock = abi.lk_in.pack(fh, 0xf11e, 0, 10, fcntl.F_WRLCK, 0, 0, 0)
        assert engine.handle(request(abi.Opcode.SETLK, lock, nodeid=nodeid), 0)[0] == -9
        assert h.handles.lock_fds_open == 0 and fs.lock_fds == {} and host_free()

class TestFastPath:
    """READ and WRITE served in C once the session enabled them: synchronously, through the
    queue's io_uring (READ), or both through it."""

    @pytest.fixture(params=["sync", "uring", "uring-rw"])
    def file_harness(self, harness, tmp_path, request):
        h = harness(engine=request.param)
        h.vq.set_fast_io(True)
        path = tmp_path / "data"
        path.write_bytes(bytes(range(256)) * 64)  # 16 KiB
        fd = os.open(path, os.O_RDWR)
        fh = h.handles.add(fd)
        return h, fh, path

    def test_read_into_guest_buffers(self, file_harness):
        h, fh, path = file_harness
        body = abi.read_in.pack(fh, 100, 5000, 0, 0, 0, 0)
        data = h.roundtrip([request(abi.Opcode.READ, body)], [16, 1000, 4000])
        assert out_header(data) == (16 + 5000, 0, 7)
        assert data[16:] == path.read_bytes()[100:5100]
        assert h.seen == []  # served without the engine

    def test_short_read_at_eof(self, file_harness):
        h, fh, path = file_harness
        body = abi.read_in.pack(fh, 16384 - 10, 4096, 0, 0, 0, 0)
        data = h.roundtrip([request(abi.Opcode.READ, body)], [16, 4096])
        assert out_header(data)[:2] == (26, 0)
        assert data[16:] == path.read_bytes()[-10:]

    def test_write_from_guest_buffers(self, file_harness):
        h, fh, path = file_harness
        payload = os.urandom(3000)
        body = abi.write_in.pack(fh, 50, len(payload), 0, 0, 0, 0)
        req = request(abi.Opcode.WRITE, body, length=80 + len(payload))
        data = h.roundtrip([req, payload[:1000], payload[1000:]], [32])
        assert out_header(data) == (24, 0, 7)
        assert struct.unpack_from("<I", data, 16)[0] == 3000
        assert path.read_bytes()[50:3050] == payload

    def test_write_clears_setuid_for_unprivileged_writers(self, file_harness):
        h, fh, path = file_harness
        os.chmod(path, 0o6755)
        flags = 1 << 2  # FUSE_WRITE_KILL_SUIDGID
        body = abi.write_in.pack(fh, 0, 1, flags, 0, 0, 0)
        h.roundtrip([request(abi.Opcode.WRITE, body, length=81), b"z"], [32])
        assert os.stat(path).st_mode & 0o7777 == 0o755
        assert h.seen == []

    def test_write_size_disagreeing_with_request_is_refused(self, file_harness):
        h, fh, path = file_harness
        before = path.read_bytes()
        body = abi.write_in.pack(fh, 0, 5000, 0, 0, 0, 0)
        data = h.roundtrip([request(abi.Opcode.WRITE, body, length=180), b"x" * 100], [32])
        assert out_header(data)[1] == -22
        assert path.read_bytes() == before

    def test_unknown_and_stale_handles(self, file_harness):
        h, fh, path = file_harness
        for bad in (fh + 1, fh ^ (1 << 40), 0, 2 ** 64 - 1):
            body = abi.read_in.pack(bad, 0, 10, 0, 0, 0, 0)
            data = h.roundtrip([request(abi.Opcode.READ, body)], [64])
            assert out_header(data)[1] == -9
        h.handles.remove(fh)
        body = abi.read_in.pack(fh, 0, 10, 0, 0, 0, 0)
        assert out_header(h.roundtrip([request(abi.Opcode.READ, body)], [64]))[1] == -9

    def test_many_in_flight_in_one_round(self, file_harness):
        """A burst published at once: each READ and WRITE lands in its own chain, correct."""
        h, fh, path = file_harness
        content = path.read_bytes()
        heads = {}
        for i in range(12):
            if i % 3 == 2:
                payload = bytes([i]) * 512
                body = abi.write_in.pack(fh, 16384 + i * 512, 512, 0, 0, 0, 0)
                req = request(abi.Opcode.WRITE, body, unique=100 + i, length=80 + 512)
                heads[h.dq.add_chain([req, payload], [32], indirect=True)] = ("w", i)
            else:
                body = abi.read_in.pack(fh, i * 1000, 1000, 0, 0, 0, 0)
                req = request(abi.Opcode.READ, body, unique=100 + i)
                heads[h.dq.add_chain([req], [16, 1000], indirect=True)] = ("r", i)
        h.dq.publish()
        for head, (kind, i) in heads.items():
            data = h.wait_for(head)
            length, error, unique = out_header(data)
            assert (error, unique) == (0, 100 + i)
            if kind == "r":
                assert data[16:] == content[i * 1000:i * 1000 + 1000]
            else:
                assert struct.unpack_from("<I", data, 16)[0] == 512
        for i in range(2, 12, 3):
            assert path.read_bytes()[16384 + i * 512:16384 + (i + 1) * 512] == bytes([i]) * 512
        assert h.seen == []
        assert h.vq.io_engine == ("sync" if h.engine == "sync" else "uring")

    def test_a_head_published_twice_while_in_flight(self, file_harness, tmp_path):
        """A hostile driver re-points and re-publishes a head whose READ is still in flight:
        the second request waits for the first (as on the synchronous path), each is answered
        with its own data, and every handle's references come back to zero."""
        h, fh, path = file_harness
        if h.engine == "sync":
            pytest.skip("a synchronous queue finishes each request before the next")
        rfd, wfd = os.pipe()
        pipe_fh = h.handles.add(rfd)
        body = abi.read_in.pack(pipe_fh, 0, 5, 0, 0, 0, 0)
        head = h.dq.add_chain([request(abi.Opcode.READ, body, unique=1)], [16, 4096],
                              indirect=True)
        start = h.dq.used_idx()
        h.dq.publish()
        time.sleep(0.2)                          # the pipe READ waits in the io_uring
        # The same head now names a READ of the file, through a new indirect table.
        req = h.mem.alloc(80)
        h.mem.write(req, request(abi.Opcode.READ, abi.read_in.pack(fh, 0, 100, 0, 0, 0, 0),
                                 unique=2))
        out = h.mem.alloc(16 + 4096)
        table = h.mem.alloc(48, 16)
        h.dq.write_desc(0, req, 80, VRING_DESC_F_NEXT, 1, table)
        h.dq.write_desc(1, out, 16 + 4096, VRING_DESC_F_WRITE, 0, table)
        h.dq.write_desc(head, table, 32, VRING_DESC_F_INDIRECT)
        h.dq._queue_head(head)
        h.dq.publish()
        time.sleep(0.2)
        os.write(wfd, b"hello")
        deadline = time.monotonic() + TIMEOUT
        while (h.dq.used_idx() - start) & 0xFFFF < 2:
            assert time.monotonic() < deadline, "both requests were not answered"
            h.dq.wait_call(0.1)
        used = h.dq._used_map
        lengths = [struct.unpack_from("<II", used, h.dq._used_off + 4 + 8 * ((start + i) %
                                                                            h.size))
                   for i in range(2)]
        assert lengths == [(head, 16 + 5), (head, 16 + 100)]
        assert h.mem.read(out, 16 + 100)[16:] == path.read_bytes()[:100]
        h.handles.remove(pipe_fh)
        h.handles.remove(fh)
        assert h.handles.count == 0          # every fd closed: no reference left behind
        os.close(wfd)
        h.dq._inflight.pop(head, None)

    def test_fsync_through_the_ring(self, file_harness):
        """With io_uring FSYNC is served in C: through the ring when other work is about (the
        kernel runs it asynchronously), on the queue's thread when it is alone; synchronous
        queues leave it to the engine (its thread pool, if any)."""
        h, fh, path = file_harness
        data = h.roundtrip([request(abi.Opcode.FSYNC, struct.pack("<QII", fh, 1, 0))], [16])
        if h.engine == "sync":
            assert len(h.seen) == 1
            return
        assert out_header(data) == (16, 0, 7)
        assert h.vq.inline_syncs == 1
        bad = h.roundtrip([request(abi.Opcode.FSYNC, struct.pack("<QII", fh + 1, 0, 0))], [16])
        assert out_header(bad) == (16, -9, 7)
        # Published together: the first is not alone (the second waits behind it).
        burst = h.roundtrip_many([([request(abi.Opcode.FSYNC, struct.pack("<QII", fh, flags, 0),
                                            unique=20 + flags)], [16]) for flags in (0, 1)])
        assert [out_header(data) for data in burst] == [(16, 0, 20), (16, 0, 21)]
        # The first went through the ring; the second did too unless the first was done.
        assert h.vq.inline_syncs in (1, 2)
        assert h.seen == []

    def test_fallocate_in_c(self, file_harness):
        """FALLOCATE is served without the engine: through the ring after what came before
        it, or with fallocate(2) on a synchronous queue.  Every mode reaches the host file."""
        h, fh, path = file_harness
        original = path.read_bytes()

        def fallocate(offset, length, mode, handle=fh):
            data = h.roundtrip([request(abi.Opcode.FALLOCATE, abi.fallocate_in.pack(
                handle, offset, length, mode, 0))], [16])
            return out_header(data)[:2]

        assert fallocate(0, 65536, 0) == (16, 0)                      # grows the file
        assert path.stat().st_size == 65536
        assert path.read_bytes()[:16384] == original
        blocks = path.stat().st_blocks
        assert fallocate(1 << 20, 1 << 20, 1) == (16, 0)              # FALLOC_FL_KEEP_SIZE
        assert path.stat().st_size == 65536 and path.stat().st_blocks > blocks
        assert fallocate(4096, 4096, 3) == (16, 0)                    # PUNCH_HOLE | KEEP_SIZE
        data = path.read_bytes()
        assert data[4096:8192] == bytes(4096) and data[:4096] == original[:4096]
        assert data[8192:16384] == original[8192:]
        assert fallocate(0, 4096, 2) == (16, -errno.EOPNOTSUPP)       # PUNCH_HOLE alone
        assert fallocate(0, 0, 0) == (16, -errno.EINVAL)              # the kernel's word
        assert fallocate(1 << 63, 4096, 0) == (16, -errno.EINVAL)     # offset past off_t
        assert fallocate(0, 1 << 63, 0) == (16, -errno.EINVAL)
        assert fallocate(0, 4096, 0, handle=fh + 1) == (16, -errno.EBADF)
        reader = h.handles.add(os.open(path, os.O_RDONLY))
        assert fallocate(0, 1 << 17, 0, handle=reader) == (16, -errno.EBADF)
        assert path.stat().st_size == 65536
        assert h.seen == []
        h.handles.remove(reader)
        h.handles.remove(fh)
        assert h.handles.count == 0          # every reference given back

    def test_small_fallocate_on_the_queue_thread(self, file_harness):
        """With io_uring and no thread pool, a FALLOCATE that only allocates (mode 0 or
        KEEP_SIZE) at most FALLOCATE_FAST_MAX is served on the queue's thread even with other
        requests published; a larger one, and one that punches, go through the ring."""
        h, fh, path = file_harness
        if h.engine == "sync":
            pytest.skip("a synchronous queue has no ring: every FALLOCATE is served in place")
        modes = [(0, 4096, 0), (1 << 20, 1 << 20, 1),                     # allocations
                 (4 << 20, 2 << 20, 0), (4096, 4096, 3)]                  # larger, PUNCH_HOLE
        replies = h.roundtrip_many([([request(abi.Opcode.FALLOCATE, abi.fallocate_in.pack(
            fh, offset, length, mode, 0), unique=30 + i)], [16])
            for i, (offset, length, mode) in enumerate(modes)])
        assert [out_header(r) for r in replies] == [(16, 0, 30 + i) for i in range(4)]
        # The two small allocations here; the last may find the others done and be alone.
        assert h.vq.inline_syncs in (2, 3)
        assert path.stat().st_size == 6 << 20
        assert path.read_bytes()[4096:8192] == bytes(4096)
        assert h.seen == []

    def test_read_only_share_leaves_modifications_to_the_engine(self, harness, tmp_path):
        """On a read-only share WRITE and FALLOCATE go to the engine (which refuses them with
        EROFS); READ is still served in C."""
        h = harness(engine="uring", read_only=True)
        h.vq.set_fast_io(True)
        path = tmp_path / "data"
        path.write_bytes(b"x" * 4096)
        fh = h.handles.add(os.open(path, os.O_RDWR))
        h.roundtrip([request(abi.Opcode.WRITE, abi.write_in.pack(fh, 0, 4, 0, 0, 0, 0) + b"abcd")],
                    [16, 8])
        h.roundtrip([request(abi.Opcode.FALLOCATE, abi.fallocate_in.pack(fh, 0, 8192, 0, 0))],
                    [16])
        assert [struct.unpack_from("<I", req, 4)[0] for req, _ in h.seen] == [
            abi.Opcode.WRITE, abi.Opcode.FALLOCATE]
        data = h.roundtrip([request(abi.Opcode.READ, abi.read_in.pack(fh, 0, 8, 0, 0, 0, 0))],
                           [16, 8])
        assert data[16:] == b"x" * 8 and len(h.seen) == 2
        assert path.read_bytes() == b"x" * 4096

    @pytest.mark.parametrize("engine", ["uring", "uring-rw"])
    def test_fixed_buffers(self, harness, tmp_path, engine):
        """With guest memory registered, a READ (and with uring-rw a WRITE) into one guest
        buffer goes as READ_FIXED/WRITE_FIXED; data split over buffers goes as readv.  The
        reads are published two at a time, so that the ring serves them (a lone one is read
        from the page cache directly)."""
        h = harness(engine=engine, fixed_buffers=True)
        h.vq.set_fast_io(True)
        path = tmp_path / "data"
        content = os.urandom(16384)
        path.write_bytes(content)
        fh = h.handles.add(os.open(path, os.O_RDWR))

        def reads(offset, size, lens):
            return h.roundtrip_many([([request(abi.Opcode.READ, abi.read_in.pack(
                fh, offset, size, 0, 0, 0, 0), unique=7)], lens)] * 2)

        for data in reads(100, 4096, [16, 4096]):
            assert out_header(data) == (16 + 4096, 0, 7) and data[16:] == content[100:4196]
        assert h.vq.fixed_buffers == len(h.table.host_ranges()) >= 1
        assert h.vq.fixed_ios == 2 and h.vq.lone_reads == 0
        for data in reads(0, 5000, [16, 1000, 4000]):
            assert data[16:] == content[:5000]
        assert h.vq.fixed_ios == 2
        # A short read at EOF is finished as without registration.
        for data in reads(16384 - 10, 4096, [16, 4096]):
            assert out_header(data)[:2] == (26, 0) and data[16:] == content[-10:]
        payload = os.urandom(4096)
        data = h.roundtrip([request(abi.Opcode.WRITE, abi.write_in.pack(fh, 8192, 4096, 0, 0, 0,
                                                                        0) + payload)], [16, 8])
        assert struct.unpack_from("<I", data, 16)[0] == 4096
        assert path.read_bytes()[8192:12288] == payload
        assert h.vq.fixed_ios == (5 if engine == "uring-rw" else 4)
        assert h.vq.lone_reads == 0
        assert h.seen == []
        h.handles.remove(fh)
        assert h.handles.count == 0

    @pytest.mark.parametrize("engine", ["uring", "uring-rw"])
    def test_lone_read_from_the_page_cache(self, harness, tmp_path, engine):
        """A READ that is all the queue has to do is read with preadv2(RWF_NOWAIT) when the
        page cache holds it: the same reply as through the ring, short at EOF, split over
        buffers.  One the page cache cannot answer goes to the ring, and so do the next
        lone ones for a while; an O_DIRECT handle's always do."""
        h = harness(engine=engine)
        h.vq.set_fast_io(True)
        path = tmp_path / "data"
        content = os.urandom(1 << 20)
        path.write_bytes(content)
        fd = os.open(path, os.O_RDWR)
        fh = h.handles.add(fd)
        os.pread(fd, 1 << 20, 0)                      # all of it in the page cache

        def read(offset, size, lens, handle=fh):
            return h.roundtrip([request(abi.Opcode.READ, abi.read_in.pack(
                handle, offset, size, 0, 0, 0, 0), unique=9)], lens)

        data = read(4096, 4096, [16, 4096])
        assert out_header(data) == (16 + 4096, 0, 9) and data[16:] == content[4096:8192]
        data = read(100, 5000, [16, 1000, 4000])
        assert data[16:] == content[100:5100]
        data = read((1 << 20) - 10, 4096, [16, 4096])
        assert out_header(data)[:2] == (26, 0) and data[16:] == content[-10:]
        data = read(1 << 20, 4096, [16, 4096])
        assert out_header(data)[:2] == (16, 0)
        assert h.vq.lone_reads == 4
        # Out of the page cache: the ring reads it (and the next lone ones too).
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        data = read(65536, 4096, [16, 4096])
        assert data[16:] == content[65536:69632]
        data = read(4096, 4096, [16, 4096])
        assert data[16:] == content[4096:8192]
        assert h.vq.lone_reads == 4
        h.handles.remove(fh)
        assert h.handles.count == 0
        assert h.seen == []

    def test_lone_read_of_an_o_direct_handle_goes_to_the_ring(self, harness, tmp_path):
        """An O_DIRECT read waits for the device even with RWF_NOWAIT, so a handle opened
        O_DIRECT never takes the lone path: the worker stays free for the next request."""
        h = harness(engine="uring", indirect=True)
        h.vq.set_fast_io(True)
        path = tmp_path / "data"
        content = os.urandom(65536)
        path.write_bytes(content)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        except OSError:
            pytest.skip("no O_DIRECT on this file system")
        fh = h.handles.add(fd)
        # O_DIRECT wants aligned buffers: the chain is laid out by hand (request, reply
        # header, one aligned data page) in an indirect table.
        req = h.mem.alloc(80)
        h.mem.write(req, request(abi.Opcode.READ, abi.read_in.pack(fh, 8192, 4096, 0, 0, 0, 0),
                                 unique=3))
        hdr = h.mem.alloc(16)
        data = h.mem.alloc(4096, 4096)
        table = h.mem.alloc(48, 16)
        h.dq.write_desc(0, req, 80, VRING_DESC_F_NEXT, 1, table)
        h.dq.write_desc(1, hdr, 16, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 2, table)
        h.dq.write_desc(2, data, 4096, VRING_DESC_F_WRITE, 0, table)
        head = h.dq._free.pop()
        h.dq.write_desc(head, table, 48, VRING_DESC_F_INDIRECT)
        h.dq._inflight[head] = Chain(head, [head], [req, hdr, data, table],
                                     [(hdr, 16), (data, 4096)])
        h.dq._queue_head(head)
        h.dq.publish()
        got = h.wait_for(head)
        assert out_header(got) == (16 + 4096, 0, 3) and got[16:] == content[8192:12288]
        assert h.vq.lone_reads == 0
        # It was not even tried (a refused try would send the next lone reads to the ring
        # too): a buffered handle's lone read right after is read from the page cache.
        cached = h.handles.add(os.open(path, os.O_RDONLY))
        got = h.roundtrip([request(abi.Opcode.READ, abi.read_in.pack(cached, 0, 4096, 0, 0, 0,
                                                                     0), unique=4)], [16, 4096])
        assert got[16:] == content[:4096] and h.vq.lone_reads == 1
        h.handles.remove(cached)
        h.handles.remove(fh)
        assert h.handles.count == 0

    def test_reads_go_to_the_engine_before_init(self, harness):
        h = harness()
        body = abi.read_in.pack(1, 0, 10, 0, 0, 0, 0)
        h.roundtrip([request(abi.Opcode.READ, body)], [64])
        assert len(h.seen) == 1


class TestPublishingInBatches:
    """Replies of every opcode are published PUBLISH_BATCH (16) at a time, each batch with one
    notification check, and whatever is queued when the worker runs out of requests: the guest
    is woken at most once per batch, and never left waiting on a sleeping worker."""

    def _getattrs(self, harness, tmp_path, count):
        inodes = NodeTable(64)
        inodes.add_root(os.open(tmp_path, os.O_PATH))
        # No EVENT_IDX: the driver asks to be woken for every used element, so each
        # notification check that finds something published signals.
        h = harness(inodes=inodes, size=128, event_idx=False)
        h.vq.set_fast_io(True)
        heads = [h.dq.add_chain([request(abi.Opcode.GETATTR, bytes(16))], [16, 120])
                 for _ in range(count)]
        h.dq.publish()                   # all at once: one drain takes them all
        done, deadline = set(), time.monotonic() + TIMEOUT
        while len(done) < count:
            assert time.monotonic() < deadline, "replies missing"
            done.update(head for head, _ in h.dq.get_used())
            time.sleep(0.001)
        assert done == set(heads)
        for head in heads:
            data = b"".join(h.dq.detach(head))
            assert out_header(data)[:2] == (16 + abi.ATTR_OUT_SIZE, 0)
        return os.eventfd_read(h.dq.call_fd)

    def test_a_notification_per_batch_of_metadata_replies(self, harness, tmp_path):
        # GETATTRs answered in C: two full batches, then the last 4 when the ring is empty.
        batch = _ring.REPLIES_PER_BATCH
        assert batch == 16
        assert self._getattrs(harness, tmp_path, 2 * batch + 4) == 3

    def test_a_lone_reply_is_published_before_the_worker_sleeps(self, harness, tmp_path):
        assert self._getattrs(harness, tmp_path, 1) == 1

    def test_guest_like_driver_at_depth(self, harness, tmp_path):
        """A driver that publishes each request on its own and keeps 32 in flight sleeps (and
        is woken) far less often than once per request."""
        from types import SimpleNamespace
        from fastvfs_testing.lean import LeanLoad
        inodes = NodeTable(64)
        inodes.add_root(os.open(tmp_path, os.O_PATH))
        h = harness(inodes=inodes, size=64)
        h.vq.set_fast_io(True)
        load = LeanLoad(SimpleNamespace(memory=h.mem, queues={1: h.dq}), 1, "GETATTR", 32,
                        nodeid=1, publish_each=True)
        try:
            result = load.run(60, max_requests=20000)
        finally:
            load.close()
        assert result["requests"] >= 20000 and result["errors"] == 0
        assert result["sleeps"] <= result["requests"] / 4


@pytest.mark.parametrize("publish_each", [False, True])
def test_lean_driver_publishes_per_round_or_per_request(harness, tmp_path, publish_each):
    """The lean driver publishes the avail index once per round of completions reaped; in its
    guest-like mode once per request (and decides the kick for each), as Linux does."""
    from types import SimpleNamespace
    from fastvfs_testing.lean import LeanLoad
    inodes = NodeTable(64)
    inodes.add_root(os.open(tmp_path, os.O_PATH))
    h = harness(inodes=inodes, size=64)
    h.vq.set_fast_io(True)
    load = LeanLoad(SimpleNamespace(memory=h.mem, queues={1: h.dq}), 1, "GETATTR", 32,
                    nodeid=1, publish_each=publish_each)
    try:
        result = load.run(60, max_requests=20000)
    finally:
        load.close()
    assert result["errors"] == 0 and result["requests"] >= 20000
    # Every request published: the first 32, then one per completion until the stop.
    if publish_each:
        assert result["publishes"] >= result["requests"]
    else:
        assert result["publishes"] < result["requests"] / 2
    assert result["kicks"] <= result["publishes"]


@pytest.mark.parametrize("publish_each", [False, True])
def test_lean_driver_runs_cycles_with_what_replies_gave(harness, publish_each):
    """CYCLE: each step of a cycle is sent once the one before it is answered, with the node
    id and the handle an earlier reply gave copied in, and the first step again after the
    last; a step without a reply (FORGET) completes with nothing written.  Every cycle started
    runs to its end."""
    import itertools
    from types import SimpleNamespace
    from fastvfs_testing.lean import LeanLoad
    handles, opened, forgotten, wrong = itertools.count(1000), {}, [], []
    lock = threading.Lock()

    def reply(req, out_size):
        opcode, _, nodeid = abi.in_header.unpack_from(req)[1:4]
        with lock:
            if opcode == abi.Opcode.CREATE:
                fh = next(handles)
                opened[fh] = node = fh + (7 << 32)
                return 0, abi.entry_out_head.pack(node, 0, 0, 0, 0, 0).ljust(
                    abi.ENTRY_OUT_SIZE, b"\0") + abi.open_out.pack(fh, 0, 0)
            if opcode == abi.Opcode.RELEASE:
                fh = struct.unpack_from("<Q", req, abi.IN_HEADER_SIZE)[0]
                if opened.pop(fh, None) != nodeid:
                    wrong.append((fh, nodeid))
                    return -errno.EBADF, b""
                return 0, b""
            if opcode == abi.Opcode.FORGET:
                forgotten.append(nodeid)
                return None
            wrong.append(opcode)
            return -errno.ENOSYS, b""

    h = harness(size=64, reply=reply)
    program = [
        (abi.Opcode.CREATE, 1, abi.create_in.pack(os.O_RDWR, 0o100644, 0, 0) + b"f\0", b"",
         abi.ENTRY_OUT_SIZE + abi.open_out.size, 0, False, []),
        (abi.Opcode.RELEASE, 0, abi.release_in.pack(0, os.O_RDWR, 0, 0), b"", 0, 0, False,
         [(0, 0, 16), (0, abi.ENTRY_OUT_SIZE, abi.IN_HEADER_SIZE)]),
        (abi.Opcode.FORGET, 0, abi.forget_in.pack(1), b"", 0, 0, True, [(0, 0, 16)]),
    ]
    load = LeanLoad(SimpleNamespace(memory=h.mem, queues={1: h.dq}), 1, "CYCLE", 4,
                    programs=[program], publish_each=publish_each)
    try:
        result = load.run(60, max_requests=1500)
    finally:
        load.close()
    assert result["errors"] == 0 and not wrong
    cycles = next(handles) - 1000
    assert not opened
    assert sorted(forgotten) == [fh + (7 << 32) for fh in range(1000, 1000 + cycles)]
    assert 3 * result["cycles"] <= result["requests"] < 3 * (result["cycles"] + 4)
    assert result["requests"] >= 1500 and cycles >= result["cycles"]
    for bad in ([(1, 0, 16)], [(0, abi.ENTRY_OUT_SIZE + abi.open_out.size, 16)],
                [(0, 0, abi.IN_HEADER_SIZE - 4)]):
        with pytest.raises(ValueError):
            LeanLoad(SimpleNamespace(memory=h.mem, queues={1: h.dq}), 1, "CYCLE", 1,
                     programs=[[program[0], program[1][:7] + (bad,)]])
    with pytest.raises(ValueError):
        LeanLoad(SimpleNamespace(memory=h.mem, queues={1: h.dq}), 1, "CYCLE", 1,
                 programs=[[program[2][:4] + (8, 0, True, [])]])


@pytest.mark.parametrize("pages", ["contiguous", "scattered"])
def test_lean_driver_lays_data_pages_out_as_asked(harness, tmp_path, pages):
    """The lean driver's READ and WRITE data pages lie one after the other in guest memory, or
    (``scattered``, as a guest's page cache has them) shuffled with no page followed by its
    neighbour, the payload in request order either way; the backend serves both."""
    import random
    from types import SimpleNamespace
    from fastvfs_testing import lean
    from fastvfs_testing.lean import PAGE_SIZE, LeanLoad
    for count in (2, 3, 32, 256):
        order = lean._scattered_order(count, random.Random(count))
        assert sorted(order) == list(range(count))
        assert all(b != a + 1 for a, b in zip(order, order[1:]))
    h = harness(size=64)
    h.vq.set_fast_io(True)
    path = tmp_path / "data"
    path.write_bytes(bytes(1 << 20))
    fd = os.open(path, os.O_RDWR)
    fh = h.handles.add(fd)
    payload = os.urandom(5 * PAGE_SIZE + 100)
    probe = object.__new__(LeanLoad)
    probe.memory, probe.owned = h.mem, []
    probe.scatter = random.Random(1) if pages == "scattered" else None
    try:
        laid = probe._data(payload)
        assert [n for _, n in laid] == [PAGE_SIZE] * 5 + [100]
        assert b"".join(h.mem.read(gpa, n) for gpa, n in laid) == payload
        adjacent = [b == a + PAGE_SIZE for (a, _), (b, _) in zip(laid, laid[1:])]
        assert all(adjacent) if pages == "contiguous" else not any(adjacent)
    finally:
        for gpa in probe.owned:
            h.mem.free(gpa)
    for op in ("READ", "WRITE"):
        load = LeanLoad(SimpleNamespace(memory=h.mem, queues={1: h.dq}), 1, op, 4, nodeid=1,
                        fh=fh, size=128 << 10, file_size=1 << 20, pages=pages)
        try:
            result = load.run(60, max_requests=200)
        finally:
            load.close()
        assert result["errors"] == 0 and result["requests"] >= 200
    with pytest.raises(ValueError):
        LeanLoad(SimpleNamespace(memory=h.mem, queues={1: h.dq}), 1, "READ", 1, nodeid=1,
                 fh=fh, size=4096, file_size=1 << 20, pages="sideways")
    h.handles.remove(fh)


class TestMemoryTable:
    def test_host_ranges_in_pieces_io_uring_takes(self):
        """io_uring registers buffers of at most 1 GiB: a larger region comes in pieces."""
        fd = os.memfd_create("t")
        os.ftruncate(fd, (5 << 30) // 2)  # sparse: nothing is touched
        t = _ring.MemoryTable()
        t.add_region(0, (5 << 30) // 2, 0x100000000, 0, fd)
        t.add_region(1 << 40, 1 << 20, 0x400000000, 0, fd)
        pieces = t.host_ranges()
        assert [length for _, length in pieces] == [1 << 30, 1 << 30, 1 << 29, 1 << 20]
        assert pieces[1][0] == pieces[0][0] + (1 << 30)
        assert pieces[2][0] == pieces[1][0] + (1 << 30)
        os.close(fd)

    def test_overlapping_regions_refused(self):
        fd = os.memfd_create("t")
        os.ftruncate(fd, 1 << 20)
        t = _ring.MemoryTable()
        t.add_region(0, 1 << 20, 0x10000000, 0, fd)
        with pytest.raises(ValueError):
            t.add_region(4096, 1 << 20, 0x20000000, 0, fd)
        with pytest.raises(ValueError):
            t.add_region(1 << 30, 1 << 20, 0x10000000 + 4096, 0, fd)
        with pytest.raises(ValueError):
            t.add_region(2 ** 64 - 4096, 8192, 0x30000000, 0, fd)
        assert len(t) == 1
        assert t.remove_region(0, 1 << 20, 0x10000000)
        assert len(t) == 0
        os.close(fd)

    def test_ring_outside_memory_refused(self):
        fd = os.memfd_create("t")
        os.ftruncate(fd, 1 << 20)
        t = _ring.MemoryTable()
        t.add_region(0, 1 << 20, 0x10000000, 0, fd)
        os.close(fd)
        e = os.eventfd(0)
        with pytest.raises(ValueError):
            _ring.Virtqueue(0, t, HandleTable(4), 256, 0x10000000 + (1 << 20) - 64,
                            0x10000000, 0x10001000, 0, e, e, e, True, True, ring_options())
        with pytest.raises(ValueError):
            _ring.Virtqueue(0, t, HandleTable(4), 100, 0x10000000, 0x10001000,
                            0x10002000, 0, e, e, e, True, True, ring_options())
        os.close(e)


class TestHandleTable:
    def test_handles_are_unique_and_generations_catch_reuse(self):
        t = HandleTable(4)
        fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(4)]
        handles = [t.add(fd) for fd in fds]
        assert len(set(handles)) == 4
        with pytest.raises(OSError):
            t.add(os.open("/dev/null", os.O_RDONLY))
        t.remove(handles[0])
        new = t.add(os.open("/dev/null", os.O_RDONLY))
        assert new != handles[0] and (new & 0xFFFFFFFF) == (handles[0] & 0xFFFFFFFF)
        with pytest.raises(OSError):
            t.get(handles[0])
        with pytest.raises(OSError):
            t.remove(handles[0])
        t.clear()
        assert t.count == 0

    def test_borrowed_fd_survives_remove_until_returned(self):
        t = HandleTable(4)
        fd = os.open("/dev/null", os.O_RDONLY)
        fh = t.add(fd)
        with t.borrow(fh) as borrowed:
            t.remove(fh)
            os.fstat(borrowed)  # still open
        with pytest.raises(OSError):
            os.fstat(fd)
