"""Parity of the two implementations of every operation that has one in C and one in Python.

The hot path answers GETATTR, LOOKUP of a known or missing name, FLUSH, RELEASE, FORGET,
BATCH_FORGET, FSYNC, FSYNCDIR, FALLOCATE, STATFS, SYNCFS, READLINK, OPEN, LSEEK, SETATTR,
UNLINK, RMDIR, RENAME, RENAME2, GETXATTR, LISTXATTR, OPENDIR, READDIR, READDIRPLUS,
RELEASEDIR, GETLK, SETLK, MKNOD, MKDIR, SYMLINK, CREATE, LINK, IOCTL and WRITE's
kill-suid/sgid itself; the FUSE engine (``fastvfs.fuse.engine`` over
``fastvfs.fs.passthrough``) answers the same requests whenever the hot path hands them on
(a lock held, a node the C table cannot serve, the thread pool, ``--log-level trace``).  Each
case below sends the same request both ways on the same tree and requires the same reply, byte
for byte (an OPEN's handle number and the times the clock gives aside; a new object's node id
and inode number too), and the same effect on
the host (file contents, size, blocks, mode, lookup counts, descriptors held).  The ring is served in-process (``tests/unit/test_ring.py``'s harness); the
Python side is the engine called directly.
"""

import errno
import fcntl
import gc
import os
import shutil
import socket
import stat
import struct
import subprocess
import time

import pytest

from fastvfs.fs import _sys, _tables
from fastvfs.fs._tables import HandleTable, NodeTable
from fastvfs.ring import _ring
from fastvfs.fs.passthrough import PassthroughFs
from fastvfs.fuse import abi
from fastvfs.fuse.engine import CachePolicy, FuseEngine
from fastvfs.fs.xattrmap import XattrMap
from tests.unit.test_ring import Harness, out_header, request

FUSE_GETATTR_FH = 1
FUSE_WRITE_KILL_SUIDGID = 1 << 2
FUSE_FSYNC_FDATASYNC = 1
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2
CONTENT = bytes(range(256)) * 64  # 16 KiB


class Pair:
    """One tree, one node id table, one handle table: a ring worker serving in C and the
    engine it hands requests to."""

    def __init__(self, root, io_engine, cache="auto", readonly=False, **fs_options):
        self.root = root
        self.inodes = NodeTable(256)
        self.ring = Harness(reply=lambda req, out: self.engine.handle(req, out),
                            inodes=self.inodes, engine=io_engine, read_only=readonly,
                            open_flags=CachePolicy(cache).open_flags,
                            opendir_flags=CachePolicy(cache).opendir_flags)
        self.ring.vq.set_fast_io(True)
        posix_acl = fs_options.pop("posix_acl", False)
        self.fs = PassthroughFs(root, self.ring.handles, inodes=self.inodes, **fs_options)
        self.engine = FuseEngine(self.fs, cache, readonly=readonly, posix_acl=posix_acl,
                                 xattr=fs_options.get("xattr", False) or posix_acl or
                                 fs_options.get("xattrmap") is not None)
        # A kernel that knows POSIX ACLs offers FUSE_SETXATTR_EXT with them.
        offered = (abi.FUSE_POSIX_ACL | abi.FUSE_DONT_MASK | abi.FUSE_SETXATTR_EXT
                   if posix_acl else 0)
        init = request(abi.Opcode.INIT, abi.init_in.pack(7, 38, 0, offered, 0))
        assert self.engine.handle(init, 4096)[0] == 0

    def restart(self, engine_pool):
        """Serve the ring with a new queue, fast path on, whose engine has a thread pool or
        not (``engine_pool``)."""
        self.ring.engine_pool = engine_pool
        self.ring.restart()
        self.ring.vq.set_fast_io(True)

    def in_c(self, req, out_lens, split=None):
        """The ring's reply, trimmed to the length its header gives; fails if the request was
        handed to the engine instead.  ``split``: where the request's first descriptor ends
        (WRITE's payload in descriptors of its own, as the guest sends it)."""
        seen = len(self.ring.seen)
        data = self.ring.roundtrip([req[:split], req[split:]] if split else [req], out_lens)
        assert len(self.ring.seen) == seen, "served by the engine, not in C"
        return data[:out_header(data)[0]] if out_lens else data

    def in_python(self, req, out_size):
        """The engine's reply, framed as the ring frames it."""
        result = self.engine.handle(req, out_size)
        if out_size == 0:
            assert result is None  # FORGET and BATCH_FORGET have no reply
            return b""
        error, payload = result
        payload = bytes(payload) if error == 0 else b""
        unique = abi.in_header.unpack_from(req)[2]
        return abi.out_header.pack(abi.OUT_HEADER_SIZE + len(payload), error, unique) + payload

    def lookup(self, name, parent=abi.FUSE_ROOT_ID):
        error, payload = self.engine.handle(request(abi.Opcode.LOOKUP, name + b"\0",
                                                    nodeid=parent), 4096)
        assert error == 0
        return abi.entry_out_head.unpack_from(payload)[0]

    def open(self, nodeid, flags=os.O_RDWR):
        error, payload = self.engine.handle(
            request(abi.Opcode.OPEN, abi.open_in.pack(flags, 0), nodeid=nodeid), 4096)
        assert error == 0
        return abi.open_out.unpack_from(payload)[0]

    def close(self):
        self.ring.close()


# The pair of a test parametrized with BOTH_MODES: each I/O engine with inodes held by O_PATH
# descriptor, then with inodes held by file handle and a descriptor cache of one (every other
# node reopened by its handle).
BOTH_MODES = ["sync", "uring", ("sync", "prefer"), ("uring", "prefer")]


@pytest.fixture(params=["sync", "uring"])
def pair(request, tmp_path):
    root = tmp_path / "share"
    root.mkdir()
    (root / "f").write_bytes(CONTENT)
    os.utime(root / "f", ns=(-1_500_000_001, 1_700_000_000_123_456_789))
    (root / "d").mkdir()
    for i in range(40):
        (root / "d" / f"entry-{i:03}").write_bytes(b"e" * i)
    os.symlink("f", root / "link")
    if isinstance(request.param, tuple):
        if not _has_handles(root):
            pytest.skip("the test directory's file system has no file handles")
        p = Pair(root, request.param[0], file_handles=request.param[1], handle_fds_max=1)
    else:
        p = Pair(root, request.param)
    yield p
    p.close()
    gc.collect()   # the pair's cycles hold descriptors another test may count


def _has_handles(path):
    fd = os.open(path, os.O_PATH)
    try:
        _sys.name_to_handle(fd)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def by_handle(pair, nodeid):
    """Whether ``nodeid`` is held by file handle."""
    return pair.inodes.node(nodeid)[5]


def fds_open():
    return len(os.listdir("/proc/self/fd"))


def file_state(path):
    st = os.stat(path)
    return (path.read_bytes(), st.st_size, st.st_blocks, st.st_mode, st.st_uid, st.st_gid)


def test_getattr(pair):
    f = pair.lookup(b"f")
    fh = pair.open(f, os.O_RDONLY)
    for nodeid, flags, handle in ((f, 0, 0), (abi.FUSE_ROOT_ID, 0, 0), (f, FUSE_GETATTR_FH, fh),
                                  (pair.lookup(b"d"), 0, 0), (pair.lookup(b"link"), 0, 0)):
        req = request(abi.Opcode.GETATTR, abi.getattr_in.pack(flags, 0, handle), nodeid=nodeid)
        assert pair.in_c(req, [16, 200]) == pair.in_python(req, 216)
    # A node the table does not know, and one forgotten: the same error both ways.
    for nodeid in (f + 1000, 2 ** 63):
        req = request(abi.Opcode.GETATTR, bytes(16), nodeid=nodeid)
        assert out_header(pair.in_c(req, [216]))[1] == out_header(pair.in_python(req, 216))[1]


def test_lookup_of_a_known_name_and_its_count(pair):
    d = pair.lookup(b"d")
    known = [(abi.FUSE_ROOT_ID, b"f"), (abi.FUSE_ROOT_ID, b"d"), (abi.FUSE_ROOT_ID, b"link"),
             (d, b"entry-007")]
    for parent, name in known:
        node = pair.lookup(name, parent)
        req = request(abi.Opcode.LOOKUP, name + b"\0", nodeid=parent)
        before = pair.fs.inodes.nlookup(node)
        c = pair.in_c(req, [16, 200])
        assert pair.fs.inodes.nlookup(node) == before + 1
        assert c == pair.in_python(req, 216)
        assert pair.fs.inodes.nlookup(node) == before + 2
    # A name that does not exist is answered in C; the engine gives the same answer.
    req = request(abi.Opcode.LOOKUP, b"missing\0")
    assert pair.in_c(req, [16, 200]) == pair.in_python(req, 216)


@pytest.mark.parametrize("pair", BOTH_MODES, indirect=True)
def test_lookup_of_a_new_inode_of_every_kind(pair):
    """A name whose inode the node id table does not hold is entered in C (an O_PATH
    descriptor, never an open of the object: a device node, a FIFO or a socket is not
    touched), counted once, the same bytes the engine then answers (counting once more); a
    mount point inside the share is the engine's (a submount)."""
    d = pair.lookup(b"d")
    os.mkfifo(pair.root / "fifo")
    os.mknod(pair.root / "d" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(pair.root / "sock"))
    (pair.root / "sub").mkdir()
    os.symlink("/etc/passwd", pair.root / "d" / "abs")
    os.link(pair.root / "f", pair.root / "d" / "hard")
    f = pair.lookup(b"f")
    try:
        for parent, name in ((abi.FUSE_ROOT_ID, b"fifo"), (d, b"null"),
                             (abi.FUSE_ROOT_ID, b"sock"), (abi.FUSE_ROOT_ID, b"sub"),
                             (d, b"abs"), (d, b"hard")):
            count = pair.fs.inodes.table.count
            req = _lookup(name + b"\0", parent)
            c = pair.in_c(req, [16, 128])
            node = abi.entry_out_head.unpack_from(c, 16)[0]
            if name == b"hard":     # another name of an inode the table holds
                assert node == f and pair.fs.inodes.table.count == count
            else:
                assert node and pair.fs.inodes.table.count == count + 1
                assert pair.fs.inodes.nlookup(node) == 1
            assert by_handle(pair, node) == bool(pair.inodes.fds_max), name
            assert c == pair.in_python(req, 144), name
            assert pair.fs.inodes.nlookup(node) == (3 if name == b"hard" else 2)
        (pair.root / "mnt").mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(pair.root / "mnt")]).returncode:
            return
        try:
            count = pair.fs.inodes.table.count
            via_engine(pair, _lookup(b"mnt\0"), [16, 128])
            assert pair.fs.inodes.table.count == count + 1   # the engine's entry only
        finally:
            subprocess.run(["umount", "-l", str(pair.root / "mnt")])
    finally:
        sock.close()


# LOOKUP_OPEN_FIRST (fs/_tables.pxd): lookups of new inodes in a row before C opens a name first.
OPEN_FIRST = 4


@pytest.mark.parametrize("pair", BOTH_MODES, indirect=True)
def test_lookup_opens_the_name_first_after_new_inodes(pair):
    """After OPEN_FIRST lookups in a row that found new inodes, C opens the name before it
    asks about it, and answers as the engine does all the same: a new inode of every kind
    (never an open of the object), a known inode (counted once more, no descriptor kept,
    and lookups ask first again), another name of it, a missing name, and a mount point
    (the engine's).  With file handles a key match is not enough (a node may have no
    descriptor): lookups always ask first there."""
    handles = bool(pair.inodes.fds_max)
    for i in range(OPEN_FIRST + 2):
        (pair.root / f"n{i}").write_bytes(b"")
    os.mkfifo(pair.root / "fifo")
    os.mknod(pair.root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.symlink("/etc/passwd", pair.root / "abs")
    (pair.root / "sub").mkdir()
    f = pair.lookup(b"f")
    os.link(pair.root / "f", pair.root / "hard")
    pair.inodes.new_lookups = 0
    for i in range(OPEN_FIRST + 2):
        c = pair.in_c(_lookup(f"n{i}\0".encode()), [16, 128])
        assert out_header(c)[1] == 0
        assert pair.inodes.new_lookups == (0 if handles else min(i + 1, OPEN_FIRST))
    for name in (b"fifo", b"null", b"abs", b"sub"):
        count = pair.fs.inodes.table.count
        req = _lookup(name + b"\0")
        c = pair.in_c(req, [16, 128])
        node = abi.entry_out_head.unpack_from(c, 16)[0]
        assert node and pair.fs.inodes.table.count == count + 1, name
        assert pair.inodes.new_lookups == (0 if handles else OPEN_FIRST)
        assert pair.fs.inodes.nlookup(node) == 1 and by_handle(pair, node) == handles, name
        assert c == pair.in_python(req, 144), name
    for name in (b"f", b"hard"):
        pair.inodes.new_lookups = 0 if handles else OPEN_FIRST
        count, held, before = pair.fs.inodes.table.count, pair.fs.fds_held(), \
            pair.fs.inodes.nlookup(f)
        req = _lookup(name + b"\0")
        c = pair.in_c(req, [16, 128])
        assert abi.entry_out_head.unpack_from(c, 16)[0] == f
        assert (pair.fs.inodes.table.count, pair.fs.fds_held()) == (count, held)
        assert pair.fs.inodes.nlookup(f) == before + 1 and pair.inodes.new_lookups == 0
        assert c == pair.in_python(req, 144)
    pair.inodes.new_lookups = 0 if handles else OPEN_FIRST
    req = _lookup(b"missing\0")
    count = pair.fs.inodes.table.count
    c = pair.in_c(req, [16, 128])
    assert out_header(c)[:2] == (16, -errno.ENOENT) and c == pair.in_python(req, 144)
    assert pair.fs.inodes.table.count == count
    (pair.root / "mnt").mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(pair.root / "mnt")]).returncode:
        return
    try:
        pair.inodes.new_lookups = 0 if handles else OPEN_FIRST
        count = pair.fs.inodes.table.count
        via_engine(pair, _lookup(b"mnt\0"), [16, 128])
        assert pair.fs.inodes.table.count == count + 1   # the engine's entry only
    finally:
        subprocess.run(["umount", "-l", str(pair.root / "mnt")])


def test_readdirplus_records_match_lookup(pair):
    """The node table packs READDIRPLUS's records (fuse_direntplus) for the inodes it knows;
    each one's fuse_entry_out is what a LOOKUP of the same name answers."""
    d = pair.lookup(b"d")
    for i in range(0, 40, 3):
        pair.lookup(b"entry-%03d" % i, d)
    error, payload = pair.engine.handle(request(abi.Opcode.OPENDIR, abi.open_in.pack(0, 0),
                                                nodeid=d), 4096)
    assert error == 0
    fh = abi.open_out.unpack_from(payload)[0]
    error, listing = pair.engine.handle(
        request(abi.Opcode.READDIRPLUS, abi.read_in.pack(fh, 0, 65536, 0, 0, 0, 0),
                nodeid=d), 65536)
    assert error == 0
    entry_size = abi.entry_out_head.size + abi.attr.size
    off, names = 0, []
    listing = bytes(listing)
    while off < len(listing):
        entry = listing[off:off + entry_size]
        ino, doff, namelen, typ = struct.unpack_from("<QQII", listing, off + entry_size)
        name = listing[off + entry_size + 24:off + entry_size + 24 + namelen]
        off += (entry_size + 24 + namelen + 7) & ~7
        if name in (b".", b".."):
            continue
        names.append(name)
        lookup = pair.in_python(request(abi.Opcode.LOOKUP, name + b"\0", nodeid=d), 4096)
        assert entry == lookup[16:], name
        assert struct.unpack_from("<Q", entry)[0] != 0
    assert sorted(names) == sorted(b"entry-%03d" % i for i in range(40))


def _flush(fh, nodeid, owner=0x99):
    return request(abi.Opcode.FLUSH, abi.flush_in.pack(fh, 0, 0, owner), nodeid=nodeid)


def _release(fh, nodeid, flags=0):
    return request(abi.Opcode.RELEASE, abi.release_in.pack(fh, os.O_RDWR, flags, 0x99),
                   nodeid=nodeid)


def test_flush_and_release(pair):
    f = pair.lookup(b"f")
    a, b = pair.open(f), pair.open(f)
    pair.in_c(_flush(a, f), [16])  # a queue's io_uring is set up at its first use
    held = fds_open()
    assert pair.in_c(_flush(a, f), [16]) == pair.in_python(_flush(b, f), 16)
    assert fds_open() == held  # FLUSH's duplicate is closed again, both ways
    assert pair.in_c(_release(a, f), [16]) == pair.in_python(_release(b, f), 16)
    assert fds_open() == held - 2 and pair.ring.handles.count == 0
    # Released already, and never opened: the same errors both ways.
    for fh in (a, b, 12345):
        assert pair.in_c(_flush(fh, f), [16]) == pair.in_python(_flush(fh, f), 16)
        assert pair.in_c(_release(fh, f), [16]) == pair.in_python(_release(fh, f), 16)
    # RELEASE asking for flock unlock (FUSE_RELEASE_FLOCK_UNLOCK) of a handle holding none.
    a, b = pair.open(f), pair.open(f)
    assert pair.in_c(_release(a, f, 2), [16]) == pair.in_python(_release(b, f, 2), 16)
    assert pair.ring.handles.count == 0


def test_forget_and_batch_forget(pair):
    names = [b"f", b"d", b"link"]
    nodes = [pair.lookup(n) for n in names]
    for n in names:
        for _ in range(4):
            pair.lookup(n)
    counts = [pair.fs.inodes.nlookup(n) for n in nodes]
    assert counts == [5, 5, 5]
    forget = [request(abi.Opcode.FORGET, abi.forget_in.pack(2), nodeid=n) for n in nodes]
    pair.in_c(forget[0], [])
    pair.in_python(forget[1], 0)
    assert pair.fs.inodes.nlookup(nodes[0]) == pair.fs.inodes.nlookup(nodes[1]) == 3
    batch = (abi.batch_forget_in.pack(2, 0) + abi.forget_one.pack(nodes[0], 3) +
             abi.forget_one.pack(12345, 1))
    pair.in_c(request(abi.Opcode.BATCH_FORGET, batch, nodeid=0), [])
    batch = (abi.batch_forget_in.pack(2, 0) + abi.forget_one.pack(nodes[1], 3) +
             abi.forget_one.pack(12345, 1))
    pair.in_python(request(abi.Opcode.BATCH_FORGET, batch, nodeid=0), 0)
    assert pair.fs.inodes.nlookup(nodes[0]) == pair.fs.inodes.nlookup(nodes[1]) == 0
    assert pair.fs.inodes.nlookup(nodes[2]) == 5
    assert len(pair.fs.inodes) == 2  # the root and "link"
    # Forgotten both ways: both answer the same for the node.
    for n in nodes[:2]:
        req = request(abi.Opcode.GETATTR, bytes(16), nodeid=n)
        assert pair.in_python(req, 216)[4:8] == struct.pack("<i", -errno.ENOENT)


def test_fsync(pair):
    if pair.ring.engine == "sync":
        pytest.skip("a synchronous queue hands FSYNC to the engine: one implementation")
    f = pair.lookup(b"f")
    fh = pair.open(f)
    for flags in (0, FUSE_FSYNC_FDATASYNC):
        req = request(abi.Opcode.FSYNC, abi.fsync_in.pack(fh, flags, 0), nodeid=f)
        assert pair.in_c(req, [16]) == pair.in_python(req, 16)
    req = request(abi.Opcode.FSYNC, abi.fsync_in.pack(fh + 1, 0, 0), nodeid=f)
    assert pair.in_c(req, [16]) == pair.in_python(req, 16)


@pytest.mark.parametrize("pair", BOTH_MODES, indirect=True)
def test_fsyncdir(pair):
    """FSYNCDIR of a directory handle (both flags), of a file's handle and of an unknown one
    (EBADF): the same replies in C as from the engine; with request extensions it is the
    engine's."""
    if pair.ring.engine == "sync":
        pytest.skip("a synchronous queue hands FSYNCDIR to the engine: one implementation")
    d, f = pair.lookup(b"d"), pair.lookup(b"f")
    dfh = abi.open_out.unpack_from(pair.in_python(_opendir(d), 32), 16)[0]
    ffh = pair.open(f)
    for nodeid, fh, flags in ((d, dfh, 0), (d, dfh, FUSE_FSYNC_FDATASYNC), (f, ffh, 0),
                              (d, dfh + 1000, 0), (d, 2 ** 63, 0)):
        req = request(abi.Opcode.FSYNCDIR, abi.fsync_in.pack(fh, flags, 0), nodeid=nodeid)
        c = pair.in_c(req, [16])
        assert c == pair.in_python(req, 16)
        assert out_header(c)[1] == (0 if fh == dfh else -errno.EBADF)
    # Several at once: through the queue's io_uring (one alone is synced inline), still in C.
    seen, inline = len(pair.ring.seen), pair.ring.vq.inline_syncs
    reqs = [request(abi.Opcode.FSYNCDIR, abi.fsync_in.pack(fh, flags, 0), nodeid=d, unique=u)
            for u, (fh, flags) in enumerate([(dfh, 0), (dfh, FUSE_FSYNC_FDATASYNC), (ffh, 0),
                                             (dfh, 0)], 100)]
    replies = pair.ring.roundtrip_many([([r], [16]) for r in reqs])
    assert len(pair.ring.seen) == seen, "served by the engine, not in C"
    assert [out_header(r)[1:] for r in replies] == \
        [(0, 100), (0, 101), (-errno.EBADF, 102), (0, 103)]
    assert pair.ring.vq.inline_syncs - inline <= 1  # the last may find the others done
    ext = bytearray(request(abi.Opcode.FSYNCDIR, abi.fsync_in.pack(dfh, 0, 0), nodeid=d))
    struct.pack_into("<H", ext, 36, 1)  # fuse_in_header.total_extlen
    assert out_header(via_engine(pair, bytes(ext), [16]))[1] == -errno.EINVAL


@pytest.mark.parametrize("pair", BOTH_MODES, indirect=True)
def test_syncfs(pair):
    """SYNCFS of the root, a directory, a file and a symlink (the root's file system), of a
    node forgotten and of ids never given out (ENOENT): the same replies in C as from the
    engine.  Without a thread pool it is served in C with other requests waiting too; with a
    pool it is the engine's (a sync may take long)."""
    nodes = [abi.FUSE_ROOT_ID, pair.lookup(b"d"), pair.lookup(b"f"), pair.lookup(b"link")]
    gone = pair.lookup(b"entry-000", parent=nodes[1])
    pair.in_python(request(abi.Opcode.FORGET, abi.forget_in.pack(1), nodeid=gone), 0)
    for nodeid in nodes + [gone, nodes[-1] + 1000, 2 ** 63]:
        req = request(abi.Opcode.SYNCFS, bytes(8), nodeid=nodeid)
        c = pair.in_c(req, [16])
        assert c == pair.in_python(req, 16)
        assert out_header(c)[1] == (0 if nodeid in nodes else -errno.ENOENT)
    seen = len(pair.ring.seen)
    replies = pair.ring.roundtrip_many([([request(abi.Opcode.SYNCFS, bytes(8), nodeid=1)], [16]),
                                        ([request(abi.Opcode.GETATTR, bytes(16), nodeid=1)],
                                         [16, 104])])
    assert [out_header(r)[1] for r in replies] == [0, 0]
    assert len(pair.ring.seen) == seen, "served by the engine, not in C"
    pair.restart(engine_pool=True)
    getattr_ = request(abi.Opcode.GETATTR, bytes(16), nodeid=nodes[1])
    assert out_header(pair.in_c(getattr_, [16, 104]))[1] == 0   # the fast path is on
    req = request(abi.Opcode.SYNCFS, bytes(8), nodeid=nodes[1])
    assert out_header(via_engine(pair, req, [16]))[1] == 0


