"""The Taylor and auto-rule benchmarks run on tiny sizes; their timings are never asserted."""

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


def test_tables_can_be_chosen():
    out = run("--no-memory", "--no-folx", "--tables", "mixed")
    assert "Mixed partials, MLP" in out and "Laplacian, MLP" not in out
    out = run("--no-memory", "--no-folx", "--tables", "compile")
    assert "torch.compile of the Taylor Laplacian step" in out and "Mixed partials, MLP" not in out


def test_a_memory_probe_reports_bytes():
    out = run("--probe", json.dumps(["laplacian", "2", "diffops"]))
    assert int(out.strip().splitlines()[-1]) >= 0


def test_the_auto_rule_table_names_the_fastest_engine_the_models_pick_and_autos():
    script = SCRIPT.with_name("auto_rule.py")
    result = subprocess.run(
        [sys.executable, str(script), "--quick", "--threads", "1"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.strip().startswith("du/dx")]
    assert len(rows) == 1
    engines = ("autograd", "func", "taylor")
    fastest, model, auto = rows[0][5:8]  # after the case and four times (three engines, auto)
    assert fastest in engines and model in engines and auto in engines


def test_ratios_pair_the_methods_within_each_round():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from bench_taylor import paired_ratio
    finally:
        sys.path.remove(str(SCRIPT.parent))
    # Other work slows both methods in rounds 3 and 4, and "b" alone in round 5: the ratio of the
    # medians would be 2 / 10, the paired ratio is the 2 of the quiet rounds.
    rounds = {"a": [2.0, 2.0, 20.0, 20.0, 2.0], "b": [1.0, 1.0, 10.0, 10.0, 10.0]}
    assert paired_ratio(rounds, "a", "b") == 2.0
    assert paired_ratio(rounds, "a", "missing") is None


def test_rounds_shuffle_the_order_so_no_method_always_follows_the_same_one():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from bench_taylor import time_rounds
    finally:
        sys.path.remove(str(SCRIPT.parent))
    calls: list[str] = []
    steps = {name: (lambda name=name: calls.append(name)) for name in "abcd"}
    times = time_rounds(steps, repeats=8, device="cpu", block=2)
    assert {name: len(values) for name, values in times.items()} == dict.fromkeys("abcd", 8)
    rounds = [calls[4 + 8 * r : 4 + 8 * (r + 1) : 2] for r in range(8)]  # after the warm-up, one entry a block
    assert all(sorted(order) == list("abcd") for order in rounds)
    predecessors = {order[order.index("a") - 1] for order in rounds if order[0] != "a"}
    assert len(predecessors) > 1
