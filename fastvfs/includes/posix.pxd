# C declarations of the POSIX calls the queue worker, the file system's system-call helpers and
# the lean frontend driver share: poll(2), <unistd.h> (copy_file_range(2) a GNU extension),
# clock_gettime(2), strnlen and memrchr (a GNU extension: Python.h defines _GNU_SOURCE),
# unshare(2) and
# the raw system-call numbers (glibc 2.36).

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    short POLLIN

cdef extern from "<unistd.h>" nogil:
    ssize_t c_read "read"(int fd, void *buf, size_t count)
    ssize_t c_write "write"(int fd, const void *buf, size_t count)
    ssize_t pread(int fd, void *buf, size_t count, long offset)
    ssize_t pwrite(int fd, const void *buf, size_t count, long offset)
    int c_close "close"(int fd)
    int dup(int fd)
    int fsync(int fd)
    int fdatasync(int fd)
    int unlinkat(int dirfd, const char *path, int flags)
    int symlinkat(const char *target, int dirfd, const char *path)
    int linkat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, int flags)
    int chdir(const char *path)
    int fchdir(int fd)
    ssize_t readlinkat(int dirfd, const char *path, char *buf, size_t size)
    int ftruncate(int fd, long length)
    int truncate(const char *path, long length)
    ssize_t c_copy_file_range "copy_file_range"(int fd_in, long *off_in, int fd_out,
                                                long *off_out, size_t length,
                                                unsigned int flags)

cdef extern from "<time.h>" nogil:
    struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec *ts)
    int CLOCK_MONOTONIC
    int CLOCK_THREAD_CPUTIME_ID

cdef extern from "<unistd.h>" nogil:
    long lseek(int fd, long offset, int whence)
    enum:
        SEEK_SET
        SEEK_CUR
        SEEK_END
        SEEK_DATA               # with SEEK_HOLE, a GNU extension (Python.h's _GNU_SOURCE)
        SEEK_HOLE
    int fchownat(int dirfd, const char *path, unsigned int owner, unsigned int group, int flags)
    int syncfs(int fd)
    long syscall(long number, ...)

cdef extern from "<string.h>" nogil:
    size_t strnlen(const char *s, size_t maxlen)
    void *memrchr(const void *s, int c, size_t n)

cdef extern from "<sched.h>" nogil:
    int unshare(int flags)
    int CLONE_FS

cdef extern from "<sys/syscall.h>" nogil:
    long SYS_setfsuid
    long SYS_setfsgid
    long SYS_setgroups
