"""Guest RAM for the frontend driver: memfd-backed regions at chosen guest-physical addresses.

A vhost-user frontend shares guest RAM with its backend by passing one file descriptor per memory
region in SET_MEM_TABLE (vhost-user.rst, "Memory regions description").  Each region is described
by four numbers, and a backend has to use all of them correctly:

``guest_phys_addr``
    where the region sits in the guest-physical address space; descriptor addresses are GPAs.
``memory_size``
    the region's length.
``userspace_addr``
    where the *frontend* has the region mapped in its own process.  SET_VRING_ADDR carries ring
    addresses in this address space, so a backend translates them through this field.  The
    addresses reported here are invented (QEMU would report real ones): they are far from anything
    the GPAs could be confused with, so a backend that mixes up the two spaces fails loudly.
``mmap_offset``
    where the region starts inside the file.  The backend maps ``mmap_offset + memory_size`` bytes
    from offset 0 and skips the first ``mmap_offset`` bytes.  The skipped bytes are filled with
    :data:`GUARD_BYTE`, so a backend that ignores the offset reads recognisable garbage.

:class:`GuestMemory` also provides a first-fit allocator (the stand-in for the guest kernel's page
allocator) and read/write helpers addressed by GPA.
"""

import bisect
import fcntl
import mmap
import os
from dataclasses import dataclass, field

from fastvfs.vhost_user import protocol

PAGE_SIZE = mmap.PAGESIZE
DEFAULT_SIZE = 64 << 20
# Fake frontend address of region n: 0x7f0000000000 + (n << 36), i.e. 64 GiB apart, so regions of
# any size these tests use never overlap in the frontend's address space either.
USERSPACE_ADDR_BASE = 0x7F00_0000_0000
USERSPACE_ADDR_STRIDE = 1 << 36
# Fill of the bytes before mmap_offset, which a correct backend never touches.
GUARD_BYTE = 0xA5
# The first page of guest-physical address 0 is never handed out, so that a descriptor address of
# zero (a classic uninitialised-field bug) never points at a live buffer.
RESERVED_LOW = PAGE_SIZE


def _align_up(value, align):
    return (value + align - 1) & ~(align - 1)


@dataclass(eq=False)
class MemoryRegion:
    """One memfd-backed region, described with the field names of vhost-user's memory region."""

    guest_phys_addr: int
    memory_size: int
    userspace_addr: int
    mmap_offset: int
    fd: int
    map: mmap.mmap = field(repr=False)
    # Free extents as sorted, non-overlapping, non-adjacent [start, end) GPA pairs.
    free_starts: list = field(default_factory=list, repr=False)
    free_ends: list = field(default_factory=list, repr=False)

    @property
    def end(self):
        return self.guest_phys_addr + self.memory_size

    def packed(self):
        """The ``VhostUserMemoryRegion`` body for SET_MEM_TABLE / ADD_MEM_REG."""
        return protocol.memory_region.pack(
            self.guest_phys_addr, self.memory_size, self.userspace_addr, self.mmap_offset)


