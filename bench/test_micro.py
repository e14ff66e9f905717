"""Microbenchmarks under pytest-benchmark: fastvfs and the reference virtiofsd, each driven by
the lean frontend driver, in the same session (not part of the test suite; ``make micro-pytest``).

    python -m pytest bench/test_micro.py --benchmark-columns=mean,median,ops \
        --benchmark-json=reports/micro/pytest-benchmark.json

One benchmark round is ``ROUND_REQUESTS`` requests kept at the given depth on one request queue;
pytest-benchmark's ``ops`` column is then rounds per second, and ``extra_info`` carries the
figures that compare the backends: requests/s, the backend's requests per CPU-second and the
driver's CPU share.  ``python -m bench.micro`` writes the same comparison as a report.
"""

import os
import shutil
import tempfile

import pytest

from bench import micro

pytestmark = pytest.mark.skipif(not os.access(micro.REFERENCE, os.X_OK),
                                reason=f"{micro.REFERENCE} is not installed")

ROUND_REQUESTS = int(os.environ.get("FASTVFS_BENCH_ROUND", "20000"))
CASES = [(name, depth) for name in micro.WORKLOADS for depth in micro.DEPTHS]


@pytest.fixture(scope="module")
def sessions():
    workdir = tempfile.mkdtemp(prefix="fastvfs-pytest-bench-")
    made = {}
    try:
        made["fastvfs"] = micro.Session("fastvfs", workdir)
        made["reference"] = micro.Session("reference", workdir, files_of=made["fastvfs"])
        yield made
    finally:
        for s in made.values():
            s.close()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.parametrize("backend", ["fastvfs", "reference"])
@pytest.mark.parametrize("workload,depth", CASES, ids=[f"{n}@{d}" for n, d in CASES])
def test_micro(benchmark, sessions, backend, workload, depth):
    session = sessions[backend]
    opcode, size = micro.WORKLOADS[workload]
    # Large transfers take longer per request: fewer of them, but rounds of a few tenths of a
    # second still.
    count = max(2000, 4 * ROUND_REQUESTS * 4096 // size) if size > 4096 else ROUND_REQUESTS
    runs = []

    def one_round():
        runs.append(session.run(opcode, size, depth, 60.0, max_requests=count))

    benchmark.pedantic(one_round, rounds=5, warmup_rounds=1)
    timed = runs[1:]
    requests = sum(r["requests"] for r in timed)
    wall = sum(r["wall_s"] for r in timed)
    backend_cpu = sum(r["backend_cpu_s"] for r in timed)
    benchmark.extra_info.update({
        "backend": backend, "workload": workload, "depth": depth,
        "req_per_s": requests / wall,
        "req_per_backend_cpu_s": requests / backend_cpu if backend_cpu else None,
        "driver_cpu_share": sum(r["driver_cpu_s"] for r in timed) / wall,
    })
    assert all(r["requests"] >= count for r in runs)
