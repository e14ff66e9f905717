"""Every opcode a Linux guest's virtiofs client sends: fastvfs against the reference virtiofsd in
the same run.

    python -m bench.ops [--seconds 1] [--rounds 2] [--depths 1,32] [--only getattr,create]
                        [--cache auto] [--out reports/ops]

Both backends are started fresh for the run, each serving its own copy of the same tree, with
extended attributes and POSIX locks turned on (both default them off or on differently).  For
each workload and depth the figure is taken in ``--rounds`` runs of ``--seconds`` each,
interleaved A B A B, and summed.

The driver is the project's Python FUSE client (``fastvfs_testing.fuse_client`` over
``fastvfs_testing.frontend``), the "guest-like" one: requests laid out as Linux's
``virtio_fs_enqueue_req`` does, in indirect tables, EVENT_IDX negotiated both ways, each
request published on its own and the device kicked whenever its ``avail_event`` asks for it
(counted as kicks per request).  ``depth`` requests (or cycles) are kept in flight on one
request queue, closed loop.  Workloads whose steps depend on each other (CREATE then RELEASE,
UNLINK and FORGET) run as cycles, ``depth`` of them at once, reported per cycle.  The Python
driver costs tens of microseconds per request: its own CPU share is reported beside each figure,
and where it is near 100 % the requests/s figure measures the driver, not the backend (CPU per
request stays a backend figure).  Every workload with a form for it is also run by the C
driver of ``bench.micro`` (``fastvfs_testing.lean``), fast enough to keep a backend busy at
depth 32, twice: "lean", publishing the requests once per round of completions reaped, and
"c-guest", publishing each request on its own with the kick decided for each, as the Linux
driver does (``bench.micro --driver guest``).  A workload of one request that can be sent
again as it is runs as such (RAW); a cycle runs as a program (``cycle_program``), each step
sent once the one before it is answered, with the node ids and handles earlier replies gave
copied in.  SETATTR of the size and the two listings have no C form.

Backend CPU is the run time of every thread of the started process and its descendants (both
daemons serve from a child they fork into their sandbox), exited threads included (io_uring's
io-wq workers, which run fastvfs's FSYNC and FALLOCATE beside other work, exit when idle): the
usage of a CPU accounting cgroup each daemon is started in (``bench.micro.cpu_seconds``), or
where none can be made the live threads' /proc/PID/task/TID/schedstat.
"""

import argparse
import contextlib
import errno
import fcntl
import os
import shutil
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import micro, output
from fastvfs.fuse import abi
from fastvfs.fuse.abi import Opcode
from fastvfs_testing.fuse_client import PAGE_SIZE, READLINK_SIZE, FuseClient, Reply
from fastvfs_testing.lean import LeanLoad

REFERENCE = micro.REFERENCE
ROOT = abi.FUSE_ROOT_ID
DEPTHS = (1, 32)
SLOTS = 32          # per-slot files and names: the deepest depth a cycle workload may run at
DATA_SIZE = 16 << 20
# A 1 MiB READ or WRITE is a chain of 260 descriptors (header, in-args, 256 pages, out header,
# out-args), and no chain may be longer than the queue size (virtio 1.2 section 2.7.5.3.1; Linux's
# virtio_fs caps max_pages below it): queues as large as QEMU set-ups commonly configure.
QUEUE_SIZE = 1024
DIR_ENTRIES = 32
XATTR = b"user.bench"
XATTR_VALUE = b"v" * 32
# fuse_copy_file_range_in: fh_in off_in nodeid_out fh_out off_out len flags.
COPY_FILE_RANGE_IN = struct.Struct("<QQQQQQQ")
# fuse_ioctl_in: fh flags cmd arg in_size out_size; TCGETS, what isatty(3) asks.
IOCTL_IN = struct.Struct("<QIIQII")
TCGETS = 0x5401
NOT_IMPLEMENTED = (errno.ENOSYS, errno.EOPNOTSUPP)
HOLDER = 0x401d     # the lock owner of the lock a ``hold_lock`` workload runs beside
# The cache modes of both daemons by name.
CACHE = {"never": "none", "auto": "auto", "always": "always"}


def backend_argv(name, sock, shared, cache, extra=()):
    """The command line of ``name`` ("fastvfs" or "reference"); ``extra`` is appended to
    fastvfs's."""
    if name == "fastvfs":
        return [sys.executable, "-m", "fastvfs", "--socket-path", sock, "--shared-dir", shared,
                "--cache", cache, "--xattr", "--posix-lock", "--log-level", "error", *extra]
    return [REFERENCE, f"--socket-path={sock}", "-o", f"source={shared}",
            "-o", f"cache={CACHE[cache]}", "-o", "xattr", "-o", "posix_lock"]


def make_tree(root):
    """The tree every backend serves (its own copy): data files, a symlink, a directory to
    list, files with and without an extended attribute, one file per slot to rename, a
    directory of names no other workload looks up, and per slot a file to sync and allocate
    in, a directory to sync, a file to change the attributes of and a file to copy into: a
    Linux guest holds an inode's lock through a SETATTR, FSYNC, FSYNCDIR, FALLOCATE or the
    destination of a COPY_FILE_RANGE (notify_change's callers, fuse_fsync, fuse_dir_fsync,
    fuse_file_fallocate, fuse_copy_file_range), so it never has two of these in flight for one
    inode."""
    root.mkdir()
    with open(root / "data", "wb") as f:
        f.truncate(DATA_SIZE)
        f.write(os.urandom(1 << 20))
    (root / "small").write_bytes(b"x" * 100)
    os.setxattr(root / "small", XATTR, XATTR_VALUE)
    (root / "plain").write_bytes(b"y" * 100)
    os.symlink("data", root / "sym")
    (root / "dir").mkdir()
    for i in range(DIR_ENTRIES):
        (root / "dir" / f"entry{i:02}").write_bytes(b"")
    (root / "w").mkdir()
    for i in range(SLOTS):
        (root / "w" / f"r{i}").write_bytes(b"")
    # Names only lookup_new and list_new look up, each forgetting what it looked up.
    (root / "n").mkdir()
    for i in range(SLOTS):
        (root / "n" / f"x{i:02}").write_bytes(b"")
    (root / "y").mkdir()
    for i in range(SLOTS):
        (root / "y" / f"f{i:02}").write_bytes(b"z" * 100)
        (root / "y" / f"d{i:02}").mkdir()
        (root / "y" / f"t{i:02}").write_bytes(b"")
        (root / "y" / f"c{i:02}").write_bytes(b"")


@dataclass
class Req:
    """One request of a workload: what ``FuseClient.submit`` takes, and the errors that count
    as the expected answer (0: success)."""

    opcode: int
    nodeid: int
    body: bytes = b""
    kw: dict = field(default_factory=dict)
    ok: tuple = (0,)


