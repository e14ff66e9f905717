"""FUSE decoding and dispatch: the engine over a passthrough file system on a temp directory,
fed raw request bytes as the hot path hands them over."""

import errno
import os
import stat
import struct
import subprocess
import sys

import pytest

from fastvfs.fs import _tables
from fastvfs.fs._tables import HandleTable
from fastvfs.fs.passthrough import PassthroughFs
from fastvfs.fuse import abi
from fastvfs.fuse.abi import Opcode
from fastvfs.fuse.engine import FuseEngine

ROOT = abi.FUSE_ROOT_ID


class Session:
    def __init__(self, root, cache="never", **fs_options):
        self.handles = HandleTable(256)
        self.fs = PassthroughFs(root, self.handles, **fs_options)
        self.engine = FuseEngine(self.fs, cache)
        self.unique = 0

    def raw(self, opcode, nodeid=ROOT, body=b"", out_size=1 << 20, uid=0, gid=0, length=None):
        self.unique += 1
        total = abi.IN_HEADER_SIZE + len(body)
        req = abi.in_header.pack(total if length is None else length, opcode, self.unique,
                                 nodeid, uid, gid, 1, 0, 0) + body
        return self.engine.handle(req, out_size)

    def ok(self, *args, **kw):
        result = self.raw(*args, **kw)
        assert result is not None and result[0] == 0, result
        return result[1]

    def err(self, *args, **kw):
        result = self.raw(*args, **kw)
        assert result is not None and result[0] < 0, result
        return -result[0]

    def init(self, major=7, minor=38, flags=0xFFFFFFFF):
        return self.ok(Opcode.INIT, 0, abi.init_in.pack(major, minor, 1 << 17, flags, 0))

    def lookup(self, name, parent=ROOT):
        data = self.ok(Opcode.LOOKUP, parent, name + b"\0")
        return entry(data)

    def create(self, name, mode=0o644, flags=os.O_RDWR, parent=ROOT, uid=0, gid=0):
        data = self.ok(Opcode.CREATE, parent, abi.create_in.pack(flags, mode, 0, 0) + name + b"\0",
                       uid=uid, gid=gid)
        nodeid, st = entry(data)
        fh, _, _ = abi.open_out.unpack_from(data, abi.ENTRY_OUT_SIZE)
        return nodeid, st, fh


def entry(data):
    nodeid = abi.entry_out_head.unpack_from(data)[0]
    return nodeid, abi.attr.unpack_from(data, abi.entry_out_head.size)


def attr_of(data):
    return abi.attr.unpack_from(data, abi.attr_out_head.size)


@pytest.fixture
def s(tmp_path):
    session = Session(tmp_path)
    session.init()
    return session


def test_requests_before_init_fail_with_eio(tmp_path):
    sess = Session(tmp_path)
    assert sess.err(Opcode.GETATTR, ROOT, bytes(16)) == errno.EIO


def test_init_negotiates_protocol_and_capabilities(tmp_path):
    sess = Session(tmp_path)
    offered = abi.FUSE_ASYNC_READ | abi.FUSE_POSIX_LOCKS | abi.FUSE_SPLICE_READ
    out = abi.init_out.unpack(sess.init(minor=38, flags=offered))
    major, minor, _, flags, _, _, max_write, time_gran, max_pages, _, _ = out
    assert (major, minor) == (7, 38)
    # Never more than the guest offered, and only what the engine serves.
    assert flags == abi.FUSE_ASYNC_READ | abi.FUSE_POSIX_LOCKS
    assert max_write == 1 << 20 and max_pages == 256 and time_gran == 1


def test_init_accepts_7_27_and_refuses_older(tmp_path):
    sess = Session(tmp_path)
    assert abi.init_out.unpack(sess.init(minor=27))[1] == 27
    old = Session(tmp_path)
    assert old.err(Opcode.INIT, 0, abi.init_in.pack(7, 26, 0, 0, 0)) == errno.EPROTO


def test_init_with_newer_major_gets_our_version(tmp_path):
    sess = Session(tmp_path)
    out = abi.init_out.unpack(sess.ok(Opcode.INIT, 0, abi.init_in.pack(8, 0, 0, 0, 0)))
    assert out[:2] == (7, 38)
    assert not sess.engine.initialized


def test_unknown_opcodes_get_enosys(s):
    for opcode in (0, 7, 19, 39, 48, 99, 4096, 2 ** 32 - 1):
        assert s.err(opcode, ROOT, bytes(64)) == errno.ENOSYS


@pytest.mark.parametrize("opcode", [Opcode.LOOKUP, Opcode.SETATTR, Opcode.MKDIR, Opcode.RENAME2,
                                    Opcode.CREATE, Opcode.READ, Opcode.INIT])
def test_bodies_shorter_than_the_op_struct_are_einval(s, opcode):
    assert s.err(opcode, ROOT, b"\x01\x02") == errno.EINVAL


@pytest.mark.parametrize("name", [b"a/b", b"..", b".", b"", b"x" * 256])
def test_invalid_names_refused_for_creation(s, name):
    code = s.err(Opcode.MKDIR, ROOT, abi.mkdir_in.pack(0o755, 0) + name + b"\0")
    assert code in (errno.EINVAL, errno.ENAMETOOLONG)


def test_name_without_nul_refused(s):
    assert s.err(Opcode.LOOKUP, ROOT, b"abc") == errno.EINVAL


def test_dotdot_of_root_is_root(s, tmp_path):
    nodeid, attr = s.lookup(b"..")
    assert nodeid == ROOT
    assert attr[0] == os.stat(tmp_path).st_ino


def test_lookup_counts_and_forget(s, tmp_path):
    (tmp_path / "f").write_text("x")
    a, _ = s.lookup(b"f")
    b, _ = s.lookup(b"f")
    assert a == b and s.fs.inodes.nlookup(a) == 2
    assert s.raw(Opcode.FORGET, a, struct.pack("<Q", 1)) is None
    assert s.fs.inodes.nlookup(a) == 1
    # Over-forgetting never underflows; the inode simply goes.
    s.raw(Opcode.FORGET, a, struct.pack("<Q", 10))
    assert s.err(Opcode.GETATTR, a, bytes(16)) == errno.ENOENT
    assert s.raw(Opcode.FORGET, ROOT, struct.pack("<Q", 10**9)) is None
    assert s.ok(Opcode.GETATTR, ROOT, bytes(16))


def test_the_key_index_grows_with_the_inodes_known(s, tmp_path):
    """The node id table's key index starts small and doubles as the inodes known outnumber
    its buckets: every inode known before and after a growth is found again by its key (a
    second LOOKUP counts on the same node id), a forgotten one gets a new node id."""
    table = s.fs.inodes.table
    start = table.nbuckets
    count = 3 * start
    for i in range(count):
        (tmp_path / f"f{i}").write_text("")
    first = [s.lookup(b"f%d" % i)[0] for i in range(count)]
    assert table.nbuckets >= len(s.fs.inodes) > start
    for nodeid in first[::2]:
        s.raw(Opcode.FORGET, nodeid, struct.pack("<Q", 1))
    again = [s.lookup(b"f%d" % i)[0] for i in range(count)]
    for i, (a, b) in enumerate(zip(first, again)):
        if i % 2:
            assert a == b and s.fs.inodes.nlookup(a) == 2
        else:
            assert a != b and s.fs.inodes.nlookup(b) == 1


def test_batch_forget_with_a_lying_count(s, tmp_path):
    (tmp_path / "f").write_text("x")
    a, _ = s.lookup(b"f")
    body = abi.batch_forget_in.pack(2 ** 32 - 1, 0) + abi.forget_one.pack(a, 1)
    assert s.raw(Opcode.BATCH_FORGET, 0, body) is None
    assert s.err(Opcode.GETATTR, a, bytes(16)) == errno.ENOENT


