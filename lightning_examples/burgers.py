"""Example 3: the viscous Burgers equation, a custom PDE term built from ``self.derivatives``.

    u_t + u u_x = (0.01 / pi) u_xx,   x in [-1, 1], t in [0, 1],
    u(x, 0) = -sin(pi x),             u(-1, t) = u(1, t) = 0.

The residual is a subclass of ``diffops.DifferentialOperator`` that asks for
the four partials it needs in one shared computation, from a network
``u(x, t)`` of two inputs.  The network enters through the ansatz
u = -sin(pi x) + t (1 - x^2) N(x, t), which meets the initial and boundary
conditions exactly.  A steep front forms at x = 0, so extra collocation points
are drawn near it.

The reference solution is computed here, from the Cole-Hopf transformation:
u = -E[sin(pi (x - s z)) F(x - s z)] / E[F(x - s z)] over z ~ N(0, 1/2), with
s = sqrt(4 nu t) and F(y) = exp(-cos(pi y) / (2 pi nu)), by Gauss-Hermite quadrature.

    python lightning_examples/burgers.py
    python lightning_examples/burgers.py --help
"""

from __future__ import annotations

import math

import numpy as np
import torch
from common import (
    CollocationData,
    PINNModule,
    as_grid,
    base_parser,
    fit_and_test,
    grid_points,
    loss_history,
    mlp,
    plot_field,
    report,
    setup,
)
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
        d = self.derivatives(x, t, u=(), u_x="x", u_xx=("x", "x"), u_t="t")
        return d["u_t"] + d["u"] * d["u_x"] - self.viscosity * d["u_xx"]


class BurgersModule(PINNModule):
    """A tanh network ``u(x, t)`` trained on the Burgers residual; points are ``(x, t)`` rows."""

    def __init__(
        self, hidden: int = 32, layers: int = 4, adam_steps: int = 1000, lr: float = 1e-3, method: str = "auto"
    ) -> None:
        super().__init__(adam_steps, lr)
        self.save_hyperparameters()
        self.u = BurgersAnsatz(mlp(2, 1, hidden, layers))
        self.pde = BurgersResidual(self.u, VISCOSITY, method=method)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.u(points[..., :1], points[..., 1:])

    def residual(self, points: torch.Tensor) -> torch.Tensor:
        return self.pde(points[..., :1], points[..., 1:])


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


def main(argv: list[str] | None = None) -> dict:
    """Train, test against the Cole-Hopf solution, save the plot; returns the error and the wall time."""
    parser = base_parser(__doc__.splitlines()[0], "burgers")
    # Nested autograd is the fastest diffops engine for these low-order partials of a small network (about
    # 2.5x faster than torch.func here); --method auto would also work.
    parser.set_defaults(hidden=32, layers=4, points=2000, adam_steps=1000, lbfgs_steps=300, lr=1e-3)
    parser.add_argument("--front-points", type=int, default=500, help="extra collocation points with |x| < 0.1")
    args = parser.parse_args(argv)
    start = setup(args)

    x_axis = np.linspace(-1, 1, 256)
    t_axis = np.linspace(0, 1, 101)
    reference = torch.from_numpy(cole_hopf(x_axis, t_axis)).reshape(-1, 1)
    grid = grid_points(torch.from_numpy(x_axis), torch.from_numpy(t_axis))
    train = collocation_points(args.points, args.front_points)
    data = CollocationData(train, grid, reference, steps_per_epoch=args.val_every)
    model = BurgersModule(args.hidden, args.layers, args.adam_steps, args.lr, args.method)
    trainer, metrics = fit_and_test(model, data, args)

    result = report(trainer, model, metrics, start)
    if trainer.is_global_zero:
        with torch.no_grad():
            predicted = model(grid.to(model.dtype))
        shape = (len(x_axis), len(t_axis))
        result["plot"] = args.output_dir / "burgers.png"
        plot_field(
            result["plot"], (x_axis, t_axis), as_grid(predicted, *shape), as_grid(reference, *shape),
            loss_history(trainer), args.adam_steps, labels=("x", "t"),
        )  # fmt: skip
    return result


if __name__ == "__main__":
    main()