@pytest.mark.parametrize("pair", ["sync", "uring"], indirect=True)
def test_syncfs_publishes_the_replies_before_it_first(pair):
    """A SYNCFS served on the queue's thread behind other requests publishes their replies
    before it syncs: a GETATTR published with it is answered while the sync still writes back
    32 MiB of dirty data (before, both replies were published together after the sync)."""
    with open(pair.root / "dirty", "wb") as f:
        f.write(os.urandom(1 << 20) * 32)
    dq = pair.ring.dq
    base = dq.used_idx()
    heads = [dq.add_chain([request(abi.Opcode.GETATTR, bytes(16), nodeid=1)], [16, 104]),
             dq.add_chain([request(abi.Opcode.SYNCFS, bytes(8), nodeid=1)], [16])]
    dq.publish()
    deadline = time.monotonic() + 30
    while (dq.used_idx() - base) & 0xFFFF == 0:
        assert time.monotonic() < deadline, "no reply"
    assert (dq.used_idx() - base) & 0xFFFF == 1, "the GETATTR's reply waited for the sync"
    for head in heads:
        pair.ring.wait_for(head)
    assert pair.ring.seen == []


@pytest.mark.parametrize("pair", BOTH_MODES, indirect=True)
def test_syncs_never_on_the_queue_thread_with_a_thread_pool(pair):
    """With a thread pool in the engine, a lone FSYNC, FSYNCDIR or FALLOCATE (which a queue
    without one runs on its own thread) goes to the queue's io_uring, answered in C as the
    engine answers; a queue without io_uring leaves them to the engine (its pool)."""
    d, f = pair.lookup(b"d"), pair.lookup(b"f")
    dfh = abi.open_out.unpack_from(pair.in_python(_opendir(d), 32), 16)[0]
    fh = pair.open(f)
    reqs = [request(abi.Opcode.FSYNC, abi.fsync_in.pack(fh, 0, 0), nodeid=f),
            request(abi.Opcode.FSYNCDIR, abi.fsync_in.pack(dfh, FUSE_FSYNC_FDATASYNC, 0),
                    nodeid=d),
            request(abi.Opcode.FALLOCATE,
                    abi.fallocate_in.pack(fh, 0, 2 * len(CONTENT), FALLOC_FL_KEEP_SIZE, 0),
                    nodeid=f)]
    pair.restart(engine_pool=True)
    inline = pair.ring.vq.inline_syncs
    for req in reqs:
        if pair.ring.engine == "sync":
            assert out_header(via_engine(pair, req, [16]))[1] == 0
        else:
            assert pair.in_c(req, [16]) == pair.in_python(req, 16)
    assert pair.ring.vq.inline_syncs == inline
    assert os.stat(pair.root / "f").st_blocks * 512 >= 2 * len(CONTENT)
    # Without a pool, a lone one is synced on the queue's thread (the control).
    if pair.ring.engine != "sync":
        pair.restart(engine_pool=False)
        pair.in_c(reqs[0], [16])
        assert pair.ring.vq.inline_syncs == 1


@pytest.mark.parametrize("pair", BOTH_MODES, indirect=True)
def test_request_extensions_are_the_engines_whatever_the_opcode(pair):
    """A request carrying an extension the session did not negotiate (supplementary groups:
    Linux sends extensions only with requests that create) is refused by the engine (EINVAL),
    which reads extensions before anything else; the C path leaves every one to it, GETATTR,
    READ and WRITE as much as CREATE, and does nothing (each would be answered otherwise)."""
    d, f, link = pair.lookup(b"d"), pair.lookup(b"f"), pair.lookup(b"link")
    dfh = abi.open_out.unpack_from(pair.in_python(_opendir(d), 32), 16)[0]
    fh, reader = pair.open(f), pair.open(f, os.O_RDONLY)
    before = file_state(pair.root / "f")
    ext = abi.ext_header.pack(8, abi.FUSE_EXT_GROUPS)
    cases = [
        (abi.Opcode.GETATTR, f, abi.getattr_in.pack(0, 0, 0)),
        (abi.Opcode.LOOKUP, abi.FUSE_ROOT_ID, b"f\0\0\0\0\0\0\0"),
        (abi.Opcode.READ, f, abi.read_in.pack(reader, 0, 4096, 0, 0, 0, 0)),
        (abi.Opcode.WRITE, f, abi.write_in.pack(fh, 0, 8, 0, 0, 0, 0) + b"written!"),
        (abi.Opcode.STATFS, f, b""),
        (abi.Opcode.READLINK, link, b""),
        (abi.Opcode.OPEN, f, abi.open_in.pack(os.O_RDONLY, 0)),
        (abi.Opcode.FLUSH, f, abi.flush_in.pack(fh, 0, 0, 0)),
        (abi.Opcode.LSEEK, f, abi.lseek_in.pack(reader, 0, os.SEEK_END, 0)),
        (abi.Opcode.FSYNC, f, abi.fsync_in.pack(fh, 0, 0)),
        (abi.Opcode.FALLOCATE, f, abi.fallocate_in.pack(fh, 0, 1 << 17, 0, 0)),
        (abi.Opcode.READDIR, d, abi.read_in.pack(dfh, 0, 4096, 0, 0, 0, 0)),
        (abi.Opcode.IOCTL, f, struct.pack("<QIIQII", reader, 0, 0x5401, 0, 0, 8)),
        (abi.Opcode.RELEASE, f, abi.release_in.pack(reader, os.O_RDONLY, 0, 0)),
    ]
    for opcode, nodeid, arg in cases:
        req = bytearray(request(opcode, arg + ext, nodeid=nodeid))
        struct.pack_into("<H", req, 36, 1)  # fuse_in_header.total_extlen: 8 bytes
        assert out_header(via_engine(pair, bytes(req), [16, 4096]))[1] == -errno.EINVAL, opcode
    # FORGET has no reply: the engine's refusal leaves the node's lookups as they were.
    count = pair.fs.inodes.nlookup(f)
    req = bytearray(request(abi.Opcode.FORGET, abi.forget_in.pack(1) + ext, nodeid=f))
    struct.pack_into("<H", req, 36, 1)
    seen = len(pair.ring.seen)
    pair.ring.roundtrip([bytes(req)], [])
    assert len(pair.ring.seen) == seen + 1, "served in C, not by the engine"
    assert pair.fs.inodes.nlookup(f) == count
    assert file_state(pair.root / "f") == before
    # The handle RELEASE named is still open: READ through it is served in C.
    read = request(abi.Opcode.READ, abi.read_in.pack(reader, 0, 16, 0, 0, 0, 0), nodeid=f)
    assert pair.in_c(read, [16, 16])[16:] == CONTENT[:16]


@pytest.mark.parametrize("pair", BOTH_MODES, indirect=True)
def test_overlong_requests_are_the_engines(pair):
    """A request whose fuse_in_header.len passes SLOW_REQUEST_MAX (1 MiB), with the readable
    buffers to back it, is refused on the way to the engine (EINVAL: ``ask_engine`` copies no
    more, and the handler never sees it) whatever its opcode: the C path leaves every one to
    it and does nothing (each would be answered otherwise in C), but a WRITE, whose data makes
    it that long."""
    d, f = pair.lookup(b"d"), pair.lookup(b"f")
    dfh = abi.open_out.unpack_from(pair.in_python(_opendir(d), 32), 16)[0]
    fh = pair.open(f)
    before = file_state(pair.root / "f")
    body = struct.Struct("<QIIQII")
    for opcode, nodeid, arg in (
            (abi.Opcode.GETATTR, f, bytes(16)), (abi.Opcode.STATFS, f, b""),
            (abi.Opcode.LOOKUP, d, b"entry-001\0"),
            (abi.Opcode.FSYNC, f, abi.fsync_in.pack(fh, 0, 0)),
            (abi.Opcode.FSYNCDIR, d, abi.fsync_in.pack(dfh, 0, 0)),
            (abi.Opcode.SYNCFS, d, bytes(8)),
            (abi.Opcode.FALLOCATE, f, abi.fallocate_in.pack(fh, 0, 1 << 22, 0, 0)),
            (abi.Opcode.IOCTL, f, body.pack(fh, 0, 0x5401, 0, 0, 8))):
        req = request(opcode, arg.ljust((1 << 20) + 8 - abi.IN_HEADER_SIZE, b"\0"),
                      nodeid=nodeid)
        assert abi.in_header.unpack_from(req)[0] == (1 << 20) + 8
        seen = len(pair.ring.seen)
        reply = pair.ring.roundtrip([req[:4096], req[4096:]], [16, 4096])
        assert out_header(reply) == (16, -errno.EINVAL, 7), opcode
        assert len(pair.ring.seen) == seen
    assert file_state(pair.root / "f") == before
    data = b"w" * (1 << 20)
    write = request(abi.Opcode.WRITE, abi.write_in.pack(fh, 0, len(data), 0, 0, 0, 0) + data,
                    nodeid=f)
    assert abi.in_header.unpack_from(write)[0] > 1 << 20
    reply = pair.in_c(write, [24], split=abi.IN_HEADER_SIZE + abi.write_in.size)
    assert out_header(reply)[1] == 0
    assert (pair.root / "f").read_bytes()[:len(data)] == data


FALLOCATE_CASES = [
    (0, 65536, 0),                                     # grows the file
    (1 << 20, 1 << 20, FALLOC_FL_KEEP_SIZE),
    (4096, 4096, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE),
    (0, 4096, FALLOC_FL_PUNCH_HOLE),                   # EOPNOTSUPP: punch needs keep-size
    (0, 0, 0),                                         # EINVAL
    (1 << 63, 4096, 0),                                # offset past off_t
    (0, 1 << 63, 0),
    (0, 4096, 0x80),                                   # a mode bit the kernel does not know
]


@pytest.mark.parametrize("offset,length,mode", FALLOCATE_CASES)
def test_fallocate(pair, offset, length, mode):
    shutil.copyfile(pair.root / "f", pair.root / "g")
    c_node, py_node = pair.lookup(b"f"), pair.lookup(b"g")
    c_fh, py_fh = pair.open(c_node), pair.open(py_node)

    def req(fh, nodeid):
        return request(abi.Opcode.FALLOCATE, abi.fallocate_in.pack(fh, offset, length, mode, 0),
                       nodeid=nodeid)

    assert pair.in_c(req(c_fh, c_node), [16]) == pair.in_python(req(py_fh, py_node), 16)
    assert file_state(pair.root / "f") == file_state(pair.root / "g")


def test_fallocate_refused_handles(pair):
    f = pair.lookup(b"f")
    reader = pair.open(f, os.O_RDONLY)
    for fh in (reader, reader + 1000):
        req = request(abi.Opcode.FALLOCATE, abi.fallocate_in.pack(fh, 0, 1 << 17, 0, 0),
                      nodeid=f)
        assert pair.in_c(req, [16]) == pair.in_python(req, 16)
    assert os.stat(pair.root / "f").st_size == len(CONTENT)
    # Request extensions are read by the engine first: its EINVAL, nothing allocated.
    ext = bytearray(request(abi.Opcode.FALLOCATE,
                            abi.fallocate_in.pack(pair.open(f), 0, 1 << 17, 0, 0), nodeid=f))
    struct.pack_into("<H", ext, 36, 1)  # fuse_in_header.total_extlen
    assert out_header(via_engine(pair, bytes(ext), [16]))[1] == -errno.EINVAL
    assert os.stat(pair.root / "f").st_size == len(CONTENT)


COPY_CASES = [
    (0, 0, 4096, 0), (100, 5000, 10000, 0),              # within, and growing the output
    (len(CONTENT) - 10, 0, 4096, 0),                     # short at the end of the input
    (len(CONTENT) + 1, 0, 4096, 0),                      # past it: nothing
    (0, 0, 0, 0), (0, 0, 1 << 20, 0),                    # nothing asked; the most C copies
    (0, 0, 4096, 1),                                     # no flags are defined
    (1 << 63, 0, 4096, 0), (0, 1 << 63, 4096, 0),        # offsets past off_t
]


@pytest.mark.parametrize("off_in,off_out,length,flags", COPY_CASES)
def test_copy_file_range(pair, off_in, off_out, length, flags):
    """COPY_FILE_RANGE from one file into another: the same reply (the bytes copied) and the
    same output file both ways."""
    for name in ("out-c", "out-py"):
        (pair.root / name).write_bytes(b"o" * 3000)
    src = pair.lookup(b"f")
    src_fh = pair.open(src, os.O_RDONLY)
    c_node, py_node = pair.lookup(b"out-c"), pair.lookup(b"out-py")
    c_fh, py_fh = pair.open(c_node), pair.open(py_node)

    def req(fh_out, node_out):
        return request(abi.Opcode.COPY_FILE_RANGE,
                       abi.copy_file_range_in.pack(src_fh, off_in, node_out, fh_out, off_out,
                                                   length, flags), nodeid=src)

    assert pair.in_c(req(c_fh, c_node), [16, 8]) == pair.in_python(req(py_fh, py_node), 8)
    assert file_state(pair.root / "out-c") == file_state(pair.root / "out-py")


def test_copy_file_range_refused_handles(pair):
    """Handles that are gone, one opened for reading only as the output, a directory's, and
    the same file with overlapping ranges: the errors the engine gives."""
    f = pair.lookup(b"f")
    reader, writer = pair.open(f, os.O_RDONLY), pair.open(f, os.O_RDWR)
    d = pair.lookup(b"d")
    error, payload = pair.engine.handle(request(abi.Opcode.OPENDIR, abi.open_in.pack(0, 0),
                                                nodeid=d), 4096)
    assert error == 0
    dir_fh = abi.open_out.unpack_from(payload)[0]
    for fh_in, fh_out, off_out in ((reader + 1000, writer, 0), (reader, writer + 1000, 0),
                                   (reader, reader, 8192), (dir_fh, writer, 0),
                                   (reader, dir_fh, 0), (reader, writer, 100)):
        req = request(abi.Opcode.COPY_FILE_RANGE,
                      abi.copy_file_range_in.pack(fh_in, 0, f, fh_out, off_out, 4096, 0),
                      nodeid=f)
        c = pair.in_c(req, [16, 8])
        assert c == pair.in_python(req, 8)
        assert out_header(c)[1] < 0
    assert (pair.root / "f").read_bytes() == CONTENT


def test_copy_file_range_declined_to_the_engine(tmp_path, io_engine):
    """A read-only share (EROFS), request extensions, and copies larger than the queue's thread
    takes on (the engine's thread pool runs those where there is one) are the engine's."""
    pair = _make_pair(tmp_path / "ro", io_engine, readonly=True)
    try:
        f = pair.lookup(b"f")
        req = request(abi.Opcode.COPY_FILE_RANGE,
                      abi.copy_file_range_in.pack(1, 0, f, 1, 0, 1, 0), nodeid=f)
        assert out_header(via_engine(pair, req, [16, 8]))[1] == -errno.EROFS
    finally:
        pair.close()
    pair = _make_pair(tmp_path / "ext", io_engine)
    try:
        f = pair.lookup(b"f")
        fh = pair.open(f)
        ext = bytearray(request(abi.Opcode.COPY_FILE_RANGE,
                                abi.copy_file_range_in.pack(fh, 0, f, fh, 8192, 1, 0),
                                nodeid=f))
        struct.pack_into("<H", ext, 36, 1)  # fuse_in_header.total_extlen
        via_engine(pair, bytes(ext), [16, 8])
        (pair.root / "g").write_bytes(b"")
        g = pair.lookup(b"g")
        out = pair.open(g)
        for length in ((1 << 20) + 1, 1 << 40):
            req = request(abi.Opcode.COPY_FILE_RANGE,
                          abi.copy_file_range_in.pack(fh, 0, g, out, 0, length, 0), nodeid=f)
            reply = via_engine(pair, req, [16, 8])
            assert abi.write_out.unpack_from(reply, 16) == (len(CONTENT), 0)
    finally:
        pair.close()


@pytest.mark.parametrize("mode", [0o6755, 0o4755, 0o2755, 0o2745, 0o6700, 0o755])
@pytest.mark.parametrize("write_flags", [FUSE_WRITE_KILL_SUIDGID, 0])
def test_write_kills_suid_and_sgid_alike(pair, mode, write_flags):
    """WRITE with FUSE_WRITE_KILL_SUIDGID drops set-user-ID always and set-group-ID when the
    group may execute (as the kernel's should_remove_suid does); the same bits either way."""
    shutil.copyfile(pair.root / "f", pair.root / "g")
    for name in ("f", "g"):
        os.chmod(pair.root / name, mode)
    c_node, py_node = pair.lookup(b"f"), pair.lookup(b"g")
    c_fh, py_fh = pair.open(c_node), pair.open(py_node)
    payload = b"kill" * 8

    def req(fh, nodeid):
        body = abi.write_in.pack(fh, 100, len(payload), write_flags, 0, 0, 0)
        return request(abi.Opcode.WRITE, body + payload, nodeid=nodeid)

    split = abi.IN_HEADER_SIZE + abi.write_in.size
    assert pair.in_c(req(c_fh, c_node), [32], split) == pair.in_python(req(py_fh, py_node), 32)
    assert file_state(pair.root / "f") == file_state(pair.root / "g")


def _fuse_attr(st):
    """struct fuse_attr of an ``os.stat_result`` as FUSE defines it, written out field by
    field here (the daemon packs it only in C): seconds rounded down with their nanoseconds,
    rdev's low 32 bits, the link count capped at 2^32 - 1."""
    times = [divmod(ns, 10 ** 9) for ns in (st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns)]
    return abi.attr.pack(st.st_ino, st.st_size, st.st_blocks,
                         *(sec % 2 ** 64 for sec, _ in times), *(nsec for _, nsec in times),
                         st.st_mode, min(st.st_nlink, 2 ** 32 - 1), st.st_uid, st.st_gid,
                         st.st_rdev % 2 ** 32, st.st_blksize, 0)


def test_pack_attr_of_statx_and_stat_result(tmp_path):
    """The engine's attribute packing (pack_attr_of, the hot path's pack_attr underneath)
    gives the same 88 bytes from a _sys.Statx and from an os.stat_result, times before 1970
    and device numbers included; the overrides replace their field and nothing else."""
    from fastvfs.fs import _sys
    from fastvfs.fs._tables import pack_attr_of
    (tmp_path / "f").write_bytes(b"x" * 5000)
    os.utime(tmp_path / "f", ns=(-1_500_000_001, 1_700_000_000_123_456_789))
    for directory, name in ((tmp_path, "f"), ("/dev", "null"), ("/", "")):
        fd = os.open(directory, os.O_PATH)
        try:
            statx = _sys.fstatx(fd, name.encode(), _sys.SYMLINK_NOFOLLOW if name else
                                _sys.EMPTY_PATH)
        finally:
            os.close(fd)
        st = os.lstat(os.path.join(directory, name))
        assert pack_attr_of(statx) == pack_attr_of(st) == _fuse_attr(st)
        assert len(pack_attr_of(st)) == abi.attr.size == 88
        fields = list(abi.attr.unpack(_fuse_attr(st)))
        fields[0], fields[11], fields[12], fields[15] = 7, 1000, 2000, 1   # FUSE_ATTR_SUBMOUNT
        for source in (statx, st):
            assert abi.attr.unpack(pack_attr_of(source, ino=7, flags=1, uid=1000, gid=2000)) \
                == tuple(fields)
            assert abi.attr.unpack(pack_attr_of(source, uid=1000))[11:13] == (1000, st.st_gid)
    # The file's times: atime -1.500000001 s is -2 s + 499999999 ns.
    fields = abi.attr.unpack(pack_attr_of(os.lstat(tmp_path / "f")))
    assert (fields[3], fields[4], fields[6], fields[7]) == (
        2 ** 64 - 2, 1_700_000_000, 499_999_999, 123_456_789)


def test_pack_attr_of_clamps_what_fuse_attr_cannot_hold():
    """Fields wider than fuse_attr's: a link count over 2^32 - 1 is capped, rdev keeps its
    low 32 bits, a time before 1970 is a negative second count with positive nanoseconds."""
    from types import SimpleNamespace
    from fastvfs.fs._tables import pack_attr_of
    st = SimpleNamespace(st_ino=2 ** 64 - 1, st_size=2 ** 40, st_blocks=9,
                         st_atime_ns=-1, st_mtime_ns=-2 * 10 ** 9, st_ctime_ns=10 ** 9 + 5,
                         st_mode=0o20644, st_nlink=2 ** 40, st_uid=1, st_gid=2,
                         st_rdev=(1 << 40) | 0x12345678, st_blksize=4096)
    assert pack_attr_of(st) == _fuse_attr(st)
    fields = abi.attr.unpack(pack_attr_of(st))
    assert fields[3:9] == (2 ** 64 - 1, 2 ** 64 - 2, 1, 999_999_999, 0, 5)
    assert fields[10] == 2 ** 32 - 1 and fields[13] == 0x12345678


def test_statfs(pair):
    # The root, a file, a directory and a symlink: the same fuse_statfs_out both ways.  The
    # host file system is shared with whatever else runs, so its free counts may move between
    # the two requests: the pair is asked again until two answers in a row agree.
    for nodeid in (abi.FUSE_ROOT_ID, pair.lookup(b"f"), pair.lookup(b"d"), pair.lookup(b"link")):
        req = request(abi.Opcode.STATFS, nodeid=nodeid)
        for _ in range(20):
            c = pair.in_c(req, [16, 80])
            assert out_header(c)[1] == 0 and len(c) == 16 + abi.kstatfs.size
            py = pair.in_python(req, 96)
            if c == py == pair.in_c(req, [16, 80]):
                break
        assert c == py
    # A node the table does not know, and one forgotten: the same error both ways.
    f = pair.lookup(b"f")
    pair.in_python(request(abi.Opcode.FORGET, abi.forget_in.pack(2), nodeid=f), 0)
    for nodeid in (f, f + 1000, 2 ** 63):
        req = request(abi.Opcode.STATFS, nodeid=nodeid)
        assert pair.in_c(req, [96]) == pair.in_python(req, 96)
        assert out_header(pair.in_c(req, [96]))[1] == -errno.ENOENT


O_KERNEL_LARGEFILE = 0o100000  # what a 64-bit guest kernel sets on every open
OPEN_FLAGS = [os.O_RDONLY, os.O_WRONLY, os.O_RDWR, os.O_RDWR | os.O_APPEND,
              os.O_WRONLY | os.O_APPEND, os.O_RDONLY | os.O_NONBLOCK, os.O_RDWR | os.O_SYNC,
              os.O_WRONLY | os.O_DSYNC, os.O_RDONLY | O_KERNEL_LARGEFILE,
              os.O_RDONLY | os.O_NOATIME, os.O_RDWR | os.O_DIRECT, os.O_RDONLY | os.O_NOFOLLOW,
              os.O_RDONLY | os.O_DIRECTORY, os.O_RDONLY | os.O_PATH, os.O_RDONLY | os.O_NOCTTY,
              os.O_WRONLY | os.O_TRUNC, os.O_RDWR | os.O_TRUNC | os.O_APPEND, 3]


