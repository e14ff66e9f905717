"""Performance regression gate for CI: a short microbenchmark run of fastvfs and the reference
virtiofsd in the same run, compared with the stored baseline.

    python -m bench.regress [--seconds 1.5] [--baseline bench/baseline.json] [--history DIR]
                            [--update-baseline] [--fastvfs-prefix "strace -f -o /dev/null"]

The compared figure is fastvfs's requests per backend CPU-second divided by the reference's,
measured side by side: machine speed and load cancel out, what is left is fastvfs's own cost per
request.  The every-opcode benchmark's summary (``bench.ops.GATE_WORKLOADS`` at depth 1, one
short round each, keys ``ops:<workload>@1``) is measured and compared the same way, per request
or per cycle; ``--no-ops`` leaves it out.  A workload whose figure falls below ``--threshold``
(default 0.5, i.e. a 2x slowdown) of its baseline fails the run (exit status 1); one not in the
baseline yet is reported as new.  Every run is written to ``--history`` as
``<time>-<commit>.json``; ``python -m bench.history`` plots them.
"""

import argparse
import datetime
import json
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from bench import micro, ops, output

OPS_SECONDS = 0.5
WORKLOADS = [("getattr", 1), ("getattr", 32), ("lookup", 1), ("read4k", 1), ("read4k", 32),
             ("write4k", 1), ("write4k", 32)]
DEFAULT_BASELINE = Path(__file__).with_name("baseline.json")


def measure(seconds, prefix=()):
    """{workload@depth: {"fastvfs": run, "reference": run, "ratio": cpu-efficiency ratio}}."""
    workdir = tempfile.mkdtemp(prefix="fastvfs-regress-")
    results = {}
    try:
        sessions = {"fastvfs": micro.Session("fastvfs", workdir, prefix=prefix)}
        sessions["reference"] = micro.Session("reference", workdir, files_of=sessions["fastvfs"])
        try:
            for name, depth in WORKLOADS:
                opcode, size = micro.WORKLOADS[name]
                row = {}
                for backend in ("fastvfs", "reference"):
                    row[backend] = sessions[backend].run(opcode, size, depth, seconds)
                f, r = row["fastvfs"], row["reference"]
                row["ratio"] = (f["req_per_backend_cpu_s"] / r["req_per_backend_cpu_s"]
                                if f["req_per_backend_cpu_s"] and r["req_per_backend_cpu_s"]
                                else None)
                results[f"{name}@{depth}"] = row
        finally:
            for s in sessions.values():
                s.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def compare(results, baseline, threshold):
    """Rows (workload, baseline ratio, current ratio, change, verdict) and whether all pass."""
    rows, ok = [], True
    for key, row in results.items():
        base = baseline.get(key)
        cur = row["ratio"] if isinstance(row, dict) else row
        if base is None or cur is None:
            rows.append((key, base, cur, None, "new"))
            continue
        change = cur / base
        verdict = "ok" if change >= threshold else "REGRESSION"
        ok &= verdict == "ok"
        rows.append((key, base, cur, change, verdict))
    return rows, ok


def format_rows(rows, threshold):
    out = [f"{'workload':<22}{'baseline':>10}{'current':>10}{'change':>9}  verdict "
           f"(fastvfs/reference requests per backend CPU-second; fails below {threshold:.2f}x "
           f"of baseline)"]
    for key, base, cur, change, verdict in rows:
        def f(x):
            return f"{x:.2f}" if x is not None else "-"
        out.append(f"{key:<22}{f(base):>10}{f(cur):>10}{f(change):>9}  {verdict}")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.regress", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=1.5)
    p.add_argument("--baseline", type=Path, default=DEFAULT_BASELINE)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--history", type=Path, default=Path("reports/history"))
    p.add_argument("--update-baseline", action="store_true",
                   help="store this run's ratios as the new baseline")
    p.add_argument("--no-ops", action="store_true",
                   help="leave out the every-opcode summary (bench.ops)")
    p.add_argument("--fastvfs-prefix", default="",
                   help="command to run the fastvfs daemon under (e.g. to show the gate "
                        "catching a slowdown)")
    args = p.parse_args(argv)
    if not os.access(micro.REFERENCE, os.X_OK):
        print(f"regression gate skipped: {micro.REFERENCE} is not installed")
        return 0
    results = measure(args.seconds, shlex.split(args.fastvfs_prefix))
    ops_results = {}
    if not args.no_ops:
        ops_results, _ = ops.measure(ops.GATE_WORKLOADS, [1], OPS_SECONDS, 1, "auto",
                                     lean=False, log=lambda line: None,
                                     prefix=shlex.split(args.fastvfs_prefix))
        results.update({k: {"ratio": v} for k, v in ops.gate_ratios(ops_results).items()})
    baseline = json.loads(args.baseline.read_text()) if args.baseline.exists() else {}
    rows, ok = compare(results, baseline.get("ratios", {}), args.threshold)
    print(format_rows(rows, args.threshold))
    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H%M%S")
    record = {"date": stamp, "commit": output.git_commit(), "seconds": args.seconds,
              "ratios": {k: r["ratio"] for k, r in results.items()}, "results": results,
              "ops": ops_results,
              "prefix": args.fastvfs_prefix}
    args.history.mkdir(parents=True, exist_ok=True)
    (args.history / f"{stamp}-{record['commit']}.json").write_text(json.dumps(record, indent=1))
    if args.update_baseline:
        args.baseline.write_text(json.dumps({"commit": record["commit"], "date": stamp,
                                             "ratios": record["ratios"]}, indent=2) + "\n")
        print(f"baseline updated: {args.baseline}")
        return 0
    print("performance gate: " + ("passed" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
