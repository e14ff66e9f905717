"""The CI performance gate's comparison (bench/regress.py)."""

from bench.regress import compare, format_rows

BASELINE = {"getattr@1": 1.2, "read4k@32": 1.6, "write4k@32": 1.4}


def test_equal_figures_pass():
    rows, ok = compare({k: {"ratio": v} for k, v in BASELINE.items()}, BASELINE, 0.5)
    assert ok and all(r[4] == "ok" for r in rows)


def test_a_deliberate_2x_slowdown_fails():
    # fastvfs at half its speed per request: its ratio to the same-run reference halves.
    slowed = {k: {"ratio": v / 2.05} for k, v in BASELINE.items()}
    rows, ok = compare(slowed, BASELINE, 0.5)
    assert not ok and {r[4] for r in rows} == {"REGRESSION"}
    assert "REGRESSION" in format_rows(rows, 0.5)


def test_one_regressed_workload_fails_the_gate():
    current = {k: {"ratio": v} for k, v in BASELINE.items()}
    current["read4k@32"] = {"ratio": 0.7}
    rows, ok = compare(current, BASELINE, 0.5)
    assert not ok
    assert [r[4] for r in rows if r[0] == "read4k@32"] == ["REGRESSION"]


def test_noise_within_the_threshold_passes_and_new_workloads_are_reported():
    current = {k: {"ratio": v * 0.7} for k, v in BASELINE.items()}
    current["lookup@1"] = {"ratio": 0.4}
    rows, ok = compare(current, BASELINE, 0.5)
    assert ok and ("lookup@1", None, 0.4, None, "new") in rows