class GuestMemory:
    """Guest RAM made of one or more shared memfd regions.

    ``regions`` lists ``(guest_phys_addr, memory_size)`` or ``(guest_phys_addr, memory_size,
    mmap_offset)`` tuples; addresses, sizes and offsets must be page-aligned and regions must not
    overlap.  The default is one 64 MiB region at GPA 0.  A test exercising multi-region tables
    might pass ``[(0, 64 << 20), (4 << 30, 64 << 20, 2 << 20)]``.

    Buffers handed out by :meth:`alloc` never straddle two regions.  Memoryviews returned by
    :meth:`view` must be released before :meth:`close`.
    """

    def __init__(self, regions=((0, DEFAULT_SIZE),)):
        self.regions = []
        self._allocations = {}  # gpa -> size
        try:
            for number, spec in enumerate(sorted(regions)):
                self._add_region(number, *spec)
        except BaseException:
            self.close()
            raise

    def _add_region(self, number, guest_phys_addr, memory_size, mmap_offset=0):
        for value, what in ((guest_phys_addr, "guest_phys_addr"), (memory_size, "memory_size"),
                            (mmap_offset, "mmap_offset")):
            if value < 0 or value % PAGE_SIZE:
                raise ValueError(
                    f"{what} {value:#x} is not a non-negative multiple of the page size")
        if memory_size == 0:
            raise ValueError("empty memory region")
        if self.regions and self.regions[-1].end > guest_phys_addr:
            raise ValueError(f"memory region at {guest_phys_addr:#x} overlaps the previous one")
        fd = os.memfd_create(f"fastvfs-guest-ram{number}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, mmap_offset + memory_size)
            # Sealed as QEMU's memory-backend-memfd seals guest RAM (seal=on, its default):
            # a backend may require that the memory it maps can never shrink.
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                        fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
            mapping = mmap.mmap(fd, mmap_offset + memory_size, mmap.MAP_SHARED,
                                mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        if mmap_offset:
            mapping[:mmap_offset] = bytes([GUARD_BYTE]) * mmap_offset
        start = guest_phys_addr + (RESERVED_LOW if guest_phys_addr == 0 else 0)
        self.regions.append(MemoryRegion(
            guest_phys_addr, memory_size, USERSPACE_ADDR_BASE + number * USERSPACE_ADDR_STRIDE,
            mmap_offset, fd, mapping, [start], [guest_phys_addr + memory_size]))

    # -- address translation ------------------------------------------------------------------

    def locate(self, gpa, length=1):
        """Return ``(region, offset into region.map)`` for ``[gpa, gpa + length)``.

        Raises ValueError if the range is not inside a single region.
        """
        for region in self.regions:
            if region.guest_phys_addr <= gpa < region.end:
                if gpa + length > region.end:
                    break
                return region, gpa - region.guest_phys_addr + region.mmap_offset
        raise ValueError(f"guest range {gpa:#x}+{length:#x} is not inside one memory region")

    def userspace_addr(self, gpa):
        """The frontend address of ``gpa``: what SET_VRING_ADDR carries for a ring at ``gpa``."""
        region, _ = self.locate(gpa)
        return region.userspace_addr + gpa - region.guest_phys_addr

    def read(self, gpa, length):
        region, offset = self.locate(gpa, length)
        return region.map[offset:offset + length]

    def write(self, gpa, data):
        region, offset = self.locate(gpa, len(data))
        region.map[offset:offset + len(data)] = data

    def view(self, gpa, length):
        """A writable memoryview of guest memory (zero copy); release it before :meth:`close`."""
        region, offset = self.locate(gpa, length)
        return memoryview(region.map)[offset:offset + length]

    # -- allocator ----------------------------------------------------------------------------

    def alloc(self, size, align=8, region=None):
        """Allocate ``size`` bytes aligned to ``align`` (a power of two) and return the GPA.

        First fit over the regions in GPA order, or only region number ``region``.  Zero-size
        requests get one byte so that every allocation has a distinct address.  Raises MemoryError
        when nothing fits.
        """
        if align <= 0 or align & (align - 1):
            raise ValueError(f"alignment {align} is not a power of two")
        size = max(size, 1)
        candidates = self.regions if region is None else [self.regions[region]]
        for reg in candidates:
            for i, (start, end) in enumerate(zip(reg.free_starts, reg.free_ends)):
                gpa = _align_up(start, align)
                if gpa + size > end:
                    continue
                starts, ends = [], []
                if gpa > start:
                    starts.append(start)
                    ends.append(gpa)
                if gpa + size < end:
                    starts.append(gpa + size)
                    ends.append(end)
                reg.free_starts[i:i + 1] = starts
                reg.free_ends[i:i + 1] = ends
                self._allocations[gpa] = size
                return gpa
        raise MemoryError(f"guest memory exhausted allocating {size} bytes")

    def free(self, gpa):
        """Return an allocation made by :meth:`alloc`, merging it with adjacent free extents."""
        size = self._allocations.pop(gpa)
        reg, _ = self.locate(gpa, size)
        starts, ends = reg.free_starts, reg.free_ends
        i = bisect.bisect_left(starts, gpa)
        start, end = gpa, gpa + size
        if i < len(starts) and starts[i] == end:
            end = ends[i]
            del starts[i], ends[i]
        if i > 0 and ends[i - 1] == start:
            ends[i - 1] = end
        else:
            starts.insert(i, start)
            ends.insert(i, end)

    @property
    def bytes_allocated(self):
        """Bytes currently allocated (after the one-byte rounding of empty requests)."""
        return sum(self._allocations.values())

    # -- lifetime -----------------------------------------------------------------------------

    def close(self):
        for region in self.regions:
            region.map.close()
            os.close(region.fd)
        self.regions = []
        self._allocations.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
