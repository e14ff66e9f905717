"""``UringEngine``: one io_uring instance, batch submission and batch reaping.

Submissions are prepared into the submission queue without a system call and go to the kernel
together with ``submit``; completions are reaped in batches with ``reap``.  Each operation
carries a 64-bit ``user_data`` chosen by the caller, which comes back with its result.

The ring is set up with the most helpful flags this kernel accepts (``SUBMIT_ALL``: a failing
submission does not stop the batch; ``COOP_TASKRUN`` and ``SINGLE_ISSUER``: completions are
run when the owner thread enters the kernel anyway), falling back flag by flag on older kernels.
Guest memory regions can be registered once (``register_buffers``) so READ_FIXED/WRITE_FIXED
skip per-I/O page pinning, and file descriptors can be registered (``register_files``).

Buffers given to ``readv``/``writev`` from Python are kept alive until their completion is
reaped.  The hot path drives the same ring from Cython through ``ring_address``.
"""

import errno
import os

try:
    from ._liburing import ffi, lib
except ImportError as exc:  # built without liburing-dev
    ffi = lib = None
    _import_error = exc
else:
    _import_error = None


class UringUnavailable(OSError):
    """This kernel or process cannot set up an io_uring (too old, or forbidden by seccomp)."""


def _check(ret, what):
    """liburing returns -errno: turn it into OSError, pass other values through."""
    if ret < 0:
        raise OSError(-ret, f"{what}: {os.strerror(-ret)}")
    return ret


