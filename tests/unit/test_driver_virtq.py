"""The guest-side split virtqueue driver, checked against the layout of virtio 1.x section 2.7 and
the minimal device of ``fake_device``; no backend needed."""

import os
import struct

import pytest

from fastvfs_testing import virtq
from fastvfs_testing.guestmem import GuestMemory
from fastvfs_testing.virtq import (
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
    DriverVirtqueue, VirtqueueError, le16, vring_desc, vring_need_event, vring_used_elem)
from tests.unit.fake_device import FakeDevice


@pytest.fixture
def memory():
    with GuestMemory([(0, 4 << 20)]) as mem:
        yield mem


def make_queue(memory, size=8, **options):
    return DriverVirtqueue(memory, 1, size, **options)


def kicks(queue):
    try:
        return os.eventfd_read(queue.kick_fd)
    except BlockingIOError:
        return 0


# -- layout ---------------------------------------------------------------------------------

def test_struct_sizes():
    assert vring_desc.size == 16
    assert vring_used_elem.size == 8


@pytest.mark.parametrize("num", [1, 8, 128, 256, 1024, 32768])
def test_ring_sizes_and_event_offsets(num):
    # virtio 2.7: the sizes of the three parts and where the event fields sit.
    assert virtq.desc_table_size(num) == 16 * num
    assert virtq.avail_ring_size(num) == 6 + 2 * num
    assert virtq.used_ring_size(num) == 6 + 8 * num
    assert virtq.used_event_offset(num) == 4 + 2 * num == virtq.avail_ring_size(num) - 2
    assert virtq.avail_event_offset(num) == 4 + 8 * num == virtq.used_ring_size(num) - 2
    # The legacy contiguous layout (Linux vring_size) is the same parts, padded.
    align = 4096
    legacy = ((16 * num + 2 * (3 + num) + align - 1) & ~(align - 1)) + 2 * 3 + 8 * num
    padded = (virtq.desc_table_size(num) + virtq.avail_ring_size(num) + align - 1) & ~(align - 1)
    assert legacy == padded + virtq.used_ring_size(num)


def test_queue_placement_and_initial_state(memory):
    queue = make_queue(memory, 256, base=1234)
    assert queue.desc_addr % virtq.DESC_ALIGN == 0
    assert queue.avail_addr % virtq.AVAIL_ALIGN == 0
    assert queue.used_addr % virtq.USED_ALIGN == 0
    device = FakeDevice(queue)
    assert device.u16(queue.avail_addr + 2) == 1234
    assert device.u16(queue.used_addr + 2) == 1234
    assert device.used_event() == 1234
    assert device.u16(queue.used_addr + virtq.avail_event_offset(256)) == 1234
    assert queue.num_free == 256


@pytest.mark.parametrize("size", [0, 3, 100, 65536])
def test_queue_size_must_be_power_of_two(memory, size):
    with pytest.raises(ValueError):
        make_queue(memory, size)


@pytest.mark.parametrize("event, new, old, expected", [
    (0, 1, 0, True),          # fresh ring: the first entry notifies
    (4, 5, 4, True),          # exactly crossing the requested index
    (5, 5, 4, False),         # not there yet
    (3, 5, 4, False),         # already passed before this batch
    (3, 10, 0, True),         # a batch spanning the index
    (65535, 0, 65535, True),  # crossing at the wrap
    (65534, 2, 65533, True),  # batch spanning the wrap
    (1, 2, 65533, True),
    (2, 2, 65533, False),
    (10, 10, 10, False),      # empty batch never notifies
])
def test_vring_need_event(event, new, old, expected):
    assert vring_need_event(event, new, old) is expected


# -- building chains ------------------------------------------------------------------------

