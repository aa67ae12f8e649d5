"""The Cramér-Rao bound of the Burgers inverse problem: how close any estimator can get to lambda1, lambda2.

``lightning_examples/burgers_inverse.py`` identifies lambda1, lambda2 in
``u_t + lambda1 u u_x - lambda2 u_xx = 0`` from N_u points of the solution on the
256 x 100 grid of ``burgers_shock.mat``, with Gaussian noise of ``noise`` times the
solution's standard deviation.  Even an estimator that knew the initial condition
``u(x, 0) = -sin(pi x)`` and the boundary values (the network knows neither) sees the
coefficients only through the data, so the covariance of any unbiased estimate is at
least the inverse Fisher information ``sigma^2 (J^T J)^{-1}``, ``J`` the ``(N_u, 2)``
sensitivities ``du/dlambda1``, ``du/dlambda2`` at the observed points.

The family's solution is closed form: ``v = lambda1 u`` solves the viscous Burgers
equation with viscosity lambda2 from ``v(x, 0) = -lambda1 sin(pi x)``, which the
Cole-Hopf transform solves (the same Gauss-Hermite quadrature as ``burgers.cole_hopf``);
the sensitivities are central differences in lambda1 and lambda2.  The script prints, over
``draws`` random sets of N_u grid points, the bound's standard deviation of both relative
errors, and the median relative error it implies (0.674 standard deviations).

    python benchmarks/burgers_inverse_bound.py [--observations 2000] [--noise 0.01] [--draws 200]
"""

from __future__ import annotations

import argparse
import functools

import numpy as np

VISCOSITY = 0.01 / np.pi
# The grid of burgers_shock.mat: 256 x in [-1, 1], 100 t in [0, 0.99].
X_AXIS, T_AXIS = np.linspace(-1, 1, 256), np.linspace(0, 0.99, 100)
# The median of |e| for a normal e with standard deviation s is 0.674 s.
HALF_NORMAL_MEDIAN = 0.6745


def burgers_family(x: np.ndarray, t: np.ndarray, lambda1: float, lambda2: float, nodes: int = 150) -> np.ndarray:
    """``u`` solving ``u_t + lambda1 u u_x = lambda2 u_xx`` from ``u(x, 0) = -sin(pi x)``: ``(len(x), len(t))``."""
    z, weights = np.polynomial.hermite.hermgauss(nodes)
    shifted = x[:, None, None] - np.sqrt(4 * lambda2 * t)[None, :, None] * z  # (x, t, node)
    exponent = -lambda1 * np.cos(np.pi * shifted) / (2 * np.pi * lambda2)
    # exp of the exponent overflows float64 near the front; the common factor cancels in the ratio.
    weighted = weights * np.exp(exponent - exponent.max(axis=-1, keepdims=True))
    return -(np.sin(np.pi * shifted) * weighted).sum(-1) / weighted.sum(-1)


@functools.cache  # the same for every draw, noise and N_u
def sensitivities(step: float = 1e-5) -> np.ndarray:
    """``du/dlambda1``, ``du/dlambda2`` at the true coefficients on the grid, x-major: ``(256 * 100, 2)``."""

    def u(lambda1: float, lambda2: float) -> np.ndarray:
        return burgers_family(X_AXIS, T_AXIS, lambda1, lambda2).reshape(-1)

    d1 = (u(1 + step, VISCOSITY) - u(1 - step, VISCOSITY)) / (2 * step)
    d2 = (u(1, VISCOSITY * (1 + step)) - u(1, VISCOSITY * (1 - step))) / (2 * step * VISCOSITY)
    return np.stack([d1, d2], axis=1)


def bound(observations: int, noise: float, draws: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard deviations of the relative errors of lambda1 and lambda2 (fractions), one per draw of points."""
    jacobian = sensitivities()
    sigma = noise * burgers_family(X_AXIS, T_AXIS, 1.0, VISCOSITY).std()
    rng = np.random.default_rng(seed)
    deviations = []
    for _ in range(draws):
        rows = jacobian[rng.choice(len(jacobian), observations, replace=False)]
        covariance = sigma**2 * np.linalg.inv(rows.T @ rows)
        deviations.append(np.sqrt(np.diag(covariance)) / np.array([1.0, VISCOSITY]))
    deviations_ = np.array(deviations)
    return {"lambda1": deviations_[:, 0], "lambda2": deviations_[:, 1]}


def main(argv: list[str] | None = None) -> dict[str, np.ndarray]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--observations", type=int, default=2000)
    parser.add_argument("--noise", type=float, default=0.01)
    parser.add_argument("--draws", type=int, default=200)
    args = parser.parse_args(argv)
    result = bound(args.observations, args.noise, args.draws)
    print(f"N_u = {args.observations}, noise {args.noise:g}, {args.draws} draws of the points")
    for name, deviation in result.items():
        print(
            f"{name}: standard deviation {100 * np.median(deviation):.3f} % (median over draws;"
            f" {100 * deviation.min():.3f}-{100 * deviation.max():.3f} %),"
            f" median relative error {100 * HALF_NORMAL_MEDIAN * np.median(deviation):.3f} %"
        )
    return result


if __name__ == "__main__":
    main()