def _name(s):
    return s.encode() + b"\0"


def _entry_node(reply):
    return abi.entry_out_head.unpack_from(reply.payload)[0]


# -- workloads: generators yielding Req and receiving the Reply --------------------------------
# Each takes (ctx, slot, seq): ``ctx`` the session (nodes and handles), ``slot`` the index of the
# cycle's place in the depth (its own names and lock range), ``seq`` the cycle's sequence number
# within its slot.

def w_lookup_hit(ctx, slot, seq):
    yield Req(Opcode.LOOKUP, ROOT, _name("data"), {"reply_len": abi.ENTRY_OUT_SIZE})


def w_lookup_miss(ctx, slot, seq):
    yield Req(Opcode.LOOKUP, ROOT, _name("absent"), {"reply_len": abi.ENTRY_OUT_SIZE},
              ok=(errno.ENOENT,))


def w_getattr(ctx, slot, seq):
    yield Req(Opcode.GETATTR, ctx.node["data"], abi.getattr_in.pack(0, 0, 0),
              {"reply_len": abi.ATTR_OUT_SIZE})


def _setattr(node, valid, *, size=0, atime=0, mtime=0, mode=0, uid=0, gid=0):
    body = abi.setattr_in.pack(valid, 0, 0, size, 0, atime, mtime, 0, 0, 0, 0, mode, 0, uid,
                               gid, 0)
    return Req(Opcode.SETATTR, node, body, {"reply_len": abi.ATTR_OUT_SIZE})


# Each slot changes a file of its own (see make_tree).

def w_setattr_mode(ctx, slot, seq):
    yield _setattr(ctx.slot_attr[slot], abi.FATTR_MODE,
                   mode=0o100640 if seq % 2 else 0o100644)


def w_setattr_owner(ctx, slot, seq):
    yield _setattr(ctx.slot_attr[slot], abi.FATTR_UID | abi.FATTR_GID)


def w_setattr_size(ctx, slot, seq):
    yield _setattr(ctx.slot_attr[slot], abi.FATTR_SIZE, size=4096 * (seq % 2))


def w_setattr_times(ctx, slot, seq):
    yield _setattr(ctx.slot_attr[slot], abi.FATTR_ATIME | abi.FATTR_MTIME,
                   atime=1_600_000_000 + seq, mtime=1_600_000_000 + seq)


def w_open_release(ctx, slot, seq):
    reply = yield Req(Opcode.OPEN, ctx.node["data"], abi.open_in.pack(os.O_RDWR, 0),
                      {"reply_len": abi.open_out.size})
    fh = abi.open_out.unpack(reply.payload)[0]
    yield Req(Opcode.RELEASE, ctx.node["data"], abi.release_in.pack(fh, os.O_RDWR, 0, 0))


def w_close_lock_held(ctx, slot, seq):
    """OPEN, then a close as the kernel sends it (FLUSH with the process's lock owner, then
    RELEASE), while another process of the guest holds a POSIX lock on another file for the
    whole run (``Workload.hold_lock``)."""
    reply = yield Req(Opcode.OPEN, ctx.node["data"], abi.open_in.pack(os.O_RDWR, 0),
                      {"reply_len": abi.open_out.size})
    fh = abi.open_out.unpack(reply.payload)[0]
    yield Req(Opcode.FLUSH, ctx.node["data"], abi.flush_in.pack(fh, 0, 0, 2000 + slot))
    yield Req(Opcode.RELEASE, ctx.node["data"], abi.release_in.pack(fh, os.O_RDWR, 0, 0))


def w_lock_close(ctx, slot, seq):
    """A process that opens a file, locks a range, unlocks it and closes it (the lock owner's
    first lock each time: its description goes at the FLUSH)."""
    reply = yield Req(Opcode.OPEN, ctx.node["data"], abi.open_in.pack(os.O_RDWR, 0),
                      {"reply_len": abi.open_out.size})
    fh = abi.open_out.unpack(reply.payload)[0]
    owner, start = 3000 + slot, 50_000 + slot * 100
    for lock_type in (fcntl.F_WRLCK, fcntl.F_UNLCK):
        yield Req(Opcode.SETLK, ctx.node["data"],
                  abi.lk_in.pack(fh, owner, start, start + 9, lock_type, 0, 0, 0))
    yield Req(Opcode.FLUSH, ctx.node["data"], abi.flush_in.pack(fh, 0, 0, owner))
    yield Req(Opcode.RELEASE, ctx.node["data"], abi.release_in.pack(fh, os.O_RDWR, 0, 0))


def _forget(node):
    return Req(Opcode.FORGET, node, abi.forget_in.pack(1), {"noreply": True})


def w_create(ctx, slot, seq):
    w, name = ctx.node["w"], _name(f"c{slot}")
    reply = yield Req(Opcode.CREATE, w, abi.create_in.pack(os.O_RDWR | os.O_CREAT, 0o100644, 0,
                                                           0) + name,
                      {"reply_len": abi.ENTRY_OUT_SIZE + abi.open_out.size})
    node = _entry_node(reply)
    fh = abi.open_out.unpack_from(reply.payload, abi.ENTRY_OUT_SIZE)[0]
    yield Req(Opcode.RELEASE, node, abi.release_in.pack(fh, os.O_RDWR, 0, 0))
    yield Req(Opcode.UNLINK, w, name)
    yield _forget(node)


def w_mknod(ctx, slot, seq):
    w, name = ctx.node["w"], _name(f"n{slot}")
    reply = yield Req(Opcode.MKNOD, w, abi.mknod_in.pack(0o010644, 0, 0, 0) + name,
                      {"reply_len": abi.ENTRY_OUT_SIZE})
    yield Req(Opcode.UNLINK, w, name)
    yield _forget(_entry_node(reply))


def w_mkdir(ctx, slot, seq):
    w, name = ctx.node["w"], _name(f"d{slot}")
    reply = yield Req(Opcode.MKDIR, w, abi.mkdir_in.pack(0o755, 0) + name,
                      {"reply_len": abi.ENTRY_OUT_SIZE})
    yield Req(Opcode.RMDIR, w, name)
    yield _forget(_entry_node(reply))


def w_symlink(ctx, slot, seq):
    w, name = ctx.node["w"], _name(f"s{slot}")
    reply = yield Req(Opcode.SYMLINK, w, name + _name("target"),
                      {"reply_len": abi.ENTRY_OUT_SIZE})
    yield Req(Opcode.UNLINK, w, name)
    yield _forget(_entry_node(reply))


