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


CYCLES = ["create", "mkdir", "lookup_new", "close_lock_held", "rename"]


def _descriptors(pid):
    return sum(len(os.listdir(f"/proc/{member}/fd")) for member in micro.family(pid))


def test_the_c_driver_runs_cycles_on_both_daemons(tmp_path):
    """The C driver's cycles (each step sent once the one before it is answered, with the node
    id and handle its replies gave) run on both daemons, whole: every CREATE released, unlinked
    and forgotten, so neither daemon holds a descriptor per cycle afterwards, and no name is
    left behind."""
    results, _ = ops.measure(CYCLES, [1, 4], 0.1, 1, "auto", log=lambda line: None)
    for name in CYCLES:
        steps = ops.BY_NAME[name].cycle.count("+") + 1 if ops.BY_NAME[name].cycle else 2
        for depth in (1, 4):
            for driver in ("lean", "c-guest"):
                row = results[f"{name}@{depth}/{driver}"]
                for backend in ("fastvfs", "reference"):
                    fig = row[backend]
                    assert fig["cycles"] > 0 and fig["backend_cpu_s"] > 0, (name, backend)
                    assert steps * fig["cycles"] <= fig["requests"] < \
                        steps * (fig["cycles"] + depth), (name, driver, backend)
    for backend in ("fastvfs", "reference"):
        session = ops.Session(backend, tmp_path, "auto")
        try:
            session.run_lean(ops.BY_NAME["create"], 4, 0.05)
            before = _descriptors(session.proc.pid)
            r = session.run_lean(ops.BY_NAME["create"], 4, 0.3, publish_each=True)
            assert r["cycles"] > 200
            assert _descriptors(session.proc.pid) - before < 16, backend
            assert sorted(os.listdir(session.shared / "w")) == \
                sorted(f"r{i}" for i in range(ops.SLOTS))
        finally:
            session.close()
