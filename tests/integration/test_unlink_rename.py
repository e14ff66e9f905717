"""UNLINK, RMDIR, RENAME and RENAME2 through the daemon as deployed, in each sandbox (the hot
path answers them in C relative to the parents' O_PATH descriptors; tests/unit/test_parity.py
compares the two paths byte for byte), and with --translate-uid, where the queues have no node
id table and the engine answers them."""

import errno
import os

import pytest

from fastvfs.fuse import abi
from fastvfs.fuse.abi import Opcode

from .test_attacks import custom, expect_errno  # noqa: F401  (fixture)
from .test_hostile import still_serving

ROOT = abi.FUSE_ROOT_ID
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


@pytest.mark.parametrize("options", [("--sandbox", "namespace"), ("--sandbox", "chroot"),
                                     ("--translate-uid=map:0:0:1",
                                      "--translate-gid=map:0:0:1")])
def test_unlink_rmdir_and_rename(custom, options):
    frontend, client, shared = custom(*options)
    (shared / "f").write_bytes(b"f")
    (shared / "g").write_bytes(b"g")
    (shared / "d").mkdir()
    (shared / "full").mkdir()
    (shared / "full" / "x").write_bytes(b"x")
    os.mkfifo(shared / "fifo")
    os.symlink("f", shared / "link")
    d = client.lookup(ROOT, "d").nodeid
    f = client.lookup(ROOT, "f").nodeid
    fifo = client.lookup(ROOT, "fifo").nodeid
    link = client.lookup(ROOT, "link").nodeid

    # RENAME and RENAME2 between directories, with and without flags.
    client.rename(ROOT, "f", d, "f2")
    assert (shared / "d" / "f2").read_bytes() == b"f" and not (shared / "f").exists()
    client.rename2(d, "f2", ROOT, "f", 0)
    expect_errno(errno.EEXIST, client.rename2, ROOT, "f", ROOT, "g", RENAME_NOREPLACE)
    client.rename2(ROOT, "f", ROOT, "g", RENAME_EXCHANGE)
    assert (shared / "f").read_bytes() == b"g" and (shared / "g").read_bytes() == b"f"
    client.rename2(ROOT, "g", ROOT, "h", RENAME_NOREPLACE)
    expect_errno(errno.EINVAL, client.rename2, ROOT, "h", ROOT, "i", 8)
    expect_errno(errno.EINVAL, client.rename2, ROOT, "h", ROOT, "i",
                 RENAME_EXCHANGE | RENAME_NOREPLACE)
    # Over directories and out of them.
    expect_errno(errno.EISDIR, client.rename, ROOT, "h", ROOT, "d")
    expect_errno(errno.ENOTDIR, client.rename, ROOT, "d", ROOT, "h")
    expect_errno(errno.ENOTEMPTY, client.rename, ROOT, "d", ROOT, "full")
    expect_errno(errno.EINVAL, client.rename, ROOT, "full", d, "..")
    expect_errno(errno.EINVAL, client.rename, ROOT, ".", d, "x")
    expect_errno(errno.ENOENT, client.rename, ROOT, "missing", d, "x")
    expect_errno(errno.ENOENT, client.rename, ROOT, "h", f + 1000, "x")
    for parent in (f, fifo, link):   # f is the file named "h" now
        expect_errno(errno.ENOTDIR, client.rename, parent, "x", ROOT, "y")
        expect_errno(errno.ENOTDIR, client.rename, ROOT, "h", parent, "y")
        expect_errno(errno.ENOTDIR, client.unlink, parent, "x")
        expect_errno(errno.ENOTDIR, client.rmdir, parent, "x")

    # UNLINK and RMDIR.
    expect_errno(errno.EISDIR, client.unlink, ROOT, "d")
    expect_errno(errno.ENOTDIR, client.rmdir, ROOT, "h")
    expect_errno(errno.ENOTEMPTY, client.rmdir, ROOT, "full")
    for name in (".", "..", "a/b"):
        expect_errno(errno.EINVAL, client.unlink, ROOT, name)
        expect_errno(errno.EINVAL, client.rmdir, ROOT, name)
    expect_errno(errno.ENAMETOOLONG, client.unlink, ROOT, "n" * 256)
    expect_errno(errno.ENOENT, client.unlink, ROOT, "n" * 255)
    expect_errno(errno.ENOENT, client.unlink, f + 1000, "h")
    # A name without its NUL.
    expect_errno(errno.EINVAL, client.call, Opcode.UNLINK, ROOT, b"h")
    expect_errno(errno.EINVAL, client.call, Opcode.RENAME, ROOT,
                 abi.rename_in.pack(ROOT) + b"h\0i")
    assert (shared / "h").exists()
    client.unlink(ROOT, "h")
    client.unlink(ROOT, "link")
    client.unlink(ROOT, "fifo")
    client.unlink(client.lookup(ROOT, "full").nodeid, "x")
    client.rmdir(ROOT, "full")
    client.rmdir(ROOT, "d")
    assert sorted(os.listdir(shared)) == ["f"]
    still_serving(frontend, client)
