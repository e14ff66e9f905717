"""Writes the seed corpora of the atheris harnesses (fuzz/corpus/<target>/) from real traffic:

- fuse_engine: request sequences the project's FUSE client (fastvfs_testing.fuse_client) sends,
  each session answered by a real FuseEngine over the harness's tree, so node ids and file
  handles in later requests are the ones a fresh engine hands out;
- vhost_user: the message sequences the project's vhost-user frontend (fastvfs_testing.frontend)
  sends to a real VhostUserFsDevice, with its bring-ups, stops and resets;
- ring: guest memory after the FUSE client published chains (direct and indirect) on the
  driver-side virtqueue the ring harness lays out, for the C fast ops and the slow path.

    python fuzz/make_seeds.py        # rewrites fuzz/corpus/{fuse_engine,vhost_user,ring}
"""

import contextlib
import hashlib
import os
import shutil
import socket
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _common  # noqa: E402  (sys.path)
import fuse_tree  # noqa: E402
import ring_layout  # noqa: E402
import vhost_framing  # noqa: E402

from fastvfs.fs._tables import HandleTable, NodeTable  # noqa: E402
from fastvfs.fs.passthrough import PassthroughFs  # noqa: E402
from fastvfs.fuse import abi  # noqa: E402
from fastvfs.fuse.abi import Opcode  # noqa: E402
from fastvfs.fuse.engine import FuseEngine  # noqa: E402
from fastvfs.vhost_user import protocol  # noqa: E402
from fastvfs.vhost_user.connection import Connection  # noqa: E402
from fastvfs.vhost_user.device import VhostUserFsDevice  # noqa: E402
from fastvfs.vhost_user.protocol import Request  # noqa: E402
from fastvfs_testing.frontend import VhostUserFrontend  # noqa: E402
from fastvfs_testing.fuse_client import FuseClient  # noqa: E402
from fastvfs_testing.guestmem import GuestMemory  # noqa: E402
from fastvfs_testing.virtq import VRING_DESC_F_WRITE  # noqa: E402
from tests.unit.fake_device import FakeDevice  # noqa: E402

CORPUS = os.path.join(HERE, "corpus")
ROOT = abi.FUSE_ROOT_ID


def write_corpus(target, inputs):
    """Replace the generated seeds of ``target``; regression inputs (``regress-*``: inputs
    that once failed, kept as found) stay."""
    path = os.path.join(CORPUS, target)
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if not name.startswith("regress-"):
            os.unlink(os.path.join(path, name))
    for data in inputs:
        name = hashlib.sha1(data).hexdigest()[:16]
        with open(os.path.join(path, name), "wb") as f:
            f.write(data)
    print(f"{target}: {len(set(inputs))} seeds", file=sys.stderr)


# -- FUSE ---------------------------------------------------------------------------------------

class Frontend:
    """What FuseClient needs of a frontend: queues (hiprio + two request queues)."""

    def __init__(self, memory, queues):
        self.memory = memory
        self.queues = queues


@contextlib.contextmanager
def engine_session():
    """A FuseClient whose requests a real FuseEngine answers over a fresh harness tree; yields
    (client, log), ``log`` the ``(request, out_size)`` pairs after INIT."""
    from fastvfs_testing.virtq import DriverVirtqueue
    outer = tempfile.mkdtemp(prefix="fastvfs-seeds-")
    root = fuse_tree.make_tree(outer)
    fs = PassthroughFs(root, HandleTable(256), inodes=NodeTable(256))
    engine = FuseEngine(fs, "never", xattr=True)
    memory = GuestMemory([(0, 4 << 20)])
    queues = [DriverVirtqueue(memory, i, 64, indirect_desc=False) for i in range(3)]
    log = []
    stop = threading.Event()

    def respond(request, entries):
        out_size = sum(n for _, n, flags in entries if flags & VRING_DESC_F_WRITE)
        out_size = max(0, out_size - abi.OUT_HEADER_SIZE)
        log.append((request, out_size))
        result = engine.handle(request, out_size)
        if result is None or callable(result):
            return b""
        error, payload = result
        unique = abi.in_header.unpack_from(request)[2]
        payload = bytes(payload)
        return abi.out_header.pack(abi.OUT_HEADER_SIZE + len(payload), error, unique) + payload

    def serve():
        devices = [FakeDevice(q) for q in queues]
        while not stop.is_set():
            for q, device in zip(queues, devices):
                if device.process(respond):
                    os.eventfd_write(q.call_fd, 1)
            time.sleep(0.0005)
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = FuseClient(Frontend(memory, queues), timeout=5)
    try:
        client.init()
        del log[:]
        yield client, log
    finally:
        stop.set()
        thread.join()
        engine.reset()
        for q in queues:
            q.close()
        memory.close()
        shutil.rmtree(outer)


