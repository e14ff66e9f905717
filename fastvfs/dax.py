"""The DAX cache window: which file ranges the frontend has mapped where.

virtio-fs DAX (virtio spec 5.11.6.2, Linux ``fs/fuse/dax.c``) lets the guest read and write file
contents through shared memory region 0, the *cache window*, instead of READ/WRITE requests.  The
guest driver picks window offsets itself (in 2 MiB ranges) and asks with FUSE_SETUPMAPPING that a
file range appear there; FUSE_REMOVEMAPPING takes ranges away again when it reclaims window space
or drops an inode.  Only the frontend can change the guest's address space, so every change goes
to it through a :class:`MapChannel` (vhost-user's SHMEM_MAP/SHMEM_UNMAP backend requests in the
daemon, a plain object in tests).

:class:`DaxWindow` validates the guest's ranges against the window, asks the channel, and keeps
the bookkeeping the daemon needs: which window bytes are backed by which (file, offset), so that a
setup over existing mappings replaces them, a partial removal splits them, and a new session can
clear whatever the previous guest left.  It knows nothing of FUSE or vhost-user.
"""

import bisect
import errno
import logging
import threading

log = logging.getLogger("fastvfs.dax")

# Window offsets, file offsets and lengths are multiples of this (FUSE_MAP_ALIGNMENT's log2 is
# sent to the guest in INIT); mmap needs page alignment, and Linux maps 2 MiB ranges anyway.
MAP_ALIGNMENT_SHIFT = 12
MAP_ALIGNMENT = 1 << MAP_ALIGNMENT_SHIFT
# Largest file offset a mapping may reach (off_t is signed).
_MAX_FILE_END = (1 << 63) - 1


class MapChannel:
    """What the window needs from the frontend.  Both calls block until the frontend has done
    it and raise OSError when it refused or is gone."""

    @property
    def available(self):
        """True once the frontend can take map requests (shared memory negotiated)."""
        raise NotImplementedError

    def map(self, fd, fd_offset, window_offset, length, writable):
        """Map ``length`` bytes of ``fd`` from ``fd_offset`` at ``window_offset``, replacing
        whatever was mapped there."""
        raise NotImplementedError

    def unmap(self, window_offset, length):
        """Return ``length`` bytes at ``window_offset`` to an unbacked state."""
        raise NotImplementedError


class Mapping:
    """``length`` window bytes at ``start`` showing ``key``'s file from ``file_offset``."""

    __slots__ = ("start", "length", "key", "file_offset", "writable")

    def __init__(self, start, length, key, file_offset, writable):
        self.start = start
        self.length = length
        self.key = key
        self.file_offset = file_offset
        self.writable = writable

    @property
    def end(self):
        return self.start + self.length

    def __repr__(self):
        return (f"Mapping({self.start:#x}+{self.length:#x} -> {self.key}@{self.file_offset:#x}"
                f"{' rw' if self.writable else ' ro'})")


class DaxWindow:
    """The cache window of ``size`` bytes, changed through ``channel``.

    Safe to call from several queue threads: one lock orders the frontend requests and the
    bookkeeping, so the table always matches what the frontend was last told.
    """

    def __init__(self, size, channel=None):
        if size <= 0 or size % MAP_ALIGNMENT:
            raise ValueError(f"window size must be a positive multiple of {MAP_ALIGNMENT}")
        self.size = size
        self.channel = channel
        self._lock = threading.Lock()
        self._starts = []     # sorted start offsets of self._maps
        self._maps = []       # non-overlapping Mappings, sorted by start

    @property
    def available(self):
        return self.channel is not None and self.channel.available

    def check_range(self, offset, length):
        """EINVAL unless ``[offset, offset+length)`` is a non-empty aligned window range."""
        if length == 0 or offset % MAP_ALIGNMENT or length % MAP_ALIGNMENT:
            raise OSError(errno.EINVAL, "window range not aligned to the map alignment")
        if offset >= self.size or length > self.size - offset:
            raise OSError(errno.EINVAL, f"window range {offset:#x}+{length:#x} past the "
                                        f"{self.size:#x}-byte window")

    def setup(self, fd, file_offset, window_offset, length, writable, key=None):
        """Map a file range (FUSE_SETUPMAPPING).  ``key`` names the file in the bookkeeping."""
        self.check_range(window_offset, length)
        if file_offset % MAP_ALIGNMENT:
            raise OSError(errno.EINVAL, "file offset not aligned to the map alignment")
        if file_offset > _MAX_FILE_END - length:
            raise OSError(errno.EINVAL, "file range past the largest file offset")
        if not self.available:
            raise OSError(errno.ENOSYS, "the frontend offers no cache window")
        with self._lock:
            self.channel.map(fd, file_offset, window_offset, length, writable)
            self._cut(window_offset, length)
            i = bisect.bisect_left(self._starts, window_offset)
            self._starts.insert(i, window_offset)
            self._maps.insert(i, Mapping(window_offset, length, key, file_offset, writable))

    def remove(self, ranges):
        """Unmap every ``(window_offset, length)`` of ``ranges`` (FUSE_REMOVEMAPPING); all are
        checked before any is removed."""
        for offset, length in ranges:
            self.check_range(offset, length)
        if not self.available:
            raise OSError(errno.ENOSYS, "the frontend offers no cache window")
        with self._lock:
            for offset, length in ranges:
                self.channel.unmap(offset, length)
                self._cut(offset, length)

    def clear(self):
        """Unmap everything still mapped (a new FUSE session, or the guest went away); the
        frontend is told where it can still be reached."""
        with self._lock:
            maps, self._maps, self._starts = self._maps, [], []
            if not maps or not self.available:
                return
            for m in maps:
                try:
                    self.channel.unmap(m.start, m.length)
                except OSError as exc:
                    log.warning("cannot unmap %r: %s", m, exc)
                    return

    def forget(self):
        """Drop the bookkeeping without telling the frontend (it reset the device itself)."""
        with self._lock:
            self._maps, self._starts = [], []

    def mappings(self):
        """A snapshot of the current mappings, sorted by window offset."""
        with self._lock:
            return list(self._maps)

    def lookup(self, window_offset):
        """The mapping that covers ``window_offset``, or None."""
        with self._lock:
            i = bisect.bisect_right(self._starts, window_offset) - 1
            if i >= 0 and self._maps[i].end > window_offset:
                return self._maps[i]
            return None

    def _cut(self, offset, length):
        """Remove ``[offset, offset+length)`` from the table, splitting mappings that straddle
        its edges (what the frontend's MAP_FIXED or unmap did to them)."""
        end = offset + length
        i = max(bisect.bisect_right(self._starts, offset) - 1, 0)
        keep = []
        j = i
        while j < len(self._maps) and self._maps[j].start < end:
            m = self._maps[j]
            if m.end > offset:
                if m.start < offset:
                    keep.append(Mapping(m.start, offset - m.start, m.key, m.file_offset,
                                        m.writable))
                if m.end > end:
                    keep.append(Mapping(end, m.end - end, m.key,
                                        m.file_offset + (end - m.start), m.writable))
            else:
                keep.append(m)
            j += 1
        self._maps[i:j] = keep
        self._starts[i:j] = [m.start for m in keep]
