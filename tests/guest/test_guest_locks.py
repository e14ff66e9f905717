"""Lock semantics in a real guest: locks_workload.py (POSIX, OFD, flock, leases; modelled on
xfstests' locks group) runs in the guest on the share and on the host in a plain directory, and
the two transcripts must be the same line for line.

Two configurations: locks served by fastvfs on the host (its defaults, --posix-lock --flock),
where the guest's locks are also host locks that host processes see; and locks left to the
guest kernel (--no-posix-lock --no-flock), where the host sees none of them.  With
FASTVFS_GUEST_BACKEND=reference the same workload runs against the reference virtiofsd with its
defaults, as a differential.
"""

import fcntl
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastvfs_testing import guest
from tests.guest.test_guest import GUEST_TIMEOUT, assert_backend_exits

pytestmark = pytest.mark.guest

WORKLOAD = Path(__file__).with_name("locks_workload.py")
SCRIPT = (f'exec "$FASTVFS_PYTHON" {shlex.quote(str(WORKLOAD))} "$FASTVFS_MNT/locks" '
          '"$FASTVFS_RESULTS"\n')
HELD = "ok held locks checked by the host"


def host_holds(path):
    """Which kinds of lock a host process is refused on ``path``: a lock the guest holds
    through a served lock shows as a conflict here."""
    refused = []
    with open(path, "r+") as f:
        for kind, take in (("posix", lambda: fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)),
                           ("flock", lambda: fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB))):
            try:
                take()
            except OSError:
                refused.append(kind)
    return refused


@pytest.mark.parametrize("extra", [(), ("--no-posix-lock", "--no-flock")],
                         ids=["served", "guest-local"])
def test_lock_semantics_match_the_host(guest_images, start_backend, tmp_path, extra):
    reference = os.environ.get("FASTVFS_GUEST_BACKEND", "fastvfs") == "reference"
    if reference and extra:
        pytest.skip("fastvfs options (the reference runs with its defaults under 'served')")
    kernel, initramfs = guest_images
    shared = tmp_path / "shared"
    shared.mkdir()
    results = tmp_path / "results"
    backend = start_backend(shared, extra=extra)

    host = subprocess.run([sys.executable, str(WORKLOAD), str(tmp_path / "host")],
                          capture_output=True, text=True, timeout=600)
    assert host.returncode == 0, f"the workload fails on the host:\n{host.stdout}{host.stderr}"

    with guest.start_guest(SCRIPT, vhost_user_socket=backend.socket_path, results_dir=results,
                           kernel=kernel, initramfs=initramfs) as vm:
        vm.wait_for_script(timeout=300)
        deadline = time.monotonic() + GUEST_TIMEOUT
        while not (results / "holding").exists():
            if vm.process.poll() is not None or time.monotonic() > deadline:
                record = results / guest.CONTROL / "boot-0"
                pytest.fail("the guest stopped before holding its locks:\n" + "\n".join(
                    (record / name).read_text() for name in ("stdout", "stderr")
                    if (record / name).exists())[-6000:] + vm.console)
            time.sleep(0.1)
        # The guest holds a POSIX, a flock() and an OFD write lock on three files now.
        seen = {name: host_holds(shared / "locks" / name)
                for name in ("held-posix", "held-flock", "held-ofd")}
        (shared / "locks" / "released").touch()
        result = vm.wait(timeout=GUEST_TIMEOUT)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    guest_lines = [line for line in result.stdout.splitlines() if line != HELD]
    assert HELD in result.stdout.splitlines()
    assert guest_lines == host.stdout.splitlines(), \
        "\n".join(f"{'  ' if a == b else '! '}host: {a}\n  guest: {b}" for a, b in
                  zip(host.stdout.splitlines(), guest_lines))
    if not reference:
        if extra:
            # Left to the guest: the host sees none of the guest's locks.
            assert seen == {"held-posix": [], "held-flock": [], "held-ofd": []}
        else:
            # Served: POSIX and OFD locks are host OFD locks (which conflict with a host
            # process's POSIX locks, not with its flock), flock() locks are host flock locks.
            assert seen == {"held-posix": ["posix"], "held-flock": ["flock"],
                            "held-ofd": ["posix"]}
    assert_backend_exits(backend)
