"""Guest memory regions, address translation and the allocator of the frontend driver."""

import mmap
import os

import pytest

from fastvfs_testing.guestmem import (
    GUARD_BYTE, PAGE_SIZE, RESERVED_LOW, USERSPACE_ADDR_BASE, USERSPACE_ADDR_STRIDE, GuestMemory)
from fastvfs.vhost_user import protocol

GIB = 1 << 30
MIB = 1 << 20


def test_default_layout():
    with GuestMemory() as mem:
        (region,) = mem.regions
        assert (region.guest_phys_addr, region.memory_size, region.mmap_offset) == (0, 64 * MIB, 0)
        assert region.userspace_addr == USERSPACE_ADDR_BASE
        assert os.fstat(region.fd).st_size == 64 * MIB


def test_regions_are_sorted_with_distinct_frontend_addresses():
    with GuestMemory([(4 * GIB, MIB, 2 * MIB), (0, MIB)]) as mem:
        low, high = mem.regions
        assert (low.guest_phys_addr, high.guest_phys_addr) == (0, 4 * GIB)
        assert high.userspace_addr - low.userspace_addr == USERSPACE_ADDR_STRIDE
        assert high.packed() == protocol.memory_region.pack(
            4 * GIB, MIB, high.userspace_addr, 2 * MIB)
        assert mem.userspace_addr(4 * GIB + 0x123) == high.userspace_addr + 0x123


@pytest.mark.parametrize("regions", [
    [(0, 2 * MIB), (MIB, MIB)],        # overlap
    [(100, MIB)],                      # unaligned address
    [(0, MIB + 1)],                    # unaligned size
    [(0, MIB, 100)],                   # unaligned mmap_offset
    [(0, 0)],                          # empty
])
def test_invalid_layouts(regions):
    with pytest.raises(ValueError):
        GuestMemory(regions)


def test_mmap_offset_places_region_inside_the_file():
    with GuestMemory([(GIB, MIB, 2 * PAGE_SIZE)]) as mem:
        region = mem.regions[0]
        assert os.fstat(region.fd).st_size == 2 * PAGE_SIZE + MIB
        assert os.pread(region.fd, 2 * PAGE_SIZE, 0) == bytes([GUARD_BYTE]) * 2 * PAGE_SIZE
        mem.write(GIB + 8, b"payload")
        assert os.pread(region.fd, 7, 2 * PAGE_SIZE + 8) == b"payload"
        # What a backend sees when it maps mmap_offset + memory_size bytes from file offset 0.
        with mmap.mmap(region.fd, 2 * PAGE_SIZE + MIB) as backend_view:
            assert backend_view[2 * PAGE_SIZE + 8:2 * PAGE_SIZE + 15] == b"payload"


def test_read_write_view():
    with GuestMemory([(0, MIB), (GIB, MIB)]) as mem:
        mem.write(GIB + 10, b"abc")
        assert mem.read(GIB + 10, 3) == b"abc"
        view = mem.view(GIB + 10, 3)
        view[0:1] = b"X"
        view.release()
        assert mem.read(GIB + 10, 3) == b"Xbc"


@pytest.mark.parametrize("gpa, length", [(MIB - 2, 4), (MIB, 1), (GIB + MIB, 1), (GIB - 1, 2)])
def test_locate_rejects_ranges_outside_one_region(gpa, length):
    with GuestMemory([(0, MIB), (GIB, MIB)]) as mem:
        with pytest.raises(ValueError):
            mem.locate(gpa, length)


def test_alloc_alignment_and_reserved_page():
    with GuestMemory([(0, MIB)]) as mem:
        first = mem.alloc(3)
        assert first >= RESERVED_LOW
        for align in (1, 2, 16, 4096):
            assert mem.alloc(5, align) % align == 0
        with pytest.raises(ValueError):
            mem.alloc(8, 3)


def test_alloc_never_straddles_regions_and_can_target_one():
    with GuestMemory([(0, MIB), (GIB, MIB)]) as mem:
        a = mem.alloc(MIB - RESERVED_LOW - 100)
        b = mem.alloc(200)  # does not fit in what is left of region 0
        assert a < MIB and b == GIB
        assert mem.alloc(8, region=1) > GIB
        with pytest.raises(MemoryError):
            mem.alloc(MIB, region=1)


def test_free_coalesces():
    with GuestMemory([(GIB, MIB)]) as mem:
        blocks = [mem.alloc(PAGE_SIZE) for _ in range(4)]
        with pytest.raises(MemoryError):
            mem.alloc(MIB)
        assert mem.bytes_allocated == 4 * PAGE_SIZE
        for gpa in (blocks[1], blocks[3], blocks[0], blocks[2]):
            mem.free(gpa)
        assert mem.bytes_allocated == 0
        assert mem.alloc(MIB) == GIB
        with pytest.raises(KeyError):
            mem.free(GIB + 8)


def test_zero_size_allocations_are_distinct():
    with GuestMemory([(0, MIB)]) as mem:
        assert mem.alloc(0) != mem.alloc(0)
