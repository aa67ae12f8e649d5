"""Example 3: the viscous Burgers equation, a custom PDE term built from ``self.derivatives``.

    u_t + u u_x = (0.01 / pi) u_xx,   x in [-1, 1], t in [0, 1],
    u(x, 0) = -sin(pi x),             u(-1, t) = u(1, t) = 0.

The residual is a subclass of ``diffops.DifferentialOperator`` that asks for
the four partials it needs in one shared computation, from a network
``u(x, t)`` of two inputs.  The network enters through the ansatz
u = -sin(pi x) + t (1 - x^2) N(x, t), which meets the initial and boundary
conditions exactly.  A steep front forms at x = 0, so extra collocation points
are drawn near it.

Training is Adam, then Levenberg-Marquardt: damped Gauss-Newton steps on the
residual at every collocation point, with the per-point parameter Jacobian from
``diffops.parameter_jacobian``.  (Adam then L-BFGS, ``--model.second_order lbfgs``,
on a 4 x 32 network reached 1.2e-3 against ``burgers_shock.mat``; this reaches 2.5e-4.)

The reference solution is computed here, from the Cole-Hopf transformation:
u = -E[sin(pi (x - s z)) F(x - s z)] / E[F(x - s z)] over z ~ N(0, 1/2), with
s = sqrt(4 nu t) and F(y) = exp(-cos(pi y) / (2 pi nu)), by Gauss-Hermite quadrature.
Where ``burgers_shock.mat`` (Raissi et al.'s solution on a 256 x 100 grid) is in
``--data.data_dir``, the error printed last is against it, on that grid.

    python lightning_examples/burgers.py            # configs/burgers.yaml
    python lightning_examples/burgers.py --help
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from cli import run
from common import DATA_DIR, CollocationData, PINNModule, as_grid, grid_points, load_reference, mlp
from torch import nn

from diffops import DifferentialOperator

VISCOSITY = 0.01 / math.pi


class BurgersAnsatz(nn.Module):
    """``u(x, t) = -sin(pi x) + t (1 - x^2) N(x, t)``: the initial and boundary values hold for any ``N``."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -torch.sin(math.pi * x) + t * (1 - x**2) * self.network(torch.cat([x, t], dim=-1))


class BurgersResidual(DifferentialOperator):
    """``u_t + u u_x - nu u_xx`` for a network ``u(x, t)``: a custom PDE term."""

    def __init__(self, u: nn.Module, viscosity: float, method: str = "auto") -> None:
        super().__init__(u, argnums=(0, 1), coords=("x", "t"), method=method)
        self.viscosity = viscosity

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # the linear part u_t - nu u_xx as one combination: the Taylor engine computes it in one
        # coefficient along x, with no pass of its own for u_t
        d = self.derivatives(x, t, u=(), u_x="x", linear={"t": 1.0, ("x", "x"): -self.viscosity})
        return d["linear"] + d["u"] * d["u_x"]


class BurgersModule(PINNModule):
    """A tanh network ``u(x, t)`` trained on the Burgers residual; points are ``(x, t)`` rows."""

    def __init__(
        self, hidden: int = 20, layers: int = 4, adam_steps: int = 500, second_order_steps: int = 600,
        lr: float = 1e-3, second_order: Literal["lbfgs", "levenberg_marquardt"] = "levenberg_marquardt",
        damping: float = 1e-2, method: Literal["auto", "func", "taylor", "autograd"] = "auto",
        jacobian_method: Literal["auto", "func", "taylor"] = "taylor",
    ) -> None:  # fmt: skip
        """``hidden`` x ``layers`` tanh network ``N``; Adam with ``lr``, then ``second_order_steps`` steps of
        ``second_order`` (Levenberg-Marquardt starts from ``damping``).

        ``method`` is the diffops engine of the residual, ``jacobian_method`` that of the residual whose
        per-point parameter Jacobian Levenberg-Marquardt takes (any but ``autograd``, which cannot run
        under ``vmap``).
        """
        super().__init__(adam_steps, lr, second_order, damping)
        self.save_hyperparameters()
        self.u = BurgersAnsatz(mlp(2, 1, hidden, layers))
        self.pde = BurgersResidual(self.u, VISCOSITY, method=method)
        self.pde_for_jacobian = BurgersResidual(self.u, VISCOSITY, method=jacobian_method)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.u(points[..., :1], points[..., 1:])

    def residual(self, points: torch.Tensor) -> torch.Tensor:
        return self.pde(points[..., :1], points[..., 1:])

    def least_squares_operators(self, points: torch.Tensor) -> list:
        return [(self.pde_for_jacobian, (points[..., :1], points[..., 1:]), 0.0)]


