"""Operator expressions: values, shared computation, notation."""

from __future__ import annotations

import torch
from torch import nn

import diffops as do
from diffops.engines import ENGINES

from . import reference as ref
from .nets import mlp


def source(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(x[:, :1])


def test_expression_value_and_parameter_gradients():
    u = mlp(2)
    x = torch.randn(6, 2, dtype=torch.float64)
    op = do.Laplacian(u) + 2.0 * do.Derivative(u, wrt=1) - source
    expected = ref.laplacian(u, x) + 2.0 * ref.partial(u, x, (1,)) - source(x)
    torch.testing.assert_close(op(x), expected, rtol=1e-10, atol=1e-12)
    for a, e in zip(ref.parameter_gradients(u, op(x)), ref.parameter_gradients(u, expected)):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)


def test_products_scalars_and_negation():
    u = mlp(1)
    x = torch.randn(5, 1, dtype=torch.float64)
    u_x = ref.partial(u, x, (0,))
    op = do.Derivative(u, wrt=0) * do.Derivative(u, order=0) - do.Derivative(u, wrt=0, order=2) / 4 + 1.5
    expected = u_x * u(x) - ref.partial(u, x, (0, 0)) / 4 + 1.5
    torch.testing.assert_close(op(x), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close((-do.Laplacian(u))(x), -ref.laplacian(u, x), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close((do.Derivative(u) * u)(x), u_x * u(x), rtol=1e-10, atol=1e-12)


def test_expression_on_one_network_makes_one_engine_call(monkeypatch):
    calls = []
    engine = ENGINES["func"]
    original = engine.compute
    monkeypatch.setattr(engine, "compute", lambda fn, x, request: calls.append(request) or original(fn, x, request))
    u = mlp(2)
    op = do.Laplacian(u, method="func") + do.Derivative(u, wrt=(0, 1), method="func") - source
    op(torch.randn(3, 2, dtype=torch.float64))
    assert len(calls) == 1
    assert calls[0].partials == frozenset({(0, 1)}) and calls[0].full == frozenset({"laplacian"})


def test_learnable_coefficient_is_trained():
    u = mlp(2)
    kappa = nn.Parameter(torch.tensor(0.5, dtype=torch.float64))
    op = kappa * do.Laplacian(u) - source
    assert any(p is kappa for p in op.parameters())
    op(torch.randn(4, 2, dtype=torch.float64)).pow(2).sum().backward()
    assert kappa.grad is not None and kappa.grad != 0


def test_notation():
    u = mlp(3)
    assert str(do.Laplacian(u) + 2.0 * do.Derivative(u, wrt=1) - source) == "Δu + 2·∂u/∂x₁ - source"
    named = do.Derivative(u, wrt=("x", "x", "t"), coords=("x", "y", "t"))
    assert str(named) == "∂³u/∂x²∂t"
    assert str(do.Derivative(u, wrt=2, order=4)) == "∂⁴u/∂x₂⁴"
    assert str(do.Derivative(u, wrt=0, order=0)) == "u"
    assert str(-(do.Gradient(u) * do.Hessian(u))) == "-∇u·H[u]"
    assert str((do.Laplacian(u) + 1) * do.Divergence(u)) == "(Δu + 1)·∇·u"
    assert str(do.Derivatives(u, u=(), u_x=(0,))) == "{u: u, u_x: ∂u/∂x₀}"
    assert str(do.Curl(u) - (lambda x: x)) == "∇×u - f"
