"""``--sandbox chroot`` (for containers without namespace rights; seccomp kill as by default):
no thread of the daemon ever has a working directory outside the chroot, from which ``..``
would lead to the host's tree.  Each test is a row of the table in SECURITY.md."""

import errno
import os
from pathlib import Path

from fastvfs.fuse import abi
from fastvfs.fuse.abi import Opcode

from .test_attacks import custom, expect_errno  # noqa: F401  (fixture)
from .test_hostile import still_serving

ROOT = abi.FUSE_ROOT_ID


def _directories(pid):
    """{thread id: (root, working directory)} of every thread of ``pid``."""
    return {tid: (os.readlink(f"/proc/{pid}/task/{tid}/root"),
                  os.readlink(f"/proc/{pid}/task/{tid}/cwd"))
            for tid in os.listdir(f"/proc/{pid}/task")}


def test_chroot_sandbox_keeps_every_working_directory_inside(custom):
    frontend, client, shared = custom("--sandbox", "chroot", "--xattr")
    share = os.path.realpath(shared)
    # Every call that names an inode through /proc/self/fd: reopen, chmod, truncate, access,
    # link, xattrs; and an eventfd check (SET_VRING_CALL) on the control plane.
    entry, opened = client.create(ROOT, "f", os.O_RDWR)
    client.write(entry.nodeid, opened.fh, 0, b"data")
    fh = client.open(entry.nodeid, os.O_RDONLY).fh
    assert client.read(entry.nodeid, fh, 0, 4) == b"data"
    client.setattr(entry.nodeid, mode=0o600, size=2)
    client.access(entry.nodeid, os.R_OK)
    client.link(entry.nodeid, ROOT, "g")
    client.call(Opcode.SETXATTR, entry.nodeid, abi.setxattr_in.pack(1, 0) + b"user.k\0v")
    assert os.getxattr(Path(shared) / "f", "user.k") == b"v"
    expect_errno(errno.ENODATA, client.call, Opcode.GETXATTR, entry.nodeid,
                 abi.getxattr_in.pack(16, 0) + b"user.none\0", reply_len=16)
    frontend.set_call(1)
    assert (Path(shared) / "g").read_bytes() == b"da"
    assert os.stat(Path(shared) / "f").st_mode & 0o777 == 0o600
    for tid, (root, cwd) in _directories(custom.launcher.process.pid).items():
        assert root == share, (tid, root)
        assert cwd == share or cwd.startswith(share + "/"), (tid, cwd)
    still_serving(frontend, client)
