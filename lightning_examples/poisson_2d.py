"""Example 2: the Poisson equation -Laplace(u) = f on the unit square, u = 0 on its boundary.

The manufactured solution u(x, y) = sin(pi x) sin(pi y) gives the source
f = 2 pi^2 sin(pi x) sin(pi y).  The network enters through the ansatz
u = x (1 - x) y (1 - y) N(x, y), which vanishes on the boundary, so the loss is
only the PDE residual, written with diffops' operator algebra:

    residual = -Laplacian(u) - f

Training runs Adam, then L-BFGS, in float64; the relative L2 error on a
held-out 101 x 101 grid is printed and plotted.

    python lightning_examples/poisson_2d.py                          # rel. L2 error < 1e-3 in about a minute
    python lightning_examples/poisson_2d.py --devices 2 --strategy ddp  # two processes
    python lightning_examples/poisson_2d.py --help
"""

from __future__ import annotations

import math

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

from diffops import Laplacian


class ZeroOnBoundary(nn.Module):
    """``u = x (1 - x) y (1 - y) N(x, y)``: meets the Dirichlet condition u = 0 for any network ``N``."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return (points * (1 - points)).prod(dim=-1, keepdim=True) * self.network(points)


def exact_solution(points: torch.Tensor) -> torch.Tensor:
    return torch.sin(math.pi * points).prod(dim=-1, keepdim=True)


def source(points: torch.Tensor) -> torch.Tensor:
    """``f = -Laplace(exact) = 2 pi^2 exact``."""
    return 2 * math.pi**2 * exact_solution(points)


class PoissonModule(PINNModule):
    """A tanh network for ``-Laplace(u) = f`` with the boundary condition built in."""

    def __init__(
        self, hidden: int = 32, layers: int = 3, adam_steps: int = 500, lr: float = 1e-3, method: str = "auto"
    ) -> None:
        super().__init__(adam_steps, lr)
        self.save_hyperparameters()
        self.u = ZeroOnBoundary(mlp(2, 1, hidden, layers))
        self.pde = -Laplacian(self.u, method=method) - source

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.u(points)

    def residual(self, points: torch.Tensor) -> torch.Tensor:
        return self.pde(points)


def main(argv: list[str] | None = None) -> dict:
    """Train, test on the held-out grid, save the plot; returns the error and the wall time."""
    parser = base_parser(__doc__.splitlines()[0], "poisson_2d")
    parser.set_defaults(hidden=32, layers=3, points=1000, adam_steps=300, lbfgs_steps=30, lr=1e-3)
    parser.add_argument("--grid", type=int, default=101, help="held-out grid points per side")
    args = parser.parse_args(argv)
    start = setup(args)

    train = torch.rand(args.points, 2, dtype=torch.float64)
    axis = torch.linspace(0, 1, args.grid, dtype=torch.float64)
    grid = grid_points(axis, axis)
    data = CollocationData(train, grid, exact_solution(grid), steps_per_epoch=args.val_every)
    model = PoissonModule(args.hidden, args.layers, args.adam_steps, args.lr, args.method)
    trainer, metrics = fit_and_test(model, data, args)

    result = report(trainer, model, metrics, start)
    if trainer.is_global_zero:
        with torch.no_grad():
            predicted = model(grid.to(model.dtype))
        shape = (args.grid, args.grid)
        result["plot"] = args.output_dir / "poisson_2d.png"
        plot_field(
            result["plot"], (axis.numpy(), axis.numpy()), as_grid(predicted, *shape),
            as_grid(exact_solution(grid), *shape), loss_history(trainer), args.adam_steps,
        )  # fmt: skip
    return result


if __name__ == "__main__":
    main()
