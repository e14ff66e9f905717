"""The vhost-user-fs backend state machine: answers the frontend's requests and starts and stops
one hot-path worker thread per virtqueue.

Follows QEMU's docs/interop/vhost-user.rst: with VHOST_USER_F_PROTOCOL_FEATURES negotiated a
ring starts disabled and runs once it has a kick fd and SET_VRING_ENABLE 1; without it a ring
runs from its kick.  GET_VRING_BASE stops a ring.  Every message is validated before it changes
any state; an invalid one is answered with a failure (REPLY_ACK) or an empty reply (GET_*),
never with a crash.
"""

import contextlib
import fcntl
import logging
import os
import socket
import stat
import threading
import time

from .. import procfd, ring
from ..config import IoEngine, RingOptions
from . import protocol
from .connection import Connection, Disconnected, ProtocolError
from .protocol import ProtocolFeature as PF
from .protocol import Request

log = logging.getLogger("fastvfs.vhost_user")

OFFERED_FEATURES = ((1 << protocol.VIRTIO_F_VERSION_1) |
                    (1 << protocol.VIRTIO_RING_F_INDIRECT_DESC) |
                    (1 << protocol.VIRTIO_RING_F_EVENT_IDX) |
                    (1 << protocol.VHOST_USER_F_PROTOCOL_FEATURES))
OFFERED_PROTOCOL_FEATURES = ((1 << PF.MQ) | (1 << PF.REPLY_ACK) | (1 << PF.RESET_DEVICE) |
                             (1 << PF.CONFIGURE_MEM_SLOTS))
# Offered in addition when the device has a DAX cache window (shared memory region 0).
SHMEM_PROTOCOL_FEATURES = (1 << PF.BACKEND_REQ) | (1 << PF.BACKEND_SEND_FD) | (1 << PF.SHMEM)
MAX_MEM_SLOTS = 32
# How long stopping a ring waits for its worker to return from the request it is in (a host
# file system that hangs): past it the stop is answered anyway (see ``_stop``).
STOP_WAIT = 2.0
# The rings of a device built without ``ring`` options: synchronous I/O, no polling.
DEFAULT_RING = RingOptions(io_engine=IoEngine.SYNC)


class BadRequest(Exception):
    """A well-framed message whose content is invalid: answered with a failure."""


class VringState:
    """What the frontend told us about one ring, and its worker while it runs."""

    def __init__(self, index):
        self.index = index
        self.num = 0
        self.addr = None          # (desc, used, avail) frontend user addresses
        self.base = 0             # next avail index to serve
        self.kick_fd = None
        self.call_fd = None
        self.err_fd = None
        self.enabled = False
        self.queue = None         # ring.Virtqueue while running
        self.paused = None        # the stopped Virtqueue a backend-side restart hands over from
        self.lock = ring.RingLock()
        self.thread = None
        self.stop_fd = None

    @property
    def running(self):
        return self.queue is not None


