"""The daemon as a process: command line, socket handling, clean exits."""

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

from fastvfs.fuse import abi
from fastvfs_testing.frontend import VhostUserFrontend
from fastvfs_testing.fuse_client import FuseClient
from tests.deployed import FASTVFS

DAEMON = FASTVFS


@pytest.fixture
def sockdir():
    d = Path(tempfile.mkdtemp(prefix="fvd-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


_spawned = []


@pytest.fixture(autouse=True)
def reap_daemons():
    """A failing test must not leave a daemon waiting for a frontend forever."""
    yield
    while _spawned:
        proc = _spawned.pop()
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def spawn(*args, **kw):
    proc = subprocess.Popen([*DAEMON, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            **kw)
    _spawned.append(proc)
    return proc


def wait_for(path, proc, timeout=15):
    deadline = time.monotonic() + timeout
    while not Path(path).is_socket():
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "socket never appeared"
        time.sleep(0.02)


def connect_and_use(path, shared):
    frontend = VhostUserFrontend(str(path), timeout=10)
    frontend.start()
    client = FuseClient(frontend, timeout=10)
    client.init()
    (shared / "hello").write_text("hi")
    entry = client.lookup(abi.FUSE_ROOT_ID, b"hello")
    assert entry.attr.size == 2
    return frontend


def test_print_capabilities():
    out = subprocess.run([*DAEMON, "--print-capabilities"], capture_output=True, check=True)
    assert json.loads(out.stdout) == {"type": "fs", "features": ["separate-options"]}


def test_console_script_is_the_same_program():
    script = Path(sys.executable).with_name("fastvfs")
    if not script.exists():
        pytest.skip("not installed as a package (no console script next to the interpreter)")
    out = subprocess.run([str(script), "--print-capabilities"], capture_output=True, check=True)
    assert json.loads(out.stdout) == {"type": "fs", "features": ["separate-options"]}


@pytest.mark.parametrize("args", [[], ["--socket-path", "/tmp/x.sock"],
                                  ["--socket-path", "/tmp/x.sock", "--shared-dir", "/nonexistent"],
                                  ["--socket-path", "/tmp/x.sock", "--fd", "3", "--shared-dir", "/"]])
def test_bad_command_lines_are_refused(args):
    out = subprocess.run([*DAEMON, *args], capture_output=True)
    assert out.returncode == 2


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_while_waiting_exits_cleanly(sockdir, tmp_path, sig):
    sock = sockdir / "s.sock"
    proc = spawn("--socket-path", str(sock), "--shared-dir", str(tmp_path))
    wait_for(sock, proc)
    proc.send_signal(sig)
    assert proc.wait(10) == 0
    assert not sock.exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_while_serving_exits_cleanly(sockdir, tmp_path, sig):
    sock = sockdir / "s.sock"
    proc = spawn("--socket-path", str(sock), "--shared-dir", str(tmp_path))
    wait_for(sock, proc)
    frontend = connect_and_use(sock, tmp_path)
    proc.send_signal(sig)
    assert proc.wait(10) == 0
    assert frontend.wait_closed(5)
    frontend.close()
    assert not sock.exists()


def test_frontend_disconnect_ends_the_daemon(sockdir, tmp_path):
    sock = sockdir / "s.sock"
    proc = spawn("--socket-path", str(sock), "--shared-dir", str(tmp_path))
    wait_for(sock, proc)
    frontend = connect_and_use(sock, tmp_path)
    frontend.close()
    assert proc.wait(10) == 0
    assert not sock.exists()


def test_stale_socket_is_replaced(sockdir, tmp_path):
    sock = sockdir / "s.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(sock))
    dead.close()  # a socket file nobody listens on, as a killed daemon leaves it
    proc = spawn("--socket-path", str(sock), "--shared-dir", str(tmp_path))
    time.sleep(0.5)
    frontend = None
    deadline = time.monotonic() + 15
    while frontend is None:
        try:
            frontend = connect_and_use(sock, tmp_path)
        except (ConnectionRefusedError, FileNotFoundError):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
    frontend.close()
    assert proc.wait(10) == 0


def test_inherited_listening_fd(sockdir, tmp_path):
    """libvirt's way: it creates and binds the socket and hands the daemon the listening fd."""
    sock = sockdir / "s.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock))
    listener.listen(1)
    fd = listener.fileno()
    proc = spawn("--fd", str(fd), "--shared-dir", str(tmp_path), pass_fds=[fd])
    listener.close()
    frontend = connect_and_use(sock, tmp_path)
    frontend.close()
    assert proc.wait(10) == 0


def test_socket_is_not_left_after_a_frontend_was_served_and_daemon_killed(sockdir, tmp_path):
    """The daemon stops listening (and removes the path) as soon as its one frontend arrives."""
    sock = sockdir / "s.sock"
    proc = spawn("--socket-path", str(sock), "--shared-dir", str(tmp_path))
    wait_for(sock, proc)
    frontend = connect_and_use(sock, tmp_path)
    assert not sock.exists()
    proc.kill()
    proc.wait()
    frontend.close()
