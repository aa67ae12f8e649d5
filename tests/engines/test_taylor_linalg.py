"""Taylor mode's rules of square matrices (inverse, solve, det, slogdet, logdet) against exact values.

The conformance grid checks them against nested autograd; here the determinant of
3 x 3 matrices is also checked against its polynomial (Sarrus' rule), which Taylor
mode differentiates through products alone: exact, whatever the conditioning.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import diffops as do

from .. import reference as ref


def sarrus(m: torch.Tensor) -> torch.Tensor:
    """``det`` of ``(..., 3, 3)`` matrices as the polynomial of their entries."""
    (a, b, c), (d, e, f), (g, h, i) = (m[..., r, :].unbind(-1) for r in range(3))
    return a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)


class Orbitals(nn.Module):
    """``x -> f(A(x))`` with ``A(x)``: ``(N, 3, 3)`` from a tanh layer, shifted by ``shift`` times the identity."""

    def __init__(self, f, shift: float):
        super().__init__()
        self.layer, self.f, self.shift = nn.Linear(2, 9), f, shift
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.tanh(self.layer(x)).reshape(-1, 3, 3) + self.shift * torch.eye(3, dtype=x.dtype)
        return self.f(a).unsqueeze(-1)


def _relative(actual: list[torch.Tensor], exact: list[torch.Tensor]) -> float:
    return max(float(((a - e).abs().max() / e.abs().max()).detach()) for a, e in zip(actual, exact, strict=True))


@pytest.mark.parametrize("shift, tolerance", [(1.5, 1e-11), (0.0, 1e-7)], ids=["conditioned", "any"])
@pytest.mark.parametrize(
    "f, polynomial",
    [
        (torch.linalg.det, sarrus),
        (lambda a: torch.linalg.slogdet(a).logabsdet, lambda a: sarrus(a).abs().log()),
        (torch.logdet, lambda a: sarrus(a).log()),
    ],
    ids=["det", "slogdet", "logdet"],
)
def test_against_the_polynomial(f, polynomial, shift, tolerance):
    """Values and parameter gradients of derivatives to order 4; unshifted matrices reach condition numbers
    of 1e3-1e4, where nested autograd's own parameter gradients of a fourth derivative were 2e-6 off."""
    torch.manual_seed(3)
    u, x = Orbitals(f, shift), torch.randn(6, 2, dtype=torch.float64)
    exact = copy.deepcopy(u)
    exact.f = polynomial
    if f is torch.logdet:  # log det is real where det > 0: keep those rows
        x = x[sarrus(torch.tanh(u.layer(x)).reshape(-1, 3, 3) + shift * torch.eye(3, dtype=x.dtype)) > 0]
    for index in [(0,), (0, 1), (1, 1, 0), (0, 0, 0, 0)]:
        actual, expected = (do.Derivative(net, wrt=index, method="taylor")(x) for net in (u, exact))
        assert _relative([actual], [expected]) < tolerance
        assert _relative(ref.parameter_gradients(u, actual), ref.parameter_gradients(exact, expected)) < tolerance


CONSTANT = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "f",
    [
        torch.linalg.inv,
        lambda a: torch.linalg.solve(a, CONSTANT),  # a constant right-hand side
        lambda a: torch.linalg.solve(a, a[..., 0]),  # vectors, both sides depending on x
        lambda a: torch.linalg.solve(a, a[..., :2].mT, left=False),  # X A = B
        lambda a: torch.linalg.solve(a.detach(), a[..., 1:]),  # a constant matrix
    ],
    ids=["inv", "solve", "solve-vectors", "solve-right", "solve-constant-matrix"],
)
def test_inverse_and_solve_against_the_reference(f):
    torch.manual_seed(0)
    u, x = Orbitals(lambda a: f(a).flatten(1).sum(-1), 1.5), torch.randn(5, 2, dtype=torch.float64)
    actual, expected = do.Laplacian(u, method="taylor")(x), ref.laplacian(u, x)
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-11)
    for a, e in zip(ref.parameter_gradients(u, actual), ref.parameter_gradients(u, expected)):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-11)


class Singular(nn.Module):
    """``det`` of ``[[t, t], [s, s]]``: singular at every point, its determinant 0 with every derivative."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(2, 2).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.layer(x))
        return torch.linalg.det(torch.stack([h, h], dim=-1)).unsqueeze(-1)


def test_a_singular_matrix_is_refused_and_auto_moves_on():
    u, x = Singular(), torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="singular"):
        do.Laplacian(u, method="taylor")(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # auto announces the engine it falls back to
        actual = do.Laplacian(u)(x)
    torch.testing.assert_close(actual, ref.laplacian(u, x))


def test_compiled():
    torch._dynamo.reset()
    torch.manual_seed(0)
    u, x = Orbitals(lambda a: torch.linalg.slogdet(a).logabsdet, 1.5), torch.randn(5, 2, dtype=torch.float64)
    actual = torch.compile(do.Laplacian(u, method="taylor"), backend="aot_eager", fullgraph=True)(x)
    torch.testing.assert_close(actual, ref.laplacian(u, x), rtol=1e-9, atol=1e-11)


def test_logdet_where_det_is_negative_follows_nested_autograd():
    """There torch's value is NaN and nested autograd's derivatives are 0, at every order."""
    torch.manual_seed(3)
    u, x = Orbitals(torch.logdet, 0.0), torch.randn(8, 2, dtype=torch.float64)
    assert (torch.linalg.det(torch.tanh(u.layer(x)).reshape(-1, 3, 3)) < 0).any()
    for index in [(0,), (0, 1), (1, 1, 0), (0, 0, 0, 0)]:
        actual, expected = do.Derivative(u, wrt=index, method="taylor")(x), ref.partial(u, x, index)
        torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-11)
        for a, e in zip(ref.parameter_gradients(u, actual), ref.parameter_gradients(u, expected), strict=True):
            torch.testing.assert_close(a, e, rtol=1e-8, atol=1e-10)
