# Extended attributes served in C where the file system handles them as the host has them
# (fastvfs.fs._tables.set_xattr_policy: --xattr, no --xattrmap; SETXATTR and REMOVEXATTR
# also need a session without FUSE_SETXATTR_EXT), each answering exactly what the engine's
# do_getxattr/do_listxattr/do_setxattr/do_removexattr and _sized_reply would over
# PassthroughFs, and declining (0) what it could not decide the same way: an attribute name
# the request ends in is EINVAL here, one longer than XATTR_NAME_MAX the engine's (ERANGE
# there).  Their table entries are at the end.

cdef enum:
    # Values and name lists read here, on the worker's stack: larger ones (the host allows up
    # to XATTR_SIZE_MAX, 64 KiB) are the engine's, which reads them in full.
    XATTR_FAST_MAX = 4096


cdef void _sized_reply(Virtqueue vq, const void *value, size_t length) noexcept nogil:
    """The engine's _sized_reply: a size-0 request asks for the length alone
    (fuse_getxattr_out); a value larger than the guest's size or than its reply buffers is
    ERANGE; else the value itself."""
    cdef uint32_t size = vq.req.hdr.arg.getxattr.size
    cdef uint64_t room = reply_room(&vq.req.chain)
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
    """GETXATTR: the name after fuse_getxattr_in (``_string``); request extensions and
    what ``getxattr_node`` declines are left to the engine."""
    cdef char name[XATTR_NAME_MAX + 1]
    cdef uint8_t value[XATTR_FAST_MAX]
    cdef size_t nlen
    cdef size_t length = 0
    cdef int rc
    if not vq.handles.xattrs_unmapped:
        return 0
    rc = _string(vq, sizeof(fuse_in_header) + sizeof(fuse_getxattr_in), name, XATTR_NAME_MAX,
                 &nlen)
    if rc <= 0:
        if rc < 0:
            vq._reply(rc, NULL, 0)
        return rc < 0
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
    if not vq.handles.xattrs_unmapped:
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


cdef int do_setxattr(Virtqueue vq) noexcept nogil:
    """SETXATTR framed without FUSE_SETXATTR_EXT (FUSE_COMPAT_SETXATTR_IN_SIZE bytes of
    fuse_setxattr_in: size and flags): the name (``_string``),
    then ``size`` bytes of value, which must be in the request (EINVAL, as the engine finds a
    value shorter than its size); values larger than XATTR_FAST_MAX, request extensions and
    what ``setxattr_node`` declines are left to the engine."""
    cdef char name[XATTR_NAME_MAX + 1]
    cdef uint8_t value[XATTR_FAST_MAX]
    cdef uint32_t at = sizeof(fuse_in_header) + FUSE_COMPAT_SETXATTR_IN_SIZE
    cdef uint32_t size = vq.req.hdr.arg.setxattr.size
    cdef size_t nlen
    cdef int rc
    if not vq.handles.xattrs_settable:
        return 0
    rc = _string(vq, at, name, XATTR_NAME_MAX, &nlen)
    if rc <= 0:
        if rc < 0:
            vq._reply(rc, NULL, 0)
        return rc < 0
    at += <uint32_t>nlen + 1
    if size > vq.req.hdr.h.len - at:
        vq._reply(-EINVAL, NULL, 0)
        return 1
    if size > sizeof(value) or \
            _gather(vq.req.iov, vq.req.chain.out_num, at, value, size) != size:
        return 0
    rc = setxattr_node(vq.handles, vq.inodes, vq.req.hdr.h.nodeid, name, value, size,
                       vq.req.hdr.arg.setxattr.flags)
    if rc == 1:
        return 0
    vq._reply(rc, NULL, 0)
    return 1


cdef int do_removexattr(Virtqueue vq) noexcept nogil:
    """REMOVEXATTR: the name right after the header (``_string``); request extensions and
    what ``removexattr_node`` declines are left to the engine."""
    cdef char name[XATTR_NAME_MAX + 1]
    cdef size_t nlen
    cdef int rc
    if not vq.handles.xattrs_settable:
        return 0
    rc = _string(vq, sizeof(fuse_in_header), name, XATTR_NAME_MAX, &nlen)
    if rc <= 0:
        if rc < 0:
            vq._reply(rc, NULL, 0)
        return rc < 0
    rc = removexattr_node(vq.handles, vq.inodes, vq.req.hdr.h.nodeid, name)
    if rc == 1:
        return 0
    vq._reply(rc, NULL, 0)
    return 1


_fast_op(FUSE_GETXATTR, do_getxattr, sizeof(fuse_getxattr_in), NEEDS_INODES)
_fast_op(FUSE_LISTXATTR, do_listxattr, sizeof(fuse_getxattr_in), NEEDS_INODES)
_fast_op(FUSE_SETXATTR, do_setxattr, FUSE_COMPAT_SETXATTR_IN_SIZE,
         NEEDS_INODES | NEEDS_WRITABLE)
_fast_op(FUSE_REMOVEXATTR, do_removexattr, 0, NEEDS_INODES | NEEDS_WRITABLE)
