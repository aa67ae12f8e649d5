"""The estimator benchmarks and the Gauss-Newton example run end to end at tiny sizes (timings are not checked)."""

import math
import sys
import warnings
from pathlib import Path

import torch

import diffops as do

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_estimators  # noqa: E402
import gauss_newton_poisson  # noqa: E402
import train_poisson_highdim  # noqa: E402


def test_cost_benchmark_quick():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # measuring memory must not make 'auto' fall back
        rows = bench_estimators.main(["--quick"])
    assert [row["d"] for row in rows] == [4, 8]
    for row in rows:
        assert {"u", "hutchinson", "exact", "hutchinson peak", "exact peak"} <= set(row)
        assert row["hutchinson peak"] > 0


def test_poisson_forcing_is_minus_the_laplacian_of_the_solution():
    problem = train_poisson_highdim.TwoBody(6, torch.Generator().manual_seed(0))
    x = train_poisson_highdim.uniform_ball(9, 6, torch.Generator().manual_seed(1)).double()
    assert (x.norm(dim=-1) <= 1).all()
    torch.testing.assert_close(problem.forcing(x), -do.Laplacian(problem.solution)(x))


def test_poisson_training_quick():
    (row,) = train_poisson_highdim.main(["--quick"])
    assert row["d"] == 5 and math.isfinite(row["error"]) and row["seconds"] > 0


def test_gauss_newton_quick():
    result = gauss_newton_poisson.main(["--quick"])
    assert math.isfinite(result["error"]) and set(result["timings"]) == {"parameter_jacobian", "autograd.grad loop"}