def attempt(call, *args, **kwargs):
    """Requests a strict client rejects the reply of (or the engine refuses) still make seeds."""
    try:
        return call(*args, **kwargs)
    except Exception:
        return None


def fuse_scenarios():
    """Each a function of the client: one seed per scenario, and one per request in it."""
    def read_file(c):
        e = c.lookup(ROOT, "f")
        c.getattr(e.nodeid)
        fh = c.open(e.nodeid).fh
        c.read(e.nodeid, fh, 0, 64)
        attempt(c.lseek, e.nodeid, fh, 0, 3)
        c.flush(e.nodeid, fh)
        c.release(e.nodeid, fh)
        c.forget(e.nodeid, 1)

    def list_dirs(c):
        e = c.lookup(ROOT, "sub")
        fh = c.opendir(e.nodeid).fh
        c.readdir(e.nodeid, fh, 0, 512)
        c.readdirplus(e.nodeid, fh, 0, 1024)
        c.fsyncdir(e.nodeid, fh)
        c.releasedir(e.nodeid, fh)
        c.lookup(e.nodeid, "g")

    def write_file(c):
        e, o = c.create(ROOT, "new", mode=0o644)[:2]
        c.write(e.nodeid, o.fh, 0, b"hello")
        c.fsync(e.nodeid, o.fh)
        attempt(c.fallocate, e.nodeid, o.fh, 0, 4096)
        c.setattr(e.nodeid, size=3, mode=0o600)
        c.release(e.nodeid, o.fh)
        c.unlink(ROOT, "new")

    def dirs(c):
        c.mkdir(ROOT, "d")
        c.rename(ROOT, "d", ROOT, "d2")
        attempt(c.rename2, ROOT, "d2", ROOT, "sub", 2)
        c.rmdir(ROOT, "d2")

    def links(c):
        c.symlink(ROOT, "s", "f")
        e = c.lookup(ROOT, "s")
        c.readlink(e.nodeid)
        up = c.lookup(ROOT, "up")
        c.readlink(up.nodeid)
        attempt(c.open, up.nodeid, os.O_RDWR)
        f = c.lookup(ROOT, "f")
        attempt(c.link, f.nodeid, ROOT, "hard")
        attempt(c.unlink, ROOT, "hard")
        c.unlink(ROOT, "s")
        attempt(c.mknod, ROOT, "node", 0o10644)
        attempt(c.unlink, ROOT, "node")

    def misc(c):
        c.statfs()
        c.access(ROOT, 4)
        attempt(c.call, Opcode.GETXATTR, ROOT, abi.getxattr_in.pack(64, 0) + b"user.x\0",
                reply_len=64)
        attempt(c.call, Opcode.LISTXATTR, ROOT, abi.getxattr_in.pack(64, 0), reply_len=64)
        f = c.lookup(ROOT, "f")
        attempt(c.call, Opcode.SETXATTR, f.nodeid, abi.setxattr_in.pack(1, 0) + b"user.y\0v")
        attempt(c.call, Opcode.REMOVEXATTR, f.nodeid, b"user.y\0")
        c.syncfs()
        c.batch_forget([(f.nodeid, 1)])

    def locks(c):
        f = c.lookup(ROOT, "f")
        fh = c.open(f.nodeid, os.O_RDWR).fh
        attempt(c.call, Opcode.GETLK, f.nodeid, abi.lk_in.pack(fh, 7, 0, 10, 1, 0, 0, 0),
                reply_len=abi.lk_out.size)
        attempt(c.call, Opcode.SETLK, f.nodeid, abi.lk_in.pack(fh, 7, 0, 10, 1, 0, 0, 0))
        attempt(c.call, Opcode.SETLK, f.nodeid, abi.lk_in.pack(fh, 7, 0, 0, 2, 0, 1, 0))
        attempt(c.call, Opcode.INTERRUPT, 0, abi.interrupt_in.pack(4))
        attempt(c.call, Opcode.IOCTL, f.nodeid, bytes(32), reply_len=32)
        attempt(c.call, Opcode.POLL, f.nodeid, bytes(24), reply_len=8)
        attempt(c.call, Opcode.COPY_FILE_RANGE, f.nodeid,
                abi.struct.pack("<QQQQQQQ", fh, 0, f.nodeid, fh, 100, 10, 0), reply_len=8)
        attempt(c.call, Opcode.BMAP, f.nodeid, bytes(16), reply_len=8)
        c.release(f.nodeid, fh)

    return [read_file, list_dirs, write_file, dirs, links, misc, locks]


