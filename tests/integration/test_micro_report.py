"""``bench.micro`` end to end on a tiny run: both backends, the host-native ceiling and the
depth-1 wake-up floor, in the JSON and the Markdown table."""

import json
import os

import pytest

from bench import micro
from fastvfs_testing._lean import wake_floor

pytestmark = [pytest.mark.reference,
              pytest.mark.skipif(not os.access(micro.REFERENCE, os.X_OK),
                                 reason="needs the reference virtiofsd")]


def test_wake_floor_counts_round_trips():
    kick, call = os.eventfd(0), os.eventfd(0)
    try:
        r = wake_floor(kick, call, 0.2)
        # The echo thread has exited (it consumed the final kick) and every round trip was
        # answered: nothing is left on the call eventfd.
        os.set_blocking(call, False)
        with pytest.raises(BlockingIOError):
            os.eventfd_read(call)
    finally:
        os.close(kick)
        os.close(call)
    assert r["requests"] > 100
    assert 0.2 <= r["wall_s"] < 1.0
    assert r["us_per_request"] == pytest.approx(r["wall_s"] * 1e6 / r["requests"])


@pytest.mark.parametrize("driver", ["lean", "guest"])
def test_micro_reports_floor_and_ceiling(tmp_path, capsys, driver):
    assert micro.main(["--seconds", "0.2", "--reps", "1", "--only", "getattr,read4k",
                       "--depths", "1,4", "--slices", "2", "--no-multiqueue",
                       "--driver", driver, "--out", str(tmp_path)]) == 0
    (report,) = tmp_path.glob("*.json")
    data = json.loads(report.read_text())
    assert ("guest-like" in data["config"]["driver"]) == (driver == "guest")
    rows = data["results"]["backends"]
    assert set(rows) == {"getattr@1", "getattr@4", "read4k@1", "read4k@4"}
    for key, row in rows.items():
        for backend in ("fastvfs", "reference"):
            fig = row[backend]
            # Each figure is the total of two interleaved slices.
            assert fig["slices"] == 2 and fig["req_per_s"] > 0
            assert fig["req_per_s"] == pytest.approx(fig["requests"] / fig["wall_s"], rel=0.01)
        # The floor is measured next to the backends at depth 1 only; the host-native
        # ceiling next to them at every depth, only for transfers.
        assert ("floor" in row) == key.endswith("@1")
        assert ("native" in row) == key.startswith("read4k@")
    assert rows["getattr@1"]["floor"]["req_per_s"] > 0
    for depth in (1, 4):
        native = rows[f"read4k@{depth}"]["native"]
        assert native["slices"] == 2 and native["req_per_s"] > 0
    table = report.with_suffix(".md").read_text()
    assert "wake-up floor" in table
    line = next(l for l in table.splitlines() if l.startswith("| getattr | 1 |"))
    assert line.rstrip("|").split("|")[-1].strip().endswith("%)")
    line = next(l for l in table.splitlines() if l.startswith("| getattr | 4 |"))
    assert line.rstrip(" |").endswith("-")
    # fastvfs's share of the ceiling at the same depth.
    line = next(l for l in table.splitlines() if l.startswith("| read4k | 4 |"))
    assert "; fastvfs " in line.split("|")[-3] and line.split("|")[-3].strip().endswith("%)")


def test_micro_against_a_baseline_build(tmp_path):
    # The baseline is another fastvfs started through its own interpreter; this tree's
    # interpreter stands in for an earlier build's venv: both then serve, interleaved.
    import sys
    assert micro.main(["--seconds", "0.2", "--reps", "1", "--only", "getattr",
                       "--depths", "1", "--slices", "2", "--no-multiqueue",
                       "--baseline", sys.executable, "--out", str(tmp_path)]) == 0
    (report,) = tmp_path.glob("*.json")
    data = json.loads(report.read_text())
    assert data["config"]["baseline"] == sys.executable
    row = data["results"]["backends"]["getattr@1"]
    for backend in ("fastvfs", "baseline", "reference"):
        assert row[backend]["req_per_s"] > 0 and row[backend]["slices"] == 2
    table = report.with_suffix(".md").read_text()
    assert "## Against the baseline build" in table
    line = next(l for l in table.split("## Against the baseline build")[1].splitlines()
                if l.startswith("| getattr | 1 |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2].endswith("x") and cells[3].endswith("x") and cells[4].count("x") == 2


def test_micro_with_scattered_pages(tmp_path):
    """``--pages scattered`` runs the transfers with the data pages shuffled in guest memory,
    and the report says so."""
    assert micro.main(["--seconds", "0.2", "--reps", "1", "--only", "read128k",
                       "--depths", "4", "--slices", "1", "--no-multiqueue",
                       "--pages", "scattered", "--out", str(tmp_path)]) == 0
    (report,) = tmp_path.glob("*.json")
    data = json.loads(report.read_text())
    assert data["config"]["pages"] == "scattered"
    row = data["results"]["backends"]["read128k@4"]
    assert row["fastvfs"]["req_per_s"] > 0 and row["reference"]["req_per_s"] > 0
    assert "shuffled in guest memory" in report.with_suffix(".md").read_text()


def test_baseline_runs_its_own_build_from_a_checkout(tmp_path):
    """``--baseline PYTHON`` runs PYTHON's own fastvfs even from the root of a checkout (where
    ``-m`` would put the checkout's package first on the path): an interpreter without fastvfs
    installed finds none there."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(micro.__file__).resolve().parent.parent
    assert (root / "fastvfs" / "__init__.py").exists()
    venv = tmp_path / "empty"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    argv = micro.backend_argv("baseline", "s", "d", baseline=str(venv / "bin" / "python"))
    interpreter = argv[:argv.index("-m")]
    probe = "import importlib.util; print(importlib.util.find_spec('fastvfs') is None)"
    out = subprocess.run([*interpreter, "-c", probe], cwd=root, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "True"
    # The same interpreter without the isolation would have picked the checkout's.
    out = subprocess.run([interpreter[0], "-c", probe], cwd=root, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "False"
