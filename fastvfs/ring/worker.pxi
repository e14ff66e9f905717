# The queue worker: one thread per ring.  It owns the split ring, the popped request, the
# batch of used elements and the io_uring I/O, sleeps on the kick eventfd with the GIL
# released, serves what the fast operations can, and takes the GIL only to ask the Python
# engine for the rest.

@cython.final   # no subclasses: the hot path's method calls are direct, not through a vtable
cdef class Virtqueue:
    """Device side of one split virtqueue (virtio 1.2 section 2.7).

    Built by the control plane once the ring's size, addresses and eventfds are known; ``run``
    serves it until ``stop``.  ``last_avail_idx`` is what GET_VRING_BASE reports.  ``options``
    (a ``fastvfs.config.RingOptions``) is read once, into the ring's configuration.
    """

    def __cinit__(self):
        self.req.iov = <iovec *>malloc(MAX_IOV * sizeof(iovec))
        self.req.scratch = <iovec *>malloc(MAX_IOV * sizeof(iovec))
        if self.req.iov == NULL or self.req.scratch == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.req.iov)
        free(self.req.scratch)
        free(self.io.pool)
        free(self.io.flight)

    def __init__(self, int index, MemoryTable mem, HandleTable handles, uint16_t num,
                 uint64_t desc_uaddr, uint64_t avail_uaddr, uint64_t used_uaddr,
                 uint16_t last_avail_idx, int kick_fd, int call_fd, int stop_fd,
                 bint event_idx, bint indirect, options, RingLock lock=None,
                 NodeTable inodes=None, RequestStats stats=None, int err_fd=-1):
        ring_init(&self.ring, mem, num, desc_uaddr, avail_uaddr, used_uaddr, last_avail_idx,
                  event_idx, indirect)
        self.cfg.index = index
        self.cfg.max_io = options.max_io
        self.cfg.attr_valid = <uint64_t>options.attr_timeout
        self.cfg.attr_valid_nsec = <uint32_t>((options.attr_timeout - self.cfg.attr_valid) * 1e9)
        self.cfg.want_uring = options.io_engine.uses_uring
        self.cfg.uring_writes = options.io_engine.uring_writes
        self.cfg.read_only = options.read_only
        self.cfg.want_fixed = options.fixed_buffers
        self.cfg.open_flags = options.open_flags
        self.cfg.opendir_flags = options.opendir_flags
        self.cfg.engine_pool = options.engine_pool
        self.cfg.poll_us = options.poll_us
        self.poll_window = self.cfg.poll_us
        self.mem = mem
        self.handles = handles
        # GETATTR, LOOKUP and FORGET are answered here when the node id table is shared with
        # the file system.
        self.inodes = inodes
        self.fds.kick = kick_fd
        self.fds.call = call_fd
        self.fds.err = err_fd
        self.fds.stop = stop_fd
        self.lock = lock if lock is not None else RingLock()
        self.stats_owner = stats
        self.stats = stats.ring_block(index) if stats is not None else NULL
        if self.cfg.want_uring:
            # What a queue with I/O in flight needs: nothing for a synchronous one.
            self.io.pool = <iovec *>malloc(POOL_IOV * sizeof(iovec))
            self.io.flight = <Flight *>calloc(num, sizeof(Flight))
            if self.io.pool == NULL or self.io.flight == NULL:
                raise MemoryError()

    # -- what the control plane and the tests read ----------------------------------------------

    @property
    def index(self): return self.cfg.index
    @property
    def num(self): return self.ring.num
    @property
    def last_avail_idx(self): return self.ring.last_avail_idx
    @property
    def used_idx(self): return self.ring.used_idx
    @property
    def bad_chains(self): return self._bad_chains
    @property
    def bad_heads(self): return self.ring.bad_heads
    @property
    def bad_avail(self): return self.ring.bad_avail
    @property
    def retired(self): return self._retired
    @property
    def successor(self): return self._successor
    @property
    def fixed_ios(self): return self.io.fixed_ios
    @property
    def lone_reads(self): return self.io.lone_reads
    @property
    def inline_syncs(self): return self.io.inline_syncs
    # How many pieces of guest memory the running queue has registered with its ring.
    @property
    def fixed_buffers(self): return self.io.nfixed
    # "uring" while READ/WRITE go through io_uring, else "sync".
    @property
    def io_engine(self): return "uring" if self.io.uring != NULL else "sync"

    def set_fast_io(self, bint enabled):
        """READ/WRITE are served in C only between FUSE_INIT and the session's end."""
        self.fast_io = enabled

    def set_call_fd(self, int fd):
        """Swap the call eventfd; once this returns the old one is no longer written to."""
        with nogil:
            pthread_mutex_lock(&self.lock.m)
            self.fds.call = fd
            pthread_mutex_unlock(&self.lock.m)

    def set_err_fd(self, int fd):
        """Swap the error eventfd (SET_VRING_ERR); as ``set_call_fd``."""
        with nogil:
            pthread_mutex_lock(&self.lock.m)
            self.fds.err = fd
            pthread_mutex_unlock(&self.lock.m)

    def retire(self, Virtqueue successor=None):
        """After ``stop``: pending replies go to ``successor`` (a restart of the same ring by
        the backend) or are dropped (the frontend stopped the ring)."""
        if successor is not None and successor.lock is not self.lock:
            raise ValueError("a successor must share the ring lock")
        pthread_mutex_lock(&self.lock.m)  # see the lock rule in PendingReply.complete
        if successor is not None:
            # Replies completed since this queue stopped moved the used index on.
            successor.ring.used_idx = fastvfs_load16(&successor.ring.used.idx)
        self._retired = True
        self._successor = successor
        pthread_mutex_unlock(&self.lock.m)

    # -- taking requests, publishing replies (no GIL) -------------------------------------------

    cdef int _pop(self) noexcept nogil:
        """Take the next available chain into ``req``: 1 taken, 0 nothing to take.  Avail
        ring faults (``ring_pop``) are signalled through the error eventfd."""
        cdef int head = ring_pop(&self.ring)
        if self.ring.faults:
            self.ring.faults = 0
            self._signal_error()
        if head < 0:
            return 0
        self.req.chain.head = <uint16_t>head
        self.req.opcode = 0
        if self.stats != NULL:
            self.req.start_ns = _now_ns()
        return 1

    cdef void _signal_error(self) noexcept nogil:
        """Signal the error eventfd the frontend gave (SET_VRING_ERR), if any."""
        cdef uint64_t one = 1
        pthread_mutex_lock(&self.lock.m)
        if self.fds.err >= 0:
            c_write(self.fds.err, &one, 8)
        pthread_mutex_unlock(&self.lock.m)

    cdef void _report(self):
        """Log the avail ring faults counted since the last report (called with the GIL, at
        most every REPORT_INTERVAL_S so a guest cannot flood the log)."""
        self.ring.reported = self.ring.bad_heads + self.ring.bad_avail
        self.ring.reported_ns = _now_ns()
        _log.error("ring %d: the driver published %d avail entries naming no descriptor "
                   "(skipped) and ran the avail index more than the queue size ahead %d times "
                   "(nothing taken until it is back in reach); error eventfd %s",
                   self.cfg.index, self.ring.bad_heads, self.ring.bad_avail,
                   "signalled" if self.fds.err >= 0 else "not set")

    cdef void _reply(self, int32_t error, const void *payload, uint32_t length) noexcept nogil:
        """Answer the popped request: its reply in the chain's writable buffers, the chain
        returned."""
        used_push(self, self.req.chain.head,
                        write_reply(self.req.iov + self.req.chain.out_num, self.req.chain.in_num,
                                    self.req.chain.in_len, self.req.hdr.h.unique, error,
                                    payload, length))
        self._account(error)

    cdef void _account(self, int32_t error) noexcept nogil:
        if self.stats != NULL:
            _stats_record(self.stats, self.req.opcode, error, _now_ns() - self.req.start_ns)

    # -- the loop -------------------------------------------------------------------------------

    def run(self, handler):
        """Serve the queue until ``stop``: sleep on the kick eventfd (and, with I/O in flight,
        on the io_uring) with the GIL released, drain the ring, notify.  Returns when the stop
        eventfd fires, once every I/O in flight has been answered."""
        engine = None
        if self.cfg.want_uring:
            engine = _open_uring(self.cfg.index, self.ring.num, self.cfg.uring_writes)
            if engine is not None:
                self.io.uring = <io_uring *><uintptr_t>engine.ring_address
                if self.cfg.want_fixed:
                    io_register_memory(self, engine)
        try:
            self._run(handler)
        finally:
            with nogil:
                if self.io.uring != NULL:
                    io_flush(self)
                used_flush(self)
            self.io.uring = NULL
            free(self.io.fixed)
            self.io.fixed = NULL
            self.io.nfixed = 0
            if engine is not None:
                engine.close()

    cdef int _run(self, handler) except -1:
        """The worker loop.  It runs without the GIL and takes it only to hand a request to
        the Python engine: the fast path costs no interpreter work, however many requests.

        It sleeps in ``epoll_wait`` on the kick eventfd (edge-triggered: each kick is an event,
        so the counter is never read back, one system call less per wake-up), the stop eventfd
        and the io_uring's completion queue."""
        cdef epoll_event ev
        cdef epoll_event events[3]
        cdef int rc, epfd, got, err = 0
        epfd = epoll_create1(EPOLL_CLOEXEC)
        if epfd < 0:
            raise OSError(errno, "epoll_create1")
        try:
            ev.data.u64 = 0
            ev.events = EPOLLIN | EPOLLET
            rc = epoll_ctl(epfd, EPOLL_CTL_ADD, self.fds.kick, &ev)
            if rc == 0:
                ev.events = EPOLLIN
                rc = epoll_ctl(epfd, EPOLL_CTL_ADD, self.fds.stop, &ev)
            if rc == 0 and self.io.uring != NULL:
                # Readable while completions wait, which only happens with I/O in flight.
                rc = epoll_ctl(epfd, EPOLL_CTL_ADD, self.io.uring.ring_fd, &ev)
            if rc < 0:
                raise OSError(errno, "epoll_ctl")
            # The GIL is released for the whole loop: it is taken back only to ask the
            # engine and to log, the two places that run Python code.
            with nogil:
                # Buffers may already be waiting (a ring restarted after GET_VRING_BASE).
                got = self._drain_fast()
                while True:
                    if got:
                        with gil:
                            ask_engine(self, handler)
                        used_flush(self)
                        got = self._drain_fast()
                        continue
                    if self.stopping:
                        break
                    if self.ring.bad_heads + self.ring.bad_avail != self.ring.reported and \
                            _now_ns() - self.ring.reported_ns >= \
                            REPORT_INTERVAL_S * 1000000000ULL:
                        with gil:
                            self._report()
                    if self.cfg.poll_us and busy_poll(self):
                        got = self._drain_fast()
                        continue
                    # Whatever woke it (a kick, completions, ``stop``, which sets ``stopping``
                    # before writing the stop eventfd), draining and the checks above follow.
                    if epoll_wait(epfd, events, 3, -1) < 0 and errno != EINTR:
                        err = errno
                        break
                    got = self._drain_fast()
        finally:
            c_close(epfd)
        if err:
            raise OSError(err, "epoll_wait on the kick eventfd failed")
        return 0

    cdef int _drain_fast(self) noexcept nogil:
        """Serve what the fast path can, until the ring is empty (returns 0, everything
        published and the guest notified) or a request needs the Python engine (returns 1 with
        it popped; the I/O the guest sent before it has been answered first)."""
        while not self.stopping:
            if not self._pop():
                break
            if not serve_fast(self):
                settle(self)
                return 1
        if self.io.uring != NULL:
            io_submit(self)
            if self.io.nflight:
                io_reap(self)
        used_flush(self)
        return 0

    def stop(self):
        """Ask ``run`` to return; the caller joins the thread and then reads last_avail_idx."""
        cdef uint64_t one = 1
        self.stopping = 1
        c_write(self.fds.stop, &one, 8)


