"""Example 5: discovering the Burgers equation from data, its coefficients trainable parameters of the operator.

    u_t + lambda1 u u_x - lambda2 u_xx = 0,   true lambda1 = 1, lambda2 = 0.01 / pi,

from N_u = 2,000 points (x, t, u) drawn from the solution on its 256 x 100 grid:
Raissi, Perdikaris and Karniadakis' ``burgers_shock.mat`` when it is in
``--data.data_dir``, else the Cole-Hopf solution computed by ``burgers.py`` on
the same grid.  ``--data.noise 0.01`` adds Gaussian noise of 1 % of the
solution's standard deviation, as in their paper.

``BurgersFamily`` is a ``diffops.DifferentialOperator`` with lambda1 and lambda2
as its own ``nn.Parameter``s: the optimizer trains them with the network's
weights, on the loss  mean (u(x_i, t_i) - u_i)^2 + mean f(x_i, t_i)^2  of
Raissi et al., the residual f taken at the data points and, unlike theirs, at
``--data.collocation`` (2,000) Latin-hypercube points of the (x, t) box as well.  Training is Adam, then
Levenberg-Marquardt on the data misfits and residuals, whose Jacobian with
respect to the weights and both coefficients comes from
``diffops.parameter_jacobian``.  The network is 4 hidden layers of 20 tanh
units (theirs has 8), which keeps each Levenberg-Marquardt step cheap.

With noise, the data themselves bound how well lambda2 can be known:
``benchmarks/burgers_inverse_bound.py`` computes that Cramér-Rao bound.

    python lightning_examples/burgers_inverse.py                     # clean data
    python lightning_examples/burgers_inverse.py --data.noise 0.01   # 1 % noise
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from burgers import VISCOSITY, cole_hopf
from cli import run
from common import DATA_DIR, InverseProblemModule, ObservationData, as_grid, grid_points, load_reference
from torch import nn

from diffops import DifferentialOperator


class BurgersFamily(DifferentialOperator):
    """``u_t + lambda1 u u_x - lambda2 u_xx`` with trainable ``lambda1`` and ``lambda2`` (both start at 0)."""

    def __init__(self, u: nn.Module, method: str = "auto") -> None:
        super().__init__(u, argnums=(0, 1), coords=("x", "t"), method=method)
        self.lambda1 = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.lambda2 = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        d = self.derivatives(x, t, u=(), u_x="x", u_xx=("x", "x"), u_t="t")
        return d["u_t"] + self.lambda1 * d["u"] * d["u_x"] - self.lambda2 * d["u_xx"]


class BurgersInverseModule(InverseProblemModule):
    """A tanh network ``u(x, t)`` and the coefficients of :class:`BurgersFamily`, fitted to observations."""

    family = BurgersFamily
    true_values = {"lambda1": 1.0, "lambda2": VISCOSITY}

    def __init__(
        self, hidden: int = 20, layers: int = 4, adam_steps: int = 200, second_order_steps: int = 300,
        lr: float = 1e-3, second_order: Literal["lbfgs", "levenberg_marquardt"] = "levenberg_marquardt",
        damping: float = 1e-3, method: Literal["auto", "func", "taylor", "autograd"] = "auto",
        jacobian_method: Literal["auto", "func", "taylor"] = "taylor",
    ) -> None:  # fmt: skip
        """``hidden`` x ``layers`` tanh network; Adam with ``lr``, then ``second_order_steps`` of ``second_order``
        (Levenberg-Marquardt starts from ``damping``).

        ``method`` is the diffops engine of the residual, ``jacobian_method`` that of the operators whose
        per-point parameter Jacobians Levenberg-Marquardt takes (any but ``autograd``, which cannot run
        under ``vmap``).
        """
        super().__init__(adam_steps, lr, second_order, damping)
        self.save_hyperparameters()
        self.build(hidden, layers, method, jacobian_method)


class BurgersObservations(ObservationData):
    """``observations`` points of the solution on the 256 x 100 grid, with ``noise``; the grid is the reference."""

    def __init__(
        self, observations: int = 2000, noise: float = 0.0, collocation: int = 2000, data_dir: str | None = DATA_DIR,
        steps_per_epoch: int = 100,
    ) -> None:  # fmt: skip
        published = load_reference(data_dir, "burgers_shock.mat")
        if published is not None:
            x_axis, t_axis, solution = published["x"][:, 0], published["t"][:, 0], published["usol"]
            name = "burgers_shock.mat"
        else:  # the same grid as the published file: 256 x in [-1, 1], 100 t in [0, 0.99]
            x_axis, t_axis = np.linspace(-1, 1, 256), np.linspace(0, 0.99, 100)
            solution, name = cole_hopf(x_axis, t_axis), "Cole-Hopf"
        self.axes = (x_axis, t_axis)
        grid = grid_points(torch.from_numpy(x_axis), torch.from_numpy(t_axis))
        exact = torch.from_numpy(np.ascontiguousarray(solution)).reshape(-1, 1)
        super().__init__(grid, exact, observations, noise, steps_per_epoch, name, collocation)

    def figure_data(self, model: BurgersInverseModule) -> dict:
        with torch.no_grad():
            predicted = model(self.grid.to(model.dtype))
        shape = tuple(len(axis) for axis in self.axes)
        return {
            "kind": "field", "name": "burgers_inverse", "axes": self.axes, "labels": ("x", "t"),
            "predicted": as_grid(predicted, *shape), "exact": as_grid(self.exact, *shape),
            "exact_name": next(iter(self.references)),
        }  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    """Identify lambda1 and lambda2, test u on the grid, save the figure; returns the report."""
    return run(BurgersInverseModule, BurgersObservations, "burgers_inverse.yaml", argv)


if __name__ == "__main__":
    main()