def w_link(ctx, slot, seq):
    w, name = ctx.node["w"], _name(f"l{slot}")
    reply = yield Req(Opcode.LINK, w, abi.link_in.pack(ctx.node["plain"]) + name,
                      {"reply_len": abi.ENTRY_OUT_SIZE})
    yield Req(Opcode.UNLINK, w, name)
    yield _forget(_entry_node(reply))


def w_rename(ctx, slot, seq):
    w, a, b = ctx.node["w"], _name(f"r{slot}"), _name(f"r{slot}x")
    yield Req(Opcode.RENAME, w, abi.rename_in.pack(w) + a + b)
    yield Req(Opcode.RENAME, w, abi.rename_in.pack(w) + b + a)


def w_rename2(ctx, slot, seq):
    w, a, b = ctx.node["w"], _name(f"r{slot}"), _name(f"r{slot}x")
    noreplace = abi.RENAME_NOREPLACE
    yield Req(Opcode.RENAME2, w, abi.rename2_in.pack(w, noreplace, 0) + a + b)
    yield Req(Opcode.RENAME2, w, abi.rename2_in.pack(w, noreplace, 0) + b + a)


def w_readlink(ctx, slot, seq):
    yield Req(Opcode.READLINK, ctx.node["sym"], b"", {"data_len": READLINK_SIZE})


def w_statfs(ctx, slot, seq):
    yield Req(Opcode.STATFS, ROOT, b"", {"reply_len": abi.kstatfs.size})


def w_opendir(ctx, slot, seq):
    node = ctx.node["dir"]
    reply = yield Req(Opcode.OPENDIR, node, abi.open_in.pack(os.O_RDONLY | os.O_DIRECTORY, 0),
                      {"reply_len": abi.open_out.size})
    fh = abi.open_out.unpack(reply.payload)[0]
    yield Req(Opcode.RELEASEDIR, node, abi.release_in.pack(fh, 0, 0, 0))


def _readdir(ctx, opcode):
    # The whole directory fits one page: each READDIR from offset 0 returns all of it.
    return Req(opcode, ctx.node["dir"], abi.read_in.pack(ctx.fh["dir"], 0, PAGE_SIZE, 0, 0, 0, 0),
               {"data_len": PAGE_SIZE})


def w_readdir(ctx, slot, seq):
    yield _readdir(ctx, Opcode.READDIR)


def w_readdirplus(ctx, slot, seq):
    yield _readdir(ctx, Opcode.READDIRPLUS)


def w_list(ctx, slot, seq):
    """``ls -l`` of a directory as the kernel does it: OPENDIR, READDIRPLUS to the end (the
    second one returns nothing), RELEASEDIR."""
    node = ctx.node["dir"]
    reply = yield Req(Opcode.OPENDIR, node, abi.open_in.pack(os.O_RDONLY | os.O_DIRECTORY, 0),
                      {"reply_len": abi.open_out.size})
    fh = abi.open_out.unpack(reply.payload)[0]
    reply = yield Req(Opcode.READDIRPLUS, node, abi.read_in.pack(fh, 0, PAGE_SIZE, 0, 0, 0, 0),
                      {"data_len": PAGE_SIZE})
    last = 0
    for entry in _direntplus_offsets(reply.data):
        last = entry
    yield Req(Opcode.READDIRPLUS, node, abi.read_in.pack(fh, last, PAGE_SIZE, 0, 0, 0, 0),
              {"data_len": PAGE_SIZE})
    yield Req(Opcode.RELEASEDIR, node, abi.release_in.pack(fh, 0, 0, 0))


def _direntplus_offsets(buf):
    for _, off in _direntplus(buf):
        yield off


def _direntplus(buf):
    """(node id, cookie) of each fuse_direntplus record ("." and ".." have node id 0)."""
    pos = 0
    while pos + abi.ENTRY_OUT_SIZE + abi.dirent_head.size <= len(buf):
        nodeid = abi.entry_out_head.unpack_from(buf, pos)[0]
        _, off, namelen, _ = abi.dirent_head.unpack_from(buf, pos + abi.ENTRY_OUT_SIZE)
        yield nodeid, off
        pos += abi.rec_align(abi.ENTRY_OUT_SIZE + abi.dirent_head.size + namelen)


def w_lookup_new(ctx, slot, seq):
    """LOOKUP of a name whose inode the backend does not hold (the first access to a file),
    then the FORGET that lets it go again."""
    reply = yield Req(Opcode.LOOKUP, ctx.node["n"], _name(f"x{slot:02}"),
                      {"reply_len": abi.ENTRY_OUT_SIZE})
    yield _forget(_entry_node(reply))


def w_list_new(ctx, slot, seq):
    """``ls -l`` of a directory whose inodes the backend does not hold: OPENDIR, READDIRPLUS
    to the end, RELEASEDIR, then one BATCH_FORGET of every entry, as the kernel sends it when
    it drops them."""
    node = ctx.node["n"]
    reply = yield Req(Opcode.OPENDIR, node, abi.open_in.pack(os.O_RDONLY | os.O_DIRECTORY, 0),
                      {"reply_len": abi.open_out.size})
    fh = abi.open_out.unpack(reply.payload)[0]
    looked_up, offset = [], 0
    while True:
        reply = yield Req(Opcode.READDIRPLUS, node,
                          abi.read_in.pack(fh, offset, PAGE_SIZE, 0, 0, 0, 0),
                          {"data_len": PAGE_SIZE})
        records = list(_direntplus(reply.data))
        if not records:
            break
        looked_up += [n for n, _ in records if n]
        offset = records[-1][1]
    yield Req(Opcode.RELEASEDIR, node, abi.release_in.pack(fh, 0, 0, 0))
    yield Req(Opcode.BATCH_FORGET, 0,
              abi.batch_forget_in.pack(len(looked_up), 0) +
              b"".join(abi.forget_one.pack(n, 1) for n in looked_up), {"noreply": True})


def _getxattr(node, name, size, ok=(0,)):
    return Req(Opcode.GETXATTR, node, abi.getxattr_in.pack(size, 0) + name + b"\0",
               {"data_len": size} if size else {"reply_len": abi.getxattr_out.size}, ok=ok)


def w_getxattr_hit(ctx, slot, seq):
    yield _getxattr(ctx.node["small"], XATTR, 64)


def w_getxattr_miss(ctx, slot, seq):
    yield _getxattr(ctx.node["plain"], XATTR, 64, ok=(errno.ENODATA,))


def _listxattr(node):
    return Req(Opcode.LISTXATTR, node, abi.getxattr_in.pack(256, 0), {"data_len": 256})


def w_listxattr_hit(ctx, slot, seq):
    yield _listxattr(ctx.node["small"])


def w_listxattr_empty(ctx, slot, seq):
    yield _listxattr(ctx.node["plain"])


