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

    python lightning_examples/ou_fokker_planck.py
"""

from __future__ import annotations

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
        lr: float = 3e-3,
        method: str = "auto",
        seed: int = 0,
        boundary_weight: float = 10.0,
    ) -> None:
        super().__init__(adam_steps, lr)
        self.save_hyperparameters()
        self.process = OrnsteinUhlenbeck(dim, rank, theta, horizon, torch.Generator().manual_seed(seed))
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


def main(argv: list[str] | None = None) -> dict:
    """Train, test on held-out random points, save a plot of the (x_0, t) plane; returns the error and wall time."""
    parser = base_parser(__doc__.splitlines()[0], "ou_fokker_planck")
    parser.set_defaults(hidden=64, layers=2, points=256, adam_steps=3000, lbfgs_steps=0, lr=3e-3, val_every=500)
    parser.add_argument("--dim", type=int, default=12, help="dimension d of the process")
    parser.add_argument("--rank", type=int, default=3, help="rank r of the noise matrix S")
    parser.add_argument("--theta", type=float, default=1.0, help="mean reversion rate")
    parser.add_argument("--horizon", type=float, default=1.0, help="terminal time T")
    parser.add_argument("--boundary-points", type=int, default=256, help="points on the faces of the box per step")
    parser.add_argument("--boundary-weight", type=float, default=10.0)
    parser.add_argument("--test-points", type=int, default=2000, help="held-out points")
    args = parser.parse_args(argv)
    start = setup(args)

    model = KolmogorovModule(
        args.dim, args.rank, args.theta, args.horizon, args.hidden, args.layers, args.adam_steps, args.lr,
        args.method, args.seed, args.boundary_weight,
    )  # fmt: skip

    def draw(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        # every step trains on fresh points: a fixed set covers 13 dimensions poorly
        interior = draw_points(args.points, args.dim, args.horizon, generator)
        return interior, draw_points(args.boundary_points, args.dim, args.horizon, generator, faces=True)

    test = draw_points(args.test_points, args.dim, args.horizon, torch.Generator().manual_seed(args.seed + 1))
    data = CollocationData(draw, test, model.process.exact(test), steps_per_epoch=args.val_every)
    trainer, metrics = fit_and_test(model, data, args)

    result = report(trainer, model, metrics, start)
    if trainer.is_global_zero:
        x_axis = torch.linspace(-1, 1, 41, dtype=torch.float64)
        t_axis = torch.linspace(0, args.horizon, 41, dtype=torch.float64)
        plane = torch.zeros(41 * 41, args.dim + 1, dtype=torch.float64)
        plane[:, [0, -1]] = grid_points(x_axis, t_axis)
        with torch.no_grad():
            predicted = model(plane.to(model.dtype))
        result["plot"] = args.output_dir / "ou_fokker_planck.png"
        plot_field(
            result["plot"], (x_axis.numpy(), t_axis.numpy()), as_grid(predicted, 41, 41),
            as_grid(model.process.exact(plane), 41, 41), loss_history(trainer), args.adam_steps, labels=("x_0", "t"),
        )  # fmt: skip
    return result


if __name__ == "__main__":
    main()
