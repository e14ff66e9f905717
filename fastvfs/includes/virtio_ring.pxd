# C declarations of <linux/virtio_ring.h> (Linux 6.1): the split virtqueue layout of virtio 1.2
# section 2.7.  Every field is little-endian (virtio 1.x); the hot path refuses to load on a
# big-endian host.  The rings are guest memory the driver writes concurrently: the indexes are
# read and written only through the 16-bit atomics of ``atomics.pxd``.

from libc.stdint cimport uint16_t, uint32_t, uint64_t

cdef extern from "<linux/virtio_ring.h>" nogil:
    enum:
        VRING_DESC_F_NEXT
        VRING_DESC_F_WRITE
        VRING_DESC_F_INDIRECT
        VRING_AVAIL_F_NO_INTERRUPT

    # Section 2.7.5: the descriptor table.
    struct vring_desc:
        uint64_t addr
        uint32_t len
        uint16_t flags
        uint16_t next

    # Section 2.7.6: the driver area; ``ring[num]`` is used_event (VIRTIO_F_EVENT_IDX).
    struct vring_avail:
        uint16_t flags
        uint16_t idx
        uint16_t ring[1]    # flexible: ``num`` entries, then used_event

    # Section 2.7.8: the device area; the 16 bits after ``ring[num]`` are avail_event.
    struct vring_used_elem:
        uint32_t id
        uint32_t len

    struct vring_used:
        uint16_t flags
        uint16_t idx
        vring_used_elem ring[1]     # flexible: ``num`` entries, then avail_event
