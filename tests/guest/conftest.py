"""Fixtures for tests that boot a real guest against a virtio-fs backend.

The backend under test is the project daemon unless FASTVFS_GUEST_BACKEND=reference selects the
reference virtiofsd (useful to validate the tests themselves, or to compare behaviour).
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import pytest

from fastvfs_testing import guest, procstate
from tests.deployed import FASTVFS

REPO = Path(__file__).resolve().parents[2]
REFERENCE_BACKEND = "/usr/lib/qemu/virtiofsd"
LOG_TAIL_BYTES = 64 << 10  # of a backend's log, read for a failed test's report
HOST_TOOLS = (guest.QEMU, "apt-get", "apt-cache", "dpkg-deb", "depmod", "cpio")


def pytest_configure(config):
    config.addinivalue_line("markers",
                            "guest: boots a QEMU guest (TCG) against a virtio-fs backend")
    config.addinivalue_line("markers", "slow: long-running; only runs when -m names it or "
                                       "FASTVFS_SLOW_TESTS=1")


def pytest_collection_modifyitems(config, items):
    """Slow tests stay out of ordinary runs (CI) unless asked for explicitly."""
    if "slow" in (config.getoption("markexpr") or "") or os.environ.get("FASTVFS_SLOW_TESTS"):
        return
    here = Path(__file__).parent
    skip = pytest.mark.skip(reason="slow: select with -m slow or FASTVFS_SLOW_TESTS=1")
    for item in items:
        if "slow" in item.keywords and item.path.is_relative_to(here):
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed guest test's report carries each backend's log and thread states, taken before
    teardown kills them (a guest that hangs on its backend is diagnosed from the backend)."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    start = getattr(item, "funcargs", {}).get("start_backend")
    for backend in getattr(start, "started", ()):
        try:
            text = backend.diagnose()
        except Exception:  # never in place of the failure it explains
            text = f"the backend could not be diagnosed:\n{traceback.format_exc()}"
        report.sections.append((f"backend {backend.process.pid}", text))


@pytest.fixture(scope="session")
def guest_images():
    """(kernel, initramfs), fetched and built once (and cached across sessions)."""
    missing = [tool for tool in HOST_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"guest tests need {', '.join(missing)} "
                    "(apt-get install -y qemu-system-x86 busybox-static cpio kmod)")
    if not os.path.exists(guest.BUSYBOX):
        pytest.skip("guest tests need busybox-static")
    if os.geteuid() != 0:
        pytest.skip("guest tests need root: the host-side comparison run does chown and mknod")
    kernel = guest.ensure_kernel()
    return kernel, guest.build_initramfs(kernel)


@pytest.fixture(scope="session")
def backend_cmd():
    """``backend_cmd(socket_path, shared_dir, cache="auto", extra=()) -> argv`` for the backend
    under test; ``extra`` options are the project daemon's and ignored for the reference."""
    choice = os.environ.get("FASTVFS_GUEST_BACKEND", "fastvfs")
    if choice == "reference":
        if not os.access(REFERENCE_BACKEND, os.X_OK):
            pytest.skip(f"{REFERENCE_BACKEND} not installed")
        return lambda sock, shared, cache="auto", extra=(): [
            REFERENCE_BACKEND, f"--socket-path={sock}", "-o", f"source={shared}",
            "-o", f"cache={'none' if cache == 'never' else cache}"]
    if choice == "fastvfs":
        return lambda sock, shared, cache="auto", extra=(): [
            *FASTVFS, "--socket-path", str(sock), "--shared-dir",
            str(shared), "--cache", cache, *extra]
    raise pytest.UsageError(f"FASTVFS_GUEST_BACKEND={choice!r}: use 'fastvfs' or 'reference'")


class Backend:
    """A backend process in its own session, so that everything it spawns can be found."""

    def __init__(self, argv, socket_path, log_path):
        self.socket_path = Path(socket_path)
        self.log_path = Path(log_path)
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, cwd=REPO,
                                            start_new_session=True)

    @property
    def log(self):
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout=15):
        """The socket must be listening once its path exists: QEMU connects exactly once."""
        deadline = time.monotonic() + timeout
        while not self.socket_path.is_socket():
            if self.process.poll() is not None:
                pytest.fail(f"backend exited with {self.process.returncode} before listening:\n"
                            f"{self.log}")
            if time.monotonic() > deadline:
                pytest.fail(f"backend did not create {self.socket_path} in {timeout}s:\n"
                            f"{self.log}")
            time.sleep(0.05)

    def diagnose(self, lines=60):
        """For a failed test's report: the end of the backend's log and, while it runs, what
        each of its threads is doing."""
        with open(self.log_path, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
            tail = "\n".join(log.read().decode(errors="replace").splitlines()[-lines:])
        state = (procstate.report(self.process.pid, "backend") if self.process.poll() is None
                 else f"backend exited with {self.process.returncode}")
        return f"--- backend log (last lines) ---\n{tail}\n{state}"

    def wait_exit(self, timeout):
        """The exit status, or None if still running after ``timeout`` seconds."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def session_processes(self, settle=2.0):
        """Processes still in the backend's session (waiting briefly for exiting ones)."""
        deadline = time.monotonic() + settle
        while True:
            found = []
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[3]) == self.process.pid:  # field 6, session id
                    found.append(int(entry.name))
            if not found or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def stop(self):
        if self.process.poll() is None or self.session_processes(settle=0):
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()


@pytest.fixture
def start_backend(backend_cmd, tmp_path):
    """``start_backend(shared_dir, cache="auto", extra=()) -> Backend``, listening on a fresh
    socket; killed at teardown."""
    # sun_path holds 107 bytes; pytest's tmp_path can be longer than that.
    sockdir = Path(tempfile.mkdtemp(prefix="fastvfs-sock-"))
    started = []

    def start(shared_dir, cache="auto", extra=()):
        sock = sockdir / f"vfs{len(started)}.sock"
        backend = Backend(backend_cmd(sock, shared_dir, cache, extra), sock,
                          tmp_path / f"backend{len(started)}.log")
        started.append(backend)
        backend.wait_ready()
        return backend

    start.started = started  # for pytest_runtest_makereport
    yield start
    for backend in started:
        backend.stop()
    shutil.rmtree(sockdir, ignore_errors=True)
