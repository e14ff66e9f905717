"""The bench suite: real guests on fastvfs, the reference virtiofsd and virtio-9p, and the host
directory natively as the ceiling; plots and a Markdown report under ``reports/<date>/``.

    python -m bench.suite [--quick] [--only SYSTEMS] [--workloads fio,metadata,...] [--reps N]

Each system boots one guest (QEMU + the Debian kernel; TCG here, KVM where /dev/kvm works) that
runs ``bench/workloads.py`` on the shared mount ``--reps`` times; the native run does the same on
a host directory.  ``--quick`` runs one configuration per system (cache=auto / 9p cache=loose),
fewer fio jobs, shorter runs and two repetitions: about ten minutes here.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fastvfs_testing import guest

REPO = Path(__file__).resolve().parents[1]
WORKLOADS = REPO / "bench" / "workloads.py"
REFERENCE = "/usr/lib/qemu/virtiofsd"
NINEP_BASE = "trans=virtio,version=9p2000.L,msize=524288"


class System:
    def __init__(self, name, kind, cache, writeback=False, extra=()):
        self.name, self.kind, self.cache, self.writeback = name, kind, cache, writeback
        self.extra = tuple(extra)

    def describe(self):
        if self.kind == "fastvfs":
            return (f"fastvfs --cache {self.cache}{' --writeback' if self.writeback else ''}"
                    f"{''.join(' ' + a for a in self.extra)} "
                    "(1 request queue, one worker thread per queue, sandbox namespace)")
        if self.kind == "reference":
            return (f"{REFERENCE} -o cache={'none' if self.cache == 'never' else self.cache} "
                    "(single thread: its thread pool is killed by its seccomp filter here)")
        if self.kind == "9p":
            return f"virtio-9p {NINEP_BASE},cache={self.cache}"
        return "the host directory, no VM (ceiling)"


SYSTEMS = {s.name: s for s in [
    System("fastvfs-never", "fastvfs", "never"),
    System("fastvfs-auto", "fastvfs", "auto"),
    System("fastvfs-auto-wb", "fastvfs", "auto", writeback=True),
    System("reference-never", "reference", "never"),
    System("reference-auto", "reference", "auto"),
    System("9p-none", "9p", "none"),
    System("9p-loose", "9p", "loose"),
    System("native", "native", "-"),
]}
# Variants run only when named with --only.
VARIANTS = {s.name: s for s in [
    System("fastvfs-never-sync", "fastvfs", "never", extra=("--io-engine", "sync")),
    System("fastvfs-never-poll", "fastvfs", "never", extra=("--poll-us", "50")),
    System("fastvfs-auto-sync", "fastvfs", "auto", extra=("--io-engine", "sync")),
]}
QUICK_SYSTEMS = ["fastvfs-auto", "reference-auto", "9p-loose", "native"]
# Which fastvfs configuration each baseline is compared with.
PAIRS = {"reference-never": "fastvfs-never", "reference-auto": "fastvfs-auto",
         "9p-none": "fastvfs-never", "9p-loose": "fastvfs-auto", "native": "fastvfs-auto"}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def start_backend(system, sock, shared, logfile):
    if system.kind == "fastvfs":
        argv = [sys.executable, "-m", "fastvfs", "--socket-path", sock, "--shared-dir", shared,
                "--cache", system.cache, "--log-level", "error"]
        if system.writeback:
            argv.append("--writeback")
        argv += system.extra
    else:
        cache = "none" if system.cache == "never" else system.cache
        argv = [REFERENCE, f"--socket-path={sock}", "-o", f"source={shared}", "-o",
                f"cache={cache}", "-o", "sandbox=chroot"]
    proc = subprocess.Popen(argv, stdout=logfile, stderr=subprocess.STDOUT, cwd=REPO,
                            start_new_session=True)
    deadline = time.monotonic() + 15
    while not os.path.exists(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{system.name} backend did not start")
        time.sleep(0.05)
    return proc


def run_system(system, args, workdir, images):
    """Run the workloads on one system; returns the workloads' JSON document."""
    shared = workdir / f"share-{system.name}"
    shared.mkdir()
    results = workdir / f"results-{system.name}"
    results.mkdir()
    wl_args = ["--reps", str(args.reps), "--tree-sources", os.pathsep.join(args.tree_sources)]
    if args.quick:
        wl_args.append("--quick")
    if args.workloads:
        wl_args += ["--only", args.workloads]
    if args.fio_jobs:
        wl_args += ["--fio-jobs", args.fio_jobs]
    if args.fio_runtime:
        wl_args += ["--fio-runtime", str(args.fio_runtime)]
    out = results / "results.json"
    if system.kind == "native":
        subprocess.run([sys.executable, str(WORKLOADS), "--dir", str(shared), "--out", str(out),
                        *wl_args], check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())
    script = ('set -e\n"$FASTVFS_PYTHON" ' + str(WORKLOADS) + ' --dir "$FASTVFS_MNT" '
              '--out "$FASTVFS_RESULTS/results.json" ' + " ".join(f"'{a}'" for a in wl_args) +
              ' > "$FASTVFS_RESULTS/progress.txt"\n')
    kernel, initramfs = images
    options = dict(kernel=kernel, initramfs=initramfs, results_dir=results, memory="1G")
    proc = None
    sock = None
    with open(workdir / f"{system.name}.log", "wb") as logfile:
        if system.kind == "9p":
            options.update(ninep_dir=shared, mount_options=f"{NINEP_BASE},cache={system.cache}")
        else:
            sock_dir = Path(tempfile.mkdtemp(prefix="fvb-"))
            sock = str(sock_dir / "fs.sock")
            proc = start_backend(system, sock, str(shared), logfile)
            options.update(vhost_user_socket=sock)
        try:
            g = guest.start_guest(script, **options)
            deadline = time.monotonic() + args.timeout
            last = None
            while g.process.poll() is None:
                if time.monotonic() > deadline:
                    g.kill()
                    raise RuntimeError(f"{system.name}: guest timed out")
                progress = results / "progress.txt"
                if progress.exists():
                    lines = progress.read_text().splitlines()
                    if lines and lines[-1] != last:
                        last = lines[-1]
                        log(f"  {system.name}: {last.removeprefix('progress ')} "
                            f"({len(lines)} figures)")
                time.sleep(2)
            g.wait(60)
        finally:
            if proc is not None:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            if sock:
                shutil.rmtree(os.path.dirname(sock), ignore_errors=True)
    if not out.exists():
        raise RuntimeError(f"{system.name}: no results (see {workdir / (system.name + '.log')})")
    return json.loads(out.read_text())