def _open(nodeid, flags, open_flags=0):
    return request(abi.Opcode.OPEN, abi.open_in.pack(flags, open_flags), nodeid=nodeid)


def _handle_state(pair, reply):
    """An OPEN reply with its fh taken out, and what the handle holds on the host: the
    descriptor's status flags and the file it names."""
    length, error, unique = out_header(reply)
    if error:
        return reply, None
    fh, open_flags, padding = abi.open_out.unpack_from(reply, 16)
    fd = pair.ring.handles.get(fh)
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    descriptor = (flags, bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC),
                  os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).rstrip("fg"))
    return (length, error, unique, open_flags, padding), descriptor


def _make_pair(tmp_path, io_engine, **options):
    root = tmp_path / "share"
    root.mkdir(parents=True)
    (root / "f").write_bytes(CONTENT)
    (root / "d").mkdir()
    os.symlink("f", root / "link")
    return Pair(root, io_engine, **options)


@pytest.fixture(params=["sync", "uring"])
def io_engine(request):
    return request.param


@pytest.mark.parametrize("options", [{}, {"writeback": True}, {"allow_direct_io": True},
                                     {"preserve_noatime": True}, {"cache": "never"},
                                     {"cache": "always"}, {"cache": "metadata"}])
def test_open(tmp_path, io_engine, options):
    """OPEN of a regular file with every kind of flag: the same reply (but for the handle's
    number), the same descriptor behind the handle, the same effect on the file."""
    pair = _make_pair(tmp_path, io_engine, **options)
    try:
        for flags in OPEN_FLAGS:
            shutil.copyfile(pair.root / "f", pair.root / "g")
            os.chmod(pair.root / "g", os.stat(pair.root / "f").st_mode)
            c_node, py_node = pair.lookup(b"f"), pair.lookup(b"g")
            handles = pair.ring.handles.count
            c = pair.in_c(_open(c_node, flags), [16, 16])
            py = pair.in_python(_open(py_node, flags), 32)
            assert _handle_state(pair, c) == _handle_state(pair, py), oct(flags)
            assert file_state(pair.root / "f") == file_state(pair.root / "g")
            opened = pair.ring.handles.count - handles
            assert opened == (2 if out_header(c)[1] == 0 else 0)
            # The handles opened in C and in Python are released alike.
            if opened:
                for reply, node in ((c, c_node), (py, py_node)):
                    fh = abi.open_out.unpack_from(reply, 16)[0]
                    assert pair.in_c(_release(fh, node), [16])[4:8] == bytes(4)
            assert pair.ring.handles.count == handles
            (pair.root / "f").write_bytes(CONTENT)
    finally:
        pair.close()


@pytest.mark.parametrize("allow_direct_io", [False, True])
def test_open_and_create_remember_o_direct(tmp_path, io_engine, allow_direct_io):
    """A handle opened O_DIRECT in C (OPEN, CREATE) is marked so from the flags the
    description was opened with, as one the engine opens is from its descriptor: its reads
    then never take the lone path (test_ring).  Without --allow-direct-io the flag is dropped
    before the open, and no handle is marked."""
    pair = _make_pair(tmp_path, io_engine, allow_direct_io=allow_direct_io)
    try:
        try:
            os.close(os.open(pair.root / "f", os.O_RDONLY | os.O_DIRECT))
        except OSError:
            pytest.skip("no O_DIRECT on this file system")
        os.chmod(pair.root / "d", 0o777)     # the requests' caller is uid 1000
        f, d = pair.lookup(b"f"), pair.lookup(b"d")
        for i, flags in enumerate((os.O_RDWR | os.O_DIRECT, os.O_RDWR,
                                   os.O_RDONLY | os.O_DIRECT)):
            expected = allow_direct_io and bool(flags & os.O_DIRECT)
            for served, make in (("c", pair.in_c), ("python", pair.in_python)):
                opened = make(_open(f, flags), [16, 16] if served == "c" else 32)
                created = make(_create(d, f"{served}{i}\0".encode(), flags),
                               [16, abi.ENTRY_OUT_SIZE, abi.open_out.size] if served == "c"
                               else 16 + abi.ENTRY_OUT_SIZE + abi.open_out.size)
                for reply, at in ((opened, 16), (created, 16 + abi.ENTRY_OUT_SIZE)):
                    assert out_header(reply)[1] == 0, served
                    fh = abi.open_out.unpack_from(reply, at)[0]
                    fd = pair.ring.handles.get(fh)
                    on_host = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)
                    assert pair.ring.handles.direct_of(fh) == on_host == expected, \
                        (served, oct(flags))
                    pair.ring.handles.remove(fh)
    finally:
        pair.close()


def test_open_answers_cache_mode_flags(tmp_path, io_engine):
    for cache, flags in (("never", abi.FOPEN_DIRECT_IO | abi.FOPEN_PARALLEL_DIRECT_WRITES),
                         ("always", abi.FOPEN_KEEP_CACHE), ("auto", 0)):
        pair = _make_pair(tmp_path / cache, io_engine, cache=cache)
        try:
            reply = pair.in_c(_open(pair.lookup(b"f"), os.O_RDONLY), [32])
            assert abi.open_out.unpack_from(reply, 16)[1:] == (flags, 0)
        finally:
            pair.close()


def test_open_refuses_all_but_regular_files(pair):
    """A FIFO, a device node, a socket, a symlink, a directory and the root are answered in C
    with the errno the engine gives, and nothing is opened: a FIFO would block the queue, a
    device would reach a host driver."""
    os.mkfifo(pair.root / "fifo")
    os.mknod(pair.root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(pair.root / "sock", stat.S_IFSOCK | 0o666)
    nodes = [pair.lookup(name) for name in (b"fifo", b"null", b"sock", b"link", b"d")]
    nodes.append(abi.FUSE_ROOT_ID)
    pair.in_c(request(abi.Opcode.STATFS), [96])  # a queue's io_uring is set up at first use
    held = fds_open()
    for nodeid in nodes:
        for flags in (os.O_RDONLY, os.O_WRONLY, os.O_RDWR | os.O_NONBLOCK, os.O_RDONLY | 3):
            c = pair.in_c(_open(nodeid, flags), [32])
            assert c == pair.in_python(_open(nodeid, flags), 32)
            assert out_header(c)[1] in (-errno.EACCES, -errno.ELOOP, -errno.EISDIR)
    assert fds_open() == held and pair.ring.handles.count == 0


def test_open_of_stale_and_forged_node_ids(pair):
    f = pair.lookup(b"f")
    pair.in_python(request(abi.Opcode.FORGET, abi.forget_in.pack(1), nodeid=f), 0)
    for nodeid in (f, f + 1000, f + (1 << 32), 0, 2 ** 63, 2 ** 64 - 1):
        c = pair.in_c(_open(nodeid, os.O_RDWR), [32])
        assert c == pair.in_python(_open(nodeid, os.O_RDWR), 32)
        assert out_header(c)[1] == -errno.ENOENT
    assert pair.ring.handles.count == 0


def via_engine(pair, req, out_lens):
    """The ring's reply to a request it must hand to the engine (fails if served in C)."""
    seen = len(pair.ring.seen)
    data = pair.ring.roundtrip([req], out_lens)
    assert len(pair.ring.seen) == seen + 1, "served in C, not by the engine"
    return data[:out_header(data)[0]]


def test_open_declined_to_the_engine(tmp_path, io_engine):
    """What the C path cannot decide as the file system would goes to the engine: O_CREAT or
    O_EXCL, O_TRUNC asking to kill set-user-ID, request extensions."""
    pair = _make_pair(tmp_path, io_engine)
    try:
        f = pair.lookup(b"f")
        for flags in (os.O_RDWR | os.O_CREAT, os.O_RDWR | os.O_EXCL):
            reply = via_engine(pair, _open(f, flags), [32])
            assert out_header(reply)[1] == 0
        os.chmod(pair.root / "f", 0o6755)
        reply = via_engine(pair, _open(f, os.O_RDWR | os.O_TRUNC, abi.FUSE_OPEN_KILL_SUIDGID),
                           [32])
        assert out_header(reply)[1] == 0
        assert os.stat(pair.root / "f").st_mode & 0o7777 == 0o755
        assert os.stat(pair.root / "f").st_size == 0
        # The same O_TRUNC without the kill flag is C's.
        pair.in_c(_open(f, os.O_RDWR | os.O_TRUNC), [32])
        ext = bytearray(_open(f, os.O_RDONLY))
        struct.pack_into("<H", ext, 36, 1)  # fuse_in_header.total_extlen
        via_engine(pair, bytes(ext), [32])
    finally:
        pair.close()


def test_open_on_a_read_only_share(tmp_path, io_engine):
    pair = _make_pair(tmp_path, io_engine, readonly=True)
    try:
        f = pair.lookup(b"f")
        assert out_header(pair.in_c(_open(f, os.O_RDONLY), [32]))[1] == 0
        for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC):
            reply = via_engine(pair, _open(f, flags), [32])
            assert reply == pair.in_python(_open(f, flags), 32)
            assert out_header(reply)[1] == -errno.EROFS
        assert os.stat(pair.root / "f").st_size == len(CONTENT)
    finally:
        pair.close()


def test_open_within_the_descriptor_budget(tmp_path, io_engine):
    """The budget counts what the file system counts (handles, nodes, directory handles' records):
    C opens while it is not used up, the engine answers EMFILE once it is."""
    pair = _make_pair(tmp_path, io_engine)
    try:
        f, d = pair.lookup(b"f"), pair.lookup(b"d")
        pair.close()
        budget = pair.fs.fds_held() + 3
        pair = _make_pair(tmp_path / "again", io_engine, fd_budget=budget)
        f, d = pair.lookup(b"f"), pair.lookup(b"d")
        assert pair.fs.fds_held() == budget - 3
        assert out_header(pair.in_c(_open(f, os.O_RDONLY), [32]))[1] == 0
        # A directory handle counts twice (its handle and its listing's record).
        error, _ = pair.engine.handle(request(abi.Opcode.OPENDIR, abi.open_in.pack(0, 0),
                                              nodeid=d), 4096)
        assert error == 0 and pair.fs.fds_held() == budget
        reply = via_engine(pair, _open(f, os.O_RDONLY), [32])
        assert reply == pair.in_python(_open(f, os.O_RDONLY), 32)
        assert out_header(reply)[1] == -errno.EMFILE
        assert pair.fs.fds_held() == budget
    finally:
        pair.close()


FATTR_NOW = abi.FATTR_ATIME_NOW | abi.FATTR_MTIME_NOW
ATTR_AT = abi.OUT_HEADER_SIZE + abi.attr_out_head.size  # fuse_attr in a SETATTR reply


def _setattr(nodeid, valid, mode=0, atime=(0, 0), mtime=(0, 0), fh=0, size=0, uid=0, gid=0):
    body = abi.setattr_in.pack(valid, 0, fh, size, 0, atime[0], mtime[0], 0, atime[1], mtime[1],
                               0, mode, 0, uid, gid, 0)
    return request(abi.Opcode.SETATTR, body, nodeid=nodeid)


def _unclocked(reply, valid):
    """A SETATTR reply without the times the clock gives (ctime, and a time set to now)."""
    if out_header(reply)[1]:
        return reply
    reply = bytearray(reply)
    fields = [(40, 8, 0), (48 + 8, 4, 0)]  # ctime, ctimensec (offsets in fuse_attr)
    if valid & abi.FATTR_ATIME_NOW:
        fields += [(24, 8, 0), (48, 4, 0)]
    if valid & abi.FATTR_MTIME_NOW:
        fields += [(32, 8, 0), (52, 4, 0)]
    for off, size, _ in fields:
        reply[ATTR_AT + off:ATTR_AT + off + size] = bytes(size)
    return bytes(reply)


SETATTR_CASES = [
    (0, {}),
    (abi.FATTR_MODE, {"mode": 0o600}),
    (abi.FATTR_MODE, {"mode": 0o104755}),        # file type bits are not the guest's to set
    (abi.FATTR_MODE, {"mode": 0o7777}),
    (abi.FATTR_ATIME, {"atime": (1_000_000_000, 5)}),
    (abi.FATTR_MTIME, {"mtime": (1_700_000_000, 999_999_999)}),
    (abi.FATTR_ATIME | abi.FATTR_MTIME, {"atime": (0, 0), "mtime": (3, 4)}),
    (FATTR_NOW | abi.FATTR_ATIME | abi.FATTR_MTIME, {"atime": (5, 0), "mtime": (6, 0)}),
    (abi.FATTR_MTIME_NOW | abi.FATTR_MTIME, {}),
    (abi.FATTR_MODE | abi.FATTR_MTIME | abi.FATTR_LOCKOWNER | abi.FATTR_CTIME,
     {"mode": 0o640, "mtime": (1_234_567_890, 1)}),
]


@pytest.mark.parametrize("valid,values", SETATTR_CASES)
def test_setattr_of_mode_and_times(pair, valid, values):
    """The same request sent in C then by the engine to the same node: the same reply but
    for the times the clock gives, and the same mode and times on the host after each."""
    for name in (b"f", b"d", b"link", None):
        nodeid = pair.lookup(name) if name else abi.FUSE_ROOT_ID
        path = pair.root / name.decode() if name else pair.root
        req = _setattr(nodeid, valid, **values)
        c = pair.in_c(req, [16, 200])
        after_c = os.lstat(path)
        py = pair.in_python(req, 216)
        after_py = os.lstat(path)
        assert _unclocked(c, valid) == _unclocked(py, valid), (name, oct(valid))
        if valid & FATTR_NOW:
            continue
        assert (after_c.st_mode, after_c.st_atime_ns, after_c.st_mtime_ns) == \
            (after_py.st_mode, after_py.st_atime_ns, after_py.st_mtime_ns)
        if valid & abi.FATTR_MODE and name != b"link":
            assert after_c.st_mode & 0o7777 == values["mode"] & 0o7777
        if valid & abi.FATTR_MTIME and not out_header(c)[1]:
            assert after_c.st_mtime_ns == values["mtime"][0] * 10 ** 9 + values["mtime"][1]
    os.chmod(pair.root, 0o755)


def test_setattr_mode_through_the_descriptor_or_its_proc_name(pair):
    """A mode changed with fchmodat2(2) of the node's O_PATH descriptor, or (a kernel before
    6.6, a filter without the call) with fchmodat(2) of its /proc/self/fd name: the same
    replies and the same modes, for a file, a directory, a FIFO and a file since unlinked."""
    if not _tables.use_fchmodat2(True):
        pytest.skip("this kernel has no fchmodat2 (Linux 6.6)")
    os.mkfifo(pair.root / "fifo")
    (pair.root / "gone").write_bytes(b"x")
    nodes = {name: pair.lookup(name) for name in (b"f", b"d", b"fifo", b"gone")}
    os.unlink(pair.root / "gone")
    try:
        for mode in (0o600, 0o7777, 0o104755, 0o2750):
            replies = {}
            for use in (True, False):
                assert _tables.use_fchmodat2(use) == use
                for name, nodeid in nodes.items():
                    req = _setattr(nodeid, abi.FATTR_MODE, mode=mode)
                    reply = _unclocked(pair.in_c(req, [16, 200]), abi.FATTR_MODE)
                    assert out_header(reply)[1] == 0, (name, use)
                    replies.setdefault(name, []).append(reply)
                    if name != b"gone":
                        assert os.stat(pair.root / name.decode()).st_mode & 0o7777 == mode & 0o7777
            for name, (by_fd, by_proc) in replies.items():
                assert by_fd == by_proc, (name, oct(mode))
    finally:
        _tables.use_fchmodat2(True)


def test_setattr_mode_of_a_symlink_and_unknown_nodes(pair):
    link = pair.lookup(b"link")
    req = _setattr(link, abi.FATTR_MODE, mode=0o600)
    assert pair.in_c(req, [216]) == pair.in_python(req, 216)
    assert out_header(pair.in_c(req, [216]))[1] == -errno.EOPNOTSUPP
    f = pair.lookup(b"f")
    pair.in_python(request(abi.Opcode.FORGET, abi.forget_in.pack(1), nodeid=f), 0)
    for nodeid in (f, f + 1000, 0, 2 ** 63):
        req = _setattr(nodeid, abi.FATTR_MODE, mode=0o600)
        assert pair.in_c(req, [216]) == pair.in_python(req, 216)
        assert out_header(pair.in_c(req, [216]))[1] == -errno.ENOENT
    assert os.stat(pair.root / "f").st_mode & 0o777 != 0o600


def test_setattr_declined_to_the_engine(tmp_path, io_engine):
    """A time the engine refuses or reads as signed, request extensions, a read-only share, a
    node held by file handle without a descriptor: the engine answers."""
    pair = _make_pair(tmp_path, io_engine)
    try:
        f = pair.lookup(b"f")
        for valid, values in ((abi.FATTR_MTIME, {"mtime": (1, 10 ** 9)}),      # EINVAL
                              (abi.FATTR_MTIME, {"mtime": (2 ** 64 - 1, 0)}),  # before 1970
                              (abi.FATTR_ATIME, {"atime": (2 ** 40, 0)}),
                              (abi.FATTR_SIZE | abi.FATTR_MTIME, {"size": 10,
                                                                  "mtime": (1, 10 ** 9)})):
            via_engine(pair, _setattr(f, valid, **values), [216])
        assert os.stat(pair.root / "f").st_mtime_ns == -10 ** 9
        assert os.stat(pair.root / "f").st_size == len(CONTENT)
        ext = bytearray(_setattr(f, abi.FATTR_SIZE, size=10))
        struct.pack_into("<H", ext, 36, 1)  # fuse_in_header.total_extlen
        via_engine(pair, bytes(ext), [216])
    finally:
        pair.close()
    pair = _make_pair(tmp_path / "ro", io_engine, readonly=True)
    try:
        f = pair.lookup(b"f")
        fh = pair.open(f, os.O_RDONLY)
        for valid, values in ((abi.FATTR_MODE, {"mode": 0}), (abi.FATTR_SIZE, {"size": 1}),
                              (abi.FATTR_SIZE | abi.FATTR_FH, {"size": 1, "fh": fh}),
                              (abi.FATTR_UID | abi.FATTR_GID, {"uid": os.getuid(),
                                                               "gid": os.getgid()})):
            reply = via_engine(pair, _setattr(f, valid, **values), [216])
            assert out_header(reply)[1] == -errno.EROFS
        assert os.stat(pair.root / "f").st_size == len(CONTENT)
    finally:
        pair.close()


def _untimed(reply):
    """A SETATTR reply without its times (a truncate sets mtime and ctime from the clock)."""
    if out_header(reply)[1]:
        return reply
    reply = bytearray(reply)
    for off, size in ((24, 24), (48, 12)):  # atime mtime ctime, their nanoseconds
        reply[ATTR_AT + off:ATTR_AT + off + size] = bytes(size)
    return bytes(reply)


def _owner_ids():
    """Ids to give a file: our own, and others (EPERM unless privileged, the same both ways)."""
    me, group = os.getuid(), os.getgid()
    return [(me, group), (me + 1234, group), (me, group + 4321), (0xFFFFFFFF, group)]


SIZE_OWNER_CASES = [
    (abi.FATTR_SIZE, {"size": 10}),
    (abi.FATTR_SIZE, {"size": 0}),
    (abi.FATTR_SIZE, {"size": 1 << 20}),
    (abi.FATTR_SIZE, {"size": 2 ** 63}),                      # EINVAL before anything
    (abi.FATTR_SIZE | abi.FATTR_KILL_SUIDGID, {"size": 5}),
    (abi.FATTR_KILL_SUIDGID, {}),
    (abi.FATTR_MODE | abi.FATTR_KILL_SUIDGID | abi.FATTR_SIZE, {"mode": 0o6755, "size": 3}),
    (abi.FATTR_SIZE | abi.FATTR_MTIME, {"size": 7, "mtime": (1_600_000_000, 1)}),
    (abi.FATTR_UID | abi.FATTR_GID, {}),
    (abi.FATTR_UID, {}),
    (abi.FATTR_GID, {}),
    (abi.FATTR_UID | abi.FATTR_GID | abi.FATTR_SIZE | abi.FATTR_KILL_SUIDGID, {"size": 9}),
]


@pytest.mark.parametrize("valid,values", SIZE_OWNER_CASES)
def test_setattr_of_size_and_owner(pair, valid, values):
    """SETATTR of the size (truncate through the node's name: EISDIR for a directory, EINVAL
    for a symlink) and of the owner (the node itself, a symlink's own), with and without
    kill-suid/sgid, on each kind of node: the same reply but for the times, and the same
    file on the host after each, set back in between."""
    for name in (b"f", b"d", b"link", None):
        nodeid = pair.lookup(name) if name else abi.FUSE_ROOT_ID
        path = pair.root / name.decode() if name else pair.root
        for uid, gid in _owner_ids() if valid & (abi.FATTR_UID | abi.FATTR_GID) else [(0, 0)]:
            req = _setattr(nodeid, valid, uid=uid, gid=gid, **values)
            replies, states = [], []
            for send in (lambda: pair.in_c(req, [16, 200]), lambda: pair.in_python(req, 216)):
                (pair.root / "f").write_bytes(CONTENT)
                os.chmod(pair.root / "f", 0o6755)
                replies.append(_untimed(send()))
                st = os.lstat(path)
                states.append((st.st_size, st.st_mode, st.st_uid, st.st_gid,
                               (pair.root / "f").read_bytes()))
            assert replies[0] == replies[1], (name, oct(valid), uid, gid)
            assert states[0] == states[1], (name, oct(valid), uid, gid)
            if name == b"f" and valid & abi.FATTR_SIZE and values["size"] < 2 ** 63:
                assert states[0][0] == values["size"]
            if name == b"f" and valid & abi.FATTR_KILL_SUIDGID and not valid & abi.FATTR_MODE:
                assert states[0][1] & 0o7777 == 0o755