def test_create_write_read_with_caller_ownership(s, tmp_path):
    os.chmod(tmp_path, 0o777)  # the caller's credentials are what the host checks
    nodeid, attr, fh = s.create(b"new", 0o640, uid=1234, gid=5678)
    st = os.stat(tmp_path / "new")
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert stat.S_IMODE(st.st_mode) == 0o640
    body = abi.write_in.pack(fh, 0, 5, 0, 0, 0, 0) + b"hello"
    assert abi.write_out.unpack(s.ok(Opcode.WRITE, nodeid, body))[0] == 5
    assert s.ok(Opcode.READ, nodeid, abi.read_in.pack(fh, 1, 100, 0, 0, 0, 0)) == b"ello"
    s.ok(Opcode.RELEASE, nodeid, abi.release_in.pack(fh, 0, 0, 0))
    assert s.err(Opcode.READ, nodeid, abi.read_in.pack(fh, 0, 1, 0, 0, 0, 0)) == errno.EBADF


def test_create_denied_where_the_caller_may_not_write(s, tmp_path):
    os.chmod(tmp_path, 0o755)
    assert s.err(Opcode.MKDIR, ROOT, abi.mkdir_in.pack(0o755, 0) + b"d\0", uid=77, gid=88) == errno.EACCES
    assert not (tmp_path / "d").exists()


def test_mkdir_symlink_mknod_owned_by_caller(s, tmp_path):
    os.chmod(tmp_path, 0o777)
    s.ok(Opcode.MKDIR, ROOT, abi.mkdir_in.pack(0o750, 0) + b"d\0", uid=77, gid=88)
    s.ok(Opcode.SYMLINK, ROOT, b"l\0target\0", uid=77, gid=88)
    s.ok(Opcode.MKNOD, ROOT, abi.mknod_in.pack(stat.S_IFIFO | 0o600, 0, 0, 0) + b"p\0",
         uid=77, gid=88)
    for name in ("d", "l", "p"):
        st = os.lstat(tmp_path / name)
        assert (st.st_uid, st.st_gid) == (77, 88), name
    assert os.readlink(tmp_path / "l") == "target"
    nodeid, _ = s.lookup(b"l")
    assert s.ok(Opcode.READLINK, nodeid) == b"target"


def test_setattr_mode_owner_size_times(s, tmp_path):
    (tmp_path / "f").write_bytes(b"0123456789")
    nodeid, _ = s.lookup(b"f")
    valid = (abi.FATTR_MODE | abi.FATTR_UID | abi.FATTR_GID | abi.FATTR_SIZE | abi.FATTR_ATIME |
             abi.FATTR_MTIME)
    body = abi.setattr_in.pack(valid, 0, 0, 4, 0, 1_000_000_000, 1_500_000_000, 0, 123, 456789, 0,
                               0o4711, 0, 42, 43, 0)
    attr = attr_of(s.ok(Opcode.SETATTR, nodeid, body))
    st = os.stat(tmp_path / "f")
    assert st.st_size == 4 and attr[1] == 4
    assert (st.st_uid, st.st_gid) == (42, 43)
    assert stat.S_IMODE(st.st_mode) == 0o711  # chown after chmod clears setuid, as on the host
    assert st.st_atime_ns == 1_000_000_000 * 10**9 + 123
    assert st.st_mtime_ns == 1_500_000_000 * 10**9 + 456789
    now = abi.FATTR_MTIME | abi.FATTR_MTIME_NOW
    s.ok(Opcode.SETATTR, nodeid, abi.setattr_in.pack(now, *([0] * 15)))
    assert os.stat(tmp_path / "f").st_mtime > 1_600_000_000


def test_rename2_flags(s, tmp_path):
    (tmp_path / "a").write_text("A")
    (tmp_path / "b").write_text("B")
    noreplace = abi.rename2_in.pack(ROOT, abi.RENAME_NOREPLACE, 0) + b"a\0b\0"
    assert s.err(Opcode.RENAME2, ROOT, noreplace) == errno.EEXIST
    s.ok(Opcode.RENAME2, ROOT, abi.rename2_in.pack(ROOT, abi.RENAME_EXCHANGE, 0) + b"a\0b\0")
    assert (tmp_path / "a").read_text() == "B" and (tmp_path / "b").read_text() == "A"
    s.ok(Opcode.RENAME, ROOT, abi.rename_in.pack(ROOT) + b"a\0c\0")
    assert (tmp_path / "c").read_text() == "B" and not (tmp_path / "a").exists()
    assert s.err(Opcode.RENAME2, ROOT, abi.rename2_in.pack(ROOT, 1 << 5, 0) + b"c\0d\0") == errno.EINVAL


def test_link_unlink_rmdir(s, tmp_path):
    (tmp_path / "f").write_text("x")
    os.mkdir(tmp_path / "d")
    (tmp_path / "d" / "inner").write_text("y")
    nodeid, _ = s.lookup(b"f")
    _, attr = entry(s.ok(Opcode.LINK, ROOT, abi.link_in.pack(nodeid) + b"g\0"))
    assert attr[10] == 2  # nlink
    s.ok(Opcode.UNLINK, ROOT, b"f\0")
    assert s.err(Opcode.RMDIR, ROOT, b"d\0") == errno.ENOTEMPTY
    assert s.err(Opcode.UNLINK, ROOT, b"missing\0") == errno.ENOENT


def test_readdir_and_readdirplus(s, tmp_path):
    names = {f"file{i:03d}".encode() for i in range(50)}
    for n in names:
        (tmp_path / n.decode()).write_text("")
    fh = abi.open_out.unpack(s.ok(Opcode.OPENDIR, ROOT, abi.open_in.pack(0, 0)))[0]
    seen, offset = [], 0
    while True:
        data = s.ok(Opcode.READDIR, ROOT, abi.read_in.pack(fh, offset, 512, 0, 0, 0, 0))
        if not data:
            break
        pos = 0
        while pos < len(data):
            ino, off, namelen, _ = abi.dirent_head.unpack_from(data, pos)
            seen.append(data[pos + 24:pos + 24 + namelen])
            offset = off
            pos += abi.rec_align(24 + namelen)
    assert set(seen) == names | {b".", b".."} and len(seen) == len(names) + 2
    data = s.ok(Opcode.READDIRPLUS, ROOT, abi.read_in.pack(fh, 0, 1 << 16, 0, 0, 0, 0))
    pos, looked_up = 0, 0
    while pos < len(data):
        nodeid = abi.entry_out_head.unpack_from(data, pos)[0]
        _, _, namelen, _ = abi.dirent_head.unpack_from(data, pos + abi.ENTRY_OUT_SIZE)
        name = data[pos + abi.ENTRY_OUT_SIZE + 24:pos + abi.ENTRY_OUT_SIZE + 24 + namelen]
        assert (nodeid == 0) == (name in (b".", b".."))
        looked_up += nodeid != 0
        pos += abi.rec_align(abi.ENTRY_OUT_SIZE + 24 + namelen)
    assert looked_up == len(names)
    s.ok(Opcode.RELEASEDIR, ROOT, abi.release_in.pack(fh, 0, 0, 0))


def _plus_entries(data, cookies=False):
    """[(name, fuse_entry_out bytes)] of a READDIRPLUS reply (or each entry's cookie)."""
    pos, out = 0, []
    while pos < len(data):
        _, off, namelen, _ = abi.dirent_head.unpack_from(data, pos + abi.ENTRY_OUT_SIZE)
        start = pos + abi.ENTRY_OUT_SIZE + 24
        out.append(off if cookies else (data[start:start + namelen],
                                        data[pos:pos + abi.ENTRY_OUT_SIZE]))
        pos += abi.rec_align(abi.ENTRY_OUT_SIZE + 24 + namelen)
    return out


