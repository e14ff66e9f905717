"""End-to-end tests: a Linux guest uses the backend's virtio-fs device for real.

The central check runs the same workload (workload.py) in the guest on the shared filesystem and
on the host in a plain directory, and requires identical manifests. Slow under TCG: boot takes a
few seconds, the full workload about half a minute.
"""

import difflib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import pytest

from fastvfs_testing import guest
from tests.deployed import FASTVFS
from tests.guest import workload

pytestmark = pytest.mark.guest

WORKLOAD = Path(workload.__file__)
GUEST_TIMEOUT = 480  # below the suite-wide pytest timeout, so the console log gets shown
# The guest sees the host's tree at the same paths, so it runs this checkout's workload.py.
GUEST_WORKLOAD_SCRIPT = (f'exec "$FASTVFS_PYTHON" {shlex.quote(str(WORKLOAD))} '
                         '"$FASTVFS_MNT/work" "$FASTVFS_RESULTS/manifest.json"\n')


def flatten(value, prefix=""):
    """Nested JSON as sorted 'a.b.c = value' lines, for a readable diff."""
    if isinstance(value, dict):
        return [line for key in sorted(value) for line in flatten(value[key], f"{prefix}.{key}")]
    return [f"{prefix.lstrip('.')} = {json.dumps(value)}"]


def assert_same(expected, actual, what):
    if expected != actual:
        diff = list(difflib.unified_diff(flatten(expected), flatten(actual), "host", "guest",
                                         lineterm="", n=0))
        shown = "\n".join(diff[:200]) + ("\n..." if len(diff) > 200 else "")
        pytest.fail(f"{what} differ (- host, + guest):\n{shown}", pytrace=False)


def run_workload_on_host(directory, env):
    out = directory.parent / f"{directory.name}.json"
    subprocess.run([sys.executable, str(WORKLOAD), str(directory), str(out)],
                   env={**os.environ, **env}, check=True, timeout=600)
    return json.loads(out.read_text())


def run_workload_in_guest(guest_images, socket_path, results_dir, env):
    kernel, initramfs = guest_images
    result = guest.run_guest(GUEST_WORKLOAD_SCRIPT, vhost_user_socket=socket_path,
                             results_dir=results_dir, env=env, kernel=kernel,
                             initramfs=initramfs, timeout=GUEST_TIMEOUT)
    assert result.returncode == 0, f"workload failed in the guest:\n{result.stderr}"
    manifest = json.loads((results_dir / "manifest.json").read_text())
    print(f"guest: script started {result.boot_time:.1f}s after QEMU, workload ran "
          f"{result.boots[0].script_time:.1f}s; step times {manifest['volatile']['durations']}")
    return manifest


def assert_backend_exits(backend, timeout=10):
    status = backend.wait_exit(timeout)
    assert status is not None, f"backend still running {timeout}s after QEMU exited"
    if os.environ.get("FASTVFS_GUEST_BACKEND", "fastvfs") == "fastvfs":
        assert status == 0, f"backend exited with {status}:\n{backend.log}"
        assert not backend.socket_path.exists(), "socket left behind"
    leftovers = backend.session_processes()
    assert not leftovers, f"backend left processes behind: {leftovers}"


def compare_workloads(guest_images, start_backend, tmp_path, env, cache="auto", extra=()):
    """Run the workload in the guest and on the host; everything observable must match."""
    shared = tmp_path / "shared"
    shared.mkdir()
    backend = start_backend(shared, cache, extra)
    if cache == "never":
        # Files are opened with FOPEN_DIRECT_IO in this mode, and the 6.1 guest kernel refuses
        # shared mappings of direct-I/O files (FUSE_DIRECT_IO_ALLOW_MMAP came with 7.39).
        env = {**env, "WORKLOAD_SKIP": "mmap_io"}
    in_guest = run_workload_in_guest(guest_images, backend.socket_path, tmp_path / "results", env)
    on_host = run_workload_on_host(tmp_path / "host", env)
    assert_same(on_host["steps"], in_guest["steps"], "workload results")
    assert_same(on_host["tree"], in_guest["tree"], "final trees (as the guest saw its own)")
    # What the guest left behind, seen directly on the host: content, modes and owners.
    assert_same(on_host["tree"], workload.tree_manifest(shared / "work"),
                "final trees (guest's, read on the host)")
    assert_backend_exits(backend)
    return on_host, in_guest


