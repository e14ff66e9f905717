"""Backends for the integration suites, driven through the project's frontend driver.

A backend is described by a :class:`BackendSpec` whose ``argv`` is a function of (socket path,
shared directory).  The ``backend`` fixture is parametrized over :data:`BACKENDS` and yields a
:class:`BackendLauncher`; calling it starts the backend, connects a :class:`VhostUserFrontend` with
the given options, brings the device up, sends FUSE_INIT and returns ``(frontend, client,
shared_dir)``.  Teardown closes every frontend (a vhost-user backend sees the VM go away), reaps
the processes (killing those that linger) and prints their logs, which pytest shows on failure.

Adding a backend is one entry, e.g.::

    "fastvfs": BackendSpec(lambda sock, shared: [sys.executable, "-m", "fastvfs",
                                                 "--socket-path", sock, "--shared-dir", shared,
                                                 "--cache", "never"]),
"""

import contextlib
import errno
import functools
import os
import sys
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest

from fastvfs.fuse.abi import Opcode
from fastvfs_testing.frontend import VhostUserFrontend
from fastvfs_testing.fuse_client import FuseClient
from tests.deployed import FASTVFS

REFERENCE_VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
START_TIMEOUT = 10.0
EXIT_TIMEOUT = 5.0
REQUEST_TIMEOUT = 10.0
# What the daemon logs when a module is imported after it entered its sandbox
# (fastvfs.sandbox.watch_imports).
SANDBOX_IMPORT = "imported inside the sandbox"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", f"reference: drives the reference backend {REFERENCE_VIRTIOFSD}")


@functools.cache
def reference_sandbox():
    """The reference's default namespace sandbox needs unshare() rights that some containers lack;
    it is set up right after the first connection, so probe once and fall back to chroot."""
    with tempfile.TemporaryDirectory(prefix="fvfs-probe-") as tmp:
        socket_path = os.path.join(tmp, "sock")
        for sandbox in ("namespace", "chroot"):
            argv = reference_argv(socket_path, tmp, sandbox=sandbox)
            with subprocess.Popen(argv, stderr=subprocess.DEVNULL) as process:
                try:
                    with _connect(VhostUserFrontend(socket_path), process) as frontend:
                        frontend.init_device()
                    return sandbox
                except (OSError, RuntimeError):
                    pass
                finally:
                    _reap(process)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(socket_path)
    return "chroot"


def reference_argv(socket_path, shared_dir, sandbox=None):
    return [REFERENCE_VIRTIOFSD, f"--socket-path={socket_path}", "-o", f"source={shared_dir}",
            "-o", "cache=none", "-o", f"sandbox={sandbox or reference_sandbox()}"]


@dataclass(frozen=True)
class BackendSpec:
    """How to run one backend: ``argv(socket_path, shared_dir)``, pytest marks, FUSE opcodes it
    answers with ENOSYS (tests of those ops skip), known deviations from the errno Linux would
    give (``{(opcode, expected errno): errno it gives}``), and why it cannot run here (None if it
    can)."""

    argv: Callable[[str, str], list]
    marks: tuple = ()
    missing_ops: frozenset = frozenset()
    errno_quirks: dict = field(default_factory=dict)
    unavailable: Optional[str] = None


BACKENDS = {
    "fastvfs": BackendSpec(
        lambda sock, shared: [*FASTVFS, "--socket-path", sock,
                              "--shared-dir", shared, "--cache", "never", "--log-level", "debug"]),
    # Inodes held by file handle (the share's file system has them where the tests run).
    "fastvfs-handles": BackendSpec(
        lambda sock, shared: [*FASTVFS, "--socket-path", sock, "--shared-dir", shared,
                              "--cache", "never", "--log-level", "debug",
                              "--inode-file-handles=prefer"]),
    "reference": BackendSpec(
        reference_argv, (pytest.mark.reference,),
        missing_ops=frozenset({Opcode.ACCESS}),
        # It resolves the name before unlinking and answers EIO when that fails.
        errno_quirks={(Opcode.UNLINK, errno.ENOENT): errno.EIO,
                      (Opcode.RMDIR, errno.ENOENT): errno.EIO},
        unavailable=None if os.access(REFERENCE_VIRTIOFSD, os.X_OK)
        else f"{REFERENCE_VIRTIOFSD} is not installed"),
}


