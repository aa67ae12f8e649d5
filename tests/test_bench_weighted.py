"""The weighted-operator benchmark runs end to end at tiny sizes (timings are not checked)."""

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_weighted  # noqa: E402


def test_weighted_benchmark_quick():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # measuring must not make 'auto' fall back
        result = bench_weighted.main(["--quick"])
    assert [(row["d"], row["r"]) for row in result["weighted"]] == [(8, 1), (8, 4), (8, 8)]
    for row in result["weighted"]:
        assert {"diffops auto", "torch.func hessian", "nested autograd"} <= set(row["seconds"])
        assert row["peak"]["diffops auto"] > 0 and row["engine"] == "taylor"
    assert [row["d"] for row in result["divergence"]] == [4, 8]
    assert all(row["exact / hutchinson"] > 0 for row in result["divergence"])
