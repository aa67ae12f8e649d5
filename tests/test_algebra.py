"""Operator expressions: values, shared computation, notation."""

from __future__ import annotations

import warnings

import pytest
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


@pytest.mark.parametrize("method", ["auto", "taylor", "func", "autograd"])
def test_the_linear_terms_of_a_sum_are_asked_for_as_one_combination(method, monkeypatch):
    """Burgers as an expression: ``u_t`` and ``-nu u_xx`` apart in the tree, one combination in the request."""
    requests = []
    for engine in ENGINES.values():
        spy = lambda fn, x, r, original=engine.compute: requests.append(r) or original(fn, x, r)  # noqa: E731
        monkeypatch.setattr(engine, "compute", spy)
    u, nu = mlp(2, depth=3), 0.01 / torch.pi
    D = lambda **kw: do.Derivative(u, coords=("x", "t"), method=method, **kw)  # noqa: E731
    op = D(wrt="t") + D(order=0) * D(wrt="x") - nu * D(wrt="x", order=2) + 0.5 * D(wrt="t") - source
    x = torch.rand(6, 2, dtype=torch.float64)
    u_t, u_x, u_xx = (ref.partial(u, x, index) for index in ((1,), (0,), (0, 0)))
    expected = 1.5 * u_t + u(x) * u_x - nu * u_xx - source(x)
    actual = op(x)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
    for a, e in zip(ref.parameter_gradients(u, actual), ref.parameter_gradients(u, expected)):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)
    asked = requests[0]  # (the func and autograd engines then ask themselves for the partials)
    (combination,) = asked.combinations
    assert dict(combination.terms) == {(1,): 1.5, (0, 0): -nu}
    assert asked.partials == frozenset({(), (0,)})  # u_t and u_xx not asked for apart


def test_a_sum_across_networks_or_with_learnable_weights_is_not_combined(monkeypatch):
    requests = []
    original = ENGINES["taylor"].compute
    monkeypatch.setattr(ENGINES["taylor"], "compute", lambda fn, x, r: requests.append(r) or original(fn, x, r))
    u, v = mlp(2), mlp(2)
    kappa = nn.Parameter(torch.tensor(0.5, dtype=torch.float64))
    x = torch.rand(4, 2, dtype=torch.float64)
    op = do.Derivative(u, wrt=1, method="taylor") + do.Derivative(v, wrt=(0, 0), method="taylor")
    learnable = do.Derivative(u, wrt=1, method="taylor") - kappa * do.Derivative(u, wrt=(0, 0), method="taylor")
    torch.testing.assert_close(op(x), ref.partial(u, x, (1,)) + ref.partial(v, x, (0, 0)))
    torch.testing.assert_close(learnable(x), ref.partial(u, x, (1,)) - kappa * ref.partial(u, x, (0, 0)))
    assert not any(r.combinations for r in requests)
    learnable(x).sum().backward()
    assert kappa.grad is not None and kappa.grad != 0


def test_a_combined_sum_still_refuses_a_term_of_another_shape():
    u = mlp(2)
    op = do.Derivative(u, wrt=1) - 0.1 * do.Derivative(u, wrt=(0, 0)) + (lambda x: x)
    with pytest.raises(ValueError, match=r"shapes \(3, 1\) and \(3, 2\) differ"):
        op(torch.rand(3, 2, dtype=torch.float64))


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


def test_division_by_a_parameter_is_trained_and_stays_live():
    u = mlp(2)
    x = torch.randn(4, 2, dtype=torch.float64)
    kappa = nn.Parameter(torch.tensor(0.5, dtype=torch.float64))
    op = do.Laplacian(u) / kappa - source
    assert any(p is kappa for p in op.parameters())
    optimizer = torch.optim.SGD(op.parameters(), lr=0.1)
    for _ in range(2):  # a second backward works, and each step reads the updated kappa
        expected = ref.laplacian(u, x) / kappa.detach() - source(x)
        value = op(x)
        torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
        optimizer.zero_grad()
        loss = value.pow(2).sum()
        loss.backward()
        lap = ref.laplacian(u, x).detach()
        expected_grad = (2 * value.detach() * -lap / kappa.detach() ** 2).sum()
        torch.testing.assert_close(kappa.grad, expected_grad, rtol=1e-10, atol=1e-12)
        before = kappa.detach().clone()
        optimizer.step()
        assert kappa != before


