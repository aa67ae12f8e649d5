"""Example 4: a 100-dimensional Poisson equation, with the exact or a stochastic Laplacian.

    -Laplace(u) = f  in the cube [0, 1]^d,   u = g on its boundary,   d = 100,

with the known solution u*(x) = sin(a . (x - 1/2)) + cos(b . (x - 1/2)), where
a_i = sqrt(12/d) and b_i = (-1)^i sqrt(12/d); then -Laplace(u*) = 12 u*, so
f = 12 u* and g = u*.  The
loss is the mean squared residual at interior points plus a boundary term.

``--estimator exact`` uses ``Laplacian(u)``: all d second partials, by the
fastest engine diffops has.  ``--estimator hutchinson`` uses
``Laplacian(u, estimator="hutchinson", samples=S)``, an unbiased estimate from
S random directions, so a step costs about S/d as much; the loss then trains
on a noisy residual, so only Adam is used (L-BFGS needs exact losses).

    python lightning_examples/poisson_100d.py                     # configs/poisson_100d.yaml
    python lightning_examples/poisson_100d.py --model.estimator hutchinson --model.samples 16
"""

from __future__ import annotations

from typing import Literal

import torch
from cli import run
from common import CollocationData, PINNModule, as_grid, grid_points, mlp
from torch import nn

from diffops import Laplacian


def exact_solution(x: torch.Tensor) -> torch.Tensor:
    """``u* = sin(a . (x - 1/2)) + cos(b . (x - 1/2))`` with ``a_i = sqrt(12 / d)``, ``b_i = (-1)^i sqrt(12 / d)``.

    Both waves vary by O(1) across the cube in any dimension (a . (x - 1/2) has unit variance).
    """
    d = x.shape[-1]
    centred = (x - 0.5) * (12 / d) ** 0.5
    signs = (-1.0) ** torch.arange(d, dtype=x.dtype, device=x.device)
    return torch.sin(centred.sum(-1, keepdim=True)) + torch.cos((centred * signs).sum(-1, keepdim=True))


def source(x: torch.Tensor) -> torch.Tensor:
    """``f = -Laplace(u*) = 12 u*``: each wave's Laplacian is -|a|^2 = -12 times itself."""
    return 12 * exact_solution(x)


class Standardized(nn.Module):
    """``network((x - 1/2) sqrt(12))``: coordinates uniform on [0, 1] rescaled to zero mean and unit variance.

    The solution's waves need first-layer weights of norm ~ 1 in these units but ~ sqrt(12) in the raw
    ones; without the rescaling Adam spends thousands of steps growing them (the error stalls near 0.3).
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network((x - 0.5) * 12**0.5)


class HighDimPoissonModule(PINNModule):
    """A tanh network for ``-Laplace(u) = f``; the boundary condition is a penalty term."""

    def __init__(
        self,
        dim: int = 100,
        hidden: int = 64,
        layers: int = 2,
        adam_steps: int = 1000,
        second_order_steps: int = 0,
        lr: float = 5e-3,
        estimator: Literal["exact", "hutchinson"] = "exact",
        samples: int = 16,
        boundary_weight: float = 100.0,
        method: Literal["auto", "func", "taylor", "autograd"] = "auto",
    ) -> None:
        """A ``hidden`` x ``layers`` tanh network in ``dim`` dimensions; Adam with ``lr``, then L-BFGS.

        ``estimator`` is the Laplacian: ``exact`` or ``hutchinson`` with ``samples`` random directions (then
        train with Adam only: L-BFGS needs exact losses).  ``boundary_weight`` multiplies the boundary term;
        the residual scales with ``|f| ~ 12 |u|``, and a weak boundary term leaves ``u* + (a harmonic
        function)`` unpinned.  ``method`` is the diffops engine.
        """
        super().__init__(adam_steps, lr)
        self.save_hyperparameters()
        self.u = Standardized(mlp(dim, 1, hidden, layers))
        if estimator == "exact":
            laplacian = Laplacian(self.u, method=method)
        else:
            laplacian = Laplacian(self.u, estimator=estimator, samples=samples, method=method)
        self.pde = -laplacian - source
        self.boundary_weight = boundary_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.u(x)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.pde(x)

    def training_loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        interior, boundary = batch
        mismatch = self.u(boundary) - exact_solution(boundary)
        return {
            "residual": self.residual(interior).square().mean(),
            "boundary": self.boundary_weight * mismatch.square().mean(),
        }


def boundary_points(count: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform points on the faces of the cube: one random coordinate of each is set to 0 or 1."""
    points = torch.rand(count, dim, dtype=torch.float64, generator=generator)
    face = torch.randint(dim, (count,), generator=generator)
    points[torch.arange(count), face] = torch.randint(2, (count,), generator=generator).double()
    return points


def slice_points(dim: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``size`` x ``size`` grid in the (x_0, x_1) plane, the other coordinates at 0.5, for the plot."""
    axis = torch.linspace(0, 1, size, dtype=torch.float64)
    points = torch.full((size * size, dim), 0.5, dtype=torch.float64)
    points[:, :2] = grid_points(axis, axis)
    return axis, points


class HighDimData(CollocationData):
    """New interior and boundary points every step; ``test_points`` held-out interior points as the reference.

    A fixed set of points cannot cover 100 dimensions: every step trains on ``points`` new interior and
    ``boundary_points`` new boundary points.
    """

    def __init__(
        self, dim: int = 100, points: int = 256, boundary_points: int = 256, test_points: int = 2000,
        steps_per_epoch: int = 200,
    ) -> None:  # fmt: skip
        self.dim, self.points, self.boundary_points = dim, points, boundary_points
        test = torch.rand(test_points, dim, dtype=torch.float64)
        super().__init__(self.draw, test, exact_solution(test), steps_per_epoch)

    def draw(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        interior = torch.rand(self.points, self.dim, dtype=torch.float64, generator=generator)
        return interior, boundary_points(self.boundary_points, self.dim, generator)

    def figure_data(self, model: HighDimPoissonModule) -> dict:
        axis, plane = slice_points(self.dim, 51)
        with torch.no_grad():
            predicted = model(plane.to(model.dtype))
        return {
            "kind": "field", "name": f"poisson_100d_{model.hparams.estimator}", "axes": (axis.numpy(), axis.numpy()),
            "labels": ("x_0", "x_1"), "predicted": as_grid(predicted, 51, 51),
            "exact": as_grid(exact_solution(plane), 51, 51), "exact_name": "exact solution (slice)",
        }  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    """Train, test on held-out random points, save a figure of a 2-D slice; returns the errors and wall time."""
    return run(HighDimPoissonModule, HighDimData, "poisson_100d.yaml", argv, links=(("data.dim", "model.dim"),))


if __name__ == "__main__":
    main()
