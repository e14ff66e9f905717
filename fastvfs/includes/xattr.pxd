# C declarations of <sys/xattr.h> (glibc 2.36) and the errno values its callers test.

cdef extern from "<sys/xattr.h>" nogil:
    ssize_t fgetxattr(int fd, const char *name, void *value, size_t size)
    int fremovexattr(int fd, const char *name)
    ssize_t getxattr(const char *path, const char *name, void *value, size_t size)
    ssize_t listxattr(const char *path, char *list, size_t size)
    int removexattr(const char *path, const char *name)
    int setxattr(const char *path, const char *name, const void *value, size_t size, int flags)
    enum: XATTR_CREATE
    enum: XATTR_REPLACE
    enum: ENODATA
    enum: EOPNOTSUPP
