"""Driver side of a split virtqueue (virtio 1.x, section 2.7 "Split Virtqueues").

:class:`DriverVirtqueue` does what the guest's virtio driver does: it owns the descriptor table, the
available ring and the used ring in guest memory, builds descriptor chains, publishes them, decides
whether the device needs a kick, and reaps the used ring.  Layout, all little-endian
(``linux/virtio_ring.h``)::

    descriptor table (align 16): num x {le64 addr, le32 len, le16 flags, le16 next}
    available ring   (align 2):  le16 flags, le16 idx, le16 ring[num], le16 used_event
    used ring        (align 4):  le16 flags, le16 idx, {le32 id, le32 len}[num], le16 avail_event

``used_event`` / ``avail_event`` exist only in meaning when VIRTIO_RING_F_EVENT_IDX is negotiated,
but the space is always allocated, as the spec's size formulas do.

Memory ordering.  The device runs in another process on another CPU.  On x86-64 (TSO) stores become
visible in program order and loads are not reordered with older loads, so the write barrier before
publishing ``avail->idx`` and the read barrier after loading ``used->idx`` need nothing beyond
program order, which CPython keeps.  The one reordering TSO allows, a later load passing an earlier
store, matters twice: after publishing ``avail->idx`` before reading ``avail_event``/``used->flags``
(the notify decision) and after writing ``used_event`` before re-reading ``used->idx``.  Both sites
call :func:`full_barrier` (the ``virtio_mb()`` of Linux's virtio_ring.c).

Beyond the well-behaved path the class offers raw access for negative tests of a device:
:meth:`write_desc` writes any descriptor (bad addresses, loops, out-of-range ``next``, nested
indirect tables, zero lengths, writable before readable), :meth:`alloc_desc`/:meth:`free_desc`
reserve table slots for such chains, and :meth:`publish_raw` places arbitrary head indices in the
available ring.
"""

import os
import select
import struct
import threading
import time
from dataclasses import dataclass
from typing import Optional

VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
VRING_USED_F_NO_NOTIFY = 1
# virtio 2.7: split queue sizes are powers of two up to 32768.
VIRTQUEUE_MAX_SIZE = 32768

vring_desc = struct.Struct("<QIHH")  # addr len flags next
vring_used_elem = struct.Struct("<II")  # id len
le16 = struct.Struct("<H")

DESC_ALIGN = 16
AVAIL_ALIGN = 2
USED_ALIGN = 4
RING_HEADER_SIZE = 4  # flags + idx


class VirtqueueError(Exception):
    """The device broke the split-ring contract (bad used id, length or index)."""


def desc_table_size(num):
    return vring_desc.size * num


def avail_ring_size(num):
    return RING_HEADER_SIZE + le16.size * num + le16.size


def used_ring_size(num):
    return RING_HEADER_SIZE + vring_used_elem.size * num + le16.size


def used_event_offset(num):
    """Offset of ``used_event`` inside the available ring (it follows ``ring[num]``)."""
    return RING_HEADER_SIZE + le16.size * num


def avail_event_offset(num):
    """Offset of ``avail_event`` inside the used ring (it follows ``ring[num]``)."""
    return RING_HEADER_SIZE + vring_used_elem.size * num


def vring_need_event(event_idx, new_idx, old_idx):
    """virtio 2.7.10/2.7.13: notify iff ``event_idx`` lies in ``[old_idx, new_idx)`` modulo 2^16.

    The other side asked to be notified once the index moves past ``event_idx``; publishing entries
    ``old_idx .. new_idx - 1`` crosses it exactly when this holds.
    """
    return ((new_idx - event_idx - 1) & 0xFFFF) < ((new_idx - old_idx) & 0xFFFF)


_barrier_lock = threading.Lock()


def full_barrier():
    """Order this thread's earlier stores before its later loads, for another process's eyes.

    CPython exposes no fence.  Taking and dropping an uncontended lock runs glibc's semaphore fast
    paths, each a LOCK-prefixed read-modify-write, and on x86-64 every locked instruction is a full
    barrier (Intel SDM vol. 3, 9.2.2).
    """
    with _barrier_lock:
        pass


@dataclass(eq=False)
class Chain:
    """A chain the driver built and still owns: table slots, bounce buffers, writable parts."""

    head: int
    slots: list
    owned: list  # GPAs allocated for this chain, freed on detach
    writable: list  # (gpa, len) in chain order
    written: Optional[int] = None  # the used length, once reaped


