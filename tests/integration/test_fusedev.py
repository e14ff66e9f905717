"""The /dev/fuse transport: the host kernel as a second real FUSE client of the same engine.

The guest workload (tests/guest/workload.py) runs on a `fastvfs mount` and on a plain host
directory; every result must be the same.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.guest import workload
from tests.deployed import FASTVFS

WORKLOAD = Path(workload.__file__)
pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse") or os.geteuid() != 0,
                                reason="needs /dev/fuse and root")


def mounted(path):
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


@pytest.fixture
def fuse_mount(tmp_path):
    procs = []

    def start(*options):
        shared, mnt = tmp_path / f"shared{len(procs)}", tmp_path / f"mnt{len(procs)}"
        shared.mkdir()
        mnt.mkdir()
        proc = subprocess.Popen([*FASTVFS, "mount", str(shared), str(mnt),
                                 *options], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append((proc, mnt))
        deadline = time.monotonic() + 15
        while not mounted(mnt):
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        return proc, shared, mnt

    yield start
    for proc, mnt in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
        if mounted(mnt):
            subprocess.run(["umount", "-l", str(mnt)])


def run_workload(directory, env=None):
    out = directory.parent / f"{directory.name}.json"
    subprocess.run([sys.executable, str(WORKLOAD), str(directory), str(out)],
                   env={**os.environ, **(env or {})}, check=True, timeout=600)
    return json.loads(out.read_text())


@pytest.mark.parametrize("cache", ["never", "auto", "always"])
def test_workload_matches_host(fuse_mount, tmp_path, cache):
    proc, shared, mnt = fuse_mount("--cache", cache)
    env = {"WORKLOAD_BIGDIR_COUNT": "2000"}
    if cache == "never":
        env["WORKLOAD_SKIP"] = "mmap_io"  # direct I/O: see the guest suite
    on_fuse = run_workload(mnt / "work", env)
    on_host = run_workload(tmp_path / "host", env)
    assert on_fuse["steps"] == on_host["steps"]
    assert on_fuse["tree"] == on_host["tree"]
    assert workload.tree_manifest(shared / "work") == on_host["tree"]


def test_signal_unmounts_and_exits_cleanly(fuse_mount):
    proc, shared, mnt = fuse_mount()
    (mnt / "f").write_text("through fuse")
    assert (shared / "f").read_text() == "through fuse"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0
    assert not mounted(mnt)


def test_external_unmount_ends_the_server(fuse_mount):
    proc, shared, mnt = fuse_mount()
    subprocess.run(["umount", str(mnt)], check=True)
    assert proc.wait(10) == 0


def test_locks_between_host_processes_through_the_mount(fuse_mount):
    import fcntl
    proc, shared, mnt = fuse_mount()
    (mnt / "f").write_text("x")
    holder = open(mnt / "f", "r+")
    fcntl.lockf(holder, fcntl.LOCK_EX)
    probe = ("import fcntl,sys; f=open(sys.argv[1],'r+')\n"
             "try: fcntl.lockf(f, fcntl.LOCK_EX|fcntl.LOCK_NB); print('free')\n"
             "except OSError: print('locked')")
    for path in (mnt / "f", shared / "f"):  # another client of the mount, and the host itself
        out = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True,
                             text=True)
        assert out.stdout.strip() == "locked", path
    holder.close()
    out = subprocess.run([sys.executable, "-c", probe, str(shared / "f")], capture_output=True,
                         text=True)
    assert out.stdout.strip() == "free"


def test_xattrs_through_the_mount(fuse_mount):
    proc, shared, mnt = fuse_mount("--xattr")
    (mnt / "f").write_text("")
    os.setxattr(mnt / "f", "user.k", b"v")
    assert os.getxattr(shared / "f", "user.k") == b"v"
    assert "user.k" in os.listxattr(mnt / "f")


def test_creator_in_the_parent_group_through_a_supplementary_group(fuse_mount):
    """The host kernel (7.39+) sends the parent's group with FUSE_CREATE_SUPP_GROUP; without it
    the daemon's own permission check, made with the caller's fsuid/fsgid, would refuse."""
    proc, shared, mnt = fuse_mount()
    os.chmod(shared, 0o755)
    team = shared / "team"
    team.mkdir()
    os.chown(team, 0, 1234)
    os.chmod(team, 0o770)
    # The child works from inside the directory: pytest's temporary parents are not searchable
    # by other users.
    child = ("import os,sys; os.chdir(sys.argv[1]); os.setgroups([1234]); os.setgid(4321);"
             "os.setuid(4321); os.mkdir('d'); open('f', 'w').close()")
    subprocess.run([sys.executable, "-c", child, str(mnt / "team")], check=True)
    for name in ("d", "f"):
        st = os.stat(team / name)
        assert (st.st_uid, st.st_gid) == (4321, 4321), name
