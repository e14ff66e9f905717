"""Naming an open descriptor as a path: ``/proc/self/fd/N``.

The passthrough file system names inodes this way (for xattr, truncate and reopen calls on O_PATH
descriptors, and chmod where the kernel has no fchmodat2) and the control plane uses it to recognise eventfds.  A name is used inside
``with named(fd) as path:`` only.  :mod:`fastvfs.sandbox` picks how names are made, before any
guest request:

* no sandbox: the absolute ``/proc/self/fd/N``;
* namespace sandbox (:func:`set_relative`): the host's /proc is gone, and the working directory is
  a ``/proc/self/fd`` of the sandbox's own /proc, opened beforehand, whose mount went away with
  the old root (``..`` from it leads nowhere else); names are the relative ``N``;
* chroot sandbox (:func:`set_switched`): /proc is the host's, and a working directory in it would
  lead out of the chroot (``..``).  The working directory stays the chroot's ``/``; a thread
  takes its own working directory (unshare(CLONE_FS)) and moves it to ``/proc/self/fd`` only
  for the call that uses the name, then back.
"""

import ctypes
import os
import threading

CLONE_FS = 0x00000200

_prefix = "/proc/self/fd/"
_proc_fd = None
_thread = threading.local()
_libc = ctypes.CDLL(None, use_errno=True)


def set_relative():
    """The working directory is /proc/self/fd from now on."""
    global _prefix
    _prefix = ""


def set_switched(proc_fd):
    """Names go through ``proc_fd`` (a /proc/self/fd descriptor, kept open) from now on; the
    working directory must be the chroot's ``/``."""
    global _prefix, _proc_fd
    _prefix = ""
    _proc_fd = proc_fd


def base():
    """``(dir_fd, prefix)``: ``prefix`` + "N" opened relative to ``dir_fd`` (None: the working
    directory) names descriptor N, in every mode above, without moving the working directory:
    for openat(2) from C, which takes the directory itself."""
    return _proc_fd, _prefix


class named:
    """``with named(fd) as path:`` a path that names descriptor ``fd`` inside the block.  A
    plain class rather than a generator context manager: without the chroot sandbox this is
    one string per call on every request that names an inode."""

    __slots__ = ("fd", "switched")

    def __init__(self, fd):
        self.fd = fd
        self.switched = False

    def __enter__(self):
        if _proc_fd is None:
            return f"{_prefix}{self.fd}"
        if not getattr(_thread, "own_fs", False):
            if _libc.unshare(CLONE_FS) < 0:
                err = ctypes.get_errno()
                raise OSError(err, f"unshare(CLONE_FS): {os.strerror(err)}")
            _thread.own_fs = True
        os.fchdir(_proc_fd)
        self.switched = True
        return str(self.fd)

    def __exit__(self, *exc):
        if self.switched:
            self.switched = False
            os.chdir("/")
        return False
