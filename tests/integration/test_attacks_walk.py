"""Walks the daemon makes on the guest's behalf stay within bounded descriptors, against a
daemon with its defaults (``--sandbox namespace --seccomp kill``) and a small RLIMIT_NOFILE.
Each test is a row of the table in SECURITY.md."""

import os

from fastvfs.fuse import abi

from .test_attacks import custom  # noqa: F401  (fixture)
from .test_hostile import still_serving

ROOT = abi.FUSE_ROOT_ID
DEPTH = 400  # levels, twice the daemon's whole descriptor limit below


def test_dotdot_of_a_deep_directory_walks_up_with_few_descriptors(custom, tmp_path):
    """LOOKUP ".." checks that the parent lies inside the share by climbing to the share's
    root: from a directory 400 levels deep, under RLIMIT_NOFILE 200, it answers the parent
    (the climb never holds one descriptor per level)."""
    share = tmp_path / "share"
    deep = share.joinpath(*["d"] * DEPTH)
    os.makedirs(deep)
    frontend, client, _ = custom("--rlimit-nofile", "200", shared=share)
    # Walk down holding one node id at a time.
    nodeid = ROOT
    for _ in range(DEPTH):
        child = client.lookup(nodeid, "d").nodeid
        if nodeid != ROOT:
            client.forget(nodeid, 1)
        nodeid = child
    parent = client.lookup(nodeid, "..")
    assert parent.attr.ino == os.stat(deep.parent).st_ino
    still_serving(frontend, client)
