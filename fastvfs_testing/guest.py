"""Boot a throw-away Linux guest under QEMU to exercise a virtio-fs backend for real.

The guest is deliberately minimal and generic:

* the kernel is Debian's stock amd64 kernel, fetched with ``apt-get download`` and unpacked into a
  cache directory (never installed on the host);
* the initramfs holds only a static busybox, the virtio/FUSE/9p modules and an ``/init`` script;
* the host's ``/`` is exported read-only over virtio-9p; the guest lays a tmpfs over it (overlayfs)
  and ``chroot``\\ s there, so a guest script can use the host's python3, coreutils, fio, checkout
  ... at their host paths without building a disk image, and its writes stay in guest memory;
* a second, writable 9p share (the *results* share) carries the run's configuration and script in
  and the script's exit status and output back out.

Everything specific to one run lives in the results share, so the initramfs is built once per kernel
and reused. Inside the guest the script sees:

``FASTVFS_MNT``      where the tested filesystem (virtio-fs or 9p) is mounted (/fastvfs/mnt),
``FASTVFS_RESULTS``  a writable directory that appears on the host as the results directory,
``FASTVFS_BOOT``     0 on the first boot, 1 after the first reboot, ...,
``FASTVFS_PYTHON``   the host interpreter that launched the guest (also first on ``PATH``).

Run ``python -m fastvfs_testing.guest --help`` for manual use.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import gzip
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from fastvfs_testing import procstate

QEMU = "qemu-system-x86_64"
BUSYBOX = "/bin/busybox"
KERNEL_META_PACKAGE = "linux-image-amd64"

# What the guest needs for a virtio-fs device, the 9p shares and its overlay root; modules.dep
# adds the rest (netfs, and before Linux 6.8 fscache, which then became part of netfs).
GUEST_MODULES = ("virtio_pci", "virtiofs", "fuse", "9p", "9pnet_virtio", "overlay")

GUEST_MNT = "/fastvfs/mnt"
GUEST_RESULTS = "/fastvfs/results"
NINEP_MOUNT_OPTIONS = "trans=virtio,version=9p2000.L,msize=524288,cache=mmap"
KERNEL_CMDLINE = "console=ttyS0 quiet panic=-1 mitigations=off"

# Name of the control directory inside the results share (init.conf, env.sh, script, boot-N/).
CONTROL = ".fastvfs"

# PID 1 of the guest. It only knows the fixed share tags; per-run settings come from init.conf.
# The marker lines ("fastvfs-init: script start boot=N") are timestamped by the host.
INIT_SCRIPT = r"""#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

say() { echo "fastvfs-init: $*"; }
die() { say "error: $*"; sync; poweroff -f; }

modprobe -a virtio_pci 9pnet_virtio 9p virtiofs overlay || die "cannot load modules"
P9=trans=virtio,version=9p2000.L,msize=524288
# The host root is cached (fast program start-up): host-side changes made during the run may go
# unseen. The results share is uncached.
mount -t 9p -o $P9,cache=loose,ro hostroot /hostroot || die "cannot mount the host root"
mount -t 9p -o $P9 results /results || die "cannot mount the results share"
C=/results/.fastvfs
. $C/init.conf

# Each boot leaves a record; the first free number is this boot's.
boot=0
while [ -e $C/boot-$boot ]; do boot=$((boot + 1)); done
[ "$boot" -lt "$BOOTS" ] || die "unexpected boot $boot: the guest rebooted on its own (panic?)"
rec=$C/boot-$boot
mkdir $rec

# The script's root: the whole host tree, writable through a tmpfs layer that hides nothing.
R=/newroot
mount -t tmpfs tmpfs /rw && mkdir /rw/upper /rw/work || die "cannot mount tmpfs"
mount -t overlay -o lowerdir=/hostroot,upperdir=/rw/upper,workdir=/rw/work overlay $R ||
    die "cannot mount the overlay root"
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/shm && mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm
mkdir -p $R/fastvfs/mnt $R/fastvfs/results
mount --bind /results $R/fastvfs/results
if [ -n "$FS_TYPE" ]; then
    mount -t "$FS_TYPE" ${FS_OPTIONS:+-o "$FS_OPTIONS"} "$FS_SOURCE" $R/fastvfs/mnt ||
        die "cannot mount $FS_TYPE $FS_SOURCE"
