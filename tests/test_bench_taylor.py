"""The Taylor benchmark runs on tiny sizes; its timings are never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_taylor.py"


def run(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--threads", "1", *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_quick_mode_prints_every_table():
    out = run("--no-memory", "--no-folx")
    for title in ("Laplacian, MLP", "d^k u/dx^k, MLP", "Mixed partials, MLP"):
        assert title in out
    assert "biharmonic" in out


def test_a_memory_probe_reports_bytes():
    out = run("--probe", json.dumps(["laplacian", "2", "diffops"]))
    assert int(out.strip().splitlines()[-1]) >= 0
