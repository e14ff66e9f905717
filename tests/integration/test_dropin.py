"""The reference daemon's command line, the sandbox, and the statistics, on a running daemon
driven by the frontend driver."""

import ctypes
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fastvfs import sandbox, seccomp
from fastvfs.fuse import abi
from fastvfs.fuse.abi import Opcode
from fastvfs_testing.frontend import VhostUserFrontend
from fastvfs_testing.fuse_client import LINUX_6_1_INIT_FLAGS, FuseClient
from fastvfs.vhost_user import protocol
from fastvfs.vhost_user.protocol import Request
from tests.deployed import FASTVFS

from .conftest import SANDBOX_IMPORT
from .test_attacks_listings import serving_pid
from .test_inode_file_handles import effective_caps

DAEMON = FASTVFS
ROOT = abi.FUSE_ROOT_ID


class Daemon:
    def __init__(self, tmp, *args, shared=None, files=None):
        self.dir = Path(tempfile.mkdtemp(prefix="fvc-"))
        self.sock = self.dir / "s.sock"
        self.shared = shared or (tmp / "shared")
        self.shared.mkdir(exist_ok=True)
        for name, data in (files or {}).items():
            (self.shared / name).write_bytes(data)
        argv = [*DAEMON, "--socket-path", str(self.sock), "--log-level", "debug", *args]
        if not any(a.startswith("source=") or a == "--shared-dir" for a in args):
            argv += ["--shared-dir", str(self.shared)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while not self.sock.is_socket():
            if self.proc.poll() is not None:
                raise RuntimeError(self.proc.stdout.read().decode())
            assert time.monotonic() < deadline
            time.sleep(0.02)
        self.frontend = None

    def connect(self, init_flags=LINUX_6_1_INIT_FLAGS):
        self.frontend = VhostUserFrontend(str(self.sock), timeout=10).start()
        self.client = FuseClient(self.frontend, timeout=10)
        self.client.init(flags=init_flags)
        return self.client

    def serving_pid(self):
        """The process that serves: the sandbox's child in a namespace sandbox."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        kids = children.read_text().split() if children.exists() else []
        return int(kids[0]) if kids else self.proc.pid

    def close(self):
        if self.frontend is not None:
            self.frontend.close()
        try:
            status = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            status = self.proc.wait()
        self.output = self.proc.stdout.read().decode()
        shutil.rmtree(self.dir, ignore_errors=True)
        return status


@pytest.fixture
def daemon(tmp_path):
    started = []

    def start(*args, **kw):
        d = Daemon(tmp_path, *args, **kw)
        started.append(d)
        return d
    yield start
    for d in started:
        if d.proc.poll() is None or not hasattr(d, "output"):
            d.close()
    late = [line for d in started for line in d.output.splitlines() if SANDBOX_IMPORT in line]
    if late:
        pytest.fail("the daemon imported modules inside its sandbox:\n" + "\n".join(late))


def expect_errno(err, fn, *args, **kwargs):
    with pytest.raises(OSError) as exc:
        fn(*args, **kwargs)
    assert exc.value.errno == err


# -- the command line -----------------------------------------------------------------------------

def test_legacy_o_options(daemon, tmp_path):
    shared = tmp_path / "legacy"
    shared.mkdir()
    (shared / "f").write_text("x")
    d = daemon("-o", f"source={shared},cache=none", "-o", "xattr,no_posix_lock", shared=shared)
    client = d.connect()
    nid = client.lookup(ROOT, "f").nodeid
    os.setxattr(shared / "f", "user.k", b"v")
    reply = client.call(Opcode.GETXATTR, nid, abi.getxattr_in.pack(64, 0) + b"user.k\0",
                        reply_len=64)
    assert reply.payload + reply.data == b"v"    # -o xattr took effect
    assert not client.init_out.flags & abi.FUSE_POSIX_LOCKS   # -o no_posix_lock
    assert client.lookup(ROOT, "f").entry_valid == 0        # cache=none
    assert d.close() == 0


@pytest.mark.parametrize("bad", ["bogus", "cache=sometimes", "sandbox=jail"])
def test_bad_legacy_options_are_refused(tmp_path, bad):
    out = subprocess.run([*DAEMON, "--socket-path", str(tmp_path / "s"), "-o", bad,
                          "--shared-dir", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2 and "-o" in out.stderr


def test_inode_file_handles_mandatory_is_accepted(tmp_path):
    """``mandatory`` parses (no usage error) and the daemon starts on a share with handles."""
    proc = subprocess.Popen([*DAEMON, "--socket-path", str(tmp_path / "s"), "--shared-dir",
                             str(tmp_path), "--inode-file-handles=mandatory"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(200):
            if (tmp_path / "s").exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stdout.read()
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("argv, message", [
    (["--socket-path", "/nonexistent-dir/s.sock"], "does not exist"),
    (["--fd", "57"], "Bad file descriptor"),
    (["--fd", "0"], "not a"),
    (["--shared-dir", "/nonexistent-share", "--socket-path", "s"], "not a directory"),
])
def test_bad_command_lines_get_one_line_errors(tmp_path, argv, message):
    if "--shared-dir" not in argv:
        argv = [*argv, "--shared-dir", str(tmp_path)]
    out = subprocess.run([*DAEMON, *argv], capture_output=True, text=True, cwd=tmp_path,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 2, out
    assert message in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_help_lists_the_subcommands():
    out = subprocess.run([*DAEMON, "--help"], capture_output=True, text=True, check=True)
    for sub in ("fastvfs mount", "fastvfs stats", "fastvfs descriptor"):
        assert sub in out.stdout


def test_idle_footprint(daemon):
    """A daemon serving an initialised session holds little memory of its own: tables sized
    for a million node ids are allocated but not touched until used (PSS of the serving process
    from /proc/PID/smaps_rollup)."""
    d = daemon()
    d.connect()
    pss = {}
    for line in Path(f"/proc/{d.serving_pid()}/smaps_rollup").read_text().splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            pss[key] = int(value.split()[0])
    assert pss["Pss_Anon"] < 24 * 1024, pss


def test_kata_runtime_argv_with_an_inherited_socket(tmp_path):
    """The argument vector Kata's runtime builds (src/runtime/virtcontainers/virtiofsd.go,
    ``virtiofsd.args``: ``--syslog --cache=C --shared-dir=D --fd=3`` and its default
    ``--inode-file-handles=prefer``, then ``virtio_fs_extra_args`` from the README's
    configuration), with the socket Kata listens on passed as fd 3, the default sandbox."""
    import socket as socket_mod
    shared = tmp_path / "share"
    shared.mkdir()
    (shared / "f").write_bytes(b"pod")
    sock_dir = Path(tempfile.mkdtemp(prefix="fvk-"))
    path = str(sock_dir / "vfs.sock")
    listener = socket_mod.socket(socket_mod.AF_UNIX, socket_mod.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    argv = [*DAEMON, "--syslog", "--cache=auto", f"--shared-dir={shared}", "--fd=3",
            "--inode-file-handles=prefer", "--thread-pool-size=1", "--announce-submounts"]

    def as_fd_3(fd=listener.fileno()):
        if fd == 3:
            os.set_inheritable(3, True)
        else:
            os.dup2(fd, 3)   # inheritable
    proc = subprocess.Popen(argv, preexec_fn=as_fd_3, close_fds=False,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    listener.close()
    try:
        frontend = VhostUserFrontend(path, timeout=10).start()
        client = FuseClient(frontend, timeout=10)
        client.init(flags=LINUX_6_1_INIT_FLAGS)
        nid = client.lookup(ROOT, "f").nodeid
        fh = client.open(nid, os.O_RDONLY).fh
        assert client.read(nid, fh, 0, 3) == b"pod"
        # prefer is served: the server keeps CAP_DAC_READ_SEARCH for open_by_handle_at.
        assert effective_caps(serving_pid(proc)) & (1 << 2)
        frontend.close()
        assert proc.wait(10) == 0
        # Without a syslog daemon the log goes to stderr, every record intact.
        output = proc.stdout.read().decode(errors="replace")
        assert "Traceback" not in output and "Logging error" not in output, output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(sock_dir, ignore_errors=True)


def test_pid_file_locks_the_socket_and_goes_away(daemon, tmp_path):
    d = daemon()
    pid_file = Path(str(d.sock) + ".pid")
    assert int(pid_file.read_text()) == d.proc.pid
    second = subprocess.run([*DAEMON, "--socket-path", str(d.sock), "--shared-dir",
                             str(tmp_path)], capture_output=True, text=True, timeout=20)
    assert second.returncode != 0 and "another daemon" in second.stderr
    assert d.sock.is_socket()            # the running daemon kept its socket
    d.connect()
    assert d.close() == 0
    assert not pid_file.exists() and not d.sock.exists()
    assert not Path(str(d.sock) + ".stats").exists()


def test_socket_group_and_mode(daemon):
    d = daemon("--socket-group", "daemon")
    import grp
    st = d.sock.stat()
    assert st.st_gid == grp.getgrnam("daemon").gr_gid
    assert st.st_mode & 0o777 == 0o770
    plain = daemon()
    assert plain.sock.stat().st_mode & 0o777 == 0o700


def test_tag_is_served_as_device_config(daemon):
    d = daemon("--tag", "myfs", "--request-queues", "3")
    fe = VhostUserFrontend(str(d.sock), timeout=10)
    fe.connect()
    d.frontend = fe
    fe.send(Request.GET_CONFIG, protocol.config_header.pack(0, 44, 0))
    reply = fe.recv_reply().payload
    offset, size, _ = protocol.config_header.unpack_from(reply)
    config = reply[protocol.config_header.size:]
    assert (offset, size) == (0, 44)
    assert config[:36].rstrip(b"\0") == b"myfs"
    assert protocol.virtio_fs_config_tail.unpack(config[36:]) == (3, 0)
    fe.send(Request.GET_CONFIG, protocol.config_header.pack(40, 8, 0))   # past the end
    assert fe.recv_reply().payload == b""


def test_readonly_refuses_every_change(daemon):
    d = daemon("--readonly", files={"f": b"data"})
    c = d.connect()
    nid = c.lookup(ROOT, "f").nodeid
    assert c.read(nid, c.open(nid).fh, 0, 4) == b"data"
    expect_errno(errno.EROFS, c.open, nid, os.O_RDWR)
    expect_errno(errno.EROFS, c.open, nid, os.O_RDONLY | os.O_TRUNC)
    expect_errno(errno.EROFS, c.mkdir, ROOT, "d")
    expect_errno(errno.EROFS, c.create, ROOT, "g")
    expect_errno(errno.EROFS, c.unlink, ROOT, "f")
    expect_errno(errno.EROFS, c.rename, ROOT, "f", ROOT, "h")
    expect_errno(errno.EROFS, c.setattr, nid, mode=0o600)
    expect_errno(errno.EROFS, c.symlink, ROOT, "l", "f")
    assert sorted(os.listdir(d.shared)) == ["f"]


def test_killpriv_v2_is_offered_only_when_asked(daemon):
    c = daemon().connect()
    assert not c.init_out.flags & abi.FUSE_HANDLE_KILLPRIV_V2
    c2 = daemon("--killpriv-v2").connect()
    assert c2.init_out.flags & abi.FUSE_HANDLE_KILLPRIV_V2
    c3 = daemon("--no-killpriv-v2").connect()
    assert not c3.init_out.flags & abi.FUSE_HANDLE_KILLPRIV_V2


def test_thread_pool_serves_requests(daemon):
    """With the default sandbox and seccomp: the pool's modules are loaded before the sandbox
    (nothing is imported from disk inside it) and its threads serve."""
    threads = {}
    for pool in ("0", "4"):
        d = daemon("--thread-pool-size", pool, files={"f": os.urandom(1 << 16)})
        c = d.connect()
        # LOOKUP of "..": always the engine's (the file system walks up), so the pool's.
        tickets = [c.submit(Opcode.LOOKUP, ROOT, b"..\0", reply_len=abi.ENTRY_OUT_SIZE)
                   for _ in range(32)]
        assert all(c.wait(t).error == 0 for t in tickets)
        threads[pool] = len(os.listdir(f"/proc/{d.serving_pid()}/task"))
    assert threads["4"] > threads["0"], threads   # the pool's workers exist and served
    # Locks still wait without holding the pool.
    nid = c.lookup(ROOT, "f").nodeid
    fh = c.open(nid, os.O_RDWR).fh
    assert c.read(nid, fh, 0, 16) == (d.shared / "f").read_bytes()[:16]
    assert d.close() == 0
    assert "inside the sandbox" not in d.output, d.output


@pytest.mark.parametrize("sandbox", ["namespace", "chroot"])
def test_kata_stock_arguments(daemon, sandbox):
    """Kata's runtime configuration snippet (``virtio_fs_extra_args``) and microvm.nix's
    ``--sandbox=chroot --thread-pool-size N``: the daemon starts, serves through its pool and
    imports nothing inside its sandbox."""
    d = daemon(f"--sandbox={sandbox}", "--thread-pool-size=1", "--announce-submounts",
               files={"f": b"kata"})
    c = d.connect()
    nid = c.lookup(ROOT, "f").nodeid
    fh = c.open(nid, os.O_RDONLY).fh
    assert c.read(nid, fh, 0, 4) == b"kata"
    dfh = c.opendir(ROOT).fh
    assert c.readdirplus(ROOT, dfh)
    c.mkdir(ROOT, "d")
    assert c.statfs()
    server = d.serving_pid()
    assert d.close() == 0
    assert "inside the sandbox" not in d.output, d.output
    # Log lines name processes by their host pids (the server is pid 1 of its namespace).
    assert f"fastvfs[{server}]" in d.output and "fastvfs[1]" not in d.output, d.output


def test_announce_submounts(daemon, tmp_path):
    shared = tmp_path / "withmount"
    (shared / "sub").mkdir(parents=True)
    (shared / "plain").mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(shared / "sub")]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        c = daemon("--announce-submounts", shared=shared).connect(
            LINUX_6_1_INIT_FLAGS | abi.FUSE_SUBMOUNTS)
        assert c.init_out.flags & abi.FUSE_SUBMOUNTS
        assert c.lookup(ROOT, "sub").attr.flags & 1          # FUSE_ATTR_SUBMOUNT
        assert not c.lookup(ROOT, "plain").attr.flags & 1
        # On by default; --no-announce-submounts turns it off.
        assert daemon(shared=shared).connect(
            LINUX_6_1_INIT_FLAGS | abi.FUSE_SUBMOUNTS).lookup(ROOT, "sub").attr.flags & 1
        quiet = daemon("--no-announce-submounts", shared=shared).connect(
            LINUX_6_1_INIT_FLAGS | abi.FUSE_SUBMOUNTS)
        assert not quiet.lookup(ROOT, "sub").attr.flags & 1
    finally:
        subprocess.run(["umount", "-l", str(shared / "sub")])


def test_descriptor_and_capabilities(tmp_path):
    out = subprocess.run([*DAEMON, "descriptor", "--binary", "/usr/bin/fastvfs"],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {"description": "fastvfs: virtio-fs vhost-user backend",
                                      "type": "fs", "binary": "/usr/bin/fastvfs"}
    out = subprocess.run([*DAEMON, "descriptor", "--install", str(tmp_path)],
                         capture_output=True, text=True, check=True)
    written = json.loads((tmp_path / "90-fastvfs.json").read_text())
    assert written["type"] == "fs" and os.path.isabs(written["binary"])


# -- the sandbox --------------------------------------------------------------------------------

def _status(pid, field):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split()[1]
    raise KeyError(field)


def test_namespace_sandbox(daemon):
    d = daemon(files={"f": b"inside"})
    c = d.connect()
    pid = d.serving_pid()
    assert pid != d.proc.pid
    # The server's root is the shared directory, in namespaces of its own.
    root, shared = os.stat(f"/proc/{pid}/root"), d.shared.stat()
    assert (root.st_dev, root.st_ino) == (shared.st_dev, shared.st_ino)
    assert sorted(os.listdir(f"/proc/{pid}/root")) == ["f"]     # nothing of the host's tree
    for ns in ("mnt", "pid", "net"):
        assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}")
    assert _status(pid, "Seccomp") == "2"
    expected = 0
    for name in sandbox.DEFAULT_CAPABILITIES:
        expected |= 1 << sandbox.CAPABILITIES[name]
    assert int(_status(pid, "CapEff"), 16) == expected
    assert int(_status(d.proc.pid, "CapEff"), 16) == 0     # the supervisor keeps nothing
    # Everything still works, including the calls that name inodes through /proc/self/fd.
    nid = c.lookup(ROOT, "f").nodeid
    assert c.read(nid, c.open(nid).fh, 0, 6) == b"inside"
    c.setattr(nid, mode=0o600)
    assert (d.shared / "f").stat().st_mode & 0o777 == 0o600
    c.link(nid, ROOT, "g")
    assert (d.shared / "g").read_bytes() == b"inside"
    assert d.close() == 0


def test_chroot_sandbox_and_modcaps(daemon):
    d = daemon("--sandbox", "chroot", "--modcaps=+sys_admin:-mknod", files={"f": b"x"})
    c = d.connect()
    pid = d.proc.pid
    assert os.readlink(f"/proc/{pid}/root") == str(d.shared)
    assert os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
    caps = int(_status(pid, "CapEff"), 16)
    assert caps & (1 << sandbox.CAPABILITIES["sys_admin"])
    assert not caps & (1 << sandbox.CAPABILITIES["mknod"])
    # Without CAP_MKNOD a device node cannot be made; everything else works.
    expect_errno(errno.EPERM, c.mknod, ROOT, "dev", 0o20644, os.makedev(1, 3))
    c.mkdir(ROOT, "d")
    assert (d.shared / "d").is_dir()
    assert d.close() == 0


def test_sigterm_reaches_the_sandboxed_server(daemon):
    d = daemon()
    d.connect()
    pid = d.serving_pid()
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(10) == 0
    assert not Path(f"/proc/{pid}").exists()
    assert not d.sock.exists()


def test_seccomp_filter_kills_a_call_outside_the_list():
    pid = os.fork()
    if pid == 0:
        try:
            sandbox.install_seccomp("kill")
            libc = ctypes.CDLL(None, use_errno=True)
            libc.syscall(seccomp.resolve("reboot"), 0, 0, 0, 0)    # never on the list
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS


@pytest.mark.parametrize("flags, killed", [(sandbox.CLONE_FS, False),
                                          (sandbox.CLONE_NEWNS, True),
                                          (sandbox.CLONE_FS | 0x10000000, True)])  # NEWUSER
def test_seccomp_filter_allows_unshare_of_the_fs_context_only(flags, killed):
    """Once sandboxed, a thread may take its own file-system context (CLONE_FS), never make a
    namespace."""
    pid = os.fork()
    if pid == 0:
        try:
            sandbox.install_seccomp("kill")
            libc = ctypes.CDLL(None, use_errno=True)
            libc.unshare(flags)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    if killed:
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS
    else:
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_seccomp_filter_allows_the_daemons_calls():
    pid = os.fork()
    if pid == 0:
        try:
            sandbox.install_seccomp("kill")
            fd = os.open("/", os.O_PATH)
            os.stat("/", dir_fd=fd)
            os.close(fd)
            r, w = os.pipe()
            os.write(w, b"x")
            os._exit(0 if os.read(r, 1) == b"x" else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def _chmod_under_filter(path, fchmodat2, allow):
    """In a child: a handle table with the open policy the file system sets, the filter
    installed with or without fchmodat2 on its list, then the mode of ``path`` changed as
    SETATTR changes it (``change_node_of``), through fchmodat2 or not (``fchmodat2`` None: as
    the daemon decides, ``daemon.chmod_through_descriptors``).  The child's wait status."""
    from fastvfs import daemon
    from fastvfs.fs import _tables
    pid = os.fork()
    if pid == 0:
        try:
            handles = _tables.HandleTable()
            proc = os.open("/proc/self/fd", os.O_PATH | os.O_DIRECTORY)
            _tables.set_open_policy(handles, os.O_RDWR, False, 100, proc, "")
            fd = os.open(path, os.O_PATH)
            if not allow:
                sandbox.ALLOWED_SYSCALLS = sandbox.ALLOWED_SYSCALLS - {"fchmodat2"}
            if fchmodat2 is None:
                daemon.chmod_through_descriptors("kill")
            else:
                assert _tables.use_fchmodat2(fchmodat2) == fchmodat2
            sandbox.install_seccomp("kill")
            _tables.change_node_of(handles, fd, 0o100644, mode=0o640)
            os._exit(0 if os.stat(path).st_mode & 0o7777 == 0o640 else 1)
        finally:
            os._exit(2)
    return os.waitpid(pid, 0)[1]