def test_readdirplus_answers_known_inodes_in_c(tmp_path):
    """Entries whose inode the node id table holds are answered by it (no Python lookup),
    byte for byte what the engine's lookup gives, each lookup counted once; an entry removed
    since the listing was taken is left out."""
    s = Session(tmp_path, cache="auto")
    s.init()
    for i in range(20):
        (tmp_path / f"f{i:02d}").write_bytes(b"x" * i)
    (tmp_path / "sub").mkdir()
    os.symlink("f00", tmp_path / "ln")
    fh = abi.open_out.unpack(s.ok(Opcode.OPENDIR, ROOT, abi.open_in.pack(0, 0)))[0]
    first = _plus_entries(s.ok(Opcode.READDIRPLUS, ROOT,
                               abi.read_in.pack(fh, 0, 1 << 16, 0, 0, 0, 0)))
    assert len(first) == 24                       # ".", "..", 20 files, sub, ln
    calls = []
    lookup = s.fs.lookup
    s.fs.lookup = lambda *a: calls.append(a) or lookup(*a)
    second = _plus_entries(s.ok(Opcode.READDIRPLUS, ROOT,
                                abi.read_in.pack(fh, 0, 1 << 16, 0, 0, 0, 0)))
    assert calls == []                            # every inode known: none in Python
    assert second == first
    for name, raw in second:
        nodeid = abi.entry_out_head.unpack_from(raw)[0]
        if name not in (b".", b".."):
            assert s.fs.inodes.nlookup(nodeid) == 2, name
    # Removed after the listing was taken (a fresh one is taken at offset 0).
    data = s.ok(Opcode.READDIRPLUS, ROOT, abi.read_in.pack(fh, 0, 600, 0, 0, 0, 0))
    offset = _plus_entries(data, cookies=True)[-1]
    rest_names = [n for n, _ in first][offset:]
    gone = next(n for n in rest_names if n.startswith(b"f"))
    os.unlink(tmp_path / gone.decode())
    rest = _plus_entries(s.ok(Opcode.READDIRPLUS, ROOT,
                              abi.read_in.pack(fh, offset, 1 << 16, 0, 0, 0, 0)))
    assert [n for n, _ in rest] == [n for n in rest_names if n != gone]
    assert calls == []
    # Offsets past the listing, and buffers too small for one record, give empty replies.
    for op in (Opcode.READDIR, Opcode.READDIRPLUS):
        for offset, size in ((24, 4096), (1000, 4096), (2 ** 64 - 1, 4096), (0, 8), (3, 0)):
            assert s.ok(op, ROOT, abi.read_in.pack(fh, offset, size, 0, 0, 0, 0)) == b""
    s.ok(Opcode.RELEASEDIR, ROOT, abi.release_in.pack(fh, 0, 0, 0))


@pytest.mark.parametrize("file_handles", ["never", "prefer"])
def test_readdirplus_mixes_known_and_new_inodes(tmp_path, file_handles):
    """A listing with new inodes among known ones: every entry is looked up in C, the new ones
    entered there too, except where inodes may be held by file handle: then each new one
    alone goes to the Python lookup; paging through it in small buffers gives the same entries
    as one large reply, each exactly once."""
    s = Session(tmp_path, cache="auto", file_handles=file_handles)
    s.init()
    for i in range(0, 30, 2):
        (tmp_path / f"f{i:02d}").write_bytes(b"x" * i)
    fh = abi.open_out.unpack(s.ok(Opcode.OPENDIR, ROOT, abi.open_in.pack(0, 0)))[0]
    s.ok(Opcode.READDIRPLUS, ROOT, abi.read_in.pack(fh, 0, 1 << 16, 0, 0, 0, 0))
    for i in range(1, 30, 4):
        (tmp_path / f"f{i:02d}").write_bytes(b"y" * i)
    new = {f"f{i:02d}".encode() for i in range(1, 30, 4)}
    calls = []
    lookup = s.fs.lookup
    s.fs.lookup = lambda *a: calls.append(a[1]) or lookup(*a)
    whole = _plus_entries(s.ok(Opcode.READDIRPLUS, ROOT,
                               abi.read_in.pack(fh, 0, 1 << 16, 0, 0, 0, 0)))
    assert calls == []
    assert len(whole) == 2 + 15 + len(new)
    for name, raw in whole:
        nodeid = abi.entry_out_head.unpack_from(raw)[0]
        if name in (b".", b".."):
            assert raw == bytes(abi.ENTRY_OUT_SIZE)
        else:
            # Two listings counted two lookups for the old files, one for the new.
            assert s.fs.inodes.nlookup(nodeid) == (1 if name in new else 2), name
            assert s.lookup(name)[0] == nodeid
    # Page through a fresh listing 400 bytes at a time (2 records at most per reply).
    paged, offset = [], 0
    while True:
        data = s.ok(Opcode.READDIRPLUS, ROOT, abi.read_in.pack(fh, offset, 400, 0, 0, 0, 0))
        if not data:
            break
        assert len(data) <= 400
        paged += [n for n, _ in _plus_entries(data)]
        offset = _plus_entries(data, cookies=True)[-1]
    assert paged == [n for n, _ in whole]
    s.ok(Opcode.RELEASEDIR, ROOT, abi.release_in.pack(fh, 0, 0, 0))


def test_symlinks_are_never_followed_out_of_the_share(s, tmp_path):
    outside = tmp_path.parent / (tmp_path.name + "-outside")
    outside.mkdir()
    (outside / "secret").write_text("secret")
    os.symlink(outside, tmp_path / "escape")
    os.symlink(outside / "secret", tmp_path / "secretlink")
    esc, attr = s.lookup(b"escape")
    assert stat.S_ISLNK(attr[9])
    # A lookup beneath a symlink is a lookup in a non-directory.
    assert s.err(Opcode.LOOKUP, esc, b"secret\0") in (errno.ENOTDIR, errno.ENOENT)
    link, _ = s.lookup(b"secretlink")
    assert s.err(Opcode.OPEN, link, abi.open_in.pack(os.O_RDONLY, 0)) == errno.ELOOP
    assert s.err(Opcode.OPENDIR, esc, abi.open_in.pack(0, 0)) == errno.ENOTDIR


def test_special_files_are_never_opened(s, tmp_path):
    os.mkfifo(tmp_path / "fifo")
    nodeid, _ = s.lookup(b"fifo")
    # Opening a FIFO with no writer would block the daemon forever; it must be refused.
    assert s.err(Opcode.OPEN, nodeid, abi.open_in.pack(os.O_RDONLY, 0)) == errno.EACCES


def test_statfs_access_fsync_fallocate_lseek(s, tmp_path):
    blocks, _, _, _, _, bsize, namelen, _, _ = abi.kstatfs.unpack(s.ok(Opcode.STATFS, ROOT))
    assert blocks > 0 and bsize > 0 and namelen == 255
    s.ok(Opcode.ACCESS, ROOT, abi.access_in.pack(os.R_OK, 0))
    nodeid, _, fh = s.create(b"f")
    s.ok(Opcode.FALLOCATE, nodeid, abi.fallocate_in.pack(fh, 0, 1 << 20, 0, 0))
    assert os.stat(tmp_path / "f").st_size == 1 << 20
    s.ok(Opcode.WRITE, nodeid, abi.write_in.pack(fh, 4096, 1, 0, 0, 0, 0) + b"x")
    s.ok(Opcode.FSYNC, nodeid, abi.fsync_in.pack(fh, 1, 0))
    s.ok(Opcode.FLUSH, nodeid, abi.flush_in.pack(fh, 0, 0, 0))
    assert abi.lseek_out.unpack(s.ok(Opcode.LSEEK, nodeid, abi.lseek_in.pack(fh, 0, os.SEEK_DATA, 0)))[0] == os.lseek(
        os.open(tmp_path / "f", os.O_RDONLY), 0, os.SEEK_DATA)
    assert s.err(Opcode.LSEEK, nodeid, abi.lseek_in.pack(fh, 0, 77, 0)) == errno.EINVAL
    s.ok(Opcode.SYNCFS, ROOT, bytes(8))


