"""A thread's file-system ids and the names of descriptors, as the file system and the hot path
switch and make them (fastvfs/fs/_sys.pyx ``_fs_ids``, fastvfs/fs/tables/opens.pxi)."""

import os
import resource
import stat
import threading

import pytest

from fastvfs.fs import _sys, _tables
from fastvfs.fs._tables import HandleTable

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching ids needs root")


def _in_thread(fn):
    """``fn()`` in a fresh thread (one whose ids no switch has touched yet); its result, or
    what it raised raised again."""
    out = []

    def run():
        try:
            out.append((True, fn()))
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            out.append((False, e))
    t = threading.Thread(target=run)
    t.start()
    t.join()
    ok, value = out[0]
    if not ok:
        raise value
    return value


def _create(directory, name):
    """Create ``name`` in the open ``directory`` (no path walk through the test's root-only
    temporary directories); its (uid, gid)."""
    os.close(os.open(name, os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=directory))
    st = os.stat(name, dir_fd=directory)
    return st.st_uid, st.st_gid


@pytest.fixture
def directory(tmp_path):
    tmp_path.chmod(0o777)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def test_each_switch_is_made_and_reported(directory):
    """set_fs_creds returns the pair in force and makes the new one: a file created after each
    switch has the ids switched to, whether the pair changes, stays (known to the thread, no
    system call) or comes back."""
    pairs = [(1234, 5678), (1234, 5678), (0, 0), (0, 0), (1234, 5678), (4321, 5678), (0, 0)]

    def switches():
        out = []
        for i, ids in enumerate(pairs):
            before = _sys.set_fs_creds(*ids)
            out.append((before, _create(directory, f"f{i}")))
        _sys.set_fs_creds(0, 0)
        return out

    got = _in_thread(switches)
    assert [owner for _, owner in got] == pairs
    assert [before for before, _ in got] == [(0, 0)] + pairs[:-1]


def test_the_ids_are_the_threads_own(directory):
    """A switch in one thread leaves another's ids (and what it knows of them) alone."""
    switched, go = threading.Event(), threading.Event()
    owner = []

    def other():
        try:
            _sys.set_fs_creds(1234, 5678)
        finally:
            switched.set()
        go.wait(30)
        owner.append(_create(directory, "other"))
        _sys.set_fs_creds(0, 0)

    t = threading.Thread(target=other)
    t.start()
    try:
        switched.wait(30)
        assert _in_thread(lambda: (_sys.set_fs_creds(0, 0), _create(directory, "mine"))) == \
            ((0, 0), (0, 0))
    finally:
        go.set()
        t.join()
    assert owner == [(1234, 5678)]


def test_descriptors_are_named_by_their_number(tmp_path):
    """The /proc/self/fd name the hot path makes of a descriptor (reopen, OPEN, SETATTR,
    LINK, the xattr calls) for numbers of every length the descriptor limit allows: the
    reopened description is of that very file."""
    path = tmp_path / "f"
    path.write_bytes(b"x")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = min(hard, 1 << 20) - 1
    handles = HandleTable(16)
    _tables.set_open_policy(handles, os.O_ACCMODE, False, 1 << 30, None, "/proc/self/fd/")
    node = os.open(path, os.O_PATH)
    resource.setrlimit(resource.RLIMIT_NOFILE, (top + 1, hard))
    try:
        for number in sorted({10, 99, 100, 4096, 65535, 100000, top}):
            if number > top:
                continue
            try:
                os.fstat(number)
                continue        # in use
            except OSError:
                pass
            os.dup2(node, number)
            try:
                fd = _tables.reopen(handles, number, stat.S_IFREG | 0o644, os.O_RDONLY)
                try:
                    assert os.path.samestat(os.fstat(fd), os.stat(path)), number
                    assert os.read(fd, 1) == b"x"
                finally:
                    os.close(fd)
            finally:
                os.close(number)
    finally:
        os.close(node)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
