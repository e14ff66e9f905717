"""Resource ceilings: each resource a guest can make the daemon hold is driven to its limit and
held there for ``FASTVFS_CEILING_SECONDS`` (default 60) while the serving process is sampled.
Throughout, its RSS stays within idle + 256 MiB and the descriptors the guest made it open stay
within the guest's budget (``guest_fd_budget`` of RLIMIT_NOFILE, made small with
``--rlimit-nofile`` so that it is reached); a GETATTR of the root and a READ of a small file are
answered during the abuse and after it.  Rows of SECURITY.md's "Resource ceilings" table.

The daemon runs with its defaults (namespace sandbox, seccomp kill) plus only the options the
resource needs.  Each case prints one ``CEILING {...}`` line with its measured figures
(``pytest -s`` shows them).
"""

import errno
import fcntl
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fastvfs import cli
from fastvfs.daemon import MAX_INODES
from fastvfs.fs.passthrough import LISTING_BYTES_MAX, guest_fd_budget
from fastvfs.fuse import abi
from fastvfs.fuse.abi import Opcode
from fastvfs.fuse.engine import POOL_BACKLOG_PER_THREAD
from fastvfs_testing.fuse_client import LINUX_DAX_INIT_FLAGS
from fastvfs_testing.guestmem import GuestMemory
from fastvfs_testing.virtq import VRING_DESC_F_NEXT, VRING_DESC_F_WRITE

from .conftest import BackendLauncher, BackendSpec
from tests.deployed import FASTVFS

ROOT = abi.FUSE_ROOT_ID
MiB = 1 << 20
SECONDS = float(os.environ.get("FASTVFS_CEILING_SECONDS", "60"))
RSS_HEADROOM = 256 * MiB
NOFILE = 4096
DEFAULT_NOFILE = cli.parser().get_default("rlimit_nofile")
BUDGET = guest_fd_budget(NOFILE)
PROBE_EVERY = 0.5
# Generous: other tests and guests share the machine's CPUs.
PROBE_TIMEOUT = 30.0
PROBE_DATA = b"the daemon still answers\n"
XATTR_VALUE_MAX = 64 * 1024     # XATTR_SIZE_MAX, linux/limits.h
SLOW_REQUEST_MAX = 1 * MiB      # largest request the engine copies (ring/consts.pxi)
WRITE_MAX = 1 * MiB             # max_write offered at INIT (engine.MAX_WRITE)


# -- sampling the serving process ------------------------------------------------------------------

