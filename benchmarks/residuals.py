"""The PDE residuals PINN users train, one training step each: diffops against hand-written nested autograd.

Each residual is written three times: as a custom ``DifferentialOperator`` built from
``self.derivatives``, its linear part one combination (run with ``method="auto"``,
with every engine, and with the combination's terms asked apart), as the
nested ``torch.autograd.grad`` calls a user writes by hand, and with ``torch.func``
by hand (``vmap`` of ``jacrev`` and ``jacfwd``).  A training step is the residual,
an MSE loss and the backward pass to the parameters.
Methods are timed side by side, rounds interleaved (``bench_taylor.time_rounds``);
ratios are medians over rounds of the ratio within a round, so load from other
work on the machine cancels.

Residuals (coordinates; highest order): Burgers (x, t; 2), heat and wave
(x, y, t; 2), Allen-Cahn (x, t; 2), Poisson 2-D and 3-D (2), Navier-Stokes
(x, y, t; outputs u, v, p; 2), KdV (x, t; 3), Euler-Bernoulli beam (x, t; 4).
Networks: ``raissi`` (8 x 20 tanh), ``tanh64`` (4 x 64 tanh), ``modified``
(4 x 128 modified MLP of Wang, Teng and Perdikaris).

Usage::

    python benchmarks/residuals.py [--threads 1] [--compile] [--residuals burgers kdv]
        [--nets raissi] [--batches 2000] [--dtypes float32] [--all] [--quick] [--work]

The default is every residual on ``raissi``, batch 2,000, float32, eager;
``--compile`` adds ``torch.compile`` columns (diffops ``auto`` compiled with
``fullgraph=True``; nested autograd cannot be compiled: double backward); ``--all``
runs the whole grid of nets, batches and dtypes, eager and compiled; ``--work``
counts instead of timing what one step of nested autograd and of the Taylor engine
computes: the FLOPs of their matrix products, the elements every other kernel
writes, the kernels.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _measure import cpu_model, peak_bytes, work_counts  # noqa: E402
from bench_taylor import paired_ratio, time_rounds  # noqa: E402
from torch import nn  # noqa: E402
from torch.func import jacfwd, jacrev, vmap  # noqa: E402

import diffops as do  # noqa: E402
from diffops.engines import ENGINES  # noqa: E402
from diffops.engines.taylor import workspace  # noqa: E402

Derivs = dict[str, torch.Tensor]


# -- networks -------------------------------------------------------------------------------


def tanh_net(d: int, width: int, depth: int, outputs: int) -> nn.Module:
    layers: list[nn.Module] = []
    for size in [d] + [width] * (depth - 1):
        layers += [nn.Linear(size, width), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(width, outputs))


class ModifiedMLP(nn.Module):
    """``h <- (1 - z) U + z V`` with ``z = tanh(W h + b)`` and two encoders U, V of the input."""

    def __init__(self, d: int, width: int, depth: int, outputs: int) -> None:
        super().__init__()
        self.encode_u, self.encode_v = nn.Linear(d, width), nn.Linear(d, width)
        self.hidden = nn.ModuleList([nn.Linear(d, width)] + [nn.Linear(width, width) for _ in range(depth - 1)])
        self.out = nn.Linear(width, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, v = torch.tanh(self.encode_u(x)), torch.tanh(self.encode_v(x))
        h = x
        for layer in self.hidden:
            z = torch.tanh(layer(h))
            h = (1 - z) * u + z * v
        return self.out(h)


NETS: dict[str, Callable[[int, int], nn.Module]] = {
    "raissi": lambda d, m: tanh_net(d, 20, 8, m),
    "tanh64": lambda d, m: tanh_net(d, 64, 4, m),
    "modified": lambda d, m: ModifiedMLP(d, 128, 4, m),
}


# -- residuals: (coordinates, outputs, the derivatives by name, the residual from them) -------------------
#
# A derivative is named by its letters ("xx": u_xx, "": u) or, for the linear part of a residual,
# by a combination {letters: weight}: diffops computes that as one result (``r={"t": 1.0, ("x", "x"): -nu}``),
# the Taylor engine with the first partials folded into a top coefficient.  ``--apart`` asks for each
# term on its own instead and sums them, as residuals were written before combinations existed.

NU = 0.01 / math.pi


def burgers(d: Derivs) -> torch.Tensor:
    return d["linear"] + d["u"] * d["u_x"]  # u_t + u u_x - nu u_xx


def heat(d: Derivs) -> torch.Tensor:
    return d["linear"]  # u_t - 0.1 (u_xx + u_yy)


def wave(d: Derivs) -> torch.Tensor:
    return d["linear"]  # u_tt - 4 (u_xx + u_yy)


def allen_cahn(d: Derivs) -> torch.Tensor:
    return d["linear"] + 5 * d["u"] ** 3  # u_t - 1e-4 u_xx + 5 u^3 - 5 u


def poisson(d: Derivs) -> torch.Tensor:
    return d["laplacian"] + 1.0  # -Δu = 1


def navier_stokes(d: Derivs) -> torch.Tensor:
    """Momentum in x and y and continuity, for the outputs (u, v, p) of ``(N, 3)``."""
    c = {name: value.unbind(-1) for name, value in d.items()}
    u, v, _ = c["u"]
    momentum = [c["linear"][i] + u * c["u_x"][i] + v * c["u_y"][i] + c["u_" + ("x", "y")[i]][2] for i in range(2)]
    return torch.stack([*momentum, c["u_x"][0] + c["u_y"][1]], dim=-1)  # linear: u_t - nu (u_xx + u_yy)


def kdv(d: Derivs) -> torch.Tensor:
    return d["linear"] + d["u"] * d["u_x"]  # u_t + u u_x + 0.0025 u_xxx


def beam(d: Derivs) -> torch.Tensor:
    return d["u_tt"] + d["u_xxxx"]


XT, XYT = ("x", "t"), ("x", "y", "t")
Names = dict[str, str | dict[str, float]]  # a derivative's letters, or a combination {letters: weight}
RESIDUALS: dict[str, tuple[tuple[str, ...], int, Names, Callable[[Derivs], torch.Tensor]]] = {
    "burgers": (XT, 1, {"u": "", "u_x": "x", "linear": {"t": 1.0, "xx": -NU}}, burgers),
    "heat": (XYT, 1, {"linear": {"t": 1.0, "xx": -0.1, "yy": -0.1}}, heat),
    "wave": (XYT, 1, {"linear": {"tt": 1.0, "xx": -4.0, "yy": -4.0}}, wave),
    "allen_cahn": (XT, 1, {"u": "", "linear": {"t": 1.0, "xx": -1e-4, "": -5.0}}, allen_cahn),
    "poisson2d": (("x", "y"), 1, {"laplacian": {"xx": 1.0, "yy": 1.0}}, poisson),
    "poisson3d": (("x", "y", "z"), 1, {"laplacian": {"xx": 1.0, "yy": 1.0, "zz": 1.0}}, poisson),
    "navier_stokes": (
        XYT, 3,
        {"u": "", "u_x": "x", "u_y": "y", "linear": {"t": 1.0, "xx": -0.01, "yy": -0.01}},
        navier_stokes,
    ),
    "kdv": (XT, 1, {"u": "", "u_x": "x", "linear": {"t": 1.0, "xxx": 0.0025}}, kdv),
    "beam": (XT, 1, {"u_tt": "tt", "u_xxxx": "xxxx"}, beam),
}  # fmt: skip


def letters_needed(names: dict) -> dict[str, str]:
    """Every partial a residual reads, by its letters (a combination's terms as ``"name[letters]"``)."""
    needed = {}
    for name, what in names.items():
        if isinstance(what, dict):
            needed.update({f"{name}[{letters}]": letters for letters in what})
        else:
            needed[name] = what
    return needed


def combined(d: Derivs, names: dict) -> Derivs:
    """The residual's derivatives by name from its partials (``letters_needed``): each combination summed."""
    out = {}
    for name, what in names.items():
        if isinstance(what, dict):
            out[name] = sum(weight * d[f"{name}[{letters}]"] for letters, weight in what.items())
        else:
            out[name] = d[name]
    return out


class Residual(do.DifferentialOperator):
    """A residual as users write one: ``self.derivatives`` by coordinate names, then the PDE.

    The linear part is one combination; with ``apart``, its terms are asked for one by one and summed.
    """

    def __init__(self, net: nn.Module, case: str, method: str = "auto", apart: bool = False) -> None:
        coords, _, names, pde = RESIDUALS[case]
        super().__init__(net, coords=coords, method=method)
        self.names, self.apart, self.pde = names, apart, pde
        if apart:
            self.spec = {name: tuple(letters) for name, letters in letters_needed(names).items()}
        else:
            self.spec = {
                name: {tuple(letters): w for letters, w in what.items()} if isinstance(what, dict) else tuple(what)
                for name, what in names.items()
            }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.derivatives(x, spec=self.spec)
        return self.pde(combined(d, self.names) if self.apart else d)


def nested(net: nn.Module, case: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The residual by hand: nested ``torch.autograd.grad``, each gradient taken once and reused."""
    coords, outputs, names, pde = RESIDUALS[case]

    def residual(x: torch.Tensor) -> torch.Tensor:
        x = x.detach().requires_grad_(True)
        y = net(x)
        columns = y.unbind(-1) if outputs > 1 else (y[:, 0],)
        gradients: dict[tuple[int, str], torch.Tensor] = {}

        def partial(m: int, letters: str) -> torch.Tensor:
            if not letters:
                return columns[m]
            if (m, letters) not in gradients:
                below = partial(m, letters[:-1])
                (g,) = torch.autograd.grad(below.sum(), x, create_graph=True)
                for i, name in enumerate(coords):
                    gradients[(m, letters[:-1] + name)] = g[:, i]
            return gradients[(m, letters)]

        needed = letters_needed(names).items()
        d = {name: torch.stack([partial(m, letters) for m in range(outputs)], -1) for name, letters in needed}
        return pde(combined(d, names))

    return residual


def with_torch_func(net: nn.Module, case: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The residual with ``torch.func`` by hand: ``vmap`` of ``jacrev``, then ``jacfwd`` of that per order above one.

    Each order's whole derivative tensor ``(N, outputs, d, .., d)`` is built once, as
    users do with ``vmap(jacrev(f))`` and ``vmap(hessian(f))``, and the partials
    are read from it.
    """
    coords, _, names, pde = RESIDUALS[case]
    needed = letters_needed(names)
    orders = {len(letters) for letters in needed.values()}
    derivatives: list[Callable] = [net]  # of one sample (d,) -> (outputs,)
    for order in range(1, max(orders) + 1):
        derivatives.append((jacrev if order == 1 else jacfwd)(derivatives[-1]))

    def residual(x: torch.Tensor) -> torch.Tensor:
        tables = {order: vmap(derivatives[order])(x) for order in orders}
        at = {name: (slice(None), slice(None), *(coords.index(c) for c in letters)) for name, letters in needed.items()}
        return pde(combined({name: tables[len(needed[name])][index] for name, index in at.items()}, names))

    return residual


# -- one table ----------------------------------------------------------------------------------


def training_step(net: nn.Module, residual: Callable, x: torch.Tensor, compile: bool = False) -> Callable[[], None]:
    """Residual, MSE loss, backward to the parameters; with ``compile``, the loss through ``torch.compile``."""
    loss = lambda x: residual(x).pow(2).mean()  # noqa: E731
    loss = torch.compile(loss, fullgraph=True) if compile else loss

    def step() -> None:
        for p in net.parameters():
            p.grad = None
        loss(x).backward()

    return step


def auto_pick(op: do.DifferentialOperator) -> str:
    """The engine ``op`` (``method="auto"``) runs after its first calls: the model's pick, or the timed one."""
    (engine,) = {plan[0] for key, plan in op._plans.items() if key[-1]}  # the plans of calls with grad
    return engine


def measure(case: str, net_name: str, batch: int, dtype: torch.dtype, compiled: bool, repeats: int) -> dict:
    """Times (ms) of every method on one residual, the paired ratios to nested autograd, and peak memory (MiB).

    Peak memory: the tensors one training step allocates beyond those alive before it
    (eager only: the tracker does not see inside compiled code), with the memory the
    Taylor engine keeps between calls dropped first, so that it counts.
    """
    coords, outputs, _, _ = RESIDUALS[case]
    torch.manual_seed(0)
    net = NETS[net_name](len(coords), outputs).to(dtype)
    x = torch.rand(batch, len(coords), dtype=dtype)
    auto = Residual(net, case)
    steps = {"auto": training_step(net, auto, x)}
    steps |= {name: training_step(net, Residual(net, case, name), x) for name in ENGINES}
    if any(isinstance(what, dict) for what in RESIDUALS[case][2].values()):
        steps["apart"] = training_step(net, Residual(net, case, apart=True), x)
    steps["nested"] = training_step(net, nested(net, case), x)
    steps["torch.func"] = training_step(net, with_torch_func(net, case), x)
    if compiled:
        torch._dynamo.reset()  # each case its own graphs: one code object compiles for many cases otherwise
        steps["compiled"] = training_step(net, Residual(net, case), x, compile=True)
    rounds = time_rounds(steps, repeats, "cpu")
    times = {name: statistics.median(values) * 1e3 for name, values in rounds.items()}
    memory = {}
    for name in ("auto", "nested"):
        workspace.clear()  # the memory the Taylor engine keeps between steps counts as the step's
        memory[name] = peak_bytes(steps[name], torch.device("cpu")) / 2**20
    engines = [name for name in ENGINES]
    fastest = min(engines, key=lambda name: times[name])
    return {
        "times": times,
        "memory": memory,
        "speedup": {name: ratio_cell(rounds, "nested", name) for name in steps},
        "versus_func": ratio_cell(rounds, "torch.func", "auto"),
        "auto_vs_fastest": ratio_cell(rounds, "auto", fastest),
        "apart": ratio_cell(rounds, "apart", "auto") if "apart" in rounds else "",
        "fastest": fastest,
        "pick": auto_pick(auto),
    }


def count_work(case: str, net_name: str, batch: int, dtype: torch.dtype) -> tuple[dict[str, dict[str, int]], str]:
    """The kernels of one training step of nested autograd and of the Taylor engine, and the engine auto picks.

    Counted, not timed (``_measure.work_counts``): the same on every run and machine.
    Auto's pick, where the cost model leaves it to a measurement, may vary.
    """
    coords, outputs, _, _ = RESIDUALS[case]
    torch.manual_seed(0)
    net = NETS[net_name](len(coords), outputs).to(dtype)
    x = torch.rand(batch, len(coords), dtype=dtype)
    auto = Residual(net, case)
    steps = {"nested": training_step(net, nested(net, case), x)}
    steps["taylor"] = training_step(net, Residual(net, case, "taylor"), x)
    for step in [*steps.values(), training_step(net, auto, x)]:
        for _ in range(3):  # auto settles on its engine within its first calls
            step()
    return {name: work_counts(step) for name, step in steps.items()}, auto_pick(auto)


def print_work(args: argparse.Namespace) -> None:
    """One row per case: GFLOP of matrix products, millions of elements the other kernels write, kernels."""
    print(f"{cpu_model()}, torch {torch.__version__}; the work of one training step, counted:")
    print("GFLOP of the matrix products, M elements written by every other kernel, kernels run")
    header = "| residual | net | batch | dtype | nested GFLOP | taylor GFLOP | nested M el. | taylor M el. |"
    header += " nested kernels | taylor kernels | nested / taylor: GFLOP, elements, kernels | auto picks |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    scaled = {"flops": 1e9, "elements": 1e6, "kernels": 1}
    digits = {"flops": 3, "elements": 1, "kernels": 0}
    for net_name in args.nets:
        for batch in args.batches:
            for dtype_name in args.dtypes:
                for case in args.residuals:
                    work, pick = count_work(case, net_name, batch, getattr(torch, dtype_name))
                    cells = [case, net_name, str(batch), dtype_name]
                    for key, unit in scaled.items():
                        cells += [f"{work[name][key] / unit:.{digits[key]}f}" for name in ("nested", "taylor")]
                    cells.append(", ".join(f"{work['nested'][key] / work['taylor'][key]:.2f}" for key in scaled))
                    print("| " + " | ".join([*cells, pick]) + " |", flush=True)


def ratio_cell(rounds: dict[str, list[float]], numerator: str, denominator: str) -> str:
    """``median [min-max]`` of the paired ratios ``numerator / denominator`` over the rounds."""
    ratios = sorted(a / b for a, b in zip(rounds[numerator], rounds[denominator]))
    return f"{paired_ratio(rounds, numerator, denominator):.2f} [{ratios[0]:.2f}-{ratios[-1]:.2f}]"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--residuals", nargs="+", choices=list(RESIDUALS), default=list(RESIDUALS))
    parser.add_argument("--nets", nargs="+", choices=list(NETS), default=["raissi"])
    parser.add_argument("--batches", nargs="+", type=int, default=[2000])
    parser.add_argument("--dtypes", nargs="+", choices=["float32", "float64"], default=["float32"])
    parser.add_argument("--compile", action="store_true", help="add torch.compile(fullgraph=True) of diffops auto")
    parser.add_argument("--all", action="store_true", help="every net, batch 2,000 and 10,000, both dtypes, compiled")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny batch, two residuals")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--work", action="store_true", help="count the kernels of nested autograd and Taylor mode")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.all:
        args.nets, args.batches, args.dtypes, args.compile = list(NETS), [2000, 10000], ["float32", "float64"], True
    if args.quick:
        args.residuals, args.batches, args.repeats = ["burgers", "kdv"], [16], 1
    if args.work:
        print_work(args)
        return
    print(f"{cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s); ms per training step,")
    print("median of interleaved rounds; ratios: median [range] over the rounds of the ratio within a round;")
    print("MiB: peak tensor memory of one eager training step; apart: auto with the linear part's terms asked")
    print("for one by one (no combination), for the residuals that have one")
    methods = ["auto", *ENGINES, "nested", "torch.func"] + (["compiled"] if args.compile else [])
    header = f"| residual | net | batch | dtype | {' | '.join(f'{m} ms' for m in methods)} | auto picks"
    header += " | fastest engine | nested / auto | torch.func / auto | auto / fastest | apart ms | apart / auto"
    header += " | auto MiB | nested MiB |"
    header += " nested / compiled |" if args.compile else ""
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for net_name in args.nets:
        for batch in args.batches:
            for dtype_name in args.dtypes:
                for case in args.residuals:
                    row = measure(case, net_name, batch, getattr(torch, dtype_name), args.compile, args.repeats)
                    cells = [case, net_name, str(batch), dtype_name] + [f"{row['times'][m]:.2f}" for m in methods]
                    cells += [row["pick"], row["fastest"], row["speedup"]["auto"], row["versus_func"]]
                    cells.append(row["auto_vs_fastest"])
                    cells += [f"{row['times']['apart']:.2f}" if row["apart"] else "", row["apart"]]
                    cells += [f"{row['memory'][m]:.1f}" for m in ("auto", "nested")]
                    if args.compile:
                        cells.append(row["speedup"]["compiled"])
                    print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
