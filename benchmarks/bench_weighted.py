"""Cost of the 0.2 diffusion operators: the weighted Laplacian tr(S S^T H) and the Hutchinson divergence.

Part 1 times one training step (forward, ``mean(op(x)^2)``, backward to the
parameters) of the weighted Laplacian of a tanh MLP for each d and rank r of
``S``: diffops (``auto`` and each engine) against the full Hessian contracted
with ``S S^T``, by ``torch.func`` (``vmap(hessian)``) and by nested autograd.
Part 2 times the Hutchinson divergence with S probes against the exact
divergence of a field ``d -> d``.  Part 3 times each engine on the directional
requests (the measurements behind ``engines.choice.along_cost``).  The works take turns within each round and
every ratio is the median over rounds of the paired per-round ratio, so load
from other processes falls on both sides of a ratio alike.  Peak memory is the
tensor storage a step allocates.

    python benchmarks/bench_weighted.py [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, hessian, vmap

import diffops as do

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import cpu_model, peak_bytes, synchronize, tanh_mlp  # noqa: E402


def paired_seconds(works: dict[str, Callable[[], object]], device: torch.device, repeats: int) -> dict[str, list]:
    """Per-round seconds of each work, taking turns within each round, after one warm-up round."""
    times: dict[str, list] = {name: [] for name in works}
    for round_ in range(repeats + 1):
        for name, work in works.items():
            synchronize(device)
            start = time.perf_counter()
            work()
            synchronize(device)
            if round_:
                times[name].append(time.perf_counter() - start)
    return times


def median_ratio(times: dict[str, list], numerator: str, denominator: str) -> float:
    """Median over rounds of ``numerator / denominator`` measured in the same round."""
    return statistics.median(a / b for a, b in zip(times[numerator], times[denominator]))


def training_step(params: list[torch.Tensor], loss_of_batch: Callable[[], torch.Tensor]) -> None:
    for p in params:
        p.grad = None
    loss_of_batch().backward()


def weighted_by_torch_func(u: nn.Module, x: torch.Tensor, ss: torch.Tensor) -> torch.Tensor:
    """``(N,)``: ``vmap(hessian)`` of the scalar network, contracted with ``S S^T``."""
    params = dict(u.named_parameters())
    single = lambda y: functional_call(u, params, (y,)).squeeze(-1)  # noqa: E731
    return torch.einsum("nij,ij->n", vmap(hessian(single))(x), ss)


def weighted_by_nested_autograd(u: nn.Module, x: torch.Tensor, ss: torch.Tensor) -> torch.Tensor:
    """``(N,)``: the Hessian row by row with ``torch.autograd.grad``, contracted with ``S S^T``."""
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(u(x).sum(), x, create_graph=True)
    rows = [torch.autograd.grad(g[:, i].sum(), x, create_graph=True)[0] for i in range(x.shape[1])]
    return torch.einsum("nji,ij->n", torch.stack(rows, 1), ss)


def weighted_row(d: int, r: int, args: argparse.Namespace, device: torch.device) -> dict:
    """Part 1, one row: seconds, paired ratios and peaks of every way to take tr(S S^T H)."""
    torch.manual_seed(0)
    u = tanh_mlp(d, args.width, args.depth).to(device)
    x = torch.randn(args.batch, d, device=device)
    s = torch.randn(d, r, device=device) / r**0.5
    ss = s @ s.T
    ops = {m: do.Laplacian(u, sigma=s, method=m) for m in ("auto",)}  # each engine apart: part 3
    losses = {f"diffops {m}": (lambda op=op: op(x).square().mean()) for m, op in ops.items()}
    losses["torch.func hessian"] = lambda: weighted_by_torch_func(u, x, ss).square().mean()
    if d <= args.autograd_max_d:
        losses["nested autograd"] = lambda: weighted_by_nested_autograd(u, x, ss).square().mean()
    params = list(u.parameters())
    steps = {name: (lambda loss=loss: training_step(params, loss)) for name, loss in losses.items()}
    times = paired_seconds(steps, device, args.repeats)
    row = {"d": d, "r": r, "seconds": {k: min(v) for k, v in times.items()}}
    row["engine"] = _chosen(ops["auto"], x)
    row["speedup vs torch.func"] = median_ratio(times, "torch.func hessian", "diffops auto")
    if "nested autograd" in times:
        row["speedup vs nested autograd"] = median_ratio(times, "nested autograd", "diffops auto")
    row["peak"] = {name: peak_bytes(step, device) for name, step in steps.items()}
    return row


def _chosen(op: do.Laplacian, x: torch.Tensor) -> str:
    """The engine ``auto`` tries first for this operator and input."""
    from diffops.engines import candidates

    return candidates("auto", op._request(x.shape[-1]).bind((x,), x), x.shape[-1], 1)[0]


def divergence_row(d: int, args: argparse.Namespace, device: torch.device) -> dict:
    """Part 2, one row: Hutchinson divergence with S probes against the exact divergence of a field d -> d."""
    torch.manual_seed(0)
    u = tanh_mlp(d, args.width, args.depth, outputs=d).to(device)
    x = torch.randn(args.divergence_batch, d, device=device)
    estimate = do.Divergence(u, estimator="hutchinson", samples=args.samples)
    exact = do.Divergence(u)
    losses = {"hutchinson": lambda: estimate(x).square().mean(), "u": lambda: u(x).square().mean()}
    if d <= args.exact_max_d:
        losses["exact"] = lambda: exact(x).square().mean()
    params = list(u.parameters())
    steps = {name: (lambda loss=loss: training_step(params, loss)) for name, loss in losses.items()}
    times = paired_seconds(steps, device, args.repeats)
    row = {"d": d, "seconds": {k: min(v) for k, v in times.items()}}
    row["hutchinson / u"] = median_ratio(times, "hutchinson", "u")
    if "exact" in times:
        row["exact / hutchinson"] = median_ratio(times, "exact", "hutchinson")
    row["peak"] = {name: peak_bytes(step, device) for name, step in steps.items()}
    return row


def engine_requests(args: argparse.Namespace) -> list[tuple[str, Callable]]:
    """Part 3's requests: ``(name, make(u, d, method) -> operator)``."""
    sigma = lambda d, r: torch.randn(d, r, device=args.device)  # noqa: E731
    requests = [
        ("(v·∇)u", lambda u, d, m: do.DirectionalDerivative(u, torch.randn(d, device=args.device), method=m)),
        ("(v·∇)²u", lambda u, d, m: do.DirectionalDerivative(u, torch.randn(d, device=args.device), order=2, method=m)),
    ]
    for r in (1, 2, 8):
        requests.append((f"tr(SSᵀ∇²u) r={r}", lambda u, d, m, r=r: do.Laplacian(u, sigma=sigma(d, r), method=m)))
    return requests