def serving_pid(process):
    """The process that serves: the sandbox's child in a namespace sandbox."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    kids = children.read_text().split() if children.exists() else []
    return int(kids[0]) if kids else process.pid


@dataclass
class Sample:
    rss: int
    shmem: int
    threads: int
    fds: int


def sample(pid):
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()
    return Sample(int(fields["VmRSS"][0]) * 1024, int(fields["RssShmem"][0]) * 1024,
                  int(fields["Threads"][0]), len(os.listdir(f"/proc/{pid}/fd")))


class Monitor:
    """Samples the serving process every few milliseconds on a thread of its own and keeps the
    peaks; a process that went away is an error, reported at :meth:`stop`."""

    def __init__(self, pid, interval=0.05):
        self.pid = pid
        self.interval = interval
        self.idle = sample(pid)
        self.peak = Sample(**vars(self.idle))
        self.samples = 0
        self.error = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="ceiling-monitor", daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self.interval):
            if not self.take():
                return

    def take(self):
        """One sample now: from the monitor's thread, and from the abuse loop after each burst
        (the thread shares the test's GIL with a busy driver and may run far less often than
        it asks to).  Returns False once sampling failed."""
        try:
            s = sample(self.pid)
        except (OSError, KeyError, IndexError) as exc:
            self.error = exc
            return False
        with self._lock:
            self.samples += 1
            for name in ("rss", "shmem", "threads", "fds"):
                setattr(self.peak, name, max(getattr(self.peak, name), getattr(s, name)))
        return True

    def stop(self):
        self._stop.set()
        self._thread.join(5)
        assert self.error is None, f"sampling the serving process failed: {self.error!r}"
        # One last sample: the state the abuse left behind counts too.
        last = sample(self.pid)
        for name in ("rss", "shmem", "threads", "fds"):
            setattr(self.peak, name, max(getattr(self.peak, name), getattr(last, name)))


# -- the daemon, the guest and the probe ---------------------------------------------------------

@dataclass
class Guest:
    launcher: BackendLauncher
    frontend: object
    client: object
    shared: Path
    probe_queue: int
    probe_node: int = 0
    probe_fh: int = 0
    probes: int = 0
    probe_worst: float = 0.0
    counts: dict = field(default_factory=dict)

    def count(self, what, n=1):
        self.counts[what] = self.counts.get(what, 0) + n

    def setup_probe(self):
        """Look up and open the probe's file (before any abuse uses up descriptors)."""
        (self.shared / "probe").write_bytes(PROBE_DATA)
        self.probe_node = self.client.lookup(ROOT, b"probe").nodeid
        self.probe_fh = self.client.open(self.probe_node).fh
        self.probe()

    def probe(self):
        """A GETATTR of the root and a READ of a small file through a handle opened before the
        abuse, on the probe queue; both must be answered correctly within PROBE_TIMEOUT."""
        start = time.monotonic()
        client = self.client
        getattr_ = client.submit(Opcode.GETATTR, ROOT, abi.getattr_in.pack(0, 0, 0),
                                 reply_len=abi.ATTR_OUT_SIZE, queue=self.probe_queue)
        read = client.submit(Opcode.READ, self.probe_node,
                             abi.read_in.pack(self.probe_fh, 0, 4096, 0, 0, 0, 0),
                             data_len=4096, queue=self.probe_queue)
        reply = client.wait(getattr_, PROBE_TIMEOUT)
        assert reply.error == 0, f"GETATTR of the root: {os.strerror(reply.error)}"
        mode = abi.attr.unpack_from(reply.payload, abi.attr_out_head.size)[9]
        assert mode & 0o170000 == 0o040000
        reply = client.wait(read, PROBE_TIMEOUT)
        assert reply.error == 0, f"READ of the probe file: {os.strerror(reply.error)}"
        assert reply.data == PROBE_DATA
        self.probes += 1
        self.probe_worst = max(self.probe_worst, time.monotonic() - start)


@pytest.fixture
def daemon(tmp_path):
    """daemon(*extra_args, init_flags=None, nofile=NOFILE, **frontend_options) -> Guest, with
    the daemon's defaults plus ``--rlimit-nofile nofile`` (None: the daemon's default) and
    ``extra_args``; the last request queue is the
    probe's, which only the probe uses once the guest is returned (the other queues may be
    flooded with republished heads, whose used index nothing else may move)."""
    launchers = []

    def start(*extra, init_flags=None, nofile=NOFILE, **frontend_options):
        def argv(sock, shared):
            limit = ["--rlimit-nofile", str(nofile)] if nofile is not None else []
            return [*FASTVFS, "--socket-path", sock, "--shared-dir", shared,
                    "--cache", "never", *limit, *extra]
        run = tmp_path / f"run{len(launchers)}"
        run.mkdir()
        launcher = BackendLauncher("fastvfs", BackendSpec(argv), run)
        launchers.append(launcher)
        frontend, client, shared = launcher(init=False, **frontend_options)
        client.init(**({"flags": init_flags} if init_flags is not None else {}))
        guest = Guest(launcher, frontend, client, Path(shared), len(frontend.queues) - 1)
        guest.setup_probe()
        return guest

    yield start
    for launcher in launchers:
        launcher.shutdown()


