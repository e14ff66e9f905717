"""OPEN, STATFS and SETATTR of mode and times through the daemon as deployed, in each sandbox
that names descriptors its own way (fastvfs.procfd): the hot path answers them in C, reopening
a node through /proc/self/fd (or changing its mode there) as the file system does
(tests/unit/test_parity.py compares the two paths byte for byte; here the sandboxes' naming,
the cache mode's open flags and writeback reach it)."""

import errno
import os
import stat
import time

import pytest

from fastvfs.fuse import abi

from .test_attacks import custom, expect_errno  # noqa: F401  (fixture)
from .test_hostile import still_serving

ROOT = abi.FUSE_ROOT_ID


def _server(pid):
    """The process serving the share: the namespace sandbox's child, else ``pid`` itself."""
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        child = children.read().split()
    return int(child[0]) if child else pid


def _descriptors(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.parametrize("sandbox", ["namespace", "chroot"])
@pytest.mark.parametrize("cache,open_flags", [("never", abi.FOPEN_DIRECT_IO | abi.FOPEN_PARALLEL_DIRECT_WRITES),
                                              ("always", abi.FOPEN_KEEP_CACHE)])
def test_open_and_statfs(custom, sandbox, cache, open_flags):
    frontend, client, shared = custom("--sandbox", sandbox, "--cache", cache)
    (shared / "f").write_bytes(b"0123456789")
    os.mkfifo(shared / "fifo")
    os.mknod(shared / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(shared / "sock", stat.S_IFSOCK | 0o666)
    os.symlink("f", shared / "link")
    os.mkdir(shared / "d")
    f = client.lookup(ROOT, "f").nodeid
    pid = _server(custom.launcher.process.pid)
    held = _descriptors(pid)
    opened = client.open(f, os.O_RDWR)
    assert opened.open_flags == open_flags
    assert client.read(f, opened.fh, 2, 4) == b"2345"
    client.write(f, opened.fh, 0, b"ab")
    assert (shared / "f").read_bytes() == b"ab23456789"
    assert _descriptors(pid) == held + 1
    client.release(f, opened.fh)
    assert _descriptors(pid) == held
    # An open with O_TRUNC empties the file.
    opened = client.open(f, os.O_WRONLY | os.O_TRUNC)
    assert (shared / "f").read_bytes() == b""
    client.release(f, opened.fh)
    # Nothing but a regular file is opened, promptly (a FIFO would block the queue).
    start = time.monotonic()
    for name, err in (("fifo", errno.EACCES), ("null", errno.EACCES), ("sock", errno.EACCES),
                      ("link", errno.ELOOP), ("d", errno.EISDIR)):
        nodeid = client.lookup(ROOT, name).nodeid
        for flags in (os.O_RDONLY, os.O_WRONLY, os.O_RDWR | os.O_NONBLOCK):
            expect_errno(err, client.open, nodeid, flags)
    assert time.monotonic() - start < 5
    assert _descriptors(pid) == held + 5  # the five O_PATH descriptors looked up
    expect_errno(errno.ENOENT, client.open, f + 1000, os.O_RDONLY)
    s, host = client.statfs(f), os.statvfs(shared)
    assert (s.bsize, s.frsize, s.namelen, s.blocks, s.files) == (
        host.f_bsize, host.f_frsize, host.f_namemax, host.f_blocks, host.f_files)
    # SETATTR of the mode (chmod through the same /proc/self/fd name) and times.
    attr = client.setattr(f, mode=0o600, mtime=1_234_567_890_123_456_789)
    st = os.stat(shared / "f")
    assert attr.attr.mode & 0o7777 == st.st_mode & 0o7777 == 0o600
    assert st.st_mtime_ns == 1_234_567_890_123_456_789
    still_serving(frontend, client)


def test_writeback_opens_writers_for_reading(custom):
    """With --writeback the guest reads what it opened write-only (to fill partial pages)
    and computes append offsets itself: the open is read-write and never O_APPEND."""
    frontend, client, shared = custom("--writeback", "--cache", "auto")
    (shared / "f").write_bytes(b"0123456789")
    f = client.lookup(ROOT, "f").nodeid
    opened = client.open(f, os.O_WRONLY | os.O_APPEND)
    assert client.read(f, opened.fh, 0, 4) == b"0123"
    client.write(f, opened.fh, 0, b"ab")
    assert (shared / "f").read_bytes() == b"ab23456789"
