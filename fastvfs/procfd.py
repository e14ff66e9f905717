"""Naming an open descriptor as a path: ``/proc/self/fd/N``.

The passthrough file system names inodes this way (for xattr, chmod, truncate and reopen calls on
O_PATH descriptors) and the control plane uses it to recognise eventfds.  Inside a sandbox the
host's /proc is gone: :mod:`fastvfs.sandbox` then makes the process's working directory a
``/proc/self/fd`` opened beforehand and switches the names to the relative ``N``.
"""

_prefix = "/proc/self/fd/"


def set_relative():
    """The working directory is /proc/self/fd from now on."""
    global _prefix
    _prefix = ""


def path(fd):
    return f"{_prefix}{fd}"
