# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The lean frontend driver: a closed loop of FUSE requests on one split virtqueue, in C.

The Python driver (``virtq.DriverVirtqueue`` + ``fuse_client.FuseClient``) spends tens of
microseconds per request in the interpreter, far more than a backend needs to answer one; a
benchmark driven by it measures the driver.  ``LeanQueue`` takes over a started queue for the
length of a run and does what the guest's virtio driver does, without the GIL:

* ``depth`` chains are built once, in guest memory, by the caller (indirect tables when
  VIRTIO_RING_F_INDIRECT_DESC is negotiated, as Linux does); a completed chain is re-published
  with a fresh ``unique`` and, for READ/WRITE, a fresh random offset;
* or ``depth`` cycles of dependent requests (CREATE, RELEASE of the handle it returned, UNLINK,
  FORGET of its node), each step a chain of its own: a completed step publishes the next step
  of its cycle, after copying into it the values it takes from earlier replies (a handle, a
  node id), and the last step starts the cycle again; a step with no reply (FORGET) has no
  writable part and completes with a used length of 0;
* the avail index is published once per reaping round and the device is kicked only when
  ``avail_event`` asks for it (VIRTIO_RING_F_EVENT_IDX, virtio 1.2 section 2.7.10); with
  ``publish_each`` every request is published on its own and the kick decided for each, as
  Linux's ``virtio_fs_enqueue_req`` does (``virtqueue_add_sgs``, then
  ``virtqueue_kick_prepare`` and ``virtqueue_notify`` per request: each request is submitted by
  its own process as the previous one's completion wakes it);
