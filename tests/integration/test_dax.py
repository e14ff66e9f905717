"""The DAX cache window through the frontend driver: the daemon asks the frontend to map file
ranges (SHMEM_MAP/UNMAP on the backend-request channel) and the driver reads and writes them the
way a guest's loads and stores would."""

import errno
import faulthandler
import os
import time
import signal
import sys

import pytest

from fastvfs.fuse import abi
from fastvfs.fuse.abi import Opcode
from fastvfs_testing.dax_cache import DaxCache
from fastvfs_testing.fuse_client import LINUX_6_1_INIT_FLAGS, LINUX_DAX_INIT_FLAGS
from fastvfs_testing.virtq import VRING_DESC_F_NEXT, VRING_DESC_F_WRITE
from fastvfs.vhost_user import protocol
from fastvfs.vhost_user.protocol import ProtocolFeature, Request

from .conftest import BackendLauncher, BackendSpec
from tests.deployed import FASTVFS

ROOT = abi.FUSE_ROOT_ID
MiB = 1 << 20
WINDOW = 16 * MiB
R = 2 * MiB  # the Linux driver's range size


def _argv(window):
    def argv(sock, shared):
        cmd = [*FASTVFS, "--socket-path", sock, "--shared-dir", shared,
               "--cache", "never", "--log-level", "debug"]
        if window:
            cmd += ["--dax-window-size", str(window)]
        return cmd
    return argv


@pytest.fixture
def launch(tmp_path):
    """launch(window=WINDOW, shared_memory=True, dax_init=True) -> (frontend, client, shared)."""
    launchers = []

    def start(window=WINDOW, *, shared_memory=True, dax_init=True, files=None):
        launcher = BackendLauncher("fastvfs", BackendSpec(_argv(window)),
                                   tmp_path / f"run{len(launchers)}")
        launcher.tmp_path.mkdir()
        launchers.append(launcher)
        frontend, client, shared = launcher(init=False, shared_memory=shared_memory)
        for name, data in (files or {}).items():
            (shared / name).write_bytes(data)
        client.init(flags=LINUX_DAX_INIT_FLAGS if dax_init else LINUX_6_1_INIT_FLAGS)
        start.launcher = launcher
        return frontend, client, shared

    yield start
    for launcher in launchers:
        launcher.shutdown()


