"""Microbenchmarks: fastvfs and the reference virtiofsd driven by the project's lean frontend
driver in the same run, with the host-native figure as the ceiling.

    python -m bench.micro [--seconds 2] [--reps 3] [--slices 8] [--only getattr,read4k]
                          [--depths 1,32] [--pin apart|together] [--out reports/micro]

Each workload keeps a fixed number of requests in flight (closed loop) on one request queue for
``--seconds`` and reports requests/s, the backend's CPU-seconds (all its processes' threads,
exited ones included: the usage of a CPU accounting cgroup it is started in, or where none can
be made the live threads' /proc/PID/task/*/schedstat) and the driver thread's own CPU-seconds,
so a driver-bound figure
shows as such.  The driver (``fastvfs_testing.lean``) runs in C: chains built once in guest
memory as Linux's virtiofs driver lays them out (indirect tables, page-sized data descriptors),
EVENT_IDX notification suppression both ways.  Each figure is the median of ``--reps`` runs,
each run taken in ``--slices`` short runs interleaved with the other backends' (the order
rotating), so that the machine's drift falls on both alike.  At depth 1 the wake-up floor (two
threads answering each other over eventfds, no work) is measured the same way: a request there
costs at least that round trip.  Then fastvfs with two request queues against one (aggregate
throughput).  Results go to ``<out>/<timestamp>.json`` and a Markdown table next to it.
"""

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import output

from fastvfs.fuse import abi
from fastvfs.fuse.abi import Opcode
from fastvfs_testing._lean import native_io, wake_floor
from fastvfs_testing.frontend import VhostUserFrontend
from fastvfs_testing.fuse_client import FuseClient
from fastvfs_testing.lean import LeanLoad

REFERENCE = "/usr/lib/qemu/virtiofsd"
FILE_SIZE = 64 << 20
ROOT = abi.FUSE_ROOT_ID
DEPTHS = (1, 32)
# Fastvfs with two request queues against one: workload, depth per queue.
MULTIQUEUE = [("getattr", 32), ("read4k", 32), ("write4k", 32)]

# name -> (the lean driver's op, request size in bytes of data)
WORKLOADS = {
    "getattr": ("GETATTR", 0),
    "lookup": ("LOOKUP", 0),
    "read4k": ("READ", 4096),
    "read128k": ("READ", 128 << 10),
    "write4k": ("WRITE", 4096),
    "write1m": ("WRITE", 1 << 20),
}


def backend_argv(name, sock, shared, extra=(), baseline=None):
    """The command line of ``name``: "fastvfs" (this tree, through this interpreter),
    "baseline" (the same options through the ``baseline`` interpreter: another build of
    fastvfs, installed in its own environment) or "reference".  The baseline runs isolated
    (``-I``): ``-m`` would otherwise put the working directory first on its path, and run
    from a checkout it would import that checkout's fastvfs instead of its own."""
    if name in ("fastvfs", "baseline"):
        interpreter = [sys.executable] if name == "fastvfs" else [baseline, "-I"]
        return [*interpreter, "-m", "fastvfs",
                "--socket-path", sock, "--shared-dir", shared, "--cache", "never",
                "--log-level", "error", *extra]
    return [REFERENCE, f"--socket-path={sock}", "-o", f"source={shared}", "-o", "cache=none"]


