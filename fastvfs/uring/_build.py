"""cffi builder for the liburing binding (API mode: compiled against <liburing.h>).

Mirrors liburing 2.3 (Debian 12's liburing-dev).  Only what the engine uses is declared; struct
layouts the compiler knows are left partial (``...;``) instead of being copied.  cffi releases
the GIL around every call declared here.
"""

from cffi import FFI

ffibuilder = FFI()

ffibuilder.set_source("fastvfs.uring._liburing", """
#include <liburing.h>
""", libraries=["uring"])

# <sys/uio.h>
ffibuilder.cdef("""
struct iovec { void *iov_base; size_t iov_len; };
""")

# <liburing/io_uring.h>
ffibuilder.cdef("""
struct io_uring_sqe { uint8_t opcode; uint8_t flags; ...; };
struct io_uring_cqe { uint64_t user_data; int32_t res; uint32_t flags; ...; };
struct io_uring_params { uint32_t sq_entries; uint32_t cq_entries; uint32_t flags;
                         uint32_t features; ...; };
struct io_uring_probe { uint8_t last_op; ...; };
struct io_uring_restriction { uint16_t opcode; uint8_t register_op; uint8_t sqe_op;
                              uint8_t sqe_flags; ...; };
#define IORING_SETUP_CLAMP ...
#define IORING_SETUP_R_DISABLED ...
#define IORING_RESTRICTION_REGISTER_OP ...
#define IORING_RESTRICTION_SQE_OP ...
#define IORING_RESTRICTION_SQE_FLAGS_ALLOWED ...
#define IORING_REGISTER_BUFFERS ...
#define IORING_REGISTER_RESTRICTIONS ...
#define IORING_REGISTER_ENABLE_RINGS ...
#define IORING_UNREGISTER_BUFFERS ...
#define IOSQE_IO_DRAIN ...
#define IORING_OP_NOP ...
#define IORING_OP_READ ...
#define IORING_OP_WRITE ...
#define IORING_SETUP_SUBMIT_ALL ...
#define IORING_SETUP_COOP_TASKRUN ...
#define IORING_SETUP_SINGLE_ISSUER ...
#define IORING_FEAT_NODROP ...
#define IORING_FEAT_FAST_POLL ...
#define IOSQE_FIXED_FILE ...
#define IORING_FSYNC_DATASYNC ...
#define IORING_OP_READV ...
#define IORING_OP_WRITEV ...
#define IORING_OP_FSYNC ...
#define IORING_OP_READ_FIXED ...
#define IORING_OP_WRITE_FIXED ...
#define IORING_OP_FALLOCATE ...
#define IORING_OP_OPENAT ...
#define IORING_OP_STATX ...
#define IORING_OP_LAST ...
""")

# <liburing.h>
ffibuilder.cdef("""
struct io_uring { int ring_fd; ...; };
int io_uring_queue_init_params(unsigned entries, struct io_uring *ring, struct io_uring_params *p);
void io_uring_queue_exit(struct io_uring *ring);
struct io_uring_probe *io_uring_get_probe_ring(struct io_uring *ring);
void io_uring_free_probe(struct io_uring_probe *probe);
int io_uring_opcode_supported(const struct io_uring_probe *p, int op);
int io_uring_register_buffers(struct io_uring *ring, const struct iovec *iovecs, unsigned nr_iovecs);
int io_uring_unregister_buffers(struct io_uring *ring);
int io_uring_register_files(struct io_uring *ring, const int *files, unsigned nr_files);
int io_uring_unregister_files(struct io_uring *ring);
int io_uring_register(unsigned int fd, unsigned int opcode, const void *arg,
                      unsigned int nr_args);
void io_uring_prep_nop(struct io_uring_sqe *sqe);
void io_uring_prep_openat(struct io_uring_sqe *sqe, int dfd, const char *path, int flags,
                          unsigned mode);
struct io_uring_sqe *io_uring_get_sqe(struct io_uring *ring);
void io_uring_prep_readv(struct io_uring_sqe *sqe, int fd, const struct iovec *iovecs,
                         unsigned nr_vecs, uint64_t offset);
void io_uring_prep_writev(struct io_uring_sqe *sqe, int fd, const struct iovec *iovecs,
                          unsigned nr_vecs, uint64_t offset);
void io_uring_prep_read_fixed(struct io_uring_sqe *sqe, int fd, void *buf, unsigned nbytes,
                              uint64_t offset, int buf_index);
void io_uring_prep_write_fixed(struct io_uring_sqe *sqe, int fd, const void *buf,
                               unsigned nbytes, uint64_t offset, int buf_index);
void io_uring_prep_fsync(struct io_uring_sqe *sqe, int fd, unsigned fsync_flags);
void io_uring_prep_fallocate(struct io_uring_sqe *sqe, int fd, int mode, uint64_t offset,
                             uint64_t len);
void io_uring_sqe_set_data64(struct io_uring_sqe *sqe, uint64_t data);
void io_uring_sqe_set_flags(struct io_uring_sqe *sqe, unsigned flags);
int io_uring_submit(struct io_uring *ring);
int io_uring_submit_and_wait(struct io_uring *ring, unsigned wait_nr);
unsigned io_uring_peek_batch_cqe(struct io_uring *ring, struct io_uring_cqe **cqes, unsigned count);
void io_uring_cq_advance(struct io_uring *ring, unsigned nr);
unsigned io_uring_sq_space_left(const struct io_uring *ring);
""")

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
