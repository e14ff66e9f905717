"""Start-up time and memory of fastvfs beside the reference virtiofsd, in the same run.

    python -m bench.footprint [--rounds 15] [--inodes 100000] [--fastvfs PATH]
                              [--fastvfs-arg=--inode-file-handles=prefer] [--out reports/footprint]

For each of ``--rounds`` rounds, interleaved (fastvfs, reference, then reference, fastvfs, ...),
each daemon is started fresh with its defaults (its own sandbox) on a new socket, and measured:

* **first reply**: from just before ``exec`` to the answer to the first vhost-user message,
  GET_FEATURES, read back by a frontend that connects as soon as the socket accepts (polling
  every 0.2 ms).  A socket that exists before its daemon can answer does not count: the figure
  is the reply.
* **device up**: from just before ``exec`` to a whole QEMU-like bring-up answered (features,
  protocol features, owner, memory table, one request queue started) and FUSE_INIT answered on
  it, by the project's frontend driver.
* **idle PSS**: the proportional set size of every process of the daemon (both daemons serve
  from a child they fork into their sandbox), from ``/proc/PID/smaps_rollup``, after FUSE_INIT.
* **per inode** (once per daemon, not per round): the PSS growth after a guest has looked up
  ``--inodes`` new files (never forgotten), divided by their number.  Each inode also holds a
  descriptor; the daemon's descriptor limit is read from ``/proc/PID/limits`` and the count is
  lowered to what it allows, and said so.

fastvfs is the ``fastvfs`` program of the installed package (``--fastvfs``, default
``FASTVFS_BIN`` or ``.venv-deployed/bin/fastvfs``), as a user starts it.  Medians over rounds;
JSON and a Markdown table go to ``--out``.
"""

import argparse
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import output
from bench.micro import REFERENCE, family, start_daemon, stop_daemon
from fastvfs.fuse import abi
from fastvfs_testing.fuse_client import FuseClient

VHOST_USER_GET_FEATURES = 1
VHOST_USER_VERSION = 0x1
VHOST_USER_REPLY = 0x4
HEADER = struct.Struct("<III")


def default_fastvfs():
    binary = os.environ.get("FASTVFS_BIN")
    if binary:
        return binary
    deployed = Path(__file__).resolve().parents[1] / ".venv-deployed" / "bin" / "fastvfs"
    return str(deployed) if deployed.exists() else None


def argv_of(name, fastvfs, sock, shared, extra=()):
    """The command line of ``name``; ``extra`` is added to fastvfs's."""
    if name == "fastvfs":
        cmd = [fastvfs] if fastvfs else [sys.executable, "-m", "fastvfs"]
        return [*cmd, "--socket-path", sock, "--shared-dir", shared, "--log-level", "error",
                *extra]
    return [REFERENCE, f"--socket-path={sock}", "-o", f"source={shared}"]


def _connect(sock, deadline):
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(sock)
            return s
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing accepted on {sock}") from None
            time.sleep(0.0002)


