# C declarations of <sched.h> (glibc 2.36): CPU affinity.

cdef extern from "<sched.h>" nogil:
    ctypedef struct cpu_set_t:
        pass
    void CPU_ZERO(cpu_set_t *set)
    void CPU_SET(int cpu, cpu_set_t *set)
    int sched_setaffinity(int pid, size_t size, const cpu_set_t *mask)
