"""The bench suite's workloads, run inside a guest on the shared mount (or on the host directory
itself for the native ceiling).  Standard library + fio only: it runs under the guest's chroot of
the host root with the host's interpreter.

    python bench/workloads.py --dir MOUNT --out results.json [--quick] [--reps N] [--only a,b]

Workloads (names as the published virtio-fs studies use them):
  fio        {seqread,seqwrite,randread,randwrite,randrw}-{psync,libaio,mmap}-{4k,1m}
             (libaio at iodepth 16); MiB/s and IOPS
  metadata   create, stat, readdir, rename, unlink of N files; operations/s
  smallfile  a blogbench-like mix of small writes, rewrites, reads and listings; operations/s
  tree       copy, tar and diff -r of a source tree; seconds
  make       building a generated C project with make -j2; seconds (full run only)
Each is repeated ``--reps`` times; every repetition's figure is kept.
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time

FIO_PATTERNS = ["seqread", "seqwrite", "randread", "randwrite", "randrw"]
FIO_ENGINES = {"psync": ["--ioengine=psync"],
               "libaio": ["--ioengine=libaio", "--iodepth=16"],
               "mmap": ["--ioengine=mmap"]}
FIO_SIZES = {"4k": "4k", "1m": "1m"}
QUICK_FIO = ["randread-psync-4k", "randwrite-psync-4k", "randread-libaio-4k",
             "randwrite-libaio-4k", "seqread-psync-1m", "seqwrite-psync-1m"]
RW = {"seqread": "read", "seqwrite": "write", "randread": "randread",
      "randwrite": "randwrite", "randrw": "randrw"}


def fio_jobs(quick):
    if quick:
        return QUICK_FIO
    return [f"{p}-{e}-{s}" for p in FIO_PATTERNS for e in FIO_ENGINES for s in FIO_SIZES]


def run_fio(directory, job, runtime, size_mb):
    pattern, engine, bs = job.split("-")
    path = os.path.join(directory, f"fio-{bs}.dat")
    if not os.path.exists(path) or os.path.getsize(path) < size_mb << 20:
        with open(path, "wb") as f:
            chunk = os.urandom(1 << 20)
            for _ in range(size_mb):
                f.write(chunk)
    cmd = ["fio", "--name=job", f"--filename={path}", f"--rw={RW[pattern]}",
           f"--bs={FIO_SIZES[bs]}", f"--size={size_mb}m", f"--runtime={runtime}",
           "--time_based", "--output-format=json", "--invalidate=1", "--randrepeat=1",
           *FIO_ENGINES[engine]]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=runtime * 10 + 60)
    if out.returncode:
        return {"error": out.stderr.strip()[-300:]}
    job_out = json.loads(out.stdout[out.stdout.index("{"):])["jobs"][0]
    bw = (job_out["read"]["bw_bytes"] + job_out["write"]["bw_bytes"]) / (1 << 20)
    iops = job_out["read"]["iops"] + job_out["write"]["iops"]
    return {"mib_per_s": bw, "iops": iops}


def metadata(directory, n):
    d = os.path.join(directory, "meta")
    shutil.rmtree(d, ignore_errors=True)
    os.mkdir(d)
    names = [f"f{i:06d}" for i in range(n)]
    out = {}
    t = time.monotonic()
    for name in names:
        os.close(os.open(os.path.join(d, name), os.O_CREAT | os.O_WRONLY, 0o644))
    out["create"] = n / (time.monotonic() - t)
    t = time.monotonic()
    for name in names:
        os.stat(os.path.join(d, name))
    out["stat"] = n / (time.monotonic() - t)
    t = time.monotonic()
    listed = len(os.listdir(d))
    out["readdir"] = listed / (time.monotonic() - t)
    t = time.monotonic()
    for name in names:
        os.rename(os.path.join(d, name), os.path.join(d, "r" + name))
    out["rename"] = n / (time.monotonic() - t)
    t = time.monotonic()
    for name in names:
        os.unlink(os.path.join(d, "r" + name))
    out["unlink"] = n / (time.monotonic() - t)
    os.rmdir(d)
    return out


def smallfile(directory, seconds):
    """Blogbench's shape: writers add articles (small files), rewriters append comments,
    readers read whole articles, and listings scan directories."""
    d = os.path.join(directory, "blog")
    shutil.rmtree(d, ignore_errors=True)
    os.mkdir(d)
    rng = random.Random(1)
    files, ops = [], {"write": 0, "rewrite": 0, "read": 0, "list": 0}
    blobs = [os.urandom(size) for size in (4096, 8192, 16384, 65536)]
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        r = rng.random()
        if r < 0.25 or len(files) < 8:
            sub = os.path.join(d, f"b{len(files) // 64}")
            os.makedirs(sub, exist_ok=True)
            path = os.path.join(sub, f"a{len(files)}")
            with open(path, "wb") as f:
                f.write(rng.choice(blobs))
            files.append(path)
            ops["write"] += 1
        elif r < 0.40:
            with open(rng.choice(files), "ab") as f:
                f.write(blobs[0][:rng.randrange(64, 4096)])
            ops["rewrite"] += 1
        elif r < 0.95:
            with open(rng.choice(files), "rb") as f:
                f.read()
            ops["read"] += 1
        else:
            for sub in os.listdir(d):
                os.listdir(os.path.join(d, sub))
            ops["list"] += 1
    elapsed = time.monotonic() - t0
    shutil.rmtree(d)
    return {"ops_per_s": sum(ops.values()) / elapsed, **{k: v / elapsed for k, v in ops.items()}}


def tree(directory, sources):
    d = os.path.join(directory, "tree")
    shutil.rmtree(d, ignore_errors=True)
    os.mkdir(d)
    out = {}
    t = time.monotonic()
    for src in sources:
        shutil.copytree(src, os.path.join(d, os.path.basename(src)), symlinks=True)
    out["copy_s"] = time.monotonic() - t
    t = time.monotonic()
    subprocess.run(["tar", "-cf", os.path.join(directory, "tree.tar"), "-C", d, "."], check=True)
    out["tar_s"] = time.monotonic() - t
    t = time.monotonic()
    for src in sources:
        diff = subprocess.run(["diff", "-r", src, os.path.join(d, os.path.basename(src))],
                              capture_output=True)
        if diff.returncode:
            out["diff_mismatch"] = diff.stdout[:300].decode(errors="replace")
    out["diff_s"] = time.monotonic() - t
    os.unlink(os.path.join(directory, "tree.tar"))
    shutil.rmtree(d)
    return out


def make_project(directory, files):
    d = os.path.join(directory, "proj")
    shutil.rmtree(d, ignore_errors=True)
    os.mkdir(d)
    for i in range(files):
        with open(os.path.join(d, f"m{i}.c"), "w") as f:
            f.write(f"#include <stdio.h>\nint f{i}(int x) {{ int s = 0; for (int j = 0; j < x; "
                    f"j++) s += j * {i + 1}; return s; }}\n")
    with open(os.path.join(d, "main.c"), "w") as f:
        f.write("".join(f"int f{i}(int);\n" for i in range(files)) +
                "int main(void) { int s = 0;\n" +
                "".join(f"  s += f{i}(3);\n" for i in range(files)) + "  return s == 0; }\n")
    objs = " ".join(f"m{i}.o" for i in range(files))
    with open(os.path.join(d, "Makefile"), "w") as f:
        f.write(f"prog: main.o {objs}\n\tcc -o $@ $^\n%.o: %.c\n\tcc -O1 -c -o $@ $<\n")
    t = time.monotonic()
    subprocess.run(["make", "-s", "-j2", "-C", d], check=True, capture_output=True)
    elapsed = time.monotonic() - t
    shutil.rmtree(d)
    return {"build_s": elapsed}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--only", help="comma-separated: fio,metadata,smallfile,tree,make")
    p.add_argument("--tree-sources", default="")
    p.add_argument("--fio-jobs", help="comma-separated fio jobs (default: by --quick)")
    p.add_argument("--fio-runtime", type=int, help="seconds per fio job")
    args = p.parse_args(argv)
    groups = (args.only.split(",") if args.only else
              ["fio", "metadata", "smallfile", "tree"] + ([] if args.quick else ["make"]))
    runtime = args.fio_runtime or (2 if args.quick else 4)
    size_mb = 32 if args.quick else 64
    n_meta = 2000 if args.quick else 10000
    results = {"reps": args.reps, "quick": args.quick, "fio": {}, "metadata": {},
               "smallfile": {}, "tree": {}, "make": {}}
    sources = [s for s in args.tree_sources.split(os.pathsep) if s]

    def record(group, name, value):
        results[group].setdefault(name, []).append(value)
        with open(args.out, "w") as f:
            json.dump(results, f)
        print(f"progress {group} {name}", flush=True)

    for rep in range(args.reps):
        if "fio" in groups and shutil.which("fio"):
            for job in (args.fio_jobs.split(",") if args.fio_jobs else fio_jobs(args.quick)):
                record("fio", job, run_fio(args.dir, job, runtime, size_mb))
        if "metadata" in groups:
            for k, v in metadata(args.dir, n_meta).items():
                record("metadata", k, v)
        if "smallfile" in groups:
            record("smallfile", "mix", smallfile(args.dir, 5 if args.quick else 10))
        if "tree" in groups and sources:
            for k, v in tree(args.dir, sources).items():
                record("tree", k, v)
        if "make" in groups and shutil.which("cc") and shutil.which("make"):
            record("make", "build", make_project(args.dir, 24)["build_s"])
    for name in os.listdir(args.dir):
        if name.startswith("fio-"):
            os.unlink(os.path.join(args.dir, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
