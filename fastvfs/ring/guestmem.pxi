# Guest memory: the frontend's regions mapped into this process, and the translation of the
# addresses a driver or a frontend gives (vhost-user SET_MEM_TABLE / ADD_MEM_REG; every
# address is bounds-checked here before the hot path touches it).

@cython.final
cdef class _Mapping:
    """One region's file mapped into this process; unmapped when the last memory table (and so
    the last request in flight holding one, see ``PendingReply``) that uses it is gone."""
    cdef void *base
    cdef size_t length

    def __dealloc__(self):
        if self.base != NULL:
            munmap(self.base, self.length)


cdef class MemoryTable:
    """The frontend's memory regions (SET_MEM_TABLE / ADD_MEM_REG), mapped into this process.

    Translation works on two address spaces: guest-physical addresses (descriptor buffers) and
    the frontend's own virtual addresses (``userspace_addr``, used by SET_VRING_ADDR).

    A table in use by a ring or a deferred reply is never changed: a change of the frontend's
    memory is a new table (``copy`` then ``add_region``/``remove_region``) sharing the
    mappings it keeps, so a request still pointing into a removed region writes into memory
    that stays mapped until that request is answered.
    """
    def __cinit__(self):
        self.maps = []

    def copy(self):
        """A new table with the same regions, sharing their mappings."""
        cdef MemoryTable table = MemoryTable()
        table.regions = self.regions
        table.nregions = self.nregions
        table.maps = list(self.maps)
        return table

    def add_region(self, uint64_t gpa, uint64_t size, uint64_t uaddr, uint64_t mmap_offset, int fd):
        """Map ``size`` bytes of ``fd`` from ``mmap_offset``; the caller checked the file is large
        enough (touching past its end would raise SIGBUS in this process)."""
        cdef int i
        cdef Region *r
        if self.nregions >= MAX_REGIONS:
            raise ValueError("too many memory regions")
        if size == 0 or gpa + size < gpa or uaddr + size < uaddr or mmap_offset + size < mmap_offset:
            raise ValueError("memory region wraps around")
        if mmap_offset + size > <uint64_t>INT64_MAX:
            raise ValueError("memory region too large")
        for i in range(self.nregions):
            r = &self.regions[i]
            if gpa < r.gpa + r.size and r.gpa < gpa + size:
                raise ValueError("memory regions overlap in guest-physical space")
            if uaddr < r.uaddr + r.size and r.uaddr < uaddr + size:
                raise ValueError("memory regions overlap in frontend address space")
        cdef size_t map_len = mmap_offset + size
        cdef void *base
        with nogil:
            base = mmap(NULL, map_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        if base == MAP_FAILED:
            raise OSError(errno, "mmap of guest memory failed")
        cdef _Mapping mapping = _Mapping()
        mapping.base = base
        mapping.length = map_len
        self.maps.append(mapping)
        r = &self.regions[self.nregions]
        r.gpa = gpa
        r.size = size
        r.uaddr = uaddr
        r.host = <uint8_t *>base + mmap_offset
        self.nregions += 1

    def remove_region(self, uint64_t gpa, uint64_t size, uint64_t uaddr):
        """Take out the region that matches exactly; returns whether one did.  Its mapping goes
        when no other table uses it."""
        cdef int i
        for i in range(self.nregions):
            r = &self.regions[i]
            if r.gpa == gpa and r.size == size and r.uaddr == uaddr:
                self.regions[i] = self.regions[self.nregions - 1]
                self.maps[i] = self.maps[self.nregions - 1]
                self.maps.pop()
                self.nregions -= 1
                return True
        return False

    def host_ranges(self):
        """(host address, length) of every region's mapping in this process, in pieces of at
        most 1 GiB: what a queue registers with its io_uring for READ_FIXED/WRITE_FIXED."""
        cdef int i
        cdef uint64_t at, piece
        pieces = []
        for i in range(self.nregions):
            at = 0
            while at < self.regions[i].size:
                piece = min(<uint64_t>FIXED_PIECE, self.regions[i].size - at)
                pieces.append((<uintptr_t>(self.regions[i].host + at), piece))
                at += piece
        return pieces

    def describe(self):
        """(gpa, size, uaddr) of every region, for logs and tests."""
        return [(self.regions[i].gpa, self.regions[i].size, self.regions[i].uaddr)
                for i in range(self.nregions)]

    def __len__(self):
        return self.nregions

    cdef uint8_t *_to_host(self, uint64_t addr, uint64_t length, bint frontend) noexcept nogil:
        cdef int i
        cdef Region *r
        cdef uint64_t base
        for i in range(self.nregions):
            r = &self.regions[i]
            base = r.uaddr if frontend else r.gpa
            if addr >= base and addr - base <= r.size and length <= r.size - (addr - base):
                return r.host + (addr - base)
        return NULL

    cdef uint8_t *uaddr_to_host(self, uint64_t uaddr, uint64_t length) noexcept nogil:
        """A pointer to ``length`` contiguous bytes at frontend address ``uaddr``, or NULL."""
        return self._to_host(uaddr, length, True)

    cdef uint8_t *gpa_to_host(self, uint64_t gpa, uint64_t length) noexcept nogil:
        """A pointer to ``length`` contiguous bytes at guest-physical ``gpa``, or NULL."""
        return self._to_host(gpa, length, False)

    cdef int gpa_to_iov(self, uint64_t gpa, uint64_t length, iovec *iov, int room) noexcept nogil:
        """Translate a guest buffer into iovecs, splitting where regions meet.

        Returns the number of iovecs written, -EFAULT when any byte lies outside guest memory
        (a DAX window address, or garbage) or -EINVAL when ``room`` is too small.
        """
        cdef int i, n = 0
        cdef Region *r
        cdef uint64_t chunk
        cdef bint found
        if gpa + length < gpa:
            return -EFAULT
        while length > 0:
            found = False
            for i in range(self.nregions):
                r = &self.regions[i]
                if gpa >= r.gpa and gpa - r.gpa < r.size:
                    if n >= room:
                        return -EINVAL
                    chunk = r.size - (gpa - r.gpa)
                    if chunk > length:
                        chunk = length
                    iov[n].iov_base = r.host + (gpa - r.gpa)
                    iov[n].iov_len = chunk
                    n += 1
                    gpa += chunk
                    length -= chunk
                    found = True
                    break
            if not found:
                return -EFAULT
        return n
