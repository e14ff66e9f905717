"""Special files (device nodes, FIFOs, sockets, symlinks) against a daemon with its defaults
(``--sandbox namespace --seccomp kill``): a guest must never get one opened for I/O, through
OPEN, CREATE or anything else.  Each test is a row of the table in SECURITY.md."""

import errno
import os
import stat
import subprocess
from pathlib import Path

import pytest

from fastvfs.fuse import abi

from .test_attacks import custom, expect_errno, fastvfs  # noqa: F401  (fixtures)
from .test_hostile import still_serving

ROOT = abi.FUSE_ROOT_ID

# What the guest makes under the name it then CREATEs without O_EXCL.
SPECIAL = {
    "chardev-1:5": lambda client: client.mknod(ROOT, "x", stat.S_IFCHR | 0o666,
                                               os.makedev(1, 5)),
    "fifo": lambda client: client.mknod(ROOT, "x", stat.S_IFIFO | 0o666),
    "socket": lambda client: client.mknod(ROOT, "x", stat.S_IFSOCK | 0o666),
    "symlink-to-dev-zero": lambda client: client.symlink(ROOT, "x", "/dev/zero"),
}
# Plain O_RDONLY of a FIFO blocks until a writer comes; O_NONBLOCK would make it return at once.
CREATE_FLAGS = (os.O_RDWR, os.O_RDONLY, os.O_RDONLY | os.O_NONBLOCK,
                os.O_WRONLY | os.O_NONBLOCK | os.O_TRUNC)
# The reference answers EBADF for an existing object that is neither a file nor a directory.
REFUSED = (errno.EACCES, errno.EPERM, errno.EINVAL, errno.ENXIO, errno.ELOOP, errno.EEXIST,
           errno.EBADF)


@pytest.mark.parametrize("kind", SPECIAL)
def test_create_over_a_special_file_never_opens_it(backend, kind):
    """CREATE without O_EXCL of a name the guest made a device node (/dev/zero's numbers), a
    FIFO, a socket or a symlink is refused, promptly, and nothing is read through it.  Run
    against the reference too: fastvfs must refuse wherever it refuses."""
    frontend, client, shared = backend()
    made = SPECIAL[kind](client)
    for flags in CREATE_FLAGS:
        try:
            entry, opened = client.create(ROOT, "x", flags)
        except OSError as exc:
            assert exc.errno in REFUSED, (oct(flags), exc)
            continue
        data = None
        if flags & os.O_ACCMODE != os.O_WRONLY:
            data = client.read(entry.nodeid, opened.fh, 0, 64)
        pytest.fail(f"CREATE {flags:#o} opened the {kind}; READ gave {data!r}")
    assert os.lstat(shared / "x").st_mode == made.attr.mode  # still the same special file
    still_serving(frontend, client)


def test_create_of_an_existing_file_opens_that_file(fastvfs):
    """CREATE without O_EXCL of an existing regular file opens it as OPEN would (the same
    inode, O_TRUNC honoured); with O_EXCL it is EEXIST."""
    frontend, client, shared = fastvfs()
    (shared / "f").write_bytes(b"host data")
    known = client.lookup(ROOT, "f")
    entry, opened = client.create(ROOT, "f", os.O_RDWR)
    assert entry.nodeid == known.nodeid and entry.attr.ino == known.attr.ino
    assert client.read(entry.nodeid, opened.fh, 0, 64) == b"host data"
    expect_errno(errno.EEXIST, client.create, ROOT, "f", os.O_RDWR | os.O_EXCL)
    client.create(ROOT, "f", os.O_WRONLY | os.O_TRUNC)
    assert (shared / "f").read_bytes() == b""
    client.mkdir(ROOT, "d")
    expect_errno(errno.EISDIR, client.create, ROOT, "d", os.O_RDWR)


def test_host_planted_special_files_are_refused_by_create(fastvfs):
    """The same through names the host made in the share (a device node with /dev/zero's
    numbers, a FIFO): CREATE without O_EXCL never opens them."""
    frontend, client, shared = fastvfs()
    os.mknod(shared / "zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))
    os.mkfifo(shared / "fifo")
    for name in ("zero", "fifo"):
        for flags in CREATE_FLAGS:
            expect_errno(REFUSED, client.create, ROOT, name, flags)
    still_serving(frontend, client)


def _sandboxed_server(supervisor):
    """The pid of the namespace sandbox's server: the supervisor's only child."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def _mounts(pid):
    """(mount point, per-mount options) of every mount ``pid`` sees (proc(5) mountinfo)."""
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        yield fields[4], set(fields[5].split(","))


def test_the_share_is_mounted_nodev_and_nosuid_in_the_sandbox(custom, tmp_path):
    """Defence in depth: inside the namespace sandbox the share and every mount under it are
    nodev and nosuid, so a device node in the share could not be opened as a device even if a
    type check were missed.  A bind mount inside the share is made first (the sandbox binds the
    share recursively)."""
    share = tmp_path / "share"
    (share / "sub").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    bound = not subprocess.run(["mount", "--bind", str(tmp_path / "elsewhere"),
                                str(share / "sub")]).returncode
    try:
        frontend, client, _ = custom(shared=share)
        mounts = dict(_mounts(_sandboxed_server(custom.launcher.process.pid)))
        assert "/" in mounts and (not bound or "/sub" in mounts), mounts
        for point, options in mounts.items():
            assert {"nodev", "nosuid"} <= options, (point, options)
        still_serving(frontend, client)
    finally:
        if bound:
            subprocess.run(["umount", "-l", str(share / "sub")])
