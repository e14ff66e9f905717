"""vhost-user wire protocol: request codes, feature bits and message bodies.

Names follow QEMU's ``docs/interop/vhost-user.rst`` (front-end/back-end wording).  Shared by the
daemon's control plane and the project's frontend driver.
"""

import enum
import struct

# Message header: request, flags, size (native-endian u32s; vhost-user is host-local).
header = struct.Struct("=III")
HEADER_SIZE = header.size
VHOST_USER_VERSION = 0x1
VHOST_USER_VERSION_MASK = 0x3
VHOST_USER_REPLY_MASK = 1 << 2
VHOST_USER_NEED_REPLY_MASK = 1 << 3
# Largest payload any request here carries: SET_MEM_TABLE with 8 regions is 8 + 8*32 bytes;
# GET/SET_CONFIG bodies are bounded by 12 + 256.  Anything larger is malformed.
MAX_PAYLOAD = 4096
VHOST_MEMORY_BASELINE_NREGIONS = 8
MAX_FDS = 8


class Request(enum.IntEnum):
    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40
    GET_SHMEM_CONFIG = 44


class BackendRequest(enum.IntEnum):
    """Requests the back-end sends on the channel given with SET_BACKEND_REQ_FD."""

    IOTLB_MSG = 1
    CONFIG_CHANGE_MSG = 2
    VRING_HOST_NOTIFIER_MSG = 3
    SHMEM_MAP = 9
    SHMEM_UNMAP = 10


# Virtio feature bits (virtio spec 6, vhost-user.rst).
VIRTIO_F_NOTIFY_ON_EMPTY = 24
VIRTIO_RING_F_INDIRECT_DESC = 28
VIRTIO_RING_F_EVENT_IDX = 29
VHOST_USER_F_PROTOCOL_FEATURES = 30
VIRTIO_F_VERSION_1 = 32


class ProtocolFeature(enum.IntEnum):
    MQ = 0
    LOG_SHMFD = 1
    RARP = 2
    REPLY_ACK = 3
    MTU = 4
    BACKEND_REQ = 5
    CROSS_ENDIAN = 6
    CRYPTO_SESSION = 7
    PAGEFAULT = 8
    CONFIG = 9
    BACKEND_SEND_FD = 10
    HOST_NOTIFIER = 11
    INFLIGHT_SHMFD = 12
    RESET_DEVICE = 13
    INBAND_NOTIFICATIONS = 14
    CONFIGURE_MEM_SLOTS = 15
    STATUS = 16
    XEN_MMAP = 17
    SHARED_OBJECT = 18
    DEVICE_STATE = 19
    SHMEM = 20


# Bodies.
u64 = struct.Struct("=Q")
vring_state = struct.Struct("=II")  # index, num
vring_addr = struct.Struct("=IIQQQQ")  # index, flags, desc_user_addr, used_user_addr, avail_user_addr, log_guest_addr
memory_header = struct.Struct("=II")  # nregions, padding
memory_region = struct.Struct("=QQQQ")  # guest_phys_addr, memory_size, userspace_addr, mmap_offset
single_memory_region = struct.Struct("=Q")  # padding before one region (ADD/REM_MEM_REG)
config_header = struct.Struct("=III")  # offset, size, flags
# VIRTIO shared memory regions (SHMEM): GET_SHMEM_CONFIG's reply lists the size of every region,
# indexed by shmid; SHMEM_MAP/UNMAP carry one mapping request ("MMAP request" in vhost-user.rst).
VIRTIO_MAX_SHMEM_REGIONS = 256
shmem_config = struct.Struct(f"=II{VIRTIO_MAX_SHMEM_REGIONS}Q")  # nregions, padding, sizes
shmem_map = struct.Struct("=B7xQQQQ")  # shmid, padding, fd_offset, shm_offset, len, flags
VHOST_USER_FLAG_MAP_RW = 1 << 0
VHOST_USER_VRING_IDX_MASK = 0xFF
VHOST_USER_VRING_NOFD_MASK = 1 << 8
VHOST_VRING_F_LOG = 1 << 0

# virtio-fs device (virtio spec 5.11): queue 0 is hiprio, request queues follow.
VIRTIO_ID_FS = 26
VIRTIO_FS_HIPRIO_QUEUE = 0
VIRTIO_FS_TAG_SIZE = 36
virtio_fs_config_tail = struct.Struct("<II")  # num_request_queues, notify_buf_size (after tag)
VIRTIO_FS_SHMCAP_ID_CACHE = 0  # the DAX window is shared memory region 0
