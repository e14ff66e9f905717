"""A real guest served by a daemon run as an unprivileged user, with its default sandbox.

QEMU runs as root here; only the daemon is unprivileged (libvirt's session mode runs both as
the user).  The guest's root does ordinary file work on the share, and the host sees every new
object owned by the daemon's user."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from fastvfs_testing import guest
from fastvfs_testing.unprivileged import ensure_user, unprivileged_argv
from tests.guest.conftest import Backend

pytestmark = pytest.mark.guest

SCRIPT = r'''set -e
cd "$FASTVFS_MNT"
echo "from guest" > file
cat file
mkdir dir
mv file dir/moved
cat dir/moved
echo "more" >> dir/moved
mkdir keep
echo kept > keep/data
ln -s data keep/link
rm dir/moved
rmdir dir
stat -c '%u %g %n' keep/data keep/link
cat /proc/mounts | grep -c " $FASTVFS_MNT virtiofs "
'''


def test_unprivileged_daemon_serves_a_guest(guest_images, backend_cmd, tmp_path):
    kernel, initramfs = guest_images
    uid, gid = ensure_user()
    top = Path(tempfile.mkdtemp(prefix="fvfs-rlg-"))
    try:
        os.chmod(top, 0o755)
        shared, sockdir, hold = top / "shared", top / "sock", top / "hold"
        for d in (shared, sockdir, hold):
            d.mkdir()
        for d in (shared, sockdir):
            os.chown(d, uid, gid)
        (shared / "from-host").write_text("host data\n")
        os.chown(shared / "from-host", uid, gid)
        sock = sockdir / "vfs.sock"
        argv = unprivileged_argv(backend_cmd(sock, shared, "auto", ["--log-level", "debug"]),
                                 uid, gid, str(hold))
        backend = Backend(argv, sock, tmp_path / "backend.log")
        try:
            backend.wait_ready()
            result = guest.run_guest(SCRIPT + 'cat "$FASTVFS_MNT/from-host"\n',
                                     vhost_user_socket=sock, kernel=kernel,
                                     initramfs=initramfs, timeout=300)
            print(backend.log)
        finally:
            backend.stop()
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[:2] == ["from guest", "from guest"]
        # The guest's root is the user's uid and gid inside the daemon's user namespace: 0.
        assert lines[2:4] == ["0 0 keep/data", "0 0 keep/link"]
        assert lines[4:] == ["1", "host data"]
        assert sorted(os.listdir(shared)) == ["from-host", "keep"]
        for path in (shared / "keep", shared / "keep" / "data", shared / "keep" / "link"):
            st = os.lstat(path)
            assert (st.st_uid, st.st_gid) == (uid, gid), path
        assert (shared / "keep" / "data").read_text() == "kept\n"
        assert "user namespace: uid map 0 %d 1" % uid in backend.log
    finally:
        shutil.rmtree(top, ignore_errors=True)
