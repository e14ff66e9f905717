"""``bench.profile`` end to end on a short run: the stage table, with how often the driver
kicked and slept per request, for the lean driver and its guest-like mode."""

import shutil

import pytest

from bench import profile

pytestmark = pytest.mark.skipif(not shutil.which("perf"), reason="needs perf")


@pytest.mark.parametrize("driver", ["lean", "guest"])
def test_profile_reports_stages_and_notifications(tmp_path, driver):
    assert profile.main(["--seconds", "0.5", "--only", "getattr@32", "--driver", driver,
                         "--out", str(tmp_path)]) == 0
    (readme,) = tmp_path.glob("*/README.md")
    text = readme.read_text()
    assert ("guest-like mode" in text) == (driver == "guest")
    row = next(line for line in text.splitlines() if line.startswith("| getattr@32 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    rate, kicks, waits = float(cells[1].replace(",", "")), float(cells[2]), float(cells[3])
    assert rate > 0 and kicks >= 0 and waits >= 0
    # With 32 requests in flight the driver sleeps far less often than once per request.
    assert waits < 1
    shares = [float(c.rstrip(" %")) for c in cells[4:]]
    assert len(shares) == len(profile.STAGE_ORDER) and 95 <= sum(shares) <= 105
    assert (readme.parent / "getattr-32.txt").exists()
