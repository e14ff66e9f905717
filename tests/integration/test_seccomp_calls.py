"""The seccomp allow-list covers every system call serving takes.

A daemon with its defaults (namespace sandbox, ``--seccomp kill``) serves every FUSE operation it
implements (xattrs, POSIX and flock locks, O_TMPFILE, another user's creations, bursts of READs
and WRITEs on the io_uring and sync engines, the thread pool): a call outside the list kills it
(SIGSYS), so it must still be alive after the workload and exit 0 once the frontend goes away.
The kernel's audit record of a killing call (type 1326, in the kernel log where it can be read)
names the call in the failure.
"""

import errno
import os
import re
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from fastvfs import seccomp
from fastvfs.fuse import abi
from fastvfs.fuse.abi import Opcode
from tests.deployed import FASTVFS
from tests.integration.conftest import BackendLauncher, BackendSpec

ROOT = abi.FUSE_ROOT_ID
F_RDLCK, F_WRLCK, F_UNLCK = 0, 1, 2
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
SEEK_DATA, SEEK_HOLE = 3, 4
UNPRIVILEGED = 4242
CHUNK = 128 * 1024
# An audit record of seccomp (linux/audit.h AUDIT_SECCOMP), as the kernel log shows it.
AUDIT_SECCOMP = re.compile(r"type=1326 .* pid=(\d+) .* syscall=(\d+) ")


def kernel_log():
    try:
        out = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.splitlines() if out.returncode == 0 and out.stdout else None


ENGINES = {
    "uring": (),
    "uring-rw": ("--io-engine", "uring-rw"),
    "sync": ("--io-engine", "sync"),
    "thread-pool": ("--thread-pool-size", "4"),
}


@pytest.fixture
def launcher(tmp_path):
    launchers = []

    def start(*extra):
        def argv(sock, shared):
            return [*FASTVFS, "--socket-path", sock, "--shared-dir", shared, "--cache", "never",
                    "--log-level", "debug", "--xattr", *extra]
        run = tmp_path / f"run{len(launchers)}"
        run.mkdir()
        launcher = BackendLauncher("fastvfs", BackendSpec(argv), run)
        launchers.append(launcher)
        return launcher
    yield start
    for launcher in launchers:
        launcher.shutdown()


