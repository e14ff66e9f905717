"""Cost per LOOKUP and GETATTR with inodes held by file handle (``--inode-file-handles=prefer``)
against O_PATH descriptors (``never``): two daemons side by side, driven by the frontend driver
one request at a time, rounds interleaved between them.

    python -m bench.inode_handles [--files N] [--rounds R] [--out reports/inode-handles]

Kinds: ``getattr-hot`` (one node again and again: a cached descriptor, the C fast path in
both), ``lookup-hot`` (a known name: the fast path), ``getattr-cold`` (cycling over more
nodes than the descriptor cache holds: with handles each is reopened by the engine),
``lookup-new`` (a name seen for the first time: the engine opens it, and with handles also
takes its handle)."""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fastvfs.fs.passthrough import HANDLE_FDS_MAX
from fastvfs_testing.fuse_client import FuseClient

from .micro import backend_argv, start_daemon, stop_daemon

ROOT = 1
MODES = ("never", "prefer")


def make_files(directory, count):
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    for i in range(count):
        os.close(os.open(os.path.join(directory, f"f{i}"), flags, 0o644))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=HANDLE_FDS_MAX * 4)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--per-round", type=int, default=2000)
    p.add_argument("--out", default="reports/inode-handles")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="fvih-"))
    sessions = {}
    for mode in MODES:
        share = work / mode
        share.mkdir()
        make_files(share, args.files)
        sock, proc, frontend = start_daemon(
            backend_argv("fastvfs", "{sock}", str(share),
                         (f"--inode-file-handles={mode}",)), mode)
        client = FuseClient(frontend, timeout=30)
        client.init()
        sessions[mode] = (sock, proc, frontend, client)
    hot = {m: sessions[m][3].lookup(ROOT, "f0").nodeid for m in MODES}
    # Every node known once (lookup-new below takes fresh names from the second half).
    half = args.files // 2
    ids = {m: [sessions[m][3].lookup(ROOT, f"f{i}").nodeid for i in range(half)]
           for m in MODES}
    fresh = {m: iter(range(half, args.files)) for m in MODES}
    per = args.per_round
    kinds = {
        "getattr-hot": lambda m, c: [c.getattr(hot[m]) for _ in range(per)],
        "lookup-hot": lambda m, c: [c.lookup(ROOT, "f0") for _ in range(per)],
        "getattr-cold": lambda m, c: [c.getattr(ids[m][(k * 7919) % half]) for k in range(per)],
        "lookup-new": lambda m, c: [c.lookup(ROOT, f"f{next(fresh[m])}")
                                    for _ in range(min(per, half // args.rounds))],
    }
    results = {k: {m: [] for m in MODES} for k in kinds}
    for r in range(args.rounds):
        for kind, run in kinds.items():
            for mode in (MODES if r % 2 == 0 else MODES[::-1]):
                client = sessions[mode][3]
                started = time.perf_counter()
                n = len(run(mode, client))
                results[kind][mode].append((time.perf_counter() - started) / n * 1e6)
    # The fastest round is the least disturbed by other load on the machine; the median is
    # given beside it.
    summary = {k: {m: {"min": round(min(v), 2), "median": round(statistics.median(v), 2)}
                   for m, v in by.items()} for k, by in results.items()}
    for mode in MODES:
        sock, proc, frontend, _ = sessions[mode]
        stop_daemon(proc, frontend, sock)
    shutil.rmtree(work, ignore_errors=True)
    config = {"files": args.files, "rounds": args.rounds, "per_round": per,
              "handle_fds_max": HANDLE_FDS_MAX, "share_fs": "tmp dir of " + str(work),
              "python": sys.version.split()[0]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H%M%S")
    (out / f"{stamp}.json").write_text(json.dumps({"config": config, "us_per_request": summary,
                                                   "rounds": results}, indent=1))
    lines = ["| request | never min / median (µs) | prefer min / median (µs) |", "|---|---|---|"]
    lines += [f"| {k} | {v['never']['min']} / {v['never']['median']} | "
              f"{v['prefer']['min']} / {v['prefer']['median']} |" for k, v in summary.items()]
    (out / f"{stamp}.md").write_text(
        "µs per request over rounds (fastest, median), frontend driver, one request at a "
        "time, rounds interleaved.\n"
        f"Configuration: {json.dumps(config)}\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
