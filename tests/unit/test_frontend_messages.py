"""The vhost-user frontend's wire behaviour, against a scripted backend that records every message:
the QEMU-like order, NEED_REPLY use, fds, and the addresses a backend has to translate."""

import array
import mmap
import os
import socket
import threading
from dataclasses import dataclass

import pytest

from fastvfs_testing.frontend import VhostUserError, VhostUserFrontend
from fastvfs_testing.guestmem import GuestMemory
from fastvfs.vhost_user import protocol
from fastvfs.vhost_user.protocol import ProtocolFeature, Request

FEATURES = (1 << protocol.VIRTIO_F_VERSION_1 | 1 << protocol.VIRTIO_RING_F_INDIRECT_DESC
            | 1 << protocol.VIRTIO_RING_F_EVENT_IDX | 1 << protocol.VHOST_USER_F_PROTOCOL_FEATURES)
PROTOCOL = (1 << ProtocolFeature.MQ | 1 << ProtocolFeature.REPLY_ACK
            | 1 << ProtocolFeature.CONFIG | 1 << ProtocolFeature.CONFIGURE_MEM_SLOTS)
GETS = {Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES, Request.GET_QUEUE_NUM,
        Request.GET_MAX_MEM_SLOTS, Request.GET_VRING_BASE}
RING_START = [Request.SET_VRING_NUM, Request.SET_VRING_BASE, Request.SET_VRING_ADDR,
              Request.SET_VRING_KICK]


@dataclass
class Received:
    request: Request
    flags: int
    payload: bytes
    fds: list


class ScriptedBackend:
    """Accepts one connection, records messages, answers GET_* and acks NEED_REPLY requests
    (with ``acks[request]``, default 0)."""

    def __init__(self, path, features=FEATURES, protocol_features=PROTOCOL, queue_num=2,
                 acks=None, vring_base=0):
        self.features = features
        self.protocol_features = protocol_features
        self.queue_num = queue_num
        self.acks = acks or {}
        self.vring_base = vring_base
        self.messages = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        conn, _ = self.listener.accept()
        with conn:
            while True:
                header, ancdata, _, _ = conn.recvmsg(protocol.HEADER_SIZE, socket.CMSG_SPACE(64))
                if not header:
                    return
                request, flags, size = protocol.header.unpack(header)
                payload = conn.recv(size, socket.MSG_WAITALL) if size else b""
                fds = [fd for _, _, data in ancdata for fd in array.array("i", data)]
                self.messages.append(Received(Request(request), flags, payload, fds))
                body = self.answer(Request(request), flags)
                if body is not None:
                    conn.sendall(protocol.header.pack(
                        request, protocol.VHOST_USER_VERSION | protocol.VHOST_USER_REPLY_MASK,
                        len(body)) + body)

    def answer(self, request, flags):
        values = {Request.GET_FEATURES: self.features,
                  Request.GET_PROTOCOL_FEATURES: self.protocol_features,
                  Request.GET_QUEUE_NUM: self.queue_num, Request.GET_MAX_MEM_SLOTS: 32}
        if request in values:
            return protocol.u64.pack(values[request])
        if request == Request.GET_VRING_BASE:
            index, _ = protocol.vring_state.unpack(self.messages[-1].payload)
            return protocol.vring_state.pack(index, self.vring_base)
        if flags & protocol.VHOST_USER_NEED_REPLY_MASK:
            return protocol.u64.pack(self.acks.get(request, 0))
        return None

    def finished(self):
        """All messages, once the frontend has closed the connection."""
        self.thread.join(5)
        assert not self.thread.is_alive()
        return self.messages

    def requests(self):
        return [m.request for m in self.finished()]

    def close(self):
        self.thread.join(5)
        self.listener.close()
        for message in self.messages:
            for fd in message.fds:
                os.close(fd)


@pytest.fixture
def scripted(tmp_path):
    backends = []

    def start(**options):
        backend = ScriptedBackend(tmp_path / "sock", **options)
        backends.append(backend)
        return backend

    yield start
    for backend in backends:
        backend.close()


def frontend_for(tmp_path, **options):
    return VhostUserFrontend(tmp_path / "sock", timeout=5, **options)