def w_setxattr(ctx, slot, seq):
    node, name = ctx.node["plain"], b"user.s%d\0" % slot
    head = (abi.setxattr_in_ext.pack(len(XATTR_VALUE), 0, 0, 0) if ctx.setxattr_ext
            else abi.setxattr_in.pack(len(XATTR_VALUE), 0))
    yield Req(Opcode.SETXATTR, node, head + name + XATTR_VALUE)
    yield Req(Opcode.REMOVEXATTR, node, name)


def w_flush(ctx, slot, seq):
    yield Req(Opcode.FLUSH, ctx.node["data"], abi.flush_in.pack(ctx.fh["data"], 0, 0, 0))


def w_fsync(ctx, slot, seq):
    node, fh = ctx.slot_file[slot]     # each slot its own file (see make_tree)
    yield Req(Opcode.FSYNC, node, abi.fsync_in.pack(fh, 0, 0))


def w_write_fsync(ctx, slot, seq):
    """A program saving its file: a WRITE of 4 KiB, then the FSYNC that takes it to the disk
    (a sync with data to write, the kind a guest's fsync(2) sends after its writeback)."""
    node, fh = ctx.slot_file[slot]
    yield Req(Opcode.WRITE, node, abi.write_in.pack(fh, 0, 4096, 0, 0, 0, 0),
              {"data": ctx.payload[:4096], "reply_len": abi.write_out.size})
    yield Req(Opcode.FSYNC, node, abi.fsync_in.pack(fh, 0, 0))


def w_fsyncdir(ctx, slot, seq):
    node, fh = ctx.slot_dir[slot]      # each slot its own directory (see make_tree)
    yield Req(Opcode.FSYNCDIR, node, abi.fsync_in.pack(fh, 0, 0))


def w_syncfs(ctx, slot, seq):
    # The guest's sync(2): nothing written meanwhile, so the host's syncfs finds nothing to do.
    yield Req(Opcode.SYNCFS, ROOT, bytes(8))


def w_fallocate(ctx, slot, seq):
    # The slot's file, its first 4 KiB: allocated by the first request, a no-op afterwards.
    node, fh = ctx.slot_file[slot]
    yield Req(Opcode.FALLOCATE, node, abi.fallocate_in.pack(fh, 0, 4096, 0, 0))


def w_lseek(ctx, slot, seq):
    yield Req(Opcode.LSEEK, ctx.node["data"],
              abi.lseek_in.pack(ctx.fh["data"], 0, os.SEEK_DATA, 0),
              {"reply_len": abi.lseek_out.size})


def w_copy_file_range(ctx, slot, seq):
    # 64 KiB of "data" (each slot its own range) into the start of the slot's own file.
    node, fh = ctx.slot_copy[slot]
    yield Req(Opcode.COPY_FILE_RANGE, ctx.node["data"],
              COPY_FILE_RANGE_IN.pack(ctx.fh["data"], slot * 65536, node, fh, 0, 65536, 0),
              {"reply_len": abi.write_out.size})


def w_ioctl(ctx, slot, seq):
    # isatty(3) of an open file: neither backend passes ioctls on, both answer ENOSYS (the
    # guest kernel's ENOTTY).
    yield Req(Opcode.IOCTL, ctx.node["data"], IOCTL_IN.pack(ctx.fh["data"], 0, TCGETS, 0, 0, 0),
              ok=(errno.ENOSYS,))


def _lock(ctx, opcode, slot, kind):
    start = slot * 100
    return Req(opcode, ctx.node["data"],
               abi.lk_in.pack(ctx.fh["data"], 1000 + slot, start, start + 9, kind, 0, 0, 0),
               {"reply_len": abi.lk_out.size} if opcode == Opcode.GETLK else {})


def w_getlk(ctx, slot, seq):
    yield _lock(ctx, Opcode.GETLK, slot, 1)    # F_WRLCK


def w_setlk(ctx, slot, seq):
    yield _lock(ctx, Opcode.SETLK, slot, 1)    # F_WRLCK
    yield _lock(ctx, Opcode.SETLK, slot, 2)    # F_UNLCK


def _io(op, size):
    count = DATA_SIZE // size

    def workload(ctx, slot, seq):
        offset = ((slot * 7919 + seq * 104729) % count) * size
        if op == Opcode.READ:
            yield Req(op, ctx.node["data"], abi.read_in.pack(ctx.fh["data"], offset, size, 0, 0,
                                                             0, 0), {"data_len": size})
        else:
            yield Req(op, ctx.node["data"], abi.write_in.pack(ctx.fh["data"], offset, size, 0, 0,
                                                              0, 0),
                      {"data": ctx.payload[:size], "reply_len": abi.write_out.size})
    return workload


RAW = ("RAW", 0)
CYCLE = ("CYCLE", 0)


@dataclass(frozen=True)
class Workload:
    name: str
    run: object
    cycle: str = ""     # the requests of one cycle, when reported per cycle
    lean: tuple = ()    # (op, size) for the C driver: its own request, or ("RAW", 0): the
                        # workload's (one request per cycle, sent again unchanged), or
                        # ("CYCLE", 0): its cycle (see cycle_program)
    hold_lock: bool = False     # a POSIX lock on "plain" is held through the run