# -- figures ---------------------------------------------------------------------------------------

# metric id -> (group, label, unit, higher is better)
def metrics(doc):
    """Flatten a workloads document to {metric: [values per repetition]}."""
    flat = {}
    for job, runs in doc.get("fio", {}).items():
        values = [r["mib_per_s"] for r in runs if "mib_per_s" in r]
        if values:
            flat[f"fio {job}"] = values
    for op, values in doc.get("metadata", {}).items():
        flat[f"metadata {op}"] = values
    for name, runs in doc.get("smallfile", {}).items():
        flat[f"smallfile {name}"] = [r["ops_per_s"] for r in runs]
    for step, values in doc.get("tree", {}).items():
        if step.endswith("_s"):
            flat[f"tree {step[:-2]}"] = values
    if doc.get("make", {}).get("build"):
        flat["make build"] = doc["make"]["build"]
    return flat


def unit_of(metric):
    if metric.startswith("fio"):
        return "MiB/s", True
    if metric.startswith(("metadata", "smallfile")):
        return "ops/s", True
    return "s", False


def summarize(all_results):
    table = {}
    for system, doc in all_results.items():
        for metric, values in metrics(doc).items():
            table.setdefault(metric, {})[system] = {
                "median": statistics.median(values), "min": min(values), "max": max(values),
                "n": len(values)}
    return table


def speedup(table, metric, fast, other):
    a, b = table[metric].get(fast), table[metric].get(other)
    if not a or not b or not a["median"] or not b["median"]:
        return None
    _, higher = unit_of(metric)
    return a["median"] / b["median"] if higher else b["median"] / a["median"]


