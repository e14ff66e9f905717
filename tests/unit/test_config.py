"""The typed options (``fastvfs.config``) as the command line builds them: from the argument
vectors libvirt and Kata pass, from the ``mount`` form, with the command line's defaults and
refusals, immutable once built."""

import os
import socket

import pytest

from fastvfs import cli, config, daemon
from fastvfs.config import (DaemonOptions, InodeFileHandles, IoEngine, MountOptions, RingOptions,
                            ShareOptions)
from fastvfs.fs._tables import HandleTable
from fastvfs.vhost_user.device import DEFAULT_RING, VhostUserFsDevice


@pytest.fixture
def listening_fd(tmp_path):
    """A listening Unix socket, as libvirt and Kata hand the daemon one (``--fd``)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(tmp_path / "vhost.sock"))
    sock.listen(1)
    yield sock.fileno()
    sock.close()


@pytest.fixture
def served(monkeypatch):
    """``cli.main`` up to the daemon: the options it would run with, in place of running."""
    got = []
    # Logging is set up process-wide: left as the test run has it.
    monkeypatch.setattr(cli, "setup_logging", lambda level, syslog=False: None)
    monkeypatch.setattr(daemon, "run", lambda options: got.append(options) or 0)
    monkeypatch.setattr(daemon, "run_mount", lambda options: got.append(options) or 0)

    def main(*argv):
        assert cli.main([str(a) for a in argv]) == 0
        return got.pop()
    return main


def libvirt_argv(fd, shared):
    """libvirt's qemuVirtioFSBuildCommandLine for a backend with "separate-options" (the
    domain's cache, sandbox, xattr, thread pool, open files and session-mode id maps)."""
    return [f"--fd={fd}", "--shared-dir", shared, "--cache", "never", "--sandbox", "chroot",
            "--xattr", "--thread-pool-size=0", "--rlimit-nofile=4096", "--log-level", "debug",
            "--uid-map=:0:1000:1:", "--uid-map=:1:100000:65536:", "--gid-map=:0:1000:1:",
            "--gid-map=:1:100000:65536:"]


def libvirt_legacy_argv(fd, shared):
    """The same without "separate-options": the ``-o`` form (README, "With QEMU, libvirt
    and Kata Containers"), locks and debugging as a domain sets them."""
    return [f"--fd={fd}", "-o", f"source={shared},cache=always,sandbox=chroot,xattr,no_flock,"
            "no_posix_lock", "--thread-pool-size=4", "-d"]


def kata_argv(fd, shared):
    """Kata's runtime (virtiofsd.go ``args``) with the README's ``virtio_fs_extra_args``, as
    tests/integration/test_dropin.py replays it."""
    return ["--syslog", "--cache=auto", f"--shared-dir={shared}", f"--fd={fd}",
            "--inode-file-handles=prefer", "--thread-pool-size=1", "--announce-submounts"]


def test_libvirt_separate_options(served, listening_fd, tmp_path):
    o = served(*libvirt_argv(listening_fd, tmp_path))
    assert isinstance(o, DaemonOptions)
    assert (o.fd, o.socket_path, o.sandbox, o.rlimit_nofile, o.log_level) == \
        (listening_fd, None, "chroot", 4096, "debug")
    assert [(m.namespace, m.host, m.count) for m in o.uid_map] == [(0, 1000, 1),
                                                                  (1, 100000, 65536)]
    assert [(m.namespace, m.host, m.count) for m in o.gid_map] == [(0, 1000, 1),
                                                                  (1, 100000, 65536)]
    assert (o.share.shared_dir, o.share.cache, o.share.xattr, o.share.thread_pool_size) == \
        (str(tmp_path), "never", True, 0)
    assert not o.share.trace
    assert o.ring == RingOptions(io_engine=IoEngine.URING)


