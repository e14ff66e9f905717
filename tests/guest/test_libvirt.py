"""fastvfs started by a real libvirt: a TCG domain whose ``<filesystem>`` has ``<driver
type='virtiofs'/>`` boots the test guest (fastvfs_testing.guest) and uses the share.

libvirt builds the daemon's command line itself (src/qemu/qemu_virtiofs.c), listens on the
socket and passes it as ``--fd=N``, logs the daemon's output to
/var/log/libvirt/qemu/DOMAIN-fs0-virtiofsd.log and kills it when the domain stops.

The guest's test plumbing (the host root and the results share over 9p) goes in through
``<qemu:commandline>`` as ``guest.qemu_command`` passes it (at PCI slots libvirt leaves free); only the file system under
test is libvirt's own device.  Needs root and libvirt's QEMU driver (Debian:
libvirt-daemon-system, ``make libvirt-deps``); without them the tests skip.  A libvirtd that is
not running is started for the session and stopped after it.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import pytest

from fastvfs_testing import guest
from tests.deployed import FASTVFS

pytestmark = pytest.mark.guest

REPO = Path(__file__).resolve().parents[2]
URI = "qemu:///system"
LIBVIRTD = "/usr/sbin/libvirtd"
VIRTLOGD = "/usr/sbin/virtlogd"
LOG_DIR = Path("/var/log/libvirt/qemu")
VHOST_USER_DIRS = ("/etc/qemu/vhost-user", "/usr/share/qemu/vhost-user")
GUEST_TIMEOUT = 300


def virsh(*args, check=True, timeout=60):
    proc = subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"virsh {' '.join(args)} failed ({proc.returncode}):\n"
                    f"{proc.stdout}{proc.stderr}")
    return proc


def _connects():
    return subprocess.run(["virsh", "-c", URI, "version"], capture_output=True,
                          timeout=30).returncode == 0


def _pid_of(pidfile):
    try:
        return int(Path(pidfile).read_text())
    except (OSError, ValueError):
        return None


@pytest.fixture(scope="session")
def libvirt():
    """A libvirt QEMU driver to talk to: the running one, or libvirtd (and the virtlogd it
    logs through) started here without systemd, and stopped at the end of the session."""
    if shutil.which("virsh") is None or not os.access(LIBVIRTD, os.X_OK):
        pytest.skip("libvirt is not installed (make libvirt-deps)")
    if not os.path.exists("/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/"
                          "libvirt_driver_qemu.so"):
        pytest.skip("libvirt's QEMU driver is not installed (libvirt-daemon-driver-qemu)")
    if os.geteuid() != 0:
        pytest.skip("the libvirt tests run qemu:///system: they need root")
    started = []
    if not _connects():
        for daemon, pidfile in ((VIRTLOGD, "/run/virtlogd.pid"), (LIBVIRTD, "/run/libvirtd.pid")):
            if _pid_of(pidfile) is None or not Path(f"/proc/{_pid_of(pidfile)}").exists():
                out = subprocess.run([daemon, "-d"], capture_output=True, text=True)
                assert out.returncode == 0, f"{daemon} -d: {out.stdout}{out.stderr}"
                started.append(pidfile)
        deadline = time.monotonic() + 30
        while not _connects():
            if time.monotonic() > deadline:
                pytest.fail(f"libvirtd does not answer on {URI}: "
                            f"{virsh('version', check=False).stderr}")
            time.sleep(0.5)
    yield
    for pidfile in reversed(started):
        pid = _pid_of(pidfile)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)


def fastvfs_binary(directory):
    """What ``<binary path>`` names: the installed entry point under test, else a program that
    runs this source tree (libvirt starts the daemon with a minimal environment)."""
    if os.environ.get("FASTVFS_BIN"):
        return FASTVFS[0]
    wrapper = directory / "fastvfs"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m fastvfs \"$@\"\n")
    wrapper.chmod(0o755)
    return str(wrapper)


def domain_xml(name, kernel, initramfs, results, console, filesystem):
    """A TCG domain booting the test guest; the guest powers off when its script ends."""
    plumbing = [
        "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot,bus=pci.0,addr=0x10",
        "-fsdev", f"local,id=results,path={results},security_model=none",
        "-device", "virtio-9p-pci,fsdev=results,mount_tag=results,bus=pci.0,addr=0x11",
    ]
    args = "".join(f"<qemu:arg value={quoteattr(a)}/>" for a in plumbing)
    return f"""<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <memory unit='MiB'>1024</memory>
  <vcpu>2</vcpu>
  <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(kernel.vmlinuz))}</kernel>
    <initrd>{escape(str(initramfs))}</initrd>
    <cmdline>{escape(guest.KERNEL_CMDLINE)}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>
  <devices>
    {filesystem}
    <serial type='file'><source path={quoteattr(str(console))}/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>{args}</qemu:commandline>
