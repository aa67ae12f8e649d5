"""The compiled Taylor step on the CPU: its matrix products (the BLAS against oneDNN) and its kernels.

Compiled, a float32 ``Linear`` + activation of the Taylor engine runs its
products features first: ``W @ cols`` forward, ``W.T @ grad`` and
``grad @ cols.T`` backward (``diffops/engines/taylor/rules/traced.py``).
Large ones go through oneDNN (``diffops/engines/taylor/onednn.py``).  Two tables:

1. each product alone, in GFLOP/s, through ``torch.mm`` (the BLAS) and through
   diffops' oneDNN ops, best of ``--repeats`` runs;
2. the compiled training step of ``residuals.py`` (residual, MSE, backward) as
   diffops runs it and with one of its choices undone (:data:`VARIANTS`): every
   product through the BLAS (``onednn.LARGE`` raised), ``tanh``'s own kernel
   (``fused.TANH_BY_SIGMOID`` off), the coordinates' stack built in rows; and
   eager nested autograd, in interleaved rounds; ratios are medians [range] over
   the rounds of the ratio within a round.  MiB: growth of the resident set in
   one compiled step (``VmHWM``, in a fresh interpreter whose glibc maps and returns
   every block), since the tracker of tensors sees nothing inside compiled code.

Usage::

    python benchmarks/compiled_products.py [--threads 1] [--repeats 15] [--batches 2000 10000]
        [--residuals burgers allen_cahn] [--nets tanh64] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _measure import cpu_model  # noqa: E402
from bench_taylor import step_memory, time_rounds  # noqa: E402
from residuals import NETS, RESIDUALS, Residual, nested, ratio_cell, training_step  # noqa: E402

from diffops.engines.taylor import folding, onednn  # noqa: E402
from diffops.engines.taylor.rules import fused  # noqa: E402

BLAS_ONLY = 2**62  # onednn.LARGE that no product reaches

VARIANTS: dict[str, list[tuple[object, str, object]]] = {  # name: the (module, attribute, value) it sets
    "diffops": [],
    "BLAS": [(onednn, "LARGE", BLAS_ONLY)],
    "tanh kernel": [(fused, "TANH_BY_SIGMOID", False)],
    "stack in rows": [(folding, "traced", lambda: False)],  # input_stack as it was built before
}
SHIPPED = {(module, name): getattr(module, name) for settings in VARIANTS.values() for module, name, _ in settings}


def gflops(product, operands: tuple, flops: float, repeats: int) -> float:
    product(*operands)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        product(*operands)
        best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


def products_table(widths: list[int], columns: list[int], repeats: int) -> None:
    print("| width | columns | W @ cols: BLAS | oneDNN | grad @ cols.T: BLAS | oneDNN |")
    print("|---|---|---|---|---|---|")
    for width in widths:
        for n in columns:
            weight, cols, grad = torch.randn(width, width), torch.randn(width, n), torch.randn(width, n)
            flops = 2.0 * width * width * n
            cells = [
                gflops(torch.mm, (weight, cols), flops, repeats),
                gflops(onednn.columns_product, (weight, cols), flops, repeats),
                gflops(torch.mm, (grad, cols.T), flops, repeats),
                gflops(onednn.samples_product, (grad, cols), flops, repeats),
            ]
            print(f"| {width} | {n:,} | " + " | ".join(f"{c:.1f}" for c in cells) + " |", flush=True)


def step_mib(case: str, net_name: str, batch: int, variant: str) -> float:
    """Growth of the resident set in one step of ``variant``, MiB, measured in a fresh interpreter
    where glibc maps every block of 64 KiB or more afresh and returns it when freed, so that the
    high-water mark sees the step's own peak."""
    command = [sys.executable, __file__, "--probe", case, net_name, str(batch), variant]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return int(result.stdout.split()[-1]) / 2**20


def probe(case: str, net_name: str, batch: int, variant: str) -> None:
    """Print ``step_memory`` of one compiled step (``variant``: a name of :data:`VARIANTS`)."""
    use(variant)
    coords, outputs, _, _ = RESIDUALS[case]
    torch.manual_seed(0)
    net = NETS[net_name](len(coords), outputs)
    step = training_step(net, Residual(net, case), torch.rand(batch, len(coords)), compile=True)
    print(step_memory(step, "cpu"))


def use(variant: str) -> None:
    """Set what ``variant`` sets, and the rest as diffops ships it."""
    for (module, name), value in SHIPPED.items():
        setattr(module, name, value)
    for module, name, value in VARIANTS[variant]:
        setattr(module, name, value)


def with_variant(variant: str, step):
    """``step`` run with ``variant`` set: the compiled graphs guard on the settings, so each keeps its own."""

    def run() -> None:
        use(variant)
        step()

    return run


def steps_table(args: argparse.Namespace) -> None:
    others = [name for name in VARIANTS if name != "diffops"]
    header = "| residual | net | batch | " + " | ".join(f"{name} ms" for name in [*VARIANTS, "nested"])
    header += " | " + " | ".join(f"{name} / diffops" for name in [*others, "nested"])
    header += " | nested / BLAS | diffops MiB | BLAS MiB |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for net_name in args.nets:
        for batch in args.batches:
            for case in args.residuals:
                coords, outputs, _, _ = RESIDUALS[case]
                torch.manual_seed(0)
                net = NETS[net_name](len(coords), outputs)
                x = torch.rand(batch, len(coords))
                torch._dynamo.reset()
                steps = {
                    name: with_variant(name, training_step(net, Residual(net, case), x, compile=True))
                    for name in VARIANTS
                }
                steps["nested"] = training_step(net, nested(net, case), x)
                rounds = time_rounds(steps, args.repeats, "cpu")
                use("diffops")
                ms = {name: statistics.median(times) * 1e3 for name, times in rounds.items()}
                memory = {name: step_mib(case, net_name, batch, name) for name in ("diffops", "BLAS")}
                cells = [case, net_name, f"{batch:,}", *(f"{ms[m]:.2f}" for m in steps)]
                cells += [ratio_cell(rounds, name, "diffops") for name in [*others, "nested"]]
                cells += [ratio_cell(rounds, "nested", "BLAS"), *(f"{memory[m]:.1f}" for m in memory)]
                print("| " + " | ".join(cells) + " |", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--residuals", nargs="+", choices=list(RESIDUALS), default=["burgers", "allen_cahn"])
    parser.add_argument("--nets", nargs="+", choices=list(NETS), default=["tanh64"])
    parser.add_argument("--batches", nargs="+", type=int, default=[2000, 10000])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a smoke run: small products, one small step")
    parser.add_argument("--probe", nargs=4, metavar=("RESIDUAL", "NET", "BATCH", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.probe:
        case, net_name, batch, variant = args.probe
        probe(case, net_name, int(batch), variant)
        return
    widths, columns = ([20, 64, 128], [6000, 30000]) if not args.quick else ([64], [1 << 13])
    if args.quick:
        args.residuals, args.batches, args.repeats = ["burgers"], [3000], 1
    print(f"{cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), float32")
    print("products alone, GFLOP/s (best run):")
    products_table(widths, columns, args.repeats)
    print("compiled training steps, ms (median of interleaved rounds):")
    steps_table(args)


if __name__ == "__main__":
    main()
