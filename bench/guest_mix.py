"""What a real guest's ordinary work sends, opcode by opcode, and how much of it the Python engine
answers rather than the C hot path.

    python -m bench.guest_mix [--fastvfs PATH] [--fastvfs-arg=--cache=auto ...]
                              [--out reports/guest-mix]

The installed ``fastvfs`` program (``--fastvfs``, default ``FASTVFS_BIN`` or
``.venv-deployed/bin/fastvfs``) serves a fresh directory to a guest (the Debian kernel under
QEMU, as the guest tests boot it: ``fastvfs_testing.guest``), which runs :data:`SCRIPT` on the
share: copies of four directories of this Python's standard library, ``find``, ``ls -lR``,
``tar`` into a second tree, ``grep -r``, ``du``, small files written, chmod-ed and renamed,
everything removed, then ``tests/guest/workload.py`` (the guest suite's ordinary file work, in
Python).  ``fastvfs stats --json`` is read every second while the guest runs; the last reading
before the guest powers off is the result: per opcode, the requests, how many the engine
answered, and their mean latency (from taking the request off the ring to its reply).

JSON and a Markdown table go to ``--out``.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

from bench import output
from bench.footprint import default_fastvfs
from fastvfs_testing import guest

REPO = Path(__file__).resolve().parents[1]
WORKLOAD = REPO / "tests" / "guest" / "workload.py"
STDLIB = Path(sysconfig.get_paths()["stdlib"])
TREES = " ".join(shlex.quote(str(STDLIB / name))
                 for name in ("json", "email", "asyncio", "unittest"))

SCRIPT = f"""set -e
cd "$FASTVFS_MNT"
mkdir tree1
cp -a {TREES} tree1/
find tree1 -type f | wc -l
ls -lR tree1 > /dev/null
mkdir tree2
tar cf - -C tree1 . | tar xf - -C tree2
grep -r import tree1 > /dev/null || true
du -s tree1 tree2
for i in $(seq 1 200); do echo $i > f$i; chmod 600 f$i; mv f$i g$i; done
cat g* > /dev/null
rm -rf tree1 tree2 g*
"$FASTVFS_PYTHON" {shlex.quote(str(WORKLOAD))} "$FASTVFS_MNT/work" "$FASTVFS_RESULTS/manifest.json"
"""


def run(fastvfs, extra, timeout=1800):
    """Serve a fresh share to a guest running SCRIPT; the last statistics document read, the
    guest's exit status and its output."""
    with tempfile.TemporaryDirectory(prefix="fastvfs-guest-mix-") as work:
        work = Path(work)
        shared, sock = work / "shared", work / "vhost.sock"
        shared.mkdir()
        with open(work / "daemon.log", "wb") as log:
            daemon = subprocess.Popen([fastvfs, "--socket-path", str(sock), "--shared-dir",
                                       str(shared), *extra], stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while not sock.exists():
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("fastvfs did not start:\n" +
                                       (work / "daemon.log").read_text(errors="replace"))
                time.sleep(0.05)
            last = {}
            done = threading.Event()

            def poll():
                while not done.wait(1.0):
                    r = subprocess.run([fastvfs, "stats", "--socket-path", str(sock), "--json"],
                                       capture_output=True, text=True)
                    if r.returncode == 0:
                        last.update(json.loads(r.stdout))

            poller = threading.Thread(target=poll, daemon=True)
            poller.start()
            try:
                result = guest.run_guest(SCRIPT, vhost_user_socket=str(sock),
                                         results_dir=work / "results", timeout=timeout)
            finally:
                done.set()
                poller.join()
            daemon.wait(30)
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
    return last, result.returncode, result.stdout + result.stderr


def markdown(config, doc):
    ops = sorted(doc.get("ops", {}).items(), key=lambda kv: -kv[1]["count"])
    total, engine = doc.get("total", 0), doc.get("total_engine", 0)
    lines = [f"# Requests of a real guest's work, {config['date']}", "",
             f"Machine: {config['machine']}. Commit {config['commit']}. "
             f"fastvfs: `{config['fastvfs_cmd']}`.", "",
             f"{total:,} requests, {engine:,} answered by the Python engine "
             f"({engine / total if total else 0:.2%}).", "",
             "| opcode | requests | by the engine | mean latency µs |", "|---|---|---|---|"]
    for name, op in ops:
        lines.append(f"| {name} | {op['count']:,} | {op.get('engine', 0):,} | "
                     f"{op['mean_us']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.guest_mix", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fastvfs", default=default_fastvfs(),
                   help="the fastvfs program (default: FASTVFS_BIN or .venv-deployed/bin/fastvfs)")
    p.add_argument("--fastvfs-arg", action="append", default=[], metavar="ARG",
                   help="an option added to fastvfs's command line (repeatable)")
    p.add_argument("--out", default="reports/guest-mix")
    args = p.parse_args(argv)
    if not args.fastvfs:
        p.error("no fastvfs program: --fastvfs, FASTVFS_BIN, or make deployed")
    doc, status, text = run(args.fastvfs, args.fastvfs_arg)
    if status != 0:
        print(text[-3000:], file=sys.stderr)
        print(f"the guest's script failed ({status})", file=sys.stderr)
        return 1
    config = output.base_config(commit=output.git_commit(), fastvfs_cmd=" ".join(
        [args.fastvfs, "--socket-path", "SOCK", "--shared-dir", "DIR", *args.fastvfs_arg]))
    output.write(args.out, config, doc, markdown(config, doc))
    print(markdown(config, doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