def test_libvirt_legacy_options(served, listening_fd, tmp_path):
    o = served(*libvirt_legacy_argv(listening_fd, tmp_path))
    assert (o.share.shared_dir, o.share.cache, o.sandbox, o.log_level) == \
        (str(tmp_path), "always", "chroot", "debug")
    assert o.share.xattr and not o.share.flock and not o.share.posix_lock
    assert o.share.thread_pool_size == 4


def test_kata_options(served, listening_fd, tmp_path):
    o = served(*kata_argv(listening_fd, tmp_path))
    assert o.syslog and o.fd == listening_fd and o.sandbox == "namespace"
    share = o.share
    assert share.inode_file_handles is InodeFileHandles.PREFER
    assert share.inode_file_handles.fs_mode == "prefer" and share.inode_file_handles.uses_handles
    assert (share.cache, share.thread_pool_size, share.announce_submounts) == ("auto", 1, True)


def test_kata_stock_arguments_with_a_socket_path(served, tmp_path):
    o = served("--socket-path", tmp_path / "s", "--shared-dir", tmp_path, "--sandbox=chroot",
               "--thread-pool-size=1", "--announce-submounts")
    assert (o.socket_path, o.fd, o.sandbox) == (str(tmp_path / "s"), None, "chroot")


def test_defaults_are_the_command_lines(served, tmp_path):
    """The dataclasses' own defaults are the parser's: a bare command line builds exactly
    the default objects."""
    o = served("--socket-path", tmp_path / "s", "--shared-dir", tmp_path)
    assert o == DaemonOptions(ShareOptions(str(tmp_path)), socket_path=str(tmp_path / "s"))
    p = cli.parser()
    for name in ("request_queues", "sandbox", "seccomp", "rlimit_nofile", "log_level",
                 "metrics_interval", "migration_mode", "migration_on_error"):
        assert getattr(o, name) == p.get_default(name), name
    assert o.ring.io_engine.value == p.get_default("io_engine")
    assert o.share.cache == p.get_default("cache")


def test_the_rest_of_the_vhost_user_options(served, tmp_path):
    o = served("--socket-path", tmp_path / "s", "--shared-dir", tmp_path, "--io-engine",
               "uring-rw", "--poll-us", "50", "--fixed-buffers", "--readonly", "--tag", "t",
               "--request-queues", "3", "--dax-window-size", "2M", "--socket-group", "daemon",
               "--seccomp", "log", "--modcaps=+sys_admin", "--metrics-address", "127.0.0.1:9",
               "--stats-socket", tmp_path / "st", "--metrics-interval", "2",
               "--log-level", "trace", "--translate-uid", "map:0:1000:1", "--posix-acl",
               "--no-readdirplus", "--killpriv-v2", "--writeback", "--allow-direct-io",
               "--allow-mmap", "--preserve-noatime", "--security-label", "--xattrmap",
               ":ok:all:::", "--migration-on-error=guest-error")
    assert o.ring == RingOptions(io_engine=IoEngine.URING_RW, poll_us=50, fixed_buffers=True,
                                 read_only=True)
    assert (o.tag, o.request_queues, o.dax_window_size, o.socket_group, o.seccomp,
            o.modcaps) == ("t", 3, 2 << 20, "daemon", "log", "+sys_admin")
    assert (o.metrics_address, o.stats_socket, o.metrics_interval) == \
        ("127.0.0.1:9", str(tmp_path / "st"), 2)
    assert o.migration_options_given
    s = o.share
    assert s.trace and s.readonly and s.posix_acl and s.xattr and not s.readdirplus
    assert s.killpriv_v2 and s.writeback and s.allow_direct_io and s.allow_mmap
    assert s.preserve_noatime and s.security_label and s.xattrmap is not None
    assert [r.type for r in s.translate_uid] == ["map"] and s.translate_gid == ()


