# iovec helpers: copies between flat buffers and a chain's iovecs, slices of them, and the
# synchronous transfer loop (no knowledge of rings or FUSE).

cdef inline uint64_t _copy_iov(const iovec *iov, int cnt, uint64_t skip, uint8_t *buf,
                               uint64_t length, bint into_iov) noexcept nogil:
    """Copy ``length`` bytes between ``buf`` and an iovec list, starting ``skip`` bytes into the
    list (towards the iovecs when ``into_iov``); returns the bytes copied."""
    cdef int i
    cdef uint64_t done = 0, take, avail
    cdef uint8_t *p
    for i in range(cnt):
        if done == length:
            break
        if skip >= iov[i].iov_len:
            skip -= iov[i].iov_len
            continue
        avail = iov[i].iov_len - skip
        take = length - done if length - done < avail else avail
        p = <uint8_t *>iov[i].iov_base + skip
        if into_iov:
            memcpy(p, buf + done, take)
        else:
            memcpy(buf + done, p, take)
        done += take
        skip = 0
    return done


cdef inline uint64_t _gather(const iovec *iov, int cnt, uint64_t skip, uint8_t *dst,
                             uint64_t length) noexcept nogil:
    return _copy_iov(iov, cnt, skip, dst, length, False)


cdef inline uint64_t _scatter(const iovec *iov, int cnt, uint64_t skip, const uint8_t *src,
                              uint64_t length) noexcept nogil:
    return _copy_iov(iov, cnt, skip, <uint8_t *>src, length, True)


cdef inline int _slice(const iovec *iov, int cnt, uint64_t skip, uint64_t length,
                       iovec *out) noexcept nogil:
    """The iovecs covering ``length`` bytes from ``skip``; returns their count."""
    cdef int i, n = 0
    cdef uint64_t avail
    for i in range(cnt):
        if length == 0:
            break
        if skip >= iov[i].iov_len:
            skip -= iov[i].iov_len
            continue
        avail = iov[i].iov_len - skip
        out[n].iov_base = <uint8_t *>iov[i].iov_base + skip
        out[n].iov_len = length if length < avail else avail
        length -= out[n].iov_len
        n += 1
        skip = 0
    return n


cdef int64_t _full_io(int fd, iovec *iov, int cnt, int64_t offset, uint64_t size,
                      bint writing, int first_flags) noexcept nogil:
    """preadv/pwritev until ``size`` bytes moved, EOF, or an error (-errno).  A read's
    ``first_flags`` (RWF_NOWAIT) go with its first call only, and that call's failure is
    returned at once; the rest of a short first read is read without them."""
    cdef uint64_t done = 0
    cdef ssize_t n
    cdef int i = 0
    while done < size and i < cnt:
        if writing:
            n = pwritev(fd, iov + i, cnt - i, offset + done)
        elif first_flags:
            n = preadv2(fd, iov + i, cnt - i, offset + done, first_flags)
        else:
            n = preadv(fd, iov + i, cnt - i, offset + done)
        if n < 0:
            if (errno == EINTR or errno == EAGAIN) and not first_flags:
                continue
            if done:
                break
            return -errno
        first_flags = 0
        if n == 0:
            break
        done += n
        # Step past what moved; a short transfer leaves us inside one iovec.
        while i < cnt and <size_t>n >= iov[i].iov_len:
            n -= iov[i].iov_len
            i += 1
        if i < cnt and n:
            iov[i].iov_base = <uint8_t *>iov[i].iov_base + n
            iov[i].iov_len -= n
    return done
