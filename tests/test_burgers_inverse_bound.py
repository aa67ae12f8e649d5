"""The Cramér-Rao bound of the Burgers inverse problem (benchmarks/burgers_inverse_bound.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lightning_examples"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import burgers  # noqa: E402
import burgers_inverse_bound as bound_  # noqa: E402


def test_the_family_at_the_true_coefficients_is_the_cole_hopf_solution():
    x, t = np.linspace(-1, 1, 33), np.linspace(0, 0.99, 7)
    expected = burgers.cole_hopf(x, t)
    np.testing.assert_allclose(bound_.burgers_family(x, t, 1.0, bound_.VISCOSITY), expected, atol=1e-12)


def test_the_family_solves_its_equation():
    """u_t + lambda1 u u_x - lambda2 u_xx = 0 by finite differences, for coefficients away from the true ones."""
    lambda1, lambda2, h = 0.7, 0.02, 1e-4
    x, t = np.linspace(-0.9, 0.9, 19), np.array([0.3])

    def u(dx: float = 0.0, dt: float = 0.0) -> np.ndarray:
        return bound_.burgers_family(x + dx, t + dt, lambda1, lambda2)[:, 0]

    u_t = (u(dt=h) - u(dt=-h)) / (2 * h)
    u_x = (u(dx=h) - u(dx=-h)) / (2 * h)
    u_xx = (u(dx=h) - 2 * u() + u(dx=-h)) / h**2
    residual = u_t + lambda1 * u() * u_x - lambda2 * u_xx
    assert np.abs(residual).max() < 1e-5 * np.abs(u_t).max()


def test_the_bound_is_linear_in_the_noise_and_shrinks_with_more_points(capsys):
    small = bound_.bound(observations=500, noise=0.01, draws=3)
    assert all(np.isfinite(value).all() and (value > 0).all() for value in small.values())
    doubled = bound_.bound(observations=500, noise=0.02, draws=3)
    np.testing.assert_allclose(doubled["lambda2"], 2 * small["lambda2"])
    more = bound_.bound(observations=5000, noise=0.01, draws=3)
    assert np.median(more["lambda2"]) < np.median(small["lambda2"])
    bound_.main(["--observations", "500", "--draws", "2"])
    assert "lambda2: standard deviation" in capsys.readouterr().out
