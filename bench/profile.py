"""Where a request's time goes in the fastvfs hot path: perf samples of the serving process
under a lean-driver load, summed by stage.

    python -m bench.profile [--seconds 3] [--only read4k@32,getattr@32] [--out reports/profile]

For each workload a fastvfs daemon (defaults, ``--cache never``) is driven by the lean frontend
driver while ``perf record -g`` samples the serving process; the inclusive share of each stage's
functions (their callees, kernel included, counted in) is written as a Markdown table with the
perf command lines, next to the raw ``perf report`` output.  Stages:

* wait: sleeping in ``poll`` on the kick eventfd and waking up (scheduler, wake-up)
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
from fastvfs.testing.lean import LeanLoad

P = "__pyx_f_7fastvfs_5_ring_9Virtqueue_"
# stage -> functions whose inclusive time is the stage's (first match wins, most specific first)
STAGES = [
    ("syscall", [P + "_uring_submit", "pwritev64", "pwritev", "preadv64", "preadv", "statx",
                 "__libc_openat64", "openat64", "__open64_nocancel", "dup"]),
    ("reply", [P + "_flush_used", P + "_notify_locked", P + "_notify", "_write_reply",
               "__pyx_f_7fastvfs_5_ring__write_reply", "__pyx_f_7fastvfs_5_ring__scatter"]),
    ("ring", [P + "_pop", P + "_walk", "gpa_to_iov", "__pyx_f_7fastvfs_5_ring__slice",
              "__pyx_f_7fastvfs_5_ring__gather"]),
    ("stats", ["__vdso_clock_gettime", "clock_gettime", "_stats_record"]),
    ("wait", ["__poll", "poll", "__GI___poll", "ppoll"]),
]
WORKLOADS = ["getattr@32", "lookup@32", "read4k@32", "write4k@32", "read4k@1"]


def serving_pid(pid):
    kids = Path(f"/proc/{pid}/task/{pid}/children")
    found = kids.read_text().split() if kids.exists() else []
    return int(found[0]) if found else pid


def children_report(data):
    """{symbol: inclusive %} from ``perf report --children``."""
    out = subprocess.run(["perf", "report", "-i", data, "--children", "--stdio", "-g", "none",
                          "--percent-limit", "0.1", "--sort", "sym"],
                         capture_output=True, text=True).stdout
    shares = {}
    for line in out.splitlines():
        m = re.match(r"\s+([\d.]+)%\s+([\d.]+)%\s+\[[.k]\]\s+(\S+)", line)
        if m:
            shares.setdefault(m.group(3), float(m.group(1)))
    return out, shares


def profile(session, name, seconds, outdir):
    opcode, size = micro.WORKLOADS[name.split("@")[0]]
    depth = int(name.split("@")[1])
    data = str(outdir / f"{name.replace('@', '-')}.perf.data")
    load = LeanLoad(session.frontend, 1, opcode, depth,
                    nodeid=micro.ROOT if opcode == "LOOKUP" else session.node, fh=session.fh,
                    size=size, file_size=micro.FILE_SIZE)
    try:
        load.run(0.5)       # warm the page cache and the inode table
        cmd = ["perf", "record", "-F", "5000", "-g", "-o", data, "-p",
               str(serving_pid(session.proc.pid))]
        perf = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        result = load.run(seconds)
        perf.send_signal(2)
        perf.wait(30)
    finally:
        load.close()
    raw, shares = children_report(data)
    total = shares.get(P + "_run", 100.0) or 100.0
    stages = {}
    taken = 0.0
    for stage, funcs in STAGES:
        share = sum(shares.get(f, 0.0) for f in funcs)
        stages[stage] = share
        taken += share
    stages["decode"] = max(0.0, total - taken)
    rate = result["requests"] / result["wall_s"]
    return {"command": " ".join(cmd), "req_per_s": rate, "stages": stages, "raw": raw,
            "total": total}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--only", help="comma-separated workload@depth (default: %s)"
                   % ",".join(WORKLOADS))
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
        session = micro.Session("fastvfs", workdir)
        try:
            for name in names:
                rows[name] = profile(session, name, args.seconds, outdir)
                (outdir / f"{name.replace('@', '-')}.txt").write_text(rows[name]["raw"])
                os.unlink(outdir / f"{name.replace('@', '-')}.perf.data")
                print(name, {k: round(v, 1) for k, v in rows[name]["stages"].items()},
                      flush=True)
        finally:
            session.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    stages = ["ring", "decode", "syscall", "reply", "stats", "wait"]
    lines = [f"# Where the time goes, {stamp}", "",
             "Share of the serving thread's samples (inclusive: a stage's callees, kernel "
             "included, count in it), fastvfs defaults with `--cache never`, lean driver, "
             f"{args.seconds} s per workload. Produced by `python -m bench.profile`; per "
             "workload the perf command was `perf record -F 5000 -g -p <serving pid>` and "
             "`perf report --children --sort sym` (raw output beside this file).", "",
             "| workload | req/s | " + " | ".join(stages) + " |",
             "|---|---|" + "---|" * len(stages)]
    for name, row in rows.items():
        t = row["total"]
        lines.append(f"| {name} | {row['req_per_s']:,.0f} | " +
                     " | ".join(f"{100 * row['stages'][s] / t:.0f} %" for s in stages) + " |")
    lines += ["", "Stages: " + "; ".join(f"**{s}** {d}" for s, d in [
        ("ring", "popping and walking chains, address translation, used-ring updates"),
        ("decode", "header checks and dispatch: the rest of the loop"),
        ("syscall", "the work itself: io_uring_enter (READs), pwritev, statx, openat"),
        ("reply", "reply headers, publication, the guest notification (eventfd write)"),
        ("stats", "clock reads and counters"),
        ("wait", "sleeping on the kick eventfd and waking up")])]
    (outdir / "README.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {outdir}/README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
