# Directory requests served in C: OPENDIR, READDIR, READDIRPLUS and RELEASEDIR, each answering
# exactly what the engine's do_<op> would (fastvfs/fuse/engine.py over PassthroughFs, both on
# the handle table's directory handles and listings, fastvfs/fs/tables/dirs.pxi) and declining
# (0) whatever it could not decide the same way.  Their table entries are at the end.

cdef enum:
    # READDIRPLUS replies up to this size are built on the worker's stack, larger ones in a
    # buffer of their own.
    DIRPLUS_STACK = 8192


cdef int do_opendir(Virtqueue vq) noexcept nogil:
    """OPENDIR as the engine's do_opendir (``dir_open``), answered with the cache mode's
    directory open flags.  Left to the engine: request extensions and whatever ``dir_open``
    declines."""
    cdef fuse_open_out out
    cdef uint64_t fh = 0
    cdef int rc
    rc = dir_open(vq.handles, vq.inodes, vq.req.hdr.h.nodeid, &fh)
    if rc == 1:
        return 0
    if rc < 0:
        vq._reply(rc, NULL, 0)
        return 1
    memset(&out, 0, sizeof(out))
    out.fh = fh
    out.open_flags = vq.cfg.opendir_flags
    vq._reply(0, &out, sizeof(out))
    return 1


cdef int do_releasedir(Virtqueue vq) noexcept nogil:
    """RELEASEDIR of any handle, as the engine's (PassthroughFs.release: the handle and a
    directory's listing dropped, then the lock descriptions no handle is left to, as RELEASE
    drops them)."""
    cdef uint64_t fh = vq.req.hdr.arg.release.fh
    cdef int rc
    rc = vq.handles.remove_fh(fh)
    vq._reply(rc, NULL, 0)
    return 1


cdef uint32_t _dir_size(Virtqueue vq) noexcept nogil:
    """The guest's size, at most what its reply buffers hold after the header (the engine's
    ``min(size, out_size)``)."""
    cdef uint64_t room = reply_room(&vq.req.chain)
    return <uint32_t>room if room < vq.req.hdr.arg.read.size else vq.req.hdr.arg.read.size


cdef int do_readdir(Virtqueue vq) noexcept nogil:
    """READDIR: the run of whole records from the offset's entry on that fits the size, from
    the listing the handle holds (``dir_listing``: a fresh one at offset 0), as the engine's
    _readdir sends it.  Left to the engine: request extensions, a node held by file handle
    that no longer opens."""
    cdef uint64_t offset = vq.req.hdr.arg.read.offset
    cdef DirListing *listing = NULL
    cdef uint32_t length
    cdef int rc
    rc = dir_listing(vq.handles, vq.inodes, vq.req.hdr.h.nodeid, vq.req.hdr.arg.read.fh, offset,
                     &listing)
    if rc == 1:
        return 0
    if rc < 0:
        vq._reply(rc, NULL, 0)
        return 1
    length = dir_run(listing, offset, _dir_size(vq))
    vq._reply(0, listing.records + listing.starts[offset] if length else NULL, length)
    dir_unref(vq.handles, listing)
    return 1


cdef int do_readdirplus(Virtqueue vq) noexcept nogil:
    """READDIRPLUS with each entry looked up as LOOKUP looks it up (``dir_plus``, through
    ``lookup_entry``), as the engine's _readdir sends them.  An entry that needs the file
    system's lookup (a submount) hands the whole request to the engine, the lookups counted
    so far taken back first; so do request extensions and a node held by file handle that no
    longer opens.  An entry whose lookup fails (EMFILE)
    ends the reply before it, or, first in it, is the reply's error, as in the engine."""
    cdef uint64_t nodeid = vq.req.hdr.h.nodeid
    cdef uint64_t index = vq.req.hdr.arg.read.offset
    cdef uint32_t size = _dir_size(vq)
    cdef uint32_t used = 0, pos
    cdef uint64_t left, room
    cdef uint8_t stack_buf[DIRPLUS_STACK]
    cdef uint8_t *buf = stack_buf
    cdef DirListing *listing = NULL
    cdef const fuse_entry_out *entry
    cdef int rc, status
    cdef bint need
    rc = dir_listing(vq.handles, vq.inodes, nodeid, vq.req.hdr.arg.read.fh, index, &listing)
    if rc == 1:
        return 0
    if rc < 0:
        vq._reply(rc, NULL, 0)
        return 1
    # What the reply could hold at most: the records left, each with its fuse_entry_out.
    left = listing.count - index if index < listing.count else 0
    room = (listing.used - listing.starts[index] + left * sizeof(fuse_entry_out)) if left else 0
    if room > size:
        room = size
    if room > DIRPLUS_STACK:
        buf = <uint8_t *>malloc(room)
        if buf == NULL:
            dir_unref(vq.handles, listing)
            return 0
    status = dir_plus(listing, vq.handles, vq.inodes, nodeid, &index, <uint32_t>room,
                      vq.cfg.attr_valid, vq.cfg.attr_valid_nsec, buf, &used)
    need = status == 1
    # The engine sends what it has when the entry to look up would not fit anyway.
    if need and used + sizeof(fuse_entry_out) + listing.starts[index + 1] - \
            listing.starts[index] > size:
        need = False
    dir_unref(vq.handles, listing)
    if need:
        pos = 0
        while pos < used:
            entry = <const fuse_entry_out *>(buf + pos)
            if entry.nodeid:
                vq.inodes.forget_c(entry.nodeid, 1)
            pos += <uint32_t>sizeof(fuse_entry_out) + FUSE_DIRENT_ALIGN(
                FUSE_NAME_OFFSET + (<const fuse_dirent *>(buf + pos +
                                                            sizeof(fuse_entry_out))).namelen)
    elif status < 0 and used == 0:
        vq._reply(status, NULL, 0)
    else:
        vq._reply(0, buf, used)
    if buf != stack_buf:
        free(buf)
    return 0 if need else 1


_fast_op(FUSE_OPENDIR, do_opendir, 0, NEEDS_INODES)
_fast_op(FUSE_RELEASEDIR, do_releasedir, sizeof(fuse_release_in), 0)
_fast_op(FUSE_READDIR, do_readdir, sizeof(fuse_read_in), NEEDS_INODES)
_fast_op(FUSE_READDIRPLUS, do_readdirplus, sizeof(fuse_read_in), NEEDS_INODES)
