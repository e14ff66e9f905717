"""``bench.footprint`` end to end on a tiny run: both daemons started fresh, the first reply
timed to GET_FEATURES answered, the device brought up, PSS and per-inode growth measured."""

import json
import os

import pytest

from bench import footprint, micro
from tests.deployed import FASTVFS

pytestmark = [pytest.mark.reference,
              pytest.mark.skipif(not os.access(micro.REFERENCE, os.X_OK),
                                 reason="needs the reference virtiofsd")]


def test_footprint_reports_both_daemons(tmp_path):
    fastvfs = FASTVFS[0] if len(FASTVFS) == 1 else None
    args = ["--rounds", "2", "--inodes", "3000", "--out", str(tmp_path)]
    if fastvfs:
        args += ["--fastvfs", fastvfs]
    assert footprint.main(args) == 0
    (report,) = tmp_path.glob("*.json")
    data = json.loads(report.read_text())
    medians = data["results"]["medians"]
    for name in ("fastvfs", "reference"):
        m = medians[name]
        assert 0 < m["reply_s"] < 15 and 0 < m["up_s"] < 15
        # In each launch the reply comes after the socket accepts.
        rounds = data["results"]["rounds"][name]
        assert all(0 < a <= r for a, r in zip(rounds["socket_s"], rounds["reply_s"]))
        assert m["pss_kib"] > 0
        assert len(data["results"]["rounds"][name]["reply_s"]) == 2
        inodes = data["results"]["per_inode"][name]
        assert inodes["inodes"] == 3000 and inodes["pss_after_kib"] > inodes["pss_before_kib"]
    table = report.with_suffix(".md").read_text()
    assert "exec → GET_FEATURES answered" in table and "PSS per inode" in table