class VhostUserFsDevice:
    """Serves one frontend connection.

    ``handler(request, out_size)`` answers the FUSE requests the hot path does not serve itself;
    ``on_reset()`` is called when the device is reset or the frontend goes away.
    ``shmem_sizes`` lists the device's VIRTIO shared memory regions by shmid (region 0 is the
    DAX window); with any, the backend-request channel ``backend`` carries the map requests.
    ``ring`` (a ``fastvfs.config.RingOptions``, default ``DEFAULT_RING``) is what every
    virtqueue worker is started with.
    """

    def __init__(self, handler, handles, num_queues=2, on_reset=None, ring=DEFAULT_RING,
                 inodes=None, shmem_sizes=(), backend=None, tag=None, stats=None,
                 stop_wait=STOP_WAIT):
        if num_queues < 2:
            raise ValueError("a virtio-fs device has a hiprio queue and at least one request queue")
        self.handler = handler
        self.handles = handles
        self.num_queues = num_queues
        self.on_reset = on_reset
        self.ring = ring
        # With the file system's node id table the hot path answers GETATTR itself, with
        # the ring options' attribute timeout.
        self.inodes = inodes
        self.fast_io = False
        self._fast_io_lock = threading.Lock()
        self.shmem_sizes = tuple(shmem_sizes)
        if len(self.shmem_sizes) > protocol.VIRTIO_MAX_SHMEM_REGIONS:
            raise ValueError("too many shared memory regions")
        self.backend = backend
        self.offered_protocol_features = OFFERED_PROTOCOL_FEATURES
        self.stats = stats
        self.stop_wait = stop_wait
        # Workers that did not return within ``stop_wait``: (ring index, thread, queue,
        # stop eventfd), kept until they return (see ``_stop``).
        self.stuck = []
        # With a tag the device configuration (virtio spec 5.11.4) is the backend's to give.
        self.config = None
        if tag is not None:
            raw = tag.encode()
            if not 0 < len(raw) <= protocol.VIRTIO_FS_TAG_SIZE:
                raise ValueError("the tag must be 1 to 36 bytes")
            self.config = raw.ljust(protocol.VIRTIO_FS_TAG_SIZE, b"\0") + \
                protocol.virtio_fs_config_tail.pack(num_queues - 1, 0)
            self.offered_protocol_features |= 1 << PF.CONFIG
        if any(self.shmem_sizes):
            if backend is None:
                raise ValueError("shared memory regions need a backend-request channel")
            self.offered_protocol_features |= SHMEM_PROTOCOL_FEATURES
        self.lock = threading.Lock()
        self._reset_state()
        self.table = {}
        for req in Request:
            method = getattr(self, "do_" + req.name.lower(), None)
            if method is not None:
                self.table[int(req)] = method

    def _reset_state(self, keep_protocol_features=False):
        self.features = 0
        if not keep_protocol_features:
            # Negotiated once per connection: a RESET_DEVICE keeps them (vhost-user.rst), and
            # its own reply depends on REPLY_ACK still being in force.
            self.protocol_features = 0
        self.status = 0
        self.memory = ring.MemoryTable()
        self.vrings = [VringState(i) for i in range(self.num_queues)]

    # -- serving a connection -----------------------------------------------------------------

    def serve(self, conn: Connection):
        """Answer requests until the frontend disconnects; then stop every ring."""
        try:
            while True:
                try:
                    msg = conn.recv()
                    if msg is None:
                        log.info("frontend disconnected")
                        break
                    self._dispatch(conn, msg)
                except ProtocolError as exc:
                    log.error("closing the connection: %s", exc)
                    break
                except Disconnected as exc:
                    log.info("frontend disconnected: %s", exc)
                    break
        finally:
            if self.backend is not None:
                self.backend.detach()
            self.reset()

    def _dispatch(self, conn, msg):
        method = self.table.get(msg.request)
        name = Request(msg.request).name if msg.request in Request._value2member_map_ else msg.request
        log.debug("request %s (%d bytes, %d fds)", name, len(msg.payload), len(msg.fds))
        ok = True
        reply = None
        try:
            if not msg.version_ok:
                raise BadRequest(f"unsupported vhost-user version in flags {msg.flags:#x}")
            if method is None:
                raise BadRequest(f"unsupported request {name}")
            reply = method(msg)
        except (BadRequest, ValueError, OSError) as exc:
            log.warning("request %s refused: %s", name, exc)
            ok = False
        except Exception:
            # A bug of ours, not the frontend's: report it loudly, but keep serving.
            log.exception("request %s failed", name)
            ok = False
        finally:
            msg.close_fds()
        if msg.request in _GET_REQUESTS:
            # A GET_* always gets its reply; an empty one signals failure.
            conn.send(msg.request, reply if ok and reply is not None else b"")
        elif msg.need_reply and self.protocol_features & (1 << PF.REPLY_ACK):
            conn.send(msg.request, protocol.u64.pack(0 if ok else 1))

    def reset(self, keep_protocol_features=False):
        """Stop every ring and forget the frontend's state (RESET_DEVICE, disconnect)."""
        with self.lock:
            # Every worker is told first, so they stop together and share one wait.
            for vring in self.vrings:
                if vring.running:
                    vring.queue.stop()
            deadline = time.monotonic() + self.stop_wait
            for vring in self.vrings:
                self._stop(vring, deadline=deadline)
                for name in ("kick_fd", "call_fd", "err_fd"):
                    fd = getattr(vring, name)
                    if fd is not None:
                        os.close(fd)
            self._reset_state(keep_protocol_features)
        if self.on_reset:
            self.on_reset()

    def set_fast_io(self, enabled):
        """Called by the FUSE engine when a session starts or ends, from a queue's worker while
        the control thread may be starting or stopping rings: ``_fast_io_lock`` (a leaf lock,
        never held while waiting for a worker) orders the flag with every queue that takes it,
        so no ring starts with the value from before the change."""
        with self._fast_io_lock:
            self.fast_io = enabled
            for vring in self.vrings:
                queue = vring.queue
                if queue is not None:
                    queue.set_fast_io(enabled)

    # -- ring lifecycle -----------------------------------------------------------------------

    def _ready(self, vring):
        protocol_mode = self.features & (1 << protocol.VHOST_USER_F_PROTOCOL_FEATURES)
        return (vring.kick_fd is not None and vring.num and vring.addr is not None and
                len(self.memory) and (vring.enabled or not protocol_mode))

    def _start(self, vring):
        if vring.running or not self._ready(vring):
            return
        for index, thread, *_ in self._stuck_workers():
            if index == vring.index:
                thread.join(self.stop_wait)
        if any(index == vring.index for index, *_ in self._stuck_workers()):
            # Two workers must never serve one ring.
            log.error("ring %d not started: its previous worker is still stuck in a request",
                      vring.index)
            self._signal_error(vring)
            return
        desc, used, avail = vring.addr
        stop_fd = os.eventfd(0, os.EFD_CLOEXEC)
        try:
            queue = ring.Virtqueue(
                vring.index, self.memory, self.handles, vring.num, desc, avail, used,
                vring.base, vring.kick_fd, -1 if vring.call_fd is None else vring.call_fd,
                stop_fd, bool(self.features & (1 << protocol.VIRTIO_RING_F_EVENT_IDX)),
                bool(self.features & (1 << protocol.VIRTIO_RING_F_INDIRECT_DESC)), self.ring,
                vring.lock, self.inodes, self.stats, -1 if vring.err_fd is None else vring.err_fd)
        except BaseException:
            os.close(stop_fd)
            raise
        if vring.paused is not None:
            # Requests still being answered (deferred replies) continue on the new queue.
            vring.paused.retire(queue)
            vring.paused = None
        with self._fast_io_lock:
            vring.queue = queue
            queue.set_fast_io(self.fast_io)
        vring.stop_fd = stop_fd
        vring.thread = threading.Thread(target=self._worker, args=(queue,),
                                        name=f"fastvfs-vq{vring.index}", daemon=True)
        vring.thread.start()
        log.debug("ring %d started: size %d, base %d", vring.index, vring.num, vring.base)

    @staticmethod
    def _signal_error(vring):
        """Tell the frontend that ``vring`` will not be served: its error eventfd
        (VHOST_USER_SET_VRING_ERR), where it gave one, is signalled."""
        if vring.err_fd is not None:
            try:
                os.eventfd_write(vring.err_fd, 1)
            except OSError as exc:
                log.error("ring %d: its error eventfd cannot be signalled: %s", vring.index, exc)

    def _worker(self, queue):
        try:
            queue.run(self.handler)
        except Exception:
            log.exception("ring %d worker failed", queue.index)

    def _backend_quiet(self):
        """While a worker is waited for, no back-end request waits for the frontend (which
        may answer only after the control plane's reply): see BackendChannel.quiet."""
        return self.backend.quiet() if self.backend is not None else contextlib.nullcontext()

    def _stop(self, vring, pause=False, deadline=None):
        """Stop the ring's worker.  A frontend stop (``pause=False``: GET_VRING_BASE, reset)
        drops replies still pending; a backend pause keeps them for the restarted queue.

        The wait for the worker is bounded (``stop_wait`` seconds, or until ``deadline``): a
        worker stuck in a request (a host file system that hangs) must not take the control
        plane with it, so the stop is answered anyway, with the index the worker had reached.
        Such a worker is kept in ``stuck``: its ring is not restarted and guest memory does
        not change until it returns (it still holds addresses into it)."""
        if not vring.running:
            if not pause and vring.paused is not None:
                vring.paused.retire(None)
                vring.paused = None
            return
        vring.queue.stop()
        if deadline is None:
            deadline = time.monotonic() + self.stop_wait
        with self._backend_quiet():
            vring.thread.join(max(0.0, deadline - time.monotonic()))
        vring.base = vring.queue.last_avail_idx
        if vring.thread.is_alive():
            log.error("ring %d: the worker is still in a request %.1f s after the stop; "
                      "answering without it (base %d)", vring.index, self.stop_wait, vring.base)
            # Its eventfds are closed with the ring's (and their numbers reused): no
            # notification from it, and its replies are dropped.
            vring.queue.set_call_fd(-1)
            vring.queue.retire(None)
            self.stuck.append((vring.index, vring.thread, vring.queue, vring.stop_fd))
            vring.queue = vring.thread = vring.stop_fd = None
            return
        if vring.queue.bad_chains or vring.queue.bad_heads or vring.queue.bad_avail:
            log.warning("ring %d returned %d malformed chains, skipped %d avail entries naming "
                        "no descriptor, saw the avail index out of reach %d times",
                        vring.index, vring.queue.bad_chains, vring.queue.bad_heads,
                        vring.queue.bad_avail)
        if pause:
            vring.paused = vring.queue
        else:
            vring.queue.retire(None)
        vring.queue = None
        vring.thread = None
        os.close(vring.stop_fd)
        vring.stop_fd = None

    def _stuck_workers(self):
        """The workers of ``stuck`` still running; those that returned are let go."""
        alive = []
        for entry in self.stuck:
            if entry[1].is_alive():
                alive.append(entry)
            else:
                os.close(entry[3])
        self.stuck = alive
        return alive

    def _vring(self, index):
        if index >= self.num_queues:
            raise BadRequest(f"ring index {index} out of range")
        return self.vrings[index]

    def _replace_fd(self, vring, name, fd):
        """Swap one of a ring's eventfds; the old one is closed only once no thread can still
        write to it (it could be reused for another file meanwhile)."""
        old = getattr(vring, name)
        if name == "call_fd" and vring.running:
            vring.queue.set_call_fd(-1 if fd is None else fd)
        elif name == "err_fd" and vring.running:
            vring.queue.set_err_fd(-1 if fd is None else fd)
        elif name == "kick_fd" and vring.running:
            self._stop(vring, pause=True)
        setattr(vring, name, fd)
        if old is not None:
            os.close(old)

    # -- requests -------------------------------------------------------------------------------

    @staticmethod
    def _body(msg, st):
        if len(msg.payload) < st.size:
            raise BadRequest(f"payload of {len(msg.payload)} bytes, expected {st.size}")
        return st.unpack_from(msg.payload)

    def do_get_features(self, msg):
        return protocol.u64.pack(OFFERED_FEATURES)

    def do_set_features(self, msg):
        (features,) = self._body(msg, protocol.u64)
        if features & ~OFFERED_FEATURES:
            raise BadRequest(f"features {features & ~OFFERED_FEATURES:#x} were not offered")
        self.features = features

    def do_get_protocol_features(self, msg):
        return protocol.u64.pack(self.offered_protocol_features)

    def do_set_protocol_features(self, msg):
        (features,) = self._body(msg, protocol.u64)
        if features & ~self.offered_protocol_features:
            raise BadRequest("protocol features that were not offered")
        self.protocol_features = features
        if self.backend is not None:
            # Maps are sent with NEED_REPLY: without REPLY_ACK we could not know they worked.
            needed = (1 << PF.BACKEND_REQ) | (1 << PF.BACKEND_SEND_FD) | (1 << PF.SHMEM) | \
                (1 << PF.REPLY_ACK)
            self.backend.shmem = features & needed == needed

    def do_set_backend_req_fd(self, msg):
        if not self.protocol_features & (1 << PF.BACKEND_REQ):
            raise BadRequest("BACKEND_REQ was not negotiated")
        fd = msg.take_fd()
        if fd is None:
            raise BadRequest("SET_BACKEND_REQ_FD without an fd")
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            os.close(fd)
            raise BadRequest("the backend-request fd is not a socket")
        sock = socket.socket(fileno=fd)
        if sock.type != socket.SOCK_STREAM or sock.family != socket.AF_UNIX:
            sock.close()
            raise BadRequest("the backend-request fd is not a Unix stream socket")
        self.backend.attach(sock)
        log.info("backend-request channel set up%s",
                 " (DAX window usable)" if self.backend.available else "")

    def do_get_shmem_config(self, msg):
        if not self.protocol_features & (1 << PF.SHMEM):
            raise BadRequest("SHMEM was not negotiated")
        sizes = list(self.shmem_sizes) + [0] * (protocol.VIRTIO_MAX_SHMEM_REGIONS -
                                                len(self.shmem_sizes))
        return protocol.shmem_config.pack(sum(1 for s in sizes if s), 0, *sizes)

    def do_get_queue_num(self, msg):
        return protocol.u64.pack(self.num_queues)

    def do_get_max_mem_slots(self, msg):
        return protocol.u64.pack(MAX_MEM_SLOTS)

    def do_set_owner(self, msg):
        pass

    def do_reset_owner(self, msg):
        self.reset(keep_protocol_features=True)

    def do_reset_device(self, msg):
        self.reset(keep_protocol_features=True)

    def do_set_status(self, msg):
        (self.status,) = self._body(msg, protocol.u64)

    def do_get_status(self, msg):
        return protocol.u64.pack(self.status)

    def do_set_mem_table(self, msg):
        nregions, _ = self._body(msg, protocol.memory_header)
        if not 0 < nregions <= protocol.VHOST_MEMORY_BASELINE_NREGIONS:
            raise BadRequest(f"{nregions} memory regions")
        if len(msg.payload) != protocol.memory_header.size + nregions * protocol.memory_region.size:
            raise BadRequest("SET_MEM_TABLE size disagrees with its region count")
        if len(msg.fds) != nregions:
            raise BadRequest(f"{len(msg.fds)} fds for {nregions} regions")
        table = ring.MemoryTable()
        for i in range(nregions):
            gpa, size, uaddr, offset = protocol.memory_region.unpack_from(
                msg.payload, protocol.memory_header.size + i * protocol.memory_region.size)
            _map_region(table, gpa, size, uaddr, offset, msg.fds[i])
        self._swap_memory(table)
        log.info("memory table: %s", ", ".join(f"{g:#x}+{s:#x}" for g, s, _ in table.describe()))

    def _region_body(self, msg):
        if len(msg.payload) != protocol.single_memory_region.size + protocol.memory_region.size:
            raise BadRequest("memory region message of the wrong size")
        return protocol.memory_region.unpack_from(msg.payload, protocol.single_memory_region.size)

    def _mem_slots(self):
        """ADD_MEM_REG and REM_MEM_REG exist only with CONFIGURE_MEM_SLOTS (vhost-user.rst)."""
        if not self.protocol_features & (1 << PF.CONFIGURE_MEM_SLOTS):
            raise BadRequest("CONFIGURE_MEM_SLOTS was not negotiated")

    # A region is added or removed on a copy of the table (the rings and the deferred replies
    # go on using the one they hold, see MemoryTable), which then replaces it.

    def do_add_mem_reg(self, msg):
        self._mem_slots()
        gpa, size, uaddr, offset = self._region_body(msg)
        if len(msg.fds) != 1:
            raise BadRequest("ADD_MEM_REG needs exactly one fd")
        if len(self.memory) >= MAX_MEM_SLOTS:
            raise BadRequest("no free memory slot")
        table = self.memory.copy()
        _map_region(table, gpa, size, uaddr, offset, msg.fds[0])
        self._swap_memory(table)

    def do_rem_mem_reg(self, msg):
        self._mem_slots()
        gpa, size, uaddr, _ = self._region_body(msg)
        table = self.memory.copy()
        if not table.remove_region(gpa, size, uaddr):
            raise BadRequest("no such memory region")
        self._swap_memory(table)

    def _swap_memory(self, table):
        with self._rings_paused():
            self.memory = table

    @contextlib.contextmanager
    def _rings_paused(self):
        """Stop the running rings around a memory table change (their workers read the table
        without locks) and restart them on the new table, re-translating their addresses."""
        running = [v for v in self.vrings if v.running]
        with self._backend_quiet():
            for vring in running:
                self._stop(vring, pause=True)
            try:
                if self._stuck_workers():
                    raise BadRequest("a ring's worker is stuck in a request: guest memory "
                                     "cannot change under it")
                yield
            finally:
                # Every paused ring is restarted or stopped for good, whatever one of them
                # raises.
                for vring in running:
                    try:
                        self._start(vring)
                    except Exception as exc:
                        log.error("ring %d cannot restart: %s", vring.index, exc)
                        self._signal_error(vring)
                        try:
                            self._stop(vring)
                        except Exception:
                            log.exception("ring %d cannot be stopped either", vring.index)

    def do_set_log_base(self, msg):
        raise BadRequest("dirty logging (LOG_SHMFD) was not offered")

    def do_set_log_fd(self, msg):
        raise BadRequest("dirty logging (LOG_SHMFD) was not offered")

    def do_set_vring_num(self, msg):
        index, num = self._body(msg, protocol.vring_state)
        vring = self._vring(index)
        if num == 0 or num & (num - 1) or num > 32768:
            raise BadRequest(f"queue size {num}")
        if vring.running:
            raise BadRequest("queue size changed while the ring runs")
        vring.num = num

    def do_set_vring_addr(self, msg):
        index, flags, desc, used, avail, _ = self._body(msg, protocol.vring_addr)
        vring = self._vring(index)
        if flags & protocol.VHOST_VRING_F_LOG:
            raise BadRequest("ring logging was not negotiated")
        if vring.running:
            raise BadRequest("ring addresses changed while the ring runs")
        vring.addr = (desc, used, avail)

    def do_set_vring_base(self, msg):
        index, num = self._body(msg, protocol.vring_state)
        vring = self._vring(index)
        if num > 0xFFFF:
            raise BadRequest("avail index out of range")
        if vring.running:
            raise BadRequest("ring base changed while the ring runs")
        vring.base = num

    def do_get_vring_base(self, msg):
        index, _ = self._body(msg, protocol.vring_state)
        vring = self._vring(index)
        self._stop(vring)
        # The ring is stopped until the next kick fd (vhost-user.rst "Starting and stopping
        # rings"), and a protocol-features ring is disabled again.
        if vring.kick_fd is not None:
            os.close(vring.kick_fd)
            vring.kick_fd = None
        vring.enabled = False
        return protocol.vring_state.pack(index, vring.base)

    def _vring_fd(self, msg):
        (value,) = self._body(msg, protocol.u64)
        vring = self._vring(value & protocol.VHOST_USER_VRING_IDX_MASK)
        if value & protocol.VHOST_USER_VRING_NOFD_MASK:
            return vring, None
        fd = msg.take_fd()
        if fd is None:
            raise BadRequest("eventfd missing")
        if not stat.S_ISREG(os.fstat(fd).st_mode) and _is_eventfd(fd):
            return vring, fd
        os.close(fd)
        raise BadRequest("not an eventfd")

    def do_set_vring_kick(self, msg):
        vring, fd = self._vring_fd(msg)
        if fd is None:
            raise BadRequest("polling mode without a kick fd is not supported")
        self._replace_fd(vring, "kick_fd", fd)
        self._start(vring)

    def do_set_vring_call(self, msg):
        vring, fd = self._vring_fd(msg)
        self._replace_fd(vring, "call_fd", fd)

    def do_set_vring_err(self, msg):
        vring, fd = self._vring_fd(msg)
        self._replace_fd(vring, "err_fd", fd)

    def do_set_vring_enable(self, msg):
        index, enable = self._body(msg, protocol.vring_state)
        vring = self._vring(index)
        if enable > 1:
            raise BadRequest("SET_VRING_ENABLE takes 0 or 1")
        vring.enabled = bool(enable)
        if enable:
            self._start(vring)
        else:
            self._stop(vring)

    def do_get_config(self, msg):
        if self.config is None:
            raise BadRequest("the device configuration belongs to the frontend (no --tag)")
        offset, size, flags = self._body(msg, protocol.config_header)
        if offset > len(self.config) or size > len(self.config) - offset:
            raise BadRequest(f"config range {offset}+{size} past the {len(self.config)}-byte "
                             "configuration")
        return protocol.config_header.pack(offset, size, flags) + \
            self.config[offset:offset + size]

    def do_set_config(self, msg):
        raise BadRequest("the virtio-fs configuration is read-only")