WORKLOADS = [
    Workload("lookup_hit", w_lookup_hit, lean=("LOOKUP", 0)),
    Workload("lookup_miss", w_lookup_miss, lean=RAW),
    Workload("lookup_new", w_lookup_new, "LOOKUP+FORGET", lean=CYCLE),
    Workload("getattr", w_getattr, lean=("GETATTR", 0)),
    Workload("setattr_mode", w_setattr_mode, lean=RAW),
    Workload("setattr_owner", w_setattr_owner, lean=RAW),
    Workload("setattr_size", w_setattr_size),
    Workload("setattr_times", w_setattr_times, lean=RAW),
    Workload("open_release", w_open_release, "OPEN+RELEASE", lean=CYCLE),
    Workload("close_lock_held", w_close_lock_held, "OPEN+FLUSH+RELEASE", lean=CYCLE,
             hold_lock=True),
    Workload("create", w_create, "CREATE+RELEASE+UNLINK+FORGET", lean=CYCLE),
    Workload("mknod", w_mknod, "MKNOD+UNLINK+FORGET", lean=CYCLE),
    Workload("mkdir", w_mkdir, "MKDIR+RMDIR+FORGET", lean=CYCLE),
    Workload("symlink", w_symlink, "SYMLINK+UNLINK+FORGET", lean=CYCLE),
    Workload("link", w_link, "LINK+UNLINK+FORGET", lean=CYCLE),
    Workload("rename", w_rename, lean=CYCLE),
    Workload("rename2", w_rename2, lean=CYCLE),
    Workload("readlink", w_readlink, lean=RAW),
    Workload("statfs", w_statfs, lean=RAW),
    Workload("opendir_releasedir", w_opendir, "OPENDIR+RELEASEDIR", lean=CYCLE),
    Workload("readdir", w_readdir, lean=RAW),
    Workload("readdirplus", w_readdirplus, lean=RAW),
    Workload("list", w_list, "OPENDIR+READDIRPLUS+READDIRPLUS+RELEASEDIR"),
    Workload("list_new", w_list_new,
             "OPENDIR+READDIRPLUS+READDIRPLUS+RELEASEDIR+BATCH_FORGET of 32 new inodes"),
    Workload("getxattr_hit", w_getxattr_hit, lean=RAW),
    Workload("getxattr_miss", w_getxattr_miss, lean=RAW),
    Workload("listxattr_hit", w_listxattr_hit, lean=RAW),
    Workload("listxattr_empty", w_listxattr_empty, lean=RAW),
    Workload("setxattr_removexattr", w_setxattr, "SETXATTR+REMOVEXATTR", lean=CYCLE),
    Workload("flush", w_flush, lean=RAW),
    Workload("fsync", w_fsync, lean=RAW),
    Workload("write_fsync", w_write_fsync, "WRITE+FSYNC", lean=CYCLE),
    Workload("fsyncdir", w_fsyncdir, lean=RAW),
    Workload("syncfs", w_syncfs, lean=RAW),
    Workload("fallocate", w_fallocate, lean=RAW),
    Workload("lseek", w_lseek, lean=RAW),
    Workload("copy_file_range", w_copy_file_range, lean=RAW),
    Workload("ioctl", w_ioctl, lean=RAW),
    Workload("getlk", w_getlk, lean=RAW),
    Workload("setlk", w_setlk, "SETLK(lock)+SETLK(unlock)", lean=CYCLE),
    Workload("lock_close", w_lock_close, "OPEN+SETLK(lock)+SETLK(unlock)+FLUSH+RELEASE",
             lean=CYCLE),
    Workload("read4k", _io(Opcode.READ, 4096), lean=("READ", 4096)),
    Workload("read128k", _io(Opcode.READ, 128 << 10), lean=("READ", 128 << 10)),
    Workload("read1m", _io(Opcode.READ, 1 << 20), lean=("READ", 1 << 20)),
    Workload("write4k", _io(Opcode.WRITE, 4096), lean=("WRITE", 4096)),
    Workload("write128k", _io(Opcode.WRITE, 128 << 10), lean=("WRITE", 128 << 10)),
    Workload("write1m", _io(Opcode.WRITE, 1 << 20), lean=("WRITE", 1 << 20)),
]
BY_NAME = {w.name: w for w in WORKLOADS}


def raw_requests(workload, ctx, depth):
    """The C driver's requests of a RAW workload, one per slot (the request of each slot's
    cycle number ``slot``), and the error it expects (a negative errno, or 0)."""
    if workload.lean != RAW:
        raise ValueError(f"{workload.name} has no form for the C driver")
    requests, oks = [], set()
    for slot in range(depth):
        gen = workload.run(ctx, slot, slot)
        req = next(gen)
        gen.close()
        if req.kw.keys() - {"reply_len", "data_len"} or len(req.ok) != 1:
            raise ValueError(f"{workload.name} has no form for the C driver")
        requests.append((req.opcode, req.nodeid, req.body, req.kw.get("reply_len", 0),
                         req.kw.get("data_len", 0)))
        oks.add(-req.ok[0])
    if len(oks) != 1:
        raise ValueError(f"{workload.name} expects different errors in different slots")
    return requests, oks.pop()


# A value no reply holds: the top 16 bits of each 8 bytes of the made-up replies
# ``cycle_program`` feeds a workload, the rest naming the step and the offset they stand at.
_MARK = 0x5EED


def _marked(step, length):
    words = b"".join(struct.pack("<Q", _MARK << 48 | step << 24 | off)
                     for off in range(0, length, 8))
    return words[:length]


def _cycle_steps(workload, ctx, slot, seq, data_fill):
    """The requests of one cycle of ``workload``, every reply a success whose fixed
    out-arguments are marked (``_marked``) and whose data area is ``data_fill``."""
    gen, steps, reply = workload.run(ctx, slot, seq), [], None
    while True:
        try:
            req = gen.send(reply)
        except StopIteration:
            return steps
        except (struct.error, ValueError, IndexError) as exc:
            raise ValueError(f"{workload.name}: its cycle reads what its replies hold: "
                             f"{exc}") from None
        kw = req.kw
        if kw.keys() - {"reply_len", "data_len", "data", "noreply"} or req.ok != (0,):
            raise ValueError(f"{workload.name} has no form for the C driver")
        reply = Reply(0, 0, _marked(len(steps), kw.get("reply_len", 0)),
                      bytes([data_fill]) * kw.get("data_len", 0))
        steps.append(req)
        if len(steps) > 16:
            raise ValueError(f"{workload.name}: a cycle of more than 16 requests")


def cycle_program(workload, ctx, slot):
    """The C driver's form of ``workload``'s cycle in ``slot``, as ``LeanLoad`` takes it with
    op CYCLE: its steps ``(opcode, nodeid, in-arguments, data, reply_len, data_len, noreply,
    patches)``.  Found by running the workload's generator on made-up replies: where a later
    request carries 8 bytes of an earlier marked reply (a node id, a handle), the C driver
    copies them from that step's real reply (a patch).  A workload whose requests depend on
    anything else (a listing's contents, the cycle's number in its slot) has no such form:
    ValueError."""
    if workload.lean != CYCLE:
        raise ValueError(f"{workload.name} has no cycle for the C driver")
    runs = [_cycle_steps(workload, ctx, slot, seq, fill)
            for seq, fill in ((0, 0), (1, 0), (2, 0), (0, 0xFF))]
    if any([(r.opcode, r.nodeid, r.body, r.kw) for r in run] !=
           [(r.opcode, r.nodeid, r.body, r.kw) for r in runs[0]] for run in runs[1:]):
        raise ValueError(f"{workload.name}: its requests change from cycle to cycle")
    program = []
    for i, req in enumerate(runs[0]):
        request = bytearray(abi.in_header.pack(0, req.opcode, 0, req.nodeid, 0, 0, 0, 0, 0)
                            + req.body)
        patches = []
        for pos in [16] + list(range(abi.IN_HEADER_SIZE, len(request) - 7)):
            value = struct.unpack_from("<Q", request, pos)[0]
            if value >> 48 != _MARK:
                continue
            src, offset = value >> 24 & 0xFFFFFF, value & 0xFFFFFF
            if src >= i:
                raise ValueError(f"{workload.name}: step {i} carries a value of no earlier reply")
            patches.append((src, offset, pos))
            struct.pack_into("<Q", request, pos, 0)
        kw = req.kw
        program.append((req.opcode, struct.unpack_from("<Q", request, 16)[0],
                        bytes(request[abi.IN_HEADER_SIZE:]), kw.get("data", b""),
                        kw.get("reply_len", 0), kw.get("data_len", 0), bool(kw.get("noreply")),
                        patches))
    return program


