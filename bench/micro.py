"""Microbenchmarks: fastvfs and the reference virtiofsd driven by the project's frontend driver
in the same run, with the host-native figure as the ceiling.

    python -m bench.micro [--seconds 2] [--only getattr,read4k] [--depths 1,32] [--out reports/micro]

Each workload keeps a fixed number of requests in flight (closed loop) for ``--seconds`` and
reports requests/s, the backend's CPU-seconds (all its threads, from /proc) and the driver's
own CPU-seconds, so a driver-bound figure shows as such (driver CPU close to the wall time).
Results go to ``<out>/<timestamp>.json`` and a Markdown table next to it, with the ratios
fastvfs/reference.  The frontend driver is pure Python: it tops out far below what either
backend can do, so requests per backend CPU-second is the figure that compares the backends.
"""

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import output

from fastvfs.fuse import abi
from fastvfs.fuse.abi import Opcode
from fastvfs.testing.frontend import VhostUserFrontend
from fastvfs.testing.fuse_client import FuseClient

REFERENCE = "/usr/lib/qemu/virtiofsd"
FILE_SIZE = 64 << 20
ROOT = abi.FUSE_ROOT_ID
CLK_TCK = os.sysconf("SC_CLK_TCK")

# name -> (opcode, request size in bytes of data, host-native equivalent)
WORKLOADS = {
    "getattr": ("GETATTR", 0),
    "lookup": ("LOOKUP", 0),
    "read4k": ("READ", 4096),
    "read128k": ("READ", 128 << 10),
    "write4k": ("WRITE", 4096),
    "write1m": ("WRITE", 1 << 20),
}


def backend_argv(name, sock, shared, extra=()):
    if name == "fastvfs":
        return [sys.executable, "-m", "fastvfs", "--socket-path", sock, "--shared-dir", shared,
                "--cache", "never", "--log-level", "error", *extra]
    return [REFERENCE, f"--socket-path={sock}", "-o", f"source={shared}", "-o", "cache=none"]


