"""``benchmarks/compiled_products.py`` prints both tables, every variant of the step; timings never asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compiled_products.py"


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")
def test_the_products_and_the_compiled_steps_tables_run_and_name_the_cpu():
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert "thread(s), float32" in lines[0] and lines[0].split(",")[0].strip()
    products = [line for line in lines if line.startswith("| 64 | 8,192 |")]
    assert len(products) == 1 and len(products[0].split("|")) == 8
    (step,) = [line for line in lines if line.startswith("| burgers | tanh64 | 3,000 |")]
    cells = [cell.strip() for cell in step.strip("|").split("|")]
    assert len(cells) == 15 and all(float(cell) > 0 for cell in cells[3:8] + cells[13:])  # ms of 5, MiB of 2
    assert all(" [" in cell for cell in cells[8:13])  # ratios with their range
