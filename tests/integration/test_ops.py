"""FUSE operation sweep over virtio-fs, checked against the host directory the backend exports.

Runs against every backend in ``conftest.BACKENDS`` through the frontend driver: each test starts a
backend, brings the device up the way QEMU does, sends FUSE_INIT as a Linux 6.1 guest would, then
exercises one group of operations and looks at the shared directory from the host side.
"""

import errno
import os
import stat
import time

import pytest

from fastvfs.fuse import abi
from fastvfs.fuse.abi import Opcode

ROOT = abi.FUSE_ROOT_ID
FALLOC_FL_KEEP_SIZE = 0x01
SEEK_DATA = 3
SEEK_HOLE = 4
UNPRIVILEGED = 4242


@pytest.fixture
def session(backend):
    return backend()


@pytest.fixture
def client(session):
    return session[1]


@pytest.fixture
def shared(session):
    return session[2]


def assert_attr_matches(attr, path):
    st = os.lstat(path)
    assert attr.ino == st.st_ino
    assert attr.mode == st.st_mode
    assert attr.size == st.st_size
    assert attr.nlink == st.st_nlink
    assert (attr.uid, attr.gid) == (st.st_uid, st.st_gid)
    assert attr.mtime_ns == st.st_mtime_ns
    assert attr.ctime_ns == st.st_ctime_ns


def make_file(client, name, data=b"", parent=ROOT):
    """CREATE + WRITE + RELEASE; returns the new node's entry."""
    entry, handle = client.create(parent, name)
    if data:
        assert client.write(entry.nodeid, handle.fh, 0, data) == len(data)
    client.release(entry.nodeid, handle.fh)
    return entry


def test_init_reply(client):
    init = client.init_out
    assert init.major == abi.FUSE_KERNEL_VERSION
    assert abi.FUSE_MIN_MINOR_VERSION <= init.minor <= abi.FUSE_KERNEL_MINOR_VERSION
    assert init.max_write >= 4096


def test_lookup_and_getattr_match_host(client, shared):
    (shared / "file").write_bytes(b"x" * 1000)
    entry = client.lookup(ROOT, "file")
    assert entry.nodeid not in (0, ROOT)
    assert_attr_matches(entry.attr, shared / "file")
    assert_attr_matches(client.getattr(entry.nodeid).attr, shared / "file")
    assert_attr_matches(client.getattr(ROOT).attr, shared)
    assert client.lookup(ROOT, "file").nodeid == entry.nodeid


def test_lookup_missing(client):
    with pytest.raises(FileNotFoundError):
        client.lookup(ROOT, "absent")


def test_mkdir_rmdir(client, shared):
    entry = client.mkdir(ROOT, "dir", 0o750)
    assert stat.S_ISDIR(entry.attr.mode)
    assert stat.S_IMODE(os.stat(shared / "dir").st_mode) == 0o750
    assert_attr_matches(entry.attr, shared / "dir")
    with pytest.raises(FileExistsError):
        client.mkdir(ROOT, "dir")
    make_file(client, "inner", parent=entry.nodeid)
    with pytest.raises(OSError) as excinfo:
        client.rmdir(ROOT, "dir")
    assert excinfo.value.errno == errno.ENOTEMPTY
    client.unlink(entry.nodeid, "inner")
    client.rmdir(ROOT, "dir")
    assert not (shared / "dir").exists()


def test_create_write_read(client, shared):
    entry, handle = client.create(ROOT, "data", os.O_RDWR, 0o640)
    assert stat.S_ISREG(entry.attr.mode)
    assert stat.S_IMODE(os.stat(shared / "data").st_mode) == 0o640
    chunks = [bytes([i]) * 5000 for i in range(3)]
    for i, chunk in enumerate(chunks):
        assert client.write(entry.nodeid, handle.fh, i * 5000, chunk) == 5000
    assert client.read(entry.nodeid, handle.fh, 0, 15000) == b"".join(chunks)
    assert client.read(entry.nodeid, handle.fh, 14000, 4096) == chunks[2][:1000]
    assert client.read(entry.nodeid, handle.fh, 20000, 4096) == b""
    client.flush(entry.nodeid, handle.fh)
    client.release(entry.nodeid, handle.fh)
    assert (shared / "data").read_bytes() == b"".join(chunks)


