"""Escape attempts, faults, and a sustained barrage against a sandboxed daemon (the defaults:
``--sandbox namespace --seccomp kill``), driven by the frontend driver.  Each test is a row of
the table in SECURITY.md."""

import errno
import os
import random
import signal
import stat
import subprocess
import time

import pytest

from fastvfs.fuse import abi
from fastvfs.fuse.abi import Opcode
from fastvfs_testing.fuse_client import FuseProtocolError
from fastvfs_testing.virtq import VRING_DESC_F_NEXT, VRING_DESC_F_WRITE
from fastvfs.vhost_user import protocol
from fastvfs.vhost_user.protocol import Request

from .conftest import BackendLauncher, BackendSpec, _launcher
from .test_hostile import BAD_MESSAGES, NEED_REPLY, still_serving
from tests.deployed import FASTVFS

ROOT = abi.FUSE_ROOT_ID
BARRAGE_SECONDS = float(os.environ.get("FASTVFS_BARRAGE_SECONDS", "60"))


@pytest.fixture
def fastvfs(tmp_path):
    yield from _launcher("fastvfs", tmp_path)


@pytest.fixture
def custom(tmp_path):
    """custom(*extra_args) -> (frontend, client, shared) with extra daemon options."""
    launchers = []

    def start(*extra, shared=None):
        import sys
        run = tmp_path / f"custom{len(launchers)}"
        run.mkdir()

        def argv(sock, shared_dir):
            return [*FASTVFS, "--socket-path", sock, "--shared-dir",
                    str(shared or shared_dir), "--cache", "never", "--log-level", "debug",
                    *extra]
        launcher = BackendLauncher("fastvfs", BackendSpec(argv), run)
        launchers.append(launcher)
        frontend, client, shared_dir = launcher()
        start.launcher = launcher
        return frontend, client, shared or shared_dir
    yield start
    for launcher in launchers:
        launcher.shutdown()


def expect_errno(err, fn, *args, **kwargs):
    with pytest.raises(OSError) as exc:
        fn(*args, **kwargs)
    assert exc.value.errno in ((err,) if isinstance(err, int) else err), exc.value


# -- escapes ---------------------------------------------------------------------------------------

def test_dotdot_never_climbs_out_of_the_share(fastvfs):
    frontend, client, shared = fastvfs()
    assert client.lookup(ROOT, "..").nodeid in (ROOT, 0) or \
        client.lookup(ROOT, "..").attr.ino == os.stat(shared).st_ino
    sub = client.mkdir(ROOT, "d").nodeid
    assert client.lookup(sub, "..").attr.ino == os.stat(shared).st_ino
    for name in ("../x", "..", "a/b", "/etc"):
        expect_errno((errno.EINVAL, errno.EEXIST, errno.EPERM, errno.ENOENT), client.mkdir,
                     ROOT, name)
    assert not os.path.exists(os.path.join(os.path.dirname(shared), "x"))


def test_bind_mount_inside_the_share_does_not_lead_out(fastvfs, tmp_path):
    frontend, client, shared = fastvfs()
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (shared / "bind").mkdir()
    if subprocess.run(["mount", "--bind", str(outside / "deep"), str(shared / "bind")]).returncode:
        pytest.skip("cannot bind mount here")
    try:
        bind = client.lookup(ROOT, "bind").nodeid
        # ".." of the bind mount's root is the share, not the bind source's parent.
        assert client.lookup(bind, "..").attr.ino == os.stat(shared).st_ino
    finally:
        subprocess.run(["umount", "-l", str(shared / "bind")])


def test_symlinks_planted_by_the_guest_are_not_followed(fastvfs, tmp_path):
    frontend, client, shared = fastvfs()
    target = tmp_path / "secret"
    target.write_text("host secret")
    link = client.symlink(ROOT, "esc", str(target)).nodeid
    expect_errno(errno.ELOOP, client.open, link, os.O_RDONLY)
    expect_errno((errno.ENOTDIR, errno.ELOOP, errno.EINVAL), client.create, link, "x")
    expect_errno((errno.ENOTDIR, errno.ELOOP, errno.EINVAL), client.mkdir, link, "x")
    assert target.read_text() == "host secret" and not (tmp_path / "secret" / "x").exists()


