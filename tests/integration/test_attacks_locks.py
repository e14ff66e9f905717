"""Lock lifetimes against a sandboxed daemon with its defaults, driven by the frontend driver
replaying what the Linux 6.1 FUSE client sends (fs/fuse/file.c).  Rows of SECURITY.md's table.

The guest kernel names a lock's owner in ``fuse_lk_in.owner``: ``current->files`` for a POSIX
lock, the ``struct file`` for an OFD lock (F_OFD_*) or a flock.  At close it sends FLUSH with
``current->files`` as ``lock_owner``, and at the last close RELEASE, with
FUSE_RELEASE_FLOCK_UNLOCK and the file as ``lock_owner`` only if flock was used: nothing
names an OFD lock's owner when it goes.
"""

import fcntl
import os
import shutil
import subprocess
import sys

import pytest

from fastvfs.fuse import abi
from fastvfs.fuse.abi import Opcode

from .test_attacks import custom  # noqa: F401  (fixture)

ROOT = abi.FUSE_ROOT_ID
PROBE = ("import fcntl,os,struct,sys\n"
         "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
         "t = {'r': fcntl.F_RDLCK, 'w': fcntl.F_WRLCK}[sys.argv[2]]\n"
         "start, length = int(sys.argv[3]), int(sys.argv[4])\n"
         "got = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, struct.pack('hhxxxxqqixxxx', t, 0, start,"
         " length, 0))\n"
         "print('free' if struct.unpack('hhxxxxqqixxxx', got)[0] == fcntl.F_UNLCK"
         " else 'locked')\n")


def host_sees(path, kind, start, length):
    """What a host process asking for a ``kind`` ('r'/'w') lock on the range is told."""
    out = subprocess.run([sys.executable, "-c", PROBE, str(path), kind, str(start), str(length)],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def lk(fh, owner, start, end, lock_type, flags=0):
    return abi.lk_in.pack(fh, owner, start, end, lock_type, 4242, flags, 0)


def opened(client, nodeid, flags):
    return client.open(nodeid, flags)


def test_ofd_lock_goes_with_its_open_file(custom):  # noqa: F811
    """xfstests generic/478: two rounds of an OFD write lock and an OFD GETLK from another open
    file, each process closing at the end; the second round's SETLKW must be granted, and host
    processes must see the lock only while the guest's open file holds it."""
    _, client, shared = custom("--cache", "auto", "--xattr")
    (shared / "f").write_bytes(b"x" * 64)
    path = shared / "f"
    nodeid = client.lookup(ROOT, b"f").nodeid
    for round_ in range(2):
        # Owners as the guest kernel would make them: the files_struct of each process (for
        # FLUSH) and each struct file (for the OFD locks), new pointers every round.
        files_a, files_b = 0x1000 + round_, 0x2000 + round_
        file_a, file_b = 0xa000 + round_, 0xb000 + round_
        fh_a = opened(client, nodeid, os.O_RDWR).fh
        ticket = client.submit(Opcode.SETLKW, nodeid, lk(fh_a, file_a, 0, 10, fcntl.F_WRLCK))
        assert client.wait(ticket, timeout=3).error == 0, f"round {round_}: SETLKW not granted"
        assert host_sees(path, "r", 0, 11) == "locked"
        fh_b = opened(client, nodeid, os.O_RDWR).fh
        reply = client.call(Opcode.GETLK, nodeid, lk(fh_b, file_b, 0, 10, fcntl.F_WRLCK),
                            reply_len=abi.lk_out.size)
        start, end, lock_type, _ = abi.lk_out.unpack(reply.payload)
        assert (start, end, lock_type) == (0, 10, fcntl.F_WRLCK)
        # Both processes exit: FLUSH names the process, RELEASE names no lock owner.
        client.flush(nodeid, fh_a, lock_owner=files_a)
        client.flush(nodeid, fh_b, lock_owner=files_b)
        client.release(nodeid, fh_a)
        client.release(nodeid, fh_b)
        assert host_sees(path, "w", 0, 0) == "free", f"round {round_}: the lock outlived its file"


def test_locks_still_end_where_the_guest_says(custom):  # noqa: F811
    """POSIX locks go at FLUSH of their owner (not at another process's), flock locks at
    RELEASE, and a POSIX owner's locks taken through two open files stay until its FLUSH."""
    _, client, shared = custom()
    (shared / "f").write_bytes(b"x" * 64)
    path = shared / "f"
    nodeid = client.lookup(ROOT, b"f").nodeid
    fh1 = opened(client, nodeid, os.O_RDWR).fh
    fh2 = opened(client, nodeid, os.O_RDONLY).fh
    process = 0x77
    client.call(Opcode.SETLK, nodeid, lk(fh1, process, 0, 9, fcntl.F_WRLCK))
    client.call(Opcode.SETLK, nodeid, lk(fh2, process, 20, 29, fcntl.F_RDLCK))
    client.flush(nodeid, fh2, lock_owner=0x99)  # another process closing: nothing goes
    assert host_sees(path, "r", 0, 10) == "locked"
    client.release(nodeid, fh2)  # fh1 still open and used by the owner: its locks stay
    assert host_sees(path, "r", 0, 10) == "locked" and host_sees(path, "w", 20, 10) == "locked"
    client.flush(nodeid, fh1, lock_owner=process)
    assert host_sees(path, "w", 0, 0) == "free"
    client.call(Opcode.SETLK, nodeid, lk(fh1, 0xf11e, 0, 0, fcntl.F_WRLCK, abi.FUSE_LK_FLOCK))
    with open(path) as f, pytest.raises(BlockingIOError):
        fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
    client.release(nodeid, fh1, release_flags=abi.FUSE_RELEASE_FLOCK_UNLOCK, lock_owner=0xf11e)
    with open(path) as f:
        fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)


