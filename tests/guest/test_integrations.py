"""The argument vectors that the projects deploying a vhost-user-fs backend really send, each
started from the command under test (tests.deployed.FASTVFS) with its default sandbox and
seccomp policy and used by a booted guest.

Sources of the vectors (public repositories):

* libvirt/libvirt src/qemu/qemu_virtiofs.c, ``qemuVirtioFSBuildCommandLine``: libvirt opens
  and listens on the socket itself (``qemuVirtioFSOpenChardev``) and passes it as ``--fd=N``
  (``virCommandPassFD`` keeps the number).  Without the descriptor's ``separate-options``
  feature it sends ``-o source=DIR[,cache=none|always][,sandbox=MODE][,xattr|,no_xattr]
  [,flock|,no_flock][,posix_lock|,no_posix_lock]``; with it ``--shared-dir DIR
  [--cache never|always] [--sandbox MODE] [--xattr]`` (locking options are refused there by
  libvirt itself).  Both forms append ``--thread-pool-size=N`` (``<thread_pool size>``) and
  ``--rlimit-nofile=N`` (``<openfiles max>``).
* kata-containers/kata-containers src/runtime/virtcontainers/virtiofsd.go, ``args`` and
  ``getSocketFD``: the runtime listens, hands the socket over as the first ``ExtraFiles`` entry
  (fd 3) and sends ``--syslog --cache=auto --shared-dir=DIR --fd=3
  --inode-file-handles=prefer`` followed by ``virtio_fs_extra_args``, whose shipped default
  (src/runtime/config/configuration-qemu.toml.in) is ``--thread-pool-size=1
  --announce-submounts``.
* astro/microvm.nix nixos-modules/microvm/virtiofsd/default.nix: the daemon creates the socket
  itself, ``--socket-path=SOCK --socket-group=GROUP --shared-dir=DIR --rlimit-nofile 1048576
  --thread-pool-size N --posix-acl --xattr --inode-file-handles=prefer`` (as root; the
  defaults of nixos-modules/microvm/options.nix: group ``kvm``, ``nproc`` threads, ``prefer``).
"""

import grp
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fastvfs_testing import guest
from tests.deployed import FASTVFS

pytestmark = pytest.mark.guest

GUEST_TIMEOUT = 300
SANDBOX_IMPORT = "imported inside the sandbox"

# The guest's file work: read what the host wrote, write, read back, mkdir, rename, list.
FILE_WORK = '''set -e
cd "$FASTVFS_MNT"
cat from-host
echo written > from-guest
cat from-guest
mkdir -p dir/sub
mv from-guest dir/renamed
ls dir
'''
XATTR_WORK = '''"$FASTVFS_PYTHON" -c "import os; os.setxattr('dir/renamed', 'user.k', b'v'); \
print(os.getxattr('dir/renamed', 'user.k').decode())"
'''
# A POSIX access ACL (linux/posix_acl_xattr.h: version 2, then {tag, perm, id} entries in tag
# order) granting uid 4321 read and write.
ACL_WORK = '''"$FASTVFS_PYTHON" - <<'PY'
import os, struct
entries = [(0x01, 6, 0xffffffff), (0x02, 6, 4321), (0x04, 4, 0xffffffff),
           (0x10, 6, 0xffffffff), (0x20, 4, 0xffffffff)]
blob = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)
os.setxattr("dir/renamed", "system.posix_acl_access", blob)
print("acl", oct(os.stat("dir/renamed").st_mode & 0o777))
PY
'''


def _nproc():
    return str(len(os.sched_getaffinity(0)))


def _socket_group():
    """microvm.nix's default socket group, or root's group where this host has no kvm group."""
    try:
        return grp.getgrnam("kvm").gr_name
    except KeyError:
        return grp.getgrgid(0).gr_name


# name -> (how the socket is made, argv after the program, what the guest exercises).
# ``fd`` is the number the listening socket has in the daemon; ``None`` means the daemon creates
# the socket at ``{sock}`` itself.
VECTORS = {
    # <filesystem type='mount'><driver type='virtiofs'/> with nothing else set.
    "libvirt-o-minimal": (
        "fd-any", lambda d, s, fd: [f"--fd={fd}", "-o", f"source={d}"], ()),
    # cache, sandbox, xattr, flock, posix_lock, <thread_pool size='16'/>, <openfiles max='4096'/>.
    "libvirt-o-full": (
        "fd-any",
        lambda d, s, fd: [f"--fd={fd}", "-o",
                          f"source={d},cache=always,sandbox=namespace,xattr,flock,posix_lock",
                          "--thread-pool-size=16", "--rlimit-nofile=4096"],
        ("xattr",)),
    "libvirt-o-cache-none": (
        "fd-any",
        lambda d, s, fd: [f"--fd={fd}", "-o", f"source={d},cache=none,no_xattr,no_flock,"
                                              "no_posix_lock", "--thread-pool-size=0"], ()),
    "libvirt-separate-minimal": (
        "fd-any", lambda d, s, fd: [f"--fd={fd}", "--shared-dir", str(d)], ()),
    "libvirt-separate-full": (
        "fd-any",
        lambda d, s, fd: [f"--fd={fd}", "--shared-dir", str(d), "--cache", "always",
                          "--sandbox", "namespace", "--xattr", "--thread-pool-size=16",
                          "--rlimit-nofile=4096"],
        ("xattr",)),
    "libvirt-separate-cache-never": (
        "fd-any",
        lambda d, s, fd: [f"--fd={fd}", "--shared-dir", str(d), "--cache", "never"], ()),
    "kata": (
        "fd-3",
        lambda d, s, fd: ["--syslog", "--cache=auto", f"--shared-dir={d}", f"--fd={fd}",
                          "--inode-file-handles=prefer", "--thread-pool-size=1",
                          "--announce-submounts"], ()),
    "microvm.nix": (
        "path",
        lambda d, s, fd: [f"--socket-path={s}", f"--socket-group={_socket_group()}",
                          f"--shared-dir={d}", "--rlimit-nofile", "1048576",
                          "--thread-pool-size", _nproc(), "--posix-acl", "--xattr",
                          "--inode-file-handles=prefer"],
        ("xattr", "acl")),
}


