"""GPU training-step benchmarks: diffops against torch.func and nested autograd, side by side.

A training step is the operator's forward pass, an MSE loss and the backward
pass to the network's parameters (``bench_taylor.training_step``).  Within one
case every method runs in the same process, interleaved round by round
(``bench_taylor.time_rounds``: the device is synchronized around each step,
each round takes three steps per method and drops the first, warm-up steps
come before the rounds), and the table gives the median time of each method
and its paired ratio to diffops (the median over rounds of the ratio within a
round; above 1: diffops is faster).  Peak memory is
``torch.cuda.max_memory_allocated`` over one step beyond what is held before
it; on the CPU it is the peak of live tensor storage (``_measure.peak_bytes``).

Tables (``--tables``; the quick sizes are for a smoke run on the CPU):

* ``laplacian``: the README's, tanh MLP 4x128, batch 256, d = 2, 16, 64.
* ``jet``: jet for PyTorch's configuration, tanh MLP 768-768-512-512-1,
  d = 50, batch 256, 1024, 2048.
* ``order``: d^k u/dx^k, tanh MLP 4x64, d = 1, batch 1024, k = 1..6.
* ``compile``: diffops eager against diffops and ``vmap(hessian)`` under
  ``torch.compile`` on the Laplacian (d = 16, 64) and jet (batch 1024)
  cases; the first compiled step's time (compilation) is reported apart.

Methods: ``diffops`` (``method="auto"``), ``func-hessian`` (``torch.func``
``vmap(hessian)`` and its trace), ``func-jvp`` (``torch.func`` nested ``jvp``
along each coordinate, vmapped over the coordinates), ``autograd`` (nested
``torch.autograd.grad``).  The baselines are written from torch primitives,
independently of the package.

Usage::

    python benchmarks/bench_gpu.py [--device cuda] [--quick] [--tables laplacian jet order compile]
        [--json results.json] [--budget SECONDS]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.func import jvp, vmap

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import cpu_model, peak_bytes, synchronize, tanh_mlp  # noqa: E402
from bench_taylor import (  # noqa: E402 - the shared baselines and the timing harness
    func_laplacian,
    nested_laplacian,
    nested_partial,
    paired_ratio,
    time_rounds,
    training_step,
)

import diffops as do  # noqa: E402 - bench_taylor puts the project on the path

TABLES = ("laplacian", "jet", "order", "compile")


@dataclass(frozen=True)
class Sizes:
    """The problem sizes of one run."""

    laplacian_widths: tuple[int, ...] = (128,) * 4
    laplacian_batch: int = 256
    laplacian_dims: tuple[int, ...] = (2, 16, 64)
    jet_widths: tuple[int, ...] = (768, 768, 512, 512)
    jet_dim: int = 50
    jet_batches: tuple[int, ...] = (256, 1024, 2048)
    order_widths: tuple[int, ...] = (64,) * 4
    order_batch: int = 1024
    orders: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
    compile_dims: tuple[int, ...] = (16, 64)
    compile_batches: tuple[int, ...] = (1024,)
    repeats: int = 15


QUICK = Sizes((16, 16), 16, (3,), (16, 16, 8, 8), 5, (8,), (16, 16), 32, (1, 3), (4,), (8,), 3)


# -- the torch.func nested-jvp baselines: (B, d) -> (B, 1) ---------------------------------


def _directional(f: Callable, x: torch.Tensor, v: torch.Tensor, order: int) -> torch.Tensor:
    """``d^order/dt^order f(x + t v)`` at ``t = 0``, by ``order`` nested ``jvp``."""
    g = f
    for _ in range(order):
        g = lambda y, g=g: jvp(g, (y,), (v,))[1]  # noqa: E731
    return g(x)


def func_jvp_laplacian(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Sum over the coordinates of the second derivative along each: forward over forward, vmapped."""
    n, d = x.shape
    units = torch.eye(d, dtype=x.dtype, device=x.device)[:, None, :].expand(d, n, d)
    return vmap(lambda v: _directional(net, x, v, 2))(units).sum(0)


