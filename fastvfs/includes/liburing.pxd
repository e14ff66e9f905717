# C declarations of <liburing.h> (liburing 2.3): only the inline submit/complete helpers the hot
# path calls.  Ring set-up, probing and registration belong to the cffi engine (fastvfs/uring).

from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from fastvfs.includes.uio cimport iovec

cdef extern from "<liburing.h>" nogil:
    struct io_uring_sqe:
        pass
    struct io_uring_cqe:
        uint64_t user_data
        int32_t res
        uint32_t flags
    struct io_uring:
        int ring_fd
    io_uring_sqe *io_uring_get_sqe(io_uring *ring)
    void io_uring_prep_readv(io_uring_sqe *sqe, int fd, const iovec *iovecs, unsigned nr_vecs,
                             uint64_t offset)
    void io_uring_prep_writev(io_uring_sqe *sqe, int fd, const iovec *iovecs, unsigned nr_vecs,
                              uint64_t offset)
    void io_uring_prep_read(io_uring_sqe *sqe, int fd, void *buf, unsigned nbytes,
                            uint64_t offset)
    void io_uring_prep_write(io_uring_sqe *sqe, int fd, const void *buf, unsigned nbytes,
                             uint64_t offset)
    void io_uring_prep_read_fixed(io_uring_sqe *sqe, int fd, void *buf, unsigned nbytes,
                                  uint64_t offset, int buf_index)
    void io_uring_prep_write_fixed(io_uring_sqe *sqe, int fd, const void *buf, unsigned nbytes,
                                   uint64_t offset, int buf_index)
    void io_uring_prep_fsync(io_uring_sqe *sqe, int fd, unsigned fsync_flags)
    void io_uring_prep_fallocate(io_uring_sqe *sqe, int fd, int mode, int64_t offset,
                                 int64_t length)
    void io_uring_sqe_set_flags(io_uring_sqe *sqe, unsigned flags)
    unsigned IORING_FSYNC_DATASYNC
    unsigned IOSQE_IO_DRAIN
    void io_uring_sqe_set_data64(io_uring_sqe *sqe, uint64_t data)
    int io_uring_submit(io_uring *ring)
    unsigned io_uring_peek_batch_cqe(io_uring *ring, io_uring_cqe **cqes, unsigned count)
    void io_uring_cq_advance(io_uring *ring, unsigned nr)
    int io_uring_wait_cqe(io_uring *ring, io_uring_cqe **cqe_ptr)
    unsigned io_uring_cq_ready(const io_uring *ring)
