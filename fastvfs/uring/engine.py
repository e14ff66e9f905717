"""``UringEngine``: the control plane of one io_uring instance.

It sets the ring up, probes what the kernel implements, restricts the ring to an allow-list and
registers guest memory for READ_FIXED/WRITE_FIXED.  It submits nothing itself: the hot path
(``fastvfs.ring``) prepares, submits and reaps on the same ``struct io_uring`` from C through
``ring_address``, with liburing's inline helpers declared for it in ``includes/liburing.pxd``.
liburing is bound once per side: here for set-up and registration, there for the data path.

The ring is set up with the most helpful flags this kernel accepts (``SUBMIT_ALL``: a failing
submission does not stop the batch; ``COOP_TASKRUN`` and ``SINGLE_ISSUER``: completions are
run when the owner thread enters the kernel anyway), falling back flag by flag on older kernels.
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
        if "NOP" not in sqe_ops:
            self._check_enforced()

    def _check_enforced(self):
        """Submit one NOP, which the allow-list leaves out, and require the kernel to refuse
        it (EACCES): a kernel that took the restrictions without enforcing them gives a ring
        that is never used."""
        sqe = lib.io_uring_get_sqe(self._ring)
        lib.io_uring_prep_nop(sqe)
        _check(lib.io_uring_submit_and_wait(self._ring, 1), "submit the restriction check")
        cqe = ffi.new("struct io_uring_cqe *[1]")
        if lib.io_uring_peek_batch_cqe(self._ring, cqe, 1) != 1:
            raise OSError(errno.EIO, "the restriction check was not completed")
        res = cqe[0].res
        lib.io_uring_cq_advance(self._ring, 1)
        if res != -errno.EACCES:
            raise OSError(errno.EPERM, f"a NOP outside the allow-list completed with {res}")

    @property
    def ring_address(self):
        """The address of the ``struct io_uring`` (for the Cython hot path)."""
        return int(ffi.cast("uintptr_t", self._ring))

    def supports(self, opcode_name):
        """Whether the kernel implements ``IORING_OP_<opcode_name>``."""
        return getattr(lib, "IORING_OP_" + opcode_name) in self.supported

    def register_buffers(self, regions):
        """Register ``[(address, length), ...]`` (guest memory regions) for READ_FIXED and
        WRITE_FIXED; buffer index i is regions[i]."""
        iovs = ffi.new("struct iovec[]", len(regions))
        for i, (address, length) in enumerate(regions):
            iovs[i].iov_base = ffi.cast("void *", address)
            iovs[i].iov_len = length
        _check(lib.io_uring_register_buffers(self._ring, iovs, len(regions)), "register buffers")

    def unregister_buffers(self):
        _check(lib.io_uring_unregister_buffers(self._ring), "unregister buffers")

    def close(self):
        if self._open:
            lib.io_uring_queue_exit(self._ring)
            self._open = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()
