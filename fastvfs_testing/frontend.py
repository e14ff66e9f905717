"""A vhost-user frontend for virtio-fs backends: QEMU's half of the protocol, without a VM.

:class:`VhostUserFrontend` connects to a backend's Unix socket and brings a vhost-user-fs device up
with the message sequence QEMU 7.2's ``vhost-user-fs-pci`` uses (hw/virtio/vhost.c,
hw/virtio/vhost-user.c, hw/virtio/vhost-user-fs.c), so a backend that passes here meets the same
order a real VM produces:

device creation (``vhost_dev_init``)
    GET_FEATURES; if VHOST_USER_F_PROTOCOL_FEATURES is offered: GET_PROTOCOL_FEATURES,
    SET_PROTOCOL_FEATURES, GET_QUEUE_NUM (with MQ), GET_MAX_MEM_SLOTS (with CONFIGURE_MEM_SLOTS);
    SET_OWNER; GET_FEATURES again; SET_VRING_CALL for every queue with a placeholder eventfd
    (QEMU's "masked notifier"), replaced when the queue starts.
driver start (``vuf_start`` / ``vhost_dev_start``)
    SET_FEATURES; SET_MEM_TABLE (or one ADD_MEM_REG per region with CONFIGURE_MEM_SLOTS); per queue
    SET_VRING_NUM, SET_VRING_BASE, SET_VRING_ADDR, SET_VRING_KICK; with protocol features
    SET_VRING_ENABLE 1 on every queue; only then SET_VRING_CALL with the real call eventfd of every
    queue (virtio-pci unmasks the guest notifiers after ``vhost_dev_start``).  A backend therefore
    sees rings kicked-capable and enabled while their call fd is still the placeholder.

When REPLY_ACK is negotiated every request without a mandatory reply carries NEED_REPLY (QEMU asks
only for the memory-table messages, and for a few more while migration logging is on; asking always
checks a backend harder) and a non-zero ack raises :class:`VhostUserError`.

For malformed-message tests, :meth:`VhostUserFrontend.send`, :meth:`~VhostUserFrontend.send_raw`,
:meth:`~VhostUserFrontend.recv_reply` and :meth:`~VhostUserFrontend.wait_closed` speak the wire
format directly, and the handshake steps are public so a test can stop anywhere in between.
"""

import array
import os
import select
import socket
import time
from dataclasses import dataclass

from fastvfs_testing.guestmem import GuestMemory
from fastvfs_testing.shmem import BackendChannelServer, SharedMemoryWindow
from fastvfs_testing.virtq import DriverVirtqueue
from fastvfs.vhost_user import protocol
from fastvfs.vhost_user.protocol import ProtocolFeature, Request

# What this frontend asks for when the backend offers it.  CONFIGURE_MEM_SLOTS (ADD_MEM_REG instead
# of SET_MEM_TABLE) is supported but not asked for by default, so the common path is the table.
DEFAULT_PROTOCOL_FEATURES = (1 << ProtocolFeature.MQ | 1 << ProtocolFeature.REPLY_ACK
                             | 1 << ProtocolFeature.RESET_DEVICE)
# VIRTIO shared memory (the DAX window): the back-end asks for maps on its own channel.
SHMEM_PROTOCOL_FEATURES = (1 << ProtocolFeature.BACKEND_REQ | 1 << ProtocolFeature.BACKEND_SEND_FD
                           | 1 << ProtocolFeature.SHMEM)
SUPPORTED_PROTOCOL_FEATURES = (DEFAULT_PROTOCOL_FEATURES | 1 << ProtocolFeature.CONFIGURE_MEM_SLOTS
                               | SHMEM_PROTOCOL_FEATURES)
DEFAULT_TIMEOUT = 10.0


class VhostUserError(Exception):
    """The backend refused a request, answered wrongly, or lacks something required."""


@dataclass
class Message:
    """One vhost-user message as received: header fields, payload bytes and attached fds."""

    request: int
    flags: int
    payload: bytes
    fds: list