class NotImplementedByBackend(Exception):
    """The backend answered ENOSYS / EOPNOTSUPP: it does not implement the operation."""


def drive(client, workload, ctx, depth, seconds):
    """Keep ``depth`` cycles of ``workload`` in flight for ``seconds`` (the ones started by
    then run to their end); returns counts and the driver thread's CPU time."""
    queue = client.frontend.queues[1]
    kicks = [0]
    kick = queue.kick

    def counted_kick():
        kicks[0] += 1
        kick()
    queue.kick = counted_kick
    live, seqs = {}, [0] * depth
    requests = cycles = 0

    def step(gen, reply, slot):
        req = gen.send(reply)
        live[client.submit(req.opcode, req.nodeid, req.body, **req.kw)] = (gen, req, slot)

    def start(slot):
        gen = workload.run(ctx, slot, seqs[slot])
        seqs[slot] += 1
        step(gen, None, slot)

    cpu0, t0 = time.thread_time(), time.perf_counter()
    deadline = t0 + seconds
    try:
        for slot in range(depth):
            start(slot)
        while live:
            for ticket, reply in client.collect():
                gen, req, slot = live.pop(ticket)
                requests += 1
                if isinstance(reply, Exception):
                    raise reply
                if reply.error not in req.ok:
                    if reply.error in NOT_IMPLEMENTED:
                        raise NotImplementedByBackend(os.strerror(reply.error))
                    raise OSError(reply.error, f"{workload.name}: {Opcode(req.opcode).name} "
                                               f"failed: {os.strerror(reply.error)}")
                try:
                    step(gen, reply, slot)
                except StopIteration:
                    cycles += 1
                    if time.perf_counter() < deadline:
                        start(slot)
    except BaseException:
        # Leave the queue idle for the next workload: collect what is still in flight.
        try:
            client.wait_all()
        except Exception:  # noqa: BLE001 - the first error is the one raised
            pass
        raise
    finally:
        del queue.kick
    wall = time.perf_counter() - t0
    return {"requests": requests, "cycles": cycles, "wall_s": wall,
            "driver_cpu_s": time.thread_time() - cpu0, "kicks": kicks[0]}


class Session:
    """One backend serving its own copy of the tree, the Python driver up on it."""

    def __init__(self, name, workdir, cache, prefix=(), extra=()):
        self.name = name
        self.shared = Path(workdir) / name
        make_tree(self.shared)
        self.sock, self.proc, self.frontend = micro.start_daemon(
            [*prefix, *backend_argv(name, "{sock}", str(self.shared), cache, extra)], name,
            queue_size=QUEUE_SIZE)
        # Data in page-sized descriptors, as the kernel's page vectors are.
        self.client = FuseClient(self.frontend, data_desc_size=PAGE_SIZE, timeout=30)
        init = self.client.init()
        self.setxattr_ext = bool(init.all_flags & abi.FUSE_SETXATTR_EXT)
        self.node = {n: self.client.lookup(ROOT, n).nodeid
                     for n in ("data", "small", "plain", "sym", "dir", "w",
                               "n")}
        self.fh = {n: self.client.open(self.node[n], os.O_RDWR).fh
                   for n in ("data", "plain")}
        # A guest renames only what it has looked up (the reference answers EIO otherwise).
        for i in range(SLOTS):
            self.client.lookup(self.node["w"], f"r{i}")
        self.fh["dir"] = self.client.opendir(self.node["dir"]).fh
        y = self.client.lookup(ROOT, "y").nodeid
        self.slot_file, self.slot_dir, self.slot_attr, self.slot_copy = [], [], [], []
        for i in range(SLOTS):
            node = self.client.lookup(y, f"f{i:02}").nodeid
            self.slot_file.append((node, self.client.open(node, os.O_RDWR).fh))
            node = self.client.lookup(y, f"d{i:02}").nodeid
            self.slot_dir.append((node, self.client.opendir(node).fh))
            self.slot_attr.append(self.client.lookup(y, f"t{i:02}").nodeid)
            node = self.client.lookup(y, f"c{i:02}").nodeid
            self.slot_copy.append((node, self.client.open(node, os.O_RDWR).fh))
        self.payload = os.urandom(1 << 20)

    def _held_lock(self, take):
        """Take the lock a ``hold_lock`` workload runs beside, or drop it and close as its
        process would (the FLUSH ends the owner's description too)."""
        lock_type = fcntl.F_WRLCK if take else fcntl.F_UNLCK
        body = abi.lk_in.pack(self.fh["plain"], HOLDER, 0, 0, lock_type, 1, 0, 0)
        self.client.call(Opcode.SETLK, self.node["plain"], body)
        if not take:
            self.client.flush(self.node["plain"], self.fh["plain"], lock_owner=HOLDER)

    @contextlib.contextmanager
    def _beside(self, workload):
        """The lock a ``hold_lock`` workload runs beside, held meanwhile.  Taken and dropped
        by the Python driver, on the workload's queue: for the C driver, outside its run."""
        if workload.hold_lock:
            self._held_lock(True)
        try:
            yield
        finally:
            if workload.hold_lock:
                self._held_lock(False)

    def run(self, workload, depth, seconds):
        with self._beside(workload):
            cpu0 = micro.cpu_seconds(self.proc.pid)
            r = drive(self.client, workload, self, depth, seconds)
            r["backend_cpu_s"] = micro.cpu_seconds(self.proc.pid) - cpu0
        return r

    def run_lean(self, workload, depth, seconds, publish_each=False):
        with self._beside(workload):
            return self._run_lean(workload, depth, seconds, publish_each)

    def _run_lean(self, workload, depth, seconds, publish_each):
        op, size = workload.lean
        if op == "CYCLE":
            load = LeanLoad(self.frontend, 1, op, depth,
                            programs=[cycle_program(workload, self, slot)
                                      for slot in range(depth)], publish_each=publish_each)
        elif op == "RAW":
            requests, ok_error = raw_requests(workload, self, depth)
            load = LeanLoad(self.frontend, 1, op, depth, requests=requests, ok_error=ok_error,
                            publish_each=publish_each)
        else:
            load = LeanLoad(self.frontend, 1, op, depth,
                            nodeid=ROOT if op == "LOOKUP" else self.node["data"],
                            fh=self.fh["data"], name=b"data", size=size, file_size=DATA_SIZE,
                            publish_each=publish_each)
        try:
            cpu0 = micro.cpu_seconds(self.proc.pid)
            try:
                r = load.run(seconds)
            except OSError as exc:
                if exc.errno in NOT_IMPLEMENTED:
                    raise NotImplementedByBackend(os.strerror(exc.errno)) from None
                raise
            backend = micro.cpu_seconds(self.proc.pid) - cpu0
        finally:
            load.close()
        return {"requests": r["requests"], "cycles": r["cycles"], "wall_s": r["wall_s"],
                "driver_cpu_s": r["driver_cpu_s"], "kicks": r["kicks"],
                "publishes": r["publishes"], "backend_cpu_s": backend}

    def close(self):
        micro.stop_daemon(self.proc, self.frontend, self.sock)