def test_copy_file_range_copies_between_handles(s, tmp_path):
    src, _, fh_in = s.create(b"src")
    dst, _, fh_out = s.create(b"dst")
    data = os.urandom(3 * 4096 + 17)
    (tmp_path / "src").write_bytes(data)
    reply = s.ok(Opcode.COPY_FILE_RANGE, src,
                 abi.copy_file_range_in.pack(fh_in, 100, dst, fh_out, 5, len(data), 0))
    assert abi.write_out.unpack(reply) == (len(data) - 100, 0)  # short at end of file
    assert (tmp_path / "dst").read_bytes() == bytes(5) + data[100:]
    # Past the end: nothing copied.
    reply = s.ok(Opcode.COPY_FILE_RANGE, src,
                 abi.copy_file_range_in.pack(fh_in, len(data) + 1, dst, fh_out, 0, 10, 0))
    assert abi.write_out.unpack(reply) == (0, 0)
    # No flags are defined; handles must be live; offsets are signed in the host call.
    assert s.err(Opcode.COPY_FILE_RANGE, src,
                 abi.copy_file_range_in.pack(fh_in, 0, dst, fh_out, 0, 1, 1)) == errno.EINVAL
    assert s.err(Opcode.COPY_FILE_RANGE, src,
                 abi.copy_file_range_in.pack(fh_in, 0, dst, 9999, 0, 1, 0)) == errno.EBADF
    assert s.err(Opcode.COPY_FILE_RANGE, src,
                 abi.copy_file_range_in.pack(fh_in, 1 << 63, dst, fh_out, 0, 1, 0)) == errno.EINVAL
    # A huge length is capped so the count fits the reply's 32 bits.
    reply = s.ok(Opcode.COPY_FILE_RANGE, src,
                 abi.copy_file_range_in.pack(fh_in, 0, dst, fh_out, 0, 1 << 40, 0))
    assert abi.write_out.unpack(reply) == (len(data), 0)
    assert (tmp_path / "dst").read_bytes()[:len(data)] == data


def test_copy_file_range_refused_on_a_read_only_share(tmp_path):
    (tmp_path / "a").write_bytes(b"abc")
    session = Session(tmp_path)
    session.engine.readonly = True
    session.init()
    nodeid, _ = session.lookup(b"a")
    assert session.err(Opcode.COPY_FILE_RANGE, nodeid,
                       abi.copy_file_range_in.pack(1, 0, nodeid, 1, 0, 1, 0)) == errno.EROFS


def test_new_init_resets_the_session(s, tmp_path):
    nodeid, _, fh = s.create(b"f")
    assert s.handles.count == 1
    s.init()
    assert s.handles.count == 0
    assert s.err(Opcode.GETATTR, nodeid, bytes(16)) == errno.ENOENT
    s.ok(Opcode.DESTROY)
    assert s.err(Opcode.GETATTR, ROOT, bytes(16)) == errno.EIO


def test_extensions_not_negotiated_are_refused(s):
    req = abi.in_header.pack(48, Opcode.GETATTR, 1, ROOT, 0, 0, 0, 1, 0) + bytes(8)
    assert s.engine.handle(req, 4096)[0] == -errno.EINVAL


# The open flags of --cache never and metadata: direct I/O, and several direct writes to one
# file at once.
DIRECT = abi.FOPEN_DIRECT_IO | abi.FOPEN_PARALLEL_DIRECT_WRITES


def test_cache_policy_timeouts_and_open_flags(tmp_path):
    (tmp_path / "f").write_text("x")
    for mode, timeout, flags in (("never", 0, DIRECT), ("auto", 1, 0),
                                 ("metadata", 86400, DIRECT),
                                 ("always", 86400, abi.FOPEN_KEEP_CACHE)):
        sess = Session(tmp_path, mode)
        sess.init()
        data = sess.ok(Opcode.LOOKUP, ROOT, b"f\0")
        assert abi.entry_out_head.unpack_from(data)[2:4] == (timeout, timeout)
        nodeid = abi.entry_out_head.unpack_from(data)[0]
        assert abi.open_out.unpack(sess.ok(Opcode.OPEN, nodeid, abi.open_in.pack(0, 0)))[1] == flags


class TestXattr:
    @pytest.fixture
    def x(self, tmp_path):
        sess = Session(tmp_path)
        sess.engine.xattr = True
        sess.init()
        return sess

    def test_off_by_default(self, s, tmp_path):
        (tmp_path / "f").write_text("")
        nodeid, _ = s.lookup(b"f")
        assert s.err(Opcode.GETXATTR, nodeid, abi.getxattr_in.pack(0, 0) + b"user.a\0") == errno.ENOSYS

    def test_set_get_list_remove(self, x, tmp_path):
        (tmp_path / "f").write_text("")
        nodeid, _ = x.lookup(b"f")
        x.ok(Opcode.SETXATTR, nodeid, abi.setxattr_in.pack(5, 0) + b"user.a\0hello")
        assert os.getxattr(tmp_path / "f", "user.a") == b"hello"
        assert abi.getxattr_out.unpack(
            x.ok(Opcode.GETXATTR, nodeid, abi.getxattr_in.pack(0, 0) + b"user.a\0"))[0] == 5
        assert x.ok(Opcode.GETXATTR, nodeid, abi.getxattr_in.pack(64, 0) + b"user.a\0") == b"hello"
        assert x.err(Opcode.GETXATTR, nodeid, abi.getxattr_in.pack(2, 0) + b"user.a\0") == errno.ERANGE
        listing = x.ok(Opcode.LISTXATTR, nodeid, abi.getxattr_in.pack(256, 0))
        assert b"user.a\0" in listing
        assert x.err(Opcode.SETXATTR, nodeid,
                     abi.setxattr_in.pack(1, os.XATTR_CREATE) + b"user.a\0x") == errno.EEXIST
        x.ok(Opcode.REMOVEXATTR, nodeid, b"user.a\0")
        assert x.err(Opcode.GETXATTR, nodeid, abi.getxattr_in.pack(64, 0) + b"user.a\0") == errno.ENODATA

    def test_symlink_xattrs_stay_on_the_link(self, x, tmp_path):
        (tmp_path / "f").write_text("")
        os.symlink("f", tmp_path / "l")
        nodeid, _ = x.lookup(b"l")
        x.ok(Opcode.SETXATTR, nodeid, abi.setxattr_in.pack(1, 0) + b"trusted.t\0v")
        assert "trusted.t" in os.listxattr(tmp_path / "l", follow_symlinks=False)
        assert "trusted.t" not in os.listxattr(tmp_path / "f")

    def test_value_shorter_than_declared(self, x, tmp_path):
        (tmp_path / "f").write_text("")
        nodeid, _ = x.lookup(b"f")
        assert x.err(Opcode.SETXATTR, nodeid, abi.setxattr_in.pack(100, 0) + b"user.a\0v") == errno.EINVAL


def test_tmpfile_can_be_linked_later(s, tmp_path):
    body = abi.create_in.pack(os.O_RDWR, 0o600, 0, 0)
    data = s.ok(Opcode.TMPFILE, ROOT, body)
    nodeid, attr = entry(data)
    fh = abi.open_out.unpack_from(data, abi.ENTRY_OUT_SIZE)[0]
    assert attr[10] == 0  # no name yet
    s.ok(Opcode.WRITE, nodeid, abi.write_in.pack(fh, 0, 3, 0, 0, 0, 0) + b"tmp")
    assert os.listdir(tmp_path) == []
    s.ok(Opcode.LINK, ROOT, abi.link_in.pack(nodeid) + b"named\0")
    assert (tmp_path / "named").read_bytes() == b"tmp"


