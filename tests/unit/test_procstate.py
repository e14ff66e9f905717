"""The thread report that timed-out guest tests attach (fastvfs_testing.procstate)."""

import os
import subprocess
import threading
import time

from fastvfs_testing import procstate


def _wait_state(pid, state, timeout=5.0):
    deadline = time.monotonic() + timeout
    while (procstate._stat_fields(pid) or ["gone"])[0] != state:
        assert time.monotonic() < deadline, f"{pid} never reached state {state}"
        time.sleep(0.01)


def test_report_names_each_thread_of_the_tree_with_its_state():
    child = subprocess.Popen(["sleep", "30"])
    stop = threading.Event()
    waiter = threading.Thread(target=stop.wait, name="procstate-waiter")
    waiter.start()
    try:
        _wait_state(child.pid, "S")
        _wait_state(f"{os.getpid()}/task/{waiter.native_id}", "S")
        text = procstate.report(os.getpid(), "test")
        lines = text.splitlines()
        assert lines[0] == f"--- test {os.getpid()}: threads (state, wait channel, kernel stack) ---"
        assert any(line.startswith(f"{os.getpid()}/{os.getpid()} ") for line in lines)
        # A thread blocked in a wait: sleeping, with the wait channel it sleeps in.
        waiting = [line for line in lines if line.startswith(f"{os.getpid()}/{waiter.native_id} ")]
        assert len(waiting) == 1 and " S wchan=" in waiting[0]
        assert waiting[0].split("wchan=")[1] not in ("?", "-", "0")
        assert any(line.startswith(f"{child.pid}/{child.pid} sleep S wchan=") for line in lines)
        assert procstate.tree(os.getpid()).index(child.pid) > 0
    finally:
        stop.set()
        waiter.join()
        child.kill()
        child.wait()


def test_report_of_a_process_that_is_gone():
    child = subprocess.Popen(["true"])
    child.wait()
    assert procstate.report(child.pid).splitlines()[1] == f"{child.pid}: gone"