def serving_pid(process):
    """The namespace sandbox's child: the process that installed the filter."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    return int(children[0])


def burst(client, requests):
    """Submit every request ``(opcode, nodeid, body, kwargs)`` before waiting for any (the
    engines batch what one poll round finds); returns the replies in order."""
    tickets = [client.submit(op, nodeid, body, publish=False, **kw)
               for op, nodeid, body, kw in requests]
    client.publish()
    return [client.wait(t).check() for t in tickets]


def every_operation(client, shared):
    client.statfs()
    client.getattr(ROOT)
    client.access(ROOT, os.R_OK | os.X_OK)
    d = client.mkdir(ROOT, "d").nodeid

    entry, handle = client.create(d, "f")
    f, fh = entry.nodeid, handle.fh
    data = os.urandom(8 * CHUNK)
    offsets = range(0, len(data), CHUNK)
    burst(client, [(Opcode.WRITE, f, abi.write_in.pack(fh, off, CHUNK, 0, 0, 0, 0),
                    {"data": data[off:off + CHUNK], "reply_len": abi.write_out.size})
                   for off in offsets])
    replies = burst(client, [(Opcode.READ, f, abi.read_in.pack(fh, off, CHUNK, 0, 0, 0, 0),
                              {"data_len": CHUNK}) for off in offsets])
    assert b"".join(r.payload + r.data for r in replies) == data
    client.flush(f, fh)
    client.fsync(f, fh)
    client.fsync(f, fh, datasync=True)
    client.fallocate(f, fh, len(data), CHUNK)
    client.lseek(f, fh, 0, SEEK_DATA)
    client.lseek(f, fh, 0, SEEK_HOLE)
    copy, copy_handle = client.create(ROOT, "copy")
    assert client.copy_file_range(f, fh, 0, copy.nodeid, copy_handle.fh, 0, CHUNK) == CHUNK
    client.release(copy.nodeid, copy_handle.fh)
    client.setattr(f, fh=fh, size=len(data) // 2)
    client.setattr(f, mode=0o640)
    client.setattr(f, atime=1_000_000_000, mtime=2_000_000_000)
    client.setattr(f, atime_now=True, mtime_now=True)
    client.setattr(f, uid=UNPRIVILEGED, gid=UNPRIVILEGED)

    # Locks: POSIX record locks (host OFD locks), flock, the waiting form uncontended.
    for flags, kind in ((0, F_WRLCK), (abi.FUSE_LK_FLOCK, F_WRLCK)):
        lock = abi.lk_in.pack(fh, 7, 0, 99, kind, 0, flags, 0)
        client.call(Opcode.SETLK, f, lock)
        client.call(Opcode.GETLK, f, abi.lk_in.pack(fh, 8, 0, 99, F_RDLCK, 0, 0, 0),
                    reply_len=abi.lk_out.size)
        client.call(Opcode.SETLK, f, abi.lk_in.pack(fh, 7, 0, 99, F_UNLCK, 0, flags, 0))
        client.call(Opcode.SETLKW, f, lock)
        client.call(Opcode.SETLK, f, abi.lk_in.pack(fh, 7, 0, 99, F_UNLCK, 0, flags, 0))
    client.release(f, fh)

    # Extended attributes.
    ext = client.init_out.flags & abi.FUSE_SETXATTR_EXT
    head = abi.setxattr_in_ext.pack(1, 0, 0, 0) if ext else abi.setxattr_in.pack(1, 0)
    client.call(Opcode.SETXATTR, f, head + b"user.k\0v")
    client.call(Opcode.GETXATTR, f, abi.getxattr_in.pack(0, 0) + b"user.k\0",
                reply_len=abi.getxattr_out.size)
    assert client.call(Opcode.GETXATTR, f, abi.getxattr_in.pack(64, 0) + b"user.k\0",
                       reply_len=64).payload == b"v"
    client.call(Opcode.LISTXATTR, f, abi.getxattr_in.pack(64, 0), reply_len=64)
    client.call(Opcode.REMOVEXATTR, f, b"user.k\0")

    # Reopen, read through the engine's lone-read path, release.
    h = client.open(f, os.O_RDWR).fh
    client.read(f, h, 0, 4096)
    client.write(f, h, 0, b"x" * 4096)
    client.release(f, h)

    # Names: every kind of node, links, renames, as another user too.
    client.mknod(d, "fifo", stat.S_IFIFO | 0o644)
    client.mknod(d, "node", stat.S_IFREG | 0o644)
    s = client.symlink(d, "s", "f").nodeid
    assert client.readlink(s) == b"f"
    client.link(f, d, "f2")
    client.rename(d, "f2", ROOT, "f3")
    client.rename2(ROOT, "f3", d, "node", RENAME_EXCHANGE)
    client.rename2(d, "node", ROOT, "f4", RENAME_NOREPLACE)
    with client.as_user(UNPRIVILEGED, UNPRIVILEGED):
        os.chmod(shared / "d", 0o777)
        entry, handle = client.create(d, "mine")
        client.release(entry.nodeid, handle.fh)
        client.mkdir(d, "mine.d")
    assert (shared / "d" / "mine").stat().st_uid == UNPRIVILEGED
    try:
        reply = client.call(Opcode.TMPFILE, d, abi.create_in.pack(os.O_RDWR, 0o600, 0, 0),
                            reply_len=abi.ENTRY_OUT_SIZE + abi.open_out.size)
        nodeid = abi.entry_out_head.unpack_from(reply.payload)[0]
        client.release(nodeid, abi.open_out.unpack_from(reply.payload, abi.ENTRY_OUT_SIZE)[0])
    except OSError as exc:
        assert exc.errno in (errno.EOPNOTSUPP, errno.ENOSYS)

    # Directories.
    dh = client.opendir(d).fh
    client.readdir(d, dh)
    client.readdirplus(d, dh)
    client.fsyncdir(d, dh)
    client.releasedir(d, dh)
    names = {e.name for e in client.listdir(d, plus=True)}
    assert {b"f", b"fifo", b"s", b"mine", b"mine.d"} <= names
    client.unlink(d, "fifo")
    client.unlink(ROOT, "f4")
    client.rmdir(d, "mine.d")
    client.syncfs()
    client.forget(s)
    client.batch_forget([(f, 1), (d, 1)])
    client.destroy()


def refused_calls(pid, before):
    """The calls the kernel log records the filter refusing to ``pid`` since ``before``."""
    return sorted({seccomp.name(int(m[2])) or m[2] for line in kernel_log() or ()
                   if line not in before and (m := AUDIT_SECCOMP.search(line))
                   and int(m[1]) == pid})


@pytest.mark.parametrize("engine", ENGINES)
def test_the_allow_list_covers_serving(launcher, engine):
    before = set(kernel_log() or ())
    daemon = launcher(*ENGINES[engine])
    frontend, client, shared = daemon()
    pid = serving_pid(daemon.process)
    try:
        every_operation(client, shared)
        failure = None
    except Exception as exc:
        failure = exc
    frontend.close()
    status = daemon.process.wait(10)
    if status == 0 and failure is not None:
        raise failure
    assert status == 0, (f"the daemon exited with status {status} ({128 + signal.SIGSYS}: "
                         f"killed by the filter); calls refused: {refused_calls(pid, before)}; "
                         f"the workload saw: {failure!r}")
