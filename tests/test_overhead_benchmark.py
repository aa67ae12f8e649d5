"""The overhead benchmark runs and prints its table; its timings are never asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "overhead.py"


def test_overhead_table_has_every_batch_and_names_the_cpu():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--repeats", "1", "--threads", "1", "--dtype", "float64"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Burgers {u, u_x, u_xx, u_t}, 8x20 tanh, float64; ")
    rows = [line.split() for line in lines[3:]]
    assert [(row[0], row[1]) for row in rows] == [("256", "step"), ("256", "forward"), ("2000", "step"),
                                                  ("2000", "forward")]  # fmt: skip
    assert all(row.count("ms") == 3 for row in rows)