def test_setattr_through_a_file_handle(pair):
    """FATTR_FH: ftruncate and fchmod of the handle's descriptor (EINVAL for one opened
    read-only), EBADF for an unknown handle after ENOENT for an unknown node."""
    f = pair.lookup(b"f")
    rw, ro = pair.open(f, os.O_RDWR), pair.open(f, os.O_RDONLY)
    fh_flags = abi.FATTR_FH
    cases = [(fh_flags | abi.FATTR_SIZE, {"size": 100, "fh": rw}),
             (fh_flags | abi.FATTR_SIZE | abi.FATTR_KILL_SUIDGID, {"size": 50, "fh": rw}),
             (fh_flags | abi.FATTR_SIZE, {"size": 100, "fh": ro}),
             (fh_flags | abi.FATTR_MODE, {"mode": 0o640, "fh": ro}),
             (fh_flags | abi.FATTR_UID, {"uid": os.getuid(), "fh": rw}),
             (fh_flags | abi.FATTR_MTIME, {"mtime": (5, 6), "fh": rw}),
             (fh_flags | abi.FATTR_SIZE, {"size": 1, "fh": rw + 1000}),
             (fh_flags, {"fh": 2 ** 63})]
    for valid, values in cases:
        req = _setattr(f, valid, **values)
        replies, states = [], []
        for send in (lambda: pair.in_c(req, [16, 200]), lambda: pair.in_python(req, 216)):
            (pair.root / "f").write_bytes(CONTENT)
            os.chmod(pair.root / "f", 0o6755)
            replies.append(_untimed(send()))
            states.append(file_state(pair.root / "f"))
        assert replies[0] == replies[1], (oct(valid), values)
        assert states[0] == states[1], (oct(valid), values)
    assert out_header(replies[0])[1] == -errno.EBADF
    # An unknown node is ENOENT whatever the handle.
    pair.in_python(request(abi.Opcode.FORGET, abi.forget_in.pack(1), nodeid=f), 0)
    for nodeid in (f + 1000, 0, 2 ** 63):
        for fh in (rw, 2 ** 63):
            req = _setattr(nodeid, abi.FATTR_FH | abi.FATTR_SIZE, size=1, fh=fh)
            c = pair.in_c(req, [216])
            assert c == pair.in_python(req, 216)
            assert out_header(c)[1] == -errno.ENOENT
    for fh in (rw, ro):
        pair.in_c(_release(fh, f), [16])
    assert pair.ring.handles.count == 0


def test_setattr_and_readlink_of_a_node_held_by_file_handle(tmp_path, io_engine):
    """A node held by file handle whose descriptor the cache closed is reopened by its handle
    in C, which serves it; once its inode is gone, the request goes to the engine, which
    answers ESTALE as its own reopening fails."""
    pair = _make_pair(tmp_path, io_engine, file_handles="prefer", handle_fds_max=1)
    try:
        f, link = pair.lookup(b"f"), pair.lookup(b"link")
        pair.lookup(b"d")  # takes the one cached descriptor
        assert pair.inodes.node(f)[0] == -1 and pair.inodes.node(link)[0] == -1
        reply = pair.in_c(_setattr(f, abi.FATTR_SIZE, size=3), [16, 200])
        assert out_header(reply)[1] == 0 and os.stat(pair.root / "f").st_size == 3
        assert pair.inodes.node(f)[0] >= 0 and pair.inodes.node(link)[0] == -1
        assert pair.in_c(request(abi.Opcode.READLINK, nodeid=link), [16, 100])[16:] == b"f"
        assert pair.inodes.node(link)[0] >= 0 and pair.inodes.node(f)[0] == -1
        os.unlink(pair.root / "f")
        reply = via_engine(pair, _setattr(f, abi.FATTR_SIZE, size=1), [216])
        assert out_header(reply)[1] == -errno.ESTALE
    finally:
        pair.close()


def test_setattr_drops_the_mapped_capability(tmp_path, io_engine):
    """Where --xattrmap moves security.capability, SETATTR of a regular file's size or owner
    removes it as the kernel removes the real one (through the handle too); of its mode or
    times, or of a directory, it stays: the same both ways."""
    mapped = "user.virtiofs.security.capability"
    pair = _make_pair(tmp_path, io_engine,
                      xattrmap=XattrMap(":prefix:all:security.:user.virtiofs.::ok:all:::"))
    try:
        f, d = pair.lookup(b"f"), pair.lookup(b"d")
        fh = pair.open(f)
        for nodeid, path, valid, values in (
                (f, pair.root / "f", abi.FATTR_SIZE, {"size": 3}),
                (f, pair.root / "f", abi.FATTR_SIZE | abi.FATTR_FH, {"size": 2, "fh": fh}),
                (f, pair.root / "f", abi.FATTR_UID, {"uid": os.getuid()}),
                (f, pair.root / "f", abi.FATTR_GID | abi.FATTR_FH, {"gid": os.getgid(),
                                                                    "fh": fh}),
                (f, pair.root / "f", abi.FATTR_MODE, {"mode": 0o700}),
                (f, pair.root / "f", abi.FATTR_MTIME, {"mtime": (9, 9)}),
                (d, pair.root / "d", abi.FATTR_UID, {"uid": os.getuid()})):
            req = _setattr(nodeid, valid, **values)
            kept, replies = [], []
            for send in (lambda: pair.in_c(req, [16, 200]), lambda: pair.in_python(req, 216)):
                os.setxattr(path, mapped, CAPABILITY)
                replies.append(_untimed(send()))
                kept.append(mapped in os.listxattr(path))
            assert replies[0] == replies[1] and out_header(replies[0])[1] == 0
            assert kept[0] == kept[1] == (not valid & (abi.FATTR_SIZE | abi.FATTR_UID |
                                                       abi.FATTR_GID) or nodeid == d)
    finally:
        pair.close()


# -- READLINK, LSEEK ----------------------------------------------------------------------------

def test_readlink(pair):
    """The target as it is, for targets of every length the host allows; EINVAL for all but
    a symlink; ERANGE when the reply buffers are shorter than the target; ENOENT for an
    unknown node."""
    for i, target in enumerate((b"f", b"../somewhere/else", b"x" * 255,
                                b"/".join([b"y" * 200] * 20)[:4095], "ü".encode())):
        os.symlink(target, pair.root / f"l{i}")
        node = pair.lookup(b"l%d" % i)
        req = request(abi.Opcode.READLINK, nodeid=node)
        c = pair.in_c(req, [16, 4096])
        assert c == pair.in_python(req, 4096)
        assert c[16:] == target
        # Reply buffers one byte too short for the target, in one buffer or split.
        short = len(target) - 1
        for out_lens in ([16 + short], [16, short]) if short else ():
            c = pair.in_c(req, out_lens)
            assert c == pair.in_python(req, short)
            assert out_header(c)[1] == -errno.ERANGE
    os.mkfifo(pair.root / "fifo")
    for nodeid in (pair.lookup(b"f"), pair.lookup(b"d"), pair.lookup(b"fifo"),
                   abi.FUSE_ROOT_ID):
        req = request(abi.Opcode.READLINK, nodeid=nodeid)
        c = pair.in_c(req, [16, 4096])
        assert c == pair.in_python(req, 4096)
        assert out_header(c)[1] == -errno.EINVAL
    link = pair.lookup(b"link")
    pair.in_python(request(abi.Opcode.FORGET, abi.forget_in.pack(2), nodeid=link), 0)
    for nodeid in (link, link + 1000, 0, 2 ** 63):
        req = request(abi.Opcode.READLINK, nodeid=nodeid)
        c = pair.in_c(req, [16, 4096])
        assert c == pair.in_python(req, 4096)
        assert out_header(c)[1] == -errno.ENOENT


def _lseek(fh, offset, whence, nodeid):
    return request(abi.Opcode.LSEEK, abi.lseek_in.pack(fh, offset, whence, 0), nodeid=nodeid)


def test_ioctl(pair):
    """Every IOCTL the guest sends (isatty's TCGETS on a file's handle, a directory's, an
    unknown handle, a short request): ENOSYS in C as from the engine, which passes none on;
    one with request extensions is the engine's (EINVAL for a malformed one)."""
    f, d = pair.lookup(b"f"), pair.lookup(b"d")
    fh = pair.open(f, os.O_RDONLY)
    body = struct.Struct("<QIIQII")
    for nodeid, handle, cmd, flags in ((f, fh, 0x5401, 0), (f, fh, 0x80086601, 0),
                                       (d, 0, 0x80086601, 16), (f, 2 ** 63, 0x5401, 0)):
        req = request(abi.Opcode.IOCTL, body.pack(handle, flags, cmd, 0, 0, 8), nodeid=nodeid)
        assert pair.in_c(req, [16, 64]) == pair.in_python(req, 80)
        assert out_header(pair.in_c(req, [16, 64]))[1] == -errno.ENOSYS
    req = request(abi.Opcode.IOCTL, b"", nodeid=f)
    assert pair.in_c(req, [80]) == pair.in_python(req, 80)
    # Request extensions are read by the engine before it looks for the opcode: its answer.
    ext = bytearray(request(abi.Opcode.IOCTL, body.pack(fh, 0, 0x5401, 0, 0, 0), nodeid=f))
    struct.pack_into("<H", ext, 36, 1)  # fuse_in_header.total_extlen
    assert out_header(via_engine(pair, bytes(ext), [80]))[1] == -errno.EINVAL


def test_lseek(pair):
    """Every whence on a file with a hole, through two handles to it (one for each side, as
    SEEK_CUR moves the handle's position): the same replies in the same order, ENXIO past
    the data, EINVAL for a bad whence or an offset beyond INT64_MAX, EBADF for an unknown
    handle; a directory's handle as well."""
    with open(pair.root / "f", "r+b") as f:
        f.seek(1 << 20)
        f.write(b"tail")
    f = pair.lookup(b"f")
    a, b = pair.open(f, os.O_RDONLY), pair.open(f, os.O_RDWR)
    size = (1 << 20) + 4
    steps = [(0, os.SEEK_SET), (100, os.SEEK_CUR), (0, os.SEEK_CUR), (0, os.SEEK_END),
             (0, os.SEEK_DATA), (len(CONTENT), os.SEEK_DATA), (0, os.SEEK_HOLE),
             (size - 2, os.SEEK_HOLE), (size, os.SEEK_DATA), (size + 5, os.SEEK_HOLE),
             (2 ** 62, os.SEEK_SET), (2 ** 63, os.SEEK_SET), (2 ** 64 - 1, os.SEEK_CUR),
             (0, 5), (0, 2 ** 32 - 1), (2 ** 63 - 1, os.SEEK_CUR), (7, os.SEEK_SET)]
    for offset, whence in steps:
        c = pair.in_c(_lseek(a, offset, whence, f), [16, 8])
        py = pair.in_python(_lseek(b, offset, whence, f), 8)
        assert c == py, (offset, whence)
    errors = {out_header(pair.in_c(_lseek(a, o, w, f), [16, 8]))[1] for o, w in steps}
    assert {0, -errno.ENXIO, -errno.EINVAL} <= errors
    for fh in (a + 1000, 2 ** 63, 0):
        for whence in (os.SEEK_SET, 9):
            c = pair.in_c(_lseek(fh, 0, whence, f), [16, 8])
            assert c == pair.in_python(_lseek(fh, 0, whence, f), 8)
            assert out_header(c)[1] == (-errno.EBADF if whence != 9 else -errno.EINVAL)
    d = pair.lookup(b"d")
    error, payload = pair.engine.handle(request(abi.Opcode.OPENDIR, abi.open_in.pack(0, 0),
                                                nodeid=d), 4096)
    assert error == 0
    dh = abi.open_out.unpack_from(payload)[0]
    for offset, whence in ((0, os.SEEK_SET), (0, os.SEEK_DATA), (0, os.SEEK_END)):
        c = pair.in_c(_lseek(dh, offset, whence, d), [16, 8])
        assert c == pair.in_python(_lseek(dh, offset, whence, d), 8)
    for fh in (a, b):
        pair.in_c(_release(fh, f), [16])


# -- UNLINK, RMDIR, RENAME, RENAME2 -------------------------------------------------------------

def _names_tree(top):
    """The same small tree in each of the two halves the C path and the engine work on."""
    top.mkdir()
    (top / "f").write_bytes(b"f")
    (top / "g").write_bytes(b"gg")
    (top / "d").mkdir()
    (top / "e").mkdir()
    (top / "full").mkdir()
    (top / "full" / "x").write_bytes(b"x")
    os.symlink("f", top / "link")
    os.symlink("d", top / "dirlink")
    os.mkfifo(top / "fifo")
    (top / ("n" * 255)).write_bytes(b"n")


def _tree_state(top):
    """Every entry under ``top``: its relative path, file type, size and contents."""
    state = []
    for path in sorted(top.rglob("*")):
        st = os.lstat(path)
        data = path.read_bytes() if stat.S_ISREG(st.st_mode) else (
            os.readlink(path).encode() if stat.S_ISLNK(st.st_mode) else b"")
        state.append((str(path.relative_to(top)), stat.S_IFMT(st.st_mode), data))
    return state


def _unlink(parent, name, opcode=abi.Opcode.UNLINK, **kw):
    return request(opcode, name, nodeid=parent, **kw)


def _rename(parent, name, newdir, newname, flags=None, **kw):
    if flags is None:
        return request(abi.Opcode.RENAME, abi.rename_in.pack(newdir) + name + newname,
                       nodeid=parent, **kw)
    return request(abi.Opcode.RENAME2, abi.rename2_in.pack(newdir, flags, 0) + name + newname,
                   nodeid=parent, **kw)


class Halves:
    """Two copies of the names tree, ``c`` and ``py``, each with its nodes looked up: a request
    built for one half by ``make(nodes)`` is sent in C to one and through the engine to the
    other, and both the replies and the trees that result must be equal."""

    def __init__(self, pair):
        self.pair = pair
        for half in ("c", "py"):
            _names_tree(pair.root / half)
        self.nodes = {half: self._nodes(half) for half in ("c", "py")}

    def reset(self):
        """Forget every node looked up, and make both trees afresh."""
        for nodes in self.nodes.values():
            for key, nodeid in nodes.items():
                if key != "root" and self.pair.fs.inodes.nlookup(nodeid):
                    self.pair.in_python(request(abi.Opcode.FORGET, abi.forget_in.pack(
                        self.pair.fs.inodes.nlookup(nodeid)), nodeid=nodeid), 0)
        for half in ("c", "py"):
            shutil.rmtree(self.pair.root / half)
            _names_tree(self.pair.root / half)
        self.nodes = {half: self._nodes(half) for half in ("c", "py")}

    def _nodes(self, half):
        top = self.pair.lookup(half.encode())
        nodes = {"top": top, "root": abi.FUSE_ROOT_ID}
        for name in ("f", "d", "e", "full", "link", "fifo"):
            nodes[name] = self.pair.lookup(name.encode(), top)
        return nodes

    def same(self, make, served="c", out_lens=(16,)):
        """The reply of ``make``'s request to each half; ``served``: "c" (fails if the engine
        had it) or "engine" (fails if C served it)."""
        pair = self.pair
        c_req, py_req = make(self.nodes["c"]), make(self.nodes["py"])
        py_req = py_req[:abi.in_header.unpack_from(py_req)[0]]  # what the ring hands over
        if served == "c":
            c = pair.in_c(c_req, list(out_lens))
        else:
            c = via_engine(pair, c_req, list(out_lens))
        py = pair.in_python(py_req, sum(out_lens))
        assert c == py
        assert _tree_state(pair.root / "c") == _tree_state(pair.root / "py")
        return out_header(c)[1]


def test_unlink_and_rmdir(pair):
    """UNLINK and RMDIR of every kind of entry and of names the file system refuses, in C,
    with the engine's errno and effect."""
    halves = Halves(pair)
    U, R = abi.Opcode.UNLINK, abi.Opcode.RMDIR
    cases = [
        (U, "top", b"f\0", 0), (U, "top", b"missing\0", -errno.ENOENT),
        (U, "top", b"d\0", -errno.EISDIR), (U, "top", b"link\0", 0),
        (U, "top", b"fifo\0", 0), (U, "top", b"dirlink\0", 0),
        (U, "top", b"\0", -errno.EINVAL), (U, "top", b".\0", -errno.EINVAL),
        (U, "top", b"..\0", -errno.EINVAL), (U, "top", b"full/x\0", -errno.EINVAL),
        (U, "top", b"/\0", -errno.EINVAL), (U, "top", b"n" * 255 + b"\0", 0),
        (U, "top", b"x" * 255 + b"\0", -errno.ENOENT),
        (U, "top", b"g\0trailing bytes after the name", 0),
        (R, "top", b"d\0", 0), (R, "top", b"full\0", -errno.ENOTEMPTY),
        (R, "top", b"e\0", 0), (R, "top", b"missing\0", -errno.ENOENT),
        (R, "top", b".\0", -errno.EINVAL), (R, "top", b"..\0", -errno.EINVAL),
        (R, "top", b"\0", -errno.EINVAL),
        (R, "full", b"x\0", -errno.ENOTDIR), (U, "full", b"x\0", 0),
        (R, "top", b"full\0", 0),
    ]
    for opcode, parent, name, err in cases:
        got = halves.same(lambda nodes: _unlink(nodes[parent], name, opcode))
        assert got == err, (opcode, parent, name)


def test_unlink_and_rename_under_a_parent_that_is_no_directory(pair):
    """A parent node that is a file, a symlink or a FIFO: ENOTDIR from the kernel, both ways
    (the parent's O_PATH descriptor is what the name is resolved against)."""
    halves = Halves(pair)
    for parent in ("f", "link", "fifo"):
        for opcode in (abi.Opcode.UNLINK, abi.Opcode.RMDIR):
            got = halves.same(lambda nodes: _unlink(nodes[parent], b"x\0", opcode))
            assert got == -errno.ENOTDIR
        got = halves.same(lambda nodes: _rename(nodes[parent], b"x\0", nodes["top"], b"y\0"))
        assert got == -errno.ENOTDIR
        got = halves.same(lambda nodes: _rename(nodes["top"], b"g\0", nodes[parent], b"y\0"))
        assert got == -errno.ENOTDIR


RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1, 2, 4

# (parent, old name, new parent, new name, RENAME2 flags or None for RENAME, errno)
RENAME_CASES = [
    ("top", b"f\0", "top", b"f2\0", None, 0),
    ("top", b"f2\0", "d", b"f\0", None, 0),            # into another directory
    ("d", b"f\0", "top", b"f\0", 0, 0),                # RENAME2 without flags
    ("top", b"missing\0", "top", b"m\0", None, -errno.ENOENT),
    ("top", b"f\0", "top", b"d\0", None, -errno.EISDIR),     # a file over a directory
    ("top", b"d\0", "top", b"f\0", None, -errno.ENOTDIR),    # a directory over a file
    ("top", b"d\0", "top", b"full\0", None, -errno.ENOTEMPTY),
    ("top", b"d\0", "top", b"e\0", None, 0),           # over an empty directory
    ("top", b"full\0", "full", b"sub\0", None, -errno.EINVAL),  # into itself
    ("top", b"g\0", "top", b"link\0", None, 0),        # over a symlink
    ("top", b"link\0", "top", b"f\0", None, 0),
    ("top", b"f\0", "top", b"f\0", None, 0),           # onto itself
    ("top", b".\0", "top", b"x\0", None, -errno.EINVAL),
    ("top", b"f\0", "top", b"..\0", None, -errno.EINVAL),
    ("top", b"\0", "top", b"x\0", None, -errno.EINVAL),
    ("top", b"f\0", "top", b"\0", None, -errno.EINVAL),
    ("top", b"f\0", "top", b"a/b\0", None, -errno.EINVAL),
    ("top", b"full/x\0", "top", b"x\0", None, -errno.EINVAL),
    ("top", b"n" * 255 + b"\0", "top", b"m" * 255 + b"\0", None, 0),
    ("top", b"fifo\0", "full", b"fifo\0", None, 0),
    ("top", b"full\0", "top", b"fifo\0", 0, 0),
    ("top", b"f\0", "top", b"fifo\0", RENAME_NOREPLACE, -errno.EEXIST),
    ("top", b"f\0", "top", b"new\0", RENAME_NOREPLACE, 0),
    ("top", b"new\0", "top", b"fifo\0", RENAME_EXCHANGE, 0),
    ("top", b"new\0", "top", b"missing\0", RENAME_EXCHANGE, -errno.ENOENT),
    ("top", b"new\0", "top", b"fifo\0", RENAME_EXCHANGE | RENAME_NOREPLACE, -errno.EINVAL),
    ("top", b"new\0", "top", b"x\0", 8, -errno.EINVAL),
    ("top", b"new\0", "top", b"x\0", 0xffffffff, -errno.EINVAL),
    ("top", b".\0", "top", b"x\0", 8, -errno.EINVAL),
    ("top", b"new\0", "top", b"wh\0", RENAME_WHITEOUT, None),   # CAP_MKNOD decides
    ("root", b"c\0", "root", b"c\0", None, 0),          # the share's root as a parent
]


@pytest.mark.parametrize("flags_kind", ["rename", "rename2"])
def test_rename(pair, flags_kind):
    halves = Halves(pair)
    for parent, name, newparent, newname, flags, err in RENAME_CASES:
        if flags is None and flags_kind == "rename2":
            flags = 0
        if parent == "root":
            # The halves' own names, "c" and "py", in the share's root.
            def make(nodes):
                own = b"c\0" if nodes is halves.nodes["c"] else b"py\0"
                return _rename(abi.FUSE_ROOT_ID, own, abi.FUSE_ROOT_ID, own, flags)
        else:
            def make(nodes):
                return _rename(nodes[parent], name, nodes[newparent], newname, flags)
        got = halves.same(make)
        assert err is None or got == err, (name, newname, flags)


def test_names_of_stale_and_forged_node_ids(pair):
    """Parents the node id table does not know (forgotten, never given, another generation,
    0): ENOENT in C as in the engine, whichever of the two parents of a RENAME it is."""
    halves = Halves(pair)
    for half in ("c", "py"):
        gone = pair.lookup(b"g", halves.nodes[half]["top"])
        pair.in_python(request(abi.Opcode.FORGET, abi.forget_in.pack(1), nodeid=gone), 0)
        halves.nodes[half]["gone"] = gone
    for bad in (lambda n: n["gone"], lambda n: n["top"] + 1000,
                lambda n: n["top"] + (1 << 32), lambda n: 0, lambda n: 2 ** 63):
        for opcode in (abi.Opcode.UNLINK, abi.Opcode.RMDIR):
            assert halves.same(lambda n: _unlink(bad(n), b"f\0", opcode)) == -errno.ENOENT
        for flags in (None, 0, RENAME_EXCHANGE, 8):
            assert halves.same(lambda n: _rename(bad(n), b"f\0", n["top"], b"x\0",
                                                 flags)) == -errno.ENOENT
            assert halves.same(lambda n: _rename(n["top"], b"f\0", bad(n), b"x\0",
                                                 flags)) == -errno.ENOENT
            # Both unknown, and the names refused too: ENOENT comes first.
            assert halves.same(lambda n: _rename(n["top"], b".\0", bad(n), b"x\0",
                                                 flags)) == -errno.ENOENT


def test_names_release_their_parents(pair):
    """Every reference C takes on a parent is dropped, whatever the answer: once the guest
    forgets the node, its descriptor is closed."""
    halves = Halves(pair)
    n = halves.nodes["c"]
    e, top = n["e"], n["top"]
    (pair.root / "c" / "e" / "a").write_bytes(b"a")
    pair.in_c(request(abi.Opcode.STATFS), [96])  # a queue's io_uring is set up at first use
    for req in (_unlink(e, b"missing\0"), _unlink(e, b".\0"),
                _unlink(e, b"a\0", abi.Opcode.RMDIR),
                _rename(e, b"a\0", top, b"a\0"), _rename(top, b"a\0", e, b"a\0", 0),
                _rename(e, b"a\0", e + 1000, b"b\0"), _rename(e, b"a\0", e, b"..\0"),
                _rename(e, b"a\0", e, b"b\0", 8), _rename(e, b"a\0", top, b"f\0", 1),
                _rename(e + 1000, b"a\0", e, b"b\0"), _unlink(e, b"a\0")):
        pair.in_c(req, [16])
    held = fds_open()
    pair.in_python(request(abi.Opcode.FORGET, abi.forget_in.pack(pair.fs.inodes.nlookup(e)),
                           nodeid=e), 0)
    assert fds_open() == held - 1


