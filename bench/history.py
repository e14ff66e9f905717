"""Plot the regression gate's history: fastvfs/reference efficiency per workload over runs.

    python -m bench.history [--history reports/history] [--out reports/history/history.png]
"""

import argparse
import json
import sys
from pathlib import Path


def load(history):
    runs = []
    for path in sorted(history.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if doc.get("prefix"):
            continue   # deliberate slowdowns are not part of the trend
        runs.append(doc)
    return runs


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.history", description=__doc__)
    p.add_argument("--history", type=Path, default=Path("reports/history"))
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    runs = load(args.history)
    if not runs:
        print(f"no runs in {args.history}")
        return 1
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = sorted({k for r in runs for k in r["ratios"]})
    fig, ax = plt.subplots(figsize=(8, 4.5))
    xs = range(len(runs))
    for key in keys:
        ax.plot(xs, [r["ratios"].get(key) for r in runs], marker="o", label=key)
    ax.axhline(1.0, color="black", linewidth=0.7)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([f"{r['commit']}\n{r['date'][5:16]}" for r in runs], fontsize=7)
    ax.set_ylabel("fastvfs / reference requests per backend CPU-s (x)")
    ax.set_xlabel("run (commit, date)")
    ax.set_title("Microbenchmark efficiency over commits (same-run reference)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    out = args.out or args.history / "history.png"
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