def hold(guest, step, name, bound, *, after=None, nofile=NOFILE, until=None, limit_s=600):
    """Run ``step`` (the abuse, a short burst per call) for SECONDS with the probe every
    PROBE_EVERY seconds, sampling the serving process; then check the ceilings and print the
    figures.  ``after`` runs once the abuse has stopped (and the probe has been answered), before
    the last check.  ``nofile``: the daemon's RLIMIT_NOFILE, whose guest budget the descriptors
    are checked against.  ``until``: the abuse goes on past SECONDS until it returns True (the
    resource reached its limit; at most ``limit_s`` seconds in all)."""
    budget = guest_fd_budget(nofile)
    pid = serving_pid(guest.launcher.process)
    monitor = Monitor(pid)
    started = time.monotonic()
    deadline = started + SECONDS
    next_probe = started
    while time.monotonic() < deadline or until is not None and not until():
        assert time.monotonic() < started + limit_s, f"{name}: the limit was not reached"
        step()
        monitor.take()
        if time.monotonic() >= next_probe:
            guest.probe()
            next_probe = time.monotonic() + PROBE_EVERY
        assert guest.launcher.process.poll() is None, "the daemon exited"
        # Stop as soon as a ceiling is crossed, before a runaway daemon takes the machine's
        # memory.
        grown = monitor.peak.rss - monitor.idle.rss
        assert grown <= RSS_HEADROOM, f"{name}: RSS grew by {grown // MiB} MiB"
        guest_fds = monitor.peak.fds - monitor.idle.fds
        assert guest_fds <= budget, f"{name}: {guest_fds} descriptors over the idle ones"
    guest.probe()
    monitor.stop()
    if after is not None:
        after()
    guest.probe()
    assert guest.launcher.process.poll() is None, "the daemon exited"
    idle, peak = monitor.idle, monitor.peak
    figures = {
        "case": name, "bound": bound, "seconds": round(time.monotonic() - started, 1),
        "idle_rss_mib": round(idle.rss / MiB, 1),
        "rss_growth_mib": round((peak.rss - idle.rss) / MiB, 1),
        "shmem_growth_mib": round((peak.shmem - idle.shmem) / MiB, 1),
        "idle_fds": idle.fds, "peak_fds": peak.fds, "budget": budget, "nofile": nofile,
        "idle_threads": idle.threads, "peak_threads": peak.threads,
        "samples": monitor.samples, "probes": guest.probes,
        "worst_probe_s": round(guest.probe_worst, 3), "counts": guest.counts}
    print("CEILING " + json.dumps(figures), file=sys.stderr)
    assert peak.rss - idle.rss <= RSS_HEADROOM, figures
    # The daemon's own descriptors fit in the reserve, and those the guest made it open (what
    # came on top of the idle ones) in the guest's budget.
    assert idle.fds <= nofile - budget, figures
    assert peak.fds - idle.fds <= budget, figures
    # Sampled throughout, not once or twice (by the monitor's thread and after every burst) ...
    assert monitor.samples >= SECONDS / 4, figures
    # ... and the kernel's own high-water mark of the serving process's RSS, which no peak
    # between samples escapes, stays within the ceiling too.
    hwm = int(next(line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("VmHWM:"))) * 1024
    assert hwm - idle.rss <= RSS_HEADROOM, figures
    assert guest.probes >= SECONDS / (PROBE_EVERY + PROBE_TIMEOUT), figures
    return figures


def make_files(directory, count, prefix="f", size=0):
    directory.mkdir(exist_ok=True)
    names = []
    for i in range(count):
        name = f"{prefix}{i:06d}"
        fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT, 0o644)
        if size:
            os.ftruncate(fd, size)
        os.close(fd)
        names.append(name.encode())
    return names


def errno_name(err):
    return errno.errorcode.get(err, str(err))


class Flood:
    """Heads published again and again on one queue: each publication is a new request for the
    daemon, while the guest's memory holds each request once.  At most a queue's worth are
    outstanding (avail index ahead of used index), as a driver must keep them."""

    def __init__(self, frontend, index, requests):
        self.queue = frontend.queues[index]
        memory = frontend.memory
        self.heads = []
        for request, reply_len in requests:
            readable = memory.alloc(len(request), 4096)
            memory.write(readable, request)
            writable = memory.alloc(reply_len, 4096)
            slots = self.queue.alloc_desc(2)
            self.queue.write_desc(slots[0], readable, len(request), VRING_DESC_F_NEXT, slots[1])
            self.queue.write_desc(slots[1], writable, reply_len, VRING_DESC_F_WRITE)
            self.heads.append(slots[0])
        self.published = 0
        self.used = 0
        self.last_used = self.queue.used_idx()

    def pump(self):
        used_idx = self.queue.used_idx()
        self.used += (used_idx - self.last_used) & 0xFFFF
        self.last_used = used_idx
        room = self.queue.size - (self.published - self.used)
        if room > 0:
            self.queue.publish_raw([self.heads[(self.published + i) % len(self.heads)]
                                    for i in range(room)])
            self.published += room

    def drain(self, timeout=PROBE_TIMEOUT):
        deadline = time.monotonic() + timeout
        while self.used < self.published:
            assert time.monotonic() < deadline, (
                f"queue {self.queue.index}: {self.published - self.used} republished requests "
                "never answered")
            used_idx = self.queue.used_idx()
            self.used += (used_idx - self.last_used) & 0xFFFF
            self.last_used = used_idx
            time.sleep(0.01)