# -- pure parts: combining rounds, ratios, the table --------------------------------------------

SUMMED = ("requests", "cycles", "wall_s", "backend_cpu_s", "driver_cpu_s", "kicks")


def summarise(rounds):
    """One figure from a backend's rounds of a workload: counts and times summed, then rates
    and per-request / per-cycle costs derived from the sums (a round of twice the wall time
    weighs twice); each round's own requests/s kept to show the spread."""
    total = {f: sum(r[f] for r in rounds) for f in SUMMED}
    wall, req, cyc = total["wall_s"], total["requests"], total["cycles"]
    total.update(
        rounds_req_per_s=[r["requests"] / r["wall_s"] for r in rounds if r["wall_s"]],
        req_per_s=req / wall if wall else None,
        cycles_per_s=cyc / wall if wall else None,
        backend_us_per_req=total["backend_cpu_s"] * 1e6 / req if req else None,
        backend_us_per_cycle=total["backend_cpu_s"] * 1e6 / cyc if cyc else None,
        driver_us_per_req=total["driver_cpu_s"] * 1e6 / req if req else None,
        driver_cpu_share=total["driver_cpu_s"] / wall if wall else None,
        backend_cpu_share=total["backend_cpu_s"] / wall if wall else None,
        kicks_per_req=total["kicks"] / req if req else None)
    return total


