# C declarations of <fcntl.h> (glibc 2.36): fallocate (with the FALLOC_FL_* modes of
# <linux/falloc.h>, which it includes under _GNU_SOURCE), fcntl (with OFD locks), openat,
# renameat2 (its RENAME_* flags from <stdio.h>, as glibc declares them under _GNU_SOURCE) and
# the file-handle calls, with struct file_handle sized for the largest handle
# (linux/exportfs.h MAX_HANDLE_SZ).
# The AT_* flags statx takes are in statx.pxd.

from libc.stdint cimport int64_t

cdef extern from "<fcntl.h>" nogil:
    int fallocate(int fd, int mode, int64_t offset, int64_t length)
    enum: FALLOC_FL_KEEP_SIZE
    int fcntl(int fd, int cmd, ...)
    enum: F_GETFL, O_DIRECT
    # Open file description locks (fcntl(2), F_OFD_*) and their struct flock (off_t and pid_t
    # as x86-64 and aarch64 glibc define them).
    enum: F_OFD_GETLK, F_OFD_SETLK, F_OFD_SETLKW, F_RDLCK, F_WRLCK, F_UNLCK
    struct flock:
        short l_type
        short l_whence
        int64_t l_start
        int64_t l_len
        int l_pid
    int openat(int dirfd, const char *path, int flags, ...)
    enum: AT_FDCWD, O_ACCMODE, O_RDONLY, O_WRONLY, O_RDWR, O_APPEND, O_TRUNC, O_CREAT, O_EXCL
    enum: O_CLOEXEC, AT_REMOVEDIR
    enum: O_DIRECTORY, O_NOFOLLOW, O_PATH
    enum: AT_SYMLINK_FOLLOW
    int renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath,
                  unsigned int flags)

cdef extern from "<stdio.h>" nogil:
    enum: RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT

cdef extern from *:
    """
    #include <fcntl.h>
    #ifndef MAX_HANDLE_SZ
    #define MAX_HANDLE_SZ 128
    #endif
    /* struct file_handle with room for the largest handle (linux/exportfs.h, MAX_HANDLE_SZ). */
    struct fastvfs_file_handle {
        unsigned int handle_bytes;
        int handle_type;
        unsigned char f_handle[MAX_HANDLE_SZ];
    };
    """
    enum: MAX_HANDLE_SZ
    struct fastvfs_file_handle:
        unsigned int handle_bytes
        int handle_type
        unsigned char f_handle[MAX_HANDLE_SZ]
    int name_to_handle_at(int dirfd, const char *path, void *handle, int *mount_id,
                          int flags) nogil
    int open_by_handle_at(int mount_fd, void *handle, int flags) nogil