def _connect(frontend, process):
    """Connect once the backend listens: the socket file appears at bind(), before listen()."""
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"backend exited with status {process.returncode} "
                                   "before accepting")
            try:
                frontend.connect()
                return frontend
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.02)
    except BaseException:
        frontend.close()
        raise


def _reap(process):
    try:
        process.wait(EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class BackendLauncher:
    """Starts backend processes for one test; see the module docstring."""

    def __init__(self, name, spec, tmp_path):
        self.name = name
        self.spec = spec
        self.tmp_path = tmp_path
        self.process = None  # the most recently started backend
        self._runs = []  # [process, frontend, log path, socket dir]

    def start(self):
        """Start a backend on a fresh socket and shared directory; returns (socket, shared dir).

        The shared directory and the backend's log stay in the test's tmp_path; the socket gets a
        short directory of its own, as Unix socket paths are limited to 108 bytes.
        """
        run = len(self._runs)
        shared = self.tmp_path / f"shared{run}"
        shared.mkdir()
        log = self.tmp_path / f"backend{run}.log"
        socket_dir = Path(tempfile.mkdtemp(prefix="fvfs-"))
        socket_path = socket_dir / "vhost.sock"
        with open(log, "wb") as log_file:
            self.process = subprocess.Popen(self.spec.argv(str(socket_path), str(shared)),
                                            stdout=log_file, stderr=subprocess.STDOUT)
        self._runs.append([self.process, None, log, socket_dir])
        return socket_path, shared

    def __call__(self, *, init=True, client_options=None, **frontend_options):
        """Start a backend and return ``(frontend, client, shared_dir)`` with the device started
        (and FUSE_INIT done unless ``init=False``)."""
        socket_path, shared = self.start()
        frontend = self.connect(socket_path, **frontend_options)
        frontend.start()
        client = FuseClient(frontend, timeout=REQUEST_TIMEOUT, **(client_options or {}))
        if init:
            client.init()
        return frontend, client, shared

    def connect(self, socket_path, **frontend_options):
        """Connect a frontend (no handshake yet) to the most recently started backend."""
        frontend_options.setdefault("timeout", REQUEST_TIMEOUT)
        frontend = _connect(VhostUserFrontend(socket_path, **frontend_options), self.process)
        self._runs[-1][1] = frontend
        return frontend

    def require_op(self, opcode):
        """Skip the test if this backend does not implement ``opcode``."""
        if opcode in self.spec.missing_ops:
            pytest.skip(f"{self.name} backend does not implement {opcode.name}")

    def expected_errno(self, opcode, expected):
        """The errno this backend answers where Linux semantics say ``expected``."""
        return self.spec.errno_quirks.get((opcode, expected), expected)

    def shutdown(self):
        late_imports = []
        for process, frontend, log, socket_dir in self._runs:
            if frontend is not None:
                frontend.close()
            _reap(process)
            shutil.rmtree(socket_dir, ignore_errors=True)
            output = log.read_text(errors="replace")
            if output:
                print(f"--- {self.name} backend (status {process.returncode}) ---\n{output}")
            late_imports += [line for line in output.splitlines() if SANDBOX_IMPORT in line]
        self._runs = []
        # A module imported from disk inside the sandbox fails wherever the host's tree is out
        # of reach: every path the test drove must have been loaded before the sandbox.
        if late_imports:
            pytest.fail("the daemon imported modules inside its sandbox:\n" +
                        "\n".join(late_imports))


@pytest.fixture(params=[pytest.param(name, marks=spec.marks) for name, spec in BACKENDS.items()])
def backend_name(request):
    if BACKENDS[request.param].unavailable:
        pytest.skip(BACKENDS[request.param].unavailable)
    return request.param


def _launcher(name, tmp_path):
    launcher = BackendLauncher(name, BACKENDS[name], tmp_path)
    yield launcher
    launcher.shutdown()


@pytest.fixture
def backend(backend_name, tmp_path):
    """Launcher for the parametrized backend."""
    yield from _launcher(backend_name, tmp_path)


@pytest.fixture
def reference_backend(tmp_path):
    """Launcher for the reference backend only, for checks of its particular behaviour."""
    if BACKENDS["reference"].unavailable:
        pytest.skip(BACKENDS["reference"].unavailable)
    yield from _launcher("reference", tmp_path)
