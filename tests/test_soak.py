"""Long-run memory stability (slow: run with ``pytest -m slow``)."""

from __future__ import annotations

import pytest

from benchmarks.soak import soak


@pytest.mark.slow
def test_ten_thousand_steps_keep_memory_flat():
    start, end = soak(10_000)
    print(f"peak RSS after warm-up {start:.1f} MiB, at the end {end:.1f} MiB")
    assert end - start < 20, f"peak RSS grew from {start:.1f} to {end:.1f} MiB"
