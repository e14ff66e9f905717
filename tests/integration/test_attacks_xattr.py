"""A file capability moved elsewhere by ``--xattrmap`` must go wherever the kernel would drop
``security.capability`` itself (CVE-2021-20263's pattern): on write and fallocate
(file_remove_privs, for any writer), truncate, chown and open with O_TRUNC (setattr_prepare
with ATTR_KILL_PRIV).  Against a sandboxed daemon with its defaults, driven by the frontend
driver; rows of SECURITY.md's table."""

import errno
import os

import pytest

from fastvfs.fuse import abi
from fastvfs.fuse.abi import Opcode

from .test_attacks import custom  # noqa: F401  (fixture)

ROOT = abi.FUSE_ROOT_ID
RULES = ":prefix:all:security.:user.virtiofs.::bad:client:user.virtiofs.:::ok:all:::"
MAPPED = "user.virtiofs.security.capability"
# A vfs_cap_data (VFS_CAP_REVISION_2, effective) granting CAP_NET_RAW.
CAP = bytes.fromhex("01000002" "00200000" "00000000" "00000000" "00000000")


def with_capability(client, shared, name=b"tool"):
    (shared / name.decode()).write_bytes(b"\x7fELF" + bytes(60))
    nodeid = client.lookup(ROOT, name).nodeid
    client.call(Opcode.SETXATTR, nodeid,
                abi.setxattr_in.pack(len(CAP), 0) + b"security.capability\0" + CAP)
    path = shared / name.decode()
    assert os.getxattr(path, MAPPED) == CAP
    return nodeid, path


def still_there(path):
    try:
        return os.getxattr(path, MAPPED) == CAP
    except OSError as exc:
        assert exc.errno == errno.ENODATA
        return False


def write(client, nodeid):
    fh = client.open(nodeid, os.O_WRONLY).fh
    assert client.write(nodeid, fh, 8, b"changed") == 7
    client.release(nodeid, fh)


def fallocate(client, nodeid):
    fh = client.open(nodeid, os.O_RDWR).fh
    client.fallocate(nodeid, fh, 0, 1 << 16)
    client.release(nodeid, fh)


def truncate(client, nodeid):
    client.setattr(nodeid, size=4)


def ftruncate(client, nodeid):
    fh = client.open(nodeid, os.O_RDWR).fh
    client.setattr(nodeid, fh=fh, size=4)
    client.release(nodeid, fh)


def chown(client, nodeid):
    client.setattr(nodeid, uid=1234, gid=1234)


def open_truncating(client, nodeid):
    client.release(nodeid, client.open(nodeid, os.O_RDWR | os.O_TRUNC).fh)


def create_truncating(client, nodeid):
    _, opened = client.create(ROOT, "tool", os.O_RDWR | os.O_TRUNC)
    client.release(nodeid, opened.fh)


@pytest.mark.parametrize("change", [write, fallocate, truncate, ftruncate, chown,
                                    open_truncating, create_truncating])
def test_remapped_file_capability_goes_where_the_kernel_drops_it(custom, change):  # noqa: F811
    _, client, shared = custom("--xattr", "--xattrmap", RULES)
    nodeid, path = with_capability(client, shared)
    change(client, nodeid)
    assert not still_there(path), f"{MAPPED} survived {change.__name__}"


def test_remapped_file_capability_stays_where_the_kernel_keeps_it(custom):  # noqa: F811
    """Reading, chmod, an empty write and a capability on another file leave it alone."""
    _, client, shared = custom("--xattr", "--xattrmap", RULES)
    nodeid, path = with_capability(client, shared)
    other, _ = with_capability(client, shared, b"other")
    fh = client.open(nodeid, os.O_RDWR).fh
    client.read(nodeid, fh, 0, 16)
    assert client.write(nodeid, fh, 0, b"") == 0
    client.setattr(nodeid, mode=0o755)
    write(client, other)
    client.release(nodeid, fh)
    assert still_there(path)
