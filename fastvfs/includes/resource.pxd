# C declarations of <sys/resource.h> (glibc 2.36): per-thread resource usage.

cdef extern from "<sys/resource.h>" nogil:
    struct rusage:
        long ru_nivcsw
    int RUSAGE_THREAD
    int getrusage(int who, rusage *usage)
