"""A directory handle's listing (``fastvfs/fs/tables/dirs.pxi``, the hot path's and the file
system's): struct fuse_dirent records built in C straight from getdents64, as READDIR sends
them."""

import errno
import os
import stat
import struct

import pytest

from fastvfs.fs import _tables


def _listing(fd, dot, dotdot):
    """A fresh listing of open directory ``fd`` (a duplicate held by a directory handle)."""
    handles = _tables.HandleTable(4)
    fh = handles.add(os.dup(fd), True)
    return _tables.listing_of(handles, fh, 0, lambda: (dot, dotdot))


def _records(listing):
    out = []
    for i in range(len(listing)):
        record = listing.record(i)
        ino, off, namelen, dtype = struct.unpack_from("<QQII", record)
        name = record[24:24 + namelen]
        assert name == listing.name(i)
        assert len(record) == (24 + namelen + 7) // 8 * 8          # padded to 8 bytes
        assert record[24 + namelen:] == bytes(len(record) - 24 - namelen)
        out.append((name, ino, off, dtype))
    # READDIR's run of all of them is the records back to back.
    assert listing.run(0, 1 << 30) == b"".join(listing.record(i) for i in range(len(listing)))
    return out


def test_every_entry_with_its_type_inode_and_cookie(tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    (tmp_path / "dir").mkdir()
    os.symlink("file", tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / ("n" * 255)).write_bytes(b"")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        entries = _records(_listing(fd, 11, 22))
        again = _records(_listing(fd, 11, 22))   # the position was rewound
    finally:
        os.close(fd)
    assert entries == again
    assert entries[:2] == [(b".", 11, 1, stat.S_IFDIR >> 12), (b"..", 22, 2, stat.S_IFDIR >> 12)]
    assert [off for _, _, off, _ in entries] == list(range(1, len(entries) + 1))
    rest = {name: (ino, dtype) for name, ino, _, dtype in entries[2:]}
    expected = {}
    for name in os.listdir(tmp_path):
        st = os.lstat(tmp_path / name)
        expected[os.fsencode(name)] = (st.st_ino, stat.S_IFMT(st.st_mode) >> 12)
    assert rest == expected


def test_a_large_directory_in_many_getdents_calls(tmp_path):
    names = {f"{i:05d}-{'y' * 100}" for i in range(3000)}   # > 400 KiB of host dirents
    for name in names:
        (tmp_path / name).touch()
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        snapshot = _listing(fd, 1, 1)
    finally:
        os.close(fd)
    assert len(snapshot) == len(names) + 2
    assert {os.fsdecode(snapshot.name(i)) for i in range(2, len(snapshot))} == names


def test_empty_directory_and_a_bad_fd(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert [n for n, *_ in _records(_listing(fd, 5, 6))] == [b".", b".."]
    finally:
        os.close(fd)
    # A handle that is no directory's, and one that is gone: EBADF.
    handles = _tables.HandleTable(4)
    fh = handles.add(os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY))
    for gone in (False, True):
        if gone:
            handles.remove(fh)
        with pytest.raises(OSError) as exc:
            _tables.listing_of(handles, fh, 0, lambda: (5, 6))
        assert exc.value.errno == errno.EBADF
