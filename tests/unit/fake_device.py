"""The device half of a split virtqueue, just enough to drive the project's guest-side driver in
unit tests: it walks published chains (direct or indirect), hands their readable bytes to a
responder and writes the responder's answer into the writable buffers before pushing the used
element."""

from fastvfs_testing import virtq
from fastvfs_testing.virtq import (
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, le16, vring_desc, vring_used_elem)


class FakeDevice:
    def __init__(self, queue):
        self.queue = queue
        self.memory = queue.memory
        self.last_avail = queue.base
        self.used_idx = queue.base

    def u16(self, addr):
        return le16.unpack(self.memory.read(addr, 2))[0]

    def chain(self, head):
        """The chain at ``head`` as ``[(addr, len, flags)]``, following an indirect table."""
        table, index = self.queue.desc_addr, head
        entries = []
        while True:
            addr, length, flags, nxt = vring_desc.unpack(
                self.memory.read(table + vring_desc.size * index, vring_desc.size))
            if flags & VRING_DESC_F_INDIRECT:
                table, index = addr, 0
                continue
            entries.append((addr, length, flags))
            if not flags & VRING_DESC_F_NEXT:
                return entries
            index = nxt

    def pop(self):
        """Take the next available head, or None."""
        if self.last_avail == self.u16(self.queue.avail_addr + 2):
            return None
        slot = self.last_avail % self.queue.size
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        return self.u16(self.queue.avail_addr + 4 + 2 * slot)

    def process(self, respond):
        """Complete every available chain.  ``respond(readable bytes, chain)`` returns the bytes to
        write (at most the writable capacity).  Returns ``[(head, written)]``."""
        done = []
        while (head := self.pop()) is not None:
            entries = self.chain(head)
            request = b"".join(self.memory.read(addr, length)
                               for addr, length, flags in entries
                               if not flags & VRING_DESC_F_WRITE)
            answer = respond(request, entries)
            pos = 0
            for addr, length, flags in entries:
                if flags & VRING_DESC_F_WRITE and pos < len(answer):
                    piece = answer[pos:pos + length]
                    self.memory.write(addr, piece)
                    pos += len(piece)
            self.push(head, pos)
            done.append((head, pos))
        return done

    def fill(self, pattern=b"\x5a", limit=None):
        """Complete every available chain writing ``pattern`` bytes, up to ``limit`` per chain."""
        def respond(_, entries):
            capacity = sum(length for _, length, flags in entries if flags & VRING_DESC_F_WRITE)
            return pattern * (capacity if limit is None else min(capacity, limit))
        return self.process(respond)

    def push(self, head, written):
        used = self.queue.used_addr
        self.memory.write(used + 4 + 8 * (self.used_idx % self.queue.size),
                          vring_used_elem.pack(head, written))
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        self.memory.write(used + 2, le16.pack(self.used_idx))

    def set_avail_event(self, value):
        self.memory.write(self.queue.used_addr + virtq.avail_event_offset(self.queue.size),
                          le16.pack(value))

    def set_used_flags(self, value):
        self.memory.write(self.queue.used_addr, le16.pack(value))

    def used_event(self):
        return self.u16(self.queue.avail_addr + virtq.used_event_offset(self.queue.size))