cdef int busy_poll(Virtqueue vq) noexcept nogil:
    """Watch the avail index (and the io_uring's completions) for up to the poll window
    with guest notifications off, as vhost's busy polling does; 1 when work turned up.
    The window doubles (up to ``poll_us``) when polling pays and halves (down to an
    eighth) when it does not, so a queue that goes quiet wastes little."""
    cdef uint64_t deadline = _now_ns() + <uint64_t>vq.poll_window * 1000
    cdef uint32_t poll_us = vq.cfg.poll_us
    cdef int found = 0
    ring_kicks(&vq.ring, False)
    while not vq.stopping:
        if ring_avail_pending(&vq.ring):
            found = 1
            break
        if vq.io.nflight and io_uring_cq_ready(vq.io.uring):
            found = 1
            break
        if _now_ns() >= deadline:
            break
        fastvfs_cpu_relax()
    if not found and vq.ring.event_idx:
        # Notifications back on, then one more look (section 2.7.10).
        ring_kicks(&vq.ring, True)
        fastvfs_full_barrier()
        found = ring_avail_pending(&vq.ring)
    if found:
        vq.poll_window = vq.poll_window * 2 if vq.poll_window * 2 < poll_us \
            else poll_us
    else:
        vq.poll_window = vq.poll_window // 2 if vq.poll_window // 2 > poll_us // 8 \
            else (poll_us // 8 if poll_us >= 8 else 1)
    return found
