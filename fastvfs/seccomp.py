"""A ctypes binding of libseccomp: seccomp filters built from system call names.

libseccomp (``libseccomp.so.2``, Debian's ``libseccomp2``, on which apt itself depends) knows
every architecture's system call table, so one list of names gives the right numbers wherever the
daemon runs, and it writes the classic BPF program (architecture check, x32 rejected on x86-64,
the calls sorted into a binary tree).  Mirrors libseccomp 2.5 (``<seccomp.h>``); only what
:mod:`fastvfs.sandbox` and its tests use is bound.

The library is loaded when this module is imported, before the sandbox takes the host's tree
away; building and loading a filter reads nothing from disk.
"""

import ctypes
import os

# <seccomp.h>: filter actions (the kernel's SECCOMP_RET_* values).
SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_TRAP = 0x00030000
SCMP_ACT_LOG = 0x7FFC0000
SCMP_ACT_ALLOW = 0x7FFF0000

# enum scmp_filter_attr
SCMP_FLTATR_ACT_BADARCH = 2
SCMP_FLTATR_CTL_TSYNC = 4
SCMP_FLTATR_CTL_OPTIMIZE = 8

# What seccomp_syscall_resolve_name*() return for a name libseccomp does not know at all;
# a name it knows but this architecture lacks resolves to another negative (pseudo) number.
_NR_SCMP_ERROR = -1
# enum scmp_compare (seccomp.h): the argument equals datum_a.
SCMP_CMP_EQ = 4


class _ArgCmp(ctypes.Structure):
    """struct scmp_arg_cmp (seccomp.h)."""
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]

_SIGNATURES = {
    "seccomp_init": (ctypes.c_void_p, (ctypes.c_uint32,)),
    "seccomp_release": (None, (ctypes.c_void_p,)),
    "seccomp_arch_add": (ctypes.c_int, (ctypes.c_void_p, ctypes.c_uint32)),
    "seccomp_arch_remove": (ctypes.c_int, (ctypes.c_void_p, ctypes.c_uint32)),
    "seccomp_arch_native": (ctypes.c_uint32, ()),
    "seccomp_arch_resolve_name": (ctypes.c_uint32, (ctypes.c_char_p,)),
    "seccomp_attr_set": (ctypes.c_int, (ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32)),
    "seccomp_syscall_resolve_name": (ctypes.c_int, (ctypes.c_char_p,)),
    "seccomp_syscall_resolve_name_arch": (ctypes.c_int, (ctypes.c_uint32, ctypes.c_char_p)),
    # Returns a string the caller frees (free(3)).
    "seccomp_syscall_resolve_num_arch": (ctypes.c_void_p, (ctypes.c_uint32, ctypes.c_int)),
    # The array form of seccomp_rule_add(): not variadic, so ctypes passes it the same way on
    # every ABI; the comparisons are an array of struct scmp_arg_cmp (or NULL for none).
    "seccomp_rule_add_array": (ctypes.c_int, (ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                              ctypes.c_uint, ctypes.c_void_p)),
    "seccomp_load": (ctypes.c_int, (ctypes.c_void_p,)),
    "seccomp_export_bpf": (ctypes.c_int, (ctypes.c_void_p, ctypes.c_int)),
}


def _load():
    try:
        lib = ctypes.CDLL("libseccomp.so.2")
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
    except (OSError, AttributeError) as exc:
        return None, str(exc)
    return lib, None


_lib, LOAD_ERROR = _load()


class SeccompError(OSError):
    pass


def _check(rc, what):
    """libseccomp returns -errno."""
    if rc < 0:
        raise SeccompError(-rc, f"{what}: {os.strerror(-rc)}")
    return rc


def available():
    return _lib is not None


def _require():
    if _lib is None:
        raise SeccompError(f"libseccomp cannot be loaded ({LOAD_ERROR})")
    return _lib


def arch_token(arch=None):
    """libseccomp's token for ``arch`` (a kernel name: ``x86_64``, ``aarch64``; None: the
    architecture this process runs on)."""
    lib = _require()
    if arch is None:
        return lib.seccomp_arch_native()
    token = lib.seccomp_arch_resolve_name(arch.encode())
    if not token:
        raise SeccompError(f"libseccomp knows no architecture {arch!r}")
    return token