def test_names_framed_by_a_hostile_guest(pair):
    """Names as a hostile guest frames them.  In C: a name in a descriptor of its own, or
    split across two, bytes after the NUL or after fuse_in_header.len.  To the engine, which
    answers them: a name without its NUL, one that ends past fuse_in_header.len, a second
    name missing, a name longer than NAME_MAX (ENAMETOOLONG), request extensions."""
    halves = Halves(pair)
    head = abi.IN_HEADER_SIZE
    # A name split across descriptors, and in a descriptor after the header's.
    for split in (head, head + 1, head + 2):
        def split_c(req_c, req_py, split=split):
            c = pair.in_c(req_c, [16], split=split)
            assert c == pair.in_python(req_py, 16)
            assert _tree_state(pair.root / "c") == _tree_state(pair.root / "py")
            return out_header(c)[1]
        for name in (b"f", b"g"):
            reqs = [_unlink(halves.nodes[h]["top"], name + b"\0") for h in ("c", "py")]
            assert split_c(*reqs) == 0
            (pair.root / "c" / name.decode()).write_bytes(b"again")
            (pair.root / "py" / name.decode()).write_bytes(b"again")
        reqs = [_rename(halves.nodes[h]["top"], b"f\0", halves.nodes[h]["d"], b"moved\0")
                for h in ("c", "py")]
        assert split_c(*reqs) == 0
        reqs = [_rename(halves.nodes[h]["d"], b"moved\0", halves.nodes[h]["top"], b"f\0", 0)
                for h in ("c", "py")]
        assert split_c(*reqs) == 0
    # Bytes past fuse_in_header.len are not the request's: a name that ends there, or whose
    # NUL lies there, is the engine's (EINVAL); one that ends before is C's.
    length = head + 2
    assert halves.same(lambda n: _unlink(n["top"], b"f\0garbage", length=length)) == 0
    (pair.root / "c" / "f").write_bytes(b"f")
    (pair.root / "py" / "f").write_bytes(b"f")
    for body, length in ((b"f", None), (b"fifo\0", head + 4), (b"x" * 300, None)):
        for opcode in (abi.Opcode.UNLINK, abi.Opcode.RMDIR):
            got = halves.same(lambda n: _unlink(n["top"], body, opcode, length=length),
                              served="engine")
            assert got == -errno.EINVAL
    rename_head = head + abi.rename_in.size
    for name, newname, length in ((b"f\0", b"x", None), (b"f\0", b"", None), (b"f", b"", None),
                                  (b"f\0", b"x\0", rename_head + 3)):
        for flags in (None, 0):
            size = rename_head if flags is None else rename_head + 8
            got = halves.same(lambda n: _rename(n["top"], name, n["top"], newname, flags,
                                                length=length and length - rename_head + size),
                              served="engine")
            assert got == -errno.EINVAL
    # Names longer than NAME_MAX: ENAMETOOLONG from the engine (the C path reads no further).
    long = b"l" * 256 + b"\0"
    assert halves.same(lambda n: _unlink(n["top"], long), served="engine") == -errno.ENAMETOOLONG
    assert halves.same(lambda n: _rename(n["top"], long, n["top"], b"x\0"),
                       served="engine") == -errno.ENAMETOOLONG
    assert halves.same(lambda n: _rename(n["top"], b"f\0", n["top"], long),
                       served="engine") == -errno.ENAMETOOLONG
    # RENAME and RENAME2 too short for their own header.
    for opcode in (abi.Opcode.RENAME, abi.Opcode.RENAME2):
        got = halves.same(lambda n: request(opcode, b"\1\0\0", nodeid=n["top"]),
                          served="engine")
        assert got == -errno.EINVAL
    # Request extensions (total_extlen): the engine's.
    for make in (lambda n: _unlink(n["top"], b"f\0" + bytes(14)),
                 lambda n: _rename(n["top"], b"f\0", n["top"], b"h\0" + bytes(12))):
        def extended(n, make=make):
            req = bytearray(make(n))
            struct.pack_into("<H", req, 36, 1)
            return bytes(req)
        halves.same(extended, served="engine")


def test_names_on_a_read_only_share(tmp_path, io_engine):
    pair = _make_pair(tmp_path, io_engine, readonly=True)
    try:
        d = pair.lookup(b"d")
        for req in (_unlink(abi.FUSE_ROOT_ID, b"f\0"),
                    _unlink(abi.FUSE_ROOT_ID, b"d\0", abi.Opcode.RMDIR),
                    _rename(abi.FUSE_ROOT_ID, b"f\0", d, b"f\0"),
                    _rename(abi.FUSE_ROOT_ID, b"f\0", d, b"f\0", 0)):
            reply = via_engine(pair, req, [16])
            assert reply == pair.in_python(req, 16)
            assert out_header(reply)[1] == -errno.EROFS
        assert sorted(os.listdir(pair.root)) == ["d", "f", "link"]
    finally:
        pair.close()


def test_names_under_a_parent_held_by_file_handle(tmp_path, io_engine):
    """A parent held by file handle whose descriptor the cache closed is reopened by its
    handle in C, for UNLINK and for RENAME from and to it."""
    pair = _make_pair(tmp_path, io_engine, file_handles="prefer", handle_fds_max=1)
    try:
        d = pair.lookup(b"d")
        (pair.root / "d" / "a").write_bytes(b"a")
        (pair.root / "d" / "b").write_bytes(b"b")
        pair.lookup(b"f")  # takes the one cached descriptor from "d"
        assert pair.inodes.node(d)[0] == -1
        assert out_header(pair.in_c(_unlink(d, b"a\0"), [16]))[1] == 0
        assert not (pair.root / "d" / "a").exists()
        pair.lookup(b"f")
        assert pair.inodes.node(d)[0] == -1
        reply = pair.in_c(_rename(d, b"b\0", abi.FUSE_ROOT_ID, b"b\0"), [16])
        assert out_header(reply)[1] == 0 and (pair.root / "b").exists()
        pair.lookup(b"f")
        assert pair.inodes.node(d)[0] == -1
        reply = pair.in_c(_rename(abi.FUSE_ROOT_ID, b"b\0", d, b"b\0", 0), [16])
        assert out_header(reply)[1] == 0 and (pair.root / "d" / "b").exists()
        assert pair.inodes.node(d)[0] >= 0
    finally:
        pair.close()


def test_names_without_the_node_table(tmp_path, io_engine):
    """A ring without the node id table (an id-mapped share, --translate-uid): the engine
    serves every one of them."""
    root = tmp_path / "share"
    root.mkdir()
    (root / "f").write_bytes(b"f")
    (root / "d").mkdir()
    ring = Harness(reply=lambda req, out: engine.handle(req, out), inodes=None,
                   engine=io_engine)
    ring.vq.set_fast_io(True)
    try:
        fs = PassthroughFs(root, ring.handles, inodes=NodeTable(256))
        engine = FuseEngine(fs, "auto")
        assert engine.handle(request(abi.Opcode.INIT, abi.init_in.pack(7, 38, 0, 0, 0)),
                             4096)[0] == 0
        pair = type("Bare", (), {"ring": ring})()
        for req, left in ((_rename(abi.FUSE_ROOT_ID, b"f\0", abi.FUSE_ROOT_ID, b"g\0"),
                           ["d", "g"]),
                          (_rename(abi.FUSE_ROOT_ID, b"g\0", abi.FUSE_ROOT_ID, b"h\0", 0),
                           ["d", "h"]),
                          (_unlink(abi.FUSE_ROOT_ID, b"h\0"), ["d"]),
                          (_unlink(abi.FUSE_ROOT_ID, b"d\0", abi.Opcode.RMDIR), [])):
            assert out_header(via_engine(pair, req, [16]))[1] == 0
            assert sorted(os.listdir(root)) == left
    finally:
        ring.close()


def test_check_name_is_one_rule():
    """The file system's check_name is the C rule the hot path applies."""
    from fastvfs.fs import _tables
    from fastvfs.fs.passthrough import check_name
    for name, err in ((b"", errno.EINVAL), (b".", errno.EINVAL), (b"..", errno.EINVAL),
                      (b"a/b", errno.EINVAL), (b"/", errno.EINVAL), (b"a\0b", errno.EINVAL),
                      (b"x" * 256, errno.ENAMETOOLONG), (b"/" * 256, errno.EINVAL),
                      (b"." * 256, errno.ENAMETOOLONG), (b"...", None), (b".a", None),
                      (b"x" * 255, None), (b"\xff\xfe", None)):
        for check in (check_name, _tables.check_name_of):
            if err is None:
                check(name)
            else:
                with pytest.raises(OSError) as exc:
                    check(name)
                assert exc.value.errno == err, name
    assert check_name(b"ok") == b"ok"


NAME_PIECES = [b"f", b"g", b"d", b"e", b"full", b"x", b"link", b"fifo", b".", b"..", b"/",
               b"\0", b"n" * 255, b"l" * 200]


def test_names_in_any_framing(tmp_path):
    """Requests made of pieces of names, NULs and slashes, cut short by fuse_in_header.len
    and split across two descriptors anywhere: whichever path serves each, the reply and the
    trees are the engine's."""
    from hypothesis import given, settings, strategies as st

    pair = _make_pair(tmp_path, "sync")
    halves = Halves(pair)

    @settings(max_examples=120, deadline=None, database=None)
    @given(opcode=st.sampled_from([abi.Opcode.UNLINK, abi.Opcode.RMDIR, abi.Opcode.RENAME,
                                   abi.Opcode.RENAME2]),
           names=st.lists(st.sampled_from(NAME_PIECES), max_size=6).map(b"".join),
           parent=st.sampled_from(["top", "d", "f"]),
           newdir=st.sampled_from(["top", "d", "f", "fifo"]),
           flags=st.sampled_from([0, 1, 2, 3, 4, 8, 1 << 31]),
           cut=st.integers(0, 12), split=st.integers(0, 600))
    def run(opcode, names, parent, newdir, flags, cut, split):
        halves.reset()

        def make(nodes):
            body = names
            if opcode == abi.Opcode.RENAME:
                body = abi.rename_in.pack(nodes[newdir]) + names
            elif opcode == abi.Opcode.RENAME2:
                body = abi.rename2_in.pack(nodes[newdir], flags, 0) + names
            full = abi.IN_HEADER_SIZE + len(body)
            return request(opcode, body, nodeid=nodes[parent],
                           length=max(abi.IN_HEADER_SIZE, full - cut))

        c_req, py_req = make(halves.nodes["c"]), make(halves.nodes["py"])
        pieces = [c_req[:split], c_req[split:]] if 0 < split < len(c_req) else [c_req]
        c = pair.ring.roundtrip(pieces, [16])
        c = c[:out_header(c)[0]]
        py = pair.in_python(py_req[:abi.in_header.unpack_from(py_req)[0]], 16)
        assert c == py
        assert _tree_state(pair.root / "c") == _tree_state(pair.root / "py")

    try:
        run()
    finally:
        pair.close()


# -- LOOKUP of a missing name ------------------------------------------------------------------

def _lookup(name, parent=abi.FUSE_ROOT_ID):
    return request(abi.Opcode.LOOKUP, name, nodeid=parent)


@pytest.mark.parametrize("cache", ["never", "auto", "metadata", "always"])
def test_lookup_of_a_missing_name_in_every_cache_mode(tmp_path, io_engine, cache):
    """A missing name is answered ENOENT in C, as the engine answers it in every cache mode
    (no negative entry with a timeout, no node id 0): in the root, in a subdirectory, through
    a dangling symlink's own name's sibling, a name of NAME_MAX bytes."""
    pair = _make_pair(tmp_path, io_engine, cache=cache)
    try:
        d = pair.lookup(b"d")
        os.symlink("nowhere", pair.root / "dangling")
        for parent, name in ((abi.FUSE_ROOT_ID, b"missing"), (d, b"missing"),
                             (abi.FUSE_ROOT_ID, b"dangling-not"), (d, b"x" * 255),
                             (abi.FUSE_ROOT_ID, b"f\xff\xfe")):
            req = _lookup(name + b"\0", parent)
            c = pair.in_c(req, [16, 128])
            assert c == pair.in_python(req, 144)
            assert out_header(c)[:2] == (16, -errno.ENOENT)
        assert pair.fs.inodes.table.count == 2  # nothing adopted either way
    finally:
        pair.close()


def test_lookup_names_only_the_engine_decides(pair):
    """Names the file system refuses or resolves specially, a parent that is no directory or
    is unknown, a name that runs past the request: the engine answers, whatever it says."""
    f = pair.lookup(b"f")
    cases = [(abi.FUSE_ROOT_ID, b".\0"), (abi.FUSE_ROOT_ID, b"..\0"),
             (abi.FUSE_ROOT_ID, b"a/b\0"), (abi.FUSE_ROOT_ID, b"\0"),
             (abi.FUSE_ROOT_ID, b"y" * 256 + b"\0"), (abi.FUSE_ROOT_ID, b"missing"),
             (f, b"missing\0"), (f + 1000, b"missing\0"), (2 ** 64 - 1, b"missing\0")]
    for parent, name in cases:
        req = _lookup(name, parent)
        assert via_engine(pair, req, [16, 128]) == pair.in_python(req, 144), name
    # fuse_in_header.len ends the name before its NUL: the guest's word is the request's end.
    req = bytearray(_lookup(b"missing\0"))
    struct.pack_into("<I", req, 0, len(req) - 1)
    c = via_engine(pair, bytes(req), [16, 128])
    assert c == pair.in_python(bytes(req[:-1]), 144)
    assert out_header(c)[1] == -errno.EINVAL


def test_lookup_with_the_descriptor_budget_used_up(tmp_path, io_engine):
    """The file system refuses any plain-name lookup with EMFILE once the guest's descriptor
    budget is used up, known inode or missing name: C leaves both to it."""
    pair = _make_pair(tmp_path, io_engine)
    try:
        budget = pair.fs.fds_held() + 1
    finally:
        pair.close()
    pair = _make_pair(tmp_path / "again", io_engine, fd_budget=budget)
    try:
        f = pair.lookup(b"f")
        assert pair.fs.fds_held() == budget
        for name in (b"f", b"missing"):
            reply = via_engine(pair, _lookup(name + b"\0"), [16, 128])
            assert reply == pair.in_python(_lookup(name + b"\0"), 144)
            assert out_header(reply)[1] == -errno.EMFILE
        assert pair.fs.inodes.nlookup(f) == 1
    finally:
        pair.close()


# -- GETXATTR and LISTXATTR ----------------------------------------------------------------------

def _getxattr(nodeid, name, size, extra=b"\0"):
    return request(abi.Opcode.GETXATTR, abi.getxattr_in.pack(size, 0) + name + extra,
                   nodeid=nodeid)


def _listxattr(nodeid, size):
    return request(abi.Opcode.LISTXATTR, abi.getxattr_in.pack(size, 0), nodeid=nodeid)


def framed(pair, req, out_lens):
    """The engine's reply as the ring frames it into writable buffers of ``out_lens``: a
    payload that does not fit becomes ERANGE (reply.pxi, write_reply)."""
    room = sum(out_lens)
    error, payload = pair.engine.handle(req, max(room - abi.OUT_HEADER_SIZE, 0))
    payload = bytes(payload) if error == 0 else b""
    if abi.OUT_HEADER_SIZE + len(payload) > room:
        error, payload = -errno.ERANGE, b""
    unique = abi.in_header.unpack_from(req)[2]
    return abi.out_header.pack(abi.OUT_HEADER_SIZE + len(payload), error, unique) + payload


# A POSIX access ACL (user::rw-, group::r--, other::r--) as the kernel stores it, and a file
# capability (VFS_CAP_REVISION_2, cap_net_bind_service permitted).
ACL = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, 0xFFFFFFFF)
                                      for tag, perm in ((1, 6), (4, 4), (0x20, 4)))
CAPABILITY = struct.pack("<IIIII", 0x02000000, 1 << 10, 0, 0, 0)

# Sizes the guest asks for, and the writable buffers it gives (the reply's room).
XATTR_SIZES = [(0, [16, 8]), (0, [16, 4]), (1, [16, 4096]), (5, [16, 4096]),
               (4096, [16, 4096]), (4096, [16, 3]), (2 ** 32 - 1, [16, 64]),
               (2 ** 32 - 1, [16, 65536])]


def _xattr_tree(root):
    """Nodes of every kind with attributes of every kind the host keeps: user.*, trusted.*
    (on a symlink too), a POSIX ACL, security.capability, an empty value, a long name."""
    f = root / "f"
    os.setxattr(f, "user.small", b"hello")
    os.setxattr(f, "user.empty", b"")
    os.setxattr(f, "user." + "n" * 250, b"long name")
    os.setxattr(f, "user.bin", bytes(range(256)) * 3)
    os.setxattr(f, "trusted.t", b"trusted value")
    os.setxattr(f, "system.posix_acl_access", ACL)
    os.setxattr(f, "security.capability", CAPABILITY)
    os.setxattr(root / "d", "user.dir", b"of a directory")
    os.setxattr(root / "link", "trusted.link", b"the link's own", follow_symlinks=False)
    os.mkfifo(root / "fifo")
    os.setxattr(root / "fifo", "trusted.fifo", b"of a fifo")
    os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(root / "sock", stat.S_IFSOCK | 0o666)
    (root / "plain").write_bytes(b"")
    return [b"f", b"d", b"link", b"fifo", b"null", b"sock", b"plain"]


XATTR_NAMES = [b"user.small", b"user.empty", b"user." + b"n" * 250, b"user.bin", b"trusted.t",
               b"system.posix_acl_access", b"security.capability", b"user.dir",
               b"trusted.link", b"trusted.fifo", b"user.missing", b"trusted.missing",
               b"security.missing", b"system.posix_acl_default", b"nonsense.prefix",
               b"user.", b"x" * 255]


@pytest.fixture
def xpair(tmp_path, io_engine):
    root = tmp_path / "share"
    root.mkdir()
    (root / "f").write_bytes(CONTENT)
    (root / "d").mkdir()
    os.symlink("f", root / "link")
    names = _xattr_tree(root)
    p = Pair(root, io_engine, xattr=True)
    p.names = names
    yield p
    p.close()


def test_getxattr(xpair):
    """Every attribute of every kind of node (a symlink's and a FIFO's own, a device's and a
    socket's without opening them), hits and misses, every size the guest may ask for with
    every reply room: the same reply in C as from the engine."""
    nodes = [abi.FUSE_ROOT_ID] + [xpair.lookup(n) for n in xpair.names]
    for nodeid in nodes:
        for name in XATTR_NAMES:
            for size, out_lens in XATTR_SIZES:
                req = _getxattr(nodeid, name, size)
                assert xpair.in_c(req, out_lens) == framed(xpair, req, out_lens), \
                    (nodeid, name, size, out_lens)
    f = xpair.lookup(b"f")
    reply = xpair.in_c(_getxattr(f, b"user.small", 64), [16, 64])
    assert out_header(reply)[:2] == (21, 0) and reply[16:] == b"hello"
    reply = xpair.in_c(_getxattr(f, b"user.small", 0), [16, 8])
    assert abi.getxattr_out.unpack_from(reply, 16) == (5, 0)
    assert out_header(xpair.in_c(_getxattr(f, b"user.small", 4), [16, 64]))[1] == -errno.ERANGE
    assert out_header(xpair.in_c(_getxattr(f, b"user.missing", 64), [16, 64]))[1] == \
        -errno.ENODATA


def test_listxattr(xpair):
    nodes = [abi.FUSE_ROOT_ID] + [xpair.lookup(n) for n in xpair.names]
    for nodeid in nodes:
        for size, out_lens in XATTR_SIZES:
            req = _listxattr(nodeid, size)
            assert xpair.in_c(req, out_lens) == framed(xpair, req, out_lens), \
                (nodeid, size, out_lens)
    reply = xpair.in_c(_listxattr(xpair.lookup(b"f"), 4096), [16, 4096])
    assert sorted(reply[16:].split(b"\0")[:-1]) == sorted(
        os.fsencode(n) for n in os.listxattr(xpair.root / "f"))
    reply = xpair.in_c(_listxattr(xpair.lookup(b"plain"), 0), [16, 8])
    assert abi.getxattr_out.unpack_from(reply, 16) == (0, 0)


def test_xattrs_of_stale_and_forged_node_ids(xpair):
    f = xpair.lookup(b"f")
    xpair.in_python(request(abi.Opcode.FORGET, abi.forget_in.pack(1), nodeid=f), 0)
    for nodeid in (f, f + 1000, f + (1 << 32), 0, 2 ** 63, 2 ** 64 - 1):
        for req in (_getxattr(nodeid, b"user.small", 64), _getxattr(nodeid, b"", 64),
                    _listxattr(nodeid, 64), _listxattr(nodeid, 0)):
            c = xpair.in_c(req, [16, 64])
            assert c == framed(xpair, req, [16, 64])
            assert out_header(c)[1] == -errno.ENOENT


def test_getxattr_hostile_names(xpair):
    """The name is the guest's word: it must end within the request (fuse_in_header.len, not
    the buffers), be 1 to 255 bytes; C answers what it can decide (an empty name: EINVAL
    after the node is found; no NUL at all: EINVAL), the engine the rest (a longer name)."""
    f = xpair.lookup(b"f")
    for name, extra, err in ((b"", b"\0", errno.EINVAL), (b"user.small", b"", errno.EINVAL),
                             (b"user.smal", b"l", errno.EINVAL), (b"x" * 255, b"", errno.EINVAL),
                             (b"user.small", b"\0garbage\0", 0)):
        req = _getxattr(f, name, 64, extra)
        c = xpair.in_c(req, [16, 64])
        assert c == framed(xpair, req, [16, 64])
        assert out_header(c)[1] == -err
    for name, extra in ((b"y" * 256, b"\0"), (b"y" * 300, b""), (b"y" * 4000, b"\0")):
        req = _getxattr(f, name, 64, extra)
        assert via_engine(xpair, req, [16, 64]) == framed(xpair, req, [16, 64])
    # fuse_in_header.len ends before the name's NUL, which the buffer holds: EINVAL both ways.
    req = bytearray(_getxattr(f, b"user.small", 64))
    struct.pack_into("<I", req, 0, len(req) - 1)
    c = xpair.in_c(bytes(req), [16, 64])
    assert c == framed(xpair, bytes(req[:-1]), [16, 64])
    assert out_header(c)[1] == -errno.EINVAL
    # A request too short for fuse_getxattr_in is the engine's.
    req = bytearray(request(abi.Opcode.GETXATTR, b"\0\0\0", nodeid=f))
    assert out_header(via_engine(xpair, bytes(req), [16, 64]))[1] == -errno.EINVAL