</domain>
"""


FILE_WORK = '''set -e
cd "$FASTVFS_MNT"
cat from-host
echo written > from-guest
mkdir -p dir/sub
mv from-guest dir/renamed
"$FASTVFS_PYTHON" -c "import os; os.setxattr('dir/renamed', 'user.k', b'v')"
ls dir
'''


def run_domain(tmp_path, guest_images, binary_xml):
    kernel, initramfs = guest_images
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "from-host").write_text("hello guest\n")
    results = tmp_path / "results"
    results.mkdir()
    guest.write_control(results, FILE_WORK,
                        guest.GuestConfig(vhost_user_socket="libvirt", tag="fastvfs"))
    console = tmp_path / "console.log"
    name = f"fastvfs-{uuid.uuid4().hex[:8]}"
    filesystem = f"""<filesystem type='mount' accessmode='passthrough'>
      <driver type='virtiofs' queue='1024'/>
      {binary_xml}
      <source dir={quoteattr(str(shared))}/>
      <target dir='fastvfs'/>
    </filesystem>"""
    xml = tmp_path / "domain.xml"
    xml.write_text(domain_xml(name, kernel, initramfs, results, console, filesystem))
    daemon_log = LOG_DIR / f"{name}-fs0-virtiofsd.log"
    created = virsh("create", str(xml), check=False)
    try:
        assert created.returncode == 0, (
            f"virsh create failed:\n{created.stdout}{created.stderr}\n--- virtiofsd log ---\n"
            f"{daemon_log.read_text(errors='replace') if daemon_log.exists() else '(none)'}")
        deadline = time.monotonic() + GUEST_TIMEOUT
        # A transient domain disappears once the guest powers off (ACPI), soon after the
        # script has left its status.
        while virsh("domstate", name, check=False).returncode == 0:
            if (results / guest.CONTROL / "boot-0" / "status").exists():
                deadline = min(deadline, time.monotonic() + 30)
            if time.monotonic() > deadline:
                pytest.fail(f"the domain did not finish in {GUEST_TIMEOUT}s:\n"
                            f"{console.read_text(errors='replace')}")
            time.sleep(1)
    finally:
        virsh("destroy", name, check=False)
    log = daemon_log.read_text(errors="replace") if daemon_log.exists() else ""
    record = results / guest.CONTROL / "boot-0"
    status = (record / "status").read_text().strip() if (record / "status").exists() else None
    detail = (f"--- guest console ---\n{console.read_text(errors='replace')[-4000:]}\n"
              f"--- script stderr ---\n{(record / 'stderr').read_text() if status else ''}\n"
              f"--- virtiofsd log ---\n{log}")
    assert status == "0", detail
    assert (record / "stdout").read_text().split() == ["hello", "guest", "renamed", "sub"], detail
    assert not (shared / "from-guest").exists()
    assert (shared / "dir" / "renamed").read_text() == "written\n"
    assert (shared / "dir" / "sub").is_dir()
    assert os.getxattr(shared / "dir" / "renamed", "user.k") == b"v"
    assert "imported inside the sandbox" not in log, log
    assert "Traceback" not in log, log
    domain_log = LOG_DIR / f"{name}.log"
    return log, domain_log.read_text(errors="replace") if domain_log.exists() else ""


def test_libvirt_domain_with_binary_path(libvirt, guest_images, tmp_path):
    """``<binary path='…/fastvfs' xattr='on'>`` with a cache mode, the namespace sandbox and a
    thread pool: libvirt sends its own argument vector (--fd=N -o source=…,cache=…,
    sandbox=…,xattr --thread-pool-size=N on a libvirt without separate options)."""
    binary = fastvfs_binary(tmp_path)
    log, domain_log = run_domain(
        tmp_path, guest_images, f"""<binary path={quoteattr(binary)} xattr='on'>
        <cache mode='always'/>
        <sandbox mode='namespace'/>
        <thread_pool size='2'/>
      </binary>""")
    # libvirt logs the command it ran in the domain's log, then the daemon's own lines follow.
    assert f"{binary} --fd=" in domain_log, domain_log
    assert "frontend connected" in log and "FUSE session started" in log, log


def test_libvirt_domain_finds_the_descriptor(libvirt, guest_images, tmp_path):
    """No ``<binary path>``: libvirt takes the first vhost-user ``fs`` descriptor in its search
    path.  fastvfs installs 90-fastvfs.json, which sorts after a distribution's
    50-qemu-virtiofsd.json, so this only runs where no other fs descriptor is installed."""
    others = [str(p) for d in VHOST_USER_DIRS if Path(d).is_dir()
              for p in sorted(Path(d).glob("*.json"))
              if '"fs"' in p.read_text() and "fastvfs" not in p.name]
    if others:
        pytest.skip(f"another vhost-user fs descriptor comes first: {', '.join(others)}")
    installed = [p for d in VHOST_USER_DIRS for p in Path(d).glob("*fastvfs*.json")]
    if not installed:
        pytest.skip("no fastvfs descriptor installed (fastvfs descriptor --install DIR)")
    run_domain(tmp_path, guest_images, "")
