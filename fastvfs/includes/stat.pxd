# C declarations of <sys/stat.h> (glibc 2.36) other than statx (see statx.pxd).

from fastvfs.includes.posix cimport timespec

cdef extern from "<sys/stat.h>" nogil:
    struct stat:
        unsigned int st_mode
    int fstat(int fd, stat *buf)
    int fstatat(int dirfd, const char *path, stat *buf, int flags)
    int fchmod(int fd, unsigned int mode)
    int c_stat "stat"(const char *path, stat *buf)
    int chmod(const char *path, unsigned int mode)
    int fchmodat(int dirfd, const char *path, unsigned int mode, int flags)
    int mkdirat(int dirfd, const char *path, unsigned int mode)
    int mknodat(int dirfd, const char *path, unsigned int mode, unsigned long dev)
    unsigned int c_umask "umask"(unsigned int mask)
    int utimensat(int dirfd, const char *path, const timespec *times, int flags)
    bint S_ISREG(unsigned int mode)
    bint S_ISDIR(unsigned int mode)
    bint S_ISLNK(unsigned int mode)
    unsigned int S_ISUID
    unsigned int S_ISGID
    unsigned int S_IXGRP
    long UTIME_NOW
    long UTIME_OMIT

# fchmodat2(2) (Linux 6.6): fchmodat with flags, AT_EMPTY_PATH among them, so the mode of the
# inode behind an O_PATH descriptor changes without naming it.  glibc 2.36 has no wrapper, and
# kernel headers before 6.6 no number: then 452, the number of the architectures of the unified
# table (asm-generic) and of x86; elsewhere (alpha, MIPS: numbers of their own) the call is
# taken for absent (-1, ENOSYS).
cdef extern from *:
    """
    #include <sys/syscall.h>
    #include <unistd.h>
    #if defined(__NR_fchmodat2)
    #define FASTVFS_NR_FCHMODAT2 __NR_fchmodat2
    #elif defined(__x86_64__) || defined(__i386__) || defined(__aarch64__) || \
          defined(__arm__) || defined(__riscv) || defined(__powerpc__) || \
          defined(__s390__) || defined(__loongarch__)
    #define FASTVFS_NR_FCHMODAT2 452
    #else
    #define FASTVFS_NR_FCHMODAT2 -1
    #endif
    static inline int fastvfs_fchmodat2(int dirfd, const char *path, unsigned int mode,
                                        int flags)
    {
        return (int)syscall(FASTVFS_NR_FCHMODAT2, dirfd, path, mode, flags);
    }
    """
    int fastvfs_fchmodat2(int dirfd, const char *path, unsigned int mode, int flags) nogil