def content(size, seed=1):
    """Deterministic, position-dependent bytes: a wrong offset shows up as a mismatch."""
    block = bytes((i * 131 + seed * 17) & 0xFF for i in range(4096))
    out = bytearray()
    for page in range(-(-size // 4096)):
        out += page.to_bytes(4, "little") + bytes([seed]) + block[5:]
    return bytes(out[:size])


def node(client, name):
    return client.lookup(ROOT, name).nodeid


def expect_errno(err, fn, *args, **kwargs):
    with pytest.raises(OSError) as exc:
        fn(*args, **kwargs)
    assert exc.value.errno == err, exc.value


def still_serving(frontend, client):
    assert frontend.get_u64(Request.GET_FEATURES) == frontend.features
    assert client.getattr(ROOT).attr.mode & 0o170000 == 0o040000


# -- negotiation ---------------------------------------------------------------------------------

def test_window_is_offered_and_init_states_the_alignment(launch):
    frontend, client, _ = launch()
    assert frontend.has_protocol_feature(ProtocolFeature.SHMEM)
    assert frontend.has_protocol_feature(ProtocolFeature.BACKEND_REQ)
    assert frontend.dax_window is not None and frontend.dax_window.size == WINDOW
    assert client.init_out.flags & abi.FUSE_MAP_ALIGNMENT
    assert client.init_out.map_alignment == 12


def test_without_a_window_setupmapping_is_enosys(launch):
    frontend, client, shared = launch(window=0, files={"f": content(R)})
    assert not frontend.protocol_features & (1 << ProtocolFeature.SHMEM)
    assert frontend.dax_window is None
    assert not client.init_out.flags & abi.FUSE_MAP_ALIGNMENT
    nid = node(client, "f")
    expect_errno(errno.ENOSYS, client.setupmapping, nid, 0, R, 0)
    expect_errno(errno.ENOSYS, client.removemapping, nid, [(0, R)])
    assert client.read(nid, client.open(nid).fh, 0, 100) == content(R)[:100]


def test_frontend_without_shared_memory_gets_no_dax(launch):
    # A QEMU without VIRTIO shared memory (Debian's 7.2) does not take the window: no
    # alignment in INIT, ENOSYS for mappings, everything else as before.
    frontend, client, shared = launch(shared_memory=False, files={"f": content(R)})
    assert frontend.dax_window is None and frontend.channel is None
    assert not client.init_out.flags & abi.FUSE_MAP_ALIGNMENT
    expect_errno(errno.ENOSYS, client.setupmapping, node(client, "f"), 0, R, 0)
    still_serving(frontend, client)


# -- mapping and data ----------------------------------------------------------------------------

def test_read_through_the_window_equals_the_file(launch):
    data = content(3 * R, seed=3)
    frontend, client, _ = launch(files={"f": data})
    window = frontend.dax_window
    nid = node(client, "f")
    client.setupmapping(nid, R, R, 5 * R)         # second 2 MiB of the file at window 10 MiB
    client.setupmapping(nid, 0, R, 0)
    assert window.read(5 * R, R) == data[R:2 * R]
    assert window.read(0, R) == data[:R]
    assert window.read(5 * R + 12345, 100) == data[R + 12345:R + 12445]
    name, shmid, fd_offset, shm_offset, length, flags = frontend.channel.requests[0]
    assert (name, shmid, fd_offset, shm_offset, length, flags) == ("SHMEM_MAP", 0, R, 5 * R, R, 0)


def test_write_through_the_window_reaches_the_host_file_after_fsync(launch):
    frontend, client, shared = launch(files={"f": bytes(R)})
    window = frontend.dax_window
    nid = node(client, "f")
    fh = client.open(nid, os.O_RDWR).fh
    client.setupmapping(nid, 0, R, 2 * R, writable=True)
    assert frontend.channel.requests[-1][5] == protocol.VHOST_USER_FLAG_MAP_RW
    payload = content(64 << 10, seed=9)
    window.write(2 * R + 4096, payload)
    client.fsync(nid, fh)
    with open(shared / "f", "rb") as f:
        f.seek(4096)
        assert f.read(len(payload)) == payload
    # And the data path sees it too.
    assert client.read(nid, fh, 4096, 4096) == payload[:4096]


def test_host_writes_show_through_the_window(launch):
    frontend, client, shared = launch(files={"f": bytes(R)})
    nid = node(client, "f")
    client.setupmapping(nid, 0, R, 0)
    with open(shared / "f", "r+b") as f:
        f.seek(8192)
        f.write(b"from the host")
    assert frontend.dax_window.read(8192, 13) == b"from the host"


def test_a_read_only_mapping_cannot_be_written(launch):
    frontend, client, _ = launch(files={"f": bytes(R)})
    client.setupmapping(node(client, "f"), 0, R, 0)
    assert frontend.dax_window.is_mapped(0, R)
    assert not frontend.dax_window.is_mapped(0, R, writable=True)


def test_overlapping_setup_replaces_the_old_mapping(launch):
    a, b = content(2 * R, seed=1), content(2 * R, seed=2)
    frontend, client, _ = launch(files={"a": a, "b": b})
    window = frontend.dax_window
    client.setupmapping(node(client, "a"), 0, 2 * R, 0)
    client.setupmapping(node(client, "b"), R, R, R)   # the second half now shows b's second half
    assert window.read(0, 4096) == a[:4096]
    assert window.read(R, 4096) == b[R:R + 4096]


def test_partial_removal_splits_a_mapping(launch):
    data = content(4 * R, seed=4)
    frontend, client, _ = launch(files={"f": data})
    window = frontend.dax_window
    nid = node(client, "f")
    client.setupmapping(nid, 0, 4 * R, 0)
    client.removemapping(nid, [(R, R)])
    assert window.is_mapped(0, R) and not window.is_mapped(R, 4096)
    assert window.is_mapped(2 * R, 2 * R)
    assert window.read(R - 4096, 4096) == data[R - 4096:R]
    assert window.read(2 * R, 4096) == data[2 * R:2 * R + 4096]
    assert frontend.channel.requests[-1][:1] + frontend.channel.requests[-1][3:5] == (
        "SHMEM_UNMAP", R, R)


def test_multi_entry_removal(launch):
    frontend, client, _ = launch(files={"f": content(4 * R)})
    nid = node(client, "f")
    for i in range(4):
        client.setupmapping(nid, i * R, R, i * R)
    client.removemapping(nid, [(0, R), (2 * R, R), (3 * R, R)])
    window = frontend.dax_window
    assert [window.is_mapped(i * R, R) for i in range(4)] == [False, True, False, False]


def test_window_exhaustion_and_reclaim(launch):
    # Eight 2 MiB ranges for twelve ranges of data: the guest-like cache reclaims the least
    # recently used range (REMOVEMAPPING) and reuses its window space.
    files = {f"f{i}": content(3 * R, seed=i + 1) for i in range(4)}
    frontend, client, _ = launch(files=files)
    cache = DaxCache(client, frontend.dax_window)
    nodes = {name: node(client, name) for name in files}
    for _ in range(2):
        for name, data in files.items():
            for r in range(3):
                assert cache.read(nodes[name], r * R + 777, 5000) == data[r * R + 777:
                                                                          r * R + 5777]
    assert cache.reclaims > 0 and cache.setups == 24 and frontend.dax_window.mapped_pages == (
        WINDOW // 4096)
    # Past the window nothing can be mapped.
    expect_errno(errno.EINVAL, client.setupmapping, nodes["f0"], 0, R, WINDOW)
    cache.drop(nodes["f1"])
    assert frontend.dax_window.mapped_pages < WINDOW // 4096


def test_new_session_unmaps_what_the_old_one_left(launch):
    frontend, client, _ = launch(files={"f": content(R)})
    client.setupmapping(node(client, "f"), 0, R, 3 * R)
    assert frontend.dax_window.is_mapped(3 * R, R)
    client.init(flags=LINUX_DAX_INIT_FLAGS)   # the guest rebooted
    assert not frontend.dax_window.is_mapped(3 * R, 4096)
    assert frontend.channel.requests[-1][0] == "SHMEM_UNMAP"


def test_mapping_with_a_handle(launch):
    data = content(R, seed=5)
    frontend, client, _ = launch(files={"f": data, "g": bytes(R)})
    nid, other = node(client, "f"), node(client, "g")
    ro = client.open(nid, os.O_RDONLY).fh
    rw = client.open(nid, os.O_RDWR).fh
    client.setupmapping(nid, 0, R, 0, fh=ro)
    assert frontend.dax_window.read(0, 64) == data[:64]
    client.setupmapping(nid, 0, R, R, fh=rw, writable=True)
    # A handle opened read-only cannot back a writable mapping; a handle of another file or
    # no handle at all is refused.
    expect_errno(errno.EACCES, client.setupmapping, nid, 0, R, 0, fh=ro, writable=True)
    expect_errno(errno.EBADF, client.setupmapping, other, 0, R, 0, fh=rw)
    expect_errno(errno.EBADF, client.setupmapping, nid, 0, R, 0, fh=0x7777_0000_0001)


# -- hostile requests ----------------------------------------------------------------------------

@pytest.mark.parametrize("case", [
    "past the window", "straddles the window end", "huge length wraps", "zero length",
    "misaligned window offset", "misaligned file offset", "misaligned length", "unknown flags",
    "file offset overflow"])
def test_invalid_setups_are_einval(launch, case):
    frontend, client, _ = launch(files={"f": content(R)})
    nid = node(client, "f")
    args = {"past the window": (0, R, WINDOW),
            "straddles the window end": (0, 2 * R, WINDOW - R),
            "huge length wraps": (0, (1 << 64) - 4096, 4096),
            "zero length": (0, 0, 0),
            "misaligned window offset": (0, R, 512),
            "misaligned file offset": (100, R, 0),
            "misaligned length": (0, R + 1, 0),
            "unknown flags": (0, R, 0),
            "file offset overflow": ((1 << 63) - 4096, R, 0)}[case]
    kwargs = {"flags": 1 << 7} if case == "unknown flags" else {}
    expect_errno(errno.EINVAL, client.setupmapping, nid, *args, **kwargs)
    assert frontend.channel.requests == []
    still_serving(frontend, client)


def test_setup_of_unknown_or_special_nodes(launch):
    frontend, client, shared = launch(files={"f": content(R)})
    os.mkfifo(shared / "fifo")
    client.mkdir(ROOT, "d")
    expect_errno(errno.ENOENT, client.setupmapping, 987654, 0, R, 0)
    expect_errno(errno.EINVAL, client.setupmapping, node(client, "d"), 0, R, 0)
    expect_errno(errno.EINVAL, client.setupmapping, node(client, "fifo"), 0, R, 0)
    assert frontend.channel.requests == []
    still_serving(frontend, client)


@pytest.mark.parametrize("case", ["count zero", "count too large", "body shorter than count",
                                  "range past the window", "misaligned range"])
def test_invalid_removals_are_einval(launch, case):
    frontend, client, _ = launch(files={"f": content(R)})
    nid = node(client, "f")
    client.setupmapping(nid, 0, R, 0)
    ranges, count = {"count zero": ([], 0),
                     "count too large": ([(0, R)] * 300, 300),
                     "body shorter than count": ([(0, R)], 5),
                     "range past the window": ([(0, R), (WINDOW, R)], None),
                     "misaligned range": ([(0, R), (100, R)], None)}[case]
    expect_errno(errno.EINVAL, client.removemapping, nid, ranges, count=count)
    # Nothing was removed: every range is checked before any is unmapped.
    assert frontend.dax_window.is_mapped(0, R)
    still_serving(frontend, client)


def test_frontend_refusing_a_map_gives_eio_and_service_continues(launch):
    frontend, client, _ = launch(files={"f": content(R)})
    frontend.channel.refuse = True
    expect_errno(errno.EIO, client.setupmapping, node(client, "f"), 0, R, 0)
    frontend.channel.refuse = False
    client.setupmapping(node(client, "f"), 0, R, 0)
    assert frontend.dax_window.read(0, 16) == content(R)[:16]


def test_memory_table_change_while_a_map_waits_for_the_frontend(launch):
    """A frontend that answers its back-end channel only after the control plane's reply (QEMU
    waits for the SET_MEM_TABLE ack on the thread that serves that channel): the change is
    answered at once, the waiting SETUPMAPPING fails with EAGAIN, the map the frontend makes
    afterwards is undone, and DAX goes on working."""
    frontend, client, _ = launch(files={"f": content(2 * R)})
    nid = node(client, "f")
    frontend.channel.hold.set()
    ticket = client.submit(Opcode.SETUPMAPPING, nid, abi.setupmapping_in.pack(
        abi.NO_FH, 0, R, abi.FUSE_SETUPMAPPING_FLAG_READ, 0))
    assert frontend.channel.wait_received(1)
    started = time.monotonic()
    frontend.set_mem_table()
    assert time.monotonic() - started < 5, "the memory table change waited for the map"
    assert client.wait(ticket).error == errno.EAGAIN
    frontend.channel.release()
    # The next map first settles the abandoned one (unmapped again), then maps.
    client.setupmapping(nid, R, R, R)
    names = [r[0] for r in frontend.channel.requests]
    assert names == ["SHMEM_MAP", "SHMEM_UNMAP", "SHMEM_MAP"], names
    assert not frontend.dax_window.is_mapped(0, R)
    assert frontend.dax_window.read(R, 16) == content(2 * R)[R:R + 16]
    still_serving(frontend, client)


def test_file_truncated_on_the_host_while_mapped(launch):
    data = content(2 * R, seed=6)
    frontend, client, shared = launch(files={"f": data})
    window = frontend.dax_window
    nid = node(client, "f")
    client.setupmapping(nid, 0, 2 * R, 0)
    assert window.read(R, 16) == data[R:R + 16]
    os.truncate(shared / "f", 4096)
    # A load past the new end faults in whoever touches it (the guest, here a child process);
    # the daemon never touches the window, so it lives on.
    pid = os.fork()
    if pid == 0:
        try:
            faulthandler.disable()   # the fault is expected: no traceback dump
            window.read(R, 16)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGBUS
    assert window.read(0, 16) == data[:16]
    assert client.getattr(nid).attr.size == 4096
    client.removemapping(nid, [(0, 2 * R)])
    fh = client.open(nid).fh
    assert client.read(nid, fh, 0, 8192) == data[:4096]
    still_serving(frontend, client)


def test_request_buffers_inside_the_window_are_refused_with_efault(launch):
    # A guest may hand a DAX-window address to O_DIRECT I/O; the window is not guest RAM in the
    # memory table, so the daemon cannot reach it and answers EFAULT for that request.
    frontend, client, shared = launch(files={"f": content(R)})
    nid = node(client, "f")
    fh = client.open(nid).fh
    queue, mem = frontend.queues[1], frontend.memory
    header = mem.alloc(128)
    mem.write(header, abi.in_header.pack(abi.IN_HEADER_SIZE + abi.read_in.size, Opcode.READ,
                                         4242, nid, 0, 0, 0, 0, 0) +
              abi.read_in.pack(fh, 0, 4096, 0, 0, 0, 0))
    reply = mem.alloc(16)
    window_gpa = 1 << 40   # where a VMM would place the window's BAR
    slots = queue.alloc_desc(3)
    queue.write_desc(slots[0], header, abi.IN_HEADER_SIZE + abi.read_in.size,
                     VRING_DESC_F_NEXT, slots[1])
    queue.write_desc(slots[1], reply, 16, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, slots[2])
    queue.write_desc(slots[2], window_gpa, 4096, VRING_DESC_F_WRITE, 0)
    queue.publish_raw([slots[0]])
    for _ in range(100):
        if any(h == slots[0] for h, _ in queue.get_used()):
            break
        queue.wait_call(0.05)
    else:
        pytest.fail("the request was never answered")
    length, error, unique = abi.out_header.unpack(mem.read(reply, 16))
    assert (length, error, unique) == (16, -errno.EFAULT, 4242)
    still_serving(frontend, client)


def _ack(frontend, request, payload=b"", fds=()):
    frontend.send(request, payload, fds,
                  protocol.VHOST_USER_VERSION | protocol.VHOST_USER_NEED_REPLY_MASK)
    reply = frontend.recv_reply()
    assert reply.request == request
    return protocol.u64.unpack(reply.payload)[0]


def test_backend_channel_messages_are_validated(launch):
    # Without SHMEM negotiated GET_SHMEM_CONFIG gets the empty (failed) reply and a channel fd
    # is refused; with it, an fd that is not a Unix stream socket is refused.
    frontend, client, _ = launch(shared_memory=False)
    frontend.send(Request.GET_SHMEM_CONFIG)
    assert frontend.recv_reply().payload == b""
    efd = os.eventfd(0)
    try:
        assert _ack(frontend, Request.SET_BACKEND_REQ_FD, b"", (efd,)) != 0
    finally:
        os.close(efd)
    still_serving(frontend, client)

    frontend, client, _ = launch(files={"f": content(R)})
    efd = os.eventfd(0)
    try:
        assert _ack(frontend, Request.SET_BACKEND_REQ_FD, b"", (efd,)) != 0
    finally:
        os.close(efd)
    assert _ack(frontend, Request.SET_BACKEND_REQ_FD) != 0          # no fd at all
    # The working channel stayed in place.
    client.setupmapping(node(client, "f"), 0, R, 0)
    assert frontend.dax_window.read(0, 8) == content(R)[:8]
