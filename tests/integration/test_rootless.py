"""The daemon run by an unprivileged user (libvirt session mode, Podman machine, CI runners).

Not being root, fastvfs sandboxes itself inside a user namespace of its own in which the user is
root (``fastvfs.sandbox.enter_user_namespace``); files it creates belong to that user on the
host.  Each test starts the daemon (default sandbox and seccomp unless it says otherwise) as a dedicated user
(created here if missing, with the subordinate id ranges ``useradd`` delegates) on a shared
directory that user owns, and drives it with the frontend driver as root, as QEMU would.
"""

import errno
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from fastvfs_testing.frontend import VhostUserFrontend
from fastvfs_testing.fuse_client import FuseClient
from fastvfs_testing.unprivileged import USER, ensure_user, subordinate_ids, unprivileged_argv
from tests.deployed import FASTVFS
from tests.integration.conftest import SANDBOX_IMPORT

TIMEOUT = 10.0

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="switching to an unprivileged user needs root")


@pytest.fixture(scope="module")
def user():
    """(uid, gid) of the unprivileged user; created with ``useradd`` if missing."""
    return ensure_user()


class RootlessDaemon:
    """A fastvfs run as the unprivileged user on a fresh shared directory that user owns."""

    def __init__(self, uid, gid, *extra_args):
        self.uid, self.gid = uid, gid
        self.top = tempfile.mkdtemp(prefix="fvfs-rl-")
        os.chmod(self.top, 0o755)
        self.shared = os.path.join(self.top, "shared")
        socket_dir = os.path.join(self.top, "sock")
        for d in (self.shared, socket_dir):
            os.mkdir(d, 0o755)
            os.chown(d, uid, gid)
        self.socket_path = os.path.join(socket_dir, "vhost.sock")
        self.log_path = os.path.join(self.top, "daemon.log")
        argv = unprivileged_argv([*FASTVFS, "--socket-path", self.socket_path, "--shared-dir",
                             self.shared, "--cache", "never", "--log-level", "debug",
                             *extra_args], uid, gid, self.top)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self.frontend = None

    def connect(self):
        """Start the device and FUSE_INIT; returns the :class:`FuseClient`."""
        deadline = time.monotonic() + TIMEOUT
        frontend = VhostUserFrontend(self.socket_path, timeout=TIMEOUT)
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"daemon exited with status {self.process.returncode}:\n"
                                   + self.log())
            try:
                frontend.connect()
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.frontend = frontend
        frontend.start()
        client = FuseClient(frontend, timeout=TIMEOUT)
        client.init()
        return client

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def close(self):
        if self.frontend is not None:
            self.frontend.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        output = self.log()
        print(f"--- rootless fastvfs (status {self.process.returncode}) ---\n{output}")
        shutil.rmtree(self.top, ignore_errors=True)
        assert SANDBOX_IMPORT not in output


@pytest.fixture
def rootless(user):
    started = []

    def start(*extra_args):
        daemon = RootlessDaemon(*user, *extra_args)
        started.append(daemon)
        return daemon
    yield start
    for daemon in started:
        daemon.close()


def _file_work(client, shared, uid, gid):
    """lookup, create, write, read, mkdir, rename, unlink as guest root; the host sees every
    new object owned by the daemon's user."""
    entry, handle = client.create(1, b"file", mode=0o640)
    assert entry.attr.uid == 0 and entry.attr.gid == 0    # the user is root in its namespace
    assert client.write(entry.nodeid, handle.fh, 0, b"rootless data") == 13
    assert client.read(entry.nodeid, handle.fh, 0, 64) == b"rootless data"
    client.release(entry.nodeid, handle.fh)
    directory = client.mkdir(1, b"dir")
    client.rename(1, b"file", directory.nodeid, b"moved")
    moved = client.lookup(directory.nodeid, b"moved")
    assert moved.attr.ino == entry.attr.ino
    for path in (os.path.join(shared, "dir"), os.path.join(shared, "dir", "moved")):
        st = os.lstat(path)
        assert (st.st_uid, st.st_gid) == (uid, gid), path
    with open(os.path.join(shared, "dir", "moved"), "rb") as f:
        assert f.read() == b"rootless data"
    client.unlink(directory.nodeid, b"moved")
    assert os.listdir(os.path.join(shared, "dir")) == []
    with pytest.raises(FileNotFoundError):
        client.lookup(directory.nodeid, b"moved")


