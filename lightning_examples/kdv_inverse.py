"""Example 6: discovering the Korteweg-de Vries equation from scattered data, with third derivatives from diffops.

    u_t + lambda1 u u_x + lambda2 u_xxx = 0,   true lambda1 = 1, lambda2 = 0.0025,

from ``observations`` points (x, t, u) scattered over the solution on its
512 x 201 grid: Raissi, Perdikaris and Karniadakis' ``KdV.mat`` (u(x, 0) =
cos(pi x), periodic on [-1, 1], t in [0, 1]) when it is in ``--data.data_dir``,
else a travelling soliton u = 3c sech^2(sqrt(c / lambda2) (x - x0 - c t) / 2)
computed here (c = 0.5, x0 = -0.25).  ``--data.noise 0.01`` adds 1 % noise.

This is the continuous-time setting: one network u(x, t) over the whole domain,
fitted to the observations with the residual at the same points.  Raissi et
al.'s KdV example is discrete-time instead: two snapshots (t = 0.2 and 0.8) and
an implicit Runge-Kutta scheme of 50 stages between them.

    python lightning_examples/kdv_inverse.py
    python lightning_examples/kdv_inverse.py --data.noise 0.01
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from cli import run
from common import DATA_DIR, InverseProblemModule, ObservationData, as_grid, grid_points, load_reference
from torch import nn

from diffops import DifferentialOperator

DISPERSION = 0.0025


class KdVFamily(DifferentialOperator):
    """``u_t + lambda1 u u_x + lambda2 u_xxx`` with trainable ``lambda1`` and ``lambda2`` (both start at 0)."""

    def __init__(self, u: nn.Module, method: str = "auto") -> None:
        super().__init__(u, argnums=(0, 1), coords=("x", "t"), method=method)
        self.lambda1 = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.lambda2 = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        d = self.derivatives(x, t, u=(), u_x="x", u_xxx=("x", "x", "x"), u_t="t")
        return d["u_t"] + self.lambda1 * d["u"] * d["u_x"] + self.lambda2 * d["u_xxx"]


class KdVInverseModule(InverseProblemModule):
    """A tanh network ``u(x, t)`` and the coefficients of :class:`KdVFamily`, fitted to observations."""

    family = KdVFamily
    true_values = {"lambda1": 1.0, "lambda2": DISPERSION}

    def __init__(
        self, hidden: int = 20, layers: int = 5, adam_steps: int = 200, second_order_steps: int = 300,
        lr: float = 1e-3, second_order: Literal["lbfgs", "levenberg_marquardt"] = "levenberg_marquardt",
        damping: float = 1e-3, method: Literal["auto", "func", "taylor", "autograd"] = "taylor",
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


def soliton(x: np.ndarray, t: np.ndarray, speed: float = 0.5, start: float = -0.25) -> np.ndarray:
    """The KdV soliton ``3c sech^2(sqrt(c / lambda2) (x - x0 - c t) / 2)`` on the grid ``x`` by ``t``."""
    phase = np.sqrt(speed / DISPERSION) / 2 * (x[:, None] - start - speed * t[None, :])
    return 3 * speed / np.cosh(phase) ** 2


class KdVObservations(ObservationData):
    """``observations`` points of the solution on the 512 x 201 grid, with ``noise``; the grid is the reference."""

    def __init__(
        self, observations: int = 2000, noise: float = 0.0, data_dir: str | None = DATA_DIR,
        steps_per_epoch: int = 500,
    ) -> None:  # fmt: skip
        published = load_reference(data_dir, "KdV.mat")
        if published is not None:
            x_axis, t_axis, solution = published["x"][0], published["tt"][0], published["uu"]
            name = "KdV.mat"
        else:  # the grid of the published file: 512 x in [-1, 1), 201 t in [0, 1]
            x_axis, t_axis = np.linspace(-1, 1, 512, endpoint=False), np.linspace(0, 1, 201)
            solution, name = soliton(x_axis, t_axis), "soliton"
        self.axes = (x_axis, t_axis)
        grid = grid_points(torch.from_numpy(x_axis), torch.from_numpy(t_axis))
        exact = torch.from_numpy(np.ascontiguousarray(solution, dtype=np.float64)).reshape(-1, 1)
        super().__init__(grid, exact, observations, noise, steps_per_epoch, reference_name=name)

    def figure_data(self, model: KdVInverseModule) -> dict:
        with torch.no_grad():
            predicted = model(self.grid.to(model.dtype))
        shape = tuple(len(axis) for axis in self.axes)
        return {
            "kind": "field", "name": "kdv_inverse", "axes": self.axes, "labels": ("x", "t"),
            "predicted": as_grid(predicted, *shape), "exact": as_grid(self.exact, *shape),
            "exact_name": next(iter(self.references)),
        }  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    """Identify lambda1 and lambda2, test u on the data grid, save the figure; returns the report."""
    return run(KdVInverseModule, KdVObservations, "kdv_inverse.yaml", argv)


if __name__ == "__main__":
    main()