def request(opcode, nodeid, body, unique=0x7000):
    return abi.in_header.pack(abi.IN_HEADER_SIZE + len(body), opcode, unique, nodeid,
                              0, 0, 0, 0, 0) + body


def setxattr_request(nodeid, value_len, total=None):
    """SETXATTR of ``user.ceiling`` with a ``value_len``-byte value, padded to ``total`` bytes
    (the engine copies whatever ``fuse_in_header.len`` the buffers hold, up to its maximum)."""
    body = abi.setxattr_in.pack(value_len, 0) + b"user.ceiling\0" + b"v" * value_len
    if total is not None:
        body += b"\0" * (total - abi.IN_HEADER_SIZE - len(body))
    return request(Opcode.SETXATTR, nodeid, body)


# -- the resources ------------------------------------------------------------------------------

def test_descriptors_inodes_and_open_files(daemon):
    """LOOKUP of ever new files, never FORGET, and OPEN of each, never RELEASE: EMFILE once the
    budget is used up, then the same for the rest of the time."""
    guest = daemon(num_request_queues=2, queue_size=256)
    client = guest.client
    names = make_files(guest.shared / "d", BUDGET + 1000)
    d = client.lookup(ROOT, b"d").nodeid
    state = {"next": 0}

    def step():
        batch = [names[(state["next"] + i) % len(names)] for i in range(64)]
        state["next"] += 64
        lookups = [client.submit(Opcode.LOOKUP, d, name + b"\0", reply_len=abi.ENTRY_OUT_SIZE,
                                 queue=1) for name in batch]
        opens = []
        for ticket in lookups:
            reply = client.wait(ticket, PROBE_TIMEOUT)
            guest.count(f"LOOKUP {errno_name(reply.error) if reply.error else 'ok'}")
            if not reply.error:
                nodeid = abi.entry_out_head.unpack_from(reply.payload)[0]
                opens.append(client.submit(Opcode.OPEN, nodeid, abi.open_in.pack(os.O_RDONLY, 0),
                                           reply_len=abi.open_out.size, queue=1))
        for ticket in opens:
            reply = client.wait(ticket, PROBE_TIMEOUT)
            guest.count(f"OPEN {errno_name(reply.error) if reply.error else 'ok'}")

    figures = hold(guest, step, "descriptors", f"RLIMIT_NOFILE - reserve = {BUDGET}")
    assert guest.counts.get("LOOKUP EMFILE") and guest.counts.get("OPEN EMFILE"), figures
    # The budget was really reached: nearly all of it is held.
    assert figures["peak_fds"] - figures["idle_fds"] >= BUDGET - 64, figures


def test_directory_listings_of_many_handles(daemon):
    """OPENDIR and READDIR of a large directory, never RELEASEDIR, as many handles as the budget
    allows, then READDIR from offset 0 (a fresh listing) on the handles held."""
    guest = daemon(num_request_queues=2, queue_size=256)
    client = guest.client
    # About 3.4 MiB of fuse_dirent records per listing.
    entries = 13000
    big = guest.shared / "big"
    big.mkdir()
    for i in range(entries):
        os.close(os.open(big / (f"{i:06d}-" + "n" * 243), os.O_WRONLY | os.O_CREAT, 0o644))
    nodeid = client.lookup(ROOT, b"big").nodeid
    handles = []
    state = {"listed": 0, "turn": 0}

    def readdir(fh):
        reply = client.wait(client.submit(Opcode.READDIR, nodeid,
                                          abi.read_in.pack(fh, 0, 64 * 1024, 0, 0, 0, 0),
                                          data_len=64 * 1024, queue=1), PROBE_TIMEOUT)
        guest.count(f"READDIR {errno_name(reply.error) if reply.error else 'ok'}")
        if not reply.error:
            state["listed"] += 1

    def step():
        reply = client.wait(client.submit(Opcode.OPENDIR, nodeid,
                                          abi.open_in.pack(os.O_RDONLY | os.O_DIRECTORY, 0),
                                          reply_len=abi.open_out.size, queue=1), PROBE_TIMEOUT)
        guest.count(f"OPENDIR {errno_name(reply.error) if reply.error else 'ok'}")
        if not reply.error:
            handles.append(abi.open_out.unpack_from(reply.payload)[0])
            readdir(handles[-1])
        elif handles:
            state["turn"] = (state["turn"] + 1) % len(handles)
            readdir(handles[state["turn"]])

    listing = entries * (abi.dirent_head.size + 256)
    figures = hold(guest, step, "listings",
                   f"LISTING_BYTES_MAX = {LISTING_BYTES_MAX // MiB} MiB + the listing being taken")
    figures["listings_taken_mib"] = state["listed"] * listing // MiB
    print("CEILING " + json.dumps(figures), file=sys.stderr)
    # Unbounded, the listings taken would have been more than the RSS ceiling allows.
    assert state["listed"] * listing > RSS_HEADROOM + LISTING_BYTES_MAX, figures