def test_open_existing_and_read(client, shared):
    payload = os.urandom(70000)
    (shared / "existing").write_bytes(payload)
    entry = client.lookup(ROOT, "existing")
    handle = client.open(entry.nodeid, os.O_RDONLY)
    assert client.read(entry.nodeid, handle.fh, 0, 70000) == payload
    assert client.read(entry.nodeid, handle.fh, 65536, 8192) == payload[65536:]
    client.release(entry.nodeid, handle.fh)


def test_large_io_in_page_descriptors(backend):
    """max_write-sized WRITE and READ split into 4 KiB descriptors, as the guest's page vectors."""
    _, client, shared = backend(queue_size=1024, client_options={"data_desc_size": 4096})
    size = min(client.init_out.max_write, 1 << 20)
    payload = os.urandom(size)
    entry, handle = client.create(ROOT, "big")
    assert client.write(entry.nodeid, handle.fh, 0, payload) == size
    assert client.read(entry.nodeid, handle.fh, 0, size) == payload
    client.release(entry.nodeid, handle.fh)
    assert (shared / "big").read_bytes() == payload


def test_mknod(client, shared):
    fifo = client.mknod(ROOT, "fifo", stat.S_IFIFO | 0o600)
    assert stat.S_ISFIFO(fifo.attr.mode)
    assert stat.S_ISFIFO(os.lstat(shared / "fifo").st_mode)
    regular = client.mknod(ROOT, "plain", stat.S_IFREG | 0o644)
    assert stat.S_ISREG(regular.attr.mode)
    assert_attr_matches(regular.attr, shared / "plain")


def test_symlink_readlink(client, shared):
    entry = client.symlink(ROOT, "link", "some/where")
    assert stat.S_ISLNK(entry.attr.mode)
    assert os.readlink(shared / "link") == "some/where"
    assert client.readlink(entry.nodeid) == b"some/where"
    assert_attr_matches(client.lookup(ROOT, "link").attr, shared / "link")


def test_link(client, shared):
    original = make_file(client, "original", b"shared bytes")
    entry = client.link(original.nodeid, ROOT, "alias")
    assert entry.attr.nlink == 2
    assert os.path.samefile(shared / "original", shared / "alias")
    assert client.getattr(original.nodeid).attr.nlink == 2


def test_unlink(backend, client, shared):
    make_file(client, "victim", b"bye")
    client.unlink(ROOT, "victim")
    assert not (shared / "victim").exists()
    with pytest.raises(OSError) as excinfo:
        client.unlink(ROOT, "victim")
    assert excinfo.value.errno == backend.expected_errno(Opcode.UNLINK, errno.ENOENT)


def test_rename(client, shared):
    subdir = client.mkdir(ROOT, "sub")
    make_file(client, "a", b"A")
    client.rename(ROOT, "a", ROOT, "b")
    assert (shared / "b").read_bytes() == b"A" and not (shared / "a").exists()
    client.rename(ROOT, "b", subdir.nodeid, "c")
    assert (shared / "sub" / "c").read_bytes() == b"A"
    assert client.lookup(subdir.nodeid, "c").attr.size == 1


def test_rename2_flags(client, shared):
    make_file(client, "one", b"1")
    make_file(client, "two", b"22")
    with pytest.raises(FileExistsError):
        client.rename2(ROOT, "one", ROOT, "two", abi.RENAME_NOREPLACE)
    client.rename2(ROOT, "one", ROOT, "two", abi.RENAME_EXCHANGE)
    assert (shared / "one").read_bytes() == b"22"
    assert (shared / "two").read_bytes() == b"1"
    client.rename2(ROOT, "one", ROOT, "three", abi.RENAME_NOREPLACE)
    assert (shared / "three").read_bytes() == b"22"


def test_setattr(client, shared):
    path = shared / "attrs"
    entry = make_file(client, "attrs", b"0123456789")
    out = client.setattr(entry.nodeid, mode=0o600)
    assert stat.S_IMODE(out.attr.mode) == 0o600 == stat.S_IMODE(os.stat(path).st_mode)
    out = client.setattr(entry.nodeid, size=4)
    assert out.attr.size == 4 and path.read_bytes() == b"0123"
    atime, mtime = 1_000_000_123_456_789, 1_100_000_987_654_321
    out = client.setattr(entry.nodeid, atime=atime, mtime=mtime)
    st = os.stat(path)
    assert (st.st_atime_ns, st.st_mtime_ns) == (atime, mtime)
    assert (out.attr.atime_ns, out.attr.mtime_ns) == (atime, mtime)
    before = time.time_ns()
    out = client.setattr(entry.nodeid, atime_now=True, mtime_now=True)
    assert os.stat(path).st_mtime_ns >= before - 1_000_000_000
    assert out.attr.mtime_ns == os.stat(path).st_mtime_ns
    handle = client.open(entry.nodeid, os.O_RDWR)
    assert client.setattr(entry.nodeid, fh=handle.fh, size=0).attr.size == 0
    client.release(entry.nodeid, handle.fh)
    assert_attr_matches(client.getattr(entry.nodeid).attr, path)


@pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")
def test_setattr_owner(client, shared):
    entry = make_file(client, "owned")
    out = client.setattr(entry.nodeid, uid=UNPRIVILEGED, gid=UNPRIVILEGED)
    assert (out.attr.uid, out.attr.gid) == (UNPRIVILEGED, UNPRIVILEGED)
    st = os.stat(shared / "owned")
    assert (st.st_uid, st.st_gid) == (UNPRIVILEGED, UNPRIVILEGED)


@pytest.mark.skipif(os.geteuid() != 0, reason="creating as another user needs root")
def test_new_nodes_get_caller_credentials(client, shared):
    shared.chmod(0o777)
    with client.as_user(UNPRIVILEGED, UNPRIVILEGED + 1):
        client.mkdir(ROOT, "theirs", 0o777)
        make_file(client, "theirs_file")
    for name in ("theirs", "theirs_file"):
        st = os.stat(shared / name)
        assert (st.st_uid, st.st_gid) == (UNPRIVILEGED, UNPRIVILEGED + 1)


def test_statfs(client, shared):
    out = client.statfs()
    host = os.statvfs(shared)
    assert out.blocks == host.f_blocks
    assert out.bsize == host.f_bsize
    assert out.namelen == host.f_namemax
    assert out.files == host.f_files


def test_readdir(client, shared):
    names = {f"entry{i:03d}" for i in range(40)}
    for name in names:
        (shared / name).touch()
    (shared / "subdir").mkdir()
    listed = client.listdir(ROOT)
    assert {e.name.decode() for e in listed} == names | {"subdir", ".", ".."}
    by_name = {e.name.decode(): e for e in listed}
    assert by_name["subdir"].type == stat.S_IFDIR >> 12
    assert by_name["entry000"].ino == os.stat(shared / "entry000").st_ino
    # Small buffers force continuation through the ``off`` cookies.
    handle = client.opendir(ROOT)
    seen, offset = [], 0
    while batch := client.readdir(ROOT, handle.fh, offset, size=128):
        seen.extend(e.name for e in batch)
        offset = batch[-1].off
    client.releasedir(ROOT, handle.fh)
    assert sorted(seen) == sorted(e.name for e in listed)


def test_readdirplus(client, shared):
    (shared / "f").write_bytes(b"abc")
    (shared / "d").mkdir()
    listed = {e.name.decode(): e for e in client.listdir(ROOT, plus=True)}
    assert set(listed) == {"f", "d", ".", ".."}
    for name in ("f", "d"):
        plus = listed[name]
        assert plus.entry.nodeid not in (0, ROOT)
        assert plus.ino == plus.entry.attr.ino
        assert_attr_matches(plus.entry.attr, shared / name)
        assert client.lookup(ROOT, name).nodeid == plus.entry.nodeid


def test_fsync_flush_fsyncdir(client, shared):
    entry, handle = client.create(ROOT, "synced")
    client.write(entry.nodeid, handle.fh, 0, b"durable")
    client.flush(entry.nodeid, handle.fh)
    client.fsync(entry.nodeid, handle.fh)
    client.fsync(entry.nodeid, handle.fh, datasync=True)
    client.release(entry.nodeid, handle.fh, release_flags=abi.FUSE_RELEASE_FLUSH)
    dirh = client.opendir(ROOT)
    client.fsyncdir(ROOT, dirh.fh)
    client.fsyncdir(ROOT, dirh.fh, datasync=True)
    client.releasedir(ROOT, dirh.fh)
    assert (shared / "synced").read_bytes() == b"durable"


def test_access(backend):
    backend.require_op(Opcode.ACCESS)
    _, client, shared = backend()
    private = make_file(client, "private")
    client.setattr(private.nodeid, mode=0o600)
    client.access(private.nodeid, os.F_OK)
    client.access(private.nodeid, os.R_OK | os.W_OK)
    if os.geteuid() == 0:
        with client.as_user(UNPRIVILEGED, UNPRIVILEGED):
            with pytest.raises(PermissionError):
                client.access(private.nodeid, os.R_OK)