* completions are reaped until the used ring is empty; only then is ``used_event`` armed and the
  thread put to sleep on the call eventfd (Linux's ``virtqueue_enable_cb`` before sleeping).

Every reply's ``fuse_out_header`` is checked (length = used length, unique, error: 0, or
exactly the run's ``ok_error`` where the workload expects one, such as ENOENT for a missing
name).  The run
reports the requests done, the wall time and the driver thread's own CPU time, so a figure bound
by the driver shows as such.
"""

from libc.stdint cimport INT32_MIN, UINT64_MAX, uint8_t, uint16_t, uint32_t, uint64_t, int32_t
from libc.string cimport memcpy
from libc.stdlib cimport malloc, free
from libc.errno cimport errno, EINTR

from fastvfs.includes.posix cimport (CLOCK_MONOTONIC, CLOCK_THREAD_CPUTIME_ID, POLLIN, c_read,
                                     c_write, clock_gettime, poll, pollfd, pread, pwrite,
                                     timespec)

from fastvfs.includes.atomics cimport (fastvfs_acquire, fastvfs_full_barrier, fastvfs_load16,
                                       fastvfs_load_int, fastvfs_release, fastvfs_store16,
                                       fastvfs_store_int)
from fastvfs.includes.pthread cimport pthread_create, pthread_join, pthread_t
from fastvfs.includes.sched cimport CPU_SET, CPU_ZERO, cpu_set_t, sched_setaffinity

cdef inline double _clock(int clk) noexcept nogil:
    cdef timespec ts
    clock_gettime(clk, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


# ``_check``'s answer for a reply that breaks the protocol (length, unique): no errno.
MALFORMED = INT32_MIN


# The most values one step of a cycle takes from earlier replies.
cdef enum:
    MAX_PATCHES = 4


cdef struct Patch:
    uint8_t *src            # 8 bytes of an earlier step's reply (a node id, a handle)
    uint8_t *dst            # where they go in this step's request


cdef struct Slot:
    uint8_t *req            # fuse_in_header (unique at +8)
    uint8_t *offset_field   # read_in/write_in offset, or NULL
    uint8_t *out            # fuse_out_header, or NULL: no reply (FORGET), used length 0
    uint64_t unique
    uint32_t expect_len     # 0: any length (READ may be short at EOF)
    uint16_t next_head      # the chain published when this one completes (itself: one request)
    bint last               # this chain's completion ends a cycle
    int npatches
    Patch patches[MAX_PATCHES]   # copied before this chain is published


cdef class LeanQueue:
    """One queue's closed loop.  ``avail``/``used``: host addresses of the rings; indices as the
    Python driver left them; ``slots``: ``[(head, req_addr, offset_addr or 0, out_addr or 0,
    expected reply length or 0)]`` with the chains already written, each published again as it
    completes; or, for cycles, ``[(head, req_addr, offset_addr or 0, out_addr or 0, expected
    length or 0, next_head, first, last, [(src_addr, dst_addr)])]``: the chain ``next_head`` is
    published when this one completes, the 8 bytes at each ``src_addr`` copied to its
    ``dst_addr`` first; the ``first`` chains are published at the start, one per cycle in
    flight; a ``last`` chain's completion counts a cycle."""
    cdef uint8_t *avail
    cdef uint8_t *used
    cdef uint16_t num
    cdef bint event_idx
    cdef bint publish_each
    cdef int kick_fd, call_fd
    cdef readonly uint16_t avail_idx
    cdef readonly uint16_t last_used_idx
    cdef Slot *by_head
    cdef uint16_t *heads
    cdef int nslots
    cdef uint64_t next_unique
    cdef uint64_t span, block
    cdef uint64_t rng
    cdef readonly uint64_t kicks, sleeps, errors, publishes
    cdef readonly int first_error
    cdef int ok_error

    def __cinit__(self):
        self.by_head = NULL
        self.heads = NULL

    def __dealloc__(self):
        free(self.by_head)
        free(self.heads)

    def __init__(self, uint64_t avail, uint64_t used, uint16_t num, bint event_idx, int kick_fd,
                 int call_fd, uint16_t avail_idx, uint16_t last_used_idx, slots,
                 uint64_t span=1, uint64_t block=0, uint64_t first_unique=1 << 40, seed=1,
                 bint publish_each=False, int ok_error=0):
        cdef Slot *s
        if ok_error > 0 or ok_error == INT32_MIN:
            raise ValueError("ok_error is 0 or a negative errno")
        self.ok_error = ok_error
        self.avail = <uint8_t *>avail
        self.publish_each = publish_each
        self.used = <uint8_t *>used
        self.num = num
        self.event_idx = event_idx
        self.kick_fd = kick_fd
        self.call_fd = call_fd
        self.avail_idx = avail_idx
        self.last_used_idx = last_used_idx
        self.by_head = <Slot *>malloc(num * sizeof(Slot))
        self.heads = <uint16_t *>malloc(num * sizeof(uint16_t))
        if self.by_head == NULL or self.heads == NULL:
            raise MemoryError()
        self.nslots = 0
        seen = set()
        for slot in slots:
            head, req, offset, out, expect = slot[:5]
            next_head, first, last, patches = slot[5:] if len(slot) > 5 else (head, True, True,
                                                                               ())
            if head >= num or next_head >= num or head in seen or len(patches) > MAX_PATCHES:
                raise ValueError("bad slot")
            seen.add(head)
            s = &self.by_head[head]
            s.req = <uint8_t *><uint64_t>req
            s.offset_field = <uint8_t *><uint64_t>offset
            s.out = <uint8_t *><uint64_t>out
            s.expect_len = expect
            s.next_head = next_head
            s.last = last
            s.npatches = 0
            for src, dst in patches:
                s.patches[s.npatches].src = <uint8_t *><uint64_t>src
                s.patches[s.npatches].dst = <uint8_t *><uint64_t>dst
                s.npatches += 1
            if first:
                self.heads[self.nslots] = head
                self.nslots += 1
        if not self.nslots:
            raise ValueError("no chain to start with")
        self.next_unique = first_unique
        self.span = span if span else 1
        self.block = block
        self.rng = (<uint64_t>seed) * 0x9E3779B97F4A7C15ULL | 1

    cdef inline void _prepare(self, uint16_t head) noexcept nogil:
        cdef Slot *s = &self.by_head[head]
        cdef uint64_t off
        cdef int i
        for i in range(s.npatches):
            memcpy(s.patches[i].dst, s.patches[i].src, 8)
        self.next_unique += 2
        s.unique = self.next_unique
        memcpy(s.req + 8, &s.unique, 8)
        if s.offset_field != NULL:
            self.rng ^= self.rng << 13
            self.rng ^= self.rng >> 7
            self.rng ^= self.rng << 17
            off = (self.rng % self.span) * self.block
            memcpy(s.offset_field, &off, 8)

    cdef inline void _queue(self, uint16_t head) noexcept nogil:
        fastvfs_store16(self.avail + 4 + 2 * <uint32_t>(self.avail_idx % self.num), head)
        self.avail_idx += 1

    cdef inline void _publish(self, uint16_t old) noexcept nogil:
        cdef uint16_t new = self.avail_idx, event
        cdef uint64_t one = 1
        if old == new:
            return
        self.publishes += 1
        # Ring entries before the index (x86-64 keeps stores in order; the compiler must too).
        fastvfs_release()
        fastvfs_store16(self.avail + 2, new)
        fastvfs_full_barrier()
        if self.event_idx:
            event = fastvfs_load16(self.used + 4 + 8 * <uint32_t>self.num)
            if <uint16_t>(new - event - 1) >= <uint16_t>(new - old):
                return
        elif fastvfs_load16(self.used) & 1:     # VRING_USED_F_NO_NOTIFY
            return
        c_write(self.kick_fd, &one, 8)
        self.kicks += 1

    cdef int _check(self, uint16_t head, uint32_t length) noexcept nogil:
        cdef Slot *s = &self.by_head[head]
        cdef uint32_t olen
        cdef int32_t error
        cdef uint64_t unique
        if s.out == NULL:
            return 0 if length == 0 else INT32_MIN
        memcpy(&olen, s.out, 4)
        memcpy(&error, s.out + 4, 4)
        memcpy(&unique, s.out + 8, 8)
        if olen != length or unique != s.unique or (s.expect_len and length != s.expect_len
                                                    and error == 0):
            return INT32_MIN
        return error

    def run(self, double seconds, uint64_t max_requests=0):
        """Keep every slot in flight for ``seconds`` (or until ``max_requests`` are done, when
        given); returns a dict of what happened."""
        cdef int i, rc, idle_polls = 0
        cdef uint16_t used_idx, head, old
        cdef uint32_t length, id32
        cdef uint64_t done = 0, counted = 0, cycles = 0, counted_cycles = 0, counter
        cdef uint64_t inflight = 0
        cdef Slot *s
        cdef bint running = True, stalled = False, bad = False
        cdef double t0, t_end, cpu0, wall = 0, cpu_used = 0
        cdef pollfd pfd
        pfd.fd = self.call_fd
        pfd.events = POLLIN
        with nogil:
            cpu0 = _clock(CLOCK_THREAD_CPUTIME_ID)
            t0 = _clock(CLOCK_MONOTONIC)
            t_end = t0 + seconds
            old = self.avail_idx
            for i in range(self.nslots):
                self._prepare(self.heads[i])
                self._queue(self.heads[i])
                inflight += 1
                if self.publish_each:
                    self._publish(old)
                    old = self.avail_idx
            self._publish(old)
            while inflight:
                used_idx = fastvfs_load16(self.used + 2)
                if used_idx == self.last_used_idx:
                    if self.event_idx:
                        # Arm the interrupt, then look again (a completion may have landed).
                        fastvfs_store16(self.avail + 4 + 2 * <uint32_t>self.num, self.last_used_idx)
                        fastvfs_full_barrier()
                        if fastvfs_load16(self.used + 2) != self.last_used_idx:
                            continue
                    self.sleeps += 1
                    rc = poll(&pfd, 1, 1000)
                    if rc > 0:
                        c_read(self.call_fd, &counter, 8)
                        idle_polls = 0
                    elif rc == 0:
                        idle_polls += 1
                        if idle_polls >= 10:
                            stalled = True
                            break
                    elif errno != EINTR:
                        stalled = True
                        break
                    continue
                if <uint16_t>(used_idx - self.last_used_idx) > inflight:
                    bad = True
                    break
                fastvfs_acquire()
                old = self.avail_idx
                while self.last_used_idx != used_idx:
                    memcpy(&id32, self.used + 4 + 8 * <uint32_t>(self.last_used_idx % self.num), 4)
                    memcpy(&length, self.used + 8 + 8 * <uint32_t>(self.last_used_idx % self.num), 4)
                    self.last_used_idx += 1
                    if id32 >= self.num:
                        bad = True
                        break
                    head = <uint16_t>id32
                    rc = self._check(head, length)
                    if rc != self.ok_error:
                        self.errors += 1
                        if self.errors == 1:
                            self.first_error = rc
                    done += 1
                    s = &self.by_head[head]
                    if s.last:
                        cycles += 1
                    if running or not s.last:
                        # The next step of the cycle (the same request again, for one), or,
                        # once the run is over, the rest of a cycle already started.
                        head = s.next_head
                        self._prepare(head)
                        self._queue(head)
                        if self.publish_each:
                            self._publish(old)
                            old = self.avail_idx
                    else:
                        inflight -= 1
                if bad:
                    break
                if running and ((max_requests and done >= max_requests) or
                                _clock(CLOCK_MONOTONIC) >= t_end):
                    # The figures stop here; what is in flight is then drained.
                    running = False
                    wall = _clock(CLOCK_MONOTONIC) - t0
                    counted = done
                    counted_cycles = cycles
                    cpu_used = _clock(CLOCK_THREAD_CPUTIME_ID) - cpu0
                self._publish(old)
            if running:
                wall = _clock(CLOCK_MONOTONIC) - t0
                counted = done
                counted_cycles = cycles
                cpu_used = _clock(CLOCK_THREAD_CPUTIME_ID) - cpu0
        if stalled:
            raise TimeoutError(f"{inflight} requests got no answer for 10 s")
        if bad:
            raise RuntimeError("the device broke the used ring contract")
        return {"requests": counted, "cycles": counted_cycles, "wall_s": wall,
                "driver_cpu_s": cpu_used, "kicks": self.kicks,
                "publishes": self.publishes,
                "sleeps": self.sleeps, "errors": self.errors, "first_error": self.first_error}