def test_modes_change_through_the_descriptor_under_the_filter(tmp_path):
    """SETATTR's chmod goes through the node's O_PATH descriptor with fchmodat2(2), which the
    filter allows; where the filter will not have it (a libseccomp that cannot name the call
    leaves it out) the daemon turns it off before loading the filter
    (``daemon.chmod_through_descriptors``) and the mode changes through the descriptor's
    /proc/self/fd name.  The call is really made: a filter without it kills."""
    from fastvfs.fs import _tables
    if not _tables.use_fchmodat2(True):
        pytest.skip("this kernel has no fchmodat2 (Linux 6.6)")
    f = tmp_path / "f"
    for fchmodat2, allow in ((True, True), (False, True), (False, False), (None, True),
                             (None, False)):
        f.write_bytes(b"x")
        os.chmod(f, 0o600)
        status = _chmod_under_filter(f, fchmodat2, allow)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (fchmodat2, allow)
    status = _chmod_under_filter(f, True, False)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS


def test_modcaps_parsing():
    assert "sys_admin" in sandbox.parse_modcaps("+sys_admin:-mknod")
    assert "mknod" not in sandbox.parse_modcaps("+sys_admin:-mknod")
    assert "sys_admin" in sandbox.parse_modcaps("+CAP_SYS_ADMIN")
    for bad in ("sys_admin", "+nonsense", "+", ":"):
        with pytest.raises(ValueError):
            sandbox.parse_modcaps(bad)