def test_directory_swapped_for_a_symlink_by_the_host(fastvfs, tmp_path):
    # The guest holds a node id for "d"; the host renames "d" away and puts a symlink to a
    # directory outside the share in its place.  Creating through the old node id stays in the
    # old directory; looking "d" up again gives the symlink, through which nothing is created.
    frontend, client, shared = fastvfs()
    outside = tmp_path / "target"
    outside.mkdir()
    d = client.mkdir(ROOT, "d").nodeid
    os.rename(shared / "d", shared / "moved")
    os.symlink(outside, shared / "d")
    client.create(d, "via-old-id")
    assert (shared / "moved" / "via-old-id").exists()
    new = client.lookup(ROOT, "d")
    assert stat.S_ISLNK(new.attr.mode)
    expect_errno((errno.ENOTDIR, errno.ELOOP, errno.EINVAL), client.create, new.nodeid, "x")
    assert os.listdir(outside) == []


def test_special_files_are_never_opened(fastvfs):
    frontend, client, shared = fastvfs()
    os.mkfifo(shared / "fifo")
    os.mknod(shared / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    for name in ("fifo", "null"):
        nid = client.lookup(ROOT, name).nodeid
        expect_errno((errno.EACCES, errno.EPERM, errno.EINVAL, errno.ENXIO), client.open, nid,
                     os.O_RDWR)
    still_serving(frontend, client)


def test_guest_made_device_nodes_are_not_opened(fastvfs):
    frontend, client, shared = fastvfs()
    dev = client.mknod(ROOT, "zero", stat.S_IFCHR | 0o666, os.makedev(1, 5)).nodeid
    expect_errno((errno.EACCES, errno.EPERM, errno.EINVAL), client.open, dev, os.O_RDONLY)


def test_setuid_bit_is_cleared_by_a_write(fastvfs):
    frontend, client, shared = fastvfs()
    entry, opened = client.create(ROOT, "suid", os.O_RDWR, 0o4755)
    os.chmod(shared / "suid", 0o4755)
    client.write(entry.nodeid, opened.fh, 0, b"x", write_flags=abi.FUSE_WRITE_KILL_SUIDGID)
    assert not os.stat(shared / "suid").st_mode & stat.S_ISUID


def test_mapped_xattr_names_cannot_be_forged(custom):
    rules = ":prefix:all:trusted.:user.virtiofs.::bad:client:user.virtiofs.:::ok:all:::"
    frontend, client, shared = custom("--xattrmap", rules)
    (shared / "f").write_text("x")
    nid = client.lookup(ROOT, "f").nodeid

    def setxattr(name, value=b"v"):
        client.call(Opcode.SETXATTR, nid,
                    abi.setxattr_in.pack(len(value), 0) + name + b"\0" + value)
    # The guest cannot write the host-side prefix directly ("bad" for the client).
    expect_errno((errno.EPERM, errno.EACCES, errno.ENOTSUP, errno.EINVAL), setxattr,
                 b"user.virtiofs.trusted.x")
    assert "user.virtiofs.trusted.x" not in os.listxattr(shared / "f")


# -- faults ----------------------------------------------------------------------------------------

def test_enospc_from_the_host_reaches_the_guest(custom, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        frontend, client, shared = custom(shared=small)
        entry, opened = client.create(ROOT, "big", os.O_RDWR)
        errors = set()
        for i in range(8):
            try:
                client.write(entry.nodeid, opened.fh, i * (256 << 10), os.urandom(256 << 10))
            except OSError as exc:
                errors.add(exc.errno)
        assert errno.ENOSPC in errors
        client.release(entry.nodeid, opened.fh)
        client.unlink(ROOT, "big")
        client.forget(entry.nodeid, 1)   # the last reference: the space comes back
        entry, opened = client.create(ROOT, "small", os.O_RDWR)
        assert client.write(entry.nodeid, opened.fh, 0, b"fits") == 4
    finally:
        subprocess.run(["umount", "-l", str(small)])


def test_descriptor_exhaustion_leaves_the_daemon_working(custom):
    frontend, client, shared = custom("--rlimit-nofile", "400")
    held, refused = [], 0
    for i in range(500):
        try:
            entry, opened = client.create(ROOT, f"f{i}", os.O_RDWR)
            held.append((entry.nodeid, opened.fh))
        except OSError as exc:
            assert exc.errno in (errno.EMFILE, errno.ENFILE)
            refused += 1
    assert refused and held
    # The control plane and the fast path still work: the daemon kept descriptors for itself.
    still_serving(frontend, client)
    frontend.stop_queue(1)
    frontend.start_queue(1)
    frontend.enable_queue(1)
    frontend.set_call(1)
    frontend.set_mem_table()
    nid, fh = held[0]
    assert client.write(nid, fh, 0, b"ok") == 2
    for nid, fh in held:
        client.release(nid, fh)
    entry, opened = client.create(ROOT, "after", os.O_RDWR)
    assert client.write(entry.nodeid, opened.fh, 0, b"again") == 5


def test_memory_table_changes_while_requests_are_in_flight(fastvfs):
    frontend, client, shared = fastvfs()
    data = os.urandom(1 << 20)
    (shared / "f").write_bytes(data)
    nid = client.lookup(ROOT, "f").nodeid
    fh = client.open(nid).fh
    tickets = [client.submit(Opcode.READ, nid, abi.read_in.pack(fh, i * 4096, 4096, 0, 0, 0, 0),
                             data_len=4096) for i in range(48)]
    frontend.set_mem_table()        # the same memory, sent again: rings pause and restart
    for i, t in enumerate(tickets):
        reply = client.wait(t)
        assert reply.error == 0 and reply.data == data[i * 4096:(i + 1) * 4096]
    still_serving(frontend, client)


def test_reset_device_with_requests_in_flight(fastvfs):
    frontend, client, shared = fastvfs()
    for i in range(16):
        client.submit(Opcode.GETATTR, ROOT, abi.getattr_in.pack(0, 0, 0),
                      reply_len=abi.ATTR_OUT_SIZE)
    frontend.reset_device()
    frontend.start_device()
    from fastvfs_testing.fuse_client import FuseClient
    fresh = FuseClient(frontend, timeout=10)
    fresh.init()
    assert fresh.getattr(ROOT).attr.mode & 0o170000 == 0o040000


def test_frontend_disconnect_mid_requests(fastvfs):
    frontend, client, shared = fastvfs()
    (shared / "f").write_bytes(os.urandom(1 << 20))
    nid = client.lookup(ROOT, "f").nodeid
    fh = client.open(nid).fh
    for i in range(64):
        client.submit(Opcode.READ, nid, abi.read_in.pack(fh, 0, 65536, 0, 0, 0, 0),
                      data_len=65536)
    frontend.sock.close()
    assert fastvfs.process.wait(10) == 0


def test_sigterm_during_heavy_io_keeps_fsynced_data(fastvfs):
    frontend, client, shared = fastvfs()
    entry, opened = client.create(ROOT, "data", os.O_RDWR)
    durable = os.urandom(1 << 20)
    for i in range(0, len(durable), 128 << 10):
        client.write(entry.nodeid, opened.fh, i, durable[i:i + (128 << 10)])
    client.fsync(entry.nodeid, opened.fh)
    for i in range(64):
        client.submit(Opcode.WRITE, entry.nodeid,
                      abi.write_in.pack(opened.fh, (1 << 20) + i * 65536, 65536, 0, 0, 0, 0),
                      data=os.urandom(65536), reply_len=abi.write_out.size)
    client.publish()
    fastvfs.process.send_signal(signal.SIGTERM)
    assert fastvfs.process.wait(10) == 0
    assert (shared / "data").read_bytes()[:1 << 20] == durable


# -- the barrage -----------------------------------------------------------------------------------

def _attack_messages(frontend):
    for name in ("unknown request", "short SET_FEATURES", "features never offered",
                 "ring index out of range", "queue size not a power of two", "dirty log",
                 "SET_VRING_ENABLE 7", "REM_MEM_REG of no region", "SET_MEM_TABLE 9 regions"):
        request, payload, fds = BAD_MESSAGES[name](frontend)
        frontend.send(request, payload, fds, NEED_REPLY)
        for fd in fds:
            os.close(fd)
        reply = frontend.recv_reply()
        assert protocol.u64.unpack(reply.payload)[0] != 0


def _attack_chain(frontend, rng):
    queue, mem = frontend.queues[1], frontend.memory
    header = mem.alloc(64)
    mem.write(header, abi.in_header.pack(rng.choice([40, 12, 1 << 20]), Opcode.STATFS,
                                         rng.randrange(1 << 32), ROOT, 0, 0, 0, 0, 0))
    reply = mem.alloc(128)
    N, W = VRING_DESC_F_NEXT, VRING_DESC_F_WRITE
    shape = rng.choice([
        [(1 << 50, 40, N, 1), (reply, 96, W, None)],
        [(header, 40, N, 1), (reply, 96, W | N, 0)],
        [(reply, 96, W | N, 1), (header, 40, 0, None)],
        [(header, 0xFFFFFFF0, N, 1), (reply, 96, W, None)],
        [(header, 12, N, 1), (reply, 96, W, None)],
        [(header, 40, N, 1), (1 << 44, 96, W, None)]])
    slots = queue.alloc_desc(len(shape))
    for slot, (addr, length, flags, nxt) in zip(slots, shape):
        queue.write_desc(slot, addr, length, flags, 0 if nxt is None else slots[nxt])
    head = slots[0]
    queue.publish_raw([head])
    for _ in range(200):
        if any(h == head for h, _ in queue.get_used()):
            break
        queue.wait_call(0.02)
    else:
        raise AssertionError("a malformed chain was never returned")
    queue.free_desc(slots)
    mem.free(header)
    mem.free(reply)


ESCAPE_NAMES = [b"..", b"../pwned", b"a/../../pwned", b"/tmp/pwned", b".", b"x" * 300,
                b"pwned\0hidden"]


def _attack_fuse(client, shared, outside, rng):
    op = rng.choice(["lookup", "mkdir", "create", "symlink", "rename", "link", "mknod", "raw",
                     "swap"])
    name = rng.choice(ESCAPE_NAMES)
    try:
        if op == "lookup":
            client.lookup(ROOT, name)
        elif op == "mkdir":
            client.mkdir(ROOT, name)
        elif op == "create":
            client.create(ROOT, name)
        elif op == "symlink":
            link = client.symlink(ROOT, f"l{rng.randrange(1000)}", str(outside)).nodeid
            client.create(link, "pwned")
        elif op == "rename":
            client.rename(ROOT, "victim", ROOT, name)
        elif op == "link":
            client.link(ROOT, ROOT, "rootlink")
        elif op == "mknod":
            dev = client.mknod(ROOT, f"dev{rng.randrange(1000)}", stat.S_IFCHR | 0o666,
                               os.makedev(1, 3)).nodeid
            client.open(dev, os.O_RDWR)
        elif op == "swap":
            d = client.mkdir(ROOT, f"s{rng.randrange(1 << 20)}").nodeid
            path = shared / f"s{d & 0xFFFFF}"
            for entry in os.listdir(shared):
                if entry.startswith("s") and (shared / entry).is_dir() and \
                        not (shared / entry).is_symlink():
                    os.rename(shared / entry, shared / f"gone-{entry}")
                    os.symlink(outside, shared / entry)
                    break
            client.create(d, "pwned")
            del path
        else:
            # Everything but ending the session (a guest may do that to itself only).
            opcode = rng.choice([int(o) for o in Opcode
                                 if o not in (Opcode.INIT, Opcode.DESTROY)] + [999])
            body = rng.randbytes(rng.randrange(0, 100))
            reply = client.wait(client.submit(opcode, rng.choice([ROOT, 0, 1 << 40]), body,
                                              reply_len=256, data_len=64))
            assert reply.error >= 0
    except FuseProtocolError:
        assert op == "raw" and opcode in (Opcode.FORGET, Opcode.BATCH_FORGET, Opcode.INTERRUPT)
    except OSError:
        pass


def test_a_minute_of_malformed_requests_and_escape_attempts(fastvfs, tmp_path):
    frontend, client, shared = fastvfs()
    outside = tmp_path / "outside"
    outside.mkdir()
    (shared / "victim").write_text("v")
    before_tmp = set(os.listdir(tmp_path))
    rng = random.Random(20261125)
    deadline = time.monotonic() + BARRAGE_SECONDS
    rounds = 0
    while time.monotonic() < deadline:
        kind = rng.randrange(10)
        if kind == 0:
            _attack_messages(frontend)
        elif kind < 3:
            _attack_chain(frontend, rng)
        else:
            _attack_fuse(client, shared, outside, rng)
        rounds += 1
    assert fastvfs.process.poll() is None, "the daemon died"
    assert os.listdir(outside) == [], "something was created outside the share"
    assert set(os.listdir(tmp_path)) == before_tmp
    assert not os.path.exists("/tmp/pwned")
    assert not any("pwned" in name for name in os.listdir(shared.parent))
    # A valid request is still answered correctly.
    entry, opened = client.create(ROOT, "after-the-storm", os.O_RDWR)
    assert client.write(entry.nodeid, opened.fh, 0, b"calm") == 4
    assert client.read(entry.nodeid, opened.fh, 0, 4) == b"calm"
    assert (shared / "after-the-storm").read_bytes() == b"calm"
    still_serving(frontend, client)
    print(f"{rounds} attack rounds in {BARRAGE_SECONDS:.0f} s")