def test_xattrs_declined_to_the_engine(tmp_path, io_engine):
    """Extended attributes off (ENOSYS), renamed by --xattrmap, request extensions: the engine
    answers.  Descriptors named through a /proc descriptor (the chroot sandbox): C, with its
    thread's own working directory moved there for the call and back to / after."""
    for options in ({}, {"xattrmap": XattrMap(":prefix:all:user.:user.g.::ok:all:::")}):
        pair = _make_pair(tmp_path / str(len(options)), io_engine, **options)
        try:
            f = pair.lookup(b"f")
            os.setxattr(pair.root / "f", "user.g.user.a", b"mapped")
            for req in (_getxattr(f, b"user.a", 64), _listxattr(f, 64)):
                reply = via_engine(pair, req, [16, 64])
                assert reply == framed(pair, req, [16, 64])
                assert out_header(reply)[1] == (0 if options else -errno.ENOSYS)
        finally:
            pair.close()
    root = tmp_path / "x"
    root.mkdir()
    (root / "f").write_bytes(b"")
    os.setxattr(root / "f", "user.a", b"1")
    pair = Pair(root, io_engine, xattr=True)
    try:
        f = pair.lookup(b"f")
        ext = bytearray(_getxattr(f, b"user.a", 64))
        struct.pack_into("<H", ext, 36, 1)  # fuse_in_header.total_extlen
        via_engine(pair, bytes(ext), [16, 64])
        proc = os.open("/proc/self/fd", os.O_PATH | os.O_DIRECTORY)
        try:
            _tables.set_open_policy(pair.ring.handles, pair.fs.open_flags_allowed, False,
                                    pair.fs.fd_budget, proc, "")
            cwd = os.getcwd()
            for req in (_getxattr(f, b"user.a", 64), _listxattr(f, 64), _getxattr(f, b"no", 64),
                        _getxattr(f + 1000, b"user.a", 64)):
                assert pair.in_c(req, [16, 64]) == framed(pair, req, [16, 64])
            assert out_header(pair.in_c(_getxattr(f, b"user.a", 64), [16, 64]))[:2] == (17, 0)
            assert os.getcwd() == cwd   # the worker moved its own working directory only
            worker = pair.ring.thread.native_id
            assert os.readlink(f"/proc/self/task/{worker}/cwd") == "/"
        finally:
            os.close(proc)
    finally:
        pair.close()


# -- SETXATTR and REMOVEXATTR --------------------------------------------------------------------

XATTR_CREATE, XATTR_REPLACE = 1, 2


def _setxattr(nodeid, name, value, flags=0, size=None, extra=b"\0"):
    return request(abi.Opcode.SETXATTR,
                   abi.setxattr_in.pack(len(value) if size is None else size, flags) + name +
                   extra + value, nodeid=nodeid)


def _removexattr(nodeid, name, extra=b"\0"):
    return request(abi.Opcode.REMOVEXATTR, name + extra, nodeid=nodeid)


def _xattrs_of(path):
    return {n: os.getxattr(path, n, follow_symlinks=False)
            for n in os.listxattr(path, follow_symlinks=False)}


def _twins(root, kinds=("file", "dir", "link", "fifo", "null")):
    """Pairs of identical nodes of each kind (same attributes, same mode): one for C, one for
    the engine, so that each request's host effect can be compared."""
    twins = []
    for kind in kinds:
        pair = []
        for side in ("c", "py"):
            path = root / f"{kind}-{side}"
            if kind == "file":
                path.write_bytes(b"x")
                os.chmod(path, 0o2775)
            elif kind == "dir":
                path.mkdir()
            elif kind == "link":
                os.symlink("target", path)
            elif kind == "fifo":
                os.mkfifo(path)
            else:
                os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
            os.setxattr(path, "trusted.old", b"old", follow_symlinks=False)
            pair.append(path)
        twins.append(pair)
    return twins


SETXATTR_CASES = [
    (b"user.new", b"value", 0), (b"user.new", b"again", XATTR_CREATE),
    (b"user.new", b"replaced", XATTR_REPLACE), (b"user.none", b"v", XATTR_REPLACE),
    (b"trusted.old", b"", 0), (b"trusted.old", b"x", XATTR_CREATE),
    (b"trusted.big", bytes(range(256)) * 16, 0), (b"trusted.t", b"v", 4),
    (b"trusted.t", b"v", XATTR_CREATE | XATTR_REPLACE), (b"", b"v", 0),
    (b"security.capability", CAPABILITY, 0), (b"security.capability", b"bad", 0),
    (b"system.posix_acl_access", ACL, 0), (b"system.posix_acl_access", b"junk", 0),
    (b"nonsense.prefix", b"v", 0), (b"user." + b"n" * 250, b"long", 0), (b"x" * 255, b"v", 0),
]


def test_setxattr_and_removexattr(tmp_path, io_engine):
    """Every kind of node (a symlink's, a FIFO's and a device's own attributes, set without
    opening them), every flag, names the host refuses, ACLs that change the mode: the same
    reply in C as from the engine, and the same attributes and mode after."""
    root = tmp_path / "share"
    root.mkdir()
    twins = _twins(root)
    pair = Pair(root, io_engine, xattr=True)
    try:
        for c_path, py_path in twins:
            c, py = pair.lookup(os.fsencode(c_path.name)), pair.lookup(os.fsencode(py_path.name))
            for name, value, flags in SETXATTR_CASES:
                reply = pair.in_c(_setxattr(c, name, value, flags), [16])
                assert reply == pair.in_python(_setxattr(py, name, value, flags), 16), \
                    (c_path.name, name, flags)
                assert _xattrs_of(c_path) == _xattrs_of(py_path), (c_path.name, name)
                assert os.lstat(c_path).st_mode == os.lstat(py_path).st_mode
            for name in (b"user.new", b"trusted.old", b"trusted.old", b"user.missing", b"",
                         b"system.posix_acl_access", b"nonsense.prefix"):
                reply = pair.in_c(_removexattr(c, name), [16])
                assert reply == pair.in_python(_removexattr(py, name), 16), (c_path.name, name)
                assert _xattrs_of(c_path) == _xattrs_of(py_path), (c_path.name, name)
        f = pair.lookup(b"file-c")
        assert out_header(pair.in_c(_setxattr(f, b"user.a", b"1"), [16]))[:2] == (16, 0)
        assert os.getxattr(root / "file-c", "user.a") == b"1"
        assert out_header(pair.in_c(_removexattr(f, b"user.a"), [16]))[:2] == (16, 0)
        assert "user.a" not in os.listxattr(root / "file-c")
    finally:
        pair.close()


def test_setxattr_hostile_requests(tmp_path, io_engine):
    """The name must end (NUL) within the request and the value fit in what is left of it:
    EINVAL both ways otherwise; node ids the table does not know: ENOENT; a value larger than
    the hot path reads (which ext4 refuses too) and a name longer than XATTR_NAME_MAX are the
    engine's."""
    root = tmp_path / "share"
    root.mkdir()
    (root / "f").write_bytes(b"")
    (root / "g").write_bytes(b"")
    pair = Pair(root, io_engine, xattr=True)
    try:
        f, g = pair.lookup(b"f"), pair.lookup(b"g")
        for make in (lambda n: _setxattr(n, b"user.a", b"12345", size=6),  # value cut short
                     lambda n: _setxattr(n, b"user.a", b"", size=2 ** 32 - 1),
                     lambda n: _setxattr(n, b"user.a", b"", extra=b""),   # no NUL at all
                     lambda n: _removexattr(n, b"user.a", extra=b""),
                     lambda n: _setxattr(n + 1000, b"user.a", b"v"),
                     lambda n: _removexattr(n + 1000, b"user.a"),
                     lambda n: _setxattr(2 ** 64 - 1, b"user.a", b"v", flags=4),  # flags first
                     lambda n: _setxattr(n, b"user.a", b"v", size=0),     # the rest: ignored
                     lambda n: _setxattr(n, b"user.b", b"v"),
                     lambda n: _removexattr(n, b"user.b", extra=b"\0junk\0")):
            assert pair.in_c(make(f), [16]) == pair.in_python(make(g), 16)
            assert _xattrs_of(root / "f") == _xattrs_of(root / "g")
        assert os.getxattr(root / "f", "user.a") == b""
        for req in (_setxattr(f, b"trusted.big", b"v" * 5000), _setxattr(f, b"y" * 256, b"v"),
                    _removexattr(f, b"y" * 300),
                    request(abi.Opcode.SETXATTR, b"\0\0\0", nodeid=f)):
            assert via_engine(pair, req, [16]) == pair.in_python(req, 16)
    finally:
        pair.close()


def test_setxattr_declined_to_the_engine(tmp_path, io_engine):
    """Extended attributes off (ENOSYS), renamed by --xattrmap, a session that may frame
    SETXATTR as FUSE_SETXATTR_EXT (POSIX ACLs), request extensions, a read-only share
    (EROFS): the engine answers."""
    for i, options in enumerate(({}, {"xattrmap": XattrMap(":prefix:all:user.:user.g.::ok:all:::")},
                                 {"xattr": True, "posix_acl": True},
                                 {"xattr": True, "readonly": True})):
        pair = _make_pair(tmp_path / str(i), io_engine, **options)
        try:
            f = pair.lookup(b"f")
            for req in (_setxattr(f, b"user.a", b"1"), _removexattr(f, b"user.a")):
                via_engine(pair, req, [16])
        finally:
            pair.close()
    pair = _make_pair(tmp_path / "ext", io_engine, xattr=True)
    try:
        f = pair.lookup(b"f")
        for req in (_setxattr(f, b"user.a", b"1"), _removexattr(f, b"user.a")):
            ext = bytearray(req)
            struct.pack_into("<H", ext, 36, 1)  # fuse_in_header.total_extlen
            via_engine(pair, bytes(ext), [16])
    finally:
        pair.close()


def test_xattrs_of_a_node_held_by_file_handle(tmp_path, io_engine):
    """A node held by file handle whose descriptor is not cached is reopened by its handle in
    C, which answers as the engine does."""
    root = tmp_path / "share"
    root.mkdir()
    for name in ("f", "g"):
        (root / name).write_bytes(b"")
        os.setxattr(root / name, "user.a", name.encode())
    pair = Pair(root, io_engine, xattr=True, file_handles="prefer", handle_fds_max=1)
    try:
        f, g = pair.lookup(b"f"), pair.lookup(b"g")    # g's descriptor evicts f's
        # Each reopening evicts the other node's descriptor.
        for node, req in ((f, _getxattr(f, b"user.a", 64)), (g, _listxattr(g, 64)),
                          (f, _listxattr(f, 64)), (g, _getxattr(g, b"user.a", 64))):
            assert pair.inodes.node(node)[0] == -1
            assert pair.in_c(req, [16, 64]) == framed(pair, req, [16, 64])
        assert out_header(pair.in_c(_getxattr(g, b"user.a", 64), [16, 64]))[:2] == (17, 0)
    finally:
        pair.close()


def test_xattrs_beyond_the_stack_buffer(tmp_path, io_engine):
    """A value or a name list beyond what C reads on its stack (4 KiB) is the engine's, which
    reads up to the host's 64 KiB; tmpfs keeps such attributes where ext4's block cannot."""
    root = tmp_path / "share"
    root.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(root)]).returncode:
        pytest.skip("cannot mount a tmpfs")
    try:
        (root / "f").write_bytes(b"")
        (root / "g").write_bytes(b"")
        try:
            os.setxattr(root / "f", "user.big", b"v" * 20000)
            for i in range(80):
                os.setxattr(root / "g", "user.%03d" % i + "m" * 60, b"")
        except OSError:
            pytest.skip("no user attributes on tmpfs")
        pair = Pair(root, io_engine, xattr=True)
        try:
            f, g = pair.lookup(b"f"), pair.lookup(b"g")
            for req, out_lens in ((_getxattr(f, b"user.big", 20000), [16, 20000]),
                                  (_getxattr(f, b"user.big", 0), [16, 8]),
                                  (_getxattr(f, b"user.big", 100), [16, 100]),
                                  (_listxattr(g, 8192), [16, 8192]),
                                  (_listxattr(g, 0), [16, 8])):
                assert via_engine(pair, req, out_lens) == framed(pair, req, out_lens)
            for req in (_getxattr(g, b"user.000" + b"m" * 60, 64), _listxattr(f, 64)):
                assert pair.in_c(req, [16, 64]) == framed(pair, req, [16, 64])
        finally:
            pair.close()
    finally:
        subprocess.run(["umount", "-l", str(root)])  # the file system keeps its root open


# -- directories: OPENDIR, READDIR, READDIRPLUS, RELEASEDIR ----------------------------------

def _done(pair):
    """Close the ring and drop the nodes and handles (hundreds of descriptors here)."""
    pair.close()
    pair.fs.destroy()
    gc.collect()   # and the cycles holding the rest, before another test counts descriptors


def _opendir(nodeid):
    return request(abi.Opcode.OPENDIR, abi.open_in.pack(os.O_RDONLY | os.O_DIRECTORY, 0),
                   nodeid=nodeid)


def _readdir(fh, offset, size, nodeid, plus=False):
    return request(abi.Opcode.READDIRPLUS if plus else abi.Opcode.READDIR,
                   abi.read_in.pack(fh, offset, size, 0, 0, 0, 0), nodeid=nodeid)


def _releasedir(fh, nodeid=abi.FUSE_ROOT_ID):
    return request(abi.Opcode.RELEASEDIR, abi.release_in.pack(fh, 0, 0, 0), nodeid=nodeid)


def _dir_tree(root):
    (root / "big").mkdir()
    for i in range(150):   # several 4 KiB replies
        (root / "big" / f"{i:04d}-{'n' * (i % 50)}").write_bytes(b"")
    os.mkfifo(root / "big" / "fifo")
    os.symlink("x", root / "big" / "sym")
    (root / "big" / "sub").mkdir()


def _cookies(reply, plus):
    """The offset cookies of a READDIR(PLUS) reply's entries."""
    out, pos = [], 16
    skip = abi.ENTRY_OUT_SIZE if plus else 0
    while pos < len(reply):
        _, off, namelen, _ = abi.dirent_head.unpack_from(reply, pos + skip)
        out.append(off)
        pos += skip + abi.rec_align(24 + namelen)
    return out


class DirPair:
    """Two directory handles of one directory, one opened in C and one by the engine: each
    READDIR(PLUS) goes to C on the first and to the engine on the second, and the replies must
    be the same bytes (and, for READDIRPLUS, count the same lookups)."""

    def __init__(self, pair, nodeid):
        self.pair, self.nodeid = pair, nodeid
        self.c = abi.open_out.unpack_from(pair.in_c(_opendir(nodeid), [16, 16]), 16)[0]
        self.py = abi.open_out.unpack_from(pair.in_python(_opendir(nodeid), 32), 16)[0]

    def same(self, offset, size, plus=False, nodeid=None, out=None):
        nodeid = self.nodeid if nodeid is None else nodeid
        out = size + 24 if out is None else out   # room beyond the size asked
        nodes = self.pair.fs.inodes
        before = nodes.table.count
        py = self.pair.in_python(_readdir(self.py, offset, size, nodeid, plus), out - 16)
        counts = {n: nodes.nlookup(n) for n in _entry_nodes(py)} if plus else {}
        c = self.pair.in_c(_readdir(self.c, offset, size, nodeid, plus), [16, out - 16])
        assert c == py, (offset, size, plus)
        assert before == nodes.table.count
        # One lookup counted per entry in C as in the engine.
        assert {n: nodes.nlookup(n) - 1 for n in counts} == counts
        return c

    def page(self, size, plus=False):
        """Every entry, paged through from offset 0 by cookie: the replies."""
        replies, offset = [], 0
        while True:
            reply = self.same(offset, size, plus)
            if len(reply) == 16:
                return replies
            replies.append(reply)
            offset = _cookies(reply, plus)[-1]

    def release(self):
        for fh in (self.c, self.py):
            assert self.pair.in_c(_releasedir(fh, self.nodeid), [16])[4:8] == bytes(4)


def _entry_nodes(reply):
    pos, out = 16, []
    while pos < len(reply):
        (nodeid,) = struct.unpack_from("<Q", reply, pos)
        _, _, namelen, _ = abi.dirent_head.unpack_from(reply, pos + abi.ENTRY_OUT_SIZE)
        if nodeid:
            out.append(nodeid)
        pos += abi.ENTRY_OUT_SIZE + abi.rec_align(24 + namelen)
    return out


def _look_up_all(pair, nodeid, path):
    """Look every entry of ``path`` up twice (so C and the engine, counting one each, keep
    the counts even)."""
    for name in os.listdir(path):
        for _ in range(2):
            pair.lookup(os.fsencode(name), nodeid)


@pytest.mark.parametrize("cache", ["auto", "never", "metadata", "always"])
def test_opendir_and_releasedir(tmp_path, io_engine, cache):
    """OPENDIR of directories (the root too) and of what is none, stale and forged ids: the
    same reply (but for the handle's number, flags per cache mode), the same descriptor behind
    the handle, the same descriptor budget counted; RELEASEDIR of each frees it alike."""
    pair = _make_pair(tmp_path, io_engine, cache=cache)
    try:
        f, d, link = pair.lookup(b"f"), pair.lookup(b"d"), pair.lookup(b"link")
        pair.in_c(request(abi.Opcode.STATFS), [96])  # a queue's io_uring is set up at first use
        gc.collect()   # descriptors of earlier tests' objects closed now, not during the test
        held, fds = pair.fs.fds_held(), fds_open()
        for nodeid in (abi.FUSE_ROOT_ID, d, f, link, d + 1000, 2 ** 63, 0):
            c = pair.in_c(_opendir(nodeid), [16, 16])
            py = pair.in_python(_opendir(nodeid), 32)
            assert _handle_state(pair, c) == _handle_state(pair, py)
            if out_header(c)[1]:
                assert out_header(c)[1] in (-errno.ENOTDIR, -errno.ENOENT)
                continue
            assert abi.open_out.unpack_from(c, 16)[1] == CachePolicy(cache).opendir_flags
            # A directory handle counts twice against the budget, whoever opened it.
            assert pair.fs.fds_held() == held + 4
            # Listed, then closed by RELEASEDIR or by RELEASE (either frees the listing).
            for reply, close in ((c, _releasedir), (py, _release)):
                fh = abi.open_out.unpack_from(reply, 16)[0]
                pair.in_c(_readdir(fh, 0, 4096, nodeid), [4096])
                assert pair.fs.handles.listing_bytes > 0
                assert pair.in_c(close(fh, nodeid), [16]) == out_header_bytes(0, 7)
                # Released: the second time is EBADF both ways.
                assert pair.in_c(close(fh, nodeid), [16]) == \
                    pair.in_python(close(fh, nodeid), 16)
            assert pair.fs.handles.listing_bytes == 0
            assert pair.fs.fds_held() == held and fds_open() == fds
        # A file handle is released by RELEASEDIR too, as the engine does; a forged one is
        # EBADF both ways.
        for fh in (pair.open(f), pair.open(f)):
            assert pair.in_c(_releasedir(fh), [16]) == out_header_bytes(0, 7)
        for fh in (0, 1 << 40, 2 ** 64 - 1):
            reply = pair.in_c(_releasedir(fh), [16])
            assert reply == pair.in_python(_releasedir(fh), 16)
            assert out_header(reply)[1] == -errno.EBADF
        assert pair.fs.fds_held() == held and fds_open() == fds
    finally:
        _done(pair)


def out_header_bytes(error, unique):
    return abi.out_header.pack(16, error, unique)


