# GETXATTR and LISTXATTR served in C where the file system reads extended attributes as the
# host has them (fastvfs.fs._tables.set_xattr_policy: --xattr, no --xattrmap), each answering
# exactly what the engine's do_getxattr/do_listxattr and _sized_reply would over
# PassthroughFs, and declining (0) what it could not decide the same way.  Their table entries
# are at the end.

cdef enum:
    # Values and name lists read here, on the worker's stack: larger ones (the host allows up
    # to XATTR_SIZE_MAX, 64 KiB) are the engine's, which reads them in full.
    XATTR_FAST_MAX = 4096


cdef void _sized_reply(Virtqueue vq, const void *value, size_t length) noexcept nogil:
    """The engine's _sized_reply: a size-0 request asks for the length alone
    (fuse_getxattr_out); a value larger than the guest's size or than its reply buffers is
    ERANGE; else the value itself."""
    cdef uint32_t size = vq.req.hdr.arg.getxattr.size
    cdef uint64_t room = vq.req.chain.in_len - sizeof(fuse_out_header) \
        if vq.req.chain.in_len >= sizeof(fuse_out_header) else 0
    cdef fuse_getxattr_out out
    if size == 0:
        out.size = <uint32_t>length
        out.padding = 0
        vq._reply(0, &out, sizeof(out))
    elif length > size or length > room:
        vq._reply(-ERANGE, NULL, 0)
    else:
        vq._reply(0, value, <uint32_t>length)


cdef int do_getxattr(Virtqueue vq) noexcept nogil:
    """GETXATTR: the name after fuse_getxattr_in must end (NUL) within the request, else
    EINVAL, as the engine's _name finds it; a name longer than XATTR_NAME_MAX (ERANGE there
    if it ends at all), request extensions, and what ``getxattr_node`` declines are left to
    the engine."""
    cdef uint32_t at = sizeof(fuse_in_header) + sizeof(fuse_getxattr_in)
    cdef uint32_t avail = vq.req.hdr.h.len - at
    cdef uint32_t nlen
    cdef char name[XATTR_NAME_MAX + 1]
    cdef uint8_t value[XATTR_FAST_MAX]
    cdef size_t length = 0
    cdef int rc
    if vq.req.hdr.h.total_extlen:
        return 0
    nlen = avail if avail < sizeof(name) else sizeof(name)
    if _gather(vq.req.iov, vq.req.chain.out_num, at, <uint8_t *>name, nlen) != nlen:
        return 0
    if strnlen(name, nlen) == nlen:
        if avail > nlen:
            return 0
        vq._reply(-EINVAL, NULL, 0)     # no NUL in the request
        return 1
    rc = getxattr_node(vq.handles, vq.inodes, vq.req.hdr.h.nodeid, name, value, sizeof(value),
                       &length)
    if rc == 1:
        return 0
    if rc < 0:
        vq._reply(rc, NULL, 0)
        return 1
    _sized_reply(vq, value, length)
    return 1


cdef int do_listxattr(Virtqueue vq) noexcept nogil:
    """LISTXATTR: the names, each NUL-terminated, as the engine joins them; request extensions
    and what ``listxattr_node`` declines are left to the engine."""
    cdef char names[XATTR_FAST_MAX]
    cdef size_t length = 0
    cdef int rc
    if vq.req.hdr.h.total_extlen:
        return 0
    rc = listxattr_node(vq.handles, vq.inodes, vq.req.hdr.h.nodeid, names, sizeof(names),
                        &length)
    if rc == 1:
        return 0
    if rc < 0:
        vq._reply(rc, NULL, 0)
        return 1
    _sized_reply(vq, names, length)
    return 1


_fast_op(FUSE_GETXATTR, do_getxattr, sizeof(fuse_getxattr_in), NEEDS_INODES)
_fast_op(FUSE_LISTXATTR, do_listxattr, sizeof(fuse_getxattr_in), NEEDS_INODES)
