"""Cost of the Hutchinson Laplacian against the exact one as the input dimension d grows.

For each d, one training step (forward and backward of ``mean(Δu(x)^2)``) of an
MLP ``d -> width -> ... -> 1`` is timed for the estimate with S directions and
for the exact Laplacian (d directions, only up to ``--exact-max-d``), beside a
plain forward and backward of ``u`` for scale.  Peak memory is the tensor
storage the step allocates (CUDA allocator statistics on a GPU).  All columns
come from one run, measured side by side.

    python benchmarks/bench_estimators.py [--device cuda] [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

import diffops as do

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import best_seconds, peak_bytes, tanh_mlp  # noqa: E402


def training_step(u: nn.Module, loss_of_batch) -> None:
    u.zero_grad(set_to_none=True)
    loss_of_batch().backward()


def measure(d: int, args: argparse.Namespace, device: torch.device) -> dict:
    """One table row: seconds and peak bytes per step for ``u``, the estimate and (if it fits) the exact Laplacian."""
    torch.manual_seed(0)
    u = tanh_mlp(d, args.width, args.depth).to(device)
    x = torch.randn(args.batch, d, device=device)
    losses = {
        "u": lambda: u(x).square().mean(),
        "hutchinson": lambda: estimate(x).square().mean(),
    }
    estimate = do.Laplacian(u, estimator="hutchinson", samples=args.samples, method=args.method)
    if d <= args.exact_max_d:
        exact = do.Laplacian(u, method=args.method)
        losses["exact"] = lambda: exact(x).square().mean()
    steps = {name: (lambda loss=loss: training_step(u, loss)) for name, loss in losses.items()}
    row = {"d": d, **best_seconds(steps, device, args.repeats)}
    for name, step in steps.items():
        row[name + " peak"] = peak_bytes(step, device)
    return row


def format_table(rows: list[dict], samples: int) -> str:
    header = (
        f"{'d':>6} | {'u step':>9} | {f'Hutch S={samples}':>11} | {'per dir.':>9} | {'vs d0':>6} | {'peak':>9} | "
        f"{'exact':>10} | {'per dir.':>9} | {'peak':>9} | {'exact/Hutch':>11}"
    )
    lines = [header, "-" * len(header)]
    first = rows[0]["hutchinson"]
    for row in rows:
        hutch, d = row["hutchinson"], row["d"]
        cells = [
            f"{d:>6}",
            f"{row['u'] * 1e3:>7.2f}ms",
            f"{hutch * 1e3:>9.2f}ms",
            f"{hutch / samples * 1e3:>7.3f}ms",
            f"{hutch / first:>5.2f}x",
            f"{row['hutchinson peak'] / 2**20:>7.1f}MB",
        ]
        if "exact" in row:
            cells += [
                f"{row['exact'] * 1e3:>8.1f}ms",
                f"{row['exact'] / d * 1e3:>7.3f}ms",
                f"{row['exact peak'] / 2**20:>7.1f}MB",
                f"{row['exact'] / hutch:>10.1f}x",
            ]
        else:
            cells += [f"{'(skipped)':>10}", f"{'':>9}", f"{'':>9}", f"{'':>11}"]
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--method", default="auto")
    parser.add_argument("--dims", type=int, nargs="+", default=[10, 100, 1000, 10000])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=3, help="hidden layers")
    parser.add_argument("--samples", type=int, default=16, help="Hutchinson directions S")
    parser.add_argument("--exact-max-d", type=int, default=1000, help="largest d for the exact Laplacian")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a smoke test of the script")
    args = parser.parse_args(argv)
    if args.quick:
        args.dims, args.batch, args.width, args.samples, args.repeats = [4, 8], 4, 8, 2, 1
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse(argv)
    device = torch.device(args.device)
    print(
        f"Laplacian training step, MLP width {args.width} x {args.depth} tanh, batch {args.batch}, "
        f"method={args.method!r}, {device}, {torch.get_num_threads()} threads"
    )
    rows = [measure(d, args, device) for d in args.dims]
    print(format_table(rows, args.samples))
    return rows


if __name__ == "__main__":
    main()