def test_fallocate(client, shared):
    entry, handle = client.create(ROOT, "prealloc")
    client.fallocate(entry.nodeid, handle.fh, 0, 1 << 20)
    assert os.stat(shared / "prealloc").st_size == 1 << 20
    client.fallocate(entry.nodeid, handle.fh, 1 << 20, 1 << 20, FALLOC_FL_KEEP_SIZE)
    st = os.stat(shared / "prealloc")
    assert st.st_size == 1 << 20 and st.st_blocks * 512 >= 2 << 20
    client.release(entry.nodeid, handle.fh)


def test_copy_file_range(client, shared):
    data = os.urandom(200_000)
    (shared / "source").write_bytes(data)
    src = client.lookup(ROOT, "source")
    src_handle = client.open(src.nodeid)
    dst, dst_handle = client.create(ROOT, "copy")
    assert client.copy_file_range(src.nodeid, src_handle.fh, 1000, dst.nodeid, dst_handle.fh,
                                  10, 100_000) == 100_000
    # Short at the end of the source, nothing past it.
    assert client.copy_file_range(src.nodeid, src_handle.fh, 150_000, dst.nodeid,
                                  dst_handle.fh, 100_010, 100_000) == 50_000
    assert client.copy_file_range(src.nodeid, src_handle.fh, 300_000, dst.nodeid,
                                  dst_handle.fh, 0, 10) == 0
    assert (shared / "copy").read_bytes() == bytes(10) + data[1000:101_000] + data[150_000:]
    with pytest.raises(OSError) as excinfo:
        client.copy_file_range(src.nodeid, src_handle.fh, 0, dst.nodeid, dst_handle.fh, 0, 1,
                               flags=1)
    assert excinfo.value.errno == errno.EINVAL
    client.release(src.nodeid, src_handle.fh)
    client.release(dst.nodeid, dst_handle.fh)


def test_lseek(client, shared):
    path = shared / "sparse"
    with open(path, "wb") as f:
        f.write(b"d" * 4096)
        f.seek(1 << 20)
        f.write(b"e" * 4096)
    entry = client.lookup(ROOT, "sparse")
    handle = client.open(entry.nodeid)
    fd = os.open(path, os.O_RDONLY)
    try:
        for offset, whence in ((0, SEEK_DATA), (0, SEEK_HOLE), (8192, SEEK_DATA),
                               (0, os.SEEK_END), (100, os.SEEK_SET)):
            assert client.lseek(entry.nodeid, handle.fh, offset, whence) == \
                os.lseek(fd, offset, whence)
        with pytest.raises(OSError) as excinfo:
            client.lseek(entry.nodeid, handle.fh, (1 << 20) + 4096, SEEK_DATA)
        assert excinfo.value.errno == errno.ENXIO
    finally:
        os.close(fd)
    client.release(entry.nodeid, handle.fh)


def test_forget_and_batch_forget(session):
    frontend, client, shared = session
    (shared / "remembered").touch()
    nodeids = {client.lookup(ROOT, "remembered").nodeid for _ in range(3)}
    assert len(nodeids) == 1
    nodeid = nodeids.pop()
    hiprio_before = frontend.queues[0].last_used_idx
    client.forget(nodeid, 2)
    client.batch_forget([(nodeid, 1)])
    # Both went over the hiprio queue and were consumed by the device.
    assert (frontend.queues[0].last_used_idx - hiprio_before) & 0xFFFF == 2
    again = client.lookup(ROOT, "remembered")
    assert_attr_matches(again.attr, shared / "remembered")
    client.forget(again.nodeid, 1)


def test_errors_are_errno(backend, client):
    make_file(client, "exists")
    with pytest.raises(FileExistsError):
        client.mknod(ROOT, "exists", stat.S_IFREG | 0o644)
    with pytest.raises(NotADirectoryError):
        client.lookup(client.lookup(ROOT, "exists").nodeid, "child")
    with pytest.raises(OSError) as excinfo:
        client.rmdir(ROOT, "nothing")
    assert excinfo.value.errno == backend.expected_errno(Opcode.RMDIR, errno.ENOENT)


def test_unknown_opcode_is_enosys(client):
    reply = client.wait(client.submit(9999, ROOT, b"\0" * 16, reply_len=64))
    assert reply.error == errno.ENOSYS
    client.statfs()  # the session goes on


def test_syncfs(client):
    client.syncfs()


def test_destroy(client):
    client.statfs()
    client.destroy()