def _stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid):
    """CPU time of ``pid`` and all its descendants, every thread included: both daemons serve
    from a child process they fork into their sandbox."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(_stat(entry)[1])
            except OSError:
                continue
    family = {pid}
    grew = True
    while grew:
        grew = False
        for child, parent in parents.items():
            if parent in family and child not in family:
                family.add(child)
                grew = True
    # Nanosecond run times of every thread (/proc/PID/task/TID/schedstat, first field) rather
    # than utime+stime, whose 10 ms ticks are coarse next to a short run of a busy driver.
    total = 0
    for member in family:
        try:
            tasks = os.listdir(f"/proc/{member}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{member}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total / 1e9


def start_daemon(argv, name, **frontend_options):
    """Start a backend (``"{sock}"`` in ``argv`` becomes a fresh socket path) and bring a
    frontend driver up on it; returns (socket path, process, frontend)."""
    sock = str(Path(tempfile.mkdtemp(prefix="fvb-")) / "s.sock")
    proc = subprocess.Popen([a.replace("{sock}", sock) for a in argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while True:
        try:
            return sock, proc, VhostUserFrontend(sock, queue_size=256, timeout=30,
                                                 **frontend_options).start()
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{name} did not start") from None
            time.sleep(0.05)


def stop_daemon(proc, frontend, sock):
    frontend.close()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    shutil.rmtree(os.path.dirname(sock), ignore_errors=True)


class Session:
    def __init__(self, name, workdir, prefix=(), extra=(), label=None, queues=1):
        self.name = label or name
        self.shared = Path(workdir) / self.name
        self.shared.mkdir()
        with open(self.shared / "data", "wb") as f:
            f.truncate(FILE_SIZE)
            f.write(os.urandom(1 << 20))
        self.sock, self.proc, self.frontend = start_daemon(
            [*prefix, *backend_argv(name, "{sock}", str(self.shared), extra)], name,
            num_request_queues=queues)
        self.client = FuseClient(self.frontend, timeout=30)
        self.client.init()
        self.node = self.client.lookup(ROOT, b"data").nodeid
        self.fh = self.client.open(self.node, os.O_RDWR).fh

    def request(self, opcode, size, rng):
        c = self.client
        if opcode == "GETATTR":
            return c.submit(Opcode.GETATTR, self.node, abi.getattr_in.pack(0, 0, 0),
                            reply_len=abi.ATTR_OUT_SIZE, publish=False)
        if opcode == "LOOKUP":
            return c.submit(Opcode.LOOKUP, ROOT, b"data\0", reply_len=abi.ENTRY_OUT_SIZE,
                            publish=False)
        offset = rng.randrange(0, FILE_SIZE // size) * size
        if opcode == "READ":
            return c.submit(Opcode.READ, self.node,
                            abi.read_in.pack(self.fh, offset, size, 0, 0, 0, 0), data_len=size,
                            publish=False)
        return c.submit(Opcode.WRITE, self.node,
                        abi.write_in.pack(self.fh, offset, size, 0, 0, 0, 0),
                        data=WRITE_DATA[:size], reply_len=abi.write_out.size, publish=False)

    def run(self, opcode, size, depth, seconds):
        rng = random.Random(1)
        for _ in range(depth):
            self.request(opcode, size, rng)
        self.client.publish()
        done = 0
        cpu0, drv0, t0 = cpu_seconds(self.proc.pid), time.process_time(), time.monotonic()
        while time.monotonic() - t0 < seconds:
            for _, reply in self.client.collect():
                if reply.error:
                    raise OSError(reply.error, f"{self.name} {opcode}")
                done += 1
                self.request(opcode, size, rng)
            self.client.publish()
        wall = time.monotonic() - t0
        backend_cpu = cpu_seconds(self.proc.pid) - cpu0
        driver_cpu = time.process_time() - drv0
        self.client.wait_all()
        return {"requests": done, "wall_s": wall, "req_per_s": done / wall,
                "backend_cpu_s": backend_cpu, "driver_cpu_s": driver_cpu,
                "req_per_backend_cpu_s": done / backend_cpu if backend_cpu else None,
                "bytes_per_s": done * size / wall}

    def close(self):
        stop_daemon(self.proc, self.frontend, self.sock)


WRITE_DATA = os.urandom(1 << 20)


def host_native(path, size, seconds, write):
    """The same I/O done directly on the host file from this process, one at a time."""
    fd = os.open(path, os.O_RDWR)
    rng = random.Random(1)
    buf = bytearray(size)
    done, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        offset = rng.randrange(0, FILE_SIZE // size) * size
        if write:
            os.pwrite(fd, WRITE_DATA[:size], offset)
        else:
            os.preadv(fd, [buf], offset)
        done += 1
    os.close(fd)
    wall = time.monotonic() - t0
    return {"requests": done, "wall_s": wall, "req_per_s": done / wall,
            "bytes_per_s": done * size / wall}


def markdown(results, config):
    lines = [f"# Microbenchmarks {config['date']}", "",
             f"Machine: {config['machine']}; driver: the project's Python frontend driver, "
             f"queue size 256, EVENT_IDX and INDIRECT_DESC negotiated; fastvfs --cache never, "
             f"reference virtiofsd -o cache=none (single thread); {config['seconds']} s per "
             f"figure.", "",
             "| workload | depth | fastvfs req/s | reference req/s | ratio | fastvfs req/backend-CPU-s "
             "| reference req/backend-CPU-s | ratio | driver CPU share | host-native req/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key, row in results.items():
        f, r = row.get("fastvfs"), row.get("reference")
        native = row.get("native", {}).get("req_per_s")

        def fmt(x):
            return f"{x:,.0f}" if x else "-"

        def ratio(a, b):
            return f"{a / b:.2f}x" if a and b else "-"
        eff_f = f and f["req_per_backend_cpu_s"]
        eff_r = r and r["req_per_backend_cpu_s"]
        share = f and f"{f['driver_cpu_s'] / f['wall_s']:.0%}"
        lines.append(f"| {row['workload']} | {row['depth']} | {fmt(f and f['req_per_s'])} | "
                     f"{fmt(r and r['req_per_s'])} | "
                     f"{ratio(f and f['req_per_s'], r and r['req_per_s'])} | {fmt(eff_f)} | "
                     f"{fmt(eff_r)} | {ratio(eff_f, eff_r)} | {share or '-'} | {fmt(native)} |")
    lines += ["", "Driver CPU share near 100 % means the figure is bound by the Python driver, "
              "not by the backend; compare requests per backend CPU-second then."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--only", help="comma-separated workloads (default: all)")
    p.add_argument("--depths", default="1,32")
    p.add_argument("--out", default="reports/micro")
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else list(WORKLOADS)
    depths = [int(d) for d in args.depths.split(",")]
    backends = ["fastvfs"] + (["reference"] if os.access(REFERENCE, os.X_OK) else [])
    workdir = tempfile.mkdtemp(prefix="fastvfs-bench-")
    results = {}
    try:
        sessions = {b: Session(b, workdir) for b in backends}
        try:
            for name in names:
                opcode, size = WORKLOADS[name]
                for depth in depths:
                    key = f"{name}@{depth}"
                    row = results[key] = {"workload": name, "depth": depth}
                    # Alternate the order so drift on a noisy machine does not favour one.
                    order = backends if len(results) % 2 else backends[::-1]
                    for b in order:
                        row[b] = sessions[b].run(opcode, size, depth, args.seconds)
                        print(f"{key:14} {b:9} {row[b]['req_per_s']:>10,.0f} req/s  "
                              f"backend CPU {row[b]['backend_cpu_s']:.2f}s  "
                              f"driver CPU {row[b]['driver_cpu_s']:.2f}s", flush=True)
                    if size and depth == 1:
                        row["native"] = host_native(sessions["fastvfs"].shared / "data", size,
                                                    args.seconds, opcode == "WRITE")
        finally:
            for s in sessions.values():
                s.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    config = output.base_config(seconds=args.seconds, queue_size=256, fastvfs_cache="never",
                                reference=REFERENCE if "reference" in backends else None)
    output.write(args.out, config, results, markdown(results, config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
