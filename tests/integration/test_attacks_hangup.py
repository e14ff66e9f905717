"""The frontend going away, against a daemon with its defaults (``--sandbox namespace
--seccomp kill``): whichever way the control socket ends (an orderly close, a reset as when
the VMM is killed, mid-session with the rings running), the daemon ends promptly, with status
0 and without a Python traceback.  Each test is a row of the table in SECURITY.md."""

import os
import select
import stat
import time

import pytest

from fastvfs.fuse import abi
from fastvfs.fuse.abi import Opcode
from fastvfs.vhost_user.protocol import Request

from .test_attacks import fastvfs  # noqa: F401  (fixture)

ROOT = abi.FUSE_ROOT_ID
EXIT_WITHIN = 2.0


def _wait_exit(process, within):
    """Seconds until ``process`` exits (pytest.fail past ``within``)."""
    start = time.monotonic()
    while process.poll() is None:
        elapsed = time.monotonic() - start
        if elapsed > within:
            pytest.fail(f"the daemon is still running {elapsed:.1f} s after the hang-up")
        time.sleep(0.01)
    return time.monotonic() - start


def _log(launcher):
    return (launcher.tmp_path / f"backend{len(launcher._runs) - 1}.log").read_text(
        errors="replace")


def _hang_up(frontend, reset):
    """Close the frontend's control socket.  With ``reset``, a reply is left unread first:
    closing a Unix stream socket with data still queued for it makes the peer's next read fail
    with ECONNRESET, which is what a killed VMM leaves."""
    sock = frontend.sock
    if reset:
        frontend.send(Request.GET_FEATURES)
        select.select([sock], [], [], 5)
    frontend.sock = None
    sock.close()


@pytest.mark.parametrize("reset", [False, True], ids=["close", "reset"])
@pytest.mark.parametrize("when", ["after-init", "with-open-files", "requests-in-flight",
                                  "rings-stopped"])
def test_hang_up_ends_the_daemon_promptly_and_cleanly(fastvfs, reset, when):
    frontend, client, shared = fastvfs()
    if when == "with-open-files":
        (shared / "f").write_bytes(b"x" * 4096)
        nid = client.lookup(ROOT, "f").nodeid
        fh = client.open(nid).fh
        assert client.read(nid, fh, 0, 4096) == b"x" * 4096
    if when == "requests-in-flight":
        (shared / "f").write_bytes(os.urandom(1 << 20))
        nid = client.lookup(ROOT, "f").nodeid
        fh = client.open(nid).fh
        for i in range(64):
            client.submit(Opcode.READ, nid, abi.read_in.pack(fh, i << 14, 65536, 0, 0, 0, 0),
                          data_len=65536)
        client.publish()
    if when == "rings-stopped":
        # A VMM quitting in order stops its rings first (vhost_dev_stop), then closes.
        for index in range(len(frontend.queues)):
            frontend.enable_queue(index, False)
            frontend.stop_queue(index)
    _hang_up(frontend, reset)
    _wait_exit(fastvfs.process, EXIT_WITHIN)
    log = _log(fastvfs)
    assert fastvfs.process.returncode == 0, log
    assert "Traceback" not in log, log
    assert "frontend disconnected" in log or "connection reset" in log.lower(), log


def test_create_on_a_fifo_never_blocks_a_worker_and_hang_up_still_ends(fastvfs):
    """A FIFO opened for reading blocks until a writer comes: CREATE of a guest-made FIFO
    (without O_EXCL) is refused at once, the queue keeps serving, and a hang-up then ends the
    daemon promptly."""
    frontend, client, shared = fastvfs()
    client.timeout = 3
    client.mknod(ROOT, "fifo", stat.S_IFIFO | 0o666)
    start = time.monotonic()
    for flags in (os.O_RDONLY, os.O_WRONLY, os.O_RDONLY | os.O_NONBLOCK):
        with pytest.raises(OSError) as exc:
            client.create(ROOT, "fifo", flags)
        assert exc.value.errno is not None, exc.value  # an error reply, not a timeout
    assert time.monotonic() - start < 2
    assert client.getattr(ROOT).attr.mode & 0o170000 == 0o040000
    _hang_up(frontend, reset=False)
    _wait_exit(fastvfs.process, EXIT_WITHIN)
    assert fastvfs.process.returncode == 0