fi

say "script start boot=$boot"
env -i FASTVFS_BOOT=$boot chroot $R /bin/sh -c \
    '. /fastvfs/results/.fastvfs/env.sh && cd / && exec /fastvfs/results/.fastvfs/script' \
    </dev/null >$rec/stdout 2>$rec/stderr
status=$?
echo $status >$rec/status
say "script end boot=$boot status=$status"

# Shut down the way a clean guest does: no stray users, then unmount (FUSE sees its files closed).
kill -KILL -1 2>/dev/null
sleep 0.2
[ -z "$FS_TYPE" ] || umount $R/fastvfs/mnt || say "umount failed"
sync
if [ $((boot + 1)) -lt "$BOOTS" ]; then reboot -f; else poweroff -f; fi
"""

_MARKER = re.compile(r"fastvfs-init: script (start|end) boot=(\d+)")


class GuestError(RuntimeError):
    """The guest could not be prepared or did not finish; ``console`` holds its serial log."""

    def __init__(self, message: str, console: str = ""):
        if console:
            tail = "\n".join(console.splitlines()[-60:])
            message = f"{message}\n--- guest console (last lines) ---\n{tail}"
        super().__init__(message)
        self.console = console


class GuestTimeout(GuestError):
    """The guest ran past its timeout and was killed."""


@dataclasses.dataclass(frozen=True)
class KernelImage:
    """An unpacked guest kernel: the bootable image and its module tree."""

    package: str
    version: str
    vmlinuz: Path
    modules_dir: Path  # .../lib/modules/<version>


@dataclasses.dataclass(frozen=True)
class GuestConfig:
    """How to launch one guest. The tested filesystem is virtio-fs when ``vhost_user_socket`` is
    set, 9p when ``ninep_dir`` is set (a baseline), and absent when neither is."""

    vhost_user_socket: str | os.PathLike | None = None
    ninep_dir: str | os.PathLike | None = None
    tag: str = "fastvfs"
    mount_options: str | None = None  # None: nothing for virtio-fs, NINEP_MOUNT_OPTIONS for 9p
    num_request_queues: int = 1
    queue_size: int = 1024
    memory: str = "1G"
    smp: int = 2
    reboots: int = 0
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    kernel: KernelImage | None = None  # None: ensure_kernel()
    initramfs: str | os.PathLike | None = None  # None: build_initramfs(kernel)
    qemu: str = QEMU
    extra_qemu_args: Sequence[str] = ()
    accel: str | None = None  # None: accelerator() (KVM where it works, else TCG)

    def __post_init__(self):
        if self.vhost_user_socket is not None and self.ninep_dir is not None:
            raise ValueError("choose either vhost_user_socket or ninep_dir, not both")
        if self.reboots < 0:
            raise ValueError("reboots must be >= 0")

    @property
    def fs_type(self) -> str:
        if self.vhost_user_socket is not None:
            return "virtiofs"
        return "9p" if self.ninep_dir is not None else ""

    @property
    def fs_options(self) -> str:
        if self.mount_options is not None:
            return self.mount_options
        return NINEP_MOUNT_OPTIONS if self.fs_type == "9p" else ""


@dataclasses.dataclass
class BootResult:
    """What the script did during one boot. Times are seconds since QEMU was started."""

    index: int
    returncode: int
    stdout: str
    stderr: str
    script_start: float | None
    script_end: float | None

    @property
    def script_time(self) -> float | None:
        if self.script_start is None or self.script_end is None:
            return None
        return self.script_end - self.script_start


@dataclasses.dataclass
class GuestResult:
    """A finished guest run; ``results_dir`` is only kept when the caller supplied it."""

    boots: list[BootResult]
    console: str
    wall_time: float
    results_dir: Path | None

    @property
    def returncode(self) -> int:
        """The first non-zero script status over all boots, else 0."""
        return next((b.returncode for b in self.boots if b.returncode), 0)

    @property
    def stdout(self) -> str:
        return "".join(b.stdout for b in self.boots)

    @property
    def stderr(self) -> str:
        return "".join(b.stderr for b in self.boots)

    @property
    def boot_time(self) -> float | None:
        """Seconds from starting QEMU to the start of the script in the first boot."""
        return self.boots[0].script_start if self.boots else None


# --- kernel and initramfs ------------------------------------------------------------------------


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The download/build cache: ``cache_dir``, else ``$FASTVFS_CACHE``, else ~/.cache/fastvfs."""
    root = cache_dir or os.environ.get("FASTVFS_CACHE") or Path.home() / ".cache" / "fastvfs"
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Serialise cache updates between concurrent test processes."""
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _run(argv: Sequence[str], **kwargs) -> str:
    """Run a helper tool, turning a failure into a GuestError that carries its output."""
    proc = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        raise GuestError(f"{shlex.join(map(str, argv))} failed ({proc.returncode}):\n"
                         f"{proc.stdout}{proc.stderr}")
    return proc.stdout


def _resolve_kernel_package(package: str) -> str:
    """Map a meta package (linux-image-amd64, linux-image-6.12-amd64) to the versioned image it
    depends on (linux-image-6.1.0-41-amd64, linux-image-6.12.118+deb12-amd64: three version
    numbers); a versioned name maps to itself. Refreshes the package lists once if the lookup
    finds nothing."""
    versioned = re.compile(r"linux-image-[0-9]+\.[0-9]+\.[0-9]\S*")
    for refresh in (False, True):
        if refresh:
            _run(["apt-get", "update"])
        proc = subprocess.run(["apt-cache", "depends", package], capture_output=True, text=True)
        if proc.returncode != 0 or not proc.stdout.strip():
            continue
        if versioned.fullmatch(package):
            return package
        match = re.search(rf"^\s*Depends:\s*({versioned.pattern})\s*$", proc.stdout, re.M)
        if match:
            return match.group(1)
    raise GuestError(f"apt cannot find a kernel image for {package}")


def ensure_kernel(cache_dir: str | os.PathLike | None = None,
                  package: str = KERNEL_META_PACKAGE) -> KernelImage:
    """Download and unpack a Debian kernel image package into the cache, once.

    The first call resolves ``package`` (by default the stock amd64 kernel), runs ``apt-get
    download`` and ``dpkg-deb -x`` and generates modules.dep (the package ships none; it is made on
    install). Later calls only read the cache record, so the kernel stays fixed until the cache is
    deleted.
    """
    root = cache_root(cache_dir)
    record = root / f"kernel-{package}.json"
    with _locked(root):
        if not record.exists():
            _fetch_kernel(root, package, record)
        info = json.loads(record.read_text())
    return KernelImage(package=info["package"], version=info["version"],
                       vmlinuz=root / info["vmlinuz"], modules_dir=root / info["modules_dir"])


def _fetch_kernel(root: Path, package: str, record: Path) -> None:
    versioned = _resolve_kernel_package(package)
    target = root / "kernels" / versioned
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        # apt drops privileges to _apt for downloads, which cannot write into root's cache.
        _run(["apt-get", "download", "-o", "APT::Sandbox::User=root", versioned], cwd=tmp)
        (deb,) = Path(tmp).glob("*.deb")
        tree = Path(tmp) / "tree"
        _run(["dpkg-deb", "-x", str(deb), str(tree)])
        modules = sorted(tree.glob("lib/modules/*")) or sorted(tree.glob("usr/lib/modules/*"))
        if len(modules) != 1:
            raise GuestError(f"{deb.name}: expected one module tree, found {modules}")
        version = modules[0].name
        _run(["depmod", "-b", str(modules[0].parent.parent.parent), version])
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        tree.rename(target)
    vmlinuz = target / "boot" / f"vmlinuz-{version}"
    if not vmlinuz.exists():
        raise GuestError(f"{versioned} has no boot/vmlinuz-{version}")
    modules_dir = next(p for p in (target / "lib/modules" / version,
                                   target / "usr/lib/modules" / version) if p.exists())
    info = {"package": versioned, "version": version,
            "vmlinuz": str(vmlinuz.relative_to(root)),
            "modules_dir": str(modules_dir.relative_to(root))}
    tmp_record = record.with_suffix(".tmp")
    tmp_record.write_text(json.dumps(info, indent=1))
    tmp_record.rename(record)


def _module_name(path: str) -> str:
    name = os.path.basename(path).split(".ko")[0]
    return name.replace("-", "_")


def module_closure(modules_dir: Path, names: Sequence[str]) -> list[str]:
    """Paths (relative to ``modules_dir``) of the named modules and everything they depend on.
    modules.dep already lists each module's full, transitive dependency set."""
    deps: dict[str, list[str]] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[_module_name(path)] = [path, *rest.split()]
    builtin = {_module_name(p) for p in (modules_dir / "modules.builtin").read_text().split()}
    closure: set[str] = set()
    for name in names:
        key = name.replace("-", "_")
        if key in deps:
            closure.update(deps[key])
        elif key not in builtin:
            raise GuestError(f"kernel {modules_dir.name} has no module {name}")
    return sorted(closure)