_GET_REQUESTS = frozenset({Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES,
                           Request.GET_QUEUE_NUM, Request.GET_VRING_BASE, Request.GET_CONFIG,
                           Request.GET_INFLIGHT_FD, Request.GET_MAX_MEM_SLOTS,
                           Request.GET_STATUS, Request.GET_SHMEM_CONFIG})


def _map_region(table, gpa, size, uaddr, offset, fd):
    """Map one region after checking the file really holds it: touching a page past the end of
    a memfd raises SIGBUS, which would kill the daemon.

    A memfd must also be sealed against shrinking (F_SEAL_SHRINK), so that it cannot lose the
    pages under the mapping later: QEMU's memory-backend-memfd seals its memfds so by default
    (``seal=on``: F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL).  A file that cannot be sealed
    (memory-backend-file on /dev/shm or hugetlbfs) is only checked for its size here; see
    SECURITY.md, "Known limits"."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise BadRequest("memory region fd is not a regular file or memfd")
    if st.st_size < offset + size:
        raise BadRequest(f"memory region {gpa:#x}+{size:#x} is larger than its file")
    if _is_memfd(fd) and not fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK:
        raise BadRequest(f"memory region {gpa:#x}+{size:#x}: its memfd is not sealed against "
                         "shrinking (F_SEAL_SHRINK)")
    table.add_region(gpa, size, uaddr, offset, fd)


def _is_memfd(fd):
    try:
        with procfd.named(fd) as path:
            return os.readlink(path).startswith("/memfd:")
    except OSError:
        return False


def _is_eventfd(fd):
    try:
        with procfd.named(fd) as path:
            return os.readlink(path) == "anon_inode:[eventfd]"
    except OSError:
        return False