def test_direct_chain_layout(memory):
    queue = make_queue(memory)
    caller_buffer = memory.alloc(32)
    head = queue.add_chain([b"header", (caller_buffer, 32)], [16, 100])
    device = FakeDevice(queue)
    entries = device.chain(head)
    assert [(length, flags) for _, length, flags in entries] == [
        (6, VRING_DESC_F_NEXT), (32, VRING_DESC_F_NEXT),
        (16, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT), (100, VRING_DESC_F_WRITE)]
    assert memory.read(entries[0][0], 6) == b"header"
    assert entries[1][0] == caller_buffer
    assert queue.num_free == 4
    # Queued in the ring but not published yet.
    assert device.u16(queue.avail_addr + 4) == head
    assert device.u16(queue.avail_addr + 2) == 0


def test_indirect_chain_layout(memory):
    queue = make_queue(memory, indirect_desc=True)
    head = queue.add_chain([b"a", b"bb"], [3], indirect=True)
    addr, length, flags, _ = vring_desc.unpack(
        memory.read(queue.desc_addr + 16 * head, 16))
    assert flags == VRING_DESC_F_INDIRECT and length == 3 * 16
    table = [vring_desc.unpack(memory.read(addr + 16 * i, 16)) for i in range(3)]
    assert [(t[1], t[2], t[3]) for t in table] == [
        (1, VRING_DESC_F_NEXT, 1), (2, VRING_DESC_F_NEXT, 2), (3, VRING_DESC_F_WRITE, 0)]
    assert queue.num_free == 7


def test_indirect_requires_feature(memory):
    with pytest.raises(ValueError):
        make_queue(memory, indirect_desc=False).add_chain([b"x"], [], indirect=True)


def test_chain_limits(memory):
    queue = make_queue(memory, 4)
    with pytest.raises(ValueError):
        queue.add_chain([], [])
    with pytest.raises(ValueError):
        queue.add_chain([b"x"] * 5, [])
    queue.add_chain([b"x"] * 3, [])
    before = memory.bytes_allocated
    with pytest.raises(MemoryError):
        queue.add_chain([b"y"] * 2, [])
    assert memory.bytes_allocated == before


# -- notifications -------------------------------------------------------------------------

def test_publish_with_event_idx(memory):
    queue = make_queue(memory, event_idx=True)
    device = FakeDevice(queue)
    queue.add_chain([b"1"], [])
    assert queue.publish() is True  # avail_event 0: the device waits for entry 0
    assert kicks(queue) == 1
    device.fill()
    device.set_avail_event(5)
    queue.add_chain([b"2"], [])
    assert queue.publish() is False  # entry 1 published, the device asked about entry 5
    assert kicks(queue) == 0
    assert queue.publish() is False  # nothing new
    for _ in range(4):
        queue.add_chain([b"3"], [])
    assert queue.publish(notify=False) is True  # entries 2..5 cross 5, but no kick asked
    assert kicks(queue) == 0


def test_publish_without_event_idx(memory):
    queue = make_queue(memory, event_idx=False)
    device = FakeDevice(queue)
    queue.add_chain([b"1"], [])
    assert queue.publish() is True
    assert kicks(queue) == 1
    device.set_used_flags(VRING_USED_F_NO_NOTIFY)
    queue.add_chain([b"2"], [])
    assert queue.publish() is False
    assert kicks(queue) == 0


def test_get_used_rearms_used_event(memory):
    queue = make_queue(memory, event_idx=True)
    device = FakeDevice(queue)
    for _ in range(3):
        queue.add_chain([b"r"], [8])
    queue.publish()
    device.fill()
    assert len(queue.get_used()) == 3
    assert device.used_event() == queue.last_used_idx == 3


def test_wait_call(memory):
    queue = make_queue(memory)
    assert queue.wait_call(0.01) is False
    os.eventfd_write(queue.call_fd, 1)
    assert queue.wait_call(0.01) is True
    assert queue.wait_call(0.01) is False  # drained


# -- completion ----------------------------------------------------------------------------

def test_detach_splits_written_length(memory):
    queue = make_queue(memory)
    device = FakeDevice(queue)
    head = queue.add_chain([b"req"], [16, 4096, 4096])
    queue.publish()
    device.fill(b"\x01", limit=16 + 5000)
    assert queue.get_used() == [(head, 16 + 5000)]
    assert queue.num_free == 4  # reaped chains keep their slots until detach
    assert queue.detach(head) == [b"\x01" * 16, b"\x01" * 4096, b"\x01" * 904]
    assert queue.num_free == 8