def resolve(name, arch=None):
    """The number of system call ``name`` on ``arch`` (default: this one), or None where that
    architecture has no such call."""
    nr = _require().seccomp_syscall_resolve_name_arch(arch_token(arch), name.encode())
    return nr if nr >= 0 else None


_free = ctypes.CDLL(None).free
_free.argtypes = (ctypes.c_void_p,)


def name(nr, arch=None):
    """The name of system call ``nr`` on ``arch`` (default: this one), or None."""
    text = _require().seccomp_syscall_resolve_num_arch(arch_token(arch), nr)
    if not text:
        return None
    try:
        return ctypes.string_at(text).decode()
    finally:
        _free(text)


class Filter:
    """A filter under construction: ``default_action`` for every call not allowed by name,
    for the one architecture ``arch`` (default: this one); any other architecture's calls
    (x32 included on x86-64) kill the process."""

    def __init__(self, default_action, arch=None):
        lib = _require()
        self._lib = lib
        self.arch = arch_token(arch)
        self._ctx = lib.seccomp_init(default_action)
        if not self._ctx:
            raise SeccompError(f"seccomp_init: action {default_action:#x} refused")
        try:
            native = lib.seccomp_arch_native()
            if self.arch != native:
                _check(lib.seccomp_arch_add(self._ctx, self.arch), "seccomp_arch_add")
                _check(lib.seccomp_arch_remove(self._ctx, native), "seccomp_arch_remove")
            _check(lib.seccomp_attr_set(self._ctx, SCMP_FLTATR_ACT_BADARCH,
                                        SCMP_ACT_KILL_PROCESS), "bad-architecture action")
            # Every thread of the process gets the filter, not only the loading one.
            _check(lib.seccomp_attr_set(self._ctx, SCMP_FLTATR_CTL_TSYNC, 1), "TSYNC")
            # A binary tree of the allowed numbers: a few comparisons per call, not one per
            # allowed call (2: SCMP_FLTATR_CTL_OPTIMIZE's "binary tree sorted by syscall").
            # libseccomp before 2.5 refuses the attribute and keeps a list, which is as safe.
            lib.seccomp_attr_set(self._ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2)
        except BaseException:
            self.release()
            raise

    def allow(self, name, arg0=None):
        """Allow system call ``name`` (only with first argument ``arg0`` when given).  False
        (and nothing added) where the filter's architecture has no such call."""
        if self._lib.seccomp_syscall_resolve_name_arch(self.arch, name.encode()) < 0:
            return False
        # seccomp_rule_add*() takes the number in this process's (native) numbering, a pseudo
        # number where the native table lacks the call, and translates it for each
        # architecture of the filter.
        nr = self._lib.seccomp_syscall_resolve_name(name.encode())
        if nr == _NR_SCMP_ERROR:
            return False
        if arg0 is None:
            cmp, count = None, 0
        else:
            cmp, count = ctypes.byref(_ArgCmp(0, SCMP_CMP_EQ, arg0, 0)), 1
        _check(self._lib.seccomp_rule_add_array(self._ctx, SCMP_ACT_ALLOW, nr, count, cmp),
               f"seccomp_rule_add {name}")
        return True

    def export_bpf(self):
        """The classic BPF program, as the kernel would be given it."""
        fd = os.memfd_create("fastvfs-seccomp-bpf", os.MFD_CLOEXEC)
        try:
            _check(self._lib.seccomp_export_bpf(self._ctx, fd), "seccomp_export_bpf")
            return os.pread(fd, os.fstat(fd).st_size, 0)
        finally:
            os.close(fd)

    def load(self):
        """Install the filter (no_new_privs is set first, as seccomp(2) requires)."""
        _check(self._lib.seccomp_load(self._ctx), "seccomp_load")

    def release(self):
        if self._ctx:
            self._lib.seccomp_release(self._ctx)
            self._ctx = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
