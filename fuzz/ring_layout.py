"""Guest memory for the ring harness (fuzz/fuzz_ring.py) and its seed generator.

Guest RAM is one 1 MiB region at guest-physical address 0; a driver-side virtqueue of
QUEUE_SIZE entries is allocated first in it (so its descriptor table, available and used rings
always land at the same addresses), and the chains' buffers after it.  A fuzz input is

    [u8 config][WINDOW bytes copied to guest memory from WINDOW_GPA]

so the fuzzer writes the descriptor table, the avail ring (its flags, index, entries and
used_event), the used ring's index and every request byte the chains point at.  ``config``
picks the negotiated features and the device's engine:

    bit 0 EVENT_IDX, bit 1 INDIRECT_DESC, bit 2 fast path on (FUSE INIT done),
    bit 3 io_uring READ/WRITE (else synchronous), bit 4 read-only share,
    bits 5-6 the Python handler's answer: (error, payload), None, a deferred reply, a raise.
"""

from fastvfs_testing.guestmem import RESERVED_LOW, GuestMemory
from fastvfs_testing.virtq import DriverVirtqueue

MEMORY = [(0, 1 << 20)]
QUEUE_SIZE = 16
WINDOW_GPA = RESERVED_LOW
WINDOW = 12 << 10

EVENT_IDX, INDIRECT, FAST_IO, URING, READ_ONLY = 1, 2, 4, 8, 16
HANDLER_SHIFT = 5


def make():
    """Fresh guest memory and its driver-side queue, at the fixed addresses."""
    mem = GuestMemory(MEMORY)
    dq = DriverVirtqueue(mem, 1, QUEUE_SIZE, event_idx=True, indirect_desc=True)
    assert dq.desc_addr >= WINDOW_GPA and dq.used_addr < WINDOW_GPA + WINDOW
    return mem, dq
