"""Closed-loop FUSE load on a started frontend, driven in C by :class:`_lean.LeanQueue`.

    load = LeanLoad(frontend, queue=1, op="READ", depth=32, nodeid=node, fh=fh, size=4096,
                    file_size=64 << 20)
    result = load.run(2.0)      # {"requests", "wall_s", "driver_cpu_s", "kicks", "sleeps", ...}
    load.close()

Chains are laid out as Linux's virtiofs driver lays them out: the in header and each in-argument
in descriptors of their own, data split into page-sized descriptors, the out header and each
out-argument separate, all in an indirect table when VIRTIO_RING_F_INDIRECT_DESC is negotiated.
The queue must be idle (nothing in flight from the Python driver); afterwards the Python driver
carries on from the indices the run left.
"""

import ctypes
import errno
import os
import random

from fastvfs.fuse import abi
from fastvfs.fuse.abi import Opcode
from fastvfs_testing import virtq
from fastvfs_testing._lean import MALFORMED, LeanQueue

PAGE_SIZE = 4096
FIRST_UNIQUE = 1 << 40


def _host_address(memory, gpa, length):
    region, offset = memory.locate(gpa, length)
    anchor = ctypes.c_char.from_buffer(region.map)
    try:
        return ctypes.addressof(anchor) + offset
    finally:
        del anchor   # drop the buffer export at once, or the mapping could not be closed


def _pages(gpa, length):
    return [(gpa + i, min(PAGE_SIZE, length - i)) for i in range(0, length, PAGE_SIZE)]


def _scattered_order(count, rng):
    """A shuffled order of ``count`` pages in which no page is followed by the one after it in
    memory (so no two consecutive buffers of a request are adjacent)."""
    order = list(range(count))
    while True:
        rng.shuffle(order)
        if all(b != a + 1 for a, b in zip(order, order[1:])):
            return order


