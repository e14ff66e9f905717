# The file-system ids this thread last took on through fastvfs/fs/_sys.pyx ``_fs_ids``, which
# alone reads and sets them (the variables are static: one per extension module): with
# ``fastvfs_fs_ids_known`` set, fsuid(2)/fsgid are known to be ``fastvfs_fsuid`` and
# ``fastvfs_fsgid``, so a switch to the pair already in force needs no system call.  Valid
# because a serving thread's ids change only through ``_fs_ids`` (setfsuid(2) and
# setfsgid(2) act on the calling thread alone; the sandbox's process-wide id changes all come
# before any thread switches).

cdef extern from *:
    """
    static __thread int fastvfs_fs_ids_known;
    static __thread unsigned int fastvfs_fsuid, fastvfs_fsgid;
    """
    int fastvfs_fs_ids_known
    unsigned int fastvfs_fsuid
    unsigned int fastvfs_fsgid