def engine_row(name: str, make: Callable, args: argparse.Namespace, device: torch.device) -> dict:
    """Part 3, one row: each engine's training step on one directional request of a scalar network at d = 16."""
    torch.manual_seed(0)
    d = 16
    u = tanh_mlp(d, args.width, args.depth).to(device)
    x = torch.randn(args.batch, d, device=device)
    params = list(u.parameters())
    ops = {m: make(u, d, m) for m in ("taylor", "func", "autograd")}
    steps = {m: (lambda op=op: training_step(params, lambda: op(x).square().mean())) for m, op in ops.items()}
    times = paired_seconds(steps, device, args.repeats)
    return {"request": name, "seconds": {m: min(t) for m, t in times.items()}}


def engine_table(rows: list[dict]) -> str:
    header = f"{'request':>18} | {'taylor':>9} | {'func':>9} | {'autograd':>9}"
    lines = [header, "-" * len(header)]
    for row in rows:
        times = [f"{row['seconds'][m] * 1e3:>7.1f}ms" for m in ("taylor", "func", "autograd")]
        cells = [f"{row['request']:>18}", *times]
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def weighted_table(rows: list[dict]) -> str:
    names = list(rows[0]["seconds"])
    columns = " | ".join(f"{n:>18}" for n in names)
    header = f"{'d':>4} | {'r':>3} | {columns} | auto engine | vs func | vs autograd"
    lines = [header, "-" * len(header)]
    for row in rows:
        cells = [f"{row['d']:>4}", f"{row['r']:>3}"]
        for name in names:
            if name in row["seconds"]:
                seconds, peak = row["seconds"][name], row["peak"][name] / 2**20
                cells.append(f"{seconds * 1e3:>8.1f}ms {peak:>6.0f}MB")
            else:
                cells.append(f"{'(skipped)':>18}")
        cells.append(f"{str(row['engine']):>11}")
        cells.append(f"{row['speedup vs torch.func']:>6.1f}x")
        vs = row.get("speedup vs nested autograd")
        cells.append(f"{vs:>10.1f}x" if vs else f"{'':>11}")
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def divergence_table(rows: list[dict], samples: int) -> str:
    header = (
        f"{'d':>6} | {'u step':>9} | {f'Hutch S={samples}':>11} | {'per probe':>9} | {'peak':>8} | "
        f"{'exact':>10} | {'peak':>8} | {'exact/Hutch':>11}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        seconds, peak = row["seconds"], row["peak"]
        cells = [
            f"{row['d']:>6}",
            f"{seconds['u'] * 1e3:>7.2f}ms",
            f"{seconds['hutchinson'] * 1e3:>9.2f}ms",
            f"{seconds['hutchinson'] / samples * 1e3:>7.3f}ms",
            f"{peak['hutchinson'] / 2**20:>6.1f}MB",
        ]
        if "exact" in seconds:
            cells += [
                f"{seconds['exact'] * 1e3:>8.1f}ms",
                f"{peak['exact'] / 2**20:>6.1f}MB",
                f"{row['exact / hutchinson']:>10.1f}x",
            ]
        else:
            cells += [f"{'(skipped)':>10}", f"{'':>8}", f"{'':>11}"]
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dims", type=int, nargs="+", default=[16, 64], help="d of the weighted Laplacian")
    parser.add_argument("--ranks", type=float, nargs="+", default=[1 / 8, 1 / 2, 1], help="r as fractions of d")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=4, help="hidden layers")
    parser.add_argument("--autograd-max-d", type=int, default=64, help="largest d for the nested-autograd Hessian")
    parser.add_argument("--divergence-dims", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--divergence-batch", type=int, default=64)
    parser.add_argument("--samples", type=int, default=8, help="Hutchinson probes S")
    parser.add_argument("--exact-max-d", type=int, default=1000, help="largest d for the exact divergence")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parts", nargs="+", default=["weighted", "divergence", "engines"])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a smoke test of the script")
    args = parser.parse_args(argv)
    if args.quick:
        args.dims, args.batch, args.width, args.depth, args.repeats = [8], 4, 8, 2, 1
        args.divergence_dims, args.divergence_batch, args.samples = [4, 8], 4, 2
    return args