def test_lock_waiters_and_pending_replies(daemon):
    """SETLKW that must wait (a host process holds the lock), each under a new owner, as many as
    the rings hold, reposted as they are answered: 128 wait, the rest get ENOLCK (and EMFILE once
    the owners' lock descriptions have used the budget)."""
    guest = daemon(num_request_queues=2, queue_size=1024)
    client = guest.client
    path = guest.shared / "locked"
    path.write_bytes(b"x" * 4096)
    nodeid = client.lookup(ROOT, b"locked").nodeid
    fh = client.open(nodeid, os.O_RDONLY).fh
    host = os.open(path, os.O_RDWR)
    fcntl.lockf(host, fcntl.LOCK_EX)   # the host's lock the guest's SETLKW wait for
    state = {"owner": 1, "waiting": set()}

    def post():
        state["owner"] += 1
        ticket = client.submit(Opcode.SETLKW, nodeid,
                               abi.lk_in.pack(fh, state["owner"], 0, 0x7FFFFFFFFFFFFFFF,
                                              fcntl.F_RDLCK, 4242, 0, 0), queue=1)
        state["waiting"].add(ticket)

    def step():
        while len(state["waiting"]) < 1000:
            post()
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:
            try:
                done = client.collect(0.05)
            except TimeoutError:
                break
            for ticket, reply in done:
                if ticket in state["waiting"]:
                    state["waiting"].discard(ticket)
                    guest.count(f"SETLKW {errno_name(reply.error) if reply.error else 'ok'}")
                    post()

    def after():
        # The host lets go: every read lock waiting is granted.
        os.close(host)
        state["host"] = None
        for ticket in list(state["waiting"]):
            reply = client.wait(ticket, PROBE_TIMEOUT)
            guest.count(f"SETLKW after {errno_name(reply.error) if reply.error else 'ok'}")
        # The owners' lock descriptions go with the handle they were taken through.
        client.release(nodeid, fh)
        held = sample(serving_pid(guest.launcher.process)).fds
        state["fds_after_release"] = held
        assert held <= idle_fds + 1, f"{held} descriptors held after RELEASE, {idle_fds} idle"

    state["host"] = host
    idle_fds = sample(serving_pid(guest.launcher.process)).fds
    try:
        figures = hold(guest, step, "lock waiters", "128 waiters, then ENOLCK", after=after)
    finally:
        if state["host"] is not None:
            os.close(state["host"])
    assert guest.counts.get("SETLKW ENOLCK"), figures
    assert guest.counts.get("SETLKW after ok", 0) >= 128, figures
    # One thread per waiter, and no more.
    assert figures["peak_threads"] <= figures["idle_threads"] + 128 + 8, figures


def test_thread_pool_backlog(daemon):
    """``--thread-pool-size 1``: eight queues republish 1 MiB requests (each copied by the
    engine) faster than the one pool thread serves them."""
    flood_queues = 8
    guest = daemon("--thread-pool-size", "1", "--xattr",
                   num_request_queues=flood_queues + 1, queue_size=256)
    (guest.shared / "x").write_bytes(b"")
    nodeid = guest.client.lookup(ROOT, b"x").nodeid
    big = setxattr_request(nodeid, XATTR_VALUE_MAX, SLOW_REQUEST_MAX)
    floods = [Flood(guest.frontend, 1 + i, [(big, abi.OUT_HEADER_SIZE)])
              for i in range(flood_queues)]

    def step():
        for flood in floods:
            flood.pump()
        time.sleep(0.005)

    def after():
        for flood in floods:
            flood.drain()
        guest.count("requests", sum(f.used for f in floods))

    figures = hold(guest, step, "pool backlog",
                   f"POOL_BACKLOG_PER_THREAD = {POOL_BACKLOG_PER_THREAD} requests per pool thread",
                   after=after)
    # Unbounded, the copies made would have been more than the RSS ceiling allows.
    assert guest.counts["requests"] * SLOW_REQUEST_MAX > 2 * RSS_HEADROOM, figures


