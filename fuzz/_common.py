"""Shared set-up of the atheris harnesses (fuzz/fuzz_*.py).

Each harness is a libFuzzer binary in Python: ``python fuzz/fuzz_<target>.py [libFuzzer flags]
[corpus dirs]``.  Python code is instrumented by atheris (``instrument_imports``); the C hot path
is instrumented when ``FASTVFS_FUZZ_NATIVE`` names a build of the extensions made with clang and
SanitizerCoverage (``make fuzz-build``), whose ``fastvfs/_ring*.so`` then replaces the plain one.

The instrumented extension calls libFuzzer's coverage hooks (``__sanitizer_cov_*``), which live
in atheris's core library.  That library is loaded (privately) only once ``atheris.Fuzz`` runs,
so :func:`load_ring` promotes it to the global symbol namespace and imports the extension from
inside the first input, before any fastvfs code has touched ``fastvfs._ring``.
"""

import ctypes
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


def load_ring():
    """Import ``fastvfs._ring`` (the instrumented build with ``FASTVFS_FUZZ_NATIVE``); call it
    from inside the fuzz target, before anything else imports fastvfs's extensions."""
    if "fastvfs._ring" in sys.modules:
        return sys.modules["fastvfs._ring"]
    if NATIVE:
        cores = [line.split()[-1] for line in open("/proc/self/maps")
                 if "/atheris/core_with" in line]
        if not cores:
            raise RuntimeError("atheris's libFuzzer core is not loaded: call from the fuzz target")
        ctypes.CDLL(cores[0], mode=os.RTLD_NOW | os.RTLD_GLOBAL | os.RTLD_NOLOAD)
        import fastvfs
        fastvfs.__path__.insert(0, os.path.join(os.path.abspath(NATIVE), "fastvfs"))
    from fastvfs import _ring
    if NATIVE and not _ring.__file__.startswith(os.path.abspath(NATIVE)):
        raise RuntimeError(f"fastvfs._ring came from {_ring.__file__}, not {NATIVE}")
    print(f"INFO: fastvfs._ring from {_ring.__file__}", file=sys.stderr, flush=True)
    return _ring
