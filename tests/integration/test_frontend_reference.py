"""The frontend driver against a known-good peer: transport-level checks.

The first group varies what the virtio transport does (ring features, many requests in flight, the
16-bit index wrap, several memory regions, queue stop/restart, multiqueue) and runs against every
backend in ``conftest.BACKENDS``; the reference proves the driver right, the same tests then hold
other backends to it.  The second group pins down what the reference itself offers and how it
reacts to protocol violations, using the raw access the driver provides.
"""

import os

import pytest

from fastvfs.fuse import abi
from fastvfs.fuse.abi import Opcode
from fastvfs_testing.frontend import DEFAULT_PROTOCOL_FEATURES, VhostUserError
from fastvfs_testing.guestmem import GuestMemory
from fastvfs_testing.virtq import VRING_DESC_F_NEXT, VRING_DESC_F_WRITE
from fastvfs.vhost_user import protocol
from fastvfs.vhost_user.protocol import ProtocolFeature, Request

ROOT = abi.FUSE_ROOT_ID
IN_FLIGHT = 64


def bit(number):
    return 1 << number


def write_files(client, count, size):
    """Create ``count`` files with distinct contents, writing them all concurrently."""
    files = []
    for i in range(count):
        entry, handle = client.create(ROOT, f"file{i}")
        files.append((entry.nodeid, handle.fh, os.urandom(size)))
    tickets = [client.submit(Opcode.WRITE, nodeid,
                             abi.write_in.pack(fh, 0, len(data), 0, 0, 0, 0),
                             data=data, reply_len=abi.write_out.size, publish=False)
               for nodeid, fh, data in files]
    assert client.in_flight == count
    client.publish()
    replies = client.wait_all()
    for ticket in tickets:
        assert abi.write_out.unpack(replies[ticket].check().payload)[0] == size
    return files


def read_back(client, files):
    """Read every file with all READs in flight at once; check the contents."""
    tickets = {client.submit(Opcode.READ, nodeid, abi.read_in.pack(fh, 0, len(data), 0, 0, 0, 0),
                             data_len=len(data)): data
               for nodeid, fh, data in files}
    assert client.in_flight == len(files)
    replies = client.wait_all()
    for ticket, data in tickets.items():
        assert replies[ticket].check().data == data


def exercise(client, shared, count=IN_FLIGHT, size=8192):
    files = write_files(client, count, size)
    read_back(client, files)
    for i, (_, _, data) in enumerate(files):
        assert (shared / f"file{i}").read_bytes() == data
    names = {e.name for e in client.listdir(ROOT)}
    assert names == {f"file{i}".encode() for i in range(count)} | {b".", b".."}
    for nodeid, fh, _ in files:
        client.release(nodeid, fh)


# -- transport matrix, every backend ---------------------------------------------------------

def test_handshake(backend):
    frontend, client, _ = backend(init=False)
    assert frontend.acked_features & bit(protocol.VIRTIO_F_VERSION_1)
    if frontend.features & bit(protocol.VHOST_USER_F_PROTOCOL_FEATURES):
        assert frontend.acked_protocol_features == \
            frontend.protocol_features & DEFAULT_PROTOCOL_FEATURES
    if frontend.has_protocol_feature(ProtocolFeature.MQ):
        assert frontend.queue_num >= 2
    assert [q.index for q in frontend.queues] == [0, 1]
    init = client.init()
    assert init.major == abi.FUSE_KERNEL_VERSION


@pytest.mark.parametrize("indirect", [True, False], ids=["indirect", "direct"])
@pytest.mark.parametrize("event_idx", [True, False], ids=["event_idx", "no_event_idx"])
def test_ring_features(backend, indirect, event_idx):
    # Queue size 1024: 64 direct chains of 8 descriptors all fit at once.
    frontend, client, shared = backend(indirect_desc=indirect, event_idx=event_idx,
                                       queue_size=1024, client_options={"data_desc_size": 4096})
    offered = frontend.features
    for feature, wanted in ((protocol.VIRTIO_RING_F_INDIRECT_DESC, indirect),
                            (protocol.VIRTIO_RING_F_EVENT_IDX, event_idx)):
        negotiated = bool(frontend.acked_features & bit(feature))
        assert negotiated == (wanted and bool(offered & bit(feature)))
    exercise(client, shared, size=3 * 4096 + 100)