def test_inode_table(daemon):
    """LOOKUP of ever new names, never FORGET: distinct files until the descriptor budget stops
    new inodes (long before the node-id table's MAX_INODES), and hard links of known files,
    which only count lookups."""
    guest = daemon(num_request_queues=2, queue_size=256)
    client = guest.client
    d = guest.shared / "d"
    names = make_files(d, BUDGET + 1000)
    links = []
    for i in range(2000):
        link = f"l{i:06d}"
        os.link(d / names[i % 64].decode(), d / link)
        links.append(link.encode())
    dnode = client.lookup(ROOT, b"d").nodeid
    state = {"next": 0}

    def step():
        i = state["next"]
        state["next"] += 128
        batch = ([names[(i + k) % len(names)] for k in range(64)] +
                 [links[(i + k) % len(links)] for k in range(64)])
        for ticket in [client.submit(Opcode.LOOKUP, dnode, name + b"\0",
                                     reply_len=abi.ENTRY_OUT_SIZE, queue=1) for name in batch]:
            reply = client.wait(ticket, PROBE_TIMEOUT)
            guest.count(f"LOOKUP {errno_name(reply.error) if reply.error else 'ok'}")

    figures = hold(guest, step, "inode table",
                   f"MAX_INODES = {MAX_INODES} slots (preallocated); descriptors first")
    assert guest.counts.get("LOOKUP EMFILE"), figures
    assert figures["peak_fds"] - figures["idle_fds"] >= BUDGET - 64, figures


def test_inode_table_at_the_default_descriptor_limit(daemon):
    """The daemon's own ``--rlimit-nofile`` default, with nothing made small: LOOKUP of new
    files, never FORGET, until every descriptor of the guest's budget holds an inode and LOOKUP
    answers EMFILE.  The default asks for 1,000,000 descriptors; the daemon gets what the host
    allows (a host without CAP_SYS_RESOURCE keeps its hard limit), and the test drives whatever
    it got.  RSS stays within idle + 256 MiB there, and the RSS each further inode costs
    (measured from half the budget to all of it) stays within 200 bytes, so that at the full
    default budget (999,744 inodes) the node-id table stays within the ceiling too.  (The
    kernel's own memory for the open descriptors is the host's, bounded by the same budget.)"""
    guest = daemon(num_request_queues=3, queue_size=256, nofile=None)
    pid = serving_pid(guest.launcher.process)
    nofile = next(int(line.split()[3]) for line in
                  Path(f"/proc/{pid}/limits").read_text().splitlines()
                  if line.startswith("Max open files"))
    assert nofile <= DEFAULT_NOFILE
    budget = guest_fd_budget(nofile)
    client = guest.client
    d = guest.shared / "d"
    names = make_files(d, budget + 2000)
    dnode = client.lookup(ROOT, b"d").nodeid
    state = {"next": 0, "full": False, "half": None}

    def step():
        i = state["next"]
        state["next"] += 256
        batch = [names[(i + k) % len(names)] for k in range(256)]
        tickets = [client.submit(Opcode.LOOKUP, dnode, name + b"\0",
                                 reply_len=abi.ENTRY_OUT_SIZE, queue=1 + k % 2)
                   for k, name in enumerate(batch)]
        for ticket in tickets:
            reply = client.wait(ticket, PROBE_TIMEOUT)
            guest.count(f"LOOKUP {errno_name(reply.error) if reply.error else 'ok'}")
            if reply.error == errno.EMFILE:
                state["full"] = True
        if state["half"] is None:
            now = sample(pid)
            if now.fds >= budget // 2:
                state["half"] = now

    figures = hold(guest, step, "inode table, default --rlimit-nofile",
                   f"the guest budget of the daemon's default --rlimit-nofile "
                   f"({DEFAULT_NOFILE}, {nofile} granted here): {budget}",
                   nofile=nofile, until=lambda: state["full"])
    assert guest.counts.get("LOOKUP EMFILE"), figures
    assert figures["peak_fds"] - figures["idle_fds"] >= budget - 64, figures
    half, full = state["half"], sample(pid)
    per_inode = (full.rss - half.rss) / (full.fds - half.fds)
    projected = per_inode * guest_fd_budget(DEFAULT_NOFILE)
    print(f"CEILING per known inode: {per_inode:.0f} bytes of RSS; at the full default budget "
          f"{projected / MiB:.0f} MiB", file=sys.stderr)
    assert per_inode <= 200, figures
    assert projected <= RSS_HEADROOM, figures


