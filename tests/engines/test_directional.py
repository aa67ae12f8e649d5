"""Every engine's directional derivatives (the estimators' primitive) against the float64 reference."""

from __future__ import annotations

import pytest
import torch

from diffops.engines import ENGINES

from .. import reference as ref
from ..nets import mlp


def reference_directional(u, x: torch.Tensor, directions: torch.Tensor, order: int) -> torch.Tensor:
    """``(S, N, *out)``: d^order/dt^order u(x + t v) at t = 0, by nested autograd in t."""
    along = []
    for v in directions:  # (N, d)
        t = torch.zeros(x.shape[0], 1, dtype=x.dtype)
        along.append(ref.partial(lambda s, v=v: u(x + s * v), t, (0,) * order))
    return torch.stack(along)


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize("order", [1, 2, 3])
def test_directional_matches_the_reference(engine, order):
    u = mlp(3, 2)
    x = torch.randn(5, 3, dtype=torch.float64)
    directions = torch.randn(4, 5, 3, dtype=torch.float64)
    actual = ENGINES[engine].directional(u, x, directions, order)
    expected = reference_directional(u, x, directions, order)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
    for a, e in zip(ref.parameter_gradients(u, actual), ref.parameter_gradients(u, expected)):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)