# -- statistics ---------------------------------------------------------------------------------

@pytest.mark.parametrize("pool", [False, True], ids=["no-pool", "thread-pool"])
def test_syncfs_is_answered_in_c_unless_the_engine_has_a_pool(daemon, pool):
    """A guest's sync (SYNCFS) and FSYNCDIR are answered in C, which the statistics' engine
    count shows; with a thread pool (Kata's ``--thread-pool-size=1``) a SYNCFS goes to the
    engine, which takes it off the queue's thread (a sync may take long), and FSYNCDIR stays
    in C, through the queue's io_uring (tests/unit/test_parity.py checks it is never synced
    on the queue's thread then)."""
    d = daemon(*(("--thread-pool-size", "1") if pool else ()), files={"f": b"x"})
    c = d.connect()
    fh = c.opendir(ROOT).fh
    for _ in range(3):
        c.syncfs()
        c.fsyncdir(ROOT, fh)
    out = subprocess.run([*DAEMON, "stats", "--socket-path", str(d.sock), "--json"],
                         capture_output=True, text=True, check=True)
    ops = json.loads(out.stdout)["ops"]
    assert ops["SYNCFS"]["count"] == 3 and ops["SYNCFS"]["errors"] == 0
    assert ops["SYNCFS"]["engine"] == (3 if pool else 0)
    assert ops["FSYNCDIR"]["count"] == 3 and ops["FSYNCDIR"]["engine"] == 0


