"""Where benchmark results go: ``<out>/<timestamp>.json`` (configuration and raw results) and a
Markdown table beside it; every figure is stored with the configuration that produced it."""

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def git_commit():
    """The commit measured: HEAD's short hash, with ``+dirty`` when tracked files differ from
    it (figures taken on an uncommitted change say so), or ``unknown`` outside a checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=REPO).stdout.strip()
        if not head:
            return "unknown"
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=REPO,
                               capture_output=True).returncode == 1
    except OSError:
        return "unknown"
    return head + ("+dirty" if dirty else "")


def base_config(**fields):
    """The date and machine every result records, plus the benchmark's own ``fields``."""
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": f"{platform.node()}, {os.cpu_count()} CPUs, {platform.release()}",
            **fields}


def write(out, config, results, markdown):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = config["date"].replace(":", "")
    (out / f"{stem}.json").write_text(json.dumps({"config": config, "results": results},
                                                 indent=1))
    (out / f"{stem}.md").write_text(markdown)
    print(f"wrote {out / stem}.json and .md")
