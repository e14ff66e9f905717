"""The file system's directory snapshot (``fastvfs.fs._sys.pack_dirents``): struct fuse_dirent
records built in C straight from getdents64, as READDIR sends them."""

import errno
import os
import stat
import struct

import pytest

from fastvfs.fs import _sys
from fastvfs.fs.passthrough import DirSnapshot


def _records(records, starts):
    ends = struct.unpack(f"<{len(starts) // 4}I", starts)
    out = []
    for a, b in zip(ends, ends[1:]):
        ino, off, namelen, dtype = struct.unpack_from("<QQII", records, a)
        name = records[a + 24:a + 24 + namelen]
        assert b - a == (24 + namelen + 7) // 8 * 8          # padded to 8 bytes
        assert records[a + 24 + namelen:b] == bytes(b - a - 24 - namelen)
        out.append((name, ino, off, dtype))
    assert ends[0] == 0 and ends[-1] == len(records)
    return out


def test_every_entry_with_its_type_inode_and_cookie(tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    (tmp_path / "dir").mkdir()
    os.symlink("file", tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / ("n" * 255)).write_bytes(b"")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        entries = _records(*_sys.pack_dirents(fd, 11, 22))
        again = _records(*_sys.pack_dirents(fd, 11, 22))   # the position was rewound
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
        snapshot = DirSnapshot(*_sys.pack_dirents(fd, 1, 1))
    finally:
        os.close(fd)
    assert len(snapshot) == len(names) + 2
    assert {os.fsdecode(snapshot.name(i)) for i in range(2, len(snapshot))} == names


def test_empty_directory_and_a_bad_fd(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert [n for n, *_ in _records(*_sys.pack_dirents(fd, 5, 6))] == [b".", b".."]
    finally:
        os.close(fd)
    fd = os.open(tmp_path / "..", os.O_PATH)
    os.close(fd)
    with pytest.raises(OSError) as exc:
        _sys.pack_dirents(fd, 5, 6)
    assert exc.value.errno == errno.EBADF
