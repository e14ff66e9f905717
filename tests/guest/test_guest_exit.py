"""The daemon goes away promptly when its QEMU does.

A management stack waits for the backend to exit before it reuses the socket path or restarts
the guest: a backend that lingers after its frontend has gone delays every restart.  The daemon
is started as users start it (tests.deployed.FASTVFS, default namespace sandbox), so the process
the test started is the supervisor and the one serving the guest is its sandboxed child; both
must be gone within EXIT_LIMIT of QEMU's exit, after a clean power-off and after SIGKILL of QEMU
in the middle of I/O.
"""

import fcntl
import os
import signal
import time
from pathlib import Path

import pytest

from fastvfs_testing import guest
from tests.guest.test_guest import BUSY_SCRIPT

pytestmark = pytest.mark.guest

EXIT_LIMIT = 1.0
POLL = 0.01

IO_SCRIPT = """set -e
cd "$FASTVFS_MNT"
for i in $(seq 1 20); do echo "line $i" >"f$i"; done
dd if=/dev/urandom of=big bs=64k count=32 conv=fsync 2>/dev/null
cat f* big | wc -c
ls -l >/dev/null
rm f1
sync
"""



def children(pid):
    """Direct children of ``pid`` (every thread's list), empty once it has gone."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def alive(pid):
    """Running: not gone and not a zombie (a zombie has exited, only its parent has yet to
    reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def sandboxed_child(backend):
    """The supervisor's one child, the process serving in its sandbox."""
    server = children(backend.process.pid)
    assert len(server) == 1, f"expected one sandboxed child of the supervisor, found {server}"
    return server[0]


def exit_delays(vm, backend, server=None, timeout=600):
    """Seconds from QEMU's exit to the supervisor's and to the sandboxed child's (``server``,
    found now if not given: take it before QEMU is told to go, or a prompt exit may beat the
    look), polled every POLL seconds (None for one still running EXIT_LIMIT * 10 after QEMU)."""
    if server is None:
        server = sandboxed_child(backend)
    deadline = time.monotonic() + timeout
    while vm.process.poll() is None:
        assert time.monotonic() < deadline, "QEMU did not exit:\n" + vm.console
        time.sleep(POLL)
    qemu_gone = time.monotonic()
    delays = {"supervisor": None, "sandboxed child": None}
    while time.monotonic() - qemu_gone < EXIT_LIMIT * 10 and None in delays.values():
        now = time.monotonic()
        if delays["supervisor"] is None and backend.process.poll() is not None:
            delays["supervisor"] = now - qemu_gone
        if delays["sandboxed child"] is None and not alive(server):
            delays["sandboxed child"] = now - qemu_gone
        time.sleep(POLL)
    print(f"exit after QEMU: {delays}")
    return delays


def assert_prompt(delays, backend):
    for who, delay in delays.items():
        assert delay is not None and delay < EXIT_LIMIT, \
            f"{who} exited {delay} s after QEMU (limit {EXIT_LIMIT} s):\n{backend.log[-4000:]}"
    assert not backend.session_processes(settle=0), "backend left processes behind"


@pytest.fixture
def fastvfs_backend(start_backend, tmp_path):
    if os.environ.get("FASTVFS_GUEST_BACKEND", "fastvfs") != "fastvfs":
        pytest.skip("measures the fastvfs supervisor and its sandboxed child")
    shared = tmp_path / "shared"
    shared.mkdir()
    return start_backend(shared), shared


def test_daemon_exits_promptly_after_heavy_io(guest_images, start_backend, tmp_path):
    """A bigger guest whose memory the daemon has touched throughout (384 MiB written and read
    back through the page cache of --cache always --writeback), on two request queues."""
    if os.environ.get("FASTVFS_GUEST_BACKEND", "fastvfs") != "fastvfs":
        pytest.skip("measures the fastvfs supervisor and its sandboxed child")
    kernel, initramfs = guest_images
    shared = tmp_path / "shared"
    shared.mkdir()
    backend = start_backend(shared, "always", ["--writeback"])
    with guest.start_guest(HEAVY_SCRIPT, vhost_user_socket=backend.socket_path, kernel=kernel,
                           initramfs=initramfs, memory="3G", num_request_queues=2) as vm:
        vm.wait_for_script(timeout=300)
        delays = exit_delays(vm, backend)
        result = vm.wait(timeout=10)
    assert result.returncode == 0, result.stderr
    assert_prompt(delays, backend)


HEAVY_SCRIPT = IO_SCRIPT + """dd if=/dev/zero of=heavy bs=1M count=384 2>/dev/null
cat heavy >/dev/null
rm heavy
"""


def test_daemon_exits_promptly_after_poweroff(guest_images, fastvfs_backend):
    kernel, initramfs = guest_images
    backend, shared = fastvfs_backend
    with guest.start_guest(IO_SCRIPT, vhost_user_socket=backend.socket_path, kernel=kernel,
                           initramfs=initramfs) as vm:
        vm.wait_for_script(timeout=300)
        delays = exit_delays(vm, backend)
        result = vm.wait(timeout=10)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(20 * len("line NN\n") - 9 + 32 * 65536)
    assert sorted(p.name for p in shared.iterdir()) == sorted(
        ["big"] + [f"f{i}" for i in range(2, 21)])
    assert_prompt(delays, backend)
    assert backend.process.returncode == 0, backend.log


def test_daemon_exits_promptly_after_qemu_is_killed(guest_images, fastvfs_backend, tmp_path):
    kernel, initramfs = guest_images
    backend, _ = fastvfs_backend
    results = tmp_path / "results"
    with guest.start_guest(BUSY_SCRIPT, vhost_user_socket=backend.socket_path,
                           results_dir=results, kernel=kernel, initramfs=initramfs) as vm:
        vm.wait_for_script(timeout=300)
        deadline = time.monotonic() + 60
        progress = results / "progress"
        while not progress.exists() or int(progress.read_text() or 0) < 3:
            assert time.monotonic() < deadline, "the guest made no progress:\n" + vm.console
            time.sleep(0.05)
        server = sandboxed_child(backend)
        vm.kill()
        delays = exit_delays(vm, backend, server)
    assert_prompt(delays, backend)


WAIT_SCRIPT = r'''"$FASTVFS_PYTHON" - <<'PY'
import fcntl, os
f = open(os.path.join(os.environ["FASTVFS_MNT"], "locked-by-host"), "r+")
open(os.path.join(os.environ["FASTVFS_RESULTS"], "waiting"), "w").close()
fcntl.lockf(f, fcntl.LOCK_EX)  # the host holds it: this waits until QEMU goes
PY
'''


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_daemon_exits_promptly_with_a_lock_wait_pending(guest_images, fastvfs_backend, tmp_path,
                                                         how):
    """QEMU goes while the guest waits for a lock a host process holds (a SETLKW the daemon
    answers only once the lock is granted): the wait must not keep the daemon alive."""
    kernel, initramfs = guest_images
    backend, shared = fastvfs_backend
    (shared / "locked-by-host").write_text("x")
    holder = open(shared / "locked-by-host", "r+")
    fcntl.lockf(holder, fcntl.LOCK_EX)
    results = tmp_path / "results"
    try:
        with guest.start_guest(WAIT_SCRIPT, vhost_user_socket=backend.socket_path,
                               results_dir=results, kernel=kernel, initramfs=initramfs) as vm:
            vm.wait_for_script(timeout=300)
            deadline = time.monotonic() + 120
            while not (results / "waiting").exists():
                assert time.monotonic() < deadline, "the guest never got to the lock:\n" + \
                    vm.console
                time.sleep(0.05)
            time.sleep(2)  # the SETLKW reaches the daemon and waits there
            server = sandboxed_child(backend)
            vm.kill(getattr(signal, how))
            delays = exit_delays(vm, backend, server)
        assert_prompt(delays, backend)
    finally:
        holder.close()