@pytest.mark.parametrize("sandbox", ["namespace", "chroot"])
def test_unprivileged_daemon_serves_files_as_its_user(rootless, user, sandbox):
    args = () if sandbox == "namespace" else ("--sandbox", "chroot")
    daemon = rootless(*args)
    client = daemon.connect()
    _file_work(client, daemon.shared, *user)
    assert "user namespace: uid map 0 %d 1, gid map 0 %d 1" % user in daemon.log()


def test_unmapped_guest_user_is_refused(rootless, user):
    """A guest id outside the user namespace's map cannot own a file: EPERM, nothing created
    (and never a file owned by the daemon's user on that guest user's behalf)."""
    daemon = rootless()
    client = daemon.connect()
    with client.as_user(1000, 1000):
        with pytest.raises(OSError) as exc:
            client.create(1, b"theirs")
        assert exc.value.errno == errno.EPERM
        with pytest.raises(OSError) as exc:
            client.mkdir(1, b"theirs.d")
        assert exc.value.errno == errno.EPERM
    assert os.listdir(daemon.shared) == []
    assert "requests of that guest user fail with EPERM" in daemon.log()
    # The refusal leaves the thread's own ids in place: guest root still creates.
    entry, _ = client.create(1, b"ours")
    assert os.stat(os.path.join(daemon.shared, "ours")).st_uid == user[0]


def test_unsandboxed_daemon_refuses_other_owners(rootless, user):
    """Without a sandbox there is no user namespace: the unprivileged daemon can give files no
    owner but its own user, so a guest user it cannot become gets EPERM, as does guest root."""
    daemon = rootless("--sandbox", "none")
    client = daemon.connect()
    with pytest.raises(OSError) as exc:
        client.create(1, b"as-root")
    assert exc.value.errno == errno.EPERM
    assert os.listdir(daemon.shared) == []
    with client.as_user(*user):
        entry, _ = client.create(1, b"as-user")
    assert os.stat(os.path.join(daemon.shared, "as-user")).st_uid == user[0]


def test_unsandboxed_daemon_squashes_guest_users(rootless, user):
    """The remedy for the above: every guest id squashed onto the daemon's user, shown back as
    guest root."""
    uid, gid = user
    daemon = rootless("--sandbox", "none", f"--translate-uid=squash-guest:0:{uid}:65536",
                      f"--translate-gid=squash-guest:0:{gid}:65536",
                      f"--translate-uid=squash-host:{uid}:0:1",
                      f"--translate-gid=squash-host:{gid}:0:1")
    client = daemon.connect()
    entry, _ = client.create(1, b"as-root")
    with client.as_user(1000, 1000):
        other = client.mkdir(1, b"as-1000")
    assert owner_of(daemon.shared, "as-root") == owner_of(daemon.shared, "as-1000") == user
    assert (entry.attr.uid, entry.attr.gid) == (other.attr.uid, other.attr.gid) == (0, 0)


def owner_of(*path):
    st = os.lstat(os.path.join(*path))
    return st.st_uid, st.st_gid


