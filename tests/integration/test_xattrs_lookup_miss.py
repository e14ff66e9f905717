"""LOOKUP of a missing name, GETXATTR and LISTXATTR through the daemon as deployed, in each
sandbox that names descriptors its own way (fastvfs.procfd): the hot path answers them in C
(with --xattr and no --xattrmap), reading attributes through a node's /proc/self/fd name as
the file system does, in the chroot sandbox with the thread's own working directory moved to
the sandbox's /proc descriptor and back (tests/unit/test_parity.py compares the two paths
byte for byte; here the sandboxes' naming reaches it, and no descriptor is left behind)."""

import errno
import os
import stat

import pytest

from fastvfs.fuse import abi
from fastvfs.fuse.abi import Opcode

from .test_attacks import custom, expect_errno  # noqa: F401  (fixture)
from .test_hostile import still_serving
from .test_open_statfs import _descriptors, _server

ROOT = abi.FUSE_ROOT_ID


def _call(client, opcode, nodeid, size, name=None, extra=b"\0"):
    """GETXATTR (``name``) or LISTXATTR: the value or list, or the length for ``size`` 0."""
    body = abi.getxattr_in.pack(size, 0) + (b"" if name is None else name + extra)
    if size == 0:
        reply = client.call(opcode, nodeid, body, reply_len=abi.getxattr_out.size)
        return abi.getxattr_out.unpack(reply.payload)[0]
    return client.call(opcode, nodeid, body, data_len=size).data


def _getxattr(client, nodeid, name, size=256, extra=b"\0"):
    return _call(client, Opcode.GETXATTR, nodeid, size, name, extra)


def _listxattr(client, nodeid, size=256):
    return _call(client, Opcode.LISTXATTR, nodeid, size)


@pytest.mark.parametrize("sandbox", ["namespace", "chroot"])
@pytest.mark.parametrize("cache", ["never", "always"])
def test_lookup_miss_getxattr_listxattr(custom, sandbox, cache):
    frontend, client, shared = custom("--sandbox", sandbox, "--cache", cache, "--xattr")
    (shared / "f").write_bytes(b"0123456789")
    os.setxattr(shared / "f", "user.a", b"hello")
    os.setxattr(shared / "f", "trusted.t", b"trusted")
    os.mkdir(shared / "d")
    os.setxattr(shared / "d", "user.d", b"dir")
    os.symlink("f", shared / "link")
    os.setxattr(shared / "link", "security.l", b"the link's own", follow_symlinks=False)
    os.mkfifo(shared / "fifo")
    os.setxattr(shared / "fifo", "security.fifo", b"of a fifo")
    os.mknod(shared / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    (shared / "plain").write_bytes(b"")
    nodes = {name: client.lookup(ROOT, name).nodeid
             for name in ("f", "d", "link", "fifo", "null", "plain")}
    pid = _server(custom.launcher.process.pid)
    held = _descriptors(pid)
    # A missing name: ENOENT in every cache mode, no negative entry, nothing held.
    for parent, name in ((ROOT, "missing"), (nodes["d"], "missing"), (ROOT, "x" * 255)):
        expect_errno(errno.ENOENT, client.lookup, parent, name)
    # GETXATTR: hits on every kind of node (a symlink's and a FIFO's own attributes, read
    # without following or opening them), the size probe, ERANGE, misses.
    f = nodes["f"]
    assert _getxattr(client, f, b"user.a") == b"hello"
    # trusted.* is the daemon's with CAP_SYS_ADMIN only (--modcaps=+sys_admin): hidden.
    expect_errno(errno.ENODATA, _getxattr, client, f, b"trusted.t")
    assert _getxattr(client, f, b"user.a", 0) == 5
    assert _getxattr(client, f, b"user.a", 5) == b"hello"
    expect_errno(errno.ERANGE, _getxattr, client, f, b"user.a", 4)
    expect_errno(errno.ENODATA, _getxattr, client, f, b"user.missing")
    assert _getxattr(client, nodes["d"], b"user.d") == b"dir"
    assert _getxattr(client, nodes["link"], b"security.l") == b"the link's own"
    expect_errno(errno.ENODATA, _getxattr, client, nodes["link"], b"user.a")
    assert _getxattr(client, nodes["fifo"], b"security.fifo") == b"of a fifo"
    expect_errno(errno.ENODATA, _getxattr, client, nodes["null"], b"user.a")
    # Hostile names: empty, without NUL, too long; unknown node ids.
    expect_errno(errno.EINVAL, _getxattr, client, f, b"")
    expect_errno(errno.EINVAL, _getxattr, client, f, b"user.a", extra=b"")
    expect_errno(errno.ERANGE, _getxattr, client, f, b"u" * 256)
    for nodeid in (f + 1000, 2 ** 63):
        expect_errno(errno.ENOENT, _getxattr, client, nodeid, b"user.a")
        expect_errno(errno.ENOENT, _listxattr, client, nodeid)
    # LISTXATTR: the names, each NUL-terminated; the probe; ERANGE; an empty list.
    names = _listxattr(client, f)
    assert names == b"user.a\0"
    assert _listxattr(client, f, 0) == len(names)
    expect_errno(errno.ERANGE, _listxattr, client, f, len(names) - 1)
    assert _listxattr(client, nodes["link"]) == b"security.l\0"
    assert _listxattr(client, nodes["plain"], 0) == 0
    assert _listxattr(client, nodes["plain"]) == b""
    assert _descriptors(pid) == held
    still_serving(frontend, client)


def test_xattrs_off_and_renamed(custom):
    """Without --xattr the guest is told ENOSYS (and stops asking); with --xattrmap it sees
    the guest-side names only."""
    frontend, client, shared = custom()
    (shared / "f").write_bytes(b"")
    os.setxattr(shared / "f", "user.a", b"1")
    f = client.lookup(ROOT, "f").nodeid
    expect_errno(errno.ENOSYS, _getxattr, client, f, b"user.a")
    expect_errno(errno.ENOSYS, _listxattr, client, f)
    frontend, client, shared = custom("--xattrmap", ":prefix:all:user.:user.g.::bad:all:::")
    (shared / "f").write_bytes(b"")
    os.setxattr(shared / "f", "user.g.user.a", b"mapped")
    os.setxattr(shared / "f", "user.hidden", b"2")
    f = client.lookup(ROOT, "f").nodeid
    assert _getxattr(client, f, b"user.a") == b"mapped"
    assert _listxattr(client, f) == b"user.a\0"