@pytest.mark.parametrize("plus", [False, True], ids=["readdir", "readdirplus"])
def test_readdir_pages(tmp_path, io_engine, plus):
    """Small and large directories (one reply, several), page sizes down to nothing, offsets
    from the middle, past the end and on a fresh handle, a rewind, a reply buffer smaller than
    the size asked: the same bytes from C and from the engine."""
    pair = _make_pair(tmp_path, io_engine)
    try:
        _dir_tree(pair.root)
        for name in (b"d", b"big"):
            nodeid = pair.lookup(name)
            _look_up_all(pair, nodeid, pair.root / os.fsdecode(name))
            dirs = DirPair(pair, nodeid)
            replies = dirs.page(4096, plus)
            assert len(replies) == (1 if name == b"d" else len(replies))
            if name == b"big":
                assert len(replies) > 2
            count = sum(len(_cookies(r, plus)) for r in replies)
            assert count == len(os.listdir(pair.root / os.fsdecode(name))) + 2
            # "." and "..": the directory's and its parent's inode numbers on the host.
            skip = abi.ENTRY_OUT_SIZE if plus else 0
            dot = abi.dirent_head.unpack_from(replies[0], 16 + skip)
            dotdot = abi.dirent_head.unpack_from(replies[0], 16 + 2 * skip + 32)
            assert (dot[0], dot[1], dotdot[0], dotdot[1]) == (
                os.stat(pair.root / os.fsdecode(name)).st_ino, 1, os.stat(pair.root).st_ino, 2)
            for size in (0, 1, 23, 24, 32, 100, 151, 500):
                for offset in (0, 1, 2, 7, count - 1, count, count + 5, 2 ** 63):
                    dirs.same(offset, size, plus)
            # All at once into a large buffer; the reply buffers bound the size as the
            # guest's size does.
            assert len(_cookies(dirs.same(0, 1 << 20, plus), plus)) == count
            dirs.same(0, 4096, plus, out=16 + 200)
            dirs.same(3, 4096, plus, out=16 + 1000)
            # A rewind, then from the middle again.
            assert dirs.same(0, 4096, plus) == replies[0]
            dirs.same(count // 2, 4096, plus)
            dirs.release()
            # From the middle on a fresh handle (no listing yet): a fresh listing.
            dirs = DirPair(pair, nodeid)
            dirs.same(count // 2, 4096, plus)
            dirs.release()
        # The root's ".." is the root itself: nothing above the share is shown.
        root = DirPair(pair, abi.FUSE_ROOT_ID)
        if plus:
            _look_up_all(pair, abi.FUSE_ROOT_ID, pair.root)
        reply = root.same(0, 4096, plus)
        skip = abi.ENTRY_OUT_SIZE if plus else 0
        inos = (abi.dirent_head.unpack_from(reply, 16 + skip)[0],
                abi.dirent_head.unpack_from(reply, 16 + 2 * skip + 32)[0])
        assert inos == (os.stat(pair.root).st_ino,) * 2
        root.release()
    finally:
        _done(pair)


@pytest.mark.parametrize("plus", [False, True], ids=["readdir", "readdirplus"])
def test_readdir_while_entries_change(tmp_path, io_engine, plus):
    """Entries added and removed between calls: paging on goes through the listing taken at
    offset 0 (an entry removed since is left out of READDIRPLUS), a rewind takes a fresh one;
    the same bytes both ways."""
    pair = _make_pair(tmp_path, io_engine)
    try:
        _dir_tree(pair.root)
        big = pair.lookup(b"big")
        _look_up_all(pair, big, pair.root / "big")
        dirs = DirPair(pair, big)
        first = dirs.same(0, 2048, plus)
        offset = _cookies(first, plus)[-1]
        for i in range(20):
            os.unlink(pair.root / "big" / f"{i * 7:04d}-{'n' * (i * 7 % 50)}")
        (pair.root / "big" / "new").write_bytes(b"")
        rest = dirs.same(offset, 65536, plus)
        assert b"new" not in rest
        if plus:
            _look_up_all(pair, big, pair.root / "big")   # else the engine's to look up
        again = dirs.same(0, 65536, plus)
        assert b"new" in again
        dirs.release()
    finally:
        _done(pair)


def test_readdir_of_stale_handles_file_handles_and_nodes(pair):
    """A released or forged handle, a file's handle: EBADF both ways; a directory handle read
    for an unknown node: ENOENT at offset 0, the listing held past it (READDIRPLUS then needs
    lookups under that node, the engine's)."""
    d = pair.lookup(b"d")
    _look_up_all(pair, d, pair.root / "d")
    f = pair.lookup(b"f")
    dirs = DirPair(pair, d)
    gone = DirPair(pair, d)
    gone.release()
    fh = pair.open(f)
    for plus in (False, True):
        for c_fh, py_fh in ((gone.c, gone.py), (fh, fh), (0, 0), (1 << 40, 1 << 40),
                            (dirs.c + (1 << 32), dirs.py + (1 << 32))):
            for offset in (0, 3):
                req = _readdir(c_fh, offset, 4096, d, plus)
                c = pair.in_c(req, [4096])
                assert c == pair.in_python(_readdir(py_fh, offset, 4096, d, plus), 4080)
                assert out_header(c)[1] == -errno.EBADF
        for nodeid in (d + 1000, 2 ** 63):
            assert out_header(dirs.same(0, 4096, plus, nodeid=nodeid))[1] == -errno.ENOENT
        dirs.same(0, 4096, plus)
        if not plus:
            dirs.same(3, 4096, plus, nodeid=d + 1000)
        else:
            # Each entry's lookup under an unknown parent fails: the engine's to leave out.
            req = _readdir(dirs.c, 3, 4096, d + 1000, plus)
            assert via_engine(pair, req, [4096]) == pair.in_python(req, 4080)
    dirs.release()
    assert pair.ring.handles.count == 1


def test_readdirplus_of_new_inodes_in_c(tmp_path, io_engine):
    """Entries whose inodes the node id table does not hold are entered in C as LOOKUP enters
    them: each counted once, the same bytes the engine then sends for the same listing (which
    finds them known)."""
    pair = _make_pair(tmp_path, io_engine)
    try:
        d = pair.lookup(b"d")
        for i in range(10):
            (pair.root / "d" / f"e{i}").write_bytes(b"")
        (pair.root / "d" / "sub").mkdir()
        os.symlink("e0", pair.root / "d" / "ln")
        known = {pair.lookup(b"e%d" % i, d) for i in range(0, 10, 2)}
        dirs = DirPair(pair, d)
        before = pair.fs.inodes.table.count
        c = pair.in_c(_readdir(dirs.c, 0, 4096, d, True), [16, 4096])
        nodes = _entry_nodes(c)
        assert len(nodes) == 12 and pair.fs.inodes.table.count == before + 7
        assert {n: pair.fs.inodes.nlookup(n) for n in nodes} == {
            n: 2 if n in known else 1 for n in nodes}
        py = pair.in_python(_readdir(dirs.py, 0, 4096, d, True), 4096)
        assert c == py and pair.fs.inodes.table.count == before + 7
        # Each new entry is what LOOKUP answers, counted once more there.
        for n in nodes:
            assert pair.fs.inodes.nlookup(n) == (3 if n in known else 2)
        dirs.release()
    finally:
        _done(pair)


def test_readdirplus_with_the_descriptor_budget_used_up(tmp_path, io_engine):
    """An entry whose lookup fails otherwise than by its removal (EMFILE: the descriptor budget
    used up) is never left out of READDIRPLUS: the reply ends before it, and a READDIRPLUS from
    it answers the error, in C (entering the new inodes the budget allows) as in the engine;
    once the budget allows, the listing goes on from there."""
    def setup(root, budget=None):
        pair = _make_pair(root, io_engine, **({"fd_budget": budget} if budget else {}))
        d = pair.lookup(b"d")
        for i in range(6):
            (pair.root / "d" / f"e{i}").write_bytes(b"")
        return pair, d, DirPair(pair, d)

    pair, _, _ = setup(tmp_path)
    try:
        held = pair.fs.fds_held()
    finally:
        pair.close()
    pair, d, dirs = setup(tmp_path / "again", held + 3)
    try:
        assert pair.fs.fds_held() == held
        size = 4096
        c = pair.in_c(_readdir(dirs.c, 0, size, d, True), [16, size])
        nodes = _entry_nodes(c)
        # ".", ".." (no node) and the three new inodes the budget holds, each counted once.
        assert len(_cookies(c, True)) == 5 and len(nodes) == 3
        assert pair.fs.fds_held() == held + 3
        assert all(pair.fs.inodes.nlookup(n) == 1 for n in nodes)
        cookie = _cookies(c, True)[-1]
        for ask in ("in_c", "in_python"):
            fh = dirs.c if ask == "in_c" else dirs.py
            reply = (pair.in_c(_readdir(fh, cookie, size, d, True), [16, size])
                     if ask == "in_c" else
                     pair.in_python(_readdir(fh, cookie, size, d, True), size))
            assert out_header(reply)[1] == -errno.EMFILE, ask
        # The engine from offset 0: the same entries (known now), counted once more, then
        # the same end.
        py = pair.in_python(_readdir(dirs.py, 0, size, d, True), size)
        assert py == c
        assert all(pair.fs.inodes.nlookup(n) == 2 for n in nodes)
        # With room in the budget again (the guest forgets one), the rest follows.
        gone = nodes[0]
        pair.in_python(request(abi.Opcode.FORGET, abi.forget_in.pack(2), nodeid=gone), 0)
        rest = pair.in_c(_readdir(dirs.c, cookie, size, d, True), [16, size])
        assert len(_entry_nodes(rest)) == 1
    finally:
        _done(pair)


def test_readdirplus_enters_new_inodes_by_file_handle(tmp_path, io_engine):
    """Where inodes may be held by file handle, READDIRPLUS in C enters the inodes the node id
    table does not hold by their handles, one lookup each, under the node ids the engine's
    LOOKUP then finds; the known ones are counted once more; once all are known C answers as
    the engine does."""
    pair = _make_pair(tmp_path, io_engine, file_handles="prefer")
    try:
        d = pair.lookup(b"d")
        for i in range(10):
            (pair.root / "d" / f"e{i}").write_bytes(b"")
        known = {pair.lookup(b"e%d" % i, d) for i in range(0, 10, 2)}
        counts = {n: pair.fs.inodes.nlookup(n) for n in known}
        dirs = DirPair(pair, d)
        reply = pair.in_c(_readdir(dirs.c, 0, 4096, d, True), [16, 4096])
        nodes = _entry_nodes(reply)
        assert len(nodes) == 10
        for n in known:
            assert pair.fs.inodes.nlookup(n) == counts[n] + 1
        new = set(nodes) - known
        assert len(new) == 5
        for n in new:
            assert pair.fs.inodes.nlookup(n) == 1 and pair.inodes.node(n)[5]
        assert {pair.lookup(b"e%d" % i, d) for i in range(1, 10, 2)} == new
        assert dirs.same(0, 4096, True) == reply
        # A size too small for the entry to enter ("." and ".." only) is answered in C, as
        # the engine answers it; one byte more and C enters it.
        (pair.root / "d2").mkdir()
        (pair.root / "d2" / "zz").write_bytes(b"")
        d2 = pair.lookup(b"d2")
        small = DirPair(pair, d2)
        dots = 2 * (abi.ENTRY_OUT_SIZE + 32)
        reply = small.same(0, dots + abi.ENTRY_OUT_SIZE + 31, True)
        assert len(reply) == 16 + dots
        reply = pair.in_c(_readdir(small.c, 0, dots + abi.ENTRY_OUT_SIZE + 32, d2, True),
                          [16, 4096])
        (zz,) = _entry_nodes(reply)
        assert pair.lookup(b"zz", d2) == zz and pair.inodes.node(zz)[5]
        small.release()
        dirs.release()
    finally:
        _done(pair)


def test_directories_declined_to_the_engine(tmp_path, io_engine):
    """Request extensions, and OPENDIR with the descriptor budget used up (EMFILE from the
    engine, as it counts)."""
    pair = _make_pair(tmp_path, io_engine)
    try:
        d = pair.lookup(b"d")
        dirs = DirPair(pair, d)
        for req in (_opendir(d), _readdir(dirs.c, 0, 4096, d), _readdir(dirs.c, 0, 4096, d, True),
                    _releasedir(dirs.py, d)):
            ext = bytearray(req)
            struct.pack_into("<H", ext, 36, 1)  # fuse_in_header.total_extlen
            via_engine(pair, bytes(ext), [4096])
        dirs.release()
        _done(pair)
        budget = pair.fs.fds_held()
        pair = _make_pair(tmp_path / "again", io_engine, fd_budget=budget + 2)
        d = pair.lookup(b"d")
        opened = pair.in_c(_opendir(d), [32])
        assert out_header(opened)[1] == 0
        reply = via_engine(pair, _opendir(d), [32])
        assert reply == pair.in_python(_opendir(d), 16)
        assert out_header(reply)[1] == -errno.EMFILE
        # Reading and releasing need no new descriptor.
        fh = abi.open_out.unpack_from(opened, 16)[0]
        assert out_header(pair.in_c(_readdir(fh, 0, 4096, d), [4096]))[1] == 0
        assert pair.in_c(_releasedir(fh, d), [16]) == out_header_bytes(0, 7)
        assert out_header(pair.in_c(_opendir(d), [32]))[1] == 0
    finally:
        _done(pair)


@pytest.mark.parametrize("pair", BOTH_MODES, indirect=True)
def test_readdirplus_of_names_replaced_since_the_listing(pair):
    """READDIRPLUS from a listing held since offset 0 whose names the host replaced meanwhile:
    each entry is the inode the name has now, whatever inode number the listing gave it (a
    new file, or a hard link of a node the table holds: that node counted once more)."""
    d = pair.lookup(b"d")
    base = pair.root / "d"
    f = pair.lookup(b"f")
    fh = abi.open_out.unpack_from(pair.in_c(_opendir(d), [16, 16]), 16)[0]
    pair.in_c(_readdir(fh, 0, 64, d), [16, 4096])   # the listing, held from here on
    names = sorted(os.listdir(base))
    os.unlink(base / names[0])
    (base / names[0]).write_bytes(b"new")
    os.unlink(base / names[1])
    os.link(pair.root / "f", base / names[1])
    count = pair.fs.inodes.nlookup(f)
    reply = pair.in_c(_readdir(fh, 2, 1 << 16, d, True), [16, 1 << 16])
    pos, seen = 16, {}
    while pos < len(reply):
        nodeid = struct.unpack_from("<Q", reply, pos)[0]
        ino = abi.attr.unpack_from(reply, pos + abi.entry_out_head.size)[0]
        _, _, namelen, _ = abi.dirent_head.unpack_from(reply, pos + abi.ENTRY_OUT_SIZE)
        start = pos + abi.ENTRY_OUT_SIZE + 24
        seen[reply[start:start + namelen].decode()] = (nodeid, ino)
        pos += abi.ENTRY_OUT_SIZE + abi.rec_align(24 + namelen)
    assert sorted(seen) == names
    for name, (nodeid, ino) in seen.items():
        assert ino == os.lstat(base / name).st_ino, name
        assert pair.fs.inodes.nlookup(nodeid) >= 1
    assert seen[names[1]][0] == f and pair.fs.inodes.nlookup(f) == count + 1
    assert pair.lookup(names[0].encode(), d) == seen[names[0]][0]
    pair.in_c(_releasedir(fh, d), [16])


def test_directories_held_by_file_handle(tmp_path, io_engine):
    """A directory held by file handle whose descriptor the cache closed: OPENDIR and a fresh
    listing reopen it by its handle in C, with the records the engine gives; paging on
    through the listing held needs no descriptor."""
    pair = _make_pair(tmp_path, io_engine, file_handles="prefer", handle_fds_max=1)
    try:
        d = pair.lookup(b"d")
        for i in range(5):
            (pair.root / "d" / f"e{i}").write_bytes(b"")
        pair.lookup(b"f")  # takes the one cached descriptor from "d"
        assert pair.inodes.node(d)[0] == -1
        fh = abi.open_out.unpack_from(pair.in_c(_opendir(d), [16, 16]), 16)[0]
        pair.lookup(b"f")
        assert pair.inodes.node(d)[0] == -1
        c = pair.in_c(_readdir(fh, 0, 4096, d), [4096])
        pair.lookup(b"f")
        assert pair.in_c(_readdir(fh, 2, 4096, d), [4096])[16:] == \
            c[16 + 64:]   # after "." and "..", from the listing held
        assert pair.inodes.node(d)[0] == -1
        py = abi.open_out.unpack_from(pair.in_python(_opendir(d), 32), 16)[0]
        assert pair.in_python(_readdir(py, 0, 4096, d), 4096) == c
        assert abi.dirent_head.unpack_from(c, 16)[0] == os.stat(pair.root / "d").st_ino
        assert pair.in_c(_releasedir(fh, d), [16]) == out_header_bytes(0, 7)
        assert pair.in_c(_releasedir(py, d), [16]) == out_header_bytes(0, 7)
    finally:
        _done(pair)


OFFSET_MAX = 0x7FFFFFFFFFFFFFFF


def test_getlk_and_setlk(pair):
    """GETLK and SETLK on one file through the ring and on its twin through the engine, step
    by step: the same replies (holders' guest pids, conflicts, upgrades of a read-only
    description, errors) and the same descriptions held.  The ring declines what only the
    file system does: none here.  A description is opened in C where the owner (or, for
    GETLK, the inode) has none, as the file system opens it; flock locks likewise."""
    shutil.copy(pair.root / "f", pair.root / "g")
    f, g = pair.lookup(b"f"), pair.lookup(b"g")
    fh_f, fh_g = pair.open(f), pair.open(g)
    RD, WR, UN = fcntl.F_RDLCK, fcntl.F_WRLCK, fcntl.F_UNLCK
    steps = [  # (opcode, owner, start, end, type, pid, lk_flags, fh offset, served in C)
        (abi.Opcode.SETLK, 1, 0, 9, WR, 101, 0, 0, True),      # opens owner 1's description
        (abi.Opcode.SETLK, 1, 10, 19, WR, 101, 0, 0, True),    # merges on the host
        (abi.Opcode.SETLK, 2, 40, 49, RD, 202, 0, 0, True),     # read-only description
        (abi.Opcode.SETLK, 2, 5, 20, RD, 202, 0, 0, True),     # EAGAIN
        (abi.Opcode.GETLK, 3, 0, OFFSET_MAX, WR, 0, 0, 0, True),   # the question description
        (abi.Opcode.GETLK, 3, 45, 45, RD, 0, 0, 0, True),
        (abi.Opcode.GETLK, 3, 45, 45, WR, 0, 0, 0, True),
        (abi.Opcode.SETLK, 1, 5, 5, UN, 101, 0, 0, True),      # splits it
        (abi.Opcode.GETLK, 3, 6, 30, WR, 0, 0, 0, True),
        (abi.Opcode.GETLK, 1, 0, OFFSET_MAX, WR, 0, 0, 0, True),
        (abi.Opcode.SETLK, 2, 40, 49, WR, 303, 0, 0, True),    # read-only made writable
        (abi.Opcode.GETLK, 1, 45, 45, RD, 0, 0, 0, True),
        (abi.Opcode.SETLK, 4, 0, 9, UN, 404, 0, 0, True),      # nothing held: done
        (abi.Opcode.SETLK, 1, 0, 9, 7, 101, 0, 0, True),       # EINVAL
        (abi.Opcode.GETLK, 1, 9, 0, WR, 0, 0, 0, True),
        (abi.Opcode.GETLK, 1, 0, 1 << 63, WR, 0, 0, 0, True),
        (abi.Opcode.SETLK, 1, 0, 9, WR, 101, 0, 777, True),    # EBADF: no such handle
        (abi.Opcode.SETLK, 5, 0, 9, WR, 505, 1, 0, True),      # FUSE_LK_FLOCK
        (abi.Opcode.SETLK, 1, 0, OFFSET_MAX, UN, 101, 0, 0, True),
        (abi.Opcode.GETLK, 3, 0, OFFSET_MAX, RD, 0, 0, 0, True),
    ]
    for opcode, owner, start, end, lock_type, pid, flags, bad, in_c in steps:
        out = abi.lk_out.size if opcode == abi.Opcode.GETLK else 0

        def req(nodeid, fh):
            return request(opcode, abi.lk_in.pack(fh + bad, owner, start, end, lock_type, pid,
                                                  flags, 0), nodeid=nodeid)
        seen = len(pair.ring.seen)
        data = pair.ring.roundtrip([req(f, fh_f)], [16, out] if out else [16])
        assert (len(pair.ring.seen) == seen) == in_c, (opcode, owner, start, end)
        assert data[:out_header(data)[0]] == pair.in_python(req(g, fh_g), out or 16)
        held = {n: sorted((o, k) for m, o, k in _tables.lock_keys(pair.ring.handles) if m == n)
                for n in (f, g)}
        assert held[f] == held[g]
    # A host process's lock: no guest pid.
    for name in ("f", "g"):
        host = os.open(pair.root / name, os.O_RDWR)
        fcntl.fcntl(host, fcntl.F_OFD_SETLK, struct.pack("hhxxxxqqixxxx", WR, 0, 60, 10, 0))
    try:
        body = (3, 50, OFFSET_MAX, RD, 0, 0, 0)
        got_c = pair.in_c(request(abi.Opcode.GETLK, abi.lk_in.pack(fh_f, *body), nodeid=f),
                          [16, abi.lk_out.size])
        got_py = pair.in_python(request(abi.Opcode.GETLK, abi.lk_in.pack(fh_g, *body),
                                        nodeid=g), abi.lk_out.size)
        assert got_c == got_py
        assert abi.lk_out.unpack_from(got_c, 16) == (60, 69, WR, 0)
    finally:
        os.close(host)


def test_lock_descriptions_go_with_their_handles(pair):
    """A FLUSH drops the owner's locks and the question description; the RELEASE of the last
    handle they went through drops the rest; descriptors come back."""
    f = pair.lookup(b"f")
    fh = pair.open(f)
    pair.in_c(_flush(fh, f), [16])  # a queue's io_uring is set up at its first use
    held = fds_open()
    lock = abi.lk_in.pack(fh, 1, 0, 9, fcntl.F_WRLCK, 7, 0, 0)
    ask = abi.lk_in.pack(fh, 2, 0, 9, fcntl.F_WRLCK, 0, 0, 0)
    assert pair.in_python(request(abi.Opcode.SETLK, lock, nodeid=f), 16)[4:8] == bytes(4)
    pair.in_python(request(abi.Opcode.GETLK, ask, nodeid=f), abi.lk_out.size)
    assert pair.ring.handles.lock_fds_open == 2 and fds_open() == held + 2
    assert abi.lk_out.unpack_from(pair.in_c(request(abi.Opcode.GETLK, ask, nodeid=f),
                                            [16, abi.lk_out.size]), 16) == (0, 9, 1, 7)
    pair.in_python(_flush(fh, f, owner=1), 16)
    assert pair.ring.handles.lock_fds_open == 0 and fds_open() == held
    pair.ring.roundtrip([request(abi.Opcode.SETLK, lock, nodeid=f)], [16])  # opens one again
    assert pair.ring.handles.lock_fds_open == 1 and fds_open() == held + 1
    pair.in_python(_release(fh, f), 16)
    assert pair.ring.handles.lock_fds_open == 0 and fds_open() == held - 1
def test_lock_descriptions_opened_in_c(tmp_path, io_engine):
    """The first lock of an owner and the first question on an inode open their description in
    C as the file system opens it, on twin objects of every kind through the ring and the
    engine: the same replies and descriptions; a FIFO, a device node, a directory and a
    symlink are never opened (EINVAL, as the file system answers); with the descriptor budget
    used up EMFILE."""
    pair = _make_pair(tmp_path, io_engine)
    WR, RD = fcntl.F_WRLCK, fcntl.F_RDLCK
    try:
        root = pair.root
        shutil.copy(root / "f", root / "g")
        for name in ("p1", "p2"):
            os.mkfifo(root / name)
        for name in ("c1", "c2"):
            os.mknod(root / name, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        (root / "e").mkdir()
        os.symlink("f", root / "link2")
        twins = [(b"f", b"g"), (b"p1", b"p2"), (b"c1", b"c2"), (b"d", b"e"),
                 (b"link", b"link2")]
        f, g = pair.lookup(b"f"), pair.lookup(b"g")
        fh = {f: pair.open(f), g: pair.open(g)}
        for a, b in twins:
            na, nb = pair.lookup(a), pair.lookup(b)
            for opcode, owner, lock_type, out in ((abi.Opcode.GETLK, 7, WR, abi.lk_out.size),
                                                  (abi.Opcode.SETLK, 8, RD, 0),
                                                  (abi.Opcode.SETLK, 9, WR, 0)):
                def req(n, handle):   # a handle of f or g: the node is the request's word
                    return request(opcode, abi.lk_in.pack(handle, owner, owner * 10,
                                                          owner * 10 + 9, lock_type, 5, 0, 0),
                                   nodeid=n)
                c = pair.in_c(req(na, fh[f]), [16, out] if out else [16])
                assert c == pair.in_python(req(nb, fh[g]), out or 16), (a, opcode, owner)
                if a != b"f":
                    assert out_header(c)[1] == -errno.EINVAL, a
                held = {n: sorted((o, k) for m, o, k in _tables.lock_keys(pair.ring.handles)
                                  if m == n) for n in (na, nb)}
                assert held[na] == held[nb]
        # The owners' descriptions: one read-only (a read lock), one read-write (a write lock).
        assert len(_tables.lock_keys(pair.ring.handles)) == 6
        # flock: shared, a conflict between two open files, exclusive, unlock, a lock type
        # that is none; a directory may be locked, a FIFO, a device, a symlink not.
        for a, b in twins:
            na, nb = pair.lookup(a), pair.lookup(b)
            for owner, lock_type in ((0x10, RD), (0x11, RD), (0x12, WR), (0x10, fcntl.F_UNLCK),
                                     (0x11, fcntl.F_UNLCK), (0x12, WR), (0x13, 7)):
                def flock_req(n, handle):
                    return request(abi.Opcode.SETLK, abi.lk_in.pack(
                        handle, owner, 0, OFFSET_MAX, lock_type, 5, 1, 0), nodeid=n)
                c = pair.in_c(flock_req(na, fh[f]), [16])
                assert c == pair.in_python(flock_req(nb, fh[g]), 16), (a, owner, lock_type)
                if a not in (b"f", b"d") and lock_type != fcntl.F_UNLCK:  # none to undo
                    assert out_header(c)[1] == -errno.EINVAL, a
                held = {n: sorted((o, k) for m, o, k in _tables.lock_keys(pair.ring.handles)
                                  if m == n) for n in (na, nb)}
                assert held[na] == held[nb]
            if a in (b"f", b"d"):
                assert out_header(c)[1] == -errno.EINVAL       # type 7
                assert [o for o, k in held[na] if k == _tables.LOCK_KIND_FLOCK] == [
                    0x10, 0x11, 0x12]
        for n, name in ((f, "f"), (g, "g")):
            fd = os.open(pair.root / name, os.O_RDONLY)
            try:
                with pytest.raises(BlockingIOError):    # 0x12 holds it exclusively
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            finally:
                os.close(fd)
        for n in (f, g):
            pair.in_python(_flush(fh[n], n, owner=8), 16)
            pair.in_python(_flush(fh[n], n, owner=9), 16)
            pair.in_python(_release(fh[n], n), 16)
        # The flock descriptions went through f's and g's handles: released with them.
        assert _tables.lock_keys(pair.ring.handles) == []
    finally:
        _done(pair)
    # The descriptor budget used up: EMFILE from C as from the engine, nothing opened.
    pair = _make_pair(tmp_path / "b", io_engine)
    try:
        shutil.copy(pair.root / "f", pair.root / "g")
        f, g = pair.lookup(b"f"), pair.lookup(b"g")
        fh_f, fh_g = pair.open(f), pair.open(g)
        budget = pair.fs.fds_held()
    finally:
        _done(pair)
    pair = _make_pair(tmp_path / "c", io_engine, fd_budget=budget)
    try:
        shutil.copy(pair.root / "f", pair.root / "g")
        f, g = pair.lookup(b"f"), pair.lookup(b"g")
        fh_f, fh_g = pair.open(f), pair.open(g)
        assert pair.fs.fds_held() == budget
        for opcode, out in ((abi.Opcode.SETLK, 0), (abi.Opcode.GETLK, abi.lk_out.size)):
            c = pair.in_c(request(opcode, abi.lk_in.pack(fh_f, 1, 0, 9, WR, 5, 0, 0), nodeid=f),
                          [16, out] if out else [16])
            assert c == pair.in_python(request(opcode, abi.lk_in.pack(fh_g, 1, 0, 9, WR, 5, 0,
                                                                      0), nodeid=g), out or 16)
            assert out_header(c)[1] == -errno.EMFILE
        assert _tables.lock_keys(pair.ring.handles) == []
    finally:
        _done(pair)


def test_lock_endings_in_c(pair):
    """FLUSH, RELEASE (with and without FUSE_RELEASE_FLOCK_UNLOCK), RELEASEDIR, FORGET and
    BATCH_FORGET are served in C while lock descriptions exist, on one file through the ring and
    on its twin through the engine: the same replies and the same descriptions left, each
    ending only the locks it ends (another owner's, another node's stay), descriptors given
    back, and the host's locks gone with them."""
    shutil.copy(pair.root / "f", pair.root / "g")
    WR = fcntl.F_WRLCK
    P, F, Q = _tables.LOCK_KIND_POSIX, _tables.LOCK_KIND_FLOCK, _tables.LOCK_KIND_QUESTION

    def lock(nodeid, fh, owner, flock=False):
        start = 0 if flock else 10 * owner     # owners' ranges apart: no conflict
        body = abi.lk_in.pack(fh, owner, start, start + 9, WR, 7, 1 if flock else 0, 0)
        assert pair.in_python(request(abi.Opcode.SETLK, body, nodeid=nodeid), 16)[4:8] == bytes(4)

    def ask(nodeid, fh):
        body = abi.lk_in.pack(fh, 0x77, 0, OFFSET_MAX, WR, 0, 0, 0)
        pair.in_python(request(abi.Opcode.GETLK, body, nodeid=nodeid), abi.lk_out.size)

    def held(nodeid):
        return sorted((o, k) for m, o, k in _tables.lock_keys(pair.ring.handles) if m == nodeid)

    def host_locked(name, flock=False):
        fd = os.open(pair.root / name, os.O_RDWR)
        try:
            if flock:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return True
                return False
            got = fcntl.fcntl(fd, fcntl.F_OFD_GETLK,
                              struct.pack("hhxxxxqqixxxx", WR, 0, 0, 0, 0))   # whole file
            return struct.unpack("hhxxxxqqixxxx", got)[0] != fcntl.F_UNLCK
        finally:
            os.close(fd)

    def both(make, c_node, py_node, c_args, py_args, out=16):
        c = pair.in_c(make(*c_args, c_node), [16] if out else [])
        assert c == pair.in_python(make(*py_args, py_node), out)
        assert held(c_node) == held(py_node)

    f, g = pair.lookup(b"f"), pair.lookup(b"g")
    # An unrelated lock elsewhere: the requests below are still served in C.
    shutil.copy(pair.root / "f", pair.root / "h")
    h = pair.lookup(b"h")
    fh_h = pair.open(h)
    lock(h, fh_h, 0x55)
    # FLUSH: the flushing owner's POSIX locks and the question description go, not another
    # owner's.
    fh_f, fh_g = pair.open(f), pair.open(g)
    for n, fh in ((f, fh_f), (g, fh_g)):
        lock(n, fh, 1)
        lock(n, fh, 2)
        ask(n, fh)
    assert held(f) == held(g) == sorted([(1, P), (2, P), (0, Q)])
    both(_flush, f, g, (fh_f,), (fh_g,))             # owner 0x99: holds nothing
    assert held(f) == [(1, P), (2, P)]
    both(lambda fh, n: _flush(fh, n, owner=1), f, g, (fh_f,), (fh_g,))
    assert held(f) == [(2, P)] and host_locked("f") and host_locked("g")
    # RELEASE with FUSE_RELEASE_FLOCK_UNLOCK of another handle: the flock lock of that open
    # file goes (the lock owner is the open file), the POSIX one stays with its handle.
    fl_f, fl_g = pair.open(f), pair.open(g)
    for n, fh in ((f, fl_f), (g, fl_g)):
        body = abi.lk_in.pack(fh, 0x99, 0, 0, WR, 7, 1, 0)   # FUSE_LK_FLOCK
        assert pair.in_python(request(abi.Opcode.SETLK, body, nodeid=n), 16)[4:8] == bytes(4)
    assert held(f) == held(g) == sorted([(2, P), (0x99, F)])
    assert host_locked("f", flock=True) and host_locked("g", flock=True)
    both(lambda fh, n: _release(fh, n, abi.FUSE_RELEASE_FLOCK_UNLOCK), f, g, (fl_f,), (fl_g,))
    assert held(f) == [(2, P)]
    assert not host_locked("f", flock=True) and not host_locked("g", flock=True)
    # RELEASE of the last handle the POSIX lock went through: it goes, and the host's lock.
    before = fds_open()
    both(_release, f, g, (fh_f,), (fh_g,))
    assert held(f) == [] and fds_open() == before - 4
    assert not host_locked("f") and not host_locked("g")
    # RELEASEDIR of a directory handle an flock lock went through.
    d = pair.lookup(b"d")
    dirs = []
    for _ in range(2):
        error, payload = pair.engine.handle(request(
            abi.Opcode.OPENDIR, abi.open_in.pack(os.O_RDONLY | os.O_DIRECTORY, 0), nodeid=d), 4096)
        assert error == 0
        dirs.append(abi.open_out.unpack_from(payload)[0])
        body = abi.lk_in.pack(dirs[-1], 0x40 + len(dirs), 0, 0, fcntl.F_RDLCK, 7, 1, 0)
        assert pair.in_python(request(abi.Opcode.SETLK, body, nodeid=d), 16)[4:8] == bytes(4)
    assert held(d) == [(0x41, F), (0x42, F)]
    c = pair.in_c(_releasedir(dirs[0], d), [16])
    assert c == pair.in_python(_releasedir(dirs[1], d), 16) and held(d) == []
    # FORGET of the last lookup: the node's descriptions go; BATCH_FORGET likewise.
    fh_f, fh_g = pair.open(f), pair.open(g)
    for n, fh in ((f, fh_f), (g, fh_g)):
        lock(n, fh, 3)
    for n in (f, g):
        assert pair.fs.inodes.nlookup(n) == 1
    pair.in_c(request(abi.Opcode.FORGET, abi.forget_in.pack(1), nodeid=f), [])
    pair.in_python(request(abi.Opcode.BATCH_FORGET, abi.batch_forget_in.pack(1, 0) +
                           abi.forget_one.pack(g, 1), nodeid=0), 0)
    assert held(f) == held(g) == [] and not host_locked("f") and not host_locked("g")
    # The unrelated lock stayed through all of it.
    assert held(h) == [(0x55, P)] and host_locked("h")
    hh = pair.lookup(b"h")
    assert hh == h
    pair.in_c(request(abi.Opcode.BATCH_FORGET, abi.batch_forget_in.pack(1, 0) +
                      abi.forget_one.pack(h, 2), nodeid=0), [])
    assert held(h) == [] and not host_locked("h")
    for fh in (fh_f, fh_g, fh_h):
        pair.in_python(_release(fh, f), 16)


# -- MKNOD, MKDIR, SYMLINK, CREATE and LINK -------------------------------------------------

def _as(req, uid, gid):
    """``req`` with fuse_in_header's caller ids replaced."""
    return req[:24] + struct.pack("<II", uid, gid) + req[32:]


def _mkdir(parent, name, mode=0o755, umask=0):
    return request(abi.Opcode.MKDIR, abi.mkdir_in.pack(mode, umask) + name, nodeid=parent)


def _mknod(parent, name, mode, rdev=0, umask=0):
    return request(abi.Opcode.MKNOD, abi.mknod_in.pack(mode, rdev, umask, 0) + name,
                   nodeid=parent)


def _symlink(parent, name, target):
    return request(abi.Opcode.SYMLINK, name + target, nodeid=parent)


def _create(parent, name, flags=os.O_RDWR, mode=0o644, umask=0, open_flags=0):
    return request(abi.Opcode.CREATE, abi.create_in.pack(flags, mode, umask, open_flags) + name,
                   nodeid=parent)


def _link(node, parent, name):
    return request(abi.Opcode.LINK, abi.link_in.pack(node) + name, nodeid=parent)


def _masked(reply):
    """A reply with what differs between two new objects blanked: the node id, the inode
    number and the times (an error reply as it is)."""
    if out_header(reply)[1] or len(reply) < 16 + abi.ENTRY_OUT_SIZE:
        return reply
    out = bytearray(reply)
    out[16:24] = bytes(8)          # fuse_entry_out.nodeid
    out[56:64] = bytes(8)          # attr.ino
    out[80:104] = bytes(24)        # attr.atime, mtime, ctime
    out[104:116] = bytes(12)       # their nanoseconds
    if len(out) == 16 + abi.ENTRY_OUT_SIZE + abi.open_out.size:
        out[16 + abi.ENTRY_OUT_SIZE:24 + abi.ENTRY_OUT_SIZE] = bytes(8)   # the handle number
    return bytes(out)


def _owners(top):
    """Every entry under ``top``: its relative path, mode, owner and device number."""
    return [(str(p.relative_to(top)), os.lstat(p).st_mode, os.lstat(p).st_uid,
             os.lstat(p).st_gid, os.lstat(p).st_rdev) for p in sorted(top.rglob("*"))]


def _same_entry(halves, make, served="c", out_lens=(16, 128)):
    """``Halves.same`` for a request answered with a new entry: the replies equal but for
    ``_masked``'s fields, the trees equal in contents, modes and owners; a new node's id is
    counted once in the table, held by file handle in both halves where the table allows
    handles.  The error."""
    pair = halves.pair
    c_req, py_req = make(halves.nodes["c"]), make(halves.nodes["py"])
    if served == "c":
        c = pair.in_c(c_req, list(out_lens))
    else:
        c = via_engine(pair, c_req, list(out_lens))
    py = pair.in_python(py_req, sum(out_lens))
    assert _masked(c) == _masked(py)
    assert _tree_state(pair.root / "c") == _tree_state(pair.root / "py")
    assert _owners(pair.root / "c") == _owners(pair.root / "py")
    err = out_header(c)[1]
    if err == 0:
        for reply in (c, py):
            nodeid = struct.unpack_from("<Q", reply, 16)[0]
            assert pair.fs.inodes.nlookup(nodeid) >= 1
            assert by_handle(pair, nodeid) == bool(pair.inodes.fds_max)
    return err


CREATE_CASES = [
    # (parent, request maker, errno)
    ("top", lambda p: _mkdir(p, b"new\0"), 0),
    ("top", lambda p: _mkdir(p, b"sticky\0", 0o1777), 0),
    ("top", lambda p: _mkdir(p, b"sgid\0", 0o2750), 0),
    ("top", lambda p: _mknod(p, b"fifo2\0", stat.S_IFIFO | 0o640), 0),
    ("top", lambda p: _mknod(p, b"plain\0", stat.S_IFREG | 0o600), 0),
    ("top", lambda p: _mknod(p, b"sock\0", stat.S_IFSOCK | 0o666), 0),
    ("top", lambda p: _mknod(p, b"null\0", stat.S_IFCHR | 0o666, os.makedev(1, 3)), 0),
    ("top", lambda p: _symlink(p, b"sl\0", b"some/where\0"), 0),
    ("top", lambda p: _symlink(p, b"long\0", b"t" * 4095 + b"\0"), 0),
    ("top", lambda p: _symlink(p, b"empty\0", b"\0"), -errno.EINVAL),
    ("top", lambda p: _mkdir(p, b"n" * 255 + b"\0"), -errno.EEXIST),
    ("top", lambda p: _mkdir(p, b"m" * 255 + b"\0"), 0),
    ("top", lambda p: _mkdir(p, b"f\0"), -errno.EEXIST),
    ("top", lambda p: _mkdir(p, b"link\0"), -errno.EEXIST),
    ("top", lambda p: _mknod(p, b"d\0", stat.S_IFIFO | 0o600), -errno.EEXIST),
    ("top", lambda p: _symlink(p, b"fifo\0", b"x\0"), -errno.EEXIST),
    ("top", lambda p: _mkdir(p, b".\0"), -errno.EINVAL),
    ("top", lambda p: _mkdir(p, b"..\0"), -errno.EINVAL),
    ("top", lambda p: _mkdir(p, b"\0"), -errno.EINVAL),
    ("top", lambda p: _mkdir(p, b"a/b\0"), -errno.EINVAL),
    ("top", lambda p: _symlink(p, b"..\0", b"x\0"), -errno.EINVAL),
    ("full", lambda p: _mkdir(p, b"x\0"), -errno.EEXIST),
    ("full", lambda p: _mkdir(p, b"y\0"), 0),
    ("f", lambda p: _mkdir(p, b"x\0"), -errno.ENOTDIR),
    ("fifo", lambda p: _mknod(p, b"x\0", stat.S_IFIFO | 0o600), -errno.ENOTDIR),
    ("link", lambda p: _symlink(p, b"x\0", b"y\0"), -errno.ENOTDIR),
    ("f", lambda p: _create(p, b"x\0"), -errno.ENOTDIR),
    ("top", lambda p: _create(p, b"c1\0"), 0),
    ("top", lambda p: _create(p, b"c2\0", os.O_WRONLY | os.O_EXCL, 0o600), 0),
    ("top", lambda p: _create(p, b"c3\0", os.O_RDONLY | os.O_TRUNC | os.O_APPEND, 0o4755), 0),
    ("top", lambda p: _create(p, b"f\0", os.O_RDWR | os.O_EXCL), -errno.EEXIST),
    ("top", lambda p: _create(p, b"..\0"), -errno.EINVAL),
    ("e", lambda p: _create(p, b"in-e\0", os.O_RDWR, 0o640), 0),
]


@pytest.mark.parametrize("pair", BOTH_MODES, indirect=True)
def test_create_names(pair):
    """MKDIR, MKNOD, SYMLINK and CREATE of every kind of object, of names that exist and
    names the file system refuses, under parents that are no directory: in C, the engine's
    reply (but for the node id, inode number and times) and the same objects, modes and
    owners on the host."""
    halves = Halves(pair)
    for parent, make, err in CREATE_CASES:
        out_lens = (16, 144) if abi.in_header.unpack_from(make(1))[1] == abi.Opcode.CREATE \
            else (16, 128)
        got = _same_entry(halves, lambda nodes: _as(make(nodes[parent]), 0, 0),
                          out_lens=out_lens)
        assert got == err, (parent, make(1))
    # Each CREATE left one open handle per half, which reads and writes the new file.
    assert pair.ring.handles.count == 2 * sum(
        1 for _, make, err in CREATE_CASES
        if not err and abi.in_header.unpack_from(make(1))[1] == abi.Opcode.CREATE)


def test_create_names_of_an_unknown_parent(pair):
    for make in (lambda p: _mkdir(p, b"x\0"), lambda p: _mknod(p, b"x\0", stat.S_IFIFO),
                 lambda p: _symlink(p, b"x\0", b"y\0"), lambda p: _create(p, b"x\0")):
        for nodeid in (2 ** 40, 12345, 2 ** 64 - 1):
            req = make(nodeid)
            c = pair.in_c(req, [16, 144])
            assert c == pair.in_python(req, 160)
            assert out_header(c)[1] == -errno.ENOENT
    assert not (pair.root / "x").exists()


def test_create_as_a_non_root_caller(pair):
    """The caller's uid and gid own what it creates, and its permissions are checked: a
    directory it may not write refuses it with EACCES, both ways."""
    halves = Halves(pair)
    for half in ("c", "py"):
        os.chmod(pair.root / half / "e", 0o777)
    for parent, make, err in (
            ("e", lambda p: _mkdir(p, b"mine\0", 0o700), 0),
            ("e", lambda p: _mknod(p, b"pipe\0", stat.S_IFIFO | 0o644), 0),
            ("e", lambda p: _symlink(p, b"sl\0", b"target\0"), 0),
            ("e", lambda p: _create(p, b"file\0", os.O_RDWR, 0o640), 0),
            ("d", lambda p: _mkdir(p, b"theirs\0"), -errno.EACCES),
            ("d", lambda p: _create(p, b"theirs\0"), -errno.EACCES),
            ("e", lambda p: _mknod(p, b"dev\0", stat.S_IFCHR | 0o600, os.makedev(1, 3)),
             -errno.EPERM)):
        got = _same_entry(halves, lambda nodes: _as(make(nodes[parent]), 1000, 1001),
                          out_lens=(16, 144))
        assert got == err, make(1)
    for name in ("mine", "pipe", "sl", "file"):
        st = os.lstat(pair.root / "c" / "e" / name)
        assert (st.st_uid, st.st_gid) == (1000, 1001)


def test_create_declined_to_the_engine(pair):
    """What C cannot decide as the engine would goes to it: request extensions, a name
    longer than NAME_MAX (ENAMETOOLONG there), a target without its NUL within PATH_MAX,
    CREATE of an existing name without O_EXCL (opened as OPEN opens it)."""
    halves = Halves(pair)
    for make, err in ((lambda p: _mkdir(p, b"x" * 256 + b"\0"), -errno.ENAMETOOLONG),
                      (lambda p: _create(p, b"x" * 300 + b"\0"), -errno.ENAMETOOLONG),
                      (lambda p: _symlink(p, b"s\0", b"t" * 4096 + b"\0"), -errno.EINVAL),
                      (lambda p: _create(p, b"f\0", os.O_RDWR), 0)):
        got = _same_entry(halves, lambda nodes: make(nodes["top"]), served="engine",
                          out_lens=(16, 144))
        assert got == err
    ext = bytearray(_mkdir(halves.nodes["c"]["top"], b"x\0"))
    struct.pack_into("<H", ext, 36, 1)  # fuse_in_header.total_extlen
    via_engine(pair, bytes(ext), [144])


def test_create_on_a_read_only_share(tmp_path, io_engine):
    pair = _make_pair(tmp_path, io_engine, readonly=True)
    try:
        for req in (_mkdir(1, b"x\0"), _mknod(1, b"x\0", stat.S_IFIFO | 0o600),
                    _symlink(1, b"x\0", b"y\0"), _create(1, b"x\0"),
                    _link(pair.lookup(b"f"), 1, b"x\0")):
            reply = via_engine(pair, req, [144])
            assert reply == pair.in_python(req, 144)
            assert out_header(reply)[1] == -errno.EROFS
        assert not (pair.root / "x").exists()
    finally:
        pair.close()


def test_create_umask(tmp_path, io_engine):
    """Without FUSE_DONT_MASK the guest applied its umask to the mode it sends and the
    request's is ignored; with it the host applies the request's umask, both ways."""
    for dont_mask in (False, True):
        pair = _make_pair(tmp_path / str(dont_mask), io_engine)
        try:
            if dont_mask:
                pair.engine.wanted_flags |= abi.FUSE_DONT_MASK
                init = request(abi.Opcode.INIT, abi.init_in.pack(7, 38, 0, abi.FUSE_DONT_MASK, 0))
                assert pair.engine.handle(init, 4096)[0] == 0
                assert pair.engine.session_flags & abi.FUSE_DONT_MASK
            halves = Halves(pair)
            for make in (lambda p: _mkdir(p, b"dir\0", 0o777, 0o027),
                         lambda p: _mknod(p, b"fifo2\0", stat.S_IFIFO | 0o666, 0, 0o002),
                         lambda p: _create(p, b"file\0", os.O_RDWR, 0o666, 0o077)):
                assert _same_entry(halves, lambda nodes: _as(make(nodes["top"]), 0, 0),
                                   out_lens=(16, 144)) == 0
            modes = {name: stat.S_IMODE(os.lstat(pair.root / "c" / name).st_mode)
                     for name in ("dir", "fifo2", "file")}
            mask = os.umask(0)
            os.umask(mask)
            if dont_mask:
                assert modes == {"dir": 0o750, "fifo2": 0o664, "file": 0o600}
            else:
                assert modes == {"dir": 0o777 & ~mask, "fifo2": 0o666 & ~mask,
                                 "file": 0o666 & ~mask}
        finally:
            pair.close()


@pytest.mark.parametrize("pair", BOTH_MODES, indirect=True)
def test_link(pair):
    """LINK of a file, a symlink and a FIFO (one more lookup of the same node), of a
    directory (EPERM), to a name that exists, under an unknown parent."""
    halves = Halves(pair)
    for node, parent, name, err in (("f", "top", b"f2\0", 0), ("link", "d", b"l2\0", 0),
                                    ("fifo", "e", b"p\0", 0), ("d", "top", b"d2\0", -errno.EPERM),
                                    ("f", "top", b"g\0", -errno.EEXIST),
                                    ("f", "top", b"..\0", -errno.EINVAL),
                                    ("f", "f", b"x\0", -errno.ENOTDIR)):
        before = [pair.fs.inodes.nlookup(halves.nodes[h][node]) for h in ("c", "py")]
        c = pair.in_c(_link(halves.nodes["c"][node], halves.nodes["c"][parent], name),
                      [16, 128])
        py = pair.in_python(_link(halves.nodes["py"][node], halves.nodes["py"][parent], name),
                            144)
        assert _masked(c) == _masked(py)
        assert out_header(c)[1] == err
        assert _tree_state(pair.root / "c") == _tree_state(pair.root / "py")
        after = [pair.fs.inodes.nlookup(halves.nodes[h][node]) for h in ("c", "py")]
        assert after == [b + (err == 0) for b in before]
        if err == 0:
            assert struct.unpack_from("<Q", c, 16)[0] == halves.nodes["c"][node]
    for nodeid in (2 ** 40, 77):
        req = _link(nodeid, 1, b"x\0")
        assert pair.in_c(req, [144]) == pair.in_python(req, 144)
        req = _link(halves.nodes["c"]["f"], nodeid, b"x\0")
        assert pair.in_c(req, [144]) == pair.in_python(req, 144)
