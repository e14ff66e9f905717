"""The performance gate catches a daemon that really got slower: fastvfs run under strace
(every system call stopped and resumed by the tracer) against the stored baseline."""

import os
import shutil
import subprocess
import sys

import pytest

from bench import micro

pytestmark = [pytest.mark.reference,
              pytest.mark.skipif(not os.access(micro.REFERENCE, os.X_OK),
                                 reason="needs the reference virtiofsd"),
              pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")]


def test_gate_fails_on_a_slowed_daemon(tmp_path):
    out = subprocess.run([sys.executable, "-m", "bench.regress", "--seconds", "0.5",
                          "--history", str(tmp_path), "--fastvfs-prefix",
                          "strace -f -qq -o /dev/null"], capture_output=True, text=True,
                         timeout=300)
    print(out.stdout)
    assert out.returncode == 1
    assert "REGRESSION" in out.stdout and "performance gate: FAILED" in out.stdout
    assert len(list(tmp_path.glob("*.json"))) == 1
