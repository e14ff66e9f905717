"""Where a request's time goes in the fastvfs hot path: perf samples of the serving process
under a lean-driver load, summed by stage.

    python -m bench.profile [--seconds 3] [--only read4k@32,getattr@32] [--out reports/profile]

For each workload a fastvfs daemon (defaults, ``--cache never``) is driven by the lean frontend
driver while ``perf record -g`` samples the serving process; the inclusive share of each stage's
functions (their callees, kernel included, counted in) is written as a Markdown table with the
perf command lines, next to the raw ``perf report`` output.  Stages:

* wait: sleeping in ``epoll_wait`` on the kick eventfd and waking up (scheduler, wake-up)
* ring: popping and walking descriptor chains, translating addresses, publishing used elements
* decode: reading the FUSE header and dispatching, outside the stages below
* syscall: the system calls that do the work (io_uring_enter with the reads, pwritev, statx,
  openat), kernel time included
* reply: writing the reply headers, publishing them, and notifying the guest (eventfd write
  and the driver's wake-up it causes)
* stats: the per-request clock reads and counters
"""

import argparse
import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import micro
from fastvfs_testing.lean import LeanLoad

# Kernel time by system call (inclusive: perf report --children), and user time by function
# (self), each summed into a stage.
KERNEL_STAGES = [   # stage -> system calls, each as the names its entry point may show under
    ("wait", [("__x64_sys_epoll_wait", "do_epoll_wait"), ("__x64_sys_poll", "do_sys_poll"),
              ("__x64_sys_ppoll",), ("ksys_read",)]),
    ("notify", [("ksys_write",)]),
    ("file I/O", [("__x64_sys_io_uring_enter", "__do_sys_io_uring_enter"),
                  ("__x64_sys_pwritev", "do_pwritev"), ("__x64_sys_preadv", "do_preadv"),
                  ("__x64_sys_preadv2",),
                  ("__x64_sys_statx", "do_statx_fd", "do_statx"),
                  ("__x64_sys_openat", "do_sys_openat2"), ("__x64_sys_close",),
                  ("__x64_sys_dup",)]),
]
# Cython's C names in the hot path's module (fastvfs.ring._ring) and for its worker's methods.
RING = "__pyx_f_7fastvfs_4ring_5_ring_"
WORKER = RING + "9Virtqueue_"
USER_STAGES = [
    ("ring", [RING + "ring_", WORKER + "_pop$", "MemoryTable_gpa_to_iov", RING + "__slice",
              RING + "__gather", RING + "__scatter", RING + "__copy_iov", WORKER + "_push_used",
              WORKER + "_flush_used", WORKER + "_notify", RING + "write_reply",
              RING + "write_out_header"]),
    ("stats", ["clock_gettime", "_stats_record", "_now_ns"]),
    ("locks", ["pthread_mutex", "SlotTable_acquire", "SlotTable_release", "NodeTable_acquire",
               "NodeTable_lookup_key"]),
    ("decode", [RING, "pack_attr", "lookup_entry", "liburing", "io_uring_"]),
]
STAGE_ORDER = ["ring", "decode", "file I/O", "notify", "wait", "locks", "stats", "other"]
WORKLOADS = ["getattr@32", "lookup@32", "read4k@32", "write4k@32", "read4k@1"]


def serving_pid(pid):
    kids = Path(f"/proc/{pid}/task/{pid}/children")
    found = kids.read_text().split() if kids.exists() else []
    return int(found[0]) if found else pid


