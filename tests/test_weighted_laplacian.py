"""``Laplacian(u, sigma=S)`` = tr(S S^T H) against a float64 nested-autograd reference, every method."""

import pytest
import torch
from torch import nn

import diffops as do
from tests import reference
from tests.nets import TwoInputs, mlp, networks
from tests.strict import warnings_as_errors

METHODS = ("taylor", "func", "autograd", "auto")
D = 4


def weighted_reference(u, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``(N, *out)``: the Hessian by nested autograd contracted with ``S S^T``; ``s``: ``(d, r)`` or ``(N, d, r)``."""
    h = reference.hessian(u, x)  # (N, *out, d, d)
    s = s.expand(x.shape[0], *s.shape[-2:])
    ss = s @ s.transpose(-1, -2)  # (N, d, d)
    return (h * ss.reshape(x.shape[0], *(1,) * (h.dim() - 3), *ss.shape[1:])).sum((-1, -2))


class SigmaField(nn.Module):
    """``S(x): (*batch, d, r)``, a smooth state-dependent diffusion matrix with its own parameters."""

    def __init__(self, d: int, r: int):
        super().__init__()
        self.base = nn.Parameter(torch.randn(d, r, dtype=torch.float64) / d**0.5)
        self.mix = nn.Parameter(torch.randn(r, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base + 0.3 * torch.tanh(x)[..., :, None] * self.mix


def sigma_kinds(d: int, r: int, n: int) -> dict:
    """``name -> (sigma for the operator, (N, d, r) or (d, r) for the reference at x)``."""
    constant = torch.randn(d, r, dtype=torch.float64)
    per_sample = torch.randn(n, d, r, dtype=torch.float64)
    field = SigmaField(d, r)
    return {
        "constant": (constant, lambda x: constant),
        "per-sample": (per_sample, lambda x: per_sample),
        "callable": (field, lambda x: field(x)),
    }


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["constant", "per-sample", "callable"])
@pytest.mark.parametrize("r", [2, D])
@pytest.mark.parametrize("net", ["mlp-tanh", "mlp-sin", "residual", "ansatz"])
def test_values_and_parameter_gradients(method, kind, r, net):
    u = networks(D)[net]
    x = torch.randn(6, D, dtype=torch.float64)
    sigma, at = sigma_kinds(D, r, 6)[kind]
    actual = do.Laplacian(u, sigma=sigma, method=method)(x)
    expected = weighted_reference(u, x, at(x).detach())
    assert actual.shape == expected.shape == (6, 1)
    torch.testing.assert_close(actual, expected)
    for a, e in zip(reference.parameter_gradients(u, actual), reference.parameter_gradients(u, expected)):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize("method", METHODS)
def test_vector_valued_u_and_gradient_in_x_through_a_callable_sigma(method):
    u, field = mlp(D, 3), SigmaField(D, 2)
    x = torch.randn(5, D, dtype=torch.float64, requires_grad=True)
    actual = do.Laplacian(u, sigma=field, method=method)(x)
    expected = weighted_reference(u, x, field(x))  # S(x) enters outside the derivatives
    assert actual.shape == (5, 3)
    torch.testing.assert_close(actual, expected)
    (g_actual,) = torch.autograd.grad(actual.sin().sum(), x)
    (g_expected,) = torch.autograd.grad(expected.sin().sum(), x)
    torch.testing.assert_close(g_actual, g_expected)


@pytest.mark.parametrize("method", METHODS)
def test_gradient_with_respect_to_a_learnable_sigma(method):
    u = mlp(D)
    s = nn.Parameter(torch.randn(D, 2, dtype=torch.float64))
    op = do.Laplacian(u, sigma=s, method=method)
    assert any(p is s for p in op.parameters())  # trained with the rest
    x = torch.randn(6, D, dtype=torch.float64)
    (g_actual,) = torch.autograd.grad(op(x).sin().sum(), s)
    (g_expected,) = torch.autograd.grad(weighted_reference(u, x, s).sin().sum(), s)
    torch.testing.assert_close(g_actual, g_expected)


def test_identity_sigma_is_the_laplacian_and_none_is_the_plain_one():
    u = mlp(D, 2)
    x = torch.randn(5, D, dtype=torch.float64)
    eye = torch.eye(D, dtype=torch.float64)
    torch.testing.assert_close(do.Laplacian(u, sigma=eye)(x), do.Laplacian(u)(x))
    assert str(do.Laplacian(u, sigma=None)) == "Δu"
    assert str(do.Laplacian(u, sigma=eye)) == "tr(SSᵀ∇²u)"


@pytest.mark.parametrize("method", METHODS)
def test_batch_rank_two_argnums_and_chunks(method):
    u = TwoInputs(3, 1)
    x, t = torch.randn(2, 3, 3, dtype=torch.float64), torch.randn(2, 3, 1, dtype=torch.float64)
    s = torch.randn(2, 3, 4, 2, dtype=torch.float64)  # per sample, over (x, t)
    op = do.Laplacian(u, sigma=s, argnums=(0, 1), coords=("a", "b", "c", "t"), method=method, chunk_size=4)
    actual = op(x, t)
    flat = lambda y: u(y[:, :3], y[:, 3:])  # noqa: E731
    expected = weighted_reference(flat, torch.cat([x, t], -1).reshape(6, 4), s.reshape(6, 4, 2))
    torch.testing.assert_close(actual, expected.reshape(2, 3, 1))


@pytest.mark.parametrize("method", ["taylor", "func", "autograd"])
def test_empty_batch_gives_an_empty_result(method):
    u = mlp(D, 2)
    for sigma in (torch.randn(D, 2, dtype=torch.float64), torch.randn(0, D, 2, dtype=torch.float64)):
        assert do.Laplacian(u, sigma=sigma, method=method)(torch.randn(0, D, dtype=torch.float64)).shape == (0, 2)


@pytest.mark.parametrize("method", METHODS)
def test_generator_of_a_diffusion_in_one_expression(method):
    """``0.5 tr(S S^T H) + b.grad u - f``, the generator of dX = b dt + S dW, shares one engine call."""
    u, field = mlp(D), SigmaField(D, 2)
    b = lambda x: -x  # noqa: E731 - an Ornstein-Uhlenbeck drift
    f = lambda x: x[..., :1] ** 2  # noqa: E731
    generator = 0.5 * do.Laplacian(u, sigma=field, method=method) + do.DirectionalDerivative(u, b, method=method) - f
    assert str(generator) == "0.5·tr(SSᵀ∇²u) + (v·∇)u - f"
    x = torch.randn(7, D, dtype=torch.float64)
    actual = generator(x)
    drift = (reference.jacobian(u, x)[:, 0] * b(x)).sum(-1, keepdim=True)
    expected = 0.5 * weighted_reference(u, x, field(x).detach()) + drift - f(x)
    torch.testing.assert_close(actual, expected)
    for a, e in zip(reference.parameter_gradients(u, actual), reference.parameter_gradients(u, expected)):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize("method", ["taylor", "func"])
def test_compiles_to_one_graph(method):
    torch._dynamo.reset()
    u, field = mlp(D, width=8, depth=1), SigmaField(D, 2)
    op = 0.5 * do.Laplacian(u, sigma=field, method=method) + do.DirectionalDerivative(u, torch.sin, method=method)
    x = torch.randn(8, D, dtype=torch.float64)

    def step(x: torch.Tensor) -> torch.Tensor:
        return (op(x) - 1.0).square().mean()

    eager = step(x)
    with warnings_as_errors():
        compiled = torch.compile(step, backend="aot_eager", fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager)
    params = list(op.parameters())
    grads = lambda loss: torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)  # noqa: E731
    for a, e in zip(grads(compiled), grads(eager)):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
@pytest.mark.parametrize("kind", ["constant", "callable"])
def test_hutchinson_in_the_span_of_sigma_is_unbiased(distribution, kind):
    u = mlp(D)
    points = torch.randn(3, D, dtype=torch.float64)
    x = points.expand(3000, 3, D).clone()
    sigma, at = sigma_kinds(D, 2, 3)[kind]
    op = do.Laplacian(u, sigma=sigma, estimator="hutchinson", samples=2, distribution=distribution)
    estimates = op(x).detach()
    exact = weighted_reference(u, points, at(points).detach()).detach()
    mean, error = estimates.mean(0), estimates.std(0) / estimates.shape[0] ** 0.5
    assert (error > 0).all() and ((mean - exact).abs() <= 4 * error).all(), (mean, exact, error)
    # every direction lies in the span of S: a null S gives exactly zero
    zero = do.Laplacian(u, sigma=torch.zeros(D, 2, dtype=torch.float64), estimator="hutchinson", samples=2)
    assert zero(points).abs().max() == 0


def test_hutchinson_sigma_estimate_is_differentiable_in_sigma_and_parameters():
    u, s = mlp(D), nn.Parameter(torch.randn(D, 3, dtype=torch.float64))
    op = do.Laplacian(u, sigma=s, estimator="hutchinson", samples=4, generator=torch.Generator().manual_seed(3))
    x = torch.randn(5, D, dtype=torch.float64)
    grads = torch.autograd.grad(op(x).sum(), [s, u[0].weight])
    assert all(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize(
    ("sigma", "error", "match"),
    [
        (torch.randn(D + 1, 2, dtype=torch.float64), ValueError, r"sigma must have shape \(4, r\) or \(5, 4, r\)"),
        (torch.randn(3, D, 2, dtype=torch.float64), ValueError, r"got shape \(3, 4, 2\)"),
        (torch.randn(D, dtype=torch.float64), ValueError, r"Laplacian: sigma must have shape \(d, r\)"),
        (torch.randn(D, 0, dtype=torch.float64), ValueError, r"r >= 1"),
        (torch.ones(D, 2, dtype=torch.int64), TypeError, r"Laplacian: sigma must have a floating dtype"),
        ("S", TypeError, r"Laplacian: sigma must be a tensor"),
        (lambda x: torch.randn(D, 2, dtype=torch.float64), ValueError, r"the callable's result.*got shape \(4, 2\)"),
        (lambda x: 1.0, TypeError, r"Laplacian: sigma must return a tensor"),
    ],
)
def test_bad_sigma_is_refused(sigma, error, match):
    x = torch.randn(5, D, dtype=torch.float64)
    with pytest.raises(error, match=match):
        do.Laplacian(mlp(D), sigma=sigma)(x)


def test_sigma_with_sampled_coordinates_is_refused():
    with pytest.raises(ValueError, match="Laplacian: estimator='coordinates'.*sigma"):
        do.Laplacian(mlp(D), sigma=torch.eye(D), estimator="coordinates", samples=2)
