"""Example 5: the backward (adjoint Fokker-Planck) equation of a 12-D Ornstein-Uhlenbeck process with low-rank noise.

For the diffusion dX = -theta X dt + S dW in R^d, with S a d x r matrix of rank r < d,
the expectation v(t, x) = E[g(X_T) | X_t = x] solves

    dv/dt + (-theta x) . grad v + 1/2 tr(S S^T Hess v) = 0,   v(T, x) = g(x),

the Kolmogorov backward equation: the generator of the process (the adjoint of the Fokker-Planck
operator) applied to v.  With g(x) = cos(a . x) + sin(c . x) it is known in
closed form: X_T given X_t = x is Gaussian with mean e^(-theta tau) x and covariance
(1 - e^(-2 theta tau)) / (2 theta) S S^T, tau = T - t, so

    v(t, x) = cos(e^(-theta tau) a . x) exp(-k(tau) |S^T a|^2) + sin(e^(-theta tau) c . x) exp(-k(tau) |S^T c|^2),

with k(tau) = (1 - e^(-2 theta tau)) / (4 theta).  The network takes z = (x, t) and the ansatz
v = g(x) + (T - t) N(z) meets the terminal condition exactly.  The equation holds in all of R^d;
trained in the box [-1, 1]^d, the diffusion also needs v on the box's faces (else v plus any
solution vanishing at t = T fits the residual), so the loss is the mean squared residual plus a
penalty on the faces against the closed form, as in a Dirichlet problem.

In space-time coordinates the whole generator is two diffops operators that share one engine
call: the drift and the time derivative are one ``DirectionalDerivative`` along (-theta x, 1),
the diffusion a weighted ``Laplacian`` with sigma = [S; 0] (r + 2 vectors per layer in Taylor
mode instead of a d x d Hessian).

    python lightning_examples/ou_fokker_planck.py                      # configs/ou_fokker_planck.yaml
    python lightning_examples/ou_fokker_planck.py --data.dim 20 --model.rank 5
"""

from __future__ import annotations

from typing import Literal

import torch
from cli import run
from common import CollocationData, PINNModule, as_grid, grid_points, mlp
from torch import nn

from diffops import DirectionalDerivative, Laplacian


class OrnsteinUhlenbeck(nn.Module):
    """The process, the payoff g and the exact v; buffers, so that ``.to(dtype)`` moves them."""

    def __init__(self, dim: int, rank: int, theta: float, horizon: float, generator: torch.Generator) -> None:
        super().__init__()
        self.theta, self.horizon = theta, horizon
        signs = lambda: torch.randint(2, (dim,), generator=generator).double() * 2 - 1  # noqa: E731
        # a . x and c . x have unit variance for x uniform in [-1, 1]^d
        self.register_buffer("a", signs() * (3 / dim) ** 0.5)
        self.register_buffer("c", signs() * (3 / dim) ** 0.5)
        self.register_buffer("sigma", torch.randn(dim, rank, dtype=torch.float64, generator=generator) / rank**0.5)

    def payoff(self, x: torch.Tensor) -> torch.Tensor:
        """``g(x) = cos(a . x) + sin(c . x)``: ``(B, 1)``."""
        return torch.cos(x @ self.a[:, None]) + torch.sin(x @ self.c[:, None])

    def exact(self, z: torch.Tensor) -> torch.Tensor:
        """``v(t, x)`` at ``z = (x, t)``: ``(B, 1)``."""
        x, t = z[..., :-1], z[..., -1:]
        tau = self.horizon - t
        shrink = torch.exp(-self.theta * tau)
        k = (1 - torch.exp(-2 * self.theta * tau)) / (4 * self.theta)
        spread = lambda w: torch.exp(-k * (self.sigma.T @ w).square().sum())  # noqa: E731
        return torch.cos(shrink * (x @ self.a[:, None])) * spread(self.a) + torch.sin(
            shrink * (x @ self.c[:, None])
        ) * spread(self.c)

    def drift(self, z: torch.Tensor) -> torch.Tensor:
        """The space-time direction ``(-theta x, 1)``: ``(B, d + 1)``."""
        return torch.cat([-self.theta * z[..., :-1], torch.ones_like(z[..., -1:])], dim=-1)


class TerminalAnsatz(nn.Module):
    """``v(z) = g(x) + (T - t) N(z)``: the terminal condition holds for any network ``N``."""

    def __init__(self, network: nn.Module, process: OrnsteinUhlenbeck) -> None:
        super().__init__()
        self.network, self.process = network, process

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.process.payoff(z[..., :-1]) + (self.process.horizon - z[..., -1:]) * self.network(z)


