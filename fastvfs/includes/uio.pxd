# C declarations of <sys/uio.h> (glibc 2.36): vectored positional I/O.

cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len
    ssize_t preadv(int fd, const iovec *iov, int iovcnt, long offset)
    ssize_t preadv2(int fd, const iovec *iov, int iovcnt, long offset, int flags)
    enum: RWF_NOWAIT
    ssize_t pwritev(int fd, const iovec *iov, int iovcnt, long offset)
