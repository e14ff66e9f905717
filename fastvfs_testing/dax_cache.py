"""Guest-side use of the DAX window, the way Linux's ``fs/fuse/dax.c`` does it.

The driver cuts the window into 2 MiB ranges; the first access to a 2 MiB range of a file takes a
free window range (or reclaims the least recently used one with FUSE_REMOVEMAPPING) and maps it
with FUSE_SETUPMAPPING; every later access is a plain load or store in the window, with no request
to the daemon.  :class:`DaxCache` gives tests and benchmarks that view over a
:class:`~fastvfs_testing.fuse_client.FuseClient` and the frontend's
:class:`~fastvfs_testing.shmem.SharedMemoryWindow`.
"""

import collections

RANGE_SIZE = 2 << 20  # FUSE_DAX_SZ


class DaxCache:
    """Maps file ranges into ``window`` on demand through ``client``.

    Reads and writes must stay inside the file (as the guest clamps to i_size): a mapped page
    past the end of its file raises SIGBUS when touched, in a VM as here.
    """

    def __init__(self, client, window, range_size=RANGE_SIZE):
        self.client = client
        self.window = window
        self.range_size = range_size
        self.free = collections.deque(range(0, window.size - window.size % range_size,
                                            range_size))
        self.lru = collections.OrderedDict()   # (nodeid, range index) -> [moffset, writable]
        self.setups = 0
        self.reclaims = 0

    def _locate(self, nodeid, offset, writable):
        key = (nodeid, offset // self.range_size)
        entry = self.lru.get(key)
        if entry is not None and (entry[1] or not writable):
            self.lru.move_to_end(key)
            return entry[0]
        if entry is not None:
            moffset = entry[0]   # upgrade a read-only mapping in place
        elif self.free:
            moffset = self.free.popleft()
        else:
            (old_node, _), (moffset, _) = self.lru.popitem(last=False)
            self.client.removemapping(old_node, [(moffset, self.range_size)])
            self.reclaims += 1
        self.client.setupmapping(nodeid, key[1] * self.range_size, self.range_size, moffset,
                                 writable=writable)
        self.setups += 1
        self.lru[key] = [moffset, writable]
        self.lru.move_to_end(key)
        return moffset

    def _spans(self, nodeid, offset, length, writable):
        done = 0
        while done < length:
            pos = offset + done
            within = pos % self.range_size
            n = min(length - done, self.range_size - within)
            yield self._locate(nodeid, pos, writable) + within, done, n
            done += n

    def read(self, nodeid, offset, length):
        return b"".join(self.window.read(at, n)
                        for at, _, n in self._spans(nodeid, offset, length, False))

    def readinto(self, nodeid, offset, buf):
        """Copy into ``buf`` (a writable buffer) without building bytes objects per range."""
        out = memoryview(buf).cast("B")
        for at, done, n in self._spans(nodeid, offset, len(out), False):
            out[done:done + n] = self.window.view(at, n)
        return len(out)

    def write(self, nodeid, offset, data):
        data = memoryview(data).cast("B")
        for at, done, n in self._spans(nodeid, offset, len(data), True):
            self.window.write(at, data[done:done + n])
        return len(data)

    def drop(self, nodeid):
        """Unmap every range of ``nodeid`` in one multi-entry REMOVEMAPPING (inode eviction)."""
        keys = [key for key in self.lru if key[0] == nodeid]
        if not keys:
            return
        ranges = [(self.lru[key][0], self.range_size) for key in keys]
        self.client.removemapping(nodeid, ranges)
        for key in keys:
            self.free.append(self.lru.pop(key)[0])