def _recv_exact(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise RuntimeError("the daemon hung up before replying")
        data += chunk
    return data


def _finish(proc):
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def first_reply(name, fastvfs, shared, extra=()):
    """Seconds from exec to the GET_FEATURES reply, and to the socket accepting."""
    tmp = tempfile.mkdtemp(prefix="fvfp-")
    sock = os.path.join(tmp, "s.sock")
    try:
        t0 = time.monotonic()
        proc = subprocess.Popen(argv_of(name, fastvfs, sock, shared, extra),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            s = _connect(sock, t0 + 15)
            t_accept = time.monotonic()
            s.sendall(HEADER.pack(VHOST_USER_GET_FEATURES, VHOST_USER_VERSION, 0))
            request, flags, size = HEADER.unpack(_recv_exact(s, HEADER.size))
            features = struct.unpack("<Q", _recv_exact(s, size))[0]
            t_reply = time.monotonic()
            if request != VHOST_USER_GET_FEATURES or not flags & VHOST_USER_REPLY or size != 8:
                raise RuntimeError(f"{name}: not a GET_FEATURES reply")
            s.close()
        finally:
            _finish(proc)
        return {"socket_s": t_accept - t0, "reply_s": t_reply - t0, "features": features}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def pss_kib(pid):
    total = 0
    for member in family(pid):
        try:
            with open(f"/proc/{member}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def nofile_limit(pid):
    limits = []
    for member in family(pid):
        try:
            with open(f"/proc/{member}/limits") as f:
                for line in f:
                    if line.startswith("Max open files"):
                        limits.append(int(line.split()[3]))
        except (OSError, ValueError):
            continue
    return min(limits) if limits else None


class Started:
    """A daemon started and brought up by the frontend driver, FUSE_INIT answered."""

    def __init__(self, name, fastvfs, shared, extra=()):
        t0 = time.monotonic()
        self.sock, self.proc, self.frontend = start_daemon(
            argv_of(name, fastvfs, "{sock}", shared, extra), name, poll_s=0.0002)
        self.client = FuseClient(self.frontend, timeout=30)
        self.client.init()
        self.up_s = time.monotonic() - t0

    def close(self):
        stop_daemon(self.proc, self.frontend, self.sock)


def settle_pss(pid, wait=0.3):
    time.sleep(wait)
    return pss_kib(pid)


def per_inode(name, fastvfs, shared, count, extra=()):
    d = Started(name, fastvfs, shared, extra)
    try:
        limit = nofile_limit(d.proc.pid)
        usable = count if limit is None else min(count, max(0, limit - 512))
        names = sorted(os.listdir(Path(shared) / "many"))[:usable]
        many = d.client.lookup(abi.FUSE_ROOT_ID, b"many").nodeid
        before = settle_pss(d.proc.pid)
        half = len(names) // 2
        for n in names[:half]:
            d.client.lookup(many, n.encode())
        middle = settle_pss(d.proc.pid)
        for n in names[half:]:
            d.client.lookup(many, n.encode())
        after = settle_pss(d.proc.pid)
        rest = len(names) - half
        return {"inodes": len(names), "nofile_limit": limit, "pss_before_kib": before,
                "pss_half_kib": middle, "pss_after_kib": after,
                "bytes_per_inode": (after - before) * 1024 / len(names) if names else None,
                "bytes_per_further_inode": (after - middle) * 1024 / rest if rest else None}
    finally:
        d.close()


def markdown(config, rows, inode_rows):
    def ms(x):
        return f"{x * 1000:.1f}"

    lines = [f"# Start-up and memory, {config['date']}", "",
             f"Machine: {config['machine']}. Commit {config.get('commit', '?')}. "
             f"{config['rounds']} rounds, interleaved, each daemon fresh, with its defaults "
             f"(its own sandbox). Medians.", "",
             f"- fastvfs: `{config['fastvfs_cmd']}`",
             f"- reference: `{config['reference_cmd']}`", "",
             "| figure | fastvfs | reference | fastvfs ÷ reference |", "|---|---|---|---|"]
    f, r = rows["fastvfs"], rows["reference"]
    for key, label in (("socket_s", "exec → socket accepts (ms)"),
                       ("reply_s", "exec → GET_FEATURES answered (ms)"),
                       ("up_s", "exec → device up, FUSE_INIT answered (ms)")):
        lines.append(f"| {label} | {ms(f[key])} | {ms(r[key])} | {f[key] / r[key]:.2f}x |")
    lines.append(f"| idle PSS, all processes (MiB) | {f['pss_kib'] / 1024:.1f} | "
                 f"{r['pss_kib'] / 1024:.1f} | {f['pss_kib'] / r['pss_kib']:.2f}x |")
    fi, ri = inode_rows["fastvfs"], inode_rows["reference"]
    lines.append(f"| PSS per inode looked up (bytes; {fi['inodes']:,} / {ri['inodes']:,} inodes) "
                 f"| {fi['bytes_per_inode']:.0f} | {ri['bytes_per_inode']:.0f} | "
                 f"{fi['bytes_per_inode'] / ri['bytes_per_inode']:.2f}x |")
    lines.append(f"| PSS per further inode, from half of them to all (bytes) "
                 f"| {fi['bytes_per_further_inode']:.0f} | {ri['bytes_per_further_inode']:.0f} | "
                 f"{fi['bytes_per_further_inode'] / max(ri['bytes_per_further_inode'], 1):.2f}x |")
    lines += ["", "Per inode: the PSS growth of all the daemon's processes after a guest looked "
              "up that many new files, never forgotten, over their number; each inode also "
              "holds an O_PATH descriptor in both daemons (kernel memory, not counted). The "
              f"count asked was {config['inodes']:,}; it is lowered to the daemon's descriptor "
              f"limit less 512 where that is lower (limits: fastvfs {fi['nofile_limit']}, "
              f"reference {ri['nofile_limit']}).", ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.footprint", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--inodes", type=int, default=100_000)
    p.add_argument("--fastvfs", default=default_fastvfs(),
                   help="the fastvfs program (default: FASTVFS_BIN or .venv-deployed/bin/fastvfs)")
    p.add_argument("--fastvfs-arg", action="append", default=[], metavar="ARG",
                   help="an option added to fastvfs's command line (repeatable), e.g. "
                        "--fastvfs-arg=--inode-file-handles=prefer, Kata's default")
    p.add_argument("--out", default="reports/footprint")
    args = p.parse_args(argv)
    extra = {"fastvfs": tuple(args.fastvfs_arg), "reference": ()}
    if not os.access(REFERENCE, os.X_OK):
        p.error(f"needs the reference virtiofsd at {REFERENCE}")
    work = tempfile.mkdtemp(prefix="fastvfs-footprint-")
    shared = os.path.join(work, "share")
    os.makedirs(os.path.join(shared, "many"))
    for i in range(args.inodes):
        open(os.path.join(shared, "many", f"f{i:06}"), "w").close()
    names = ("fastvfs", "reference")
    taken = {n: {"socket_s": [], "reply_s": [], "up_s": [], "pss_kib": []} for n in names}
    try:
        for i in range(args.rounds):
            for name in (names if i % 2 == 0 else names[::-1]):
                r = first_reply(name, args.fastvfs, shared, extra[name])
                taken[name]["socket_s"].append(r["socket_s"])
                taken[name]["reply_s"].append(r["reply_s"])
            for name in (names if i % 2 == 0 else names[::-1]):
                d = Started(name, args.fastvfs, shared, extra[name])
                try:
                    taken[name]["up_s"].append(d.up_s)
                    taken[name]["pss_kib"].append(settle_pss(d.proc.pid))
                finally:
                    d.close()
            print(f"round {i + 1}: " + ", ".join(
                f"{n} reply {taken[n]['reply_s'][-1] * 1000:.1f} ms up {taken[n]['up_s'][-1] * 1000:.1f} ms "
                f"PSS {taken[n]['pss_kib'][-1] / 1024:.1f} MiB" for n in names), flush=True)
        inode_rows = {n: per_inode(n, args.fastvfs, shared, args.inodes, extra[n])
                      for n in names}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = {n: {k: statistics.median(v) for k, v in taken[n].items()} for n in names}
    config = output.base_config(rounds=args.rounds, inodes=args.inodes,
                                commit=output.git_commit(),
                                fastvfs_cmd=" ".join(argv_of("fastvfs", args.fastvfs, "SOCK",
                                                             "DIR", extra["fastvfs"])),
                                reference_cmd=" ".join(argv_of("reference", None, "SOCK", "DIR")))
    output.write(args.out, config, {"medians": rows, "rounds": taken, "per_inode": inode_rows},
                 markdown(config, rows, inode_rows))
    print(markdown(config, rows, inode_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
