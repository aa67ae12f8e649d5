"""``DirectionalDerivative(u, v, order=k)`` = d^k/dt^k u(x + t v) against a float64 nested-autograd reference."""

import warnings

import pytest
import torch
from torch import nn

import diffops as do
from tests import reference
from tests.nets import TwoInputs, mlp, networks

METHODS = ("taylor", "func", "autograd", "auto")
D = 3


def along_reference(u, x: torch.Tensor, v: torch.Tensor, order: int) -> torch.Tensor:
    """``(N, *out)``: ``sum over i_1..i_k of d^k u / dx_i1..dx_ik * v_i1 ... v_ik``, every partial by nested autograd.

    ``v``: ``(N, d)``, entering outside the derivatives (so a ``v(x)`` is not differentiated by them).
    """
    if order == 0:
        return u(x)
    total = 0
    for index in torch.cartesian_prod(*[torch.arange(x.shape[1])] * order).reshape(-1, order).tolist():
        weight = torch.prod(torch.stack([v[:, i] for i in index]), 0)  # (N,)
        partial = reference.partial(u, x, tuple(index))
        total = total + partial * weight.reshape(-1, *(1,) * (partial.dim() - 1))
    return total


class Drift(nn.Module):
    """A learnable drift field ``b(x) = A tanh(x) + c``: ``(*batch, d)``."""

    def __init__(self, d: int):
        super().__init__()
        self.a = nn.Parameter(torch.randn(d, d, dtype=torch.float64) / d)
        self.c = nn.Parameter(torch.randn(d, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x) @ self.a.T + self.c


def v_kinds(n: int) -> dict:
    """``name -> (v for the operator, v at x as (N, d))``."""
    constant = torch.randn(D, dtype=torch.float64)
    per_sample = torch.randn(n, D, dtype=torch.float64)
    drift = Drift(D)
    return {
        "constant": (constant, lambda x: constant.expand(n, D)),
        "per-sample": (per_sample, lambda x: per_sample),
        "callable": (drift, drift),
    }


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["constant", "per-sample", "callable"])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("net", ["mlp-tanh", "mlp-silu", "residual", "ansatz"])
def test_values_and_parameter_gradients(method, kind, order, net):
    u = networks(D, 2)[net]
    x = torch.randn(5, D, dtype=torch.float64)
    v, at = v_kinds(5)[kind]
    actual = do.DirectionalDerivative(u, v, order=order, method=method)(x)
    expected = along_reference(u, x, at(x).detach(), order)
    assert actual.shape == expected.shape == (5, 2)
    torch.testing.assert_close(actual, expected)
    for a, e in zip(reference.parameter_gradients(u, actual), reference.parameter_gradients(u, expected)):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("order", [1, 2])
def test_v_of_x_is_held_fixed_and_gradients_flow_through_both(method, order):
    """v(x) is evaluated at x; the derivatives act on u only; d/dx and d/d(drift parameters) flow through both."""
    u, drift = mlp(D), Drift(D)
    x = torch.randn(6, D, dtype=torch.float64, requires_grad=True)
    actual = do.DirectionalDerivative(u, drift, order=order, method=method)(x)
    expected = along_reference(u, x, drift(x), order)
    torch.testing.assert_close(actual, expected)
    wrt = [x, drift.a, drift.c]
    for a, e in zip(torch.autograd.grad(actual.sin().sum(), wrt), torch.autograd.grad(expected.sin().sum(), wrt)):
        torch.testing.assert_close(a, e)


def test_order_one_is_the_jacobian_times_v_and_order_zero_is_u():
    u = mlp(D, 2)
    x, v = torch.randn(4, D, dtype=torch.float64), torch.randn(4, D, dtype=torch.float64)
    torch.testing.assert_close(do.DirectionalDerivative(u, v)(x), (do.Jacobian(u)(x) @ v[:, :, None]).squeeze(-1))
    torch.testing.assert_close(do.DirectionalDerivative(u, v, order=0)(x), u(x))


def test_a_leaf_used_twice_is_computed_once():
    u = mlp(D)
    dd = do.DirectionalDerivative(u, torch.ones(D, dtype=torch.float64))
    x = torch.randn(4, D, dtype=torch.float64)
    request = dd._request(D) | dd._request(D)
    assert len(request.along) == 1
    torch.testing.assert_close((dd + dd)(x), 2 * dd(x))


def test_symbols():
    u = mlp(D)

    def b(x):
        return -x

    assert str(do.DirectionalDerivative(u, torch.ones(D))) == "(v·∇)u"
    assert str(do.DirectionalDerivative(u, b, order=2)) == "(b·∇)²u"
    assert str(do.DirectionalDerivative(u, b, order=0)) == "u"
    assert str(do.DirectionalDerivative(u, lambda x: x, order=3) + do.Laplacian(u)) == "(v·∇)³u + Δu"


