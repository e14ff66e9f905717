"""DAX window against the request path: read throughput through the project's frontend driver.

    python -m bench.dax [--seconds 2] [--file-mib 64] [--out reports/dax]

One fastvfs daemon with a cache window serves one file; in the same run the driver reads it
  * with FUSE READ requests, one at a time (a guest's psync reads with ``--cache never``), and
  * through the window the way Linux's DAX code does (map a 2 MiB range on first touch, then plain
    loads), with a window large enough for the file, and with a window of a quarter of the file
    (random reads then keep reclaiming ranges: the published caveat that a window smaller than
    the working set thrashes),
sequentially and at random offsets, 4 KiB and 1 MiB at a time; plus the host-native figure
(pread on the host file) as the ceiling.  Results go to ``<out>/<timestamp>.json`` and ``.md``.
"""

import argparse
import collections
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import micro, output

from fastvfs.fuse import abi
from fastvfs_testing.dax_cache import RANGE_SIZE, DaxCache
from fastvfs_testing.fuse_client import LINUX_DAX_INIT_FLAGS, FuseClient

ROOT = abi.FUSE_ROOT_ID
SIZES = {"4k": 4096, "1m": 1 << 20}


class Session:
    def __init__(self, workdir, file_size, window_size):
        self.shared = Path(workdir) / "shared"
        self.shared.mkdir()
        self.file_size = file_size
        with open(self.shared / "data", "wb") as f:
            for _ in range(file_size >> 20):
                f.write(os.urandom(1 << 20))
        self.sock, self.proc, self.frontend = micro.start_daemon(
            [sys.executable, "-m", "fastvfs", "--socket-path", "{sock}", "--shared-dir",
             str(self.shared), "--cache", "never", "--log-level", "error",
             "--dax-window-size", str(window_size)], "fastvfs", shared_memory=True)
        self.client = FuseClient(self.frontend, timeout=30)
        self.client.init(flags=LINUX_DAX_INIT_FLAGS)
        self.node = self.client.lookup(ROOT, "data").nodeid
        self.fh = self.client.open(self.node).fh

    def offsets(self, size, pattern):
        count = self.file_size // size
        if pattern == "seq":
            i = 0
            while True:
                yield (i % count) * size
                i += 1
        rng = random.Random(7)
        while True:
            yield rng.randrange(count) * size

    def timed(self, fn, size, pattern, seconds):
        offsets = self.offsets(size, pattern)
        buf = bytearray(size)
        done, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < seconds:
            for _ in range(16):
                fn(next(offsets), buf)
            done += 16
        wall = time.monotonic() - t0
        return {"ops": done, "wall_s": wall, "ops_per_s": done / wall,
                "mib_per_s": done * size / wall / (1 << 20)}

    def run_read(self, size, pattern, seconds):
        client, node, fh = self.client, self.node, self.fh

        def read(offset, buf):
            buf[:] = client.read(node, fh, offset, len(buf))
        return self.timed(read, size, pattern, seconds)

    def run_dax(self, size, pattern, seconds, ranges=None):
        cache = DaxCache(self.client, self.frontend.dax_window)
        if ranges is not None:
            cache.free = collections.deque(list(cache.free)[:ranges])
        result = self.timed(lambda offset, buf: cache.readinto(self.node, offset, buf), size,
                            pattern, seconds)
        result.update(setups=cache.setups, reclaims=cache.reclaims)
        cache.drop(self.node)
        return result

    def close(self):
        micro.stop_daemon(self.proc, self.frontend, self.sock)


def host_native(path, size, pattern, seconds, file_size):
    fd = os.open(path, os.O_RDONLY)
    buf = bytearray(size)
    count = file_size // size
    rng = random.Random(7)
    done, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        offset = (done % count if pattern == "seq" else rng.randrange(count)) * size
        os.preadv(fd, [buf], offset)
        done += 1
    os.close(fd)
    wall = time.monotonic() - t0
    return {"ops": done, "wall_s": wall, "ops_per_s": done / wall,
            "mib_per_s": done * size / wall / (1 << 20)}


def markdown(results, config):
    lines = [f"# DAX window vs READ requests, {config['date']}", "",
             f"Machine: {config['machine']}.  One fastvfs daemon (`--cache never "
             f"--dax-window-size {config['window_size'] >> 20}M`) serving a "
             f"{config['file_size'] >> 20} MiB file; the project's Python frontend driver "
             f"reads it one operation at a time, {config['seconds']} s per figure.  "
             f"READ = FUSE READ requests through the virtqueue; DAX = 2 MiB ranges mapped on "
             f"first touch, then loads from the window; DAX small window = "
             f"{config['small_window_ranges']} ranges ({config['small_window_ranges'] * 2} MiB) "
             f"for the file, reclaiming the least recently used range.", "",
             "| workload | READ MiB/s | DAX MiB/s | DAX / READ | DAX small window MiB/s "
             "(reclaims) | small / READ | host-native MiB/s |",
             "|---|---|---|---|---|---|---|"]
    for key, row in results.items():
        r, d, s, n = row["read"], row["dax"], row["dax_small"], row["native"]
        lines.append(f"| {key} | {r['mib_per_s']:,.0f} | {d['mib_per_s']:,.0f} | "
                     f"{d['mib_per_s'] / r['mib_per_s']:.1f}x | {s['mib_per_s']:,.0f} "
                     f"({s['reclaims']}) | {s['mib_per_s'] / r['mib_per_s']:.2f}x | "
                     f"{n['mib_per_s']:,.0f} |")
    lines += ["", "The READ path's figure includes the Python driver's per-request work; the DAX "
              "figure is what a guest's loads cost once a range is mapped (one SETUPMAPPING per "
              "2 MiB, no request afterwards)."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.dax", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--file-mib", type=int, default=64)
    p.add_argument("--out", default="reports/dax")
    args = p.parse_args(argv)
    file_size = args.file_mib << 20
    window_size = max(file_size, 8 * RANGE_SIZE)
    small_ranges = max(1, file_size // RANGE_SIZE // 4)
    workdir = tempfile.mkdtemp(prefix="fastvfs-dax-")
    results = {}
    try:
        session = Session(workdir, file_size, window_size)
        try:
            for pattern in ("seq", "rand"):
                for size_name, size in SIZES.items():
                    key = f"{pattern}read {size_name}"
                    row = results[key] = {}
                    row["read"] = session.run_read(size, pattern, args.seconds)
                    row["dax"] = session.run_dax(size, pattern, args.seconds)
                    row["dax_small"] = session.run_dax(size, pattern, args.seconds,
                                                       ranges=small_ranges)
                    row["native"] = host_native(session.shared / "data", size, pattern,
                                                args.seconds, file_size)
                    print(f"{key:13} READ {row['read']['mib_per_s']:8,.0f} MiB/s   "
                          f"DAX {row['dax']['mib_per_s']:8,.0f} MiB/s   "
                          f"DAX small {row['dax_small']['mib_per_s']:8,.0f} MiB/s   "
                          f"native {row['native']['mib_per_s']:8,.0f} MiB/s", flush=True)
        finally:
            session.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    config = output.base_config(seconds=args.seconds, file_size=file_size,
                                window_size=window_size, small_window_ranges=small_ranges,
                                range_size=RANGE_SIZE, fastvfs_cache="never", queue_size=256)
    output.write(args.out, config, results, markdown(results, config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
