"""The measurements behind ``method="auto"``: every engine on the cases of ``diffops/engines/choice.py``.

For each case (an operator on a tanh MLP) the script times one training step
(operator, MSE loss, backward to the parameters) with each engine, side by
side as ``bench_taylor.py`` does, and prints the times next to the cost
model's units and the engine it ranks first, so a change to an engine shows
at once whether the rule still picks the fastest.

Usage::

    python benchmarks/auto_rule.py [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _measure import tanh_mlp  # noqa: E402
from bench_taylor import time_side_by_side, training_step  # noqa: E402

import diffops as do  # noqa: E402
from diffops.engines import ENGINES, Request  # noqa: E402
from diffops.engines.choice import autograd_cost, ranked, taylor_cost  # noqa: E402

Operator = Callable[[torch.nn.Module, str], do.DifferentialOperator]

# name: (d, outputs, width, batch, operator); the operator's request is what choice.py costs
CASES: dict[str, tuple[int, int, int, int, Operator]] = {
    "du/dx": (2, 1, 128, 256, lambda u, m: do.Derivative(u, wrt=0, method=m)),
    "d2u/dx2": (2, 1, 128, 256, lambda u, m: do.Derivative(u, wrt=(0, 0), method=m)),
    "d2u/dxdy": (2, 1, 128, 256, lambda u, m: do.Derivative(u, wrt=(0, 1), method=m)),
    "d3u/dx2dy": (2, 1, 128, 256, lambda u, m: do.Derivative(u, wrt=(0, 0, 1), method=m)),
    "u, u_x, u_xx, u_t": (
        2, 1, 128, 256,
        lambda u, m: do.Derivatives(u, {"u": (), "u_x": 0, "u_xx": (0, 0), "u_t": 1}, method=m),
    ),
    "Jacobian d=16": (16, 1, 128, 256, lambda u, m: do.Jacobian(u, method=m)),
    "Jacobian d=4, 8 outputs": (4, 8, 128, 256, lambda u, m: do.Jacobian(u, method=m)),
    "Hessian d=4": (4, 1, 128, 256, lambda u, m: do.Hessian(u, method=m)),
    "Hessian d=16": (16, 1, 128, 256, lambda u, m: do.Hessian(u, method=m)),
    "Laplacian d=16, 3 outputs": (16, 3, 128, 256, lambda u, m: do.Laplacian(u, method=m)),
    **{
        f"d^{k}u/dx^{k}": (1, 1, 64, 1024, lambda u, m, k=k: do.Derivative(u, wrt=0, order=k, method=m))
        for k in range(1, 7)
    },
}  # fmt: skip


def loss_of(op: do.DifferentialOperator) -> Callable[[torch.Tensor], torch.Tensor]:
    """The operator's output as one ``(B, n)`` tensor (the partials of a dict side by side)."""

    def value(x: torch.Tensor) -> torch.Tensor:
        out = op(x)
        return torch.cat([v.reshape(len(x), -1) for v in (out.values() if isinstance(out, dict) else [out])], 1)

    return value


def request_of(op: do.DifferentialOperator, d: int) -> Request:
    """The engine request ``op`` makes, as ``auto`` ranks it."""
    if isinstance(op, do.Derivatives):
        return Request(frozenset(op.spec.values()))
    return op._request(d)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and two cases, a smoke run")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cases = dict(list(CASES.items())[:2]) if args.quick else CASES
    engines = sorted(ENGINES)
    print(f"torch={torch.__version__} threads={torch.get_num_threads()} float32, ms per training step")
    print(f"{'case':>26} " + " ".join(f"{e + ' ms':>12}" for e in engines) + f" {'fastest':>9} {'auto':>9}  units")
    for name, (d, outputs, width, batch, make) in cases.items():
        torch.manual_seed(0)
        width, batch = (8, 16) if args.quick else (width, batch)
        u = tanh_mlp(d, width, 4, outputs)
        x = torch.rand(batch, d) * 2 - 1
        steps = {e: training_step(u, loss_of(make(u, e)), x) for e in engines}
        times = time_side_by_side(steps, 2 if args.quick else args.repeats, "cpu")
        request = request_of(make(u, "auto"), d)
        units = {
            "taylor": taylor_cost(request, d),
            "autograd": autograd_cost(request, d, outputs),
            "func": 1.6 * autograd_cost(request, d, min(outputs, d)),
        }
        line = f"{name:>26} " + " ".join(f"{times[e] * 1e3:>12.2f}" for e in engines)
        line += f" {min(times, key=times.get):>9} {ranked(request, d, outputs)[0]:>9}  "
        line += " / ".join(f"{units[e]:.0f}" for e in engines)
        print(line)


if __name__ == "__main__":
    main()
