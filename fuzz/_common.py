"""Shared set-up of the atheris harnesses (fuzz/fuzz_*.py).

Each harness is a libFuzzer binary in Python: ``python fuzz/fuzz_<target>.py [libFuzzer flags]
[corpus dirs]``.  Python code is instrumented by atheris (``instrument_imports``); the C hot path
is instrumented when ``FASTVFS_FUZZ_NATIVE`` names a build of the extensions made with clang and
SanitizerCoverage (``make fuzz-build``), whose extensions then replace the plain ones.

The instrumented extension calls libFuzzer's coverage hooks (``__sanitizer_cov_*``), which live
in atheris's core library.  That library is loaded (privately) only once ``atheris.Fuzz`` runs,
so :func:`load_hot_path` promotes it to the global symbol namespace and imports the extension from
inside the first input, before any fastvfs code has touched the hot path.
"""

import ctypes
import importlib.util
import os
import resource
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

NATIVE = os.environ.get("FASTVFS_FUZZ_NATIVE")
# Bytes any one file may grow to: a fuzzed WRITE or FALLOCATE gets EFBIG beyond this instead of
# filling the disk.
FILE_SIZE_LIMIT = 16 << 20


def limit_files():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


def fuzz(target):
    """Run libFuzzer on ``target`` with the command line's flags and corpora.  Every file the
    harness writes is capped (RLIMIT_FSIZE): the write past the cap fails with EFBIG, and
    libFuzzer is told not to treat SIGXFSZ as a crash."""
    import atheris
    limit_files()
    atheris.Setup(sys.argv + ["-handle_xfsz=0"], target)
    atheris.Fuzz()


def drop_fs(fs):
    """Close the share root's descriptor of a PassthroughFs the harness is done with: its node
    id table holds the root without owning it (the daemon keeps one file system for its whole
    life), so a harness making one per input closes it itself."""
    fd, path = fs.inodes.root.fd, fs.root_path
    fs.inodes.table.clear()
    try:
        if os.readlink(f"/proc/self/fd/{fd}") == path:
            os.close(fd)
    except OSError:
        pass


def load_hot_path():
    """Import the hot path, ``fastvfs.ring._ring`` and the file system's C face it calls,
    ``fastvfs.fs._tables`` (the instrumented builds with ``FASTVFS_FUZZ_NATIVE``); returns both
    modules.  Call it from inside the fuzz target, before anything else imports fastvfs's
    extensions."""
    if "fastvfs.ring._ring" in sys.modules:
        return sys.modules["fastvfs.ring._ring"], sys.modules["fastvfs.fs._tables"]
    if NATIVE:
        cores = [line.split()[-1] for line in open("/proc/self/maps")
                 if "/atheris/core_with" in line]
        if not cores:
            raise RuntimeError("atheris's libFuzzer core is not loaded: call from the fuzz target")
        ctypes.CDLL(cores[0], mode=os.RTLD_NOW | os.RTLD_GLOBAL | os.RTLD_NOLOAD)
        # The instrumented extensions come first in their packages' search paths; the
        # packages themselves (their __init__.py) are the source tree's.
        import fastvfs
        native = os.path.join(os.path.abspath(NATIVE), "fastvfs")
        fastvfs.__path__.insert(0, native)
        for package in ("fastvfs.fs", "fastvfs.ring"):
            spec = importlib.util.find_spec(package)
            spec.submodule_search_locations.insert(0, os.path.join(native, package.split(".")[1]))
            module = importlib.util.module_from_spec(spec)
            sys.modules[package] = module
            spec.loader.exec_module(module)
    from fastvfs.fs import _tables
    from fastvfs.ring import _ring
    for module in (_ring, _tables):
        if NATIVE and not module.__file__.startswith(os.path.abspath(NATIVE)):
            raise RuntimeError(f"{module.__name__} came from {module.__file__}, not {NATIVE}")
        print(f"INFO: {module.__name__} from {module.__file__}", file=sys.stderr, flush=True)
    return _ring, _tables