def test_writeback_opens_write_only_files_read_write(tmp_path):
    handles = HandleTable(16)
    fs = PassthroughFs(tmp_path, handles, writeback=True)
    engine = FuseEngine(fs, "auto", writeback=True)
    (tmp_path / "f").write_bytes(b"abc")
    sess = Session.__new__(Session)
    sess.handles, sess.fs, sess.engine, sess.unique = handles, fs, engine, 0
    init = abi.init_out.unpack(sess.init())
    assert init[3] & abi.FUSE_WRITEBACK_CACHE
    nodeid, _ = sess.lookup(b"f")
    fh = abi.open_out.unpack(sess.ok(Opcode.OPEN, nodeid,
                                     abi.open_in.pack(os.O_WRONLY | os.O_APPEND, 0)))[0]
    # The guest may read back pages of a file it opened write-only; appends are its job.
    assert sess.ok(Opcode.READ, nodeid, abi.read_in.pack(fh, 0, 3, 0, 0, 0, 0)) == b"abc"
    sess.ok(Opcode.WRITE, nodeid, abi.write_in.pack(fh, 0, 1, 0, 0, 0, 0) + b"X")
    assert (tmp_path / "f").read_bytes() == b"Xbc"


def test_no_readdirplus_is_not_offered(tmp_path):
    sess = Session(tmp_path)
    sess.engine = FuseEngine(sess.fs, "auto", readdirplus=False)
    flags = abi.init_out.unpack(sess.init())[3]
    assert not flags & (abi.FUSE_DO_READDIRPLUS | abi.FUSE_READDIRPLUS_AUTO)


class TestLocks:
    """POSIX record locks and flock, held on the host as OFD locks per guest lock owner."""

    @pytest.fixture
    def lk(self, s, tmp_path):
        (tmp_path / "f").write_bytes(b"x" * 100)
        nodeid, _ = s.lookup(b"f")
        fh = abi.open_out.unpack(s.ok(Opcode.OPEN, nodeid, abi.open_in.pack(os.O_RDWR, 0)))[0]
        return s, nodeid, fh, tmp_path / "f"

    @staticmethod
    def body(fh, owner, start, end, lock_type, flags=0):
        return abi.lk_in.pack(fh, owner, start, end, lock_type, 1, flags, 0)

    def test_owners_conflict_and_getlk_reports_it(self, lk):
        import fcntl
        s, nodeid, fh, _ = lk
        s.ok(Opcode.SETLK, nodeid, self.body(fh, 1, 0, 9, fcntl.F_WRLCK))
        assert s.err(Opcode.SETLK, nodeid, self.body(fh, 2, 5, 20, fcntl.F_RDLCK)) == errno.EAGAIN
        start, end, lock_type, _ = abi.lk_out.unpack(
            s.ok(Opcode.GETLK, nodeid, self.body(fh, 2, 0, abi.OFFSET_MAX, fcntl.F_WRLCK)))
        assert (start, end, lock_type) == (0, 9, fcntl.F_WRLCK)
        # The same owner extends its own lock freely; another range is free for owner 2.
        s.ok(Opcode.SETLK, nodeid, self.body(fh, 1, 0, 19, fcntl.F_WRLCK))
        s.ok(Opcode.SETLK, nodeid, self.body(fh, 2, 50, 60, fcntl.F_WRLCK))
        held = abi.lk_out.unpack(s.ok(Opcode.GETLK, nodeid, self.body(fh, 1, 50, 60, fcntl.F_RDLCK)))
        assert held[:3] == (50, 60, fcntl.F_WRLCK)  # owner 2's
        free = abi.lk_out.unpack(s.ok(Opcode.GETLK, nodeid, self.body(fh, 1, 70, 80, fcntl.F_WRLCK)))
        assert free[2] == fcntl.F_UNLCK

    def test_getlk_names_the_guest_process_holding_the_lock(self, lk):
        """l_pid of F_GETLK is the guest process that took the conflicting lock (its
        fuse_lk_in.lk.pid), after merges and splits; 0 for a host process's lock (a host pid
        means nothing in the guest)."""
        import fcntl
        s, nodeid, fh, path = lk

        def getlk(owner, start, end, lock_type=fcntl.F_WRLCK):
            body = abi.lk_in.pack(fh, owner, start, end, lock_type, 0, 0, 0)
            return abi.lk_out.unpack(s.ok(Opcode.GETLK, nodeid, body))

        def setlk(owner, pid, start, end, lock_type):
            s.ok(Opcode.SETLK, nodeid, abi.lk_in.pack(fh, owner, start, end, lock_type, pid, 0, 0))

        setlk(1, 101, 0, 9, fcntl.F_WRLCK)
        setlk(1, 101, 10, 19, fcntl.F_WRLCK)  # merges with [0, 9] on the host
        setlk(2, 202, 40, 49, fcntl.F_RDLCK)
        assert getlk(3, 0, abi.OFFSET_MAX) == (0, 19, fcntl.F_WRLCK, 101)
        assert getlk(3, 45, 45) == (40, 49, fcntl.F_RDLCK, 202)
        setlk(1, 101, 5, 5, fcntl.F_UNLCK)  # splits it
        assert getlk(3, 6, 30) == (6, 19, fcntl.F_WRLCK, 101)
        setlk(1, 101, 0, abi.OFFSET_MAX, fcntl.F_UNLCK)
        setlk(2, 202, 0, abi.OFFSET_MAX, fcntl.F_UNLCK)
        with open(path, "r+") as host:
            fcntl.lockf(host, fcntl.LOCK_EX, 10, 60)
            assert getlk(3, 0, abi.OFFSET_MAX) == (60, 69, fcntl.F_WRLCK, 0)

    def test_host_processes_see_guest_locks(self, lk):
        import fcntl
        s, nodeid, fh, path = lk
        s.ok(Opcode.SETLK, nodeid, self.body(fh, 1, 0, abi.OFFSET_MAX, fcntl.F_WRLCK))
        probe = ("import fcntl,sys; f=open(sys.argv[1],'r+');\n"
                 "try: fcntl.lockf(f, fcntl.LOCK_EX|fcntl.LOCK_NB); print('free')\n"
                 "except OSError: print('locked')")
        out = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True)
        assert out.stdout.strip() == "locked"
        # FLUSH (a close in the guest) drops the owner's POSIX locks.
        s.ok(Opcode.FLUSH, nodeid, abi.flush_in.pack(fh, 0, 0, 1))
        out = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True)
        assert out.stdout.strip() == "free"

    def test_setlkw_waits_without_blocking_the_queue(self, lk):
        import fcntl
        s, nodeid, fh, _ = lk
        s.ok(Opcode.SETLK, nodeid, self.body(fh, 1, 0, 9, fcntl.F_WRLCK))
        result = s.raw(Opcode.SETLKW, nodeid, self.body(fh, 2, 0, 9, fcntl.F_WRLCK))
        assert callable(result)

        class Pending:
            def __init__(self):
                self.event = threading.Event()

            def complete(self, error, payload=b""):
                self.error = error
                self.event.set()

        import threading
        pending = Pending()
        result(pending)
        assert not pending.event.wait(0.3)  # still waiting; other requests are served
        assert s.ok(Opcode.GETATTR, ROOT, bytes(16))
        s.ok(Opcode.SETLK, nodeid, self.body(fh, 1, 0, 9, fcntl.F_UNLCK))
        assert pending.event.wait(5) and pending.error == 0
        assert s.err(Opcode.SETLK, nodeid, self.body(fh, 1, 0, 9, fcntl.F_RDLCK)) == errno.EAGAIN

    def test_flock_between_open_files_and_release(self, lk):
        import fcntl
        s, nodeid, fh, path = lk
        flock = abi.FUSE_LK_FLOCK
        s.ok(Opcode.SETLK, nodeid, self.body(fh, 11, 0, 0, fcntl.F_WRLCK, flock))
        assert s.err(Opcode.SETLK, nodeid, self.body(fh, 12, 0, 0, fcntl.F_RDLCK, flock)) == errno.EAGAIN
        # flock and POSIX locks are separate kinds on Linux.
        s.ok(Opcode.SETLK, nodeid, self.body(fh, 12, 0, 9, fcntl.F_WRLCK))
        with open(path) as f, pytest.raises(BlockingIOError):
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        s.ok(Opcode.RELEASE, nodeid, abi.release_in.pack(fh, 0, abi.FUSE_RELEASE_FLOCK_UNLOCK, 11))
        other = abi.open_out.unpack(s.ok(Opcode.OPEN, nodeid, abi.open_in.pack(os.O_RDONLY, 0)))[0]
        s.ok(Opcode.SETLK, nodeid, self.body(other, 12, 0, 0, fcntl.F_RDLCK, flock))

    @pytest.mark.parametrize("start,end,lock_type", [(10, 5, 1), (0, 1 << 63, 1), (0, 10, 7)])
    def test_invalid_locks(self, lk, start, end, lock_type):
        s, nodeid, fh, _ = lk
        assert s.err(Opcode.SETLK, nodeid, self.body(fh, 1, start, end, lock_type)) == errno.EINVAL

    def test_a_lock_descriptor_in_use_is_not_closed_under_its_request(self, lk):
        """A FLUSH on another queue drops the owner's description while a request uses it:
        the description stays open until that request is done, so its number is not given
        to another file, and closes then (the lock taken on it goes with it)."""
        import fcntl
        from fastvfs.fs import _tables
        s, nodeid, fh, path = lk
        s.ok(Opcode.SETLK, nodeid, self.body(fh, 1, 0, 9, fcntl.F_WRLCK))
        ref = _tables.lock_ref(s.handles, nodeid, 1, _tables.LOCK_KIND_POSIX, fh)
        fd = ref.fd
        s.ok(Opcode.FLUSH, nodeid, abi.flush_in.pack(fh, 0, 0, 1))
        assert s.fs.lock_fds == {} and s.handles.lock_fds_open == 0
        os.fstat(fd)
        assert s.err(Opcode.SETLK, nodeid, self.body(fh, 2, 0, 0, fcntl.F_RDLCK)) == errno.EAGAIN
        ref.put()
        ref.put()  # once only
        with pytest.raises(OSError):
            os.fstat(fd)
        s.ok(Opcode.SETLK, nodeid, self.body(fh, 2, 0, 0, fcntl.F_RDLCK))

    def test_getlk_keeps_one_question_description_per_inode(self, lk):
        """An owner without locks asks through the inode's question description: opened once,
        counted like a lock description, and gone at a FLUSH of the inode or the RELEASE of
        the handle it went through; a GETLK through a handle that is not open still answers,
        through a description opened for that question only."""
        import fcntl
        s, nodeid, fh, path = lk
        s.ok(Opcode.SETLK, nodeid, self.body(fh, 1, 0, 9, fcntl.F_WRLCK))
        for owner in (2, 3, 4):
            held = abi.lk_out.unpack(
                s.ok(Opcode.GETLK, nodeid, self.body(fh, owner, 5, 5, fcntl.F_RDLCK)))
            assert held == (0, 9, fcntl.F_WRLCK, 1)
        assert set(s.fs.lock_fds) == {(nodeid, 1, "posix"), (nodeid, None, "question")}
        assert s.handles.lock_fds_open == 2
        # The question description holds no lock of its own.
        with open(path) as probe:
            got = fcntl.fcntl(probe, fcntl.F_OFD_GETLK,
                              struct.pack("hhxxxxqqixxxx", fcntl.F_WRLCK, 0, 10, 0, 0))
        assert struct.unpack("hhxxxxqqixxxx", got)[0] == fcntl.F_UNLCK
        s.ok(Opcode.FLUSH, nodeid, abi.flush_in.pack(fh, 0, 0, 1))
        assert s.fs.lock_fds == {} and s.handles.lock_fds_open == 0
        free = abi.lk_out.unpack(s.ok(Opcode.GETLK, nodeid, self.body(fh, 2, 0, 9, fcntl.F_WRLCK)))
        assert free == (0, 0, fcntl.F_UNLCK, 0)
        assert set(s.fs.lock_fds) == {(nodeid, None, "question")}
        s.ok(Opcode.RELEASE, nodeid, abi.release_in.pack(fh, 0, 0, 0))
        assert s.fs.lock_fds == {} and s.handles.lock_fds_open == 0
        with open(path, "r+") as host:
            # An OFD lock: this process's own descriptors of the file close meanwhile.
            fcntl.fcntl(host, fcntl.F_OFD_SETLK,
                        struct.pack("hhxxxxqqixxxx", fcntl.F_WRLCK, 0, 60, 10, 0))
            held = abi.lk_out.unpack(
                s.ok(Opcode.GETLK, nodeid, self.body(fh, 2, 0, abi.OFFSET_MAX, fcntl.F_RDLCK)))
            assert held == (60, 69, fcntl.F_WRLCK, 0)
        assert s.fs.lock_fds == {} and s.handles.lock_fds_open == 0

    def test_forget_drops_the_inode_locks(self, lk):
        import fcntl
        s, nodeid, fh, path = lk
        s.ok(Opcode.SETLK, nodeid, self.body(fh, 1, 0, 9, fcntl.F_WRLCK))
        s.ok(Opcode.RELEASE, nodeid, abi.release_in.pack(fh, 0, 0, 0))
        s.raw(Opcode.FORGET, nodeid, struct.pack("<Q", 1))
        assert s.fs.lock_fds == {}