def native_io(int fd, uint64_t size, uint64_t span, double seconds, bint write, seed=1,
              uint64_t buffers=1):
    """The host-native ceiling: ``size``-byte pread/pwrite at random ``size``-aligned offsets
    below ``span * size`` of ``fd``, one at a time on this thread, for ``seconds``, into (or
    out of) ``buffers`` buffers of ``size`` bytes in turn (as many as a queue has requests in
    flight: the memory the data goes to is then as large as the backend's, not one buffer
    kept in the CPU's cache)."""
    if size == 0 or buffers < 1 or buffers > UINT64_MAX // size:
        raise ValueError("size and buffers must be positive, their product a size")
    cdef uint8_t *mem = <uint8_t *>malloc(size * buffers)
    cdef uint8_t *buf
    cdef uint64_t rng = (<uint64_t>seed) * 0x9E3779B97F4A7C15ULL | 1, done = 0
    cdef double t0, t_end, now, cpu0
    cdef ssize_t n = 0
    if mem == NULL:
        raise MemoryError()
    cdef uint64_t i
    for i in range(size * buffers):
        mem[i] = <uint8_t>(i * 131)
    with nogil:
        cpu0 = _clock(CLOCK_THREAD_CPUTIME_ID)
        t0 = _clock(CLOCK_MONOTONIC)
        t_end = t0 + seconds
        now = t0
        while now < t_end:
            rng ^= rng << 13
            rng ^= rng >> 7
            rng ^= rng << 17
            buf = mem + (done % buffers) * size
            if write:
                n = pwrite(fd, buf, size, <long>((rng % span) * size))
            else:
                n = pread(fd, buf, size, <long>((rng % span) * size))
            if n < 0:
                break
            done += 1
            if (done & 15) == 0:
                now = _clock(CLOCK_MONOTONIC)
        now = _clock(CLOCK_MONOTONIC)
        cpu0 = _clock(CLOCK_THREAD_CPUTIME_ID) - cpu0
    free(mem)
    if n < 0:
        raise OSError(errno, "host-native I/O failed")
    return {"requests": done, "wall_s": now - t0, "cpu_s": cpu0}