@pytest.mark.parametrize("event_idx", [True, False])
@pytest.mark.parametrize("indirect", [True, False])
def test_index_wraparound(memory, event_idx, indirect):
    queue = make_queue(memory, 8, base=65530, event_idx=event_idx, indirect_desc=indirect)
    device = FakeDevice(queue)
    baseline = memory.bytes_allocated
    total = 0
    for batch in range(6):  # 6 batches of up to 3 requests: indices 65530 .. 65547 (wrapped)
        heads = [queue.add_chain([bytes([batch, i])], [4], indirect=indirect) for i in range(3)]
        queue.publish()
        device.fill(bytes([batch]))
        used = queue.get_used()
        assert [h for h, _ in used] == heads
        for head, written in used:
            assert written == 4
            assert queue.detach(head) == [bytes([batch]) * 4]
        total += 3
    assert queue.last_used_idx == queue.published_idx == (65530 + total) & 0xFFFF == 12
    assert queue.num_free == 8
    assert memory.bytes_allocated == baseline


def test_completions_out_of_order(memory):
    queue = make_queue(memory)
    device = FakeDevice(queue)
    heads = [queue.add_chain([b"q"], [8]) for _ in range(3)]
    queue.publish()
    device.last_avail = (device.last_avail + 3) & 0xFFFF  # consume by hand, complete in reverse
    for head in reversed(heads):
        device.push(head, 8)
    assert [h for h, _ in queue.get_used()] == list(reversed(heads))


def test_rejects_unknown_used_id(memory):
    queue = make_queue(memory)
    device = FakeDevice(queue)
    queue.add_chain([b"q"], [8])
    queue.publish()
    device.push(5, 0)
    with pytest.raises(VirtqueueError, match="not in flight"):
        queue.get_used()


def test_rejects_overlong_used_length(memory):
    queue = make_queue(memory)
    device = FakeDevice(queue)
    head = queue.add_chain([b"q"], [8])
    queue.publish()
    device.push(head, 9)
    with pytest.raises(VirtqueueError, match="writable bytes"):
        queue.get_used()


def test_rejects_used_index_running_ahead(memory):
    queue = make_queue(memory)
    queue.add_chain([b"q"], [8])
    queue.publish()
    memory.write(queue.used_addr + 2, le16.pack(2))
    with pytest.raises(VirtqueueError, match="ahead"):
        queue.get_used()


# -- raw access -----------------------------------------------------------------------------

def test_raw_descriptors_and_heads(memory):
    queue = make_queue(memory)
    slots = queue.alloc_desc(2)
    assert queue.num_free == 6
    queue.write_desc(slots[0], 0xDEAD000, 7, VRING_DESC_F_NEXT, slots[1])
    queue.write_desc(slots[1], 0xBEEF000, 0, VRING_DESC_F_WRITE)
    table = memory.alloc(32, 16)
    queue.write_desc(1, 0x1000, 16, VRING_DESC_F_INDIRECT, table=table)
    assert vring_desc.unpack(memory.read(table + 16, 16)) == (0x1000, 16, VRING_DESC_F_INDIRECT, 0)
    assert queue.publish_raw([slots[0], 4000]) is True
    device = FakeDevice(queue)
    assert device.u16(queue.avail_addr + 4) == slots[0]
    assert device.u16(queue.avail_addr + 6) == 4000
    assert queue.in_flight == 2
    device.push(4000, 0)
    assert queue.get_used() == [(4000, 0)]  # raw heads are handed back, nothing to detach
    queue.free_desc(slots)
    assert queue.num_free == 8


def test_close_returns_memory(memory):
    baseline = memory.bytes_allocated
    queue = make_queue(memory)
    queue.add_chain([b"pending"], [64])
    queue.close()
    assert memory.bytes_allocated == baseline


def test_little_endian_fields(memory):
    queue = make_queue(memory, base=0x1234)
    assert memory.read(queue.avail_addr + 2, 2) == struct.pack("<H", 0x1234) == b"\x34\x12"