def _require_static(path: str) -> None:
    """The initramfs has no libc, so busybox must be the static build (no ELF interpreter)."""
    with open(path, "rb") as f:
        data = f.read(1 << 16)
    if data[:5] != b"\x7fELF\x02":
        raise GuestError(f"{path} is not a 64-bit ELF file")
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        p_type, = struct.unpack_from("<I", data, phoff + i * phentsize)
        if p_type == 3:  # PT_INTERP
            raise GuestError(f"{path} is dynamically linked; install busybox-static")


def build_initramfs(kernel: KernelImage, *, modules: Sequence[str] = GUEST_MODULES,
                    busybox: str = BUSYBOX, cache_dir: str | os.PathLike | None = None) -> Path:
    """Build (or reuse) the gzip'd newc initramfs for ``kernel``.

    The file name carries a hash of every input (init script, busybox, module files), so a change
    to any of them yields a new image and an unchanged set reuses the cached one.
    """
    _require_static(busybox)
    root = cache_root(cache_dir)
    files = module_closure(kernel.modules_dir, modules)
    digest = hashlib.sha256()
    for blob in (INIT_SCRIPT.encode(), kernel.version.encode(), Path(busybox).read_bytes()):
        digest.update(hashlib.sha256(blob).digest())
    for rel in files:
        digest.update(rel.encode() + b"\0" + (kernel.modules_dir / rel).read_bytes())
    image = root / f"initramfs-{kernel.version}-{digest.hexdigest()[:16]}.cpio.gz"
    with _locked(root):
        if not image.exists():
            _write_initramfs(kernel, files, busybox, image)
    return image