def _stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def family(pid):
    """``pid`` and all its descendants: both daemons serve from a child process they fork into
    their sandbox."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(_stat(entry)[1])
            except OSError:
                continue
    members = {pid}
    grew = True
    while grew:
        grew = False
        for child, parent in parents.items():
            if parent in members and child not in members:
                members.add(child)
                grew = True
    return members


def threads(pid):
    """(process, thread id) of every thread of ``pid`` and its descendants."""
    for member in family(pid):
        try:
            tasks = os.listdir(f"/proc/{member}/task")
        except OSError:
            continue
        for tid in tasks:
            yield member, int(tid)


def pin(pid, cpus):
    """Pin every thread of ``pid`` and its descendants to ``cpus``."""
    for _, tid in threads(pid):
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:
            continue


# CPU accounting groups a backend is started in (cgroup v1 cpuacct, else v2): the usage a
# group reports counts threads that have exited, which /proc/PID/task cannot (io_uring's
# io-wq workers come and go within a run: a sync or an allocation handed to the kernel runs on
# one, and a worker idle for a few seconds exits, taking its run time out of the sum).
CGROUP_ROOTS = (("/sys/fs/cgroup/cpuacct", "cpuacct.usage"),
                ("/sys/fs/cgroup/unified", "cpu.stat"), ("/sys/fs/cgroup", "cpu.stat"))
_cgroups = {}   # backend pid -> (group directory, usage file)


def _new_cgroup():
    """A fresh accounting group: (directory, usage file), or None where none can be made
    (no cgroup file system, no right to write it)."""
    for root, usage in CGROUP_ROOTS:
        if os.path.exists(os.path.join(root, usage)) and os.access(root, os.W_OK):
            path = tempfile.mkdtemp(prefix="fvb-", dir=root)
            return path, os.path.join(path, usage)
    return None


def _join_cgroup(path):
    """In the child before exec: move this process (and all it forks later) into ``path``."""
    with open(os.path.join(path, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))


def _cgroup_seconds(usage):
    with open(usage) as f:
        text = f.read()
    if usage.endswith("cpuacct.usage"):
        return int(text) / 1e9
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value) / 1e6
    raise ValueError(f"no usage_usec in {usage}")


def spawn(argv, **popen_options):
    """``subprocess.Popen(argv)`` in an accounting group of its own where one can be made
    (``cpu_seconds`` then reads it); ``reap`` removes the group once the process is gone."""
    group = _new_cgroup()
    proc = subprocess.Popen(argv, preexec_fn=(lambda: _join_cgroup(group[0])) if group else None,
                            **popen_options)
    if group:
        _cgroups[proc.pid] = group
    return proc


def reap(proc):
    """Remove the accounting group of ``spawn``'s ``proc``, which has been waited for."""
    group = _cgroups.pop(proc.pid, None)
    if group is None:
        return
    deadline = time.monotonic() + 5
    while True:   # the sandbox's processes may take a moment to go after the backend
        try:
            os.rmdir(group[0])
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)


def cpu_seconds(pid):
    """CPU time of ``pid`` and all its descendants, every thread included, exited ones too
    when it was started by ``spawn`` in an accounting group of its own."""
    group = _cgroups.get(pid)
    if group is not None:
        return _cgroup_seconds(group[1])
    return live_thread_seconds(pid)