def ratio(a, b):
    """``a / b``, or None when either is missing or ``b`` is zero."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def compare(fastvfs, reference, per_cycle):
    """fastvfs / reference ratios of throughput (requests or cycles per second: higher is
    better for fastvfs) and of backend CPU per request or cycle (lower is better)."""
    rate, cost = ("cycles_per_s", "backend_us_per_cycle") if per_cycle else \
        ("req_per_s", "backend_us_per_req")
    return {"rate": ratio(fastvfs.get(rate), reference.get(rate)),
            "cpu": ratio(fastvfs.get(cost), reference.get(cost))}


# The gate's summary (bench/regress.py): one of each family of operations, at depth 1.
GATE_WORKLOADS = ("lookup_miss", "setattr_mode", "open_release", "create", "mkdir", "rename",
                  "readdirplus", "getxattr_hit", "setlk", "lookup_new", "list_new", "lock_close")


def gate_ratios(results):
    """{"ops:<workload>@<depth>": fastvfs/reference units per backend CPU-second}, the figure
    the gate compares (higher is better for fastvfs); workloads a backend does not implement
    are left out."""
    out = {}
    for row in results.values():
        f, r = row.get("fastvfs") or {}, row.get("reference") or {}
        if row["driver"] != "python" or "req_per_s" not in f or "req_per_s" not in r:
            continue
        cpu = compare(f, r, row["unit"] != "request")["cpu"]
        out[f"ops:{row['workload']}@{row['depth']}"] = 1 / cpu if cpu else None
    return out


def _num(x, digits=0):
    return "-" if x is None else f"{x:,.{digits}f}"


def _x(x):
    return "-" if x is None else f"{x:.2f}x"


def _pct(x):
    return "-" if x is None else f"{x:.0%}"


def table_rows(results):
    """Markdown rows of ``results`` ({key: row}); a row has workload, depth, driver, unit
    ("request" or the cycle's requests), and per backend either a summary or
    {"not_implemented": reason}."""
    lines = []
    for row in results.values():
        per_cycle = row["unit"] != "request"
        f, r = row.get("fastvfs"), row.get("reference")
        cells = []
        for s in (f, r):
            if s is None:
                cells.append(("-", "-", "-"))
            elif "not_implemented" in s:
                cells.append(("not implemented", "-", "-"))
            elif "failed" in s:
                cells.append(("failed: " + s["failed"], "-", "-"))
            else:
                cells.append((_num(s["cycles_per_s" if per_cycle else "req_per_s"]),
                              _num(s["backend_us_per_cycle" if per_cycle else
                                     "backend_us_per_req"], 1),
                              _pct(s["driver_cpu_share"])))
        both = f and r and "req_per_s" in f and "req_per_s" in r
        c = compare(f, r, per_cycle) if both else {"rate": None, "cpu": None}
        unit = "request" if not per_cycle else f"cycle ({row['unit']})"
        lines.append(f"| {row['workload']} | {row['depth']} | {row['driver']} | {unit} | "
                     f"{cells[0][0]} | {cells[1][0]} | {_x(c['rate'])} | {cells[0][1]} | "
                     f"{cells[1][1]} | {_x(c['cpu'])} | {cells[0][2]} / {cells[1][2]} |")
    return lines


def markdown(results, config):
    lines = [
        f"# Every opcode: fastvfs against the reference virtiofsd, {config['date']}", "",
        f"Machine: {config['machine']}. Commit {config['commit']}.", "",
        f"- fastvfs: `{' '.join(config['fastvfs_argv'])}` (sandbox {config['fastvfs_sandbox']}, "
        f"{config['fastvfs_threads']})",
        f"- reference: `{' '.join(config['reference_argv'])}` (sandbox "
        f"{config['reference_sandbox']}, {config['reference_threads']})",
        f"- cache mode: {config['cache']}; both daemons started fresh for this run, each on its "
        f"own copy of the same tree (in {config['tree_fs']}), kept up for the whole run.",
        f"- {config['rounds']} rounds of {config['seconds']} s per figure, interleaved "
        f"A B A B (fastvfs, reference), summed.",
        f"- Driver: {config['driver']}", "",
        "| workload | depth | driver | unit | fastvfs /s | reference /s | ratio /s | "
        "fastvfs backend CPU µs per unit | reference backend CPU µs per unit | ratio CPU | "
        "driver CPU share (fastvfs / reference) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *table_rows(results), "",
        "Ratio /s: fastvfs over reference (above 1: fastvfs faster). Ratio CPU: fastvfs's "
        "backend CPU per unit over the reference's (below 1: fastvfs cheaper). Driver CPU "
        "share: the driving thread's CPU time over the run's wall time; near 100 % the "
        "throughput figure is bound by the driver, and only the CPU per unit speaks for the "
        "backend. A cycle's steps depend on each other; at depth 32, 32 cycles run at once, "
        "each on names of its own. Not implemented: the backend answered ENOSYS or EOPNOTSUPP."]
    return "\n".join(lines) + "\n"


def _fs_type(path):
    best = ("", "?")
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            mount = parts[1]
            if str(path).startswith(mount.rstrip("/") + "/") and len(mount) >= len(best[0]):
                best = (mount, parts[2])
    return best[1]


def _threads(pid):
    return len(list(micro.threads(pid)))


# The C driver's two ways of publishing: whether each request is published on its own.
C_DRIVERS = {"lean": False, "c-guest": True}


def measure(names, depths, seconds, rounds, cache, lean=True, log=print, prefix=(), extra=()):
    """({key: row} for ``names`` at ``depths``, {backend: threads after start-up}); both
    backends are started fresh for the call, fastvfs under the command ``prefix`` if given and
    with the options ``extra`` added to its own."""
    workdir = tempfile.mkdtemp(prefix="fastvfs-ops-")
    results, threads = {}, {}
    backends = ["fastvfs", "reference"]
    try:
        sessions = {}
        try:
            for b in backends:
                sessions[b] = (Session(b, workdir, cache, prefix, extra) if b == "fastvfs"
                               else Session(b, workdir, cache))
            for b in backends:
                threads[b] = _threads(sessions[b].proc.pid)
            for name in names:
                w = BY_NAME[name]
                for depth in depths:
                    drivers = ["python"] + (list(C_DRIVERS) if lean and w.lean else [])
                    for drv in drivers:
                        key = f"{name}@{depth}/{drv}"
                        row = results[key] = {"workload": name, "depth": depth, "driver": drv,
                                              "unit": w.cycle or "request"}
                        taken = {b: [] for b in backends}
                        for _ in range(rounds):
                            for b in backends:
                                if b in row:
                                    continue
                                s = sessions[b]
                                try:
                                    taken[b].append(
                                        s.run_lean(w, depth, seconds, C_DRIVERS[drv])
                                        if drv in C_DRIVERS else s.run(w, depth, seconds))
                                except NotImplementedByBackend as exc:
                                    row[b] = {"not_implemented": str(exc)}
                        for b in backends:
                            if b not in row:
                                row[b] = summarise(taken[b])
                        log(_line(key, row))
        finally:
            for s in sessions.values():
                s.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return results, threads


def _line(key, row):
    out = [f"{key:34}"]
    per_cycle = row["unit"] != "request"
    for b in ("fastvfs", "reference"):
        s = row[b]
        if "not_implemented" in s:
            out.append(f"{b} not implemented")
            continue
        rate = s["cycles_per_s" if per_cycle else "req_per_s"]
        cost = s["backend_us_per_cycle" if per_cycle else "backend_us_per_req"]
        out.append(f"{b} {rate:>9,.0f}/s {cost:>7.1f}us drv {s['driver_cpu_share']:.0%}")
    return "  ".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.ops", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=1.0, help="seconds per round (default 1)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    p.add_argument("--depths", default=",".join(map(str, DEPTHS)))
    p.add_argument("--only", help="comma-separated workloads (default: all): "
                                  + ",".join(BY_NAME))
    p.add_argument("--cache", choices=list(CACHE), default="auto",
                   help="both daemons' cache mode (default auto, a guest's usual one)")
    p.add_argument("--no-lean", action="store_true", help="skip the C driver's rows (lean and "
                                                           "c-guest)")
    p.add_argument("--fastvfs-arg", action="append", default=[], metavar="ARG",
                   help="an option added to fastvfs's command line (repeatable), e.g. "
                        "--fastvfs-arg=--inode-file-handles=prefer, Kata's default")
    p.add_argument("--out", default="reports/ops")
    args = p.parse_args(argv)
    if not os.access(REFERENCE, os.X_OK):
        p.error(f"{REFERENCE} is not installed")
    names = args.only.split(",") if args.only else list(BY_NAME)
    for n in names:
        if n not in BY_NAME:
            p.error(f"unknown workload {n}")
    depths = [int(d) for d in args.depths.split(",")]
    if max(depths) > SLOTS or min(depths) < 1:
        p.error(f"depths run from 1 to {SLOTS} (the slots' own files and names)")
    commit = output.git_commit()   # the commit measured, taken before a run a commit may outlast
    results, threads = measure(names, depths, args.seconds, args.rounds, args.cache,
                               lean=not args.no_lean, extra=args.fastvfs_arg)
    config = output.base_config(
        commit=commit, seconds=args.seconds, rounds=args.rounds, depths=depths,
        cache=args.cache, queue_size=QUEUE_SIZE, request_queues_used=1,
        fastvfs_argv=backend_argv("fastvfs", "SOCK", "DIR", args.cache, args.fastvfs_arg)[1:],
        reference_argv=backend_argv("reference", "SOCK", "DIR", args.cache),
        fastvfs_sandbox="namespace (default), seccomp on (default)",
        reference_sandbox="namespace (default)",
        fastvfs_threads=f"{'its command line above' if args.fastvfs_arg else 'defaults'}"
                        f" (by default --thread-pool-size 0, io-engine uring); "
                        f"{threads.get('fastvfs')} threads in its processes after start-up",
        reference_threads=f"defaults: --thread-pool-size 0 (requests served on the queue's "
                          f"thread); {threads.get('reference')} threads in its processes after "
                          f"start-up",
        tree_fs=_fs_type(tempfile.gettempdir()),
        driver=f"python: the project's FUSE client (fastvfs_testing.fuse_client) on its "
               f"vhost-user frontend, one request queue, queue size {QUEUE_SIZE}, requests in "
               f"indirect tables, READ/WRITE/READDIR data in page-sized descriptors, EVENT_IDX "
               f"both ways, each request published on its own and a kick whenever the device's "
               f"avail_event asks for one, single thread; lean and c-guest: the C closed-loop "
               f"driver of bench.micro, same ring features and layout, chains built once, "
               f"every workload of one request sent again unchanged, every cycle run step by "
               f"step with the node ids and handles its replies gave copied in (all workloads "
               f"but SETATTR of the size and the two listings), "
               f"lean publishing once per round of completions reaped, c-guest each request "
               f"on its own with a kick whenever avail_event asks for one.")
    output.write(args.out, config, results, markdown(results, config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
