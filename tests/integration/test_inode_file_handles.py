"""--inode-file-handles against the daemon with its defaults (namespace sandbox, seccomp kill),
driven by the frontend driver: inodes held by file handle cost no descriptor each, so a guest
that knows many inodes keeps the daemon's descriptor count flat; ``never`` holds one each and
runs into the descriptor limit; ``mandatory`` refuses file systems without handles.

``FASTVFS_HANDLE_FILES`` sets how many distinct files the flat-count test looks up (default
200000; the manual run of the issue uses 2000000)."""

import errno
import os
import subprocess
import time

import pytest

from fastvfs.fuse import abi
from fastvfs.fs.passthrough import HANDLE_FDS_MAX

from .test_attacks import custom, expect_errno  # noqa: F401  (fixture)
from .test_attacks_listings import serving_pid
from tests.deployed import FASTVFS

ROOT = abi.FUSE_ROOT_ID
FILES = int(os.environ.get("FASTVFS_HANDLE_FILES", "200000"))


def make_files(directory, count):
    """``count`` distinct empty files (distinct inodes: hard links would share one handle)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    dir_fd = os.open(directory, os.O_PATH | os.O_DIRECTORY)
    try:
        for i in range(count):
            os.close(os.open(f"f{i}", flags, 0o644, dir_fd=dir_fd))
    finally:
        os.close(dir_fd)


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def effective_caps(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise AssertionError("no CapEff")


@pytest.mark.parametrize("mode, kept", [("never", False), ("prefer", True),
                                        ("mandatory", True)])
def test_dac_read_search_is_kept_only_with_handles(custom, mode, kept):
    custom(f"--inode-file-handles={mode}")
    caps = effective_caps(serving_pid(custom.launcher.process))
    assert bool(caps & (1 << 2)) == kept  # CAP_DAC_READ_SEARCH


def test_prefer_keeps_the_descriptor_count_flat(custom, tmp_path):
    share = tmp_path / "many"
    share.mkdir()
    started = time.monotonic()
    make_files(share, FILES)
    made = time.monotonic() - started
    frontend, client, _ = custom("--inode-file-handles=prefer", "--log-level", "info",
                                 shared=share)
    pid = serving_pid(custom.launcher.process)
    before = fd_count(pid)
    started = time.monotonic()
    ids = set()
    for i in range(FILES):
        ids.add(client.lookup(ROOT, f"f{i}").nodeid)
    looked = time.monotonic() - started
    after = fd_count(pid)
    print(f"\n{FILES} files made in {made:.1f}s, looked up in {looked:.1f}s; daemon "
          f"descriptors {before} -> {after}")
    assert len(ids) == FILES
    assert after - before <= HANDLE_FDS_MAX + 8
    # Every node still answers, through its handle.
    for i in (0, FILES // 2, FILES - 1):
        nodeid = client.lookup(ROOT, f"f{i}").nodeid
        assert client.getattr(nodeid).attr.ino == os.stat(share / f"f{i}").st_ino


def test_never_runs_out_of_descriptors(custom, tmp_path):
    """The same guest against ``never`` with a small descriptor limit: EMFILE, where
    ``prefer`` under the same limit goes on."""
    count = 3000
    results = {}
    for mode in ("never", "prefer"):
        share = tmp_path / mode
        share.mkdir()
        make_files(share, count)
        frontend, client, _ = custom(f"--inode-file-handles={mode}", "--rlimit-nofile=2048",
                                     shared=share)
        looked = 0
        try:
            for i in range(count):
                client.lookup(ROOT, f"f{i}")
                looked += 1
        except OSError as exc:
            assert exc.errno == errno.EMFILE, exc
        results[mode] = looked
    print(f"\nlookups before EMFILE with --rlimit-nofile=2048: {results}")
    assert results["never"] < 2048
    assert results["prefer"] == count


def test_node_ids_never_name_a_reused_inode_number(custom, tmp_path):
    """A file held by handle is removed on the host and its inode number given to a new file
    while the guest still holds the old node: a lookup of the new file gets a new node id,
    and the old node answers ESTALE (never the new file's attributes)."""
    share = tmp_path / "reuse"
    share.mkdir()
    make_files(share, HANDLE_FDS_MAX + 64)
    frontend, client, _ = custom("--inode-file-handles=prefer", shared=share)
    old = client.lookup(ROOT, "f0")
    old_ino = old.attr.ino
    # Other lookups push f0's descriptor out of the cache, then the host removes it.
    for i in range(1, HANDLE_FDS_MAX + 64):
        client.lookup(ROOT, f"f{i}")
    os.unlink(share / "f0")
    reused = None
    for k in range(2000):
        fd = os.open(share / f"n{k}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        if os.stat(share / f"n{k}").st_ino == old_ino:
            reused = f"n{k}"
            break
    if reused is None:
        pytest.skip("the host file system did not reuse the inode number")
    new = client.lookup(ROOT, reused)
    assert new.attr.ino == old_ino
    assert new.nodeid != old.nodeid
    expect_errno((errno.ESTALE, errno.ENOENT), client.getattr, old.nodeid)
    assert client.getattr(new.nodeid).attr.ino == old_ino


@pytest.fixture
def proc_mount(tmp_path):
    """A directory with a proc file system mounted below it (proc has no file handles)."""
    share = tmp_path / "mixed"
    (share / "proc").mkdir(parents=True)
    (share / "plain").write_bytes(b"x")
    if subprocess.run(["mount", "-t", "proc", "proc", str(share / "proc")],
                      capture_output=True).returncode:
        pytest.skip("cannot mount proc here")
    yield share
    subprocess.run(["umount", "-l", str(share / "proc")], check=False)


def test_prefer_falls_back_to_descriptors_without_handles(custom, proc_mount):
    frontend, client, _ = custom("--inode-file-handles=prefer", shared=proc_mount)
    assert client.lookup(ROOT, "plain").attr.size == 1
    proc = client.lookup(ROOT, "proc").nodeid
    entry = client.lookup(proc, "self")
    assert entry.nodeid
    assert client.getattr(proc).attr.mode & 0o170000 == 0o040000


def test_mandatory_refuses_file_systems_without_handles(custom, proc_mount):
    frontend, client, _ = custom("--inode-file-handles=mandatory", shared=proc_mount)
    assert client.lookup(ROOT, "plain").attr.size == 1
    expect_errno(errno.EOPNOTSUPP, client.lookup, ROOT, "proc")


def test_never_holds_descriptors(custom, tmp_path):
    share = tmp_path / "few"
    share.mkdir()
    make_files(share, 1500)
    frontend, client, _ = custom(shared=share)
    pid = serving_pid(custom.launcher.process)
    before = fd_count(pid)
    for i in range(1500):
        client.lookup(ROOT, f"f{i}")
    assert fd_count(pid) - before >= 1500


def test_mandatory_does_not_start_on_a_share_without_handles(proc_mount, tmp_path):
    out = subprocess.run([*FASTVFS, "--socket-path", str(tmp_path / "s"), "--shared-dir",
                          str(proc_mount / "proc"), "--inode-file-handles=mandatory"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out
    assert "without file handles" in out.stderr and "Traceback" not in out.stderr
