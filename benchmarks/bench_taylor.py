"""Training-step benchmark of the Taylor engine against nested autograd, torch.func and folx.

A training step is: the operator's forward pass, an MSE loss, and the backward
pass to the network's parameters, on a tanh MLP.  Every method of a table runs
in one process, interleaved round by round, and the tables print the median
time of each and its ratio to ``diffops`` with ``method="auto"``, the median
over rounds of the ratio within a round (paired, so that other work on the
machine, which slows every method of a round alike, cancels):

1. Laplacian, MLP 4x128, B = 256, d = 2, 16, 64: diffops, nested
   ``torch.autograd.grad``, ``torch.func`` ``vmap(hessian)`` trace, folx.
2. d^k u / dx^k, MLP 4x64, d = 1, B = 1024, k = 1..6: diffops, nested autograd.
3. d^3 u / dx_0^2 dx_1 and the biharmonic (d = 2, MLP 4x64, B = 1024): diffops,
   nested autograd (sharing the lower derivatives).

The baselines are written here from torch primitives, independently of the
package.  folx (JAX's forward Laplacian) gets the same weights and a jitted
``value_and_grad`` step; it runs only if jax and folx import.

Peak memory is the extra memory one step needs beyond what is held before it.
On CUDA it is ``torch.cuda.max_memory_allocated`` over the step.  On CPU it is
the growth of the process's resident set: each method runs in a fresh
subprocess that takes one warm-up step, resets the kernel's high-water mark
(``/proc/self/clear_refs``), and reads ``VmHWM - VmRSS`` after one more step,
with glibc's mmap threshold fixed so that freed tensors go back to the system.
folx's memory is not reported: XLA keeps its buffers from one step to the
next, so the resident set does not show what a step needs.

Usage::

    python benchmarks/bench_taylor.py [--device cuda] [--threads 1] [--quick] [--compile]
        [--tables laplacian order mixed compile]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.func import hessian, vmap  # noqa: E402

import diffops as do  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import synchronize, tanh_mlp  # noqa: E402

Step = Callable[[], None]


@dataclass(frozen=True)
class Sizes:
    """The problem sizes of one run."""

    laplacian_width: int = 128
    laplacian_batch: int = 256
    laplacian_dims: tuple[int, ...] = (2, 16, 64)
    order_width: int = 64
    order_batch: int = 1024
    orders: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
    depth: int = 4
    repeats: int = 7


QUICK = Sizes(16, 16, (2, 4), 16, 32, (1, 3), 2, 2)
TABLES = ["laplacian", "order", "mixed"]


# -- the derivative each method computes: (B, d) -> (B, 1) -----------------------------


def grad(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(B, d)``: the per-sample gradient of ``y: (B,)``, kept differentiable."""
    return torch.autograd.grad(y.sum(), x, create_graph=True)[0]