def func_jvp_partial(net: nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    """``d^k u / dx_0^k`` by k nested ``jvp`` along the first coordinate."""
    v = torch.zeros_like(x)
    v[:, 0] = 1
    return _directional(net, x, v, k)


# -- the cases ------------------------------------------------------------------------------


@dataclass
class Case:
    """One row: the network, its input and the derivative each method computes."""

    name: str
    net: nn.Module
    x: torch.Tensor
    methods: dict[str, Callable[[torch.Tensor], torch.Tensor]]


def laplacian_case(name: str, widths: tuple[int, ...], d: int, batch: int, device: str) -> Case:
    torch.manual_seed(0)
    net = tanh_mlp(d, widths).to(device)
    x = torch.rand(batch, d, device=device) * 2 - 1
    methods = {
        "diffops": do.Laplacian(net),
        "func-hessian": lambda x: func_laplacian(net, x),
        "func-jvp": lambda x: func_jvp_laplacian(net, x),
        "autograd": lambda x: nested_laplacian(net, x),
    }
    return Case(name, net, x, methods)


def order_case(k: int, sizes: Sizes, device: str) -> Case:
    torch.manual_seed(0)
    net = tanh_mlp(1, sizes.order_widths).to(device)
    x = torch.rand(sizes.order_batch, 1, device=device) * 2 - 1
    methods = {
        "diffops": do.Derivative(net, wrt=0, order=k),
        "func-jvp": lambda x: func_jvp_partial(net, x, k),
        "autograd": lambda x: nested_partial(net, x, (0,) * k),
    }
    return Case(f"k={k}", net, x, methods)


def cases(table: str, sizes: Sizes, device: str) -> list[Callable[[], Case]]:
    """The rows of ``table``, built lazily (each only when it runs, so memory is not held between rows)."""
    if table == "laplacian":
        return [
            lambda d=d: laplacian_case(f"d={d}", sizes.laplacian_widths, d, sizes.laplacian_batch, device)
            for d in sizes.laplacian_dims
        ]
    if table == "jet":
        return [
            lambda b=b: laplacian_case(f"B={b}", sizes.jet_widths, sizes.jet_dim, b, device) for b in sizes.jet_batches
        ]
    if table == "order":
        return [lambda k=k: order_case(k, sizes, device) for k in sizes.orders]
    compiled = [
        lambda d=d: laplacian_case(f"4x{sizes.laplacian_widths[0]} d={d}", sizes.laplacian_widths, d,
                                   sizes.laplacian_batch, device)
        for d in sizes.compile_dims
    ] + [
        lambda b=b: laplacian_case(f"jet d={sizes.jet_dim} B={b}", sizes.jet_widths, sizes.jet_dim, b, device)
        for b in sizes.compile_batches
    ]  # fmt: skip
    return [lambda make=make: compile_case(make()) for make in compiled]


def compile_case(case: Case) -> Case:
    """diffops eager, and diffops and ``vmap(hessian)`` to be compiled (marked by the ``+compile`` suffix)."""
    methods = {
        "diffops": case.methods["diffops"],
        "diffops+compile": case.methods["diffops"],
        "func-hessian+compile": case.methods["func-hessian"],
    }
    return Case(case.name, case.net, case.x, methods)


# -- measuring ------------------------------------------------------------------------------


def measure(case: Case, repeats: int, device: str, memory: bool = True, backend: str = "inductor") -> dict:
    """Median step times, paired ratios to diffops, peak memory and compilation time of one case.

    ``backend``: the ``torch.compile`` backend of the ``+compile`` methods.
    """
    steps, compile_seconds = {}, {}
    torch._dynamo.reset()  # fresh, static-shape graphs for each case, as a training run compiles them
    for name, derivative in case.methods.items():
        compiled = name.endswith("+compile")
        steps[name] = training_step(case.net, derivative, case.x, compile=compiled and backend)
        if compiled:
            compile_seconds[name] = _seconds(steps[name], device)
    rounds = time_rounds(steps, repeats, device)
    row = {
        "case": case.name,
        "ms": {name: 1e3 * statistics.median(t) for name, t in rounds.items()},
        "ratio_to_diffops": {name: paired_ratio(rounds, name, "diffops") for name in rounds if name != "diffops"},
        "peak_mib": {},
        "compile_s": compile_seconds,
        "rounds_ms": {name: [1e3 * s for s in t] for name, t in rounds.items()},
    }
    for name, step in steps.items() if memory else ():
        if device.startswith("cuda") or not name.endswith("+compile"):  # the CPU tracker cannot see compiled code
            row["peak_mib"][name] = peak_bytes(step, torch.device(device)) / 2**20
    return row


def _seconds(step: Callable[[], None], device: str) -> float:
    synchronize(torch.device(device))
    start = time.perf_counter()
    step()
    synchronize(torch.device(device))
    return time.perf_counter() - start


# -- reporting ------------------------------------------------------------------------------


def hardware(device: str) -> dict:
    """The device's model and the software versions, for the heading of every table."""
    info = {"device": device, "torch": torch.__version__, "python": platform.python_version()}
    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        properties = torch.cuda.get_device_properties(index)
        info.update(
            model=torch.cuda.get_device_name(index),
            cuda=torch.version.cuda,
            memory_gib=round(properties.total_memory / 2**30, 1),
            capability=".".join(map(str, torch.cuda.get_device_capability(index))),
        )
    else:
        info.update(model=cpu_model(), threads=torch.get_num_threads())
    return info


def markdown(title: str, rows: list[dict]) -> str:
    """A Markdown table: times, ratios to diffops, peak memory and compilation time of each method."""
    methods = list(rows[0]["ms"])
    others = [m for m in methods if m != "diffops"]
    memory = any(row["peak_mib"] for row in rows)
    compiled = any(row["compile_s"] for row in rows)
    header = ["case", *(f"{m} ms" for m in methods), *(f"{m} / diffops" for m in others)]
    header += [f"{m} MiB" for m in methods] * memory + [f"{m} compile s" for m in rows[0]["compile_s"]] * compiled
    lines = [f"\n{title}\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["case"], *(_number(row["ms"].get(m)) for m in methods)]
        cells += [_number(row["ratio_to_diffops"].get(m), "x") for m in others]
        cells += [_number(row["peak_mib"].get(m), digits=1) for m in methods] * memory
        cells += [_number(s, digits=1) for s in row["compile_s"].values()] * compiled
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _number(value: float | None, unit: str = "", digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def titles(sizes: Sizes) -> dict[str, str]:
    layers = lambda widths: "-".join(map(str, (*widths, 1)))  # noqa: E731
    return {
        "laplacian": f"Laplacian, tanh MLP {layers(sizes.laplacian_widths)}, batch {sizes.laplacian_batch}",
        "jet": f"Laplacian, jet's configuration: tanh MLP {layers(sizes.jet_widths)}, d = {sizes.jet_dim}",
        "order": f"d^k u/dx^k, tanh MLP {layers(sizes.order_widths)}, d = 1, batch {sizes.order_batch}",
        "compile": f"torch.compile of the Laplacian step (eager diffops as the base), batch "
        f"{sizes.laplacian_batch} on {layers(sizes.laplacian_widths)}",
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run")
    parser.add_argument("--tables", nargs="+", choices=TABLES, default=list(TABLES))
    parser.add_argument("--repeats", type=int, default=None, help="rounds per case (default 15, quick 3)")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory step")
    parser.add_argument("--json", type=Path, default=None, help="also write every row, with its rounds, here")
    parser.add_argument("--budget", type=float, default=None, help="seconds; later cases are skipped past it")
    parser.add_argument("--compile-backend", default="inductor", help="'eager' only traces: a fast smoke run")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
    sizes = QUICK if args.quick else Sizes()
    repeats = args.repeats or sizes.repeats
    start = time.perf_counter()
    results = {"hardware": hardware(args.device), "sizes": asdict(sizes), "repeats": repeats, "tables": {}}
    print(" ".join(f"{key}={value}" for key, value in results["hardware"].items()) + " float32", flush=True)
    for table in args.tables:
        rows = results["tables"].setdefault(table, [])
        for make in cases(table, sizes, args.device):
            if args.budget is not None and time.perf_counter() - start > args.budget:
                results.setdefault("skipped", []).append(table)
                print(f"{table}: the remaining cases are skipped (past the budget of {args.budget:.0f} s)")
                break
            rows.append(measure(make(), repeats, args.device, args.memory, args.compile_backend))
            if args.json:  # rewritten after every row, so that a run stopped by a timeout keeps what it measured
                args.json.write_text(json.dumps(results, indent=1))
        if rows:
            print(markdown(f"{titles(sizes)[table]} ({results['hardware']['model']})", rows), flush=True)
    return results


if __name__ == "__main__":
    main()
