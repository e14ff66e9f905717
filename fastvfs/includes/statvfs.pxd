# C declarations of <sys/statvfs.h> (glibc 2.36): fstatvfs(3), whose fields STATFS answers with
# (the same call os.fstatvfs makes, so both paths see the same f_frsize and f_namemax).

cdef extern from "<sys/statvfs.h>" nogil:
    struct statvfs:
        unsigned long f_bsize
        unsigned long f_frsize
        unsigned long f_blocks
        unsigned long f_bfree
        unsigned long f_bavail
        unsigned long f_files
        unsigned long f_ffree
        unsigned long f_namemax
    int fstatvfs(int fd, statvfs *buf)