class DriverVirtqueue:
    """Guest-side split virtqueue number ``index`` of ``size`` entries inside ``memory``.

    ``event_idx`` and ``indirect_desc`` say whether VIRTIO_RING_F_EVENT_IDX and
    VIRTIO_RING_F_INDIRECT_DESC were negotiated.  ``base`` is the initial ring index (what
    SET_VRING_BASE will carry); both ``avail->idx`` and ``used->idx`` start there, as after a
    migration, so tests can cover the 16-bit wrap-around by starting near 65535.  ``region`` pins
    the ring structures into one memory region.

    ``kick_fd`` (driver -> device) and ``call_fd`` (device -> driver) are non-blocking eventfds for
    SET_VRING_KICK / SET_VRING_CALL.  Not thread-safe: one thread drives a queue.
    """

    def __init__(self, memory, index, size, *, event_idx=True, indirect_desc=True, base=0,
                 region=None):
        if not 0 < size <= VIRTQUEUE_MAX_SIZE or size & (size - 1):
            raise ValueError(f"queue size {size} is not a power of two in 1..{VIRTQUEUE_MAX_SIZE}")
        self.memory = memory
        self.index = index
        self.size = size
        self.event_idx = event_idx
        self.indirect_desc = indirect_desc
        self.desc_addr = memory.alloc(desc_table_size(size), DESC_ALIGN, region)
        self.avail_addr = memory.alloc(avail_ring_size(size), AVAIL_ALIGN, region)
        self.used_addr = memory.alloc(used_ring_size(size), USED_ALIGN, region)
        for addr, length in ((self.desc_addr, desc_table_size(size)),
                             (self.avail_addr, avail_ring_size(size)),
                             (self.used_addr, used_ring_size(size))):
            memory.write(addr, bytes(length))
        # The rings never move, so resolve their places in the mappings once.
        self._desc_map, self._desc_off = self._resolve(self.desc_addr, desc_table_size(size))
        self._avail_map, self._avail_off = self._resolve(self.avail_addr, avail_ring_size(size))
        self._used_map, self._used_off = self._resolve(self.used_addr, used_ring_size(size))
        # The available ring as 16-bit words: the index, ring entries and used_event must each
        # be written with one 16-bit store, as a guest does (struct.pack_into writes byte by
        # byte, and a device reading in between would see an index that never existed).
        self._avail16 = memoryview(self._avail_map)[
            self._avail_off:self._avail_off + avail_ring_size(size)].cast("H")
        self._used16 = memoryview(self._used_map)[
            self._used_off:self._used_off + used_ring_size(size)].cast("H")
        self.kick_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.call_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._free = list(range(size - 1, -1, -1))  # a stack: pop() hands out 0, 1, 2, ...
        self._inflight = {}  # head -> Chain, or None for chains published with publish_raw
        self._completed = {}  # head -> Chain reaped from the used ring, awaiting detach
        self.reset(base)

    def _resolve(self, gpa, length):
        region, offset = self.memory.locate(gpa, length)
        return region.map, offset

    # -- indices -------------------------------------------------------------------------------

    def reset(self, base=0):
        """Restart the ring indices at ``base`` (the value the next SET_VRING_BASE carries).

        Only valid while nothing is in flight.  The ring memory is left as a previous device
        incarnation that had completed everything up to ``base`` would leave it (the state after a
        migration): ``avail->idx = used->idx = base``, so a backend taking its used index from
        memory and one taking it from SET_VRING_BASE agree, and ``used_event = avail_event = base``,
        so with EVENT_IDX the first new entry triggers a notification in both directions.
        """
        if self._inflight or self._completed:
            raise RuntimeError("cannot reset a virtqueue with chains in flight")
        self.base = base & 0xFFFF
        self.avail_idx = self.base  # next free slot in the available ring (not yet published)
        self.published_idx = self.base  # what avail->idx holds
        self.last_used_idx = self.base  # next used entry to reap
        self._avail16[1] = self.base
        le16.pack_into(self._used_map, self._used_off + 2, self.base)
        self._avail16[used_event_offset(self.size) // 2] = self.base
        le16.pack_into(self._used_map, self._used_off + avail_event_offset(self.size), self.base)

    @property
    def num_free(self):
        return len(self._free)

    @property
    def in_flight(self):
        """Chains published or pending publication and not yet reaped."""
        return len(self._inflight)

    # -- building chains ----------------------------------------------------------------------

    def add_chain(self, readable, writable_lens, indirect=False):
        """Build a chain and queue its head in the available ring (visible after :meth:`publish`).

        ``readable`` items are bytes-like (copied into fresh guest buffers) or ``(gpa, length)``
        pairs referring to guest memory the caller owns; ``writable_lens`` gives the size of each
        device-writable buffer, allocated here.  Readable descriptors come first, as virtio 2.7.4
        requires.  With ``indirect`` the chain lives in an indirect table (virtio 2.7.5.3) and uses
        one slot of the ring's table.  Returns the head index.  Raises MemoryError when the table or
        guest memory is full (nothing is leaked in that case).
        """
        count = len(readable) + len(writable_lens)
        if count == 0:
            raise ValueError("empty descriptor chain")
        if count > self.size:
            raise ValueError(f"chain of {count} descriptors exceeds the queue size {self.size}")
        if indirect and not self.indirect_desc:
            raise ValueError("VIRTIO_RING_F_INDIRECT_DESC was not negotiated")
        slots_needed = 1 if indirect else count
        if slots_needed > len(self._free):
            raise MemoryError(f"virtqueue {self.index}: {len(self._free)} free descriptors, "
                              f"{slots_needed} needed")
        owned = []
        try:
            entries = []  # (addr, len, flags) in chain order
            for item in readable:
                if isinstance(item, tuple):
                    addr, length = item
                else:
                    length = len(item)
                    addr = self.memory.alloc(length)
                    owned.append(addr)
                    self.memory.write(addr, item)
                entries.append((addr, length, 0))
            writable = []
            for length in writable_lens:
                addr = self.memory.alloc(length)
                owned.append(addr)
                writable.append((addr, length))
                entries.append((addr, length, VRING_DESC_F_WRITE))
            if indirect:
                table = self.memory.alloc(desc_table_size(count), DESC_ALIGN)
                owned.append(table)
        except MemoryError:
            for addr in owned:
                self.memory.free(addr)
            raise

        slots = [self._free.pop() for _ in range(slots_needed)]
        if indirect:
            # Indirect tables are indexed from 0 and chained through their own ``next`` fields.
            self._write_entries(table, range(count), entries)
            self.write_desc(slots[0], table, desc_table_size(count), VRING_DESC_F_INDIRECT)
        else:
            self._write_entries(self.desc_addr, slots, entries)
        head = slots[0]
        self._inflight[head] = Chain(head, slots, owned, writable)
        self._queue_head(head)
        return head

    def _write_entries(self, table, indices, entries):
        indices = list(indices)
        for i, (addr, length, flags) in enumerate(entries):
            nxt = 0
            if i + 1 < len(entries):
                flags |= VRING_DESC_F_NEXT
                nxt = indices[i + 1]
            self.write_desc(indices[i], addr, length, flags, nxt, table)

    def _queue_head(self, head):
        slot = self.avail_idx % self.size
        self._avail16[RING_HEADER_SIZE // 2 + slot] = head
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF

    # -- publishing and notifying -------------------------------------------------------------

    def publish(self, notify=True):
        """Expose queued heads to the device and kick it if it wants a notification.

        Returns whether the device asked to be notified (and, with ``notify``, was kicked).  With
        EVENT_IDX the decision is ``vring_need_event(avail_event, new, old)`` (virtio 2.7.10),
        otherwise the device's VRING_USED_F_NO_NOTIFY flag (virtio 2.7.7).
        """
        old, new = self.published_idx, self.avail_idx
        if old == new:
            return False
        # The ring entries were stored before this point; TSO keeps them ahead of the index.
        self._avail16[1] = new
        self.published_idx = new
        # The index store must be visible before we look at the device's suppression state, or
        # both sides may conclude the other will act (virtio 2.7.13 "Notifying the device").
        full_barrier()
        if self.event_idx:
            avail_event = self._used16[avail_event_offset(self.size) // 2]
            needed = vring_need_event(avail_event, new, old)
        else:
            used_flags = self._used16[0]
            needed = not used_flags & VRING_USED_F_NO_NOTIFY
        if needed and notify:
            self.kick()
        return needed

    @property
    def avail_event(self):
        """The device's ``avail_event`` (virtio 2.7.10): the avail index it asks a kick at."""
        return self._used16[avail_event_offset(self.size) // 2]

    def kick(self):
        os.eventfd_write(self.kick_fd, 1)

    # -- reaping --------------------------------------------------------------------------------

    def used_idx(self):
        return self._used16[1]

    def get_used(self):
        """Reap new used elements; returns ``[(id, written_len), ...]`` in used-ring order.

        Reaped chains keep their descriptors and buffers until :meth:`detach`.  With EVENT_IDX this
        re-arms the interrupt by writing ``used_event = last_used_idx`` and re-checks the ring
        afterwards (Linux's ``virtqueue_enable_cb``), so when it returns empty-handed the device is
        bound to signal ``call_fd`` for the next completion.
        """
        reaped = []
        while True:
            used_idx = self.used_idx()
            pending = (used_idx - self.last_used_idx) & 0xFFFF
            if pending > len(self._inflight):
                raise VirtqueueError(
                    f"virtqueue {self.index}: used->idx {used_idx} is {pending} ahead of "
                    f"{self.last_used_idx} with only {len(self._inflight)} chains in flight")
            # Loads are not reordered with older loads on x86-64: the entries read below are at
            # least as new as used->idx (the read barrier of virtio 2.7.14).
            for _ in range(pending):
                offset = (self._used_off + RING_HEADER_SIZE
                          + vring_used_elem.size * (self.last_used_idx % self.size))
                head, length = vring_used_elem.unpack_from(self._used_map, offset)
                self.last_used_idx = (self.last_used_idx + 1) & 0xFFFF
                self._complete(head, length)
                reaped.append((head, length))
            if not self.event_idx:
                return reaped
            self._avail16[used_event_offset(self.size) // 2] = self.last_used_idx
            # used_event must be visible before the re-check, or a completion landing in between
            # would neither be seen here nor signalled.
            full_barrier()
            if self.used_idx() == self.last_used_idx:
                return reaped

    def _complete(self, head, length):
        if head not in self._inflight:
            raise VirtqueueError(f"virtqueue {self.index}: device used id {head}, not in flight")
        chain = self._inflight.pop(head)
        if chain is None:
            return
        capacity = sum(size for _, size in chain.writable)
        if length > capacity:
            raise VirtqueueError(f"virtqueue {self.index}: device claims {length} bytes written "
                                 f"into chain {head} with {capacity} writable bytes")
        chain.written = length
        self._completed[head] = chain

    def detach(self, head):
        """Release a reaped chain; return the contents of its writable buffers, in chain order.

        The device fills writable buffers in order (virtio 2.7.8: ``len`` is the total written),
        so buffer *i* holds ``min(its size, what is left of len)`` bytes.
        """
        chain = self._completed.pop(head)
        contents = []
        remaining = chain.written
        for addr, size in chain.writable:
            take = min(size, remaining)
            contents.append(self.memory.read(addr, take))
            remaining -= take
        for addr in chain.owned:
            self.memory.free(addr)
        self._free.extend(reversed(chain.slots))
        return contents

    def wait_call(self, timeout):
        """Wait up to ``timeout`` seconds for the device to signal ``call_fd``; drain it.

        Returns False on timeout.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                os.eventfd_read(self.call_fd)
                return True
            except BlockingIOError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                select.select([self.call_fd], [], [], remaining)

    # -- raw access for negative tests --------------------------------------------------------

    def write_desc(self, index, addr, length, flags=0, next=0, table=None):
        """Write descriptor ``index`` of ``table`` (a GPA; default: this ring's table) verbatim."""
        if table is None:
            vring_desc.pack_into(self._desc_map, self._desc_off + vring_desc.size * index,
                                 addr, length, flags, next)
        else:
            self.memory.write(table + vring_desc.size * index,
                              vring_desc.pack(addr, length, flags, next))

    def alloc_desc(self, count=1):
        """Take ``count`` slots of the ring's table for hand-written chains."""
        if count > len(self._free):
            raise MemoryError(f"virtqueue {self.index}: only {len(self._free)} free descriptors")
        return [self._free.pop() for _ in range(count)]

    def free_desc(self, slots):
        """Give back slots taken with :meth:`alloc_desc`."""
        self._free.extend(slots)

    def publish_raw(self, heads, notify=True):
        """Place arbitrary head values in the available ring and publish them.

        The heads count as in flight, so the device may return them in the used ring; the caller
        owns the descriptors and any buffers they point to.
        """
        for head in heads:
            self._inflight[head] = None
            self._queue_head(head)
        return self.publish(notify)

    def close(self):
        """Close the eventfds and return the rings and every chain's buffers to guest memory."""
        self._avail16.release()
        self._used16.release()
        os.close(self.kick_fd)
        os.close(self.call_fd)
        for chain in [*self._inflight.values(), *self._completed.values()]:
            for addr in chain.owned if chain else ():
                self.memory.free(addr)
        self._inflight.clear()
        self._completed.clear()
        for addr in (self.desc_addr, self.avail_addr, self.used_addr):
            self.memory.free(addr)
