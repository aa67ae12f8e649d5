"""Parameter-free functions whose derivatives are known in closed form."""

from __future__ import annotations

import math

import pytest
import torch

import diffops as do
from diffops.engines import METHODS


def u(x: torch.Tensor) -> torch.Tensor:
    """sin(x0) exp(x1) x2^3, per-sample output (1,)."""
    return (torch.sin(x[:, 0]) * torch.exp(x[:, 1]) * x[:, 2] ** 3).unsqueeze(-1)


def field(x: torch.Tensor) -> torch.Tensor:
    """F = (x0^2 x1, sin(x1) x2, x0 x2^2): div F = 2 x0 x1 + cos(x1) x2 + 2 x0 x2."""
    return torch.stack([x[:, 0] ** 2 * x[:, 1], torch.sin(x[:, 1]) * x[:, 2], x[:, 0] * x[:, 2] ** 2], dim=-1)


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(9, 3, dtype=torch.float64)


def parts(x):
    s, c, e, z = torch.sin(x[:, 0]), torch.cos(x[:, 0]), torch.exp(x[:, 1]), x[:, 2]
    return s, c, e, z


@pytest.mark.parametrize("method", METHODS)
def test_laplacian(method, x):
    s, _, e, z = parts(x)
    expected = -s * e * z**3 + s * e * z**3 + 6 * s * e * z
    torch.testing.assert_close(do.Laplacian(u, method=method)(x)[:, 0], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_hessian(method, x):
    s, c, e, z = parts(x)
    expected = torch.stack(
        [
            torch.stack([-s * e * z**3, c * e * z**3, 3 * c * e * z**2], -1),
            torch.stack([c * e * z**3, s * e * z**3, 3 * s * e * z**2], -1),
            torch.stack([3 * c * e * z**2, 3 * s * e * z**2, 6 * s * e * z], -1),
        ],
        -2,
    )
    torch.testing.assert_close(do.Hessian(u, method=method)(x)[:, 0], expected, rtol=1e-12, atol=1e-12)


def _mixed_closed_form(index: tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
    """d^index of sin(x0) exp(x1) x2^3, factor by factor."""
    k0, k1, k2 = (index.count(i) for i in range(3))
    f0 = torch.sin(x[:, 0] + k0 * math.pi / 2)  # the k-th derivative of sin
    f1 = torch.exp(x[:, 1])
    f2 = math.perm(3, k2) * x[:, 2] ** (3 - k2) if k2 <= 3 else torch.zeros_like(x[:, 2])
    return f0 * f1 * f2


MIXED = [(0,), (2,), (0, 1), (0, 0, 2), (1, 2, 2), (0, 0, 0, 0), (0, 1, 2, 2), (2, 2, 2, 2), (0, 0, 1, 1)]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("index", MIXED, ids=str)
def test_mixed_partials_up_to_order_four(method, index, x):
    actual = do.Derivative(u, wrt=index, method=method)(x)[:, 0]
    torch.testing.assert_close(actual, _mixed_closed_form(index, x), rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("method", METHODS)
def test_divergence_and_curl_of_known_field(method, x):
    div = 2 * x[:, 0] * x[:, 1] + torch.cos(x[:, 1]) * x[:, 2] + 2 * x[:, 0] * x[:, 2]
    torch.testing.assert_close(do.Divergence(field, method=method)(x)[:, 0], div, rtol=1e-12, atol=1e-12)
    # curl F = (dF2/dx1 - dF1/dx2, dF0/dx2 - dF2/dx0, dF1/dx0 - dF0/dx1)
    curl = torch.stack([-torch.sin(x[:, 1]), -(x[:, 2] ** 2), -(x[:, 0] ** 2)], dim=-1)
    torch.testing.assert_close(do.Curl(field, method=method)(x), curl, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("order", range(7))
def test_high_order_of_exponential(method, order):
    """d^k/dx^k exp(2x) = 2^k exp(2x), the pure derivative along one coordinate."""
    x = torch.linspace(-1, 1, 5, dtype=torch.float64).unsqueeze(-1)
    actual = do.Derivative(lambda y: torch.exp(2 * y), wrt=0, order=order, method=method)(x)
    torch.testing.assert_close(actual, 2.0**order * torch.exp(2 * x), rtol=1e-12, atol=1e-12)