@pytest.mark.parametrize("cache,extra", [("never", ()), ("auto", ()), ("always", ()),
                                         ("auto", ("--writeback",))],
                         ids=["never", "auto", "always", "auto-writeback"])
def test_workload_matches_host(guest_images, start_backend, tmp_path, cache, extra):
    if extra and os.environ.get("FASTVFS_GUEST_BACKEND", "fastvfs") != "fastvfs":
        pytest.skip("fastvfs options")
    on_host, in_guest = compare_workloads(guest_images, start_backend, tmp_path, {}, cache, extra)
    assert in_guest["volatile"]["errors"] == {}
    # Free space is live data; both runs used the same host filesystem, so it must be close.
    host_free = on_host["volatile"]["statvfs"]["bfree_bytes"]
    guest_free = in_guest["volatile"]["statvfs"]["bfree_bytes"]
    assert abs(host_free - guest_free) < max(1 << 30, host_free // 100)


def test_stdlib_subset_copy(guest_images, start_backend, tmp_path):
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    trees = os.pathsep.join(str(stdlib / name) for name in ("json", "email", "asyncio"))
    _, in_guest = compare_workloads(guest_images, start_backend, tmp_path,
                                    {"WORKLOAD_STEPS": "copytree", "WORKLOAD_SRC_TREE": trees})
    copies = in_guest["steps"]["copytree"]
    assert sorted(copies) == ["asyncio", "email", "json"]
    for name, copy in copies.items():
        assert copy["mismatches"] == [], f"{name}: copy differs from its source"
        assert copy["entries"] > 0


@pytest.mark.slow
def test_full_stdlib_copy(guest_images, start_backend, tmp_path):
    stdlib = sysconfig.get_paths()["stdlib"]
    _, in_guest = compare_workloads(guest_images, start_backend, tmp_path,
                                    {"WORKLOAD_STEPS": "copytree", "WORKLOAD_SRC_TREE": stdlib})
    (copy,) = in_guest["steps"]["copytree"].values()
    assert copy["mismatches"] == []


REBOOT_SCRIPT = """set -e
case "$FASTVFS_BOOT" in
0) echo "written in boot 0" >"$FASTVFS_MNT/boot0.txt" ;;
1) cat "$FASTVFS_MNT/boot0.txt"
   echo "written in boot 1" >"$FASTVFS_MNT/boot1.txt" ;;
esac
"""


def test_reboot_keeps_serving(guest_images, start_backend, tmp_path):
    """A guest reboot resets the device with QEMU alive: the backend must serve the new session."""
    kernel, initramfs = guest_images
    shared = tmp_path / "shared"
    shared.mkdir()
    backend = start_backend(shared)
    with guest.start_guest(REBOOT_SCRIPT, vhost_user_socket=backend.socket_path, reboots=1,
                           kernel=kernel, initramfs=initramfs) as vm:
        vm.wait_for_script(boot=1, timeout=300)
        assert backend.process.poll() is None, "backend exited at the guest's reboot"
        result = vm.wait(timeout=300)
    assert [b.returncode for b in result.boots] == [0, 0], result.stderr
    assert result.boots[1].stdout == "written in boot 0\n"
    assert (shared / "boot0.txt").read_text() == "written in boot 0\n"
    assert (shared / "boot1.txt").read_text() == "written in boot 1\n"
    assert_backend_exits(backend)


BUSY_SCRIPT = """i=0
while :; do
    i=$((i + 1))
    dd if=/dev/zero of="$FASTVFS_MNT/f$((i % 8))" bs=64k count=16 conv=fsync 2>/dev/null
    ls -l "$FASTVFS_MNT" >/dev/null
    echo $i >"$FASTVFS_RESULTS/progress"
done
"""


def test_killing_qemu_leaves_no_backend(guest_images, start_backend, tmp_path):
    """SIGKILL QEMU mid-I/O: the backend must notice the hang-up and exit, leaving nothing."""
    kernel, initramfs = guest_images
    shared = tmp_path / "shared"
    shared.mkdir()
    backend = start_backend(shared)
    results = tmp_path / "results"
    with guest.start_guest(BUSY_SCRIPT, vhost_user_socket=backend.socket_path,
                           results_dir=results, kernel=kernel, initramfs=initramfs) as vm:
        vm.wait_for_script(timeout=300)
        deadline = time.monotonic() + 60
        while not (results / "progress").exists() or int(
                (results / "progress").read_text() or 0) < 3:
            assert time.monotonic() < deadline, "the guest made no progress:\n" + vm.console
            time.sleep(0.1)
        if os.environ.get("FASTVFS_GUEST_BACKEND", "fastvfs") == "fastvfs":
            # Live statistics while the guest works (the control socket outlives the
            # vhost-user socket, which is removed once QEMU has connected).
            out = subprocess.run([*FASTVFS, "stats", "--socket-path",
                                  str(backend.socket_path), "--json"], capture_output=True,
                                 text=True, timeout=30)
            assert out.returncode == 0, out.stderr
            ops = json.loads(out.stdout)["ops"]
            assert ops["INIT"]["count"] == 1 and ops["LOOKUP"]["count"] > 0
            assert sum(op["count"] for op in ops.values()) > 10
        vm.kill()
        vm.process.wait()
    status = backend.wait_exit(5)
    assert status is not None, "backend still running 5 s after QEMU was killed"
    leftovers = backend.session_processes()
    assert not leftovers, f"backend left processes behind: {leftovers}"


def test_ninep_baseline_share(guest_images, tmp_path):
    """The 9p mode (for baseline benchmarks) mounts the directory at $FASTVFS_MNT too."""
    kernel, initramfs = guest_images
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "from-host").write_text("host data\n")
    result = guest.run_guest('cat "$FASTVFS_MNT/from-host"; echo guest >"$FASTVFS_MNT/from-guest"'
                             '; grep " $FASTVFS_MNT " /proc/mounts',
                             ninep_dir=shared, kernel=kernel, initramfs=initramfs, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("host data\n")
    assert " 9p " in result.stdout
    assert (shared / "from-guest").read_text() == "guest\n"


def test_several_request_queues(guest_images, start_backend, tmp_path):
    """QEMU's num-request-queues=2: hiprio plus two request queues; the guest mounts and works."""
    kernel, initramfs = guest_images
    shared = tmp_path / "shared"
    shared.mkdir()
    backend = start_backend(shared)
    script = ('set -e; cd "$FASTVFS_MNT"; for i in $(seq 1 40); do echo "$i" >"f$i"; done; '
              'cat f* | wc -l; dd if=/dev/urandom of=big bs=1M count=4 2>/dev/null; '
              'sha256sum big')
    result = guest.run_guest(script, vhost_user_socket=backend.socket_path, num_request_queues=2,
                             kernel=kernel, initramfs=initramfs, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert lines[0].strip() == "40"
    assert lines[1].split()[0] == workload.sha((shared / "big").read_bytes())
    assert sorted(p.name for p in shared.iterdir() if p.name != "big") == \
        sorted(f"f{i}" for i in range(1, 41))
    assert_backend_exits(backend)


def test_dax_window_with_a_frontend_that_has_none(guest_images, start_backend, tmp_path):
    """With --dax-window-size the daemon also offers the backend-request channel and VIRTIO
    shared memory; QEMU 7.2 takes the channel but has no window: the guest works without DAX."""
    if os.environ.get("FASTVFS_GUEST_BACKEND", "fastvfs") != "fastvfs":
        pytest.skip("fastvfs options")
    kernel, initramfs = guest_images
    shared = tmp_path / "shared"
    shared.mkdir()
    backend = start_backend(shared, "auto", ["--dax-window-size", "64M", "--log-level", "info"])
    script = ('set -e; cd "$FASTVFS_MNT"; dd if=/dev/urandom of=big bs=1M count=3 2>/dev/null; '
              'sha256sum big; echo hello > small; cat small')
    result = guest.run_guest(script, vhost_user_socket=backend.socket_path, kernel=kernel,
                             initramfs=initramfs, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert lines[0].split()[0] == workload.sha((shared / "big").read_bytes())
    assert lines[1].strip() == "hello"
    assert_backend_exits(backend)
    log = backend.log_path.read_text()
    assert "backend-request channel set up" in log and "DAX window usable" not in log


def test_libvirt_style_invocation(guest_images, tmp_path):
    """As libvirt runs a vhost-user-fs backend: it asks --print-capabilities, creates and
    listens on the socket itself and passes it as --fd, with the legacy -o options."""
    if os.environ.get("FASTVFS_GUEST_BACKEND", "fastvfs") != "fastvfs":
        pytest.skip("fastvfs command line")
    caps = json.loads(subprocess.run([*FASTVFS, "--print-capabilities"],
                                     capture_output=True, check=True, text=True).stdout)
    assert caps["type"] == "fs"
    kernel, initramfs = guest_images
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "from-host").write_text("hello guest\n")
    sock_dir = Path(tempfile.mkdtemp(prefix="fvl-"))
    sock_path = sock_dir / "fs.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    listener.listen(1)
    fd = listener.fileno()
    proc = subprocess.Popen([*FASTVFS, f"--fd={fd}", "-o",
                             f"source={shared},cache=none,xattr", "-o", "sandbox=namespace"],
                            pass_fds=[fd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    listener.close()
    try:
        script = ('set -e; cd "$FASTVFS_MNT"; cat from-host; echo written > from-guest; '
                  'setfattr -n user.k -v v from-guest 2>/dev/null || '
                  '"$FASTVFS_PYTHON" -c "import os; os.setxattr(\'from-guest\', \'user.k\', b\'v\')"; '
                  'ls')
        result = guest.run_guest(script, vhost_user_socket=sock_path, kernel=kernel,
                                 initramfs=initramfs, timeout=300)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split("\n")[0] == "hello guest"
        assert (shared / "from-guest").read_text() == "written\n"
        assert os.getxattr(shared / "from-guest", "user.k") == b"v"
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(sock_dir, ignore_errors=True)


XATTR_SCRIPT = r'''set -e
"$FASTVFS_PYTHON" - <<'PY'
import os
m = os.environ["FASTVFS_MNT"]
p = os.path.join(m, "f")
open(p, "w").close()
os.setxattr(p, "user.color", b"blue")
os.setxattr(p, "trusted.level", b"7")
print(sorted(os.listxattr(p)), os.getxattr(p, "user.color").decode())
os.removexattr(p, "trusted.level")
try:
    os.getxattr(p, "trusted.level")
except OSError as exc:
    print("removed", exc.errno == 61)
PY
'''


def test_extended_attributes(guest_images, start_backend, tmp_path):
    if os.environ.get("FASTVFS_GUEST_BACKEND", "fastvfs") != "fastvfs":
        pytest.skip("run with --xattr: a fastvfs option")
    kernel, initramfs = guest_images
    shared = tmp_path / "shared"
    shared.mkdir()
    # trusted.* needs CAP_SYS_ADMIN, which the sandbox drops unless asked (as the reference).
    backend = start_backend(shared, extra=["--xattr", "--modcaps=+sys_admin"])
    result = guest.run_guest(XATTR_SCRIPT, vhost_user_socket=backend.socket_path, kernel=kernel,
                             initramfs=initramfs, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["['trusted.level', 'user.color'] blue", "removed True"]
    assert os.getxattr(shared / "f", "user.color") == b"blue"
    assert "trusted.level" not in os.listxattr(shared / "f")
    assert_backend_exits(backend)


LOCK_SCRIPT = r'''set -e
"$FASTVFS_PYTHON" - <<'PY'
import fcntl, os, threading, time
m, res = os.environ["FASTVFS_MNT"], os.environ["FASTVFS_RESULTS"]

def wait_for(path):
    while not os.path.exists(path):
        time.sleep(0.05)

# 1. The host holds a lock: a blocking lock here waits for it, and the file system keeps
#    serving this guest meanwhile.
f = open(os.path.join(m, "locked-by-host"), "r+")
got = threading.Event()
t = threading.Thread(target=lambda: (fcntl.lockf(f, fcntl.LOCK_EX), got.set()))
t.start()
time.sleep(1)
assert not got.is_set(), "took a lock the host holds"
for i in range(20):
    with open(os.path.join(m, f"busy{i}"), "w") as g:
        g.write("served while waiting")
open(os.path.join(res, "waiting"), "w").close()
assert got.wait(120), "never got the lock after the host released it"
print("waited for the host")
# 2. A lock taken here is seen by the host.
h = open(os.path.join(m, "locked-by-guest"), "w")
fcntl.lockf(h, fcntl.LOCK_EX)
open(os.path.join(res, "guest-holds"), "w").close()
wait_for(os.path.join(m, "host-checked"))
h.close()
open(os.path.join(res, "guest-released"), "w").close()
wait_for(os.path.join(m, "host-checked-again"))
print("done")
PY
'''


def test_locks_are_shared_with_the_host(guest_images, start_backend, tmp_path):
    import fcntl
    kernel, initramfs = guest_images
    shared = tmp_path / "shared"
    shared.mkdir()
    results = tmp_path / "results"
    (shared / "locked-by-host").write_text("x")
    holder = open(shared / "locked-by-host", "r+")
    fcntl.lockf(holder, fcntl.LOCK_EX)
    backend = start_backend(shared, "never")

    def wait_for(path, vm):
        deadline = time.monotonic() + 120
        while not path.exists():
            assert time.monotonic() < deadline and vm.process.poll() is None, vm.console
            time.sleep(0.05)

    def host_can_lock(path):
        with open(path, "r+") as f:
            try:
                fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except OSError:
                return False

    with guest.start_guest(LOCK_SCRIPT, vhost_user_socket=backend.socket_path,
                           results_dir=results, kernel=kernel, initramfs=initramfs) as vm:
        wait_for(results / "waiting", vm)
        assert len(list(shared.glob("busy*"))) == 20
        holder.close()  # releases the host's lock: the guest's waiting lock is granted
        wait_for(results / "guest-holds", vm)
        assert not host_can_lock(shared / "locked-by-guest")
        (shared / "host-checked").touch()
        wait_for(results / "guest-released", vm)
        assert host_can_lock(shared / "locked-by-guest")
        (shared / "host-checked-again").touch()
        result = vm.wait(timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["waited", "for", "the", "host", "done"]
    assert_backend_exits(backend)


SHARING_SCRIPT = r'''set -e
"$FASTVFS_PYTHON" - <<'PY'
import fcntl, os, time
m, role = os.environ["FASTVFS_MNT"], os.environ["GUEST_ROLE"]
other = "b" if role == "a" else "a"
p = lambda name: os.path.join(m, name)

def wait_for(name, content=None):
    deadline = time.time() + 240
    while True:
        try:
            with open(p(name)) as f:
                if content is None or f.read() == content:
                    return
        except FileNotFoundError:
            pass
        assert time.time() < deadline, f"{role}: {name} never appeared"
        time.sleep(0.05)

with open(p(f"{role}.txt"), "w") as f:
    f.write(f"from {role}")
wait_for(f"{other}.txt", f"from {other}")           # the other guest's write
open(p(f"{role}-ready"), "w").close()
wait_for("host.txt", "written on the host")         # a host process's write
if role == "a":
    lock = open(p("lockfile"), "w")
    fcntl.lockf(lock, fcntl.LOCK_EX)
    open(p("a-locked"), "w").close()
    wait_for("b-saw-lock")
    lock.close()
    open(p("a-released"), "w").close()
    wait_for("b-done")
    # With --cache never the other guest's rename and unlink show at once; with auto they
    # may take the metadata timeout (1 s) to show.
    deadline = time.time() + (0 if os.environ["CACHE_MODE"] == "never" else 1.5)
    while True:
        names = sorted(n for n in os.listdir(m) if n.endswith(".txt"))
        gone = not os.path.exists(p("a.txt")) and not os.path.exists(p("b.txt"))
        if (names == ["host.txt", "renamed.txt"] and gone) or time.time() >= deadline:
            break
        time.sleep(0.05)
    assert names == ["host.txt", "renamed.txt"] and gone, names
    assert open(p("renamed.txt")).read() == "from a"
else:
    wait_for("a-locked")
    with open(p("lockfile"), "r+") as f:
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            raise AssertionError("b took a lock a holds")
        except OSError:
            pass
    open(p("b-saw-lock"), "w").close()
    wait_for("a-released")
    with open(p("lockfile"), "r+") as f:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.rename(p("a.txt"), p("renamed.txt"))
    os.unlink(p("b.txt"))
    open(p("b-done"), "w").close()
print(role, "ok")
PY
'''


@pytest.mark.parametrize("cache", ["never", "auto"])
def test_two_guests_and_the_host_share_a_directory(guest_images, start_backend, tmp_path, cache):
    """Writes, renames, unlinks and locks by one party are seen by the others: at once with
    --cache never, within the 1 s metadata timeout with auto (the guests poll)."""
    kernel, initramfs = guest_images
    shared = tmp_path / "shared"
    shared.mkdir()
    backends = [start_backend(shared, cache) for _ in range(2)]
    vms = [guest.start_guest(SHARING_SCRIPT, vhost_user_socket=b.socket_path, kernel=kernel,
                             initramfs=initramfs, env={"GUEST_ROLE": role, "CACHE_MODE": cache},
                             results_dir=tmp_path / f"results-{role}", smp=1)
           for b, role in zip(backends, "ab")]
    try:
        deadline = time.monotonic() + 240
        while not all((shared / f"{r}-ready").exists() for r in "ab"):
            assert time.monotonic() < deadline, "\n".join(vm.console for vm in vms)
            time.sleep(0.1)
        (shared / "host.txt").write_text("written on the host")
        results = [vm.wait(timeout=300) for vm in vms]
    finally:
        for vm in vms:
            vm.close()
    for role, result in zip("ab", results):
        assert result.returncode == 0, f"guest {role}: {result.stderr}"
        assert result.stdout.strip() == f"{role} ok"
    assert (shared / "renamed.txt").read_text() == "from a"
    for backend in backends:
        assert_backend_exits(backend)


INTEGRITY = Path(__file__).with_name("integrity.py")


FIXED_RW = ("--io-engine", "uring-rw", "--fixed-buffers", "--log-level", "debug")


@pytest.mark.parametrize("cache,extra", [("never", ()), ("auto", ("--writeback",)),
                                         ("always", ()), ("never", FIXED_RW)],
                         ids=["never", "auto-writeback", "always", "never-uring-rw-fixed"])
def test_data_integrity(guest_images, start_backend, tmp_path, cache, extra):
    """Random writes, truncates, reads and fsyncs in the guest, checked against a model; the
    files on the host must then hold what the model says.  Also with READ and WRITE through
    the ring into guest memory registered with it (the guest's real memory, in the
    sandbox)."""
    if extra and os.environ.get("FASTVFS_GUEST_BACKEND", "fastvfs") != "fastvfs":
        pytest.skip("fastvfs options")
    kernel, initramfs = guest_images
    shared = tmp_path / "shared"
    shared.mkdir()
    backend = start_backend(shared, cache, extra)
    # A different history per mode.
    seed = {"never": 1, "auto": 2, "always": 3}[cache] + (10 if extra == FIXED_RW else 0)
    script = f'exec "$FASTVFS_PYTHON" {shlex.quote(str(INTEGRITY))} "$FASTVFS_MNT" 2000 {seed}\n'
    result = guest.run_guest(script, vhost_user_socket=backend.socket_path, kernel=kernel,
                             initramfs=initramfs, timeout=GUEST_TIMEOUT)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    summary = json.loads(result.stdout)
    for name, digest in summary["sha256"].items():
        assert workload.sha((shared / name).read_bytes()) == digest, name
    if extra == FIXED_RW:
        assert "guest memory registered with io_uring" in backend.log, backend.log[-3000:]
        assert "not registered" not in backend.log
    assert_backend_exits(backend)


ACL_SCRIPT = r'''set -e
"$FASTVFS_PYTHON" - <<'PY'
import os, stat, struct
m = os.environ["FASTVFS_MNT"]
acl = lambda *e: struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *x) for x in e)
NO_ID = 0xFFFFFFFF
os.umask(0o077)
open(os.path.join(m, "plain"), "w").close()
os.mkdir(os.path.join(m, "inherit"))
os.setxattr(os.path.join(m, "inherit"), "system.posix_acl_default",
            acl((1, 7, NO_ID), (4, 5, NO_ID), (0x20, 4, NO_ID)))
open(os.path.join(m, "inherit", "child"), "w").close()
# A named-user entry grants uid 4321 access the mode bits alone would deny.
os.mkdir(os.path.join(m, "private"), 0o700)
os.setxattr(os.path.join(m, "private"), "system.posix_acl_access",
            acl((1, 7, NO_ID), (2, 7, 4321), (4, 0, NO_ID), (0x10, 7, NO_ID), (0x20, 0, NO_ID)))
pid = os.fork()
if pid == 0:
    os.setgid(1234); os.setuid(4321)
    open(os.path.join(m, "private", "by-4321"), "w").close()
    try:
        os.setuid(0)
    except PermissionError:
        pass
    os._exit(0)
assert os.waitpid(pid, 0)[1] == 0
mode = lambda p: oct(stat.S_IMODE(os.stat(os.path.join(m, p)).st_mode))
print(mode("plain"), mode("inherit/child"), os.path.exists(os.path.join(m, "private", "by-4321")))
PY
'''


def test_posix_acls(guest_images, start_backend, tmp_path):
    if os.environ.get("FASTVFS_GUEST_BACKEND", "fastvfs") != "fastvfs":
        pytest.skip("--posix-acl is a fastvfs option here")
    kernel, initramfs = guest_images
    shared = tmp_path / "shared"
    shared.mkdir()
    backend = start_backend(shared, "auto", ["--posix-acl"])
    result = guest.run_guest(ACL_SCRIPT, vhost_user_socket=backend.socket_path, kernel=kernel,
                             initramfs=initramfs, timeout=300)
    assert result.returncode == 0, result.stderr
    # umask 077 for a plain file; the default ACL (rwx,r-x,r--) for the inheriting one; the
    # named-user entry let uid 4321 create in a 0700 directory.
    assert result.stdout.split() == ["0o600", "0o644", "True"]
    assert (shared / "private" / "by-4321").stat().st_uid == 4321
    assert_backend_exits(backend)