@pytest.mark.parametrize("method", METHODS)
def test_batch_rank_two_argnums_coords_and_chunks(method):
    u = TwoInputs(2, 1, d_out=2)
    x, t = torch.randn(3, 2, 2, dtype=torch.float64), torch.randn(3, 2, 1, dtype=torch.float64)
    v = torch.randn(3, 2, 3, dtype=torch.float64)
    op = do.DirectionalDerivative(u, v, order=2, argnums=(0, 1), coords=("x", "y", "t"), method=method, chunk_size=4)
    flat = lambda y: u(y[:, :2], y[:, 2:])  # noqa: E731
    expected = along_reference(flat, torch.cat([x, t], -1).reshape(6, 3), v.reshape(6, 3), 2)
    torch.testing.assert_close(op(x, t), expected.reshape(3, 2, 2))


@pytest.mark.parametrize("method", ["taylor", "func", "autograd"])
def test_empty_batch_gives_an_empty_result(method):
    x = torch.randn(0, D, dtype=torch.float64)
    for v in (torch.ones(D, dtype=torch.float64), torch.ones(0, D, dtype=torch.float64)):
        assert do.DirectionalDerivative(mlp(D, 2), v, order=2, method=method)(x).shape == (0, 2)


def test_shares_the_engine_call_with_other_operators(monkeypatch):
    """``u * (v.grad)u + Laplacian(u, sigma=S)``: one engine call, the value read off a directional pass."""
    from diffops.engines import ENGINES

    u = mlp(D)
    calls = []
    taylor = ENGINES["taylor"]
    original = taylor.compute
    monkeypatch.setattr(taylor, "compute", lambda *args: calls.append(1) or original(*args))
    value = do.Derivatives(u, u=())
    dd = do.DirectionalDerivative(u, torch.ones(D, dtype=torch.float64), method="taylor")
    expression = do.Derivative(u, wrt=0, order=0, method="taylor") * dd + do.Laplacian(
        u, sigma=torch.eye(D, dtype=torch.float64)[:, :2], method="taylor"
    )
    x = torch.randn(4, D, dtype=torch.float64)
    actual = expression(x)
    assert len(calls) == 1
    expected = value(x)["u"] * dd(x) + reference.partial(u, x, (0, 0)) + reference.partial(u, x, (1, 1))
    torch.testing.assert_close(actual, expected)


@pytest.mark.parametrize("method", ["taylor", "func"])
def test_compiles_to_one_graph(method):
    torch._dynamo.reset()
    u, drift = mlp(D, width=8, depth=1), Drift(D)
    op = do.DirectionalDerivative(u, drift, order=2, method=method)
    x = torch.randn(8, D, dtype=torch.float64)

    def step(x: torch.Tensor) -> torch.Tensor:
        return (op(x) - 1.0).square().mean()

    eager = step(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compiled = torch.compile(step, backend="aot_eager", fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager)


@pytest.mark.parametrize(
    ("v", "order", "error", "match"),
    [
        (torch.ones(D + 1, dtype=torch.float64), 1, ValueError, r"v must have shape \(3,\) or \(5, 3\).*\(4,\)"),
        (torch.ones(4, D, dtype=torch.float64), 1, ValueError, r"\(5, 3\).*got shape \(4, 3\)"),
        (torch.ones((), dtype=torch.float64), 1, ValueError, r"DirectionalDerivative: v must have shape \(d,\)"),
        (torch.ones(D, dtype=torch.int64), 1, TypeError, r"DirectionalDerivative: v must have a floating dtype"),
        (3.0, 1, TypeError, r"DirectionalDerivative: v must be a tensor"),
        (lambda x: torch.ones(D, dtype=torch.float64), 1, ValueError, r"callable's result.*\(5, 3\).*\(3,\)"),
        (torch.ones(D, dtype=torch.float64), -1, ValueError, r"order must be a non-negative int, got -1"),
        (torch.ones(D, dtype=torch.float64), 1.5, TypeError, r"order must be a non-negative int, got 1.5"),
    ],
)
def test_bad_v_or_order_is_refused(v, order, error, match):
    x = torch.randn(5, D, dtype=torch.float64)
    with pytest.raises(error, match=match):
        do.DirectionalDerivative(mlp(D), v, order=order)(x)


@pytest.mark.parametrize("outputs", [1, 4])
def test_auto_ranks_taylor_first_for_directional_requests(outputs):
    """The measured cost model of ``engines.choice.along_costs``: Taylor mode first for every order and rank."""
    from diffops.engines import candidates

    x = torch.randn(5, 16, dtype=torch.float64)
    for op in (
        do.DirectionalDerivative(mlp(16), torch.randn(16, dtype=torch.float64)),
        do.DirectionalDerivative(mlp(16), torch.randn(16, dtype=torch.float64), order=3),
        do.Laplacian(mlp(16), sigma=torch.randn(16, 8, dtype=torch.float64)),
    ):
        assert candidates("auto", op._request(16).bind((x,), x), 16, outputs)[0] == "taylor"
