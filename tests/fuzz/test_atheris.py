"""The short CI run of the coverage-guided harnesses (fuzz/fuzz_*.py, atheris/libFuzzer).

Each target runs from its committed seed corpus (fuzz/corpus/<target>/) for a bounded number of
inputs; a crash, a hang, an unexpected exception or a broken invariant makes libFuzzer exit
non-zero and the test fail with its report.  The test also fails when the harness did not
really fuzz: libFuzzer must report the seeds loaded (INITED), at least MUTATED runs past the seeds, and a
non-zero coverage count.  With ``FASTVFS_FUZZ_NATIVE`` (set by ``make test``: the clang build of
``make fuzz-build``) the ring target must be running the instrumented extension.

FASTVFS_FUZZ_RUNS (default 4000) sets the inputs per target, FASTVFS_FUZZ_SECONDS (default 25)
bounds each target's time."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNS = int(os.environ.get("FASTVFS_FUZZ_RUNS", "4000"))
SECONDS = int(os.environ.get("FASTVFS_FUZZ_SECONDS", "25"))
NATIVE = os.environ.get("FASTVFS_FUZZ_NATIVE")
MUTATED = 500
NATIVE_MIN_COV = 200


def test_atheris_is_installed():
    try:
        import atheris  # noqa: F401
    except ImportError:
        pytest.fail("atheris is missing: pip install -e '.[test,fuzz]' (make venv does)")


@pytest.mark.parametrize("target", ["fuse_engine", "vhost_user", "ring"])
def test_short_fuzz_run(target, tmp_path):
    pytest.importorskip("atheris", reason="reported by test_atheris_is_installed")
    seeds = os.path.join(ROOT, "fuzz", "corpus", target)
    nseeds = len(os.listdir(seeds))
    assert nseeds >= 10, f"the seed corpus of {target} is missing"
    work = tmp_path / "corpus"
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=ROOT)
    if NATIVE:
        env["FASTVFS_FUZZ_NATIVE"] = os.path.abspath(NATIVE)
    cmd = [sys.executable, os.path.join(ROOT, "fuzz", f"fuzz_{target}.py"), f"-runs={RUNS}",
           f"-max_total_time={SECONDS}", "-seed=1", "-timeout=10",
           f"-artifact_prefix={tmp_path}/", str(work), seeds]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=SECONDS + 120)
    out = proc.stdout
    assert proc.returncode == 0, f"{target}: libFuzzer exited {proc.returncode}:\n{out[-6000:]}"
    inited = re.search(r"^#(\d+)\s+INITED cov: (\d+)", out, re.M)
    done = re.search(r"^Done (\d+) runs in", out, re.M)
    covs = [int(c) for c in re.findall(r"^#\d+\s+\w+\s+cov: (\d+)", out, re.M)]
    assert inited and done, f"{target}: no libFuzzer run:\n{out[-3000:]}"
    assert int(inited.group(1)) > 0, f"{target}: the seed corpus was not loaded"
    # Past the seeds (and the empty input libFuzzer adds), at least MUTATED new inputs ran.
    assert int(done.group(1)) >= nseeds + 1 + MUTATED, f"{target}: only {done.group(1)} runs"
    assert covs and max(covs) > 0, f"{target}: no coverage"
    if target == "ring" and NATIVE:
        for module in ("fastvfs.ring._ring", "fastvfs.fs._tables"):
            assert f"{module} from {os.path.abspath(NATIVE)}" in out, out[-3000:]
        # The C code's edges count: Python alone gives the ring target a few dozen.
        assert max(covs) > NATIVE_MIN_COV, f"ring: coverage {max(covs)}, C not instrumented?"
