"""Plot the regression gate's history: fastvfs/reference efficiency per workload over runs (the
every-opcode summary on a second panel).

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
    # The every-opcode summary (keys "ops:...", bench.ops) on a panel of its own.
    ops_keys = [k for k in keys if k.startswith("ops:")]
    panels = [p for p in ([k for k in keys if k not in ops_keys], ops_keys) if p]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 4.5 * len(panels)), squeeze=False)
    xs = range(len(runs))
    for ax, panel in zip(axes[:, 0], panels):
        for key in panel:
            ax.plot(xs, [r["ratios"].get(key) for r in runs], marker="o", label=key)
        ax.axhline(1.0, color="black", linewidth=0.7)
        ax.set_xticks(list(xs))
        ax.set_xticklabels([f"{r['commit']}\n{r['date'][5:16]}" for r in runs], fontsize=7)
        ax.set_ylabel("fastvfs / reference requests per backend CPU-s (x)")
        ax.set_xlabel("run (commit, date)")
        ax.legend(fontsize=7, ncol=2)
    axes[0, 0].set_title("Microbenchmark efficiency over commits (same-run reference)")
    if len(panels) == 2:
        axes[1, 0].set_title("Every-opcode summary (bench.ops), units per backend CPU-s")
    fig.tight_layout()
    out = args.out or args.history / "history.png"
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
