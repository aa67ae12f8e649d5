"""Example 2: the Poisson equation -Laplace(u) = f on the unit square, u = 0 on its boundary.

The manufactured solution u(x, y) = sin(pi x) sin(pi y) gives the source
f = 2 pi^2 sin(pi x) sin(pi y).  The network enters through the ansatz
u = x (1 - x) y (1 - y) N(x, y), which vanishes on the boundary, so the loss is
only the PDE residual, written with diffops' operator algebra:

    residual = -Laplacian(u) - f

Training runs Adam, then L-BFGS, in float64; the relative L2 error on a
held-out 101 x 101 grid is printed and plotted.

    python lightning_examples/poisson_2d.py              # configs/poisson_2d.yaml: rel. L2 error < 1e-3
    python lightning_examples/poisson_2d.py --trainer.devices 2 --trainer.strategy ddp  # two processes
    python lightning_examples/poisson_2d.py --help       # every option; --print_config prints them all
"""

from __future__ import annotations

import math

import torch
from cli import run
from common import CollocationData, PINNModule, as_grid, grid_points, mlp
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
        self, hidden: int = 32, layers: int = 3, adam_steps: int = 300, second_order_steps: int = 30,
        lr: float = 1e-3, second_order: str = "lbfgs", method: str = "auto",
    ) -> None:  # fmt: skip
        """``hidden`` x ``layers`` tanh network; Adam with ``lr``, then ``second_order_steps`` of ``second_order``.

        ``method`` is the diffops engine: ``auto``, ``func``, ``taylor`` or ``autograd``.
        """
        super().__init__(adam_steps, lr, second_order)
        self.save_hyperparameters()
        self.u = ZeroOnBoundary(mlp(2, 1, hidden, layers))
        self.pde = -Laplacian(self.u, method=method) - source

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.u(points)

    def residual(self, points: torch.Tensor) -> torch.Tensor:
        return self.pde(points)

    def least_squares_operators(self, points: torch.Tensor) -> list:
        return [(self.pde, (points,), 0.0)]


class PoissonData(CollocationData):
    """``points`` random collocation points in the unit square; the exact solution on a ``grid`` x ``grid`` grid."""

    def __init__(self, points: int = 1000, grid: int = 101, steps_per_epoch: int = 100) -> None:
        self.size = grid
        self.axis = torch.linspace(0, 1, grid, dtype=torch.float64)
        grid_ = grid_points(self.axis, self.axis)
        super().__init__(torch.rand(points, 2, dtype=torch.float64), grid_, exact_solution(grid_), steps_per_epoch)

    def figure_data(self, model: PoissonModule) -> dict:
        with torch.no_grad():
            predicted = model(self.grid.to(model.dtype))
        shape = (self.size, self.size)
        axis = self.axis.numpy()
        return {
            "kind": "field", "name": "poisson_2d", "axes": (axis, axis), "labels": ("x", "y"),
            "predicted": as_grid(predicted, *shape), "exact": as_grid(self.exact, *shape),
        }  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    """Train, test on the held-out grid, save the figure; returns the errors and the wall time."""
    return run(PoissonModule, PoissonData, "poisson_2d.yaml", argv)


if __name__ == "__main__":
    main()
