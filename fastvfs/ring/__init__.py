"""The hot path: split virtqueues served by one worker thread each, FUSE requests answered in C
where they can be, io_uring I/O (see _ring.pyx for its parts)."""

from fastvfs.ring._ring import MemoryTable, PendingReply, RequestStats, RingLock, Virtqueue

__all__ = ["MemoryTable", "PendingReply", "RequestStats", "RingLock", "Virtqueue"]