def test_stats_count_a_request_refused_for_its_length_as_the_engines(daemon):
    """A request longer than 1 MiB that is not a WRITE is left to the engine, which refuses it
    (EINVAL) before its handler: the statistics count it in the engine's column, as every
    request C does not answer, so that ``count - engine`` is what C served."""
    d = daemon(files={"f": b"x"})
    c = d.connect()
    nid = c.lookup(ROOT, "f").nodeid
    c.getattr(nid)
    body = bytes((1 << 20) + 8 - abi.IN_HEADER_SIZE)
    expect_errno(errno.EINVAL, c.call, Opcode.GETATTR, nid, body, reply_len=abi.ATTR_OUT_SIZE)
    out = subprocess.run([*DAEMON, "stats", "--socket-path", str(d.sock), "--json"],
                         capture_output=True, text=True, check=True)
    getattr_ = json.loads(out.stdout)["ops"]["GETATTR"]
    assert (getattr_["count"], getattr_["errors"], getattr_["engine"]) == (2, 1, 1)


def test_stats_while_serving(daemon, tmp_path):
    metrics = tmp_path / "metrics.sock"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    d = daemon("--metrics-socket", str(metrics), "--metrics-interval", "0.2",
               "--metrics-address", f"127.0.0.1:{port}",
               files={"f": os.urandom(8192)})
    c = d.connect()
    nid = c.lookup(ROOT, "f").nodeid
    fh = c.open(nid).fh
    for _ in range(20):
        c.read(nid, fh, 0, 4096)
        c.getattr(nid)
    expect_errno(errno.ENOENT, c.lookup, ROOT, "missing")
    out = subprocess.run([*DAEMON, "stats", "--socket-path", str(d.sock), "--json"],
                         capture_output=True, text=True, check=True)
    doc = json.loads(out.stdout)
    ops = doc["ops"]
    assert ops["READ"]["count"] == 20 and ops["GETATTR"]["count"] == 20
    assert ops["LOOKUP"]["count"] == 2 and ops["LOOKUP"]["errors"] == 1
    assert ops["INIT"]["count"] == 1
    # READ, GETATTR, LOOKUP and OPEN are answered in C, INIT by the engine.
    assert ops["READ"]["engine"] == 0 and ops["GETATTR"]["engine"] == 0
    assert ops["LOOKUP"]["engine"] == 0 and ops["OPEN"]["engine"] == 0
    assert ops["INIT"]["engine"] == 1
    assert doc["total_engine"] == sum(op["engine"] for op in ops.values()) >= 1
    assert 0 < ops["READ"]["mean_us"] < 1e6 and ops["READ"]["p99_le_us"] >= ops["READ"]["p50_le_us"]
    assert sum(ops["READ"]["histogram_log2_ns"]) == 20
    table = subprocess.run([*DAEMON, "stats", "--socket-path", str(d.sock)],
                           capture_output=True, text=True, check=True).stdout
    assert "READ" in table and "p99<= us" in table and "upper bounds" in table
    assert "engine" in table.splitlines()[0]
    # Prometheus text over HTTP on the metrics socket.
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(metrics))
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        response = b""
        while chunk := s.recv(65536):
            response += chunk
    head, _, body = response.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.0 200")
    assert 'fastvfs_requests_total{op="READ"} 20' in body
    assert 'fastvfs_requests_engine_total{op="READ"} 0' in body
    assert 'fastvfs_requests_engine_total{op="INIT"} 1' in body
    assert 'fastvfs_request_duration_seconds_count{op="READ"} 20' in body
    # A real HTTP server: other paths are 404, other methods 501; also on TCP.
    for request, status in ((b"GET /other HTTP/1.0\r\n\r\n", "404"),
                            (b"POST /metrics HTTP/1.0\r\n\r\n", "501"),
                            (b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n", "200")):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(metrics))
            s.sendall(request)
            answer = s.makefile("rb").read().decode()
        assert answer.split()[1] == status, answer
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        answer = s.makefile("rb").read().decode()
    assert answer.startswith("HTTP/1.0 200") and 'fastvfs_requests_total{op="READ"}' in answer
    time.sleep(0.5)    # at least one --metrics-interval line after the reads
    assert d.close() == 0
    assert "metrics:" in d.output and "READ=" in d.output, d.output[-3000:]


def test_stats_client_without_a_daemon(tmp_path):
    out = subprocess.run([*DAEMON, "stats", "--stats-socket", str(tmp_path / "none")],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "no daemon" in out.stderr


def test_trace_logs_every_request(daemon):
    d = daemon("--log-level", "trace", files={"f": b"traced"})
    c = d.connect()
    nid = c.lookup(ROOT, "f").nodeid
    fh = c.open(nid).fh
    assert c.read(nid, fh, 0, 6) == b"traced"       # served by the engine, not the C path
    c.getattr(nid)
    expect_errno(errno.ENOENT, c.lookup, ROOT, "nope")
    assert d.close() == 0
    lines = [l for l in d.output.splitlines() if "fastvfs.fuse.trace" in l]
    ops = [l.split(" op=")[1].split()[0] for l in lines]
    assert ops[:6] == ["INIT", "LOOKUP", "OPEN", "READ", "GETATTR", "LOOKUP"]
    assert "error=-2" in lines[5] and f"nodeid={nid}" in lines[3]


@pytest.mark.parametrize("args,engine", [
    (("--io-engine", "sync"), None),
    ((), "READ through io_uring"),
    (("--io-engine", "uring-rw"), "READ and WRITE through io_uring"),
    (("--poll-us", "200"), "READ through io_uring"),
    (("--io-engine", "uring-rw", "--fixed-buffers"), "guest memory registered with io_uring"),
], ids=["sync", "uring", "uring-rw", "busy-poll", "fixed-buffers"])
def test_io_engines_and_busy_poll(daemon, args, engine):
    """Every engine, inside the default sandbox and seccomp filter: a burst of writes and reads
    in flight at once, each landing where it should; the log names the engine in use."""
    data = os.urandom(1 << 20)
    d = daemon(*args, files={"f": data})
    c = d.connect()
    nid = c.lookup(ROOT, "f").nodeid
    fh = c.open(nid, os.O_RDWR).fh
    patch = os.urandom(64 << 10)
    writes = [c.submit(Opcode.WRITE, nid, abi.write_in.pack(fh, 4096 * i, 4096, 0, 0, 0, 0),
                       data=patch[4096 * i:4096 * (i + 1)], reply_len=abi.write_out.size,
                       publish=False) for i in range(16)]
    c.publish()
    assert all(c.wait(t).error == 0 for t in writes)
    expected = patch + data[len(patch):]
    reads = {c.submit(Opcode.READ, nid, abi.read_in.pack(fh, off, 8192, 0, 0, 0, 0),
                      data_len=8192, publish=False): off
             for off in range(0, 1 << 20, 1 << 16)}
    c.publish()
    for ticket, off in reads.items():
        reply = c.wait(ticket)
        assert reply.error == 0 and reply.data == expected[off:off + 8192]
    # Short read at the end of the file, and a read past it.
    assert c.read(nid, fh, (1 << 20) - 100, 4096) == expected[-100:]
    assert c.read(nid, fh, 2 << 20, 4096) == b""
    # FALLOCATE (through the ring where there is one): blocks past the end, size kept.
    c.fallocate(nid, fh, 1 << 20, 1 << 20, mode=1)
    assert (d.shared / "f").stat().st_blocks * 512 >= 2 << 20
    c.release(nid, fh)
    assert d.close() == 0
    assert (d.shared / "f").read_bytes() == expected
    if engine:
        assert engine in d.output, d.output[-2000:]
    else:
        assert "through io_uring" not in d.output
