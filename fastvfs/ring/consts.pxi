# Tuning knobs and bounds of the hot path (not ABI: those come from includes/).

cdef enum:
    MAX_REGIONS = 64
    # A chain may name every descriptor of a 32768-entry ring, and a buffer may split where
    # guest memory regions meet; beyond this many pieces the request is refused.
    MAX_IOV = 2048
    # The fewest descriptors a chain may have before it is refused (see ring_walk): a FUSE
    # request of MAX_PAGES (256) data pages with its headers, with room to spare.
    CHAIN_DESCS_FLOOR = 512
    # Largest request body the Python engine copies out of guest memory (SETXATTR values are
    # bounded by 64 KiB, names by PATH_MAX); WRITE data never takes this path.
    SLOW_REQUEST_MAX = 1 << 20
    # io_uring: iovecs of the requests in flight on one queue, submissions per system call,
    # completions reaped per peek.
    POOL_IOV = 8192
    SUBMIT_BATCH = 8
    REAP_BATCH = 64
    # Lone READs sent straight to the ring after one that the page cache could not answer.
    LONE_SKIP = 64
    # Replies published (with one notification check) per batch (used.pxi).  A batch waits
    # only while the worker keeps finding requests (a reply is published before it sleeps), so
    # it delays replies only under a full queue; 16 against 8 was 1.06x the requests per
    # backend CPU-second for GETATTR, LOOKUP and WRITE 4 KiB at depth 32 with the guest-like
    # driver (READ 4 KiB 0.99x), reports/micro/2026-12-07-publish-batch.md.
    PUBLISH_BATCH = 16
    # Guest memory registered with a queue's io_uring (--fixed-buffers): the kernel takes
    # buffers of at most 1 GiB each, so a region is registered in pieces of that size.
    FIXED_PIECE = 1 << 30
    MAX_FIXED = 1024
    # Request statistics: opcodes below STATS_OPS (FUSE's are), latency buckets by log2(ns),
    # ring indexes with a block of their own.
    STATS_OPS = 64
    STATS_BUCKETS = 40
    STATS_RINGS = 256
    # COPY_FILE_RANGE copies up to this much on the queue's thread; a larger one (up to 2 GiB
    # in one request) is the engine's, which runs it on the thread pool when there is one.
    COPY_FAST_MAX = 1 << 20
    # FALLOCATE that only allocates (mode 0 or FALLOC_FL_KEEP_SIZE) up to this much runs on
    # the queue's thread when the engine has no pool: the file system maps the range in a few
    # extents without writing data, a cost near a GETATTR's, less than handing it to io-wq.
    # A larger one, or one that punches, zeroes or shifts (which may write back the page
    # cache first), goes through the ring unless it is alone (``sync_here``).
    FALLOCATE_FAST_MAX = 1 << 20
    # Avail ring faults are logged at most this often.
    REPORT_INTERVAL_S = 10
