"""The architectures benchmark runs on tiny sizes; its timings are never asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_architectures.py"


def test_quick_mode_prints_every_case_and_method():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--threads", "1"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "CPU:" in out
    for case in ("layernorm-mlp d=2", "transformer d=2", "conv1d d=2", "determinant d=6"):
        rows = [line.split() for line in out.splitlines() if line.split()[:2] == case.split()]
        assert len(rows) == 1 and len(rows[0]) == 2 + 4 + 3 + 4  # the case, four times, three ratios, four memories
    assert out.count("auto ran the Taylor engine") == 4