def _write_initramfs(kernel: KernelImage, files: Sequence[str], busybox: str, image: Path) -> None:
    with tempfile.TemporaryDirectory(dir=image.parent) as tmp:
        stage = Path(tmp) / "stage"
        bindir = stage / "bin"
        bindir.mkdir(parents=True)
        for d in ("proc", "sys", "dev", "hostroot", "results", "rw", "newroot"):
            (stage / d).mkdir()
        shutil.copy(busybox, bindir / "busybox")
        for applet in _run([busybox, "--list"]).split():
            if applet != "busybox":
                (bindir / applet).symlink_to("busybox")
        init = stage / "init"
        init.write_text(INIT_SCRIPT)
        init.chmod(0o755)
        moddir = stage / "lib" / "modules" / kernel.version
        for rel in files + ["modules.order", "modules.builtin", "modules.builtin.modinfo"]:
            (moddir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(kernel.modules_dir / rel, moddir / rel)
        _run(["depmod", "-b", str(stage), kernel.version])
        names = sorted(str(p.relative_to(stage)) for p in stage.rglob("*"))
        archive = subprocess.run(
            ["cpio", "--create", "--format=newc", "--owner=0:0", "--reproducible", "--null",
             "--quiet"],
            input="\0".join(names).encode(), cwd=stage, capture_output=True, check=True).stdout
        partial = Path(tmp) / "initramfs"
        with gzip.GzipFile(partial, "wb", mtime=0) as out:
            out.write(archive)
        partial.rename(image)


# --- launching -----------------------------------------------------------------------------------


_ACCEL = None


def accelerator(kernel: KernelImage | None = None, initramfs=None) -> str:
    """``"kvm"`` where /dev/kvm really runs guests, else ``"tcg"``.

    ``FASTVFS_ACCEL=kvm|tcg`` decides outright.  Otherwise a KVM guest is booted once (it must
    reach its script and power off within 30 s: nested KVM can exist yet hang at boot) and the
    answer is cached per host kernel in the download cache.
    """
    global _ACCEL
    forced = os.environ.get("FASTVFS_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced
    if _ACCEL is not None:
        return _ACCEL
    if not os.access("/dev/kvm", os.R_OK | os.W_OK) or kernel is None:
        _ACCEL = "tcg"
        return _ACCEL
    marker = cache_root() / f"accel-{os.uname().release}"
    if marker.exists():
        _ACCEL = marker.read_text().strip()
        return _ACCEL
    _ACCEL = "tcg"   # while probing, and if the probe fails
    try:
        result = run_guest("true", kernel=kernel, initramfs=initramfs, accel="kvm", timeout=30)
        answer = "kvm" if result.returncode == 0 else "tcg"
    except (GuestError, OSError):
        answer = "tcg"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(answer + "\n")
    _ACCEL = answer
    return answer


def qemu_command(config: GuestConfig, kernel: KernelImage, initramfs: str | os.PathLike,
                 results_dir: str | os.PathLike) -> list[str]:
    """The QEMU command line for ``config``.

    vhost-user needs guest RAM the backend can map: a shared memfd backend bound to the NUMA
    node. ``-no-reboot`` turns any reboot (including panic=-1) into QEMU exiting, which is what a
    single-boot run wants; reboot runs leave it out so the machine resets and QEMU stays alive
    (the backend then sees the device stop and a fresh FUSE_INIT), and /init stops after the last
    expected boot instead.
    """
    cmd = [
        config.qemu, "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
        "-accel", "kvm" if (config.accel or accelerator(kernel, initramfs)) == "kvm"
        else "tcg,thread=multi", "-cpu", "max", "-smp", str(config.smp),
        "-m", config.memory,
        "-object", f"memory-backend-memfd,id=mem,size={config.memory},share=on",
        "-numa", "node,memdev=mem",
        "-kernel", str(kernel.vmlinuz), "-initrd", str(initramfs), "-append", KERNEL_CMDLINE,
        "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
        "-fsdev", f"local,id=results,path={results_dir},security_model=none",
        "-device", "virtio-9p-pci,fsdev=results,mount_tag=results",
    ]
    if config.vhost_user_socket is not None:
        device = f"vhost-user-fs-pci,chardev=vufs,tag={config.tag},queue-size={config.queue_size}"
        if config.num_request_queues != 1:
            device += f",num-request-queues={config.num_request_queues}"
        cmd += ["-chardev", f"socket,id=vufs,path={config.vhost_user_socket}", "-device", device]
    elif config.ninep_dir is not None:
        cmd += ["-fsdev", f"local,id=shared,path={config.ninep_dir},security_model=none,"
                          "multidevs=remap",
                "-device", f"virtio-9p-pci,fsdev=shared,mount_tag={config.tag}"]
    if config.reboots == 0:
        cmd.append("-no-reboot")
    return cmd + list(config.extra_qemu_args)


def _shell_assignments(values: Mapping[str, str], export: bool) -> str:
    prefix = "export " if export else ""
    return "".join(f"{prefix}{k}={shlex.quote(str(v))}\n" for k, v in values.items())


def write_control(results_dir: Path, script_text: str, config: GuestConfig) -> None:
    """Put the run's settings where the generic /init finds them."""
    control = results_dir / CONTROL
    control.mkdir()
    (control / "init.conf").write_text(_shell_assignments(
        {"BOOTS": config.reboots + 1, "FS_TYPE": config.fs_type, "FS_SOURCE": config.tag,
         "FS_OPTIONS": config.fs_options}, export=False))
    pydir = os.path.dirname(sys.executable)
    env = {"PATH": f"{pydir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": "/root", "LANG": "C.UTF-8", "FASTVFS_RESULTS": GUEST_RESULTS,
           "FASTVFS_PYTHON": sys.executable}
    if config.fs_type:
        env["FASTVFS_MNT"] = GUEST_MNT
    env.update(config.env)
    (control / "env.sh").write_text(_shell_assignments(env, export=True))
    script = control / "script"
    script.write_text(script_text)
    script.chmod(0o755)


class Guest:
    """A running guest. Use as a context manager: leaving it kills QEMU if it is still running.

    ``script_text`` runs inside the guest's chroot of the host root; with a ``#!`` line it runs
    under that interpreter, otherwise under /bin/sh.
    """

    def __init__(self, script_text: str, config: GuestConfig,
                 results_dir: str | os.PathLike | None = None):
        self.config = config
        kernel = config.kernel or ensure_kernel()
        initramfs = config.initramfs or build_initramfs(kernel)
        if results_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fastvfs-guest-")
            self.results_dir = Path(self._tmp.name)
        else:
            self._tmp = None
            self.results_dir = Path(results_dir)
            self.results_dir.mkdir(parents=True, exist_ok=True)
        write_control(self.results_dir, script_text, config)
        self.command = qemu_command(config, kernel, initramfs, self.results_dir)
        self._console: list[str] = []
        self._markers: dict[tuple[str, int], float] = {}
        self._changed = threading.Condition()
        self.started = time.monotonic()
        try:
            self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        except OSError:
            if self._tmp is not None:
                self._tmp.cleanup()
            raise
        self._reader = threading.Thread(target=self._read_console, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def console(self) -> str:
        with self._changed:
            return "".join(self._console)

    def _read_console(self) -> None:
        """Keep the serial log and timestamp /init's marker lines as they arrive."""
        for raw in self.process.stdout:
            line = raw.decode(errors="replace")
            now = time.monotonic() - self.started
            with self._changed:
                self._console.append(line)
                match = _MARKER.search(line)
                if match:
                    self._markers[(match.group(1), int(match.group(2)))] = now
                self._changed.notify_all()
        with self._changed:  # wake waiters: QEMU has gone
            self._changed.notify_all()

    def wait_for_script(self, boot: int = 0, timeout: float = 120) -> float:
        """Block until the script of ``boot`` has started; returns seconds since QEMU started.
        Raises GuestError if QEMU exits first or the timeout passes."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while ("start", boot) not in self._markers:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    console = "".join(self._console)
                    break
                if not self._reader.is_alive():
                    raise GuestError(f"QEMU exited before boot {boot} reached its script",
                                     "".join(self._console))
                self._changed.wait(min(remaining, 0.5))
            else:
                return self._markers[("start", boot)]
        # Read outside the lock: the console reader must not wait on it meanwhile.
        raise GuestTimeout(f"boot {boot} did not reach its script in {timeout}s\n"
                           f"{self._threads()}", console)

    def _threads(self) -> str:
        """Where QEMU's threads wait (``procstate.report``), or why that cannot be read."""
        try:
            return procstate.report(self.process.pid, "QEMU")
        except Exception as exc:  # the report must never cost the diagnosis it serves
            return f"--- QEMU's threads could not be read: {exc!r} ---"

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal QEMU (SIGKILL by default: the abrupt disconnect a backend must survive)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def wait(self, timeout: float = 600) -> GuestResult:
        """Wait for QEMU to exit and collect every boot's record. On timeout QEMU is killed and
        GuestTimeout raised; a guest that stops before its last boot raises GuestError."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            # Where QEMU's threads wait tells a guest stuck on its backend (a vhost-user read)
            # from one stuck on its own.
            threads = self._threads()
            self.kill()
            self.process.wait()
            self._reader.join()
            raise GuestTimeout(f"guest did not finish within {timeout}s\n{threads}",
                               self.console) from None
        wall = time.monotonic() - self.started
        self._reader.join()
        console = self.console
        boots = [self._boot_result(i) for i in range(self.config.reboots + 1)]
        if self.process.returncode != 0:
            raise GuestError(f"QEMU exited with status {self.process.returncode}", console)
        missing = [i for i, b in enumerate(boots) if b is None]
        if missing:
            raise GuestError(f"boot {missing[0]} of the guest left no exit status", console)
        return GuestResult(boots=boots, console=console, wall_time=wall,
                           results_dir=None if self._tmp else self.results_dir)

    def _boot_result(self, index: int) -> BootResult | None:
        record = self.results_dir / CONTROL / f"boot-{index}"
        try:
            status = int((record / "status").read_text())
        except (FileNotFoundError, ValueError):
            return None
        return BootResult(index=index, returncode=status,
                          stdout=(record / "stdout").read_text(errors="replace"),
                          stderr=(record / "stderr").read_text(errors="replace"),
                          script_start=self._markers.get(("start", index)),
                          script_end=self._markers.get(("end", index)))

    def close(self) -> None:
        """Kill QEMU if needed and drop a temporary results directory."""
        if self.process.poll() is None:
            self.kill()
            self.process.wait()
        self._reader.join()
        self.process.stdout.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> Guest:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def start_guest(script_text: str, *, results_dir: str | os.PathLike | None = None,
                **options) -> Guest:
    """Start a guest running ``script_text`` and return at once; ``options`` are GuestConfig
    fields. For tests that act while the guest runs (e.g. SIGKILL QEMU mid-workload)."""
    return Guest(script_text, GuestConfig(**options), results_dir)


def run_guest(script_text: str, *, timeout: float = 600,
              results_dir: str | os.PathLike | None = None, **options) -> GuestResult:
    """Boot a guest, run ``script_text`` (once per boot), wait for power-off and return what
    happened. ``options`` are GuestConfig fields (vhost_user_socket, tag, num_request_queues,
    queue_size, memory, reboots, ninep_dir, mount_options, env, ...)."""
    with start_guest(script_text, results_dir=results_dir, **options) as guest:
        return guest.wait(timeout)


# --- command line --------------------------------------------------------------------------------


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fastvfs_testing.guest",
        description="Boot a test guest (TCG) and run a script in it; the script sees the tested "
                    "filesystem at $FASTVFS_MNT. Prints the script's output and exits with its "
                    "status.")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("-c", dest="command", help="shell command to run in the guest")
    what.add_argument("--script", type=Path, help="file to run in the guest")
    fs = parser.add_mutually_exclusive_group()
    fs.add_argument("--socket", help="vhost-user socket of a virtio-fs backend")
    fs.add_argument("--ninep-dir", help="share this host directory over 9p instead")
    parser.add_argument("--tag", default="fastvfs")
    parser.add_argument("--mount-options", help="options for mounting the tested filesystem")
    parser.add_argument("--queues", type=int, default=1, help="virtio-fs request queues")
    parser.add_argument("--queue-size", type=int, default=1024)
    parser.add_argument("--memory", default="1G")
    parser.add_argument("--smp", type=int, default=2)
    parser.add_argument("--reboots", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--results-dir", help="keep the results share here")
    parser.add_argument("--cache-dir", help="kernel/initramfs cache (default $FASTVFS_CACHE or "
                                            "~/.cache/fastvfs)")
    parser.add_argument("--kernel-package", default=KERNEL_META_PACKAGE,
                        help="the Debian package of the guest kernel, a meta package such as "
                             "linux-image-6.12-amd64 (bookworm-security) or a versioned one "
                             f"(default {KERNEL_META_PACKAGE})")
    parser.add_argument("--console", action="store_true", help="print the serial console log")
    parser.add_argument("--prepare", action="store_true",
                        help="only fetch the kernel and build the initramfs, print their paths")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    kernel = ensure_kernel(args.cache_dir, args.kernel_package)
    initramfs = build_initramfs(kernel, cache_dir=args.cache_dir)
    if args.prepare:
        print(f"kernel {kernel.version}: {kernel.vmlinuz}\ninitramfs: {initramfs}")
        return 0
    if args.script:
        script = args.script.read_text()
    else:
        script = args.command or 'uname -r; [ -z "$FASTVFS_MNT" ] || df -h "$FASTVFS_MNT"'
    try:
        result = run_guest(
            script, timeout=args.timeout, results_dir=args.results_dir,
            vhost_user_socket=args.socket, ninep_dir=args.ninep_dir, tag=args.tag,
            mount_options=args.mount_options, num_request_queues=args.queues,
            queue_size=args.queue_size, memory=args.memory, smp=args.smp, reboots=args.reboots,
            kernel=kernel, initramfs=initramfs)
    except GuestError as exc:
        print(exc, file=sys.stderr)
        return 125
    if args.console:
        print(result.console, file=sys.stderr)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    for boot in result.boots:
        print(f"boot {boot.index}: script started at {boot.script_start:.1f}s, ran "
              f"{boot.script_time:.1f}s, status {boot.returncode}", file=sys.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