cdef struct Echo:
    int kick_fd
    int call_fd
    int cpu
    int stop


cdef void *_echo(void *arg) noexcept nogil:
    """The backend of ``wake_floor``: sleep on the kick eventfd as a queue worker does, and
    answer every kick at once with a call, doing nothing in between."""
    cdef Echo *e = <Echo *>arg
    cdef pollfd pfd
    cdef uint64_t counter, one = 1
    cdef cpu_set_t cpus
    if e.cpu >= 0:
        CPU_ZERO(&cpus)
        CPU_SET(e.cpu, &cpus)
        sched_setaffinity(0, sizeof(cpu_set_t), &cpus)
    pfd.fd = e.kick_fd
    pfd.events = POLLIN
    while True:
        if poll(&pfd, 1, -1) < 0:
            continue
        c_read(e.kick_fd, &counter, 8)
        if fastvfs_load_int(&e.stop):
            break
        c_write(e.call_fd, &one, 8)
    return NULL


def wake_floor(int kick_fd, int call_fd, double seconds, int echo_cpu=-1):
    """The wake-up floor of depth 1: round trips per second between this thread and a C thread
    over two eventfds (``kick_fd``, ``call_fd``, both blocking), each side sleeping in poll and
    reading its eventfd as the driver and a queue worker do, with no work in between.  A
    request at depth 1 costs at least one such round trip, so no backend that sleeps between
    requests can answer faster on this machine.  ``echo_cpu`` >= 0 pins the answering thread
    to that CPU (the caller's own affinity is the caller's business)."""
    cdef Echo e
    cdef pthread_t thread
    cdef pollfd pfd
    cdef uint64_t counter, one = 1, done = 0
    cdef double t0, t_end, now
    e.kick_fd = kick_fd
    e.call_fd = call_fd
    e.stop = 0
    e.cpu = echo_cpu
    if pthread_create(&thread, NULL, _echo, &e) != 0:
        raise OSError(errno, "pthread_create")
    pfd.fd = call_fd
    pfd.events = POLLIN
    with nogil:
        t0 = _clock(CLOCK_MONOTONIC)
        t_end = t0 + seconds
        now = t0
        while now < t_end:
            c_write(kick_fd, &one, 8)
            while poll(&pfd, 1, -1) < 0:
                pass
            c_read(call_fd, &counter, 8)
            done += 1
            now = _clock(CLOCK_MONOTONIC)
        fastvfs_store_int(&e.stop, 1)
        c_write(kick_fd, &one, 8)
        pthread_join(thread, NULL)
    return {"requests": done, "wall_s": now - t0, "req_per_s": done / (now - t0),
            "us_per_request": (now - t0) * 1e6 / done if done else None}