def test_mount_command_line(served, tmp_path):
    (tmp_path / "share").mkdir()
    (tmp_path / "mnt").mkdir()
    o = served("mount", tmp_path / "share", tmp_path / "mnt", "--threads", "2", "--cache",
               "never", "--xattr", "--readonly", "--inode-file-handles", "fallback",
               "--rlimit-nofile", "0")
    assert isinstance(o, MountOptions)
    assert (o.mountpoint, o.threads, o.rlimit_nofile, o.log_level) == \
        (str(tmp_path / "mnt"), 2, 0, "info")
    assert o.share == ShareOptions(str(tmp_path / "share"), cache="never", xattr=True,
                                   readonly=True,
                                   inode_file_handles=InodeFileHandles.FALLBACK)
    assert o.share.inode_file_handles.fs_mode == "prefer"
    # The mount form has no thread pool: the engine serves on the reader threads.
    assert o.share.thread_pool_size == 0


def test_mount_defaults_are_the_vhost_user_ones(served, tmp_path):
    """Both command lines build the share the same way."""
    (tmp_path / "mnt").mkdir()
    mounted = served("mount", tmp_path, tmp_path / "mnt").share
    vhost = served("--socket-path", tmp_path / "s", "--shared-dir", tmp_path).share
    assert mounted == vhost == ShareOptions(str(tmp_path))


def test_io_engine():
    assert not IoEngine.SYNC.uses_uring and not IoEngine.SYNC.uring_writes
    assert IoEngine.URING.uses_uring and not IoEngine.URING.uring_writes
    assert IoEngine.URING_RW.uses_uring and IoEngine.URING_RW.uring_writes
    assert IoEngine("uring-rw") is IoEngine.URING_RW
    assert RingOptions(io_engine="sync").io_engine is IoEngine.SYNC
    with pytest.raises(ValueError):
        RingOptions(io_engine="aio")


@pytest.mark.parametrize("dest,kind,values", [
    ("io_engine", IoEngine, ["uring", "uring-rw", "sync"]),
    ("inode_file_handles", InodeFileHandles, ["never", "prefer", "fallback", "mandatory"]),
])
def test_the_parser_offers_the_enums_values(dest, kind, values):
    """The choices, in the order --help lists them, are the enum's (the Rust virtiofsd's
    spellings for --inode-file-handles)."""
    action = next(a for a in cli.parser()._actions if a.dest == dest)
    assert list(action.choices) == values == [e.value for e in kind]
    assert kind(action.default) is list(kind)[0]


def test_frozen(tmp_path):
    o = DaemonOptions(ShareOptions(str(tmp_path)), socket_path="s")
    for target, name, value in ((o, "sandbox", "none"), (o.share, "readonly", True),
                                (o.ring, "io_engine", IoEngine.SYNC)):
        with pytest.raises(config.FrozenError):
            setattr(target, name, value)
        with pytest.raises(config.FrozenError):
            delattr(target, name)
    with pytest.raises(AttributeError):
        o.share.unknown = 1          # slots: no attribute outside the fields
    with pytest.raises(AttributeError):
        o.share.__dict__             # noqa: B018 (slots: no instance dictionary)
    assert config.replace(o.ring, attr_timeout=1.0).attr_timeout == 1.0
    assert o.ring.attr_timeout == 0.0
    with pytest.raises(ValueError):
        config.replace(o.ring, max_io=0)     # checked again, as a new object is


def test_records_build_compare_and_print_by_value(tmp_path):
    share = ShareOptions(str(tmp_path), "never", readonly=True)
    assert share == ShareOptions(shared_dir=str(tmp_path), cache="never", readonly=True)
    assert hash(share) == hash(ShareOptions(str(tmp_path), "never", readonly=True))
    assert share != ShareOptions(str(tmp_path), "never") and share != (str(tmp_path),)
    assert repr(RingOptions()).startswith("RingOptions(max_io=1048576, attr_timeout=0.0,")
    # A nested default is made for each object, not shared.
    a, b = (DaemonOptions(share, socket_path="s") for _ in range(2))
    assert a.ring == b.ring == RingOptions()
    for bad in (lambda: ShareOptions(), lambda: ShareOptions(str(tmp_path), unknown=1),
                lambda: ShareOptions(str(tmp_path), shared_dir="x"),
                lambda: RingOptions(*range(len(RingOptions._fields) + 1))):
        with pytest.raises(TypeError):
            bad()


