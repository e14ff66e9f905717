"""Where benchmark results go: ``<out>/<timestamp>.json`` (configuration and raw results) and a
Markdown table beside it; every figure is stored with the configuration that produced it."""

import datetime
import json
import os
import platform
from pathlib import Path


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