def test_qemu_message_order(tmp_path, scripted):
    backend = scripted()
    with frontend_for(tmp_path) as frontend:
        frontend.start()
    assert backend.requests() == [
        Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES, Request.SET_PROTOCOL_FEATURES,
        Request.GET_QUEUE_NUM, Request.SET_OWNER, Request.GET_FEATURES,
        Request.SET_VRING_CALL, Request.SET_VRING_CALL,
        Request.SET_FEATURES, Request.SET_MEM_TABLE, *RING_START, *RING_START,
        Request.SET_VRING_ENABLE, Request.SET_VRING_ENABLE,
        Request.SET_VRING_CALL, Request.SET_VRING_CALL]
    messages = backend.messages
    # Only what both sides know and want: CONFIG and CONFIGURE_MEM_SLOTS are not taken.
    assert protocol.u64.unpack(messages[2].payload)[0] == (
        1 << ProtocolFeature.MQ | 1 << ProtocolFeature.REPLY_ACK)
    assert protocol.u64.unpack(messages[8].payload)[0] == FEATURES
    for message in messages:
        assert message.flags & protocol.VHOST_USER_VERSION_MASK == protocol.VHOST_USER_VERSION
        need_reply = bool(message.flags & protocol.VHOST_USER_NEED_REPLY_MASK)
        acked_phase = message.request not in GETS and message is not messages[2]
        assert need_reply == acked_phase, message.request
        expected_fds = 1 if message.request in (
            Request.SET_VRING_CALL, Request.SET_VRING_KICK, Request.SET_MEM_TABLE) else 0
        assert len(message.fds) == expected_fds, message.request
    enables = [protocol.vring_state.unpack(m.payload) for m in messages[-4:-2]]
    assert enables == [(0, 1), (1, 1)]


def test_placeholder_call_fds_are_replaced(tmp_path, scripted):
    backend = scripted()
    with frontend_for(tmp_path) as frontend:
        frontend.start()
        calls = [m for m in backend.messages if m.request == Request.SET_VRING_CALL]
        assert [protocol.u64.unpack(m.payload)[0] for m in calls] == [0, 1, 0, 1]
        final = {protocol.u64.unpack(m.payload)[0]: m.fds[0] for m in calls[2:]}
        for index, fd in final.items():
            os.eventfd_write(fd, 1)  # the backend's copy of the queue's call eventfd
            assert frontend.queues[index].wait_call(1)


def test_memory_table_and_ring_addresses(tmp_path, scripted):
    backend = scripted(vring_base=0)
    memory = GuestMemory([(0, 1 << 20), (4 << 30, 1 << 20, 1 << 16)])
    with frontend_for(tmp_path, memory=memory, ring_region=1, vring_base=65500) as frontend:
        frontend.start()
        table = next(m for m in backend.messages if m.request == Request.SET_MEM_TABLE)
        nregions, _ = protocol.memory_header.unpack_from(table.payload)
        regions = [protocol.memory_region.unpack_from(
            table.payload, protocol.memory_header.size + i * protocol.memory_region.size)
            for i in range(nregions)]
        assert len(table.payload) == protocol.memory_header.size + 2 * protocol.memory_region.size
        assert regions == [(r.guest_phys_addr, r.memory_size, r.userspace_addr, r.mmap_offset)
                           for r in memory.regions]

        def backend_translate(uaddr):
            """What a backend does with SET_VRING_ADDR: find the region by userspace_addr."""
            for (gpa, size, user, offset), fd in zip(regions, table.fds):
                if user <= uaddr < user + size:
                    return fd, offset + uaddr - user, gpa + uaddr - user
            raise AssertionError(f"{uaddr:#x} is in no region")

        queue = frontend.queues[1]
        addr = next(protocol.vring_addr.unpack(m.payload) for m in backend.messages
                    if m.request == Request.SET_VRING_ADDR
                    and protocol.vring_addr.unpack(m.payload)[0] == 1)
        _, flags, desc, used, avail, log = addr
        assert (flags, log) == (0, 0)
        for uaddr, gpa in ((desc, queue.desc_addr), (used, queue.used_addr),
                           (avail, queue.avail_addr)):
            assert backend_translate(uaddr)[2] == gpa
        fd, offset, _ = backend_translate(avail)
        _, size, _, mmap_offset = regions[1]
        with mmap.mmap(fd, mmap_offset + size) as view:
            # avail->idx as the backend reads it through its own mapping of the passed fd.
            assert int.from_bytes(view[offset + 2:offset + 4], "little") == 65500
        base = next(protocol.vring_state.unpack(m.payload) for m in backend.messages
                    if m.request == Request.SET_VRING_BASE)
        assert base == (0, 65500)


def test_without_protocol_features(tmp_path, scripted):
    backend = scripted(features=FEATURES & ~(1 << protocol.VHOST_USER_F_PROTOCOL_FEATURES))
    with frontend_for(tmp_path) as frontend:
        frontend.start()
        assert frontend.acked_protocol_features == 0
    assert backend.requests() == [
        Request.GET_FEATURES, Request.SET_OWNER, Request.GET_FEATURES,
        Request.SET_VRING_CALL, Request.SET_VRING_CALL, Request.SET_FEATURES,
        Request.SET_MEM_TABLE, *RING_START, *RING_START,
        Request.SET_VRING_CALL, Request.SET_VRING_CALL]
    assert not any(m.flags & protocol.VHOST_USER_NEED_REPLY_MASK for m in backend.messages)