class UringEngine:
    SETUP_FLAG_PREFERENCE = ("IORING_SETUP_SUBMIT_ALL", "IORING_SETUP_COOP_TASKRUN",
                             "IORING_SETUP_SINGLE_ISSUER")

    def __init__(self, entries=256, prefer=None, restrict=None):
        """``restrict``: ``(sqe_ops, register_ops, sqe_flags)``, the names (without
        ``IORING_OP_``/``IORING_REGISTER_``/``IOSQE_``) of the only operations, registrations
        and submission flags this ring will take: it is created disabled, restricted
        (IORING_REGISTER_RESTRICTIONS) and only then enabled, so the kernel refuses anything
        else with EACCES.  io_uring operations are not system calls, so the seccomp filter
        cannot see them; this is their allow-list.  A kernel that refuses the restrictions
        gives UringUnavailable: the ring is never used unrestricted."""
        self._open = False
        if lib is None:
            raise UringUnavailable(errno.ENOSYS, f"liburing binding not built: {_import_error}")
        self._ring = ffi.new("struct io_uring *")
        self._keep = {}  # user_data -> Python objects a pending operation points into
        wanted = [getattr(lib, name)
                  for name in (self.SETUP_FLAG_PREFERENCE if prefer is None else prefer)]
        while True:
            params = ffi.new("struct io_uring_params *")
            params.flags = lib.IORING_SETUP_CLAMP
            if restrict is not None:
                params.flags |= lib.IORING_SETUP_R_DISABLED
            for flag in wanted:
                params.flags |= flag
            ret = lib.io_uring_queue_init_params(entries, self._ring, params)
            if ret == -errno.EINVAL and wanted:
                wanted.pop()  # an older kernel: drop the newest flag and try again
                continue
            if ret < 0:
                raise UringUnavailable(-ret, f"io_uring_queue_init: {os.strerror(-ret)}")
            break
        self._open = True
        self.setup_flags = params.flags
        self.features = params.features
        self.entries = params.sq_entries
        probe = lib.io_uring_get_probe_ring(self._ring)
        try:
            self.supported = frozenset(
                op for op in range(probe.last_op + 1) if lib.io_uring_opcode_supported(probe, op)
            ) if probe != ffi.NULL else frozenset()
        finally:
            if probe != ffi.NULL:
                lib.io_uring_free_probe(probe)
        if restrict is not None:
            try:
                self._restrict(*restrict)
            except OSError as exc:
                self.close()
                raise UringUnavailable(exc.errno, f"io_uring restrictions: {exc}") from None

    def _restrict(self, sqe_ops, register_ops, sqe_flags):
        entries = ([(lib.IORING_RESTRICTION_SQE_OP, "sqe_op", getattr(lib, "IORING_OP_" + op))
                    for op in sqe_ops] +
                   [(lib.IORING_RESTRICTION_REGISTER_OP, "register_op",
                     getattr(lib, "IORING_" + op)) for op in register_ops])
        flags = 0
        for name in sqe_flags:
            flags |= getattr(lib, "IOSQE_" + name)
        entries.append((lib.IORING_RESTRICTION_SQE_FLAGS_ALLOWED, "sqe_flags", flags))
        res = ffi.new("struct io_uring_restriction[]", len(entries))
        for i, (kind, field, value) in enumerate(entries):
            res[i].opcode = kind
            setattr(res[i], field, value)
        # The raw registration call: liburing 2.3 exports no wrappers for these two.
        _check(lib.io_uring_register(self._ring.ring_fd, lib.IORING_REGISTER_RESTRICTIONS, res,
                                     len(entries)), "register restrictions")
        _check(lib.io_uring_register(self._ring.ring_fd, lib.IORING_REGISTER_ENABLE_RINGS,
                                     ffi.NULL, 0), "enable the ring")

    # -- setup ---------------------------------------------------------------------------------

    @property
    def ring_address(self):
        """The address of the ``struct io_uring`` (for the Cython hot path)."""
        return int(ffi.cast("uintptr_t", self._ring))

    def supports(self, opcode_name):
        """Whether the kernel implements ``IORING_OP_<opcode_name>``."""
        return getattr(lib, "IORING_OP_" + opcode_name) in self.supported

    def register_buffers(self, regions):
        """Register ``[(address, length), ...]`` (e.g. guest memory regions) for *_FIXED I/O;
        buffer index i is regions[i]."""
        iovs = ffi.new("struct iovec[]", len(regions))
        for i, (address, length) in enumerate(regions):
            iovs[i].iov_base = ffi.cast("void *", address)
            iovs[i].iov_len = length
        _check(lib.io_uring_register_buffers(self._ring, iovs, len(regions)), "register buffers")

    def unregister_buffers(self):
        _check(lib.io_uring_unregister_buffers(self._ring), "unregister buffers")

    def register_files(self, fds):
        """Register fds; an operation then names index i with ``fixed_file=True``."""
        arr = ffi.new("int[]", list(fds))
        _check(lib.io_uring_register_files(self._ring, arr, len(fds)), "register files")

    def unregister_files(self):
        _check(lib.io_uring_unregister_files(self._ring), "unregister files")

    # -- preparing operations ---------------------------------------------------------------------

    def _sqe(self):
        sqe = lib.io_uring_get_sqe(self._ring)
        if sqe == ffi.NULL:
            raise BlockingIOError(errno.EAGAIN, "submission queue full: submit first")
        return sqe

    def _finish(self, sqe, user_data, keep, fixed_file):
        # After the prep call: io_uring_prep_* resets the flags.
        lib.io_uring_sqe_set_data64(sqe, user_data)
        if fixed_file:
            lib.io_uring_sqe_set_flags(sqe, lib.IOSQE_FIXED_FILE)
        if keep is not None:
            self._keep[user_data] = keep

    def _iovecs(self, buffers, writable):
        views = [ffi.from_buffer(b, require_writable=writable) for b in buffers]
        iovs = ffi.new("struct iovec[]", len(views))
        for i, view in enumerate(views):
            iovs[i].iov_base = view
            iovs[i].iov_len = len(view)
        return iovs, views

    def readv(self, fd, buffers, offset, user_data, fixed_file=False):
        """Queue a read into writable Python buffers."""
        sqe = self._sqe()
        iovs, views = self._iovecs(buffers, True)
        lib.io_uring_prep_readv(sqe, fd, iovs, len(views), offset)
        self._finish(sqe, user_data, (iovs, views), fixed_file)

    def writev(self, fd, buffers, offset, user_data, fixed_file=False):
        """Queue a write from Python buffers."""
        sqe = self._sqe()
        iovs, views = self._iovecs(buffers, False)
        lib.io_uring_prep_writev(sqe, fd, iovs, len(views), offset)
        self._finish(sqe, user_data, (iovs, views), fixed_file)

    def read_fixed(self, fd, address, length, offset, buf_index, user_data, fixed_file=False):
        """Queue a read into registered buffer ``buf_index`` at ``address``."""
        sqe = self._sqe()
        lib.io_uring_prep_read_fixed(sqe, fd, ffi.cast("void *", address), length, offset,
                                     buf_index)
        self._finish(sqe, user_data, None, fixed_file)

    def write_fixed(self, fd, address, length, offset, buf_index, user_data, fixed_file=False):
        sqe = self._sqe()
        lib.io_uring_prep_write_fixed(sqe, fd, ffi.cast("void *", address), length, offset,
                                      buf_index)
        self._finish(sqe, user_data, None, fixed_file)

    def fsync(self, fd, user_data, datasync=False, fixed_file=False):
        sqe = self._sqe()
        lib.io_uring_prep_fsync(sqe, fd, lib.IORING_FSYNC_DATASYNC if datasync else 0)
        self._finish(sqe, user_data, None, fixed_file)

    def fallocate(self, fd, mode, offset, length, user_data, fixed_file=False):
        sqe = self._sqe()
        lib.io_uring_prep_fallocate(sqe, fd, mode, offset, length)
        self._finish(sqe, user_data, None, fixed_file)

    # -- submitting and reaping -----------------------------------------------------------------

    @property
    def sq_space(self):
        return lib.io_uring_sq_space_left(self._ring)

    def submit(self, wait=0):
        """Hand every queued operation to the kernel in one system call, optionally waiting
        for ``wait`` completions; returns how many were submitted."""
        if wait:
            return _check(lib.io_uring_submit_and_wait(self._ring, wait), "submit")
        return _check(lib.io_uring_submit(self._ring), "submit")

    def reap(self, max_count=256):
        """Completed operations as ``[(user_data, result), ...]``; result is -errno on error.
        Does not block."""
        cqes = ffi.new("struct io_uring_cqe *[]", max_count)
        n = lib.io_uring_peek_batch_cqe(self._ring, cqes, max_count)
        done = [(cqes[i].user_data, cqes[i].res) for i in range(n)]
        lib.io_uring_cq_advance(self._ring, n)
        for user_data, _ in done:
            self._keep.pop(user_data, None)
        return done

    def close(self):
        if self._open:
            lib.io_uring_queue_exit(self._ring)
            self._open = False
            self._keep.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()
