"""Serve a directory to a real Linux guest and show it working (``make demo``).

Starts the fastvfs daemon on a fresh socket, boots the test guest (QEMU + Debian kernel) with a
vhost-user-fs device on it, mounts the share with ``mount -t virtiofs`` and does ordinary file
work there; then checks from the host that every result is really in the shared directory and
that the daemon exited cleanly when QEMU went away.
"""

import argparse
import hashlib
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from . import guest

GUEST_SCRIPT = r"""
set -e
cd "$FASTVFS_MNT"
echo "== guest kernel: $(uname -r)"
grep " $FASTVFS_MNT " /proc/mounts
echo "== write, append, read back"
echo "written in the guest" > hello.txt
echo "appended line" >> hello.txt
cat hello.txt
echo "== a directory, a rename, links"
mkdir -p demo/sub
mv hello.txt demo/sub/hello.txt
ln demo/sub/hello.txt demo/hardlink.txt
ln -s sub/hello.txt demo/symlink.txt
ls -la demo demo/sub
echo "== 16 MiB through the data path"
dd if=/dev/urandom of=demo/random.bin bs=1M count=16 2>/dev/null
sha256sum demo/random.bin | tee demo/random.sha256
echo "== copy of a source tree and a recursive compare"
cp -a "$DEMO_TREE" demo/tree
diff -r "$DEMO_TREE" demo/tree && echo "tree identical: $(find demo/tree -type f | wc -l) files"
echo "== statfs"
df -h "$FASTVFS_MNT"
sync
"""


def wait_for_socket(path, proc, timeout=30):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the daemon did not create {path}")
        time.sleep(0.05)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastvfs_testing.demo", description=__doc__)
    p.add_argument("--shared-dir", help="directory to share (default: a new temporary one)")
    p.add_argument("--cache", default="auto", choices=["never", "auto", "always"])
    p.add_argument("--queues", type=int, default=1, help="virtio-fs request queues")
    p.add_argument("--tree", default=os.path.join(sysconfig.get_paths()["stdlib"], "json"),
                   help="host source tree the guest copies into the share")
    args = p.parse_args(argv)

    print("preparing the guest kernel and initramfs ...", flush=True)
    kernel = guest.ensure_kernel()
    initramfs = guest.build_initramfs(kernel)
    shared = Path(args.shared_dir or tempfile.mkdtemp(prefix="fastvfs-demo-"))
    shared.mkdir(parents=True, exist_ok=True)
    sock = os.path.join(tempfile.mkdtemp(prefix="fastvfs-sock-"), "vhost-fs.sock")
    daemon = subprocess.Popen([sys.executable, "-m", "fastvfs", "--socket-path", sock,
                               "--shared-dir", str(shared), "--cache", args.cache])
    try:
        wait_for_socket(sock, daemon)
        print(f"fastvfs (pid {daemon.pid}) serves {shared} on {sock}; booting the guest ...",
              flush=True)
        result = guest.run_guest(GUEST_SCRIPT, vhost_user_socket=sock, kernel=kernel,
                                 initramfs=initramfs, num_request_queues=args.queues,
                                 env={"DEMO_TREE": args.tree}, timeout=600)
        print(result.stdout, end="")
        print(result.stderr, end="", file=sys.stderr)
        status = daemon.wait(timeout=30)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()

    checks = [
        ("guest script succeeded", result.returncode == 0),
        ("daemon exited with status 0 when QEMU went away", status == 0),
        ("socket removed", not os.path.exists(sock)),
        ("file written in the guest is on the host",
         (shared / "demo/sub/hello.txt").read_text() == "written in the guest\nappended line\n"
         if (shared / "demo/sub/hello.txt").exists() else False),
        ("hard link shares the inode",
         (shared / "demo/hardlink.txt").exists() and
         os.stat(shared / "demo/hardlink.txt").st_ino == os.stat(shared / "demo/sub/hello.txt").st_ino),
        ("symlink target", os.path.islink(shared / "demo/symlink.txt") and
         os.readlink(shared / "demo/symlink.txt") == "sub/hello.txt"),
        ("16 MiB file checksum matches the guest's",
         (shared / "demo/random.sha256").exists() and
         (shared / "demo/random.sha256").read_text().split()[0] == sha256(shared / "demo/random.bin")),
        ("copied tree identical on the host",
         (shared / "demo/tree").is_dir() and
         subprocess.run(["diff", "-r", args.tree, str(shared / "demo/tree")],
                        stdout=subprocess.DEVNULL).returncode == 0),
    ]
    print("\n== checked from the host")
    for name, ok in checks:
        print(f"  [{'ok' if ok else 'FAILED'}] {name}")
    for boot in result.boots:
        print(f"guest boot {boot.index}: script started {boot.script_start:.1f}s after QEMU "
              f"started and ran {boot.script_time:.1f}s (TCG, no KVM)")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