def test_dax_mappings(daemon):
    """SETUPMAPPING of every 4 KiB range of the window, over and over, from ever new file
    offsets: the daemon's bookkeeping holds at most one mapping per aligned range."""
    window = 16 * MiB
    guest = daemon("--dax-window-size", str(window), shared_memory=True,
                   init_flags=LINUX_DAX_INIT_FLAGS, num_request_queues=2, queue_size=256)
    if guest.frontend.dax_window is None or not (guest.client.init_out.flags &
                                                 abi.FUSE_MAP_ALIGNMENT):
        pytest.skip("the frontend driver set up no DAX window")
    client = guest.client
    path = guest.shared / "mapped"
    with open(path, "wb") as f:
        f.truncate(1 << 30)
    nodeid = client.lookup(ROOT, b"mapped").nodeid
    page = 1 << client.init_out.map_alignment
    ranges = window // page
    state = {"next": 0}

    def step():
        tickets = []
        for k in range(256):
            i = state["next"] + k
            moffset = (i * 7919 % ranges) * page     # every range, in a scattered order
            foffset = (i * page) % (1 << 30)
            tickets.append(client.submit(
                Opcode.SETUPMAPPING, nodeid,
                abi.setupmapping_in.pack(abi.NO_FH, foffset, page,
                                         abi.FUSE_SETUPMAPPING_FLAG_READ, moffset), queue=1))
        state["next"] += 256
        for ticket in tickets:
            reply = client.wait(ticket, PROBE_TIMEOUT)
            guest.count(f"SETUPMAPPING {errno_name(reply.error) if reply.error else 'ok'}")

    # Every range of the window mapped twice over at least, however slow the machine: the
    # abuse goes on past SECONDS until then.
    figures = hold(guest, step, "DAX mappings",
                   f"window / map alignment = {ranges} mappings",
                   until=lambda: guest.counts.get("SETUPMAPPING ok", 0) > 2 * ranges)
    assert guest.counts.get("SETUPMAPPING ok", 0) > 2 * ranges, figures


def test_memory_of_requests_in_flight(daemon):
    """Fifteen queues republish SETXATTR with 64 KiB values, 1 MiB requests the engine copies
    and 1 MiB WRITEs, a queue's worth each at all times."""
    flood_queues = 15
    guest = daemon("--xattr", num_request_queues=flood_queues + 1, queue_size=128,
                   memory=GuestMemory([(0, 128 * MiB)]))
    client = guest.client
    (guest.shared / "x").write_bytes(b"")
    xnode = client.lookup(ROOT, b"x").nodeid
    (guest.shared / "w").write_bytes(b"")
    wnode = client.lookup(ROOT, b"w").nodeid
    wfh = client.open(wnode, os.O_WRONLY).fh
    write = request(Opcode.WRITE, wnode,
                    abi.write_in.pack(wfh, 0, WRITE_MAX, 0, 0, 0, 0) + b"w" * WRITE_MAX)
    requests = [(setxattr_request(xnode, XATTR_VALUE_MAX), abi.OUT_HEADER_SIZE),
                (setxattr_request(xnode, XATTR_VALUE_MAX, SLOW_REQUEST_MAX),
                 abi.OUT_HEADER_SIZE),
                (write, abi.OUT_HEADER_SIZE + abi.write_out.size)]
    floods = [Flood(guest.frontend, 1 + i, requests) for i in range(flood_queues)]

    def step():
        for flood in floods:
            flood.pump()
        time.sleep(0.005)

    def after():
        for flood in floods:
            flood.drain()
        guest.count("requests", sum(f.used for f in floods))

    figures = hold(guest, step, "request memory",
                   "one request copy per queue thread (1 MiB); WRITE data never copied",
                   after=after)
    assert guest.counts["requests"] * SLOW_REQUEST_MAX > 2 * RSS_HEADROOM, figures