def nested_laplacian(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    g = grad(net(x)[:, 0], x)
    return sum(grad(g[:, i], x)[:, i] for i in range(x.shape[1]))[:, None]


def func_laplacian(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    h = vmap(hessian(lambda xi: net(xi)[0]))(x)
    return h.diagonal(dim1=-2, dim2=-1).sum(-1, keepdim=True)


def nested_partial(net: nn.Module, x: torch.Tensor, index: tuple[int, ...]) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    y = net(x)[:, 0]
    for i in index:
        y = grad(y, x)[:, i]
    return y[:, None]


def nested_biharmonic(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """u_xxxx + 2 u_xxyy + u_yyyy, each gradient taken once and shared."""
    x = x.detach().requires_grad_(True)
    g = grad(net(x)[:, 0], x)
    u_xx, u_yy = grad(g[:, 0], x)[:, 0], grad(g[:, 1], x)[:, 1]
    third_x, third_y = grad(u_xx, x), grad(u_yy, x)
    u_xxxx = grad(third_x[:, 0], x)[:, 0]
    u_xxyy = grad(third_x[:, 1], x)[:, 1]
    u_yyyy = grad(third_y[:, 1], x)[:, 1]
    return (u_xxxx + 2 * u_xxyy + u_yyyy)[:, None]


def diffops_biharmonic(net: nn.Module) -> do.DifferentialOperator:
    return (
        do.Derivative(net, wrt=(0, 0, 0, 0))
        + 2 * do.Derivative(net, wrt=(0, 0, 1, 1))
        + do.Derivative(net, wrt=(1,) * 4)
    )


def training_step(
    net: nn.Module, derivative: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, compile: bool | str = False
) -> Step:
    """One step: the derivative, an MSE loss against a fixed target, gradients to the parameters.

    With ``compile``, ``torch.compile`` compiles the loss (and, through AOT autograd, its backward);
    a string names the backend (default ``"inductor"``).
    """
    target = torch.linspace(-1, 1, x.shape[0], device=x.device)[:, None]
    loss = lambda x: ((derivative(x) - target) ** 2).mean()  # noqa: E731
    if compile:
        loss = torch.compile(loss, backend=compile if isinstance(compile, str) else "inductor")

    def step() -> None:
        for p in net.parameters():
            p.grad = None
        loss(x).backward()

    return step


# -- the cases of each table --------------------------------------------------------------


def laplacian_methods(net: nn.Module) -> dict[str, Callable]:
    return {
        "diffops": do.Laplacian(net),
        "autograd": lambda x: nested_laplacian(net, x),
        "func": lambda x: func_laplacian(net, x),
    }


def order_methods(net: nn.Module, k: int) -> dict[str, Callable]:
    return {"diffops": do.Derivative(net, wrt=0, order=k), "autograd": lambda x: nested_partial(net, x, (0,) * k)}


def mixed_methods(net: nn.Module, case: str) -> dict[str, Callable]:
    if case == "d3u/dx0^2dx1":
        return {"diffops": do.Derivative(net, wrt=(0, 0, 1)), "autograd": lambda x: nested_partial(net, x, (0, 0, 1))}
    return {"diffops": diffops_biharmonic(net), "autograd": lambda x: nested_biharmonic(net, x)}


def build(table: str, case: str, sizes: Sizes, device: str) -> tuple[nn.Module, dict[str, Step], torch.Tensor]:
    """The network, one training step per method, and the input of one case of a table."""
    torch.manual_seed(0)
    if table == "laplacian":
        d, width, batch = int(case), sizes.laplacian_width, sizes.laplacian_batch
    else:
        d, width, batch = (1 if table == "order" else 2), sizes.order_width, sizes.order_batch
    net = tanh_mlp(d, width, sizes.depth).to(device)
    x = torch.rand(batch, d, device=device) * 2 - 1
    methods = {
        "laplacian": lambda: laplacian_methods(net),
        "order": lambda: order_methods(net, int(case)),
        "mixed": lambda: mixed_methods(net, case),
    }[table]()
    return net, {name: training_step(net, f, x) for name, f in methods.items()}, x


# -- timing and memory ----------------------------------------------------------------------


def compile_table(args: argparse.Namespace, sizes: Sizes) -> list[dict]:
    """The Taylor Laplacian step eager and under ``torch.compile`` (compilation excluded from the times)."""
    rows = []
    for d in sizes.laplacian_dims:
        net, _, x = build("laplacian", str(d), sizes, args.device)
        op = do.Laplacian(net, method="taylor")
        steps = {"eager": training_step(net, op, x), "compiled": training_step(net, op, x, compile=True)}
        rows.append(timed_row(str(d), steps, sizes.repeats, args.device))
    return rows


def timed_row(case: str, steps: dict[str, Step], repeats: int, device: str) -> dict:
    """One table row: the rounds of :func:`time_rounds`, their medians, and room for memory."""
    rounds = time_rounds(steps, repeats, device)
    return {"case": case, "time": _medians(rounds), "rounds": rounds, "memory": {}}


def time_rounds(steps: dict[str, Step], repeats: int, device: str, block: int = 3) -> dict[str, list[float]]:
    """Seconds per step of each method in each of ``repeats`` rounds.

    In each round every method takes ``block`` steps back to back, as in a
    training loop, and its time in the round is the mean of those steps but the
    first: the first pays for the memory the previous method left (glibc
    returns freed blocks to the system, so the first step after another
    method's faults its pages in again).  The order of the methods is shuffled
    each round (the same seed each run): in a fixed order the method after the
    one that takes the most memory pays for it in every round, beyond the first
    step (diffops ``auto``, after ``torch.func``, ran 1.06-1.22x as long as the
    Taylor engine, the same code, on four residuals of ``residuals.py``).
    """
    for step in steps.values():
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    order, shuffle = list(steps), random.Random(0).shuffle
    for _ in range(repeats):
        shuffle(order)
        for name in order:
            step = steps[name]
            counted = []
            for i in range(block):
                synchronize(torch.device(device))
                start = time.perf_counter()
                step()
                synchronize(torch.device(device))
                if i:
                    counted.append(time.perf_counter() - start)
            times[name].append(statistics.fmean(counted))
    return times


def time_side_by_side(steps: dict[str, Step], repeats: int, device: str, block: int = 3) -> dict[str, float]:
    """Median seconds per step of each method over the rounds of :func:`time_rounds`."""
    return _medians(time_rounds(steps, repeats, device, block))


def paired_ratio(rounds: dict[str, list[float]], numerator: str, denominator: str) -> float | None:
    """The median over rounds of ``time[numerator] / time[denominator]`` within a round.

    The methods of one round run within a second or so of each other, so the
    other work on a shared machine slows them alike and cancels in the ratio;
    a ratio of medians would mix rounds taken under different loads.
    """
    if numerator not in rounds or denominator not in rounds:
        return None
    return statistics.median(a / b for a, b in zip(rounds[numerator], rounds[denominator]))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def step_memory(step: Step, device: str) -> int:
    """Bytes one step needs beyond what is held before it (see the module docstring)."""
    step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
    before = _status_kib("VmRSS")
    step()
    return (_status_kib("VmHWM") - before) * 1024


def memory_in_subprocess(args: argparse.Namespace, table: str, case: str, method: str) -> int | None:
    """``step_memory`` of one method, in a fresh interpreter so that nothing else is held."""
    command = [sys.executable, __file__, "--probe", json.dumps([table, case, method]), "--device", args.device]
    command += ["--quick"] * args.quick + ["--threads", str(args.threads)] * (args.threads is not None)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        print(f"  (memory of {method} on {table} {case} failed: {result.stderr.strip()[-300:]})")
        return None
    return int(result.stdout.strip().splitlines()[-1])


def probe(args: argparse.Namespace) -> None:
    table, case, method = json.loads(args.probe)
    sizes = QUICK if args.quick else Sizes()
    _, steps, _ = build(table, case, sizes, args.device)
    print(step_memory(steps[method], args.device))


# -- folx -------------------------------------------------------------------------------------


def folx_step(net: nn.Module, x: torch.Tensor) -> Step | None:
    """A jitted JAX training step of the folx forward Laplacian on ``net``'s weights, or None."""
    try:
        import folx
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    layers = [m for m in net if isinstance(m, nn.Linear)]
    params = [
        (jnp.asarray(m.weight.detach().cpu().numpy().T), jnp.asarray(m.bias.detach().cpu().numpy())) for m in layers
    ]
    xs = jnp.asarray(x.cpu().numpy())
    target = jnp.linspace(-1, 1, x.shape[0])

    def u(params: list, z: jnp.ndarray) -> jnp.ndarray:
        for w, b in params[:-1]:
            z = jnp.tanh(z @ w + b)
        w, b = params[-1]
        return (z @ w + b)[0]

    def loss(params: list) -> jnp.ndarray:
        laplacian = jax.vmap(lambda z: folx.forward_laplacian(lambda y: u(params, y))(z).laplacian)(xs)
        return jnp.mean((laplacian - target) ** 2)

    compiled = jax.jit(jax.value_and_grad(loss))
    return lambda: jax.block_until_ready(compiled(params))


# -- tables -----------------------------------------------------------------------------------


def print_table(
    title: str, rows: list[dict], columns: list[str], ratios: list[str], memory: bool, base: str = "diffops"
) -> None:
    """Median times, the paired ratios ``time[r] / time[base]`` (above 1: ``base`` is faster), memory if measured."""
    print(f"\n{title}")
    header = f"{'case':>16} " + " ".join(f"{c + ' ms':>13}" for c in columns)
    header += " " + " ".join(f"{r + '/' + base:>17}" for r in ratios)
    if memory:
        header += " " + " ".join(f"{c + ' MiB':>13}" for c in columns) + f" {'diffops/func mem':>17}"
    print(header)
    for row in rows:
        t = row["time"]
        line = f"{row['case']:>16} " + " ".join(f"{_ms(t.get(c)):>13}" for c in columns)
        line += " " + " ".join(f"{_ratio(paired_ratio(row['rounds'], r, base)):>17}" for r in ratios)
        if memory:
            m = row["memory"]
            line += " " + " ".join(f"{_mib(m.get(c)):>13}" for c in columns)
            line += f" {_ratio(_quotient(m.get('diffops'), m.get('func'))):>17}"
        print(line)


def _medians(rounds: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(t) for name, t in rounds.items()}


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.2f}"


def _mib(size: int | None) -> str:
    return "-" if size is None else f"{size / 2**20:.1f}"


def _quotient(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _ratio(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def run_table(args, table: str, cases: list[str], memory_methods: tuple[str, ...] = ()) -> list[dict]:
    sizes = QUICK if args.quick else Sizes()
    rows = []
    for case in cases:
        net, steps, x = build(table, case, sizes, args.device)
        if table == "laplacian" and args.device == "cpu" and args.folx and (folx := folx_step(net, x)) is not None:
            steps["folx"] = folx
        row = timed_row(case, steps, sizes.repeats, args.device)
        for method in memory_methods if args.memory else ():
            if method in steps:
                row["memory"][method] = memory_in_subprocess(args, table, case, method)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch (and XLA) CPU threads")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the memory subprocesses")
    parser.add_argument("--compile", action="store_true", help="add the torch.compile table (slow to compile)")
    parser.add_argument("--no-folx", dest="folx", action="store_false", help="skip the JAX comparison")
    parser.add_argument(
        "--tables",
        nargs="+",
        choices=[*TABLES, "compile"],
        default=TABLES,
        help="which tables to print (default: the first three; 'compile' is the --compile table)",
    )
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        os.environ.setdefault("XLA_FLAGS", f"--xla_cpu_multi_thread_eigen={'false' if args.threads == 1 else 'true'}")
    if args.probe:
        probe(args)
        return
    sizes = QUICK if args.quick else Sizes()
    print(f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} float32")
    print("diffops uses method='auto'; times: medians over rounds; ratios: medians of the ratios within a round")
    memory = ("diffops", "func", "autograd")  # XLA keeps its buffers between steps: RSS cannot see folx's
    if "laplacian" in args.tables:
        rows = run_table(args, "laplacian", [str(d) for d in sizes.laplacian_dims], memory)
        print_table(
            f"Laplacian, MLP {sizes.depth}x{sizes.laplacian_width}, B={sizes.laplacian_batch} (case = d)",
            rows, ["diffops", "autograd", "func", "folx"], ["autograd", "func", "folx"], args.memory,
        )  # fmt: skip
    if "order" in args.tables:
        rows = run_table(args, "order", [str(k) for k in sizes.orders], ("diffops", "autograd"))
        print_table(
            f"d^k u/dx^k, MLP {sizes.depth}x{sizes.order_width}, d=1, B={sizes.order_batch} (case = k)",
            rows, ["diffops", "autograd"], ["autograd"], False,
        )  # fmt: skip
        _print_memory(rows)
    if "mixed" in args.tables:
        rows = run_table(args, "mixed", ["d3u/dx0^2dx1", "biharmonic"])
        print_table(
            f"Mixed partials, MLP {sizes.depth}x{sizes.order_width}, d=2, B={sizes.order_batch}",
            rows, ["diffops", "autograd"], ["autograd"], False,
        )  # fmt: skip
    if args.compile or "compile" in args.tables:
        print_table(
            f"torch.compile of the Taylor Laplacian step, MLP {sizes.depth}x{sizes.laplacian_width}, "
            f"B={sizes.laplacian_batch} (case = d)",
            compile_table(args, sizes), ["eager", "compiled"], ["eager"], False, base="compiled",
        )  # fmt: skip


def _print_memory(rows: list[dict]) -> None:
    if any(row["memory"] for row in rows):
        cells = [
            f"k={row['case']}: {_mib(row['memory'].get('diffops'))}/{_mib(row['memory'].get('autograd'))}"
            for row in rows
        ]
        print("  peak step memory MiB, diffops/autograd: " + ", ".join(cells))


if __name__ == "__main__":
    main()