def incrementally(measure: Callable, items: list, table: Callable[[list[dict]], str]) -> list[dict]:
    """``[measure(item) ...]``, printing each table line as soon as its row is measured."""
    rows: list[dict] = []
    for item in items:
        rows.append(measure(item))
        lines = table(rows).splitlines()
        print("\n".join(lines if len(rows) == 1 else lines[-1:]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    device = torch.device(args.device)
    where = cpu_model() if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"{where}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    result: dict = {}
    if "weighted" in args.parts:
        print(
            f"\nWeighted Laplacian training step, tanh MLP {args.depth} x {args.width}, batch {args.batch}, "
            f"float32; best of {args.repeats} ms and peak MB; speedups of diffops auto: medians of paired ratios"
        )
        ranks = [(d, max(1, round(f * d))) for d in args.dims for f in args.ranks]
        result["weighted"] = incrementally(lambda d_r: weighted_row(*d_r, args, device), ranks, weighted_table)
    if "divergence" in args.parts:
        print(
            f"\nDivergence training step, field d -> d, tanh MLP {args.depth} x {args.width}, batch "
            f"{args.divergence_batch}; exact/Hutch: median of paired ratios"
        )
        table = lambda rows: divergence_table(rows, args.samples)  # noqa: E731
        result["divergence"] = incrementally(lambda d: divergence_row(d, args, device), args.divergence_dims, table)
    if "engines" in args.parts:
        print(f"\nEach engine on directional requests, d = 16, batch {args.batch}: step, best of {args.repeats}")
        measure = lambda item: engine_row(*item, args, device)  # noqa: E731
        result["engines"] = incrementally(measure, engine_requests(args), engine_table)
    return result


if __name__ == "__main__":
    main()
