"""Gauss-Newton on a Poisson residual with ``parameter_jacobian``, timed against a per-sample loop.

The residual ``r(x) = Δu(x) - f(x)`` of ``Δu = f`` on the unit square, with
``u* = sin(πx) sin(πy)`` and the ansatz ``u = x(1-x)y(1-y) g(x, y)``, is
differentiated with respect to every parameter of ``g`` at N collocation
points: ``J = parameter_jacobian(residual, x)``, flattened to ``(N, P)``.
``J J^T`` is the neural tangent kernel of the residual; a damped Gauss-Newton
(Levenberg-Marquardt) step in kernel form is ``δ = -J^T (J J^T + λ I)^{-1} r``,
with λ raised until the step lowers the loss and lowered after it does.

First ``J`` is computed by ``parameter_jacobian`` (vmap over samples) and by a
Python loop of ``torch.autograd.grad``, one sample at a time; the two are
compared and timed.  Then a few Gauss-Newton steps are taken.

    python benchmarks/gauss_newton_poisson.py [--device cuda] [--quick]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

import diffops as do

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import best_seconds  # noqa: E402


def source(x: torch.Tensor) -> torch.Tensor:
    """``f = Δu*``: ``(N, 2) -> (N, 1)``."""
    return -2 * math.pi**2 * exact_solution(x)


def exact_solution(x: torch.Tensor) -> torch.Tensor:
    return (math.pi * x).sin().prod(-1, keepdim=True)


class Ansatz(nn.Module):
    """``u = x(1-x) y(1-y) g(x, y)``: zero on the boundary of the unit square."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.g = nn.Sequential(nn.Linear(2, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * (1 - x)).prod(-1, keepdim=True) * self.g(x)


def jacobian_matrix(residual: do.DifferentialOperator, x: torch.Tensor) -> torch.Tensor:
    """``(N, P)``: the per-sample parameter Jacobians, flattened in ``named_parameters`` order."""
    blocks = do.parameter_jacobian(residual, x)
    return torch.cat([block.reshape(x.shape[0], -1) for block in blocks.values()], dim=1)


def jacobian_by_loop(residual: do.DifferentialOperator, x: torch.Tensor) -> torch.Tensor:
    """The same ``(N, P)`` matrix, one ``torch.autograd.grad`` per sample."""
    params = [p for p in residual.parameters() if p.requires_grad]
    rows = []
    for n in range(x.shape[0]):
        value = residual(x[n : n + 1]).sum()
        grads = torch.autograd.grad(value, params, allow_unused=True, materialize_grads=True)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


def mean_square(residual: do.DifferentialOperator, x: torch.Tensor) -> float:
    return residual(x).square().mean().item()


def levenberg_marquardt_step(residual: do.DifferentialOperator, x: torch.Tensor, damping: float) -> float:
    """``θ <- θ - J^T (J J^T + λ I)^{-1} r`` (kernel form, N < P); returns the next ``λ``."""
    params = [p for p in residual.parameters() if p.requires_grad]
    theta = parameters_to_vector(params).detach()
    r = residual(x).detach().reshape(-1)
    j = jacobian_matrix(residual, x)
    kernel = j @ j.T  # the residual's neural tangent kernel, (N, N)
    eye = torch.eye(len(r), dtype=r.dtype, device=r.device)
    before = r.square().mean().item()
    for _ in range(12):
        step = j.T @ torch.linalg.solve(kernel + damping * eye, r)
        vector_to_parameters(theta - step, params)
        if mean_square(residual, x) < before:
            return damping / 3
        damping *= 10
    vector_to_parameters(theta, params)
    return damping


def relative_error(u: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        exact = exact_solution(x)
        return ((u(x) - exact).norm() / exact.norm()).item()


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--points", type=int, default=256, help="collocation points N")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--steps", type=int, default=15, help="Gauss-Newton steps")
    parser.add_argument("--damping", type=float, default=1e-3, help="initial λ")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a smoke test of the script")
    args = parser.parse_args(argv)
    if args.quick:
        args.points, args.width, args.steps, args.repeats = 8, 4, 2, 1
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    u = Ansatz(args.width).double().to(device)
    residual = do.Laplacian(u) - source
    x = torch.rand(args.points, 2, dtype=torch.float64, device=device)
    test = torch.rand(4 * args.points, 2, dtype=torch.float64, device=device)

    vmapped, looped = jacobian_matrix(residual, x), jacobian_by_loop(residual, x)  # also the warm-up
    works = {
        "parameter_jacobian": lambda: jacobian_matrix(residual, x),
        "autograd.grad loop": lambda: jacobian_by_loop(residual, x),
    }
    timings = best_seconds(works, device, args.repeats, warmup=0)
    print(f"J of the residual {residual}: {tuple(vmapped.shape)} (N samples x P parameters), {device}")
    print(f"max |J_vmap - J_loop| = {(vmapped - looped).abs().max().item():.2e}")
    for name, value in timings.items():
        print(f"  {name:>20}: {value * 1e3:9.1f} ms")
    print(f"  speed-up: {timings['autograd.grad loop'] / timings['parameter_jacobian']:.1f}x")

    print(f"{'step':>4} | {'mean r^2':>10} | {'rel. L2 error':>13} | {'damping':>8}")
    damping = args.damping
    for step in range(args.steps + 1):
        loss = mean_square(residual, x)
        print(f"{step:>4} | {loss:>10.3e} | {relative_error(u, test):>13.3e} | {damping:>8.1e}")
        if step < args.steps:
            damping = levenberg_marquardt_step(residual, x, damping)
    return {"timings": timings, "loss": loss, "error": relative_error(u, test)}


if __name__ == "__main__":
    main()
