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
# inode behind an O_PATH descriptor changes without naming it.  glibc 2.36 has no wrapper and
# its headers no number; 452 is the call's number in every architecture's table.
cdef extern from *:
    """
    #include <sys/syscall.h>
    #include <unistd.h>
    #ifndef SYS_fchmodat2
    #define SYS_fchmodat2 452
    #endif
    static inline int fastvfs_fchmodat2(int dirfd, const char *path, unsigned int mode,
                                        int flags)
    {
        return (int)syscall(SYS_fchmodat2, dirfd, path, mode, flags);
    }
    """
    int fastvfs_fchmodat2(int dirfd, const char *path, unsigned int mode, int flags) nogil
