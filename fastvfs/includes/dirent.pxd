# C declarations of <dirent.h> (glibc 2.36): getdents64(2).

cdef extern from "<dirent.h>" nogil:
    ssize_t getdents64(int fd, void *dirp, size_t count)