class KolmogorovModule(PINNModule):
    """A tanh network for the backward equation; the residual is the generator of the process applied to v."""

    def __init__(
        self,
        dim: int = 12,
        rank: int = 3,
        theta: float = 1.0,
        horizon: float = 1.0,
        hidden: int = 64,
        layers: int = 2,
        adam_steps: int = 3000,
        second_order_steps: int = 0,
        lr: float = 3e-3,
        method: Literal["auto", "func", "taylor", "autograd"] = "auto",
        process_seed: int = 0,
        boundary_weight: float = 10.0,
    ) -> None:
        """The process in ``dim`` dimensions with noise of rank ``rank``, rate ``theta``, terminal time ``horizon``.

        ``process_seed`` draws ``a``, ``c`` and ``S``.  A ``hidden`` x ``layers`` tanh network ``N``; Adam
        with ``lr``, then ``second_order_steps`` of L-BFGS (none by default: the points change every step).
        ``boundary_weight`` multiplies the penalty on the faces of the box; ``method`` is the diffops engine.
        """
        super().__init__(adam_steps, lr)
        self.save_hyperparameters()
        self.process = OrnsteinUhlenbeck(dim, rank, theta, horizon, torch.Generator().manual_seed(process_seed))
        self.u = TerminalAnsatz(mlp(dim + 1, 1, hidden, layers), self.process)
        # sigma over (x, t): no noise in time
        space_time_sigma = torch.cat([self.process.sigma, torch.zeros_like(self.process.sigma[:1])])
        self.pde = DirectionalDerivative(self.u, self.process.drift, method=method) + 0.5 * Laplacian(
            self.u, sigma=space_time_sigma, method=method
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.u(z)

    def training_loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        interior, faces = batch
        mismatch = self.u(faces) - self.process.exact(faces)
        return {
            "residual": self.residual(interior).square().mean(),
            "boundary": self.hparams.boundary_weight * mismatch.square().mean(),
        }

    def residual(self, z: torch.Tensor) -> torch.Tensor:
        return self.pde(z)


def draw_points(count: int, dim: int, horizon: float, generator: torch.Generator, faces: bool = False) -> torch.Tensor:
    """``(count, dim + 1)``: x uniform in [-1, 1]^d (on its faces: one coordinate set to -1 or 1), t in [0, T]."""
    x = torch.rand(count, dim, dtype=torch.float64, generator=generator) * 2 - 1
    if faces:
        face = torch.randint(dim, (count,), generator=generator)
        x[torch.arange(count), face] = torch.randint(2, (count,), generator=generator).double() * 2 - 1
    t = torch.rand(count, 1, dtype=torch.float64, generator=generator) * horizon
    return torch.cat([x, t], dim=-1)


class OrnsteinUhlenbeckData(CollocationData):
    """New interior and face points every step; ``test_points`` held-out points in the box as the reference.

    A fixed set of points covers 13 dimensions poorly: every step trains on ``points`` new interior
    and ``boundary_points`` new face points.  The reference is the closed form of the model's process,
    so it is computed in :meth:`setup`, once the model is known.
    """

    def __init__(
        self, dim: int = 12, horizon: float = 1.0, points: int = 256, boundary_points: int = 256,
        test_points: int = 2000, steps_per_epoch: int = 500,
    ) -> None:  # fmt: skip
        self.dim, self.horizon, self.points, self.boundary_points = dim, horizon, points, boundary_points
        # a generator of its own, so that the network's initialization does not depend on the test set
        test = draw_points(test_points, dim, horizon, torch.Generator().manual_seed(torch.initial_seed() + 1))
        super().__init__(self.draw, test, torch.full_like(test[:, :1], torch.nan), steps_per_epoch)

    def setup(self, stage: str) -> None:
        self.exact = self.trainer.lightning_module.process.exact(self.grid)
        self.references = {name: (self.grid, self.exact) for name in self.references}

    def draw(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        interior = draw_points(self.points, self.dim, self.horizon, generator)
        return interior, draw_points(self.boundary_points, self.dim, self.horizon, generator, faces=True)

    def figure_data(self, model: KolmogorovModule) -> dict:
        """The (x_0, t) plane with the other coordinates at 0."""
        x_axis = torch.linspace(-1, 1, 41, dtype=torch.float64)
        t_axis = torch.linspace(0, self.horizon, 41, dtype=torch.float64)
        plane = torch.zeros(41 * 41, self.dim + 1, dtype=torch.float64)
        plane[:, [0, -1]] = grid_points(x_axis, t_axis)
        with torch.no_grad():
            predicted = model(plane.to(model.dtype))
        return {
            "kind": "field", "name": "ou_fokker_planck", "axes": (x_axis.numpy(), t_axis.numpy()),
            "labels": ("x_0", "t"), "predicted": as_grid(predicted, 41, 41),
            "exact": as_grid(model.process.exact(plane), 41, 41), "exact_name": "closed form (slice)",
        }  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    """Train, test on held-out random points, save a figure of the (x_0, t) plane; returns the errors and wall time."""
    links = (("data.dim", "model.dim"), ("data.horizon", "model.horizon"))
    return run(KolmogorovModule, OrnsteinUhlenbeckData, "ou_fokker_planck.yaml", argv, links=links)


if __name__ == "__main__":
    main()