# Modules the vhost-user daemon's start never needs, each of which would cost every daemon's
# start-up: dataclasses (with inspect and ast); shutil and the compression modules it loads
# (argparse's stock help formatter asks it for the terminal width); logging.handlers with
# pickle (only --syslog uses it, and imports it then); the /dev/fuse transport.
NOT_LOADED_AT_START = ("dataclasses", "inspect", "ast", "shutil", "bz2", "lzma",
                       "logging.handlers", "pickle", "fastvfs.transport.fusedev",
                       "concurrent.futures")


def test_the_daemons_start_loads_only_what_it_uses(tmp_path):
    # The start as run() does it before the sandbox: the command line parsed into options,
    # the daemon's modules, and what the sandbox loads before leaving the host's tree.
    import subprocess
    import sys
    code = ("import sys\n"
            "from fastvfs import cli, daemon, sandbox\n"
            "p = cli.parser()\n"
            f"ns = p.parse_args(['--socket-path', 's', '--shared-dir', {str(tmp_path)!r}])\n"
            "cli.apply_compat_options(p, ns)\n"
            "cli.daemon_options(p, ns)\n"
            "p.format_help()\n"
            "sandbox._preload()\n"
            f"print(sorted(set({NOT_LOADED_AT_START!r}) & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
    # A thread pool (Kata's --thread-pool-size=1) loads its executor before the sandbox; the
    # engine built inside it then finds it loaded.
    code = ("import sys\n"
            "from fastvfs.fuse import engine\n"
            "engine.preload(0)\n"
            "print('concurrent.futures.thread' in sys.modules)\n"
            "engine.preload(1)\n"
            "print('concurrent.futures.thread' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["False", "True"]
    # --syslog loads logging.handlers, before any sandbox.
    code = ("import sys\nfrom fastvfs import cli\ncli.setup_logging('error', syslog=True)\n"
            "print('logging.handlers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split()[-1] == "True"


def test_help_is_as_wide_as_the_terminal(monkeypatch):
    from fastvfs import cli
    widest = {}
    for columns in (100, 200):
        monkeypatch.setenv("COLUMNS", str(columns))
        # The option list wraps to the width less 2 (the epilog is laid out by hand).
        lines = cli.parser().format_help().split("\nsubcommands")[0].splitlines()
        widest[columns] = max(map(len, lines))
        assert widest[columns] <= columns - 2
    assert widest[200] > 100
    monkeypatch.setenv("COLUMNS", "junk")
    assert cli._terminal_columns() > 0


def test_xattr_is_implied(tmp_path):
    assert not ShareOptions(str(tmp_path)).xattr
    assert ShareOptions(str(tmp_path), posix_acl=True).xattr
    assert ShareOptions(str(tmp_path), security_label=True).xattr
    assert ShareOptions(str(tmp_path), xattrmap=object()).xattr


@pytest.mark.parametrize("argv,message", [
    (["--fd", "{fd}", "--socket-group", "daemon"], "--socket-group applies to --socket-path only"),
    (["--socket-path", "{tmp}/s", "--migration-mode=file-handles",
      "--migration-verify-handles"], "--migration-mode=find-paths only"),
    (["--socket-path", "{tmp}/s", "--request-queues", "255"],
     "--request-queues must be between 1 and 254"),
    (["--socket-path", "{tmp}/s", "--tag", "x" * 37], "--tag must be 1 to 36 bytes"),
    (["--socket-path", "{tmp}/s", "--thread-pool-size", "-1"],
     "--thread-pool-size must not be negative"),
    (["--socket-path", "{tmp}/s", "-o", "thread_pool_size=-2"],
     "--thread-pool-size must not be negative"),
    (["--shared-dir", "{tmp}"], "one of --socket-path or --fd is required"),
    (["--socket-path", "{tmp}/s", "--shared-dir", "{tmp}/none"], "is not a directory"),
    (["mount", "{tmp}", "{tmp}", "--threads", "0"], "--threads must be at least 1"),
])
def test_refused_as_before(argv, message, listening_fd, tmp_path, capsys):
    argv = [a.format(fd=listening_fd, tmp=tmp_path) for a in argv]
    if argv[0] != "mount" and "--shared-dir" not in argv:
        argv += ["--shared-dir", str(tmp_path)]
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("fields,message", [
    (dict(fd=3, socket_group="daemon"), "--socket-group applies to --socket-path only"),
    (dict(), "one of --socket-path or --fd is required"),
    (dict(socket_path="s", fd=3), "exclude each other"),
    (dict(socket_path="s", request_queues=0), "--request-queues must be between 1 and 254"),
    (dict(socket_path="s", tag=""), "--tag must be 1 to 36 bytes"),
    (dict(socket_path="s", migration_mode="file-handles", migration_confirm_paths=True),
     "--migration-mode=find-paths only"),
])
def test_daemon_options_refuse_what_the_command_line_refuses(fields, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        DaemonOptions(ShareOptions(str(tmp_path)), **fields)


def test_share_and_mount_options_refuse(tmp_path):
    with pytest.raises(ValueError, match="must not be negative"):
        ShareOptions(str(tmp_path), thread_pool_size=-1)
    with pytest.raises(ValueError, match="cache mode"):
        ShareOptions(str(tmp_path), cache="sometimes")
    with pytest.raises(ValueError):
        ShareOptions(str(tmp_path), inode_file_handles="always")
    with pytest.raises(ValueError, match="at least 1"):
        MountOptions(ShareOptions(str(tmp_path)), str(tmp_path), threads=0)


def test_device_takes_ring_options():
    assert VhostUserFsDevice(lambda r, s: (0, b""), HandleTable(4)).ring is DEFAULT_RING
    assert DEFAULT_RING.io_engine is IoEngine.SYNC
    ring = RingOptions(io_engine=IoEngine.URING_RW, poll_us=10, read_only=True)
    assert VhostUserFsDevice(lambda r, s: (0, b""), HandleTable(4), ring=ring).ring is ring
    with pytest.raises(TypeError):
        VhostUserFsDevice(lambda r, s: (0, b""), HandleTable(4), io_uring=True)



class RecordingVirtqueue:
    """Takes the arguments as ``ring.Virtqueue.__init__`` names them (fastvfs/ring/worker.pxi)
    and keeps the ring's options; serves nothing."""

    def __init__(self, index, mem, handles, num, desc_uaddr, avail_uaddr, used_uaddr,
                 last_avail_idx, kick_fd, call_fd, stop_fd, event_idx, indirect, options,
                 lock=None, inodes=None, stats=None, err_fd=-1):
        self.index = index
        self.options = options

    def set_fast_io(self, on):
        pass

    def run(self, handler):
        pass


@pytest.mark.parametrize("ring", [
    RingOptions(io_engine=IoEngine.SYNC),
    RingOptions(max_io=1 << 17, attr_timeout=1.0, io_engine=IoEngine.URING, poll_us=200),
    RingOptions(io_engine=IoEngine.URING_RW, fixed_buffers=True, read_only=True),
], ids=["sync", "uring", "uring-rw"])
def test_a_started_ring_gets_the_ring_options(ring, monkeypatch):
    from fastvfs.vhost_user import device as device_module
    monkeypatch.setattr(device_module.ring, "Virtqueue", RecordingVirtqueue)
    device = VhostUserFsDevice(lambda r, s: (0, b""), HandleTable(4), ring=ring)
    vring = device.vrings[1]
    kick = os.eventfd(0, os.EFD_CLOEXEC)
    try:
        vring.kick_fd, vring.num, vring.addr = kick, 8, (0, 0, 0)
        device.memory = [None]          # one region: the ring is ready to start
        device._start(vring)
        vring.thread.join(5)
        assert vring.queue.options is ring
    finally:
        os.close(kick)
        os.close(vring.stop_fd)