class LeanLoad:
    """``depth`` requests kept in flight on ``frontend.queues[queue]``: copies of one request,
    or the given ones (RAW).

    ``op``: "GETATTR", "LOOKUP" (``name`` in ``nodeid``), "READ" or "WRITE" (``size`` bytes at
    random ``size``-aligned offsets below ``file_size`` of handle ``fh``), or "RAW": the
    requests given, ``requests`` being ``(opcode, nodeid, in-arguments, reply_len, data_len)``
    (the fixed out-arguments' size and the data area's, as ``FuseClient.submit`` takes them),
    chain ``i`` repeating ``requests[i % len(requests)]`` unchanged; its replies may be of any
    length up to that room, and ``ok_error`` (a negative errno) counts as an answer as 0 does.
    Or "CYCLE": ``depth`` cycles of dependent requests, cycle ``i`` running
    ``programs[i % len(programs)]``, a list of steps ``(opcode, nodeid, in-arguments, data,
    reply_len, data_len, noreply, patches)``, each step a chain of its own sent when the one
    before it is answered (the first after the last); ``patches``: ``(step, reply_offset,
    request_offset)``, the 8 bytes at ``reply_offset`` of the fixed out-arguments of the
    cycle's latest answer to ``step`` (an earlier one) copied to ``request_offset`` of this
    step's request (its in header, then its in-arguments) before it is sent; a ``noreply``
    step (FORGET) has no writable part.  Every step must succeed.
    ``publish_each``:
    publish every request on its own and decide the kick for each, as the Linux guest does,
    instead of once per round of completions reaped.  ``pages``: where the data pages of READ
    and WRITE lie in guest memory: "contiguous" (one after the other, as a driver that
    allocates them together has them) or "scattered" (shuffled, no page followed by its
    neighbour in memory, as a guest's page cache has them).
    """

    def __init__(self, frontend, queue, op, depth, *, nodeid=0, fh=0, size=0, file_size=0,
                 name=b"data", seed=1, uid=0, gid=0, publish_each=False, pages="contiguous",
                 requests=(), ok_error=0, programs=()):
        if pages not in ("contiguous", "scattered"):
            raise ValueError(f"pages must be contiguous or scattered, not {pages!r}")
        self.scatter = random.Random(seed) if pages == "scattered" else None
        self.memory = frontend.memory
        self.vq = vq = frontend.queues[queue]
        if vq.in_flight or vq.published_idx != vq.avail_idx:
            raise RuntimeError("the queue must be idle before a lean run")
        chains = depth * max(len(programs[i % len(programs)]) for i in range(depth)) \
            if programs else depth
        if chains > vq.size:
            raise ValueError(f"{chains} chains exceed the queue size {vq.size}")
        self.owned = []
        self.desc_slots = []
        slots = []
        if (op == "RAW") != bool(requests):
            raise ValueError("requests are given with op RAW, and only then")
        if (op == "CYCLE") != bool(programs):
            raise ValueError("programs are given with op CYCLE, and only then")
        payload = os.urandom(size) if op == "WRITE" else b""
        try:
            for i in range(depth if op != "CYCLE" else 0):
                if op == "RAW":
                    opcode, node, body, reply_len, data_len = requests[i % len(requests)]
                    form = (opcode, node, body, b"", reply_len, data_len, 0)
                else:
                    form = self._form(op, nodeid, fh, size, name, payload)
                slots.append(self._build(op, form, uid, gid)[:5])
            for i in range(depth if op == "CYCLE" else 0):
                slots += self._cycle(programs[i % len(programs)], uid, gid)
            span = max(1, file_size // size) if size else 1
            self.lean = LeanQueue(
                _host_address(self.memory, vq.avail_addr, virtq.avail_ring_size(vq.size)),
                _host_address(self.memory, vq.used_addr, virtq.used_ring_size(vq.size)),
                vq.size, vq.event_idx, vq.kick_fd, vq.call_fd, vq.avail_idx, vq.last_used_idx,
                slots, span, size, FIRST_UNIQUE + queue, seed, publish_each, ok_error)
        except BaseException:
            self.close()
            raise

    def _alloc(self, data_or_len, align=8):
        length = data_or_len if isinstance(data_or_len, int) else len(data_or_len)
        gpa = self.memory.alloc(length, align)
        self.owned.append(gpa)
        if not isinstance(data_or_len, int):
            self.memory.write(gpa, data_or_len)
        return gpa

    def _data(self, data_or_len):
        """Data pages for a request: ``(gpa, length)`` descriptors, in the layout asked for."""
        length = data_or_len if isinstance(data_or_len, int) else len(data_or_len)
        if self.scatter is None:
            return _pages(self._alloc(data_or_len, PAGE_SIZE), length)
        pieces = _pages(0, length)
        block = self._alloc(len(pieces) * PAGE_SIZE, PAGE_SIZE)
        order = _scattered_order(len(pieces), self.scatter)
        out = []
        for (start, n), slot in zip(pieces, order):
            gpa = block + slot * PAGE_SIZE
            if not isinstance(data_or_len, int):
                self.memory.write(gpa, data_or_len[start:start + n])
            out.append((gpa, n))
        return out

    @staticmethod
    def _form(op, nodeid, fh, size, name, payload):
        """``(opcode, nodeid, in-arguments, data out, reply_len, data_len, expected reply
        length or 0)`` of one of the named requests."""
        if op == "GETATTR":
            return Opcode.GETATTR, nodeid, abi.getattr_in.pack(0, 0, 0), b"", \
                abi.ATTR_OUT_SIZE, 0, abi.OUT_HEADER_SIZE + abi.ATTR_OUT_SIZE
        if op == "LOOKUP":
            return Opcode.LOOKUP, nodeid, name + b"\0", b"", abi.ENTRY_OUT_SIZE, 0, \
                abi.OUT_HEADER_SIZE + abi.ENTRY_OUT_SIZE
        if op == "READ":
            return Opcode.READ, nodeid, abi.read_in.pack(fh, 0, size, 0, 0, 0, 0), b"", 0, \
                size, abi.OUT_HEADER_SIZE + size
        if op == "WRITE":
            return Opcode.WRITE, nodeid, abi.write_in.pack(fh, 0, size, 0, 0, 0, 0), payload, \
                abi.write_out.size, 0, abi.OUT_HEADER_SIZE + abi.write_out.size
        raise ValueError(f"no lean form of {op}")

    def _cycle(self, program, uid, gid):
        """The chains of one cycle, as ``LeanQueue`` takes them."""
        built = []
        for opcode, nodeid, body, data, reply_len, data_len, noreply, _ in program:
            if noreply and (reply_len or data_len):
                raise ValueError("a step with no reply has no room for one")
            form = (opcode, nodeid, body, data, reply_len, data_len, 0)
            built.append(self._build("CYCLE", form, uid, gid, noreply))
        slots = []
        for i, (step, chain) in enumerate(zip(program, built)):
            patches = []
            for src, reply_offset, request_offset in step[7]:
                if not 0 <= src < i or reply_offset + 8 > program[src][4]:
                    raise ValueError(f"step {i} takes from no earlier reply: {src}")
                if request_offset + 8 > abi.IN_HEADER_SIZE + len(step[2]) or \
                        abi.IN_HEADER_SIZE - 8 < request_offset < abi.IN_HEADER_SIZE:
                    raise ValueError(f"step {i}: no 8 bytes at offset {request_offset}")
                header, args = chain[1], chain[5]
                dst = (header + request_offset if request_offset < abi.IN_HEADER_SIZE
                       else args + request_offset - abi.IN_HEADER_SIZE)
                patches.append((built[src][6] + reply_offset, dst))
            nxt = built[(i + 1) % len(built)][0]
            slots.append((*chain[:5], nxt, i == 0, i == len(built) - 1, patches))
        return slots

    def _build(self, op, form, uid, gid, noreply=False):
        """``(head, request, offset field, out header, expected length, in-arguments, fixed
        out-arguments)``: host addresses, 0 where absent (the first five as ``LeanQueue``
        takes a chain)."""
        opcode, nodeid, body, payload, reply_len, data_len, total = form
        header = abi.in_header.pack(abi.IN_HEADER_SIZE + len(body) + len(payload), opcode, 0,
                                    nodeid, uid, gid, 0, 0, 0)
        req = self._alloc(header)
        readable = [(req, len(header))] + ([(self._alloc(body), len(body))] if body else [])
        if payload:
            readable += self._data(payload)
        out = args = 0
        writable = []
        if not noreply:
            out = self._alloc(abi.OUT_HEADER_SIZE)
            writable = [(out, abi.OUT_HEADER_SIZE)]
        if reply_len:
            args = self._alloc(reply_len)
            writable.append((args, reply_len))
        if data_len:
            writable += self._data(data_len)
        entries = [(a, n, 0) for a, n in readable] + \
                  [(a, n, virtq.VRING_DESC_F_WRITE) for a, n in writable]
        vq = self.vq
        if vq.indirect_desc:
            table = self._alloc(virtq.desc_table_size(len(entries)), virtq.DESC_ALIGN)
            indices, where = list(range(len(entries))), table
            head, = vq.alloc_desc(1)
            self.desc_slots.append(head)
            vq.write_desc(head, table, virtq.desc_table_size(len(entries)),
                          virtq.VRING_DESC_F_INDIRECT)
        else:
            indices, where = vq.alloc_desc(len(entries)), None
            self.desc_slots += indices
            head = indices[0]
        for i, (addr, length, flags) in enumerate(entries):
            nxt = 0
            if i + 1 < len(entries):
                flags |= virtq.VRING_DESC_F_NEXT
                nxt = indices[i + 1]
            vq.write_desc(indices[i], addr, length, flags, nxt, where)
        offset_addr = 0
        if op in ("READ", "WRITE"):
            body_gpa = readable[1][0]
            offset_addr = _host_address(self.memory, body_gpa + 8, 8)
        return (head, _host_address(self.memory, req, len(header)), offset_addr,
                _host_address(self.memory, out, abi.OUT_HEADER_SIZE) if out else 0, total,
                _host_address(self.memory, readable[1][0], len(body)) if body else 0,
                _host_address(self.memory, args, reply_len) if args else 0)

    def run(self, seconds, max_requests=0):
        """Keep the requests in flight for ``seconds`` (or ``max_requests`` answers)."""
        try:
            result = self.lean.run(seconds, max_requests)
        finally:
            vq = self.vq
            vq.avail_idx = vq.published_idx = self.lean.avail_idx
            vq.last_used_idx = self.lean.last_used_idx
        if result["errors"]:
            first = result["first_error"]
            if first == MALFORMED or first == 0:
                what = "a malformed reply" if first else "success where an error was expected"
                raise OSError(errno.EPROTO, f"{result['errors']} requests failed (the first: "
                                            f"{what})")
            raise OSError(-first, f"{result['errors']} requests failed (first: "
                                  f"{os.strerror(-first)})")
        return result

    def close(self):
        if self.desc_slots:
            self.vq.free_desc(self.desc_slots)
            self.desc_slots = []
        for gpa in self.owned:
            self.memory.free(gpa)
        self.owned = []