def test_a_one_element_parameter_scales_without_reshaping():
    """``nn.Parameter(torch.tensor([0.0]))``, the usual learnable PDE coefficient, is a scalar."""
    u = mlp(2)
    x = torch.randn(4, 2, dtype=torch.float64)
    lam = nn.Parameter(torch.tensor([[2.0]], dtype=torch.float64))
    squeezed = lambda x: u(x)[:, 0]  # noqa: E731
    lap = ref.laplacian(u, x)
    for op, expected in [
        (lam * do.Laplacian(u), 2 * lap),
        (do.Laplacian(u) / lam, lap / 2),
        (lam / do.Laplacian(u), 2 / lap),
        (do.Laplacian(u) + lam, lap + 2),
        (lam * do.Laplacian(squeezed), 2 * lap[:, 0]),
    ]:
        assert any(p is lam for p in op.parameters())
        torch.testing.assert_close(op(x), expected, rtol=1e-10, atol=1e-12)
    (lam * do.Laplacian(u))(x).sum().backward()
    torch.testing.assert_close(lam.grad, lap.sum().reshape(1, 1), rtol=1e-10, atol=1e-12)


def test_division_by_a_tensor_is_a_buffer_that_follows_the_module():
    u = mlp(2).float()
    scale = torch.tensor(4.0)
    op = do.Derivative(u, wrt=1) / scale
    assert any(b is scale for b in op.buffers())
    op.double()
    x = torch.randn(3, 2, dtype=torch.float64)
    torch.testing.assert_close(op(x), ref.partial(u, x, (1,)) / 4, rtol=1e-10, atol=1e-12)


def test_pointwise_quotients():
    u = mlp(2)
    x = torch.randn(5, 2, dtype=torch.float64)
    value, u_x = u(x), ref.partial(u, x, (0,))
    torch.testing.assert_close((do.Derivative(u, wrt=0) / do.Derivative(u, order=0))(x), u_x / value,
                               rtol=1e-10, atol=1e-12)
    torch.testing.assert_close((do.Derivative(u, wrt=0) / u)(x), u_x / value, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close((2.0 / do.Derivative(u, wrt=0))(x), 2.0 / u_x, rtol=1e-10, atol=1e-12)
    p = nn.Parameter(torch.tensor(3.0, dtype=torch.float64))
    op = p / do.Derivative(u, wrt=0)
    assert any(q is p for q in op.parameters())
    torch.testing.assert_close(op(x), 3.0 / u_x, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close((p + do.Derivative(u, wrt=0))(x), 3.0 + u_x, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"cannot compute .* / f: shapes \(5, 1\) and \(5,\) differ"):
        (do.Laplacian(u) / (lambda x: x[:, 0]))(x)
    with pytest.raises(ZeroDivisionError, match="cannot divide Δu by zero"):
        do.Laplacian(u) / 0
    with pytest.raises(TypeError, match=r"cannot combine a DifferentialOperator with str by '/'"):
        do.Laplacian(u) / "2"


def test_notation_of_learnable_coefficients_and_quotients_without_warnings():
    u = mlp(2)
    p = nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
    lap = do.Laplacian(u)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Converting a tensor with requires_grad=True to a scalar"
        assert str(p * lap) == "2·Δu"
        assert str(lap / p) == "Δu/2"
        assert str(lap - p * do.Derivative(u, wrt=0)) == "Δu - 2·∂u/∂x₀"
        assert str(lap - do.Derivative(u, wrt=0) / p) == "Δu - (∂u/∂x₀)/2"
        assert str(1 - lap / p) == "1 - Δu/2"
        assert str(p / lap) == "2/Δu"
    assert str(lap / 4) == "Δu/4"
    assert str((lap + 1) / do.Derivative(u, wrt=0)) == "(Δu + 1)/(∂u/∂x₀)"
    assert str(lap - lap / 4) == "Δu - Δu/4"