def plots(table, systems, outdir, caption):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    files = []
    groups = {}
    for metric in table:
        key = metric.split()[0]
        if key == "fio":
            key = "fio " + metric.rsplit("-", 1)[1]
        groups.setdefault(key, []).append(metric)
    for group, names in groups.items():
        unit, higher = unit_of(names[0])
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names) + 2), 4.5))
        width = 0.8 / len(systems)
        for i, system in enumerate(systems):
            meds, lo, hi = [], [], []
            for m in names:
                cell = table[m].get(system)
                meds.append(cell["median"] if cell else 0)
                lo.append(cell["median"] - cell["min"] if cell else 0)
                hi.append(cell["max"] - cell["median"] if cell else 0)
            xs = [j + (i - (len(systems) - 1) / 2) * width for j in range(len(names))]
            ax.bar(xs, meds, width, yerr=[lo, hi], capsize=2, label=system)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([n.split(" ", 1)[1] for n in names], rotation=30, ha="right",
                           fontsize=8)
        values = [c["median"] for m in names for c in table[m].values() if c["median"] > 0]
        log_scale = values and max(values) / min(values) > 50
        if log_scale:
            # The native ceiling and a slow baseline differ by orders of magnitude.
            ax.set_yscale("log")
        ax.set_ylabel(f"{unit} ({'higher' if higher else 'lower'} is better"
                      f"{', log scale' if log_scale else ''})")
        ax.set_title(f"{group}: median of repetitions, error bars min-max")
        ax.legend(fontsize=7)
        files.append(_save(plt, fig, outdir / f"{group.replace(' ', '-')}.png", caption, 0.01,
                           0.06))
    for other in [s for s in systems if s in PAIRS and PAIRS[s] in systems]:
        fast = PAIRS[other]
        names = [m for m in table if speedup(table, m, fast, other) is not None]
        if not names:
            continue
        ratios = [speedup(table, m, fast, other) for m in names]
        fig, ax = plt.subplots(figsize=(7, max(3, 0.28 * len(names) + 1.5)))
        ax.barh(range(len(names)), ratios,
                color=["tab:green" if r >= 1 else "tab:red" for r in ratios])
        ax.axvline(1.0, color="black", linewidth=0.8)
        # Ratios multiply: a log axis shows 0.5x and 2x as the same distance from 1.
        ax.set_xscale("log")
        for y, r in enumerate(ratios):
            ax.text(r, y, f" {r:.2f}x", va="center", fontsize=6)
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names, fontsize=7)
        ax.set_xlabel(f"speed-up of {fast} over {other} (x, log scale, >1: fastvfs faster)")
        ax.set_title(f"{fast} / {other}")
        files.append(_save(plt, fig, outdir / f"ratio-{fast}-vs-{other}.png", caption, 0.005,
                           0.04))
    return files