def test_ring_features_follow_the_offer(tmp_path, scripted):
    scripted(features=1 << protocol.VIRTIO_F_VERSION_1 | 1 << protocol.VIRTIO_RING_F_EVENT_IDX)
    with frontend_for(tmp_path) as frontend:
        frontend.start()
        assert frontend.acked_features == (1 << protocol.VIRTIO_F_VERSION_1
                                           | 1 << protocol.VIRTIO_RING_F_EVENT_IDX)
        assert frontend.queues[1].event_idx and not frontend.queues[1].indirect_desc


def test_version_1_required(tmp_path, scripted):
    scripted(features=1 << protocol.VHOST_USER_F_PROTOCOL_FEATURES)
    with frontend_for(tmp_path) as frontend, pytest.raises(VhostUserError, match="VERSION_1"):
        frontend.start()


def test_mem_slots_use_add_mem_reg(tmp_path, scripted):
    backend = scripted()
    memory = GuestMemory([(0, 1 << 20), (1 << 32, 1 << 20)])
    expected = [(r.guest_phys_addr, r.memory_size, r.userspace_addr, r.mmap_offset)
                for r in memory.regions]
    wanted = 1 << ProtocolFeature.REPLY_ACK | 1 << ProtocolFeature.CONFIGURE_MEM_SLOTS
    with frontend_for(tmp_path, memory=memory, protocol_features=wanted) as frontend:
        frontend.start()
        assert frontend.max_mem_slots == 32
    requests = backend.requests()
    assert requests[:5] == [Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES,
                            Request.SET_PROTOCOL_FEATURES, Request.GET_MAX_MEM_SLOTS,
                            Request.SET_OWNER]
    assert Request.SET_MEM_TABLE not in requests
    adds = [m for m in backend.messages if m.request == Request.ADD_MEM_REG]
    assert [protocol.memory_region.unpack_from(m.payload, 8) for m in adds] == expected
    assert [len(m.fds) for m in adds] == [1, 1]


def test_not_enough_queues(tmp_path, scripted):
    backend = scripted(queue_num=2)
    with frontend_for(tmp_path, num_request_queues=2) as frontend:
        with pytest.raises(VhostUserError, match="2 queues, 3 wanted"):
            frontend.start()
    assert backend.requests()[-1] == Request.GET_QUEUE_NUM


def test_nack_raises(tmp_path, scripted):
    scripted(acks={Request.SET_MEM_TABLE: 1})
    with frontend_for(tmp_path) as frontend:
        with pytest.raises(VhostUserError, match="SET_MEM_TABLE failed"):
            frontend.start()


def test_stop_queue_and_reset(tmp_path, scripted):
    backend = scripted(vring_base=77,
                       protocol_features=PROTOCOL | 1 << ProtocolFeature.RESET_DEVICE)
    with frontend_for(tmp_path) as frontend:
        frontend.start()
        assert frontend.stop_queue(1) == 77
        assert frontend.queues[1].base == 77
        frontend.reset_device()
    assert backend.requests()[-2:] == [Request.GET_VRING_BASE, Request.RESET_DEVICE]
    assert protocol.vring_state.unpack(backend.messages[-2].payload) == (1, 0)


def test_reset_owner_without_reset_device(tmp_path, scripted):
    backend = scripted()
    with frontend_for(tmp_path) as frontend:
        frontend.start()
        frontend.reset_device()
    assert backend.requests()[-1] == Request.RESET_OWNER


def test_raw_send_and_receive(tmp_path, scripted):
    backend = scripted()
    with frontend_for(tmp_path) as frontend:
        frontend.connect()
        frontend.send(Request.GET_QUEUE_NUM, b"junk")
        reply = frontend.recv_reply()
        assert (reply.request, protocol.u64.unpack(reply.payload)[0]) == (Request.GET_QUEUE_NUM, 2)
        assert reply.flags & protocol.VHOST_USER_REPLY_MASK
        fd = os.eventfd(0)
        frontend.send_raw(protocol.header.pack(Request.SET_VRING_KICK, 1, 8)
                          + protocol.u64.pack(0), [fd])
        os.close(fd)
        frontend.send(Request.GET_FEATURES)
        frontend.recv_reply()
        assert not frontend.wait_closed(0.05)
    messages = backend.finished()
    assert messages[0].payload == b"junk"
    assert len(messages[1].fds) == 1


def test_wait_closed_and_eof(tmp_path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(tmp_path / "sock"))
        listener.listen(1)
        with frontend_for(tmp_path) as frontend:
            frontend.connect()
            conn, _ = listener.accept()
            conn.close()
            assert frontend.wait_closed(1)
            with pytest.raises(ConnectionResetError):
                frontend.recv_reply()
