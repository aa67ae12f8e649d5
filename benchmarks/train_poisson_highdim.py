"""A 100- and a 1,000-dimensional Poisson problem trained with the Hutchinson Laplacian.

    -Δu = f in the unit ball B^d,   u = 0 on its boundary,

with the known solution (the "two-body" test of high-dimensional PINN papers,
coefficients scaled so that u* is of order one whatever d is)

    u*(x) = (1 - |x|^2) sum_{i<d-1} c_i sin(x_i + cos(x_{i+1}) + x_{i+1} cos(x_i)),
    c_i ~ N(0, 1/(d-1)).

The network is the ansatz ``u(x) = (1 - |x|^2) g(x)``, which meets the boundary
condition exactly, so the loss is the mean squared residual ``Δu + f`` at fresh
uniform points of the ball each step.  Reports the relative L2 error of u on
held-out points and the training time.

    python benchmarks/train_poisson_highdim.py [--device cuda] [--quick]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

import diffops as do


class TwoBody:
    """The exact solution ``u*`` and its forcing ``f = -Δu*``, both ``(N, d) -> (N, 1)``."""

    def __init__(self, d: int, generator: torch.Generator) -> None:
        self.c = torch.randn(d - 1, generator=generator) / math.sqrt(d - 1)

    def _phase(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(phi, a, b)``: the arguments of the sines and their two coordinates, each ``(N, d-1)``."""
        a, b = x[:, :-1], x[:, 1:]
        return a + b.cos() + b * a.cos(), a, b

    def solution(self, x: torch.Tensor) -> torch.Tensor:
        phi, _, _ = self._phase(x)
        bump = 1 - x.square().sum(-1, keepdim=True)
        return bump * (phi.sin() @ self.c.to(x)).unsqueeze(-1)

    def forcing(self, x: torch.Tensor) -> torch.Tensor:
        """``-Δu*`` from ``Δ(b s) = b Δs + 2 ∇b·∇s + s Δb`` with ``b = 1 - |x|^2``."""
        phi, a, b = self._phase(x)
        dphi_a, dphi_b = 1 - b * a.sin(), a.cos() - b.sin()
        laplacian_phi = -b * a.cos() - b.cos()
        c = self.c.to(x)
        s = phi.sin() @ c
        laplacian_s = (phi.cos() * laplacian_phi - phi.sin() * (dphi_a.square() + dphi_b.square())) @ c
        radial_s = (phi.cos() * (a * dphi_a + b * dphi_b)) @ c  # x · ∇s
        bump = 1 - x.square().sum(-1)
        laplacian = bump * laplacian_s - 4 * radial_s - 2 * x.shape[1] * s
        return -laplacian.unsqueeze(-1)


def uniform_ball(n: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, d)`` points uniform in the unit ball: a uniform direction times a radius ``U^(1/d)``."""
    direction = torch.randn(n, d, generator=generator)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    return direction * torch.rand(n, 1, generator=generator) ** (1 / d)


class Ansatz(nn.Module):
    """``u(x) = (1 - |x|^2) g(x)`` with an MLP ``g``: zero on the unit sphere."""

    def __init__(self, d: int, width: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for size in [d] + [width] * (depth - 1):
            layers += [nn.Linear(size, width), nn.Tanh()]
        self.g = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (1 - x.square().sum(-1, keepdim=True)) * self.g(x)


def laplacian_of(u: nn.Module, estimator: str, samples: int) -> do.DifferentialOperator:
    if estimator == "exact":
        return do.Laplacian(u)
    return do.Laplacian(u, estimator=estimator, samples=samples)


def relative_error(u: nn.Module, problem: TwoBody, x: torch.Tensor) -> float:
    with torch.no_grad():
        exact = problem.solution(x)
        return ((u(x) - exact).norm() / exact.norm()).item()


def train(d: int, estimator: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Train on ``d`` dimensions; returns the relative L2 error and the seconds spent."""
    torch.manual_seed(0)
    points = torch.Generator().manual_seed(1)
    problem = TwoBody(d, torch.Generator().manual_seed(2))
    u = Ansatz(d, args.width, args.depth).to(device)
    residual = laplacian_of(u, estimator, args.samples) + (lambda x: problem.forcing(x))
    optimizer = torch.optim.Adam(u.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps)
    test = uniform_ball(args.test_points, d, points).to(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        x = uniform_ball(args.batch, d, points).to(device)
        loss = residual(x).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return {"d": d, "estimator": estimator, "error": relative_error(u, problem, test), "seconds": seconds,
            "loss": loss.item()}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dims", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--estimators", nargs="+", default=["hutchinson"], help="hutchinson, coordinates or exact")
    parser.add_argument("--samples", type=int, default=8, help="directions per point")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=3, help="hidden layers")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--test-points", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a smoke test of the script")
    args = parser.parse_args(argv)
    if args.quick:
        args.dims, args.steps, args.batch, args.width, args.samples, args.test_points = [5], 3, 8, 8, 2, 16
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse(argv)
    device = torch.device(args.device)
    print(
        f"Poisson -Δu = f on the unit ball, MLP width {args.width} x {args.depth} tanh, batch {args.batch}, "
        f"{args.steps} Adam steps, S={args.samples}, {device}, {torch.get_num_threads()} threads"
    )
    print(f"{'d':>6} | {'Laplacian':>11} | {'rel. L2 error':>13} | {'final loss':>10} | {'time':>8} | {'per step':>9}")
    rows = []
    for d in args.dims:
        for estimator in args.estimators:
            row = train(d, estimator, args, device)
            rows.append(row)
            print(
                f"{d:>6} | {estimator:>11} | {row['error']:>13.3e} | {row['loss']:>10.3e} | {row['seconds']:>7.1f}s | "
                f"{row['seconds'] / args.steps * 1e3:>7.1f}ms",
                flush=True,
            )
    return rows


if __name__ == "__main__":
    main()