def acl(*entries):
    """A POSIX ACL xattr value: (tag, perm, id) entries after the version-2 header."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


ACL_USER_OBJ, ACL_GROUP_OBJ, ACL_OTHER = 0x01, 0x04, 0x20
NO_ID = 0xFFFFFFFF


class TestPosixAcl:
    @pytest.fixture
    def a(self, tmp_path):
        sess = Session(tmp_path)
        sess.engine = FuseEngine(sess.fs, "auto", xattr=True, posix_acl=True)
        flags = abi.init_out.unpack(sess.init())[3]
        assert flags & abi.FUSE_POSIX_ACL and flags & abi.FUSE_DONT_MASK
        return sess

    def create_mode(self, a, tmp_path, parent, name, mode, umask):
        body = abi.create_in.pack(os.O_RDWR, mode, umask, 0) + name + b"\0"
        a.ok(Opcode.CREATE, parent, body)
        return stat.S_IMODE(os.stat(tmp_path / name.decode()).st_mode)

    def test_umask_applied_by_the_daemon(self, a, tmp_path):
        before = os.umask(0o002)
        os.umask(before)
        assert self.create_mode(a, tmp_path, ROOT, b"f", 0o666, 0o027) == 0o640
        a.ok(Opcode.MKDIR, ROOT, abi.mkdir_in.pack(0o777, 0o022) + b"d\0")
        assert stat.S_IMODE(os.stat(tmp_path / "d").st_mode) == 0o755
        # The thread's own umask is back as it was.
        after = os.umask(before)
        assert after == before

    def test_default_acl_wins_over_umask(self, a, tmp_path):
        os.mkdir(tmp_path / "inherit")
        os.setxattr(tmp_path / "inherit", "system.posix_acl_default",
                    acl((ACL_USER_OBJ, 7, NO_ID), (ACL_GROUP_OBJ, 5, NO_ID), (ACL_OTHER, 0, NO_ID)))
        parent, _ = a.lookup(b"inherit")
        mode = self.create_mode(a, tmp_path / "inherit", parent, b"f", 0o666, 0o077)
        assert mode == 0o640  # the ACL (rwx, r-x, ---) masked the requested 0666; umask ignored

    def test_acl_kill_sgid(self, a, tmp_path):
        (tmp_path / "g").write_text("")
        os.chmod(tmp_path / "g", 0o2770)
        nodeid, _ = a.lookup(b"g")
        value = acl((ACL_USER_OBJ, 6, NO_ID), (ACL_GROUP_OBJ, 6, NO_ID), (ACL_OTHER, 0, NO_ID))
        name = b"system.posix_acl_access\0"
        a.ok(Opcode.SETXATTR, nodeid,
             abi.setxattr_in_ext.pack(len(value), 0, abi.FUSE_SETXATTR_ACL_KILL_SGID, 0) + name + value)
        assert stat.S_IMODE(os.stat(tmp_path / "g").st_mode) == 0o660


class TestKillPrivV2:
    """HANDLE_KILLPRIV_V2: setuid/setgid cleared for unprivileged writers, as the kernel would."""

    @pytest.fixture
    def k(self, s, tmp_path):
        (tmp_path / "f").write_text("data")
        os.chmod(tmp_path / "f", 0o6775)
        nodeid, _ = s.lookup(b"f")
        return s, nodeid, tmp_path / "f"

    def mode(self, path):
        return stat.S_IMODE(os.stat(path).st_mode)

    def test_offered(self, s):
        assert abi.init_out.unpack(s.init())[3] & abi.FUSE_HANDLE_KILLPRIV_V2

    def test_write(self, k):
        s, nodeid, path = k
        fh = abi.open_out.unpack(s.ok(Opcode.OPEN, nodeid, abi.open_in.pack(os.O_RDWR, 0)))[0]
        s.ok(Opcode.WRITE, nodeid, abi.write_in.pack(fh, 0, 1, 0, 0, 0, 0) + b"x")
        assert self.mode(path) == 0o6775  # a privileged writer keeps the bits
        s.ok(Opcode.WRITE, nodeid,
             abi.write_in.pack(fh, 0, 1, abi.FUSE_WRITE_KILL_SUIDGID, 0, 0, 0) + b"x")
        assert self.mode(path) == 0o775

    def test_setgid_without_group_exec_stays(self, k):
        s, nodeid, path = k
        os.chmod(path, 0o2764)
        fh = abi.open_out.unpack(s.ok(Opcode.OPEN, nodeid, abi.open_in.pack(os.O_RDWR, 0)))[0]
        s.ok(Opcode.WRITE, nodeid,
             abi.write_in.pack(fh, 0, 1, abi.FUSE_WRITE_KILL_SUIDGID, 0, 0, 0) + b"x")
        assert self.mode(path) == 0o2764

    def test_truncate_and_open_trunc(self, k):
        s, nodeid, path = k
        valid = abi.FATTR_SIZE | abi.FATTR_KILL_SUIDGID
        s.ok(Opcode.SETATTR, nodeid, abi.setattr_in.pack(valid, 0, 0, 1, *([0] * 12)))
        assert self.mode(path) == 0o775 and path.stat().st_size == 1
        os.chmod(path, 0o4755)
        s.ok(Opcode.OPEN, nodeid, abi.open_in.pack(os.O_WRONLY | os.O_TRUNC,
                                                   abi.FUSE_OPEN_KILL_SUIDGID))
        assert self.mode(path) == 0o755 and path.stat().st_size == 0


class TestSupplementaryGroup:
    """FUSE_CREATE_SUPP_GROUP: a creator allowed in through a supplementary group."""

    @pytest.fixture
    def g(self, tmp_path):
        sess = Session(tmp_path)
        flags = abi.init_out.unpack(
            sess.ok(Opcode.INIT, 0, abi.init_in.pack(7, 38, 0, abi.FUSE_INIT_EXT,
                                                       abi.FUSE_CREATE_SUPP_GROUP >> 32)))[10]
        assert flags << 32 & abi.FUSE_CREATE_SUPP_GROUP
        os.mkdir(tmp_path / "team")
        os.chown(tmp_path / "team", 0, 1234)
        os.chmod(tmp_path / "team", 0o770)
        parent, _ = sess.lookup(b"team")
        return sess, parent, tmp_path / "team"

    @staticmethod
    def mkdir_req(sess, parent, name, groups):
        body = abi.mkdir_in.pack(0o755, 0) + name + b"\0"
        ext = b""
        if groups:
            payload = struct.pack(f"<I{len(groups)}I", len(groups), *groups)
            size = abi.rec_align(abi.ext_header.size + len(payload))
            ext = abi.ext_header.pack(size, abi.FUSE_EXT_GROUPS) + payload
            ext += bytes(size - len(ext))
        sess.unique += 1
        req = abi.in_header.pack(40 + len(body) + len(ext), Opcode.MKDIR, sess.unique, parent,
                                 4321, 4321, 1, len(ext) // 8, 0) + body + ext
        return sess.engine.handle(req, 4096)

    def test_group_from_the_extension_counts(self, g):
        sess, parent, team = g
        assert self.mkdir_req(sess, parent, b"without", ())[0] == -errno.EACCES
        assert self.mkdir_req(sess, parent, b"with", (1234,))[0] == 0
        st = os.stat(team / "with")
        assert (st.st_uid, st.st_gid) == (4321, 4321)
        # The group was this request's only: the next one without it is refused again.
        assert self.mkdir_req(sess, parent, b"again", ())[0] == -errno.EACCES

    def test_malformed_extensions(self, g):
        sess, parent, _ = g
        body = abi.mkdir_in.pack(0o755, 0) + b"x\0"
        for ext in (abi.ext_header.pack(4, 32), abi.ext_header.pack(16, 99) + bytes(8),
                    abi.ext_header.pack(16, 32) + struct.pack("<II", 1000, 0)):
            sess.unique += 1
            req = abi.in_header.pack(40 + len(body) + len(ext), Opcode.MKDIR, sess.unique, parent,
                                     0, 0, 1, len(ext) // 8, 0) + body + ext
            assert sess.engine.handle(req, 4096)[0] == -errno.EINVAL


def test_thread_pool_backlog_is_bounded(tmp_path):
    """With a pool, the queue thread hands a request over only while fewer than
    POOL_BACKLOG_PER_THREAD per pool thread wait or run: the next one blocks it (backpressure:
    the ring is not read meanwhile) until a place frees up."""
    import threading
    from fastvfs.fuse import engine as engine_mod

    class Pending:
        def __init__(self):
            self.done = threading.Event()

        def complete(self, error, payload=b""):
            self.result = (error, payload)
            self.done.set()

    sess = Session(tmp_path)
    sess.engine = FuseEngine(sess.fs, "never", thread_pool_size=1)
    sess.init()
    gate = threading.Event()
    real_statfs = sess.fs.statfs

    def slow_statfs(nodeid):
        gate.wait(10)
        return real_statfs(nodeid)
    sess.fs.statfs = slow_statfs
    limit = engine_mod.POOL_BACKLOG_PER_THREAD
    pendings = []
    for _ in range(limit):
        run = sess.raw(Opcode.STATFS)
        assert callable(run)
        pendings.append(Pending())
        run(pendings[-1])         # returns at once: a place was free
    run = sess.raw(Opcode.STATFS)
    pendings.append(Pending())
    handed = threading.Thread(target=run, args=(pendings[-1],))
    handed.start()
    handed.join(0.3)
    assert handed.is_alive(), "the request past the backlog was queued without a bound"
    gate.set()
    handed.join(10)
    assert not handed.is_alive()
    for p in pendings:
        assert p.done.wait(10) and p.result[0] == 0
    sess.engine.pool.shutdown()


def test_syncfs_syncs_the_file_system_of_its_node(s, tmp_path, monkeypatch):
    """SYNCFS names the guest superblock's root: with a submount, that is the submount's
    directory, whose host file system (not the share's) must be synced."""
    sub = tmp_path / "sub"
    sub.mkdir()
    (tmp_path / "plain").write_bytes(b"")
    if subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(sub)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        synced = []
        monkeypatch.setattr(_tables, "sync_fs", lambda fd: synced.append(os.fstat(fd).st_dev))
        sub_id, _ = s.lookup(b"sub")
        plain_id, _ = s.lookup(b"plain")
        s.ok(Opcode.SYNCFS, sub_id, bytes(8))
        s.ok(Opcode.SYNCFS, ROOT, bytes(8))
        s.ok(Opcode.SYNCFS, plain_id, bytes(8))
        assert synced == [os.stat(sub).st_dev, os.stat(tmp_path).st_dev,
                          os.stat(tmp_path).st_dev]
        assert os.stat(sub).st_dev != os.stat(tmp_path).st_dev
    finally:
        subprocess.run(["umount", "-l", str(sub)])


def _readdir_page(s, fh, offset, size=512):
    """([names], cookie of the last) of one READDIR of ``size`` bytes from ``offset``."""
    data = s.ok(Opcode.READDIR, ROOT, abi.read_in.pack(fh, offset, size, 0, 0, 0, 0))
    names, pos = [], 0
    while pos < len(data):
        _, offset, namelen, _ = abi.dirent_head.unpack_from(data, pos)
        names.append(data[pos + 24:pos + 24 + namelen])
        pos += abi.rec_align(24 + namelen)
    return names, offset


@pytest.mark.parametrize("opcode", [Opcode.RELEASE, Opcode.RELEASEDIR])
def test_a_released_directory_handle_frees_its_listing(s, tmp_path, opcode):
    for i in range(100):
        (tmp_path / f"f{i}").write_text("")
    fh = abi.open_out.unpack(s.ok(Opcode.OPENDIR, ROOT, abi.open_in.pack(0, 0)))[0]
    s.ok(Opcode.READDIR, ROOT, abi.read_in.pack(fh, 0, 512, 0, 0, 0, 0))
    handles = s.fs.handles
    dirs = handles.fds_other
    assert handles.listing_bytes > 0 and _tables.listing_handles(handles) == [fh]
    s.ok(opcode, ROOT, abi.release_in.pack(fh, 0, 0, 0))
    assert handles.listing_bytes == 0 and not _tables.listing_handles(handles)
    assert handles.fds_other == dirs - 1
    assert s.err(Opcode.READDIR, ROOT, abi.read_in.pack(fh, 0, 512, 0, 0, 0, 0)) == errno.EBADF


def test_listings_of_open_directory_handles_stay_under_the_cap(s, tmp_path):
    names = {f"entry-{i:04d}-{'x' * 40}".encode() for i in range(200)}
    for n in names:
        (tmp_path / n.decode()).write_text("")
    cap = 40_000   # about two and a half listings of this directory
    handles = s.fs.handles
    _tables.set_listing_bytes_max(handles, cap)
    pages = {}
    for _ in range(20):
        fh = abi.open_out.unpack(s.ok(Opcode.OPENDIR, ROOT, abi.open_in.pack(0, 0)))[0]
        pages[fh] = _readdir_page(s, fh, 0)
        assert handles.listing_bytes <= cap
    # Least recently read first: the last handle listed is the last one, until another is read.
    held = _tables.listing_handles(handles)
    assert held[-1] == list(pages)[-1]
    one = s.fs.readdir(ROOT, held[0], 1).nbytes
    assert _tables.listing_handles(handles) == held[1:] + held[:1]
    assert handles.listing_bytes == one * len(held)
    assert 1 < len(held) < len(pages)
    # A handle whose listing was dropped pages on through a fresh one: nothing lost or twice.
    assert next(iter(pages)) not in held
    for fh, (got, offset) in pages.items():
        while True:
            more, offset = _readdir_page(s, fh, offset)
            if not more:
                break
            got += more
            assert handles.listing_bytes <= cap
        assert set(got) == names | {b".", b".."} and len(got) == len(names) + 2
    for fh in pages:
        s.ok(Opcode.RELEASEDIR, ROOT, abi.release_in.pack(fh, 0, 0, 0))
    assert handles.listing_bytes == 0


_LISTING_RACE = """
import sys, threading, time
from fastvfs.fs import _tables
from fastvfs.fs._tables import HandleTable
from fastvfs.fs.passthrough import PassthroughFs
handles = HandleTable(64)
fs = PassthroughFs(sys.argv[1], handles)
fh = fs.opendir(1)
done = threading.Event()
rounds = [0, 0]
def ask():
    while not done.is_set():
        _tables.listing_handles(handles)
        rounds[0] += 1
def page():
    while not done.is_set():
        fs.readdir(1, fh, 0)        # a Listing, dropped at once with the GIL held
        rounds[1] += 1
threads = [threading.Thread(target=f) for f in (ask, page)]
for t in threads:
    t.start()
time.sleep(1.0)
done.set()
for t in threads:
    t.join()
fs.release(fh)
assert handles.listing_bytes == 0
print(min(rounds))
"""


def test_listings_taken_and_dropped_while_another_thread_asks_which_are_held(tmp_path):
    """The handle table's mutex is never held by a thread waiting for the GIL: one thread
    dropping listings (with the GIL) while another asks which handles hold one never
    deadlocks (in a process of its own: a deadlock holds the GIL for good)."""
    for i in range(50):
        (tmp_path / f"f{i}").write_text("")
    done = subprocess.run([sys.executable, "-c", _LISTING_RACE, str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 10


class TestLockTable:
    """The handle table's lock descriptions (fastvfs/fs/tables/locks.pxi) under random use."""

    @pytest.fixture
    def fs(self, tmp_path):
        (tmp_path / "f").write_bytes(b"x" * 100)
        fs = PassthroughFs(tmp_path, HandleTable(64))
        nodeid = fs.lookup(ROOT, b"f")[0]
        fh = fs.open(nodeid, os.O_RDWR)
        return fs, nodeid, fh[0] if isinstance(fh, tuple) else fh

    def test_ranges_follow_the_hosts_merges_and_splits(self, fs):
        """After any sequence of an owner's locks and unlocks, every lock the host reports to
        another owner is named with that owner's pid: the table's ranges are exactly the
        host's (merged and split alike)."""
        import fcntl
        import random
        fs, nodeid, fh = fs
        rng = random.Random(7)
        for _ in range(300):
            start = rng.randrange(64)
            end = start + rng.randrange(8)
            lock_type = rng.choice((fcntl.F_RDLCK, fcntl.F_WRLCK, fcntl.F_UNLCK))
            fs.setlk(nodeid, fh, 1, start, end, lock_type, pid=101)
            x = rng.randrange(72)
            s, e, t, pid = fs.getlk(nodeid, 2, x, x, fcntl.F_WRLCK, fh)
            assert (t == fcntl.F_UNLCK) == (pid == 0), (s, e, t, pid)
        fs.release(fh)
        assert fs.lock_fds == {} and fs.handles.lock_fds_open == 0

    def test_concurrent_locks_flushes_and_releases(self, fs, tmp_path):
        """Threads locking, asking, flushing and releasing at once: every answer is an answer
        (no crash, no description closed under a request), and nothing is left open after."""
        import fcntl
        import gc
        import random
        import threading
        import time
        fs, nodeid, fh = fs
        fs.release(fh)
        gc.collect()
        before = len(os.listdir("/proc/self/fd"))
        stop = time.monotonic() + 1.0
        errors = []

        def worker(seed):
            rng = random.Random(seed)
            handle = fs.open(nodeid, os.O_RDWR)
            handle = handle[0] if isinstance(handle, tuple) else handle
            try:
                while time.monotonic() < stop:
                    owner = rng.randrange(4)
                    op = rng.randrange(6)
                    try:
                        if op < 2:
                            fs.setlk(nodeid, handle, owner, rng.randrange(32), 40,
                                     rng.choice((fcntl.F_RDLCK, fcntl.F_WRLCK, fcntl.F_UNLCK)),
                                     pid=owner)
                        elif op < 4:
                            fs.getlk(nodeid, owner, 0, 50, fcntl.F_WRLCK, handle)
                        elif op == 4:
                            fs.release_locks(nodeid, owner, "posix")
                        else:
                            fs.release(handle)
                            handle = fs.open(nodeid, os.O_RDWR)
                            handle = handle[0] if isinstance(handle, tuple) else handle
                    except OSError as exc:
                        if exc.errno not in (errno.EAGAIN, errno.ENOLCK, errno.EBADF):
                            raise
            except BaseException as exc:
                errors.append(exc)
            finally:
                fs.release(handle)
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert fs.lock_fds == {} and fs.handles.lock_fds_open == 0
        assert len(os.listdir("/proc/self/fd")) == before
