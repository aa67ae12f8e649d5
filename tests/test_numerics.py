"""dtypes, non-finite inputs, gradcheck, determinism and checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

import diffops as do
from diffops.engines import METHODS

from . import reference as ref
from .nets import mlp

OPERATORS = {
    "laplacian": lambda u, m: do.Laplacian(u, method=m),
    "hessian": lambda u, m: do.Hessian(u, method=m),
    "d3": lambda u, m: do.Derivative(u, wrt=1, order=3, method=m),
    "mixed": lambda u, m: do.Derivative(u, wrt=(0, 1), method=m),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-4), (torch.bfloat16, 1e-1)], ids=["f32", "bf16"])
def test_low_precision_tracks_float64(method, dtype, tolerance):
    u = mlp(2)
    x = torch.randn(8, 2, dtype=torch.float64)
    expected = ref.laplacian(u, x)
    low = do.Laplacian(u.to(dtype), method=method)(x.to(dtype))
    assert low.dtype == dtype
    scale = expected.abs().max()
    assert (low.double() - expected).abs().max() <= tolerance * scale


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("operator", sorted(OPERATORS))
def test_non_finite_inputs_stay_in_their_rows(method, operator):
    u = mlp(2)
    x = torch.randn(6, 2, dtype=torch.float64)
    clean = OPERATORS[operator](u, method)(x)
    x[2, 0], x[4, 1] = float("nan"), float("inf")
    dirty = OPERATORS[operator](u, method)(x)
    finite_rows = [0, 1, 3, 5]
    torch.testing.assert_close(dirty[finite_rows], clean[finite_rows], rtol=1e-12, atol=1e-14)
    assert not torch.isfinite(dirty[2]).any()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("operator", sorted(OPERATORS))
def test_gradcheck_and_gradgradcheck_through_inputs(method, operator):
    u = mlp(2, width=6)
    op = OPERATORS[operator](u, method)
    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(op, (x,))
    assert torch.autograd.gradgradcheck(op, (x,))


@pytest.mark.parametrize("method", METHODS)
def test_gradcheck_through_parameters(method):
    u = mlp(2, width=6)
    x = torch.randn(3, 2, dtype=torch.float64)
    weight = u[0].weight.detach().clone().requires_grad_(True)

    def laplacian_of_weight(w: torch.Tensor) -> torch.Tensor:
        with_weight = lambda y: functional_call(u, {"0.weight": w}, (y,))
        return do.Laplacian(with_weight, method=method)(x)

    assert torch.autograd.gradcheck(laplacian_of_weight, (weight,))
    assert torch.autograd.gradgradcheck(laplacian_of_weight, (weight,))


def _train(seed: int, method: str) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    u = mlp(2, width=8)
    op = do.Laplacian(u, method=method) - do.Derivative(u, order=0, method=method)
    opt = torch.optim.Adam(op.parameters(), lr=1e-2)
    for _ in range(5):
        x = torch.rand(32, 2, dtype=torch.float64)
        opt.zero_grad()
        op(x).pow(2).mean().backward()
        opt.step()
    return [p.detach().clone() for p in u.parameters()]


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_result(method):
    for a, b in zip(_train(3, method), _train(3, method)):
        assert torch.equal(a, b)


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    def make() -> do.DifferentialOperator:
        u = mlp(2)
        return do.Laplacian(u) + 0.5 * do.Derivative(u, wrt=(0, 1)) - do.Derivative(u, order=0)

    op = make()
    torch.save(op.state_dict(), tmp_path / "op.pt")
    restored = make()
    restored.load_state_dict(torch.load(tmp_path / "op.pt", weights_only=True))
    x = torch.randn(5, 2, dtype=torch.float64)
    assert torch.equal(restored(x), op(x))