def test_uid_map_installs_a_multi_id_map(rootless, user):
    """``--uid-map``/``--gid-map`` as libvirt's session mode passes them: the user's own ids
    as 0, its subordinate range from 1 on, through newuidmap/newgidmap."""
    if not (shutil.which("newuidmap") and shutil.which("newgidmap")):
        pytest.skip("newuidmap/newgidmap (Debian's uidmap package) are not installed")
    sub_uid, sub_gid = subordinate_ids("/etc/subuid"), subordinate_ids("/etc/subgid")
    if not (sub_uid and sub_gid):
        pytest.skip(f"no subordinate ids for {USER} in /etc/subuid, /etc/subgid")
    uid, gid = user
    daemon = rootless(f"--uid-map=:0:{uid}:1:", f"--uid-map=:1:{sub_uid[0]}:{sub_uid[1]}:",
                      f"--gid-map=:0:{gid}:1:", f"--gid-map=:1:{sub_gid[0]}:{sub_gid[1]}:")
    client = daemon.connect()
    _file_work(client, daemon.shared, uid, gid)
    home = client.mkdir(1, b"home", mode=0o777)
    with client.as_user(1000, 1000):
        entry, _ = client.create(home.nodeid, b"guest-1000", mode=0o600)
    assert (entry.attr.uid, entry.attr.gid) == (1000, 1000)
    st = os.stat(os.path.join(daemon.shared, "home", "guest-1000"))
    assert (st.st_uid, st.st_gid) == (sub_uid[0] + 999, sub_gid[0] + 999)
    assert f"uid map 0 {uid} 1 / 1 {sub_uid[0]} {sub_uid[1]}" in daemon.log()


# Runs argv[1:] with unshare(CLONE_NEWUSER) failing with EPERM, as Docker's default seccomp
# profile has it: a filter (x86-64) installed by root, so it needs no no_new_privs and the
# setuid newuidmap would still work.
_DENY_USERNS = r"""
import ctypes, os, struct, sys
def op(code, k, jt=0, jf=0):
    return struct.pack("=HBBI", code, jt, jf, k)
LD, JEQ, JSET, RET = 0x20, 0x15, 0x45, 0x06
ALLOW, ERRNO = 0x7FFF0000, 0x00050000
prog = b"".join([op(LD, 4), op(JEQ, 0xC000003E, 1, 0), op(RET, ALLOW),
                 op(LD, 0), op(JEQ, 272, 0, 3),             # unshare
                 op(LD, 16), op(JSET, 0x10000000, 0, 1),    # args[0] & CLONE_NEWUSER
                 op(RET, ERRNO | 1), op(RET, ALLOW)])
buf = ctypes.create_string_buffer(prog, len(prog))
class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
libc = ctypes.CDLL(None, use_errno=True)
fprog = Fprog(len(prog) // 8, ctypes.addressof(buf))
if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0):           # PR_SET_SECCOMP, FILTER
    sys.exit(f"seccomp: {os.strerror(ctypes.get_errno())}")
os.execvp(sys.argv[1], sys.argv[1:])
"""


@pytest.mark.parametrize("sandbox", ["namespace", "chroot"])
def test_no_user_namespaces_is_one_clear_line(user, sandbox):
    """Where user namespaces are refused (a container's seccomp profile, a sysctl), each
    sandbox says so in one line and the daemon exits."""
    uid, gid = user
    top = tempfile.mkdtemp(prefix="fvfs-rl-")
    try:
        os.chmod(top, 0o755)
        for d in ("shared", "sock"):
            os.mkdir(os.path.join(top, d))
            os.chown(os.path.join(top, d), uid, gid)
        argv = unprivileged_argv([*FASTVFS, "--socket-path", os.path.join(top, "sock", "s"),
                                  "--shared-dir", os.path.join(top, "shared"),
                                  "--sandbox", sandbox], uid, gid, top)
        result = subprocess.run([sys.executable, "-c", _DENY_USERNS, *argv],
                                capture_output=True, text=True, timeout=TIMEOUT)
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "unshare of a user namespace" in lines[0]
        assert os.strerror(errno.EPERM) in lines[0]
    finally:
        shutil.rmtree(top, ignore_errors=True)
