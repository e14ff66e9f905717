# C declarations of <sys/file.h> (glibc 2.36): flock(2), the whole-file locks a guest's flock()
# becomes (fuse_lk_in with FUSE_LK_FLOCK).  Named c_flock: Cython keeps one namespace for the
# function and fcntl.pxd's struct flock.

cdef extern from "<sys/file.h>" nogil:
    enum: LOCK_SH, LOCK_EX, LOCK_UN, LOCK_NB
    int c_flock "flock"(int fd, int operation)
