# C declarations of <dirent.h> (glibc 2.36): getdents64(2) and the records it fills (struct
# dirent64 has the kernel's linux_dirent64 layout; the name is NUL-terminated).

from libc.stdint cimport int64_t, uint16_t, uint64_t

cdef extern from "<dirent.h>" nogil:
    ssize_t getdents64(int fd, void *dirp, size_t count)
    struct dirent64:
        uint64_t d_ino
        int64_t d_off
        uint16_t d_reclen
        unsigned char d_type
        char d_name[256]
