"""``benchmarks/residuals.py``: every residual agrees between diffops and hand-written nested autograd, and runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import residuals  # noqa: E402


@pytest.mark.parametrize("case", residuals.RESIDUALS)
@pytest.mark.parametrize("method", ["auto", "taylor", "apart"])
def test_each_residual_matches_its_nested_autograd_version(case, method):
    """With its linear part as one combination (``auto``, ``taylor``) and with the terms apart."""
    coords, outputs, _, _ = residuals.RESIDUALS[case]
    torch.manual_seed(0)
    net = residuals.NETS["raissi"](len(coords), outputs).double()
    x = torch.rand(6, len(coords), dtype=torch.float64)
    expected = residuals.nested(net, case)(x)
    apart = method == "apart"
    actual = residuals.Residual(net, case, "taylor" if apart else method, apart=apart)(x)
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-10)
    params = list(net.parameters())
    grad = lambda r: torch.autograd.grad(r.square().sum(), params, allow_unused=True, materialize_grads=True)  # noqa: E731
    for a, e in zip(grad(actual), grad(expected)):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("net_name", residuals.NETS)
@pytest.mark.parametrize("case", ["burgers", "navier_stokes", "beam"])
def test_the_torch_func_version_matches_nested_autograd(case, net_name):
    coords, outputs, _, _ = residuals.RESIDUALS[case]
    torch.manual_seed(0)
    net = residuals.NETS[net_name](len(coords), outputs).double()
    x = torch.rand(5, len(coords), dtype=torch.float64)
    expected, actual = residuals.nested(net, case)(x), residuals.with_torch_func(net, case)(x)
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-10)
    params = list(net.parameters())
    grad = lambda r: torch.autograd.grad(r.square().sum(), params, allow_unused=True, materialize_grads=True)  # noqa: E731
    for a, e in zip(grad(actual), grad(expected)):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-10)


def test_the_modified_mlp_runs_every_engine():
    net = residuals.NETS["modified"](2, 1).double()
    x = torch.rand(4, 2, dtype=torch.float64)
    expected = residuals.nested(net, "kdv")(x)
    for method in ("taylor", "func", "autograd"):
        torch.testing.assert_close(residuals.Residual(net, "kdv", method)(x), expected, rtol=1e-9, atol=1e-10)


def test_the_quick_table_has_a_row_per_residual(capsys):
    residuals.main(["--quick", "--threads", "1"])
    rows = [
        line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("| burgers") or line.startswith("| kdv")
    ]
    assert len(rows) == 2
    cells = rows[0].strip("|").split("|")
    assert cells[10].strip() in ("autograd", "func", "taylor")
    auto_mib, nested_mib = (float(cell) for cell in cells[-2:])
    assert 0 < auto_mib and 0 < nested_mib


def test_the_work_table_counts_the_kernels_of_both_methods(capsys):
    residuals.main(["--quick", "--work"])
    rows = [line.strip("|").split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("| kdv")]
    assert len(rows) == 1
    counts = [float(cell) for cell in rows[0][4:10]]
    assert all(count > 0 for count in counts)
    assert rows[0][-1].strip() in ("autograd", "func", "taylor")


def test_work_counts_count_the_flops_of_matrix_products_and_the_elements_of_the_rest():
    from _measure import work_counts

    a, weight = torch.randn(10, 4), torch.randn(3, 4, requires_grad=True)
    bias = torch.randn(3, requires_grad=True)

    def step() -> None:
        weight.grad = bias.grad = None
        torch.tanh(torch.nn.functional.linear(a, weight, bias)).sum().backward()

    counts = work_counts(step)
    # forward a (10 x 4) @ (4 x 3), backward (3 x 10) @ (10 x 4) for the weight: 240 FLOPs each
    assert counts["flops"] == 480
    # at least tanh and its backward (30 each), the loss (1) and the bias's gradient (3)
    assert counts["elements"] >= 30 + 30 + 1 + 3
    assert counts == work_counts(step)  # counted, not timed: the same each time