def live_thread_seconds(pid):
    """CPU time of the threads of ``pid`` and its descendants that are still there."""
    # Nanosecond run times of every thread (/proc/PID/task/TID/schedstat, first field) rather
    # than utime+stime, whose 10 ms ticks are coarse next to a short run of a busy driver.
    total = 0
    for member, tid in threads(pid):
        try:
            with open(f"/proc/{member}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def start_daemon(argv, name, queue_size=256, poll_s=0.05, **frontend_options):
    """Start a backend (``"{sock}"`` in ``argv`` becomes a fresh socket path) and bring a
    frontend driver up on it, trying to connect every ``poll_s``; returns (socket path,
    process, frontend)."""
    sock = str(Path(tempfile.mkdtemp(prefix="fvb-")) / "s.sock")
    proc = spawn([a.replace("{sock}", sock) for a in argv], stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    frontend = VhostUserFrontend(sock, queue_size=queue_size, timeout=30, **frontend_options)
    while True:
        try:
            frontend.connect()
            return sock, proc, frontend.start()
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline or proc.poll() is not None:
                frontend.close()
                proc.kill()
                proc.wait()
                reap(proc)
                raise RuntimeError(f"{name} did not start") from None
            time.sleep(poll_s)


def stop_daemon(proc, frontend, sock):
    frontend.close()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    reap(proc)
    shutil.rmtree(os.path.dirname(sock), ignore_errors=True)


class Session:
    """A backend serving its own copy of the test directory, with the frontend driver up and a
    64 MiB file per request queue (``data``, ``data2``, ...) looked up and opened
    read-write."""

    def __init__(self, name, workdir, prefix=(), extra=(), label=None, queues=1,
                 files_of=None, cpus=None, publish_each=False, baseline=None,
                 pages="contiguous"):
        self.name = label or name
        self.publish_each = publish_each
        self.pages = pages
        self.cpus = cpus
        self.queues = queues
        self.shared = Path(workdir) / self.name
        self.shared.mkdir()
        self.names = [b"data"] + [b"data%d" % (q + 1) for q in range(1, queues)]
        for file_name in self.names:
            if files_of is not None:
                # The very files (hard links) of another session: both backends then read
                # the same page cache, whose state (folio sizes) otherwise differs from file
                # to file and moves large transfers by a third.
                os.link(files_of.shared / file_name.decode(), self.shared / file_name.decode())
                continue
            with open(self.shared / file_name.decode(), "wb") as f:
                f.truncate(FILE_SIZE)
                f.write(os.urandom(1 << 20))
        self.sock, self.proc, self.frontend = start_daemon(
            [*prefix, *backend_argv(name, "{sock}", str(self.shared), extra, baseline)], name,
            num_request_queues=queues)
        self.client = FuseClient(self.frontend, timeout=30)
        self.client.init()
        self.nodes = [self.client.lookup(ROOT, n).nodeid for n in self.names]
        self.fhs = [self.client.open(node, os.O_RDWR).fh for node in self.nodes]
        self.node, self.fh = self.nodes[0], self.fhs[0]

    def loads(self, opcode, size, depth, queues=1, seed=1, same_file=False):
        """One load per queue, each on its own file (as fio's jobs are), or all on the first
        with ``same_file``."""
        files = [0 if same_file else q for q in range(queues)]
        return [LeanLoad(self.frontend, q + 1, opcode, depth,
                         nodeid=ROOT if opcode == "LOOKUP" else self.nodes[files[q]],
                         fh=self.fhs[files[q]], name=self.names[files[q]], size=size,
                         file_size=FILE_SIZE, seed=seed + q, publish_each=self.publish_each,
                         pages=self.pages)
                for q in range(queues)]

    def run(self, opcode, size, depth, seconds, queues=1, max_requests=0, same_file=False):
        """One closed-loop run on ``queues`` request queues at once (``depth`` each)."""
        loads = self.loads(opcode, size, depth, queues, same_file=same_file)
        if self.cpus:
            # Again at every run: a queue's worker thread starts with its ring.
            pin(self.proc.pid, self.cpus)
        results = [None] * queues
        errors = []

        def drive(i):
            try:
                results[i] = loads[i].run(seconds, max_requests)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
        try:
            cpu0 = cpu_seconds(self.proc.pid)
            threads = [threading.Thread(target=drive, args=(i,)) for i in range(queues)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            backend_cpu = cpu_seconds(self.proc.pid) - cpu0
        finally:
            for load in loads:
                load.close()
        if errors:
            raise errors[0]
        done = sum(r["requests"] for r in results)
        wall = max(r["wall_s"] for r in results)
        rate = sum(r["requests"] / r["wall_s"] for r in results)
        return {"requests": done, "wall_s": wall, "req_per_s": rate,
                "backend_cpu_s": backend_cpu,
                "driver_cpu_s": sum(r["driver_cpu_s"] for r in results),
                "req_per_backend_cpu_s": rate * wall / backend_cpu if backend_cpu else None,
                "bytes_per_s": rate * size, "kicks": sum(r["kicks"] for r in results),
                "driver_sleeps": sum(r["sleeps"] for r in results), "queues": queues}

    def close(self):
        stop_daemon(self.proc, self.frontend, self.sock)


SUMMED = ("requests", "wall_s", "backend_cpu_s", "driver_cpu_s", "kicks", "driver_sleeps")


def combine(slices):
    """One figure from runs of the same thing taken in slices: counts and times summed, rates
    weighted by each slice's wall time (a multi-queue run's rate is the sum of its queues')."""
    if len(slices) == 1:
        return slices[0]
    out = dict(slices[0], slices=len(slices))
    for field in SUMMED:
        if field in out:
            out[field] = sum(r[field] for r in slices)
    for field in ("req_per_s", "bytes_per_s"):
        if field in out:
            out[field] = sum(r[field] * r["wall_s"] for r in slices) / out["wall_s"]
    if "req_per_backend_cpu_s" in out:
        out["req_per_backend_cpu_s"] = (out["req_per_s"] * out["wall_s"] / out["backend_cpu_s"]
                                        if out["backend_cpu_s"] else None)
    if "us_per_request" in out:
        out["us_per_request"] = 1e6 / out["req_per_s"]
    return out


def interleaved(kinds, reps, slices, run):
    """``reps`` figures for each of ``kinds``, each figure taken in ``slices`` short runs
    interleaved with the other kinds' (``run(kind)``), the order rotating at every slice: the
    machine's slow drift (seconds-long phases of host CPU contention on this VM move a 2-s
    figure by 10 %) then falls on every kind alike."""
    out = {k: [] for k in kinds}
    turn = 0
    for _ in range(reps):
        taken = {k: [] for k in kinds}
        for _ in range(slices):
            for k in kinds[turn % len(kinds):] + kinds[:turn % len(kinds)]:
                taken[k].append(run(k))
            turn += 1
        for k in kinds:
            out[k].append(combine(taken[k]))
    return out


def median_run(runs):
    """The run with the median requests/s, with every rep's figure kept."""
    ordered = sorted(runs, key=lambda r: r["req_per_s"])
    pick = dict(ordered[len(ordered) // 2])
    pick["reps_req_per_s"] = [r["req_per_s"] for r in runs]
    return pick


def host_native(path, size, seconds, write, buffers=1):
    """The same I/O done directly on the host file, one at a time on one thread (in C), into
    or out of ``buffers`` buffers in turn (``native_io``)."""
    fd = os.open(path, os.O_RDWR)
    try:
        r = native_io(fd, size, FILE_SIZE // size, seconds, write, buffers=buffers)
    finally:
        os.close(fd)
    return {"requests": r["requests"], "wall_s": r["wall_s"],
            "req_per_s": r["requests"] / r["wall_s"],
            "bytes_per_s": r["requests"] * size / r["wall_s"]}


def floor_run(seconds, echo_cpu=-1):
    """One run of the depth-1 wake-up floor: two threads answering each other over eventfds
    with no work in between (``wake_floor``), the answering one on ``echo_cpu`` if >= 0."""
    kick, call = os.eventfd(0), os.eventfd(0)
    try:
        return wake_floor(kick, call, seconds, echo_cpu)
    finally:
        os.close(kick)
        os.close(call)


def markdown(results, config, multiqueue=None):
    fastvfs_cmd = " ".join(["--cache never", config.get("fastvfs_args") or ""]).strip()
    lines = [f"# Microbenchmarks {config['date']}", "",
             f"Machine: {config['machine']}. Driver: {config.get('driver', 'lean (C)')}, "
             f"one thread per queue, queue size 256, EVENT_IDX and INDIRECT_DESC negotiated, "
             f"chains laid out as Linux's virtiofs driver does, "
             + {"contiguous": "READ and WRITE data pages one after the other in guest memory",
                "scattered": "READ and WRITE data pages shuffled in guest memory, none next to "
                             "the one after it (as a guest's page cache has them)"}[
                 config.get("pages", "contiguous")] +
             f". fastvfs `{fastvfs_cmd}` "
             f"(defaults: io_uring READs, no busy polling unless `--poll-us`, sandbox on); reference "
             f"virtiofsd `-o cache=none` (its default single thread). {config['seconds']} s per "
             f"figure, median of {config['reps']} runs, each taken in "
             f"{config.get('slices', 1)} slices interleaved with the other backends', the "
             f"order rotating at every slice. "
             + {None: "Threads unpinned.",
                "apart": "Driver pinned to CPU 0, every backend thread (and the floor's answering "
                         "thread) to CPU 1.",
                "together": "Driver, every backend thread and the floor's answering thread "
                            "pinned to CPU 0."}[config.get("pin")], "",
             "| workload | depth | fastvfs req/s | reference req/s | ratio | fastvfs "
             "req/backend-CPU-s | reference req/backend-CPU-s | ratio | driver CPU share "
             "(fastvfs / reference) | host-native req/s (MB/s) | wake-up floor req/s "
             "(fastvfs / reference of it) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def fmt(x):
        return f"{x:,.0f}" if x else "-"

    def ratio(a, b):
        return f"{a / b:.2f}x" if a and b else "-"

    for key, row in results.items():
        f, r = row.get("fastvfs"), row.get("reference")
        nat = row.get("native")
        native = "-"
        if nat:
            native = f"{fmt(nat['req_per_s'])} ({nat['bytes_per_s'] / 1e6:,.0f}"
            native += f"; fastvfs {f['req_per_s'] / nat['req_per_s']:.0%})" if f else ")"
        eff_f = f and f["req_per_backend_cpu_s"]
        eff_r = r and r["req_per_backend_cpu_s"]
        share = " / ".join(f"{x['driver_cpu_s'] / x['wall_s']:.0%}" for x in (f, r) if x)
        fl = row.get("floor")
        floor = "-"
        if fl:
            floor = fmt(fl["req_per_s"]) + " (" + " / ".join(
                f"{x['req_per_s'] / fl['req_per_s']:.0%}" for x in (f, r) if x) + ")"
        lines.append(f"| {row['workload']} | {row['depth']} | {fmt(f and f['req_per_s'])} | "
                     f"{fmt(r and r['req_per_s'])} | "
                     f"{ratio(f and f['req_per_s'], r and r['req_per_s'])} | {fmt(eff_f)} | "
                     f"{fmt(eff_r)} | {ratio(eff_f, eff_r)} | {share or '-'} | {native} | {floor} |")
    lines += ["", "Driver CPU share: the driver thread's CPU time over the run's wall time; "
              "near 100 % would mean the figure is bound by the driver rather than the backend. "
              "Host-native: the same transfer done with pread/pwrite on the host file by one "
              "thread, into (out of) as many buffers in turn as the depth has requests in "
              "flight, measured interleaved with the backends: the ceiling of one thread "
              "copying, fastvfs's requests/s as a share of it in brackets (above 100 % where "
              "io_uring's batched submission costs less than a system call per request). "
              "Wake-up floor: two threads answering each other over two eventfds, each "
              "sleeping in poll and reading its eventfd as the driver and a queue worker do, "
              "with no work in between, measured "
              "interleaved with the backends; a request at depth 1 costs at least this round "
              "trip, so near 100 % the figure is the machine's cross-CPU wake-up, not the "
              "backend."]
    if any("baseline" in row for row in results.values()):
        lines += ["", "## Against the baseline build", "",
                  f"This tree's fastvfs against `{config.get('baseline')} -I -m fastvfs` (same "
                  "options), interleaved in the same run, and each against the reference.", "",
                  "| workload | depth | req/s ratio | req/backend-CPU-s ratio | fastvfs ÷ "
                  "reference (req/s, per CPU-s) | baseline ÷ reference (req/s, per CPU-s) |",
                  "|---|---|---|---|---|---|"]
        for key, row in results.items():
            f, b, r = row.get("fastvfs"), row.get("baseline"), row.get("reference")
            if not (f and b):
                continue
            against = ["-", "-"]
            if r:
                against = [f"{ratio(x['req_per_s'], r['req_per_s'])}, "
                           f"{ratio(x['req_per_backend_cpu_s'], r['req_per_backend_cpu_s'])}"
                           for x in (f, b)]
            lines.append(f"| {row['workload']} | {row['depth']} | "
                         f"{ratio(f['req_per_s'], b['req_per_s'])} | "
                         f"{ratio(f['req_per_backend_cpu_s'], b['req_per_backend_cpu_s'])} | "
                         f"{against[0]} | {against[1]} |")
    if multiqueue:
        lines += ["", "## Request queues (fastvfs)", "",
                  "Two queues, each driven by its own driver thread: each on its own file (as "
                  "fio's jobs are), and both on one file (its inode and open file shared "
                  "between the two serving CPUs).", "",
                  "| workload | depth per queue | 1 queue req/s | 2 queues req/s | ratio | "
                  "2 queues, one file req/s | ratio | backend CPU-s 1 / 2 / 2 one file |",
                  "|---|---|---|---|---|---|---|---|"]
        for key, row in multiqueue.items():
            one, two, same = row["1"], row["2"], row.get("2s")
            cpu = " / ".join(f"{r['backend_cpu_s']:.2f}" for r in (one, two, same) if r)
            lines.append(f"| {row['workload']} | {row['depth']} | {fmt(one['req_per_s'])} | "
                         f"{fmt(two['req_per_s'])} | "
                         f"{ratio(two['req_per_s'], one['req_per_s'])} | "
                         f"{fmt(same and same['req_per_s'])} | "
                         f"{ratio(same and same['req_per_s'], one['req_per_s'])} | {cpu} |")
    return "\n".join(lines) + "\n"


def _print(key, label, run):
    print(f"{key:14} {label:10} {run['req_per_s']:>10,.0f} req/s  "
          f"backend CPU {run['backend_cpu_s']:.2f}s  driver CPU {run['driver_cpu_s']:.2f}s",
          flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--slices", type=int, default=8,
                   help="take each figure in this many short runs, interleaved with the other "
                        "backends' (default 8)")
    p.add_argument("--only", help="comma-separated workloads (default: all)")
    p.add_argument("--depths", default=",".join(map(str, DEPTHS)))
    p.add_argument("--no-multiqueue", action="store_true",
                   help="skip the one-against-two request queues comparison")
    p.add_argument("--fastvfs-args", default="",
                   help="extra daemon options for fastvfs, e.g. \"--poll-us 50\"")
    p.add_argument("--pin", choices=("apart", "together"),
                   help="pin the driver to CPU 0 and the backend (every thread) to CPU 1 "
                        "(apart) or to CPU 0 as well (together), for both backends and the "
                        "floor alike; the two-queue comparison is left unpinned")
    p.add_argument("--driver", choices=("lean", "guest"), default="lean",
                   help="lean: the avail index published once per round of completions reaped "
                        "(default); guest: each request published on its own and the kick "
                        "decided for each, as Linux's virtio_fs_enqueue_req does")
    p.add_argument("--pages", choices=("contiguous", "scattered"), default="contiguous",
                   help="where a READ's or WRITE's data pages lie in guest memory: one after "
                        "the other (default) or shuffled with no page next to the one after it, "
                        "as a guest's page cache has them")
    p.add_argument("--baseline", metavar="PYTHON",
                   help="also run another build of fastvfs, started as PYTHON -I -m fastvfs with "
                        "the same options (e.g. an earlier commit's venv), interleaved with the "
                        "others: the report then has this tree's ratios to it from the same run")
    p.add_argument("--out", default="reports/micro")
    args = p.parse_args(argv)
    each = args.driver == "guest"
    driver_cpus = backend_cpus = None
    echo_cpu = -1
    if args.pin:
        if len(os.sched_getaffinity(0)) < 2 and args.pin == "apart":
            p.error("--pin apart needs two CPUs")
        driver_cpus = {0}
        echo_cpu = 1 if args.pin == "apart" else 0
        backend_cpus = {echo_cpu}
        # The driver threads are started from this one and inherit its CPU.
        everywhere = os.sched_getaffinity(0)
        os.sched_setaffinity(0, driver_cpus)
    extra = shlex.split(args.fastvfs_args)
    names = args.only.split(",") if args.only else list(WORKLOADS)
    depths = [int(d) for d in args.depths.split(",")]
    backends = ["fastvfs"] + (["baseline"] if args.baseline else []) + \
        (["reference"] if os.access(REFERENCE, os.X_OK) else [])
    workdir = tempfile.mkdtemp(prefix="fastvfs-bench-")
    results, multiqueue = {}, {}
    try:
        sessions = {"fastvfs": Session("fastvfs", workdir, extra=extra, cpus=backend_cpus,
                                       publish_each=each, pages=args.pages)}
        if args.baseline:
            sessions["baseline"] = Session("baseline", workdir, extra=extra,
                                           files_of=sessions["fastvfs"], cpus=backend_cpus,
                                           publish_each=each, baseline=args.baseline,
                                           pages=args.pages)
        if "reference" in backends:
            sessions["reference"] = Session("reference", workdir, files_of=sessions["fastvfs"],
                                            cpus=backend_cpus, publish_each=each,
                                            pages=args.pages)
        try:
            native_file = sessions["fastvfs"].shared / "data"
            for name in names:
                opcode, size = WORKLOADS[name]
                for depth in depths:
                    key = f"{name}@{depth}"
                    row = results[key] = {"workload": name, "depth": depth}
                    kinds = backends + (["floor"] if depth == 1 else []) + \
                        (["native"] if size else [])
                    span = args.seconds / args.slices
                    runs = interleaved(kinds, args.reps, args.slices, lambda b: (
                        floor_run(span, echo_cpu) if b == "floor" else
                        host_native(native_file, size, span, opcode == "WRITE", depth)
                        if b == "native" else sessions[b].run(opcode, size, depth, span)))
                    for b in backends:
                        row[b] = median_run(runs[b])
                        _print(key, b, row[b])
                    if depth == 1:
                        row["floor"] = median_run(runs["floor"])
                        print(f"{key:14} {'floor':10} {row['floor']['req_per_s']:>10,.0f} req/s",
                              flush=True)
                    if size:
                        row["native"] = median_run(runs["native"])
        finally:
            for s in sessions.values():
                s.close()
        if args.pin:
            os.sched_setaffinity(0, everywhere)
        if not args.no_multiqueue:
            mq = Session("fastvfs", workdir, queues=2, label="fastvfs-2q", extra=extra,
                         publish_each=each, pages=args.pages)
            try:
                for name, depth in MULTIQUEUE:
                    if args.only and name not in names:
                        continue
                    opcode, size = WORKLOADS[name]
                    key = f"{name}@{depth}"
                    row = multiqueue[key] = {"workload": name, "depth": depth}
                    kinds = ["1", "2", "2s"]
                    span = args.seconds / args.slices
                    runs = interleaved(kinds, args.reps, args.slices, lambda q: mq.run(
                        opcode, size, depth, span, queues=int(q[0]), same_file=q == "2s"))
                    for q in kinds:
                        row[q] = median_run(runs[q])
                        _print(key, f"{q} queue(s)", row[q])
            finally:
                mq.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    config = output.base_config(seconds=args.seconds, reps=args.reps, slices=args.slices,
                                queue_size=256,
                                driver="the project's lean frontend driver (C)" if not each else
                                "the project's lean frontend driver (C) in its guest-like mode "
                                "(each request published and its kick decided on its own, as "
                                "Linux's virtio_fs_enqueue_req does)", fastvfs_cache="never",
                                fastvfs_args=args.fastvfs_args, pin=args.pin,
                                reference=REFERENCE if "reference" in backends else None,
                                baseline=args.baseline, pages=args.pages)
    output.write(args.out, config, {"backends": results, "multiqueue": multiqueue},
                 markdown(results, config, multiqueue))
    return 0


if __name__ == "__main__":
    sys.exit(main())
