"""The measurements behind ``method="auto"``: every engine on the cases of ``diffops/engines/choice.py``.

For each case (an operator on a tanh MLP, or a PDE residual of
``residuals.py``) the script times one training step (operator, MSE loss,
backward to the parameters) with each engine and with ``method="auto"``,
side by side as ``bench_taylor.py`` does, and prints the times next to the
cost model's units, the engine the model ranks first, the engine auto runs
(the model's pick, or on a close call the one it measured faster), and the
paired ratio of auto's step to the fastest engine's (median over rounds, with
the range), so a change to an engine shows at once whether auto still runs
the fastest.

Usage::

    python benchmarks/auto_rule.py [--threads 1] [--quick] [--cases residuals|operators|all]
        [--net raissi] [--batch 2000] [--dtype float32]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import residuals  # noqa: E402
import torch  # noqa: E402
from _measure import tanh_mlp  # noqa: E402
from bench_taylor import paired_ratio, time_rounds, training_step  # noqa: E402

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


def operator_case(name: str, quick: bool) -> tuple[dict, Request, int, int, do.DifferentialOperator]:
    """Training steps of each engine and of auto on one operator case, its request, d, output count and auto op."""
    d, outputs, width, batch, make = CASES[name]
    torch.manual_seed(0)
    width, batch = (8, 16) if quick else (width, batch)
    u = tanh_mlp(d, width, 4, outputs)
    x = torch.rand(batch, d) * 2 - 1
    steps = {e: training_step(u, loss_of(make(u, e)), x) for e in sorted(ENGINES)}
    auto = make(u, "auto")
    steps["auto"] = training_step(u, loss_of(auto), x)
    return steps, request_of(auto, d), d, outputs, auto


def residual_case(
    name: str, net: str, batch: int, dtype: torch.dtype
) -> tuple[dict, Request, int, int, do.DifferentialOperator]:
    """Training steps of each engine and of auto on one residual of ``residuals.py``, as :func:`operator_case`."""
    coords, outputs, _, _ = residuals.RESIDUALS[name]
    torch.manual_seed(0)
    u = residuals.NETS[net](len(coords), outputs).to(dtype)
    x = torch.rand(batch, len(coords), dtype=dtype)
    steps = {e: residuals.training_step(u, residuals.Residual(u, name, e), x) for e in sorted(ENGINES)}
    auto = residuals.Residual(u, name, "auto")
    steps["auto"] = residuals.training_step(u, auto, x)
    _, request = auto._derivative_spec(auto.spec, {})  # the request its derivatives() makes
    return steps, request, len(coords), outputs, auto


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and two cases, a smoke run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cases", choices=["residuals", "operators", "all"], default="all")
    parser.add_argument("--net", choices=list(residuals.NETS), default="raissi", help="the residuals' network")
    parser.add_argument("--batch", type=int, default=2000, help="the residuals' batch")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="the residuals' dtype")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    engines = sorted(ENGINES)
    makers: dict[str, Callable[[], tuple]] = {}
    if args.cases in ("operators", "all"):
        names = list(CASES)[:2] if args.quick else CASES
        makers |= {name: (lambda name=name: operator_case(name, args.quick)) for name in names}
    if args.cases in ("residuals", "all"):
        names = ["burgers"] if args.quick else residuals.RESIDUALS
        batch = 16 if args.quick else args.batch
        dtype = getattr(torch, args.dtype)
        makers |= {name: (lambda name=name: residual_case(name, args.net, batch, dtype)) for name in names}
    print(f"{residuals.cpu_model()}, torch={torch.__version__} threads={torch.get_num_threads()}; ms per training step")
    print(f"residuals on {args.net}, batch {args.batch}, {args.dtype}; operators as in CASES, float32")
    print(f"{'case':>26} " + " ".join(f"{e + ' ms':>12}" for e in [*engines, "auto"]), end="")
    print(f" {'fastest':>9} {'model':>9} {'auto':>9} {'auto/fastest':>20}  units")
    for name, make in makers.items():
        steps, request, d, outputs, auto = make()
        rounds = time_rounds(steps, 2 if args.quick else args.repeats, "cpu")
        times = {e: statistics.median(rounds[e]) for e in [*engines, "auto"]}
        fastest = min(engines, key=times.get)
        model = ranked(request, d, outputs)[0]  # the cost model's pick; auto times it against close ones
        (plan,) = {engines[0] for key, engines in auto._plans.items() if key[-1]}  # calls with grad
        ratios = sorted(a / b for a, b in zip(rounds["auto"], rounds[fastest]))
        units = {
            "taylor": taylor_cost(request, d),
            "autograd": autograd_cost(request, d, outputs),
            "func": 1.6 * autograd_cost(request, d, min(outputs, d)),
        }
        line = f"{name:>26} " + " ".join(f"{times[e] * 1e3:>12.2f}" for e in [*engines, "auto"])
        ratio = paired_ratio(rounds, "auto", fastest)
        line += f" {fastest:>9} {model:>9} {plan:>9} {ratio:>6.2f} [{ratios[0]:.2f}-{ratios[-1]:.2f}]  "
        line += " / ".join(f"{units[e]:.1f}" for e in engines)
        print(line, flush=True)


if __name__ == "__main__":
    main()