def _bit(number):
    return 1 << number


def _name(request):
    try:
        return Request(request).name
    except ValueError:
        return f"request {request}"


class VhostUserFrontend:
    """The frontend end of one vhost-user-fs connection.

    ``num_request_queues`` request queues follow the hiprio queue 0, each ``queue_size`` entries.
    ``memory`` is a :class:`GuestMemory` (default: one 64 MiB region); the frontend owns it and
    closes it in :meth:`close`.
    ``indirect_desc`` / ``event_idx`` say whether the "guest" accepts those ring features (the
    negotiated result also needs the backend's offer).  ``protocol_features`` is the mask of
    protocol features to accept from the backend's offer.  ``vring_base`` is the initial index of
    every ring; ``ring_region`` pins the rings into that memory region (to exercise translation of
    ring addresses through a region other than the first).  ``ack_all=False`` sends NEED_REPLY
    nowhere, even with REPLY_ACK negotiated.  ``timeout`` bounds every wait for a reply.
    ``shared_memory=True`` also accepts the back-end's VIRTIO shared memory regions (the DAX
    window): the frontend reserves each one, hands the back-end a request channel
    (SET_BACKEND_REQ_FD) and maps what it asks for; ``windows`` maps shmid to
    :class:`~fastvfs_testing.shmem.SharedMemoryWindow` and ``channel`` serves the requests.

    After :meth:`start`, ``queues`` holds one :class:`DriverVirtqueue` per queue.
    """

    def __init__(self, socket_path, *, num_request_queues=1, queue_size=128, memory=None,
                 indirect_desc=True, event_idx=True, protocol_features=DEFAULT_PROTOCOL_FEATURES,
                 vring_base=0, ring_region=None, ack_all=True, timeout=DEFAULT_TIMEOUT,
                 shared_memory=False):
        if shared_memory:
            protocol_features |= SHMEM_PROTOCOL_FEATURES
        if protocol_features & ~SUPPORTED_PROTOCOL_FEATURES:
            raise ValueError(f"protocol features {protocol_features:#x} include ones this "
                             f"frontend cannot drive (supported: {SUPPORTED_PROTOCOL_FEATURES:#x})")
        self.socket_path = socket_path
        self.num_queues = 1 + num_request_queues
        self.queue_size = queue_size
        self.memory = GuestMemory() if memory is None else memory
        self.want_indirect_desc = indirect_desc
        self.want_event_idx = event_idx
        self.want_protocol_features = protocol_features
        self.vring_base = vring_base
        self.ring_region = ring_region
        self.ack_all = ack_all
        self.timeout = timeout
        self.sock = None
        self.features = None  # offered by the backend
        self.acked_features = 0
        self.protocol_features = None  # offered by the backend
        self.acked_protocol_features = 0
        self.queue_num = None  # GET_QUEUE_NUM answer
        self.max_mem_slots = None  # GET_MAX_MEM_SLOTS answer
        self.queues = []
        self._masked_call_fds = []
        self.windows = {}
        self.channel = None

    @property
    def dax_window(self):
        """The cache window (shared memory region 0), or None."""
        return self.windows.get(protocol.VIRTIO_FS_SHMCAP_ID_CACHE)

    # -- lifetime -----------------------------------------------------------------------------

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(self.timeout)
            sock.connect(os.fspath(self.socket_path))
        except BaseException:
            sock.close()
            raise
        self.sock = sock

    def start(self):
        """Connect (if needed) and run the whole QEMU-like bring-up; returns self."""
        if self.sock is None:
            self.connect()
        self.init_device()
        self.start_device()
        return self

    def close(self):
        """Close the connection (a backend treats this as the VM going away) and free everything."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        for window in self.windows.values():
            window.close()
        self.windows = {}
        self._close_queues()
        self.memory.close()

    def _close_queues(self):
        for queue in self.queues:
            queue.close()
        self.queues = []
        for fd in self._masked_call_fds:
            os.close(fd)
        self._masked_call_fds = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the handshake, step by step ----------------------------------------------------------

    def has_protocol_feature(self, feature):
        return bool(self.acked_protocol_features & _bit(feature))

    def init_device(self):
        """The messages QEMU sends when the device is created (``vhost_dev_init``)."""
        self.features = self.get_u64(Request.GET_FEATURES)
        if self.features & _bit(protocol.VHOST_USER_F_PROTOCOL_FEATURES):
            self.protocol_features = self.get_u64(Request.GET_PROTOCOL_FEATURES)
            # REPLY_ACK only applies from the next message on, so this one goes unacknowledged.
            self.request(Request.SET_PROTOCOL_FEATURES, protocol.u64.pack(
                self.protocol_features & self.want_protocol_features))
            self.acked_protocol_features = self.protocol_features & self.want_protocol_features
            if self.has_protocol_feature(ProtocolFeature.MQ):
                self.queue_num = self.get_u64(Request.GET_QUEUE_NUM)
                if self.queue_num < self.num_queues:
                    raise VhostUserError(f"backend supports {self.queue_num} queues, "
                                         f"{self.num_queues} wanted")
            if self.has_protocol_feature(ProtocolFeature.CONFIGURE_MEM_SLOTS):
                self.max_mem_slots = self.get_u64(Request.GET_MAX_MEM_SLOTS)
                if self.max_mem_slots < len(self.memory.regions):
                    raise VhostUserError(f"backend has {self.max_mem_slots} memory slots, "
                                         f"{len(self.memory.regions)} regions to add")
            if self.has_protocol_feature(ProtocolFeature.SHMEM):
                self.setup_shared_memory()
        self.request(Request.SET_OWNER)
        self.features = self.get_u64(Request.GET_FEATURES)
        self._close_queues()
        for index in range(self.num_queues):
            fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            self._masked_call_fds.append(fd)
            self.set_vring_fd(Request.SET_VRING_CALL, index, fd)

    def setup_shared_memory(self):
        """GET_SHMEM_CONFIG, reserve every region, and hand over the request channel."""
        self.send(Request.GET_SHMEM_CONFIG)
        nregions, _, *sizes = self._reply_body(Request.GET_SHMEM_CONFIG, protocol.shmem_config)
        if sum(1 for size in sizes if size) != nregions:
            raise VhostUserError(f"GET_SHMEM_CONFIG counts {nregions} regions, lists "
                                 f"{sum(1 for size in sizes if size)}")
        self.windows = {shmid: SharedMemoryWindow(size) for shmid, size in enumerate(sizes)
                        if size}
        if not self.has_protocol_feature(ProtocolFeature.BACKEND_REQ):
            return
        self.channel = BackendChannelServer(self.windows)
        self.request(Request.SET_BACKEND_REQ_FD, b"", [self.channel.backend_sock.fileno()])
        self.channel.backend_sock.close()

    def start_device(self):
        """The messages QEMU sends when the guest driver sets DRIVER_OK (``vhost_dev_start``)."""
        self.set_features()
        event_idx = bool(self.acked_features & _bit(protocol.VIRTIO_RING_F_EVENT_IDX))
        indirect = bool(self.acked_features & _bit(protocol.VIRTIO_RING_F_INDIRECT_DESC))
        for queue in self.queues:
            queue.close()
        self.queues = [
            DriverVirtqueue(self.memory, index, self.queue_size, event_idx=event_idx,
                            indirect_desc=indirect, base=self.vring_base, region=self.ring_region)
            for index in range(self.num_queues)]
        self.set_mem_table()
        for index in range(self.num_queues):
            self.start_queue(index)
        if self.acked_features & _bit(protocol.VHOST_USER_F_PROTOCOL_FEATURES):
            # vhost-user.rst "Ring states": with protocol features rings start disabled.
            for index in range(self.num_queues):
                self.enable_queue(index)
        for index in range(self.num_queues):
            self.set_call(index)

    def set_features(self):
        """SET_FEATURES: VERSION_1, the wanted ring features the backend offers, and
        VHOST_USER_F_PROTOCOL_FEATURES when offered (it must be acked to keep protocol features)."""
        if not self.features & _bit(protocol.VIRTIO_F_VERSION_1):
            raise VhostUserError("backend does not offer VIRTIO_F_VERSION_1")
        wanted = _bit(protocol.VIRTIO_F_VERSION_1) | _bit(protocol.VHOST_USER_F_PROTOCOL_FEATURES)
        if self.want_indirect_desc:
            wanted |= _bit(protocol.VIRTIO_RING_F_INDIRECT_DESC)
        if self.want_event_idx:
            wanted |= _bit(protocol.VIRTIO_RING_F_EVENT_IDX)
        self.acked_features = self.features & wanted
        self.request(Request.SET_FEATURES, protocol.u64.pack(self.acked_features))

    def set_mem_table(self):
        """Share guest memory: one SET_MEM_TABLE, or ADD_MEM_REG per region with mem slots."""
        regions = self.memory.regions
        if self.has_protocol_feature(ProtocolFeature.CONFIGURE_MEM_SLOTS):
            for region in regions:
                self.request(Request.ADD_MEM_REG,
                             protocol.single_memory_region.pack(0) + region.packed(), [region.fd])
            return
        if len(regions) > protocol.VHOST_MEMORY_BASELINE_NREGIONS:
            raise ValueError(f"SET_MEM_TABLE carries at most "
                             f"{protocol.VHOST_MEMORY_BASELINE_NREGIONS} regions")
        payload = protocol.memory_header.pack(len(regions), 0) + b"".join(
            region.packed() for region in regions)
        self.request(Request.SET_MEM_TABLE, payload, [region.fd for region in regions])

    def start_queue(self, index):
        """SET_VRING_NUM, SET_VRING_BASE, SET_VRING_ADDR, SET_VRING_KICK, as QEMU's
        ``vhost_virtqueue_start`` sends them.

        Restarting a ring stopped with :meth:`stop_queue` takes this, :meth:`enable_queue` and
        :meth:`set_call` (a backend may drop its call fd when the ring stops)."""
        queue = self.queues[index]
        self.request(Request.SET_VRING_NUM, protocol.vring_state.pack(index, queue.size))
        self.request(Request.SET_VRING_BASE, protocol.vring_state.pack(index, queue.base))
        uaddr = self.memory.userspace_addr
        self.request(Request.SET_VRING_ADDR, protocol.vring_addr.pack(
            index, 0, uaddr(queue.desc_addr), uaddr(queue.used_addr), uaddr(queue.avail_addr), 0))
        self.set_vring_fd(Request.SET_VRING_KICK, index, queue.kick_fd)

    def set_call(self, index):
        """SET_VRING_CALL with the queue's own call eventfd (QEMU's notifier unmask)."""
        self.set_vring_fd(Request.SET_VRING_CALL, index, self.queues[index].call_fd)

    def enable_queue(self, index, enable=True):
        self.request(Request.SET_VRING_ENABLE, protocol.vring_state.pack(index, int(enable)))

    def stop_queue(self, index):
        """GET_VRING_BASE: stop the ring; returns (and records as the queue's base) the index of
        the next available entry the backend would have processed."""
        self.send(Request.GET_VRING_BASE, protocol.vring_state.pack(index, 0))
        reply_index, base = self._reply_body(Request.GET_VRING_BASE, protocol.vring_state)
        if reply_index != index:
            raise VhostUserError(f"GET_VRING_BASE for ring {index} answered for ring {reply_index}")
        self.queues[index].base = base
        return base

    def reset_device(self):
        """RESET_DEVICE when negotiated, else RESET_OWNER (QEMU's ``vhost_user_reset_device``)."""
        if self.has_protocol_feature(ProtocolFeature.RESET_DEVICE):
            self.request(Request.RESET_DEVICE)
        else:
            self.request(Request.RESET_OWNER)

    def set_vring_fd(self, request, index, fd):
        """SET_VRING_KICK/CALL/ERR: the ring index in the u64 payload, the eventfd attached; with
        ``fd=None`` the NOFD bit is set instead (the backend then polls, or has no notifier)."""
        if fd is None:
            self.request(request, protocol.u64.pack(index | protocol.VHOST_USER_VRING_NOFD_MASK))
        else:
            self.request(request, protocol.u64.pack(index), [fd])

    # -- requests -------------------------------------------------------------------------------

    def get_u64(self, request):
        """Send a GET_* request whose reply is a u64 and return it."""
        self.send(request)
        return self._reply_body(request, protocol.u64)[0]

    def request(self, request, payload=b"", fds=()):
        """Send a request that has no mandatory reply, acknowledged when REPLY_ACK is on."""
        ack = self.ack_all and self.has_protocol_feature(ProtocolFeature.REPLY_ACK)
        flags = protocol.VHOST_USER_VERSION | (protocol.VHOST_USER_NEED_REPLY_MASK if ack else 0)
        self.send(request, payload, fds, flags)
        if ack:
            status, = self._reply_body(request, protocol.u64)
            if status != 0:
                raise VhostUserError(f"{_name(request)} failed: backend acked {status}")

    def _reply_body(self, request, body):
        reply = self.recv_reply()
        name = _name(request)
        if reply.request != request:
            raise VhostUserError(f"reply to {name} has request code {reply.request}")
        if reply.flags & protocol.VHOST_USER_VERSION_MASK != protocol.VHOST_USER_VERSION:
            raise VhostUserError(f"reply to {name} has version flags {reply.flags:#x}")
        if not reply.flags & protocol.VHOST_USER_REPLY_MASK:
            raise VhostUserError(f"reply to {name} lacks the REPLY flag")
        if len(reply.payload) != body.size:
            raise VhostUserError(f"reply to {name} has {len(reply.payload)} payload bytes, "
                                 f"{body.size} expected")
        return body.unpack(reply.payload)

    # -- raw wire access ------------------------------------------------------------------------

    def send(self, request, payload=b"", fds=(), flags=protocol.VHOST_USER_VERSION):
        """Send one message; the header's size field is the payload length."""
        self.send_raw(protocol.header.pack(request, flags, len(payload)) + payload, fds)

    def send_raw(self, data, fds=()):
        """Send arbitrary bytes (with fds as SCM_RIGHTS) in one sendmsg, as frontends do: some
        backends read the payload with a single read() after the header."""
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        self.sock.sendmsg([data], ancillary)

    def recv_reply(self):
        """Receive one message from the backend.  Raises ConnectionResetError on EOF and
        TimeoutError when nothing arrives within ``timeout``."""
        fds = []
        header = b""
        while len(header) < protocol.HEADER_SIZE:
            data, ancdata, _, _ = self.sock.recvmsg(
                protocol.HEADER_SIZE - len(header),
                socket.CMSG_SPACE(protocol.MAX_FDS * array.array("i").itemsize))
            for level, kind, fd_bytes in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.extend(array.array("i", fd_bytes[:len(fd_bytes) - len(fd_bytes) % 4]))
            if not data:
                for fd in fds:
                    os.close(fd)
                raise ConnectionResetError("backend closed the vhost-user connection")
            header += data
        request, flags, size = protocol.header.unpack(header)
        if size > protocol.MAX_PAYLOAD:
            raise VhostUserError(f"backend message {request} claims a {size}-byte payload")
        payload = b""
        while len(payload) < size:
            data = self.sock.recv(size - len(payload))
            if not data:
                raise ConnectionResetError("backend closed the connection mid-message")
            payload += data
        return Message(request, flags, payload, fds)

    def wait_closed(self, timeout=None):
        """Wait until the backend closes the connection; False if it stays open for ``timeout``
        seconds or sends something instead (which is left unread)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            readable, _, _ = select.select([self.sock], [], [], remaining)
            if readable:
                try:
                    return self.sock.recv(1, socket.MSG_PEEK) == b""
                except ConnectionResetError:
                    return True