def cole_hopf(x: np.ndarray, t: np.ndarray, nodes: int = 150) -> np.ndarray:
    """The exact solution on the grid ``x`` by ``t``: ``(len(x), len(t))``.

    150 Gauss-Hermite nodes agree with a spectral reference solution to about 1e-11.
    """
    z, weights = np.polynomial.hermite.hermgauss(nodes)
    shifted = x[:, None, None] - np.sqrt(4 * VISCOSITY * t)[None, :, None] * z  # (x, t, node)
    exponent = -np.cos(np.pi * shifted) / (2 * np.pi * VISCOSITY)
    # exp of the exponent overflows float64 near the front; the common factor cancels in the ratio.
    weighted = weights * np.exp(exponent - exponent.max(axis=-1, keepdims=True))
    return -(np.sin(np.pi * shifted) * weighted).sum(-1) / weighted.sum(-1)


def collocation_points(uniform: int, near_front: int, width: float = 0.1) -> torch.Tensor:
    """``uniform`` points in [-1, 1] x [0, 1] and ``near_front`` more with |x| < ``width``."""
    points = torch.rand(uniform + near_front, 2, dtype=torch.float64)
    points[:uniform, 0] = 2 * points[:uniform, 0] - 1
    points[uniform:, 0] = width * (2 * points[uniform:, 0] - 1)
    return points


class BurgersData(CollocationData):
    """``points`` uniform collocation points plus ``front_points`` near the front, and the references.

    The first reference (validation, and the error printed last) is ``burgers_shock.mat``'s 256 x 100 grid
    when the file is in ``data_dir`` (relative paths start at the repository root), else the Cole-Hopf
    solution on a 256 x 101 grid; the test also reports the Cole-Hopf error on its grid.
    """

    def __init__(
        self, points: int = 2000, front_points: int = 500, data_dir: str | None = DATA_DIR,
        steps_per_epoch: int = 100,
    ) -> None:  # fmt: skip
        x_axis, t_axis = np.linspace(-1, 1, 256), np.linspace(0, 1, 101)
        cole_hopf_grid = grid_points(torch.from_numpy(x_axis), torch.from_numpy(t_axis))
        cole_hopf_values = torch.from_numpy(cole_hopf(x_axis, t_axis)).reshape(-1, 1)
        published = load_reference(data_dir, "burgers_shock.mat")
        if published is not None:
            x_axis, t_axis = published["x"][:, 0], published["t"][:, 0]
            grid = grid_points(torch.from_numpy(x_axis), torch.from_numpy(t_axis))
            exact = torch.from_numpy(published["usol"]).reshape(-1, 1)
            super().__init__(collocation_points(points, front_points), grid, exact, steps_per_epoch,
                             reference_name="burgers_shock.mat")  # fmt: skip
            self.references["Cole-Hopf"] = (cole_hopf_grid, cole_hopf_values)
        else:
            super().__init__(collocation_points(points, front_points), cole_hopf_grid, cole_hopf_values,
                             steps_per_epoch, reference_name="Cole-Hopf")  # fmt: skip
        self.axes = (x_axis, t_axis)

    def figure_data(self, model: BurgersModule) -> dict:
        with torch.no_grad():
            predicted = model(self.grid.to(model.dtype))
        shape = tuple(len(axis) for axis in self.axes)
        return {
            "kind": "field", "name": "burgers", "axes": self.axes, "labels": ("x", "t"),
            "predicted": as_grid(predicted, *shape), "exact": as_grid(self.exact, *shape),
            "exact_name": next(iter(self.references)),
        }  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    """Train, test against the published and the Cole-Hopf solutions, save the figure; returns the report."""
    return run(BurgersModule, BurgersData, "burgers.yaml", argv)


if __name__ == "__main__":
    main()
