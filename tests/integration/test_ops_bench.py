"""``bench.ops`` end to end on a tiny run: the C driver's rows (lean and c-guest) of workloads
of one request, against both daemons, and the C driver's check of the error it expects."""

import errno
import os

import pytest

from bench import micro, ops
from fastvfs.fuse import abi
from fastvfs.fuse.abi import Opcode
from fastvfs_testing.lean import LeanLoad

pytestmark = [pytest.mark.reference,
              pytest.mark.skipif(not os.access(micro.REFERENCE, os.X_OK),
                                 reason="needs the reference virtiofsd")]

NAMES = ["lookup_miss", "getxattr_miss", "statfs", "readdirplus", "fsync", "ioctl"]


def test_the_c_driver_serves_single_request_workloads_on_both_daemons():
    results, _ = ops.measure(NAMES, [1, 4], 0.1, 1, "auto", log=lambda line: None)
    for name in NAMES:
        for depth in (1, 4):
            for driver in ("python", "lean", "c-guest"):
                row = results[f"{name}@{depth}/{driver}"]
                assert row["driver"] == driver
                for backend in ("fastvfs", "reference"):
                    fig = row[backend]
                    assert fig["requests"] > 0 and fig["backend_cpu_s"] > 0, (name, backend)
    rows = ops.table_rows(results)
    assert any(line.startswith("| statfs | 4 | c-guest | request |") for line in rows)


def test_the_c_driver_counts_an_unexpected_answer_and_publishes_as_told(tmp_path):
    """A RAW request answered otherwise than it expects (another error, or success where it
    expects an error) fails the run; c-guest publishes each request on its own, lean once per
    round of completions."""
    session = ops.Session("fastvfs", tmp_path, "auto")
    try:
        statfs = ops.BY_NAME["statfs"]
        guest = session.run_lean(statfs, 32, 0.1, ops.C_DRIVERS["c-guest"])
        lean = session.run_lean(statfs, 32, 0.1, ops.C_DRIVERS["lean"])
        assert guest["publishes"] >= guest["requests"] > 0
        assert 0 < lean["publishes"] < lean["requests"] / 2
        missing = (Opcode.LOOKUP, abi.FUSE_ROOT_ID, b"absent\0", abi.ENTRY_OUT_SIZE, 0)
        present = (Opcode.LOOKUP, abi.FUSE_ROOT_ID, b"data\0", abi.ENTRY_OUT_SIZE, 0)
        load = LeanLoad(session.frontend, 1, "RAW", 4, requests=[present],
                        ok_error=-errno.ENOENT)
        try:
            with pytest.raises(OSError) as exc:
                load.run(0.05)
            assert exc.value.errno == errno.EPROTO and "success" in str(exc.value)
        finally:
            load.close()
        for ok_error, fails in ((-errno.ENOENT, False), (0, True), (-errno.ENODATA, True)):
            load = LeanLoad(session.frontend, 1, "RAW", 4, requests=[missing],
                            ok_error=ok_error)
            try:
                if fails:
                    with pytest.raises(OSError) as exc:
                        load.run(0.05)
                    assert exc.value.errno == errno.ENOENT
                else:
                    assert load.run(0.05)["requests"] > 0
            finally:
                load.close()
        with pytest.raises(ValueError):
            LeanLoad(session.frontend, 1, "RAW", 4)
        with pytest.raises(ValueError):
            LeanLoad(session.frontend, 1, "GETATTR", 4, nodeid=1, requests=[missing])
    finally:
        session.close()