def test_requests_in_flight(backend):
    _, client, shared = backend()
    exercise(client, shared, count=IN_FLIGHT)
    assert client.in_flight == 0


def test_full_ring_backpressure(backend):
    """More requests than ring slots: submit waits for completions instead of failing."""
    frontend, client, shared = backend(queue_size=16, indirect_desc=False)
    tickets = [client.submit(Opcode.GETATTR, ROOT, abi.getattr_in.pack(0, 0, 0),
                             reply_len=abi.ATTR_OUT_SIZE) for _ in range(IN_FLIGHT)]
    assert client.in_flight <= 16 // 4  # four descriptors per GETATTR chain
    replies = client.wait_all()
    assert sorted(replies) == sorted(tickets)
    assert frontend.queues[1].num_free == 16


def test_chains_mixing_direct_and_indirect(backend):
    """Direct and indirect chains side by side on one ring."""
    _, client, shared = backend(queue_size=256)
    files = write_files(client, 16, 4096)
    direct, indirect = files[:8], files[8:]
    client.indirect = False
    tickets = [client.submit(Opcode.GETATTR, nodeid, abi.getattr_in.pack(0, 0, 0),
                             reply_len=abi.ATTR_OUT_SIZE, publish=False) for nodeid, _, _ in direct]
    client.indirect = True
    tickets += [client.submit(Opcode.GETATTR, nodeid, abi.getattr_in.pack(0, 0, 0),
                              reply_len=abi.ATTR_OUT_SIZE, publish=False)
                for nodeid, _, _ in indirect]
    client.publish()
    replies = client.wait_all()
    assert all(replies[t].check().payload for t in tickets)
    read_back(client, files)


@pytest.mark.parametrize("event_idx", [True, False], ids=["event_idx", "no_event_idx"])
def test_index_wraparound(backend, event_idx):
    """Rings start at 65500 so requests cross the 16-bit wrap, single and in batches."""
    frontend, client, shared = backend(vring_base=65500, queue_size=64, event_idx=event_idx)
    for _ in range(20):
        client.getattr(ROOT)
    files = write_files(client, 32, 1024)  # 32 creates + 32 concurrent writes straddle 65535
    read_back(client, files)
    queue = frontend.queues[1]
    requests = 1 + 20 + 32 + 32 + 32  # INIT, getattrs, creates, writes, reads
    assert queue.last_used_idx == (65500 + requests) & 0xFFFF
    assert queue.last_used_idx < 65500
    assert queue.published_idx == queue.last_used_idx