def fuse_seeds():
    seeds = []
    for scenario in fuse_scenarios():
        with engine_session() as (client, log):
            attempt(scenario, client)
            requests = list(log)
        seeds.append(fuse_tree.frame(requests))
        seeds.extend(fuse_tree.frame([r]) for r in requests)
    return seeds


# -- vhost-user ---------------------------------------------------------------------------------

_FD_KIND = {Request.SET_MEM_TABLE: vhost_framing.MEMFD, Request.ADD_MEM_REG: vhost_framing.MEMFD,
            Request.SET_VRING_KICK: vhost_framing.EVENTFD,
            Request.SET_VRING_CALL: vhost_framing.EVENTFD,
            Request.SET_VRING_ERR: vhost_framing.EVENTFD,
            Request.SET_BACKEND_REQ_FD: vhost_framing.SOCKET}


class RecordingConnection(Connection):
    def __init__(self, sock, log):
        super().__init__(sock)
        self.log = log

    def recv(self):
        msg = super().recv()
        if msg is not None:
            kind = _FD_KIND.get(msg.request, vhost_framing.NONE) if msg.fds else 0
            self.log.append((vhost_framing.fd_byte(kind, max(1, len(msg.fds))), msg.request,
                             msg.flags, msg.payload))
        return msg


def vhost_session(drive, **options):
    path = os.path.join(tempfile.mkdtemp(prefix="fastvfs-seeds-"), "sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    log = []
    device = VhostUserFsDevice(lambda request, out_size: (0, b""), HandleTable(64),
                               num_queues=3, tag="fuzz")

    def serve():
        conn, _ = listener.accept()
        device.serve(RecordingConnection(conn, log))
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    memory = GuestMemory([(0, 1 << 20)])
    frontend = VhostUserFrontend(path, num_request_queues=2, queue_size=16, memory=memory,
                                 timeout=5, **options)
    try:
        frontend.start()
        drive(frontend)
    finally:
        frontend.close()
        thread.join(5)
        listener.close()
        shutil.rmtree(os.path.dirname(path))
    return log


def vhost_seeds():
    def nothing(fe):
        pass

    def stop_restart(fe):
        fe.stop_queue(1)
        fe.enable_queue(2, False)

    def reset(fe):
        fe.reset_device()

    def config(fe):
        fe.send(Request.GET_CONFIG, protocol.config_header.pack(0, 40, 0) + bytes(40))
        fe.recv_reply()
        fe.send(Request.GET_STATUS)
        fe.recv_reply()

    seeds = []
    first = True
    for drive, options in ((nothing, {}), (stop_restart, {}), (reset, {}), (config, {}),
                           (nothing, {"ack_all": False}), (nothing, {"event_idx": False}),
                           (nothing, {"protocol_features": 0})):
        try:
            log = vhost_session(drive, **options)
        except Exception as exc:    # a frontend option the device refuses: no seed from it
            print(f"vhost_user seed {drive.__name__} {options}: {exc}", file=sys.stderr)
            continue
        seeds.append(vhost_framing.frame(log))
        if first:
            # Every prefix of the plain bring-up ending at a message with descriptors or a
            # payload, as its own seed.
            seeds.extend(vhost_framing.frame(log[:i + 1]) for i, m in enumerate(log)
                         if m[0] or m[3])
            first = False
    return seeds


# -- ring ---------------------------------------------------------------------------------------

def ring_seeds():
    R = ring_layout
    seeds = []
    fh = 1   # the harness adds its open file first: handle 1
    read = abi.read_in.pack(fh, 0, 64, 0, 0, 0, 0)
    batches = [
        [(Opcode.GETATTR, ROOT, abi.getattr_in.pack(0, 0, 0), {"reply_len": 104})],
        [(Opcode.LOOKUP, ROOT, b"f\0", {"reply_len": abi.ENTRY_OUT_SIZE})],
        [(Opcode.READ, 2, read, {"data_len": 64})],
        [(Opcode.READ, 2, read, {"data_len": 64}), (Opcode.READ, 2, read, {"data_len": 64})],
        [(Opcode.WRITE, 2, abi.write_in.pack(fh, 3, 5, 0, 0, 0, 0), {"data": b"hello",
                                                                   "reply_len": 8})],
        [(Opcode.FLUSH, 2, abi.flush_in.pack(fh, 0, 0, 0), {})],
        [(Opcode.FSYNC, 2, abi.fsync_in.pack(fh, 0, 0), {})],
        [(Opcode.FALLOCATE, 2, abi.fallocate_in.pack(fh, 0, 4096, 0, 0), {})],
        [(Opcode.RELEASE, 2, abi.release_in.pack(fh, 0, 0, 0), {})],
        [(Opcode.FORGET, 2, abi.forget_in.pack(1), {"noreply": True})],
        [(Opcode.BATCH_FORGET, 0, abi.batch_forget_in.pack(1, 0) + abi.forget_one.pack(2, 1),
          {"noreply": True})],
        [(Opcode.STATFS, ROOT, b"", {"reply_len": abi.kstatfs.size})],
        [(Opcode.UNLINK, ROOT, b"g\0", {}), (Opcode.RMDIR, ROOT, b"f\0", {})],
        [(Opcode.RENAME, ROOT, abi.rename_in.pack(ROOT) + b"f\0g\0", {}),
         (Opcode.RENAME2, ROOT, abi.rename2_in.pack(ROOT, 1, 0) + b"g\0f\0", {})],
        [(Opcode.LOOKUP, ROOT, b"f\0", {"reply_len": abi.ENTRY_OUT_SIZE}),
         (Opcode.GETATTR, 2, abi.getattr_in.pack(0, 0, 0), {"reply_len": 104}),
         (Opcode.READ, 2, read, {"data_len": 64}),
         (Opcode.OPEN, 2, abi.open_in.pack(0, 0), {"reply_len": 16})],
        [(Opcode.GETXATTR, ROOT, abi.getxattr_in.pack(64, 0) + b"user.x\0", {"data_len": 64}),
         (Opcode.GETXATTR, ROOT, abi.getxattr_in.pack(0, 0) + b"user.x\0",
          {"reply_len": abi.getxattr_out.size})],
        [(Opcode.LISTXATTR, ROOT, abi.getxattr_in.pack(64, 0), {"data_len": 64}),
         (Opcode.LISTXATTR, 2, abi.getxattr_in.pack(0, 0), {"reply_len": abi.getxattr_out.size})],
        [(Opcode.FSYNCDIR, ROOT, abi.fsync_in.pack(fh, 1, 0), {}),
         (Opcode.SYNCFS, 2, bytes(8), {}),
         (Opcode.IOCTL, 2, abi.struct.pack("<QIIQII", fh, 0, 0x5401, 0, 0, 8), {})],
    ]
    for i, batch in enumerate(batches):
        for indirect in (False, True):
            mem, dq = R.make()
            try:
                client = FuseClient(Frontend(mem, [dq, dq, dq]), indirect=indirect,
                                    data_desc_size=32 if i % 2 else None)
                for opcode, nodeid, body, kw in batch:
                    client.submit(opcode, nodeid, body, **kw)
                window = mem.read(R.WINDOW_GPA, R.WINDOW)
            finally:
                dq.close()
                mem.close()
            window = window.rstrip(b"\0") or b"\0"
            for config in (R.EVENT_IDX | R.INDIRECT | R.FAST_IO,
                           R.EVENT_IDX | R.INDIRECT | R.FAST_IO | R.URING):
                seeds.append(bytes([config]) + window)
        # The slow path with each handler answer, and with the fast path off.
        seeds.append(bytes([R.INDIRECT | (i % 4) << R.HANDLER_SHIFT]) + window)
    return seeds


def main():
    write_corpus("fuse_engine", fuse_seeds())
    write_corpus("vhost_user", vhost_seeds())
    write_corpus("ring", ring_seeds())


if __name__ == "__main__":
    main()
