"""Directory listings a guest makes the daemon hold: released with their handle, whichever
opcode closes it, and bounded in total (LISTING_BYTES_MAX) however many handles stay open.
The daemon runs with its defaults (namespace sandbox, seccomp)."""

import os
from pathlib import Path

import pytest

from fastvfs.fuse import abi

from .conftest import _launcher

ROOT = abi.FUSE_ROOT_ID
ENTRIES = 5000
MiB = 1 << 20


@pytest.fixture
def fastvfs(tmp_path):
    yield from _launcher("fastvfs", tmp_path)


def serving_pid(process):
    """The process that serves: the sandbox's child in a namespace sandbox."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    kids = children.read_text().split() if children.exists() else []
    return int(kids[0]) if kids else process.pid


def rss(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def big_directory(shared):
    """A directory whose listing takes about 0.7 MiB (5000 names of 120 bytes)."""
    big = os.path.join(shared, "big")
    os.mkdir(big)
    for i in range(ENTRIES):
        with open(os.path.join(big, f"{i:05d}-" + "n" * 114), "w"):
            pass
    return big


def test_listings_are_freed_by_release_as_by_releasedir(fastvfs):
    frontend, client, shared = fastvfs()
    big_directory(shared)
    nodeid = client.lookup(ROOT, b"big").nodeid
    pid = serving_pid(fastvfs.process)

    def cycle(release):
        fh = client.opendir(nodeid).fh
        assert client.readdir(nodeid, fh)
        release(nodeid, fh)

    for _ in range(20):
        cycle(client.release)
    before = rss(pid)
    # RELEASE (not RELEASEDIR) of a directory handle: the hot path would answer it itself.
    for _ in range(400):
        cycle(client.release)
    for _ in range(50):
        cycle(client.releasedir)
    grown = rss(pid) - before
    assert grown < 64 * MiB, f"the daemon grew by {grown // MiB} MiB"
    assert client.getattr(ROOT).attr.mode & 0o170000 == 0o040000


def test_listings_of_many_open_handles_stay_bounded(fastvfs):
    frontend, client, shared = fastvfs()
    big_directory(shared)
    nodeid = client.lookup(ROOT, b"big").nodeid
    pid = serving_pid(fastvfs.process)
    before = rss(pid)
    handles = []
    for _ in range(300):   # about 210 MiB of listings if all were kept
        fh = client.opendir(nodeid).fh
        assert client.readdir(nodeid, fh)
        handles.append(fh)
    grown = rss(pid) - before
    # The 64 MiB of listings, plus the allocator's slack.
    assert grown < 110 * MiB, f"the daemon grew by {grown // MiB} MiB"
    # Every handle still lists the whole directory (a dropped listing is taken again).
    for fh in (handles[0], handles[-1]):
        assert len(_all_names(client, nodeid, fh)) == ENTRIES + 2
    for fh in handles:
        client.releasedir(nodeid, fh)
    assert client.getattr(ROOT).attr.mode & 0o170000 == 0o040000


def _all_names(client, nodeid, fh):
    names, offset = [], 0
    while True:
        entries = client.readdir(nodeid, fh, offset, size=64 * 1024)
        if not entries:
            return names
        names += [e.name for e in entries]
        offset = entries[-1].off
