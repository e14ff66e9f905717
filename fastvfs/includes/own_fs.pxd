# Whether the calling thread has a working directory of its own (unshare(2) with CLONE_FS), as
# fastvfs.procfd gives each thread that names descriptors in the chroot sandbox: a thread
# that moves its working directory must own it, or it moves every thread's.  Read and set by
# fastvfs/fs/_sys.pyx ``own_fs`` alone (the variable is static: one per extension module).

cdef extern from *:
    """
    static __thread int fastvfs_own_fs;
    """
    int fastvfs_own_fs