def test_two_request_queues(backend):
    try:
        frontend, client, shared = backend(num_request_queues=2)
    except VhostUserError as exc:
        pytest.skip(f"backend refuses a second request queue: {exc}")
    tickets = {queue: [client.submit(Opcode.GETATTR, ROOT, abi.getattr_in.pack(0, 0, 0),
                                     reply_len=abi.ATTR_OUT_SIZE, queue=queue)
                       for _ in range(IN_FLIGHT // 2)]
               for queue in (1, 2)}
    replies = client.wait_all()
    assert all(replies[t].check() for ts in tickets.values() for t in ts)
    exercise(client, shared, count=8)
    assert frontend.queues[2].last_used_idx >= IN_FLIGHT // 2


@pytest.mark.parametrize("mem_slots", [False, True], ids=["set_mem_table", "add_mem_reg"])
def test_multiple_memory_regions(backend, mem_slots):
    """Rings in a second region at 4 GiB with a non-zero mmap_offset; buffers in both regions."""
    features = DEFAULT_PROTOCOL_FEATURES
    if mem_slots:
        features |= bit(ProtocolFeature.CONFIGURE_MEM_SLOTS)
    frontend, client, shared = backend(
        memory=GuestMemory([(0, 256 << 10), (4 << 30, 32 << 20, 2 << 20)]), ring_region=1,
        protocol_features=features)
    if mem_slots and frontend.max_mem_slots is None:
        pytest.skip("backend does not offer CONFIGURE_MEM_SLOTS")
    assert frontend.queues[1].desc_addr >= 4 << 30
    # 16 x 64 KiB in flight cannot fit in the 256 KiB of region 0.
    exercise(client, shared, count=16, size=64 << 10)


def test_stop_and_restart_queue(backend):
    frontend, client, shared = backend()
    for _ in range(5):
        client.getattr(ROOT)
    queue = frontend.queues[1]
    assert frontend.stop_queue(1) == queue.avail_idx
    frontend.start_queue(1)
    frontend.enable_queue(1)
    frontend.set_call(1)
    exercise(client, shared, count=8)


def test_reset_device(backend):
    frontend, client, _ = backend()
    client.getattr(ROOT)
    frontend.reset_device()
    assert frontend.get_u64(Request.GET_FEATURES) == frontend.features


# -- the reference itself --------------------------------------------------------------------

@pytest.mark.reference
def test_reference_offer(reference_backend):
    """What QEMU 7.2's virtiofsd offers; the figures the project's backend is measured against."""
    frontend, client, _ = reference_backend()
    for feature in (protocol.VIRTIO_F_VERSION_1, protocol.VIRTIO_RING_F_INDIRECT_DESC,
                    protocol.VIRTIO_RING_F_EVENT_IDX, protocol.VHOST_USER_F_PROTOCOL_FEATURES):
        assert frontend.features & bit(feature)
    for feature in (ProtocolFeature.MQ, ProtocolFeature.REPLY_ACK,
                    ProtocolFeature.CONFIGURE_MEM_SLOTS):
        assert frontend.protocol_features & bit(feature)
    assert not frontend.protocol_features & bit(ProtocolFeature.RESET_DEVICE)
    assert frontend.queue_num == 2  # hiprio + one request queue
    assert client.init_out.minor == 36
    assert client.init_out.max_write == 1 << 20


@pytest.mark.reference
def test_reference_exits_on_disconnect(reference_backend):
    frontend, _, _ = reference_backend()
    frontend.close()
    assert reference_backend.process.wait(5) == 0


@pytest.mark.reference
def test_reference_rejects_unknown_request(reference_backend):
    socket_path, _ = reference_backend.start()
    frontend = reference_backend.connect(socket_path)
    frontend.send(99)
    assert frontend.wait_closed(5)
    assert reference_backend.process.wait(5) != 0


@pytest.mark.reference
@pytest.mark.parametrize("defect", ["outside_memory", "loop", "next_out_of_range"])
def test_reference_rejects_bad_chain(reference_backend, defect):
    """A hand-written chain the device must refuse; the reference gives up the whole device."""
    frontend, client, _ = reference_backend()
    queue = frontend.queues[1]
    first, second = queue.alloc_desc(2)
    header = frontend.memory.alloc(abi.IN_HEADER_SIZE)
    frontend.memory.write(header, abi.in_header.pack(abi.IN_HEADER_SIZE, Opcode.STATFS,
                                                     1000, ROOT, 0, 0, 0, 0, 0))
    reply = frontend.memory.alloc(abi.OUT_HEADER_SIZE + abi.kstatfs.size)
    if defect == "outside_memory":
        queue.write_desc(first, 1 << 50, abi.IN_HEADER_SIZE, VRING_DESC_F_NEXT, second)
        queue.write_desc(second, reply, 96, VRING_DESC_F_WRITE)
    elif defect == "loop":
        queue.write_desc(first, header, abi.IN_HEADER_SIZE, VRING_DESC_F_NEXT, second)
        queue.write_desc(second, reply, 96, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, first)
    else:
        queue.write_desc(first, header, abi.IN_HEADER_SIZE, VRING_DESC_F_NEXT, queue.size + 7)
    queue.publish_raw([first])
    assert frontend.wait_closed(5)