def perf_report(data, children):
    """[(percent, symbol, kernel?)] from ``perf report``: inclusive or self percentages."""
    out = subprocess.run(["perf", "report", "-i", data, "--stdio", "-g", "none", "--sort", "sym",
                          "--percent-limit", "0.05", "--children" if children else "--no-children"],
                         capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        m = re.match(r"\s+([\d.]+)%\s+(?:([\d.]+)%\s+)?\[([.k])\]\s+(\S+)", line)
        if m:
            rows.append((float(m.group(1)), m.group(4), m.group(3) == "k"))
    return out, rows


def stages_of(data):
    raw_children, inclusive = perf_report(data, True)
    raw_self, own = perf_report(data, False)
    stages = dict.fromkeys(STAGE_ORDER, 0.0)
    by_name = {name: pct for pct, name, kernel in inclusive if kernel}
    for stage, calls in KERNEL_STAGES:
        stages[stage] += sum(max(by_name.get(alias, 0.0) for alias in call) for call in calls)
    kernel_total = sum(pct for pct, _, kernel in own if kernel)
    stages["other"] += max(0.0, kernel_total - sum(stages[s] for s, _ in KERNEL_STAGES))
    for pct, name, kernel in own:
        if kernel:
            continue
        for stage, patterns in USER_STAGES:
            if any(re.search(p, name) for p in patterns):
                stages[stage] += pct
                break
        else:
            stages["other"] += pct
    return raw_children + "\n\n" + raw_self, stages


def profile(session, name, seconds, outdir, publish_each=False):
    opcode, size = micro.WORKLOADS[name.split("@")[0]]
    depth = int(name.split("@")[1])
    data = str(outdir / f"{name.replace('@', '-')}.perf.data")
    load = LeanLoad(session.frontend, 1, opcode, depth,
                    nodeid=micro.ROOT if opcode == "LOOKUP" else session.node, fh=session.fh,
                    size=size, file_size=micro.FILE_SIZE, publish_each=publish_each)
    try:
        load.run(0.5)       # warm the page cache and the inode table
        cmd = ["perf", "record", "-F", "5000", "-g", "-o", data, "-p",
               str(serving_pid(session.proc.pid))]
        perf = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        kicks, waits = load.lean.kicks, load.lean.sleeps     # counted since the load began
        result = load.run(seconds)
        cpu = micro.cpu_seconds(session.proc.pid)
        perf.send_signal(2)
        perf.wait(30)
    finally:
        load.close()
    raw, stages = stages_of(data)
    rate = result["requests"] / result["wall_s"]
    per = max(1, result["requests"])
    return {"command": " ".join(cmd), "req_per_s": rate, "stages": stages, "raw": raw,
            "total": sum(stages.values()) or 100.0,
            "kicks_per_request": (result["kicks"] - kicks) / per,
            "waits_per_request": (result["sleeps"] - waits) / per}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--only", help="comma-separated workload@depth (default: %s)"
                   % ",".join(WORKLOADS))
    p.add_argument("--driver", choices=("lean", "guest"), default="lean",
                   help="lean: the avail index published once per round of completions reaped "
                        "(default); guest: each request published and its kick decided on its "
                        "own, as Linux's virtio_fs_enqueue_req does")
    p.add_argument("--out", default="reports/profile")
    args = p.parse_args(argv)
    if not shutil.which("perf"):
        print("perf is not installed (apt-get install linux-perf)", file=sys.stderr)
        return 1
    names = args.only.split(",") if args.only else WORKLOADS
    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H%M%S")
    outdir = Path(args.out) / stamp
    outdir.mkdir(parents=True, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="fastvfs-profile-")
    rows = {}
    try:
        # Outside the namespace sandbox, so perf can name the hot path's functions (seccomp
        # stays on: its per-call filter is part of the cost).
        session = micro.Session("fastvfs", workdir, extra=("--sandbox", "none"))
        try:
            for name in names:
                rows[name] = profile(session, name, args.seconds, outdir,
                                     publish_each=args.driver == "guest")
                (outdir / f"{name.replace('@', '-')}.txt").write_text(rows[name]["raw"])
                os.unlink(outdir / f"{name.replace('@', '-')}.perf.data")
                print(name, {k: round(v, 1) for k, v in rows[name]["stages"].items()},
                      flush=True)
        finally:
            session.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    stages = STAGE_ORDER
    lines = [f"# Where the time goes, {stamp}", "",
             "Share of the serving process's CPU samples by stage; fastvfs defaults with "
             "`--cache never --sandbox none` (so perf can resolve the hot path's symbols; "
             "seccomp stays on), "
             + ("the lean driver" if args.driver == "lean" else
                "the lean driver in its guest-like mode (each request published and its kick "
                "decided on its own)")
             + f" on one queue, {args.seconds} s per workload. "
             "Produced by `python -m bench.profile`: `perf record -F 5000 -g -p <serving pid>`, "
             "then `perf report --children --sort sym` for the kernel side (time inside each "
             "system call, callees included) and `perf report --no-children --sort sym` for "
             "the user side (each function's own time); the raw reports are beside this "
             "file.", "",
             "| workload | req/s | kicks per request | driver waits per request | " +
             " | ".join(stages) + " |",
             "|---|---|---|---|" + "---|" * len(stages)]
    for name, row in rows.items():
        t = row["total"]
        lines.append(f"| {name} | {row['req_per_s']:,.0f} | {row['kicks_per_request']:.3f} | "
                     f"{row['waits_per_request']:.3f} | " +
                     " | ".join(f"{100 * row['stages'][s] / t:.0f} %" for s in stages) + " |")
    lines += ["", "Kicks per request: the driver's kick eventfd writes (each wakes the "
              "worker unless it is already awake) over the requests answered; driver waits per "
              "request: the times the driver slept on the call eventfd (each ended by a "
              "notification of the worker's) over the same.", "",
              "Stages: " + "; ".join(f"**{s}** {d}" for s, d in [
        ("ring", "user time popping and walking chains, translating addresses, writing reply "
                 "headers and used elements"),
        ("decode", "user time in the rest of the hot path: header checks, dispatch, io_uring "
                   "preparation and reaping, attribute packing"),
        ("file I/O", "kernel time in the system calls doing the work: io_uring_enter with the "
                     "READs, preadv2 (lone READs), pwritev, statx, openat, close"),
        ("notify", "kernel time writing the call eventfd, waking the driver"),
        ("wait", "kernel time in epoll_wait on the kick eventfd (going to sleep, waking)"),
        ("locks", "atomics and mutexes: handle references, the ring lock"),
        ("stats", "clock reads and counters"),
        ("other", "everything else: system call entry and exit, seccomp, libc")])]
    (outdir / "README.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {outdir}/README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
