"""The passthrough file system with inodes held by file handle and a descriptor cache of one or
two: every operation that names an inode works on an inode whose descriptor was closed, and a
descriptor in use by a request is never closed under it."""

import errno
import fcntl
import os
import stat
import subprocess

import pytest

from fastvfs.fs._tables import HandleTable
from fastvfs.fs import _sys, _tables
from fastvfs.fs.passthrough import ROOT_CALLER, PassthroughFs

ROOT = 1


@pytest.fixture
def fs(tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    fd = os.open(share, os.O_PATH)
    try:
        _sys.name_to_handle(fd)
    except OSError:
        pytest.skip("the test directory's file system has no file handles")
    finally:
        os.close(fd)
    return PassthroughFs(str(share), HandleTable(64), file_handles="prefer",
                         handle_fds_max=1)


def call(fs, method, *args, **kwargs):
    with fs.request_scope():
        return getattr(fs, method)(*args, **kwargs)


def evict(fs, *nodeids):
    """Fill the one-descriptor cache with other inodes."""
    for nodeid in nodeids:
        call(fs, "getattr", nodeid)


def test_inodes_are_held_by_handle(fs):
    call(fs, "mknod", ROOT, b"a", stat.S_IFREG | 0o644, 0, ROOT_CALLER)
    call(fs, "mkdir", ROOT, b"d", 0o755, ROOT_CALLER)
    table = fs.inodes.table
    assert table.handle_nodes == 2
    assert table.handle_fds <= 1
    assert fs.inodes.get(call(fs, "lookup", ROOT, b"a")[0]).fd is None


def test_every_inode_operation_reopens_by_handle(fs):
    f, _ = call(fs, "mknod", ROOT, b"f", stat.S_IFREG | 0o644, 0, ROOT_CALLER)
    d, _ = call(fs, "mkdir", ROOT, b"d", 0o755, ROOT_CALLER)
    ln, _ = call(fs, "symlink", ROOT, b"l", b"f", ROOT_CALLER)

    evict(fs, d)
    assert call(fs, "setattr", f, mode=0o600).st_mode & 0o777 == 0o600
    evict(fs, d)
    call(fs, "setattr", f, uid=1, gid=2, size=5, mtime_ns=10**9)
    evict(fs, d)
    st = call(fs, "getattr", f)
    assert (st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns) == (1, 2, 5, 10**9)
    evict(fs, d)
    assert call(fs, "readlink", ln) == b"f"
    evict(fs, d)
    call(fs, "setxattr", f, b"user.k", b"v", 0)
    evict(fs, d)
    assert call(fs, "getxattr", f, b"user.k") == b"v"
    assert b"user.k\0" in call(fs, "listxattr", f)
    evict(fs, d)
    call(fs, "removexattr", f, b"user.k")
    evict(fs, d)
    call(fs, "access", f, os.R_OK, ROOT_CALLER)
    evict(fs, d)
    fh = call(fs, "open", f, os.O_RDWR)
    assert call(fs, "write", fh, 0, b"hello") == 5
    call(fs, "release", fh)
    evict(fs, d)
    call(fs, "link", f, d, b"hard")
    evict(fs, f)
    sub, _ = call(fs, "mkdir", d, b"sub", 0o755, ROOT_CALLER)
    evict(fs, f)
    assert call(fs, "lookup", sub, b"..")[0] == d
    evict(fs, f)
    dh = call(fs, "opendir", d)
    names = call(fs, "readdir", d, dh, 0)
    assert sorted(names.name(i) for i in range(len(names))) == [b".", b"..", b"hard", b"sub"]
    call(fs, "releasedir", dh)
    evict(fs, d)
    fh = call(fs, "open", f, os.O_RDWR)
    call(fs, "setlk", f, fh, 7, 0, 10, fcntl.F_WRLCK)
    evict(fs, d)
    call(fs, "setlk", f, fh, 7, 0, 10, fcntl.F_UNLCK)
    call(fs, "release", fh)
    evict(fs, d)
    with fs.request_scope(), fs.mapping_fd(f, None, False) as mfd:
        assert os.pread(mfd, 5, 0) == b"hello"
    evict(fs, f)
    call(fs, "statfs", d)
    call(fs, "syncfs", d)
    call(fs, "rename", d, b"hard", ROOT, b"moved")
    evict(fs, f)
    call(fs, "unlink", ROOT, b"moved")
    evict(fs, f)
    call(fs, "rmdir", d, b"sub")


def test_a_descriptor_in_use_is_never_evicted(fs, tmp_path):
    a, _ = call(fs, "mknod", ROOT, b"a", stat.S_IFREG | 0o644, 0, ROOT_CALLER)
    others = [call(fs, "mknod", ROOT, b"o%d" % i, stat.S_IFREG | 0o644, 0, ROOT_CALLER)[0]
              for i in range(8)]
    ino = os.stat(tmp_path / "share" / "a").st_ino
    with fs.request_scope():
        fd = fs.inodes.fd_of(a)
        # Other requests fill the cache meanwhile: the descriptor stays open and still
        # names "a" (a closed one would be EBADF, or another file once its number is reused).
        evict(fs, *others)
        assert fs.inodes.table.handle_fds == 2
        assert _sys.fstatx(fd).st_ino == ino
    evict(fs, *others)
    assert fs.inodes.table.handle_fds == 1


def test_the_descriptor_cache_ring_stays_near_its_bound(tmp_path):
    """Thousands of inodes passing through the descriptor cache (entered, used, forgotten)
    leave its clock ring at the size it was made with, two entries per cached descriptor;
    requests holding more descriptors at once than it has room for grow it, every one of
    them stays open and names its own inode, and the bound holds again once they end and
    another descriptor is cached."""
    share = tmp_path / "share"
    share.mkdir()
    fd = os.open(share, os.O_PATH)
    try:
        _sys.name_to_handle(fd)
    except OSError:
        pytest.skip("the test directory's file system has no file handles")
    finally:
        os.close(fd)
    fs = PassthroughFs(str(share), HandleTable(64), file_handles="prefer", handle_fds_max=8)
    table = fs.inodes.table
    assert table.clock_size == 16
    for i in range(3000):
        nodeid, _ = call(fs, "mknod", ROOT, b"f%d" % i, stat.S_IFREG | 0o644, 0, ROOT_CALLER)
        call(fs, "getattr", nodeid)
        if i % 3:
            call(fs, "forget", nodeid, 1)
    assert table.clock_size == 16
    assert table.handle_fds <= 8
    held = [call(fs, "mknod", ROOT, b"h%d" % i, stat.S_IFREG | 0o644, 0, ROOT_CALLER)[0]
            for i in range(100)]
    with fs.request_scope():
        fds = [fs.inodes.fd_of(nodeid) for nodeid in held]
        assert table.handle_fds >= 100
        assert table.clock_size >= 128
        for i, fd in enumerate(fds):
            assert _sys.fstatx(fd).st_ino == os.stat(share / ("h%d" % i)).st_ino
    # The next descriptor cached sends the clock round: the bound again.
    call(fs, "mknod", ROOT, b"next", stat.S_IFREG | 0o644, 0, ROOT_CALLER)
    assert table.handle_fds <= 8
    for nodeid in held:
        assert call(fs, "getattr", nodeid).st_ino == \
            os.stat(share / ("h%d" % held.index(nodeid))).st_ino
    # A larger bound set later takes a ring of twice its size, the queue kept in order.
    size = table.clock_size
    table.set_handle_mode(1000)
    assert table.clock_size == 2048 > size
    evict(fs, *held)
    assert table.handle_fds <= 1000


def test_tmpfile_is_held_by_descriptor(fs):
    nodeid, st, fh = call(fs, "tmpfile", ROOT, 0o600, os.O_RDWR, ROOT_CALLER)
    assert fs.inodes.get(nodeid).fd is not None
    evict(fs, call(fs, "mkdir", ROOT, b"d", 0o755, ROOT_CALLER)[0])
    assert call(fs, "getattr", nodeid).st_ino == st.st_ino
    call(fs, "release", fh)


def test_stale_handle_is_estale(fs, tmp_path):
    f, _ = call(fs, "mknod", ROOT, b"f", stat.S_IFREG | 0o644, 0, ROOT_CALLER)
    d, _ = call(fs, "mkdir", ROOT, b"d", 0o755, ROOT_CALLER)
    os.unlink(tmp_path / "share" / "f")
    evict(fs, d)
    with pytest.raises(OSError) as exc:
        call(fs, "getattr", f)
    assert exc.value.errno == errno.ESTALE


def _mount(*argv):
    if os.geteuid() != 0 or subprocess.run(["mount", *argv], capture_output=True).returncode:
        pytest.skip(f"cannot mount {argv[-1]} here")


def test_handles_longer_than_a_slot_holds(tmp_path):
    """An overlay file system exporting handles (index=on, nfs_export=on) gives handles longer
    than a node slot keeps inline (NODE_HANDLE_INLINE): each is kept apart, every node is
    reopened by it after its descriptor was closed, and a lookup of a known name with its
    descriptor closed finds the same node id by comparing handles."""
    layers = tmp_path / "layers"
    for part in ("lower", "upper", "work", "merged"):
        (layers / part).mkdir(parents=True)
    for i in range(4):
        (layers / "lower" / f"f{i}").write_bytes(b"x" * i)
    merged = layers / "merged"
    _mount("-t", "overlay", "overlay", "-o",
           f"lowerdir={layers / 'lower'},upperdir={layers / 'upper'},"
           f"workdir={layers / 'work'},index=on,nfs_export=on", str(merged))
    try:
        fd = os.open(merged / "f0", os.O_PATH)
        try:
            if len(_sys.name_to_handle(fd)[0]) - 8 <= 24:
                pytest.skip("this overlay's handles fit inline")
        finally:
            os.close(fd)
        fs = PassthroughFs(str(merged), HandleTable(64), file_handles="prefer",
                           handle_fds_max=1)
        nodes = [call(fs, "lookup", ROOT, b"f%d" % i)[0] for i in range(4)]
        assert all(fs.inodes.get(n).fd is None for n in nodes)
        for _ in range(2):
            for i, n in enumerate(nodes):
                assert call(fs, "getattr", n).st_size == i
        for i, n in enumerate(nodes):
            evict(fs, nodes[(i + 1) % 4])
            assert call(fs, "lookup", ROOT, b"f%d" % i)[0] == n
            assert fs.inodes.nlookup(n) == 2
        for n in nodes:
            call(fs, "forget", n, 2)
            assert fs.inodes.nlookup(n) == 0
        assert fs.inodes.table.handle_nodes == 0
    finally:
        subprocess.run(["umount", "-l", str(merged)], check=False)


@pytest.mark.parametrize("mode", ["prefer", "mandatory"])
def test_mounts_with_handles_have_a_ceiling(tmp_path, mode):
    """A descriptor is kept per host mount to open its handles on, at most
    MOUNTS_WITH_HANDLES_MAX (the share's own among them): an inode of a mount beyond is held by
    descriptor ("prefer") or refused with EOPNOTSUPP ("mandatory")."""
    share = tmp_path / "share"
    share.mkdir()
    count = _tables.MOUNTS_WITH_HANDLES_MAX
    mounted = []
    try:
        for i in range(count + 1):
            (share / f"m{i}").mkdir()
            _mount("-t", "tmpfs", "tmpfs", str(share / f"m{i}"))
            mounted.append(share / f"m{i}")
        fs = PassthroughFs(str(share), HandleTable(64), file_handles=mode, handle_fds_max=4)
        table = fs.inodes.table
        for i in range(count - 1):
            nodeid = call(fs, "lookup", ROOT, b"m%d" % i)[0]
            assert fs.inodes.get(nodeid).fd is None
        assert table.fds_other == count
        for i in (count - 1, count):
            if mode == "prefer":
                nodeid = call(fs, "lookup", ROOT, b"m%d" % i)[0]
                assert fs.inodes.get(nodeid).fd is not None
            else:
                with pytest.raises(OSError) as exc:
                    call(fs, "lookup", ROOT, b"m%d" % i)
                assert exc.value.errno == errno.EOPNOTSUPP
        assert table.fds_other == count
        assert fs.fds_held() >= count
    finally:
        for path in mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)