def _save(plt, fig, path, caption, caption_y, bottom):
    """Caption the figure, write it and free it; returns the file name."""
    fig.text(0.01, caption_y, caption, fontsize=6, wrap=True)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def report(table, systems, config, figures):
    lines = [f"# fastvfs bench suite, {config['date']}", "",
             f"Machine: {config['machine']}.  Guest: Debian kernel {config['guest_kernel']}, "
             f"{config['qemu']}, {config['accel']}, {config['guest_smp']} vCPUs, "
             f"{config['guest_memory']} RAM, virtio-fs queue size {config['queue_size']}.  "
             f"{config['reps']} repetitions per figure (median; min-max in brackets).", "",
             "Systems:", ""]
    lines += [f"- **{s}**: {SYSTEMS[s].describe()}" for s in systems]
    lines += ["", "## Results", ""]
    head = "| workload | unit | " + " | ".join(systems) + " |"
    lines += [head, "|" + "---|" * (len(systems) + 2)]
    for metric, cells in table.items():
        unit, higher = unit_of(metric)
        row = [metric, unit + (" ↑" if higher else " ↓")]
        for s in systems:
            c = cells.get(s)
            row.append(f"{c['median']:,.1f} [{c['min']:,.1f}-{c['max']:,.1f}]" if c else "-")
        lines.append("| " + " | ".join(row) + " |")
    pairs = [(PAIRS[s], s) for s in systems if s in PAIRS and PAIRS[s] in systems]
    if pairs:
        lines += ["", "## fastvfs against the baselines", "",
                  "Speed-up of fastvfs (ratio of medians; for times the inverse, so > 1 always "
                  "means fastvfs is faster).", "",
                  "| workload | " + " | ".join(f"{a} / {b}" for a, b in pairs) + " |",
                  "|" + "---|" * (len(pairs) + 1)]
        for metric in table:
            cells = []
            for a, b in pairs:
                r = speedup(table, metric, a, b)
                cells.append(f"{r:.2f}x" if r else "-")
            lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    lines += ["", "## Plots", ""] + [f"![{f}]({f})" for f in figures]
    lines += ["", f"Raw results: `raw/*.json`; configuration: `config.json`.  Command: "
              f"`{config['command']}`."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.suite", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", help="comma-separated systems: " + ",".join(SYSTEMS))
    p.add_argument("--workloads", help="comma-separated: fio,metadata,smallfile,tree,make")
    p.add_argument("--reps", type=int)
    p.add_argument("--fio-jobs", help="comma-separated fio jobs, e.g. randread-libaio-4k "
                                      "(default: the quick or full set)")
    p.add_argument("--fio-runtime", type=int, help="seconds per fio job")
    p.add_argument("--out", default="reports")
    p.add_argument("--timeout", type=float, help="seconds per guest")
    args = p.parse_args(argv)
    systems = (args.only.split(",") if args.only else
               QUICK_SYSTEMS if args.quick else list(SYSTEMS))
    for s in systems:
        if s in VARIANTS:
            SYSTEMS[s] = VARIANTS[s]
        if s not in SYSTEMS:
            p.error(f"unknown system {s!r}")
    if any(SYSTEMS[s].kind == "reference" for s in systems) and not os.access(REFERENCE, os.X_OK):
        log(f"{REFERENCE} missing: skipping the reference systems")
        systems = [s for s in systems if SYSTEMS[s].kind != "reference"]
    args.reps = args.reps or (2 if args.quick else 3)
    args.timeout = args.timeout or (600 if args.quick else 3600)
    stdlib = Path(os.__file__).parent
    args.tree_sources = [str(stdlib / n) for n in (("json", "email") if args.quick else
                                                   ("json", "email", "asyncio", "unittest"))]
    date = datetime.datetime.now().strftime("%Y-%m-%dT%H%M%S")
    outdir = Path(args.out) / date
    (outdir / "raw").mkdir(parents=True)
    needs_guest = any(SYSTEMS[s].kind != "native" for s in systems)
    images = None
    if needs_guest:
        log("preparing the guest kernel and initramfs")
        kernel = guest.ensure_kernel()
        images = (kernel, guest.build_initramfs(kernel))
    qemu = subprocess.run([guest.QEMU, "--version"], capture_output=True,
                          text=True).stdout.splitlines()[0]
    accel = "KVM" if images and guest.accelerator(*images) == "kvm" else "TCG (software emulation)"
    config = {"date": date, "command": "python -m bench.suite " + " ".join(argv or sys.argv[1:]),
              "machine": f"{platform.node()}, {os.cpu_count()} CPUs, {platform.release()}",
              "guest_kernel": images[0].version if images else "-", "qemu": qemu,
              "accel": accel, "guest_smp": 2, "guest_memory": "1G", "queue_size": 1024,
              "msize": 524288, "reps": args.reps, "quick": args.quick,
              "systems": {s: SYSTEMS[s].describe() for s in systems}}
    (outdir / "config.json").write_text(json.dumps(config, indent=2))
    results = {}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fastvfs-bench-") as tmp:
        for i, name in enumerate(systems, 1):
            log(f"[{i}/{len(systems)}] {name}: {SYSTEMS[name].describe()}")
            t = time.monotonic()
            try:
                results[name] = run_system(SYSTEMS[name], args, Path(tmp), images)
            except Exception as exc:   # one broken system must not lose the others' results
                log(f"  {name} failed: {exc}")
                continue
            (outdir / "raw" / f"{name}.json").write_text(json.dumps(results[name], indent=2))
            log(f"  {name} done in {time.monotonic() - t:.0f} s "
                f"(total {time.monotonic() - t0:.0f} s)")
    done = [s for s in systems if s in results]
    table = summarize({s: results[s] for s in done})
    caption = (f"{config['machine']}; guest {config['guest_kernel']}, {accel}, 2 vCPU; "
               f"{config['qemu']}; {args.reps} reps; {date}")
    figures = plots(table, done, outdir, caption)
    (outdir / "report.md").write_text(report(table, done, config, figures))
    log(f"wrote {outdir}/report.md and {len(figures)} plots in {time.monotonic() - t0:.0f} s")
    return 0 if len(done) == len(systems) else 1


if __name__ == "__main__":
    sys.exit(main())