def _start(how, argv_for, shared, sock_path, log):
    """Start the daemon with the socket made the way the project makes it."""
    if how == "path":
        argv = [*FASTVFS, *argv_for(shared, sock_path, None)]
        return argv, subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    listener.listen(1)
    fd = listener.fileno()
    try:
        if how == "fd-any":   # libvirt: the inherited descriptor keeps its number
            argv = [*FASTVFS, *argv_for(shared, sock_path, fd)]
            return argv, subprocess.Popen(argv, pass_fds=[fd], stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        # Kata: Go's exec.Cmd.ExtraFiles[0] becomes fd 3 in the child.
        argv = [*FASTVFS, *argv_for(shared, sock_path, 3)]
        shim = [sys.executable, "-c", "import os, sys; fd = int(sys.argv[1]); os.dup2(fd, 3); "
                "os.close(fd); os.execvp(sys.argv[2], sys.argv[2:])", str(fd), *argv]
        return argv, subprocess.Popen(shim, pass_fds=[fd], stdin=subprocess.DEVNULL,
                                      stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
    finally:
        listener.close()   # the daemon holds its own copy, as after libvirt's and Kata's close


def _wait_socket(proc, sock_path, log_path, timeout=15):
    deadline = time.monotonic() + timeout
    while not sock_path.is_socket():
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"daemon did not listen on {sock_path} (status {proc.poll()}):\n"
                        f"{log_path.read_text(errors='replace')}")
        time.sleep(0.05)


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_integration_vector(name, guest_images, tmp_path):
    how, argv_for, extras = VECTORS[name]
    kernel, initramfs = guest_images
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "from-host").write_text("hello guest\n")
    sock_dir = Path(tempfile.mkdtemp(prefix="fvi-"))   # sun_path is 108 bytes
    sock_path = sock_dir / "fs.sock"
    log_path = tmp_path / "daemon.log"
    script = FILE_WORK + (XATTR_WORK if "xattr" in extras else "") + \
        (ACL_WORK if "acl" in extras else "")
    with open(log_path, "wb") as log:
        argv, proc = _start(how, argv_for, shared, sock_path, log)
    try:
        print("argv:", argv)
        if how == "path":
            _wait_socket(proc, sock_path, log_path)
        try:
            result = guest.run_guest(script, vhost_user_socket=sock_path, kernel=kernel,
                                     initramfs=initramfs, timeout=GUEST_TIMEOUT)
        except guest.GuestError as exc:
            pytest.fail(f"{exc}\n--- daemon log ---\n{log_path.read_text(errors='replace')}")
        daemon_log = log_path.read_text(errors="replace")
        assert result.returncode == 0, f"{result.stderr}\n--- daemon log ---\n{daemon_log}"
        expected = ["hello guest", "written", "renamed", "sub"]
        if "xattr" in extras:
            expected.append("v")
        if "acl" in extras:
            expected.append("acl 0o664")
        assert result.stdout.split() == " ".join(expected).split()
        assert not (shared / "from-guest").exists()
        assert (shared / "dir" / "renamed").read_text() == "written\n"
        assert (shared / "dir" / "sub").is_dir()
        if "xattr" in extras:
            assert os.getxattr(shared / "dir" / "renamed", "user.k") == b"v"
        if "acl" in extras:
            blob = os.getxattr(shared / "dir" / "renamed", "system.posix_acl_access")
            entries = [struct.unpack_from("<HHI", blob, off) for off in range(4, len(blob), 8)]
            assert (0x02, 6, 4321) in entries, entries
        assert proc.wait(20) == 0, log_path.read_text(errors="replace")
        daemon_log = log_path.read_text(errors="replace")
        assert SANDBOX_IMPORT not in daemon_log, daemon_log
        assert "Traceback" not in daemon_log, daemon_log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
        shutil.rmtree(sock_dir, ignore_errors=True)