def test_read_locks_take_no_write_access(custom):  # noqa: F811
    """A read lock's host description is read-only: the host can still execute the locked
    file (no ETXTBSY).  A write lock by the same owner then gets write access without ever
    letting go of the owner's read locks."""
    _, client, shared = custom()
    path = shared / "tool"
    shutil.copy2("/bin/true", path)
    nodeid = client.lookup(ROOT, b"tool").nodeid
    fh = opened(client, nodeid, os.O_RDONLY).fh
    owner = 0x55  # a process: POSIX locks through both of its open files
    client.call(Opcode.SETLK, nodeid, lk(fh, owner, 100, 199, fcntl.F_RDLCK))
    client.call(Opcode.SETLK, nodeid, lk(fh, owner, 300, 399, fcntl.F_RDLCK))
    client.call(Opcode.SETLK, nodeid, lk(fh, owner, 150, 159, fcntl.F_UNLCK))
    assert subprocess.run([str(path)]).returncode == 0
    assert host_sees(path, "w", 120, 1) == "locked" and host_sees(path, "r", 120, 1) == "free"
    # Write access for a write lock; the read locks (less the unlocked hole) stay.
    fh_w = opened(client, nodeid, os.O_RDWR).fh
    client.call(Opcode.SETLK, nodeid, lk(fh_w, owner, 0, 9, fcntl.F_WRLCK))
    assert host_sees(path, "r", 5, 1) == "locked"
    assert host_sees(path, "w", 120, 1) == "locked" and host_sees(path, "w", 350, 1) == "locked"
    assert host_sees(path, "w", 155, 1) == "free" and host_sees(path, "w", 250, 1) == "free"
    client.flush(nodeid, fh_w, lock_owner=owner)
    client.release(nodeid, fh_w)
    client.release(nodeid, fh)
    assert host_sees(path, "w", 0, 0) == "free"
    assert subprocess.run([str(path)]).returncode == 0
